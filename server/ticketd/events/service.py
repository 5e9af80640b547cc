"""Events: creation with their inventory, reads, cancellation (which refunds through booking)."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.accounts.service import AccountService
from ticketd.auth.principal import Principal
from ticketd.booking.service import BookingService
from ticketd.db.database import Connection, Database
from ticketd.errors import InvalidArgument
from ticketd.events import repository as repo
from ticketd.events.rules import (
    EventFilter,
    EventRecord,
    EventSpec,
    EventTimesUpdate,
    SeatRecord,
    SeatStatus,
    StaffRecord,
    check_can_be_staff,
    check_can_cancel,
    check_can_update,
    check_prices_cover_sections,
    ensure_can_manage,
    event_time_violations,
    validate_cancel_reason,
    validate_event_fields,
)
from ticketd.shared import ScanWindowDefaults, event_not_found
from ticketd.venues.service import VenueService


class EventService:
    """Puts events on sale and takes them off; reads events and seat maps; sets their scan
    window and who works their gates."""

    def __init__(
        self,
        db: Database,
        venues: VenueService,
        booking: BookingService,
        *,
        accounts: AccountService,
        window: ScanWindowDefaults,
    ) -> None:
        self._db = db
        self._venues = venues
        self._booking = booking
        self._accounts = accounts
        self._window = window

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

    async def get(self, event_id: uuid.UUID) -> EventRecord:
        async with self._db.connection() as conn:
            event = await repo.event(conn, event_id)
        if event is None:
            raise event_not_found(event_id)
        return event

    async def list_events(
        self, filters: EventFilter, *, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
    ) -> list[EventRecord]:
        async with self._db.connection() as conn:
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
        async with self._db.connection() as conn:
            if not await repo.event_exists(conn, event_id):
                raise event_not_found(event_id)
            return await repo.list_seats(
                conn, event_id, section_id=section_id, status=status, after_id=after_id, limit=limit
            )

    async def cancel(self, principal: Principal, event_id: uuid.UUID, reason: str) -> EventRecord:
        """Take the event off sale and refund its orders, all in one transaction."""
        cleaned = validate_cancel_reason(reason)
        async with self._db.transaction() as conn:
            event = await repo.event(conn, event_id, with_counts=False, lock="FOR UPDATE")
            if event is None:
                raise event_not_found(event_id)
            ensure_can_manage(principal, event.organizer_id)
            check_can_cancel(event)
            await repo.mark_cancelled(conn, event_id, cleaned)
            # Same transaction: the event and all of its refunds commit together. Bookings
            # hold the event row KEY SHARE, so none is in flight now and none can start
            # until we commit.
            await self._booking.refund_event_orders(
                conn, event_id, refunded_by=principal.user_id, reason=f"event cancelled: {cleaned}"
            )
            event = await repo.event(conn, event_id)
        assert event is not None
        return event

    async def update_times(
        self, principal: Principal, event_id: uuid.UUID, update: EventTimesUpdate
    ) -> EventRecord:
        """Change doors_open_time / end_time: owner or ADMIN, not once cancelled or over."""
        async with self._db.transaction() as conn:
            # NO KEY UPDATE: bookings hold the event row KEY SHARE and need not wait for this.
            event = await repo.event(conn, event_id, with_counts=False, lock="FOR NO KEY UPDATE")
            if event is None:
                raise event_not_found(event_id)
            ensure_can_manage(principal, event.organizer_id)
            state = await repo.window_state(conn, event_id, self._window)
            check_can_update(event, state or "")
            doors, end = update.applied_to(event)
            bad = event_time_violations(event.start_time, doors, end, prefix="event.")
            if bad:
                raise InvalidArgument(bad)
            await repo.update_times(conn, event_id, doors, end)
            changed = await repo.event(conn, event_id)
        assert changed is not None
        return changed

    async def _check_manager(
        self, conn: Connection, principal: Principal, event_id: uuid.UUID
    ) -> None:
        owner = await repo.event_owner(conn, event_id)
        if owner is None:
            raise event_not_found(event_id)
        ensure_can_manage(principal, owner)

    async def assign_staff(
        self, principal: Principal, event_id: uuid.UUID, user_id: uuid.UUID
    ) -> StaffRecord:
        """Let an ENTRY_MANAGER work this event's gates (idempotent)."""
        # Ownership first: someone who may not manage the event learns nothing about users.
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
        user = await self._accounts.get_user(user_id)  # NOT_FOUND USER_NOT_FOUND
        check_can_be_staff(user.id, user.roles)
        async with self._db.connection() as conn:
            return await repo.assign_staff(conn, event_id, user_id, principal.user_id)

    async def unassign_staff(
        self, principal: Principal, event_id: uuid.UUID, user_id: uuid.UUID
    ) -> bool:
        """Take the event's gates away from a user (idempotent); True if they were assigned.
        Applies to their next call: every gate call reads event_staff afresh."""
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
        await self._accounts.get_user(user_id)  # NOT_FOUND USER_NOT_FOUND
        async with self._db.connection() as conn:
            return await repo.unassign_staff(conn, event_id, user_id)

    async def list_staff(
        self, principal: Principal, event_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[StaffRecord]:
        """The event's staff by user id: owner or ADMIN."""
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
            return await repo.list_staff(conn, event_id, after=after, limit=limit)
