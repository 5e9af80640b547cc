"""The invariant audit after every run, read back through the public API as the admin.

No SQL: the audit sees exactly what any client of the API can see (GetEvent, ListSeats,
ListOrders, ListScans, GetGateStats), so it also runs against a production deployment. It
checks the promises of the README under load:

- `no_seat_in_two_live_orders`: no place is held by two live (VALID or USED) tickets.
- `sold_within_capacity`: the seat map has `capacity` places, no more are sold than exist,
  and the event's live counts agree with its seat map (available + sold + held = capacity).
- `sold_seats_match_live_tickets`: the SOLD places are exactly the places of live tickets.
- `admitted_once`: every admitted ticket was admitted by exactly one scan (scan log), every
  USED ticket has that scan, the gate totals agree, and the harness never saw two scans of
  one ticket both answered ADMITTED.
- `refunded_seats_available`: a refunded ticket's place is AVAILABLE again (or sold anew).
- `orders_consistent`: confirmed orders hold only live tickets, refunded orders only void
  ones, and every total is the sum of its tickets' prices.
- `acknowledged_writes_durable`: every order, refund, admission, hold, confirmation and
  release the server acknowledged to the harness during the run is there, as acknowledged.
- `no_seat_in_live_hold_and_ticket`: no place is under a live (ACTIVE) hold and a live
  ticket at once, nor under two live holds.
- `confirmed_holds_have_their_order`: every CONFIRMED hold names exactly one order, of its
  customer, with exactly its places; no order came from two holds.
- `sales_within_channels`: no live ticket on a place of a partner's allocation (open when
  the order was made) belongs to anyone but that partner; a partner of the run (which may
  not sell publicly) sold only its own allocated places; no place is in two open
  allocations.
- `no_expired_hold_blocks_a_seat`: every place the seat map shows HELD is in a live hold
  (holds are read before the seat map, so a hold that ran out in between cannot make a false
  alarm, while one that is over and still blocks its seat is caught).

A failed check lists up to five examples; the command exits non-zero.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grpc import aio

from ticketing.pagination import PageRequest, PageResponse, paginate
from ticketing.rush.provision import Account, load_seat_map
from ticketing.rush.workload import Observed
from ticketing.stubs import Stubs
from ticketing.v1 import booking_pb2, event_pb2, gate_pb2

AUDIT_CALL_TIMEOUT_S = 60.0
MAX_EXAMPLES = 5

LIVE = (booking_pb2.TICKET_STATUS_VALID, booking_pb2.TICKET_STATUS_USED)
_HOLD_STATES = {
    "active": booking_pb2.HOLD_STATUS_ACTIVE,
    "confirmed": booking_pb2.HOLD_STATUS_CONFIRMED,
    "released": booking_pb2.HOLD_STATUS_RELEASED,
    "expired": booking_pb2.HOLD_STATUS_EXPIRED,
}

RequestT = TypeVar("RequestT", bound=PageRequest)
ResponseT = TypeVar("ResponseT", bound=PageResponse)
ItemT = TypeVar("ItemT")


@dataclass
class Check:
    """One invariant: passed or not, with how many violations and a few examples."""

    name: str
    description: str
    violations: int = 0
    examples: list[str] = field(default_factory=list)

    def fail(self, example: str) -> None:
        """Count one violation, keeping the first few as examples."""
        self.violations += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(example)

    @property
    def passed(self) -> bool:
        """True when no violation was found."""
        return self.violations == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON form: name, passed, description, violations, examples."""
        return {
            "name": self.name,
            "passed": self.passed,
            "description": self.description,
            "violations": self.violations,
            "examples": self.examples,
        }


async def list_orders(stubs: Stubs, admin: Account, event_id: str) -> list[booking_pb2.Order]:
    """Every order of the event (any customer), as the admin sees them, page by page."""
    request = booking_pb2.ListOrdersRequest(event_id=event_id, page_size=500)
    return await _read_all(stubs.booking.ListOrders, request, lambda p: p.orders, admin)


async def list_scans(stubs: Stubs, admin: Account, event_id: str) -> list[gate_pb2.Scan]:
    """The whole scan log of the event, page by page."""
    request = gate_pb2.ListScansRequest(event_id=event_id, page_size=1_000)
    return await _read_all(stubs.gate.ListScans, request, lambda p: p.scans, admin)


async def _read_all(
    method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
    request: RequestT,
    items: Callable[[ResponseT], Iterable[ItemT]],
    admin: Account,
) -> list[ItemT]:
    pages = paginate(method, request, items, metadata=admin.md, page_timeout=AUDIT_CALL_TIMEOUT_S)
    return [item async for item in pages]


async def list_holds(stubs: Stubs, admin: Account, event_id: str) -> list[booking_pb2.Hold]:
    """Every hold of the event (any customer), page by page."""
    request = booking_pb2.ListHoldsRequest(event_id=event_id, page_size=500)
    return await _read_all(stubs.booking.ListHolds, request, lambda p: p.holds, admin)


async def list_allocations(
    stubs: Stubs, admin: Account, event_id: str
) -> list[event_pb2.Allocation]:
    """Every allocation of the event to a partner, page by page."""
    request = event_pb2.ListAllocationsRequest(event_id=event_id, page_size=1_000)
    return await _read_all(stubs.events.ListAllocations, request, lambda p: p.allocations, admin)


async def audit_event(
    stubs: Stubs, admin: Account, event_id: str, observed: Observed | None = None
) -> dict[str, Any]:
    """Read the event back and check every invariant. Returns the report's "audit" object:
    `passed`, `checks` (one per invariant) and `counts`."""
    # Holds first: a hold live now is live at every later read unless it runs out, and a
    # place of a hold that ran out may only look freer later, never more blocked.
    holds = await list_holds(stubs, admin, event_id)
    event = (
        await stubs.events.GetEvent(
            event_pb2.GetEventRequest(event_id=event_id), timeout=AUDIT_CALL_TIMEOUT_S
        )
    ).event
    seats = await load_seat_map(stubs, event_id)
    orders = await list_orders(stubs, admin, event_id)
    scans = await list_scans(stubs, admin, event_id)
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event_id),
        metadata=admin.md,
        timeout=AUDIT_CALL_TIMEOUT_S,
    )
    allocations = await list_allocations(stubs, admin, event_id)
    checks = check_invariants(
        event, seats, orders, scans, stats, observed or Observed(), holds, allocations
    )
    status = {s.id: s.status for s in seats}
    tickets = [t for o in orders for t in o.tickets]
    counts = {
        "capacity": event.capacity,
        "seats": len(seats),
        "soldSeats": sum(1 for s in status.values() if s == event_pb2.SEAT_STATUS_SOLD),
        "eventSoldCount": event.sold_count,
        "eventAvailableCount": event.available_count,
        "orders": len(orders),
        "confirmedOrders": sum(o.status == booking_pb2.ORDER_STATUS_CONFIRMED for o in orders),
        "refundedOrders": sum(o.status == booking_pb2.ORDER_STATUS_REFUNDED for o in orders),
        "liveTickets": sum(t.status in LIVE for t in tickets),
        "usedTickets": sum(t.status == booking_pb2.TICKET_STATUS_USED for t in tickets),
        "voidTickets": sum(t.status == booking_pb2.TICKET_STATUS_VOID for t in tickets),
        "scans": len(scans),
        "admittedScans": sum(s.result == gate_pb2.VALIDATION_RESULT_ADMITTED for s in scans),
        "gateTotalAdmitted": stats.total_admitted,
        "gateTotalRejected": stats.total_rejected,
        "ticketsOutstanding": stats.tickets_outstanding,
        "heldSeats": sum(1 for s in status.values() if s == event_pb2.SEAT_STATUS_HELD),
        "holds": len(holds),
        "allocations": len(allocations),
        "allocatedSeats": sum(len(a.seat_ids) for a in allocations),
        "partnerOrders": sum(o.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER for o in orders),
        **{
            f"{name.lower()}Holds": sum(h.status == value for h in holds)
            for name, value in _HOLD_STATES.items()
        },
    }
    return {
        "passed": all(c.passed for c in checks),
        "failed": [c.name for c in checks if not c.passed],
        "checks": [c.as_dict() for c in checks],
        "counts": counts,
    }


def check_invariants(
    event: event_pb2.Event,
    seats: list[event_pb2.Seat],
    orders: list[booking_pb2.Order],
    scans: list[gate_pb2.Scan],
    stats: gate_pb2.GetGateStatsResponse,
    observed: Observed,
    holds: list[booking_pb2.Hold] | None = None,
    allocations: list[event_pb2.Allocation] | None = None,
) -> list[Check]:
    """Pure part of the audit: every invariant over data already read from the API."""
    holds = holds or []
    status = {s.id: s.status for s in seats}
    sold = {sid for sid, st in status.items() if st == event_pb2.SEAT_STATUS_SOLD}
    live_by_seat: dict[int, list[str]] = collections.defaultdict(list)
    tickets: dict[str, booking_pb2.Ticket] = {}
    order_of: dict[str, booking_pb2.Order] = {}
    for o in orders:
        order_of[o.id] = o
        for t in o.tickets:
            tickets[t.id] = t
            if t.status in LIVE:
                live_by_seat[t.seat_id].append(f"order {o.id} ticket {t.id}")

    double = Check("no_seat_in_two_live_orders", "no place is held by two live tickets")
    for seat_id, holders in sorted(live_by_seat.items()):
        if len(holders) > 1:
            double.fail(f"seat {seat_id}: {'; '.join(holders)}")

    capacity = Check(
        "sold_within_capacity",
        "no more places sold than exist; the event's counts agree with its seat map",
    )
    live_count = sum(len(h) for h in live_by_seat.values())
    if len(seats) != event.capacity:
        capacity.fail(f"seat map has {len(seats)} places, event capacity {event.capacity}")
    if len(sold) > event.capacity:
        capacity.fail(f"{len(sold)} places SOLD, capacity {event.capacity}")
    if live_count > event.capacity:
        capacity.fail(f"{live_count} live tickets, capacity {event.capacity}")
    if event.sold_count != len(sold):
        capacity.fail(f"event sold_count {event.sold_count}, seat map has {len(sold)} SOLD")
    held_count = sum(section.held_count for section in event.sections)
    if event.sold_count + event.available_count + held_count != event.capacity:
        capacity.fail(
            f"sold_count {event.sold_count} + available_count {event.available_count} "
            f"+ held {held_count} != capacity {event.capacity}"
        )

    matching = Check(
        "sold_seats_match_live_tickets", "the SOLD places are exactly those of live tickets"
    )
    for seat_id in sorted(sold - live_by_seat.keys()):
        matching.fail(f"seat {seat_id} is SOLD but no live ticket holds it")
    for seat_id in sorted(live_by_seat.keys() - sold):
        state = event_pb2.SeatStatus.Name(status[seat_id]) if seat_id in status else "missing"
        matching.fail(f"seat {seat_id} has a live ticket but is {state}")

    admitted = _check_admissions(tickets, scans, stats, observed)

    refunded = Check(
        "refunded_seats_available", "a refunded ticket's place is available again (or resold)"
    )
    for o in orders:
        if o.status != booking_pb2.ORDER_STATUS_REFUNDED:
            continue
        for t in o.tickets:
            if t.seat_id in live_by_seat:
                continue  # sold again to someone else: fine
            if status.get(t.seat_id) != event_pb2.SEAT_STATUS_AVAILABLE:
                refunded.fail(f"seat {t.seat_id} of refunded order {o.id} is not AVAILABLE")

    consistent = Check(
        "orders_consistent",
        "confirmed orders hold live tickets, refunded orders void ones, totals add up",
    )
    for o in orders:
        if o.status == booking_pb2.ORDER_STATUS_CONFIRMED:
            bad = [t.id for t in o.tickets if t.status not in LIVE]
            if bad:
                consistent.fail(f"confirmed order {o.id} has void tickets {bad}")
        elif o.status == booking_pb2.ORDER_STATUS_REFUNDED:
            bad = [t.id for t in o.tickets if t.status != booking_pb2.TICKET_STATUS_VOID]
            if bad:
                consistent.fail(f"refunded order {o.id} has live tickets {bad}")
        if not o.tickets:
            consistent.fail(f"order {o.id} has no tickets")
        if o.total_minor != sum(t.price_minor for t in o.tickets):
            consistent.fail(f"order {o.id} total {o.total_minor} != sum of ticket prices")

    durable = Check(
        "acknowledged_writes_durable",
        "every order, refund and admission acknowledged to the harness is there",
    )
    for order_id, seat_ids in observed.orders.items():
        found = order_of.get(order_id)
        if found is None:
            durable.fail(f"acknowledged order {order_id} is missing")
        elif tuple(sorted(t.seat_id for t in found.tickets)) != seat_ids:
            durable.fail(f"order {order_id} holds other seats than acknowledged")
    for order_id in observed.refunded:
        found = order_of.get(order_id)
        if found is None or found.status != booking_pb2.ORDER_STATUS_REFUNDED:
            durable.fail(f"acknowledged refund of order {order_id} is not REFUNDED")
    for ticket_id in observed.admitted:
        ticket = tickets.get(ticket_id)
        if ticket is None or ticket.status != booking_pb2.TICKET_STATUS_USED:
            durable.fail(f"ticket {ticket_id} was admitted but is not USED")
    hold_of = {h.id: h for h in holds}
    _check_acknowledged_holds(durable, hold_of, observed)

    return [
        double,
        capacity,
        matching,
        admitted,
        refunded,
        consistent,
        durable,
        _check_channels(orders, allocations or [], observed.partner_only),
        *_check_holds(holds, status, live_by_seat, order_of),
    ]


def _open_at(allocation: event_pb2.Allocation, when: Any) -> bool:
    """Whether the allocation still held its places at `when` (a Timestamp)."""
    if not allocation.HasField("release_time"):
        return True
    return bool(when.ToNanoseconds() < allocation.release_time.ToNanoseconds())


def _check_channels(
    orders: list[booking_pb2.Order],
    allocations: list[event_pb2.Allocation],
    partner_only: set[str],
) -> Check:
    check = Check(
        "sales_within_channels",
        "allocated places are sold only by their partner; partners sell only their places",
    )
    of_seat: dict[int, list[event_pb2.Allocation]] = collections.defaultdict(list)
    for a in allocations:
        for seat_id in a.seat_ids:
            of_seat[seat_id].append(a)
    for seat_id, held in sorted(of_seat.items()):
        still = [a.id for a in held if not a.released]
        if len(still) > 1:
            check.fail(f"seat {seat_id} is in open allocations {still}")
    for o in orders:
        partner = o.partner_id if o.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER else ""
        for t in o.tickets:
            if t.status not in LIVE:
                continue
            owners = [
                a.partner_id for a in of_seat.get(t.seat_id, []) if _open_at(a, o.create_time)
            ]
            if owners and partner not in owners:
                check.fail(
                    f"seat {t.seat_id} of partner {owners[0]}'s allocation sold in order "
                    f"{o.id} ({'partner ' + partner if partner else 'public'})"
                )
            if partner in partner_only and partner not in owners:
                check.fail(f"partner {partner} sold seat {t.seat_id} outside its allocations")
    return check


def _hold_seats(hold: booking_pb2.Hold) -> tuple[int, ...]:
    return tuple(sorted(s.seat_id for s in hold.seats))


def _check_acknowledged_holds(
    durable: Check, hold_of: dict[str, booking_pb2.Hold], observed: Observed
) -> None:
    for hold_id, seat_ids in observed.holds.items():
        found = hold_of.get(hold_id)
        if found is None:
            durable.fail(f"acknowledged hold {hold_id} is missing")
        elif _hold_seats(found) != seat_ids:
            durable.fail(f"hold {hold_id} holds other seats than acknowledged")
    for hold_id, order_id in observed.confirmed.items():
        found = hold_of.get(hold_id)
        if found is None or found.status != booking_pb2.HOLD_STATUS_CONFIRMED:
            durable.fail(f"acknowledged confirmation of hold {hold_id} is not CONFIRMED")
        elif found.order_id != order_id:
            durable.fail(f"hold {hold_id} names order {found.order_id}, acknowledged {order_id}")
    for hold_id in observed.released:
        found = hold_of.get(hold_id)
        if found is None or found.status != booking_pb2.HOLD_STATUS_RELEASED:
            durable.fail(f"acknowledged release of hold {hold_id} is not RELEASED")


def _check_holds(
    holds: list[booking_pb2.Hold],
    status: dict[int, event_pb2.SeatStatus.ValueType],
    live_by_seat: dict[int, list[str]],
    order_of: dict[str, booking_pb2.Order],
) -> list[Check]:
    both = Check(
        "no_seat_in_live_hold_and_ticket",
        "no place is under a live hold and a live ticket, nor under two live holds",
    )
    live_hold_of: dict[int, str] = {}
    for hold in holds:
        if hold.status != booking_pb2.HOLD_STATUS_ACTIVE:
            continue
        for seat_id in _hold_seats(hold):
            if seat_id in live_by_seat:
                both.fail(f"seat {seat_id}: live hold {hold.id} and {live_by_seat[seat_id][0]}")
            other = live_hold_of.setdefault(seat_id, hold.id)
            if other != hold.id:
                both.fail(f"seat {seat_id} is under live holds {other} and {hold.id}")

    confirmed = Check(
        "confirmed_holds_have_their_order",
        "every confirmed hold names exactly one order of its customer with exactly its places",
    )
    source_of: dict[str, str] = {}
    for hold in holds:
        if hold.status != booking_pb2.HOLD_STATUS_CONFIRMED:
            if hold.order_id:
                confirmed.fail(f"hold {hold.id} is not CONFIRMED but names order {hold.order_id}")
            continue
        order = order_of.get(hold.order_id)
        if order is None:
            confirmed.fail(f"confirmed hold {hold.id} names no existing order")
            continue
        if order.customer_id != hold.customer_id:
            confirmed.fail(f"order {order.id} of hold {hold.id} belongs to another customer")
        if tuple(sorted(t.seat_id for t in order.tickets)) != _hold_seats(hold):
            confirmed.fail(f"order {order.id} has other places than its hold {hold.id}")
        first = source_of.setdefault(order.id, hold.id)
        if first != hold.id:
            confirmed.fail(f"order {order.id} came from holds {first} and {hold.id}")

    blocked = Check("no_expired_hold_blocks_a_seat", "every place shown HELD is in a live hold")
    for seat_id, state in sorted(status.items()):
        if state == event_pb2.SEAT_STATUS_HELD and seat_id not in live_hold_of:
            blocked.fail(f"seat {seat_id} is HELD but in no live hold")
    return [both, confirmed, blocked]


def _check_admissions(
    tickets: dict[str, booking_pb2.Ticket],
    scans: list[gate_pb2.Scan],
    stats: gate_pb2.GetGateStatsResponse,
    observed: Observed,
) -> Check:
    check = Check(
        "admitted_once",
        "every admitted ticket was admitted by exactly one scan; USED tickets have it",
    )
    admissions = collections.Counter(
        s.ticket_id for s in scans if s.result == gate_pb2.VALIDATION_RESULT_ADMITTED
    )
    for ticket_id, n in sorted(admissions.items()):
        if n > 1:
            check.fail(f"ticket {ticket_id} admitted by {n} scans")
        ticket = tickets.get(ticket_id)
        if ticket is None or ticket.status != booking_pb2.TICKET_STATUS_USED:
            check.fail(f"ticket {ticket_id} has an ADMITTED scan but is not USED")
    for ticket_id, ticket in sorted(tickets.items()):
        if ticket.status == booking_pb2.TICKET_STATUS_USED and ticket_id not in admissions:
            check.fail(f"ticket {ticket_id} is USED without an ADMITTED scan")
    for ticket_id, n in sorted(observed.admitted.items()):
        if n > 1:
            check.fail(f"the harness saw ticket {ticket_id} ADMITTED {n} times")
    total = sum(admissions.values())
    if stats.total_admitted != total:
        check.fail(f"gate stats admitted {stats.total_admitted}, scan log has {total}")
    valid = sum(t.status == booking_pb2.TICKET_STATUS_VALID for t in tickets.values())
    if stats.tickets_outstanding != valid:
        check.fail(f"gate stats outstanding {stats.tickets_outstanding}, {valid} VALID tickets")
    return check
