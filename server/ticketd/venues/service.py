"""Venues and their layouts: validation, then one unit of work on the database each."""

from __future__ import annotations

import uuid

from ticketd.db.database import Connection, Database
from ticketd.errors import NotFound, Reason, not_found
from ticketd.venues import repository as repo
from ticketd.venues.rules import VenueRecord, VenueSpec, clean, validate_venue


def _venue_not_found(venue_id: uuid.UUID) -> NotFound:
    return not_found(Reason.VENUE_NOT_FOUND, "venue", venue_id=venue_id)


class VenueService:
    """Creates, replaces and reads venues."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, spec: VenueSpec) -> VenueRecord:
        validate_venue(spec)
        async with self._db.transaction() as conn:
            venue_id = await repo.insert_venue(conn, clean(spec))
            venue = await repo.venue_with_layout(conn, venue_id)
        assert venue is not None
        return venue

    async def replace(self, venue_id: uuid.UUID, spec: VenueSpec) -> VenueRecord:
        validate_venue(spec)
        async with self._db.transaction() as conn:
            if not await repo.replace_venue(conn, venue_id, clean(spec)):
                raise _venue_not_found(venue_id)
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
