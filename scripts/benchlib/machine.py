"""Where the figures came from: one `machine` object, the same in every benchmark's JSON.

Schema (every key always present; None when unknown)::

    nproc, cpu_count, cpu_model, platform, kernel, python, grpcio, protobuf, asyncpg,
    postgresql_version, postgresql, postgresql_settings {max_connections, shared_buffers,
    work_mem, synchronous_commit, fsync, wal_level, max_wal_size}, postgresql_host,
    postgresql_on_same_host, loadavg_at_start [1, 5, 15 min], busy_cores_before_start, layout
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google import protobuf
from sqlalchemy.engine import make_url

from scripts.benchlib.cpu import cores_available
from scripts.benchlib.database import connect_db

POSTGRESQL_SETTINGS = (
    "max_connections",
    "shared_buffers",
    "work_mem",
    "synchronous_commit",
    "fsync",
    "wal_level",
    "max_wal_size",
)
_LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo (None when it says none)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or None


async def machine_info(
    admin_url: str, busy_cores_before_start: float | None = None
) -> dict[str, Any]:
    """The machine, the Python stack and the PostgreSQL behind `admin_url`, now."""
    conn = await connect_db(admin_url)
    try:
        settings = {name: await conn.fetchval(f"SHOW {name}") for name in POSTGRESQL_SETTINGS}
        version_short = await conn.fetchval("SHOW server_version")
        version_long = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    host = make_url(admin_url).host or ""
    # A Unix socket path (or no host) is this machine too.
    same_host = host in _LOCAL_HOSTS or host.startswith("/")
    return {
        "nproc": cores_available(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "protobuf": protobuf.__version__,
        "asyncpg": asyncpg.__version__,
        "postgresql_version": version_short,
        "postgresql": version_long,
        "postgresql_settings": settings,
        "postgresql_host": host or "local socket",
        "postgresql_on_same_host": same_host,
        "loadavg_at_start": list(os.getloadavg()),
        "busy_cores_before_start": busy_cores_before_start,
        "layout": "client, ticketd and PostgreSQL on the same machine (loopback)"
        if same_host
        else f"client and ticketd on this machine (loopback), PostgreSQL on {host}",
    }
