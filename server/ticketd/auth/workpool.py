"""The bounded, fair pool that runs every password hash (bcrypt) of the process.

Why a pool of its own: one bcrypt at cost 12 is a quarter to half a second of CPU. Run on the
default executor, 50 concurrent bogus Logins queued 13 s of work in front of a real user's
Login and, through grpc's concurrency limit, in front of every other call. Here:

- at most `workers` hashes run at once, in threads of their own (bcrypt releases the GIL);
  jobs the caller marks `background` (an address that has used most of its sign-in burst,
  see `ticketd.auth.throttle`) run in threads at a lower OS priority, so under CPU
  contention bookings, PostgreSQL and ordinary sign-ins win over a flood's hashes;
- at most `queue` jobs wait; anything beyond is refused at once with RESOURCE_EXHAUSTED
  `AUTH_BUSY` and a RetryInfo estimated from the measured hash time;
- one caller address may hold at most a quarter of the queue, and (with two workers or more)
  never the last free worker; waiting jobs are dispatched round-robin across addresses. So a
  flood from one address costs another address at most the wait for one running hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ticketd.errors import Reason, ResourceExhausted

T = TypeVar("T")

# Niceness of background password threads: above the event loop's 0, so CPU contention is
# lost by a flood's hashes rather than by bookings. Linux applies it per thread; a thread
# cannot lower its niceness again without privileges, hence two sets of threads.
_BACKGROUND_NICENESS = 10
# Starting estimate of one hash (cost 12 on a small machine), refined as hashes complete.
_INITIAL_HASH_SECONDS = 0.3


def _lower_priority() -> None:
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _BACKGROUND_NICENESS)


class PasswordWorkPool:
    """Runs blocking password functions with bounded concurrency and a bounded, fair queue.

    Per process (see docs/scaling.md): N server processes hash N x `workers` at once.
    """

    def __init__(self, workers: int, queue: int, *, per_peer_queue: int | None = None) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be >= 1 and queue >= 0")
        self.workers = workers
        self.queue = queue
        self.per_peer_queue = per_peer_queue if per_peer_queue is not None else max(1, queue // 4)
        # With one worker there is nothing to reserve: the single worker serves everyone.
        self.per_peer_running = max(1, workers - 1)
        # The slot accounting below bounds the total; each executor can hold all of it.
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bcrypt")
        self._background = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="bcrypt-bg", initializer=_lower_priority
        )
        self._running = 0
        self._running_by_peer: dict[str, int] = {}
        # Waiting jobs per address; the dict's order is the round-robin order.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._queued = 0
        self._hash_seconds = _INITIAL_HASH_SECONDS

    @property
    def running(self) -> int:
        """Hashes computing now."""
        return self._running

    @property
    def queued(self) -> int:
        """Jobs waiting for a worker."""
        return self._queued

    def retry_after(self) -> float:
        """Seconds until a worker is likely free for a new job (for RetryInfo)."""
        return round((self._queued / self.workers + 1) * self._hash_seconds, 3)

    def _may_start(self, peer: str) -> bool:
        return (
            self._running < self.workers
            and self._running_by_peer.get(peer, 0) < self.per_peer_running
        )

    def _start(self, peer: str) -> None:
        self._running += 1
        self._running_by_peer[peer] = self._running_by_peer.get(peer, 0) + 1

    def _finish(self, peer: str, seconds: float | None) -> None:
        self._running -= 1
        left = self._running_by_peer[peer] - 1
        if left:
            self._running_by_peer[peer] = left
        else:
            del self._running_by_peer[peer]
        if seconds is not None:
            # An exponentially weighted mean: follows load changes within a few hashes.
            self._hash_seconds = 0.8 * self._hash_seconds + 0.2 * seconds
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand free workers to waiting jobs, one address at a time in turn."""
        while self._running < self.workers and self._waiting:
            for peer in list(self._waiting):
                if self._may_start(peer):
                    break
            else:
                return  # every waiting address is at its share; a finishing job retries
            waiters = self._waiting[peer]
            waiter = waiters.popleft()
            self._queued -= 1
            if waiters:
                self._waiting.move_to_end(peer)
            else:
                del self._waiting[peer]
            self._start(peer)
            waiter.set_result(None)

    async def _acquire(self, peer: str) -> None:
        if not self._waiting.get(peer) and self._may_start(peer):
            self._start(peer)
            return
        waiting_here = len(self._waiting.get(peer, ()))
        if self._queued >= self.queue or waiting_here >= self.per_peer_queue:
            raise ResourceExhausted(
                "the server is busy checking passwords; retry shortly",
                reason=Reason.AUTH_BUSY,
                retry_after=self.retry_after(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(peer, deque()).append(waiter)
        self._queued += 1
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                # A worker was handed over just as the caller gave up: pass it on.
                self._finish(peer, None)
            else:
                waiters = self._waiting.get(peer)
                if waiters is not None and waiter in waiters:
                    waiters.remove(waiter)
                    self._queued -= 1
                    if not waiters:
                        del self._waiting[peer]
            raise

    @contextlib.asynccontextmanager
    async def reserve(self, peer: str, *, background: bool = False) -> AsyncIterator[PasswordSlot]:
        """A worker for one job of the caller at address `peer`, held from now on.

        Waits in the fair queue, or raises ResourceExhausted AUTH_BUSY at once when the
        queue (or this address's share of it) is full. Reserve before other work of the
        call (Login reserves before its database lookup), so that a call the pool would
        refuse is refused before it costs anything. With `background`, the job runs at a
        lower CPU priority. The worker is freed when the job's thread ends, or at the end of
        the block if no job was run.
        """
        await self._acquire(peer)
        slot = PasswordSlot(self, peer, self._background if background else self._executor)
        try:
            yield slot
        finally:
            slot._close()

    async def run(
        self, peer: str, fn: Callable[..., T], *args: object, background: bool = False
    ) -> T:
        """`fn(*args)` in a password worker for address `peer` (reserve, then run).

        If the caller is cancelled, a started hash still finishes in its thread and only
        then frees its worker, so the bound always holds.
        """
        async with self.reserve(peer, background=background) as slot:
            return await slot.run(fn, *args)

    def shutdown(self) -> None:
        """Stop the worker threads once running jobs end (for tools that build many pools)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)


class PasswordSlot:
    """One reserved password worker: runs exactly one job, then frees itself."""

    def __init__(self, pool: PasswordWorkPool, peer: str, executor: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._peer = peer
        self._executor = executor
        self._state = "held"  # -> "running" (the job's thread frees it) or "closed"

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """`fn(*args)` in this slot's worker thread."""
        if self._state != "held":
            raise RuntimeError("a password slot runs one job")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        pool, peer = self._pool, self._peer
        job: Future[T] = self._executor.submit(fn, *args)
        self._state = "running"

        def done(finished: Future[T]) -> None:
            elapsed = None if finished.cancelled() else time.perf_counter() - started
            # The callback runs in the worker thread; the accounting belongs to the loop.
            with contextlib.suppress(RuntimeError):  # the loop is gone: nothing to account
                loop.call_soon_threadsafe(pool._finish, peer, elapsed)

        job.add_done_callback(done)
        return await asyncio.wrap_future(job)

    def _close(self) -> None:
        if self._state == "held":
            self._pool._finish(self._peer, None)
        if self._state != "running":
            self._state = "closed"
