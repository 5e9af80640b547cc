"""The invariant audit after every run, read back through the public API as the admin.

No SQL: the audit sees exactly what any client of the API can see (GetEvent, ListSeats,
ListOrders, ListScans, GetGateStats), so it also runs against a production deployment. It
checks the promises of the README under load:

- `no_seat_in_two_live_orders`: no place is held by two live (VALID or USED) tickets.
- `sold_within_capacity`: the seat map has `capacity` places, no more are sold than exist,
  and the event's live counts agree with its seat map.
- `sold_seats_match_live_tickets`: the SOLD places are exactly the places of live tickets.
- `admitted_once`: every admitted ticket was admitted by exactly one scan (scan log), every
  USED ticket has that scan, the gate totals agree, and the harness never saw two scans of
  one ticket both answered ADMITTED.
- `refunded_seats_available`: a refunded ticket's place is AVAILABLE again (or sold anew).
- `orders_consistent`: confirmed orders hold only live tickets, refunded orders only void
  ones, and every total is the sum of its tickets' prices.
- `acknowledged_writes_durable`: every order, refund and admission the server acknowledged
  to the harness during the run is there, as acknowledged.

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


async def audit_event(
    stubs: Stubs, admin: Account, event_id: str, observed: Observed | None = None
) -> dict[str, Any]:
    """Read the event back and check every invariant. Returns the report's "audit" object:
    `passed`, `checks` (one per invariant) and `counts`."""
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
    checks = check_invariants(event, seats, orders, scans, stats, observed or Observed())
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
) -> list[Check]:
    """Pure part of the audit: every invariant over data already read from the API."""
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
    if event.sold_count + event.available_count != event.capacity:
        capacity.fail(
            f"sold_count {event.sold_count} + available_count {event.available_count} "
            f"!= capacity {event.capacity}"
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

    return [double, capacity, matching, admitted, refunded, consistent, durable]


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
