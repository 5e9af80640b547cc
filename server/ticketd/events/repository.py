"""All SQL for events, their sections and their seat inventory. Returns records or None."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from ticketd.db import outbox
from ticketd.db.database import Connection
from ticketd.db.idempotency import earlier_request
from ticketd.db.params import Params
from ticketd.db.records import record_from_row
from ticketd.events.rules import (
    EventFilter,
    EventRecord,
    EventSectionRecord,
    EventSpec,
    EventStatus,
    SeatChangeRecord,
    SeatRecord,
    SeatStatus,
    StaffRecord,
)
from ticketd.shared import ScanWindowDefaults, SectionKind


async def db_now(conn: Connection) -> dt.datetime:
    """The database clock: all sale windows are judged on it, never on a server's clock."""
    value: dt.datetime = await conn.fetchval("SELECT now()")
    return value


# The whole inventory in one set-based statement: reserved seats from the copied rows
# (seat labels default to the number), general admission as `capacity` anonymous places.
# Ordered so seat ids follow section, row, number: ListSeats pages read like a seat map.
INSERT_INVENTORY = """
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
        WHERE es.event_id = $1 AND es.kind = 'RESERVED'
        UNION ALL
        SELECT es.event_id, es.section_id, es.position, n, NULL, NULL, NULL, es.price_minor
        FROM event_sections es
        CROSS JOIN LATERAL generate_series(1, es.capacity) AS n
        WHERE es.event_id = $1 AND es.kind = 'GENERAL_ADMISSION'
    ) places
    ORDER BY position, ordinal
"""


async def serialize_organizer(conn: Connection, organizer_id: uuid.UUID) -> None:
    """Take this organizer's event-creation lock until the transaction ends.

    Quota checks count events and then insert one: two concurrent creates by one organizer
    must take turns, or both would count N-1 and both insert. Transaction-scoped advisory
    lock (a hash collision with another organizer only serializes a little more); the count
    runs in a later statement, so its snapshot includes whatever the previous holder
    committed.
    """
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtext('ticketd-event-quota'), hashtext($1::text))",
        str(organizer_id),
    )


async def count_live_events(conn: Connection, organizer_id: uuid.UUID) -> int:
    """The organizer's events on sale right now (not cancelled, not started; database clock)."""
    value: int = await conn.fetchval(
        "SELECT count(*) FROM events WHERE organizer_id = $1 AND cancel_time IS NULL "
        "AND start_time > clock_timestamp()",
        organizer_id,
    )
    return value


async def event_for_request(
    conn: Connection, organizer_id: uuid.UUID, request_id: uuid.UUID
) -> tuple[uuid.UUID, str] | None:
    """(event id, request fingerprint) of the event this caller created with request_id."""
    return await earlier_request(conn, "events", "organizer_id", organizer_id, request_id)


async def insert_event(
    conn: Connection,
    *,
    organizer_id: uuid.UUID,
    spec: EventSpec,
    capacity: int,
    section_ids: list[uuid.UUID],
    request_id: uuid.UUID | None = None,
    request_hash: str | None = None,
) -> uuid.UUID | None:
    """Insert the event, its copy of the venue's layout and its whole inventory.

    The caller holds the venue row FOR SHARE, so the layout cannot change underneath.
    None when the same organizer's request_id was committed by a concurrent call first (ON
    CONFLICT waited for it): then nothing was written.
    """
    event_id = uuid.uuid4()
    inserted = await conn.fetchval(
        """
        INSERT INTO events (id, venue_id, organizer_id, name, description, start_time,
                            end_time, currency_code, max_tickets_per_order,
                            max_tickets_per_customer, capacity, doors_open_time,
                            request_id, request_hash)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
        ON CONFLICT (organizer_id, request_id) DO NOTHING
        RETURNING id
        """,
        event_id,
        spec.venue_id,
        organizer_id,
        spec.name.strip(),
        spec.description,
        spec.start_time,
        spec.end_time,
        spec.currency_code,
        spec.max_tickets_per_order,
        spec.max_tickets_per_customer,
        capacity,
        spec.doors_open_time,
        request_id,
        request_hash,
    )
    if inserted is None:
        return None
    await conn.execute(
        """
        INSERT INTO event_sections
            (event_id, section_id, position, name, kind, price_minor, capacity)
        SELECT $1, vs.id, vs.position, vs.name, vs.kind, p.price, vs.capacity
        FROM venue_sections vs
        JOIN unnest($3::uuid[], $4::bigint[]) AS p(id, price) ON p.id = vs.id
        WHERE vs.venue_id = $2
        """,
        event_id,
        spec.venue_id,
        section_ids,
        [spec.section_prices[str(s)] for s in section_ids],
    )
    await conn.execute(INSERT_INVENTORY, event_id)
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
    return record_from_row(EventRecord, row, status=EventStatus(row["status"]), sections=sections)


# What a seat map shows: a seat under a hold that expired is AVAILABLE (booking's own
# condition, SQL seat_is_free from migration 0011), never who holds it.
# A seat map is public (no caller), so it shows the public's view: a free place in an open
# allocation (seat_is_free_for, migration 0012) is ALLOCATED, not AVAILABLE.
_PUBLIC_FREE = (
    "seat_is_free_for(s.status, s.held_until, s.allocation_partner_id, s.allocated_until, "
    "NULL, true)"
)
_SEAT_STATUS = (
    f"CASE WHEN {_PUBLIC_FREE} THEN 'AVAILABLE' "
    "WHEN seat_is_free(s.status, s.held_until) THEN 'ALLOCATED' ELSE s.status END"
)


async def event(
    conn: Connection, event_id: uuid.UUID, *, with_counts: bool = True, lock: str = ""
) -> EventRecord | None:
    """The event and its sections, or None; live available/sold counts when `with_counts`.

    `lock` may be "FOR UPDATE", "FOR NO KEY UPDATE" or "FOR SHARE" (of the event row only).
    """
    suffix = f" {lock} OF e" if lock else ""
    row = await conn.fetchrow(_EVENT_SELECT + " WHERE e.id = $1" + suffix, event_id)
    if row is None:
        return None
    counts: dict[tuple[uuid.UUID, str], int] = {}
    if with_counts:
        for c in await conn.fetch(
            f"SELECT section_id, {_SEAT_STATUS} AS status, count(*) AS n FROM seats s "
            "WHERE event_id = $1 GROUP BY 1, 2",
            event_id,
        ):
            counts[(c["section_id"], c["status"])] = c["n"]
    sections = await conn.fetch(
        "SELECT section_id, name, kind, price_minor, capacity FROM event_sections "
        "WHERE event_id = $1 ORDER BY position",
        event_id,
    )
    return _event(
        row,
        tuple(
            record_from_row(
                EventSectionRecord,
                s,
                kind=SectionKind(s["kind"]),
                available_count=counts.get((s["section_id"], SeatStatus.AVAILABLE.value), 0),
                sold_count=counts.get((s["section_id"], SeatStatus.SOLD.value), 0),
                held_count=counts.get((s["section_id"], SeatStatus.HELD.value), 0),
            )
            for s in sections
        ),
    )


async def list_events(
    conn: Connection,
    filters: EventFilter,
    *,
    after: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[EventRecord]:
    """Events ordered by (start_time, id): a keyset, so inserts never shift later pages.
    Without start_after, only events starting after now() (database clock)."""
    clauses = []
    arg = Params()
    if filters.start_after is None:
        clauses.append("e.start_time > now()")
    else:
        clauses.append(f"e.start_time >= {arg(filters.start_after)}")
    if filters.start_before is not None:
        clauses.append(f"e.start_time < {arg(filters.start_before)}")
    if filters.venue_id is not None:
        clauses.append(f"e.venue_id = {arg(filters.venue_id)}")
    if filters.organizer_id is not None:
        clauses.append(f"e.organizer_id = {arg(filters.organizer_id)}")
    if not filters.include_cancelled:
        clauses.append("e.cancel_time IS NULL")
    if after is not None:
        clauses.append(f"(e.start_time, e.id) > ({arg(after[0])}, {arg(after[1])})")
    sql = _EVENT_SELECT + " WHERE " + " AND ".join(clauses)
    sql += f" ORDER BY e.start_time, e.id LIMIT {arg(limit)}"
    return [_event(r) for r in await conn.fetch(sql, *arg)]


async def event_exists(conn: Connection, event_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)", event_id))


async def list_seats(
    conn: Connection,
    event_id: uuid.UUID,
    *,
    section_id: uuid.UUID | None,
    status: SeatStatus | None,
    after_id: int | None,
    limit: int,
) -> list[SeatRecord]:
    arg = Params()
    clauses = [f"s.event_id = {arg(event_id)}"]
    if section_id is not None:
        clauses.append(f"s.section_id = {arg(section_id)}")
    if status is SeatStatus.AVAILABLE:
        clauses.append(_PUBLIC_FREE)
    elif status is SeatStatus.ALLOCATED:
        clauses.append(f"seat_is_free(s.status, s.held_until) AND NOT {_PUBLIC_FREE}")
    elif status is SeatStatus.HELD:
        clauses.append("s.status = 'HELD' AND NOT seat_is_free(s.status, s.held_until)")
    elif status is not None:
        clauses.append(f"s.status = {arg(status.value)}")
    if after_id is not None:
        clauses.append(f"s.id > {arg(after_id)}")
    rows = await conn.fetch(
        "SELECT s.id, s.section_id, es.name AS section_name, s.row_label, s.seat_number, "
        f"s.seat_label, s.price_minor, {_SEAT_STATUS} AS status FROM seats s "
        "JOIN event_sections es ON es.event_id = s.event_id "
        "AND es.section_id = s.section_id WHERE "
        + " AND ".join(clauses)
        + f" ORDER BY s.id LIMIT {arg(limit)}",
        *arg,
    )
    return [record_from_row(SeatRecord, r, status=SeatStatus(r["status"])) for r in rows]


async def mark_cancelled(conn: Connection, event_id: uuid.UUID, reason: str) -> bool:
    """Set the event cancelled if it has not started at the instant of this write (caller
    holds the event row FOR UPDATE). False: it had started, nothing was written.

    clock_timestamp(), read once, both judges and stamps: `now()` is the transaction's
    start, which a wait for the event lock can leave behind the start instant.
    """
    done = await conn.fetchval(
        """
        UPDATE events e SET cancel_time = clock.t, cancel_reason = $2
        FROM (SELECT clock_timestamp() AS t) clock
        WHERE e.id = $1 AND e.cancel_time IS NULL AND e.start_time > clock.t
        RETURNING true
        """,
        event_id,
        reason,
    )
    return bool(done)


# --- UpdateEvent ----------------------------------------------------------------------------


async def window_state(
    conn: Connection, event_id: uuid.UUID, window: ScanWindowDefaults
) -> str | None:
    """The event's scan window now (clock_timestamp()), from the one definition in SQL."""
    value: str | None = await conn.fetchval(
        "SELECT gate_window(cancel_time, doors_open_time, start_time, end_time, "
        "clock_timestamp(), $2, $3) FROM events WHERE id = $1",
        event_id,
        window.doors_open_lead,
        window.default_duration,
    )
    return value


async def update_times(
    conn: Connection, event_id: uuid.UUID, doors: dt.datetime | None, end: dt.datetime | None
) -> None:
    """Store the scan window's fields (the caller holds the event row FOR NO KEY UPDATE)."""
    await conn.execute(
        "UPDATE events SET doors_open_time = $2, end_time = $3 WHERE id = $1",
        event_id,
        doors,
        end,
    )


# --- Staff ----------------------------------------------------------------------------------


async def event_owner(conn: Connection, event_id: uuid.UUID) -> uuid.UUID | None:
    """The event's organizer, or None: no such event."""
    value: uuid.UUID | None = await conn.fetchval(
        "SELECT organizer_id FROM events WHERE id = $1", event_id
    )
    return value


_STAFF_SELECT = """
    SELECT st.event_id, st.user_id, u.email, u.display_name, st.assign_time, st.assigned_by
    FROM event_staff st JOIN users u ON u.id = st.user_id
"""


def _staff(row: Any) -> StaffRecord:
    return record_from_row(StaffRecord, row)


async def assign_staff(
    conn: Connection, event_id: uuid.UUID, user_id: uuid.UUID, assigned_by: uuid.UUID
) -> StaffRecord:
    """Assign (idempotent: an existing assignment is kept as it was) and return it.

    ON CONFLICT DO NOTHING, then a read: concurrent assigns of one pair resolve inside
    PostgreSQL, and the read (a new statement) sees whichever insert won.
    """
    await conn.execute(
        "INSERT INTO event_staff (event_id, user_id, assigned_by) VALUES ($1, $2, $3) "
        "ON CONFLICT (event_id, user_id) DO NOTHING",
        event_id,
        user_id,
        assigned_by,
    )
    row = await conn.fetchrow(
        _STAFF_SELECT + " WHERE st.event_id = $1 AND st.user_id = $2", event_id, user_id
    )
    return _staff(row)


async def unassign_staff(conn: Connection, event_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Remove an assignment; False when there was none."""
    status: str = await conn.execute(
        "DELETE FROM event_staff WHERE event_id = $1 AND user_id = $2", event_id, user_id
    )
    return status != "DELETE 0"


async def list_staff(
    conn: Connection, event_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[StaffRecord]:
    """The event's staff ordered by user id (a keyset on the primary key)."""
    arg = Params()
    clauses = [f"st.event_id = {arg(event_id)}"]
    if after is not None:
        clauses.append(f"st.user_id > {arg(after)}")
    rows = await conn.fetch(
        _STAFF_SELECT
        + " WHERE "
        + " AND ".join(clauses)
        + f" ORDER BY st.user_id LIMIT {arg(limit)}",
        *arg,
    )
    return [_staff(r) for r in rows]


async def seat_snapshot(
    conn: Connection, event_id: uuid.UUID
) -> tuple[int, dt.datetime, list[Any]] | None:
    """(last change number, read time, every seat's (id, section_id, status)), the map
    exactly the state after that change; None: no such event.

    The event's counter row is locked first (no other sequencer of this stream runs until
    this transaction ends), then ONE statement numbers every change committed by now and
    reads the seats, in one snapshot: the map holds exactly the changes numbered up to the
    sequence it reports, none after."""
    ctes, last = outbox.numbering_ctes(outbox.SEATS)
    async with conn.transaction():
        await outbox.lock(conn, outbox.SEATS, event_id)
        rows = await conn.fetch(
            f"""
            WITH {ctes}
            SELECT s.id, s.section_id, {_SEAT_STATUS} AS status, {last} AS sequence,
                   clock_timestamp() AS read_time
            FROM seats s WHERE s.event_id = $1 ORDER BY s.id
            """,
            event_id,
        )
    if not rows:
        return None
    return rows[0]["sequence"], rows[0]["read_time"], list(rows)


async def last_seat_change(conn: Connection, event_id: uuid.UUID) -> int | None:
    """The event's last numbered change (0: none yet); None: no such event."""
    if not await event_exists(conn, event_id):
        return None
    return await outbox.last_sequence(conn, outbox.SEATS, event_id)


async def seat_changes_after(
    conn: Connection, event_id: uuid.UUID, after: int, limit: int
) -> list[SeatChangeRecord]:
    """The event's committed changes numbered after `after`, in order, at most `limit`."""
    rows = await conn.fetch(
        "SELECT sequence, seat_id, section_id, status, change_time FROM seat_changes "
        "WHERE event_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        event_id,
        after,
        limit,
    )
    return [
        record_from_row(
            SeatChangeRecord,
            r,
            status=SeatStatus(r["status"]),
            snapshot=False,
            snapshot_complete=False,
        )
        for r in rows
    ]
