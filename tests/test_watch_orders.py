"""WatchOrders (issue 15) through the real server: one global order stream, each caller
seeing only what GetOrder would show it (a partner its sales, an organizer its events', a
customer its own purchases, ADMIN/SUPPORT all), exact resumption, rolled-back changes never
seen, refunds by CancelEvent, bad input and shutdown with a resume point."""

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
from tests.support import Account, StreamReader, Stubs, best_request, error_details, small_layout
from ticketd.db import outbox
from ticketd.db.database import PoolOptions
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import booking_pb2, common_pb2, event_pb2

CONFIRMED, REFUNDED = booking_pb2.ORDER_STATUS_CONFIRMED, booking_pb2.ORDER_STATUS_REFUNDED
READ_TIMEOUT_S = 20.0


class OrderWatcher(StreamReader[booking_pb2.OrderChange]):
    """A WatchOrders call read in the background into a list."""

    def __init__(self, stubs: Stubs, md: CallMetadata, after: int, event_id: str = "") -> None:
        super().__init__(
            stubs.booking.WatchOrders(
                booking_pb2.WatchOrdersRequest(after_sequence=after, event_id=event_id),
                metadata=md,
            ),
            READ_TIMEOUT_S,
        )

    @property
    def changes(self) -> list[booking_pb2.OrderChange]:
        """What it received but the caught_up marker."""
        return [c for c in self.items if not c.caught_up]

    def seen(self) -> list[tuple[str, int]]:
        return [(c.order_id, c.status) for c in self.changes]

    async def until(self, count: int) -> None:
        """Wait (bounded) for the caught_up marker and `count` changes."""
        await self.wait_for(
            lambda: len(self.changes) >= count and any(c.caught_up for c in self.items)
        )


@pytest.fixture
async def watch() -> AsyncIterator[Any]:
    made: list[OrderWatcher] = []

    def start(stubs: Stubs, md: CallMetadata, after: int, event_id: str = "") -> OrderWatcher:
        w = OrderWatcher(stubs, md, after, event_id)
        made.append(w)
        return w

    yield start
    for w in made:
        await w.stop()


async def head(running: RunningServer) -> int:
    """The order stream's last sequence once everything committed so far is numbered."""
    async with running.engine.connect() as conn:
        value = (
            await conn.execute(
                text("SELECT outbox_sequence('orders', :k)"), {"k": uuid.UUID(int=0)}
            )
        ).scalar_one()
        await conn.commit()
    return int(value)


async def event_of(stubs: Stubs, admin: Account, owner: Account) -> tuple[str, str]:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=50))
    event = await stubs.create_event(owner, venue, max_per_order=4)
    return event.id, venue.sections[-1].id


def on_behalf(event_id: str, section_id: str, external: str) -> booking_pb2.BookSeatsRequest:
    request = best_request(event_id, section_id, 1)
    request.on_behalf_of.CopyFrom(
        booking_pb2.EndCustomer(external_customer_id=external, display_name="Ann")
    )
    return request


async def test_each_caller_sees_exactly_the_orders_it_may_read(
    stubs: Stubs, admin: Account, running: RunningServer, watch: Any
) -> None:
    org_a = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="wo-org-a")
    org_b = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="wo-org-b")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="wo-support")
    customer = await stubs.register("wo-customer")
    other = await stubs.register("wo-other")
    event_a, section_a = await event_of(stubs, admin, org_a)
    event_b, section_b = await event_of(stubs, admin, org_b)
    partner, secret = await stubs.create_partner(admin, "Watcher Seller")
    rival, rival_secret = await stubs.create_partner(admin, "Watcher Rival")
    p_md, r_md = api_key(secret), api_key(rival_secret)

    start = await head(running)
    watchers = {
        name: watch(stubs, md, start)
        for name, md in [
            ("partner", p_md),
            ("rival", r_md),
            ("org_a", org_a.md),
            ("org_b", org_b.md),
            ("customer", customer.md),
            ("other", other.md),
            ("admin", admin.md),
            ("support", support.md),
        ]
    }
    only_b = watch(stubs, admin.md, start, event_b)
    # Every reader has read its backlog (its caught_up marker) and is on the stream's shared
    # tail: the changes below reach all nine through one reader, filtered per caller.
    for w in [*watchers.values(), only_b]:
        await w.until(0)
    async with asyncio.timeout(10):
        while running.components.db.outbox.shared_followers(outbox.ORDERS, outbox.ALL) < 9:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    bought = (
        await stubs.booking.BookSeats(best_request(event_a, section_a, 2), metadata=customer.md)
    ).order
    sold = (await stubs.booking.BookSeats(on_behalf(event_a, section_a, "x1"), metadata=p_md)).order
    rivals = (
        await stubs.booking.BookSeats(on_behalf(event_b, section_b, "x2"), metadata=r_md)
    ).order
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=bought.id, request_id=str(uuid.uuid4()), reason="changed my mind"
        ),
        metadata=customer.md,
    )
    expected = {
        "partner": [(sold.id, CONFIRMED)],
        "rival": [(rivals.id, CONFIRMED)],
        "org_a": [(bought.id, CONFIRMED), (sold.id, CONFIRMED), (bought.id, REFUNDED)],
        "org_b": [(rivals.id, CONFIRMED)],
        "customer": [(bought.id, CONFIRMED), (bought.id, REFUNDED)],
        "other": [],
        "admin": [
            (bought.id, CONFIRMED),
            (sold.id, CONFIRMED),
            (rivals.id, CONFIRMED),
            (bought.id, REFUNDED),
        ],
    }
    expected["support"] = expected["admin"]
    for name, w in watchers.items():
        await w.until(len(expected[name]))
    await only_b.until(1)
    await asyncio.sleep(0.3)  # nothing more may arrive
    for name, w in watchers.items():
        assert w.seen() == expected[name], name
    assert only_b.seen() == [(rivals.id, CONFIRMED)]
    # The global stream is dense and commit-ordered; each reader sees its part of it.
    everything = watchers["admin"].changes
    assert [c.sequence for c in everything] == list(range(start + 1, start + 5))
    by_order = {(c.order_id, c.status): c.sequence for c in everything}
    for w in [*watchers.values(), only_b]:
        assert [c.sequence for c in w.changes] == [by_order[k] for k in w.seen()]
        # One caught_up marker, where the stream stood when the call began (nothing
        # else was committed before it): a reader who sees nothing still learns that.
        markers = [c for c in w.items if c.caught_up]
        assert len(markers) == 1 and start <= markers[0].sequence <= start + 4
        assert markers[0].order_id == "" and not markers[0].HasField("change_time")
    assert watchers["other"].items[0].caught_up
    first = everything[1]
    assert first.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER
    assert first.partner_id == partner.id and first.event_id == event_a
    assert first.total_minor == sold.total_minor and first.currency_code == "EUR"
    assert everything[0].sales_channel == booking_pb2.SALES_CHANNEL_PUBLIC
    assert everything[0].partner_id == "" and everything[0].change_time.seconds > 0
    # The buyer is never named in a change.
    assert "customer_id" not in booking_pb2.OrderChange.DESCRIPTOR.fields_by_name
    assert rival.id not in {c.partner_id for c in watchers["partner"].items}


async def test_resuming_gets_exactly_the_missed_changes_and_cancel_refunds_appear(
    stubs: Stubs, admin: Account, running: RunningServer, watch: Any
) -> None:
    org = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="wo-resume")
    buyer = await stubs.register("wo-resume-buyer")
    event_id, section = await event_of(stubs, admin, org)
    start = await head(running)
    first = watch(stubs, org.md, start)
    orders = []
    for _ in range(3):
        request = best_request(event_id, section, 1)
        orders.append((await stubs.booking.BookSeats(request, metadata=buyer.md)).order)
    await first.until(3)
    await first.stop()  # disconnect after the first change
    resume_from = first.changes[0].sequence
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event_id, reason="storm"), metadata=org.md
    )
    again = watch(stubs, org.md, resume_from)
    await again.until(5)
    await asyncio.sleep(0.3)
    got = again.seen()
    assert got[:2] == [(orders[1].id, CONFIRMED), (orders[2].id, CONFIRMED)]
    assert sorted(got[2:]) == sorted((o.id, REFUNDED) for o in orders)
    assert [c.sequence for c in again.changes] == list(range(resume_from + 1, resume_from + 6))
    last = again.changes[-1].sequence
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stubs.booking.WatchOrders(
            booking_pb2.WatchOrdersRequest(after_sequence=last + 1), metadata=org.md, timeout=5
        ):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(err.value)
    assert details.reason == "SEQUENCE_AHEAD" and int(details.metadata["last_sequence"]) == last


async def test_a_rolled_back_order_change_never_appears_and_leaves_no_gap(
    stubs: Stubs, admin: Account, running: RunningServer, watch: Any
) -> None:
    org = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="wo-rollback")
    buyer = await stubs.register("wo-rollback-buyer")
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=3, ga=0))
    event = await stubs.create_event(org, venue)
    seat_ids = [s.id for s in await stubs.all_seats(event.id)]
    start = await head(running)
    w = watch(stubs, admin.md, start, event.id)

    def book(ids: list[int]) -> booking_pb2.BookSeatsRequest:
        return booking_pb2.BookSeatsRequest(
            event_id=event.id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=ids)
        )

    kept = (await stubs.booking.BookSeats(book(seat_ids[:1]), metadata=buyer.md)).order
    with pytest.raises(aio.AioRpcError):  # a seat taken: no order, no change
        await stubs.booking.BookSeats(book(seat_ids[:2]), metadata=buyer.md)
    # A refund that rolled back (as a killed connection's would): the trigger ran, then
    # the transaction was undone with its record.
    async with running.engine.connect() as conn:
        tx = await conn.begin()
        await conn.execute(
            text("UPDATE orders SET status = 'REFUNDED', refund_time = now() WHERE id = :o"),
            {"o": uuid.UUID(kept.id)},
        )
        await tx.rollback()
    later = (await stubs.booking.BookSeats(book(seat_ids[2:3]), metadata=buyer.md)).order
    await w.until(2)
    await asyncio.sleep(0.3)
    assert w.seen() == [(kept.id, CONFIRMED), (later.id, CONFIRMED)]
    assert [c.sequence for c in w.changes] == [start + 1, start + 2]


async def test_bad_input_unknown_event_and_roles(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    async def refused(md: CallMetadata | None, **fields: Any) -> tuple[grpc.StatusCode, str | None]:
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in stubs.booking.WatchOrders(
                booking_pb2.WatchOrdersRequest(**fields), metadata=md, timeout=5
            ):
                pass
        return err.value.code(), error_details(err.value).reason

    S = grpc.StatusCode
    assert (await refused(admin.md, event_id="nope"))[0] == S.INVALID_ARGUMENT
    assert (await refused(admin.md, after_sequence=-1))[0] == S.INVALID_ARGUMENT
    assert await refused(admin.md, event_id=str(uuid.uuid4())) == (S.NOT_FOUND, "EVENT_NOT_FOUND")
    assert (await refused(None))[0] == S.UNAUTHENTICATED
    gatekeeper = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="wo-em")
    assert await refused(gatekeeper.md) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    ahead = await head(running) + 1000
    code, reason = await refused(admin.md, after_sequence=ahead)
    assert (code, reason) == (S.FAILED_PRECONDITION, "SEQUENCE_AHEAD")


async def test_shutdown_ends_order_streams_with_where_to_resume(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    buyer = await stubs.register("wo-shutdown")
    event_id, section = await event_of(stubs, admin, admin)
    start = await head(running)
    async with second_server(running, PoolOptions(pool_size=4)) as srv:
        channel = aio.insecure_channel(srv.target)
        try:
            w = OrderWatcher(Stubs(channel), buyer.md, start)
            order = (
                await stubs.booking.BookSeats(best_request(event_id, section, 1), metadata=buyer.md)
            ).order
            await w.until(1)
            assert w.seen() == [(order.id, CONFIRMED)]
            await srv.server.stop(2)
            await asyncio.wait_for(w.task, 10)
            assert w.error is not None and w.error.code() == grpc.StatusCode.UNAVAILABLE
            details = error_details(w.error)
            assert details.reason == "SERVER_SHUTTING_DOWN"
            assert int(details.metadata["resume_after_sequence"]) >= w.changes[-1].sequence
        finally:
            await channel.close(None)
