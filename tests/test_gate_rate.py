"""Issue 10, item 7: scans are rate-limited per caller as well as per gate.

The per-gate bucket is keyed on a name the client chooses: a new gate name per scan escaped it
(400 of 400 answered). Now one caller has its own bucket whatever names it uses, and may keep
only so many gate names busy at once (which also bounds the buckets it can make the server
hold). Refusals are RESOURCE_EXHAUSTED with a RetryInfo.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, make_settings
from tests.support import (
    Account,
    Stubs,
    error_details,
    future,
    retry_delay,
    scan_request,
    small_layout,
)
from ticketd.app import TicketServer, build_components
from ticketd.db.database import Database, PoolOptions
from ticketing.v1 import common_pb2, event_pb2, gate_pb2

S = grpc.StatusCode


@dataclass
class Refusal:
    code: S
    reason: str | None
    limit: str | None
    retry_after: float | None


def refusal(err: aio.AioRpcError) -> Refusal:
    details = error_details(err)
    return Refusal(err.code(), details.reason, details.metadata.get("limit"), retry_delay(err))


async def scan_all(
    stubs: Stubs, who: Account, event_id: str, gates: list[str]
) -> tuple[list[gate_pb2.ValidateTicketResponse], list[Refusal]]:
    """One scan per entry of `gates` (a gate name each), all at once."""
    results = await asyncio.gather(
        *(
            stubs.gate.ValidateTicket(
                scan_request(f"guess-{uuid.uuid4().hex}", event_id, gate), metadata=who.md
            )
            for gate in gates
        ),
        return_exceptions=True,
    )
    answered = [r for r in results if isinstance(r, gate_pb2.ValidateTicketResponse)]
    refused = [refusal(r) for r in results if isinstance(r, aio.AioRpcError)]
    assert len(answered) + len(refused) == len(gates), results
    return answered, refused


async def open_event(stubs: Stubs, admin: Account) -> event_pb2.Event:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=1, ga=1))
    return await stubs.create_event(admin, venue, doors_open_time=future(0))


async def test_a_new_gate_name_per_scan_no_longer_escapes_the_limit(
    stubs: Stubs, admin: Account
) -> None:
    """The issue's case, with the default settings: 400 scans, each at a new gate name.

    An ADMIN-role account (no staff assignment needed), so that this also runs against a
    server from before the fix, where all 400 were answered."""
    caller = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="rate-gates")
    event = await open_event(stubs, admin)
    answered, refused = await scan_all(
        stubs, caller, event.id, [f"made-up-{i}" for i in range(400)]
    )
    assert refused, "a new gate name per scan escaped every limit"
    # TICKETING_CALLER_MAX_GATES (32) names at once; names idle for their bucket's refill
    # time (2 s) are forgotten, so a few more may be answered while the 400 are served.
    assert 32 <= len(answered) < 400
    assert {r.code for r in refused} == {S.RESOURCE_EXHAUSTED}
    assert {r.reason for r in refused} <= {"TOO_MANY_GATES", "SCAN_RATE_EXCEEDED"}
    assert all(r.retry_after is not None and 0 <= r.retry_after <= 2 for r in refused)
    assert {r.result for r in answered} == {gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE}
    # Another account is not affected by this one's refusals.
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="rate-other")
    ok = await stubs.gate.ValidateTicket(scan_request("guess", event.id, "x"), metadata=other.md)
    assert ok.result == gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE


async def test_one_account_may_run_a_few_busy_gates_with_the_defaults(
    stubs: Stubs, admin: Account
) -> None:
    """4 gates, each at its full burst (200 per gate is the per-gate default; 120 here keeps
    the test light): all answered, from one entry manager."""
    gate = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="rate-busy")
    event = await open_event(stubs, admin)
    await stubs.assign_staff(admin, event.id, gate)
    answered, refused = await scan_all(stubs, gate, event.id, [f"lane-{i % 4}" for i in range(480)])
    assert refused == [] and len(answered) == 480


@dataclass
class TightServer:
    stubs: Stubs
    caller_rate: float
    caller_burst: int
    gate_burst: int


@pytest.fixture(scope="module")
async def tight(running: RunningServer, database_url: str) -> AsyncIterator[TightServer]:
    """A second real server on the same database (same JWT secret, so tokens work on both)
    with small per-caller and per-gate bounds, so that counts do not depend on speed."""
    settings = make_settings(
        database_url,
        jwt_secret=running.components.settings.jwt_secret,
        caller_scan_rate=1,
        caller_scan_burst=20,
        caller_max_gates=1_000,
        gate_scan_rate=1,
        gate_scan_burst=8,
    )
    db = Database(database_url, PoolOptions(pool_size=4))
    server = TicketServer(build_components(settings, db, settings.jwt_secret or ""))
    port = await server.start("127.0.0.1:0")
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield TightServer(Stubs(channel), caller_rate=1, caller_burst=20, gate_burst=8)
    finally:
        await channel.close(None)
        await server.stop(0)
        await db.dispose()


async def test_the_caller_bucket_holds_whatever_gate_names_are_used(
    stubs: Stubs, admin: Account, tight: TightServer
) -> None:
    caller = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="rate-em")
    event = await open_event(stubs, admin)
    await stubs.assign_staff(admin, event.id, caller)
    started = time.monotonic()
    # 100 scans over 50 gate names: no gate exceeds its own burst (8), the caller does (20).
    answered, refused = await scan_all(
        tight.stubs, caller, event.id, [f"spread-{i % 50}" for i in range(100)]
    )
    elapsed = time.monotonic() - started
    assert len(answered) <= tight.caller_burst + tight.caller_rate * elapsed + 1
    assert len(answered) >= tight.caller_burst
    assert Counter((r.code, r.reason, r.limit) for r in refused) == {
        (S.RESOURCE_EXHAUSTED, "SCAN_RATE_EXCEEDED", "caller"): len(refused)
    }
    assert all(r.retry_after == pytest.approx(1 / tight.caller_rate) for r in refused)


async def test_the_gate_bucket_is_shared_by_every_caller_at_that_gate(
    stubs: Stubs, admin: Account, tight: TightServer
) -> None:
    callers = [
        await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag=f"rate-share{i}")
        for i in range(3)
    ]
    event = await open_event(stubs, admin)
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(scan_all(tight.stubs, who, event.id, ["shared-gate"] * 6) for who in callers)
    )
    elapsed = time.monotonic() - started
    answered = sum(len(a) for a, _ in outcomes)
    # 18 scans at one gate, 6 per caller (each under its own burst of 20): the gate's 8 hold.
    assert tight.gate_burst <= answered <= tight.gate_burst + elapsed + 1
    reasons = {(r.reason, r.limit) for _, refused in outcomes for r in refused}
    assert reasons == {("SCAN_RATE_EXCEEDED", "gate")}
