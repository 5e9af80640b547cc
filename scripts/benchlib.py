"""Pieces every benchmark script shares: logging, URLs, throwaway databases.

The bench scripts run as plain files (`python scripts/bench_x.py`), so `scripts/` is on
sys.path and they import this module by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator

import asyncpg
from sqlalchemy.engine import make_url


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


def plain_url(url: str) -> str:
    """A postgresql:// URL asyncpg accepts, whatever driver name the input carried."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def connect_db(database_url: str) -> asyncpg.Connection:
    """A connection that waits (up to ~10 s) for a free slot: on a shared PostgreSQL the
    connection slots (max_connections) may all be taken for a moment."""
    for attempt in range(20):
        try:
            return await asyncpg.connect(plain_url(database_url))
        except asyncpg.TooManyConnectionsError:
            if attempt == 19:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


@contextlib.asynccontextmanager
async def throwaway_database(admin_url: str, prefix: str = "ticketing_bench") -> AsyncIterator[str]:
    """A fresh `<prefix>_<random>` database, dropped on the way out however we leave."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    conn = await connect_db(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        conn = await connect_db(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
