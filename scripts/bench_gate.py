"""Benchmark gate validation: ValidateTicket throughput and latency with concurrent kiosks.

One run, on this machine:
  * a throwaway database `ticketing_bench_<random>` on the local PostgreSQL (dropped at the
    end) and `python -m ticketd` as a separate process on 127.0.0.1 (free port);
  * one event with `--tickets` reserved seats (rows of 100), all sold through BookSeats best
    available, 100 places per order;
  * `--kiosks` kiosks (default 16), each with its own gRPC channel (its own HTTP/2
    connection, as separate turnstiles have) and its own gate id `gate-01`..`gate-16`,
    scanning back to back (a closed loop, no think time) from one shared queue of scans:
    every ticket once, plus `--duplicates` (default 10%) repeat scans of tickets queued
    earlier (their answer is ALREADY_USED, or ADMITTED if they overtook the first scan);
  * a warm-up of 20 unknown-code scans per kiosk, not measured;
  * `--passes` (default 3) measured passes over the same tickets, un-burned between passes
    (tickets VALID again, the event's scan log emptied); the report's `results` is the pass
    with the median throughput, and every pass is listed (a shared machine is noisy);
  * the transport ceiling for context: grpc.health.v1 Health/Check, same kiosks and channels.

The per-gate scan rate bound (default 100/s, burst 200 per gate) would cap 16 gates at
1,600 scans/s and measure the limiter rather than the engine, so the server is started with
TICKETING_GATE_SCAN_RATE and TICKETING_GATE_SCAN_BURST = `--gate-rate` (default 1,000,000);
refusals are still counted and reported. After each pass the database is checked: every
ticket USED exactly once, one ADMITTED scan per ticket, one log entry per answered scan.
`--max-seconds` bounds each pass; every call has a 5 s deadline.

Usage: scripts/bench_gate [--json PATH] [--tickets 5000] [--kiosks 16] [--duplicates 0.1]
       [--passes 3] [--max-seconds 120] [--gate-rate 1000000] [--pool-size 20] [--seed 1]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Loopback only.
Output: a table on stdout, JSON in --json (default docs/bench_gate.json).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import functools
import json
import math
import os
import platform
import random
import re
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from benchlib import connect_db, log, throwaway_database
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ticketing.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    booking_pb2,
    booking_pb2_grpc,
    common_pb2,
    event_pb2,
    event_pb2_grpc,
    gate_pb2,
    gate_pb2_grpc,
    venue_pb2,
    venue_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_JSON = ROOT / "docs" / "bench_gate.json"
ADMIN_EMAIL = "bench-admin@example.test"
PASSWORD = "bench-gate-password"
SEATS_PER_ROW = 100
ORDER_SIZE = 100  # the most one order may hold (Event.max_tickets_per_order)
CALL_TIMEOUT_S = 5.0
SETUP_TIMEOUT_S = 60.0
SERVER_START_TIMEOUT_S = 60.0
WARMUP_SCANS_PER_KIOSK = 20
CEILING_SECONDS = 3.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_ATTEMPTS = 20
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
RESULT_NAMES = {
    v: k.removeprefix("VALIDATION_RESULT_") for k, v in gate_pb2.ValidationResult.items()
}


# ---------------------------------------------------------------------------------------------
# Database and server process


@dataclass
class ServerProcess:
    """`python -m ticketd` on 127.0.0.1 with a free port; stopped with SIGTERM."""

    env: dict[str, str]
    log_path: Path
    proc: asyncio.subprocess.Process | None = None
    port: int = 0

    async def start(self) -> int:
        with self.log_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ticketd",
                "serve",
                "--log-level",
                "WARNING",
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=self.env,
                cwd=str(ROOT),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(
                    self.proc.stdout.readline(), deadline - time.monotonic()
                )
            except TimeoutError:
                break
            if not line:
                break
            match = re.search(rb"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return self.port
        await self.stop()
        raise RuntimeError("ticketd did not start:\n" + self.log_path.read_text()[-2000:])

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def server_env(database_url: str, data_dir: str, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
    env.update(
        DATABASE_URL=database_url,
        TICKETING_LISTEN="127.0.0.1:0",
        TICKETING_DATA_DIR=data_dir,
        TICKETING_JWT_SECRET=secrets.token_urlsafe(48),
        TICKETING_BCRYPT_ROUNDS="4",
        TICKETING_ADMIN_EMAIL=ADMIN_EMAIL,
        TICKETING_ADMIN_PASSWORD=PASSWORD,
        TICKETING_DB_POOL_SIZE=str(args.pool_size),
        TICKETING_SHUTDOWN_GRACE="2",
        # Sign-up of many buyers from one address: the production sign-in throttle
        # (per-address rate, per-email backoff, small bcrypt queue) is set generously.
        TICKETING_AUTH_CONCURRENCY="2",
        TICKETING_AUTH_QUEUE="100000",
        TICKETING_AUTH_PEER_RATE="1000000",
        TICKETING_AUTH_PEER_BURST="1000000",
        TICKETING_LOGIN_FAILURES_PER_EMAIL="1000000",
        TICKETING_GATE_SCAN_RATE=str(args.gate_rate),
        TICKETING_GATE_SCAN_BURST=str(args.gate_rate),
    )
    return env


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux)


def _proc_cpu_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _postgres_cpu_seconds() -> dict[int, float]:
    """CPU seconds of every live process named postgres, by pid (backends come and go, so
    deltas are taken per pid; a backend that exits mid-window is under-counted, never
    negative)."""
    out: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if comm.startswith(("postgres", "postmaster")):
            fields = raw.rsplit(")", 1)[1].split()
            out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


@dataclass
class Cpu:
    wall: float
    server: float
    postgres: dict[int, float]
    client: float

    @classmethod
    def take(cls, server_pid: int) -> Cpu:
        times = os.times()
        return cls(
            time.perf_counter(),
            _proc_cpu_seconds(server_pid),
            _postgres_cpu_seconds(),
            times.user + times.system,
        )

    def cores_since(self, start: Cpu) -> dict[str, float]:
        wall = self.wall - start.wall
        return {
            "server": round((self.server - start.server) / wall, 2),
            "postgres": round(
                sum(v - start.postgres.get(pid, 0.0) for pid, v in self.postgres.items()) / wall,
                2,
            ),
            "client": round((self.client - start.client) / wall, 2),
        }


# ---------------------------------------------------------------------------------------------
# Set-up over gRPC


def _md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _future(days: float) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return ts


@dataclass
class Setup:
    event_id: str
    codes: list[str]
    gate_token: str
    booking_seconds: float


async def set_up(target: str, tickets: int) -> Setup:
    """Event with `tickets` reserved seats, sold out in 100-place orders; an entry manager."""
    async with aio.insecure_channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        admin = await auth.Login(
            auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=PASSWORD), timeout=CALL_TIMEOUT_S
        )
        rows = math.ceil(tickets / SEATS_PER_ROW)
        layout = venue_pb2.Venue(
            name="Gate bench arena",
            address="1 Loopback Way",
            time_zone="UTC",
            sections=[
                venue_pb2.Section(
                    name=f"Block {b + 1}",
                    kind=venue_pb2.SECTION_KIND_RESERVED,
                    rows=[
                        venue_pb2.Row(
                            label=f"R{r + 1}",
                            seat_count=min(SEATS_PER_ROW, tickets - (b * 50 + r) * SEATS_PER_ROW),
                        )
                        for r in range(min(50, rows - b * 50))
                    ],
                )
                for b in range(math.ceil(rows / 50))
            ],
        )
        venue = (
            await venue_pb2_grpc.VenueServiceStub(channel).CreateVenue(
                venue_pb2.CreateVenueRequest(venue=layout),
                metadata=_md(admin.access_token),
                timeout=SETUP_TIMEOUT_S,
            )
        ).venue
        event = (
            await event_pb2_grpc.EventServiceStub(channel).CreateEvent(
                event_pb2.CreateEventRequest(
                    venue_id=venue.id,
                    name="Gate benchmark",
                    start_time=_future(1),
                    currency_code="EUR",
                    section_prices={s.id: 5_000 for s in venue.sections},
                    max_tickets_per_order=ORDER_SIZE,
                ),
                metadata=_md(admin.access_token),
                timeout=SETUP_TIMEOUT_S,
            )
        ).event
        buyer_email = f"fan-{uuid.uuid4().hex[:8]}@example.test"
        await auth.Register(
            auth_pb2.RegisterRequest(email=buyer_email, password=PASSWORD, display_name="Fan"),
            timeout=CALL_TIMEOUT_S,
        )
        buyer = await auth.Login(
            auth_pb2.LoginRequest(email=buyer_email, password=PASSWORD), timeout=CALL_TIMEOUT_S
        )
        booking = booking_pb2_grpc.BookingServiceStub(channel)
        codes: list[str] = []
        t0 = time.perf_counter()
        for section in event.sections:
            left = section.capacity
            while left > 0:
                quantity = min(ORDER_SIZE, left)
                order = (
                    await booking.BookSeats(
                        booking_pb2.BookSeatsRequest(
                            event_id=event.id,
                            request_id=str(uuid.uuid4()),
                            best_available=booking_pb2.BestAvailable(
                                section_id=section.section_id, quantity=quantity
                            ),
                        ),
                        metadata=_md(buyer.access_token),
                        timeout=SETUP_TIMEOUT_S,
                    )
                ).order
                codes += [t.code for t in order.tickets]
                left -= quantity
        booking_seconds = time.perf_counter() - t0
        gate_email = f"gate-{uuid.uuid4().hex[:8]}@example.test"
        registered = await auth.Register(
            auth_pb2.RegisterRequest(email=gate_email, password=PASSWORD, display_name="Gate"),
            timeout=CALL_TIMEOUT_S,
        )
        await auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(
                user_id=registered.user.id, roles=[common_pb2.ROLE_ENTRY_MANAGER]
            ),
            metadata=_md(admin.access_token),
            timeout=CALL_TIMEOUT_S,
        )
        gate = await auth.Login(
            auth_pb2.LoginRequest(email=gate_email, password=PASSWORD), timeout=CALL_TIMEOUT_S
        )
    return Setup(event.id, codes, gate.access_token, booking_seconds)


# ---------------------------------------------------------------------------------------------
# The measured loop


def scan_plan(codes: list[str], duplicates: float, seed: int) -> list[tuple[str, bool]]:
    """Every code once, in random order, with a `duplicates` share of rescans mixed in.

    A rescan repeats a code queued at least one queue-length earlier, so its first scan has
    usually been answered already (the realistic case: someone tries a used ticket again).
    """
    rng = random.Random(seed)
    fresh = codes[:]
    rng.shuffle(fresh)
    total = round(len(fresh) / (1 - duplicates)) if duplicates else len(fresh)
    n_dup = total - len(fresh)
    dup_slots = set(rng.sample(range(64, total), n_dup)) if n_dup else set()
    plan: list[tuple[str, bool]] = []
    queued: list[str] = []  # fresh codes in queue order
    it = iter(fresh)
    for i in range(total):
        if i in dup_slots:
            plan.append((rng.choice(queued[: max(1, len(queued) - 32)]), True))
        else:
            queued.append(next(it))
            plan.append((queued[-1], False))
    return plan


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (all samples are kept)."""
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_ms(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50_ms": None, "p99_ms": None}
    ms = sorted(s * 1000 for s in samples)
    return {
        "mean_ms": round(sum(ms) / len(ms), 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "p999_ms": round(percentile(ms, 99.9), 2),
        "max_ms": round(ms[-1], 2),
    }


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_result: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    admitted_codes: collections.Counter[str] = field(default_factory=collections.Counter)
    scans: list[tuple[str, str]] = field(default_factory=list)  # (scan_id, result)
    first_issue: float = 0.0
    last_done: float = 0.0


async def closed_loop(
    kiosks: int,
    items: Iterator[Any],
    call: Callable[[int, Any], Awaitable[None]],
    max_seconds: float,
) -> bool:
    """`kiosks` workers take items from one queue, one call in flight each; False when the
    time bound cut the run short."""
    stop_at = time.perf_counter() + max_seconds
    cut = False

    async def worker(k: int) -> None:
        nonlocal cut
        for item in items:  # one shared iterator: each item goes to exactly one worker
            if time.perf_counter() >= stop_at:
                cut = True
                return
            await call(k, item)

    await asyncio.wait_for(
        asyncio.gather(*(worker(k) for k in range(kiosks))), max_seconds + CALL_TIMEOUT_S + 5
    )
    return not cut


async def run_scans(
    stubs: list[gate_pb2_grpc.GateServiceAsyncStub],
    event_id: str,
    token: str,
    plan: list[tuple[str, bool]],
    max_seconds: float,
) -> tuple[Tally, bool]:
    tally = Tally()
    md = _md(token)

    async def call(k: int, item: tuple[str, bool]) -> None:
        code, _dup = item
        request = gate_pb2.ValidateTicketRequest(
            code=code, event_id=event_id, gate_id=f"gate-{k + 1:02d}", scan_id=str(uuid.uuid4())
        )
        for _attempt in range(MAX_ATTEMPTS):
            t0 = time.perf_counter()
            if not tally.first_issue:
                tally.first_issue = t0
            try:
                reply = await stubs[k].ValidateTicket(request, metadata=md, timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                # A kiosk retries these with the same scan_id; so does the benchmark, and
                # counts them (on a shared machine PostgreSQL may briefly refuse connections).
                tally.statuses[err.code().name] += 1
                tally.last_done = time.perf_counter()
                if err.code() not in RETRYABLE:
                    return
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            tally.last_done = t1
            result = RESULT_NAMES[reply.result]
            tally.statuses["OK"] += 1
            tally.latencies.append(t1 - t0)
            tally.by_result[result].append(t1 - t0)
            tally.scans.append((request.scan_id, result))
            if result == "ADMITTED":
                tally.admitted_codes[code] += 1
            return

    complete = await closed_loop(len(stubs), iter(plan), call, max_seconds)
    return tally, complete


async def _retrying(send: Callable[[], Awaitable[Any]]) -> None:
    for attempt in range(MAX_ATTEMPTS):
        try:
            await send()
            return
        except aio.AioRpcError as err:
            if err.code() not in RETRYABLE or attempt == MAX_ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.05)


async def warm_up(
    stubs: list[gate_pb2_grpc.GateServiceAsyncStub], event_id: str, token: str
) -> None:
    async def kiosk(k: int) -> None:
        for i in range(WARMUP_SCANS_PER_KIOSK):
            request = gate_pb2.ValidateTicketRequest(
                code=f"warm-up-{k}-{i}",
                event_id=event_id,
                gate_id=f"gate-{k + 1:02d}",
                scan_id=str(uuid.uuid4()),
            )
            await _retrying(
                functools.partial(
                    stubs[k].ValidateTicket, request, metadata=_md(token), timeout=CALL_TIMEOUT_S
                )
            )

    await asyncio.gather(*(kiosk(k) for k in range(len(stubs))))


async def transport_ceiling(channels: list[aio.Channel]) -> dict[str, Any]:
    """Health/Check back to back from every kiosk channel for CEILING_SECONDS."""
    stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]
    samples: list[float] = []
    stop_at = time.perf_counter() + CEILING_SECONDS

    async def worker(k: int) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await stubs[k].Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            samples.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(k) for k in range(len(stubs))))
    wall = time.perf_counter() - t0
    return {"calls_per_s": round(len(samples) / wall, 1), **latency_ms(samples)}


# ---------------------------------------------------------------------------------------------
# Verification straight from PostgreSQL


async def verify(
    conn: asyncpg.Connection, event_id: str, tally: Tally, plan_codes: int
) -> dict[str, Any]:
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM tickets WHERE event_id = $1::uuid AND status = 'USED')
            AS used,
          (SELECT count(*) FROM tickets WHERE event_id = $1::uuid AND status = 'VALID')
            AS valid,
          (SELECT count(*) FROM scans WHERE event_id = $1::uuid AND result = 'ADMITTED')
            AS admitted_scans,
          (SELECT count(*) FROM (SELECT ticket_id FROM scans
             WHERE event_id = $1::uuid AND result = 'ADMITTED'
             GROUP BY ticket_id HAVING count(*) > 1) x) AS tickets_admitted_twice
        """,
        event_id,
    )
    logged = await conn.fetchval(
        "SELECT count(*) FROM scans WHERE scan_id = ANY($1::uuid[])",
        [uuid.UUID(s) for s, _ in tally.scans],
    )
    checks = {
        "tickets_used": row["used"],
        "tickets_still_valid": row["valid"],
        "admitted_scans_logged": row["admitted_scans"],
        "tickets_admitted_twice": row["tickets_admitted_twice"],
        "answered_scans_in_log": logged,
        "codes_admitted_twice_by_client_count": sum(
            1 for n in tally.admitted_codes.values() if n > 1
        ),
    }
    checks["ok"] = (
        row["used"] == plan_codes == row["admitted_scans"] == len(tally.admitted_codes)
        and row["tickets_admitted_twice"] == 0
        and logged == len(tally.scans)
        and checks["codes_admitted_twice_by_client_count"] == 0
    )
    return checks


# ---------------------------------------------------------------------------------------------
# Report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


async def machine_info(url: str) -> dict[str, Any]:
    conn = await connect_db(url)
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "postgresql_version": version,
        "postgresql_settings": settings,
        "loadavg_at_start": os.getloadavg(),
        "layout": "bench client, ticketd and PostgreSQL on the same machine (loopback)",
    }


async def reset_scans(conn: asyncpg.Connection, event_id: str) -> None:
    """Un-burn every ticket of the event and empty its scan log, for the next pass."""
    await conn.execute(
        "UPDATE tickets SET status = 'VALID', used_time = NULL, used_gate_id = NULL, "
        "used_scan_id = NULL WHERE event_id = $1::uuid",
        event_id,
    )
    await conn.execute("DELETE FROM scans WHERE event_id = $1::uuid", event_id)
    await conn.execute("VACUUM (ANALYZE) tickets, scans")


def summarize(
    n: int,
    plan: list[tuple[str, bool]],
    tally: Tally,
    complete: bool,
    cpu: dict[str, float],
    checks: dict[str, Any],
) -> dict[str, Any]:
    wall = tally.last_done - tally.first_issue
    return {
        "pass": n,
        "scans_planned": len(plan),
        "duplicate_scans_planned": sum(1 for _, dup in plan if dup),
        "completed": complete,
        "wall_s": round(wall, 3),
        "validations_per_s": round(len(tally.latencies) / wall, 1) if wall > 0 else None,
        "statuses": dict(tally.statuses),
        "results": {k: len(v) for k, v in sorted(tally.by_result.items())},
        "latency_all": latency_ms(tally.latencies),
        "latency_by_result": {k: latency_ms(v) for k, v in sorted(tally.by_result.items())},
        "cpu_cores_used": cpu,
        "loadavg_after": os.getloadavg(),
        "verification": checks,
    }


def _line(p: dict[str, Any]) -> str:
    lat = p["latency_all"]
    return (
        f"pass {p['pass']}: {p['validations_per_s']} validations/s, p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms, statuses {p['statuses']}, ok {p['verification']['ok']}"
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    started = time.perf_counter()
    machine = await machine_info(admin_url)
    async with throwaway_database(admin_url) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-gate-") as data_dir:
            server = ServerProcess(server_env(url, data_dir, args), Path(data_dir) / "ticketd.log")
            port = await server.start()
            target = f"127.0.0.1:{port}"
            assert server.proc is not None
            pid = server.proc.pid
            log(f"ticketd pid {pid} on {target}")
            channels: list[aio.Channel] = []
            conn: asyncpg.Connection | None = None
            try:
                setup = await set_up(target, args.tickets)
                log(
                    f"{len(setup.codes)} tickets sold in {len(setup.codes) // ORDER_SIZE} "
                    f"orders ({setup.booking_seconds:.1f} s)"
                )
                conn = await connect_db(url)
                channels = [aio.insecure_channel(target) for _ in range(args.kiosks)]
                stubs: list[gate_pb2_grpc.GateServiceAsyncStub] = [
                    gate_pb2_grpc.GateServiceStub(ch) for ch in channels
                ]
                await warm_up(stubs, setup.event_id, setup.gate_token)
                passes: list[dict[str, Any]] = []
                for n in range(args.passes):
                    if n:
                        await reset_scans(conn, setup.event_id)
                    plan = scan_plan(setup.codes, args.duplicates, args.seed + n)
                    cpu0 = Cpu.take(pid)
                    tally, complete = await run_scans(
                        stubs, setup.event_id, setup.gate_token, plan, args.max_seconds
                    )
                    cpu = Cpu.take(pid).cores_since(cpu0)
                    checks = await verify(conn, setup.event_id, tally, len(setup.codes))
                    passes.append(summarize(n + 1, plan, tally, complete, cpu, checks))
                    log(_line(passes[-1]))
                ceiling = await transport_ceiling(channels)
            except BaseException:
                log("ticketd log (tail):\n" + server.log_path.read_text(errors="replace")[-4000:])
                raise
            finally:
                for ch in channels:
                    await ch.close(None)
                if conn is not None:
                    await conn.close()
                await server.stop()
    by_rate = sorted(passes, key=lambda p: p["validations_per_s"] or 0.0)
    median = by_rate[len(by_rate) // 2]
    return {
        "benchmark": "gate validation (GateService.ValidateTicket) with concurrent kiosks",
        "command": "scripts/bench_gate " + " ".join(sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "setup": {
            "server": "separate process: python -m ticketd (DATABASE_URL, TICKETING_LISTEN="
            "127.0.0.1:0, TICKETING_BCRYPT_ROUNDS=4)",
            "db_pool_size": args.pool_size,
            "gate_rate_bound": f"TICKETING_GATE_SCAN_RATE=TICKETING_GATE_SCAN_BURST="
            f"{args.gate_rate} per gate (default 100/s, burst 200, lifted so the engine, "
            "not the limiter, is measured)",
            "kiosks": args.kiosks,
            "gates": [f"gate-{k + 1:02d}" for k in range(args.kiosks)],
            "client": "one Python process, grpc.aio generated stubs, one channel (HTTP/2 "
            "connection) per kiosk, one call in flight per kiosk, no think time",
            "tickets": len(setup.codes),
            "ticket_sale": f"BookSeats best available, {ORDER_SIZE} places per order, "
            "reserved seats in rows of 100",
            "duplicates": args.duplicates,
            "warmup": f"{WARMUP_SCANS_PER_KIOSK} unknown-code scans per kiosk, not measured",
            "call_timeout_s": CALL_TIMEOUT_S,
            "validations_per_s": "answered ValidateTicket calls / (last answer - first call)",
            "passes": f"{args.passes} passes over the same tickets; between passes every "
            "ticket is set VALID again and the event's scan log emptied; `results` is the "
            "pass with the median validations/s",
        },
        "median_pass": median["pass"],
        "results": median,
        "passes": passes,
        "transport_ceiling_health_check": ceiling,
        "verification_ok": all(p["verification"]["ok"] for p in passes),
        "machine": machine,
        "loadavg_at_end": os.getloadavg(),
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"kiosks={report['setup']['kiosks']} tickets={report['setup']['tickets']} "
        f"scans/pass={report['results']['scans_planned']} "
        f"(duplicates {report['results']['duplicate_scans_planned']})",
        f"{'pass':>4} {'valid/s':>8} {'wall s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'srv':>5} {'pg':>5} {'cli':>5}  statuses",
    ]
    for p in report["passes"]:
        lat, cpu = p["latency_all"], p["cpu_cores_used"]
        lines.append(
            f"{p['pass']:>4} {p['validations_per_s']:>8} {p['wall_s']:>7} {lat['p50_ms']:>7} "
            f"{lat['p90_ms']:>7} {lat['p99_ms']:>7} {lat['max_ms']:>7} {cpu['server']:>5} "
            f"{cpu['postgres']:>5} {cpu['client']:>5}  {p['statuses']}"
        )
    median = report["results"]
    lines.append(f"median pass: {median['pass']}")
    for name, stats in median["latency_by_result"].items():
        lines.append(
            f"  {name:<13} n={median['results'][name]:<6} p50 {stats['p50_ms']} ms  "
            f"p99 {stats['p99_ms']} ms"
        )
    c = report["transport_ceiling_health_check"]
    lines.append(f"Health/Check ceiling {c['calls_per_s']} calls/s  p99 {c['p99_ms']} ms")
    lines.append(f"verification ok in every pass: {report['verification_ok']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", default=str(DEFAULT_JSON))
    parser.add_argument("--tickets", type=int, default=5000, help="tickets sold and scanned")
    parser.add_argument("--kiosks", type=int, default=16, help="concurrent kiosks (gates)")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of rescans")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound on the run")
    parser.add_argument("--gate-rate", type=int, default=1_000_000, help="per-gate rate bound")
    parser.add_argument("--pool-size", type=int, default=20, help="TICKETING_DB_POOL_SIZE")
    parser.add_argument("--seed", type=int, default=1, help="scan order")
    parser.add_argument("--passes", type=int, default=3, help="measured passes (median)")
    args = parser.parse_args(argv)
    if not 100 <= args.tickets <= 100_000:
        parser.error("--tickets must be 100..100000")
    if not 1 <= args.kiosks <= 256:
        parser.error("--kiosks must be 1..256")
    if not 0 <= args.duplicates <= 0.5:
        parser.error("--duplicates must be 0..0.5")
    if not 1 <= args.passes <= 10:
        parser.error("--passes must be 1..10")
    if not 1 <= args.max_seconds <= 600:
        parser.error("--max-seconds must be 1..600")
    report = asyncio.run(bench(args))
    print(render_table(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"report written to {args.json} ({report['total_runtime_s']} s)")
    return 0 if report["verification_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
