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
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

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

    def topic(self, key: uuid.UUID) -> str:
        """The NOTIFY payload of one stream of this kind."""
        return f"{self.name}:{key}"


SEATS = Stream("seats", "seat_changes", "event_id")
"""Per event: every change of a seat's status (WatchSeats)."""
ORDERS = Stream("orders", "order_changes", "stream_key")
"""One stream for all orders (key ALL): confirmations and refunds (WatchOrders)."""
GATES = Stream("gates", "gate_changes", "event_id")
"""Per event: every gate scan, online or uploaded offline (WatchGate)."""
ALL = uuid.UUID(int=0)
"""The key of a stream kind that has one stream only (ORDERS)."""
STREAMS = (SEATS, ORDERS, GATES)

T = TypeVar("T")
Page: TypeAlias = tuple[list[T], int, bool]
"""What a follower's read returns: the records for this reader, the sequence it has read
up to (past others' records it filtered out), and whether more may be there already."""


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


async def last_sequence(conn: Any, stream: Stream, key: uuid.UUID) -> int:
    """The stream's last numbered sequence (0: none yet)."""
    value = await conn.fetchval(
        "SELECT last_sequence FROM outbox_streams WHERE stream = $1 AND key = $2",
        stream.name,
        key,
    )
    return int(value or 0)


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
    ) -> AsyncGenerator[list[T], None]:
        """A stream's records after `after`, page by page, for as long as the caller reads:
        `read(after)` is called when a NOTIFY says the stream changed (or every
        `poll_seconds`, in case one was lost), each time after `catch_up`. Once the records
        there were at the start are all read, `caught_up(after)` is yielded (when given):
        a filtered reader learns where it stands even when none of them was its own. When
        `closing` is set the generator raises `closed(after)` (the point to resume from)."""
        marker = caught_up
        async with subscribed(self._listener, stream, key) as wake:
            while True:
                if closing.is_set():
                    raise closed(after)
                # Cleared before the read: a NOTIFY that lands during it makes us read again.
                wake.clear()
                await self.catch_up(stream, key)
                records, after, more = await read(after)
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

    def start(self) -> None:
        """A server on this database started: run the background task (once, however many
        servers share the database)."""
        self._servers += 1
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self, *, last: bool = False) -> None:
        """A server on this database stopped: the task stops with the last of them (or at
        once with `last`, when the database itself is disposed), so stopping one of two
        servers sharing a database never leaves the other's streams unnumbered."""
        self._servers = 0 if last else max(0, self._servers - 1)
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
