"""Apply Alembic migrations (on server start and `ticketd migrate`).

Alembic needs SQLAlchemy; it gets a short-lived engine of its own with no pool, used only
here, so the server's one asyncpg pool stays the only path for RPCs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from ticketd.db.database import plain_url

log = logging.getLogger("ticketd.migrate")

# Several servers may start at once against one database (scale-out); the advisory lock
# makes them take turns so each sees the schema at head before serving.
_MIGRATION_LOCK_KEY = 0x7469636B  # "tick"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    return cfg


def _upgrade(connection: Connection, revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Bring the schema of the database at `url` to `revision` (default: the newest)."""
    engine = create_async_engine(
        plain_url(url).replace("postgresql://", "postgresql+asyncpg://", 1), poolclass=NullPool
    )
    try:
        # One transaction for all pending migrations: either the schema reaches `revision`
        # or nothing changes.
        async with engine.begin() as conn:
            # Migrations may take longer than the per-statement bound used for RPCs.
            await conn.execute(text("SET LOCAL statement_timeout = 0"))
            await conn.execute(text("SET LOCAL lock_timeout = 0"))
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
            await conn.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()
    log.info("database schema is at %s", revision)
