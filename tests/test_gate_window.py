"""Issue 10, item 3: the scan window. Scans are accepted only from doors-open (default: a lead
before start) until the end (default: start plus a duration), judged on the database clock at
the write; outside it the answer is a normal result and nothing burns. Cancelled events admit
nobody. UpdateEvent moves the window.

Results are compared by name (`result_name`) so that the hostile cases also run, and fail, on
a server that predates the window.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import uuid
from collections import Counter
from typing import Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import Account, Stubs, best_request, error_details, future, scan_request
from tests.support import small_layout as layout
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2

LEAD = dt.timedelta(hours=3)  # TICKETING_DOORS_OPEN_LEAD default
DURATION = dt.timedelta(hours=4)  # TICKETING_DEFAULT_EVENT_DURATION default


def result_name(response: gate_pb2.ValidateTicketResponse) -> str:
    return gate_pb2.ValidationResult.Name(response.result).removeprefix("VALIDATION_RESULT_")


async def sell(
    stubs: Stubs,
    admin: Account,
    n: int,
    *,
    days: float = 30,
    doors: Timestamp | None = None,
    end: Timestamp | None = None,
    owner: Account | None = None,
) -> tuple[event_pb2.Event, list[booking_pb2.Ticket]]:
    """An event `days` ahead with `n` standing places, all sold to one buyer."""
    venue = await stubs.create_venue(admin, layout(rows=1, seats=1, ga=n))
    request = event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name="Window",
        start_time=future(days),
        currency_code="EUR",
        section_prices={s.id: 100 for s in venue.sections},
        max_tickets_per_order=100,
        doors_open_time=doors,
        end_time=end,
    )
    event = (await stubs.events.CreateEvent(request, metadata=(owner or admin).md)).event
    buyer = await stubs.register("window-fan")
    tickets: list[booking_pb2.Ticket] = []
    while len(tickets) < n:  # at most 100 per order
        quantity = min(100, n - len(tickets))
        book = best_request(event.id, venue.sections[1].id, quantity)
        tickets += (await stubs.booking.BookSeats(book, metadata=buyer.md)).order.tickets
    return event, tickets


async def execute(running: RunningServer, sql: str, **params: Any) -> None:
    async with running.engine.begin() as conn:
        await conn.execute(text(sql), params)


async def ticket_statuses(running: RunningServer, event_id: str) -> Counter[str]:
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT status FROM tickets WHERE event_id = :e"), {"e": uuid.UUID(event_id)}
            )
        ).all()
    return Counter(r.status for r in rows)


async def logged_results(running: RunningServer, event_id: str) -> Counter[str]:
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT result FROM scans WHERE event_id = :e"), {"e": uuid.UUID(event_id)}
            )
        ).all()
    return Counter(r.result for r in rows)


async def scan(stubs: Stubs, who: Account, code: str, event_id: str) -> str:
    return result_name(
        await stubs.gate.ValidateTicket(scan_request(code, event_id, gate="w"), metadata=who.md)
    )


async def test_a_month_early_is_not_yet_open_and_burns_nothing(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """The issue's case: no doors-open time, a ticket scanned 30 days before the event."""
    event, tickets = await sell(stubs, admin, 2)
    request = scan_request(tickets[0].code, event.id)
    response = await stubs.gate.ValidateTicket(request, metadata=admin.md)
    assert result_name(response) == "NOT_YET_OPEN"
    assert not response.HasField("ticket") and not response.HasField("first_scan_time")
    # A retry of that scan gets the same answer from the log, still burning nothing.
    again = await stubs.gate.ValidateTicket(request, metadata=admin.md)
    assert result_name(again) == "NOT_YET_OPEN" and again.repeat
    assert await ticket_statuses(running, event.id) == {"VALID": 2}
    assert await logged_results(running, event.id) == {"NOT_YET_OPEN": 1}

    # The default lead: 3 h before start. An event in 1 h is open; one in 3 h 10 min is not.
    soon, soon_tickets = await sell(stubs, admin, 1, days=1 / 24)
    assert await scan(stubs, admin, soon_tickets[0].code, soon.id) == "ADMITTED"
    later, later_tickets = await sell(stubs, admin, 1, days=(3 + 1 / 6) / 24)
    assert await scan(stubs, admin, later_tickets[0].code, later.id) == "NOT_YET_OPEN"
    assert await ticket_statuses(running, later.id) == {"VALID": 1}


async def test_after_the_end_is_event_over_with_or_without_an_end_time(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, tickets = await sell(stubs, admin, 4, doors=future(0))
    assert await scan(stubs, admin, tickets[0].code, event.id) == "ADMITTED"
    # The show was yesterday evening and ended a moment ago (database clock).
    await execute(
        running,
        "UPDATE events SET doors_open_time = NULL, start_time = clock_timestamp() - "
        "interval '2 hours', end_time = clock_timestamp() - interval '1 millisecond' "
        "WHERE id = :e",
        e=uuid.UUID(event.id),
    )
    assert await scan(stubs, admin, tickets[1].code, event.id) == "EVENT_OVER"
    # A used ticket is not "already used" any more either: the gates are closed.
    assert await scan(stubs, admin, tickets[0].code, event.id) == "EVENT_OVER"
    # No end time: the default duration (4 h) after start.
    await execute(
        running,
        "UPDATE events SET end_time = NULL, start_time = clock_timestamp() - CAST(:d AS interval) WHERE id = :e",
        e=uuid.UUID(event.id),
        d=DURATION - dt.timedelta(minutes=5),
    )
    assert await scan(stubs, admin, tickets[2].code, event.id) == "ADMITTED"
    await execute(
        running,
        "UPDATE events SET start_time = clock_timestamp() - CAST(:d AS interval) WHERE id = :e",
        e=uuid.UUID(event.id),
        d=DURATION + dt.timedelta(seconds=1),
    )
    assert await scan(stubs, admin, tickets[3].code, event.id) == "EVENT_OVER"
    assert await ticket_statuses(running, event.id) == {"USED": 2, "VALID": 2}
    assert await logged_results(running, event.id) == {"ADMITTED": 2, "EVENT_OVER": 3}


async def test_a_cancelled_event_admits_nobody(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, tickets = await sell(stubs, admin, 2, doors=future(0))
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="storm"), metadata=admin.md
    )
    response = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].code, event.id), metadata=admin.md
    )
    # EVENT_CANCELLED, decided before the code is looked at (not VOID: a code that was never
    # sold scans the same, so the answer says nothing about the code).
    assert result_name(response) == "EVENT_CANCELLED" and not response.HasField("ticket")
    assert await scan(stubs, admin, "never-sold", event.id) == "EVENT_CANCELLED"
    assert "USED" not in await ticket_statuses(running, event.id)


async def test_the_window_is_one_sql_function_exact_at_its_instants(
    running: RunningServer,
) -> None:
    """Half-open [doors, end): open at exactly doors-open, over at exactly the end."""
    start = dt.datetime(2031, 5, 1, 20, 0, tzinfo=dt.UTC)
    doors = start - dt.timedelta(minutes=30)
    end = start + dt.timedelta(hours=2)
    tick = dt.timedelta(microseconds=1)
    cases = [
        # (cancel, doors, end, at, expected)
        (None, doors, end, doors - tick, "NOT_YET_OPEN"),
        (None, doors, end, doors, "OPEN"),
        (None, doors, end, end - tick, "OPEN"),
        (None, doors, end, end, "EVENT_OVER"),
        (None, None, end, start - LEAD - tick, "NOT_YET_OPEN"),
        (None, None, end, start - LEAD, "OPEN"),
        (None, doors, None, start + DURATION - tick, "OPEN"),
        (None, doors, None, start + DURATION, "EVENT_OVER"),
        (None, None, None, start, "OPEN"),
        (start, doors, end, start, "EVENT_CANCELLED"),
        (start, doors, end, doors - tick, "EVENT_CANCELLED"),
    ]
    async with running.engine.connect() as conn:
        for cancel, d, e, at, expected in cases:
            got = (
                await conn.execute(
                    text("SELECT gate_window(:c, :d, :s, :e, :at, :lead, :dur)"),
                    {
                        "c": cancel,
                        "d": d,
                        "s": start,
                        "e": e,
                        "at": at,
                        "lead": LEAD,
                        "dur": DURATION,
                    },
                )
            ).scalar_one()
            assert got == expected, (cancel, d, e, at)


async def test_the_write_judges_the_window_on_the_database_clock(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Doors set to the database's "now" are open for the next scan; an end set to "now" has
    passed for it. Both instants are taken at the write, not at the transaction's start."""
    event, tickets = await sell(stubs, admin, 3)
    e = uuid.UUID(event.id)
    await execute(
        running,
        "UPDATE events SET doors_open_time = clock_timestamp() + interval '1 hour' WHERE id = :e",
        e=e,
    )
    assert await scan(stubs, admin, tickets[0].code, event.id) == "NOT_YET_OPEN"
    await execute(
        running, "UPDATE events SET doors_open_time = clock_timestamp() WHERE id = :e", e=e
    )
    assert await scan(stubs, admin, tickets[0].code, event.id) == "ADMITTED"
    await execute(
        running,
        "UPDATE events SET doors_open_time = NULL, start_time = clock_timestamp() - interval "
        "'1 hour', end_time = clock_timestamp() WHERE id = :e",
        e=e,
    )
    assert await scan(stubs, admin, tickets[1].code, event.id) == "EVENT_OVER"
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT sc.result, sc.scan_time, t.used_time FROM scans sc "
                    "LEFT JOIN tickets t ON t.id = sc.ticket_id WHERE sc.event_id = :e"
                ),
                {"e": e},
            )
        ).all()
    # The admission's log time is the ticket's burn time: one instant, judged once.
    admitted = [r for r in rows if r.result == "ADMITTED"]
    assert len(admitted) == 1 and admitted[0].scan_time == admitted[0].used_time


async def test_gates_closing_while_scanning_never_admit_at_or_after_the_end(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """UpdateEvent closes the gates while scans stream in: every admission was written
    before the end instant and every EVENT_OVER at or after it; nothing else burned."""
    event, tickets = await sell(stubs, admin, 300, doors=future(0))
    e = uuid.UUID(event.id)
    await execute(
        running,
        "UPDATE events SET doors_open_time = NULL, start_time = clock_timestamp() - interval "
        "'1 hour' WHERE id = :e",
        e=e,
    )
    codes = iter(t.code for t in tickets)
    seen: Counter[str] = Counter()

    under_way = asyncio.Event()

    async def scanning() -> None:
        while seen["EVENT_OVER"] < 10:
            batch = list(itertools.islice(codes, 5))
            assert batch, f"ran out of tickets before the gates closed: {seen}"
            results = await asyncio.gather(*(scan(stubs, admin, c, event.id) for c in batch))
            seen.update(results)
            if seen["ADMITTED"] >= 5:
                under_way.set()

    async def closing() -> None:
        # Close once scanning is under way (not after a fixed sleep: a fast machine would
        # scan every ticket first), a moment ahead so the end falls among in-flight scans.
        await under_way.wait()
        end = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=100)
        changed = event_pb2.Event(id=event.id)
        changed.end_time.FromDatetime(end)
        await stubs.events.UpdateEvent(
            event_pb2.UpdateEventRequest(event=changed, update_mask=FieldMask(paths=["end_time"])),
            metadata=admin.md,
        )

    await asyncio.wait_for(asyncio.gather(scanning(), closing()), 60)
    assert seen["ADMITTED"] > 0 and seen["EVENT_OVER"] >= 10
    assert set(seen) <= {"ADMITTED", "EVENT_OVER"}
    async with running.engine.connect() as conn:
        end_time = (
            await conn.execute(text("SELECT end_time FROM events WHERE id = :e"), {"e": e})
        ).scalar_one()
        rows = (
            await conn.execute(
                text("SELECT result, scan_time FROM scans WHERE event_id = :e"), {"e": e}
            )
        ).all()
    assert all(r.scan_time < end_time for r in rows if r.result == "ADMITTED")
    assert all(r.scan_time >= end_time for r in rows if r.result == "EVENT_OVER")
    statuses = await ticket_statuses(running, event.id)
    assert statuses["USED"] == seen["ADMITTED"] == sum(r.result == "ADMITTED" for r in rows)


async def update(
    stubs: Stubs, who: Account, event_id: str, paths: list[str] | None = None, **times: Any
) -> event_pb2.Event:
    changed = event_pb2.Event(id=event_id, **times)
    request = event_pb2.UpdateEventRequest(event=changed, update_mask=FieldMask(paths=paths or []))
    return (await stubs.events.UpdateEvent(request, metadata=who.md)).event


async def refused(call: Any) -> tuple[grpc.StatusCode, str | None, list[str]]:
    with pytest.raises(aio.AioRpcError) as err:
        await call
    details = error_details(err.value)
    return details.code, details.reason, [f for f, _ in details.field_violations]


async def test_update_event_moves_the_window_with_createevents_checks(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    owner = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="win-org")
    rival = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="win-rival")
    event, tickets = await sell(stubs, admin, 3, owner=owner)
    start = event.start_time
    assert await scan(stubs, admin, tickets[0].code, event.id) == "NOT_YET_OPEN"

    # The owner opens the doors now: the next scan admits.
    opened = await update(stubs, owner, event.id, ["doors_open_time"], doors_open_time=future(0))
    assert opened.HasField("doors_open_time") and opened.start_time == start
    assert await scan(stubs, admin, tickets[0].code, event.id) == "ADMITTED"

    # CreateEvent's checks, and the mask's.
    S = grpc.StatusCode
    assert await refused(
        update(stubs, owner, event.id, ["doors_open_time"], doors_open_time=start)
    ) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["event.doors_open_time"])
    assert await refused(update(stubs, owner, event.id, ["end_time"], end_time=start)) == (
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["event.end_time"],
    )
    assert await refused(update(stubs, owner, event.id, ["name", "end_time"])) == (
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["update_mask.paths[0]"],
    )
    assert await refused(update(stubs, owner, event.id)) == (
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["update_mask"],
    )
    assert (await refused(update(stubs, owner, "not-a-uuid", ["end_time"])))[2] == ["event.id"]
    no_event = stubs.events.UpdateEvent(event_pb2.UpdateEventRequest(), metadata=owner.md)
    assert (await refused(no_event))[2] == ["event"]
    assert (await refused(update(stubs, owner, str(uuid.uuid4()), ["end_time"])))[:2] == (
        S.NOT_FOUND,
        "EVENT_NOT_FOUND",
    )
    # Someone else's event; a role that may not.
    assert (await refused(update(stubs, rival, event.id, ["end_time"])))[:2] == (
        S.PERMISSION_DENIED,
        "NOT_EVENT_OWNER",
    )
    customer = await stubs.register("win-cust")
    assert (await refused(update(stubs, customer, event.id, ["end_time"])))[:2] == (
        S.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )
    got = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert got.doors_open_time == opened.doors_open_time and not got.HasField("end_time")

    # An empty mask takes the fields that are set; a named field left unset is cleared.
    end = future(30.1)
    both = await update(stubs, admin, event.id, end_time=end)
    assert both.end_time == end and both.doors_open_time == opened.doors_open_time
    cleared = await update(stubs, owner, event.id, ["*"])
    assert not cleared.HasField("doors_open_time") and not cleared.HasField("end_time")
    assert await scan(stubs, admin, tickets[1].code, event.id) == "NOT_YET_OPEN"

    # Once over, the window stays as it was; a cancelled event too.
    await execute(
        running,
        "UPDATE events SET start_time = clock_timestamp() - interval '3 hours', end_time = "
        "clock_timestamp() - interval '1 hour' WHERE id = :e",
        e=uuid.UUID(event.id),
    )
    assert (await refused(update(stubs, owner, event.id, ["end_time"], end_time=future(1))))[
        :2
    ] == (S.FAILED_PRECONDITION, "EVENT_OVER")
    other, _ = await sell(stubs, admin, 1, owner=owner)
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=other.id, reason="x"), metadata=owner.md
    )
    assert (await refused(update(stubs, owner, other.id, ["end_time"], end_time=future(31))))[
        :2
    ] == (S.FAILED_PRECONDITION, "EVENT_CANCELLED")
