"""Events: creation with their inventory, reads, cancellation (which refunds through booking)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncGenerator
from typing import Protocol

from ticketd.accounts.service import AccountService
from ticketd.audit import service as audit
from ticketd.auth.principal import Principal
from ticketd.booking.service import AllocationRecord, BookingService
from ticketd.db import outbox
from ticketd.db.database import Budget, Connection, Database
from ticketd.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Reason,
    not_found,
    stream_pruned,
    stream_shut_down,
)
from ticketd.events import repository as repo
from ticketd.events.rules import (
    MAX_REPORTED_ATTENDED_ORDERS,
    CancelResult,
    EventFilter,
    EventQuotas,
    EventRecord,
    EventSpec,
    EventTimesUpdate,
    SeatChangeRecord,
    SeatRecord,
    SeatStatus,
    StaffRecord,
    check_can_be_staff,
    check_can_cancel,
    check_can_update,
    check_live_events_quota,
    check_places_quota,
    check_prices_cover_sections,
    ensure_can_manage,
    event_fingerprint,
    event_started_error,
    event_time_violations,
    quota_applies,
    validate_cancel_reason,
    validate_event_fields,
)
from ticketd.shared import ScanWindowDefaults, event_not_found
from ticketd.venues.service import VenueService

# Defaults when the caller passes none: what ticketd.config documents.
DEFAULT_QUOTAS = EventQuotas(places_per_event=200_000, live_events=100)
# Changes read from the outbox per query: what a stream holds in memory at most.
STREAM_PAGE = 500
# The shared tail of a busy event reads at most this often (ticketd.db.outbox.Tail): each
# read is one page for every watcher, one message each on WatchSeatBatches, so this bounds
# a watcher's messages to 20 a second however many commits there are, for at most 50 ms
# more delivery time. With a read per sequencer pass (up to 100 a second) 50 watchers
# meant several thousand messages a second from one process.
TAIL_MIN_INTERVAL_S = 0.05


class _TwinCommittedFirst(Exception):
    """The same organizer's request_id was committed by a concurrent call."""


def _mismatch(request_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        "this request_id was already used to create a different event",
        reason=Reason.REQUEST_ID_MISMATCH,
        metadata={"request_id": str(request_id)},
    )


class PartnerDirectory(Protocol):
    """Whether a partner exists (the partners domain answers)."""

    async def exists(self, partner_id: uuid.UUID) -> bool: ...


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
        quotas: EventQuotas = DEFAULT_QUOTAS,
        partners: PartnerDirectory | None = None,
    ) -> None:
        self._partners = partners
        self._db = db
        self._venues = venues
        self._booking = booking
        self._accounts = accounts
        self._window = window
        self._quotas = quotas
        self._closing = asyncio.Event()

    def stop_streams(self) -> None:
        """Server shutdown: every seat stream ends (SERVER_SHUTTING_DOWN, with where to
        resume) instead of holding the shutdown for its whole grace period."""
        self._closing.set()

    async def watch_seats(
        self, event_id: uuid.UUID, after_sequence: int, *, poll_seconds: float
    ) -> AsyncGenerator[list[SeatChangeRecord], None]:
        """The seat stream of an event, page by page: with `after_sequence` 0 a snapshot
        first (every seat as of one change number), then every committed change after it,
        in order, for as long as the caller reads. Each page is read from the outbox when
        a NOTIFY says the event changed, or every `poll_seconds` in case one was lost;
        before each read the stream is sequenced (ticketd.db.outbox), so what committed
        before the wake-up is numbered and read now, whoever else sequences."""
        after = after_sequence
        if after == 0:
            async with self._db.connection(Budget.PUBLIC) as conn:
                snap = await repo.seat_snapshot(conn, event_id)
            if snap is None:
                raise event_not_found(event_id)
            after, read_time, rows = snap
            for start in range(0, len(rows), STREAM_PAGE):
                page = rows[start : start + STREAM_PAGE]
                yield [
                    SeatChangeRecord(
                        sequence=after,
                        seat_id=r["id"],
                        section_id=r["section_id"],
                        status=SeatStatus(r["status"]),
                        change_time=read_time,
                        snapshot=True,
                        snapshot_complete=start + i == len(rows) - 1,
                    )
                    for i, r in enumerate(page)
                ]
        else:
            # Numbered first: a resume point is judged against what has committed.
            await self._db.outbox.catch_up(outbox.SEATS, event_id)
            async with self._db.connection(Budget.PUBLIC) as conn:
                last = await repo.last_seat_change(conn, event_id)
            if last is None:
                raise event_not_found(event_id)
            if after > last:
                raise FailedPrecondition(
                    f"after_sequence {after} is beyond the stream's last change {last}",
                    reason=Reason.SEQUENCE_AHEAD,
                    metadata={"last_sequence": str(last)},
                )

        async def read_page(start: int) -> tuple[list[SeatChangeRecord], bool]:
            async with self._db.connection(Budget.PUBLIC) as conn:
                changes = await repo.seat_changes_after(conn, event_id, start, STREAM_PAGE)
            return changes, len(changes) == STREAM_PAGE

        async def read(start: int) -> tuple[list[SeatChangeRecord], int, bool]:
            changes, more = await read_page(start)
            return changes, changes[-1].sequence if changes else start, more

        # What committed after the snapshot (or after N) is read by the first read: the
        # subscription starts before it, so nothing falls between.
        pages = self._db.outbox.follow(
            outbox.SEATS,
            event_id,
            after,
            read,
            poll_seconds=poll_seconds,
            closing=self._closing,
            closed=stream_shut_down,
            # Every watcher of the event shares one reader of its new changes (records are
            # immutable and public: each gets the same page).
            tail=outbox.Tail(read_page, _sequence_of, _every, TAIL_MIN_INTERVAL_S),
            # A watcher behind the retention starts again from a fresh snapshot.
            pruned=lambda hole: stream_pruned(hole.after, hole.through, restart=0),
        )
        try:
            async for changes in pages:
                yield changes
        finally:
            await pages.aclose()

    async def create(
        self, principal: Principal, spec: EventSpec, request_id: uuid.UUID | None = None
    ) -> EventRecord:
        """The event and its whole inventory, in one transaction, within the organizer's
        quotas. With a request_id, a repeat by the same caller (concurrent or not) returns
        the event that request created; a different spec is REQUEST_ID_MISMATCH."""
        validate_event_fields(spec)
        fingerprint = event_fingerprint(spec)
        try:
            return await self._create_once(principal, spec, request_id, fingerprint)
        except _TwinCommittedFirst:
            assert request_id is not None
            async with self._db.connection() as conn:
                found = await repo.event_for_request(conn, principal.user_id, request_id)
                if found is not None and found[1] != fingerprint:
                    raise _mismatch(request_id) from None
                twin = await repo.event(conn, found[0]) if found is not None else None
            if twin is None:
                # Conflicted, yet gone: only if it was removed meanwhile. Let the client retry.
                raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY) from None
            return twin

    async def _create_once(
        self,
        principal: Principal,
        spec: EventSpec,
        request_id: uuid.UUID | None,
        fingerprint: str,
    ) -> EventRecord:
        organizer_id = principal.user_id
        limited = quota_applies(principal) and self._quotas.live_events > 0
        async with self._db.transaction() as conn:
            if limited:
                # Before the request_id lookup: a twin waiting here finds its original
                # once it may look, instead of being counted against the quota by it.
                await repo.serialize_organizer(conn, organizer_id)
            if request_id is not None:
                found = await repo.event_for_request(conn, organizer_id, request_id)
                if found is not None:
                    if found[1] != fingerprint:
                        raise _mismatch(request_id)
                    existing = await repo.event(conn, found[0])
                    assert existing is not None
                    return existing
            venue = await self._venues.layout_for_event(conn, spec.venue_id)
            section_ids = [s.id for s in venue.sections]
            check_prices_cover_sections(
                spec.section_prices, section_ids, await repo.db_now(conn), spec.start_time
            )
            check_places_quota(principal, venue.capacity, self._quotas)
            if limited:
                live = await repo.count_live_events(conn, organizer_id)
                check_live_events_quota(principal, live, self._quotas)
            event_id = await repo.insert_event(
                conn,
                organizer_id=organizer_id,
                spec=spec,
                capacity=venue.capacity,
                section_ids=section_ids,
                request_id=request_id,
                request_hash=fingerprint if request_id is not None else None,
            )
            if event_id is None:
                raise _TwinCommittedFirst()
            await audit.record(
                conn,
                principal,
                audit.Action.EVENT_CREATED,
                audit.Subject.of(audit.SubjectKind.EVENT, event_id),
                event_id=event_id,
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
            # One entry for the cancel and its refunds (each refunded order is named by the
            # event and the refunds' records, not by an entry of its own).
            await audit.record(
                conn,
                principal,
                audit.Action.EVENT_CANCELLED,
                audit.Subject.of(audit.SubjectKind.EVENT, event_id),
                event_id=event_id,
                details={
                    "reason": cleaned,
                    "refunded_orders": refunds.refunded_orders,
                    "attended_orders": refunds.attended_orders,
                },
            )
            after = await repo.event(conn, event_id)
        assert after is not None
        return CancelResult(
            event=after,
            refunded_orders=refunds.refunded_orders,
            attended_orders=refunds.attended_orders,
            attended_order_ids=refunds.attended_order_ids,
        )

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
            await audit.record(
                conn,
                principal,
                audit.Action.EVENT_TIMES_CHANGED,
                audit.Subject.of(audit.SubjectKind.EVENT, event_id),
                event_id=event_id,
                details={"doors_open_time": doors, "end_time": end},
            )
            changed = await repo.event(conn, event_id)
        assert changed is not None
        return changed

    # Allocations (issue 13): the event's owner decides, booking locks the seats.

    async def allocate(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        partner_id: uuid.UUID,
        request_id: uuid.UUID,
        seat_ids: list[int] | None,
        best_available: tuple[uuid.UUID, int] | None,
        release_time: dt.datetime | None,
    ) -> AllocationRecord:
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
        if self._partners is None or not await self._partners.exists(partner_id):
            raise not_found(Reason.PARTNER_NOT_FOUND, "partner", partner_id=partner_id)
        return await self._booking.allocate(
            event_id=event_id,
            partner_id=partner_id,
            created_by=principal.user_id,
            request_id=request_id,
            seat_ids=seat_ids,
            best_available=best_available,
            release_time=release_time,
        )

    async def list_allocations(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[AllocationRecord]:
        """The event's owner or ADMIN see every allocation; a partner's API key sees its own
        partner's only (another partner's channel is none of its business)."""
        async with self._db.connection() as conn:
            if principal.partner_id is not None:
                if await repo.event_owner(conn, event_id) is None:
                    raise event_not_found(event_id)
            else:
                await self._check_manager(conn, principal, event_id)
        if principal.partner_id is not None:
            return await self._booking.list_partner_allocations(
                event_id, principal.partner_id, after, limit
            )
        return await self._booking.list_allocations(event_id, after, limit)

    async def release_allocation(
        self, principal: Principal, allocation_id: uuid.UUID
    ) -> AllocationRecord:
        """Someone else's event's allocation is NOT_FOUND, like an unknown one."""
        found = await self._booking.get_allocation(allocation_id)
        try:
            async with self._db.connection() as conn:
                await self._check_manager(conn, principal, found.event_id)
        except PermissionDenied:
            raise not_found(
                Reason.ALLOCATION_NOT_FOUND, "allocation", allocation_id=allocation_id
            ) from None
        return await self._booking.release_allocation(allocation_id)

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
        async with self._db.transaction() as conn:
            staff = await repo.assign_staff(conn, event_id, user_id, principal.user_id)
            await audit.record(
                conn,
                principal,
                audit.Action.EVENT_STAFF_ASSIGNED,
                audit.Subject.of(audit.SubjectKind.USER, user_id),
                event_id=event_id,
            )
        return staff

    async def unassign_staff(
        self, principal: Principal, event_id: uuid.UUID, user_id: uuid.UUID
    ) -> bool:
        """Take the event's gates away from a user (idempotent); True if they were assigned.
        Applies to their next call: every gate call reads event_staff afresh."""
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
        await self._accounts.get_user(user_id)  # NOT_FOUND USER_NOT_FOUND
        async with self._db.transaction() as conn:
            removed = await repo.unassign_staff(conn, event_id, user_id)
            if removed:
                await audit.record(
                    conn,
                    principal,
                    audit.Action.EVENT_STAFF_UNASSIGNED,
                    audit.Subject.of(audit.SubjectKind.USER, user_id),
                    event_id=event_id,
                )
        return removed

    async def list_staff(
        self, principal: Principal, event_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
    ) -> list[StaffRecord]:
        """The event's staff by user id: owner or ADMIN."""
        async with self._db.connection() as conn:
            await self._check_manager(conn, principal, event_id)
            return await repo.list_staff(conn, event_id, after=after, limit=limit)


def _sequence_of(change: SeatChangeRecord) -> int:
    return change.sequence


def _every(changes: list[SeatChangeRecord]) -> list[SeatChangeRecord]:
    return changes
