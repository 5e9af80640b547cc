"""Benchmark seat-map watchers: booking throughput with 0 and with 50 seat streams open
(WatchSeats, one message per change, and WatchSeatBatches, a page of changes per message),
and how long a sale takes to reach a watcher.

One run, on this machine, each server a separate `python -m ticketd` on a throwaway
database of its own with one event of --places seats and --concurrency buyers:
  * `off`: a server with TICKETING_SEAT_STREAMS=off (nothing recorded): --rounds windows
    of BookSeats (specific seats, 1 or 2 places, a closed loop of --concurrency buyers);
  * `on`: a server with TICKETING_SEAT_STREAMS=on: per round a window with 0 watchers, then
    one with --watchers watchers on each RPC of --rpc (`both`, the default: WatchSeats then
    WatchSeatBatches, the other way round in odd rounds), so drift of the machine hits
    every kind alike.
Every window starts on a fresh inventory (sales undone as in bench_booking). The watchers
run in a process of their own (python -m scripts.bench_watchers watch ...), one gRPC
connection each, opened after the last change before the window, and record every SOLD
change they receive with the receive time. Delivery latency is measured per (watcher, seat):
  * `answer_to_delivery`: the watcher's receive time minus the time the BookSeats call that
    sold the seat returned to the buyer (CLOCK_MONOTONIC, shared by both processes): negative
    when the stream was faster than the answer;
  * `change_time_to_delivery`: receive time (wall clock) minus the change's change_time (the
    database's clock_timestamp() in the writing statement, just before its commit).
Ratios reported: fan-out = on/50 ÷ on/0 (what the 50 streams cost), recording = on/0 ÷
off (what the outbox costs), both = on/50 ÷ off; the issue's goal is outbox + fan-out cost
<= 15% of booking throughput (both >= 0.85). The keys without a suffix are WatchSeats
windows (as before WatchSeatBatches existed), `*_batches` the WatchSeatBatches windows.
The goal is reported, not enforced.

Usage: scripts/bench_watchers [--json PATH] [--watchers 50] [--concurrency 64]
       [--duration 5] [--warmup 1] [--rounds 2] [--places 30000] [--pool-size 40]
       [--channels 4] [--skip-off] [--rpc both|WatchSeats|WatchSeatBatches]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Traffic goes to
127.0.0.1 only. Output: a table on stdout, JSON in --json (default docs/bench_watchers.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio

from scripts.bench_booking import (
    ADMIN_EMAIL,
    BUYER_PASSWORD,
    CALL_TIMEOUT_S,
    DISTURBED_CORES,
    STATEMENT_TIMEOUT_MS,
    SeatPool,
    audit,
    create_inventory,
    failure,
    load_seat_ids,
    reset_inventory,
    scenario_result,
)
from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, disturbed, wait_for_quiet
from scripts.benchlib.database import admin_url, connect_db, database_name, throwaway_database
from scripts.benchlib.loops import Outcome, closed_loop
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import ServerProcess, benchmark_server
from scripts.benchlib.provision import Metadata, channel, register_buyers
from scripts.benchlib.report import header, log, write_json
from scripts.benchlib.stats import latency_summary
from ticketing.v1 import booking_pb2, booking_pb2_grpc, event_pb2, event_pb2_grpc

DEFAULT_JSON = ROOT / "docs" / "bench_watchers.json"
GOAL_MIN_RATIO = 0.85  # outbox + fan-out cost at most 15% of booking throughput
# After a window, the watchers get this long to receive the window's last changes.
DRAIN_S = 3.0
# Bounds of the watcher process: to open its streams, and to write its results once told.
WATCHERS_READY_TIMEOUT_S = 60.0
WATCHERS_EXIT_TIMEOUT_S = 60.0
READY = "watchers ready"
SINGLE = "WatchSeats"
BATCHES = "WatchSeatBatches"
RPCS = (SINGLE, BATCHES)


# ---------------------------------------------------------------------------------------------
# The watcher process


def _changes(
    stub: event_pb2_grpc.EventServiceAsyncStub, rpc: str, event_id: str, after: int
) -> AsyncIterator[list[event_pb2.SeatChange]]:
    """What one stream receives, message by message, as lists of changes (one per message
    of WatchSeats, a page per message of WatchSeatBatches)."""

    async def single() -> AsyncIterator[list[event_pb2.SeatChange]]:
        request = event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=after)
        async for change in stub.WatchSeats(request):
            yield [change]

    async def batches() -> AsyncIterator[list[event_pb2.SeatChange]]:
        request = event_pb2.WatchSeatBatchesRequest(event_id=event_id, after_sequence=after)
        async for batch in stub.WatchSeatBatches(request):
            yield list(batch.changes)

    return single() if rpc == SINGLE else batches()


async def watch_process(
    target: str, event_id: str, after: int, count: int, out: Path, rpc: str = SINGLE
) -> None:
    """`count` `rpc` streams (own connection each) from `after`; prints READY once
    each has received its first change (change after+1, not recorded), records every later
    SOLD change (with the receive time of the message that carried it) until a line (or
    EOF) on stdin, then writes the records as JSON to `out`."""
    channels = [channel(target) for _ in range(count)]
    records: list[list[tuple[int, int, int, int]]] = [[] for _ in range(count)]
    errors: list[str] = []
    opened = 0
    all_open = asyncio.Event()

    async def follow(i: int) -> None:
        nonlocal opened
        stub = event_pb2_grpc.EventServiceStub(channels[i])
        first = True
        try:
            async for message in _changes(stub, rpc, event_id, after):
                mono, wall = time.monotonic_ns(), time.time_ns()
                for change in message:
                    if first:
                        first = False
                        opened += 1
                        if opened == count:
                            all_open.set()
                        continue
                    if change.status == event_pb2.SEAT_STATUS_SOLD:
                        lag = wall - change.change_time.ToNanoseconds()
                        records[i].append((change.sequence, change.seat_id, mono, lag))
        except aio.AioRpcError as err:
            errors.append(f"watcher {i}: {err.code().name} {err.details()}")

    tasks = [asyncio.create_task(follow(i)) for i in range(count)]
    try:
        async with asyncio.timeout(WATCHERS_READY_TIMEOUT_S):
            await all_open.wait()
        print(READY, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close(None)
    text = json.dumps({"records": records, "errors": errors})
    await asyncio.to_thread(out.write_text, text, encoding="utf-8")


@dataclass
class WatcherProcess:
    """The watcher process of one window."""

    proc: asyncio.subprocess.Process
    out: Path

    @classmethod
    async def start(
        cls, target: str, event_id: str, after: int, count: int, out: Path, rpc: str
    ) -> WatcherProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "scripts.bench_watchers", "watch", target, event_id, str(after)),
            *(str(count), str(out), rpc),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        async with asyncio.timeout(WATCHERS_READY_TIMEOUT_S):
            while (line := (await proc.stdout.readline()).decode()) and READY not in line:
                pass
        if READY not in line:
            await proc.wait()
            raise RuntimeError(f"the watcher process exited {proc.returncode} before its streams")
        return cls(proc, out)

    async def stop(self) -> dict[str, Any]:
        """Tell it to stop; its records."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        async with asyncio.timeout(WATCHERS_EXIT_TIMEOUT_S):
            await self.proc.wait()
        text = await asyncio.to_thread(self.out.read_text, encoding="utf-8")
        result: dict[str, Any] = json.loads(text)
        return result

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass
class Bench:
    """One server's event, buyers and channels; runs its windows."""

    server: ServerProcess
    conn: asyncpg.Connection
    event_id: str
    seat_ids: list[int]
    buyers: list[Metadata]
    channels: list[aio.Channel]
    args: argparse.Namespace
    tmp: Path

    async def window(self, streams: str, watchers: int, rpc: str = SINGLE) -> dict[str, Any]:
        """One window of BookSeats on a fresh inventory, with `watchers` `rpc` streams open."""
        await wait_for_quiet(5)
        await reset_inventory(self.conn, self.event_id)
        stubs = [booking_pb2_grpc.BookingServiceStub(c) for c in self.channels]
        pool = SeatPool(self.seat_ids)
        answered: dict[int, int] = {}  # seat -> CLOCK_MONOTONIC ns of the answer that sold it

        async def call(i: int) -> Outcome | None:
            seats = pool.pick(random.choice((1, 2)))
            if not seats:
                return None
            request = booking_pb2.BookSeatsRequest(
                event_id=self.event_id,
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
            now = time.monotonic_ns()
            for ticket in response.order.tickets:
                answered[ticket.seat_id] = now
            pool.discard(seats)
            return Outcome(items=len(response.order.tickets))

        assert self.server.pid is not None
        watcher: WatcherProcess | None = None
        client_pids: tuple[int, ...] = ()
        if watchers:
            # Numbered first (migration 0014: writers leave records unnumbered): the last
            # change before the window is then the stream's counter.
            last = await self.conn.fetchval(
                "SELECT outbox_sequence('seats', $1)", uuid.UUID(self.event_id)
            )
            if not last:
                raise RuntimeError("a watched window needs an earlier window's changes")
            out = self.tmp / f"watchers-{uuid.uuid4().hex[:6]}.json"
            # From the change before the last, so each stream gets one at once: it is open.
            watcher = await WatcherProcess.start(
                self.server.target, self.event_id, int(last) - 1, watchers, out, rpc
            )
            assert watcher.proc.pid is not None
            client_pids = (watcher.proc.pid,)
        try:
            assert self.server.database_url is not None
            database = database_name(self.server.database_url)
            groups = CpuGroups((self.server.pid,), client_pids, database)
            window = await closed_loop(
                self.args.concurrency,
                call,
                duration_s=self.args.duration,
                warmup_s=self.args.warmup,
                call_timeout_s=CALL_TIMEOUT_S,
                cpu=groups,
            )
            seen: dict[str, Any] | None = None
            if watcher is not None:
                await asyncio.sleep(DRAIN_S)
                seen = await watcher.stop()
        finally:
            if watcher is not None:
                await watcher.kill()
        result = scenario_result("BookSeats specific", window, self.args.concurrency)
        result |= {"streams": streams, "watchers": watchers, "rpc": rpc if watchers else None}
        result["audit"] = await audit(self.conn, self.event_id)
        result["disturbed"] = disturbed(result["cpu"], DISTURBED_CORES)
        if seen is not None:
            result["delivery"] = delivery(seen, answered, watchers)
        log(_line(result))
        return result


def delivery(seen: dict[str, Any], answered: dict[int, int], watchers: int) -> dict[str, Any]:
    """What the watchers received of the window's sales, and how fast."""
    to_answer: list[float] = []
    to_change: list[float] = []
    received: list[int] = []
    not_dense = 0
    for records in seen["records"]:
        received.append(len(records))
        sequences = [r[0] for r in records]
        if sequences != sorted(set(sequences)):
            not_dense += 1
        for _, seat_id, mono, lag in records:
            to_change.append(lag / 1e9)
            sold_at = answered.get(seat_id)
            if sold_at is not None:
                to_answer.append((mono - sold_at) / 1e9)
    sold = len(answered)
    return {
        "watchers": watchers,
        "seats_sold": sold,
        # Every watcher must have received every sale (SOLD changes; a seat is sold once
        # per window, the inventory being fresh).
        "complete_watchers": sum(1 for n in received if n == sold),
        "received_min": min(received, default=0),
        "received_max": max(received, default=0),
        "out_of_order_watchers": not_dense,
        "errors": seen["errors"],
        "deliveries": len(to_change),
        "answer_to_delivery": _signed_summary(to_answer),
        "change_time_to_delivery": latency_summary(to_change),
    }


def _signed_summary(samples_s: list[float]) -> dict[str, Any]:
    """latency_summary of samples that may be negative, plus the share that was."""
    out: dict[str, Any] = dict(latency_summary(samples_s))
    out["before_answer_share"] = (
        round(sum(1 for s in samples_s if s < 0) / len(samples_s), 3) if samples_s else None
    )
    return out


def _line(s: dict[str, Any]) -> str:
    extra = ""
    if "delivery" in s:
        d = s["delivery"]
        extra = (
            f" delivery p50={d['answer_to_delivery']['p50_ms']}ms "
            f"p99={d['answer_to_delivery']['p99_ms']}ms "
            f"complete={d['complete_watchers']}/{d['watchers']}"
        )
    rpc = s.get("rpc") or "-"
    return (
        f"streams={s['streams']:<3} watchers={s['watchers']:<3} rpc={rpc:<16} "
        f"ok/s={s['rps_ok']:>7.1f} "
        f"p99={s['p99_ms']}ms{extra}"
    )


# ---------------------------------------------------------------------------------------------
# The run


@contextlib.asynccontextmanager
async def bench_server(
    admin: str, streams: bool, args: argparse.Namespace, tmp: Path
) -> AsyncIterator[Bench]:
    """A fresh database, a server on it (seat streams on or off), the event and buyers."""
    async with throwaway_database(admin) as url:
        server = benchmark_server(
            url,
            tmp,
            admin_email=ADMIN_EMAIL,
            pool_size=args.pool_size,
            env={
                "TICKETING_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS),
                "TICKETING_SEAT_STREAMS": "on" if streams else "off",
                # Above the watchers of a window, whatever the default becomes.
                "TICKETING_MAX_STREAMS": str(max(1000, 2 * args.watchers)),
            },
            name=f"ticketd-streams-{'on' if streams else 'off'}",
        )
        await server.start()
        assert server.admin_password is not None
        channels: list[aio.Channel] = []
        conn = await connect_db(url)
        try:
            inventory = await create_inventory(server.target, server.admin_password, args.places)
            buyers = await register_buyers(server.target, args.concurrency, BUYER_PASSWORD)
            seat_ids = await load_seat_ids(conn, inventory.event_id)
            channels = [channel(server.target) for _ in range(args.channels)]
            yield Bench(server, conn, inventory.event_id, seat_ids, buyers, channels, args, tmp)
        finally:
            for ch in channels:
                await ch.close(None)
            await conn.close()
            await server.stop(timeout=15)


def _mean_ok(windows: list[dict[str, Any]]) -> float | None:
    values = [w["rps_ok"] for w in windows]
    return round(statistics.fmean(values), 1) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _ours_ms_per_booking(windows: list[dict[str, Any]]) -> float | None:
    """Server + PostgreSQL CPU per successful booking (ms), over the windows together: less
    sensitive than ok/s to other work on a shared machine, which slows a window without
    changing what each booking costs our processes."""
    cpu_s = sum(
        (w["cpu"]["cores_used"]["server"] + w["cpu"]["cores_used"]["postgres"])
        * w["cpu"]["window_s"]
        for w in windows
    )
    ok = sum(w["ok"] for w in windows)
    return round(1000 * cpu_s / ok, 2) if ok else None


def _watched_by(windows: list[dict[str, Any]], watchers: int, rpc: str) -> list[dict[str, Any]]:
    # Windows of reports from before WatchSeatBatches have no "rpc": they are WatchSeats.
    return [
        w
        for w in windows
        if w["streams"] == "on" and w["watchers"] == watchers and w.get("rpc", SINGLE) == rpc
    ]


def _watched_ratios(
    kind: list[dict[str, Any]],
    on0: float | None,
    off: float | None,
    cpu_on0: float | None,
    watchers: int,
    suffix: str,
) -> dict[str, Any]:
    """The watched windows of one RPC against the 0-watcher and streams-off windows."""
    onw = _mean_ok(kind)
    cpu_onw = _ours_ms_per_booking(kind)
    both = _ratio(onw, off)
    watched = [w["delivery"] for w in kind if "delivery" in w]
    p99s = [d["answer_to_delivery"]["p99_ms"] for d in watched if d["deliveries"]]
    p50s = [d["answer_to_delivery"]["p50_ms"] for d in watched if d["deliveries"]]
    return {
        f"rps_ok_streams_on_{watchers}_watchers{suffix}": onw,
        f"fan_out_ratio{suffix}": _ratio(onw, on0),
        f"recording_and_fan_out_ratio{suffix}": both,
        f"goal_met{suffix}": None if both is None else both >= GOAL_MIN_RATIO,
        f"server_db_cpu_ms_per_booking_on_{watchers}_watchers{suffix}": cpu_onw,
        f"cpu_fan_out_ratio{suffix}": _ratio(cpu_onw, cpu_on0),
        f"answer_to_delivery_p50_ms_worst_window{suffix}": max(p50s) if p50s else None,
        f"answer_to_delivery_p99_ms_worst_window{suffix}": max(p99s) if p99s else None,
        f"every_watcher_got_every_sale{suffix}": all(
            d["complete_watchers"] == d["watchers"] and not d["errors"] for d in watched
        )
        if watched
        else None,
    }


def ratios(windows: list[dict[str, Any]], watchers: int) -> dict[str, Any]:
    """Mean ok/s per kind of window and the three ratios against the goal, for each RPC
    watched (WatchSeats: no suffix; WatchSeatBatches: `_batches`); the same for server +
    PostgreSQL CPU per booking."""
    kinds = {
        "off": [w for w in windows if w["streams"] == "off"],
        "on0": [w for w in windows if w["streams"] == "on" and w["watchers"] == 0],
    }
    off, on0 = (_mean_ok(kinds[k]) for k in ("off", "on0"))
    cpu_off, cpu_on0 = (_ours_ms_per_booking(kinds[k]) for k in ("off", "on0"))
    out: dict[str, Any] = {
        "rps_ok_streams_off": off,
        "rps_ok_streams_on_0_watchers": on0,
        "recording_ratio": _ratio(on0, off),
        "goal_min_ratio": GOAL_MIN_RATIO,
        "server_db_cpu_ms_per_booking_off": cpu_off,
        "server_db_cpu_ms_per_booking_on_0_watchers": cpu_on0,
        "cpu_recording_ratio": _ratio(cpu_on0, cpu_off),
        "windows_disturbed": sum(1 for w in windows if w["disturbed"]),
    }
    for rpc, suffix in ((SINGLE, ""), (BATCHES, "_batches")):
        kind = _watched_by(windows, watchers, rpc)
        if kind:
            out |= _watched_ratios(kind, on0, off, cpu_on0, watchers, suffix)
    single, batched = (_mean_ok(_watched_by(windows, watchers, r)) for r in RPCS)
    out["batches_vs_single_ratio"] = _ratio(batched, single)
    return out


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; the report as written to --json."""
    admin = admin_url()
    started = time.perf_counter()
    machine = await machine_info(admin, await wait_for_quiet(args.wait_quiet))
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ticketing-bench-watchers-") as tmp:
        if not args.skip_off:
            async with bench_server(admin, False, args, Path(tmp)) as off:
                for _ in range(args.rounds):
                    windows.append(await off.window("off", 0))
        rpcs = list(RPCS) if args.rpc == "both" else [args.rpc]
        async with bench_server(admin, True, args, Path(tmp)) as on:
            for round_ in range(args.rounds):
                windows.append(await on.window("on", 0))
                # Odd rounds the other way round: drift within a round hits both RPCs alike.
                for rpc in rpcs if round_ % 2 == 0 else rpcs[::-1]:
                    windows.append(await on.window("on", args.watchers, rpc))
    return {
        **header(
            "booking throughput with 0 and N seat-stream watchers (WatchSeats, "
            "WatchSeatBatches); sale-to-watcher latency",
            "scripts/bench_watchers",
        ),
        "setup": {
            "servers": "separate processes: python -m ticketd, one per TICKETING_SEAT_STREAMS "
            "setting, each on a throwaway database of its own",
            "db_pool_size": args.pool_size,
            "client": f"one Python process, grpc.aio generated stubs, {args.channels} channels",
            "watchers": f"{args.watchers} streams ({args.rpc}) in a process of their own, one "
            "connection each, opened from the last change before the window",
            "rpc": args.rpc,
            "places": args.places,
            "buyers": args.concurrency,
            "selection": "1 or 2 places per order, uniform over places the client believes free",
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "order": "off x rounds, then on, per round: 0 watchers, then N watchers on each "
            "RPC (WatchSeats first in even rounds, WatchSeatBatches first in odd ones)",
            "reset_between_windows": "orders/tickets deleted, seats AVAILABLE, VACUUM ANALYZE, "
            "CHECKPOINT",
            "delivery": "answer_to_delivery: watcher receive minus BookSeats answer "
            "(CLOCK_MONOTONIC, warm-up sales included); change_time_to_delivery: receive (wall "
            "clock) minus change_time",
        },
        "windows": windows,
        "ratios": ratios(windows, args.watchers),
        # The same over the windows no other work disturbed (DISTURBED_CORES): on a shared
        # machine one disturbed window can move a mean by half.
        "ratios_undisturbed": ratios([w for w in windows if not w["disturbed"]], args.watchers),
        "machine": machine,
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }


def render_table(report: dict[str, Any]) -> str:
    """The windows and the ratios as text."""
    lines = [_line(w) + ("  (disturbed)" if w["disturbed"] else "") for w in report["windows"]]
    lines.append("")
    for key, value in report["ratios"].items():
        lines.append(f"{key}: {value}")
    lines += ["", "undisturbed windows only:"]
    for key, value in report["ratios_undisturbed"].items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the benchmark (or, `watch ...`, be its watcher process)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["watch"]:
        target, event_id, after, count, out, rpc = argv[1:7]
        asyncio.run(watch_process(target, event_id, int(after), int(count), Path(out), rpc))
        return 0
    parser = argparse.ArgumentParser(prog="bench_watchers", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", default=str(DEFAULT_JSON))
    parser.add_argument("--watchers", type=int, default=50, help="streams in watched windows")
    parser.add_argument("--concurrency", type=int, default=64, help="buyers in flight")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--rounds", type=int, default=2, help="windows of each kind")
    parser.add_argument("--places", type=int, default=30_000, help="places of the event")
    parser.add_argument("--pool-size", type=int, default=40, help="TICKETING_DB_POOL_SIZE")
    parser.add_argument("--channels", type=int, default=4, help="booking client channels")
    parser.add_argument("--skip-off", action="store_true", help="no streams-off server")
    parser.add_argument("--wait-quiet", type=float, default=20.0, help="max wait for quiet")
    parser.add_argument(
        "--rpc",
        choices=("both", *RPCS),
        default="both",
        help="what the watched windows' streams use (both: a window of each per round)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 60 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be 1..60 s and --warmup 0..30 s")
    if not 1 <= args.watchers <= 1000 or not 1 <= args.concurrency <= 1024:
        parser.error("--watchers must be 1..1000 and --concurrency 1..1024")
    if not 1 <= args.rounds <= 10 or not 1 <= args.channels <= 64:
        parser.error("--rounds must be 1..10 and --channels 1..64")
    # A window that sells out stops early ("exhausted" in its figures): give it room.
    if args.places < 1_000:
        parser.error("--places must be at least 1000")
    report = asyncio.run(bench(args))
    print(render_table(report))
    write_json(report, Path(args.json))
    log(f"report written to {args.json} ({report['total_runtime_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
