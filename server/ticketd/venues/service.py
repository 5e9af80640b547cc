"""Venues and their layouts: validation, then one unit of work on the database each."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from ticketd.audit import service as audit
from ticketd.db.database import Connection, Database
from ticketd.errors import Aborted, FailedPrecondition, NotFound, Reason, not_found
from ticketd.venues import repository as repo
from ticketd.venues.rules import (
    VenueRecord,
    VenueSpec,
    check_response_fits,
    clean,
    projected_record,
    validate_venue,
    venue_fingerprint,
)

ResponseSize = Callable[[VenueRecord], int]
"""Bytes a venue takes in a CreateVenue/GetVenue answer (the edge knows the encoding)."""


def _venue_not_found(venue_id: uuid.UUID) -> NotFound:
    return not_found(Reason.VENUE_NOT_FOUND, "venue", venue_id=venue_id)


def _mismatch(request_id: uuid.UUID) -> FailedPrecondition:
    return FailedPrecondition(
        "this request_id was already used to create a different venue",
        reason=Reason.REQUEST_ID_MISMATCH,
        metadata={"request_id": str(request_id)},
    )


class VenueService:
    """Creates, replaces and reads venues; never stores one that could not be read back."""

    def __init__(
        self, db: Database, *, response_size: ResponseSize, max_response_bytes: int
    ) -> None:
        self._db = db
        self._response_size = response_size
        self._max_response_bytes = max_response_bytes

    def _check_fits(self, spec: VenueSpec) -> None:
        """Before anything is written: the venue's answer must fit the transport limit."""
        check_response_fits(self._response_size(projected_record(spec)), self._max_response_bytes)

    async def create(
        self, created_by: uuid.UUID, spec: VenueSpec, request_id: uuid.UUID | None = None
    ) -> VenueRecord:
        """A new venue with its layout. With a request_id, a repeat by the same caller
        (concurrent or not) returns the venue that request created, as it is now."""
        validate_venue(spec)
        self._check_fits(spec)
        fingerprint = venue_fingerprint(spec)
        async with self._db.transaction() as conn:
            if request_id is not None:
                found = await repo.venue_for_request(conn, created_by, request_id)
                if found is not None:
                    return await self._original(conn, found, fingerprint, request_id)
            venue_id = await repo.insert_venue(
                conn,
                clean(spec),
                created_by=created_by,
                request_id=request_id,
                request_hash=fingerprint if request_id is not None else None,
            )
            if venue_id is None:
                # A concurrent twin committed first (ON CONFLICT waited for it); nothing of
                # ours was written, and the twin is visible to the next statement.
                assert request_id is not None
                found = await repo.venue_for_request(conn, created_by, request_id)
                if found is None:
                    raise Aborted("concurrent duplicate request; retry", reason=Reason.RETRY)
                return await self._original(conn, found, fingerprint, request_id)
            await audit.record(
                conn,
                audit.current_actor(),
                audit.Action.VENUE_CREATED,
                audit.Subject.of(audit.SubjectKind.VENUE, venue_id),
            )
            venue = await repo.venue_with_layout(conn, venue_id)
        assert venue is not None
        return venue

    async def _original(
        self,
        conn: Connection,
        found: tuple[uuid.UUID, str],
        fingerprint: str,
        request_id: uuid.UUID,
    ) -> VenueRecord:
        if found[1] != fingerprint:
            raise _mismatch(request_id)
        venue = await repo.venue_with_layout(conn, found[0])
        if venue is None:
            raise _venue_not_found(found[0])
        return venue

    async def replace(self, venue_id: uuid.UUID, spec: VenueSpec) -> VenueRecord:
        validate_venue(spec)
        self._check_fits(spec)
        async with self._db.transaction() as conn:
            if not await repo.replace_venue(conn, venue_id, clean(spec)):
                raise _venue_not_found(venue_id)
            await audit.record(
                conn,
                audit.current_actor(),
                audit.Action.VENUE_UPDATED,
                audit.Subject.of(audit.SubjectKind.VENUE, venue_id),
            )
            venue = await repo.venue_with_layout(conn, venue_id)
        assert venue is not None
        return venue

    async def get(self, venue_id: uuid.UUID) -> VenueRecord:
        async with self._db.connection() as conn:
            venue = await repo.venue_with_layout(conn, venue_id)
        if venue is None:
            raise _venue_not_found(venue_id)
        return venue

    async def list_venues(
        self, *, after: tuple[str, uuid.UUID] | None, limit: int
    ) -> list[VenueRecord]:
        async with self._db.connection() as conn:
            return await repo.list_venues(
                conn, after=(after[0], str(after[1])) if after else None, limit=limit
            )

    async def layout_for_event(self, conn: Connection, venue_id: uuid.UUID) -> VenueRecord:
        """The venue's layout inside the caller's transaction, locked FOR SHARE so it cannot
        change until that transaction ends (an event copies it)."""
        venue = await repo.venue_with_layout(conn, venue_id, lock_for_share=True)
        if venue is None:
            raise _venue_not_found(venue_id)
        return venue
