"""Issue 10, items 5 and 6: a scan_id is one physical scan of one caller.

- Twins: the same scan_id sent at once with two different codes. One is answered; the other
  gets INVALID_ARGUMENT SCAN_ID_MISMATCH (never INTERNAL from a duplicate key in the log), and
  nothing it did stays: its burn is rolled back.
- Replay by someone else: a scan_id belongs to the caller that first used it; anyone else
  gets INVALID_ARGUMENT SCAN_ID_MISMATCH, learns nothing and changes nothing.

The twin and replay cases are run by ADMIN-role accounts, which need no staff assignment, so
that they also run (and fail) unchanged against a server from before these fixes; the entry
manager variants follow.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    best_request,
    client_pool,
    error_details,
    future,
    scan_request,
)
from tests.support import small_layout as layout
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2

S = grpc.StatusCode
MISMATCH = (S.INVALID_ARGUMENT, "SCAN_ID_MISMATCH")


@pytest.fixture(scope="module")
async def kiosks(running: RunningServer) -> AsyncIterator[list[Stubs]]:
    async with client_pool(running.target, 4) as kiosks:
        yield kiosks


async def open_event(
    stubs: Stubs, admin: Account, n: int
) -> tuple[event_pb2.Event, list[booking_pb2.Ticket]]:
    """An event whose gates are open now with `n` standing tickets sold."""
    venue = await stubs.create_venue(admin, layout(rows=1, seats=1, ga=n))
    event = await stubs.create_event(admin, venue, max_per_order=100, doors_open_time=future(0))
    buyer = await stubs.register("twin-fan")
    tickets: list[booking_pb2.Ticket] = []
    while len(tickets) < n:
        quantity = min(100, n - len(tickets))
        request = best_request(event.id, venue.sections[1].id, quantity)
        tickets += (await stubs.booking.BookSeats(request, metadata=buyer.md)).order.tickets
    return event, tickets


async def answer(call: Any) -> tuple[S, str | None]:
    """(OK, result name without prefix) or (status code, ErrorInfo reason)."""
    try:
        response = await call
    except aio.AioRpcError as err:
        return err.code(), error_details(err).reason
    return S.OK, gate_pb2.ValidationResult.Name(response.result).removeprefix("VALIDATION_RESULT_")


async def scan_rows(running: RunningServer, event_id: str) -> list[Any]:
    async with running.engine.connect() as conn:
        return list(
            (
                await conn.execute(
                    text(
                        "SELECT scan_id, entry_manager_id, result, ticket_id, repeat_count "
                        "FROM scans WHERE event_id = :e"
                    ),
                    {"e": uuid.UUID(event_id)},
                )
            ).all()
        )


async def ticket_rows(running: RunningServer, event_id: str) -> dict[str, Any]:
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, code, status, used_scan_id FROM tickets WHERE event_id = :e"),
                {"e": uuid.UUID(event_id)},
            )
        ).all()
    return {r.code: r for r in rows}


async def test_many_concurrent_twins_one_answer_and_the_loser_burns_nothing(
    stubs: Stubs, kiosks: list[Stubs], admin: Account, running: RunningServer
) -> None:
    caller = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="twin-admin")
    pairs = 40
    event, tickets = await open_event(stubs, admin, 2 * pairs * 3)
    codes = iter(t.code for t in tickets)
    answers: Counter[tuple[S, str | None]] = Counter()
    twins: list[tuple[str, str, str]] = []
    for round_no in range(3):
        batch = []
        for i in range(pairs):
            scan_id = str(uuid.uuid4())
            a, b = next(codes), next(codes)
            # Every fourth pair: a real ticket and a code that is no ticket at all.
            if i % 4 == 3:
                b = f"no-such-code-{uuid.uuid4().hex}"
            twins.append((scan_id, a, b))
            gate = f"twins-{round_no}-{i % 4}"
            batch.append(
                asyncio.gather(
                    answer(
                        kiosks[i % 4].gate.ValidateTicket(
                            scan_request(a, event.id, gate, scan_id), metadata=caller.md
                        )
                    ),
                    answer(
                        kiosks[(i + 1) % 4].gate.ValidateTicket(
                            scan_request(b, event.id, gate, scan_id), metadata=caller.md
                        )
                    ),
                )
            )
        for pair in await asyncio.gather(*batch):
            answered = [x for x in pair if x[0] == S.OK]
            # Exactly one of the two is answered; the other is the mismatch, never INTERNAL.
            assert len(answered) == 1 and MISMATCH in pair, pair
            answers.update(pair)
    assert set(answers) <= {(S.OK, "ADMITTED"), (S.OK, "UNKNOWN_CODE"), MISMATCH}
    assert answers[MISMATCH] == len(twins)

    rows = await scan_rows(running, event.id)
    by_scan = {str(r.scan_id): r for r in rows}
    assert len(rows) == len(by_scan) == len(twins)  # one log entry per scan_id
    tickets_now = await ticket_rows(running, event.id)
    for scan_id, a, b in twins:
        burned = [c for c in (a, b) if c in tickets_now and tickets_now[c].status == "USED"]
        row = by_scan[scan_id]
        if row.result == "ADMITTED":
            # The winner's ticket is burned under this scan_id; the loser's is untouched.
            assert len(burned) == 1 and tickets_now[burned[0]].id == row.ticket_id
            assert str(tickets_now[burned[0]].used_scan_id) == scan_id
        else:
            assert row.result == "UNKNOWN_CODE" and burned == []
    used = sum(t.status == "USED" for t in tickets_now.values())
    assert used == answers[(S.OK, "ADMITTED")] == sum(r.result == "ADMITTED" for r in rows)


async def test_another_caller_replaying_a_scan_id_is_refused_and_changes_nothing(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    first = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="replay-a")
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="replay-b")
    event, tickets = await open_event(stubs, admin, 2)
    request = scan_request(tickets[0].code, event.id, "replay")
    assert await answer(stubs.gate.ValidateTicket(request, metadata=first.md)) == (
        S.OK,
        "ADMITTED",
    )
    # The case: someone else replaying the scan_id got ADMITTED again.
    assert await answer(stubs.gate.ValidateTicket(request, metadata=other.md)) == MISMATCH
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.gate.ValidateTicket(request, metadata=other.md)
    details = error_details(err.value)
    # Nothing about the first scan leaks: not its result, not its caller.
    assert details.metadata == {"scan_id": request.scan_id}
    assert details.field_violations == [
        ("scan_id", "was already used for a different scan; make a new one")
    ]
    (row,) = await scan_rows(running, event.id)
    assert (str(row.entry_manager_id), row.repeat_count) == (first.user.id, 0)
    # The owner's own retry is still answered from the log.
    again = await stubs.gate.ValidateTicket(request, metadata=first.md)
    assert again.repeat and again.result == gate_pb2.VALIDATION_RESULT_ADMITTED
    (row,) = await scan_rows(running, event.id)
    assert row.repeat_count == 1


async def test_entry_managers_twins_across_callers(
    stubs: Stubs, kiosks: list[Stubs], admin: Account, running: RunningServer
) -> None:
    """Two assigned entry managers send one scan_id at once (one code): one is ADMITTED, the
    other is refused. A replay of a rejected scan is refused the same way."""
    gates = [
        await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag=f"twin-em{i}")
        for i in range(2)
    ]
    pairs = 30
    event, tickets = await open_event(stubs, admin, pairs + 1)
    await stubs.assign_staff(admin, event.id, *gates)
    results = await asyncio.gather(
        *(
            asyncio.gather(
                *(
                    answer(
                        kiosks[(i + k) % 4].gate.ValidateTicket(
                            scan_request(t.code, event.id, "em-twins", scan_id), metadata=g.md
                        )
                    )
                    for k, g in enumerate(gates)
                )
            )
            for i, (t, scan_id) in enumerate((t, str(uuid.uuid4())) for t in tickets[:pairs])
        )
    )
    for pair in results:
        assert Counter(pair) == Counter([(S.OK, "ADMITTED"), MISMATCH]), pair
    assert Counter(t.status for t in (await ticket_rows(running, event.id)).values()) == {
        "USED": pairs,
        "VALID": 1,
    }
    # A rejected scan's id is its caller's too.
    junk = scan_request("no-such-code", event.id, "em-twins")
    assert await answer(stubs.gate.ValidateTicket(junk, metadata=gates[0].md)) == (
        S.OK,
        "UNKNOWN_CODE",
    )
    assert await answer(stubs.gate.ValidateTicket(junk, metadata=gates[1].md)) == MISMATCH
    # ... and an ADMIN replaying it is no exception.
    assert await answer(stubs.gate.ValidateTicket(junk, metadata=admin.md)) == MISMATCH
