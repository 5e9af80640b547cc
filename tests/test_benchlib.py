"""The benchmark library's pure parts: statistics, loop bounds and accounting, CPU shape,
server environment. No database, no server (the process tests exercise ServerProcess)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from scripts.benchlib.cpu import GROUPS, CpuGroups, _is_ours, cpu_between, sample
from scripts.benchlib.loops import BACKLOG, Outcome, closed_loop, open_loop
from scripts.benchlib.process import ServerProcess
from scripts.benchlib.stats import latency_summary, percentile, summary_from_report


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 99.9) == 100.0
    assert percentile([7.0], 1) == 7.0
    assert math.isnan(percentile([], 50))


def test_latency_summaries_have_one_shape() -> None:
    empty = latency_summary([])
    assert set(empty) == {"mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}
    assert all(v is None for v in empty.values())
    summary = latency_summary([0.001, 0.002, 0.003, 0.004])
    assert summary["p50_ms"] == 2.0 and summary["max_ms"] == 4.0 and summary["mean_ms"] == 2.5
    distribution = [{"percentage": p, "latency": p * 1e6} for p in (50, 90, 99, 99.9)]
    from_report = summary_from_report(10, 5e6, 100e6, distribution)
    assert set(from_report) == set(empty)
    assert from_report["p50_ms"] == 50.0 and from_report["max_ms"] == 100.0
    assert summary_from_report(0, 0, 0, []) == empty


async def test_closed_loop_stops_at_the_count_and_counts_every_outcome() -> None:
    async def call(i: int) -> Outcome:
        await asyncio.sleep(0)
        return Outcome("OK", items=2) if i % 2 == 0 else Outcome("ABORTED/SEAT_LOCKED", message="x")

    window = await closed_loop(4, call, duration_s=30, call_timeout_s=1, max_calls=40)
    assert window.stop_reason == "count"
    assert window.sent == 40 and window.calls == 40
    assert window.statuses == {"OK": 20, "ABORTED/SEAT_LOCKED": 20}
    assert window.items == 40
    assert window.messages == {"ABORTED/SEAT_LOCKED": "x"}


async def test_closed_loop_stops_when_the_work_runs_out_and_counts_client_errors() -> None:
    left = 10

    async def call(i: int) -> Outcome | None:
        nonlocal left
        if left == 0:
            return None
        left -= 1
        if left == 5:
            raise ValueError("boom")
        return Outcome()

    window = await closed_loop(2, call, duration_s=30, call_timeout_s=1)
    assert window.stop_reason == "exhausted"
    assert window.statuses == {"OK": 9, "CLIENT_ERROR/ValueError": 1}


async def test_open_loop_is_bounded_and_measures_from_the_intended_send_time() -> None:
    own: list[float] = []

    async def call(i: int) -> Outcome:
        t0 = time.perf_counter()
        await asyncio.sleep(0.002)
        own.append(time.perf_counter() - t0)
        return Outcome()

    # One call in flight at a time, arrivals due faster than that: later calls queue, and
    # the queueing is part of their latency, never less than the call itself took.
    window = await open_loop(
        2_000, call, duration_s=30, call_timeout_s=5, max_calls=30, max_inflight=1
    )
    assert window.stop_reason == "count"
    assert window.sent == 30 and window.calls == 30 and window.ok == 30
    assert all(lat >= took for lat, took in zip(sorted(window.latencies), sorted(own), strict=True))


async def test_open_loop_counts_arrivals_it_never_sent() -> None:
    release = asyncio.Event()

    async def call(i: int) -> Outcome:
        await release.wait()
        return Outcome()

    async def let_go() -> None:
        await asyncio.sleep(2.5)  # well past the give-up point (1 s), even on a busy machine
        release.set()

    task = asyncio.create_task(let_go())
    # 10 due in 0.5 s, one slot, the first call stuck past the end plus a deadline (0.5 s).
    window = await open_loop(20, call, duration_s=0.5, call_timeout_s=0.5, max_inflight=1)
    await task
    assert window.stop_reason == "backlog"
    assert window.statuses[BACKLOG] == 9
    assert window.calls == 10


def test_cpu_window_has_the_documented_shape() -> None:
    groups = CpuGroups((), (), "no_such_database")
    cpu = cpu_between(sample(groups), sample(groups), calls=10)
    assert set(cpu) == {
        "window_s",
        "cores_available",
        "cores_busy",
        "machine_busy_pct",
        "cores_used",
        "cores_used_other",
        "cpu_ms_per_call",
    }
    assert set(cpu["cores_used"]) == set(cpu["cpu_ms_per_call"]) == set(GROUPS)
    assert all(v >= 0 for v in cpu["cores_used"].values())


@pytest.mark.parametrize(
    ("title", "ours"),
    [
        ("postgres: 15/main: postgres bench_db 127.0.0.1(34206) idle", True),
        ("postgres: postgres bench_db [local] idle", True),
        ("postgres: 15/main: postgres other_db 127.0.0.1(34206) SELECT", False),
        ("postgres: 15/main: autovacuum worker other_db", False),
        ("postgres: 15/main: walwriter", True),
        ("/usr/lib/postgresql/15/bin/postgres -D /var/lib/postgresql/15/main", True),
    ],
)
def test_postgres_processes_are_ours_when_they_work_for_our_database(
    title: str, ours: bool
) -> None:
    assert _is_ours(title, "bench_db") is ours
    assert _is_ours(title, None)


def test_server_environment_is_the_fields_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/db")
    monkeypatch.setenv("TICKETING_GATE_SCAN_RATE", "1")
    monkeypatch.setenv("TICKETING_JWT_SECRET", "inherited-secret")
    bench = ServerProcess("postgresql://here/db", Path("/tmp/x"), port=5, pool_size=7)
    env = bench.env()
    assert env["DATABASE_URL"] == "postgresql://here/db"
    assert env["TICKETING_LISTEN"] == "127.0.0.1:5"
    assert env["TICKETING_DB_POOL_SIZE"] == "7"
    assert "TICKETING_GATE_SCAN_RATE" not in env
    assert env["TICKETING_JWT_SECRET"] != "inherited-secret"
    embedded = ServerProcess(None, Path("/tmp/x"), jwt_secret=None, inherit_ticketing_env=True)
    env = embedded.env()
    assert "DATABASE_URL" not in env and "TICKETING_JWT_SECRET" not in env
    assert env["TICKETING_GATE_SCAN_RATE"] == "1"


def test_a_dual_stack_server_listens_on_both_loopback_addresses() -> None:
    bench = ServerProcess("postgresql://here/db", Path("/tmp/x"), port=5, dual_stack=True)
    assert bench.env()["TICKETING_LISTEN"] == "localhost:5"
    assert (bench.target, bench.target_v6) == ("127.0.0.1:5", "[::1]:5")


def test_pgbench_booking_script_is_the_servers_statement() -> None:
    # scripts/pgbench_booking.sql is the database ceiling of bench_booking only while it runs
    # the server's own sale statement: regenerate it when the statement changes.
    from scripts.benchlib.pgbench_script import SCRIPT_PATH, booking_script

    assert SCRIPT_PATH.read_text() == booking_script(), (
        "scripts/pgbench_booking.sql is stale: python -m scripts.benchlib.pgbench_script"
    )
