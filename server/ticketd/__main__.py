"""`ticketd` / `python -m ticketd`: serve (default) or migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ticketd.app import (
    TicketServer,
    build_components,
    ensure_bootstrap_admin,
    wait_for_database,
    watch_database,
)
from ticketd.auth.tokens import load_or_create_secret
from ticketd.config import ConfigError, Settings, parse_workers
from ticketd.db import migrate
from ticketd.db.database import Database, PoolOptions
from ticketd.observability import logs, metrics

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
            seat_streams=settings.seat_streams,
        ),
    )
    try:
        yield db
    finally:
        await db.dispose()
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


@dataclass(frozen=True)
class WorkerRole:
    """Set (by the supervisor's command line) when this process is worker `index` of
    `serve --workers N`: it binds with SO_REUSEPORT, serves health alone on `health_listen`
    for its supervisor, migrates only as worker 0, and stops if its supervisor dies."""

    index: int
    health_listen: str


async def _watch_parent(stop: asyncio.Event) -> None:
    """A worker whose supervisor died (even by SIGKILL) stops instead of holding the port."""
    parent = os.getppid()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if os.getppid() != parent:
            log.error("supervisor (pid %d) is gone: stopping", parent)
            stop.set()


async def serve(settings: Settings, worker: WorkerRole | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    exporter = metrics.serve(settings.metrics_listen) if settings.metrics_listen else None
    orphan_watch = asyncio.create_task(_watch_parent(stop)) if worker is not None else None
    async with database_for(settings) as db:
        secret = settings.jwt_secret or load_or_create_secret(settings.data_dir)
        keys = settings.keys_secret or load_or_create_secret(settings.data_dir, "keys_secret")
        components = build_components(settings, db, secret, keys_secret=keys)
        server = TicketServer(components, reuse_port=worker is not None)
        # Bind first and say NOT_SERVING: orchestrators see a live process that is not
        # ready, rather than a crash loop, while the database is away.
        port = await server.start(serving=False)
        if worker is not None:
            await server.start_health_only(worker.health_listen)
        host = settings.listen.rsplit(":", 1)[0]
        log.info("bound %s:%d; waiting for the database", host, port)
        watcher: asyncio.Task[None] | None = None
        try:
            if await wait_for_database(db, stop=stop):
                # Workers after the first find the schema and the admin made by worker 0.
                if worker is None or worker.index == 0:
                    await migrate.upgrade(db.url)
                    await ensure_bootstrap_admin(components)
                await server.set_serving(True)
                mode = "TLS" if settings.tls_enabled else "plaintext"
                if worker is None:
                    log.info("ticketd serving on %s:%d (%s)", host, port, mode)
                    print(f"ticketd listening on {host}:{port}", flush=True)
                else:
                    # The supervisor says "listening" once every worker serves.
                    log.info("worker %d serving on %s:%d (%s)", worker.index, host, port, mode)
                watcher = asyncio.create_task(watch_database(server, stop))
                await stop.wait()
        finally:
            stop.set()
            if watcher is not None:
                await watcher
            if orphan_watch is not None:
                await orphan_watch
            if exporter is not None:
                exporter.shutdown()
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
    parser.add_argument(
        "--workers",
        default=None,
        help="server processes on the one port (default TICKETING_WORKERS or 1; auto = cores)",
    )
    # Internal: how the supervisor starts its workers (ticketd.supervisor).
    parser.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-health", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.workers is not None:
            settings = dataclasses.replace(
                settings, workers=parse_workers(args.workers, "--workers")
            )
    except ConfigError as exc:
        print(f"ticketd: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(args.log_level, settings.log_format)
    worker = None
    if args.worker_index is not None and args.worker_health:
        worker = WorkerRole(args.worker_index, args.worker_health)
    try:
        if args.command == "serve" and worker is None and settings.workers > 1:
            from ticketd.supervisor import supervise

            return asyncio.run(supervise(settings, settings.workers, log_level=args.log_level))
        asyncio.run(serve(settings, worker) if args.command == "serve" else run_migrate(settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.error("ticketd failed: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
