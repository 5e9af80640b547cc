"""Events: creation with their inventory, reads, cancellation (which refunds through booking)."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.auth.principal import Principal
from ticketd.booking.service import BookingService
from ticketd.db.database import Budget, Database
from ticketd.events import repository as repo
from ticketd.events.rules import (
    MAX_REPORTED_ATTENDED_ORDERS,
    CancelResult,
    EventFilter,
    EventRecord,
    EventSpec,
    SeatRecord,
    SeatStatus,
    check_can_cancel,
    check_prices_cover_sections,
    ensure_can_manage,
    event_started_error,
    validate_cancel_reason,
    validate_event_fields,
)
from ticketd.shared import event_not_found
from ticketd.venues.service import VenueService


class EventService:
    """Puts events on sale and takes them off; reads events and seat maps."""

    def __init__(self, db: Database, venues: VenueService, booking: BookingService) -> None:
        self._db = db
        self._venues = venues
        self._booking = booking

    async def create(self, principal: Principal, spec: EventSpec) -> EventRecord:
        """The event and its whole inventory, in one transaction."""
        validate_event_fields(spec)
        async with self._db.transaction() as conn:
            venue = await self._venues.layout_for_event(conn, spec.venue_id)
            section_ids = [s.id for s in venue.sections]
            check_prices_cover_sections(
                spec.section_prices, section_ids, await repo.db_now(conn), spec.start_time
            )
            event_id = await repo.insert_event(
                conn,
                organizer_id=principal.user_id,
                spec=spec,
                capacity=venue.capacity,
                section_ids=section_ids,
            )
            event = await repo.event(conn, event_id)
        assert event is not None
        return event

    # The three reads below serve the public (anonymous) RPCs: they run on the PUBLIC
    # budget, a bounded share of the pool, so a flood of them cannot starve sign-ins,
    # sales and refunds of connections (ticketd.db.database).

    async def get(self, event_id: uuid.UUID) -> EventRecord:
        async with self._db.connection(budget=Budget.PUBLIC) as conn:
            event = await repo.event(conn, event_id)
        if event is None:
            raise event_not_found(event_id)
        return event

    async def list_events(
        self, filters: EventFilter, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
    ) -> list[EventRecord]:
        async with self._db.connection(budget=Budget.PUBLIC) as conn:
            return await repo.list_events(conn, filters, after=after, limit=limit)

    async def list_seats(
        self,
        event_id: uuid.UUID,
        *,
        section_id: uuid.UUID | None,
        status: SeatStatus | None,
        after_id: int | None,
        limit: int,
    ) -> list[SeatRecord]:
        async with self._db.connection(budget=Budget.PUBLIC) as conn:
            if not await repo.event_exists(conn, event_id):
                raise event_not_found(event_id)
            return await repo.list_seats(
                conn, event_id, section_id=section_id, status=status, after_id=after_id, limit=limit
            )

    async def cancel(self, principal: Principal, event_id: uuid.UUID, reason: str) -> CancelResult:
        """Take the event off sale and refund its orders, all in one transaction; only
        before its start (judged at the write). Orders with a used ticket are kept and
        reported, never refunded."""
        cleaned = validate_cancel_reason(reason)
        async with self._db.transaction() as conn:
            event = await repo.event(conn, event_id, with_counts=False, lock="FOR UPDATE")
            if event is None:
                raise event_not_found(event_id)
            ensure_can_manage(principal, event.organizer_id)
            check_can_cancel(event)
            if not await repo.mark_cancelled(conn, event_id, cleaned):
                # The lock wait (or the time since the check above) crossed the start.
                raise event_started_error(event_id)
            # Same transaction: the event and all of its refunds commit together. Bookings
            # hold the event row KEY SHARE, so none is in flight now and none can start
            # until we commit.
            refunds = await self._booking.refund_event_orders(
                conn,
                event_id,
                refunded_by=principal.user_id,
                reason=f"event cancelled: {cleaned}",
                report_limit=MAX_REPORTED_ATTENDED_ORDERS,
            )
            after = await repo.event(conn, event_id)
        assert after is not None
        return CancelResult(
            event=after,
            refunded_orders=refunds.refunded_orders,
            attended_orders=refunds.attended_orders,
            attended_order_ids=refunds.attended_order_ids,
        )
