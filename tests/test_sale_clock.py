"""The start of an event, judged at the write (issue 10, items 1 and 2).

Sales, refunds and cancels decide "has the event started?" inside the statement that writes,
on the database clock of that instant, and record that instant. The tests hold a row lock
from a raw connection across an event's start, so the call under test waits on it and only
writes after the start; and they arrange partially attended events (a ticket USED at a gate
before the start) to prove a cancel never voids a used ticket nor refunds its order.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    audit,
    book_request,
    error_details,
    future,
    scan_request,
    small_layout,
)
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2, venue_pb2

T = TypeVar("T")

# The event under test starts this long after it is created: long enough to create it and
# start the blocked call on a busy machine, short enough to stay inside the test server's
# lock_timeout (5 s) while the call waits across the start.
LEAD_SECONDS = 3.0


def reason_of(exc: object) -> str:
    assert isinstance(exc, aio.AioRpcError), exc
    d = error_details(exc)
    return f"{d.code.name}:{d.reason}"


async def event_starting_soon(
    stubs: Stubs, owner: Account, venue: venue_pb2.Venue, seconds: float = LEAD_SECONDS
) -> event_pb2.Event:
    return await stubs.create_event(owner, venue, days=seconds / 86_400)


async def blocked_by(raw: asyncpg.Connection) -> int:
    """How many server backends wait for a lock the raw connection holds."""
    # The statistics views keep their first snapshot for the rest of a transaction.
    await raw.execute("SELECT pg_stat_clear_snapshot()")
    value: int = await raw.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))",
        raw.get_server_pid(),
    )
    return value


async def until(condition: Callable[[], Awaitable[bool]], what: str, rounds: int = 600) -> None:
    """Poll `condition()` until true (a bounded number of short sleeps, no timing assertion)."""
    for _ in range(rounds):
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


async def started(raw: asyncpg.Connection, event_id: str) -> bool:
    value: bool = await raw.fetchval(
        "SELECT start_time <= clock_timestamp() FROM events WHERE id = $1", uuid.UUID(event_id)
    )
    return value


async def across_the_start(
    raw: asyncpg.Connection,
    event_id: str,
    lock_sql: str,
    lock_arg: Any,
    call: Callable[[], Awaitable[T]],
) -> tuple[asyncio.Task[T], bool]:
    """Lock a row from `raw`, start `call()` (which must wait for that row), wait until the
    event has started (database clock), then release. Returns the call's task and whether
    the call was seen waiting before the start (else the test proves nothing: retry)."""
    tr = raw.transaction()
    await tr.start()
    try:
        await raw.execute(lock_sql, lock_arg)
        # The call is made only now: a grpc.aio call starts as soon as it is created, so one
        # made before the lock could reach the row first.
        task = asyncio.ensure_future(call())
        await until(lambda: _blocked_or_done(raw, task), "the call waits for the lock")
        waited_before_start = not task.done() and not await started(raw, event_id)
        await until(lambda: started(raw, event_id), "the event starts")
    finally:
        await tr.rollback()
    return task, waited_before_start


async def _blocked_or_done(raw: asyncpg.Connection, task: asyncio.Future[Any]) -> bool:
    return task.done() or await blocked_by(raw) > 0


async def test_a_sale_that_waited_across_the_start_is_refused(
    stubs: Stubs, admin: Account, running: RunningServer, raw: asyncpg.Connection
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    buyer = await stubs.register("late-buyer")
    for _ in range(3):  # a machine too slow to start the call before the start: again
        event = await event_starting_soon(stubs, admin, venue)
        seat = (await stubs.all_seats(event.id))[0].id
        task, waited = await across_the_start(
            raw,
            event.id,
            "SELECT id FROM seats WHERE id = $1 FOR UPDATE",
            seat,
            partial(stubs.booking.BookSeats, book_request(event.id, [seat]), metadata=buyer.md),
        )
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if waited:
            break
    assert waited, "the booking never waited for the seat lock before the start"
    assert reason_of(outcome) == "FAILED_PRECONDITION:EVENT_NOT_ON_SALE"
    async with running.engine.connect() as conn:
        orders = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE event_id = :e"), {"e": uuid.UUID(event.id)}
            )
        ).scalar_one()
        status = (
            await conn.execute(text("SELECT status FROM seats WHERE id = :s"), {"s": seat})
        ).scalar_one()
    assert (orders, status) == (0, "AVAILABLE")
    assert await audit(running.engine, event.id) == {}


async def test_a_refund_that_waited_across_the_start_is_refused(
    stubs: Stubs, admin: Account, running: RunningServer, raw: asyncpg.Connection
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    buyer = await stubs.register("late-refund")
    for _ in range(3):
        event = await event_starting_soon(stubs, admin, venue)
        seat = (await stubs.all_seats(event.id))[0].id
        order = (
            await stubs.booking.BookSeats(book_request(event.id, [seat]), metadata=buyer.md)
        ).order
        refund = booking_pb2.RefundOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), reason="cannot come"
        )
        task, waited = await across_the_start(
            raw,
            event.id,
            "SELECT id FROM orders WHERE id = $1 FOR UPDATE",
            uuid.UUID(order.id),
            partial(stubs.booking.RefundOrder, refund, metadata=buyer.md),
        )
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if waited:
            break
    assert waited, "the refund never waited for the order lock before the start"
    assert reason_of(outcome) == "FAILED_PRECONDITION:EVENT_STARTED"
    async with running.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT o.status, o.refund_time, t.status AS ticket, "
                    "(SELECT count(*) FROM refunds r WHERE r.order_id = o.id) AS refunds "
                    "FROM orders o JOIN tickets t ON t.order_id = o.id WHERE o.id = :o"
                ),
                {"o": uuid.UUID(order.id)},
            )
        ).one()
    assert (row.status, row.refund_time, row.ticket, row.refunds) == (
        "CONFIRMED",
        None,
        "VALID",
        0,
    )
    assert await audit(running.engine, event.id) == {}


def _as_datetime(ts: Timestamp) -> dt.datetime:
    return ts.ToDatetime(tzinfo=dt.UTC)


async def test_recorded_times_are_the_write_times(
    stubs: Stubs, admin: Account, running: RunningServer, raw: asyncpg.Connection
) -> None:
    """create_time and refund_time are when the write happened, not when the transaction
    began: a call that waited on a lock records a time after the lock was released."""
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    event = await stubs.create_event(admin, venue)
    buyer = await stubs.register("timing")
    seat = (await stubs.all_seats(event.id))[0].id

    async def held_then_released(
        sql: str, arg: Any, call: Callable[[], Awaitable[T]]
    ) -> tuple[T, dt.datetime]:
        async with raw.transaction():
            await raw.execute(sql, arg)
            task = asyncio.ensure_future(call())  # made after the lock: see across_the_start
            await until(lambda: _blocked_or_done(raw, task), "the call waits for the lock")
            assert not task.done(), f"the call did not wait for the lock: {task.exception()!r}"
            released: dt.datetime = await raw.fetchval("SELECT clock_timestamp()")
        return await task, released

    booked, released = await held_then_released(
        "SELECT id FROM seats WHERE id = $1 FOR UPDATE",
        seat,
        partial(stubs.booking.BookSeats, book_request(event.id, [seat]), metadata=buyer.md),
    )
    assert _as_datetime(booked.order.create_time) >= released
    refunded, released = await held_then_released(
        "SELECT id FROM orders WHERE id = $1 FOR UPDATE",
        uuid.UUID(booked.order.id),
        partial(
            stubs.booking.RefundOrder,
            booking_pb2.RefundOrderRequest(
                order_id=booked.order.id, request_id=str(uuid.uuid4()), reason="r"
            ),
            metadata=buyer.md,
        ),
    )
    assert _as_datetime(refunded.order.refund_time) >= released
    async with running.engine.connect() as conn:
        stamp = (
            await conn.execute(
                text("SELECT create_time FROM refunds WHERE order_id = :o"),
                {"o": uuid.UUID(booked.order.id)},
            )
        ).scalar_one()
    assert stamp == _as_datetime(refunded.order.refund_time)


async def _mark_used(running: RunningServer, ticket_id: str) -> None:
    """A ticket admitted at a gate (as the gate's burn leaves it), arranged directly."""
    async with running.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE tickets SET status = 'USED', used_time = now(), used_gate_id = 'north' "
                "WHERE id = :t"
            ),
            {"t": uuid.UUID(ticket_id)},
        )


async def _states(running: RunningServer, event_id: str) -> dict[str, Any]:
    async with running.engine.connect() as conn:
        orders: dict[str, str] = dict(
            (
                await conn.execute(
                    text("SELECT id::text, status FROM orders WHERE event_id = :e"),
                    {"e": uuid.UUID(event_id)},
                )
            ).all()
        )
        tickets: dict[str, str] = dict(
            (
                await conn.execute(
                    text("SELECT id::text, status FROM tickets WHERE event_id = :e"),
                    {"e": uuid.UUID(event_id)},
                )
            ).all()
        )
        cancelled = (
            await conn.execute(
                text("SELECT cancel_time IS NOT NULL FROM events WHERE id = :e"),
                {"e": uuid.UUID(event_id)},
            )
        ).scalar_one()
    return {"orders": orders, "tickets": tickets, "cancelled": cancelled}


async def test_cancel_after_the_start_is_refused_and_changes_nothing(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    event = await stubs.create_event(organizer, venue)
    seats = [s.id for s in await stubs.all_seats(event.id)]
    buyer = await stubs.register("attendee")
    order = (
        await stubs.booking.BookSeats(book_request(event.id, seats[:2]), metadata=buyer.md)
    ).order
    await _mark_used(running, order.tickets[0].id)
    async with running.engine.begin() as conn:
        await conn.execute(
            text("UPDATE events SET start_time = now() - interval '1 hour' WHERE id = :e"),
            {"e": uuid.UUID(event.id)},
        )
    before = await _states(running, event.id)
    for caller in (organizer, admin):
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.events.CancelEvent(
                event_pb2.CancelEventRequest(event_id=event.id, reason="too late"),
                metadata=caller.md,
            )
        assert reason_of(err.value) == "FAILED_PRECONDITION:EVENT_STARTED"
    assert await _states(running, event.id) == before
    assert before["orders"] == {order.id: "CONFIRMED"}
    assert sorted(before["tickets"].values()) == ["USED", "VALID"]
    assert before["cancelled"] is False


async def test_a_cancel_that_waited_across_the_start_is_refused(
    stubs: Stubs, admin: Account, running: RunningServer, raw: asyncpg.Connection
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    buyer = await stubs.register("cancel-race")
    for _ in range(3):
        event = await event_starting_soon(stubs, admin, venue)
        seat = (await stubs.all_seats(event.id))[0].id
        await stubs.booking.BookSeats(book_request(event.id, [seat]), metadata=buyer.md)
        task, waited = await across_the_start(
            raw,
            event.id,
            "SELECT id FROM events WHERE id = $1 FOR UPDATE",
            uuid.UUID(event.id),
            partial(
                stubs.events.CancelEvent,
                event_pb2.CancelEventRequest(event_id=event.id, reason="storm"),
                metadata=admin.md,
            ),
        )
        outcome = (await asyncio.gather(task, return_exceptions=True))[0]
        if waited:
            break
    assert waited, "the cancel never waited for the event lock before the start"
    assert reason_of(outcome) == "FAILED_PRECONDITION:EVENT_STARTED"
    states = await _states(running, event.id)
    assert states["cancelled"] is False
    assert set(states["orders"].values()) == {"CONFIRMED"}
    assert set(states["tickets"].values()) == {"VALID"}


async def test_cancel_before_the_start_keeps_attended_orders_whole(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Doors opened early and some people are in: their orders are reported, not refunded;
    USED tickets stay USED, the order's other tickets stay VALID (the order is kept whole;
    a cancelled event admits nobody), and every other order is refunded."""
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=0))
    event = await stubs.create_event(organizer, venue)
    seats = [s.id for s in await stubs.all_seats(event.id)]
    buyers = [await stubs.register("fan") for _ in range(4)]
    orders = [
        (
            await stubs.booking.BookSeats(
                book_request(event.id, seats[2 * i : 2 * i + 2]), metadata=b.md
            )
        ).order
        for i, b in enumerate(buyers)
    ]
    attended = [orders[0], orders[2]]
    await _mark_used(running, orders[0].tickets[0].id)
    await _mark_used(running, orders[2].tickets[0].id)
    await _mark_used(running, orders[2].tickets[1].id)

    resp = await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="storm"), metadata=organizer.md
    )
    assert resp.event.status == event_pb2.EVENT_STATUS_CANCELLED
    assert resp.refunded_order_count == 2
    assert resp.attended_order_count == 2
    assert list(resp.attended_order_ids) == [o.id for o in attended]  # oldest first
    # 4 seats of the refunded orders are free again; the attended orders keep theirs.
    assert (resp.event.sold_count, resp.event.available_count) == (4, 6)

    states = await _states(running, event.id)
    assert states["orders"] == {
        orders[0].id: "CONFIRMED",
        orders[1].id: "REFUNDED",
        orders[2].id: "CONFIRMED",
        orders[3].id: "REFUNDED",
    }
    tickets = states["tickets"]
    assert [tickets[t.id] for t in orders[0].tickets] == ["USED", "VALID"]
    assert [tickets[t.id] for t in orders[2].tickets] == ["USED", "USED"]
    assert {tickets[t.id] for o in (orders[1], orders[3]) for t in o.tickets} == {"VOID"}
    # The kept order cannot be refunded afterwards either: a ticket of it was used.
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.RefundOrder(
            booking_pb2.RefundOrderRequest(
                order_id=orders[0].id, request_id=str(uuid.uuid4()), reason="refund me"
            ),
            metadata=admin.md,
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:TICKET_USED"
    assert await audit(running.engine, event.id) == {}


async def test_cancel_racing_gate_scans_never_voids_an_admission(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Scans of an event's tickets while it is cancelled: whatever order they land in, an
    ADMITTED scan's ticket stays USED, its order is never refunded, and the cancel's report
    names exactly the orders with a used ticket."""
    venue = await stubs.create_venue(admin, small_layout(rows=4, seats=10, ga=0))
    start = future(0.05)  # about an hour ahead: inside any gate's opening window
    event = (
        await stubs.events.CreateEvent(
            event_pb2.CreateEventRequest(
                venue_id=venue.id,
                name="Race night",
                start_time=start,
                currency_code="EUR",
                section_prices={s.id: 1000 for s in venue.sections},
                max_tickets_per_order=2,
            ),
            metadata=admin.md,
        )
    ).event
    seats = [s.id for s in await stubs.all_seats(event.id)]
    buyers = [await stubs.register("racer") for _ in range(20)]
    orders = list(
        await asyncio.gather(
            *(
                stubs.booking.BookSeats(
                    book_request(event.id, seats[2 * i : 2 * i + 2]), metadata=b.md
                )
                for i, b in enumerate(buyers)
            )
        )
    )
    codes = [t.code for r in orders for t in r.order.tickets]
    gatekeeper = admin  # ADMIN may scan any event (an assigned entry manager would too)
    scans = [
        stubs.gate.ValidateTicket(scan_request(code, event.id), metadata=gatekeeper.md)
        for code in codes
    ]
    cancel = stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="race"), metadata=admin.md
    )
    results = await asyncio.gather(cancel, *scans, return_exceptions=True)
    cancelled = results[0]
    if isinstance(cancelled, aio.AioRpcError):
        # A scan holding its ticket while waiting for the event row can deadlock with the
        # cancel; PostgreSQL aborts one of them and the organizer retries.
        assert reason_of(cancelled) in {"ABORTED:CONCURRENCY_CONFLICT", "ABORTED:LOCKED"}
        cancelled = await stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=event.id, reason="race"), metadata=admin.md
        )
    assert isinstance(cancelled, event_pb2.CancelEventResponse)
    for r in results[1:]:
        if isinstance(r, BaseException):
            assert isinstance(r, aio.AioRpcError)
            assert r.code() not in {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
        else:
            assert isinstance(r, gate_pb2.ValidateTicketResponse)
    async with running.engine.connect() as conn:
        admitted_not_used = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM scans s JOIN tickets t ON t.id = s.ticket_id "
                    "WHERE s.event_id = :e AND s.result = 'ADMITTED' AND t.status <> 'USED'"
                ),
                {"e": uuid.UUID(event.id)},
            )
        ).scalar_one()
        used_orders = {
            str(r[0])
            for r in (
                await conn.execute(
                    text(
                        "SELECT DISTINCT t.order_id FROM tickets t "
                        "WHERE t.event_id = :e AND t.status = 'USED'"
                    ),
                    {"e": uuid.UUID(event.id)},
                )
            ).all()
        }
    states = await _states(running, event.id)
    assert admitted_not_used == 0
    assert {o for o, s in states["orders"].items() if s == "CONFIRMED"} == used_orders
    assert set(cancelled.attended_order_ids) == used_orders
    assert cancelled.attended_order_count == len(used_orders)
    assert cancelled.refunded_order_count == len(orders) - len(used_orders)
    assert await audit(running.engine, event.id) == {}
