"""Holds and checkout (issue 12) through the real server on real PostgreSQL, under real
concurrency: seats held at selection, confirmed at payment, free again on expiry with no
sweeper running."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable

import pytest
from google.protobuf.duration_pb2 import Duration
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    audit,
    book_request,
    client_pool,
    error_details,
    rich_detail,
    small_layout,
)
from ticketing.v1 import booking_pb2, common_pb2, event_pb2

from google.rpc import error_details_pb2  # isort: skip


@pytest.fixture(scope="module")
async def pool(running: RunningServer) -> AsyncIterator[list[Stubs]]:
    async with client_pool(running.target, 8) as pool:
        yield pool


def reason_of(exc: BaseException) -> str:
    assert isinstance(exc, aio.AioRpcError), exc
    d = error_details(exc)
    return f"{d.code.name}:{d.reason}"


def hold_request(
    event_id: str,
    seat_ids: list[int],
    *,
    ttl: float | None = None,
    request_id: str | None = None,
) -> booking_pb2.HoldSeatsRequest:
    request = booking_pb2.HoldSeatsRequest(
        event_id=event_id,
        request_id=request_id or str(uuid.uuid4()),
        seat_ids=booking_pb2.SeatIds(ids=seat_ids),
    )
    if ttl is not None:
        request.ttl.CopyFrom(duration(ttl))
    return request


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


async def hold(
    stubs: Stubs, who: Account, request: booking_pb2.HoldSeatsRequest
) -> booking_pb2.Hold:
    return (await stubs.booking.HoldSeats(request, metadata=who.md)).hold


async def confirm(
    stubs: Stubs, who: Account, hold_id: str, request_id: str | None = None, ref: str = "pay_1"
) -> booking_pb2.Order:
    request = booking_pb2.ConfirmHoldRequest(
        hold_id=hold_id, request_id=request_id or str(uuid.uuid4()), payment_reference=ref
    )
    return (await stubs.booking.ConfirmHold(request, metadata=who.md)).order


async def get_hold(stubs: Stubs, who: Account, hold_id: str) -> booking_pb2.Hold:
    return (
        await stubs.booking.GetHold(booking_pb2.GetHoldRequest(hold_id=hold_id), metadata=who.md)
    ).hold


async def wait_expired(stubs: Stubs, who: Account, hold_id: str) -> None:
    """Until the database clock says the hold expired (bounded: 200 reads, 10 s)."""
    for _ in range(200):
        if (await get_hold(stubs, who, hold_id)).status == booking_pb2.HOLD_STATUS_EXPIRED:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the hold never expired")


async def seat_status(stubs: Stubs, event_id: str) -> dict[int, int]:
    return {s.id: s.status for s in await stubs.all_seats(event_id)}


async def new_event(
    stubs: Stubs,
    admin: Account,
    *,
    seats: int = 6,
    max_per_order: int = 10,
    max_per_customer: int | None = None,
) -> tuple[event_pb2.Event, list[int]]:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=seats, ga=0))
    event = await stubs.create_event(
        admin,
        venue,
        price=1500,
        max_per_order=max_per_order,
        max_per_customer=max_per_customer,
    )
    return event, [s.id for s in await stubs.all_seats(event.id)]


async def test_hold_then_confirm_makes_the_order(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer = await stubs.register("buyer")
    h = await hold(stubs, buyer, hold_request(event.id, [seats[2], seats[0]]))
    assert h.status == booking_pb2.HOLD_STATUS_ACTIVE
    assert [s.seat_id for s in h.seats] == [seats[0], seats[2]]
    assert h.total_minor == 3000 and h.currency_code == "EUR" and h.customer_id == buyer.user.id
    # Default ttl: TICKETING_HOLD_TTL (600 s).
    ttl = h.expire_time.ToDatetime() - h.create_time.ToDatetime()
    assert ttl.total_seconds() == 600
    status = await seat_status(stubs, event.id)
    assert status[seats[0]] == status[seats[2]] == event_pb2.SEAT_STATUS_HELD
    assert status[seats[1]] == event_pb2.SEAT_STATUS_AVAILABLE
    ev = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert (ev.sections[0].available_count, ev.sections[0].held_count) == (4, 2)
    held = await stubs.all_seats(event.id, status=event_pb2.SEAT_STATUS_HELD)
    assert sorted(s.id for s in held) == [seats[0], seats[2]]

    order = await confirm(stubs, buyer, h.id, ref="psp_ch_123")
    assert order.status == booking_pb2.ORDER_STATUS_CONFIRMED
    assert order.payment_reference == "psp_ch_123" and order.total_minor == 3000
    assert [t.seat_id for t in order.tickets] == [seats[0], seats[2]]
    assert all(t.code for t in order.tickets)
    after = await get_hold(stubs, buyer, h.id)
    assert after.status == booking_pb2.HOLD_STATUS_CONFIRMED and after.order_id == order.id
    status = await seat_status(stubs, event.id)
    assert status[seats[0]] == status[seats[2]] == event_pb2.SEAT_STATUS_SOLD
    assert await audit(running.engine, event.id) == {}


async def test_confirm_of_a_hold_larger_than_the_ticket_guess(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # ConfirmHold's one statement gets tickets for 4 places before it knows the hold's size
    # (service._CONFIRM_TICKETS_GUESS): 5 and 9 places write nothing the first time, then
    # once more with as many as were locked; 4 fits at once. Every place gets its ticket.
    event, seats = await new_event(stubs, admin, seats=20, max_per_order=20)
    buyer = await stubs.register("buyer")
    for picked in (seats[0:4], seats[4:9], seats[9:18]):
        h = await hold(stubs, buyer, hold_request(event.id, picked))
        order = await confirm(stubs, buyer, h.id)
        assert [t.seat_id for t in order.tickets] == picked
        assert order.total_minor == 1500 * len(picked)
        assert len({t.code for t in order.tickets}) == len(picked)
        assert (await get_hold(stubs, buyer, h.id)).order_id == order.id
    status = await seat_status(stubs, event.id)
    assert [status[s] for s in seats[:18]] == [event_pb2.SEAT_STATUS_SOLD] * 18
    assert await audit(running.engine, event.id) == {}


async def test_200_customers_hold_one_seat_exactly_one_active_hold(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin, seats=2)
    buyers = list(await asyncio.gather(*(stubs.register("holder") for _ in range(200))))
    results = await asyncio.gather(
        *(
            pool[i % len(pool)].booking.HoldSeats(
                hold_request(event.id, [seats[0]]), metadata=buyers[i].md
            )
            for i in range(200)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, booking_pb2.HoldSeatsResponse)]
    losses = Counter(reason_of(r) for r in results if isinstance(r, BaseException))
    assert len(wins) == 1
    assert set(losses) <= {"FAILED_PRECONDITION:SEAT_UNAVAILABLE", "ABORTED:SEAT_LOCKED"}, losses
    assert sum(losses.values()) == 199
    async with running.engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM holds WHERE event_id = :e AND status = 'ACTIVE'"),
                {"e": uuid.UUID(event.id)},
            )
        ).scalar_one()
    assert n == 1
    assert await audit(running.engine, event.id) == {}


async def test_held_seat_is_free_for_others_right_after_expiry_without_a_sweeper(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    holder, other = await stubs.register("holder"), await stubs.register("other")
    h = await hold(stubs, holder, hold_request(event.id, [seats[0], seats[1]], ttl=1))
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(book_request(event.id, [seats[0]]), metadata=other.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:SEAT_UNAVAILABLE"
    await wait_expired(stubs, holder, h.id)
    # Nothing tidied the row: it is still HELD in the table, yet free by the one condition.
    async with running.engine.connect() as conn:
        stored = (
            await conn.execute(text("SELECT status FROM seats WHERE id = :s"), {"s": seats[0]})
        ).scalar_one()
    assert stored == "HELD"
    assert (await seat_status(stubs, event.id))[seats[0]] == event_pb2.SEAT_STATUS_AVAILABLE
    order = (
        await stubs.booking.BookSeats(book_request(event.id, [seats[0]]), metadata=other.md)
    ).order
    assert [t.seat_id for t in order.tickets] == [seats[0]]
    # Late confirmation of the original hold: one seat was taken -> HOLD_EXPIRED naming it,
    # nothing written (the caller refunds its payment).
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, holder, h.id)
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_EXPIRED"
    assert error_details(err.value).metadata["seat_ids"] == str(seats[0])
    failure = rich_detail(err.value, error_details_pb2.PreconditionFailure)
    assert failure is not None and [v.subject for v in failure.violations] == [str(seats[0])]
    async with running.engine.connect() as conn:
        mine = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE customer_id = :c"),
                {"c": uuid.UUID(holder.user.id)},
            )
        ).scalar_one()
    assert mine == 0
    assert (await get_hold(stubs, holder, h.id)).status == booking_pb2.HOLD_STATUS_EXPIRED
    # The hold's other seat is free for anyone too.
    assert (await seat_status(stubs, event.id))[seats[1]] == event_pb2.SEAT_STATUS_AVAILABLE
    assert await audit(running.engine, event.id) == {}


async def test_late_confirm_succeeds_while_the_seats_are_still_free(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer = await stubs.register("late")
    h = await hold(stubs, buyer, hold_request(event.id, [seats[3], seats[4]], ttl=1))
    await wait_expired(stubs, buyer, h.id)
    order = await confirm(stubs, buyer, h.id)
    assert [t.seat_id for t in order.tickets] == [seats[3], seats[4]]
    after = await get_hold(stubs, buyer, h.id)
    assert after.status == booking_pb2.HOLD_STATUS_CONFIRMED and after.order_id == order.id
    assert await audit(running.engine, event.id) == {}


async def test_late_confirm_racing_a_buyer_never_sells_twice(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin, seats=10)
    holders = [await stubs.register("late") for _ in range(10)]
    rivals = [await stubs.register("rival") for _ in range(10)]
    holds = [
        await hold(stubs, holders[i], hold_request(event.id, [seats[i]], ttl=1)) for i in range(10)
    ]
    await wait_expired(stubs, holders[-1], holds[-1].id)
    calls: list[Awaitable[object]] = []
    for i in range(10):
        req = booking_pb2.ConfirmHoldRequest(hold_id=holds[i].id, request_id=str(uuid.uuid4()))
        calls.append(pool[i % 8].booking.ConfirmHold(req, metadata=holders[i].md))
        calls.append(
            pool[(i + 4) % 8].booking.BookSeats(
                book_request(event.id, [seats[i]]), metadata=rivals[i].md
            )
        )
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i in range(10):
        first, second = results[2 * i], results[2 * i + 1]
        won = [r for r in (first, second) if not isinstance(r, BaseException)]
        assert len(won) == 1, (first, second)
        lost = first if isinstance(first, BaseException) else second
        assert isinstance(lost, BaseException)
        assert reason_of(lost) in {
            "FAILED_PRECONDITION:HOLD_EXPIRED",
            "FAILED_PRECONDITION:SEAT_UNAVAILABLE",
            "ABORTED:SEAT_LOCKED",
        }
    assert await audit(running.engine, event.id) == {}


async def test_extension_is_capped_at_the_max_ttl_from_creation(
    stubs: Stubs, admin: Account
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer = await stubs.register("extender")
    h = await hold(stubs, buyer, hold_request(event.id, [seats[0]], ttl=60))

    async def extend(ttl: float | None) -> booking_pb2.Hold:
        request = booking_pb2.ExtendHoldRequest(hold_id=h.id)
        if ttl is not None:
            request.ttl.CopyFrom(duration(ttl))
        return (await stubs.booking.ExtendHold(request, metadata=buyer.md)).hold

    longer = await extend(600)
    assert longer.expire_time.ToDatetime() > h.expire_time.ToDatetime()
    # A shorter extension never shortens the hold.
    assert (await extend(1)).expire_time == longer.expire_time
    # Now + 1800 s is past creation + 1800 s (TICKETING_HOLD_MAX_TTL): refused, unchanged.
    with pytest.raises(aio.AioRpcError) as err:
        await extend(1800)
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_LIMIT_EXCEEDED"
    assert (await get_hold(stubs, buyer, h.id)).expire_time == longer.expire_time
    for bad in (0, 0.5, 1801):
        with pytest.raises(aio.AioRpcError) as err:
            await extend(bad)
        assert reason_of(err.value) == "INVALID_ARGUMENT:INVALID_ARGUMENT", bad
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.HoldSeats(
            hold_request(event.id, [seats[1]], ttl=1801), metadata=buyer.md
        )
    assert reason_of(err.value) == "INVALID_ARGUMENT:INVALID_ARGUMENT"
    at_cap = await hold(stubs, buyer, hold_request(event.id, [seats[1]], ttl=1800))
    assert (
        at_cap.expire_time.ToDatetime() - at_cap.create_time.ToDatetime()
    ).total_seconds() == 1800
    # An expired hold is not revived.
    short = await hold(stubs, buyer, hold_request(event.id, [seats[2]], ttl=1))
    await wait_expired(stubs, buyer, short.id)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.ExtendHold(
            booking_pb2.ExtendHoldRequest(hold_id=short.id), metadata=buyer.md
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_EXPIRED"


async def test_release_frees_the_seats_at_once(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer, other = await stubs.register("releaser"), await stubs.register("next")
    h = await hold(stubs, buyer, hold_request(event.id, [seats[0], seats[1]]))
    released = (
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=h.id), metadata=buyer.md
        )
    ).hold
    assert released.status == booking_pb2.HOLD_STATUS_RELEASED
    status = await seat_status(stubs, event.id)
    assert status[seats[0]] == status[seats[1]] == event_pb2.SEAT_STATUS_AVAILABLE
    taken = await hold(stubs, other, hold_request(event.id, [seats[0], seats[1]]))
    assert taken.status == booking_pb2.HOLD_STATUS_ACTIVE
    # Releasing again answers RELEASED and does not touch the seats now someone else's.
    again = (
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=h.id), metadata=buyer.md
        )
    ).hold
    assert again.status == booking_pb2.HOLD_STATUS_RELEASED
    assert (await get_hold(stubs, other, taken.id)).status == booking_pb2.HOLD_STATUS_ACTIVE
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, buyer, h.id)
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_NOT_ACTIVE"
    # A confirmed hold cannot be released.
    await confirm(stubs, other, taken.id)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=taken.id), metadata=other.md
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_NOT_ACTIVE"
    assert await audit(running.engine, event.id) == {}


async def test_caps_count_live_holds(stubs: Stubs, admin: Account) -> None:
    event, seats = await new_event(stubs, admin, seats=10, max_per_customer=3, max_per_order=2)
    buyer = await stubs.register("capped")
    first = await hold(stubs, buyer, hold_request(event.id, [seats[0], seats[1]]))
    with pytest.raises(aio.AioRpcError) as err:
        await hold(stubs, buyer, hold_request(event.id, [seats[2], seats[3]]))
    assert reason_of(err.value) == "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(
            book_request(event.id, [seats[2], seats[3]]), metadata=buyer.md
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    # Per order: 3 seats in one hold is over max_tickets_per_order.
    with pytest.raises(aio.AioRpcError) as err:
        await hold(stubs, buyer, hold_request(event.id, seats[4:7]))
    assert reason_of(err.value) == "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    # Exactly at the cap is fine.
    await stubs.booking.BookSeats(book_request(event.id, [seats[2]]), metadata=buyer.md)
    # A released hold no longer counts; an expired one neither.
    await stubs.booking.ReleaseHold(
        booking_pb2.ReleaseHoldRequest(hold_id=first.id), metadata=buyer.md
    )
    short = await hold(stubs, buyer, hold_request(event.id, [seats[4], seats[5]], ttl=1))
    await wait_expired(stubs, buyer, short.id)
    again = await hold(stubs, buyer, hold_request(event.id, [seats[6], seats[7]]))
    # The expired hold's late confirmation would now exceed the cap (1 sold + 2 live held).
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, buyer, short.id)
    assert reason_of(err.value) == "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    await confirm(stubs, buyer, again.id)


async def test_concurrent_holds_of_one_customer_respect_the_cap(
    stubs: Stubs, pool: list[Stubs], admin: Account
) -> None:
    event, seats = await new_event(stubs, admin, seats=20, max_per_customer=4, max_per_order=1)
    buyer = await stubs.register("greedy")
    results = await asyncio.gather(
        *(
            pool[i % 8].booking.HoldSeats(hold_request(event.id, [seats[i]]), metadata=buyer.md)
            for i in range(20)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if not isinstance(r, BaseException)]
    assert len(wins) == 4
    assert {reason_of(r) for r in results if isinstance(r, BaseException)} == {
        "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    }


async def test_confirm_is_idempotent_by_request_id(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer = await stubs.register("payer")
    h = await hold(stubs, buyer, hold_request(event.id, [seats[0]]))
    rid = str(uuid.uuid4())
    orders = await asyncio.gather(*(confirm(pool[i], buyer, h.id, rid) for i in range(6)))
    assert len({o.id for o in orders}) == 1
    assert await confirm(stubs, buyer, h.id, rid) == orders[0]
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, buyer, h.id)
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_NOT_ACTIVE"
    # The same request_id for another hold is a mismatch, not that hold's order.
    other = await hold(stubs, buyer, hold_request(event.id, [seats[1]]))
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, buyer, other.id, rid)
    assert reason_of(err.value) == "FAILED_PRECONDITION:REQUEST_ID_MISMATCH"
    # HoldSeats retried with its request_id returns the first hold; another selection is a
    # mismatch.
    req = hold_request(event.id, [seats[2]])
    first, second = await asyncio.gather(hold(pool[0], buyer, req), hold(pool[1], buyer, req))
    assert first.id == second.id
    with pytest.raises(aio.AioRpcError) as err:
        await hold(stubs, buyer, hold_request(event.id, [seats[3]], request_id=req.request_id))
    assert reason_of(err.value) == "FAILED_PRECONDITION:REQUEST_ID_MISMATCH"
    async with running.engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE customer_id = :c"),
                {"c": uuid.UUID(buyer.user.id)},
            )
        ).scalar_one()
    assert n == 1
    assert await audit(running.engine, event.id) == {}


async def test_concurrent_confirm_and_release_one_wins_cleanly(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin, seats=30)
    buyer = await stubs.register("torn")
    holds = [await hold(stubs, buyer, hold_request(event.id, [s])) for s in seats[:15]]
    calls = []
    for i, h in enumerate(holds):
        req = booking_pb2.ConfirmHoldRequest(hold_id=h.id, request_id=str(uuid.uuid4()))
        rel = booking_pb2.ReleaseHoldRequest(hold_id=h.id)
        pair: list[Awaitable[object]] = [
            pool[i % 8].booking.ConfirmHold(req, metadata=buyer.md),
            pool[(i + 3) % 8].booking.ReleaseHold(rel, metadata=buyer.md),
        ]
        calls.extend(pair if i % 2 else pair[::-1])
    results = await asyncio.gather(*calls, return_exceptions=True)
    outcomes: Counter[str] = Counter()
    for i, h in enumerate(holds):
        confirmed, released = (
            results[2 * i : 2 * i + 2] if i % 2 else results[2 * i : 2 * i + 2][::-1]
        )
        failed = [r for r in (confirmed, released) if isinstance(r, BaseException)]
        # Exactly one wins; the other is told the hold is no longer active.
        assert len(failed) == 1, (confirmed, released)
        assert reason_of(failed[0]) == "FAILED_PRECONDITION:HOLD_NOT_ACTIVE"
        final = await get_hold(stubs, buyer, h.id)
        if isinstance(confirmed, booking_pb2.ConfirmHoldResponse):
            assert final.status == booking_pb2.HOLD_STATUS_CONFIRMED
            assert final.order_id == confirmed.order.id
            outcomes["confirm"] += 1
        else:
            assert final.status == booking_pb2.HOLD_STATUS_RELEASED and not final.order_id
            outcomes["release"] += 1
    assert sum(outcomes.values()) == 15
    assert await audit(running.engine, event.id) == {}


async def test_cancel_event_releases_live_holds(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin)
    buyer = await stubs.register("cancelled")
    live = await hold(stubs, buyer, hold_request(event.id, [seats[0], seats[1]]))
    sold = await hold(stubs, buyer, hold_request(event.id, [seats[2]]))
    await confirm(stubs, buyer, sold.id)
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="storm"), metadata=admin.md
    )
    assert (await get_hold(stubs, buyer, live.id)).status == booking_pb2.HOLD_STATUS_RELEASED
    assert (await get_hold(stubs, buyer, sold.id)).status == booking_pb2.HOLD_STATUS_CONFIRMED
    status = await seat_status(stubs, event.id)
    assert all(v == event_pb2.SEAT_STATUS_AVAILABLE for v in status.values())
    with pytest.raises(aio.AioRpcError) as err:
        await confirm(stubs, buyer, live.id)
    assert reason_of(err.value) == "FAILED_PRECONDITION:HOLD_NOT_ACTIVE"
    with pytest.raises(aio.AioRpcError) as err:
        await hold(stubs, buyer, hold_request(event.id, [seats[3]]))
    assert reason_of(err.value) == "FAILED_PRECONDITION:EVENT_NOT_ON_SALE"
    assert await audit(running.engine, event.id) == {}


async def test_cancel_racing_confirmations_leaves_no_hold_behind(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    event, seats = await new_event(stubs, admin, seats=12)
    buyer = await stubs.register("racer")
    holds = [await hold(stubs, buyer, hold_request(event.id, [s])) for s in seats]
    confirms = [confirm(pool[i % 8], buyer, h.id) for i, h in enumerate(holds)]
    cancel = stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="race"), metadata=admin.md
    )
    results = await asyncio.gather(cancel, *confirms, return_exceptions=True)
    assert not isinstance(results[0], BaseException), results[0]
    for r in results[1:]:
        if isinstance(r, BaseException):
            assert reason_of(r) in {
                "FAILED_PRECONDITION:HOLD_NOT_ACTIVE",
                "FAILED_PRECONDITION:EVENT_NOT_ON_SALE",
            }
    async with running.engine.connect() as conn:
        left = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM holds WHERE event_id = :e AND status = 'ACTIVE')"
                    " + (SELECT count(*) FROM seats WHERE event_id = :e AND status <> 'AVAILABLE')"
                    " + (SELECT count(*) FROM orders WHERE event_id = :e AND status = 'CONFIRMED')"
                ),
                {"e": uuid.UUID(event.id)},
            )
        ).scalar_one()
    assert left == 0
    assert await audit(running.engine, event.id) == {}


async def test_someone_elses_hold(stubs: Stubs, admin: Account) -> None:
    event, seats = await new_event(stubs, admin)
    owner, thief = await stubs.register("owner"), await stubs.register("thief")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="support")
    h = await hold(stubs, owner, hold_request(event.id, [seats[0]]))
    with pytest.raises(aio.AioRpcError) as err:
        await get_hold(stubs, thief, h.id)
    assert reason_of(err.value) == "PERMISSION_DENIED:NOT_HOLD_OWNER"
    for call in (
        stubs.booking.ExtendHold(booking_pb2.ExtendHoldRequest(hold_id=h.id), metadata=thief.md),
        stubs.booking.ReleaseHold(booking_pb2.ReleaseHoldRequest(hold_id=h.id), metadata=thief.md),
        confirm(stubs, thief, h.id),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert reason_of(err.value) == "PERMISSION_DENIED:NOT_HOLD_OWNER"
    # SUPPORT reads it (as it reads orders) but cannot act on it.
    assert (await get_hold(stubs, support, h.id)).id == h.id
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=h.id), metadata=support.md
        )
    assert error_details(err.value).code.name == "PERMISSION_DENIED"
    # Lists: own only for a customer; SUPPORT filters by customer.
    mine = await stubs.booking.ListHolds(booking_pb2.ListHoldsRequest(), metadata=thief.md)
    assert list(mine.holds) == []
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.ListHolds(
            booking_pb2.ListHoldsRequest(customer_email=owner.email), metadata=thief.md
        )
    assert reason_of(err.value) == "PERMISSION_DENIED:NOT_HOLD_OWNER"
    theirs = await stubs.booking.ListHolds(
        booking_pb2.ListHoldsRequest(customer_email=owner.email), metadata=support.md
    )
    assert [x.id for x in theirs.holds] == [h.id]
    with pytest.raises(aio.AioRpcError) as err:
        await get_hold(stubs, owner, str(uuid.uuid4()))
    assert reason_of(err.value) == "NOT_FOUND:HOLD_NOT_FOUND"
    # The hold is untouched.
    assert (await get_hold(stubs, owner, h.id)).status == booking_pb2.HOLD_STATUS_ACTIVE


async def test_list_holds_pages_newest_first(stubs: Stubs, admin: Account) -> None:
    event, seats = await new_event(stubs, admin, seats=5)
    buyer = await stubs.register("lister")
    made = [(await hold(stubs, buyer, hold_request(event.id, [s]))).id for s in seats]
    first = await stubs.booking.ListHolds(
        booking_pb2.ListHoldsRequest(page_size=3, event_id=event.id), metadata=buyer.md
    )
    rest = await stubs.booking.ListHolds(
        booking_pb2.ListHoldsRequest(
            page_size=3, event_id=event.id, page_token=first.next_page_token
        ),
        metadata=buyer.md,
    )
    assert [h.id for h in [*first.holds, *rest.holds]] == made[::-1]
    assert rest.next_page_token == ""


async def test_best_available_passes_live_holds_and_takes_expired_ones(
    stubs: Stubs, admin: Account
) -> None:
    event, seats = await new_event(stubs, admin, seats=6)
    section = event.sections[0].section_id
    a, b = await stubs.register("a"), await stubs.register("b")
    await hold(stubs, a, hold_request(event.id, [seats[0]]))
    short = await hold(stubs, a, hold_request(event.id, [seats[1]], ttl=1))
    best = booking_pb2.HoldSeatsRequest(
        event_id=event.id,
        request_id=str(uuid.uuid4()),
        best_available=booking_pb2.BestAvailable(section_id=section, quantity=1),
    )
    got = await hold(stubs, b, best)
    assert [s.seat_id for s in got.seats] == [seats[2]]
    await wait_expired(stubs, a, short.id)
    best.request_id = str(uuid.uuid4())
    again = await hold(stubs, b, best)
    assert [s.seat_id for s in again.seats] == [seats[1]]
    best.request_id = str(uuid.uuid4())
    best.best_available.quantity = 4
    with pytest.raises(aio.AioRpcError) as err:
        await hold(stubs, b, best)
    assert reason_of(err.value) == "FAILED_PRECONDITION:SOLD_OUT"
    assert error_details(err.value).metadata["available"] == "3"
