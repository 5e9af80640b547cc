"""Nothing is committed whose answer cannot be sent, and no page outgrows the transport
limit (issue 10, item 10); CreateVenue/CreateEvent are retry-safe with a request_id.

The reported cases run on the session server at the default limit (4 MiB): a 4.19 MB
CreateVenue, and ListOrders with page_size 500 over orders of 100 tickets. The byte-exact
boundaries run on a second server with the smallest allowed limit (1 MiB), where layouts and
pages of that size are cheap.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer, second_server
from tests.support import Account, Stubs, all_pages, error_details, future, small_layout
from ticketd.config import MIN_MESSAGE_BYTES
from ticketd.db.database import PoolOptions
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, venue_pb2

LABEL = 20  # the longest seat label: 22 bytes each on the wire


def labelled_layout(
    target_request_bytes: int, *, name: str, address_len: int = 50
) -> venue_pb2.Venue:
    """A valid venue whose CreateVenueRequest is just under `target_request_bytes`: four
    reserved sections of rows of 1,000 labelled seats, the last row cut to fit."""
    venue = venue_pb2.Venue(
        name=name, address="a" * address_len, time_zone="Europe/Berlin", sections=[]
    )
    sections = [
        venue.sections.add(name=f"Block {i}", kind=venue_pb2.SECTION_KIND_RESERVED)
        for i in range(4)
    ]
    row_no = 0
    while True:
        section = sections[row_no % 4]
        labels = [f"r{row_no:04d}s{n:05d}".ljust(LABEL, "x") for n in range(1000)]
        row = section.rows.add(label=f"R{row_no}", seat_count=1000, seat_labels=labels)
        size = venue_pb2.CreateVenueRequest(venue=venue).ByteSize()
        if size > target_request_bytes:
            # Too far: cut this row to the labels that still fit.
            over = size - target_request_bytes
            keep = 1000 - (over // (LABEL + 2) + 2)
            del row.seat_labels[keep:]
            row.seat_count = keep
            break
        row_no += 1
    assert venue_pb2.CreateVenueRequest(venue=venue).ByteSize() <= target_request_bytes
    return venue


async def venue_rows_named(running: RunningServer, name: str) -> int:
    async with running.engine.connect() as conn:
        value: int = (
            await conn.execute(text("SELECT count(*) FROM venues WHERE name = :n"), {"n": name})
        ).scalar_one()
    return value


async def test_a_venue_whose_answer_cannot_fit_is_refused_before_it_is_written(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """The reported case: a valid 4.19 MB CreateVenue was committed, then its answer failed
    the transport (RESOURCE_EXHAUSTED); GetVenue of it failed for ever and a retry made a
    second one. Now it is refused up front and nothing is stored."""
    limit = running.components.settings.max_message_bytes
    name = f"Huge {uuid.uuid4().hex[:8]}"
    venue = labelled_layout(limit - 200, name=name)
    assert venue_pb2.CreateVenueRequest(venue=venue).ByteSize() > 4_190_000
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=venue, request_id=str(uuid.uuid4())),
            metadata=admin.md,
        )
    d = error_details(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESPONSE_TOO_LARGE")
    assert [f for f, _ in d.field_violations] == ["venue.sections"]
    assert int(d.metadata["response_bytes"]) > limit == int(d.metadata["max_bytes"])
    assert await venue_rows_named(running, name) == 0


@pytest.fixture(scope="module")
async def tight(running: RunningServer) -> AsyncIterator[tuple[RunningServer, Stubs]]:
    """A server with the smallest allowed message limit, on the same database."""
    async with (
        second_server(running, PoolOptions(pool_size=4), max_message_bytes=MIN_MESSAGE_BYTES) as s,
        aio.insecure_channel(
            s.target,
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ],
        ) as ch,
    ):
        yield s, Stubs(ch)


async def test_the_venue_size_limit_holds_at_the_byte(
    tight: tuple[RunningServer, Stubs], admin: Account, running: RunningServer
) -> None:
    """At the limit a venue is created and reads back; one byte more is refused unwritten,
    for CreateVenue and UpdateVenue alike."""
    server, site = tight
    limit = server.components.settings.max_message_bytes
    name = f"Edge {uuid.uuid4().hex[:8]}"
    # A probe over the limit tells the projected answer size; the address then trims it to
    # the byte (each address character is one byte; its length prefix stays 2 bytes).
    probe = labelled_layout(limit - 150, name=name, address_len=500)
    with pytest.raises(aio.AioRpcError) as err:
        await site.venues.CreateVenue(venue_pb2.CreateVenueRequest(venue=probe), metadata=admin.md)
    over = int(error_details(err.value).metadata["response_bytes"]) - limit
    assert 0 < over <= 500 - 128

    at_limit = venue_pb2.Venue()
    at_limit.CopyFrom(probe)
    at_limit.address = "a" * (500 - over)
    one_more = venue_pb2.Venue()
    one_more.CopyFrom(probe)
    one_more.address = "a" * (500 - over + 1)

    with pytest.raises(aio.AioRpcError) as err:
        await site.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=one_more), metadata=admin.md
        )
    d = error_details(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "RESPONSE_TOO_LARGE")
    assert int(d.metadata["response_bytes"]) == limit + 1
    assert await venue_rows_named(running, name) == 0

    created = (
        await site.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=at_limit), metadata=admin.md
        )
    ).venue
    got = await site.venues.GetVenue(
        venue_pb2.GetVenueRequest(venue_id=created.id), metadata=admin.md
    )
    # The projection is never below the real answer (times at their widest), and within 12
    # bytes of it.
    assert limit - 12 <= got.ByteSize() <= limit
    assert got.venue.capacity == created.capacity and len(got.venue.sections) == 4

    # UpdateVenue: the same rule, and a refused update changes nothing.
    one_more.id = created.id
    with pytest.raises(aio.AioRpcError) as err:
        await site.venues.UpdateVenue(
            venue_pb2.UpdateVenueRequest(venue=one_more), metadata=admin.md
        )
    assert error_details(err.value).reason == "RESPONSE_TOO_LARGE"
    again = await site.venues.GetVenue(
        venue_pb2.GetVenueRequest(venue_id=created.id), metadata=admin.md
    )
    assert again == got


async def test_list_orders_pages_are_cut_by_size_and_continue_exactly(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """The reported case: 500 orders of 100 tickets (about 7 MB) asked for in one page of
    500 (allowed). Each page now fits, and the pages together are every order once."""
    limit = running.components.settings.max_message_bytes
    layout = venue_pb2.Venue(
        name="Arena",
        address="",
        time_zone="Europe/Berlin",
        sections=[
            venue_pb2.Section(
                name="Floor",
                kind=venue_pb2.SECTION_KIND_RESERVED,
                rows=[venue_pb2.Row(label=f"R{i}", seat_count=1000) for i in range(50)],
            )
        ],
    )
    venue = await stubs.create_venue(admin, layout)
    event = await stubs.create_event(admin, venue, max_per_order=100)
    buyer = await stubs.register("bulk")
    order_ids = [uuid.uuid4() for _ in range(500)]
    # Arranged directly: 500 CONFIRMED orders of 100 tickets each, newest first = order 0.
    async with running.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, "
                "status, total_minor, currency_code, ticket_count, create_time) "
                "SELECT o.id, :e, :c, gen_random_uuid(), 'bulk', 'CONFIRMED', 250000, 'EUR', "
                "100, now() - o.n * interval '1 second' "
                "FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS o(id, n)"
            ),
            {"e": uuid.UUID(event.id), "c": uuid.UUID(buyer.user.id), "ids": order_ids},
        )
        await conn.execute(
            text(
                "WITH s AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM seats "
                "WHERE event_id = :e), "
                "sold AS (UPDATE seats SET status = 'SOLD' WHERE id IN (SELECT id FROM s)) "
                "INSERT INTO tickets (id, order_id, event_id, seat_id, code, status, price_minor) "
                "SELECT gen_random_uuid(), (CAST(:ids AS uuid[]))[s.k / 100 + 1], :e, s.id, "
                "md5(random()::text) || md5(s.id::text), 'VALID', 2500 FROM s"
            ),
            {"e": uuid.UUID(event.id), "ids": order_ids},
        )
    seen: list[str] = []
    pages = await all_pages(
        stubs.booking.ListOrders, booking_pb2.ListOrdersRequest(page_size=500), buyer.md
    )
    for page in pages:
        assert page.ByteSize() <= limit
        assert all(len(o.tickets) == 100 for o in page.orders)
        seen += [o.id for o in page.orders]
    assert len(pages) >= 2  # the first page was cut by size, not by count
    assert seen == [str(i) for i in order_ids]  # newest first, each exactly once


async def test_seat_and_event_pages_are_cut_by_size_too(
    tight: tuple[RunningServer, Stubs], admin: Account, running: RunningServer, stubs: Stubs
) -> None:
    """Every List RPC goes through the one page helper: ListSeats (10,000 long-labelled
    seats in one page of 10,000 is about 2 MB) and ListEvents (500 events with long
    descriptions) on a 1 MiB server."""
    _, site = tight
    long = "L" * 100
    layout = venue_pb2.Venue(
        name="Labels",
        address="",
        time_zone="Europe/Berlin",
        sections=[
            venue_pb2.Section(
                name=long,
                kind=venue_pb2.SECTION_KIND_RESERVED,
                rows=[
                    venue_pb2.Row(
                        label=f"{i:03d}".ljust(LABEL, "r"),
                        seat_count=1000,
                        seat_labels=[f"{n:05d}".ljust(LABEL, "s") for n in range(1000)],
                    )
                    for i in range(10)
                ],
            )
        ],
    )
    venue = await stubs.create_venue(admin, layout)
    event = await stubs.create_event(admin, venue)
    ids: list[int] = []
    seat_pages = await all_pages(
        site.events.ListSeats, event_pb2.ListSeatsRequest(event_id=event.id, page_size=10_000)
    )
    for page in seat_pages:
        assert page.ByteSize() <= MIN_MESSAGE_BYTES
        ids += [s.id for s in page.seats]
    assert len(seat_pages) >= 2
    assert len(ids) == 10_000 and ids == sorted(set(ids))

    # 500 more events at this venue, each with a 5,000-character description (arranged).
    async with running.engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO events (id, venue_id, organizer_id, name, description, start_time, "
                "currency_code, max_tickets_per_order, capacity) "
                "SELECT gen_random_uuid(), venue_id, organizer_id, name, repeat('d', 5000), "
                "start_time + n * interval '1 minute', currency_code, max_tickets_per_order, "
                "capacity FROM events, generate_series(1, 500) AS n WHERE id = :e"
            ),
            {"e": uuid.UUID(event.id)},
        )
    listed: list[str] = []
    event_pages = await all_pages(
        site.events.ListEvents, event_pb2.ListEventsRequest(venue_id=venue.id, page_size=500)
    )
    for events in event_pages:
        assert events.ByteSize() <= MIN_MESSAGE_BYTES
        listed += [e.id for e in events.events]
    assert len(event_pages) >= 2
    assert len(listed) == 501 == len(set(listed)) and listed[0] == event.id


async def test_create_venue_request_id_returns_the_first_venue(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    request_id = str(uuid.uuid4())
    name = f"Retry {uuid.uuid4().hex[:8]}"
    layout = small_layout(name=name)
    request = venue_pb2.CreateVenueRequest(venue=layout, request_id=request_id)
    # Concurrent twins (a client that resent before the first answer) and a late repeat.
    twins = await asyncio.gather(
        *(stubs.venues.CreateVenue(request, metadata=admin.md) for _ in range(8))
    )
    late = await stubs.venues.CreateVenue(request, metadata=admin.md)
    assert {t.venue.id for t in twins} == {late.venue.id}
    assert await venue_rows_named(running, name) == 1
    # The same request_id for another venue: refused, nothing written.
    other = small_layout(name=name, rows=1)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=other, request_id=request_id), metadata=admin.md
        )
    d = error_details(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "REQUEST_ID_MISMATCH")
    # A request_id belongs to its caller: another admin using it creates their own venue.
    admin2 = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="admin2")
    theirs = await stubs.venues.CreateVenue(request, metadata=admin2.md)
    assert theirs.venue.id != late.venue.id
    # Without a request_id (older clients): every call creates, as before.
    plain = venue_pb2.CreateVenueRequest(venue=layout)
    a = await stubs.venues.CreateVenue(plain, metadata=admin.md)
    b = await stubs.venues.CreateVenue(plain, metadata=admin.md)
    assert a.venue.id != b.venue.id
    assert await venue_rows_named(running, name) == 4
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=layout, request_id="not-a-uuid"), metadata=admin.md
        )
    assert error_details(err.value).field_violations[0][0] == "request_id"


async def test_create_event_request_id_returns_the_first_event(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=3, ga=2))
    request_id = str(uuid.uuid4())
    request = event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name="Twice?",
        start_time=future(10),
        currency_code="EUR",
        section_prices={s.id: 1500 for s in venue.sections},
        max_tickets_per_order=4,
        request_id=request_id,
    )
    for caller in (organizer, admin):
        twins = await asyncio.gather(
            *(stubs.events.CreateEvent(request, metadata=caller.md) for _ in range(6))
        )
        late = await stubs.events.CreateEvent(request, metadata=caller.md)
        assert {t.event.id for t in twins} == {late.event.id}
        assert late.event.organizer_id == caller.user.id
        async with running.engine.connect() as conn:
            count = (
                await conn.execute(
                    text("SELECT count(*) FROM events WHERE organizer_id = :o AND venue_id = :v"),
                    {"o": uuid.UUID(caller.user.id), "v": uuid.UUID(venue.id)},
                )
            ).scalar_one()
            seats = (
                await conn.execute(
                    text("SELECT count(*) FROM seats WHERE event_id = :e"),
                    {"e": uuid.UUID(late.event.id)},
                )
            ).scalar_one()
        assert (count, seats) == (1, 8)
    different = event_pb2.CreateEventRequest()
    different.CopyFrom(request)
    different.name = "Another"
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.CreateEvent(different, metadata=organizer.md)
    assert error_details(err.value).reason == "REQUEST_ID_MISMATCH"
