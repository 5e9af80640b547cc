"""AIP-155 request ids: finding what a caller's earlier request with the same id made."""

from __future__ import annotations

import uuid

from ticketd.db.database import Connection


async def earlier_request(
    conn: Connection, table: str, owner_column: str, owner_id: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, str] | None:
    """(id, request fingerprint) of the row of `table` that `owner_id` (in `owner_column`)
    made with `request_id`, or None. `table` and `owner_column` are the calling repository's
    constants, never input."""
    row = await conn.fetchrow(
        f"SELECT id, request_hash FROM {table} WHERE {owner_column} = $1 AND request_id = $2",
        owner_id,
        request_id,
    )
    return None if row is None else (row["id"], row["request_hash"])
