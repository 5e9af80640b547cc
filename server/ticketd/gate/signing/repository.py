"""All SQL of signing keys and the revocation list.

Key rows are written under the event row's FOR NO KEY UPDATE lock (the lock the revocation
trigger takes too), so two rotations of one event take turns; bookings hold the event KEY
SHARE and never wait for it. Revocations are written only by the trigger of migration 0010;
this module only reads them.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from ticketd.db.database import Connection as Conn
from ticketd.shared import ScanWindowDefaults


@dataclass(frozen=True)
class KeyRow:
    key_id: int
    public_key: bytes
    sealed_private: bytes
    create_time: dt.datetime
    retire_time: dt.datetime | None


@dataclass(frozen=True)
class EventGate:
    """What the signing and sync calls need of an event, and the caller's relation to it."""

    organizer_id: uuid.UUID
    is_staff: bool
    doors: dt.datetime
    end: dt.datetime
    cancelled: bool
    offline_admission: bool
    last_revocation: int


def _key(row: Any) -> KeyRow:
    return KeyRow(
        key_id=row["key_id"],
        public_key=bytes(row["public_key"]),
        sealed_private=bytes(row["sealed_private"]),
        create_time=row["create_time"],
        retire_time=row["retire_time"],
    )


_KEY_COLUMNS = "key_id, public_key, sealed_private, create_time, retire_time"


async def event_gate(
    conn: Conn, event_id: uuid.UUID, caller_id: uuid.UUID, window: ScanWindowDefaults
) -> EventGate | None:
    """The event's effective scan window and gate settings, or None: no such event."""
    row = await conn.fetchrow(
        """
        SELECT e.organizer_id, e.cancel_time IS NOT NULL AS cancelled, e.offline_admission,
               COALESCE(e.doors_open_time, e.start_time - $3::interval) AS doors,
               COALESCE(e.end_time, e.start_time + $4::interval) AS end_at,
               EXISTS (SELECT 1 FROM event_staff st
                       WHERE st.event_id = e.id AND st.user_id = $2) AS is_staff,
               (SELECT coalesce(max(sequence), 0) FROM ticket_revocations r
                WHERE r.event_id = e.id) AS last_revocation
        FROM events e WHERE e.id = $1
        """,
        event_id,
        caller_id,
        window.doors_open_lead,
        window.default_duration,
    )
    if row is None:
        return None
    return EventGate(
        organizer_id=row["organizer_id"],
        is_staff=row["is_staff"],
        doors=row["doors"],
        end=row["end_at"],
        cancelled=row["cancelled"],
        offline_admission=row["offline_admission"],
        last_revocation=row["last_revocation"],
    )


async def lock_event(conn: Conn, event_id: uuid.UUID) -> bool:
    """The event row FOR NO KEY UPDATE (key changes of one event take turns); False: none."""
    found = await conn.fetchval("SELECT 1 FROM events WHERE id = $1 FOR NO KEY UPDATE", event_id)
    return found is not None


async def active_key(conn: Conn, event_id: uuid.UUID) -> KeyRow | None:
    """The key that signs the event's new codes."""
    row = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM event_signing_keys "
        "WHERE event_id = $1 AND retire_time IS NULL",
        event_id,
    )
    return _key(row) if row else None


async def verifying_keys(conn: Conn, event_id: uuid.UUID) -> list[KeyRow]:
    """Keys whose codes still verify (not withdrawn), newest first."""
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM event_signing_keys "
        "WHERE event_id = $1 AND withdraw_time IS NULL ORDER BY key_id DESC",
        event_id,
    )
    return [_key(r) for r in rows]


async def verifying_key(conn: Conn, event_id: uuid.UUID, key_id: int) -> bytes | None:
    """The public key of (event, key id), unless withdrawn or unknown."""
    value = await conn.fetchval(
        "SELECT public_key FROM event_signing_keys "
        "WHERE event_id = $1 AND key_id = $2 AND withdraw_time IS NULL",
        event_id,
        key_id,
    )
    return bytes(value) if value is not None else None


async def next_key_id(conn: Conn, event_id: uuid.UUID) -> int:
    value: int = await conn.fetchval(
        "SELECT coalesce(max(key_id), 0) + 1 FROM event_signing_keys WHERE event_id = $1",
        event_id,
    )
    return value


async def retire_keys(conn: Conn, event_id: uuid.UUID, *, withdraw: bool) -> int:
    """Retire the signing key; with `withdraw` also stop every older key verifying. Returns
    how many keys were withdrawn."""
    await conn.execute(
        "UPDATE event_signing_keys SET retire_time = clock_timestamp() "
        "WHERE event_id = $1 AND retire_time IS NULL",
        event_id,
    )
    if not withdraw:
        return 0
    result: str = await conn.execute(
        "UPDATE event_signing_keys SET withdraw_time = clock_timestamp() "
        "WHERE event_id = $1 AND withdraw_time IS NULL",
        event_id,
    )
    return int(result.rsplit(" ", 1)[-1])


async def insert_key(
    conn: Conn, event_id: uuid.UUID, key_id: int, public_key: bytes, sealed: bytes
) -> KeyRow:
    row = await conn.fetchrow(
        "INSERT INTO event_signing_keys (event_id, key_id, public_key, sealed_private) "
        f"VALUES ($1, $2, $3, $4) RETURNING {_KEY_COLUMNS}",
        event_id,
        key_id,
        public_key,
        sealed,
    )
    return _key(row)


@dataclass(frozen=True)
class TicketToSign:
    ticket_id: uuid.UUID
    event_id: uuid.UUID
    code_tag: bytes
    section_name: str
    row_label: str | None
    seat_label: str | None
    seat_number: int | None


async def valid_tickets_of_order(conn: Conn, order_id: uuid.UUID) -> list[TicketToSign]:
    """The order's VALID tickets with what their signed codes carry."""
    rows = await conn.fetch(
        """
        SELECT t.id, t.event_id, ticket_code_tag(t.code) AS tag, es.name AS section_name,
               s.row_label, s.seat_label, s.seat_number
        FROM tickets t
        JOIN seats s ON s.id = t.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE t.order_id = $1 AND t.status = 'VALID'
        ORDER BY t.seat_id
        """,
        order_id,
    )
    return [
        TicketToSign(
            ticket_id=r["id"],
            event_id=r["event_id"],
            code_tag=bytes(r["tag"]),
            section_name=r["section_name"],
            row_label=r["row_label"],
            seat_label=r["seat_label"],
            seat_number=r["seat_number"],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class RevocationRow:
    sequence: int
    ticket_id: uuid.UUID
    cause: str
    code_tag: bytes | None
    revoke_time: dt.datetime


async def revocations_after(
    conn: Conn, event_id: uuid.UUID, after: int, limit: int
) -> list[RevocationRow]:
    rows = await conn.fetch(
        "SELECT sequence, ticket_id, cause, code_tag, revoke_time FROM ticket_revocations "
        "WHERE event_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        event_id,
        after,
        limit,
    )
    return [
        RevocationRow(
            sequence=r["sequence"],
            ticket_id=r["ticket_id"],
            cause=r["cause"],
            code_tag=bytes(r["code_tag"]) if r["code_tag"] is not None else None,
            revoke_time=r["revoke_time"],
        )
        for r in rows
    ]


async def set_offline_admission(conn: Conn, event_id: uuid.UUID, allowed: bool) -> None:
    await conn.execute("UPDATE events SET offline_admission = $2 WHERE id = $1", event_id, allowed)
