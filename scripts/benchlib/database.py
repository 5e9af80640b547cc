"""PostgreSQL for benchmarks: the admin URL, throwaway databases, connection slots."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url

from scripts.benchlib.report import log

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_ATTEMPTS = 60
CONNECT_RETRY_S = 0.5


def admin_url() -> str:
    """The superuser URL benchmarks create their databases on: DATABASE_URL, else the local
    PostgreSQL as postgres."""
    return os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL


def plain_url(url: str) -> str:
    """A postgresql:// URL asyncpg accepts, whatever driver name the input carried."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def database_name(url: str) -> str:
    """The database part of a URL ("" when it names none)."""
    return make_url(url).database or ""


async def connect_db(database_url: str) -> asyncpg.Connection:
    """A connection that waits (up to ~30 s) for a free slot: on a shared PostgreSQL the
    connection slots (max_connections) may all be taken for a moment."""
    for attempt in range(CONNECT_ATTEMPTS):
        try:
            return await asyncpg.connect(plain_url(database_url))
        except asyncpg.TooManyConnectionsError:
            if attempt == CONNECT_ATTEMPTS - 1:
                raise
            await asyncio.sleep(CONNECT_RETRY_S)
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def throwaway_database(admin: str, prefix: str = "ticketing_bench") -> AsyncIterator[str]:
    """A fresh `<prefix>_<random>` database, dropped on the way out however we leave."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await connect_db(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(admin).set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await connect_db(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# Slots a new client connection may take: superuser-reserved ones are not for us.
_FREE_SLOTS = """
    SELECT current_setting('max_connections')::int
         - current_setting('superuser_reserved_connections')::int
         - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
"""


async def wait_for_slots(url: str, needed: int, max_wait_s: float) -> int:
    """Wait (bounded) until PostgreSQL has `needed` free connection slots; return the free
    count then. Others' test runs share this server's max_connections."""
    deadline = time.monotonic() + max_wait_s
    conn = await connect_db(url)
    try:
        while True:
            free = int(await conn.fetchval(_FREE_SLOTS))
            if free >= needed or time.monotonic() >= deadline:
                return free
            log(f"waiting for {needed} free PostgreSQL connections ({free} free now)")
            await asyncio.sleep(2)
    finally:
        await conn.close()
