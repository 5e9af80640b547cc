"""Database access: SQLAlchemy sessions for most RPCs, a plain asyncpg pool for hot paths.

Two pools on purpose. SQLAlchemy's pool pings every connection on checkout (BEGIN; ';';
ROLLBACK), which a profile of the booking benchmark showed to be 13% of server time on the
hottest path, twice per call. The asyncpg pool used by bookings, gate scans and the per-call
role lookup detects dead connections from the socket instead and skips the reset query on
release, so a booking costs only its own statements.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from ticketd.errors import Unavailable


def async_url(url: str) -> URL:
    """Accept the standard `postgresql://user:pass@host:port/db` form and pick asyncpg."""
    parsed = make_url(url.replace("postgres://", "postgresql://", 1))
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, got {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+asyncpg")


@dataclass(frozen=True)
class PoolOptions:
    """Bounds that keep a rush from piling up inside the server."""

    pool_size: int = 20
    pool_timeout_seconds: int = 5
    statement_timeout_ms: int = 10_000
    lock_timeout_ms: int = 2_000


class Database:
    """One engine per process; `session()` gives each RPC its own short-lived session."""

    def __init__(self, url: str, options: PoolOptions | None = None) -> None:
        opts = options or PoolOptions()
        self.options = opts
        self.url = async_url(url)
        self._server_settings = {
            "application_name": "ticketd",
            # Every lock wait and statement is bounded below typical RPC deadlines, so no
            # transaction outlives its caller by much.
            "statement_timeout": str(opts.statement_timeout_ms),
            "lock_timeout": str(opts.lock_timeout_ms),
            "idle_in_transaction_session_timeout": "60000",
        }
        self._raw_pool: asyncpg.Pool | None = None
        self._raw_pool_lock = asyncio.Lock()
        self._ping_conn: asyncpg.Connection | None = None
        self._ping_lock = asyncio.Lock()
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            # The colder half: accounts, venues, events. The hot paths have the raw pool.
            pool_size=max(2, opts.pool_size // 2),
            # No overflow: the pool is the bound; callers past it wait pool_timeout, then
            # get UNAVAILABLE instead of opening connections until PostgreSQL refuses.
            max_overflow=0,
            pool_timeout=opts.pool_timeout_seconds,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={"timeout": 5, "server_settings": self._server_settings},
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A new session; use as `async with db.session() as s, s.begin(): ...`."""
        return self.sessionmaker()

    async def raw_pool(self) -> asyncpg.Pool:
        """The asyncpg pool, created on first use (min_size=0: it needs no database yet)."""
        if self._raw_pool is None:
            async with self._raw_pool_lock:
                if self._raw_pool is None:
                    self._raw_pool = await asyncpg.create_pool(
                        self._plain_url(),
                        min_size=0,
                        max_size=self.options.pool_size,
                        max_inactive_connection_lifetime=300,
                        timeout=5,
                        server_settings=self._server_settings,
                        reset=_keep_session,
                    )
        return self._raw_pool

    @contextlib.asynccontextmanager
    async def raw_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection, for hot paths where SQLAlchemy's per-row Python
        work would cost too much (booking, gate scans, the per-call role lookup).
        Statements run in autocommit unless wrapped in `raw_transaction`. On release an
        open transaction is rolled back and a broken connection is replaced."""
        pool = await self.raw_pool()
        try:
            conn = await pool.acquire(timeout=self.options.pool_timeout_seconds)
        except TimeoutError:
            # Every connection busy for pool_timeout: the server is overloaded, the
            # database may be fine. Say so, so operators do not chase a database outage.
            raise Unavailable(
                "the server is overloaded (no database connection free); retry with backoff",
                reason="DB_POOL_EXHAUSTED",
            ) from None
        try:
            yield conn
        finally:
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def raw_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One READ COMMITTED transaction on a pooled asyncpg connection: commits when the
        block ends normally, rolls back on any exception (including cancellation)."""
        async with self.raw_connection() as driver, driver.transaction():
            yield driver

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query.

        Uses a connection of its own, outside both pools: under overload every pooled
        connection is busy, and a health check that queued behind them would report the
        database down and drain every busy server at once.
        """

        async def probe() -> None:
            if self._ping_conn is None or self._ping_conn.is_closed():
                self._ping_conn = await asyncpg.connect(
                    self._plain_url(), timeout=3, server_settings={"application_name": "ticketd"}
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

    def _plain_url(self) -> str:
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    async def refresh_raw_connections(self) -> None:
        """Replace pooled raw connections on next use (after the database came back)."""
        if self._raw_pool is not None:
            await self._raw_pool.expire_connections()

    async def dispose(self) -> None:
        if self._ping_conn is not None:
            self._ping_conn.terminate()
            self._ping_conn = None
        if self._raw_pool is not None:
            await self._raw_pool.close()
            self._raw_pool = None
        await self.engine.dispose()


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default RESET ALL round trip.

    The hot paths change no session state: settings are SET LOCAL and advisory locks are
    transaction-scoped, and asyncpg itself rolls back an open transaction before this runs.
    """
