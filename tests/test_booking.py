"""Booking engine under real concurrency: real server, real PostgreSQL, many clients at once."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    all_pages,
    audit,
    best_request,
    book_request,
    client_pool,
    error_details,
    small_layout,
)
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, venue_pb2

CONTENTION = {"SEAT_UNAVAILABLE", "SEAT_LOCKED"}


@pytest.fixture(scope="module")
async def pool(running: RunningServer) -> AsyncIterator[list[Stubs]]:
    """Several channels, so concurrent calls arrive like many separate clients."""
    async with client_pool(running.target, 8) as pool:
        yield pool


async def customers(stubs: Stubs, n: int) -> list[Account]:
    return list(await asyncio.gather(*(stubs.register("buyer") for _ in range(n))))


def reason_of(exc: BaseException) -> str:
    assert isinstance(exc, aio.AioRpcError), exc
    d = error_details(exc)
    return f"{d.code.name}:{d.reason}"


async def test_book_specific_seats(stubs: Stubs, admin: Account, running: RunningServer) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=3))
    event = await stubs.create_event(admin, venue, price=1999)
    seats = await stubs.all_seats(event.id)
    buyer = (await customers(stubs, 1))[0]
    wanted = [seats[3].id, seats[1].id]
    order = (await stubs.booking.BookSeats(book_request(event.id, wanted), metadata=buyer.md)).order
    assert order.status == booking_pb2.ORDER_STATUS_CONFIRMED
    assert order.customer_id == buyer.user.id and order.event_id == event.id
    assert order.total_minor == 2 * 1999 and order.currency_code == "EUR"
    assert [t.seat_id for t in order.tickets] == sorted(wanted)
    t0 = order.tickets[0]
    assert (t0.section_name, t0.row_label, t0.seat_number, t0.seat_label) == ("Stalls", "A", 2, "2")
    codes = [t.code for t in order.tickets]
    assert len(set(codes)) == 2 and all(len(c) >= 32 for c in codes)
    assert {t.status for t in order.tickets} == {booking_pb2.TICKET_STATUS_VALID}
    got = (
        await stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=order.id), metadata=buyer.md
        )
    ).order
    assert got == order
    ev = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert (ev.sold_count, ev.available_count) == (2, 11)
    sold = await stubs.all_seats(event.id, status=event_pb2.SEAT_STATUS_SOLD)
    assert sorted(s.id for s in sold) == sorted(wanted)
    assert await audit(running.engine, event.id) == {}


async def test_best_available_takes_lowest_places(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=3, ga=4))
    event = await stubs.create_event(admin, venue)
    buyer = (await customers(stubs, 1))[0]
    first = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[0].id, 2), metadata=buyer.md
        )
    ).order
    assert [(t.row_label, t.seat_number) for t in first.tickets] == [("A", 1), ("A", 2)]
    second = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[0].id, 2), metadata=buyer.md
        )
    ).order
    assert [(t.row_label, t.seat_number) for t in second.tickets] == [("A", 3), ("B", 1)]
    ga = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[1].id, 4), metadata=buyer.md
        )
    ).order
    assert len(ga.tickets) == 4 and all(t.row_label == "" for t in ga.tickets)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[1].id, 1), metadata=buyer.md
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:SOLD_OUT"


async def test_200_buyers_one_seat_exactly_one_wins(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=2, ga=0))
    event = await stubs.create_event(admin, venue)
    seat = (await stubs.all_seats(event.id))[0].id
    buyers = await customers(stubs, 50)
    calls = [
        pool[i % len(pool)].booking.BookSeats(
            book_request(event.id, [seat]), metadata=buyers[i % 50].md
        )
        for i in range(200)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    wins = [r for r in results if isinstance(r, booking_pb2.BookSeatsResponse)]
    losses = Counter(
        reason_of(r) for r in results if not isinstance(r, booking_pb2.BookSeatsResponse)
    )
    assert len(wins) == 1
    assert set(losses) <= {"FAILED_PRECONDITION:SEAT_UNAVAILABLE", "ABORTED:SEAT_LOCKED"}, losses
    assert sum(losses.values()) == 199
    async with running.engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE event_id = :e"), {"e": uuid.UUID(event.id)}
            )
        ).scalar_one()
    assert n == 1
    assert await audit(running.engine, event.id) == {}


async def test_rush_500_buyers_300_seats_keeps_every_invariant(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=15, seats=20, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=4)
    seat_ids = [s.id for s in await stubs.all_seats(event.id)]
    assert len(seat_ids) == 300
    buyers = await customers(stubs, 100)
    rng = random.Random(7)
    requests = [
        (book_request(event.id, rng.sample(seat_ids, rng.randint(1, 4))), buyers[i % 100])
        for i in range(500)
    ]
    results = await asyncio.gather(
        *(
            pool[i % len(pool)].booking.BookSeats(req, metadata=who.md)
            for i, (req, who) in enumerate(requests)
        ),
        return_exceptions=True,
    )
    confirmed = [r.order for r in results if isinstance(r, booking_pb2.BookSeatsResponse)]
    failures = Counter(
        reason_of(r) for r in results if not isinstance(r, booking_pb2.BookSeatsResponse)
    )
    assert set(failures) <= {"FAILED_PRECONDITION:SEAT_UNAVAILABLE", "ABORTED:SEAT_LOCKED"}, (
        failures
    )
    assert confirmed, "nobody bought anything"
    sold_by_clients = [t.seat_id for o in confirmed for t in o.tickets]
    assert len(sold_by_clients) == len(set(sold_by_clients)), "a seat was sold twice"
    # Each confirmed order holds exactly the seats its request named.
    for result, (req, _) in zip(results, requests, strict=True):
        if isinstance(result, booking_pb2.BookSeatsResponse):
            assert sorted(t.seat_id for t in result.order.tickets) == sorted(req.seat_ids.ids)
    sold = await stubs.all_seats(event.id, status=event_pb2.SEAT_STATUS_SOLD)
    assert sorted(s.id for s in sold) == sorted(sold_by_clients)
    assert await audit(running.engine, event.id) == {}


async def test_best_available_rush_never_oversells(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(
        admin,
        venue_pb2.Venue(
            name="Field",
            time_zone="UTC",
            sections=[
                venue_pb2.Section(
                    name="Floor", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=120
                )
            ],
        ),
    )
    event = await stubs.create_event(admin, venue, max_per_order=3)
    section = venue.sections[0].id
    buyers = await customers(stubs, 60)
    rng = random.Random(3)
    results = await asyncio.gather(
        *(
            pool[i % len(pool)].booking.BookSeats(
                best_request(event.id, section, rng.randint(1, 3)), metadata=buyers[i % 60].md
            )
            for i in range(300)
        ),
        return_exceptions=True,
    )
    confirmed = [r.order for r in results if isinstance(r, booking_pb2.BookSeatsResponse)]
    failures = Counter(
        reason_of(r) for r in results if not isinstance(r, booking_pb2.BookSeatsResponse)
    )
    assert set(failures) <= {"FAILED_PRECONDITION:SOLD_OUT", "ABORTED:SEAT_LOCKED"}, failures
    sold = sum(len(o.tickets) for o in confirmed)
    assert sold <= 120
    assert sold >= 118  # 300 requests of 1-3 places: the section is (nearly) emptied
    ev = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert ev.sold_count == sold and ev.available_count == 120 - sold
    assert await audit(running.engine, event.id) == {}


async def test_opposite_order_overlaps_never_deadlock(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=4, seats=10, ga=0))
    event = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    buyers = await customers(stubs, 2)
    calls = []
    for i in range(0, 40, 2):
        a, b, c = ids[i], ids[i + 1], ids[(i + 2) % 40]
        calls.append(
            pool[0].booking.BookSeats(book_request(event.id, [a, b, c]), metadata=buyers[0].md)
        )
        calls.append(
            pool[1].booking.BookSeats(book_request(event.id, [c, b, a]), metadata=buyers[1].md)
        )
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = Counter(
        reason_of(r) for r in results if not isinstance(r, booking_pb2.BookSeatsResponse)
    )
    assert set(failures) <= {"FAILED_PRECONDITION:SEAT_UNAVAILABLE", "ABORTED:SEAT_LOCKED"}, (
        failures
    )
    assert await audit(running.engine, event.id) == {}


async def test_idempotent_retries_and_concurrent_duplicates(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=10))
    event = await stubs.create_event(admin, venue)
    seats = await stubs.all_seats(event.id)
    buyer = (await customers(stubs, 1))[0]
    req = book_request(event.id, [seats[0].id, seats[1].id])
    first = (await stubs.booking.BookSeats(req, metadata=buyer.md)).order
    again = (await stubs.booking.BookSeats(req, metadata=buyer.md)).order
    assert again == first

    # 20 copies of one request at once (specific seats and best available): one order each.
    for dup in (
        book_request(event.id, [seats[5].id]),
        best_request(event.id, venue.sections[1].id, 2),
    ):
        results = await asyncio.gather(
            *(pool[i % len(pool)].booking.BookSeats(dup, metadata=buyer.md) for i in range(20)),
            return_exceptions=True,
        )
        # ABORTED means "retry the same request": on a starved machine a twin may give up
        # its lock wait before the first copy commits. Retrying must return that order.
        for i, r in enumerate(results):
            for _ in range(5):
                if not (isinstance(r, aio.AioRpcError) and r.code() == grpc.StatusCode.ABORTED):
                    break
                await asyncio.sleep(0.2)
                try:
                    r = await stubs.booking.BookSeats(dup, metadata=buyer.md)
                except aio.AioRpcError as again:
                    r = again
            results[i] = r
        assert all(isinstance(r, booking_pb2.BookSeatsResponse) for r in results), [
            reason_of(r) for r in results if isinstance(r, BaseException)
        ]
        orders = {r.order.id for r in results if isinstance(r, booking_pb2.BookSeatsResponse)}
        assert len(orders) == 1
    async with running.engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE customer_id = :c"),
                {"c": uuid.UUID(buyer.user.id)},
            )
        ).scalar_one()
    assert n == 3

    mismatch = book_request(event.id, [seats[2].id], request_id=req.request_id)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(mismatch, metadata=buyer.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:REQUEST_ID_MISMATCH"
    # Another customer may use the same request_id: ids are scoped per caller.
    other = (await customers(stubs, 1))[0]
    theirs = (await stubs.booking.BookSeats(mismatch, metadata=other.md)).order
    assert theirs.customer_id == other.user.id
    assert await audit(running.engine, event.id) == {}


async def test_per_customer_cap_holds_across_connections(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=3, seats=10, ga=0))
    event = await stubs.create_event(admin, venue, max_per_customer=4, max_per_order=3)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    buyer = (await customers(stubs, 1))[0]
    results = await asyncio.gather(
        *(
            pool[i % len(pool)].booking.BookSeats(
                book_request(event.id, [ids[i]]), metadata=buyer.md
            )
            for i in range(24)
        ),
        return_exceptions=True,
    )
    wins = [r for r in results if isinstance(r, booking_pb2.BookSeatsResponse)]
    failures = Counter(
        reason_of(r) for r in results if not isinstance(r, booking_pb2.BookSeatsResponse)
    )
    assert len(wins) == 4
    assert failures == {"FAILED_PRECONDITION:LIMIT_EXCEEDED": 20}
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(
            book_request(event.id, ids[25:29]), metadata=(await customers(stubs, 1))[0].md
        )
    assert reason_of(err.value) == "FAILED_PRECONDITION:LIMIT_EXCEEDED"
    assert await audit(running.engine, event.id) == {}


async def test_booking_refusals(stubs: Stubs, admin: Account, running: RunningServer) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=5, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=2)
    other = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    other_ids = [s.id for s in await stubs.all_seats(other.id)]
    buyer = (await customers(stubs, 1))[0]
    cases = [
        (book_request(event.id, ids[:3]), "FAILED_PRECONDITION:LIMIT_EXCEEDED"),
        (book_request(event.id, [ids[0], ids[0]]), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (book_request(event.id, [other_ids[0]]), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (book_request(event.id, []), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (book_request(event.id, [ids[0]], request_id="nope"), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (
            booking_pb2.BookSeatsRequest(event_id=event.id, request_id=str(uuid.uuid4())),
            "INVALID_ARGUMENT:INVALID_ARGUMENT",
        ),
        (best_request(event.id, str(uuid.uuid4()), 1), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (best_request(event.id, venue.sections[0].id, 0), "INVALID_ARGUMENT:INVALID_ARGUMENT"),
        (book_request(str(uuid.uuid4()), [ids[0]]), "NOT_FOUND:EVENT_NOT_FOUND"),
    ]
    for request, expected in cases:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.booking.BookSeats(request, metadata=buyer.md)
        assert reason_of(err.value) == expected, request
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=other.id, reason="x"), metadata=admin.md
    )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(book_request(other.id, [other_ids[0]]), metadata=buyer.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:EVENT_NOT_ON_SALE"
    async with running.engine.begin() as conn:
        await conn.execute(
            text("UPDATE events SET start_time = now() - interval '1 minute' WHERE id = :e"),
            {"e": uuid.UUID(event.id)},
        )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(book_request(event.id, [ids[0]]), metadata=buyer.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:EVENT_NOT_ON_SALE"
    gatekeeper = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="gate")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(book_request(event.id, [ids[1]]), metadata=gatekeeper.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_refunds(
    stubs: Stubs, pool: list[Stubs], admin: Account, running: RunningServer
) -> None:
    engine = running.engine
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=6, ga=0))
    event = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    buyer, stranger = await customers(stubs, 2)
    order = (
        await stubs.booking.BookSeats(book_request(event.id, ids[:2]), metadata=buyer.md)
    ).order

    def refund(order_id: str, request_id: str | None = None) -> booking_pb2.RefundOrderRequest:
        return booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=request_id or str(uuid.uuid4()), reason="changed my mind"
        )

    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.RefundOrder(refund(order.id), metadata=stranger.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    # Ten concurrent refunds of one order: exactly one refunds, the rest ALREADY_REFUNDED.
    results = await asyncio.gather(
        *(
            pool[i % len(pool)].booking.RefundOrder(refund(order.id), metadata=buyer.md)
            for i in range(10)
        ),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, booking_pb2.RefundOrderResponse)]
    assert len(done) == 1
    assert Counter(reason_of(r) for r in results if isinstance(r, BaseException)) == {
        "FAILED_PRECONDITION:ALREADY_REFUNDED": 9
    }
    refunded = done[0].order
    assert refunded.status == booking_pb2.ORDER_STATUS_REFUNDED and refunded.HasField("refund_time")
    assert {t.status for t in refunded.tickets} == {booking_pb2.TICKET_STATUS_VOID}
    # The same refund request again returns the refunded order.
    same_request = refund(order.id, request_id=None)
    async with engine.connect() as conn:
        first_request = (
            await conn.execute(
                text("SELECT request_id FROM refunds WHERE order_id = :o"),
                {"o": uuid.UUID(order.id)},
            )
        ).scalar_one()
    same_request.request_id = str(first_request)
    assert (
        await stubs.booking.RefundOrder(same_request, metadata=buyer.md)
    ).order.status == booking_pb2.ORDER_STATUS_REFUNDED
    # Seats are for sale again, and sell.
    resold = (
        await stubs.booking.BookSeats(book_request(event.id, ids[:2]), metadata=stranger.md)
    ).order
    assert resold.status == booking_pb2.ORDER_STATUS_CONFIRMED

    # Support refunds on a customer's behalf; a used ticket blocks a refund.
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="support")
    used = (
        await stubs.booking.BookSeats(book_request(event.id, [ids[2], ids[3]]), metadata=buyer.md)
    ).order
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE tickets SET status = 'USED', used_time = now() WHERE id = :t"),
            {"t": uuid.UUID(used.tickets[0].id)},
        )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.RefundOrder(refund(used.id), metadata=support.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:TICKET_USED"
    fine = (
        await stubs.booking.BookSeats(book_request(event.id, [ids[4]]), metadata=buyer.md)
    ).order
    assert (
        await stubs.booking.RefundOrder(refund(fine.id), metadata=support.md)
    ).order.status == booking_pb2.ORDER_STATUS_REFUNDED
    async with engine.connect() as conn:
        who = (
            await conn.execute(
                text("SELECT refunded_by, reason FROM refunds WHERE order_id = :o"),
                {"o": uuid.UUID(fine.id)},
            )
        ).one()
    assert (str(who.refunded_by), who.reason) == (support.user.id, "changed my mind")

    # After the start (database clock): EVENT_STARTED.
    late = (
        await stubs.booking.BookSeats(book_request(event.id, [ids[5]]), metadata=buyer.md)
    ).order
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE events SET start_time = now() - interval '1 second' WHERE id = :e"),
            {"e": uuid.UUID(event.id)},
        )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.RefundOrder(refund(late.id), metadata=buyer.md)
    assert reason_of(err.value) == "FAILED_PRECONDITION:EVENT_STARTED"
    assert await audit(engine, event.id) == {}


async def test_cancel_event_refunds_every_live_order(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=5))
    event = await stubs.create_event(admin, venue)
    buyers = await customers(stubs, 3)
    orders = [
        (
            await stubs.booking.BookSeats(
                best_request(event.id, venue.sections[i % 2].id, 2), metadata=b.md
            )
        ).order
        for i, b in enumerate(buyers)
    ]
    cancelled = (
        await stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=event.id, reason="flood"), metadata=admin.md
        )
    ).event
    assert cancelled.sold_count == 0 and cancelled.available_count == 15
    for o in orders:
        got = (
            await stubs.booking.GetOrder(
                booking_pb2.GetOrderRequest(order_id=o.id), metadata=admin.md
            )
        ).order
        assert got.status == booking_pb2.ORDER_STATUS_REFUNDED
        assert got.refund_reason == "event cancelled: flood"
    assert await audit(running.engine, event.id) == {}


async def test_order_visibility(stubs: Stubs, admin: Account) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    other_org = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org2")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="sup")
    venue = await stubs.create_venue(admin)
    event = await stubs.create_event(organizer, venue)
    buyer, stranger = await customers(stubs, 2)
    order = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[0].id, 1), metadata=buyer.md
        )
    ).order
    req = booking_pb2.GetOrderRequest(order_id=order.id)
    for who in (stranger, other_org):
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.booking.GetOrder(req, metadata=who.md)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # Support sees the order, never its codes (issue 10, item 18): they are the owner's.
    seen_by_support = (await stubs.booking.GetOrder(req, metadata=support.md)).order
    assert seen_by_support.id == order.id and seen_by_support.tickets[0].code == ""
    seen_by_org = (await stubs.booking.GetOrder(req, metadata=organizer.md)).order
    assert seen_by_org.id == order.id and seen_by_org.tickets[0].code == ""
    mine = await stubs.booking.ListOrders(booking_pb2.ListOrdersRequest(), metadata=buyer.md)
    assert [o.id for o in mine.orders] == [order.id]
    assert (
        await stubs.booking.ListOrders(booking_pb2.ListOrdersRequest(), metadata=stranger.md)
    ).orders == []
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.ListOrders(
            booking_pb2.ListOrdersRequest(customer_email=buyer.email), metadata=stranger.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    by_support = await stubs.booking.ListOrders(
        booking_pb2.ListOrdersRequest(customer_email=buyer.email.upper(), event_id=event.id),
        metadata=support.md,
    )
    assert [o.id for o in by_support.orders] == [order.id]


async def test_list_orders_pages_newest_first(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=10, ga=0))
    event = await stubs.create_event(admin, venue, max_per_customer=None)
    buyer = (await customers(stubs, 1))[0]
    made = []
    for _ in range(5):
        made.append(
            (
                await stubs.booking.BookSeats(
                    best_request(event.id, venue.sections[0].id, 1), metadata=buyer.md
                )
            ).order.id
        )
    pages = await all_pages(
        stubs.booking.ListOrders, booking_pb2.ListOrdersRequest(page_size=2), buyer.md
    )
    seen = [o.id for page in pages for o in page.orders]
    assert seen == list(reversed(made))


async def test_cancelled_call_and_killed_connection_leave_nothing_behind(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    engine = running.engine
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    event = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    buyer = (await customers(stubs, 1))[0]
    async with engine.connect() as blocker:
        # Hold the seat's row lock so the booking waits inside its transaction.
        await blocker.execute(text("SELECT 1 FROM seats WHERE id = :s FOR UPDATE"), {"s": ids[0]})

        async def waiting_backend() -> int:
            for _ in range(100):
                async with engine.connect() as probe:
                    pid = (
                        await probe.execute(
                            text(
                                "SELECT pid FROM pg_stat_activity WHERE application_name = 'ticketd' "
                                # (Any lock: the sale is one statement, longer than the
                                # 1 kB of it pg_stat_activity shows.)
                                "AND wait_event_type = 'Lock'"
                            )
                        )
                    ).scalar()
                if pid:
                    return int(pid)
                await asyncio.sleep(0.05)
            raise AssertionError("the booking never waited on the lock")

        # 1) The client gives up mid-transaction.
        call = stubs.booking.BookSeats(book_request(event.id, [ids[0], ids[1]]), metadata=buyer.md)
        await waiting_backend()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # 2) The database connection is killed mid-transaction.
        task = asyncio.ensure_future(
            stubs.booking.BookSeats(book_request(event.id, [ids[0], ids[2]]), metadata=buyer.md)
        )
        pid = await waiting_backend()
        async with engine.connect() as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(aio.AioRpcError) as err:
            await task
        assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED), err.value
        await blocker.rollback()
    async with engine.connect() as conn:
        n = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE event_id = :e"), {"e": uuid.UUID(event.id)}
            )
        ).scalar_one()
    assert n == 0
    assert {s.status for s in await stubs.all_seats(event.id)} == {event_pb2.SEAT_STATUS_AVAILABLE}
    # The pool recovered by itself: the same seats sell now.
    order = (
        await stubs.booking.BookSeats(book_request(event.id, ids[:3]), metadata=buyer.md)
    ).order
    assert len(order.tickets) == 3
    assert await audit(engine, event.id) == {}


async def test_short_deadline_ends_the_lock_wait_too(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    engine = running.engine
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=2, ga=0))
    event = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    buyer = (await customers(stubs, 1))[0]
    async with engine.connect() as blocker:
        await blocker.execute(text("SELECT 1 FROM seats WHERE id = :s FOR UPDATE"), {"s": ids[0]})
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.booking.BookSeats(
                book_request(event.id, [ids[0]]), metadata=buyer.md, timeout=0.5
            )
        assert err.value.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
        # The server's transaction must be gone well before the configured 2 s lock timeout.
        for _ in range(40):
            async with engine.connect() as probe:
                waiting = (
                    await probe.execute(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ticketd' AND wait_event_type = 'Lock'"
                        )
                    )
                ).scalar_one()
            if waiting == 0:
                break
            await asyncio.sleep(0.025)
        assert waiting == 0
        await blocker.rollback()
