"""Allocations (issue 13): places set aside for one partner's channel.

Allocated places are refused to the public and to other partners (SEAT_UNAVAILABLE) and
shown ALLOCATED on the seat map; a release_time returns them by itself (a query
condition, no job); ReleaseAllocation returns them now; and under a crowd of public buyers
and two partners nothing is oversold and nothing is sold outside its channel.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from tests.conftest import RunningServer
from tests.support import (
    Account,
    StreamReader,
    Stubs,
    best_request,
    book_request,
    client_pool,
    error_details,
    small_layout,
)
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, partner_pb2, venue_pb2

S = grpc.StatusCode


@dataclass
class Stage:
    organizer: Account
    customer: Account
    venue: venue_pb2.Venue
    seller: partner_pb2.Partner
    seller_md: CallMetadata
    other: partner_pb2.Partner
    other_md: CallMetadata


@pytest.fixture(scope="module")
async def stage(stubs: Stubs, admin: Account) -> Stage:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="al-org")
    customer = await stubs.register("al-customer")
    venue = await stubs.create_venue(admin, small_layout(name="Allocation Hall", ga=300))
    seller, seller_key = await stubs.create_partner(admin, "Allocated Seller")
    other, other_key = await stubs.create_partner(admin, "Other Seller")
    return Stage(organizer, customer, venue, seller, api_key(seller_key), other, api_key(other_key))


def for_customer(request: booking_pb2.BookSeatsRequest, who: str) -> booking_pb2.BookSeatsRequest:
    request.on_behalf_of.CopyFrom(booking_pb2.EndCustomer(external_customer_id=who))
    return request


async def allocate(
    stubs: Stubs,
    stage: Stage,
    event_id: str,
    *,
    seat_ids: list[int] | None = None,
    best: tuple[str, int] | None = None,
    release_time: Timestamp | None = None,
    request_id: str | None = None,
    partner_id: str | None = None,
    md: CallMetadata | None = None,
) -> event_pb2.Allocation:
    request = event_pb2.AllocateSeatsRequest(
        event_id=event_id,
        partner_id=partner_id or stage.seller.id,
        request_id=request_id or str(uuid.uuid4()),
        release_time=release_time,
    )
    if seat_ids is not None:
        request.seat_ids.ids.extend(seat_ids)
    if best is not None:
        request.best_available.section_id, request.best_available.quantity = best
    response = await stubs.events.AllocateSeats(request, metadata=md or stage.organizer.md)
    return response.allocation


async def refusal(call: object) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = error_details(err.value)
    return details.code, details.reason


async def seat_statuses(stubs: Stubs, event_id: str, seat_ids: list[int]) -> set[int]:
    seats = await stubs.all_seats(event_id)
    return {s.status for s in seats if s.id in seat_ids}


async def test_allocated_seats_are_the_partners_alone(stubs: Stubs, stage: Stage) -> None:
    event = await stubs.create_event(stage.organizer, stage.venue, name="Allocated Show")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    ids = [s.id for s in seats[:3]]
    made = await allocate(stubs, stage, event.id, seat_ids=ids)
    assert (list(made.seat_ids), made.partner_id, made.released) == (ids, stage.seller.id, False)
    assert await seat_statuses(stubs, event.id, ids) == {event_pb2.SEAT_STATUS_ALLOCATED}

    unavailable = (S.FAILED_PRECONDITION, "SEAT_UNAVAILABLE")
    public = stubs.booking.BookSeats(book_request(event.id, ids[:1]), metadata=stage.customer.md)
    assert await refusal(public) == unavailable
    hold = booking_pb2.HoldSeatsRequest(
        event_id=event.id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=ids[:1])
    )
    assert await refusal(stubs.booking.HoldSeats(hold, metadata=stage.customer.md)) == unavailable
    rival = for_customer(book_request(event.id, ids[:1]), "r-1")
    assert await refusal(stubs.booking.BookSeats(rival, metadata=stage.other_md)) == unavailable
    # The partner itself books them, for its end customer.
    mine = for_customer(book_request(event.id, ids[:2]), "c-1")
    order = (await stubs.booking.BookSeats(mine, metadata=stage.seller_md)).order
    assert sorted(t.seat_id for t in order.tickets) == ids[:2]
    assert await seat_statuses(stubs, event.id, ids[2:]) == {event_pb2.SEAT_STATUS_ALLOCATED}
    listed = await stubs.events.ListAllocations(
        event_pb2.ListAllocationsRequest(event_id=event.id), metadata=stage.organizer.md
    )
    assert [a.id for a in listed.allocations] == [made.id]


async def test_best_available_passes_allocated_places_by_and_the_partner_gets_them_first(
    stubs: Stubs, stage: Stage, admin: Account
) -> None:
    venue = await stubs.create_venue(admin, small_layout(name="Tiny GA", rows=1, seats=1, ga=5))
    event = await stubs.create_event(stage.organizer, venue, name="Tiny")
    ga = venue.sections[1].id
    made = await allocate(stubs, stage, event.id, best=(ga, 3))
    assert len(made.seat_ids) == 3
    # The public sees two places, not five.
    refused = stubs.booking.BookSeats(best_request(event.id, ga, 3), metadata=stage.customer.md)
    assert await refusal(refused) == (S.FAILED_PRECONDITION, "SOLD_OUT")
    # The partner's own allocation comes first, before the public pool it may also sell.
    order = (
        await stubs.booking.BookSeats(
            for_customer(best_request(event.id, ga, 3), "bulk"), metadata=stage.seller_md
        )
    ).order
    assert sorted(t.seat_id for t in order.tickets) == sorted(made.seat_ids)
    await stubs.booking.BookSeats(best_request(event.id, ga, 2), metadata=stage.customer.md)


async def test_release_time_returns_unsold_places_without_a_job(stubs: Stubs, stage: Stage) -> None:
    event = await stubs.create_event(stage.organizer, stage.venue, name="Timed Allocation")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    ids = [s.id for s in seats[:2]]
    soon = Timestamp()
    # Whole microseconds: what PostgreSQL keeps.
    soon.FromMicroseconds(time.time_ns() // 1000 + 1_500_000)
    made = await allocate(stubs, stage, event.id, seat_ids=ids, release_time=soon)
    assert made.release_time == soon
    public = book_request(event.id, ids)
    assert (await refusal(stubs.booking.BookSeats(public, metadata=stage.customer.md)))[1] == (
        "SEAT_UNAVAILABLE"
    )
    # Nothing runs at release_time: the seat map and the sale read the condition.
    deadline = time.monotonic() + 30
    while await seat_statuses(stubs, event.id, ids) != {event_pb2.SEAT_STATUS_AVAILABLE}:
        assert time.monotonic() < deadline, "the allocation never ended"
        await asyncio.sleep(0.2)
    order = (await stubs.booking.BookSeats(public, metadata=stage.customer.md)).order
    assert order.sales_channel == booking_pb2.SALES_CHANNEL_PUBLIC
    listed = await stubs.events.ListAllocations(
        event_pb2.ListAllocationsRequest(event_id=event.id), metadata=stage.organizer.md
    )
    assert listed.allocations[0].released


async def test_release_allocation_returns_places_now_and_only_the_owner_may(
    stubs: Stubs, stage: Stage, admin: Account
) -> None:
    event = await stubs.create_event(stage.organizer, stage.venue, name="Released Allocation")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    ids = [s.id for s in seats[:2]]
    made = await allocate(stubs, stage, event.id, seat_ids=ids)
    stranger = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="al-other")
    release = event_pb2.ReleaseAllocationRequest(allocation_id=made.id)
    assert await refusal(stubs.events.ReleaseAllocation(release, metadata=stranger.md)) == (
        S.NOT_FOUND,
        "ALLOCATION_NOT_FOUND",
    )
    assert await refusal(
        allocate(stubs, stage, event.id, seat_ids=[seats[5].id], md=stranger.md)
    ) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    released = (await stubs.events.ReleaseAllocation(release, metadata=admin.md)).allocation
    assert released.released and released.HasField("release_time")
    again = (await stubs.events.ReleaseAllocation(release, metadata=stage.organizer.md)).allocation
    assert again.release_time == released.release_time
    await stubs.booking.BookSeats(book_request(event.id, ids), metadata=stage.customer.md)


async def test_allocation_refusals_and_retries(
    stubs: Stubs, stage: Stage, raw: asyncpg.Connection
) -> None:
    event = await stubs.create_event(stage.organizer, stage.venue, name="Allocation Rules")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    sold = (
        await stubs.booking.BookSeats(
            book_request(event.id, [seats[0].id]), metadata=stage.customer.md
        )
    ).order
    first = await allocate(stubs, stage, event.id, seat_ids=[seats[1].id])
    for taken in (sold.tickets[0].seat_id, seats[1].id):
        # Sold, or in another open allocation (even another partner's).
        again = allocate(stubs, stage, event.id, seat_ids=[taken], partner_id=stage.other.id)
        assert await refusal(again) == (S.FAILED_PRECONDITION, "SEAT_UNAVAILABLE")
    unknown = allocate(stubs, stage, event.id, seat_ids=[seats[2].id], partner_id=str(uuid.uuid4()))
    assert await refusal(unknown) == (S.NOT_FOUND, "PARTNER_NOT_FOUND")
    past = Timestamp()
    past.FromNanoseconds(time.time_ns() - 60_000_000_000)
    assert (
        await refusal(allocate(stubs, stage, event.id, seat_ids=[seats[2].id], release_time=past))
    )[0] == S.INVALID_ARGUMENT
    # A retry answers the first allocation; the same request_id for other places is refused.
    request_id = str(uuid.uuid4())
    one = await allocate(stubs, stage, event.id, seat_ids=[seats[3].id], request_id=request_id)
    two = await allocate(stubs, stage, event.id, seat_ids=[seats[3].id], request_id=request_id)
    assert one.id == two.id != first.id
    mismatch = allocate(stubs, stage, event.id, seat_ids=[seats[4].id], request_id=request_id)
    assert await refusal(mismatch) == (S.FAILED_PRECONDITION, "REQUEST_ID_MISMATCH")
    # The database holds a place in at most one allocation, and only one its rows list.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await raw.execute(
            "UPDATE seats SET allocation_id = $1, allocation_partner_id = $2 WHERE id = $3",
            uuid.UUID(one.id),
            uuid.UUID(stage.seller.id),
            seats[4].id,
        )


async def test_a_partner_without_public_sales_sells_only_its_allocation(
    stubs: Stubs, stage: Stage, admin: Account
) -> None:
    partner, secret = await stubs.create_partner(admin, "Allocation Only")
    assert partner.public_sales and not partner.HasField("rate_per_second")
    closed = (
        await stubs.partners.UpdatePartner(
            partner_pb2.UpdatePartnerRequest(
                partner_id=partner.id, public_sales=False, rate_per_second=50
            ),
            metadata=admin.md,
        )
    ).partner
    assert not closed.public_sales and closed.rate_per_second == 50
    # Only the fields set change; a budget of 0 is the server default again.
    cleared = (
        await stubs.partners.UpdatePartner(
            partner_pb2.UpdatePartnerRequest(partner_id=partner.id, rate_per_second=0),
            metadata=admin.md,
        )
    ).partner
    assert not cleared.public_sales and not cleared.HasField("rate_per_second")
    nothing = stubs.partners.UpdatePartner(
        partner_pb2.UpdatePartnerRequest(partner_id=partner.id), metadata=admin.md
    )
    assert await refusal(nothing) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    unknown = stubs.partners.UpdatePartner(
        partner_pb2.UpdatePartnerRequest(partner_id=str(uuid.uuid4()), public_sales=True),
        metadata=admin.md,
    )
    assert await refusal(unknown) == (S.NOT_FOUND, "PARTNER_NOT_FOUND")
    too_many = stubs.partners.UpdatePartner(
        partner_pb2.UpdatePartnerRequest(partner_id=partner.id, max_concurrent_rpcs=100_001),
        metadata=admin.md,
    )
    assert (await refusal(too_many))[0] == S.INVALID_ARGUMENT
    event = await stubs.create_event(stage.organizer, stage.venue, name="Closed Channel")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    await allocate(stubs, stage, event.id, seat_ids=[seats[0].id], partner_id=partner.id)
    md = api_key(secret)
    public_seat = for_customer(book_request(event.id, [seats[1].id]), "x")
    assert await refusal(stubs.booking.BookSeats(public_seat, metadata=md)) == (
        S.FAILED_PRECONDITION,
        "SEAT_UNAVAILABLE",
    )
    own = for_customer(book_request(event.id, [seats[0].id]), "x")
    await stubs.booking.BookSeats(own, metadata=md)


@pytest.mark.slow  # 200+ concurrent buyers on their own channels
async def test_crowd_and_two_partners_never_oversell_or_cross_channels(
    running: RunningServer, stubs: Stubs, stage: Stage, admin: Account, raw: asyncpg.Connection
) -> None:
    venue = await stubs.create_venue(admin, small_layout(name="Crowd GA", rows=1, seats=1, ga=60))
    event = await stubs.create_event(stage.organizer, venue, name="Crowd", max_per_order=2)
    ga = venue.sections[1].id
    allocation = await allocate(stubs, stage, event.id, best=(ga, 20))
    allocated = set(allocation.seat_ids)
    outcomes: Counter[str] = Counter()

    async def buy(client: Stubs, md: CallMetadata, request: booking_pb2.BookSeatsRequest) -> None:
        try:
            await client.booking.BookSeats(request, metadata=md, timeout=60)
            outcomes["OK"] += 1
        except aio.AioRpcError as err:
            details = error_details(err)
            assert (details.code, details.reason) in {
                (S.FAILED_PRECONDITION, "SOLD_OUT"),
                (S.ABORTED, "SEAT_LOCKED"),
            }, (details.code, details.reason, details.message)
            outcomes[details.reason or "?"] += 1

    async with client_pool(running.target, 20) as clients:
        calls = [
            buy(clients[i % 20], stage.customer.md, best_request(event.id, ga, 1))
            for i in range(200)
        ]
        calls += [
            buy(
                clients[i % 20],
                stage.seller_md,
                for_customer(best_request(event.id, ga, 1), f"seller-{i}"),
            )
            for i in range(30)
        ]
        calls += [
            buy(
                clients[i % 20],
                stage.other_md,
                for_customer(best_request(event.id, ga, 1), f"other-{i}"),
            )
            for i in range(30)
        ]
        await asyncio.gather(*calls)

    rows = await raw.fetch(
        "SELECT t.seat_id, o.partner_id FROM tickets t JOIN orders o ON o.id = t.order_id "
        "WHERE o.event_id = $1 AND t.status <> 'VOID'",
        uuid.UUID(event.id),
    )
    seats = [r["seat_id"] for r in rows]
    assert len(seats) == len(set(seats)) <= 60, "a place was sold twice"
    assert outcomes["OK"] == len(seats)
    for r in rows:
        if r["seat_id"] in allocated:
            assert str(r["partner_id"]) == stage.seller.id, "sold outside its allocation"
    # Demand (260) exceeds supply (60): everything sold, the allocation by its partner.
    assert len(seats) == 60
    assert {r["seat_id"] for r in rows if str(r["partner_id"]) == stage.seller.id} >= allocated


async def test_allocation_races_a_sale_and_another_allocation_of_the_same_places(
    running: RunningServer, stubs: Stubs, stage: Stage, raw: asyncpg.Connection
) -> None:
    """Two different operations on one place at once: the seat row lock serialises them,
    so exactly one wins and the loser is told why; the place ends in one channel only."""
    for round_ in range(5):
        event = await stubs.create_event(stage.organizer, stage.venue, name=f"Race {round_}")
        seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
        ids = [s.id for s in seats[:2]]

        async def outcome(call: object) -> str:
            try:
                await call  # type: ignore[misc]
            except aio.AioRpcError as err:
                details = error_details(err)
                assert details.code in (S.FAILED_PRECONDITION, S.ABORTED), details
                return details.reason or "?"
            return "OK"

        async with client_pool(running.target, 3) as (a, b, c):
            results = await asyncio.gather(
                outcome(allocate(a, stage, event.id, seat_ids=ids)),
                outcome(
                    allocate(b, stage, event.id, seat_ids=ids[::-1], partner_id=stage.other.id)
                ),
                outcome(
                    c.booking.BookSeats(book_request(event.id, ids), metadata=stage.customer.md)
                ),
            )
        assert results.count("OK") == 1, results
        assert set(results) - {"OK"} <= {"SEAT_UNAVAILABLE", "SEAT_LOCKED"}, results
        row = await raw.fetchrow(
            "SELECT count(DISTINCT allocation_partner_id) AS partners, "
            "count(*) FILTER (WHERE status = 'SOLD') AS sold FROM seats WHERE id = ANY($1)",
            ids,
        )
        assert row is not None
        # Either both places were sold to the public, or both went to one partner unsold.
        assert (row["sold"], row["partners"]) in ((2, 0), (0, 1)), (results, dict(row))


async def test_a_partner_lists_its_own_allocations_only(
    stubs: Stubs, stage: Stage, admin: Account
) -> None:
    """ListAllocations with an API key: the partner's own allocations of the event, paged,
    never another partner's; the organizer still sees all; an unknown event is NOT_FOUND."""
    event = await stubs.create_event(stage.organizer, stage.venue, name="Listed Allocations")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    mine, theirs = [], []
    # Interleaved, so the partner's pages are cut out of the event's listing, not a prefix.
    for i in range(5):
        mine.append((await allocate(stubs, stage, event.id, seat_ids=[seats[2 * i].id])).id)
        theirs.append(
            (
                await allocate(
                    stubs,
                    stage,
                    event.id,
                    seat_ids=[seats[2 * i + 1].id],
                    partner_id=stage.other.id,
                )
            ).id
        )

    async def listed(md: CallMetadata, page_size: int) -> list[str]:
        ids: list[str] = []
        token = ""
        for _ in range(20):
            page = await stubs.events.ListAllocations(
                event_pb2.ListAllocationsRequest(
                    event_id=event.id, page_size=page_size, page_token=token
                ),
                metadata=md,
            )
            assert len(page.allocations) <= page_size
            ids.extend(a.id for a in page.allocations)
            token = page.next_page_token
            if not token:
                return ids
        raise AssertionError("pages never ended")

    assert await listed(stage.seller_md, 2) == mine
    assert await listed(stage.other_md, 3) == theirs
    assert await listed(stage.seller_md, 100) == mine
    assert await listed(stage.organizer.md, 4) == [
        x for pair in zip(mine, theirs, strict=True) for x in pair
    ]
    # A partner with no allocation here sees none; an unknown event is NOT_FOUND for it too.
    _, third_key = await stubs.create_partner(admin, "No Allocation Seller")
    assert await listed(api_key(third_key), 5) == []
    unknown = stubs.events.ListAllocations(
        event_pb2.ListAllocationsRequest(event_id=str(uuid.uuid4())), metadata=stage.seller_md
    )
    assert await refusal(unknown) == (S.NOT_FOUND, "EVENT_NOT_FOUND")
    # Still not theirs to change: releasing is the organizer's (role matrix: no PARTNER).
    release = event_pb2.ReleaseAllocationRequest(allocation_id=mine[0])
    assert await refusal(stubs.events.ReleaseAllocation(release, metadata=stage.seller_md)) == (
        S.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    )


class SeatWatcher(StreamReader[event_pb2.SeatChange]):
    """A WatchSeats call from its snapshot, read in the background."""

    def __init__(self, stubs: Stubs, event_id: str) -> None:
        super().__init__(stubs.events.WatchSeats(event_pb2.WatchSeatsRequest(event_id=event_id)))

    @property
    def changes(self) -> list[tuple[int, int]]:
        return [(c.seat_id, c.status) for c in self.items if not c.snapshot]

    def state(self) -> dict[int, int]:
        return {c.seat_id: c.status for c in self.items}

    async def until_changes(self, count: int) -> None:
        await self.wait_for(lambda: len(self.changes) >= count)

    def dense(self) -> bool:
        numbers = [c.sequence for c in self.items if not c.snapshot]
        return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True


async def test_watchers_see_allocated_places_and_their_return(stubs: Stubs, stage: Stage) -> None:
    """Issue 15: an allocation is in the seat stream. Made: ALLOCATED; a partner's hold on
    an allocated place released: back to ALLOCATED (the public's view, as on the map); sold:
    SOLD; the allocation released: the free places AVAILABLE, the sold one untouched. The
    watcher's map equals ListSeats at every step, with dense sequences."""
    event = await stubs.create_event(stage.organizer, stage.venue, name="Watched Allocation")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    ids = [s.id for s in seats[:4]]
    w = SeatWatcher(stubs, event.id)
    try:
        await w.wait_for(lambda: any(c.snapshot_complete for c in w.items))

        async def in_step(count: int) -> None:
            await w.until_changes(count)
            listed = {s.id: s.status for s in await stubs.all_seats(event.id)}
            assert w.state() == listed and w.dense()

        made = await allocate(stubs, stage, event.id, seat_ids=ids)
        await in_step(4)
        assert w.changes == [(i, event_pb2.SEAT_STATUS_ALLOCATED) for i in ids]
        hold = booking_pb2.HoldSeatsRequest(
            event_id=event.id,
            request_id=str(uuid.uuid4()),
            seat_ids=booking_pb2.SeatIds(ids=ids[:1]),
            on_behalf_of=booking_pb2.EndCustomer(external_customer_id="w-1"),
        )
        held = (await stubs.booking.HoldSeats(hold, metadata=stage.seller_md)).hold
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=held.id), metadata=stage.seller_md
        )
        await in_step(6)
        assert w.changes[4:] == [
            (ids[0], event_pb2.SEAT_STATUS_HELD),
            (ids[0], event_pb2.SEAT_STATUS_ALLOCATED),
        ]
        sale = for_customer(book_request(event.id, ids[1:2]), "w-2")
        await stubs.booking.BookSeats(sale, metadata=stage.seller_md)
        await in_step(7)
        await stubs.events.ReleaseAllocation(
            event_pb2.ReleaseAllocationRequest(allocation_id=made.id), metadata=stage.organizer.md
        )
        await in_step(10)
        assert w.changes[6:] == [
            (ids[1], event_pb2.SEAT_STATUS_SOLD),
            *[(i, event_pb2.SEAT_STATUS_AVAILABLE) for i in (ids[0], ids[2], ids[3])],
        ]
    finally:
        await w.stop()


async def test_release_time_is_swept_into_the_stream_once_by_racing_sweepers(
    stubs: Stubs, stage: Stage, running: RunningServer
) -> None:
    """An allocation's release_time passing writes nothing by itself; the sweep records
    each free place's return once, even with two sweepers racing (SKIP LOCKED, and a
    place leaves its allocation once); a place sold from the allocation stays SOLD."""
    event = await stubs.create_event(stage.organizer, stage.venue, name="Swept Allocation")
    seats = await stubs.all_seats(event.id, section_id=stage.venue.sections[0].id)
    ids = [s.id for s in seats[:6]]
    soon = Timestamp()
    soon.FromMicroseconds(time.time_ns() // 1000 + 1_000_000)
    await allocate(stubs, stage, event.id, seat_ids=ids, release_time=soon)
    sale = for_customer(book_request(event.id, ids[:1]), "s-1")
    await stubs.booking.BookSeats(sale, metadata=stage.seller_md)
    w = SeatWatcher(stubs, event.id)
    try:
        await w.wait_for(lambda: any(c.snapshot_complete for c in w.items))
        deadline = time.monotonic() + 30
        while await seat_statuses(stubs, event.id, ids[1:]) != {event_pb2.SEAT_STATUS_AVAILABLE}:
            assert time.monotonic() < deadline, "the allocation never ended"
            await asyncio.sleep(0.2)
        booking = running.components.booking
        # Small batches, so the sweepers really interleave (they sweep every event's
        # places, so how many each took says nothing here: the stream below does).
        await asyncio.gather(*(booking.sweep_expired_allocations(2) for _ in range(8)))
        while await booking.sweep_expired_allocations(2) > 0:
            pass
        await w.until_changes(5)
        await asyncio.sleep(0.3)  # anything recorded twice would arrive by now
        assert sorted(w.changes) == [(i, event_pb2.SEAT_STATUS_AVAILABLE) for i in ids[1:]]
        assert w.state() == {s.id: s.status for s in await stubs.all_seats(event.id)}
        assert w.state()[ids[0]] == event_pb2.SEAT_STATUS_SOLD
    finally:
        await w.stop()
