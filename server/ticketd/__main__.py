"""`ticketd` / `python -m ticketd`: serve (default) or migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator

from ticketd.app import (
    TicketServer,
    build_components,
    ensure_bootstrap_admin,
    wait_for_database,
    watch_database,
)
from ticketd.auth.tokens import load_or_create_secret
from ticketd.config import ConfigError, Settings
from ticketd.db import migrate
from ticketd.db.database import Database, PoolOptions

log = logging.getLogger("ticketd")


@contextlib.asynccontextmanager
async def database_for(settings: Settings) -> AsyncIterator[Database]:
    """The configured database, or a private embedded PostgreSQL started for this process."""
    embedded = None
    url = settings.database_url or ""
    if not url:
        from ticketd.db.embedded import EmbeddedPostgres

        embedded = EmbeddedPostgres(settings.data_dir)
        url = await asyncio.to_thread(embedded.start)
        log.info("no DATABASE_URL: using embedded PostgreSQL at %s", url)
    db = Database(
        url,
        PoolOptions(
            pool_size=settings.db_pool_size,
            pool_timeout_seconds=settings.db_pool_timeout_seconds,
            statement_timeout_ms=settings.statement_timeout_ms,
            lock_timeout_ms=settings.lock_timeout_ms,
            public_share_percent=settings.db_public_share_percent,
        ),
    )
    try:
        yield db
    finally:
        await db.dispose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with database_for(settings) as db:
        secret = settings.jwt_secret or load_or_create_secret(settings.data_dir)
        keys = settings.keys_secret or load_or_create_secret(settings.data_dir, "keys_secret")
        components = build_components(settings, db, secret, keys_secret=keys)
        server = TicketServer(components)
        # Bind first and say NOT_SERVING: orchestrators see a live process that is not
        # ready, rather than a crash loop, while the database is away.
        port = await server.start(serving=False)
        host = settings.listen.rsplit(":", 1)[0]
        log.info("bound %s:%d; waiting for the database", host, port)
        watcher: asyncio.Task[None] | None = None
        try:
            if await wait_for_database(db, stop=stop):
                await migrate.upgrade(db.url)
                await ensure_bootstrap_admin(components)
                await server.set_serving(True)
                mode = "TLS" if settings.tls_enabled else "plaintext"
                log.info("ticketd serving on %s:%d (%s)", host, port, mode)
                print(f"ticketd listening on {host}:{port}", flush=True)
                watcher = asyncio.create_task(watch_database(server, stop))
                await stop.wait()
        finally:
            stop.set()
            if watcher is not None:
                await watcher
            log.info("shutting down: health NOT_SERVING, grace %ss", settings.grace_seconds)
            await server.stop()
            log.info("stopped")


async def run_migrate(settings: Settings) -> None:
    async with database_for(settings) as db:
        if not await wait_for_database(db, attempts=10):
            raise ConnectionError("database did not answer")
        await migrate.upgrade(db.url)
        print("database schema is up to date", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ticketd", description="ticketing gRPC server")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"])
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"ticketd: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings) if args.command == "serve" else run_migrate(settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.error("ticketd failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
