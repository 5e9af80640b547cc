"""Issue 10, item 4: gate staff are scoped to events.

An ENTRY_MANAGER burns tickets, and reads the scan log and gate stats, only of the events they
are assigned to (EventService.AssignStaff, by the event's organizer or an ADMIN); anyone else
gets PERMISSION_DENIED NOT_EVENT_STAFF, and an unassignment applies to the next call. ADMIN
acts everywhere; SUPPORT reads everywhere; an ORGANIZER reads their own events' gates.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    all_pages,
    best_request,
    error_details,
    future,
    scan_request,
)
from tests.support import small_layout as layout
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2

S = grpc.StatusCode
EM = common_pb2.ROLE_ENTRY_MANAGER


async def open_event(
    stubs: Stubs, admin: Account, owner: Account, n: int
) -> tuple[event_pb2.Event, list[booking_pb2.Ticket]]:
    """An event of `owner` whose gates are open now, with `n` standing tickets sold."""
    venue = await stubs.create_venue(admin, layout(rows=1, seats=1, ga=n))
    event = await stubs.create_event(owner, venue, max_per_order=100, doors_open_time=future(0))
    buyer = await stubs.register("staff-fan")
    order = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[1].id, n), metadata=buyer.md
        )
    ).order
    return event, list(order.tickets)


async def outcome(call: Any) -> tuple[S, str | None]:
    """(OK, result name) or (code, reason)."""
    try:
        response = await call
    except aio.AioRpcError as err:
        return err.code(), error_details(err).reason
    if isinstance(response, gate_pb2.ValidateTicketResponse):
        return S.OK, gate_pb2.ValidationResult.Name(response.result)
    return S.OK, None


def gate_calls(stubs: Stubs, who: Account, event_id: str, code: str | None = None) -> list[Any]:
    """ListScans and GetGateStats, and with a `code` ValidateTicket first. (A grpc.aio call
    starts when it is made, so only the calls wanted are made.)"""
    calls = [
        stubs.gate.ListScans(gate_pb2.ListScansRequest(event_id=event_id), metadata=who.md),
        stubs.gate.GetGateStats(gate_pb2.GetGateStatsRequest(event_id=event_id), metadata=who.md),
    ]
    if code is not None:
        calls.insert(0, stubs.gate.ValidateTicket(scan_request(code, event_id), metadata=who.md))
    return calls


async def statuses(running: RunningServer, event_id: str) -> Counter[str]:
    async with running.engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT status FROM tickets WHERE event_id = :e"), {"e": uuid.UUID(event_id)}
        )
        return Counter(r.status for r in rows)


async def test_an_entry_manager_of_another_event_cannot_burn_or_read(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """The issue's case: any ENTRY_MANAGER could burn any organizer's tickets."""
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-org")
    stranger = await stubs.account_with_roles(admin, EM, tag="st-stranger")
    event, tickets = await open_event(stubs, admin, organizer, 2)
    for call in gate_calls(stubs, stranger, event.id, tickets[0].code):
        assert await outcome(call) == (S.PERMISSION_DENIED, "NOT_EVENT_STAFF")
    assert await statuses(running, event.id) == {"VALID": 2}
    async with running.engine.connect() as conn:
        logged = (
            await conn.execute(
                text("SELECT count(*) FROM scans WHERE event_id = :e"), {"e": uuid.UUID(event.id)}
            )
        ).scalar_one()
    assert logged == 0


async def test_assigned_staff_act_and_unassignment_applies_to_the_next_call(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-org2")
    gate = await stubs.account_with_roles(admin, EM, tag="st-gate")
    event, tickets = await open_event(stubs, admin, organizer, 3)
    assigned = (
        await stubs.events.AssignStaff(
            event_pb2.AssignStaffRequest(event_id=event.id, user_id=gate.user.id),
            metadata=organizer.md,
        )
    ).staff
    assert (assigned.event_id, assigned.user_id, assigned.email) == (
        event.id,
        gate.user.id,
        gate.email,
    )
    assert assigned.assigned_by == organizer.user.id
    first = scan_request(tickets[0].code, event.id)
    assert await outcome(stubs.gate.ValidateTicket(first, metadata=gate.md)) == (
        S.OK,
        "VALIDATION_RESULT_ADMITTED",
    )
    for call in gate_calls(stubs, gate, event.id):
        assert await outcome(call) == (S.OK, None)

    removed = await stubs.events.UnassignStaff(
        event_pb2.UnassignStaffRequest(event_id=event.id, user_id=gate.user.id),
        metadata=organizer.md,
    )
    assert removed.removed
    # The next call is refused, a retry of an earlier scan included.
    assert await outcome(stubs.gate.ValidateTicket(first, metadata=gate.md)) == (
        S.PERMISSION_DENIED,
        "NOT_EVENT_STAFF",
    )
    for call in gate_calls(stubs, gate, event.id, tickets[1].code):
        assert await outcome(call) == (S.PERMISSION_DENIED, "NOT_EVENT_STAFF")
    again = await stubs.events.UnassignStaff(
        event_pb2.UnassignStaffRequest(event_id=event.id, user_id=gate.user.id),
        metadata=admin.md,
    )
    assert not again.removed
    assert await statuses(running, event.id) == {"USED": 1, "VALID": 2}


async def test_who_may_read_an_events_gates(stubs: Stubs, admin: Account) -> None:
    """ADMIN and SUPPORT read every event's gates; an ORGANIZER only their own events'."""
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-owner")
    rival = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-rival")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="st-support")
    event, tickets = await open_event(stubs, admin, owner, 1)
    for who in (admin, support, owner):
        for call in gate_calls(stubs, who, event.id):
            assert await outcome(call) == (S.OK, None)
    for call in gate_calls(stubs, rival, event.id):
        assert await outcome(call) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    # Organizers and support never burn: the policy table keeps them from ValidateTicket.
    for who in (owner, support):
        assert await outcome(
            stubs.gate.ValidateTicket(scan_request(tickets[0].code, event.id), metadata=who.md)
        ) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    # ADMIN burns at any event without an assignment.
    assert await outcome(
        stubs.gate.ValidateTicket(scan_request(tickets[0].code, event.id), metadata=admin.md)
    ) == (S.OK, "VALIDATION_RESULT_ADMITTED")
    unknown = str(uuid.uuid4())
    for call in gate_calls(stubs, support, unknown):
        assert await outcome(call) == (S.NOT_FOUND, "EVENT_NOT_FOUND")


async def test_assign_staff_refusals_and_idempotence(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-own3")
    rival = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-riv3")
    gate = await stubs.account_with_roles(admin, EM, tag="st-gate3")
    customer = await stubs.register("st-cust")
    event, _ = await open_event(stubs, admin, owner, 1)

    def assign(who: Account, user_id: str, event_id: str = event.id) -> Any:
        return stubs.events.AssignStaff(
            event_pb2.AssignStaffRequest(event_id=event_id, user_id=user_id), metadata=who.md
        )

    def unassign(who: Account, user_id: str, event_id: str = event.id) -> Any:
        return stubs.events.UnassignStaff(
            event_pb2.UnassignStaffRequest(event_id=event_id, user_id=user_id), metadata=who.md
        )

    assert await outcome(assign(owner, customer.user.id)) == (
        S.FAILED_PRECONDITION,
        "NOT_ENTRY_MANAGER",
    )
    ghost = str(uuid.uuid4())
    assert await outcome(assign(owner, ghost)) == (S.NOT_FOUND, "USER_NOT_FOUND")
    assert await outcome(unassign(owner, ghost)) == (S.NOT_FOUND, "USER_NOT_FOUND")
    assert await outcome(assign(owner, gate.user.id, str(uuid.uuid4()))) == (
        S.NOT_FOUND,
        "EVENT_NOT_FOUND",
    )
    assert await outcome(assign(owner, "nope")) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    # Someone else's event: refused before anything about the user is looked at.
    for call in (assign(rival, gate.user.id), assign(rival, ghost), unassign(rival, gate.user.id)):
        assert await outcome(call) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    listing = stubs.events.ListStaff(
        event_pb2.ListStaffRequest(event_id=event.id), metadata=rival.md
    )
    assert await outcome(listing) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    for who in (gate, customer):
        assert await outcome(assign(who, gate.user.id)) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")

    # Ten concurrent assigns of one pair, by the owner and an admin: one assignment, the first.
    results = await asyncio.gather(
        *(assign(owner if i % 2 else admin, gate.user.id) for i in range(10))
    )
    assert len({(r.staff.assign_time.ToNanoseconds(), r.staff.assigned_by) for r in results}) == 1
    async with running.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM event_staff WHERE event_id = :e"),
                {"e": uuid.UUID(event.id)},
            )
        ).scalar_one()
    assert count == 1


async def test_list_staff_pages_by_user_id(stubs: Stubs, admin: Account) -> None:
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-own4")
    event, _ = await open_event(stubs, admin, owner, 1)
    crew = [await stubs.account_with_roles(admin, EM, tag=f"st-crew{i}") for i in range(5)]
    await stubs.assign_staff(owner, event.id, *crew)
    seen: list[event_pb2.StaffMember] = []
    for page in await all_pages(
        stubs.events.ListStaff, event_pb2.ListStaffRequest(event_id=event.id, page_size=2), owner.md
    ):
        assert len(page.staff) <= 2
        seen += page.staff
    assert [s.user_id for s in seen] == sorted(a.user.id for a in crew)
    assert {s.email for s in seen} == {a.email for a in crew}
    other, _ = await open_event(stubs, admin, owner, 1)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.ListStaff(
            event_pb2.ListStaffRequest(event_id=other.id, page_token=page_token_of(seen)),
            metadata=owner.md,
        )
    assert err.value.code() == S.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.ListStaff(
            event_pb2.ListStaffRequest(event_id=event.id, page_size=-1), metadata=owner.md
        )
    assert err.value.code() == S.INVALID_ARGUMENT


def page_token_of(_: list[event_pb2.StaffMember]) -> str:
    """A token that is not one the server made for this listing."""
    return "Zm9yZ2Vk"


async def test_unassigning_during_a_stream_of_scans_stops_the_next_ones(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Scans race an UnassignStaff: every scan sent after it returned is refused, and every
    ticket burned was burned by an answered ADMITTED scan."""
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="st-own5")
    gate = await stubs.account_with_roles(admin, EM, tag="st-gate5")
    event, tickets = await open_event(stubs, admin, owner, 100)
    await stubs.assign_staff(owner, event.id, gate)
    # Cycled: on a quiet machine the scans can outrun the unassignment; a repeat of a used
    # code is ALREADY_USED (never a second admission), or refused once unassigned.
    codes = itertools.cycle([t.code for t in tickets])
    scanned = asyncio.Event()
    unassigned = asyncio.Event()
    after: list[tuple[S, str | None]] = []
    admitted = 0

    async def scanning() -> None:
        nonlocal admitted
        while True:
            sent_after = unassigned.is_set()
            batch = [next(codes) for _ in range(4)]
            results = await asyncio.gather(
                *(
                    outcome(stubs.gate.ValidateTicket(scan_request(c, event.id), metadata=gate.md))
                    for c in batch
                )
            )
            admitted += sum(r == (S.OK, "VALIDATION_RESULT_ADMITTED") for r in results)
            scanned.set()
            if sent_after:
                after.extend(results)
                return

    async def unassigning() -> None:
        await scanned.wait()
        await stubs.events.UnassignStaff(
            event_pb2.UnassignStaffRequest(event_id=event.id, user_id=gate.user.id),
            metadata=owner.md,
        )
        unassigned.set()

    await asyncio.wait_for(asyncio.gather(scanning(), unassigning()), 60)
    assert after and all(r == (S.PERMISSION_DENIED, "NOT_EVENT_STAFF") for r in after)
    assert admitted > 0
    assert (await statuses(running, event.id))["USED"] == admitted
