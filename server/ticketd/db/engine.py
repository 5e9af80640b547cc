"""The async engine and per-RPC sessions (SQLAlchemy 2 asyncio on asyncpg)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


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
        self.engine: AsyncEngine = create_async_engine(
            self.url,
            pool_size=opts.pool_size,
            # No overflow: the pool is the bound; callers past it wait pool_timeout, then
            # get UNAVAILABLE instead of opening connections until PostgreSQL refuses.
            max_overflow=0,
            pool_timeout=opts.pool_timeout_seconds,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "timeout": 5,
                "server_settings": {
                    "application_name": "ticketd",
                    # Every lock wait and statement is bounded below typical RPC deadlines,
                    # so no transaction outlives its caller by much.
                    "statement_timeout": str(opts.statement_timeout_ms),
                    "lock_timeout": str(opts.lock_timeout_ms),
                    "idle_in_transaction_session_timeout": "60000",
                },
            },
        )
        self.sessionmaker = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        """A new session; use as `async with db.session() as s, s.begin(): ...`."""
        return self.sessionmaker()

    @contextlib.asynccontextmanager
    async def raw_connection(self) -> AsyncIterator[asyncpg.Connection]:
        """The pooled asyncpg connection itself, for hot paths where SQLAlchemy's per-row
        Python work would cost too much (booking, gate scans, the per-call role lookup).
        Statements run in autocommit unless wrapped in `raw_transaction`."""
        async with self.engine.connect() as conn:
            fairy = await conn.get_raw_connection()
            driver: asyncpg.Connection = fairy.driver_connection
            try:
                yield driver
            except BaseException:
                # A cancelled or failed call may leave the connection mid-transaction or
                # broken: never hand it to the next caller in that state.
                if driver.is_closed() or driver.is_in_transaction():
                    await conn.invalidate()
                raise

    @contextlib.asynccontextmanager
    async def raw_transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One READ COMMITTED transaction on a pooled asyncpg connection: commits when the
        block ends normally, rolls back on any exception (including cancellation)."""
        async with self.raw_connection() as driver, driver.transaction():
            yield driver

    async def ping(self) -> bool:
        """True when PostgreSQL answers a trivial query."""

        async def probe() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(probe(), 3)
            return True
        except Exception:  # any failure means "not ready"
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()
