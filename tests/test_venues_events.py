"""Venues, events and inventory end to end (real server, real PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from grpc import aio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import Account, Stubs, all_pages, error_details, future, small_layout
from ticketing.v1 import common_pb2, event_pb2, venue_pb2


@pytest.fixture(scope="module")
async def organizer(stubs: Stubs, admin: Account) -> Account:
    return await stubs.account_with_roles(
        admin, common_pb2.ROLE_ORGANIZER, common_pb2.ROLE_CUSTOMER, tag="org"
    )


async def test_create_get_venue(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=3, seats=4, ga=5))
    assert venue.capacity == 17
    assert [s.capacity for s in venue.sections] == [12, 5]
    assert all(uuid.UUID(s.id) for s in venue.sections)
    got = (
        await stubs.venues.GetVenue(venue_pb2.GetVenueRequest(venue_id=venue.id), metadata=admin.md)
    ).venue
    assert got == venue


def _layout(**changes: object) -> venue_pb2.Venue:
    v = small_layout()
    for k, val in changes.items():
        setattr(v, k, val)
    return v


@pytest.mark.parametrize(
    ("venue", "fields"),
    [
        (_layout(name=""), ["venue.name"]),
        (_layout(name="x" * 201), ["venue.name"]),
        (_layout(time_zone="Mars/Olympus"), ["venue.time_zone"]),
        (
            venue_pb2.Venue(
                name="V",
                time_zone="UTC",
                sections=[
                    venue_pb2.Section(
                        name="A", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=1
                    ),
                    venue_pb2.Section(
                        name="a ", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=1
                    ),
                ],
            ),
            ["venue.sections[1].name"],
        ),
        (
            venue_pb2.Venue(
                name="V",
                time_zone="UTC",
                sections=[
                    venue_pb2.Section(
                        name="R",
                        kind=venue_pb2.SECTION_KIND_RESERVED,
                        rows=[
                            venue_pb2.Row(label="A", seat_count=2),
                            venue_pb2.Row(label="A", seat_count=0),
                            venue_pb2.Row(label="B", seat_count=2, seat_labels=["1"]),
                        ],
                    )
                ],
            ),
            [
                "venue.sections[0].rows[1].label",
                "venue.sections[0].rows[1].seat_count",
                "venue.sections[0].rows[2].seat_labels",
            ],
        ),
        (
            venue_pb2.Venue(
                name="V",
                time_zone="UTC",
                sections=[
                    venue_pb2.Section(
                        name="G", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=150_000
                    ),
                    venue_pb2.Section(
                        name="H", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=60_000
                    ),
                ],
            ),
            ["venue.sections"],
        ),
        (venue_pb2.Venue(name="V", time_zone="UTC"), ["venue.sections"]),
        (
            venue_pb2.Venue(name="V", time_zone="UTC", sections=[venue_pb2.Section(name="S")]),
            ["venue.sections[0].kind"],
        ),
        (
            venue_pb2.Venue(
                name="V",
                time_zone="UTC",
                sections=[
                    venue_pb2.Section(name="G", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION)
                ],
            ),
            ["venue.sections[0].capacity"],
        ),
    ],
)
async def test_invalid_layouts_name_each_field(
    stubs: Stubs, admin: Account, venue: venue_pb2.Venue, fields: list[str]
) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(venue_pb2.CreateVenueRequest(venue=venue), metadata=admin.md)
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == fields


async def test_customers_cannot_create_venues_or_events(stubs: Stubs, admin: Account) -> None:
    customer = await stubs.register("cust")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=small_layout()), metadata=customer.md
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    venue = await stubs.create_venue(admin)
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.create_event(customer, venue)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_event_inventory_matches_layout(
    stubs: Stubs, admin: Account, organizer: Account
) -> None:
    layout = small_layout(rows=2, seats=3, ga=4)
    layout.sections[0].rows[1].seat_labels[:] = ["x", "y", "z"]
    venue = await stubs.create_venue(admin, layout)
    event = await stubs.create_event(organizer, venue, price=1500, max_per_customer=4)
    assert event.organizer_id == organizer.user.id
    assert event.status == event_pb2.EVENT_STATUS_ON_SALE
    assert (event.capacity, event.available_count, event.sold_count) == (10, 10, 0)
    assert event.HasField("max_tickets_per_customer") and event.max_tickets_per_customer == 4
    seats = await stubs.all_seats(event.id)
    assert len(seats) == 10
    reserved = [s for s in seats if s.section_id == venue.sections[0].id]
    assert [(s.row_label, s.number, s.label) for s in reserved] == [
        ("A", 1, "1"),
        ("A", 2, "2"),
        ("A", 3, "3"),
        ("B", 1, "x"),
        ("B", 2, "y"),
        ("B", 3, "z"),
    ]
    ga = [s for s in seats if s.section_id == venue.sections[1].id]
    assert len(ga) == 4 and all(s.row_label == "" and s.number == 0 for s in ga)
    assert {s.price_minor for s in seats} == {1500}
    assert {s.status for s in seats} == {event_pb2.SEAT_STATUS_AVAILABLE}
    assert [s.id for s in seats] == sorted(s.id for s in seats)
    only_ga = await stubs.all_seats(event.id, section_id=venue.sections[1].id)
    assert [s.id for s in only_ga] == [s.id for s in ga]
    sold = await stubs.all_seats(event.id, status=event_pb2.SEAT_STATUS_SOLD)
    assert sold == []


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    sections=st.lists(
        st.one_of(
            st.tuples(st.just("R"), st.lists(st.integers(1, 40), min_size=1, max_size=6)),
            st.tuples(st.just("G"), st.integers(1, 300)),
        ),
        min_size=1,
        max_size=5,
    )
)
async def test_random_layouts_give_one_place_per_capacity(
    stubs: Stubs, admin: Account, sections: list[tuple[str, object]]
) -> None:
    venue_msg = venue_pb2.Venue(name="Random", time_zone="UTC")
    expected = 0
    for i, (kind, spec) in enumerate(sections):
        if kind == "R":
            assert isinstance(spec, list)
            venue_msg.sections.append(
                venue_pb2.Section(
                    name=f"S{i}",
                    kind=venue_pb2.SECTION_KIND_RESERVED,
                    rows=[venue_pb2.Row(label=f"R{j}", seat_count=n) for j, n in enumerate(spec)],
                )
            )
            expected += sum(spec)
        else:
            assert isinstance(spec, int)
            venue_msg.sections.append(
                venue_pb2.Section(
                    name=f"S{i}", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=spec
                )
            )
            expected += spec
    venue = await stubs.create_venue(admin, venue_msg)
    assert venue.capacity == expected
    event = await stubs.create_event(admin, venue)
    seats = await stubs.all_seats(event.id)
    assert len(seats) == expected == event.available_count
    assert len({s.id for s in seats}) == expected
    places = {(s.section_id, s.row_label, s.number) for s in seats if s.number}
    assert len(places) == sum(1 for s in seats if s.number)
    per_section = {s.id: 0 for s in venue.sections}
    for seat in seats:
        per_section[seat.section_id] += 1
    assert per_section == {s.id: s.capacity for s in venue.sections}


async def test_event_validation(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin)
    # Keyword arguments of CreateEventRequest, changed one field at a time below.
    base: dict[str, Any] = dict(
        venue_id=venue.id,
        name="Gig",
        start_time=future(),
        currency_code="EUR",
        section_prices={s.id: 100 for s in venue.sections},
        max_tickets_per_order=4,
    )
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"start_time": future(-1)}, ["start_time"]),
        ({"currency_code": "eur"}, ["currency_code"]),
        ({"max_tickets_per_order": 0}, ["max_tickets_per_order"]),
        ({"name": "  "}, ["name"]),
        ({"end_time": future(-2)}, ["end_time"]),
        (
            {"section_prices": {venue.sections[0].id: 100}},
            [f"section_prices[{venue.sections[1].id}]"],
        ),
        ({"section_prices": {**base["section_prices"], "nope": 1}}, ["section_prices[nope]"]),
        (
            {"section_prices": {venue.sections[0].id: -1, venue.sections[1].id: 1}},
            [f"section_prices[{venue.sections[0].id}]"],
        ),
        ({"venue_id": "x"}, ["venue_id"]),
    ]
    for change, fields in cases:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.events.CreateEvent(
                event_pb2.CreateEventRequest(**{**base, **change}),
                metadata=admin.md,
            )
        d = error_details(err.value)
        assert d.code == grpc.StatusCode.INVALID_ARGUMENT, change
        assert [f for f, _ in d.field_violations] == fields, change
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.CreateEvent(
            event_pb2.CreateEventRequest(**{**base, "venue_id": str(uuid.uuid4())}),
            metadata=admin.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_event_creation_is_atomic(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """A failure while inserting the last places leaves no event and no inventory."""
    layout = small_layout(rows=2, seats=5, ga=0)
    layout.sections[0].rows.append(venue_pb2.Row(label="BOOM", seat_count=3))
    venue = await stubs.create_venue(admin, layout)
    engine = running.engine
    async with engine.begin() as conn:
        await conn.execute(
            text(
                """
                CREATE FUNCTION test_fail_on_boom() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.row_label = 'BOOM' AND NEW.seat_number = 3 THEN
                        RAISE EXCEPTION 'injected failure mid-inventory';
                    END IF;
                    RETURN NEW;
                END $$
                """
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER test_fail_on_boom BEFORE INSERT ON seats "
                "FOR EACH ROW EXECUTE FUNCTION test_fail_on_boom()"
            )
        )
    try:
        name = f"atomic-{uuid.uuid4().hex[:8]}"
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.create_event(admin, venue, name=name)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "correlation id" in (err.value.details() or "")
        async with engine.connect() as conn:
            events = (
                await conn.execute(text("SELECT count(*) FROM events WHERE name = :n"), {"n": name})
            ).scalar_one()
            orphans = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM seats s LEFT JOIN events e "
                        "ON e.id = s.event_id WHERE e.id IS NULL"
                    )
                )
            ).scalar_one()
            sections = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM event_sections es LEFT JOIN events e "
                        "ON e.id = es.event_id WHERE e.id IS NULL"
                    )
                )
            ).scalar_one()
        assert (events, orphans, sections) == (0, 0, 0)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER test_fail_on_boom ON seats"))
            await conn.execute(text("DROP FUNCTION test_fail_on_boom()"))
    event = await stubs.create_event(admin, venue, name=name)
    assert event.capacity == 13 == len(await stubs.all_seats(event.id))


async def test_venue_edits_never_change_existing_events(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=2, ga=3))
    event = await stubs.create_event(admin, venue)
    new_layout = small_layout(name="Hall 2", rows=5, seats=5, ga=0)
    new_layout.id = venue.id
    updated = (
        await stubs.venues.UpdateVenue(
            venue_pb2.UpdateVenueRequest(venue=new_layout), metadata=admin.md
        )
    ).venue
    assert updated.capacity == 25 and updated.name == "Hall 2"
    assert {s.id for s in updated.sections}.isdisjoint({s.id for s in venue.sections})
    again = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert again.capacity == 7 == len(await stubs.all_seats(event.id))
    assert [s.section_id for s in again.sections] == [s.id for s in venue.sections]
    later = await stubs.create_event(admin, updated)
    assert later.capacity == 25


async def test_only_owner_or_admin_cancels(
    stubs: Stubs, admin: Account, organizer: Account
) -> None:
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="other-org")
    venue = await stubs.create_venue(admin)
    event = await stubs.create_event(organizer, venue)
    for who in (other, await stubs.register("cust")):
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.events.CancelEvent(
                event_pb2.CancelEventRequest(event_id=event.id, reason="nope"), metadata=who.md
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    cancelled = (
        await stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=event.id, reason="storm"), metadata=organizer.md
        )
    ).event
    assert cancelled.status == event_pb2.EVENT_STATUS_CANCELLED
    assert cancelled.cancel_reason == "storm" and cancelled.HasField("cancel_time")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=event.id, reason="again"), metadata=admin.md
        )
    assert error_details(err.value).reason == "EVENT_CANCELLED"
    event2 = await stubs.create_event(organizer, venue)
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event2.id, reason="admin says"), metadata=admin.md
    )


async def test_list_events_pages_each_once_under_inserts(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin)
    made = [await stubs.create_event(admin, venue, days=100 + i) for i in range(7)]
    cancelled = await stubs.create_event(admin, venue, days=103.5)
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=cancelled.id, reason="x"), metadata=admin.md
    )
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await stubs.events.ListEvents(
            event_pb2.ListEventsRequest(venue_id=venue.id, page_size=3, page_token=token)
        )
        seen += [e.id for e in resp.events]
        pages += 1
        token = resp.next_page_token
        if pages == 1:
            # Inserted before and after the cursor while paging.
            early = await stubs.create_event(admin, venue, days=99)
            late = await stubs.create_event(admin, venue, days=200)
        if not token:
            break
    assert len(seen) == len(set(seen))
    assert [e.id for e in made] == [i for i in seen if i not in (early.id, late.id)]
    assert late.id in seen and early.id not in seen
    assert cancelled.id not in seen
    with_cancelled = await stubs.events.ListEvents(
        event_pb2.ListEventsRequest(venue_id=venue.id, include_cancelled=True, page_size=100)
    )
    assert cancelled.id in [e.id for e in with_cancelled.events]


async def test_list_pagination_rejects_tampering(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin)
    for i in range(3):
        await stubs.create_event(admin, venue, days=50 + i)
    first = await stubs.events.ListEvents(
        event_pb2.ListEventsRequest(venue_id=venue.id, page_size=1)
    )
    token = first.next_page_token
    assert token
    bad_requests = [
        event_pb2.ListEventsRequest(
            venue_id=venue.id, page_token=token[:-1] + ("A" if token[-1] != "A" else "B")
        ),
        event_pb2.ListEventsRequest(venue_id=venue.id, page_token="!!!"),
        event_pb2.ListEventsRequest(page_token=token),  # other filters
        event_pb2.ListEventsRequest(page_size=-5),
    ]
    for request in bad_requests:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.events.ListEvents(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    seats = await stubs.events.ListSeats(
        event_pb2.ListSeatsRequest(event_id=first.events[0].id, page_size=2)
    )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.ListSeats(
            event_pb2.ListSeatsRequest(event_id=first.events[0].id, page_token=token)
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(seats.seats) == 2 and seats.next_page_token


async def test_times_use_the_database_clock(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    venue = await stubs.create_venue(admin)
    event = await stubs.create_event(admin, venue, days=1)
    async with running.engine.begin() as conn:
        column_type = (
            await conn.execute(
                text(
                    "SELECT data_type FROM information_schema.columns "
                    "WHERE table_name = 'events' AND column_name = 'start_time'"
                )
            )
        ).scalar_one()
        assert column_type == "timestamp with time zone"
        # Move the start just behind the database's now(): the event has started.
        await conn.execute(
            text("UPDATE events SET start_time = now() - interval '1 second' WHERE id = :id"),
            {"id": uuid.UUID(event.id)},
        )
    got = (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))).event
    assert got.status == event_pb2.EVENT_STATUS_STARTED
    upcoming = await stubs.events.ListEvents(event_pb2.ListEventsRequest(venue_id=venue.id))
    assert event.id not in [e.id for e in upcoming.events]


async def test_reading_events_is_public_but_venues_need_a_token(
    stubs: Stubs, admin: Account
) -> None:
    venue = await stubs.create_venue(admin)
    event = await stubs.create_event(admin, venue)
    await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))
    await stubs.events.ListSeats(event_pb2.ListSeatsRequest(event_id=event.id))
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.GetVenue(venue_pb2.GetVenueRequest(venue_id=venue.id))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=str(uuid.uuid4())))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_venues_pages(stubs: Stubs, admin: Account) -> None:
    names = {f"zz-venue-{uuid.uuid4().hex[:6]}-{i}" for i in range(5)}
    await asyncio.gather(*(stubs.create_venue(admin, small_layout(name=n)) for n in names))
    pages = await all_pages(
        stubs.venues.ListVenues, venue_pb2.ListVenuesRequest(page_size=2), admin.md
    )
    seen = [v.name for page in pages for v in page.venues]
    assert names <= set(seen)
    assert len(seen) == len(set(zip(seen, range(len(seen)), strict=True)))
    assert seen == sorted(seen)
