"""WatchGate (issue 15) through the real server: a snapshot of every gate's counts, then
each scan with its gate's counts after it (equal to GetGateStats at the end), exact
resumption with counts continuing, rolled-back scans never seen, and who may watch."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer, second_server
from tests.support import (
    Account,
    ErrorDetails,
    StreamReader,
    Stubs,
    error_details,
    scan_request,
)
from tests.test_gate import sold_tickets
from ticketd.db.database import PoolOptions
from ticketing.stubs import CallMetadata
from ticketing.v1 import common_pb2, gate_pb2

R = gate_pb2.ValidationResult
READ_TIMEOUT_S = 20.0


class GateWatcher(StreamReader[gate_pb2.GateChange]):
    """A WatchGate call read in the background into a list."""

    def __init__(self, stubs: Stubs, md: CallMetadata, event_id: str, after: int = 0) -> None:
        super().__init__(
            stubs.gate.WatchGate(
                gate_pb2.WatchGateRequest(event_id=event_id, after_sequence=after), metadata=md
            ),
            READ_TIMEOUT_S,
        )

    @property
    def scans(self) -> list[gate_pb2.GateChange]:
        return [c for c in self.items if not c.snapshot and not c.caught_up]

    async def until(self, scans: int) -> None:
        """Wait (bounded) for the caught_up marker and `scans` scans."""
        await self.wait_for(
            lambda: len(self.scans) >= scans and any(c.caught_up for c in self.items)
        )


@pytest.fixture
async def watch() -> AsyncIterator[Any]:
    made: list[GateWatcher] = []

    def start(stubs: Stubs, md: CallMetadata, event_id: str, after: int = 0) -> GateWatcher:
        w = GateWatcher(stubs, md, event_id, after)
        made.append(w)
        return w

    yield start
    for w in made:
        await w.stop()


@pytest.fixture(scope="module")
async def staff(stubs: Stubs, admin: Account) -> Account:
    return await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="wg-staff")


def counts(c: gate_pb2.GateChange) -> tuple[str, int, int, int]:
    return (c.gate_id, c.gate.admitted, c.gate.rejected, c.inside)


async def test_snapshot_then_each_scan_with_its_gates_counts(
    stubs: Stubs, admin: Account, staff: Account, watch: Any
) -> None:
    event, tickets, _ = await sold_tickets(stubs, admin, 4, staff)

    async def scan(code: str, gate: str) -> int:
        done = await stubs.gate.ValidateTicket(
            scan_request(code, event.id, gate), metadata=staff.md
        )
        return done.result

    assert await scan(tickets[0].code, "north") == R.VALIDATION_RESULT_ADMITTED
    assert await scan(tickets[0].code, "south") == R.VALIDATION_RESULT_ALREADY_USED
    w = watch(stubs, staff.md, event.id)
    await w.until(0)
    snapshot = [c for c in w.items if c.snapshot]
    assert [counts(c) for c in snapshot] == [("north", 1, 0, 1), ("south", 0, 1, 0)]
    assert {c.sequence for c in snapshot} == {2}
    assert [(c.caught_up, c.sequence) for c in w.items[2:]] == [(True, 2)]

    await scan(tickets[1].code, "north")
    await scan(tickets[2].code, "south")
    await scan("no-such-code-" + uuid.uuid4().hex, "south")
    await w.until(3)
    await asyncio.sleep(0.3)  # nothing more may arrive
    got = [(c.sequence, c.result, *counts(c)) for c in w.scans]
    assert got == [
        (3, R.VALIDATION_RESULT_ADMITTED, "north", 2, 0, 2),
        (4, R.VALIDATION_RESULT_ADMITTED, "south", 1, 1, 1),
        (5, R.VALIDATION_RESULT_UNKNOWN_CODE, "south", 1, 2, 1),
    ]
    assert all(c.scan_id and c.scan_time.seconds > 0 for c in w.scans)
    # The counts the stream ends with are GetGateStats's.
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=staff.md
    )
    final = {c.gate_id: c.gate for c in w.items if c.gate_id}
    assert {g.gate_id: g for g in stats.gates} == final

    # Resuming after 3: exactly 4 and 5, counts continuing from those at 3.
    again = watch(stubs, staff.md, event.id, 3)
    await again.until(2)
    await asyncio.sleep(0.3)
    assert [(c.sequence, *counts(c)) for c in again.scans] == [
        (4, "south", 1, 1, 1),
        (5, "south", 1, 2, 1),
    ]
    assert [c.sequence for c in again.items if c.caught_up] == [5]
    assert not any(c.snapshot for c in again.items)


async def test_a_rolled_back_scan_never_appears_and_leaves_no_gap(
    stubs: Stubs, admin: Account, staff: Account, running: RunningServer, watch: Any
) -> None:
    event, tickets, _ = await sold_tickets(stubs, admin, 2, staff)
    w = watch(stubs, admin.md, event.id)
    await w.until(0)
    async with running.engine.connect() as conn:
        tx = await conn.begin()
        await conn.execute(
            text(
                "INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, code_hash, "
                "result) VALUES (:s, :e, 'ghost', :u, 'x', 'UNKNOWN_CODE')"
            ),
            {"s": uuid.uuid4(), "e": uuid.UUID(event.id), "u": uuid.UUID(staff.user.id)},
        )
        await tx.rollback()
    await stubs.gate.ValidateTicket(
        scan_request(tickets[0].code, event.id, "east"), metadata=staff.md
    )
    await w.until(1)
    await asyncio.sleep(0.3)
    assert [(c.sequence, c.gate_id) for c in w.scans] == [(1, "east")]


async def test_who_may_watch_and_bad_input(
    stubs: Stubs, admin: Account, staff: Account, watch: Any
) -> None:
    event, _, buyer = await sold_tickets(stubs, admin, 1, staff)
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="wg-org")
    unassigned = await stubs.account_with_roles(
        admin, common_pb2.ROLE_ENTRY_MANAGER, tag="wg-other-staff"
    )
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="wg-support")

    async def refused(md: CallMetadata, event_id: str, after: int = 0) -> tuple[Any, str | None]:
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in stubs.gate.WatchGate(
                gate_pb2.WatchGateRequest(event_id=event_id, after_sequence=after),
                metadata=md,
                timeout=5,
            ):
                pass
        return err.value.code(), error_details(err.value).reason

    S = grpc.StatusCode
    assert await refused(owner.md, event.id) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    assert await refused(unassigned.md, event.id) == (S.PERMISSION_DENIED, "NOT_EVENT_STAFF")
    assert await refused(support.md, event.id) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert await refused(buyer.md, event.id) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert await refused(admin.md, str(uuid.uuid4())) == (S.NOT_FOUND, "EVENT_NOT_FOUND")
    assert (await refused(admin.md, "nope"))[0] == S.INVALID_ARGUMENT
    assert (await refused(admin.md, event.id, -1))[0] == S.INVALID_ARGUMENT
    assert await refused(admin.md, event.id, 7) == (S.FAILED_PRECONDITION, "SEQUENCE_AHEAD")
    # The event's own organizer (admin made it) and its staff may: a marker at once.
    for md in (admin.md, staff.md):
        w = watch(stubs, md, event.id)
        await w.until(0)
        assert [(c.caught_up, c.sequence) for c in w.items] == [(True, 0)]


async def never_reading(
    stubs: Stubs,
    admin: Account,
    staff: Account,
    running: RunningServer,
    gates: int,
    after: int,
) -> tuple[list[gate_pb2.GateChange], ErrorDetails]:
    """3,000 scans (recorded by the trigger like any scan) spread over `gates` gate names, a
    client window of 64 KiB with no auto-tuning, and a WatchGate reader from `after` that
    takes nothing for 2 s, then everything: what it got before the server ended the stream
    (shared writer: ticketd.edge.streaming), and how it ended it."""
    event, _, _ = await sold_tickets(stubs, admin, 1, staff)
    async with running.engine.connect() as conn:
        await conn.execute(
            text(
                "INSERT INTO scans (scan_id, event_id, gate_id, entry_manager_id, code_hash, "
                "result) SELECT gen_random_uuid(), :e, 'gate-' || (n % :g), :u, md5(n::text), "
                "'UNKNOWN_CODE' FROM generate_series(1, 3000) AS n"
            ),
            {"e": uuid.UUID(event.id), "u": uuid.UUID(staff.user.id), "g": gates},
        )
        await conn.commit()
    async with second_server(
        running, PoolOptions(pool_size=4), stream_send_timeout_seconds=0.5
    ) as srv:
        channel = aio.insecure_channel(
            srv.target,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_536)],
        )
        try:
            call = Stubs(channel).gate.WatchGate(
                gate_pb2.WatchGateRequest(event_id=event.id, after_sequence=after),
                metadata=staff.md,
            )
            await asyncio.sleep(2.0)  # never reads meanwhile
            received: list[gate_pb2.GateChange] = []
            with pytest.raises(aio.AioRpcError) as err:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    async for item in call:
                        received.append(item)
        finally:
            await channel.close(None)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
    return received, error_details(err.value)


async def test_a_reader_that_never_reads_is_ended_with_a_resume_point(
    stubs: Stubs, admin: Account, staff: Account, running: RunningServer
) -> None:
    # The server must end the stream with where to resume instead of queueing the rest.
    received, details = await never_reading(stubs, admin, staff, running, gates=4, after=1)
    assert details.reason == "STREAM_TOO_SLOW"
    resume = int(details.metadata["resume_after_sequence"])
    # Far from the end; every change after 1 in order; and the resume point is the last the
    # server saw written: the reader's own last, or the one before (the write that timed
    # out may still have gone out), never past it.
    assert 0 < len(received) < 3000
    assert [c.sequence for c in received] == list(range(2, 2 + len(received)))
    assert received[-1].sequence - 1 <= resume <= received[-1].sequence


async def test_a_reader_cut_mid_snapshot_is_told_to_resume_from_a_fresh_snapshot(
    stubs: Stubs, admin: Account, staff: Account, running: RunningServer
) -> None:
    # 3,000 gates, so the snapshot (one entry per gate, all with the snapshot's sequence)
    # is far larger than the window: the resume point the server names must not be the
    # snapshot's sequence, which would skip the gates it never sent; 0 (a fresh snapshot)
    # is where that reader can resume.
    received, details = await never_reading(stubs, admin, staff, running, gates=3000, after=0)
    assert details.reason == "STREAM_TOO_SLOW"
    assert 0 < len(received) < 3000 and all(c.snapshot for c in received)
    assert details.metadata["resume_after_sequence"] == "0"
