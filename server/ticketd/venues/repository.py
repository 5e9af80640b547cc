"""All SQL for venues and their layouts."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ticketd.errors import NotFound
from ticketd.venues.rules import RowSpec, SectionKind, SectionRecord, VenueRecord, VenueSpec


def _not_found(venue_id: uuid.UUID) -> NotFound:
    return NotFound("no such venue", reason="VENUE_NOT_FOUND", metadata={"venue_id": str(venue_id)})


async def _insert_layout(session: AsyncSession, venue_id: uuid.UUID, spec: VenueSpec) -> None:
    # One statement per table, whatever the layout size: sections, then all rows at once.
    section_ids = [uuid.uuid4() for _ in spec.sections]
    await session.execute(
        text(
            """
            INSERT INTO venue_sections (id, venue_id, position, name, kind, capacity)
            SELECT id, :venue_id, pos, name, kind, capacity
            FROM unnest(CAST(:ids AS uuid[]), CAST(:names AS text[]), CAST(:kinds AS text[]),
                        CAST(:caps AS int[])) WITH ORDINALITY AS s(id, name, kind, capacity, pos)
            """
        ),
        {
            "venue_id": venue_id,
            "ids": section_ids,
            "names": [s.name for s in spec.sections],
            "kinds": [s.kind.value for s in spec.sections],
            "caps": [s.capacity for s in spec.sections],
        },
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
        await session.execute(
            text(
                """
                INSERT INTO venue_rows
                    (section_id, position, label, seat_count, seat_offset, seat_labels)
                SELECT sid, pos, label, cnt, off,
                       CASE WHEN labels IS NULL THEN NULL
                            ELSE string_to_array(labels, chr(31)) END
                FROM unnest(CAST(:sids AS uuid[]), CAST(:pos AS int[]), CAST(:labels AS text[]),
                            CAST(:counts AS int[]), CAST(:offsets AS int[]),
                            CAST(:seat_labels AS text[]))
                     AS r(sid, pos, label, cnt, off, labels)
                """
            ),
            {
                "sids": row_section,
                "pos": row_pos,
                "labels": row_label,
                "counts": row_count,
                "offsets": row_offset,
                "seat_labels": row_labels,
            },
        )


async def create_venue(session: AsyncSession, spec: VenueSpec) -> uuid.UUID:
    venue_id = uuid.uuid4()
    await session.execute(
        text(
            "INSERT INTO venues (id, name, address, time_zone, capacity) "
            "VALUES (:id, :name, :address, :tz, :cap)"
        ),
        {
            "id": venue_id,
            "name": spec.name,
            "address": spec.address,
            "tz": spec.time_zone,
            "cap": spec.capacity,
        },
    )
    await _insert_layout(session, venue_id, spec)
    return venue_id


async def replace_venue(session: AsyncSession, venue_id: uuid.UUID, spec: VenueSpec) -> None:
    """Replace a venue's fields and layout. Locks the venue row so that an event being
    created from the old layout at the same moment finishes first (it holds FOR SHARE)."""
    row = (
        await session.execute(
            text("SELECT id FROM venues WHERE id = :id FOR UPDATE"), {"id": venue_id}
        )
    ).first()
    if row is None:
        raise _not_found(venue_id)
    await session.execute(text("DELETE FROM venue_sections WHERE venue_id = :id"), {"id": venue_id})
    await session.execute(
        text(
            "UPDATE venues SET name = :name, address = :address, time_zone = :tz, "
            "capacity = :cap, update_time = now() WHERE id = :id"
        ),
        {
            "id": venue_id,
            "name": spec.name,
            "address": spec.address,
            "tz": spec.time_zone,
            "cap": spec.capacity,
        },
    )
    await _insert_layout(session, venue_id, spec)


def _venue(row: Any, sections: tuple[SectionRecord, ...] = ()) -> VenueRecord:
    return VenueRecord(
        id=row.id,
        name=row.name,
        address=row.address,
        time_zone=row.time_zone,
        capacity=row.capacity,
        create_time=row.create_time,
        update_time=row.update_time,
        sections=sections,
    )


_VENUE_COLUMNS = "id, name, address, time_zone, capacity, create_time, update_time"


async def get_venue(
    session: AsyncSession, venue_id: uuid.UUID, *, lock_for_share: bool = False
) -> VenueRecord:
    """The venue with its full layout. `lock_for_share` keeps the layout from changing
    until the transaction ends (used while an event copies it)."""
    lock = " FOR SHARE" if lock_for_share else ""
    row = (
        await session.execute(
            text(f"SELECT {_VENUE_COLUMNS} FROM venues WHERE id = :id{lock}"), {"id": venue_id}
        )
    ).first()
    if row is None:
        raise _not_found(venue_id)
    sections = (
        await session.execute(
            text(
                "SELECT id, name, kind, capacity FROM venue_sections "
                "WHERE venue_id = :id ORDER BY position"
            ),
            {"id": venue_id},
        )
    ).all()
    rows = (
        await session.execute(
            text(
                """
                SELECT r.section_id, r.label, r.seat_count, r.seat_labels
                FROM venue_rows r JOIN venue_sections s ON s.id = r.section_id
                WHERE s.venue_id = :id ORDER BY r.section_id, r.position
                """
            ),
            {"id": venue_id},
        )
    ).all()
    by_section: dict[uuid.UUID, list[RowSpec]] = {}
    for r in rows:
        by_section.setdefault(r.section_id, []).append(
            RowSpec(r.label, r.seat_count, tuple(r.seat_labels or ()))
        )
    return _venue(
        row,
        tuple(
            SectionRecord(
                id=s.id,
                name=s.name,
                kind=SectionKind(s.kind),
                capacity=s.capacity,
                rows=tuple(by_section.get(s.id, ())),
            )
            for s in sections
        ),
    )


async def list_venues(
    session: AsyncSession, *, after: tuple[str, str] | None, limit: int
) -> list[VenueRecord]:
    """Venues ordered by (name, id) after the keyset position `after`; without layouts,
    but with section summaries."""
    where = ""
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        where = "WHERE (name, id) > (:after_name, CAST(:after_id AS uuid))"
        params |= {"after_name": after[0], "after_id": after[1]}
    venues = (
        await session.execute(
            text(f"SELECT {_VENUE_COLUMNS} FROM venues {where} ORDER BY name, id LIMIT :limit"),
            params,
        )
    ).all()
    if not venues:
        return []
    sections = (
        await session.execute(
            text(
                "SELECT venue_id, id, name, kind, capacity FROM venue_sections "
                "WHERE venue_id = ANY(:ids) ORDER BY venue_id, position"
            ),
            {"ids": [v.id for v in venues]},
        )
    ).all()
    by_venue: dict[uuid.UUID, list[SectionRecord]] = {}
    for s in sections:
        by_venue.setdefault(s.venue_id, []).append(
            SectionRecord(s.id, s.name, SectionKind(s.kind), s.capacity)
        )
    return [_venue(v, tuple(by_venue.get(v.id, ()))) for v in venues]
