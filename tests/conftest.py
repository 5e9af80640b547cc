"""Test fixtures: a throwaway PostgreSQL database and a real in-process grpc.aio server.

Each run creates its own database (named with a random suffix) on the PostgreSQL given by
TEST_DATABASE_URL / DATABASE_URL, else 127.0.0.1:5432 as postgres, else an ephemeral embedded
cluster; and drops it afterwards, so two runs never see each other's data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from grpc import aio
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from scripts.benchlib.database import plain_url, throwaway_database
from tests.support import Account, Stubs
from ticketd.app import Components, TicketServer, build_components, ensure_bootstrap_admin
from ticketd.config import Settings
from ticketd.db import migrate
from ticketd.db.database import Database, PoolOptions

ADMIN_EMAIL = "root-admin@example.test"
ADMIN_PASSWORD = "admin-password-123"


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(plain_url(url), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


@pytest.fixture(scope="session")
async def pg_admin_url() -> AsyncIterator[str]:
    """A superuser URL of a PostgreSQL server the tests may create databases on."""
    given = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    candidates = [given] if given else ["postgresql://postgres@127.0.0.1:5432/postgres"]
    for url in candidates:
        if await _reachable(url):
            yield url
            return
    from ticketd.db.embedded import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="ticketing-test-pg-") as tmp:
        os.chmod(tmp, 0o755)
        embedded = EmbeddedPostgres(Path(tmp), database="postgres")
        url = embedded.start()
        try:
            yield url
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
async def database_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh database for this test run, dropped at the end."""
    async with throwaway_database(pg_admin_url, "ticketing_test") as url:
        yield url


@pytest.fixture
async def raw(running: RunningServer) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the test's own to the test database (to hold row locks the server
    must wait for, or to read what it wrote), closed after the test."""
    conn = await asyncpg.connect(running.components.db.url)
    try:
        yield conn
    finally:
        await conn.close()


GENEROUS_AUTH_LIMITS: dict[str, Any] = {
    "auth_concurrency": 4,
    "auth_queue": 100_000,
    "auth_peer_rate": 1_000_000.0,
    "auth_peer_burst": 1_000_000,
    "login_failures_per_email": 1_000_000,
}


def make_settings(database_url: str, **overrides: Any) -> Settings:
    base = Settings(
        database_url=database_url,
        listen="127.0.0.1:0",
        data_dir=Path(tempfile.gettempdir()) / "ticketing-tests-unused",
        jwt_secret=secrets.token_urlsafe(48),
        bcrypt_rounds=4,
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        grace_seconds=2,
        # No sweeper on the shared server: the hold tests prove expiry is a query condition
        # (tests/test_streams.py sweeps on purpose).
        hold_sweep_interval_seconds=0,
        # Seat streams on (production's default too): tests/test_streams.py watches.
        seat_streams=True,
        # Production defaults throttle sign-ins per address; every test call comes from
        # 127.0.0.1, so the shared server is generous (tests/test_auth_flood.py builds its own
        # strict ones).
        **GENEROUS_AUTH_LIMITS,
    )
    from dataclasses import replace

    return replace(base, **overrides)


@dataclass
class RunningServer:
    server: TicketServer
    components: Components
    port: int
    engine: AsyncEngine
    """The tests' own SQLAlchemy engine on the server's database, to read back (and
    sometimes arrange) rows directly; the server itself never uses SQLAlchemy."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="session")
async def running(database_url: str) -> AsyncIterator[RunningServer]:
    settings = make_settings(database_url)
    db = Database(database_url, PoolOptions(pool_size=20, lock_timeout_ms=5000))
    await migrate.upgrade(database_url)
    components = build_components(settings, db, settings.jwt_secret or "")
    await ensure_bootstrap_admin(components)
    server = TicketServer(components)
    port = await server.start("127.0.0.1:0")
    engine = create_async_engine(
        make_url(database_url).set(drivername="postgresql+asyncpg"), pool_size=5
    )
    try:
        yield RunningServer(server, components, port, engine)
    finally:
        await server.stop(0)
        await db.dispose()
        await engine.dispose()


@contextlib.asynccontextmanager
async def second_server(
    running: RunningServer, pool: PoolOptions, **overrides: Any
) -> AsyncIterator[RunningServer]:
    """Another in-process server on the test database with its own pool and settings (the
    same JWT secret, so every account's token works on it), stopped at the end."""
    settings = dataclasses.replace(running.components.settings, **overrides)
    db = Database(running.components.db.url, pool)
    components = build_components(settings, db, settings.jwt_secret or "")
    server = TicketServer(components)
    port = await server.start("127.0.0.1:0")
    try:
        yield RunningServer(server, components, port, running.engine)
    finally:
        await server.stop(0)
        await db.dispose()


@pytest.fixture(scope="session")
async def channel(running: RunningServer) -> AsyncIterator[aio.Channel]:
    ch = aio.insecure_channel(running.target)
    try:
        yield ch
    finally:
        await ch.close(None)


@pytest.fixture(scope="session")
def stubs(channel: aio.Channel) -> Stubs:
    return Stubs(channel)


@pytest.fixture(scope="session")
async def admin(stubs: Stubs) -> Account:
    from ticketing.v1 import auth_pb2

    login = await stubs.auth.Login(
        auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    )
    return Account(login.user, login.access_token, ADMIN_EMAIL, ADMIN_PASSWORD)
