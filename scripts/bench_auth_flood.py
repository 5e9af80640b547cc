"""Benchmark a sign-in flood: does password work starve a real user or the bookings?

One run, on this machine, loopback only, bounded in count and time:
  * a throwaway database `ticketing_bench_<random>` on the local PostgreSQL (dropped at the
    end) and `python -m ticketd` as a separate process listening on `localhost:PORT`, which
    gRPC binds on 127.0.0.1 and on ::1, at bcrypt cost `--bcrypt-rounds` (12) with the
    sign-in limits given explicitly (defaults below: what the server's own defaults are on
    a 2-core machine: 2 password workers, a queue of 8, 0.5 attempts/s and a burst of 10 per
    address, 5 failed sign-ins per email before backoff);
  * set-up over ::1: the admin signs in, one buyer and one "victim" register (sequentially,
    waiting out RetryInfo like any client), a venue of `--seats` places and an event;
  * four measured windows with the same load in each: "before" and "after" of
    `--phase-seconds`, and between them the flood: "flood-start" (its first
    `--flood-warmup` seconds, while its burst of password checks is spent) and "flood"
    (`--phase-seconds` of steady flood). The load:
      - `--bookers` concurrent BookSeats loops (best available, one seat) paced to
        `--book-rate` bookings/s in all (busy, not saturated), over 127.0.0.1, the flooding
        address itself;
      - the victim signs in over ::1 (another address) every `--victim-every` seconds;
      - Health/Check every 0.25 s over 127.0.0.1;
    the flood windows add `--flood` (200) concurrent bogus Logins from 127.0.0.1 (unknown
    emails, wrong passwords), run by a separate process so that its own CPU does not slow
    the measuring client's event loop; a refused attempt is repeated after `--flood-pause`
    seconds (the flooder ignores RetryInfo). "before" and "after" bracket it, so a drift of
    the shared machine shows as a difference between them.

Output: a table on stderr, JSON in --json (default docs/bench_auth_flood.json): per phase the
BookSeats latency percentiles and status counts, every victim sign-in time, health latency
and answers, CPU used by ticketd, the flood process and the machine, and the flood's outcome
counts; ratios flood / mean(before, after).

Usage: scripts/bench_auth_flood [--json PATH] [--flood 200] [--phase-seconds 20]
       [--bookers 8] [--book-rate 100] [--victim-every 2.5] [--flood-pause 1.0]
       [--bcrypt-rounds 12] [--auth-concurrency 2] [--auth-queue 8] [--peer-rate 0.5]
       [--peer-burst 10] [--seats 20000] [--quiet-wait 180] [--max-seconds 600]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import secrets
import socket
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchlib.database import throwaway_database
from scripts.benchlib.report import log
from ticketing.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    booking_pb2,
    booking_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    venue_pb2,
    venue_pb2_grpc,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_JSON = ROOT / "docs" / "bench_auth_flood.json"
ADMIN_EMAIL = "flood-admin@example.test"
PASSWORD = "bench-flood-password"
CALL_TIMEOUT_S = 10.0
SERVER_START_TIMEOUT_S = 90.0
GOAL_VICTIM_LOGIN_S = 1.0


# ---------------------------------------------------------------------------------------------
# Small helpers


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of `values` (unsorted), or None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]

    def r(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "count": len(ms),
        "p50_ms": r(percentile(ms, 50)),
        "p90_ms": r(percentile(ms, 90)),
        "p99_ms": r(percentile(ms, 99)),
        "max_ms": r(max(ms) if ms else None),
    }


def outcome(err: aio.AioRpcError) -> str:
    """CODE/REASON of a failed call (REASON from ErrorInfo; '-' when there is none)."""
    reason = "-"
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
    return f"{err.code().name}/{reason}"


def retry_delay(err: aio.AioRpcError) -> float | None:
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                    info = error_details_pb2.RetryInfo()
                    detail.Unpack(info)
                    return float(info.retry_delay.ToNanoseconds()) / 1e9
    return None


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def dual_stack_port() -> int:
    """A port free on both 127.0.0.1 and ::1 (gRPC binds both for `localhost:PORT`)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET) as v4:
            v4.bind(("127.0.0.1", 0))
            port = int(v4.getsockname()[1])
            try:
                with socket.socket(socket.AF_INET6) as v6:
                    v6.bind(("::1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free on both 127.0.0.1 and ::1 (is IPv6 loopback up?)")


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process `pid` (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(parts[:8])
    return (total - parts[3] - parts[4]) / CLK_TCK, total / CLK_TCK


async def wait_for_quiet(max_wait: float, busy_cores: float = 0.5) -> float:
    """Wait (bounded) until the shared machine is mostly idle; returns the busy cores seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, _ = machine_busy_seconds()
        await asyncio.sleep(2.0)
        b1, _ = machine_busy_seconds()
        busy = (b1 - b0) / 2.0
        if busy < busy_cores or time.monotonic() >= deadline:
            return round(busy, 2)
        log(f"machine busy with {busy:.1f} cores of other work; waiting for it to calm down")


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------------------------------------
# The server process


@dataclass
class Server:
    database_url: str
    data_dir: Path
    args: argparse.Namespace
    port: int = field(default_factory=dual_stack_port)
    proc: asyncio.subprocess.Process | None = None

    def env(self) -> dict[str, str]:
        a = self.args
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
        env.update(
            DATABASE_URL=self.database_url,
            TICKETING_LISTEN=f"localhost:{self.port}",
            TICKETING_DATA_DIR=str(self.data_dir),
            TICKETING_JWT_SECRET=secrets.token_urlsafe(48),
            TICKETING_BCRYPT_ROUNDS=str(a.bcrypt_rounds),
            TICKETING_ADMIN_EMAIL=ADMIN_EMAIL,
            TICKETING_ADMIN_PASSWORD=PASSWORD,
            TICKETING_SHUTDOWN_GRACE="2",
            # The protection under test, given explicitly (README's configuration table).
            TICKETING_AUTH_CONCURRENCY=str(a.auth_concurrency),
            TICKETING_AUTH_QUEUE=str(a.auth_queue),
            TICKETING_AUTH_PEER_RATE=str(a.peer_rate),
            TICKETING_AUTH_PEER_BURST=str(a.peer_burst),
            TICKETING_LOGIN_FAILURES_PER_EMAIL=str(a.failures_per_email),
            TICKETING_MAX_CONCURRENT_RPCS=str(a.max_concurrent_rpcs),
        )
        return env

    @property
    def v4(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def v6(self) -> str:
        return f"[::1]:{self.port}"

    async def start(self) -> None:
        log_path = self.data_dir / "ticketd.log"
        with log_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ticketd",
                "serve",
                "--log-level",
                "WARNING",
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=self.env(),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), 5)
            except TimeoutError:
                continue
            if not line:
                break
            if b"listening on" in line:
                return
        raise RuntimeError("ticketd did not start:\n" + log_path.read_text()[-3000:])

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Set-up


async def patiently(call: Any) -> Any:
    """Await `call()` again after each RetryInfo refusal (set-up is throttled too)."""
    for _ in range(200):
        try:
            return await call()
        except aio.AioRpcError as err:
            delay = retry_delay(err)
            if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or delay is None:
                raise
            await asyncio.sleep(delay)
    raise RuntimeError("set-up kept being refused")


@dataclass
class World:
    admin_token: str
    booker_token: str
    victim_email: str
    event_id: str
    section_ids: list[str]


async def set_up(target: str, seats: int) -> World:
    async with aio.insecure_channel(target) as ch:
        auth = auth_pb2_grpc.AuthServiceStub(ch)
        admin = await patiently(
            lambda: auth.Login(
                auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=PASSWORD),
                timeout=60,
            )
        )
        tokens = {}
        for who in ("booker", "victim"):
            email = f"{who}-{uuid.uuid4().hex[:8]}@example.test"
            await patiently(
                lambda email=email, who=who: auth.Register(
                    auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name=who),
                    timeout=60,
                )
            )
            login = await patiently(
                lambda email=email: auth.Login(
                    auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=60
                )
            )
            tokens[who] = (email, login.access_token)
        sections = max(1, min(10, seats // 2000))
        per_section = seats // sections
        rows = max(1, per_section // 50)
        venue = venue_pb2.Venue(name="Flood arena", address="loopback", time_zone="UTC")
        for s in range(sections):
            venue.sections.append(
                venue_pb2.Section(
                    name=f"Block {s + 1}",
                    kind=venue_pb2.SECTION_KIND_RESERVED,
                    rows=[venue_pb2.Row(label=str(r + 1), seat_count=50) for r in range(rows)],
                )
            )
        made = await venue_pb2_grpc.VenueServiceStub(ch).CreateVenue(
            venue_pb2.CreateVenueRequest(venue=venue),
            metadata=bearer(admin.access_token),
            timeout=120,
        )
        start = Timestamp()
        start.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=30))
        event = await event_pb2_grpc.EventServiceStub(ch).CreateEvent(
            event_pb2.CreateEventRequest(
                venue_id=made.venue.id,
                name="Flood night",
                start_time=start,
                currency_code="EUR",
                section_prices={sec.id: 4_500 for sec in made.venue.sections},
                max_tickets_per_order=4,
            ),
            metadata=bearer(admin.access_token),
            timeout=120,
        )
    return World(
        admin.access_token,
        tokens["booker"][1],
        tokens["victim"][0],
        event.event.id,
        [sec.id for sec in made.venue.sections],
    )


# ---------------------------------------------------------------------------------------------
# One phase


@dataclass
class PhaseResult:
    name: str
    seconds: float = 0.0
    book_latency: list[float] = field(default_factory=list)
    book_status: Counter[str] = field(default_factory=Counter)
    victim: list[float] = field(default_factory=list)
    victim_failures: Counter[str] = field(default_factory=Counter)
    health_latency: list[float] = field(default_factory=list)
    health_status: Counter[str] = field(default_factory=Counter)
    flood: dict[str, Any] = field(default_factory=dict)
    loadavg: list[float] = field(default_factory=list)
    cores: dict[str, float] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "seconds": round(self.seconds, 1),
            "book_seats": {
                **summary_ms(self.book_latency),
                "per_second": round(len(self.book_latency) / self.seconds, 1),
                "statuses": dict(self.book_status),
            },
            "victim_login": {
                "ms": [round(s * 1000) for s in self.victim],
                "max_ms": round(max(self.victim) * 1000) if self.victim else None,
                "median_ms": round(1000 * (percentile(self.victim, 50) or 0.0))
                if self.victim
                else None,
                "failures": dict(self.victim_failures),
            },
            "health": {**summary_ms(self.health_latency), "statuses": dict(self.health_status)},
            "flood": self.flood,
            "cores_used": self.cores,
            "loadavg_after": self.loadavg,
        }


async def book_loop(
    stub: Any, world: World, stop: float, interval: float, result: PhaseResult, rng: random.Random
) -> None:
    """Bookings paced at one per `interval` seconds (a late call delays the next, with no
    catch-up burst), so the machine is busy but not saturated and a change in latency is
    the flood's doing."""
    md = bearer(world.booker_token)
    next_at = time.monotonic() + rng.uniform(0, interval)
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        if time.monotonic() >= stop:
            return
        next_at = max(next_at + interval, time.monotonic())
        request = booking_pb2.BookSeatsRequest(
            event_id=world.event_id,
            request_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            best_available=booking_pb2.BestAvailable(
                section_id=rng.choice(world.section_ids), quantity=1
            ),
        )
        started = time.perf_counter()
        try:
            await stub.BookSeats(request, metadata=md, timeout=CALL_TIMEOUT_S)
            result.book_status["OK"] += 1
        except aio.AioRpcError as err:
            result.book_status[outcome(err)] += 1
        result.book_latency.append(time.perf_counter() - started)


async def victim_loop(target: str, world: World, stop: float, every: float, r: PhaseResult) -> None:
    request = auth_pb2.LoginRequest(email=world.victim_email, password=PASSWORD)
    while time.monotonic() + every < stop:
        await asyncio.sleep(every)
        # A fresh connection per sign-in, as a person opening the app would make.
        async with aio.insecure_channel(target) as ch:
            stub = auth_pb2_grpc.AuthServiceStub(ch)
            started = time.perf_counter()
            try:
                await stub.Login(request, timeout=CALL_TIMEOUT_S)
                r.victim.append(time.perf_counter() - started)
            except aio.AioRpcError as err:
                r.victim_failures[outcome(err)] += 1


async def health_loop(stub: Any, stop: float, r: PhaseResult) -> None:
    while time.monotonic() < stop:
        started = time.perf_counter()
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT_S)
            r.health_status[health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)] += 1
        except aio.AioRpcError as err:
            r.health_status[outcome(err)] += 1
        r.health_latency.append(time.perf_counter() - started)
        await asyncio.sleep(0.25)


async def start_flood(server: Server, args: argparse.Namespace) -> asyncio.subprocess.Process:
    """The flood process, running for the flood-start and flood windows."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--flood-worker",
        "--target",
        server.v4,
        "--flood",
        str(args.flood),
        "--seconds",
        str(args.flood_warmup + args.phase_seconds + 1),
        "--flood-pause",
        str(args.flood_pause),
        stdout=asyncio.subprocess.PIPE,
    )


async def measure(
    name: str,
    seconds: float,
    server: Server,
    world: World,
    args: argparse.Namespace,
    flood_pid: int | None = None,
) -> PhaseResult:
    """One measured window: bookings, victim sign-ins and health checks, with CPU use."""
    result = PhaseResult(name)
    rng = random.Random(args.seed + len(name))
    server_pid = server.proc.pid if server.proc else None
    cpu0 = (
        proc_cpu_seconds(server_pid),
        proc_cpu_seconds(flood_pid),
        sum(os.times()[:2]),
        *machine_busy_seconds(),
    )
    started = time.monotonic()
    stop = started + seconds
    async with aio.insecure_channel(server.v4) as ch:
        booking = booking_pb2_grpc.BookingServiceStub(ch)
        health = health_pb2_grpc.HealthStub(ch)
        await asyncio.gather(
            *(
                book_loop(booking, world, stop, args.bookers / args.book_rate, result, rng)
                for _ in range(args.bookers)
            ),
            victim_loop(server.v6, world, stop, args.victim_every, result),
            health_loop(health, stop, result),
        )
    result.seconds = time.monotonic() - started
    cpu1 = (
        proc_cpu_seconds(server_pid),
        proc_cpu_seconds(flood_pid),
        sum(os.times()[:2]),
        *machine_busy_seconds(),
    )
    wall = result.seconds
    result.cores = {
        "ticketd": round((cpu1[0] - cpu0[0]) / wall, 2),
        "flood_process": round((cpu1[1] - cpu0[1]) / wall, 2),
        "bench_client": round((cpu1[2] - cpu0[2]) / wall, 2),
        "machine_busy": round((cpu1[3] - cpu0[3]) / wall, 2),
        "machine_total": round((cpu1[4] - cpu0[4]) / wall, 2),
    }
    result.loadavg = loadavg()
    return result


async def run_phases(server: Server, world: World, args: argparse.Namespace) -> list[PhaseResult]:
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
    phases[2].flood = json.loads(out.decode() or "{}")
    log(f"phase after ({args.phase_seconds}s)")
    phases.append(await measure("after", args.phase_seconds, server, world, args))
    return phases


# ---------------------------------------------------------------------------------------------
# The flood, in its own process


async def flood_worker(args: argparse.Namespace) -> None:
    stop = time.monotonic() + args.seconds
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    channels = [aio.insecure_channel(args.target) for _ in range(4)]

    async def attacker(i: int) -> None:
        stub = auth_pb2_grpc.AuthServiceStub(channels[i % len(channels)])
        while time.monotonic() < stop:
            request = auth_pb2.LoginRequest(
                email=f"bogus-{uuid.uuid4().hex[:12]}@example.test", password="not-the-password"
            )
            started = time.perf_counter()
            try:
                await stub.Login(request, timeout=CALL_TIMEOUT_S)
                outcomes["OK"] += 1
            except aio.AioRpcError as err:
                outcomes[outcome(err)] += 1
                latencies.append(time.perf_counter() - started)
                if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(args.flood_pause)

    began = time.monotonic()
    await asyncio.gather(*(attacker(i) for i in range(args.flood)))
    elapsed = time.monotonic() - began
    for ch in channels:
        await ch.close(None)
    total = sum(outcomes.values())
    print(
        json.dumps(
            {
                "concurrent": args.flood,
                "attempts": total,
                "attempts_per_second": round(total / elapsed, 1),
                "outcomes": dict(outcomes),
                "answer_latency": summary_ms(latencies),
            }
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------
# The run


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    deadline = time.monotonic() + args.max_seconds
    args.busy_cores_at_start = await wait_for_quiet(args.quiet_wait)
    async with throwaway_database(admin_url) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-flood-") as tmp:
            server = Server(url, Path(tmp), args)
            await server.start()
            try:
                log(f"ticketd on localhost:{server.port}; setting up over ::1")
                world = await set_up(server.v6, args.seats)
                # Let the victim's address bucket refill after the set-up's sign-ins.
                await asyncio.sleep(args.peer_burst / args.peer_rate)
                if time.monotonic() + 3 * args.phase_seconds + args.flood_warmup + 60 > deadline:
                    raise RuntimeError("--max-seconds too short for the phases")
                phases = await run_phases(server, world, args)
            finally:
                await server.stop()
    reports = [p.report() for p in phases]
    before, flood_start, flood_r, after = reports
    base_p99 = [p["book_seats"]["p99_ms"] for p in (before, after) if p["book_seats"]["p99_ms"]]
    base = sum(base_p99) / len(base_p99) if base_p99 else None
    victim_flood = flood_r["victim_login"]
    victims_base = before["victim_login"]["ms"] + after["victim_login"]["ms"]
    return {
        "benchmark": "auth_flood",
        "command": "scripts/bench_auth_flood " + " ".join(sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": args.loadavg_at_start,
            "busy_cores_before_start": args.busy_cores_at_start,
            "note": "2 cores shared with PostgreSQL, the bench client, the flood process "
            "and other engineers' work",
        },
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
            "flood_concurrent": args.flood,
            "flood_pause_after_refusal_s": args.flood_pause,
            "flood_start_window_s": args.flood_warmup,
            "victim_every_s": args.victim_every,
            "phase_seconds": args.phase_seconds,
        },
        "phases": reports,
        "results": {
            "victim_login_max_ms_during_flood": victim_flood["max_ms"],
            "victim_login_median_ms_during_flood": victim_flood["median_ms"],
            "victim_login_median_ms_without_flood": percentile(victims_base, 50),
            "victim_login_failures_during_flood": victim_flood["failures"],
            "victim_login_max_ms_flood_start": flood_start["victim_login"]["max_ms"],
            "book_seats_p99_ms_flood_start": flood_start["book_seats"]["p99_ms"],
            "book_seats_p99_ms_without_flood": base,
            "book_seats_p99_ms_during_flood": flood_r["book_seats"]["p99_ms"],
            "book_seats_p99_ratio_flood_vs_without": ratio(flood_r["book_seats"]["p99_ms"], base),
            "book_seats_p99_ratio_after_vs_before": ratio(
                after["book_seats"]["p99_ms"], before["book_seats"]["p99_ms"]
            ),
            "health_not_serving_during_flood": sum(
                v for k, v in flood_r["health"]["statuses"].items() if k != "SERVING"
            ),
            "goal_victim_login_under_1s": victim_flood["max_ms"] is not None
            and victim_flood["max_ms"] < GOAL_VICTIM_LOGIN_S * 1000
            and not victim_flood["failures"],
        },
    }


def print_table(report: dict[str, Any]) -> None:
    rows = [
        f"{'phase':<8} {'book/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'victim login ms':<28} "
        f"{'health p99':>10} {'cores: server/flood/machine':>28} flood"
    ]
    for p in report["phases"]:
        b, v, h = p["book_seats"], p["victim_login"], p["health"]
        flood = p["flood"].get("outcomes", {}) if p["flood"] else {}
        c = p["cores_used"]
        cores = f"{c['ticketd']}/{c['flood_process']}/{c['machine_busy']}"
        rows.append(
            f"{p['phase']:<8} {b['per_second']:>8} {b['p50_ms']:>8} {b['p99_ms']:>8} "
            f"{str(v['ms'])[:28]:<28} {h['p99_ms']:>10} {cores:>28} {flood}"
        )
    for line in rows:
        log(line)
    log(json.dumps(report["results"], indent=2))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
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
    args.loadavg_at_start = loadavg()
    report = asyncio.run(bench(args))
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
