"""The password pool: bounded workers, bounded fair queue, fast refusal, cancellation.

Jobs are plain blocking functions gated by threading events, so the tests decide exactly
when each "hash" finishes; nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest

from ticketd.auth.workpool import PasswordWorkPool
from ticketd.errors import Reason, ResourceExhausted


class Gate:
    """Blocking jobs that finish when released, recording their order of start."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.lock = threading.Lock()
        self.events: dict[str, threading.Event] = {}

    def job(self, name: str) -> Callable[[], str]:
        event = self.events.setdefault(name, threading.Event())

        def run() -> str:
            with self.lock:
                self.started.append(name)
            assert event.wait(10)
            return name

        return run

    def release(self, name: str) -> None:
        self.events.setdefault(name, threading.Event()).set()

    def release_all(self) -> None:
        for event in self.events.values():
            event.set()


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


async def test_workers_bound_the_running_jobs_and_the_queue_refuses_fast() -> None:
    pool = PasswordWorkPool(2, 2, per_peer_queue=4)
    gate = Gate()
    try:
        tasks = [asyncio.create_task(pool.run(f"p{i}", gate.job(f"j{i}"))) for i in range(4)]
        await until(lambda: pool.running == 2 and pool.queued == 2)
        with pytest.raises(ResourceExhausted) as err:
            await pool.run("p9", gate.job("refused"))
        assert err.value.reason is Reason.AUTH_BUSY
        assert err.value.retry_after is not None and err.value.retry_after > 0
        assert "refused" not in gate.started
        gate.release_all()
        assert sorted(await asyncio.gather(*tasks)) == ["j0", "j1", "j2", "j3"]
        await until(lambda: pool.running == 0 and pool.queued == 0)
    finally:
        gate.release_all()
        pool.shutdown()


async def test_one_address_cannot_take_the_whole_queue_or_the_last_worker() -> None:
    pool = PasswordWorkPool(2, 8)  # a peer may queue 2 and run 1
    gate = Gate()
    try:
        flood = [asyncio.create_task(pool.run("flood", gate.job(f"f{i}"))) for i in range(3)]
        await until(lambda: pool.running == 1 and pool.queued == 2)
        with pytest.raises(ResourceExhausted):
            await pool.run("flood", gate.job("f-refused"))
        # The second worker was kept for someone else: the victim starts at once.
        victim = asyncio.create_task(pool.run("victim", gate.job("v")))
        await until(lambda: "v" in gate.started)
        gate.release_all()
        await asyncio.gather(*flood, victim)
    finally:
        gate.release_all()
        pool.shutdown()


async def test_waiting_addresses_are_served_in_turn() -> None:
    pool = PasswordWorkPool(1, 8, per_peer_queue=8)
    gate = Gate()
    try:
        first = asyncio.create_task(pool.run("flood", gate.job("f0")))
        await until(lambda: pool.running == 1)
        flood = [asyncio.create_task(pool.run("flood", gate.job(f"f{i}"))) for i in (1, 2, 3)]
        await until(lambda: pool.queued == 3)
        victim = asyncio.create_task(pool.run("victim", gate.job("v")))
        await until(lambda: pool.queued == 4)
        for name in ("f0", "f1", "v", "f2", "f3"):
            gate.release(name)
        await asyncio.gather(first, *flood, victim)
        # One flood job had been handed the worker, then the victim's turn came.
        assert gate.started.index("v") <= 2
    finally:
        gate.release_all()
        pool.shutdown()


async def test_cancelled_callers_free_their_place() -> None:
    pool = PasswordWorkPool(1, 2, per_peer_queue=2)
    gate = Gate()
    try:
        running = asyncio.create_task(pool.run("a", gate.job("r")))
        await until(lambda: pool.running == 1)
        waiting = asyncio.create_task(pool.run("a", gate.job("w")))
        await until(lambda: pool.queued == 1)
        waiting.cancel()
        running.cancel()  # its hash keeps its worker until the thread is done
        await until(lambda: pool.queued == 0)
        assert pool.running == 1
        gate.release("r")
        await until(lambda: pool.running == 0)
        assert "w" not in gate.started
        assert await pool.run("a", lambda: "after") == "after"
    finally:
        gate.release_all()
        pool.shutdown()


async def test_a_failing_job_frees_its_worker() -> None:
    pool = PasswordWorkPool(1, 0)

    def boom() -> None:
        raise ValueError("bad salt")

    try:
        with pytest.raises(ValueError):
            await pool.run("a", boom)
        await until(lambda: pool.running == 0)
        assert await pool.run("a", lambda: 42) == 42
    finally:
        pool.shutdown()


async def test_background_jobs_share_the_same_bound() -> None:
    pool = PasswordWorkPool(2, 0)
    gate = Gate()
    try:
        first = asyncio.create_task(pool.run("a", gate.job("bg"), background=True))
        second = asyncio.create_task(pool.run("b", gate.job("fg")))
        await until(lambda: pool.running == 2)
        with pytest.raises(ResourceExhausted):
            await pool.run("c", gate.job("x"), background=True)
        gate.release_all()
        assert sorted(await asyncio.gather(first, second)) == ["bg", "fg"]
    finally:
        gate.release_all()
        pool.shutdown()


async def test_a_reserved_worker_is_freed_when_no_job_runs_and_runs_only_one_job() -> None:
    pool = PasswordWorkPool(1, 0)
    try:
        with pytest.raises(LookupError):
            async with pool.reserve("a"):
                assert pool.running == 1
                with pytest.raises(ResourceExhausted):  # the only worker is held
                    await pool.run("b", lambda: None)
                raise LookupError("the database lookup failed")
        assert pool.running == 0
        async with pool.reserve("a") as slot:
            assert await slot.run(lambda: 1) == 1
            with pytest.raises(RuntimeError):
                await slot.run(lambda: 2)
        await until(lambda: pool.running == 0)
    finally:
        pool.shutdown()
