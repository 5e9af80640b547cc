"""The audit log: `record` (called by every domain's service inside the transaction of the
act it records) and the listing behind AuditService.ListAuditEntries."""

from __future__ import annotations

import uuid

from ticketd.audit import repository as repo
from ticketd.audit.rules import (
    SYSTEM,
    Action,
    Actor,
    ActorKind,
    AuditEntryRecord,
    AuditFilter,
    Subject,
    SubjectKind,
    clean_details,
    may_filter_event,
    visibility_for,
)
from ticketd.auth.principal import Principal, current_principal
from ticketd.db.database import Connection, Database
from ticketd.errors import PermissionDenied, Reason, Unauthenticated
from ticketd.shared import event_not_found

__all__ = [
    "SYSTEM",
    "Action",
    "Actor",
    "ActorKind",
    "AuditService",
    "Subject",
    "SubjectKind",
    "current_actor",
    "record",
]


def current_actor() -> Actor:
    """The actor of the current RPC (bound by the edge), or SYSTEM outside of one: for
    services whose methods do not take the caller."""
    try:
        return Actor.of(current_principal())
    except Unauthenticated:
        return SYSTEM


async def record(
    conn: Connection,
    actor: Actor | Principal,
    action: Action,
    subject: Subject,
    *,
    event_id: uuid.UUID | None = None,
    details: dict[str, object] | None = None,
) -> None:
    """Write one audit entry on `conn`, which must be inside the transaction that makes the
    act: the entry commits with it or not at all. `event_id` names the event the act
    belongs to (its organizer may then read the entry)."""
    who = actor if isinstance(actor, Actor) else Actor.of(actor)
    await repo.insert_entry(
        conn,
        actor=who,
        action=action.value,
        subject_kind=subject.kind.value,
        subject_id=subject.id,
        event_id=event_id,
        details=clean_details(details),
    )


class AuditService:
    """Reads the audit log for ADMIN (everything), ORGANIZER (their events' entries) and
    SUPPORT (order entries)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def list_entries(
        self,
        principal: Principal,
        filters: AuditFilter,
        *,
        before_id: int | None,
        limit: int,
    ) -> list[AuditEntryRecord]:
        """Newest first. An event filter naming an event the caller may not read is
        PERMISSION_DENIED NOT_EVENT_OWNER (an unknown event NOT_FOUND EVENT_NOT_FOUND)."""
        filters.check()
        visibility = visibility_for(principal)
        if visibility.nothing:
            raise PermissionDenied(
                "the audit log is for ADMIN, SUPPORT and ORGANIZER", reason=Reason.ROLE_NOT_ALLOWED
            )
        async with self._db.connection() as conn:
            if filters.event_id is not None:
                exists, organizer = await repo.event_organizer(conn, filters.event_id)
                if not exists:
                    raise event_not_found(filters.event_id)
                if not may_filter_event(visibility, organizer):
                    raise PermissionDenied(
                        "only the event's organizer (or ADMIN, SUPPORT) reads its entries",
                        reason=Reason.NOT_EVENT_OWNER,
                    )
            return await repo.list_entries(
                conn, visibility, filters, before_id=before_id, limit=limit
            )
