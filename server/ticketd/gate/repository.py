"""All SQL for gate scans: the exactly-once burn and the scan log.

A burn is one conditional UPDATE (status VALID -> USED). Of N concurrent scans of one
code, PostgreSQL lets exactly one UPDATE match: the others wait on its row lock, then
re-check the condition against the committed row and match nothing. The scan log's
primary key on scan_id makes a retried scan find its first answer, and a partial unique
index allows one ADMITTED entry per ticket.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from ticketd.db.database import Connection as Conn
from ticketd.db.params import Params
from ticketd.gate.rules import GateCounts, ScanInput, ScanRecord, ScanResult, TicketPlace


@dataclass(frozen=True)
class ScanContext:
    not_open: bool
    existing: Any | None


async def scan_context(conn: Conn, event_id: uuid.UUID, scan_id: uuid.UUID) -> ScanContext | None:
    """Whether the doors are open (database clock) and any earlier answer to this scan_id."""
    row = await conn.fetchrow(
        """
        SELECT (e.doors_open_time IS NOT NULL AND e.doors_open_time > now()) AS not_open,
               s.scan_id AS existing
        FROM events e LEFT JOIN scans s ON s.scan_id = $2
        WHERE e.id = $1
        """,
        event_id,
        scan_id,
    )
    if row is None:
        return None
    return ScanContext(not_open=row["not_open"], existing=row["existing"])


_PLACE = """
    es.name AS section_name, s.row_label, s.seat_number, s.seat_label
"""


def _place(row: Any) -> TicketPlace:
    return TicketPlace(
        ticket_id=row["ticket_id"],
        order_id=row["order_id"],
        section_name=row["section_name"],
        row_label=row["row_label"],
        seat_number=row["seat_number"],
        seat_label=row["seat_label"],
    )


@dataclass(frozen=True)
class Burned:
    place: TicketPlace
    used_time: dt.datetime


async def burn(conn: Conn, scan: ScanInput, entry_manager_id: uuid.UUID) -> Burned | None:
    """Burn the code if it is a VALID ticket of this event, and log the admission, in one
    statement. None when nothing was burned (then nothing was logged either)."""
    row = await conn.fetchrow(
        f"""
        WITH burn AS (
            UPDATE tickets SET status = 'USED', used_time = now(), used_gate_id = $3,
                               used_scan_id = $4
            WHERE code = $1 AND event_id = $2 AND status = 'VALID'
            RETURNING id, order_id, seat_id, used_time
        ), log AS (
            INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, code_hash,
                               ticket_id, result, scan_time)
            SELECT $4, $2, $3, $5, $6, id, 'ADMITTED', used_time FROM burn
            RETURNING 1
        )
        SELECT b.id AS ticket_id, b.order_id, b.used_time, {_PLACE},
               (SELECT count(*) FROM log) AS logged
        FROM burn b
        JOIN seats s ON s.id = b.seat_id
        JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        """,
        scan.code,
        scan.event_id,
        scan.gate_id,
        scan.scan_id,
        entry_manager_id,
        scan.code_hash,
    )
    if row is None:
        return None
    return Burned(place=_place(row), used_time=row["used_time"])


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
    return TicketState(
        event_id=row["event_id"],
        status=row["status"],
        used_time=row["used_time"],
        used_gate_id=row["used_gate_id"],
        place=_place(row),
    )


async def log_rejection(
    conn: Conn,
    scan: ScanInput,
    entry_manager_id: uuid.UUID,
    result: ScanResult,
    ticket_id: uuid.UUID | None,
) -> dt.datetime | None:
    """Append a refused scan; None when a concurrent twin of this scan_id logged first."""
    value: dt.datetime | None = await conn.fetchval(
        """
        INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, code_hash, ticket_id,
                           result)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
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
    )
    return value


@dataclass(frozen=True)
class StoredScan:
    event_id: uuid.UUID
    gate_id: str
    code_hash: str
    result: ScanResult
    scan_time: dt.datetime
    used_time: dt.datetime | None
    used_gate_id: str | None
    place: TicketPlace | None


async def count_repeat(conn: Conn, scan_id: uuid.UUID) -> None:
    """Count a kiosk's retry on the scan's one log entry (never a second entry)."""
    await conn.execute(
        "UPDATE scans SET repeat_count = repeat_count + 1 WHERE scan_id = $1", scan_id
    )


async def stored_scan(conn: Conn, scan_id: uuid.UUID) -> StoredScan | None:
    """The first answer to a scan_id, with the ticket as it is now."""
    row = await conn.fetchrow(
        f"""
        SELECT sc.event_id, sc.gate_id, sc.code_hash, sc.result, sc.scan_time,
               t.id AS ticket_id, t.order_id, t.used_time, t.used_gate_id, {_PLACE}
        FROM scans sc
        LEFT JOIN tickets t ON t.id = sc.ticket_id
        LEFT JOIN seats s ON s.id = t.seat_id
        LEFT JOIN event_sections es ON es.event_id = s.event_id AND es.section_id = s.section_id
        WHERE sc.scan_id = $1
        """,
        scan_id,
    )
    if row is None:
        return None
    return StoredScan(
        event_id=row["event_id"],
        gate_id=row["gate_id"],
        code_hash=row["code_hash"],
        result=ScanResult(row["result"]),
        scan_time=row["scan_time"],
        used_time=row["used_time"],
        used_gate_id=row["used_gate_id"],
        place=_place(row) if row["ticket_id"] is not None else None,
    )


async def list_scans(
    conn: Conn,
    event_id: uuid.UUID,
    *,
    gate_id: str | None,
    before: tuple[dt.datetime, uuid.UUID] | None,
    limit: int,
) -> list[ScanRecord]:
    arg = Params()
    clauses = [f"event_id = {arg(event_id)}"]
    if gate_id is not None:
        clauses.append(f"gate_id = {arg(gate_id)}")
    if before is not None:
        clauses.append(f"(scan_time, scan_id) < ({arg(before[0])}, {arg(before[1])})")
    rows = await conn.fetch(
        "SELECT scan_id, event_id, gate_id, entry_manager_id, result, ticket_id, code_hash, "
        f"scan_time, repeat_count FROM scans WHERE {' AND '.join(clauses)} "
        f"ORDER BY scan_time DESC, scan_id DESC LIMIT {arg(limit)}",
        *arg,
    )
    return [
        ScanRecord(
            scan_id=r["scan_id"],
            event_id=r["event_id"],
            gate_id=r["gate_id"],
            entry_manager_id=r["entry_manager_id"],
            result=ScanResult(r["result"]),
            ticket_id=r["ticket_id"],
            code_hash=r["code_hash"],
            scan_time=r["scan_time"],
            repeat_count=r["repeat_count"],
        )
        for r in rows
    ]


async def event_exists(conn: Conn, event_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)", event_id))


async def gate_counts(conn: Conn, event_id: uuid.UUID) -> tuple[list[GateCounts], int]:
    """Per-gate counts by result, and live tickets not admitted yet."""
    rows = await conn.fetch(
        "SELECT gate_id, result, count(*) AS n, max(scan_time) AS last FROM scans "
        "WHERE event_id = $1 GROUP BY gate_id, result ORDER BY gate_id",
        event_id,
    )
    gates: dict[str, GateCounts] = {}
    for r in rows:
        g = gates.get(r["gate_id"])
        if g is None:
            g = GateCounts(r["gate_id"], {}, r["last"])
            gates[r["gate_id"]] = g
        g.by_result[ScanResult(r["result"])] = r["n"]
        if r["last"] > g.last_scan_time:
            gates[r["gate_id"]] = GateCounts(g.gate_id, g.by_result, r["last"])
    outstanding: int = await conn.fetchval(
        "SELECT count(*) FROM tickets WHERE event_id = $1 AND status = 'VALID'", event_id
    )
    return list(gates.values()), outstanding
