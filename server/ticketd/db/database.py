"""The one way the server talks to PostgreSQL: a single asyncpg pool.

The pool holds exactly `pool_size` connections (no overflow): a rush queues for them for at
most `pool_timeout_seconds`, then gets UNAVAILABLE DB_POOL_EXHAUSTED, rather than opening
connections until PostgreSQL refuses. Health pings use one more connection of their own, so
an overloaded pool never makes a healthy database look down: `pool_size + 1` in all.

Connections are handed out by budget. Public (anonymous) reads, `connection(budget=
Budget.PUBLIC)`, may hold at most `public_connections` of the pool at once and queue on their
own semaphore for the rest: a flood of them (GetEvent/ListSeats on a 200,000-place event)
can never take the connections that sign-ins, sales and refunds need. Everything else uses
the STANDARD budget, the whole pool. Either way a wait that outlasts `pool_timeout_seconds`
is UNAVAILABLE DB_POOL_EXHAUSTED, never DB_UNAVAILABLE: the database is not down, the server
is busy.

Every unit of work is `async with db.transaction() as conn:` (one READ COMMITTED transaction,
lock waits and statements kept inside the caller's deadline) or `async with db.connection()`
for autocommit reads. Both turn driver failures into domain errors by SQLSTATE, and only
failures raised while they hold the connection.

asyncpg rather than SQLAlchemy: the hot paths are a handful of hand-written statements, and
asyncpg prepares and caches them per connection with no per-row Python work, no checkout ping
and no reset query on release (see docs/architecture.md). Alembic still runs the migrations,
on a short-lived engine of its own (ticketd.db.migrate).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg

from ticketd.db import sqlstate
from ticketd.db.listener import Listener
from ticketd.db.outbox import Sequencer
from ticketd.deadline import remaining_seconds
from ticketd.errors import Reason, Unavailable
from ticketd.observability import metrics

Connection = Any
"""An asyncpg connection (the library ships no type information)."""


class Budget(enum.Enum):
    """Which share of the pool a unit of work may draw on."""

    STANDARD = "standard"
    """Writes and signed-in calls: the whole pool."""
    PUBLIC = "public"
    """Anonymous public reads: at most `PoolOptions.public_connections` at once."""


@dataclass(frozen=True)
class PoolOptions:
    """Bounds that keep a rush from piling up inside the server."""

    pool_size: int = 20
    pool_timeout_seconds: float = 5
    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 2_000
    public_share_percent: int = 50
    """Most of the pool (in percent, at least one connection) public reads may hold."""
    seat_streams: bool = True
    """Record seat changes for WatchSeats (the connection setting record_seat_changes reads;
    ticketd passes TICKETING_SEAT_STREAMS)."""

    @property
    def public_connections(self) -> int:
        """Connections the PUBLIC budget may hold at once: the rest stays for the others."""
        return max(1, self.pool_size * self.public_share_percent // 100)


def _pool_exhausted() -> Unavailable:
    # Every connection of the budget busy for pool_timeout: the server is overloaded, the
    # database may be fine. Say so, so operators do not chase a database outage.
    return Unavailable(
        "the server is overloaded (no database connection free); retry with backoff",
        reason=Reason.DB_POOL_EXHAUSTED,
    )


def plain_url(url: str) -> str:
    """`postgresql://user:pass@host:port/db`, accepting `postgres://` and `postgresql+driver://`."""
    scheme, sep, rest = url.partition("://")
    base = scheme.split("+", 1)[0]
    if not sep or base not in ("postgresql", "postgres"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {scheme!r}")
    return f"postgresql://{rest}"


def redacted(url: str) -> str:
    """The URL with its password replaced, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class Database:
    """One pool per process, created on first use (so the server can start before PostgreSQL)."""

    def __init__(self, url: str, options: PoolOptions | None = None) -> None:
        self.options = options or PoolOptions()
        self.url = plain_url(url)
        self._server_settings = {
            "application_name": "ticketd",
            # Every lock wait and statement is bounded below typical RPC deadlines, so no
            # transaction outlives its caller by much.
            "statement_timeout": str(self.options.statement_timeout_ms),
            "lock_timeout": str(self.options.lock_timeout_ms),
            "idle_in_transaction_session_timeout": "60000",
            "ticketing.seat_streams": "on" if self.options.seat_streams else "off",
        }
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()
        self._ping_conn: Connection | None = None
        self._ping_lock = asyncio.Lock()
        self._public = asyncio.Semaphore(self.options.public_connections)
        # Streams' wake-ups: one more connection, opened only while something is watched.
        self.listener = Listener(self.url)
        # Numbers committed outbox records (ticketd.db.outbox); its background task runs
        # once started (TicketServer.start).
        self.outbox = Sequencer(self.connection, self.listener)

    @property
    def display_url(self) -> str:
        return redacted(self.url)

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_lock:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self.url,
                        min_size=0,
                        max_size=self.options.pool_size,
                        max_inactive_connection_lifetime=300,
                        timeout=5,
                        server_settings=self._server_settings,
                        reset=_keep_session,
                    )
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self, budget: Budget = Budget.STANDARD) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit: for reads and single-statement writes.

        `budget` PUBLIC first waits for one of the public share's slots, then for a pooled
        connection, both within one `pool_timeout_seconds`."""
        if budget is Budget.PUBLIC:
            started = time.monotonic()
            acquired = False
            try:
                with metrics.pool_wait("public_share"):
                    async with asyncio.timeout(self.options.pool_timeout_seconds):
                        await self._public.acquire()
                        acquired = True
            except TimeoutError:
                # (A slot won at the very instant of the timeout is kept, not leaked.)
                if not acquired:
                    raise _pool_exhausted() from None
            try:
                left = self.options.pool_timeout_seconds - (time.monotonic() - started)
                async with self._pooled(max(0.0, left), budget.value) as conn:
                    yield conn
            finally:
                self._public.release()
        else:
            async with self._pooled(self.options.pool_timeout_seconds, budget.value) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def _pooled(self, wait_seconds: float, budget: str) -> AsyncIterator[Connection]:
        pool = await self._get_pool_or_unavailable()
        try:
            with metrics.pool_wait(budget):
                conn = await pool.acquire(timeout=wait_seconds)
        except TimeoutError:
            raise _pool_exhausted() from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise sqlstate.classify(exc, connection_lost=True) or sqlstate.db_unavailable() from exc
        metrics.DB_POOL_IN_USE.inc()
        try:
            yield conn
        except Exception as exc:
            mapped = sqlstate.classify(exc, connection_lost=_is_lost(conn))
            if mapped is None or mapped is exc:
                raise
            raise mapped from exc
        finally:
            metrics.DB_POOL_IN_USE.dec()
            await pool.release(conn)

    async def _get_pool_or_unavailable(self) -> asyncpg.Pool:
        try:
            return await self._get_pool()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise sqlstate.classify(exc, connection_lost=True) or sqlstate.db_unavailable() from exc

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        """One READ COMMITTED transaction: commits when the block ends normally, rolls back
        on any exception (cancellation included). Lock waits and statements are kept inside
        the current call's deadline."""
        async with self.connection() as conn:
            started = time.perf_counter()
            try:
                async with conn.transaction():
                    await _bound_waits(conn, remaining_seconds(), self.options.lock_timeout_ms)
                    yield conn
                # Committed: it may have recorded outbox changes for the sequencer to number.
                self.outbox.poke()
            finally:
                metrics.DB_TRANSACTION.observe(time.perf_counter() - started)

    @contextlib.asynccontextmanager
    async def single_statement(self) -> AsyncIterator[Connection]:
        """A connection for a unit of work that is ONE writing statement, run in autocommit
        so the statement is its own transaction: one round trip instead of BEGIN, statement,
        COMMIT. The statement must decide everything itself (it writes only when its checks
        hold); reads after it on the same connection are transactions of their own.

        When the current call's deadline is closer than the configured bounds, the block
        runs inside `transaction()` instead, whose tightened lock_timeout and
        statement_timeout need a transaction to live in (the outcome is the same: one
        statement, one transaction)."""
        if _needs_tighter_bounds(remaining_seconds(), self.options.lock_timeout_ms):
            async with self.transaction() as conn:
                yield conn
            return
        async with self.connection() as conn:
            started = time.perf_counter()
            try:
                yield conn
                # The statement committed as it ran: its outbox records wait for numbering
                # (as after transaction()), or watchers would see the sale only at the poll.
                self.outbox.poke()
            finally:
                metrics.DB_TRANSACTION.observe(time.perf_counter() - started)

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query, on a connection outside the pool:
        under overload every pooled connection is busy, and a health check queued behind them
        would report the database down and drain every busy server at once."""

        async def probe() -> None:
            if self._ping_conn is None or self._ping_conn.is_closed():
                self._ping_conn = await asyncpg.connect(
                    self.url, timeout=3, server_settings={"application_name": "ticketd-health"}
                )
            await self._ping_conn.fetchval("SELECT 1")

        async with self._ping_lock:
            try:
                await asyncio.wait_for(probe(), 3)
                return True
            except Exception:  # any failure means "not ready"
                if self._ping_conn is not None:
                    self._ping_conn.terminate()
                    self._ping_conn = None
                return False

    async def refresh_connections(self) -> None:
        """Replace pooled connections on next use (after the database came back)."""
        if self._pool is not None:
            await self._pool.expire_connections()

    async def dispose(self) -> None:
        await self.outbox.stop(last=True)
        await self.listener.close()
        if self._ping_conn is not None:
            self._ping_conn.terminate()
            self._ping_conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


async def _bound_waits(conn: Connection, remaining: float | None, lock_timeout_ms: int) -> None:
    """A caller with less time left than the configured bounds gets tighter ones, so that no
    transaction outlives the RPC that started it (the connection already carries the
    configured lock_timeout and statement_timeout)."""
    if remaining is None or not _needs_tighter_bounds(remaining, lock_timeout_ms):
        return
    budget_ms = int(remaining * 1000)
    lock_ms = max(20, min(lock_timeout_ms, budget_ms // 2))
    stmt_ms = max(50, budget_ms)
    await conn.execute(
        "SELECT set_config('lock_timeout', $1, true), set_config('statement_timeout', $2, true)",
        f"{lock_ms}ms",
        f"{stmt_ms}ms",
    )


def _needs_tighter_bounds(remaining: float | None, lock_timeout_ms: int) -> bool:
    """Whether a caller with `remaining` seconds left needs bounds below the configured
    ones (less than two lock timeouts left)."""
    return remaining is not None and int(remaining * 1000) < lock_timeout_ms * 2


def _is_lost(conn: Connection) -> bool:
    """Whether a pooled connection died (asyncpg detaches a lost one from its proxy)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


async def _keep_session(conn: Connection) -> None:
    """Release without asyncpg's default RESET ALL round trip.

    No unit of work changes session state: settings are SET LOCAL and advisory locks are
    transaction-scoped, and asyncpg itself rolls back an open transaction before this runs.
    """
