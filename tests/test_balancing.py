"""Client-side balancing: the SDK spreads calls over several servers with round_robin."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from scripts.benchlib.process import ServerProcess, new_jwt_secret
from tests.procs import ticketd_process
from ticketing import connect
from ticketing.client import balanced_target
from ticketing.rush.main import parse_options
from ticketing.v1 import event_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.fixture
async def two_servers(database_url: str) -> AsyncIterator[list[ServerProcess]]:
    secret = new_jwt_secret()
    with tempfile.TemporaryDirectory(prefix="ticketd-balance-") as tmp:
        procs = [
            ticketd_process(
                database_url,
                Path(tmp) / name,
                jwt_secret=secret,
                extra_env={"TICKETING_LOG_FORMAT": "json"},
            )
            for name in ("a", "b")
        ]
        await asyncio.gather(*(p.start(timeout_s=90) for p in procs))
        try:
            yield procs
        finally:
            await asyncio.gather(*(p.stop() for p in procs))


def _served(proc: ServerProcess, rpc: str) -> int:
    count = 0
    for line in proc.log(None).splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("logger") == "ticketd.access" and entry["method"].endswith(rpc):
                count += 1
    return count


async def test_calls_spread_over_both_servers(two_servers: list[ServerProcess]) -> None:
    client = connect([p.target for p in two_servers])
    async with client:
        for _ in range(20):
            await client.events.ListEvents(event_pb2.ListEventsRequest())
    counts = [_served(p, "/ListEvents") for p in two_servers]
    assert sum(counts) == 20
    # round_robin takes the servers in turn once both are connected: neither is idle.
    assert min(counts) >= 5, counts


async def test_one_server_down_the_other_takes_every_call(
    two_servers: list[ServerProcess],
) -> None:
    a, b = two_servers
    await b.stop()
    client = connect(f"{a.target},{b.target}")
    async with client:
        for _ in range(6):
            await client.events.ListEvents(event_pb2.ListEventsRequest())
    assert _served(a, "/ListEvents") == 6


def test_targets_become_one_balanced_target() -> None:
    assert balanced_target("127.0.0.1:1") == ("127.0.0.1:1", False)
    assert balanced_target(["127.0.0.1:1", "127.0.0.1:2"]) == ("ipv4:127.0.0.1:1,127.0.0.1:2", True)
    assert balanced_target("[::1]:1,[::1]:2") == ("ipv6:[::1]:1,[::1]:2", True)
    assert balanced_target("dns:///tickets.example:443") == ("dns:///tickets.example:443", False)
    with pytest.raises(ValueError, match="IP addresses"):
        balanced_target("tickets.example:1,127.0.0.1:2")
    with pytest.raises(ValueError, match="all IPv4 or all IPv6"):
        balanced_target("127.0.0.1:1,[::1]:2")
    with pytest.raises(ValueError, match="at least one"):
        balanced_target([])


def test_rush_round_robin_flag_makes_one_balanced_target(tmp_path: Path) -> None:
    base = ["mixed", "--target", "127.0.0.1:1,127.0.0.1:2", "--admin-email", "a@example.test"]
    base += ["--admin-password", "x", "--json", str(tmp_path / "r.json")]
    assert parse_options(base).targets == ("127.0.0.1:1", "127.0.0.1:2")
    assert parse_options([*base, "--round-robin"]).targets == ("ipv4:127.0.0.1:1,127.0.0.1:2",)
