"""Benchmark the outbox's cost to writers: our booking statements in pgbench with seat streams
off and on, alternated, on one inventory.

The seat-stream cost is a database cost (what each booking writes, and the sequencer that
numbers it), and on a shared machine a single off/on pair is at the mercy of whatever else
runs. So: one throwaway database and event (made by a ticketd process, then stopped), then
`--rounds` rounds of pgbench (scripts/pgbench_booking.sql), each round once with
`ticketing.seat_streams=off` and once with `on` (order alternated between rounds), every run
on a reset inventory, while a sequencer pass runs every 10 ms as ticketd's would
(`outbox_sequence_pending()`, also during the off runs, where it finds nothing). Reports
each run and the median on/off ratio of bookings per second.

Usage: scripts/bench_outbox [--rounds 3] [--duration 6] [--places 30000] [--json PATH]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from scripts.bench_booking import (
    ADMIN_EMAIL,
    PGBENCH_CLIENTS,
    PRICE_MINOR,
    create_inventory,
    reset_inventory,
    sequence_outbox,
)
from scripts.benchlib import ROOT
from scripts.benchlib.cpu import wait_for_quiet
from scripts.benchlib.database import admin_url, connect_db, throwaway_database
from scripts.benchlib.pgbench import pgbench_clients, run_booking_pgbench
from scripts.benchlib.process import benchmark_server
from scripts.benchlib.report import header, log, write_json

DEFAULT_JSON = ROOT / "docs" / "bench_outbox.json"


async def one_run(url: str, event_id: str, streams: str, duration: int) -> dict[str, Any]:
    """pgbench with seat streams `streams` on a reset inventory, a sequencer alongside."""
    await wait_for_quiet(5)
    conn = await connect_db(url)
    try:
        await reset_inventory(conn, event_id)
        await conn.execute("DELETE FROM seat_changes")
        await conn.execute("DELETE FROM order_changes")
        await conn.execute("VACUUM (ANALYZE) seat_changes, order_changes")
    finally:
        await conn.close()
    os.environ["PGOPTIONS"] = f"-c ticketing.seat_streams={streams}"
    clients = await pgbench_clients(url, PGBENCH_CLIENTS)
    sequencing = asyncio.ensure_future(sequence_outbox(url))
    try:
        result = await run_booking_pgbench(
            url, event_id, clients=clients, duration_s=duration, price_minor=PRICE_MINOR
        )
    finally:
        sequencing.cancel()
        passes = (await asyncio.gather(sequencing, return_exceptions=True))[0]
    conn = await connect_db(url)
    try:
        unnumbered = await conn.fetchval("SELECT count(*) FROM seat_changes WHERE sequence IS NULL")
        recorded = await conn.fetchval("SELECT count(*) FROM seat_changes")
    finally:
        await conn.close()
    result["seat_streams"] = streams
    result["sequencer_passes"] = passes if isinstance(passes, int) else None
    result["seat_changes_recorded"] = recorded
    result["left_unnumbered_at_end"] = unnumbered
    log(
        f"streams {streams}: {result['bookings_per_s']} bookings/s, "
        f"{recorded} changes, other work {result['cpu']['cores_used_other']} cores"
    )
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    async with throwaway_database(admin_url()) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-outbox-") as data_dir:
            server = benchmark_server(url, Path(data_dir), admin_email=ADMIN_EMAIL, pool_size=4)
            await server.start()
            try:
                assert server.admin_password is not None
                inventory = await create_inventory(
                    server.target, server.admin_password, args.places
                )
            finally:
                await server.stop(timeout=15)
        for i in range(args.rounds):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for streams in order:
                runs.append(await one_run(url, inventory.event_id, streams, args.duration))
    rate = {s: [r["bookings_per_s"] for r in runs if r["seat_streams"] == s] for s in ("off", "on")}
    ratios = [on / off for on, off in zip(rate["on"], rate["off"], strict=True) if off]
    return {
        **header(
            "outbox cost: booking statements in pgbench, seat streams off/on",
            "scripts/bench_outbox",
        ),
        "setup": {
            "script": "scripts/pgbench_booking.sql",
            "places": args.places,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "sequencer": "outbox_sequence_pending() every 10 ms on one connection, as ticketd",
        },
        "runs": runs,
        "bookings_per_s": rate,
        "on_over_off_per_round": [round(r, 3) for r in ratios],
        "on_over_off_median": round(statistics.median(ratios), 3) if ratios else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_outbox", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="off/on pairs (1..10)")
    parser.add_argument("--duration", type=int, default=6, help="pgbench -T seconds (1..60)")
    parser.add_argument("--places", type=int, default=30_000, help="places of the event")
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="report path")
    args = parser.parse_args(argv)
    if not 1 <= args.rounds <= 10 or not 1 <= args.duration <= 60:
        parser.error("--rounds must be 1..10 and --duration 1..60")
    report = asyncio.run(bench(args))
    write_json(report, Path(args.json))
    print(
        f"bookings/s off {report['bookings_per_s']['off']} on {report['bookings_per_s']['on']}; "
        f"on/off per round {report['on_over_off_per_round']}, "
        f"median {report['on_over_off_median']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
