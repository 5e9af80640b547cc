"""All SQL of the audit log: one insert (inside the caller's transaction) and one listing."""

from __future__ import annotations

import json
import uuid
from typing import Any

from ticketd.audit.rules import (
    Actor,
    ActorKind,
    AuditEntryRecord,
    AuditFilter,
    SubjectKind,
    Visibility,
)
from ticketd.db.database import Connection
from ticketd.db.params import Params
from ticketd.db.records import record_from_row

_COLUMNS = """id, create_time, actor_kind, actor_id, actor_key_id, action, subject_kind,
              subject_id, event_id, details"""


def _record(row: Any) -> AuditEntryRecord:
    return record_from_row(
        AuditEntryRecord,
        row,
        actor_kind=ActorKind(row["actor_kind"]),
        details=json.loads(row["details"]),
    )


async def insert_entry(
    conn: Connection,
    *,
    actor: Actor,
    action: str,
    subject_kind: str,
    subject_id: str,
    event_id: uuid.UUID | None,
    details: dict[str, str],
) -> None:
    """One entry, on `conn`'s open transaction: it commits or rolls back with the act."""
    await conn.execute(
        """
        INSERT INTO audit_entries (actor_kind, actor_id, actor_key_id, action, subject_kind,
                                   subject_id, event_id, details)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)
        """,
        actor.kind.value,
        actor.id,
        actor.key_id,
        action,
        subject_kind,
        subject_id,
        event_id,
        json.dumps(details),
    )


async def event_organizer(conn: Connection, event_id: uuid.UUID) -> tuple[bool, uuid.UUID | None]:
    """(the event exists, its organizer). Read here, not through the events domain: the
    audit log only needs this one column to scope a listing."""
    owner = await conn.fetchval("SELECT organizer_id FROM events WHERE id = $1", event_id)
    return owner is not None, owner


async def list_entries(
    conn: Connection,
    visibility: Visibility,
    filters: AuditFilter,
    *,
    before_id: int | None,
    limit: int,
) -> list[AuditEntryRecord]:
    """Entries matching `filters` that `visibility` allows, newest first (by id), strictly
    older than `before_id` when given."""
    p = Params()
    where: list[str] = []
    if not visibility.everything:
        # The union of what each role lets the caller read (rules.visibility_for).
        allowed: list[str] = []
        if visibility.orders:
            allowed.append(f"subject_kind = {p(SubjectKind.ORDER.value)}")
        if visibility.organizer_id is not None:
            allowed.append(
                "event_id IN (SELECT id FROM events WHERE organizer_id = "
                f"{p(visibility.organizer_id)})"
            )
        where.append("(" + " OR ".join(allowed or ["false"]) + ")")
    if filters.actor_id is not None:
        actor = p(filters.actor_id)
        where.append(f"(actor_id = {actor} OR actor_key_id = {actor})")
    if filters.action is not None:
        where.append(f"action = {p(filters.action)}")
    if filters.subject_kind is not None:
        where.append(f"subject_kind = {p(filters.subject_kind)}")
    if filters.subject_id is not None:
        where.append(f"subject_id = {p(filters.subject_id)}")
    if filters.event_id is not None:
        where.append(f"event_id = {p(filters.event_id)}")
    if filters.start_time is not None:
        where.append(f"create_time >= {p(filters.start_time)}")
    if filters.end_time is not None:
        where.append(f"create_time < {p(filters.end_time)}")
    if before_id is not None:
        where.append(f"id < {p(before_id)}")
    sql = f"SELECT {_COLUMNS} FROM audit_entries"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY id DESC LIMIT {p(limit)}"
    rows = await conn.fetch(sql, *p)
    return [_record(row) for row in rows]
