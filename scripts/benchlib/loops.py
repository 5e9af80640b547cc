"""Load drivers: a closed loop of N workers, or an open loop of R arrivals per second.

Both call `call(index) -> Outcome` (None: nothing left to do, the loop stops as `exhausted`)
and return a `Window` of what completed in the measured part. Both are bounded in time and
in count: no call is sent after `warmup_s + duration_s` or after `max_calls` sends, every
call is expected to carry its own deadline (`call_timeout_s`), and whatever is still
running a deadline plus DRAIN_SLACK_S after the end is cancelled.

- Closed loop: each worker sends its next call when the previous one answered; latency runs
  from the actual send; the window holds calls *completed* between the warm-up and the end
  (what the server sustained), as a closed loop's throughput is its completion rate.
- Open loop: call i is due at start + i / rate whatever happened before; latency runs from
  that intended send time, so when the server (or the client) falls behind, the wait shows
  up in the percentiles instead of being omitted ("coordinated omission"). At most
  `max_inflight` calls are outstanding; a due call waiting for a slot waits on the clock.
  The window holds the calls *due* after the warm-up, however late they completed; arrivals
  never sent because the backlog outlived the end by a call deadline count as
  `CLIENT/BACKLOG`, calls cancelled at the drain as `CLIENT/CANCELLED`.

With `cpu` groups, CPU is sampled at the start and the end of the measured part
(see `scripts.benchlib.cpu`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from scripts.benchlib.cpu import CpuGroups, CpuSample, cpu_between, sample
from scripts.benchlib.stats import latency_summary

DRAIN_SLACK_S = 5.0
BACKLOG = "CLIENT/BACKLOG"
CANCELLED = "CLIENT/CANCELLED"


@dataclass(frozen=True)
class Outcome:
    """How one call ended: `status` "OK" or "CODE/REASON"; `items` what it produced (e.g.
    tickets booked); `message` the server's text, kept once per status as an example."""

    status: str = "OK"
    items: int = 0
    message: str = ""


Call = Callable[[int], Awaitable[Outcome | None]]


@dataclass
class Window:
    """The calls of a loop's measured part."""

    model: str
    duration_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    messages: dict[str, str] = field(default_factory=dict)
    items: int = 0
    sent: int = 0
    warmup_calls: int = 0
    stop_reason: str = ""
    cpu: dict[str, Any] | None = None

    def add(self, outcome: Outcome, latency_s: float) -> None:
        """Count one measured call."""
        self.latencies.append(latency_s)
        self.statuses[outcome.status] += 1
        self.items += outcome.items
        if outcome.message:
            self.messages.setdefault(outcome.status, outcome.message)

    @property
    def calls(self) -> int:
        """Measured calls."""
        return len(self.latencies)

    @property
    def ok(self) -> int:
        """Measured calls that ended OK."""
        return self.statuses.get("OK", 0)

    def figures(self) -> dict[str, Any]:
        """Calls, rates over the measured duration, latency summary and statuses."""
        span = self.duration_s or math.nan
        return {
            "load_model": self.model,
            "measured_s": round(self.duration_s, 3),
            "calls": self.calls,
            "ok": self.ok,
            "rps_ok": round(self.ok / span, 1) if self.duration_s else 0.0,
            "rps_all": round(self.calls / span, 1) if self.duration_s else 0.0,
            "items_per_s": round(self.items / span, 1) if self.duration_s else 0.0,
            **latency_summary(self.latencies),
            "statuses": dict(self.statuses.most_common()),
            "stop_reason": self.stop_reason,
        }


async def _perform(call: Call, index: int) -> Outcome | None:
    try:
        return await call(index)
    except Exception as exc:
        # A bug in the benchmark or an unexpected client-side failure is counted and shown
        # instead of killing one worker silently.
        return Outcome(f"CLIENT_ERROR/{type(exc).__name__}", message=str(exc)[:200])


class _CpuWindow:
    """Samples CPU at `begin` and at `end` or when told the loop finished, whichever first."""

    def __init__(self, groups: CpuGroups | None, begin: float, end: float) -> None:
        self.finished = asyncio.Event()
        self.task = asyncio.create_task(self._run(groups, begin, end)) if groups else None

    async def _run(self, groups: CpuGroups, begin: float, end: float) -> tuple[CpuSample, ...]:
        await asyncio.sleep(max(0.0, begin - time.perf_counter()))
        first = sample(groups)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), max(0.0, end - time.perf_counter()))
        return first, sample(groups)

    async def result(self, calls: int) -> dict[str, Any] | None:
        self.finished.set()
        if self.task is None:
            return None
        first, last = await self.task
        return cpu_between(first, last, calls)


async def _drain(tasks: list[asyncio.Task[None]], limit_s: float) -> None:
    """Wait at most `limit_s` for `tasks`, then cancel whatever still runs (every call has
    its own deadline, so this only catches an event loop running late)."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=limit_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def closed_loop(
    concurrency: int,
    call: Call,
    *,
    duration_s: float,
    call_timeout_s: float,
    warmup_s: float = 0.0,
    max_calls: int | None = None,
    cpu: CpuGroups | None = None,
) -> Window:
    """`concurrency` workers calling back to back (worker index as the argument) for
    `warmup_s + duration_s`; the window holds the calls completed after the warm-up."""
    window = Window("closed")
    start = time.perf_counter()
    t_measure, t_stop = start + warmup_s, start + warmup_s + duration_s
    last_done = t_measure
    probe = _CpuWindow(cpu, t_measure, t_stop)

    def stopping() -> bool:
        if time.perf_counter() >= t_stop:
            window.stop_reason = window.stop_reason or "duration"
        elif max_calls is not None and window.sent >= max_calls:
            window.stop_reason = window.stop_reason or "count"
        return bool(window.stop_reason)

    async def worker(i: int) -> None:
        nonlocal last_done
        while not stopping():
            window.sent += 1
            t0 = time.perf_counter()
            outcome = await _perform(call, i)
            t1 = time.perf_counter()
            if outcome is None:
                window.stop_reason = window.stop_reason or "exhausted"
                return
            if t_measure <= t1 < t_stop:
                window.add(outcome, t1 - t0)
                last_done = max(last_done, t1)
            elif t1 < t_measure:
                window.warmup_calls += 1

    workers = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    await _drain(workers, warmup_s + duration_s + call_timeout_s + DRAIN_SLACK_S)
    # Stopped early (count, exhausted): the window ends with the last measured answer.
    window.duration_s = (t_stop if window.stop_reason == "duration" else last_done) - t_measure
    window.cpu = await probe.result(window.calls)
    return window


async def open_loop(
    rate: float,
    call: Call,
    *,
    duration_s: float,
    call_timeout_s: float,
    warmup_s: float = 0.0,
    max_calls: int | None = None,
    max_inflight: int = 1_000,
    cpu: CpuGroups | None = None,
) -> Window:
    """Call i (arrival index as the argument) is due at start + i / rate until
    `warmup_s + duration_s`; latency runs from the due time; the window holds the calls due
    after the warm-up."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    window = Window("open", duration_s=duration_s)
    start = time.perf_counter()
    run_s = warmup_s + duration_s
    due_total = math.ceil(run_s * rate)
    if max_calls is not None:
        due_total = min(due_total, max_calls)
    slots = asyncio.Semaphore(max_inflight)
    probe = _CpuWindow(cpu, start + warmup_s, start + run_s)
    tasks: list[asyncio.Task[None]] = []

    def record(due: float, outcome: Outcome) -> None:
        if due >= warmup_s:
            window.add(outcome, time.perf_counter() - start - due)
        else:
            window.warmup_calls += 1

    async def one(i: int, due: float) -> None:
        try:
            outcome = await _perform(call, i)
        except asyncio.CancelledError:
            record(due, Outcome(CANCELLED))  # cut off at the drain: still counted
            raise
        finally:
            slots.release()
        if outcome is None:
            window.stop_reason = window.stop_reason or "exhausted"
        else:
            record(due, outcome)

    i = 0
    while i < due_total and not window.stop_reason:
        # i / rate, not a running sum: arrival i is due exactly on schedule, no drift.
        due = i / rate
        delay = start + due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        give_up = start + run_s + call_timeout_s - time.perf_counter()
        try:
            await asyncio.wait_for(slots.acquire(), timeout=max(0.0, give_up))
        except TimeoutError:
            for j in range(i, due_total):  # never sent: counted, with the time they waited
                record(j / rate, Outcome(BACKLOG))
            window.stop_reason = "backlog"
            break
        window.sent += 1
        tasks.append(asyncio.create_task(one(i, due)))
        i += 1
    window.stop_reason = window.stop_reason or ("count" if i == max_calls else "duration")
    await _drain(tasks, call_timeout_s + DRAIN_SLACK_S)
    window.cpu = await probe.result(window.calls)
    return window
