"""Benchmark a sign-in flood: does password work starve a real user or the bookings?

One run, on this machine, loopback only, bounded in count and time:
  * a throwaway database `ticketing_bench_<random>` on the local PostgreSQL (dropped at the
    end) and `python -m ticketd` as a separate process (benchlib's ServerProcess) listening
    on `localhost:PORT`, which gRPC binds on 127.0.0.1 and on ::1, at bcrypt cost
    `--bcrypt-rounds` (12) with the production sign-in limits (not the load-test ones the
    other benchmarks use) given explicitly (defaults below: what the server's own defaults
    are on a 2-core machine: 2 password workers, a queue of 8, 0.5 attempts/s and a burst of
    10 per address, 5 failed sign-ins per email before backoff);
  * set-up over ::1: the admin signs in, one buyer and one "victim" register (sequentially,
    waiting out RetryInfo like any client), a venue of `--seats` places and an event;
  * four measured windows with the same load in each: "before" and "after" of
    `--phase-seconds`, and between them the flood: "flood-start" (its first
    `--flood-warmup` seconds, while its burst of password checks is spent) and "flood"
    (`--phase-seconds` of steady flood). The load, three open loops (benchlib.loops: latency
    runs from each call's intended send time, so a stall is not hidden by a late send):
      - BookSeats (best available, one seat) arriving at `--book-rate` per second, at most
        `--bookers` in flight (busy, not saturated), over 127.0.0.1, the flooding address
        itself;
      - the victim signs in over ::1 (another address, a fresh connection each time) every
        `--victim-every` seconds;
      - Health/Check 4 times a second over 127.0.0.1;
    the flood windows add `--flood` (200) concurrent bogus Logins from 127.0.0.1 (unknown
    emails, wrong passwords; a closed loop over 4 connections), run by a separate process so
    that its own CPU does not slow the measuring client's event loop; a refused attempt is
    repeated after `--flood-pause` seconds (the flooder ignores RetryInfo). "before" and
    "after" bracket it, so a drift of the shared machine shows as a difference between them.

Output: a table on stderr, JSON in --json (default docs/bench_auth_flood.json) in the shapes
of scripts/benchlib (machine, latency summaries, loop figures, cpu): per phase the BookSeats,
victim sign-in and health figures, CPU by group (server, postgres, client = this process and
the flood process, kernel, other) plus the flood process's own cores, and the flood's
outcome counts; ratios flood / mean(before, after).

Usage: scripts/bench_auth_flood [--json PATH] [--flood 200] [--phase-seconds 20]
       [--bookers 8] [--book-rate 100] [--victim-every 2.5] [--flood-pause 1.0]
       [--bcrypt-rounds 12] [--auth-concurrency 2] [--auth-queue 8] [--peer-rate 0.5]
       [--peer-burst 10] [--seats 20000] [--quiet-wait 180] [--max-seconds 600]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, CpuMeter, process_cpu_seconds, wait_for_quiet
from scripts.benchlib.database import admin_url, database_name, throwaway_database
from scripts.benchlib.loops import Outcome, Window, closed_loop, open_loop
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import ServerProcess
from scripts.benchlib.provision import Metadata, channel, create_event, login
from scripts.benchlib.report import header, log, write_json
from scripts.benchlib.stats import latency_summary
from ticketing.sdk import decode_error
from ticketing.v1 import auth_pb2, auth_pb2_grpc, booking_pb2, booking_pb2_grpc

DEFAULT_JSON = ROOT / "docs" / "bench_auth_flood.json"
ADMIN_EMAIL = "flood-admin@example.test"
PASSWORD = "bench-flood-password"
CALL_TIMEOUT_S = 10.0
SERVER_START_TIMEOUT_S = 90.0
HEALTH_RATE = 4.0
FLOOD_CONNECTIONS = 4
GOAL_VICTIM_LOGIN_S = 1.0
T = TypeVar("T")


def failure(err: aio.AioRpcError) -> Outcome:
    """CODE/REASON of a failed call (the SDK's decoding of ErrorInfo; CODE without one)."""
    decoded = decode_error(err)
    status = f"{decoded.code.name}/{decoded.reason}" if decoded.reason else decoded.code.name
    return Outcome(status, message=err.details() or "")


# ---------------------------------------------------------------------------------------------
# The server and the set-up


def flood_server(database_url: str, data_dir: Path, args: argparse.Namespace) -> ServerProcess:
    """ticketd on 127.0.0.1 and ::1 with the sign-in limits of the command line."""
    return ServerProcess(
        database_url,
        data_dir,
        admin_email=ADMIN_EMAIL,
        admin_password=PASSWORD,
        bcrypt_rounds=args.bcrypt_rounds,
        # The limits under test are the production ones: not LOAD_TEST_SIGN_IN_LIMITS, which
        # lifts them for benchmarks that sign in thousands of buyers from one address.
        sign_in_limits={},
        extra_env={
            "TICKETING_AUTH_CONCURRENCY": str(args.auth_concurrency),
            "TICKETING_AUTH_QUEUE": str(args.auth_queue),
            "TICKETING_AUTH_PEER_RATE": str(args.peer_rate),
            "TICKETING_AUTH_PEER_BURST": str(args.peer_burst),
            "TICKETING_LOGIN_FAILURES_PER_EMAIL": str(args.failures_per_email),
            "TICKETING_MAX_CONCURRENT_RPCS": str(args.max_concurrent_rpcs),
        },
        args=("serve", "--log-level", "WARNING"),
        log_path=data_dir / "ticketd.log",
        dual_stack=True,
    )


async def patiently(call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()` again after each RetryInfo refusal (set-up is throttled too)."""
    for _ in range(200):
        try:
            return await call()
        except aio.AioRpcError as err:
            delay = decode_error(err).retry_delay
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or delay is None:
                raise
            await asyncio.sleep(delay)
    raise RuntimeError("set-up kept being refused")


@dataclass
class World:
    booker: Metadata
    victim_email: str
    event_id: str
    section_ids: list[str]


async def new_account(ch: aio.Channel, who: str) -> tuple[str, Metadata]:
    """Register and sign in a customer; (email, its call metadata)."""
    email = f"{who}-{uuid.uuid4().hex[:8]}@example.test"
    auth = auth_pb2_grpc.AuthServiceStub(ch)
    request = auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name=who)
    await patiently(lambda: auth.Register(request, timeout=CALL_TIMEOUT_S))
    return email, await patiently(lambda: login(ch, email, PASSWORD))


async def set_up(target: str, seats: int) -> World:
    """The admin, a buyer, the victim and an event of `seats` places, all over `target`."""
    async with channel(target) as ch:
        admin = await patiently(lambda: login(ch, ADMIN_EMAIL, PASSWORD))
        _, booker = await new_account(ch, "booker")
        victim_email, _ = await new_account(ch, "victim")
        event = await create_event(ch, admin, seats, "Flood night", max_per_order=4)
    return World(booker, victim_email, event.id, [s.section_id for s in event.sections])


# ---------------------------------------------------------------------------------------------
# One phase


def phase_report(
    name: str,
    book: Window,
    victim: Window,
    health: Window,
    cpu: dict[str, Any],
    flood_cores: float | None,
) -> dict[str, Any]:
    """One window's figures, in benchlib's loop and latency shapes."""
    return {
        "phase": name,
        "book_seats": book.figures(),
        "victim_login": {
            **victim.figures(),
            "ms": [round(s * 1000) for s in victim.latencies],
            "failures": {k: n for k, n in victim.statuses.items() if k != "OK"},
        },
        "health": health.figures(),
        "flood": {},
        "cpu": cpu,
        "flood_process_cores": flood_cores,
        "loadavg_after": list(os.getloadavg()),
    }


async def measure(
    name: str,
    seconds: float,
    server: ServerProcess,
    world: World,
    args: argparse.Namespace,
    flood_pid: int | None = None,
) -> dict[str, Any]:
    """One measured window: bookings, victim sign-ins and health checks, with CPU use."""
    rng = random.Random(args.seed + len(name))
    assert server.pid is not None
    meter = CpuMeter(
        CpuGroups(
            (server.pid,),
            (flood_pid,) if flood_pid else (),
            database_name(server.database_url or ""),
        )
    )
    booker = world.booker
    victim_request = auth_pb2.LoginRequest(email=world.victim_email, password=PASSWORD)

    async with channel(server.target) as ch:
        booking = booking_pb2_grpc.BookingServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)

        async def book(_: int) -> Outcome:
            request = booking_pb2.BookSeatsRequest(
                event_id=world.event_id,
                request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                best_available=booking_pb2.BestAvailable(
                    section_id=rng.choice(world.section_ids), quantity=1
                ),
            )
            try:
                await booking.BookSeats(request, metadata=booker, timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                return failure(err)
            return Outcome(items=1)

        async def sign_in(_: int) -> Outcome:
            # A fresh connection per sign-in, as a person opening the app would make.
            async with channel(server.target_v6) as victim_ch:
                try:
                    await auth_pb2_grpc.AuthServiceStub(victim_ch).Login(
                        victim_request, timeout=CALL_TIMEOUT_S
                    )
                except aio.AioRpcError as err:
                    return failure(err)
            return Outcome()

        async def check(_: int) -> Outcome:
            try:
                resp = await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                return failure(err)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return Outcome()
            return Outcome(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))

        flood0 = process_cpu_seconds(flood_pid) if flood_pid else 0.0
        started = time.perf_counter()
        meter.start()
        book_w, victim_w, health_w = await asyncio.gather(
            open_loop(
                args.book_rate,
                book,
                duration_s=seconds,
                call_timeout_s=CALL_TIMEOUT_S,
                max_inflight=args.bookers,
            ),
            open_loop(
                1 / args.victim_every, sign_in, duration_s=seconds, call_timeout_s=CALL_TIMEOUT_S
            ),
            open_loop(HEALTH_RATE, check, duration_s=seconds, call_timeout_s=CALL_TIMEOUT_S),
        )
        cpu = meter.stop(book_w.calls)
        wall = time.perf_counter() - started
    flood_cores = None
    if flood_pid:
        flood_cores = round(max(0.0, process_cpu_seconds(flood_pid) - flood0) / wall, 3)
    return phase_report(name, book_w, victim_w, health_w, cpu, flood_cores)


async def start_flood(
    server: ServerProcess, args: argparse.Namespace
) -> asyncio.subprocess.Process:
    """The flood process, running for the flood-start and flood windows."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "scripts.bench_auth_flood",
        "--flood-worker",
        "--target",
        server.target,
        "--flood",
        str(args.flood),
        "--seconds",
        str(args.flood_warmup + args.phase_seconds + 1),
        "--flood-pause",
        str(args.flood_pause),
        stdout=asyncio.subprocess.PIPE,
        env=os.environ | {"PYTHONPATH": pythonpath},
    )


async def run_phases(
    server: ServerProcess, world: World, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """before, flood-start (the flood's first seconds, its burst), flood (steady), after."""
    log(f"phase before ({args.phase_seconds}s)")
    phases = [await measure("before", args.phase_seconds, server, world, args)]
    flood_proc = await start_flood(server, args)
    log(f"phase flood-start ({args.flood_warmup}s) and flood ({args.phase_seconds}s)")
    phases.append(
        await measure("flood-start", args.flood_warmup, server, world, args, flood_proc.pid)
    )
    phases.append(await measure("flood", args.phase_seconds, server, world, args, flood_proc.pid))
    assert flood_proc.stdout is not None
    out = await asyncio.wait_for(flood_proc.stdout.read(), args.phase_seconds + 60)
    await flood_proc.wait()
    phases[2]["flood"] = json.loads(out.decode() or "{}")
    log(f"phase after ({args.phase_seconds}s)")
    phases.append(await measure("after", args.phase_seconds, server, world, args))
    return phases


# ---------------------------------------------------------------------------------------------
# The flood, in its own process


async def flood_worker(args: argparse.Namespace) -> None:
    """`--flood` attackers in a closed loop for `--seconds`; prints its figures as JSON."""
    channels = [channel(args.target) for _ in range(FLOOD_CONNECTIONS)]
    stubs = [auth_pb2_grpc.AuthServiceStub(ch) for ch in channels]
    answers: list[float] = []  # each attempt's answer time, without the pause after it

    async def attempt(i: int) -> Outcome:
        request = auth_pb2.LoginRequest(
            email=f"bogus-{uuid.uuid4().hex[:12]}@example.test", password="not-the-password"
        )
        started = time.perf_counter()
        try:
            await stubs[i % len(stubs)].Login(request, timeout=CALL_TIMEOUT_S)
        except aio.AioRpcError as err:
            answers.append(time.perf_counter() - started)
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                await asyncio.sleep(args.flood_pause)
            return failure(err)
        return Outcome()

    try:
        window = await closed_loop(
            args.flood,
            attempt,
            duration_s=args.seconds,
            call_timeout_s=CALL_TIMEOUT_S + args.flood_pause,
        )
    finally:
        for ch in channels:
            await ch.close(None)
    figures = window.figures()
    report = {
        "concurrent": args.flood,
        "attempts": figures["calls"],
        "attempts_per_second": figures["rps_all"],
        "outcomes": figures["statuses"],
        "answer_latency": latency_summary(answers),
    }
    print(json.dumps(report), flush=True)


# ---------------------------------------------------------------------------------------------
# The run


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def results(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """The figures docs/benchmarks.md quotes, from the four phases."""
    before, flood_start, flood, after = phases
    base_p99 = [p["book_seats"]["p99_ms"] for p in (before, after) if p["book_seats"]["p99_ms"]]
    base = round(sum(base_p99) / len(base_p99), 2) if base_p99 else None
    victim = flood["victim_login"]
    without = [ms / 1000 for p in (before, after) for ms in p["victim_login"]["ms"]]
    return {
        "victim_login_max_ms_during_flood": victim["max_ms"],
        "victim_login_p50_ms_during_flood": victim["p50_ms"],
        "victim_login_p50_ms_without_flood": latency_summary(without)["p50_ms"],
        "victim_login_failures_during_flood": victim["failures"],
        "victim_login_max_ms_flood_start": flood_start["victim_login"]["max_ms"],
        "book_seats_per_s_during_flood": flood["book_seats"]["rps_all"],
        "book_seats_per_s_without_flood": round(
            (before["book_seats"]["rps_all"] + after["book_seats"]["rps_all"]) / 2, 1
        ),
        "book_seats_p99_ms_flood_start": flood_start["book_seats"]["p99_ms"],
        "book_seats_p99_ms_without_flood": base,
        "book_seats_p99_ms_during_flood": flood["book_seats"]["p99_ms"],
        "book_seats_p99_ratio_flood_vs_without": ratio(flood["book_seats"]["p99_ms"], base),
        "book_seats_p99_ratio_after_vs_before": ratio(
            after["book_seats"]["p99_ms"], before["book_seats"]["p99_ms"]
        ),
        "health_not_serving_during_flood": flood["health"]["calls"] - flood["health"]["ok"],
        "goal_victim_login_under_1s": victim["max_ms"] is not None
        and victim["max_ms"] < GOAL_VICTIM_LOGIN_S * 1000
        and not victim["failures"],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin = admin_url()
    deadline = time.monotonic() + args.max_seconds
    machine = await machine_info(admin, await wait_for_quiet(args.quiet_wait))
    async with throwaway_database(admin) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-flood-") as tmp:
            server = flood_server(url, Path(tmp), args)
            await server.start(timeout_s=SERVER_START_TIMEOUT_S)
            try:
                log(f"ticketd on {server.listen}; setting up over ::1")
                world = await set_up(server.target_v6, args.seats)
                # Let the victim's address bucket refill after the set-up's sign-ins.
                await asyncio.sleep(args.peer_burst / args.peer_rate)
                if time.monotonic() + 3 * args.phase_seconds + args.flood_warmup + 60 > deadline:
                    raise RuntimeError("--max-seconds too short for the phases")
                phases = await run_phases(server, world, args)
            finally:
                await server.stop(timeout=15)
    return {
        **header("auth_flood", "scripts/bench_auth_flood"),
        "machine": machine,
        "note": "2 cores shared with PostgreSQL, the bench client, the flood process and "
        "other engineers' work",
        "server": {
            "bcrypt_rounds": args.bcrypt_rounds,
            "TICKETING_AUTH_CONCURRENCY": args.auth_concurrency,
            "TICKETING_AUTH_QUEUE": args.auth_queue,
            "TICKETING_AUTH_PEER_RATE": args.peer_rate,
            "TICKETING_AUTH_PEER_BURST": args.peer_burst,
            "TICKETING_LOGIN_FAILURES_PER_EMAIL": args.failures_per_email,
            "TICKETING_MAX_CONCURRENT_RPCS": args.max_concurrent_rpcs,
            "listen": "localhost (127.0.0.1 + ::1); flood and bookings from 127.0.0.1, "
            "victim from ::1",
        },
        "load": {
            "bookers": args.bookers,
            "book_rate_per_second": args.book_rate,
            "health_checks_per_second": HEALTH_RATE,
            "flood_concurrent": args.flood,
            "flood_connections": FLOOD_CONNECTIONS,
            "flood_pause_after_refusal_s": args.flood_pause,
            "flood_start_window_s": args.flood_warmup,
            "victim_every_s": args.victim_every,
            "phase_seconds": args.phase_seconds,
            "call_timeout_s": CALL_TIMEOUT_S,
        },
        "phases": phases,
        "results": results(phases),
    }


def print_table(report: dict[str, Any]) -> None:
    rows = [
        f"{'phase':<11} {'book/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'victim login ms':<28} "
        f"{'health p99':>10} {'cores: server/flood/busy':>25} flood"
    ]
    for p in report["phases"]:
        b, v, h = p["book_seats"], p["victim_login"], p["health"]
        flood = p["flood"].get("outcomes", {})
        flood_cores = "-" if p["flood_process_cores"] is None else p["flood_process_cores"]
        cores = f"{p['cpu']['cores_used']['server']}/{flood_cores}/{p['cpu']['cores_busy']}"
        rows.append(
            f"{p['phase']:<11} {b['rps_all']:>7} {b['p50_ms']!s:>8} {b['p99_ms']!s:>8} "
            f"{str(v['ms'])[:28]:<28} {h['p99_ms']!s:>10} {cores:>25} {flood}"
        )
    for line in rows:
        log(line)
    log(json.dumps(report["results"], indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--flood", type=int, default=200)
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--bookers", type=int, default=8)
    parser.add_argument("--book-rate", type=float, default=100.0)
    # Below the address rate, so the victim never throttles itself.
    parser.add_argument("--victim-every", type=float, default=2.5)
    parser.add_argument("--quiet-wait", type=float, default=180.0)
    parser.add_argument("--flood-pause", type=float, default=1.0)
    parser.add_argument("--flood-warmup", type=float, default=10.0)
    parser.add_argument("--bcrypt-rounds", type=int, default=12)
    parser.add_argument("--auth-concurrency", type=int, default=2)
    parser.add_argument("--auth-queue", type=int, default=8)
    parser.add_argument("--peer-rate", type=float, default=0.5)
    parser.add_argument("--peer-burst", type=int, default=10)
    parser.add_argument("--failures-per-email", type=int, default=5)
    parser.add_argument("--max-concurrent-rpcs", type=int, default=1000)
    parser.add_argument("--seats", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--seed", type=int, default=1)
    # Internal: the flood process.
    parser.add_argument("--flood-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood_worker:
        asyncio.run(flood_worker(args))
        return 0
    if not (1 <= args.flood <= 1000 and 1 <= args.bookers <= 256):
        parser.error("--flood must be 1..1000 and --bookers 1..256")
    if not 1 <= args.phase_seconds <= 120:
        parser.error("--phase-seconds must be 1..120")
    report = asyncio.run(bench(args))
    print_table(report)
    write_json(report, args.json)
    log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
