"""`ticketd serve --workers N`: N real worker processes on one port under one supervisor.

Which worker answered a call is read from the JSON access lines (each carries its process
id), so these tests also check TICKETING_LOG_FORMAT=json end to end.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from scripts.benchlib.process import ServerProcess, ServerStartError, free_port, new_jwt_secret
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from ticketing.v1 import event_pb2, event_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _children(pid: int) -> set[int]:
    """Process ids whose parent is `pid` (the supervisor's workers)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (after the parenthesised command, which may hold spaces) is the parent.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def _supervised(
    database_url: str, data_dir: Path, port: int, workers: int, metrics_port: int = 0
) -> ServerProcess:
    env = {"TICKETING_LOG_FORMAT": "json"}
    if metrics_port:
        env["TICKETING_METRICS_LISTEN"] = f"127.0.0.1:{metrics_port}"
    return ServerProcess(
        database_url,
        data_dir,
        port=port,
        jwt_secret=new_jwt_secret(),
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        shutdown_grace_s=3,
        pool_size=8,
        extra_env=env,
        args=("serve", "--workers", str(workers)),
        name="supervisor",
    )


@pytest.fixture
async def supervisor(database_url: str) -> AsyncIterator[ServerProcess]:
    with tempfile.TemporaryDirectory(prefix="ticketd-workers-") as tmp:
        proc = _supervised(database_url, Path(tmp), free_port(), 2, metrics_port=free_port())
        await proc.start(timeout_s=90)
        try:
            yield proc
        finally:
            await proc.stop(timeout=30)


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def _access_lines(proc: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log(None).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "ticketd.access":
                lines.append(entry)
    return lines


async def _list_events_on_new_connections(target: str, count: int) -> None:
    """`count` calls, each on a connection of its own (the kernel balances connections)."""
    for _ in range(count):
        async with aio.insecure_channel(target) as channel:
            await event_pb2_grpc.EventServiceStub(channel).ListEvents(
                event_pb2.ListEventsRequest(), timeout=10
            )


async def _wait_for(predicate: Any, timeout: float, what: str, proc: ServerProcess) -> None:
    for _ in range(int(timeout / 0.1)):
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what} never happened:\n{proc.log()}")


async def test_two_workers_serve_and_a_killed_one_is_replaced(supervisor: ServerProcess) -> None:
    assert supervisor.pid is not None
    workers = _children(supervisor.pid)
    assert len(workers) == 2, supervisor.log()

    await _list_events_on_new_connections(supervisor.target, 24)
    lines = [e for e in _access_lines(supervisor) if e["method"].endswith("/ListEvents")]
    assert len(lines) == 24
    # Both workers took connections (all 24 on one would be a 1 in 2**23 chance).
    assert {e["pid"] for e in lines} == workers
    first = lines[0]
    assert first["code"] == "OK" and first["principal"] is None
    assert first["duration_ms"] > 0 and first["correlation_id"] is None

    # The supervisor's /metrics sums both workers' samples.
    metrics = supervisor.extra_env["TICKETING_METRICS_LISTEN"]
    text = await asyncio.to_thread(_fetch, f"http://{metrics}/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    handled = sum(
        s.value
        for s in families["ticketd_rpc_handled"].samples
        if s.name == "ticketd_rpc_handled_total" and s.labels["method"].endswith("/ListEvents")
    )
    assert handled == 24

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    # Once it is gone (connections queued in a dying worker's backlog are reset: that is
    # SO_REUSEPORT, and why clients retry UNAVAILABLE), the service goes on: new
    # connections land on the surviving worker while the replacement starts.
    await _wait_for(
        lambda: victim not in _children(supervisor.pid or 0), 10, "the kill", supervisor
    )
    await _list_events_on_new_connections(supervisor.target, 5)
    await _wait_for(
        lambda: len(_children(supervisor.pid or 0) - {victim}) == 2,
        30,
        "a replacement worker",
        supervisor,
    )
    assert f"(pid {victim}) exited with -9" in supervisor.log(None)
    replacement = (_children(supervisor.pid) - workers).pop()
    # The replacement takes its share of new connections once it serves.
    await _wait_for_pid_in_access(supervisor, replacement)


async def _wait_for_pid_in_access(proc: ServerProcess, pid: int) -> None:
    loop = asyncio.get_running_loop()
    give_up = loop.time() + 60
    while loop.time() < give_up:
        await _list_events_on_new_connections(proc.target, 8)
        if any(e["pid"] == pid for e in _access_lines(proc)):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"worker {pid} never answered:\n{proc.log()}")


async def test_second_ticketd_on_the_port_is_refused_and_sigterm_drains(
    database_url: str,
) -> None:
    with tempfile.TemporaryDirectory(prefix="ticketd-workers-") as tmp:
        port = free_port()
        first = _supervised(database_url, Path(tmp) / "a", port, 2)
        await first.start(timeout_s=90)
        try:
            assert first.pid is not None
            workers = _children(first.pid)
            # A plain ticketd: the kernel refuses the bind (the guard socket holds it).
            plain = _supervised(database_url, Path(tmp) / "b", port, 1)
            plain.args = ("serve",)
            with pytest.raises(ServerStartError, match="address is in use"):
                await plain.start(timeout_s=30)
            # Another supervisor: SO_REUSEPORT would let it in, the port lock does not.
            other = _supervised(database_url, Path(tmp) / "c", port, 2)
            with pytest.raises(ServerStartError, match="already served by another ticketd"):
                await other.start(timeout_s=30)
            assert other.proc is not None and other.proc.returncode == 2
            # The first still serves, with the same workers.
            await _list_events_on_new_connections(first.target, 4)
            assert _children(first.pid) == workers
        finally:
            code = await first.stop(timeout=30)
        assert code == 0, first.log()
        assert "all 2 workers stopped" in first.log(None)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
        # The port is free again: a plain ticketd may take it.
        again = _supervised(database_url, Path(tmp) / "d", port, 1)
        again.args = ("serve",)
        await again.start(timeout_s=60)
        assert await again.stop() == 0


async def test_workers_of_a_killed_supervisor_stop_and_free_the_port(database_url: str) -> None:
    with tempfile.TemporaryDirectory(prefix="ticketd-workers-") as tmp:
        port = free_port()
        proc = _supervised(database_url, Path(tmp) / "a", port, 2)
        await proc.start(timeout_s=90)
        assert proc.pid is not None
        workers = _children(proc.pid)
        assert len(workers) == 2
        await proc.kill()  # SIGKILL: no drain, the workers are orphaned
        await _wait_for(
            lambda: not any(_alive(pid) for pid in workers),
            30,
            "the orphaned workers' exit",
            proc,
        )
        again = _supervised(database_url, Path(tmp) / "b", port, 1)
        again.args = ("serve",)
        await again.start(timeout_s=60)
        assert await again.stop() == 0


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
