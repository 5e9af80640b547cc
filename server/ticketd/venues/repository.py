"""All SQL for venues and their layouts. Functions return records or None."""

from __future__ import annotations

import uuid
from typing import Any

from ticketd.db.database import Connection
from ticketd.db.idempotency import earlier_request
from ticketd.db.records import record_from_row
from ticketd.shared import SectionKind
from ticketd.venues.rules import RowSpec, SectionRecord, VenueRecord, VenueSpec

_VENUE_COLUMNS = "id, name, address, time_zone, capacity, create_time, update_time"


async def _insert_layout(conn: Connection, venue_id: uuid.UUID, spec: VenueSpec) -> None:
    # One statement per table, whatever the layout size: sections, then all rows at once.
    section_ids = [uuid.uuid4() for _ in spec.sections]
    await conn.execute(
        """
        INSERT INTO venue_sections (id, venue_id, position, name, kind, capacity)
        SELECT id, $1, pos, name, kind, capacity
        FROM unnest($2::uuid[], $3::text[], $4::text[], $5::int[])
             WITH ORDINALITY AS s(id, name, kind, capacity, pos)
        """,
        venue_id,
        section_ids,
        [s.name for s in spec.sections],
        [s.kind.value for s in spec.sections],
        [s.capacity for s in spec.sections],
    )
    row_section: list[uuid.UUID] = []
    row_pos: list[int] = []
    row_label: list[str] = []
    row_count: list[int] = []
    row_offset: list[int] = []
    row_labels: list[str | None] = []
    for sid, section in zip(section_ids, spec.sections, strict=True):
        offset = 0
        for pos, row in enumerate(section.rows, start=1):
            row_section.append(sid)
            row_pos.append(pos)
            row_label.append(row.label)
            row_count.append(row.seat_count)
            row_offset.append(offset)
            # Arrays of arrays must be rectangular in PostgreSQL: ship labels as one
            # unit-separator-joined string per row and split them in SQL.
            row_labels.append("\x1f".join(row.seat_labels) if row.seat_labels else None)
            offset += row.seat_count
    if row_section:
        await conn.execute(
            """
            INSERT INTO venue_rows
                (section_id, position, label, seat_count, seat_offset, seat_labels)
            SELECT sid, pos, label, cnt, off,
                   CASE WHEN labels IS NULL THEN NULL
                        ELSE string_to_array(labels, chr(31)) END
            FROM unnest($1::uuid[], $2::int[], $3::text[], $4::int[], $5::int[], $6::text[])
                 AS r(sid, pos, label, cnt, off, labels)
            """,
            row_section,
            row_pos,
            row_label,
            row_count,
            row_offset,
            row_labels,
        )


async def insert_venue(
    conn: Connection,
    spec: VenueSpec,
    *,
    created_by: uuid.UUID,
    request_id: uuid.UUID | None = None,
    request_hash: str | None = None,
) -> uuid.UUID | None:
    """Insert the venue and its layout. None when the same caller's request_id was
    committed by a concurrent call first (ON CONFLICT waited for it): nothing written."""
    venue_id = uuid.uuid4()
    inserted = await conn.fetchval(
        "INSERT INTO venues (id, name, address, time_zone, capacity, created_by, request_id, "
        "request_hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (created_by, request_id) DO NOTHING RETURNING id",
        venue_id,
        spec.name,
        spec.address,
        spec.time_zone,
        spec.capacity,
        created_by,
        request_id,
        request_hash,
    )
    if inserted is None:
        return None
    await _insert_layout(conn, venue_id, spec)
    return venue_id


async def venue_for_request(
    conn: Connection, created_by: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, str] | None:
    """(venue id, request fingerprint) of the venue this caller created with request_id."""
    return await earlier_request(conn, "venues", "created_by", created_by, request_id)


async def replace_venue(conn: Connection, venue_id: uuid.UUID, spec: VenueSpec) -> bool:
    """Replace a venue's fields and layout; False when there is no such venue. Locks the
    venue row so that an event being created from the old layout at the same moment
    finishes first (it holds FOR SHARE)."""
    if await conn.fetchval("SELECT id FROM venues WHERE id = $1 FOR UPDATE", venue_id) is None:
        return False
    await conn.execute("DELETE FROM venue_sections WHERE venue_id = $1", venue_id)
    await conn.execute(
        "UPDATE venues SET name = $2, address = $3, time_zone = $4, capacity = $5, "
        "update_time = now() WHERE id = $1",
        venue_id,
        spec.name,
        spec.address,
        spec.time_zone,
        spec.capacity,
    )
    await _insert_layout(conn, venue_id, spec)
    return True


def _venue(row: Any, sections: tuple[SectionRecord, ...] = ()) -> VenueRecord:
    return record_from_row(VenueRecord, row, sections=sections)


async def venue_with_layout(
    conn: Connection, venue_id: uuid.UUID, *, lock_for_share: bool = False
) -> VenueRecord | None:
    """The venue with its full layout, or None. `lock_for_share` keeps the layout from
    changing until the transaction ends (used while an event copies it)."""
    lock = " FOR SHARE" if lock_for_share else ""
    row = await conn.fetchrow(f"SELECT {_VENUE_COLUMNS} FROM venues WHERE id = $1{lock}", venue_id)
    if row is None:
        return None
    sections = await conn.fetch(
        "SELECT id, name, kind, capacity FROM venue_sections WHERE venue_id = $1 ORDER BY position",
        venue_id,
    )
    rows = await conn.fetch(
        """
        SELECT r.section_id, r.label, r.seat_count, r.seat_labels
        FROM venue_rows r JOIN venue_sections s ON s.id = r.section_id
        WHERE s.venue_id = $1 ORDER BY r.section_id, r.position
        """,
        venue_id,
    )
    by_section: dict[uuid.UUID, list[RowSpec]] = {}
    for r in rows:
        by_section.setdefault(r["section_id"], []).append(
            RowSpec(r["label"], r["seat_count"], tuple(r["seat_labels"] or ()))
        )
    return _venue(
        row,
        tuple(
            record_from_row(
                SectionRecord,
                s,
                kind=SectionKind(s["kind"]),
                rows=tuple(by_section.get(s["id"], ())),
            )
            for s in sections
        ),
    )


async def list_venues(
    conn: Connection, *, after: tuple[str, str] | None, limit: int
) -> list[VenueRecord]:
    """Venues ordered by (name, id) after the keyset position `after`; without layouts,
    but with section summaries."""
    if after is None:
        venues = await conn.fetch(
            f"SELECT {_VENUE_COLUMNS} FROM venues ORDER BY name, id LIMIT $1", limit
        )
    else:
        venues = await conn.fetch(
            f"SELECT {_VENUE_COLUMNS} FROM venues WHERE (name, id) > ($1, $2::uuid) "
            "ORDER BY name, id LIMIT $3",
            after[0],
            after[1],
            limit,
        )
    if not venues:
        return []
    sections = await conn.fetch(
        "SELECT venue_id, id, name, kind, capacity FROM venue_sections "
        "WHERE venue_id = ANY($1::uuid[]) ORDER BY venue_id, position",
        [v["id"] for v in venues],
    )
    by_venue: dict[uuid.UUID, list[SectionRecord]] = {}
    for s in sections:
        by_venue.setdefault(s["venue_id"], []).append(
            SectionRecord(s["id"], s["name"], SectionKind(s["kind"]), s["capacity"])
        )
    return [_venue(v, tuple(by_venue.get(v["id"], ()))) for v in venues]
