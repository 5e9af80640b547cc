"""Benchmark inventory generation: how long CreateEvent takes for venues of growing size.

Creates a throwaway database on a local PostgreSQL, runs ticketd in this process on a free
port, signs in as the bootstrap admin, creates one venue per size (reserved rows of 100 seats,
sections of up to 50 rows) and times CreateEvent over gRPC, which inserts the event and its
whole inventory in one transaction. Writes JSON: per size the runs, min and median seconds and
places per second, the 100k/10k time ratio, and the machine. `--explain` adds EXPLAIN ANALYZE
of the inventory INSERT for the largest size, run in a transaction that is rolled back.

Usage: scripts/bench_inventory [--sizes 1000,10000,100000] [--repeat 3] [--json PATH] [--explain]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from benchlib import plain_url, throwaway_database
from google.protobuf.timestamp_pb2 import Timestamp

from ticketd.app import TicketServer, build_components, ensure_bootstrap_admin
from ticketd.config import Settings
from ticketd.db import migrate
from ticketd.db.engine import Database, PoolOptions
from ticketing.client import connect
from ticketing.v1 import event_pb2, event_pb2_grpc, venue_pb2, venue_pb2_grpc

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SEATS_PER_ROW = 100
ROWS_PER_SECTION = 50
GOAL_SECONDS_100K = 2.0
# The server's default statement timeout (10 s) would turn a slow run into an error; the
# benchmark wants the number, so it allows far more and reports the default alongside.
BENCH_STATEMENT_TIMEOUT_MS = 300_000
CREATE_TIMEOUT_SECONDS = 300.0
ADMIN_EMAIL = "bench-admin@example.test"


def arena_layout(places: int) -> venue_pb2.Venue:
    """A reserved-seating venue of exactly `places`: rows of 100, sections of up to 50 rows."""
    if places <= 0 or places % SEATS_PER_ROW:
        raise ValueError(f"sizes must be positive multiples of {SEATS_PER_ROW}, got {places}")
    rows = places // SEATS_PER_ROW
    venue = venue_pb2.Venue(name=f"Bench arena {places}", time_zone="UTC")
    for start in range(0, rows, ROWS_PER_SECTION):
        count = min(ROWS_PER_SECTION, rows - start)
        venue.sections.append(
            venue_pb2.Section(
                name=f"Block {start // ROWS_PER_SECTION + 1}",
                kind=venue_pb2.SECTION_KIND_RESERVED,
                rows=[
                    venue_pb2.Row(label=str(n + 1), seat_count=SEATS_PER_ROW) for n in range(count)
                ],
            )
        )
    return venue


def _start_time() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=365))
    return ts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


async def machine_info(conn: asyncpg.Connection) -> dict[str, Any]:
    """Where the numbers came from: CPUs, Python, PostgreSQL and the settings that matter."""
    settings = {
        name: await conn.fetchval(f"SHOW {name}")
        for name in ("shared_buffers", "synchronous_commit", "fsync", "work_mem", "max_wal_size")
    }
    return {
        "nproc": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql_version": await conn.fetchval("SHOW server_version"),
        "postgresql": await conn.fetchval("SELECT version()"),
        "postgresql_settings": settings,
        "postgresql_on_same_host": True,
    }


# Copies of an existing event and its sections, so the INSERT can be explained on fresh keys
# (deleting the event's seats first would leave dead index entries and skew the plan's timing).
_COPY_EVENT = """
    INSERT INTO events (id, venue_id, organizer_id, name, description, start_time, end_time,
                        currency_code, max_tickets_per_order, max_tickets_per_customer, capacity)
    SELECT $2::uuid, venue_id, organizer_id, name, description, start_time, end_time,
           currency_code, max_tickets_per_order, max_tickets_per_customer, capacity
    FROM events WHERE id = $1::uuid
"""
_COPY_SECTIONS = """
    INSERT INTO event_sections (event_id, section_id, position, name, kind, price_minor, capacity)
    SELECT $2::uuid, section_id, position, name, kind, price_minor, capacity
    FROM event_sections WHERE event_id = $1::uuid
"""
_COUNTS = """
    SELECT section_id, status, count(*) AS n FROM seats
    WHERE event_id = $1::uuid GROUP BY section_id, status
"""


async def explain_inventory_insert(conn: asyncpg.Connection, event_id: str) -> dict[str, Any]:
    """EXPLAIN ANALYZE of the server's inventory INSERT for a copy of `event_id`, rolled back.

    The statement is imported from the server so the plan is of the SQL that actually runs.
    Also explains the per-section count query CreateEvent runs on the new inventory.
    """
    from ticketd.events.repository import _INSERT_INVENTORY

    copy_id = str(uuid.uuid4())
    insert_sql = _INSERT_INVENTORY.text.replace(":event_id", "$1::uuid")
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(_COPY_EVENT, event_id, copy_id)
        await conn.execute(_COPY_SECTIONS, event_id, copy_id)
        plan = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + insert_sql, copy_id)
        counts = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + _COUNTS, copy_id)
    finally:
        await tx.rollback()
    return {
        "copied_event_id": event_id,
        "insert_plan": [r[0] for r in plan],
        "count_query_plan": [r[0] for r in counts],
    }


async def bench(sizes: list[int], repeat: int, admin_url: str, explain: bool) -> dict[str, Any]:
    async with throwaway_database(admin_url) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-") as data_dir:
            settings = Settings(
                database_url=url,
                listen="127.0.0.1:0",
                data_dir=Path(data_dir),
                jwt_secret=secrets.token_urlsafe(48),
                bcrypt_rounds=4,
                admin_email=ADMIN_EMAIL,
                admin_password=secrets.token_urlsafe(16),
                grace_seconds=1,
                # One admin sign-in only; set explicitly all the same (README, security model).
                auth_concurrency=2,
                auth_queue=100_000,
                auth_peer_rate=1_000_000.0,
                auth_peer_burst=1_000_000,
                login_failures_per_email=1_000_000,
            )
            db = Database(url, PoolOptions(statement_timeout_ms=BENCH_STATEMENT_TIMEOUT_MS))
            await migrate.upgrade(db.engine)
            components = build_components(settings, db, settings.jwt_secret or "")
            await ensure_bootstrap_admin(components)
            server = TicketServer(components)
            port = await server.start("127.0.0.1:0")
            try:
                results, explained = await _run(
                    f"127.0.0.1:{port}", settings, sizes, repeat, url, explain
                )
            finally:
                await server.stop(0)
                await db.dispose()
        conn = await asyncpg.connect(plain_url(url))
        try:
            machine = await machine_info(conn)
        finally:
            await conn.close()
    by_size = {r["places"]: r for r in results}
    ratio = None
    if 100_000 in by_size and 10_000 in by_size:
        ratio = round(by_size[100_000]["median_s"] / by_size[10_000]["median_s"], 2)
    report: dict[str, Any] = {
        "benchmark": "inventory generation (CreateEvent over gRPC, one transaction)",
        "command": "scripts/bench_inventory " + " ".join(sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "layout": f"reserved rows of {SEATS_PER_ROW} seats, sections of {ROWS_PER_SECTION} rows",
        "repeat": repeat,
        "goal": {"places": 100_000, "seconds": GOAL_SECONDS_100K, "cores": 2},
        "results": results,
        "ratio_100k_to_10k_median": ratio,
        "goal_met": by_size[100_000]["median_s"] < GOAL_SECONDS_100K
        if 100_000 in by_size
        else None,
        "server_default_statement_timeout_ms": Settings(database_url=None).statement_timeout_ms,
        "machine": machine,
    }
    if explained is not None:
        report["explain"] = explained
    return report


async def _run(
    target: str, settings: Settings, sizes: list[int], repeat: int, url: str, explain: bool
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    results: list[dict[str, Any]] = []
    last_event = ""
    async with connect(target, timeout=CREATE_TIMEOUT_SECONDS) as client:
        assert settings.admin_password is not None
        await client.login(ADMIN_EMAIL, settings.admin_password)
        venues: venue_pb2_grpc.VenueServiceAsyncStub = venue_pb2_grpc.VenueServiceStub(
            client.channel
        )
        events: event_pb2_grpc.EventServiceAsyncStub = event_pb2_grpc.EventServiceStub(
            client.channel
        )

        async def create_event(venue: venue_pb2.Venue, name: str) -> tuple[float, str]:
            request = event_pb2.CreateEventRequest(
                venue_id=venue.id,
                name=name,
                start_time=_start_time(),
                currency_code="EUR",
                section_prices={s.id: 5_000 for s in venue.sections},
                max_tickets_per_order=10,
            )
            began = time.perf_counter()
            resp = await events.CreateEvent(request)
            elapsed = time.perf_counter() - began
            if (
                resp.event.capacity != venue.capacity
                or resp.event.available_count != venue.capacity
            ):
                raise RuntimeError(f"event has {resp.event.available_count} of {venue.capacity}")
            return elapsed, resp.event.id

        # Warm the connection pool, the plan cache and the code paths once, off the books.
        warm = (
            await venues.CreateVenue(venue_pb2.CreateVenueRequest(venue=arena_layout(100)))
        ).venue
        await create_event(warm, "warm-up")

        for places in sizes:
            venue = (
                await venues.CreateVenue(venue_pb2.CreateVenueRequest(venue=arena_layout(places)))
            ).venue
            runs = []
            for n in range(repeat):
                elapsed, last_event = await create_event(venue, f"Bench {places} #{n + 1}")
                runs.append(elapsed)
                print(f"{places:>7} places  run {n + 1}: {elapsed:.3f} s", file=sys.stderr)
            median = statistics.median(runs)
            results.append(
                {
                    "places": places,
                    "sections": len(venue.sections),
                    "runs_s": [round(r, 4) for r in runs],
                    "min_s": round(min(runs), 4),
                    "median_s": round(median, 4),
                    "places_per_s_median": round(places / median),
                    "places_per_s_best": round(places / min(runs)),
                }
            )
    explained = None
    if explain and last_event:
        conn = await asyncpg.connect(plain_url(url))
        try:
            explained = await explain_inventory_insert(conn, last_event)
        finally:
            await conn.close()
    return results, explained


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark, write the JSON report."""
    parser = argparse.ArgumentParser(prog="bench_inventory", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="places per venue, comma list")
    parser.add_argument("--repeat", type=int, default=3, help="CreateEvent calls per size")
    parser.add_argument("--json", metavar="PATH", help="write the report here (default: stdout)")
    parser.add_argument(
        "--explain", action="store_true", help="add EXPLAIN ANALYZE of the inventory INSERT"
    )
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    report = asyncio.run(bench(sizes, args.repeat, admin_url, args.explain))
    text = json.dumps(report, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
        print(f"report written to {args.json}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
