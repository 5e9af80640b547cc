"""LISTEN/NOTIFY wake-ups for streaming readers, on one connection of its own.

Sequencers NOTIFY a channel with a key (ticketd.db.outbox: `ticketing_outbox`, the
stream's topic `<stream>:<key>`) when they commit numbers. Readers `subscribe(channel,
key)` and wait on the Event they get: it is set when a notification for their key
arrives, and they read the outbox themselves. A
notification is only a hint: it may be lost (the listening connection dropped, PostgreSQL
restarted), so readers also wake on a timeout and poll; nothing is delivered through the
notification itself, so losing one can delay a change but never lose it.

The connection is opened on first subscription (a server nobody watches holds none) and
reopened on the next subscription or wait after it was lost. It is outside the pool, like
the health connection: a pool full of sales never delays a wake-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import asyncpg

log = logging.getLogger("ticketd.db.listener")


class Listener:
    """Per-process fan-out of NOTIFY hints to the waiting readers of each key."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Any = None
        self._channels: set[str] = set()
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = collections.defaultdict(set)
        self._lock = asyncio.Lock()

    @contextlib.contextmanager
    def subscribe(self, channel: str, key: str) -> Iterator[asyncio.Event]:
        """An Event set whenever `channel` is notified with `key`, until the block ends.
        Call `ensure_listening(channel)` before relying on it (readers poll anyway)."""
        wake = asyncio.Event()
        self._waiters[(channel, key)].add(wake)
        try:
            yield wake
        finally:
            waiters = self._waiters.get((channel, key))
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[(channel, key)]

    async def ensure_listening(self, channel: str) -> bool:
        """Make sure the connection is up and LISTENs on `channel`; False when PostgreSQL
        cannot be reached now (readers then poll)."""
        if self._conn is not None and not self._conn.is_closed() and channel in self._channels:
            return True
        async with self._lock:
            try:
                if self._conn is None or self._conn.is_closed():
                    self._channels.clear()
                    self._conn = await asyncpg.connect(
                        self._url,
                        timeout=3,
                        server_settings={"application_name": "ticketd-listen"},
                    )
                    self._conn.add_termination_listener(self._lost)
                if channel not in self._channels:
                    await self._conn.add_listener(channel, self._notified)
                    self._channels.add(channel)
                return True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("cannot LISTEN on %s (%s); streams poll until it can", channel, exc)
                if self._conn is not None:
                    self._conn.terminate()
                self._conn = None
                self._channels.clear()
                return False

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        for wake in self._waiters.get((channel, payload), ()):
            wake.set()

    def _lost(self, conn: Any) -> None:
        # Wake everyone: they re-read the outbox (nothing is lost), and the next wait
        # reconnects.
        self._channels.clear()
        for waiters in self._waiters.values():
            for wake in waiters:
                wake.set()

    async def close(self) -> None:
        """Drop the listening connection (server shutdown)."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
            self._channels.clear()
