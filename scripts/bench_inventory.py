"""Benchmark inventory generation: how long CreateEvent takes for venues of growing size.

Creates a throwaway database on a local PostgreSQL, starts ticketd as its own process on a
free loopback port, signs in as the bootstrap admin, creates one venue per size (reserved rows
of 100 seats, sections of up to 50 rows) and times CreateEvent over gRPC, which inserts the
event and its whole inventory in one transaction. Writes JSON: per size the runs, min and
median seconds, places per second and the CPU of server and PostgreSQL per CreateEvent, the
100k/10k time ratio, and the machine. `--explain` adds EXPLAIN ANALYZE of the inventory
INSERT for the largest size, run in a transaction that is rolled back.

Usage: scripts/bench_inventory [--sizes 1000,10000,100000] [--repeat 3] [--json PATH] [--explain]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

from scripts.benchlib.cpu import CpuGroups, CpuMeter
from scripts.benchlib.database import admin_url, connect_db, database_name, throwaway_database
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import ServerProcess, benchmark_server
from scripts.benchlib.provision import (
    ROWS_PER_SECTION,
    SEATS_PER_ROW,
    channel,
    create_venue,
    event_request,
    login,
)
from scripts.benchlib.report import header, log, write_json
from ticketd.config import Settings
from ticketing.v1 import event_pb2_grpc, venue_pb2

GOAL_SECONDS_100K = 2.0
# The server's default statement timeout (10 s) would turn a slow run into an error; the
# benchmark wants the number, so it allows far more and reports the default alongside.
BENCH_STATEMENT_TIMEOUT_MS = 300_000
CREATE_TIMEOUT_SECONDS = 300.0
ADMIN_EMAIL = "bench-admin@example.test"
WARMUP_PLACES = 100


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
    from ticketd.events.repository import INSERT_INVENTORY

    copy_id = str(uuid.uuid4())
    insert_sql = INSERT_INVENTORY.replace("$1", "$1::uuid")
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


async def bench(sizes: list[int], repeat: int, explain: bool) -> dict[str, Any]:
    """The whole run; the report."""
    admin = admin_url()
    machine = await machine_info(admin)
    async with throwaway_database(admin) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-") as data_dir:
            server = benchmark_server(
                url,
                Path(data_dir),
                admin_email=ADMIN_EMAIL,
                env={"TICKETING_STATEMENT_TIMEOUT_MS": str(BENCH_STATEMENT_TIMEOUT_MS)},
            )
            await server.start()
            log(f"ticketd pid {server.pid} on {server.target}")
            try:
                results, last_event = await _run(server, url, sizes, repeat)
            finally:
                await server.stop()
        explained = None
        if explain and last_event:
            conn = await connect_db(url)
            try:
                explained = await explain_inventory_insert(conn, last_event)
            finally:
                await conn.close()
    by_size = {r["places"]: r for r in results}
    ratio = None
    if 100_000 in by_size and 10_000 in by_size:
        ratio = round(by_size[100_000]["median_s"] / by_size[10_000]["median_s"], 2)
    report: dict[str, Any] = {
        **header(
            "inventory generation (CreateEvent over gRPC, one transaction)",
            "scripts/bench_inventory",
        ),
        "server": "separate process: python -m ticketd serve (bcrypt rounds 4, "
        f"TICKETING_STATEMENT_TIMEOUT_MS={BENCH_STATEMENT_TIMEOUT_MS})",
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
    server: ServerProcess, url: str, sizes: list[int], repeat: int
) -> tuple[list[dict[str, Any]], str]:
    """Time `repeat` CreateEvent calls per size; the results and the last event's id."""
    results: list[dict[str, Any]] = []
    last_event = ""
    assert server.admin_password is not None and server.pid is not None
    groups = CpuGroups((server.pid,), (), database_name(url))
    async with channel(server.target) as ch:
        md = await login(ch, ADMIN_EMAIL, server.admin_password)
        events: event_pb2_grpc.EventServiceAsyncStub = event_pb2_grpc.EventServiceStub(ch)

        async def create_event(venue: venue_pb2.Venue, name: str) -> tuple[float, str]:
            request = event_request(venue, name)
            began = time.perf_counter()
            resp = await events.CreateEvent(request, metadata=md, timeout=CREATE_TIMEOUT_SECONDS)
            elapsed = time.perf_counter() - began
            if (
                resp.event.capacity != venue.capacity
                or resp.event.available_count != venue.capacity
            ):
                raise RuntimeError(f"event has {resp.event.available_count} of {venue.capacity}")
            return elapsed, resp.event.id

        # Warm the connection pool, the plan cache and the code paths once, off the books.
        await create_event(await create_venue(ch, md, WARMUP_PLACES), "warm-up")

        for places in sizes:
            venue = await create_venue(ch, md, places)
            runs = []
            meter = CpuMeter(groups)
            meter.start()
            for n in range(repeat):
                elapsed, last_event = await create_event(venue, f"Bench {places} #{n + 1}")
                runs.append(elapsed)
                log(f"{places:>7} places  run {n + 1}: {elapsed:.3f} s")
            cpu = meter.stop(calls=repeat)
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
                    # cpu_ms_per_call: CPU of server and PostgreSQL per CreateEvent.
                    "cpu": cpu,
                }
            )
    return results, last_event


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
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or not all(1 <= s <= 200_000 for s in sizes):
        parser.error("--sizes must be a comma list of 1..200000 places")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    report = asyncio.run(bench(sizes, args.repeat, args.explain))
    if args.json:
        write_json(report, Path(args.json))
        log(f"report written to {args.json}")
    else:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
