"""What the simulated crowd sends: bookings, holds, refunds and gate scans, request by request.

`Workload.next_call()` makes every random choice synchronously, at send time, from one seeded
generator (so a seed reproduces the sequence of choices given the same answers), and returns
a coroutine function that performs exactly one RPC and turns its answer into an `Outcome`.
Answers feed back into the shared seat view (sold seats leave it, refunds return seats) and
into `Observed`, the record of everything the server acknowledged, which the audit later
checks against what the server reports.

Request ids (AIP-155) and scan ids are fresh UUIDs, never derived from the seed: a rerun
with the same seed must be new purchases, not retries of the old ones.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

from grpc import aio

from ticketing.errors import decode_error
from ticketing.rush.inventory import EventView
from ticketing.rush.provision import Account, PartnerSeller
from ticketing.rush.stats import FollowUp, Outcome, Pause
from ticketing.stubs import CallMetadata, Stubs
from ticketing.v1 import booking_pb2, gate_pb2

SCENARIOS = ("specific", "best-available", "mixed", "gate", "sale", "checkout", "partners")

# The harness gives an abandoned hold's seats back to its view this long after the hold's
# expiry: the server decides expiry on the database clock, and a seat picked a moment too
# early is refused as taken and would leave the view for good.
EXPIRY_MARGIN_S = 0.25
# How often a checkout user with nothing believed free looks again while holds are pending.
PAUSE_S = 0.05
# partners: the share of a partner's requests that reach for a public seat (refused).
PARTNER_PROBE_SHARE = 0.1

Call = Callable[[], Awaitable[Outcome]]


@dataclass(frozen=True)
class TicketRef:
    """A ticket a kiosk can scan."""

    id: str
    code: str
    order_id: str


@dataclass(frozen=True)
class OrderRef:
    """An order the run booked, with the buyer who owns it."""

    id: str
    buyer: int
    seat_ids: tuple[int, ...]
    tickets: tuple[TicketRef, ...]


@dataclass
class Observed:
    """Everything the server acknowledged to this run (the audit checks it is all there)."""

    orders: dict[str, tuple[int, ...]] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)
    admitted: collections.Counter[str] = field(default_factory=collections.Counter)
    # Checkout: holds granted (id -> seats), confirmed (hold id -> order id), released.
    holds: dict[str, tuple[int, ...]] = field(default_factory=dict)
    confirmed: dict[str, str] = field(default_factory=dict)
    released: set[str] = field(default_factory=set)
    # Partners of the run, none of which may sell outside its allocations.
    partner_only: set[str] = field(default_factory=set)

    def booked(self, order: booking_pb2.Order) -> None:
        """A confirmed order came back."""
        self.orders[order.id] = tuple(sorted(t.seat_id for t in order.tickets))

    def held(self, hold: booking_pb2.Hold) -> None:
        """A hold was granted."""
        self.holds[hold.id] = tuple(sorted(s.seat_id for s in hold.seats))


@dataclass(frozen=True)
class Checkout:
    """How the checkout crowd behaves once it holds seats (see `ticketing-rush --help`).

    `abandon` of the holders never pay; `release` of those give the seats back with
    ReleaseHold, the others walk away and let the hold expire after `hold_ttl_s`. `late` of
    the payers pay only after their hold expired (the late confirmation path); the others
    think for `think_s` (low, high) seconds, uniformly, then pay."""

    abandon: float = 0.3
    release: float = 0.5
    late: float = 0.05
    think_s: tuple[float, float] = (0.05, 0.5)
    hold_ttl_s: float = 5.0

    @property
    def think_max_s(self) -> float:
        """The longest a holder waits before its next request."""
        return max(self.think_s[1], self.hold_ttl_s + EXPIRY_MARGIN_S)

    def late_delay_s(self, rng: random.Random) -> float:
        """A late payer's think time: a little past its hold's expiry."""
        return self.hold_ttl_s + EXPIRY_MARGIN_S + rng.uniform(0, self.hold_ttl_s / 2)


@dataclass(frozen=True)
class Mix:
    """Shares of bookings, refunds and scans in the `sale` scenario."""

    book: float = 0.7
    refund: float = 0.15
    scan: float = 0.15

    @classmethod
    def parse(cls, text: str) -> Mix:
        """`book=0.7,refund=0.15,scan=0.15` (any subset; weights need not sum to 1)."""
        values = {"book": 0.0, "refund": 0.0, "scan": 0.0}
        for part in text.split(","):
            name, sep, weight = part.partition("=")
            name = name.strip()
            if not sep or name not in values:
                raise ValueError(f"bad --mix entry {part!r}: use book=W,refund=W,scan=W")
            values[name] = float(weight)
        if any(v < 0 for v in values.values()) or sum(values.values()) <= 0:
            raise ValueError("--mix weights must be >= 0 and not all 0")
        return cls(**values)


@dataclass(frozen=True)
class WorkloadOptions:
    """The knobs of the crowd's behaviour (see `ticketing-rush --help`)."""

    scenario: str
    order_size: tuple[int, int] = (1, 4)
    best_share: float = 0.5
    dup_share: float = 0.1
    mix: Mix = Mix()
    gates: int = 16
    timeout_s: float = 10.0
    checkout: Checkout = Checkout()
    # partners: the share of requests sent by the partner resellers (the rest is the public).
    partner_share: float = 0.3


def gate_name(g: int) -> str:
    """The gate id kiosk number g scans at."""
    return f"gate-{g:02d}"


class Workload:
    """Chooses and performs the next request of a scenario."""

    def __init__(
        self,
        options: WorkloadOptions,
        stubs: Sequence[Stubs],
        buyers: Sequence[Account],
        gate_staff: Sequence[Account],
        view: EventView,
        rng: random.Random,
        observed: Observed,
        partners: Sequence[PartnerSeller] = (),
    ) -> None:
        if options.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {options.scenario!r}")
        self.options = options
        self.stubs = list(stubs)
        self.buyers = list(buyers)
        self.gate_staff = list(gate_staff)
        self.view = view
        self.rng = rng
        self.observed = observed
        self._next_stub = 0
        self._next_gate = 0
        self.unscanned: collections.deque[TicketRef] = collections.deque()
        self.scanned: list[tuple[TicketRef, int]] = []
        self.refundable: list[OrderRef] = []
        # partners: each reseller's places it has not seen sold (it sells only from them).
        self.partners = list(partners)
        self.partner_free = [list(p.seat_ids) for p in self.partners]
        self._end_customers = 0
        # Checkout: holds whose fate (pay, release, expiry) is still to come, and the
        # walked-away ones by when their seats are free again (monotonic clock).
        self.pending_holds = 0
        self.expiring: list[tuple[float, int, tuple[int, ...]]] = []
        self._expiry_seq = 0

    # -- choosing ------------------------------------------------------------------------------

    def next_call(self) -> Call | Pause | None:
        """The next request to send, a Pause when there is nothing to send yet (checkout:
        no seat believed free while holds are pending), or None when the scenario has
        nothing left to do (sold out, every ticket scanned)."""
        scenario = self.options.scenario
        if scenario == "checkout":
            return self._checkout()
        if scenario == "partners":
            return self._partners_or_public()
        if scenario == "specific":
            return self._specific()
        if scenario == "best-available":
            return self._best()
        if scenario == "mixed":
            return self._booking()
        if scenario == "gate":
            return self._scan()
        return self._sale()

    def _stub(self) -> Stubs:
        stub = self.stubs[self._next_stub % len(self.stubs)]
        self._next_stub += 1
        return stub

    def _quantity(self) -> int:
        low, high = self.options.order_size
        return self.rng.randint(low, high)

    def _booking(self) -> Call | None:
        if self.rng.random() < self.options.best_share:
            return self._best() or self._specific()
        return self._specific() or self._best()

    def _sale(self) -> Call | None:
        mix = self.options.mix
        kind = self.rng.choices(
            ("book", "refund", "scan"), weights=(mix.book, mix.refund, mix.scan), k=1
        )[0]
        first = {"book": self._booking, "refund": self._refund, "scan": self._scan}[kind]
        # Nothing to refund or scan yet (or nothing left to book): do something else
        # rather than idle, as a real sale keeps every kind of traffic going.
        return first() or self._booking() or self._refund() or self._scan()

    def _specific(self) -> Call | None:
        seats = self.view.pick_seats(self.rng, self._quantity())
        if not seats:
            return None
        buyer = self.rng.randrange(len(self.buyers))
        request = booking_pb2.BookSeatsRequest(
            event_id=self.view.event_id,
            request_id=str(uuid.uuid4()),
            seat_ids=booking_pb2.SeatIds(ids=seats),
        )
        return functools.partial(self._book, self._stub(), "book_specific", request, buyer, "")

    def _best(self) -> Call | None:
        picked = self.view.pick_section(self.rng, self._quantity())
        if picked is None:
            return None
        section, quantity = picked
        buyer = self.rng.randrange(len(self.buyers))
        request = booking_pb2.BookSeatsRequest(
            event_id=self.view.event_id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=section, quantity=quantity),
        )
        return functools.partial(self._book, self._stub(), "book_best", request, buyer, section)

    def _partners_or_public(self) -> Call | None:
        selling = [k for k, free in enumerate(self.partner_free) if free]
        by_partner = self.rng.random() < self.options.partner_share
        if by_partner and self.partners and self.rng.random() < PARTNER_PROBE_SHARE:
            probe = self._partner_probe()
            if probe is not None:
                return probe
        if selling and (by_partner or not self._public_left):
            return self._partner_sale(self.rng.choice(selling))
        public = self._booking()
        if public is None and selling:
            return self._partner_sale(self.rng.choice(selling))
        return public

    @property
    def _public_left(self) -> bool:
        return self.view.believed_free > 0 or self.view.sections_open

    def _partner_probe(self) -> Call | None:
        """A partner reaching for a public seat it may not sell: must be refused (the audit
        fails the run if the server sold it)."""
        seats = self.view.pick_seats(self.rng, 1)
        if not seats:
            return None
        k = self.rng.randrange(len(self.partners))
        request = self._end_customer_booking(seats)
        return functools.partial(self._partner_book, self._stub(), k, request, "partner_probe")

    def _end_customer_booking(self, seats: list[int]) -> booking_pb2.BookSeatsRequest:
        """A partner's BookSeats of `seats` for a new end customer of its own."""
        self._end_customers += 1
        return booking_pb2.BookSeatsRequest(
            event_id=self.view.event_id,
            request_id=str(uuid.uuid4()),
            seat_ids=booking_pb2.SeatIds(ids=seats),
            on_behalf_of=booking_pb2.EndCustomer(
                external_customer_id=f"rush-end-customer-{self._end_customers}"
            ),
        )

    def _partner_sale(self, k: int) -> Call:
        free = self.partner_free[k]
        seats = sorted(self.rng.sample(free, min(len(free), self._quantity())))
        return functools.partial(
            self._partner_book, self._stub(), k, self._end_customer_booking(seats)
        )

    async def _partner_book(
        self,
        stub: Stubs,
        k: int,
        request: booking_pb2.BookSeatsRequest,
        action: str = "partner_book",
    ) -> Outcome:
        seller = self.partners[k]
        try:
            response = await stub.booking.BookSeats(
                request, metadata=seller.md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            failure = decode_error(err)
            if failure.reason == "SEAT_UNAVAILABLE":
                self._partner_taken(k, failure.seat_ids)
            return Outcome(action, failure.code.name, failure.reason)
        order = response.order
        self._partner_taken(k, [t.seat_id for t in order.tickets])
        self.view.taken(t.seat_id for t in order.tickets)
        self.observed.booked(order)
        return Outcome(action, "OK", tickets=len(order.tickets))

    def _partner_taken(self, k: int, seat_ids: Iterable[int]) -> None:
        gone = set(seat_ids)
        self.partner_free[k] = [s for s in self.partner_free[k] if s not in gone]

    def _checkout(self) -> Call | Pause | None:
        now = time.monotonic()
        while self.expiring and self.expiring[0][0] <= now:
            _, _, expired = heapq.heappop(self.expiring)
            self.view.released(expired)
            self.pending_holds -= 1
        request = booking_pb2.HoldSeatsRequest(
            event_id=self.view.event_id, request_id=str(uuid.uuid4())
        )
        request.ttl.FromNanoseconds(round(self.options.checkout.hold_ttl_s * 1e9))
        section = ""
        best = self.rng.random() < self.options.best_share
        # Like `mixed`: best available or specific seats, falling back to the other.
        seats = [] if best else self.view.pick_seats(self.rng, self._quantity())
        picked = None if seats else self.view.pick_section(self.rng, self._quantity())
        if best and picked is None:
            seats = self.view.pick_seats(self.rng, self._quantity())
        if seats:
            request.seat_ids.ids.extend(seats)
        elif picked is not None:
            section, quantity = picked
            request.best_available.section_id = section
            request.best_available.quantity = quantity
        elif self.pending_holds > 0:
            return Pause(PAUSE_S)
        else:
            return None
        action = "hold_best" if section else "hold_specific"
        buyer = self.rng.randrange(len(self.buyers))
        return functools.partial(self._hold, self._stub(), action, request, buyer, section)

    def _refund(self) -> Call | None:
        if not self.refundable:
            return None
        i = self.rng.randrange(len(self.refundable))
        self.refundable[i], self.refundable[-1] = self.refundable[-1], self.refundable[i]
        order = self.refundable.pop()
        request = booking_pb2.RefundOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), reason="ticket rush harness"
        )
        return functools.partial(self._refund_call, self._stub(), request, order)

    def _scan(self) -> Call | None:
        gates = max(1, self.options.gates)
        duplicate = bool(self.scanned) and self.rng.random() < self.options.dup_share
        if duplicate:
            ticket, first_gate = self.scanned[self.rng.randrange(len(self.scanned))]
            # The same ticket shown at another gate: the copied-ticket attack the gates
            # must refuse, possibly while the first scan is still in flight.
            gate = (first_gate + 1 + self.rng.randrange(gates - 1)) % gates if gates > 1 else 0
        elif self.unscanned:
            ticket = self.unscanned.popleft()
            gate = self._next_gate % gates
            self._next_gate += 1
            self.scanned.append((ticket, gate))
        else:
            return None
        staff = self.gate_staff[gate % len(self.gate_staff)]
        # Not pinned to a connection: a busy gate has several kiosks, and behind a load
        # balancer their scans land on different server processes.
        stub = self._stub()
        request = gate_pb2.ValidateTicketRequest(
            code=ticket.code,
            event_id=self.view.event_id,
            gate_id=gate_name(gate),
            scan_id=str(uuid.uuid4()),
        )
        return functools.partial(self._scan_call, stub, request, staff.md, ticket, duplicate)

    # -- sending -------------------------------------------------------------------------------

    async def _book(
        self,
        stub: Stubs,
        action: str,
        request: booking_pb2.BookSeatsRequest,
        buyer: int,
        section: str,
    ) -> Outcome:
        try:
            response = await stub.booking.BookSeats(
                request, metadata=self.buyers[buyer].md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            return self._refused(action, err, section)
        order = response.order
        self.view.taken(t.seat_id for t in order.tickets)
        self.observed.booked(order)
        if self.options.scenario == "sale":
            self._keep_for_later(order, buyer)
        return Outcome(action, "OK", tickets=len(order.tickets))

    async def _hold(
        self,
        stub: Stubs,
        action: str,
        request: booking_pb2.HoldSeatsRequest,
        buyer: int,
        section: str,
    ) -> Outcome:
        try:
            response = await stub.booking.HoldSeats(
                request, metadata=self.buyers[buyer].md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            return self._refused(action, err, section)
        hold = response.hold
        seats = tuple(sorted(s.seat_id for s in hold.seats))
        self.view.taken(seats)
        self.observed.held(hold)
        self.pending_holds += 1
        plan = self.options.checkout
        # Every choice is made now, at send time of the hold, from the seeded generator.
        if self.rng.random() < plan.abandon:
            if self.rng.random() < plan.release:
                call = functools.partial(self._release, stub, hold.id, buyer, seats)
                return Outcome(action, "OK", follow_up=FollowUp(self._think(), call))
            self._expire_later(seats, plan.hold_ttl_s + EXPIRY_MARGIN_S)
            return Outcome(action, "OK")
        late = self.rng.random() < plan.late
        delay = plan.late_delay_s(self.rng) if late else self._think()
        confirm = booking_pb2.ConfirmHoldRequest(
            hold_id=hold.id, request_id=str(uuid.uuid4()), payment_reference=f"rush-{uuid.uuid4()}"
        )
        call = functools.partial(
            self._confirm, stub, "confirm_late" if late else "confirm", confirm, buyer, seats
        )
        return Outcome(action, "OK", follow_up=FollowUp(delay, call))

    def _think(self) -> float:
        low, high = self.options.checkout.think_s
        return self.rng.uniform(low, high)

    def _expire_later(self, seats: tuple[int, ...], after_s: float) -> None:
        self._expiry_seq += 1
        heapq.heappush(self.expiring, (time.monotonic() + after_s, self._expiry_seq, seats))

    async def _confirm(
        self,
        stub: Stubs,
        action: str,
        request: booking_pb2.ConfirmHoldRequest,
        buyer: int,
        seats: tuple[int, ...],
    ) -> Outcome:
        try:
            response = await stub.booking.ConfirmHold(
                request, metadata=self.buyers[buyer].md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            failure = decode_error(err)
            if failure.reason == "HOLD_EXPIRED":
                # Someone else took some of the seats after the hold ran out; the rest
                # are free again.
                self.view.taken(failure.seat_ids)
                self.view.released(set(seats) - set(failure.seat_ids))
                self.pending_holds -= 1
            else:
                # Not confirmed (deadline, lock...): the buyer gives up; the hold expires.
                self._expire_later(seats, self.options.checkout.hold_ttl_s + EXPIRY_MARGIN_S)
            return Outcome(action, failure.code.name, failure.reason)
        order = response.order
        self.observed.booked(order)
        self.observed.confirmed[request.hold_id] = order.id
        self.pending_holds -= 1
        return Outcome(action, "OK", tickets=len(order.tickets))

    async def _release(
        self, stub: Stubs, hold_id: str, buyer: int, seats: tuple[int, ...]
    ) -> Outcome:
        try:
            await stub.booking.ReleaseHold(
                booking_pb2.ReleaseHoldRequest(hold_id=hold_id),
                metadata=self.buyers[buyer].md,
                timeout=self.options.timeout_s,
            )
        except aio.AioRpcError as err:
            failure = decode_error(err)
            self._expire_later(seats, self.options.checkout.hold_ttl_s + EXPIRY_MARGIN_S)
            return Outcome("release", failure.code.name, failure.reason)
        self.observed.released.add(hold_id)
        self.view.released(seats)
        self.pending_holds -= 1
        return Outcome("release", "OK")

    def _refused(self, action: str, err: aio.AioRpcError, section: str) -> Outcome:
        """A refused hold or booking: learn what the refusal says about the seat map."""
        failure = decode_error(err)
        if failure.reason == "SEAT_UNAVAILABLE":
            self.view.taken(failure.seat_ids)
        elif failure.reason == "SOLD_OUT" and section:
            available = failure.metadata.get("available", "0")
            self.view.section_available(section, int(available) if available.isdigit() else 0)
        return Outcome(action, failure.code.name, failure.reason)

    def _keep_for_later(self, order: booking_pb2.Order, buyer: int) -> None:
        tickets = tuple(TicketRef(t.id, t.code, order.id) for t in order.tickets)
        # An order is either refunded or scanned, never both: a refund of an order with a
        # used ticket is refused by design (TICKET_USED) and would only add noise.
        if self.rng.random() < 0.5:
            seats = tuple(t.seat_id for t in order.tickets)
            self.refundable.append(OrderRef(order.id, buyer, seats, tickets))
        else:
            self.unscanned.extend(tickets)

    async def _refund_call(
        self, stub: Stubs, request: booking_pb2.RefundOrderRequest, order: OrderRef
    ) -> Outcome:
        try:
            await stub.booking.RefundOrder(
                request, metadata=self.buyers[order.buyer].md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            failure = decode_error(err)
            return Outcome("refund", failure.code.name, failure.reason)
        self.observed.refunded.add(order.id)
        self.view.released(order.seat_ids)
        return Outcome("refund", "OK")

    async def _scan_call(
        self,
        stub: Stubs,
        request: gate_pb2.ValidateTicketRequest,
        md: CallMetadata,
        ticket: TicketRef,
        duplicate: bool,
    ) -> Outcome:
        action = "scan_duplicate" if duplicate else "scan"
        try:
            response = await stub.gate.ValidateTicket(
                request, metadata=md, timeout=self.options.timeout_s
            )
        except aio.AioRpcError as err:
            failure = decode_error(err)
            if not duplicate:
                # Not burned (rate limit, deadline...): the person is still in the queue.
                self.unscanned.append(ticket)
            return Outcome(action, failure.code.name, failure.reason)
        result = gate_pb2.ValidationResult.Name(response.result).removeprefix("VALIDATION_RESULT_")
        if response.result == gate_pb2.VALIDATION_RESULT_ADMITTED and not response.repeat:
            self.observed.admitted[ticket.id] += 1
        return Outcome(action, "OK", scan_result=result)


@dataclass
class SellStats:
    """The untimed sell phase before a gate storm."""

    orders: int = 0
    tickets: int = 0
    refusals: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0
    # The tickets sold, with their codes from the buyers' own BookSeats answers: the server
    # shows codes to an order's owner only, so the admin's ListOrders cannot supply them.
    sold: list[TicketRef] = field(default_factory=list)


async def sell_out(
    view: EventView,
    stubs: Sequence[Stubs],
    buyers: Sequence[Account],
    observed: Observed,
    *,
    per_order: int,
    target_tickets: int,
    workers: int,
    rng: random.Random,
    timeout_s: float,
) -> SellStats:
    """Sell (best available, `per_order` places an order) until `target_tickets` more are
    sold or no section has places: the tickets a gate storm then scans. Not measured."""
    stats = SellStats()
    started = time.perf_counter()
    # Bounded even if every call fails. Near the end of each section many workers race for
    # its last places (SEAT_LOCKED, SOLD_OUT), so allow a few refusals per worker on top of
    # the orders needed.
    budget = 3 * (target_tickets // max(1, per_order) + 1) + 10 * workers

    async def worker(w: int) -> None:
        nonlocal budget
        while stats.tickets < target_tickets and view.sections_open and budget > 0:
            budget -= 1
            wanted = min(per_order, target_tickets - stats.tickets)
            picked = view.pick_section(rng, wanted)
            if picked is None:
                return
            section, quantity = picked
            request = booking_pb2.BookSeatsRequest(
                event_id=view.event_id,
                request_id=str(uuid.uuid4()),
                best_available=booking_pb2.BestAvailable(section_id=section, quantity=quantity),
            )
            buyer = buyers[rng.randrange(len(buyers))]
            try:
                response = await stubs[w % len(stubs)].booking.BookSeats(
                    request, metadata=buyer.md, timeout=timeout_s
                )
            except aio.AioRpcError as err:
                failure = decode_error(err)
                stats.refusals[f"{failure.code.name}/{failure.reason}"] += 1
                if failure.reason == "SOLD_OUT":
                    available = failure.metadata.get("available", "0")
                    view.section_available(section, int(available) if available.isdigit() else 0)
                continue
            view.taken(t.seat_id for t in response.order.tickets)
            observed.booked(response.order)
            stats.orders += 1
            stats.tickets += len(response.order.tickets)
            stats.sold.extend(
                TicketRef(t.id, t.code, response.order.id) for t in response.order.tickets
            )

    await asyncio.gather(*(worker(w) for w in range(workers)))
    stats.seconds = time.perf_counter() - started
    return stats
