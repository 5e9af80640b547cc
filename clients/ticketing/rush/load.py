"""Load models: a closed loop of N users, or an open loop of R arrivals per second.

Closed loop (`--concurrency N`): N simulated users, each sending its next request as soon as
the previous answer arrives. Throughput adapts to the server, so a slow server is offered
less load; latency is measured from the actual send.

Open loop (`--rate R`): request i is *due* at start + i/R whatever happened before, as in a
real on-sale where the crowd does not wait for the server. Latency is measured from the due
time, not from the moment the harness managed to send it, so when the server (or the
harness itself) falls behind, the queueing shows up in the percentiles instead of being
silently skipped ("coordinated omission"). At most `max_inflight` requests are outstanding;
beyond that the due requests wait, and that wait counts as latency too.

Every run ends by itself: at `duration`, after `requests` sends, or when the scenario has
nothing left to do (sold out, all tickets scanned), whichever comes first. Requests still in
flight then get their deadline to finish; the harness never waits longer than that.

Multi-step users (the checkout: hold, think, pay): an answer may carry a `FollowUp`, the same
user's next request after its think time. It is sent after the delay (also once the run's
bounds are reached: a started checkout is finished, not abandoned by the harness), counted
in `sent`, and timed from when it was due. A `Pause` from the scenario means nothing to send
yet: a closed-loop user waits and asks again; an open-loop arrival that finds nothing to do
is skipped and counted in `clock.skipped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from ticketing.rush.stats import Outcome, Pause, Recorder
from ticketing.rush.workload import Call

# Slack on top of the per-call deadline when draining in-flight calls at the end.
DRAIN_SLACK_S = 5.0


@dataclass(frozen=True)
class LoadPlan:
    """When to send and when to stop. Exactly one of `concurrency` and `rate` is set."""

    concurrency: int | None
    rate: float | None
    duration_s: float | None
    requests: int | None
    warmup_s: float
    timeout_s: float
    max_inflight: int = 10_000
    # Longest think time before a follow-up: the end-of-run drain waits for it too.
    think_max_s: float = 0.0

    @property
    def model(self) -> str:
        """`closed` or `open`."""
        return "open" if self.rate is not None else "closed"


@dataclass
class RunClock:
    """Shared progress counters a live display may read while the run goes on."""

    started: float = 0.0
    sent: int = 0
    inflight: int = 0
    skipped: int = 0
    stop_reason: str = ""
    done: bool = False

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.perf_counter() - self.started if self.started else 0.0


async def _timed(call: Call, recorder: Recorder, clock: RunClock, due_offset: float) -> Outcome:
    """Perform one call and record it; latency runs from `due_offset` seconds after the
    start (the intended send time: the actual one in a closed loop)."""
    clock.inflight += 1
    try:
        outcome = await call()
    except Exception as exc:
        # A bug in the harness (or an unexpected client-side failure) is counted and shown
        # in the report instead of killing one simulated user silently.
        outcome = Outcome("client", "CLIENT_ERROR", type(exc).__name__)
    finally:
        clock.inflight -= 1
    end_offset = time.perf_counter() - clock.started
    latency_us = math.ceil((end_offset - due_offset) * 1e6)
    recorder.record(outcome, due_offset, end_offset, latency_us)
    return outcome


async def _journey(call: Call, recorder: Recorder, clock: RunClock, due_offset: float) -> None:
    """One call and the follow-ups its answers ask for, each timed from when it was due."""
    outcome = await _timed(call, recorder, clock, due_offset)
    while outcome.follow_up is not None:
        step = outcome.follow_up
        await asyncio.sleep(step.delay_s)
        clock.sent += 1
        outcome = await _timed(step.call, recorder, clock, time.perf_counter() - clock.started)


async def run_load(
    plan: LoadPlan,
    next_call: Callable[[], Call | Pause | None],
    recorder: Recorder,
    clock: RunClock,
) -> str:
    """Drive the load until a bound is reached; returns why it stopped
    (`duration`, `requests` or `exhausted`)."""
    clock.started = time.perf_counter()
    if plan.rate is None:
        await _closed(plan, next_call, recorder, clock)
    else:
        await _open(plan, next_call, recorder, clock)
    clock.done = True
    return clock.stop_reason or "duration"


async def _closed(
    plan: LoadPlan,
    next_call: Callable[[], Call | Pause | None],
    recorder: Recorder,
    clock: RunClock,
) -> None:
    deadline = clock.started + plan.duration_s if plan.duration_s is not None else math.inf

    def stop_now() -> bool:
        if time.perf_counter() >= deadline:
            clock.stop_reason = clock.stop_reason or "duration"
        elif plan.requests is not None and clock.sent >= plan.requests:
            clock.stop_reason = clock.stop_reason or "requests"
        return bool(clock.stop_reason)

    async def user() -> None:
        while not stop_now():
            call = next_call()
            if call is None:
                clock.stop_reason = clock.stop_reason or "exhausted"
                return
            if isinstance(call, Pause):
                await asyncio.sleep(min(call.seconds, max(0.0, deadline - time.perf_counter())))
                continue
            clock.sent += 1
            await _journey(call, recorder, clock, time.perf_counter() - clock.started)

    users = [asyncio.create_task(user()) for _ in range(plan.concurrency or 1)]
    # Users run for the whole duration; without one, `requests` and the per-call deadline
    # bound them already (a follow-up adds its think time and one more deadline).
    limit = (
        plan.duration_s + 2 * plan.timeout_s + plan.think_max_s + DRAIN_SLACK_S
        if plan.duration_s is not None
        else None
    )
    await _drain(users, limit)


async def _open(
    plan: LoadPlan,
    next_call: Callable[[], Call | Pause | None],
    recorder: Recorder,
    clock: RunClock,
) -> None:
    assert plan.rate is not None
    rate = plan.rate
    slots = asyncio.Semaphore(plan.max_inflight)
    tasks: set[asyncio.Task[None]] = set()
    # Arrivals due before the end are sent even when late (their lateness is latency). Only
    # when the backlog outlives the end by a whole call deadline does the harness give up on
    # it, and then records every unsent arrival as failed, with the time it waited.
    give_up = (plan.duration_s or math.inf) + plan.timeout_s
    due_total = math.inf
    if plan.duration_s is not None:
        due_total = math.ceil(plan.duration_s * rate)
    if plan.requests is not None:
        due_total = min(due_total, plan.requests)

    async def one(call: Call, due_offset: float) -> None:
        # The slot stays taken through the user's follow-ups: max_inflight bounds users in
        # the middle of something, as it bounds requests in flight without them.
        try:
            await _journey(call, recorder, clock, due_offset)
        finally:
            slots.release()

    i = 0
    while True:
        # Offsets as i / rate, not a running sum, so arrival i is due exactly on schedule
        # however long the run (no drift from accumulated rounding).
        due_offset = i / rate
        if i >= due_total or (plan.duration_s is not None and due_offset >= plan.duration_s):
            clock.stop_reason = clock.stop_reason or (
                "requests" if plan.requests is not None and i >= plan.requests else "duration"
            )
            break
        delay = clock.started + due_offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        waited = time.perf_counter() - clock.started
        try:
            await asyncio.wait_for(slots.acquire(), timeout=max(0.0, give_up - waited))
        except TimeoutError:
            _record_backlog(recorder, clock, i, due_total, rate)
            clock.stop_reason = clock.stop_reason or "duration"
            break
        call = next_call()
        if call is None:
            slots.release()
            clock.stop_reason = clock.stop_reason or "exhausted"
            break
        if isinstance(call, Pause):
            slots.release()
            clock.skipped += 1
            i += 1
            continue
        clock.sent += 1
        i += 1
        task = asyncio.create_task(one(call, due_offset))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await _drain(list(tasks), 2 * plan.timeout_s + plan.think_max_s + DRAIN_SLACK_S)


def _record_backlog(
    recorder: Recorder, clock: RunClock, first: int, due_total: float, rate: float
) -> None:
    """Arrivals first..due_total-1 were never sent (the harness gave up on its backlog):
    record each as CLIENT_BACKLOG with the time it had waited, so they are not omitted."""
    now = time.perf_counter() - clock.started
    last = int(min(due_total, math.ceil(now * rate)))
    for j in range(first, last):
        due = j / rate
        recorder.record(
            Outcome("backlog", "CLIENT_BACKLOG", "NOT_SENT"),
            due,
            now,
            math.ceil((now - due) * 1e6),
        )


async def _drain(tasks: list[asyncio.Task[None]], limit: float | None) -> None:
    """Wait for outstanding work, at most `limit` seconds: every call has its own deadline,
    so the limit only covers an event loop running late; stragglers are cancelled."""
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=limit)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
