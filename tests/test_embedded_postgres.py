"""The embedded PostgreSQL: first start, reuse, loopback only, one owner at a time, crash
leftovers, version and user checks, and root's fallback location.

Every cluster started here is stopped in teardown, even when a test fails halfway, and any
/var/lib/ticketing directory a test made is removed again.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from ticketd.db.embedded import (
    FALLBACK_ROOT,
    EmbeddedPostgres,
    EmbeddedPostgresError,
    fallback_cluster_dir,
)

# Slow tier: starts, kills and restarts PostgreSQL clusters.
pytestmark = pytest.mark.slow

IS_ROOT = os.geteuid() == 0
URL = re.compile(r"postgresql://ticketing@127\.0\.0\.1:(\d+)/ticketing")

Servers = Callable[..., EmbeddedPostgres]


def _stop_leftover_postmaster(cluster: Path) -> None:
    """Last-resort teardown for a server no EmbeddedPostgres object owns any more."""
    try:
        pid = int((cluster / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)  # postgres' "fast shutdown"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def reachable_dir() -> Iterator[Path]:
    """A base dir the unprivileged PostgreSQL user can traverse when tests run as root.

    pytest's tmp_path lives under a 0700 /tmp/pytest-of-root, which as root sends the cluster
    to the /var/lib/ticketing fallback; tests of the normal layout need a 0755 chain instead.
    """
    base = Path(tempfile.mkdtemp(prefix="ticketd-embedded-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def servers(reachable_dir: Path) -> Iterator[Servers]:
    """Factory for EmbeddedPostgres objects that are all stopped and cleaned up afterwards.

    Depends on reachable_dir so that directory is removed only after every server is stopped.
    """
    made: list[EmbeddedPostgres] = []
    data_dirs: list[Path] = []
    fallback_root_existed = FALLBACK_ROOT.exists()
    fallbacks_existing = {
        d for d in (FALLBACK_ROOT.iterdir() if fallback_root_existed else ()) if d.is_dir()
    }

    def make(data_dir: Path, port: int | None = None) -> EmbeddedPostgres:
        server = EmbeddedPostgres(data_dir, port=port)
        made.append(server)
        data_dirs.append(data_dir)
        return server

    yield make

    for server in made:
        with contextlib.suppress(Exception):
            server.stop()
    for data_dir in data_dirs:
        for cluster in (data_dir / "postgres", fallback_cluster_dir(data_dir)):
            _stop_leftover_postmaster(cluster)
            if cluster.parent.parent == FALLBACK_ROOT and cluster.parent not in fallbacks_existing:
                shutil.rmtree(cluster.parent, ignore_errors=True)
    if not fallback_root_existed and FALLBACK_ROOT.exists():
        with contextlib.suppress(OSError):
            FALLBACK_ROOT.rmdir()  # only if empty: never remove what someone else put there


def _port(url: str) -> int:
    match = URL.fullmatch(url)
    assert match, url
    return int(match.group(1))


def _listening_addresses(port: int) -> list[str] | None:
    """Local addresses of every TCP socket in LISTEN state on ``port``; None without /proc."""
    if not Path("/proc/net/tcp").exists():
        return None
    found: list[str] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            next(lines)
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                address, port_hex = local.rsplit(":", 1)
                if state == "0A" and int(port_hex, 16) == port:
                    found.append(address)
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_first_start_then_restart_reuses_data(servers: Servers, reachable_dir: Path) -> None:
    data_dir = reachable_dir / "data"
    data_dir.mkdir(mode=0o755)
    pg = servers(data_dir)

    url = pg.start()
    port = _port(url)
    assert pg.url == url
    assert pg.start() == url  # a second start while running is a no-op
    assert pg.cluster_dir == data_dir / "postgres"
    assert (data_dir / "postgres" / "PG_VERSION").exists()

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("show listen_addresses") == "127.0.0.1"
        assert str(await conn.fetchval("select inet_server_addr()")) == "127.0.0.1"
        await conn.execute("create table survivor (note text)")
        await conn.execute("insert into survivor values ('kept')")
    finally:
        await conn.close()
    listening = _listening_addresses(port)
    if listening is not None:
        # 0100007F is 127.0.0.1 in /proc's little-endian hex: nothing on 0.0.0.0 or IPv6.
        assert listening == ["0100007F"]

    pg.stop()
    pg.stop()  # idempotent
    with pytest.raises(EmbeddedPostgresError):
        _ = pg.url
    with pytest.raises(OSError):
        await asyncpg.connect(url, timeout=5)

    chosen = _free_port()
    again = servers(data_dir, port=chosen)
    url2 = again.start()
    assert _port(url2) == chosen
    conn = await asyncpg.connect(url2)
    try:
        assert await conn.fetchval("select note from survivor") == "kept"
    finally:
        await conn.close()
    again.stop()


async def test_second_server_on_same_data_dir_is_refused(
    servers: Servers, reachable_dir: Path
) -> None:
    data_dir = reachable_dir / "data"
    data_dir.mkdir(mode=0o755)
    first = servers(data_dir)
    url = first.start()

    second = servers(data_dir)
    with pytest.raises(EmbeddedPostgresError, match="another ticketd"):
        second.start()
    second.stop()  # safe after a failed start

    conn = await asyncpg.connect(url)  # the first one is untouched
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def _start_in_child_then_kill_it(data_dir: Path) -> str:
    """Start the cluster from another process, SIGKILL that process, return the old URL.

    SIGKILL gives it no chance to stop PostgreSQL, which keeps running as an orphan.
    """
    script = (
        "import sys, time, pathlib\n"
        "from ticketd.db.embedded import EmbeddedPostgres\n"
        "print(EmbeddedPostgres(pathlib.Path(sys.argv[1])).start(), flush=True)\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        return child.stdout.readline().strip()
    finally:
        child.kill()
        child.wait(timeout=10)
        if child.stdout is not None:
            child.stdout.close()


async def test_server_left_by_killed_process_is_restarted(
    servers: Servers, reachable_dir: Path
) -> None:
    data_dir = reachable_dir / "data"
    data_dir.mkdir(mode=0o755)
    pg = servers(data_dir)  # registered first, so teardown stops the orphan if a check fails
    old_url = _start_in_child_then_kill_it(data_dir)
    _port(old_url)
    conn = await asyncpg.connect(old_url)  # the orphan still serves
    await conn.close()

    url = pg.start()
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
    with pytest.raises(OSError):
        await asyncpg.connect(old_url, timeout=5)  # the orphan was shut down cleanly


def test_cluster_from_another_major_version_is_refused(
    servers: Servers, reachable_dir: Path
) -> None:
    data_dir = reachable_dir / "data"
    cluster = data_dir / "postgres"
    data_dir.mkdir(mode=0o755)
    cluster.mkdir(mode=0o700)
    (cluster / "PG_VERSION").write_text("9\n")
    pg = servers(data_dir)
    with pytest.raises(EmbeddedPostgresError, match=r"created by PostgreSQL 9\b"):
        pg.start()
    pg.stop()
    # The failed start released its lock: trying again gives the same answer, not "in use".
    with pytest.raises(EmbeddedPostgresError, match=r"created by PostgreSQL 9\b"):
        servers(data_dir).start()
    assert (cluster / "PG_VERSION").read_text() == "9\n"  # nothing was touched


def test_url_before_start_and_stop_without_start(servers: Servers, tmp_path: Path) -> None:
    pg = servers(tmp_path / "never")
    with pytest.raises(EmbeddedPostgresError, match="start"):
        _ = pg.url
    pg.stop()
    assert not (tmp_path / "never").exists()


@pytest.mark.skipif(not IS_ROOT, reason="root-only behaviour")
async def test_root_keeps_cluster_outside_unreachable_data_dir(
    servers: Servers, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"  # under 0700 /tmp/pytest-of-root: postgres cannot reach it
    ancestors = [*reversed(tmp_path.parents), tmp_path]
    modes_before = {p: os.stat(p).st_mode for p in ancestors}

    pg = servers(data_dir)
    url = pg.start()
    cluster = fallback_cluster_dir(data_dir)
    assert pg.cluster_dir == cluster
    assert cluster.parent.parent == FALLBACK_ROOT
    owner = os.stat(cluster.parent)
    assert stat.S_IMODE(owner.st_mode) == 0o700
    assert owner.st_uid == os.stat(cluster).st_uid != 0
    assert not (data_dir / "postgres").exists()

    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
    pg.stop()
    # No parent directory was loosened to make room for postgres.
    assert {p: os.stat(p).st_mode for p in ancestors} == modes_before


@pytest.mark.skipif(not IS_ROOT, reason="root-only behaviour")
def test_root_without_unprivileged_user_is_explained(
    servers: Servers, reachable_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETING_PG_USER", "no-such-user-ticketd")
    pg = servers(reachable_dir / "data")
    with pytest.raises(EmbeddedPostgresError, match="'no-such-user-ticketd' does not exist"):
        pg.start()


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_stop_still_stops_server_whose_data_dir_was_deleted(
    servers: Servers, reachable_dir: Path
) -> None:
    data_dir = reachable_dir / "data"
    data_dir.mkdir(mode=0o755)
    pg = servers(data_dir)
    pg.start()
    pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])

    shutil.rmtree(data_dir)  # pg_ctl can no longer find the server
    pg.stop()
    # Gone, or at most a zombie waiting for its reaper: no longer in any directory.
    assert not Path(f"/proc/{pid}/cwd").exists()
