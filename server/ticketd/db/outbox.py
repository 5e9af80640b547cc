"""The outbox sequencer: numbers each stream's committed change records (migration 0014).

Writers insert unnumbered records (sequence NULL) in their own transaction and NOTIFY
`ticketing_outbox_pending` with the stream's topic; they share no row. `outbox_sequence
(stream, key)` numbers the records committed so far, one sequencer at a time per stream
(it locks the stream's counter row), and NOTIFYs `ticketing_outbox` with the topic when it
numbered something; readers read numbered records only, so they never see a gap nor a lower
number appear later (the migration says why).

Who runs it, in every ticketd process (several at once is safe, the counter row decides):
- the process's background `Sequencer`, woken by `ticketing_outbox_pending` (and every
  `poll_seconds` it looks for unnumbered records anyway, in case a notification was lost),
  so records are numbered whether anyone watches or not;
- streaming readers, before each read (`Sequencer.catch_up`), so a reader never waits for
  the background task. Calls for one stream in one process are coalesced: a caller waits
  for a run that started after it asked, never for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from ticketd.db.listener import Listener

log = logging.getLogger("ticketd.db.outbox")

PENDING_CHANNEL = "ticketing_outbox_pending"
"""Writers' NOTIFY (at their commit): the topic has unnumbered records."""
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
STREAMS = (SEATS,)


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


async def pending_keys(conn: Any, stream: Stream, limit: int = 1000) -> list[uuid.UUID]:
    """Streams of this kind with unnumbered records (the partial index serves it)."""
    rows = await conn.fetch(
        f"SELECT DISTINCT {stream.key_column} AS key FROM {stream.table} "
        "WHERE sequence IS NULL LIMIT $1",
        limit,
    )
    return [r["key"] for r in rows]


@dataclass
class _Runs:
    """Coalescing state of one stream in this process."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    asked: int = 0
    covered: int = 0
    users: int = 0


class Sequencer:
    """This process's sequencer: `catch_up` for readers, and a background task."""

    def __init__(
        self,
        connect: Callable[[], AbstractAsyncContextManager[Any]],
        listener: Listener,
        *,
        poll_seconds: float = 2.0,
    ) -> None:
        self._connect = connect
        self._listener = listener
        self._poll_seconds = poll_seconds
        self._runs: dict[tuple[str, uuid.UUID], _Runs] = {}
        self._dirty: set[tuple[Stream, uuid.UUID]] = set()
        self._sweep = True
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._by_name = {s.name: s for s in STREAMS}

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

    def start(self) -> None:
        """Start the background task (idempotent)."""
        if self._task is None:
            self._listener.on_channel(PENDING_CHANNEL, self._notified)
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop the background task."""
        self._listener.on_channel(PENDING_CHANNEL, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _notified(self, payload: str) -> None:
        name, _, key = payload.partition(":")
        stream = self._by_name.get(name)
        try:
            parsed = uuid.UUID(key) if stream is not None else None
        except ValueError:
            parsed = None
        if stream is None or parsed is None:
            self._sweep = True  # lost connection (""), or a payload we do not know: look
        else:
            self._dirty.add((stream, parsed))
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            self._wake.clear()
            try:
                await self._listener.ensure_listening(PENDING_CHANNEL)
                if self._sweep or loop.time() >= next_sweep:
                    self._sweep = False
                    next_sweep = loop.time() + self._poll_seconds
                    async with self._connect() as conn:
                        for stream in STREAMS:
                            for key in await pending_keys(conn, stream):
                                self._dirty.add((stream, key))
                while self._dirty:
                    stream, key = self._dirty.pop()
                    await self.catch_up(stream, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next sweep retries; readers catch up themselves
                log.warning("outbox sequencing failed: %s", exc)
                self._sweep = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_sweep - loop.time())):
                    await self._wake.wait()


@contextlib.asynccontextmanager
async def subscribed(
    listener: Listener, stream: Stream, key: uuid.UUID
) -> AsyncIterator[asyncio.Event]:
    """One Event set when the stream has new records, numbered or not (so a reader can
    catch up and read); the listener is made to listen on both channels."""
    wake = asyncio.Event()
    topic = stream.topic(key)
    with (
        listener.subscribe(NUMBERED_CHANNEL, topic, wake),
        listener.subscribe(PENDING_CHANNEL, topic, wake),
    ):
        await listener.ensure_listening(NUMBERED_CHANNEL)
        await listener.ensure_listening(PENDING_CHANNEL)
        yield wake
