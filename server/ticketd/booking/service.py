"""The booking and refund flows: one transaction each, rules checked between the locks.

No grpc and no SQL here: the servicer translates protobuf, the repository talks to
PostgreSQL, and this module decides, step by step, what a sale or a refund may do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncGenerator
from typing import Any, Protocol

from ticketd.audit import service as audit
from ticketd.auth.principal import Principal, Role
from ticketd.booking import order_stream
from ticketd.booking import repository as repo
from ticketd.booking.rules import (
    PUBLIC,
    BestAvailable,
    Channel,
    EventRefunds,
    HoldRecord,
    HoldSeatRecord,
    HoldStatus,
    OrderChangeRecord,
    OrderRecord,
    OrderStatus,
    Selection,
    SpecificSeats,
    TicketRecord,
    TicketStatus,
    allocation_not_found,
    can_read_hold,
    can_read_order,
    check_can_rotate,
    check_customer_limit,
    check_on_behalf_of,
    check_order_limit,
    ensure_can_refund,
    ensure_can_rotate,
    ensure_hold_owner,
    extended_expiry,
    hold_confirm_fingerprint,
    hold_expired_error,
    hold_not_active,
    hold_not_found,
    may_see_codes,
    new_ticket_code,
    not_on_sale,
    order_not_found,
    order_watch_scope,
    request_fingerprint,
    resolve_hold_ttl,
    validate_selection,
)
from ticketd.booking.rules import (
    AllocationRecord as AllocationRecord,  # re-exported: EventService answers with it
)
from ticketd.db import outbox
from ticketd.db.database import Connection, Database
from ticketd.errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Precondition,
    Reason,
    stream_pruned,
    stream_shut_down,
)
from ticketd.shared import EndCustomer, event_not_found

# Order changes read from the outbox per query: what an order stream holds in memory at most.
ORDER_STREAM_PAGE = 500

# Outcomes a concurrent twin of the same request_id can cause; on these we look again for
# the twin's order before answering.
# (EVENT_NOT_ON_SALE too: a twin that committed just before the start must be answered
# with its order, not with "the event has started".)
_TWIN_REASONS = frozenset(
    {
        Reason.SEAT_UNAVAILABLE,
        Reason.SOLD_OUT,
        Reason.SEAT_LOCKED,
        Reason.LIMIT_EXCEEDED,
        Reason.EVENT_NOT_ON_SALE,
    }
)


# Tickets made ready for a ConfirmHold before its hold's size is known (ids and codes are the
# server's, so they are passed in): holds of more places take a second statement.
_CONFIRM_TICKETS_GUESS = 4


class _TwinCommittedFirst(Exception):
    """The same caller's request_id was committed by a concurrent call."""


def _mismatch(request_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        "this request_id was already used for a different booking",
        reason=Reason.REQUEST_ID_MISMATCH,
        metadata={"request_id": str(request_id)},
    )


def _refunds_closed() -> FailedPrecondition:
    return FailedPrecondition("refunds close when the event starts", reason=Reason.EVENT_STARTED)


def _rotation_mismatch(request_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        "this request_id was already used to rotate the codes of another order",
        reason=Reason.REQUEST_ID_MISMATCH,
        metadata={"request_id": str(request_id)},
    )


class SignedCodeIssuer(Protocol):
    """Who derives tickets' signed codes (the gate's signing service answers)."""

    async def signed_codes_for_order(self, order_id: uuid.UUID) -> dict[uuid.UUID, str]: ...


class CustomerLookup(Protocol):
    """How staff find a customer by email (the accounts domain answers)."""

    async def user_id_by_email(self, email: str) -> uuid.UUID | None: ...


class EndCustomers(Protocol):
    """A partner's end customers (the partners domain answers): the id booking stores as
    the customer of the partner's orders and holds."""

    async def end_customer_id(
        self, partner_id: uuid.UUID, customer: EndCustomer
    ) -> tuple[uuid.UUID, EndCustomer]: ...

    async def find_end_customer(
        self, partner_id: uuid.UUID, external_customer_id: str
    ) -> uuid.UUID | None: ...


@dataclasses.dataclass(frozen=True)
class Buyer:
    """Whom a sale is for: an account on the public channel, or a partner's end customer
    (`customer_id` is then the partner_customers id). Every rule keyed on the customer (the
    request_id, the per-customer cap) keys on `customer_id`."""

    customer_id: uuid.UUID
    partner_id: uuid.UUID | None = None
    end_customer: EndCustomer | None = None
    channel: Channel = PUBLIC


class BookingService:
    """Sells seats and refunds orders; every method is one database transaction."""

    def __init__(
        self,
        db: Database,
        customers: CustomerLookup,
        signed_codes: SignedCodeIssuer | None = None,
        *,
        hold_ttl: dt.timedelta = dt.timedelta(seconds=600),
        hold_max_ttl: dt.timedelta = dt.timedelta(seconds=1800),
        end_customers: EndCustomers | None = None,
    ) -> None:
        self._db = db
        self._customers = customers
        self._signed_codes = signed_codes
        self._hold_ttl = hold_ttl
        self._hold_max_ttl = hold_max_ttl
        self._end_customers = end_customers
        self._closing = asyncio.Event()

    async def _buyer(self, principal: Principal, on_behalf_of: EndCustomer | None) -> Buyer:
        check_on_behalf_of(principal, on_behalf_of)
        if principal.partner_id is None or on_behalf_of is None:
            return Buyer(principal.user_id)
        if self._end_customers is None:
            raise RuntimeError("partner sales need the partners domain (ticketd.app wires it)")
        customer_id, customer = await self._end_customers.end_customer_id(
            principal.partner_id, on_behalf_of
        )
        return Buyer(customer_id, principal.partner_id, customer, _channel_of(principal))

    async def book(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        on_behalf_of: EndCustomer | None = None,
    ) -> OrderRecord:
        fingerprint = request_fingerprint(event_id, selection)
        buyer = await self._buyer(principal, on_behalf_of)
        try:
            sold = await self._sell_once(buyer, event_id, request_id, selection, fingerprint)
            if sold is None:
                # A per-customer cap: the transaction path, whose count follows the lock.
                sold = await self._book_once(buyer, event_id, request_id, selection, fingerprint)
            return sold
        except (_TwinCommittedFirst, DomainError) as exc:
            if isinstance(exc, DomainError) and exc.reason not in _TWIN_REASONS:
                raise
            # A retry that raced its own original: answer with the original order.
            twin = await self._order_for_request(buyer.customer_id, request_id, fingerprint)
            if twin is not None:
                return twin
            if isinstance(exc, _TwinCommittedFirst):
                # The twin's row conflicted yet cannot be read: only possible if it was
                # removed meanwhile. Let the client retry rather than guess.
                raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY) from None
            raise

    async def _order_for_request(
        self, customer_id: uuid.UUID, request_id: uuid.UUID, fingerprint: str
    ) -> OrderRecord | None:
        async with self._db.connection() as conn:
            found = await repo.existing_request(conn, customer_id, request_id)
            if found is None:
                return None
            if found[1] != fingerprint:
                raise _mismatch(request_id)
            got = await repo.get_order(conn, found[0])
        return got.order if got else None

    async def _sell_once(
        self,
        buyer: Buyer,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        fingerprint: str,
    ) -> OrderRecord | None:
        """The sale as ONE statement (repository.sell, its own transaction): the same locks,
        checks and write as `_book_once`, answered from what the statement saw. None: the
        event caps tickets per customer, and `_book_once` must sell (nothing was locked
        beyond the event row, nothing written)."""
        quantity, seat_ids, best = _selected(selection)
        order_id = uuid.uuid4()
        ticket_ids = [uuid.uuid4() for _ in range(quantity)]
        codes = [new_ticket_code() for _ in range(quantity)]
        async with self._db.single_statement() as conn:
            taken = await repo.sell(
                conn,
                order_id=order_id,
                head=(event_id, buyer.customer_id, request_id, fingerprint, buyer.partner_id),
                seat_ids=seat_ids,
                best_available=best,
                ticket_ids=ticket_ids,
                codes=codes,
                channel=buyer.channel,
            )
            event = taken.event
            if event is None:
                raise event_not_found(event_id)
            if not taken.written:
                if event.existing_order_id is not None:
                    if event.existing_hash != fingerprint:
                        raise _mismatch(request_id)
                    existing = await repo.get_order(conn, event.existing_order_id)
                    assert existing is not None
                    return existing.order
                await _why_not_taken(conn, taken, event, event_id, selection, buyer.channel)
                return None
        assert taken.create_time is not None
        new = [
            repo.NewTicket(tid, s["id"], code, s["price_minor"])
            for tid, code, s in zip(ticket_ids, codes, taken.seats, strict=True)
        ]
        return _new_order(
            order_id,
            event_id,
            buyer.customer_id,
            request_id,
            event,
            taken.create_time,
            new,
            taken.seats,
            partner_id=buyer.partner_id,
            end_customer=buyer.end_customer,
        )

    async def _book_once(
        self,
        buyer: Buyer,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        fingerprint: str,
    ) -> OrderRecord:
        customer_id = buyer.customer_id
        async with self._db.transaction() as conn:
            event = await repo.event_for_sale(conn, event_id, customer_id, request_id)
            if event is None:
                raise event_not_found(event_id)
            if event.existing_order_id is not None:
                if event.existing_hash != fingerprint:
                    raise _mismatch(request_id)
                existing = await repo.get_order(conn, event.existing_order_id)
                assert existing is not None
                return existing.order
            if event.cancelled:
                raise not_on_sale(event_id, "it was cancelled")
            if event.started:
                raise not_on_sale(event_id, "it has started")
            seats = await self._take_seats(
                conn, event, event_id, customer_id, selection, buyer.channel
            )
            order_id = uuid.uuid4()
            new = [
                repo.NewTicket(uuid.uuid4(), s["id"], new_ticket_code(), s["price_minor"])
                for s in seats
            ]
            written = await repo.insert_order(
                conn,
                order_id=order_id,
                event_id=event_id,
                customer_id=customer_id,
                request_id=request_id,
                request_hash=fingerprint,
                currency_code=event.currency_code,
                tickets=new,
                partner_id=buyer.partner_id,
            )
            if not written.on_sale:
                # The seat locks may have been waited for across the start (or nothing was
                # in the way and the start fell between the checks): the write decides.
                raise not_on_sale(event_id, "it has started")
            if written.create_time is None:
                raise _TwinCommittedFirst()
            return _new_order(
                order_id,
                event_id,
                customer_id,
                request_id,
                event,
                written.create_time,
                new,
                seats,
                partner_id=buyer.partner_id,
                end_customer=buyer.end_customer,
            )

    async def _take_seats(
        self,
        conn: Connection,
        event: repo.EventForSale,
        event_id: uuid.UUID,
        customer_id: uuid.UUID,
        selection: Selection,
        channel: Channel,
    ) -> list[Any]:
        """The one step BookSeats and HoldSeats share: the limits (live holds count), then
        the seats locked and checked free for the caller's channel (SQL seat_is_free_for).
        Caller: inside the transaction, the event KEY SHARE locked and judged on sale."""
        check_order_limit(selection.quantity, event.max_tickets_per_order)
        if event.max_tickets_per_customer is not None:
            held = await repo.serialize_customer(conn, event_id, customer_id)
            check_customer_limit(held, selection.quantity, event.max_tickets_per_customer)
        return await self._lock_selection(
            conn, frozenset(event.section_names), event_id, selection, channel
        )

    async def _lock_selection(
        self,
        conn: Connection,
        section_ids: frozenset[uuid.UUID],
        event_id: uuid.UUID,
        selection: Selection,
        channel: Channel,
    ) -> list[Any]:
        """The selected seats locked (ids in id order; best available SKIP LOCKED) and
        checked free for `channel`: what sales, holds and allocations all go through."""
        if isinstance(selection, SpecificSeats):
            seats = await repo.lock_seats(conn, event_id, selection.seat_ids, channel)
            _check_specific(selection, seats)
        else:
            assert isinstance(selection, BestAvailable)
            if selection.section_id not in section_ids:
                raise InvalidArgument.one(
                    "best_available.section_id", "not a section of this event"
                )
            seats = await repo.claim_best_available(
                conn, event_id, selection.section_id, selection.quantity, channel
            )
            if len(seats) < selection.quantity:
                await _short_of_places(conn, event_id, selection, channel)
        return seats

    async def get_order(
        self, principal: Principal, order_id: uuid.UUID, *, signed_codes: bool = False
    ) -> tuple[OrderRecord, bool]:
        """The order and whether the caller may see its ticket codes; with `signed_codes`,
        the owner's VALID tickets carry their signed codes too."""
        async with self._db.connection() as conn:
            got = await repo.get_order(conn, order_id)
        if got is None:
            raise order_not_found(order_id)
        order = got.order
        if not can_read_order(principal, order.customer_id, got.organizer_id, order.partner_id):
            if principal.partner_id is not None:
                # A partner is not told which order ids other channels hold.
                raise order_not_found(order_id)
            raise PermissionDenied("you may not read this order", reason=Reason.NOT_ORDER_OWNER)
        show = may_see_codes(principal, order.customer_id, order.partner_id)
        if not (show and signed_codes) or self._signed_codes is None:
            return got.order, show
        # Derived after the read, outside its connection: signing needs no lock, and a code
        # of a ticket refunded meanwhile is revoked by the refund itself.
        signed = await self._signed_codes.signed_codes_for_order(order_id)
        tickets = tuple(
            dataclasses.replace(t, signed_code=signed.get(t.id, "")) for t in got.order.tickets
        )
        return dataclasses.replace(got.order, tickets=tickets), show

    async def list_orders(
        self,
        principal: Principal,
        *,
        event_id: uuid.UUID | None,
        customer_email: str | None,
        before: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
        external_customer_id: str | None = None,
        created_after: dt.datetime | None = None,
        created_before: dt.datetime | None = None,
    ) -> list[OrderRecord]:
        """Own orders (a partner: the orders it sold, optionally to one end customer);
        SUPPORT and ADMIN anyone's (optionally one customer's)."""
        staff = principal.has(Role.ADMIN, Role.SUPPORT)
        partner_id = principal.partner_id
        if external_customer_id and partner_id is None:
            raise InvalidArgument.one(
                "external_customer_id", "only a partner lists orders by its end customers"
            )
        if partner_id is not None:
            if customer_email:
                raise InvalidArgument.one(
                    "customer_email", "a partner filters by external_customer_id instead"
                )
            customer_id: uuid.UUID | None = None
            if external_customer_id:
                assert self._end_customers is not None
                customer_id = await self._end_customers.find_end_customer(
                    partner_id, external_customer_id
                )
                if customer_id is None:
                    return []
        elif not staff:
            if customer_email and customer_email != principal.email:
                raise PermissionDenied(
                    "customers may list only their own orders", reason=Reason.NOT_ORDER_OWNER
                )
            customer_id = principal.user_id
        elif customer_email:
            customer_id = await self._customers.user_id_by_email(customer_email)
            if customer_id is None:
                return []
        else:
            customer_id = None
        async with self._db.connection() as conn:
            return await repo.list_orders(
                conn,
                repo.OrderFilter(
                    customer_id=customer_id,
                    event_id=event_id,
                    partner_id=partner_id,
                    created_after=created_after,
                    created_before=created_before,
                ),
                before=before,
                limit=limit,
            )

    async def refund(
        self,
        principal: Principal,
        order_id: uuid.UUID,
        request_id: uuid.UUID,
        reason: str,
    ) -> OrderRecord:
        async with self._db.transaction() as conn:
            got = await repo.get_order(conn, order_id, lock=True)
            if got is None:
                raise order_not_found(order_id)
            try:
                ensure_can_refund(principal, got.order.customer_id, got.order.partner_id)
            except PermissionDenied:
                if principal.partner_id is not None:
                    raise order_not_found(order_id) from None
                raise
            if got.order.status is OrderStatus.REFUNDED:
                if await repo.refund_request_of(conn, order_id) == request_id:
                    return got.order  # a retry of the refund that already happened
                raise FailedPrecondition(
                    "the order is already refunded", reason=Reason.ALREADY_REFUNDED
                )
            if got.event_started:
                raise _refunds_closed()
            statuses = await repo.lock_tickets(conn, order_id)
            if TicketStatus.USED.value in statuses:
                raise FailedPrecondition(
                    "a ticket of this order was already used at a gate", reason=Reason.TICKET_USED
                )
            by_partner = principal.partner_id
            if not await repo.refund_order(
                conn,
                order_id,
                refunded_by=None if by_partner else principal.user_id,
                refunded_by_partner=by_partner,
                reason=reason,
                request_id=request_id,
            ):
                # The order and its tickets are locked by us and had no used ticket, so the
                # only way the write refused is the clock: the event started meanwhile.
                raise _refunds_closed()
            await audit.record(
                conn,
                principal,
                audit.Action.ORDER_REFUNDED,
                audit.Subject.of(audit.SubjectKind.ORDER, order_id),
                event_id=got.order.event_id,
                details={"reason": reason, "request_id": request_id},
            )
            after = await repo.get_order(conn, order_id)
        assert after is not None
        return after.order

    async def rotate_codes(
        self, principal: Principal, order_id: uuid.UUID, request_id: uuid.UUID
    ) -> tuple[OrderRecord, int]:
        """New codes for the order's VALID tickets, in one transaction; returns the order as
        it is now and how many tickets were rotated. A repeated request_id of this caller
        returns the first call's count and rotates nothing."""
        async with self._db.transaction() as conn:
            # Event KEY SHARE, then the order FOR UPDATE (two rotations, or a rotation and a
            # refund, of one order take turns), then its tickets: the order of every flow.
            got = await repo.get_order(conn, order_id, lock=True)
            if got is None:
                raise order_not_found(order_id)
            ensure_can_rotate(principal, got.order.customer_id, got.order.partner_id)
            earlier = await repo.rotation_of(conn, principal.user_id, request_id)
            if earlier is not None:
                if earlier[0] != order_id:
                    raise _rotation_mismatch(request_id)
                return got.order, earlier[1]
            ticket_ids = await repo.lock_valid_tickets(conn, order_id)
            check_can_rotate(
                refunded=got.order.status is OrderStatus.REFUNDED,
                event_cancelled=got.event_cancelled,
                # Asked after the ticket locks are ours, on the clock of the write.
                event_started=await repo.event_started_now(conn, got.order.event_id),
            )
            recorded = await repo.record_rotation(
                conn,
                order_id=order_id,
                requested_by=principal.user_id,
                request_id=request_id,
                rotated_count=len(ticket_ids),
            )
            if not recorded:
                # A concurrent call with this request_id committed first, for another order
                # (one for this order would have waited on the order lock and returned
                # above): raising rolls back nothing but our own locks.
                raise _rotation_mismatch(request_id)
            codes = [new_ticket_code() for _ in ticket_ids]
            changed = await repo.replace_codes(conn, order_id, ticket_ids, codes)
            if changed != len(ticket_ids):
                # Unreachable while the tickets are locked by us; refuse rather than half-write.
                raise RuntimeError(f"order {order_id}: rotated {changed} of {len(ticket_ids)}")
            await audit.record(
                conn,
                principal,
                audit.Action.ORDER_CODES_ROTATED,
                audit.Subject.of(audit.SubjectKind.ORDER, order_id),
                event_id=got.order.event_id,
                details={"rotated_tickets": len(ticket_ids)},
            )
            after = await repo.get_order(conn, order_id)
        assert after is not None
        return after.order, len(ticket_ids)

    async def refund_event_orders(
        self,
        conn: Connection,
        event_id: uuid.UUID,
        *,
        refunded_by: uuid.UUID,
        reason: str,
        report_limit: int,
    ) -> EventRefunds:
        """Refund the live orders of an event being cancelled, inside the caller's
        transaction (which holds the event row FOR UPDATE and has judged the start).

        Orders with a ticket used at a gate are not refunded: they stay CONFIRMED with
        their tickets as they are (USED stay USED; the others stay VALID, since the order is
        kept whole and a cancelled event admits nobody), and are reported instead."""
        # Live holds go first: their seats are free again when the cancel commits, and a
        # confirmation waiting on the event row then finds its hold RELEASED.
        await repo.release_event_holds(conn, event_id)
        await repo.lock_event_tickets(conn, event_id)
        return await repo.refund_event_orders(
            conn, event_id, refunded_by=refunded_by, reason=reason, report_limit=report_limit
        )

    # Allocations (issue 13) ----------------------------------------------------------------
    # Who may allocate is the events domain's call (EventService checks the event's owner
    # and the partner); here: the seats, under the same locks as every sale.

    async def allocate(
        self,
        *,
        event_id: uuid.UUID,
        partner_id: uuid.UUID,
        created_by: uuid.UUID,
        request_id: uuid.UUID,
        seat_ids: list[int] | None,
        best_available: tuple[uuid.UUID, int] | None,
        release_time: dt.datetime | None,
    ) -> AllocationRecord:
        """Set places aside for a partner's channel, in one transaction: each must be free
        for the public pool (not sold, held or in another open allocation). A repeated
        request_id of the same caller returns the first allocation."""
        selection = validate_selection(
            seat_ids, BestAvailable(*best_available) if best_available else None
        )
        fingerprint = request_fingerprint(event_id, selection) + f"|{partner_id}|{release_time}"
        async with self._db.transaction() as conn:
            event = await repo.allocation_event(conn, event_id, created_by, request_id)
            if event is None:
                raise event_not_found(event_id)
            if event.existing_id is not None:
                if event.existing_hash != fingerprint:
                    raise _mismatch(request_id)
                found = await repo.get_allocation(conn, event.existing_id)
                assert found is not None
                return found
            if event.cancelled:
                raise not_on_sale(event_id, "it was cancelled")
            if event.started:
                raise not_on_sale(event_id, "it has started")
            if release_time is not None and release_time <= await repo.db_clock(conn):
                raise InvalidArgument.one("release_time", "must be in the future")
            seats = await self._lock_selection(conn, event.section_ids, event_id, selection, PUBLIC)
            allocation_id = uuid.uuid4()
            written = await repo.insert_allocation(
                conn,
                allocation_id=allocation_id,
                event_id=event_id,
                partner_id=partner_id,
                created_by=created_by,
                request_id=request_id,
                request_hash=fingerprint,
                seat_ids=sorted(s["id"] for s in seats),
                release_time=release_time,
            )
            if not written:
                raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY)
            await audit.record(
                conn,
                audit.current_actor(),
                audit.Action.ALLOCATION_CREATED,
                audit.Subject.of(audit.SubjectKind.ALLOCATION, allocation_id),
                event_id=event_id,
                details={"partner_id": partner_id, "places": len(seats)},
            )
            made = await repo.get_allocation(conn, allocation_id)
        assert made is not None
        return made

    async def get_allocation(self, allocation_id: uuid.UUID) -> AllocationRecord:
        async with self._db.connection() as conn:
            found = await repo.get_allocation(conn, allocation_id)
        if found is None:
            raise allocation_not_found(allocation_id)
        return found

    async def release_allocation(self, allocation_id: uuid.UUID) -> AllocationRecord:
        """Its unsold places return to the public pool now (idempotent)."""
        async with self._db.transaction() as conn:
            found = await repo.get_allocation(conn, allocation_id, lock=True)
            if found is None:
                raise allocation_not_found(allocation_id)
            await repo.release_allocation(conn, allocation_id)
            if not found.released:
                await audit.record(
                    conn,
                    audit.current_actor(),
                    audit.Action.ALLOCATION_RELEASED,
                    audit.Subject.of(audit.SubjectKind.ALLOCATION, allocation_id),
                    event_id=found.event_id,
                )
        # Read after the commit: `released` is judged on now(), which inside the releasing
        # transaction is its start, before the release_time it just wrote.
        return await self.get_allocation(allocation_id)

    async def list_allocations(
        self, event_id: uuid.UUID, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
    ) -> list[AllocationRecord]:
        async with self._db.connection() as conn:
            return await repo.list_allocations(conn, event_id, after, limit)

    async def list_partner_allocations(
        self,
        event_id: uuid.UUID,
        partner_id: uuid.UUID,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[AllocationRecord]:
        """One partner's allocations of the event, oldest first, keyset as list_allocations.
        Filtered here over the event's allocations in batches (an event has a few hundred at
        most), so the keyset stays the one of the unfiltered listing."""
        found: list[AllocationRecord] = []
        batch = max(limit, 200)
        async with self._db.connection() as conn:
            while len(found) < limit:
                rows = await repo.list_allocations(conn, event_id, after, batch)
                found.extend(r for r in rows if r.partner_id == partner_id)
                if len(rows) < batch:
                    break
                after = (rows[-1].create_time, rows[-1].id)
        return found[:limit]

    # Holds (issue 12) ----------------------------------------------------------------------

    async def sweep_expired_holds(self, limit: int = 500) -> int:
        """Tidy up to `limit` places of expired holds (AVAILABLE, recorded for the seat
        streams); returns how many. Sales never depend on it: expiry is a query condition."""
        async with self._db.transaction() as conn:
            return await repo.sweep_expired_holds(conn, limit)

    async def sweep_expired_allocations(self, limit: int = 500) -> int:
        """Tidy up to `limit` places whose allocation's release_time has passed (they
        leave it; the free ones are recorded AVAILABLE for the seat streams); returns how
        many. Sales never depend on it: an allocation's end is a query condition."""
        async with self._db.transaction() as conn:
            return await repo.sweep_expired_allocations(conn, limit)

    def hold_ttl(self, requested: dt.timedelta | None) -> dt.timedelta:
        return resolve_hold_ttl(requested, default=self._hold_ttl, maximum=self._hold_max_ttl)

    async def hold(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        ttl: dt.timedelta | None,
        on_behalf_of: EndCustomer | None = None,
    ) -> HoldRecord:
        """Lock seats for the caller until expiry: the same rules, locks and errors as
        BookSeats, in one transaction. A repeated request_id returns the first hold."""
        lifetime = self.hold_ttl(ttl)
        fingerprint = request_fingerprint(event_id, selection)
        buyer = await self._buyer(principal, on_behalf_of)
        try:
            held = await self._hold_fast(
                buyer, event_id, request_id, selection, fingerprint, lifetime
            )
            if held is None:
                # A per-customer cap: the transaction path, whose count follows the lock.
                held = await self._hold_once(
                    buyer, event_id, request_id, selection, fingerprint, lifetime
                )
            return held
        except (_TwinCommittedFirst, DomainError) as exc:
            if isinstance(exc, DomainError) and exc.reason not in _TWIN_REASONS:
                raise
            async with self._db.connection() as conn:
                found = await repo.existing_hold_request(conn, buyer.customer_id, request_id)
                if found is not None:
                    if found[1] != fingerprint:
                        raise _mismatch(request_id) from None
                    got = await repo.get_hold(conn, found[0])
                    assert got is not None
                    return _hold_record(got.hold, got.seats)
            if isinstance(exc, _TwinCommittedFirst):
                raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY) from None
            raise

    async def _hold_fast(
        self,
        buyer: Buyer,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        fingerprint: str,
        ttl: dt.timedelta,
    ) -> HoldRecord | None:
        """The hold as ONE statement (repository.hold), as `_sell_once` is the sale: the
        locks, checks and write of `_hold_once`. None: a capped event, for `_hold_once`."""
        _, seat_ids, best = _selected(selection)
        hold_id = uuid.uuid4()
        async with self._db.single_statement() as conn:
            taken = await repo.hold(
                conn,
                hold_id=hold_id,
                head=(event_id, buyer.customer_id, request_id, fingerprint, buyer.partner_id),
                seat_ids=seat_ids,
                best_available=best,
                ttl=ttl,
                channel=buyer.channel,
            )
            event = taken.event
            if event is None:
                raise event_not_found(event_id)
            if not taken.written:
                if event.existing_order_id is not None:
                    if event.existing_hash != fingerprint:
                        raise _mismatch(request_id)
                    existing = await repo.get_hold(conn, event.existing_order_id)
                    assert existing is not None
                    return _hold_record(existing.hold, existing.seats)
                await _why_not_taken(conn, taken, event, event_id, selection, buyer.channel)
                return None
        assert taken.create_time is not None and taken.expire_time is not None
        return _new_hold(
            hold_id,
            event_id,
            request_id,
            buyer,
            event,
            taken.create_time,
            taken.expire_time,
            taken.seats,
        )

    async def _hold_once(
        self,
        buyer: Buyer,
        event_id: uuid.UUID,
        request_id: uuid.UUID,
        selection: Selection,
        fingerprint: str,
        ttl: dt.timedelta,
    ) -> HoldRecord:
        customer_id = buyer.customer_id
        async with self._db.transaction() as conn:
            event = await repo.event_for_sale(conn, event_id, customer_id, request_id, made="holds")
            if event is None:
                raise event_not_found(event_id)
            if event.existing_order_id is not None:
                if event.existing_hash != fingerprint:
                    raise _mismatch(request_id)
                existing = await repo.get_hold(conn, event.existing_order_id)
                assert existing is not None
                return _hold_record(existing.hold, existing.seats)
            if event.cancelled:
                raise not_on_sale(event_id, "it was cancelled")
            if event.started:
                raise not_on_sale(event_id, "it has started")
            seats = await self._take_seats(
                conn, event, event_id, customer_id, selection, buyer.channel
            )
            hold_id = uuid.uuid4()
            written = await repo.insert_hold(
                conn,
                hold_id=hold_id,
                event_id=event_id,
                customer_id=customer_id,
                request_id=request_id,
                request_hash=fingerprint,
                currency_code=event.currency_code,
                ttl=ttl,
                seats=[repo.NewHoldSeat(s["id"], s["price_minor"]) for s in seats],
                partner_id=buyer.partner_id,
            )
            if not written.on_sale:
                raise not_on_sale(event_id, "it has started")
            if written.create_time is None or written.expire_time is None:
                raise _TwinCommittedFirst()
            return _new_hold(
                hold_id,
                event_id,
                request_id,
                buyer,
                event,
                written.create_time,
                written.expire_time,
                seats,
            )

    async def get_hold(self, principal: Principal, hold_id: uuid.UUID) -> HoldRecord:
        async with self._db.connection() as conn:
            got = await repo.get_hold(conn, hold_id)
        if got is None:
            raise hold_not_found(hold_id)
        hold = got.hold
        if not can_read_hold(principal, hold["customer_id"], got.organizer_id, hold["partner_id"]):
            if principal.partner_id is not None:
                raise hold_not_found(hold_id)
            raise PermissionDenied("you may not read this hold", reason=Reason.NOT_HOLD_OWNER)
        return _hold_record(got.hold, got.seats)

    async def list_holds(
        self,
        principal: Principal,
        *,
        event_id: uuid.UUID | None,
        customer_email: str | None,
        before: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[HoldRecord]:
        """Own holds (a partner: the holds it made); SUPPORT and ADMIN anyone's
        (optionally one customer's)."""
        partner_id = principal.partner_id
        if partner_id is not None:
            if customer_email:
                raise InvalidArgument.one("customer_email", "partners list their own holds")
            customer_id: uuid.UUID | None = None
        elif not principal.has(Role.ADMIN, Role.SUPPORT):
            if customer_email and customer_email != principal.email:
                raise PermissionDenied(
                    "customers may list only their own holds", reason=Reason.NOT_HOLD_OWNER
                )
            customer_id = principal.user_id
        elif customer_email:
            customer_id = await self._customers.user_id_by_email(customer_email)
            if customer_id is None:
                return []
        else:
            customer_id = None
        async with self._db.connection() as conn:
            rows = await repo.list_holds(
                conn,
                repo.HoldFilter(customer_id=customer_id, event_id=event_id, partner_id=partner_id),
                before=before,
                limit=limit,
            )
        return [_hold_record(h, seats) for h, seats in rows]

    async def _locked_own_hold(
        self, conn: Connection, principal: Principal, hold_id: uuid.UUID
    ) -> repo.HoldRow:
        got = await repo.get_hold(conn, hold_id, lock=True)
        if got is None:
            raise hold_not_found(hold_id)
        _ensure_own_hold(principal, hold_id, got.hold)
        return got

    async def extend_hold(
        self, principal: Principal, hold_id: uuid.UUID, ttl: dt.timedelta | None
    ) -> HoldRecord:
        """A later expiry for an active hold, never past TICKETING_HOLD_MAX_TTL from its
        creation; an expired hold is not revived (HOLD_EXPIRED)."""
        lifetime = self.hold_ttl(ttl)
        async with self._db.transaction() as conn:
            got = await self._locked_own_hold(conn, principal, hold_id)
            status = HoldStatus(got.hold["status"])
            if status is HoldStatus.EXPIRED or (
                status is HoldStatus.ACTIVE and got.hold["expire_time"] <= got.db_time
            ):
                raise hold_expired_error(hold_id, [])
            if status is not HoldStatus.ACTIVE:
                raise hold_not_active(hold_id, status)
            new_expiry = extended_expiry(
                create_time=got.hold["create_time"],
                expire_time=got.hold["expire_time"],
                now=got.db_time,
                ttl=lifetime,
                max_ttl=self._hold_max_ttl,
            )
            still_ours = await repo.extend_hold(conn, hold_id, new_expiry)
            if still_ours != got.hold["seat_count"]:
                # A seat was re-taken by someone who judged the hold expired on a clock read
                # just before ours: it is expired; rolling back undoes the extension.
                raise hold_expired_error(hold_id, [])
            after = await repo.get_hold(conn, hold_id)
        assert after is not None
        return _hold_record(after.hold, after.seats)

    async def release_hold(self, principal: Principal, hold_id: uuid.UUID) -> HoldRecord:
        """Seats free at once. Releasing a released or expired hold is a no-op that answers
        the hold (RELEASED); a confirmed one is HOLD_NOT_ACTIVE."""
        async with self._db.transaction() as conn:
            got = await self._locked_own_hold(conn, principal, hold_id)
            status = HoldStatus(got.hold["status"])
            if status is HoldStatus.CONFIRMED:
                raise hold_not_active(hold_id, status)
            if status is not HoldStatus.RELEASED:
                await repo.release_hold(conn, hold_id)
            after = await repo.get_hold(conn, hold_id)
        assert after is not None
        return _hold_record(after.hold, after.seats)

    async def confirm_hold(
        self,
        principal: Principal,
        hold_id: uuid.UUID,
        request_id: uuid.UUID,
        payment_reference: str | None,
        on_behalf_of: EndCustomer | None = None,
    ) -> OrderRecord:
        """The hold becomes a CONFIRMED order with its tickets, in one transaction.

        Late confirmation: an expired hold is confirmed when every one of its seats is still
        free or still its own (re-taken under the seat locks); otherwise HOLD_EXPIRED naming
        the seats, and nothing is written. A repeated request_id returns the same order.
        """
        fingerprint = hold_confirm_fingerprint(hold_id)
        buyer = await self._confirming_buyer(principal, on_behalf_of)
        try:
            confirmed = await self._confirm_fast(
                principal, buyer, hold_id, request_id, fingerprint, payment_reference
            )
            if confirmed is None:
                # An expired hold under a per-customer cap: the transaction path recounts.
                confirmed = await self._confirm_once(
                    principal, buyer, hold_id, request_id, fingerprint, payment_reference
                )
            return confirmed
        except _TwinCommittedFirst:
            twin = await self._order_for_request(buyer.customer_id, request_id, fingerprint)
            if twin is not None:
                return twin
            raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY) from None

    async def _confirming_buyer(
        self, principal: Principal, on_behalf_of: EndCustomer | None
    ) -> Buyer:
        """Who a confirmation is for: the caller, or the partner's end customer named, who
        must already be known (the hold was made for them; checked against the hold)."""
        check_on_behalf_of(principal, on_behalf_of)
        if principal.partner_id is None or on_behalf_of is None:
            return Buyer(principal.user_id)
        assert self._end_customers is not None
        found = await self._end_customers.find_end_customer(
            principal.partner_id, on_behalf_of.external_customer_id
        )
        if found is None:
            raise _not_the_holds_customer()
        return Buyer(found, principal.partner_id, channel=_channel_of(principal))

    async def _confirm_fast(
        self,
        principal: Principal,
        buyer: Buyer,
        hold_id: uuid.UUID,
        request_id: uuid.UUID,
        fingerprint: str,
        payment_reference: str | None,
    ) -> OrderRecord | None:
        """The confirmation as ONE statement (repository.confirm): the locks, checks and
        write of `_confirm_once`, answered from what the statement saw (its `go` is exactly
        the checks below, so what it wrote these would have allowed). None: an expired hold
        under a per-customer cap, for `_confirm_once`."""
        tickets = _CONFIRM_TICKETS_GUESS
        for _ in range(2):
            order_id = uuid.uuid4()
            ticket_ids = [uuid.uuid4() for _ in range(tickets)]
            codes = [new_ticket_code() for _ in range(tickets)]
            async with self._db.single_statement() as conn:
                got = await repo.confirm(
                    conn,
                    hold_id=hold_id,
                    order_id=order_id,
                    head=(buyer.customer_id, request_id, fingerprint, buyer.partner_id),
                    payment_reference=payment_reference,
                    ticket_ids=ticket_ids,
                    codes=codes,
                    channel=buyer.channel,
                )
                hold, event = got.hold, got.event
                if hold is None or event is None:
                    raise hold_not_found(hold_id)
                if got.written:
                    break
                done = await _confirm_checks(
                    conn, principal, buyer, hold_id, hold, event, request_id, fingerprint
                )
                if done is not None:
                    return done
                status = HoldStatus(hold["status"])
                if status is HoldStatus.EXPIRED and event.max_tickets_per_customer is not None:
                    return None
                taken = [s["id"] for s in got.seats if s["hold_id"] != hold_id and not s["free"]]
                if taken:
                    raise hold_expired_error(hold_id, taken)
                if len(got.seats) > tickets:
                    tickets = len(got.seats)  # a larger hold than guessed: once more
                    continue
                if got.sale_time is None:
                    raise not_on_sale(hold["event_id"], "it has started")
                raise _TwinCommittedFirst()
        else:
            return None  # (unreachable: a hold's seats do not change)
        assert got.create_time is not None and hold is not None and event is not None
        new = [
            repo.NewTicket(tid, s["id"], code, s["held_price"])
            for tid, code, s in zip(ticket_ids, codes, got.seats, strict=False)
        ]
        return _new_order(
            order_id,
            hold["event_id"],
            buyer.customer_id,
            request_id,
            event,
            got.create_time,
            new,
            got.seats,
            payment_reference=payment_reference,
            partner_id=buyer.partner_id,
            end_customer=repo.end_customer_of(hold),
        )

    async def _confirm_once(
        self,
        principal: Principal,
        buyer: Buyer,
        hold_id: uuid.UUID,
        request_id: uuid.UUID,
        fingerprint: str,
        payment_reference: str | None,
    ) -> OrderRecord:
        # Three statements, as BookSeats: hold + event + earlier request, the seats, the write.
        async with self._db.transaction() as conn:
            got = await repo.hold_to_confirm(conn, hold_id, buyer.customer_id, request_id)
            if got is None:
                raise hold_not_found(hold_id)
            hold, event = got.hold, got.event
            done = await _confirm_checks(
                conn, principal, buyer, hold_id, hold, event, request_id, fingerprint
            )
            if done is not None:
                return done
            status = HoldStatus(hold["status"])
            seats = await repo.lock_hold_seats(conn, hold_id, buyer.channel)
            taken = [s["id"] for s in seats if s["hold_id"] != hold_id and not s["free"]]
            if taken:
                raise hold_expired_error(hold_id, taken)
            if event.max_tickets_per_customer is not None and (status is HoldStatus.EXPIRED):
                # A live hold already counted toward the cap when it was made; an expired
                # one did not count while others were held meanwhile: count again.
                others = await repo.serialize_customer(
                    conn, hold["event_id"], buyer.customer_id, except_hold=hold_id
                )
                check_customer_limit(others, len(seats), event.max_tickets_per_customer)
            order_id = uuid.uuid4()
            new = [
                repo.NewTicket(uuid.uuid4(), s["id"], new_ticket_code(), s["held_price"])
                for s in seats
            ]
            written = await repo.insert_order(
                conn,
                order_id=order_id,
                event_id=hold["event_id"],
                customer_id=buyer.customer_id,
                request_id=request_id,
                request_hash=fingerprint,
                currency_code=hold["currency_code"],
                tickets=new,
                hold_id=hold_id,
                payment_reference=payment_reference,
                partner_id=buyer.partner_id,
            )
            if not written.on_sale:
                raise not_on_sale(hold["event_id"], "it has started")
            if written.create_time is None:
                raise _TwinCommittedFirst()
            return _new_order(
                order_id,
                hold["event_id"],
                buyer.customer_id,
                request_id,
                event,
                written.create_time,
                new,
                seats,
                payment_reference=payment_reference,
                partner_id=buyer.partner_id,
                end_customer=repo.end_customer_of(hold),
            )

    # WatchOrders (issue 15): the order-change outbox (migration 0014), read per caller.

    def stop_streams(self) -> None:
        """Server shutdown: every order stream ends (SERVER_SHUTTING_DOWN, with where to
        resume) instead of holding the shutdown for its whole grace period."""
        self._closing.set()

    async def watch_orders(
        self,
        principal: Principal,
        event_id: uuid.UUID | None,
        after_sequence: int,
        *,
        poll_seconds: float,
    ) -> AsyncGenerator[list[OrderChangeRecord], None]:
        """Every order change after `after_sequence` the caller may see (order_watch_scope),
        optionally of one event, in sequence order, as each commits, for as long as the
        caller reads. after_sequence 0: from the stream's first change still kept (older
        ones are pruned after TICKETING_OUTBOX_RETENTION). Once the changes committed
        before the call are sent, a caught_up marker says up to where."""
        scope = order_watch_scope(principal)
        # Numbered first: a resume point is judged against what has committed.
        await self._db.outbox.catch_up(outbox.ORDERS, outbox.ALL)
        async with self._db.connection() as conn:
            if event_id is not None and not await order_stream.event_exists(conn, event_id):
                raise event_not_found(event_id)
            last = await order_stream.last_sequence(conn)
            if after_sequence == 0:
                after_sequence = await order_stream.pruned_through(conn)
        if after_sequence > last:
            raise FailedPrecondition(
                f"after_sequence {after_sequence} is beyond the stream's last change {last}",
                reason=Reason.SEQUENCE_AHEAD,
                metadata={"last_sequence": str(last)},
            )

        async def read(after: int) -> tuple[list[OrderChangeRecord], int, bool]:
            async with self._db.connection() as conn:
                return await order_stream.changes_after(
                    conn, scope, event_id, after, ORDER_STREAM_PAGE
                )

        async def read_page(after: int) -> tuple[list[Any], bool]:
            async with self._db.connection() as conn:
                return await order_stream.stream_page(conn, after, ORDER_STREAM_PAGE)

        def select(rows: list[Any]) -> list[OrderChangeRecord]:
            """This caller's changes of a shared page (its scope, its event filter)."""
            return [
                order_stream.record_of(r)
                for r in rows
                if (event_id is None or r["event_id"] == event_id)
                and scope.admits(r["partner_id"], r["organizer_id"], r["customer_id"])
            ]

        pages = self._db.outbox.follow(
            outbox.ORDERS,
            outbox.ALL,
            after_sequence,
            read,
            poll_seconds=poll_seconds,
            closing=self._closing,
            closed=stream_shut_down,
            caught_up=OrderChangeRecord.caught_up_at,
            # The backlog is read filtered (above); new changes are read once per process for
            # every WatchOrders reader, and filtered per reader here.
            tail=outbox.Tail(read_page, _sequence_of, select),
            # Behind the retention: it may go on from the first change kept, knowing what
            # it missed (ListOrders tells the state).
            pruned=lambda hole: stream_pruned(hole.after, hole.through, restart=hole.through),
        )
        try:
            async for page in pages:
                yield page
        finally:
            await pages.aclose()


def _sequence_of(row: Any) -> int:
    sequence: int = row["sequence"]
    return sequence


async def _confirm_checks(
    conn: Connection,
    principal: Principal,
    buyer: Buyer,
    hold_id: uuid.UUID,
    hold: Any,
    event: repo.EventForSale,
    request_id: uuid.UUID,
    fingerprint: str,
) -> OrderRecord | None:
    """The checks of a confirmation on its locked hold and event, in the order the caller
    hears them (both the one-statement and the transaction path): the order an earlier call
    with this request_id made, None when the hold may be confirmed, or the refusal."""
    _ensure_own_hold(principal, hold_id, hold)
    if hold["customer_id"] != buyer.customer_id:
        raise _not_the_holds_customer()
    status = HoldStatus(hold["status"])
    earlier = (
        (event.existing_order_id, event.existing_hash)
        if event.existing_order_id is not None and event.existing_hash is not None
        else None
    )
    if earlier is None and status is HoldStatus.CONFIRMED:
        # A twin confirmed it while we waited for the hold's lock: the locked row was re-read
        # at the lock, the joined orders were not; look again (its order is committed now).
        earlier = await repo.existing_request(conn, buyer.customer_id, request_id)
    if earlier is not None:
        if earlier[1] != fingerprint:
            raise _mismatch(request_id)
        done = await repo.get_order(conn, earlier[0])
        assert done is not None
        return done.order
    if status in (HoldStatus.CONFIRMED, HoldStatus.RELEASED):
        raise hold_not_active(hold_id, status)
    if event.cancelled:
        raise not_on_sale(hold["event_id"], "it was cancelled")
    if event.started:
        raise not_on_sale(hold["event_id"], "it has started")
    return None


def _new_order(
    order_id: uuid.UUID,
    event_id: uuid.UUID,
    customer_id: uuid.UUID,
    request_id: uuid.UUID,
    event: repo.EventForSale,
    created: dt.datetime,
    tickets: list[repo.NewTicket],
    seats: list[Any],
    *,
    payment_reference: str | None = None,
    partner_id: uuid.UUID | None = None,
    end_customer: EndCustomer | None = None,
) -> OrderRecord:
    """The order a sale just wrote, from what the transaction already holds (no read back):
    `seats` are the locked seat rows, in the order of `tickets`."""
    return OrderRecord(
        partner_id=partner_id,
        end_customer=end_customer,
        id=order_id,
        event_id=event_id,
        customer_id=customer_id,
        request_id=request_id,
        status=OrderStatus.CONFIRMED,
        total_minor=sum(t.price_minor for t in tickets),
        currency_code=event.currency_code,
        create_time=created,
        refund_time=None,
        refund_reason=None,
        payment_reference=payment_reference,
        tickets=tuple(
            TicketRecord(
                id=t.id,
                seat_id=t.seat_id,
                section_id=s["section_id"],
                section_name=event.section_names[s["section_id"]],
                row_label=s["row_label"],
                seat_number=s["seat_number"],
                seat_label=s["seat_label"],
                code=t.code,
                status=TicketStatus.VALID,
                price_minor=t.price_minor,
            )
            for t, s in zip(tickets, seats, strict=True)
        ),
    )


async def _short_of_places(
    conn: Connection, event_id: uuid.UUID, selection: BestAvailable, channel: Channel
) -> None:
    """Best available found fewer free places than asked: SEAT_LOCKED when enough are
    only locked by buyers in flight (who may roll back), else SOLD_OUT. Always raises."""
    free = await repo.count_available(conn, event_id, selection.section_id, channel)
    if free >= selection.quantity:
        raise Aborted(
            "the remaining places are being booked right now; retry",
            reason=Reason.SEAT_LOCKED,
        )
    raise FailedPrecondition(
        f"only {free} places left in this section",
        reason=Reason.SOLD_OUT,
        metadata={"available": str(free), "section_id": str(selection.section_id)},
    )


def _selected(
    selection: Selection,
) -> tuple[int, list[int] | None, tuple[uuid.UUID, int] | None]:
    """(quantity, seat ids, (section, quantity)) of a selection: one of the last two set."""
    if isinstance(selection, SpecificSeats):
        return len(selection.seat_ids), list(selection.seat_ids), None
    assert isinstance(selection, BestAvailable)
    return selection.quantity, None, (selection.section_id, selection.quantity)


async def _why_not_taken(
    conn: Connection,
    taken: repo.Taken,
    event: repo.EventForSale,
    event_id: uuid.UUID,
    selection: Selection,
    channel: Channel,
) -> None:
    """Why a sale's or hold's one statement wrote nothing (its request_id was new), in the
    order the transaction path checks: raises the refusal, or returns when the event caps
    tickets per customer (the caller then takes the transaction path)."""
    if event.cancelled:
        raise not_on_sale(event_id, "it was cancelled")
    if event.started:
        raise not_on_sale(event_id, "it has started")
    quantity = _selected(selection)[0]
    check_order_limit(quantity, event.max_tickets_per_order)
    if event.max_tickets_per_customer is not None:
        return
    if isinstance(selection, SpecificSeats):
        _check_specific(selection, taken.seats)
    else:
        assert isinstance(selection, BestAvailable)
        if selection.section_id not in event.section_names:
            raise InvalidArgument.one("best_available.section_id", "not a section of this event")
        if len(taken.seats) < quantity:
            await _short_of_places(conn, event_id, selection, channel)
    if taken.sale_time is None:
        # Every check held, but the start passed while the seat locks were waited for: the
        # write decides.
        raise not_on_sale(event_id, "it has started")
    raise _TwinCommittedFirst()


def _check_specific(selection: SpecificSeats, seats: list[Any]) -> None:
    """Every seat asked for is a seat of the event (INVALID_ARGUMENT naming the others) and
    free for the caller (SEAT_UNAVAILABLE naming the taken ones), judged on the locked rows."""
    found = {s["id"] for s in seats}
    missing = [
        FieldViolation(f"seat_ids.ids[{i}]", f"seat {sid} is not a seat of this event")
        for i, sid in enumerate(selection.seat_ids)
        if sid not in found
    ]
    if missing:
        raise InvalidArgument(missing)
    taken = [s["id"] for s in seats if not s["free"]]
    if taken:
        raise FailedPrecondition(
            f"{len(taken)} of {len(seats)} requested seats already sold or held",
            reason=Reason.SEAT_UNAVAILABLE,
            metadata={"seat_ids": ",".join(map(str, taken))},
            violations=[Precondition("SEAT", str(sid), "already sold or held") for sid in taken],
        )


def _new_hold(
    hold_id: uuid.UUID,
    event_id: uuid.UUID,
    request_id: uuid.UUID,
    buyer: Buyer,
    event: repo.EventForSale,
    created: dt.datetime,
    expires: dt.datetime,
    seats: list[Any],
) -> HoldRecord:
    """The hold a HoldSeats just wrote, from the locked seat rows (no read back)."""
    return HoldRecord(
        id=hold_id,
        event_id=event_id,
        customer_id=buyer.customer_id,
        request_id=request_id,
        status=HoldStatus.ACTIVE,
        total_minor=sum(s["price_minor"] for s in seats),
        currency_code=event.currency_code,
        create_time=created,
        expire_time=expires,
        order_id=None,
        partner_id=buyer.partner_id,
        end_customer=buyer.end_customer,
        seats=tuple(
            HoldSeatRecord(
                seat_id=s["id"],
                section_id=s["section_id"],
                section_name=event.section_names[s["section_id"]],
                row_label=s["row_label"],
                seat_number=s["seat_number"],
                seat_label=s["seat_label"],
                price_minor=s["price_minor"],
            )
            for s in seats
        ),
    )


def _ensure_own_hold(principal: Principal, hold_id: uuid.UUID, hold: Any) -> None:
    """The hold is the caller's (a partner's: one it made); a partner is told NOT_FOUND
    for any other, so hold ids of other channels are never confirmed."""
    try:
        ensure_hold_owner(principal, hold["customer_id"], hold["partner_id"])
    except PermissionDenied:
        if principal.partner_id is not None:
            raise hold_not_found(hold_id) from None
        raise


def _channel_of(principal: Principal) -> Channel:
    """Which places a caller may take: a partner its allocations (and the public pool if
    its flag allows), everyone else the public pool."""
    scope = principal.partner
    if scope is None:
        return PUBLIC
    return Channel(scope.partner_id, scope.public_sales)


def _not_the_holds_customer() -> InvalidArgument:
    return InvalidArgument.one(
        "on_behalf_of.external_customer_id", "is not the end customer this hold was made for"
    )


def _hold_record(row: Any, seats: list[Any]) -> HoldRecord:
    return HoldRecord(
        partner_id=row["partner_id"],
        end_customer=repo.end_customer_of(row),
        id=row["id"],
        event_id=row["event_id"],
        customer_id=row["customer_id"],
        request_id=row["request_id"],
        status=HoldStatus(row["status"]),
        total_minor=row["total_minor"],
        currency_code=row["currency_code"],
        create_time=row["create_time"],
        expire_time=row["expire_time"],
        order_id=row["order_id"],
        seats=tuple(
            HoldSeatRecord(
                seat_id=s["seat_id"],
                section_id=s["section_id"],
                section_name=s["section_name"],
                row_label=s["row_label"],
                seat_number=s["seat_number"],
                seat_label=s["seat_label"],
                price_minor=s["price_minor"],
            )
            for s in seats
        ),
    )
