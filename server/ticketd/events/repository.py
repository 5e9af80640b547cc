"""All SQL for events, their sections and their seat inventory."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from ticketd.errors import NotFound
from ticketd.events.rules import (
    EventRecord,
    EventSectionRecord,
    EventSpec,
    EventStatus,
    SeatRecord,
    SeatStatus,
)
from ticketd.venues.rules import SectionKind, VenueRecord


def event_not_found(event_id: uuid.UUID) -> NotFound:
    return NotFound("no such event", reason="EVENT_NOT_FOUND", metadata={"event_id": str(event_id)})


async def db_now(session: AsyncSession) -> dt.datetime:
    """The database clock: all sale windows are judged on it, never on a server's clock."""
    value: dt.datetime = (await session.execute(text("SELECT now()"))).scalar_one()
    return value


# The whole inventory in one set-based statement: reserved seats from the copied rows
# (seat labels default to the number), general admission as `capacity` anonymous places.
# Ordered so seat ids follow section, row, number: ListSeats pages read like a seat map.
_INSERT_INVENTORY = text(
    """
    INSERT INTO seats (event_id, section_id, ordinal, row_label, seat_number, seat_label,
                       price_minor)
    SELECT event_id, section_id, ordinal, row_label, seat_number, seat_label, price_minor
    FROM (
        SELECT es.event_id, es.section_id, es.position, r.seat_offset + n AS ordinal,
               r.label AS row_label, n AS seat_number,
               COALESCE(r.seat_labels[n], n::text) AS seat_label, es.price_minor
        FROM event_sections es
        JOIN venue_rows r ON r.section_id = es.section_id
        CROSS JOIN LATERAL generate_series(1, r.seat_count) AS n
        WHERE es.event_id = :event_id AND es.kind = 'RESERVED'
        UNION ALL
        SELECT es.event_id, es.section_id, es.position, n, NULL, NULL, NULL, es.price_minor
        FROM event_sections es
        CROSS JOIN LATERAL generate_series(1, es.capacity) AS n
        WHERE es.event_id = :event_id AND es.kind = 'GENERAL_ADMISSION'
    ) places
    ORDER BY position, ordinal
    """
)


async def create_event(
    session: AsyncSession, *, organizer_id: uuid.UUID, spec: EventSpec, venue: VenueRecord
) -> uuid.UUID:
    """Insert the event, its copy of the layout and its whole inventory (caller's transaction).

    The caller holds the venue row FOR SHARE, so the layout cannot change underneath.
    """
    event_id = uuid.uuid4()
    await session.execute(
        text(
            """
            INSERT INTO events (id, venue_id, organizer_id, name, description, start_time,
                                end_time, currency_code, max_tickets_per_order,
                                max_tickets_per_customer, capacity, doors_open_time)
            VALUES (:id, :venue_id, :organizer_id, :name, :description, :start_time,
                    :end_time, :currency, :per_order, :per_customer, :capacity, :doors)
            """
        ),
        {
            "id": event_id,
            "venue_id": venue.id,
            "organizer_id": organizer_id,
            "name": spec.name.strip(),
            "description": spec.description,
            "start_time": spec.start_time,
            "end_time": spec.end_time,
            "currency": spec.currency_code,
            "per_order": spec.max_tickets_per_order,
            "per_customer": spec.max_tickets_per_customer,
            "capacity": venue.capacity,
            "doors": spec.doors_open_time,
        },
    )
    await session.execute(
        text(
            """
            INSERT INTO event_sections
                (event_id, section_id, position, name, kind, price_minor, capacity)
            SELECT :event_id, vs.id, vs.position, vs.name, vs.kind, p.price, vs.capacity
            FROM venue_sections vs
            JOIN unnest(CAST(:ids AS uuid[]), CAST(:prices AS bigint[])) AS p(id, price)
              ON p.id = vs.id
            WHERE vs.venue_id = :venue_id
            """
        ),
        {
            "event_id": event_id,
            "venue_id": venue.id,
            "ids": [s.id for s in venue.sections],
            "prices": [spec.section_prices[str(s.id)] for s in venue.sections],
        },
    )
    await session.execute(_INSERT_INVENTORY, {"event_id": event_id})
    return event_id


_EVENT_SELECT = """
    SELECT e.id, e.venue_id, v.name AS venue_name, v.time_zone, e.organizer_id, e.name,
           e.description, e.start_time, e.end_time, e.currency_code, e.max_tickets_per_order,
           e.max_tickets_per_customer, e.capacity, e.cancel_reason, e.cancel_time,
           e.create_time, e.doors_open_time,
           CASE WHEN e.cancel_time IS NOT NULL THEN 'CANCELLED'
                WHEN e.start_time <= now() THEN 'STARTED'
                ELSE 'ON_SALE' END AS status
    FROM events e JOIN venues v ON v.id = e.venue_id
"""


def _event(row: Any, sections: tuple[EventSectionRecord, ...] = ()) -> EventRecord:
    return EventRecord(
        id=row.id,
        venue_id=row.venue_id,
        venue_name=row.venue_name,
        time_zone=row.time_zone,
        organizer_id=row.organizer_id,
        name=row.name,
        description=row.description,
        start_time=row.start_time,
        end_time=row.end_time,
        currency_code=row.currency_code,
        max_tickets_per_order=row.max_tickets_per_order,
        max_tickets_per_customer=row.max_tickets_per_customer,
        capacity=row.capacity,
        status=EventStatus(row.status),
        cancel_reason=row.cancel_reason,
        cancel_time=row.cancel_time,
        create_time=row.create_time,
        doors_open_time=row.doors_open_time,
        sections=sections,
    )


async def get_event(
    session: AsyncSession, event_id: uuid.UUID, *, with_counts: bool = True, lock: str = ""
) -> EventRecord:
    """The event and its sections; live available/sold counts when `with_counts`.

    `lock` may be "FOR UPDATE" or "FOR SHARE" (of the event row only).
    """
    suffix = f" {lock} OF e" if lock else ""
    row = (
        await session.execute(text(_EVENT_SELECT + " WHERE e.id = :id" + suffix), {"id": event_id})
    ).first()
    if row is None:
        raise event_not_found(event_id)
    counts: dict[tuple[uuid.UUID, str], int] = {}
    if with_counts:
        for c in (
            await session.execute(
                text(
                    "SELECT section_id, status, count(*) AS n FROM seats "
                    "WHERE event_id = :id GROUP BY section_id, status"
                ),
                {"id": event_id},
            )
        ).all():
            counts[(c.section_id, c.status)] = c.n
    sections = (
        await session.execute(
            text(
                "SELECT section_id, name, kind, price_minor, capacity FROM event_sections "
                "WHERE event_id = :id ORDER BY position"
            ),
            {"id": event_id},
        )
    ).all()
    return _event(
        row,
        tuple(
            EventSectionRecord(
                section_id=s.section_id,
                name=s.name,
                kind=SectionKind(s.kind),
                price_minor=s.price_minor,
                capacity=s.capacity,
                available_count=counts.get((s.section_id, SeatStatus.AVAILABLE.value), 0),
                sold_count=counts.get((s.section_id, SeatStatus.SOLD.value), 0),
            )
            for s in sections
        ),
    )


@dataclass(frozen=True)
class EventFilter:
    venue_id: uuid.UUID | None
    organizer_id: uuid.UUID | None
    start_after: dt.datetime | None
    start_before: dt.datetime | None
    include_cancelled: bool


async def list_events(
    session: AsyncSession,
    filters: EventFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[EventRecord]:
    """Events ordered by (start_time, id): a keyset, so inserts never shift later pages.
    Without start_after, only events starting after now() (database clock)."""
    clauses = []
    params: dict[str, Any] = {"limit": limit}
    if filters.start_after is None:
        clauses.append("e.start_time > now()")
    else:
        clauses.append("e.start_time >= :start_after")
        params["start_after"] = filters.start_after
    if filters.start_before is not None:
        clauses.append("e.start_time < :start_before")
        params["start_before"] = filters.start_before
    if filters.venue_id is not None:
        clauses.append("e.venue_id = :venue_id")
        params["venue_id"] = filters.venue_id
    if filters.organizer_id is not None:
        clauses.append("e.organizer_id = :organizer_id")
        params["organizer_id"] = filters.organizer_id
    if not filters.include_cancelled:
        clauses.append("e.cancel_time IS NULL")
    if after is not None:
        clauses.append("(e.start_time, e.id) > (:after_time, :after_id)")
        params |= {"after_time": after[0], "after_id": after[1]}
    sql = _EVENT_SELECT + " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY e.start_time, e.id LIMIT :limit"
    return [_event(r) for r in (await session.execute(text(sql), params)).all()]


async def list_seats(
    session: AsyncSession,
    event_id: uuid.UUID,
    *,
    section_id: uuid.UUID | None,
    status: SeatStatus | None,
    after_id: int | None,
    limit: int,
) -> list[SeatRecord]:
    exists = (
        await session.execute(text("SELECT 1 FROM events WHERE id = :id"), {"id": event_id})
    ).first()
    if exists is None:
        raise event_not_found(event_id)
    clauses = ["s.event_id = :event_id"]
    params: dict[str, Any] = {"event_id": event_id, "limit": limit}
    if section_id is not None:
        clauses.append("s.section_id = :section_id")
        params["section_id"] = section_id
    if status is not None:
        clauses.append("s.status = :status")
        params["status"] = status.value
    if after_id is not None:
        clauses.append("s.id > :after_id")
        params["after_id"] = after_id
    rows = (
        await session.execute(
            text(
                "SELECT s.id, s.section_id, es.name AS section_name, s.row_label, s.seat_number, "
                "s.seat_label, s.price_minor, s.status FROM seats s "
                "JOIN event_sections es ON es.event_id = s.event_id "
                "AND es.section_id = s.section_id WHERE "
                + " AND ".join(clauses)
                + " ORDER BY s.id LIMIT :limit"
            ),
            params,
        )
    ).all()
    return [
        SeatRecord(
            id=r.id,
            section_id=r.section_id,
            section_name=r.section_name,
            row_label=r.row_label,
            seat_number=r.seat_number,
            seat_label=r.seat_label,
            price_minor=r.price_minor,
            status=SeatStatus(r.status),
        )
        for r in rows
    ]


async def mark_cancelled(session: AsyncSession, event_id: uuid.UUID, reason: str) -> None:
    """Set the event cancelled (caller holds the event row FOR UPDATE)."""
    await session.execute(
        text("UPDATE events SET cancel_time = now(), cancel_reason = :reason WHERE id = :id"),
        {"id": event_id, "reason": reason},
    )
