"""The outbox sequencer: numbers each stream's committed change records (migration 0014).

Writers insert unnumbered records (sequence NULL) in their own transaction; they share no
row and send no NOTIFY (a NOTIFY serializes every notifying commit of the cluster on one
lock held through the WAL flush: 5x fewer plain inserts per second on the test machine).
`outbox_sequence(stream, key)` numbers the records committed so far, one sequencer at a
time per stream (it locks the stream's counter row), and NOTIFYs `ticketing_outbox` with
the stream's topic when it numbered something; readers read numbered records only, so they
never see a gap nor a lower number appear later (the migration says why).

Who runs it, in every ticketd process (several at once is safe, the counter rows decide):
- the process's background `Sequencer`: poked (in process, no database work) each time one
  of this process's transactions commits, it runs `outbox_sequence_pending()` (every stream
  with unnumbered records, one round trip), at most once per `min_interval` so a busy server
  pays one pass per interval, not one per commit; and every `poll_seconds` anyway, for
  records written by others (another process that died before sequencing, a tool);
- streaming readers, before each read (`Sequencer.catch_up`), so a reader woken by a
  sequencer of another process, or by its poll, never waits for a background pass. Calls for
  one stream in one process are coalesced: a caller waits for a run that started after it
  asked, never for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import uuid
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeAlias, TypeVar

from ticketd.db.listener import Listener

log = logging.getLogger("ticketd.db.outbox")

NUMBERED_CHANNEL = "ticketing_outbox"
"""Sequencers' NOTIFY (at their commit): the topic has new numbered records."""


@dataclass(frozen=True)
class Stream:
    """One kind of stream: its records' table and the column that names one stream."""

    name: str
    table: str
    key_column: str
    pruned: bool = False
    """Whether records older than TICKETING_OUTBOX_RETENTION are deleted (`prune`)."""

    def topic(self, key: uuid.UUID) -> str:
        """The NOTIFY payload of one stream of this kind."""
        return f"{self.name}:{key}"


SEATS = Stream("seats", "seat_changes", "event_id", pruned=True)
"""Per event: every change of a seat's status (WatchSeats)."""
ORDERS = Stream("orders", "order_changes", "stream_key", pruned=True)
"""One stream for all orders (key ALL): confirmations and refunds (WatchOrders)."""
GATES = Stream("gates", "gate_changes", "event_id")
"""Per event: every gate scan, online or uploaded offline (WatchGate)."""
ALL = uuid.UUID(int=0)
"""The key of a stream kind that has one stream only (ORDERS)."""
STREAMS = (SEATS, ORDERS, GATES)
PRUNED = tuple(s for s in STREAMS if s.pruned)
"""The stream kinds `prune` deletes old records of. Not GATES: its records are the scan log
itself (kept, like `scans`), and WatchGate's per-gate counts are their aggregate."""

T = TypeVar("T")
R = TypeVar("R")
Page: TypeAlias = tuple[list[T], int, bool]
"""What a follower's read returns: the records for this reader, the sequence it has read
up to (past others' records it filtered out), and whether more may be there already."""


FOLLOWER_BOUND = 2000
"""Records a follower of a shared tail may have waiting (pages are shared, so this is
references, not copies): one that falls further behind leaves the tail and reads for itself
from where it is, as a new follower's backlog, so it never holds the others nor grows."""
RECENT = 2000
"""Records a shared tail keeps after handing them out, so a follower that ends its backlog
a little behind the tail joins it without reading again."""


@dataclass(frozen=True)
class Tail(Generic[R, T]):
    """How the followers of one stream share its reads (`Sequencer.follow`): `read(after)`
    is one page of the stream's records numbered after `after`, in order, and whether more
    may be there already, the same for every follower (no per-caller filter: the first
    follower's `read` serves all); `sequence(record)` is a record's number; `select(records)`
    is what one follower makes of a page (its filter, its running counts), called with each
    page once, in order. `min_interval`: the tail reads at most once per that many seconds
    (a full page excepted: the rest is read at once), so under load one read, and one page
    for each follower, covers many commits; a quiet stream's change is read when it comes,
    at most `min_interval` after the previous read."""

    read: Callable[[int], Awaitable[tuple[list[R], bool]]]
    sequence: Callable[[R], int]
    select: Callable[[list[R]], list[T]]
    min_interval: float = 0.0


def numbering_ctes(stream: Stream, key: str = "$1") -> tuple[str, str]:
    """CTEs that number the stream's committed records in the statement that uses them,
    and the expression of the stream's last sequence after that; for reads that must be
    consistent with exactly one sequence (a snapshot): the caller's transaction holds the
    counter row (`lock`) and runs them in the same statement, hence the same snapshot, as
    its read. `key` is the statement's parameter naming the stream."""
    ctes = f"""
        _todo AS (
            SELECT id, row_number() OVER (ORDER BY id) AS rn FROM {stream.table}
            WHERE {stream.key_column} = {key} AND sequence IS NULL
        ), _last AS (
            SELECT last_sequence AS n FROM outbox_streams
            WHERE stream = '{stream.name}' AND key = {key}
        ), _numbered AS (
            UPDATE {stream.table} c SET sequence = _last.n + _todo.rn FROM _todo, _last
            WHERE c.id = _todo.id RETURNING 1
        ), _counter AS (
            UPDATE outbox_streams SET last_sequence = last_sequence + (SELECT count(*) FROM _todo)
            WHERE stream = '{stream.name}' AND key = {key} AND EXISTS (SELECT 1 FROM _todo)
            -- (a data-modifying CTE runs to completion, RETURNING included, read or not)
            RETURNING pg_notify('{NUMBERED_CHANNEL}', '{stream.name}:' || {key})
        )"""
    return ctes, "((SELECT n FROM _last) + (SELECT count(*) FROM _todo))"


async def lock(conn: Any, stream: Stream, key: uuid.UUID) -> int:
    """Lock the stream's counter row until the transaction ends (creating it at 0 when
    new); its last sequence."""
    value: int = await conn.fetchval("SELECT outbox_lock($1, $2)", stream.name, key)
    return value


async def sequence(conn: Any, stream: Stream, key: uuid.UUID) -> int:
    """Number the stream's committed records (its own transaction when `conn` is in
    autocommit); the stream's last sequence."""
    value: int = await conn.fetchval("SELECT outbox_sequence($1, $2)", stream.name, key)
    return value


class Pruned(Exception):
    """A reader at `after` cannot go on: records after it, up to at least `through`, were
    pruned (migration 0019)."""

    def __init__(self, after: int, through: int) -> None:
        super().__init__(f"records after {after} up to {through} were pruned")
        self.after = after
        self.through = through


async def _per_stream(conn: Any, select: str, stream: Stream, key: uuid.UUID) -> int:
    """One number of a stream's row (`select` names column and table); 0 without a row."""
    value = await conn.fetchval(f"{select} WHERE stream = $1 AND key = $2", stream.name, key)
    return int(value or 0)


async def pruned_through(conn: Any, stream: Stream, key: uuid.UUID) -> int:
    """Up to where the stream's records may have been pruned (0: none was)."""
    return await _per_stream(conn, "SELECT pruned_through FROM outbox_pruned", stream, key)


async def prune(conn: Any, stream: Stream, keep_seconds: float, limit: int) -> int:
    """Delete at most `limit` of the stream kind's numbered records older than
    `keep_seconds`, oldest first in each stream and never past a younger one (one short
    transaction, in autocommit); how many it deleted (0: nothing to prune now)."""
    if not stream.pruned:
        raise ValueError(f"the {stream.name} stream is never pruned")
    value: int = await conn.fetchval(
        "SELECT outbox_prune($1, make_interval(secs => $2), $3)",
        stream.name,
        float(keep_seconds),
        limit,
    )
    return value


PRUNE_BATCH = 2000
"""Records one prune transaction deletes at most: short enough that the stream readers and
writers it shares the tables with never notice it."""
PRUNE_BATCHES_PER_ROUND = 50
"""Batches one pruning round runs at most (100,000 records): a long backlog is worked off
over several rounds rather than by one process for minutes."""


async def prune_round(
    connect: Callable[[], AbstractAsyncContextManager[Any]], keep_seconds: float
) -> int:
    """One pruning round over every pruned stream kind: batches until nothing is left to
    prune or the round's budget is spent; how many records it deleted."""
    deleted = 0
    async with connect() as conn:
        for stream in PRUNED:
            for _ in range(PRUNE_BATCHES_PER_ROUND):
                n = await prune(conn, stream, keep_seconds, PRUNE_BATCH)
                deleted += n
                if n < PRUNE_BATCH:
                    break
    return deleted


async def last_sequence(conn: Any, stream: Stream, key: uuid.UUID) -> int:
    """The stream's last numbered sequence (0: none yet)."""
    return await _per_stream(conn, "SELECT last_sequence FROM outbox_streams", stream, key)


class _Follower:
    """One stream's reader while it is on the shared tail: the pages waiting for it."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.pages: deque[list[Any]] = deque()
        self.waiting = 0
        self.ready = asyncio.Event()
        self.error: Exception | None = None
        self.dropped = False


class _SharedTail:
    """The one reader of a (stream, key) in this process: it reads each new page once,
    after `head` (the last number it handed out), and hands it to every follower."""

    def __init__(
        self,
        sequencer: Sequencer,
        stream: Stream,
        key: uuid.UUID,
        tail: Tail[Any, Any],
        head: int,
        poll_seconds: float,
    ) -> None:
        self.sequencer = sequencer
        self.stream = stream
        self.key = key
        self.tail = tail
        self.head = head
        self.poll_seconds = poll_seconds
        self.recent: deque[list[Any]] = deque()
        self.recent_count = 0
        self.followers: set[_Follower] = set()
        self.task: asyncio.Task[None] | None = None

    def join(self, follower: _Follower) -> bool:
        """Add a follower that has read up to `follower.after` itself; False when the tail
        is already past it by more than it keeps (the follower reads on by itself)."""
        if follower.after < self.head:
            oldest = self.tail.sequence(self.recent[0][0]) if self.recent else self.head + 1
            if follower.after + 1 < oldest:
                return False
            missed = [
                [r for r in page if self.tail.sequence(r) > follower.after] for page in self.recent
            ]
            if sum(map(len, missed)) > FOLLOWER_BOUND:
                return False  # it would start too far behind: it reads on by itself
            for page in missed:
                if page:
                    follower.pages.append(page)
                    follower.waiting += len(page)
        self.followers.add(follower)
        return True

    def _hand(self, follower: _Follower, page: list[Any]) -> None:
        if follower.waiting + len(page) > FOLLOWER_BOUND:
            # Too far behind: it leaves, its pages are freed, it reads for itself again.
            follower.dropped = True
            follower.pages.clear()
            follower.waiting = 0
            self.followers.discard(follower)
        else:
            follower.pages.append(page)
            follower.waiting += len(page)
        follower.ready.set()

    async def run(self) -> None:
        sequencer = self.sequencer
        loop = asyncio.get_running_loop()
        last_read = -self.tail.min_interval
        try:
            async with subscribed(sequencer._listener, self.stream, self.key) as wake:
                while True:
                    pause = last_read + self.tail.min_interval - loop.time()
                    if pause > 0:
                        # What commits meanwhile is read together, after the pause.
                        await asyncio.sleep(pause)
                    last_read = loop.time()
                    # Cleared before the read: a NOTIFY that lands during it reads again.
                    wake.clear()
                    await sequencer.catch_up(self.stream, self.key)
                    page, more = await self.tail.read(self.head)
                    if page and self.tail.sequence(page[0]) != self.head + 1:
                        # Numbers are dense: the missing ones were pruned (migration 0019).
                        raise Pruned(self.head, self.tail.sequence(page[0]) - 1)
                    if page:
                        self.head = self.tail.sequence(page[-1])
                        self.recent.append(page)
                        self.recent_count += len(page)
                        while self.recent_count - len(self.recent[0]) >= RECENT:
                            self.recent_count -= len(self.recent.popleft())
                        for follower in list(self.followers):
                            self._hand(follower, page)
                    if more:
                        last_read = -self.tail.min_interval  # a full page: on at once
                        continue
                    await sequencer._listener.ensure_listening(NUMBERED_CHANNEL)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.poll_seconds):
                            await wake.wait()
        except Exception as exc:  # every follower ends with it, as its own read would
            sequencer._tails.pop((self.stream.name, self.key), None)
            for follower in self.followers:
                follower.error = exc
                follower.ready.set()
            self.followers.clear()


@dataclass
class _Runs:
    """Coalescing state of one stream in this process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    asked: int = 0
    covered: int = 0
    users: int = 0


class Sequencer:
    """This process's sequencer: `catch_up` for readers, `poke` for writers, and a
    background task."""

    def __init__(
        self,
        connect: Callable[[], AbstractAsyncContextManager[Any]],
        listener: Listener,
        *,
        poll_seconds: float = 1.0,
        min_interval: float = 0.01,
    ) -> None:
        self._connect = connect
        self._listener = listener
        self._poll_seconds = poll_seconds
        self._min_interval = min_interval
        self._runs: dict[tuple[str, uuid.UUID], _Runs] = {}
        self._tails: dict[tuple[str, uuid.UUID], _SharedTail] = {}
        self._poked = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._servers = 0

    def poke(self) -> None:
        """A transaction of this process committed: it may have recorded changes."""
        self._poked.set()

    async def catch_up(self, stream: Stream, key: uuid.UUID) -> None:
        """Return once a sequencer run that started after this call has numbered the
        stream: every record committed before the call is numbered then."""
        slot = (stream.name, key)
        runs = self._runs.get(slot)
        if runs is None:
            runs = self._runs[slot] = _Runs()
        runs.asked += 1
        mine = runs.asked
        runs.users += 1
        try:
            async with runs.lock:
                if runs.covered >= mine:
                    return  # a run that started after we asked has finished meanwhile
                started = runs.asked
                async with self._connect() as conn:
                    await sequence(conn, stream, key)
                runs.covered = started
        finally:
            runs.users -= 1
            if runs.users == 0:
                del self._runs[slot]

    async def follow(
        self,
        stream: Stream,
        key: uuid.UUID,
        after: int,
        read: Callable[[int], Awaitable[Page[T]]],
        *,
        poll_seconds: float,
        closing: asyncio.Event,
        closed: Callable[[int], Exception],
        caught_up: Callable[[int], T] | None = None,
        tail: Tail[Any, T] | None = None,
        pruned: Callable[[Pruned], Exception] | None = None,
    ) -> AsyncGenerator[list[T], None]:
        """A stream's records after `after`, page by page, for as long as the caller reads:
        `read(after)` is called when a NOTIFY says the stream changed (or every
        `poll_seconds`, in case one was lost), each time after `catch_up`. Once the records
        there were at the start are all read, `caught_up(after)` is yielded (when given):
        a filtered reader learns where it stands even when none of them was its own. When
        `closing` is set the generator raises `closed(after)` (the point to resume from).
        When records after the reader's position were pruned (a reader behind the stream's
        retention, at the start or on the way) it raises `pruned(Pruned)` (Pruned itself
        without it), before it yields anything past the hole.

        With `tail`, the follower reads with `read` only until it has what there was (its
        backlog), then joins the stream's shared tail in this process: one reader per
        (stream, key) reads each new page once and hands it to every follower, which keeps
        the records after its own position and makes its records of them with
        `tail.select`. The tail's pages are numbered densely and read in order, so a
        follower gets every record after its position once, in order, whoever joined when."""
        fail = pruned or (lambda exc: exc)
        if tail is not None:
            async for page in self._follow_shared(
                stream, key, after, read, tail, poll_seconds, closing, closed, caught_up, fail
            ):
                yield page
            return
        marker = caught_up
        async with subscribed(self._listener, stream, key) as wake:
            while True:
                if closing.is_set():
                    raise closed(after)
                # Cleared before the read: a NOTIFY that lands during it makes us read again.
                wake.clear()
                await self.catch_up(stream, key)
                records, after, more = await self._read_kept(stream, key, after, read, fail)
                if marker is not None and not more:
                    records = [*records, marker(after)]
                    marker = None
                if records:
                    yield records
                if more:
                    continue
                await self._listener.ensure_listening(NUMBERED_CHANNEL)
                waits = [asyncio.ensure_future(closing.wait()), asyncio.ensure_future(wake.wait())]
                try:
                    await asyncio.wait(
                        waits, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    for task in waits:
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task

    async def _follow_shared(
        self,
        stream: Stream,
        key: uuid.UUID,
        after: int,
        read: Callable[[int], Awaitable[Page[T]]],
        tail: Tail[Any, T],
        poll_seconds: float,
        closing: asyncio.Event,
        closed: Callable[[int], Exception],
        caught_up: Callable[[int], T] | None,
        fail: Callable[[Pruned], Exception],
    ) -> AsyncGenerator[list[T], None]:
        marker = caught_up
        follower: _Follower | None = None
        shared: _SharedTail | None = None
        # Shutdown wakes a follower waiting for the tail (one task per follower, not per wait).
        bell = asyncio.Event()
        stop = asyncio.ensure_future(closing.wait())
        stop.add_done_callback(lambda _: bell.set())
        try:
            while True:
                if closing.is_set():
                    raise closed(after)
                if follower is None:
                    # The backlog (or a follower dropped for falling behind): read it here.
                    await self.catch_up(stream, key)
                    records, after, more = await self._read_kept(stream, key, after, read, fail)
                    if marker is not None and not more:
                        records = [*records, marker(after)]
                        marker = None
                    if records:
                        yield records
                    if not more:
                        follower, shared = self._join(stream, key, tail, after, poll_seconds)
                        if follower is not None:
                            follower.ready = bell
                    continue
                if follower.error is not None:
                    error = follower.error
                    # A hole the tail met is this follower's from where it is.
                    raise fail(Pruned(after, error.through)) if isinstance(error, Pruned) else error
                if follower.dropped:
                    if shared is not None:
                        self._leave(shared, follower)  # the tail may have no one else now
                    follower = shared = None
                    continue
                if not follower.pages:
                    bell.clear()
                    if not follower.pages and follower.error is None and not follower.dropped:
                        await bell.wait()
                    continue
                page = follower.pages.popleft()
                follower.waiting -= len(page)
                page = [r for r in page if tail.sequence(r) > after]
                if not page:
                    continue
                after = tail.sequence(page[-1])
                records = tail.select(page)
                if records:
                    yield records
        finally:
            stop.cancel()
            if follower is not None and shared is not None:
                self._leave(shared, follower)

    async def _read_kept(
        self,
        stream: Stream,
        key: uuid.UUID,
        after: int,
        read: Callable[[int], Awaitable[Page[T]]],
        fail: Callable[[Pruned], Exception],
    ) -> Page[T]:
        """A reader's own `read(after)`, refused when records after `after` were pruned.
        Asked after the read: `pruned_through` only grows, so if it is not past `after`
        now, it was not when the read ran, and the read missed nothing (a reader filtering
        by caller cannot see holes itself, so it is asked rather than inferred)."""
        page = await read(after)
        if stream.pruned:
            async with self._connect() as conn:
                through = await pruned_through(conn, stream, key)
            if through > after:
                raise fail(Pruned(after, through))
        return page

    def shared_followers(self, stream: Stream, key: uuid.UUID) -> int:
        """How many followers of the stream are on its shared tail in this process now (0:
        no tail); one reader serves them all."""
        shared = self._tails.get((stream.name, key))
        return len(shared.followers) if shared is not None else 0

    def _join(
        self, stream: Stream, key: uuid.UUID, tail: Tail[Any, Any], after: int, poll_seconds: float
    ) -> tuple[_Follower | None, _SharedTail | None]:
        """Put a follower at `after` on the stream's shared tail, starting one at `after`
        when there is none (no await from the follower's last read to here: the tail reads
        on from a number the follower had); (None, None) when the tail is too far ahead."""
        slot = (stream.name, key)
        follower = _Follower(after)
        shared = self._tails.get(slot)
        if shared is None:
            shared = self._tails[slot] = _SharedTail(self, stream, key, tail, after, poll_seconds)
            shared.followers.add(follower)
            # A context of its own: it must not inherit the first caller's deadline.
            shared.task = asyncio.create_task(shared.run(), context=contextvars.Context())
            return follower, shared
        if shared.join(follower):
            return follower, shared
        return None, None

    def _leave(self, shared: _SharedTail, follower: _Follower) -> None:
        """A follower is gone (cancelled, ended, closed); the tail stops with its last."""
        shared.followers.discard(follower)
        slot = (shared.stream.name, shared.key)
        if not shared.followers and self._tails.get(slot) is shared:
            del self._tails[slot]
            if shared.task is not None:
                shared.task.cancel()

    def start(self) -> None:
        """A server on this database started: run the background task (once, however many
        servers share the database)."""
        self._servers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self, *, last: bool = False) -> None:
        """A server on this database stopped: the task stops with the last of them (or at
        once with `last`, when the database itself is disposed), so stopping one of two
        servers sharing a database never leaves the other's streams unnumbered; so do the
        shared tails (a follower still on one goes back to reading for itself, and meets
        the closed database there)."""
        self._servers = 0 if last else max(0, self._servers - 1)
        if self._servers == 0:
            for shared in list(self._tails.values()):
                if shared.task is not None:
                    shared.task.cancel()
                for follower in shared.followers:
                    follower.dropped = True
                    follower.ready.set()
            self._tails.clear()
        if self._servers == 0 and self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await self._poked.wait()
            # Cleared before the pass: a commit during it asks for one more.
            self._poked.clear()
            try:
                async with self._connect() as conn:
                    await conn.fetchval("SELECT outbox_sequence_pending()")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next pass retries; readers catch up themselves
                log.warning("outbox sequencing failed: %s", exc)
            # At most one pass per interval: under load one pass numbers many commits.
            await asyncio.sleep(self._min_interval)


@contextlib.asynccontextmanager
async def subscribed(
    listener: Listener, stream: Stream, key: uuid.UUID
) -> AsyncIterator[asyncio.Event]:
    """An Event set when a sequencer (of any process) numbered records of the stream;
    the listener is made to listen."""
    with listener.subscribe(NUMBERED_CHANNEL, stream.topic(key)) as wake:
        await listener.ensure_listening(NUMBERED_CHANNEL)
        yield wake
