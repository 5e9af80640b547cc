"""All SQL of kiosk devices. Tokens and credentials appear here only as keyed hashes.

Enrollment is one conditional UPDATE: of two concurrent enrollments with one token, exactly
one matches `enroll_time IS NULL` (the other waits for its row lock, re-checks and matches
nothing), and the expiry is judged on the database clock at that write.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ticketd.db.database import Connection as Conn
from ticketd.gate.devices.rules import DeviceRecord

_COLUMNS = (
    "id, event_id, gate_id, display_name, created_by, create_time, enrollment_expire_time, "
    "enroll_time, revoke_time"
)


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(
        id=row["id"],
        event_id=row["event_id"],
        gate_id=row["gate_id"],
        display_name=row["display_name"],
        created_by=row["created_by"],
        create_time=row["create_time"],
        enrollment_expire_time=row["enrollment_expire_time"],
        enroll_time=row["enroll_time"],
        revoke_time=row["revoke_time"],
    )


async def event_owner(conn: Conn, event_id: uuid.UUID) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval(
        "SELECT organizer_id FROM events WHERE id = $1", event_id
    )
    return value


async def insert_device(
    conn: Conn,
    *,
    event_id: uuid.UUID,
    gate_id: str,
    display_name: str,
    created_by: uuid.UUID,
    enrollment_hash: bytes,
    ttl: dt.timedelta,
) -> DeviceRecord:
    row = await conn.fetchrow(
        "INSERT INTO gate_devices (event_id, gate_id, display_name, created_by, "
        "enrollment_hash, enrollment_expire_time) "
        f"VALUES ($1, $2, $3, $4, $5, clock_timestamp() + $6::interval) RETURNING {_COLUMNS}",
        event_id,
        gate_id,
        display_name,
        created_by,
        enrollment_hash,
        ttl,
    )
    return _device(row)


async def enroll(conn: Conn, enrollment_hash: bytes, credential_hash: bytes) -> DeviceRecord | None:
    """Spend the token: set the credential if the token is unused, unexpired and its device
    not revoked, at this instant. None when nothing matched (one answer for all cases)."""
    row = await conn.fetchrow(
        "UPDATE gate_devices SET enroll_time = clock_timestamp(), credential_hash = $2 "
        "WHERE enrollment_hash = $1 AND enroll_time IS NULL AND revoke_time IS NULL "
        f"AND enrollment_expire_time > clock_timestamp() RETURNING {_COLUMNS}",
        enrollment_hash,
        credential_hash,
    )
    return _device(row) if row else None


async def by_credential(conn: Conn, credential_hash: bytes) -> DeviceRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM gate_devices WHERE credential_hash = $1", credential_hash
    )
    return _device(row) if row else None


async def device(conn: Conn, device_id: uuid.UUID, *, lock: bool = False) -> DeviceRecord | None:
    suffix = " FOR UPDATE" if lock else ""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM gate_devices WHERE id = $1{suffix}", device_id
    )
    return _device(row) if row else None


async def revoke(conn: Conn, device_id: uuid.UUID, revoked_by: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE gate_devices SET revoke_time = clock_timestamp(), revoked_by = $2 "
        "WHERE id = $1 AND revoke_time IS NULL",
        device_id,
        revoked_by,
    )


async def list_devices(
    conn: Conn, event_id: uuid.UUID, after: tuple[dt.datetime, uuid.UUID] | None, limit: int
) -> list[DeviceRecord]:
    """Oldest first, keyset on (create_time, id)."""
    if after is None:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM gate_devices WHERE event_id = $1 "
            "ORDER BY create_time, id LIMIT $2",
            event_id,
            limit,
        )
    else:
        rows = await conn.fetch(
            f"SELECT {_COLUMNS} FROM gate_devices WHERE event_id = $1 "
            "AND (create_time, id) > ($2, $3) ORDER BY create_time, id LIMIT $4",
            event_id,
            after[0],
            after[1],
            limit,
        )
    return [_device(r) for r in rows]


async def clock(conn: Conn) -> dt.datetime:
    value: dt.datetime = await conn.fetchval("SELECT clock_timestamp()")
    return value
