"""Benchmark: what the principal cache (issue 16, ticketd.auth.cache) saves per call.

Counts rather than contention, so that a shared machine skews them little: one buyer books
--calls seats one after another on a `python -m ticketd` with the cache off
(TICKETING_AUTH_CACHE_TTL=0) and on (the default), alternating --rounds times, each on a
throwaway database. Reported per BookSeats: PostgreSQL transactions committed on the bench
database (pg_stat_database.xact_commit; the principal read is one of its own), and the
server process's CPU (from /proc), next to a Health/Check's on the same channel.

Usage: scripts/bench_auth_cache [--json PATH] [--calls 600] [--rounds 2]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchlib import ROOT
from scripts.benchlib.database import admin_url, connect_db, database_name, throwaway_database
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import benchmark_server
from scripts.benchlib.provision import channel, create_event, login, register_buyers
from scripts.benchlib.report import header, log, write_json
from ticketing.v1 import booking_pb2, booking_pb2_grpc, event_pb2, event_pb2_grpc

DEFAULT_JSON = ROOT / "docs" / "bench_auth_cache.json"
ADMIN_EMAIL = "bench-admin@example.test"
WARMUP_CALLS = 20
CALL_TIMEOUT_S = 10.0
# PostgreSQL 15 backends flush their statistics at most once a second, when idle.
STATS_FLUSH_S = 2.5


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


async def _commits(db: asyncpg.Connection, name: str) -> int:
    await db.execute("SELECT pg_stat_clear_snapshot()")
    value: int = await db.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = $1", name
    )
    return value


async def one_round(ttl: str, calls: int) -> dict[str, Any]:
    """One server with TICKETING_AUTH_CACHE_TTL=`ttl`: the per-call figures."""
    async with throwaway_database(admin_url()) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-auth-") as data_dir:
            server = benchmark_server(
                url, Path(data_dir), admin_email=ADMIN_EMAIL, env={"TICKETING_AUTH_CACHE_TTL": ttl}
            )
            await server.start()
            assert server.admin_password is not None and server.pid is not None
            db = await connect_db(url)
            ch = channel(server.target)
            try:
                md = await login(ch, ADMIN_EMAIL, server.admin_password)
                event = await create_event(ch, md, calls + WARMUP_CALLS + 100, "Auth cache")
                listed = await event_pb2_grpc.EventServiceStub(ch).ListSeats(
                    event_pb2.ListSeatsRequest(event_id=event.id, page_size=10_000), timeout=60
                )
                free = [s.id for s in listed.seats]
                buyer = (await register_buyers(server.target, 1, "bench-buyer-password"))[0]
                booking = booking_pb2_grpc.BookingServiceStub(ch)
                health = health_pb2_grpc.HealthStub(ch)

                async def book() -> None:
                    await booking.BookSeats(
                        booking_pb2.BookSeatsRequest(
                            event_id=event.id,
                            request_id=str(uuid.uuid4()),
                            seat_ids=booking_pb2.SeatIds(ids=[free.pop()]),
                        ),
                        metadata=buyer,
                        timeout=CALL_TIMEOUT_S,
                    )

                for _ in range(WARMUP_CALLS):
                    await book()
                name = database_name(url)
                await asyncio.sleep(STATS_FLUSH_S)  # backends report their counters when idle
                commits0, cpu0 = await _commits(db, name), _process_cpu_s(server.pid)
                for _ in range(calls):
                    await book()
                cpu1 = _process_cpu_s(server.pid)
                await asyncio.sleep(STATS_FLUSH_S)
                commits1 = await _commits(db, name)
                for _ in range(calls):
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
                cpu2 = _process_cpu_s(server.pid)
            finally:
                await ch.close(None)
                await db.close()
                await server.stop(timeout=15)
    booking_ms = (cpu1 - cpu0) * 1000 / calls
    health_ms = (cpu2 - cpu1) * 1000 / calls
    return {
        "auth_cache_ttl": ttl,
        "postgres_transactions_per_booking": round((commits1 - commits0) / calls, 3),
        "server_cpu_ms_per_booking": round(booking_ms, 3),
        "server_cpu_ms_per_health_check": round(health_ms, 3),
        "booking_over_health": round(booking_ms / health_ms, 2) if health_ms else None,
    }


def _median(rounds: list[dict[str, Any]], key: str) -> float:
    values: list[float] = [float(r[key]) for r in rounds]
    return round(statistics.median(values), 3)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    machine = await machine_info(admin_url())
    rounds: list[dict[str, Any]] = []
    for _ in range(args.rounds):
        for ttl in ("0", "2"):
            rounds.append(await one_round(ttl, args.calls))
            log(str(rounds[-1]))
    off = [r for r in rounds if r["auth_cache_ttl"] == "0"]
    on = [r for r in rounds if r["auth_cache_ttl"] != "0"]
    keys = (
        "postgres_transactions_per_booking",
        "server_cpu_ms_per_booking",
        "server_cpu_ms_per_health_check",
    )
    summary = {k: {"off": _median(off, k), "on": _median(on, k)} for k in keys}
    cpu = summary["server_cpu_ms_per_booking"]
    return {
        **header("the principal cache: per-call savings", "scripts/bench_auth_cache"),
        "setup": {"calls": args.calls, "rounds": args.rounds, "buyers": 1, "sequential": True},
        "rounds": rounds,
        "median": summary,
        "server_cpu_per_booking_on_over_off": round(cpu["on"] / cpu["off"], 3),
        "machine": machine,
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON (exit 0)."""
    parser = argparse.ArgumentParser(prog="bench_auth_cache", description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=str(DEFAULT_JSON), help="default: %(default)s")
    parser.add_argument("--calls", type=int, default=600, help="BookSeats per round")
    parser.add_argument("--rounds", type=int, default=2, help="off/on pairs")
    args = parser.parse_args(argv)
    if not 50 <= args.calls <= 5_000 or not 1 <= args.rounds <= 5:
        parser.error("--calls must be 50..5000 and --rounds 1..5")
    report = asyncio.run(bench(args))
    log(f"median per BookSeats (cache off -> on): {report['median']}")
    write_json(report, Path(args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
