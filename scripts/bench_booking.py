"""Benchmark booking: throughput and latency of BookSeats, next to the two ceilings.

One run measures, on this machine:
  * BookSeats, specific seats and best available, at each concurrency (default 64, 256):
    a closed loop of N buyers (each its own account and token) over a few channels, each
    booking 1 or 2 places with a fresh request_id, for a fixed time after a warm-up;
  * the checkout: HoldSeats of specific seats then at once ConfirmHold, the same way, with
    each step's rate and p99, and the CPU per sold seat (all our processes together) as a
    ratio of BookSeats's in the same run (goal <= 1.5x);
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

`--rate R[,R]` adds specific-seat booking as an open loop at R arrivals per second (a crowd
that does not wait for the server): latency from each call's intended send time, so queueing
is not hidden, with at most max(--concurrency) calls in flight. `--open-share F` does the
same at F times the rate the specific-seat closed loop just measured (issue 16's goal: at
0.7, p99 < 50 ms).

Usage: scripts/bench_booking [--json PATH] [--concurrency 64,256] [--duration 10]
       [--warmup 2] [--places 100000] [--pool-size 40] [--channels 4] [--rate R,...]
       [--profile]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Traffic goes to
127.0.0.1 only. Output: a table on stdout, JSON in --json (default docs/bench_booking.json).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, disturbed, wait_for_quiet
from scripts.benchlib.database import (
    admin_url,
    connect_db,
    database_name,
    throwaway_database,
    wait_for_slots,
)
from scripts.benchlib.loops import Call as LoopCall
from scripts.benchlib.loops import Outcome, Window, closed_loop, open_loop
from scripts.benchlib.machine import machine_info
from scripts.benchlib.pgbench import (
    MINIMAL_SCRIPT,
    PGBENCH_SCRIPT,
    pgbench_clients,
    run_booking_pgbench,
)
from scripts.benchlib.process import benchmark_server
from scripts.benchlib.provision import Metadata, channel, create_event, login, register_buyers
from scripts.benchlib.report import header, log, write_json
from scripts.benchlib.stats import latency_summary
from ticketing.sdk import decode_error
from ticketing.v1 import booking_pb2, booking_pb2_grpc

DEFAULT_JSON = ROOT / "docs" / "bench_booking.json"
ADMIN_EMAIL = "bench-admin@example.test"
BUYER_PASSWORD = "bench-buyer-password"
PRICE_MINOR = 5_000
CALL_TIMEOUT_S = 10.0
PGBENCH_CLIENTS = 64
# Creating a 100k-place event is one long statement; the server's default is kept elsewhere.
STATEMENT_TIMEOUT_MS = 120_000
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
    "checkout_cpu_ratio": 1.5,
    "cpu_vs_trivial": 2.5,
    "pgbench_own_vs_minimal": 0.5,
    "open_loop_p99_ms": 50.0,
}
CHECKOUT_KIND = "HoldSeats+ConfirmHold"
# The closed-loop scenarios (Driver methods) in the order they run, and whether each books
# (then it starts on a reset inventory and is audited); --scenarios picks some.
SCENARIOS = (("transport", False), ("specific", True), ("best", True), ("checkout", True))


# ---------------------------------------------------------------------------------------------
# Results


def scenario_result(
    kind: str, window: Window, concurrency: int | None, rate: float | None = None
) -> dict[str, Any]:
    """One scenario's figures: the loop's window, outcomes judged against EXPECTED."""
    figures = window.figures()
    unexpected = {k: v for k, v in window.statuses.items() if k != "OK" and k not in EXPECTED}
    return {
        "kind": kind,
        "concurrency": concurrency,
        "rate": rate,
        "duration_s": figures.pop("measured_s"),
        "tickets_per_s": figures.pop("items_per_s"),
        **figures,
        "unexpected_errors": sum(unexpected.values()),
        "cpu_ms_per_seat": None,
        "first_message_per_status": window.messages,
        "cpu": window.cpu,
    }


def step_figures(done: list[tuple[float, bool]], duration_s: float) -> dict[str, Any]:
    """One step of a multi-call scenario: its calls and OK rate over the window, latency."""
    ok = sum(1 for _, good in done if good)
    return {
        "calls": len(done),
        "rps_ok": round(ok / duration_s, 1) if duration_s else 0.0,
        **latency_summary([lat for lat, _ in done]),
    }


def cpu_ms_per_seat(s: dict[str, Any]) -> float | None:
    """CPU of all our processes together (server, PostgreSQL, client, kernel) per place
    sold in the window: the cost the checkout goal compares."""
    cpu, sold = s.get("cpu"), float(s["tickets_per_s"]) * float(s["duration_s"])
    if not cpu or not sold:
        return None
    cores = sum(float(v) for v in cpu["cores_used"].values())
    return round(1000 * cores * float(cpu["window_s"]) / sold, 3)


def failure(err: aio.AioRpcError) -> tuple[Outcome, list[int]]:
    """`CODE/REASON` (the SDK's decoding of the rich details) and the seats a
    SEAT_UNAVAILABLE refusal names."""
    decoded = decode_error(err)
    key = f"{decoded.code.name}/{decoded.reason}" if decoded.reason else decoded.code.name
    named = decoded.metadata.get("seat_ids", "")
    seats = [int(s) for s in named.split(",") if s] or list(decoded.seat_ids)
    return Outcome(key, message=err.details() or ""), seats


class SeatPool:
    """The places a buyer believes free: picks are uniform, sold ones leave the pool."""

    def __init__(self, seat_ids: list[int]) -> None:
        self.ids = list(seat_ids)
        self.pos = {sid: i for i, sid in enumerate(self.ids)}

    def pick(self, n: int) -> list[int]:
        """Up to `n` distinct places, uniformly among those believed free (sorted)."""
        n = min(n, len(self.ids))
        return sorted({self.ids[random.randrange(len(self.ids))] for _ in range(n)})

    def discard(self, seat_ids: list[int]) -> None:
        """Forget places (sold, or named as taken by a refusal); O(1) each."""
        for sid in seat_ids:
            i = self.pos.pop(sid, None)
            if i is None:
                continue
            last = self.ids.pop()
            if last != sid:
                self.ids[i] = last
                self.pos[last] = i


@dataclass
class Inventory:
    """The benchmark's event: its id, section ids and seat ids (ascending)."""

    event_id: str
    section_ids: list[str]
    seat_ids: list[int]


async def create_inventory(target: str, admin_password: str, places: int) -> Inventory:
    """The benchmark's event: a venue of `places` reserved seats, on sale."""
    async with channel(target) as ch:
        md = await login(ch, ADMIN_EMAIL, admin_password)
        event = await create_event(ch, md, places, "Booking benchmark", price_minor=PRICE_MINOR)
    return Inventory(event.id, [s.section_id for s in event.sections], [])


async def load_seat_ids(conn: asyncpg.Connection, event_id: str) -> list[int]:
    """Every seat id of the event, ascending."""
    rows = await conn.fetch("SELECT id FROM seats WHERE event_id = $1::uuid ORDER BY id", event_id)
    return [r["id"] for r in rows]


async def reset_inventory(conn: asyncpg.Connection, event_id: str) -> None:
    """Undo every sale and hold of the event, then VACUUM ANALYZE and CHECKPOINT, so each scenario
    starts from the same fresh inventory with no checkpoint debt."""
    await conn.execute(
        "UPDATE seats SET status = 'AVAILABLE', hold_id = NULL, held_until = NULL"
        " WHERE event_id = $1::uuid AND status <> 'AVAILABLE'",
        event_id,
    )
    await conn.execute(
        "DELETE FROM hold_seats WHERE hold_id IN (SELECT id FROM holds WHERE event_id = $1::uuid)",
        event_id,
    )
    await conn.execute("DELETE FROM holds WHERE event_id = $1::uuid", event_id)
    await conn.execute("DELETE FROM tickets WHERE event_id = $1::uuid", event_id)
    await conn.execute("DELETE FROM orders WHERE event_id = $1::uuid", event_id)
    await conn.execute("VACUUM (ANALYZE) seats, orders, tickets, holds, hold_seats")
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
    """The scenarios, each a loop over the same channels, buyers and event."""

    channels: list[aio.Channel]
    buyers: list[Metadata]
    inventory: Inventory
    cpu: CpuGroups

    def booking_stubs(self) -> list[booking_pb2_grpc.BookingServiceAsyncStub]:
        """One BookingService stub per channel."""
        return [booking_pb2_grpc.BookingServiceStub(c) for c in self.channels]

    async def _closed(
        self, kind: str, call: LoopCall, concurrency: int, warmup: float, duration: float
    ) -> dict[str, Any]:
        window = await closed_loop(
            concurrency,
            call,
            duration_s=duration,
            warmup_s=warmup,
            call_timeout_s=CALL_TIMEOUT_S,
            cpu=self.cpu,
        )
        return scenario_result(kind, window, concurrency)

    async def transport(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        """The transport ceiling: Health/Check in a closed loop."""
        stubs = [health_pb2_grpc.HealthStub(c) for c in self.channels]
        request = health_pb2.HealthCheckRequest(service="")

        async def call(i: int) -> Outcome:
            try:
                await stubs[i % len(stubs)].Check(request, timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                return failure(err)[0]
            return Outcome()

        return await self._closed("transport:Health/Check", call, concurrency, warmup, duration)

    def specific_call(self) -> LoopCall:
        """One BookSeats of 1 or 2 places the client believes free (None: none left)."""
        stubs = self.booking_stubs()
        pool = SeatPool(self.inventory.seat_ids)
        event_id = self.inventory.event_id

        async def call(i: int) -> Outcome | None:
            seats = pool.pick(random.choice((1, 2)))
            if not seats:
                return None
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
                outcome, taken = failure(err)
                if outcome.status == "FAILED_PRECONDITION/SEAT_UNAVAILABLE":
                    pool.discard(taken)
                return outcome
            pool.discard(seats)
            return Outcome(items=len(response.order.tickets))

        return call

    async def checkout(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        """Two-phase sales in a closed loop: HoldSeats of 1 or 2 places the client believes
        free, then at once ConfirmHold (no think time: this measures the cost of the two
        calls, not a crowd). One loop call is the pair; each step's own rate and latency
        are reported in `steps`, over the pairs that completed in the measured window."""
        stubs = self.booking_stubs()
        pool = SeatPool(self.inventory.seat_ids)
        event_id = self.inventory.event_id
        steps: dict[str, list[tuple[float, float, bool]]] = {"HoldSeats": [], "ConfirmHold": []}

        async def call(i: int) -> Outcome | None:
            seats = pool.pick(random.choice((1, 2)))
            if not seats:
                return None
            stub, md = stubs[i % len(stubs)], self.buyers[i % len(self.buyers)]
            hold_request = booking_pb2.HoldSeatsRequest(
                event_id=event_id,
                request_id=str(uuid.uuid4()),
                seat_ids=booking_pb2.SeatIds(ids=seats),
            )
            t0 = time.perf_counter()
            try:
                held = await stub.HoldSeats(hold_request, metadata=md, timeout=CALL_TIMEOUT_S)
            except aio.AioRpcError as err:
                steps["HoldSeats"].append((time.perf_counter(), time.perf_counter() - t0, False))
                outcome, taken = failure(err)
                if outcome.status == "FAILED_PRECONDITION/SEAT_UNAVAILABLE":
                    pool.discard(taken)
                return outcome
            t1 = time.perf_counter()
            steps["HoldSeats"].append((t1, t1 - t0, True))
            pool.discard(seats)
            confirm_request = booking_pb2.ConfirmHoldRequest(
                hold_id=held.hold.id, request_id=str(uuid.uuid4()), payment_reference="bench"
            )
            try:
                response = await stub.ConfirmHold(
                    confirm_request, metadata=md, timeout=CALL_TIMEOUT_S
                )
            except aio.AioRpcError as err:
                steps["ConfirmHold"].append((time.perf_counter(), time.perf_counter() - t1, False))
                return failure(err)[0]
            t2 = time.perf_counter()
            steps["ConfirmHold"].append((t2, t2 - t1, True))
            return Outcome(items=len(response.order.tickets))

        started = time.perf_counter()
        result = await self._closed(CHECKOUT_KIND, call, concurrency, warmup, duration)
        begin = started + warmup
        end = begin + result["duration_s"]
        result["steps"] = {
            name: step_figures(
                [(lat, ok) for t, lat, ok in done if begin <= t < end], result["duration_s"]
            )
            for name, done in steps.items()
        }
        return result

    async def specific(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        """BookSeats of specific seats in a closed loop."""
        call = self.specific_call()
        return await self._closed("BookSeats:specific", call, concurrency, warmup, duration)

    async def specific_open(
        self, rate: float, max_inflight: int, warmup: float, duration: float
    ) -> dict[str, Any]:
        """BookSeats of specific seats in an open loop of `rate` arrivals per second."""
        window = await open_loop(
            rate,
            self.specific_call(),
            duration_s=duration,
            warmup_s=warmup,
            max_inflight=max_inflight,
            call_timeout_s=CALL_TIMEOUT_S,
            cpu=self.cpu,
        )
        return scenario_result("BookSeats:specific(open)", window, None, rate)

    async def best(self, concurrency: int, warmup: float, duration: float) -> dict[str, Any]:
        """BookSeats best available (a random section) in a closed loop."""
        stubs = self.booking_stubs()
        sections = self.inventory.section_ids
        event_id = self.inventory.event_id

        async def call(i: int) -> Outcome:
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
                return failure(err)[0]
            return Outcome(items=len(response.order.tickets))

        return await self._closed("BookSeats:best_available", call, concurrency, warmup, duration)


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
    """py-spy on PATH or next to the interpreter (not a project dependency)."""
    found = shutil.which("py-spy")
    beside = Path(sys.executable).parent / "py-spy"
    return found or (str(beside) if beside.exists() else None)


async def profile_server(
    driver: Driver, concurrency: int, duration: float, out: Path, native: bool
) -> dict[str, Any]:
    """One more specific-seat run with py-spy attached to the server; where its time went."""
    py_spy = find_py_spy()
    if py_spy is None:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    server_pid = driver.cpu.server_pids[0]
    command = [
        py_spy,
        "record",
        "--pid",
        str(server_pid),
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


def ratios_and_goals(
    scenarios: list[dict[str, Any]], database: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Booking throughput as shares of the two ceilings, and the issue's goals checked."""
    transport = {
        s["concurrency"]: s["rps_ok"] for s in scenarios if s["kind"].startswith("transport")
    }
    db_rate = database["bookings_per_s"] if database else None
    ratios = []
    for s in scenarios:
        # The goals are about closed loops at a number of buyers; open-loop runs have none.
        if not s["kind"].startswith("BookSeats") or s["concurrency"] is None:
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
    for s in scenarios:
        if s.get("share_of_capacity") is not None:
            goals["checks"].append(
                {
                    "goal": f"open loop at {s['share_of_capacity']:.0%} of capacity "
                    f"({s['rate']}/s of {s['capacity_rps']}/s): p99 < "
                    f"{GOALS['open_loop_p99_ms']:g} ms from intended send time",
                    "value": s["p99_ms"],
                    "met": s["p99_ms"] is not None and s["p99_ms"] < GOALS["open_loop_p99_ms"],
                }
            )
    for s in scenarios:
        if s["kind"] != CHECKOUT_KIND:
            continue
        book = next(
            (
                b
                for b in scenarios
                if b["kind"] == "BookSeats:specific" and b["concurrency"] == s["concurrency"]
            ),
            None,
        )
        ratio = None
        if book and book.get("cpu_ms_per_seat") and s.get("cpu_ms_per_seat"):
            ratio = round(s["cpu_ms_per_seat"] / book["cpu_ms_per_seat"], 3)
        s["cpu_per_seat_of_bookseats"] = ratio
        goals["checks"].append(
            {
                "goal": f"hold + confirm CPU per sold seat at {s['concurrency']} <= 1.5x "
                "BookSeats:specific",
                "value": ratio,
                "met": ratio is not None and ratio <= GOALS["checkout_cpu_ratio"],
            }
        )
    unexpected = sum(
        s["unexpected_errors"] for s in scenarios if s["kind"].startswith(("Book", "Hold"))
    )
    goals["checks"].append(
        {
            "goal": "no errors besides SEAT_UNAVAILABLE/SEAT_LOCKED/SOLD_OUT",
            "value": unexpected,
            "met": unexpected == 0,
        }
    )
    goals["all_met"] = all(c["met"] for c in goals["checks"])
    return ratios, goals


def cpu_goals(
    scenarios: list[dict[str, Any]],
    database: dict[str, Any] | None,
    minimal: dict[str, Any] | None,
    goals: dict[str, Any],
) -> None:
    """Issue 16's two ratios, added to `goals`: CPU per BookSeats (all processes together)
    as a multiple of CPU per trivial RPC at the same concurrency (goal <= 2.5x), and our
    booking statements' pgbench rate as a share of the minimal booking transaction's
    (goal >= 50%)."""

    def per_call(s: dict[str, Any]) -> float | None:
        cpu = s.get("cpu") or {}
        per = cpu.get("cpu_ms_per_call")
        return sum(float(v) for v in per.values()) if per else None

    trivial = {
        s["concurrency"]: per_call(s) for s in scenarios if s["kind"].startswith("transport")
    }
    for s in scenarios:
        if s["kind"] != "BookSeats:specific" or s["concurrency"] is None:
            continue
        booking, base = per_call(s), trivial.get(s["concurrency"])
        ratio = round(booking / base, 2) if booking and base else None
        s["cpu_vs_trivial"] = ratio
        goals["checks"].append(
            {
                "goal": f"CPU per BookSeats at {s['concurrency']} <= 2.5x a trivial RPC's",
                "value": ratio,
                "met": ratio is not None and ratio <= GOALS["cpu_vs_trivial"],
            }
        )
    share = None
    if database and minimal and minimal.get("bookings_per_s"):
        share = round(database["bookings_per_s"] / minimal["bookings_per_s"], 3)
    goals["pgbench_own_vs_minimal"] = share
    goals["checks"].append(
        {
            "goal": "our booking statements in pgbench >= 50% of the minimal transaction's rate",
            "value": share,
            "met": share is not None and share >= GOALS["pgbench_own_vs_minimal"],
        }
    )


# ---------------------------------------------------------------------------------------------
# Orchestration and report


@dataclass
class Scenarios:
    """Runs scenarios one after the other on the same event; keeps their results."""

    conn: asyncpg.Connection
    event_id: str
    reruns_left: int
    results: list[dict[str, Any]] = field(default_factory=list)
    disturbed: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, scenario: Callable[[], Awaitable[dict[str, Any]]], books: bool) -> None:
        """Run one scenario (on a fresh inventory when it books, audited afterwards); once
        more if other work disturbed its window and the rerun budget allows."""
        for attempt in range(2):
            await wait_for_quiet(5)
            if books:
                await reset_inventory(self.conn, self.event_id)
            result = await scenario()
            if books:
                result["audit"] = await audit(self.conn, self.event_id)
                result["cpu_ms_per_seat"] = cpu_ms_per_seat(result)
            log(_line(result))
            result["disturbed"] = disturbed(result["cpu"], DISTURBED_CORES)
            if not result["disturbed"] or attempt or self.reruns_left <= 0:
                break
            self.reruns_left -= 1
            self.disturbed.append(result)
            other = result["cpu"]["cores_used_other"]
            log(f"  other work used {other} cores meanwhile: once more")
        self.results.append(result)


async def sequence_outbox(url: str, interval_s: float = 0.01) -> int:
    """What ticketd's outbox sequencer does (ticketd.db.outbox), until cancelled: one
    `outbox_sequence_pending()` pass per interval. Returns the passes made."""
    conn = await connect_db(url)
    passes = 0
    try:
        while True:
            await conn.fetchval("SELECT outbox_sequence_pending()")
            passes += 1
            await asyncio.sleep(interval_s)
    except asyncio.CancelledError:
        return passes
    finally:
        await conn.close()


async def database_ceiling(
    url: str, event_id: str, duration: int, script: Path = PGBENCH_SCRIPT
) -> dict[str, Any]:
    """`script` (pgbench_booking.sql: our statements; pgbench_minimal.sql: the least a
    booking could be) on the reset inventory (rerun once if disturbed)."""
    result: dict[str, Any] = {}
    for attempt in range(2):
        await wait_for_quiet(5)
        conn = await connect_db(url)
        try:
            await reset_inventory(conn, event_id)
            clients = await pgbench_clients(url, PGBENCH_CLIENTS)
            # The server is stopped by now: number the recorded changes meanwhile as its
            # sequencer would (one pass per 10 ms), so their cost is in the figure too.
            sequencing = asyncio.ensure_future(sequence_outbox(url))
            try:
                result = await run_booking_pgbench(
                    url,
                    event_id,
                    clients=clients,
                    duration_s=duration,
                    price_minor=PRICE_MINOR,
                    script=script,
                )
            finally:
                sequencing.cancel()
                passes = await asyncio.gather(sequencing, return_exceptions=True)
            result["sequencer_passes"] = passes[0] if isinstance(passes[0], int) else None
            result["clients_wanted"] = PGBENCH_CLIENTS
            result["audit"] = await audit(conn, event_id)
        finally:
            await conn.close()
        result["disturbed"] = disturbed(result["cpu"], DISTURBED_CORES)
        if result["disturbed"] and not attempt:
            log(f"pgbench: other work used {result['cpu']['cores_used_other']} cores: once more")
            continue
        break
    log(
        f"pgbench {script.name}: {result['tps']} tps, {result['bookings_per_s']} bookings/s "
        f"(ok fraction {result['ok_fraction']})"
    )
    return result


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; the report as written to --json."""
    admin = admin_url()
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    rates = [float(r) for r in args.rate.split(",") if r.strip()] if args.rate else []
    started = time.perf_counter()
    machine = await machine_info(admin, await wait_for_quiet(args.wait_quiet))
    database: dict[str, Any] | None = None
    minimal: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    if args.seat_streams:
        # pgbench's sessions record seat changes (or not) as the server's do: the setting
        # record_seat_changes reads (pgbench inherits this process's environment).
        os.environ["PGOPTIONS"] = f"-c ticketing.seat_streams={args.seat_streams}"
    async with throwaway_database(admin) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-booking-") as data_dir:
            free = await wait_for_slots(admin, args.pool_size + 4, 10)
            if free < args.pool_size + 4:
                log(f"only {free} PostgreSQL connections free for a pool of {args.pool_size}")
            server = benchmark_server(
                url,
                Path(data_dir),
                admin_email=ADMIN_EMAIL,
                pool_size=args.pool_size,
                module=args.server_module,
                env={"TICKETING_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS)}
                | ({"TICKETING_SEAT_STREAMS": args.seat_streams} if args.seat_streams else {}),
            )
            await server.start()
            assert server.pid is not None and server.admin_password is not None
            log(f"ticketd pid {server.pid} on {server.target}")
            try:
                t0 = time.perf_counter()
                inventory = await create_inventory(
                    server.target, server.admin_password, args.places
                )
                log(f"event with {args.places} places in {time.perf_counter() - t0:.1f} s")
                t0 = time.perf_counter()
                buyers = await register_buyers(
                    server.target, max([*concurrencies, 1]), BUYER_PASSWORD
                )
                log(f"{len(buyers)} buyers registered in {time.perf_counter() - t0:.1f} s")
                conn = await connect_db(url)
                channels = [channel(server.target) for _ in range(args.channels)]
                try:
                    inventory.seat_ids = await load_seat_ids(conn, inventory.event_id)
                    groups = CpuGroups((server.pid,), (), database_name(url))
                    driver = Driver(channels, buyers, inventory, groups)
                    runs = Scenarios(conn, inventory.event_id, args.max_retries)
                    w, d = args.warmup, args.duration
                    chosen = set(args.scenarios.split(","))
                    for c in concurrencies:
                        for name, books in SCENARIOS:
                            if name in chosen:
                                run = functools.partial(getattr(driver, name), c, w, d)
                                await runs.run(run, books)
                    for rate in rates:
                        # At most as many in flight as the largest closed loop had buyers.
                        open_run = functools.partial(
                            driver.specific_open, rate, max(concurrencies), w, d
                        )
                        await runs.run(open_run, True)
                    capacity = max(
                        (s["rps_ok"] for s in runs.results if s["kind"] == "BookSeats:specific"),
                        default=0.0,
                    )
                    if args.open_share and capacity:
                        # Issue 16's latency goal: arrivals at a share of the capacity just
                        # measured (the closed loop's rate), latency from intended send time.
                        rate = round(args.open_share * capacity, 1)
                        open_run = functools.partial(
                            driver.specific_open, rate, max(concurrencies), w, d
                        )
                        await runs.run(open_run, True)
                        runs.results[-1]["share_of_capacity"] = args.open_share
                        runs.results[-1]["capacity_rps"] = capacity
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
                await server.stop(timeout=15)
                server_log = server.log(40).splitlines()
            if not args.skip_pgbench:
                database = await database_ceiling(
                    url, inventory.event_id, args.pgbench_duration, Path(args.pgbench_script)
                )
                minimal = await database_ceiling(
                    url, inventory.event_id, args.pgbench_duration, MINIMAL_SCRIPT
                )
    scenarios = runs.results
    ratios, goals = ratios_and_goals(scenarios, database)
    cpu_goals(scenarios, database, minimal, goals)
    report: dict[str, Any] = {
        **header(
            "booking throughput (BookSeats over gRPC) against transport and DB ceilings",
            "scripts/bench_booking",
        ),
        "setup": {
            "server": "separate process: python -m ticketd (DATABASE_URL, TICKETING_LISTEN="
            "127.0.0.1:0, TICKETING_BCRYPT_ROUNDS=4, TICKETING_DB_POOL_SIZE)",
            "server_module": args.server_module,
            "seat_streams": args.seat_streams or "server default",
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
            "open_loop_rates": rates,
            "call_timeout_s": CALL_TIMEOUT_S,
            "reset_between_scenarios": "orders/tickets deleted, seats AVAILABLE, VACUUM "
            "ANALYZE, CHECKPOINT",
            "rps_ok": "successful BookSeats (orders) per second; closed loop: latency over all "
            "calls completed in the window, from the actual send; open loop: over all calls "
            "due in the window, from the intended send time",
        },
        "scenarios": scenarios,
        "disturbed_attempts_rerun": [
            {k: d[k] for k in ("kind", "concurrency", "rate", "rps_ok", "p99_ms")}
            | {"other_cores": d["cpu"]["cores_used_other"]}
            for d in runs.disturbed
        ],
        "database_ceiling": database,
        "database_minimal": minimal,
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


def _load(s: dict[str, Any]) -> str:
    """Buyers in flight (closed loop) or arrivals per second (open loop)."""
    return str(s["concurrency"]) if s["concurrency"] is not None else f"{s['rate']:g}/s"


def _line(s: dict[str, Any]) -> str:
    return (
        f"{s['kind']:<26} c={_load(s):<4} ok/s={s['rps_ok']:>8.1f} "
        f"p50={s['p50_ms']}ms p99={s['p99_ms']}ms statuses={s['statuses']}"
    )


def render_table(report: dict[str, Any]) -> str:
    """The report as the table printed on stdout."""
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
            f"{s['kind']:<26} {_load(s):>5} {s['rps_ok']:>9.1f} {s['rps_all']:>9.1f} "
            f"{s['p50_ms'] or 0:>8.2f} {s['p99_ms'] or 0:>8.2f} {cores['server']:>9.2f} "
            f"{cores['postgres']:>8.2f} {cores['client']:>9.2f} {kernel(s['cpu']):>6.2f} "
            f"{s['cpu']['cores_used_other']:>6.2f}  "
            + ", ".join(f"{k}={v}" for k, v in s["statuses"].items())
        )
        for name, step in s.get("steps", {}).items():
            lines.append(
                f"  {name:<24} {'':>5} {step['rps_ok']:>9.1f} {'':>9} "
                f"{step['p50_ms'] or 0:>8.2f} {step['p99_ms'] or 0:>8.2f}"
            )
    minimal = report.get("database_minimal")
    if minimal:
        lines.append(
            f"{'minimal txn (pgbench)':<26} {minimal['clients']:>5} "
            f"{minimal['bookings_per_s']:>9.1f} {minimal['tps'] or 0:>9.1f}"
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
    for s in report["scenarios"]:
        if s.get("cpu_ms_per_seat"):
            lines.append(
                f"{s['kind']:<26} {_load(s):>5}  CPU per sold seat {s['cpu_ms_per_seat']} ms"
            )
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
    """Parse arguments, run the benchmark, print the table, write the JSON (exit 0)."""
    parser = argparse.ArgumentParser(prog="bench_booking", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--json", metavar="PATH", default=str(DEFAULT_JSON), help="default: %(default)s"
    )
    parser.add_argument("--concurrency", default="64,256", help="buyers in flight, comma list")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument(
        "--rate",
        default="",
        help="also book specific seats as an open loop at these arrivals/s (comma list; "
        "latency from the intended send time, at most max(--concurrency) in flight)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(name for name, _ in SCENARIOS),
        help="closed-loop scenarios to run, comma list of: %(default)s (the ratios need "
        "transport and specific; the checkout ratio needs specific)",
    )
    parser.add_argument(
        "--open-share",
        type=float,
        default=0.0,
        metavar="F",
        help="also book specific seats as an open loop at F x the closed loop's measured "
        "rate (issue 16: 0.7, goal p99 < 50 ms from the intended send time); 0 = off",
    )
    parser.add_argument("--places", type=int, default=100_000, help="places of the event")
    parser.add_argument("--pool-size", type=int, default=40, help="TICKETING_DB_POOL_SIZE")
    parser.add_argument("--channels", type=int, default=4, help="client gRPC channels")
    parser.add_argument("--pgbench-duration", type=int, default=8, help="pgbench -T seconds")
    parser.add_argument(
        "--pgbench-script",
        default=str(PGBENCH_SCRIPT),
        help="our statements for pgbench (another version's, to compare); default %(default)s",
    )
    parser.add_argument("--skip-pgbench", action="store_true")
    parser.add_argument(
        "--seat-streams",
        choices=("on", "off"),
        default=None,
        help="TICKETING_SEAT_STREAMS for the server and the same for pgbench's sessions "
        "(default: the server's default)",
    )
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
    try:
        rates = [float(r) for r in args.rate.split(",") if r.strip()]
    except ValueError:
        rates = [0.0]
    if not all(0 < r <= 10_000 for r in rates):
        parser.error("--rate must be a comma list of arrivals per second, 0..10000")
    if not set(args.scenarios.split(",")) <= {name for name, _ in SCENARIOS}:
        parser.error(f"--scenarios must be a comma list of {[n for n, _ in SCENARIOS]}")
    if not 0 <= args.open_share <= 1.5:
        parser.error("--open-share must be 0..1.5 (a share of the measured capacity)")
    if args.open_share and "specific" not in args.scenarios.split(","):
        parser.error("--open-share needs the specific scenario (its rate is the capacity)")
    if not 1 <= args.channels <= 64:
        parser.error("--channels must be 1..64")
    if not 1 <= args.pgbench_duration <= 60:
        parser.error("--pgbench-duration must be 1..60 s")
    report = asyncio.run(bench(args))
    print(render_table(report))
    write_json(report, Path(args.json))
    log(f"report written to {args.json} ({report['total_runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
