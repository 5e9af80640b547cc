"""All SQL for gate scans: the exactly-once burn and the scan log.

A burn is one conditional UPDATE (status VALID -> USED). Of N concurrent scans of one
code, PostgreSQL lets exactly one UPDATE match: the others wait on its row lock, then
re-check the condition against the committed row and match nothing. The scan log's
primary key on scan_id makes a retried scan find its first answer, and a partial unique
index allows one ADMITTED entry per ticket.

The same statement judges the scan window (the SQL function gate_window, at
clock_timestamp()) and the caller's assignment (event_staff), so an admission is still one
round trip.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from ticketd.db import outbox
from ticketd.db.database import Connection as Conn
from ticketd.db.params import Params
from ticketd.db.records import record_from_row
from ticketd.gate.rules import (
    GateCounts,
    ScanConflictRecord,
    ScanInput,
    ScanRecord,
    ScanResult,
    TicketPlace,
)
from ticketd.gate.signing.rules import SignedFields
from ticketd.shared import ScanWindowDefaults

_PLACE = """
    es.name AS section_name, s.row_label, s.seat_number, s.seat_label
"""


def _place(row: Any) -> TicketPlace:
    return record_from_row(TicketPlace, row)


@dataclass(frozen=True)
class Burned:
    place: TicketPlace
    used_time: dt.datetime


@dataclass(frozen=True)
class Attempt:
    """What the first statement of a scan found, and whether it burned the ticket."""

    at: dt.datetime
    """The instant the scan was judged (clock_timestamp() at the write, database clock)."""
    window: str
    """gate_window() of the event at `at`: OPEN, NOT_YET_OPEN, EVENT_OVER, EVENT_CANCELLED."""
    is_staff: bool
    """The caller is assigned to the event (event_staff), as committed now."""
    seen: bool
    """The scan_id is in the log already (committed): this is a repeat."""
    burned: Burned | None
    """Set when this statement burned the ticket."""
    logged: bool
    """The admission was logged. False with `burned` set: a concurrent twin of this scan_id
    logged first, and the caller must roll the burn back."""


async def scan_and_burn(
    conn: Conn,
    scan: ScanInput,
    caller_id: uuid.UUID,
    *,
    admin: bool,
    window: ScanWindowDefaults,
    device: bool = False,
) -> Attempt | None:
    """The hot path in one statement: judge the window (database clock, at the write), check
    the caller's assignment and the scan_id, and burn the code if everything allows it and it
    is a VALID ticket of this event, logging the admission. None for an unknown event.

    Nothing is burned unless the window is OPEN, the caller is ADMIN (`admin`), a device
    (`device`: its scope was checked before) or assigned staff, and the scan_id is new. The
    scan is logged as the device's when `device`, else as the user's. A twin of this scan_id
    in flight (same id, another code) makes the log insert wait for it and then do nothing:
    `logged` is False, never a duplicate-key error.
    """
    row = await conn.fetchrow(
        f"""
        WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at),
        ctx AS MATERIALIZED (
            SELECT e.id AS event_id, clock.at,
                   gate_window(e.cancel_time, e.doors_open_time, e.start_time, e.end_time,
                               clock.at, $7, $8) AS window_state,
                   EXISTS (SELECT 1 FROM event_staff st
                           WHERE st.event_id = e.id AND st.user_id = $5) AS is_staff,
                   EXISTS (SELECT 1 FROM scans sc WHERE sc.scan_id = $4) AS seen
            FROM events e, clock
            WHERE e.id = $2
        ), burn AS (
            UPDATE tickets t SET status = 'USED', used_time = ctx.at, used_gate_id = $3,
                                 used_scan_id = $4
            FROM ctx
            WHERE t.code = $1 AND t.event_id = ctx.event_id AND t.status = 'VALID'
              AND ctx.window_state = 'OPEN' AND ($9 OR $10 OR ctx.is_staff) AND NOT ctx.seen
            RETURNING t.id, t.order_id, t.seat_id, t.used_time
        ), log AS (
            INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, device_id,
                               code_hash, ticket_id, result, scan_time)
            SELECT $4, $2, $3, CASE WHEN $10 THEN NULL ELSE $5::uuid END,
                   CASE WHEN $10 THEN $5::uuid END, $6, id, 'ADMITTED', used_time FROM burn
            ON CONFLICT (scan_id) DO NOTHING
            RETURNING 1
        )
        SELECT ctx.at, ctx.window_state, ctx.is_staff, ctx.seen,
               b.id AS ticket_id, b.order_id, b.used_time, {_PLACE},
               (SELECT count(*) FROM log) AS logged
        FROM ctx
        LEFT JOIN burn b ON TRUE
        LEFT JOIN seats s ON s.id = b.seat_id
        LEFT JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        """,
        scan.lookup_code,
        scan.event_id,
        scan.gate_id,
        scan.scan_id,
        caller_id,
        scan.code_hash,
        window.doors_open_lead,
        window.default_duration,
        admin,
        device,
    )
    if row is None:
        return None
    burned = (
        Burned(place=_place(row), used_time=row["used_time"])
        if row["ticket_id"] is not None
        else None
    )
    return Attempt(
        at=row["at"],
        window=row["window_state"],
        is_staff=row["is_staff"],
        seen=row["seen"],
        burned=burned,
        logged=row["logged"] > 0,
    )


@dataclass(frozen=True)
class TicketState:
    event_id: uuid.UUID
    status: str
    used_time: dt.datetime | None
    used_gate_id: str | None
    place: TicketPlace


async def ticket_state(conn: Conn, code: str) -> TicketState | None:
    """The ticket behind a code as committed now (a fresh statement, so a concurrent burn
    that beat ours is visible)."""
    row = await conn.fetchrow(
        f"""
        SELECT t.id AS ticket_id, t.order_id, t.event_id, t.status, t.used_time,
               t.used_gate_id, {_PLACE}
        FROM tickets t
        JOIN seats s ON s.id = t.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE t.code = $1
        """,
        code,
    )
    if row is None:
        return None
    return record_from_row(TicketState, row, place=_place(row))


async def log_rejection(
    conn: Conn,
    scan: ScanInput,
    entry_manager_id: uuid.UUID,
    result: ScanResult,
    ticket_id: uuid.UUID | None,
    at: dt.datetime,
    *,
    device: bool = False,
    offline: bool = False,
    conflict_scan_id: uuid.UUID | None = None,
) -> dt.datetime | None:
    """Append a scan judged at `at` (an offline one: admitted by the kiosk at `at`, uploaded
    now); None when a concurrent twin of this scan_id logged first."""
    value: dt.datetime | None = await conn.fetchval(
        """
        INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, device_id, code_hash,
                           ticket_id, result, scan_time, offline, upload_time, conflict_scan_id)
        VALUES ($1, $2, $3, CASE WHEN $9 THEN NULL ELSE $4::uuid END,
                CASE WHEN $9 THEN $4::uuid END, $5, $6, $7, $8, $10,
                CASE WHEN $10 THEN clock_timestamp() END, $11)
        ON CONFLICT (scan_id) DO NOTHING
        RETURNING scan_time
        """,
        scan.scan_id,
        scan.event_id,
        scan.gate_id,
        entry_manager_id,
        scan.code_hash,
        ticket_id,
        result.value,
        at,
        device,
        offline,
        conflict_scan_id,
    )
    return value


@dataclass(frozen=True)
class StoredScan:
    event_id: uuid.UUID
    entry_manager_id: uuid.UUID
    gate_id: str
    code_hash: str
    result: ScanResult
    scan_time: dt.datetime
    used_time: dt.datetime | None
    used_gate_id: str | None
    place: TicketPlace | None
    offline: bool = False
    first_gate_id: str | None = None
    """For CONFLICT: the gate of the admission that counts."""
    first_scan_time: dt.datetime | None = None


async def count_repeat(conn: Conn, scan_id: uuid.UUID) -> None:
    """Count a kiosk's retry on the scan's one log entry (never a second entry)."""
    await conn.execute(
        "UPDATE scans SET repeat_count = repeat_count + 1 WHERE scan_id = $1", scan_id
    )


async def stored_scan(conn: Conn, scan_id: uuid.UUID) -> StoredScan | None:
    """The first answer to a scan_id, with the ticket as it is now."""
    row = await conn.fetchrow(
        f"""
        SELECT sc.event_id, coalesce(sc.entry_manager_id, sc.device_id) AS entry_manager_id,
               sc.gate_id, sc.code_hash, sc.result, sc.scan_time, sc.offline,
               f.gate_id AS first_gate_id, f.scan_time AS first_scan_time,
               t.id AS ticket_id, t.order_id, t.used_time, t.used_gate_id, {_PLACE}
        FROM scans sc
        LEFT JOIN scans f ON f.scan_id = sc.conflict_scan_id
        LEFT JOIN tickets t ON t.id = sc.ticket_id
        LEFT JOIN seats s ON s.id = t.seat_id
        LEFT JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE sc.scan_id = $1
        """,
        scan_id,
    )
    if row is None:
        return None
    return record_from_row(
        StoredScan,
        row,
        result=ScanResult(row["result"]),
        place=_place(row) if row["ticket_id"] is not None else None,
        offline=row["offline"],
        first_gate_id=row["first_gate_id"],
        first_scan_time=row["first_scan_time"],
    )


async def list_scans(
    conn: Conn,
    event_id: uuid.UUID,
    *,
    gate_id: str | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
    conflicts_only: bool = False,
) -> list[ScanRecord]:
    arg = Params()
    clauses = [f"sc.event_id = {arg(event_id)}"]
    if gate_id is not None:
        clauses.append(f"sc.gate_id = {arg(gate_id)}")
    if conflicts_only:
        clauses.append("sc.result = 'CONFLICT'")
    if before is not None:
        clauses.append(f"(sc.scan_time, sc.scan_id) < ({arg(before[0])}, {arg(before[1])})")
    rows = await conn.fetch(
        "SELECT sc.scan_id, sc.event_id, sc.gate_id, sc.entry_manager_id, sc.device_id, "
        "sc.result, sc.ticket_id, sc.code_hash, sc.scan_time, sc.repeat_count, sc.offline, "
        "sc.upload_time, sc.conflict_scan_id, f.gate_id AS first_gate_id, "
        "f.scan_time AS first_scan_time "
        "FROM scans sc LEFT JOIN scans f ON f.scan_id = sc.conflict_scan_id "
        f"WHERE {' AND '.join(clauses)} "
        f"ORDER BY sc.scan_time DESC, sc.scan_id DESC LIMIT {arg(limit)}",
        *arg,
    )
    return [
        record_from_row(
            ScanRecord,
            r,
            result=ScanResult(r["result"]),
            conflict=ScanConflictRecord(
                r["conflict_scan_id"], r["first_gate_id"], r["first_scan_time"]
            )
            if r["conflict_scan_id"] is not None
            else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ReadAccess:
    organizer_id: uuid.UUID
    is_staff: bool


async def read_access(conn: Conn, event_id: uuid.UUID, caller_id: uuid.UUID) -> ReadAccess | None:
    """The event's owner and whether the caller is assigned to it, or None: no such event."""
    row = await conn.fetchrow(
        """
        SELECT e.organizer_id,
               EXISTS (SELECT 1 FROM event_staff st
                       WHERE st.event_id = e.id AND st.user_id = $2) AS is_staff
        FROM events e WHERE e.id = $1
        """,
        event_id,
        caller_id,
    )
    if row is None:
        return None
    return ReadAccess(organizer_id=row["organizer_id"], is_staff=row["is_staff"])


async def gate_counts(conn: Conn, event_id: uuid.UUID) -> tuple[list[GateCounts], int]:
    """Per-gate counts by result, and live tickets not admitted yet."""
    rows = await conn.fetch(
        "SELECT gate_id, result, offline, count(*) AS n, max(scan_time) AS last FROM scans "
        "WHERE event_id = $1 GROUP BY gate_id, result, offline ORDER BY gate_id",
        event_id,
    )
    gates: dict[str, GateCounts] = {}
    for r in rows:
        g = gates.get(r["gate_id"])
        if g is None:
            g = GateCounts(r["gate_id"], {}, r["last"], {})
            gates[r["gate_id"]] = g
        result = ScanResult(r["result"])
        g.by_result[result] = g.by_result.get(result, 0) + r["n"]
        if r["offline"]:
            g.offline_by_result[result] = r["n"]
        if r["last"] > g.last_scan_time:
            gates[r["gate_id"]] = GateCounts(g.gate_id, g.by_result, r["last"], g.offline_by_result)
    outstanding: int = await conn.fetchval(
        "SELECT count(*) FROM tickets WHERE event_id = $1 AND status = 'VALID'", event_id
    )
    return list(gates.values()), outstanding


# --- Offline uploads ---------------------------------------------------------------------


@dataclass(frozen=True)
class OfflineTicket:
    """A ticket as an offline upload judges it, locked FOR UPDATE."""

    event_id: uuid.UUID
    status: str
    code: str
    place: TicketPlace
    window_at_scan: str
    """gate_window() at the kiosk's scan time (cancellation counts only if it came first)."""
    future: bool
    """The scan time is later than the database clock plus the allowed skew."""


async def lock_offline_ticket(
    conn: Conn,
    ticket_id: uuid.UUID,
    at: dt.datetime,
    window: ScanWindowDefaults,
    skew: dt.timedelta,
) -> OfflineTicket | None:
    """The ticket, locked (so an online burn, a refund or another upload of it waits), and
    the scan window of its event at the kiosk's clock `at`."""
    row = await conn.fetchrow(
        f"""
        SELECT t.id AS ticket_id, t.order_id, t.event_id, t.status, t.code, {_PLACE},
               gate_window(CASE WHEN e.cancel_time <= $2 THEN e.cancel_time END,
                           e.doors_open_time, e.start_time, e.end_time, $2, $3, $4)
                   AS window_state,
               $2 > clock_timestamp() + $5::interval AS future
        FROM tickets t
        JOIN events e ON e.id = t.event_id
        JOIN seats s ON s.id = t.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE t.id = $1
        FOR UPDATE OF t
        """,
        ticket_id,
        at,
        window.doors_open_lead,
        window.default_duration,
        skew,
    )
    if row is None:
        return None
    return OfflineTicket(
        event_id=row["event_id"],
        status=row["status"],
        code=row["code"],
        place=_place(row),
        window_at_scan=row["window_state"],
        future=row["future"],
    )


async def ticket_id_by_code(conn: Conn, code: str) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval("SELECT id FROM tickets WHERE code = $1", code)
    return value


@dataclass(frozen=True)
class Admission:
    scan_id: uuid.UUID
    gate_id: str
    scan_time: dt.datetime


async def admission_of(conn: Conn, ticket_id: uuid.UUID) -> Admission | None:
    """The one ADMITTED scan of a ticket (the partial unique index allows no second)."""
    row = await conn.fetchrow(
        "SELECT scan_id, gate_id, scan_time FROM scans "
        "WHERE ticket_id = $1 AND result = 'ADMITTED'",
        ticket_id,
    )
    return Admission(row["scan_id"], row["gate_id"], row["scan_time"]) if row else None


async def burn_offline(
    conn: Conn, ticket_id: uuid.UUID, at: dt.datetime, gate_id: str, scan_id: uuid.UUID
) -> bool:
    """Burn a (locked, VALID) ticket with the kiosk's scan time and gate."""
    result: str = await conn.execute(
        "UPDATE tickets SET status = 'USED', used_time = $2, used_gate_id = $3, "
        "used_scan_id = $4 WHERE id = $1 AND status = 'VALID'",
        ticket_id,
        at,
        gate_id,
        scan_id,
    )
    return result.endswith(" 1")


async def plain_code(conn: Conn, fields: SignedFields) -> str | None:
    """The current plain code of the ticket a verified signed code names, if the code it was
    derived from is still the ticket's (else its codes were rotated since: None)."""
    value: str | None = await conn.fetchval(
        "SELECT code FROM tickets WHERE id = $1 AND ticket_code_tag(code) = $2",
        fields.ticket_id,
        fields.code_tag,
    )
    return value


# --- WatchGate: the gate-change outbox (migration 0014) -----------------------------------

_GATE_AGGREGATE = (
    "SELECT gate_id, result, offline, count(*) AS n, max(scan_time) AS last FROM gate_changes "
)


async def gate_snapshot(conn: Conn, event_id: uuid.UUID) -> tuple[int, list[Any]]:
    """(sequence, per-gate counts rows as of it): the stream's counter row locked, then ONE
    statement numbers what committed and aggregates every change visible to it, so the
    counts are exactly those of the changes up to that sequence."""
    ctes, last = outbox.numbering_ctes(outbox.GATES)
    async with conn.transaction():
        await outbox.lock(conn, outbox.GATES, event_id)
        rows = await conn.fetch(
            f"""
            WITH {ctes}, agg AS (
                {_GATE_AGGREGATE} WHERE event_id = $1 GROUP BY gate_id, result, offline
            )
            SELECT {last} AS sequence, agg.* FROM (SELECT 1) one LEFT JOIN agg ON true
            ORDER BY agg.gate_id
            """,
            event_id,
        )
    return int(rows[0]["sequence"]), [r for r in rows if r["gate_id"] is not None]


async def gate_counts_at(conn: Conn, event_id: uuid.UUID, sequence: int) -> list[Any]:
    """Per-gate counts rows of the changes numbered up to `sequence`."""
    rows: list[Any] = await conn.fetch(
        _GATE_AGGREGATE
        + "WHERE event_id = $1 AND sequence <= $2 GROUP BY gate_id, result, offline",
        event_id,
        sequence,
    )
    return rows


async def last_gate_change(conn: Conn, event_id: uuid.UUID) -> int:
    """The event's last numbered gate change (0: none yet)."""
    return await outbox.last_sequence(conn, outbox.GATES, event_id)


async def gate_changes_after(conn: Conn, event_id: uuid.UUID, after: int, limit: int) -> list[Any]:
    """The event's gate changes numbered after `after`, in order, at most `limit`."""
    rows: list[Any] = await conn.fetch(
        "SELECT sequence, scan_id, gate_id, result, offline, scan_time FROM gate_changes "
        "WHERE event_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
        event_id,
        after,
        limit,
    )
    return rows
