"""Organizer quotas (issue 10, item 11): places per event and live events per organizer.

A second server on the test database runs with small caps (30 places, 3 live events) so the
limits are reached with a handful of calls. ADMIN is exempt by design.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer, second_server
from tests.support import Account, Stubs, error_details, future, rich_detail, small_layout
from ticketd.db.database import PoolOptions
from ticketing.v1 import common_pb2, event_pb2, venue_pb2

PLACES = 30
LIVE = 3


@pytest.fixture(scope="module")
async def capped(running: RunningServer) -> AsyncIterator[Stubs]:
    async with (
        second_server(
            running,
            PoolOptions(pool_size=8, lock_timeout_ms=10_000),
            quota_event_places=PLACES,
            quota_live_events=LIVE,
        ) as s,
        aio.insecure_channel(s.target) as ch,
    ):
        yield Stubs(ch)


def create_request(venue: venue_pb2.Venue, request_id: str = "", days: float = 20) -> Any:
    return event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name="Capped",
        start_time=future(days),
        currency_code="EUR",
        section_prices={s.id: 1000 for s in venue.sections},
        max_tickets_per_order=4,
        request_id=request_id,
    )


def quota_failure(err: aio.AioRpcError) -> list[tuple[str, str]]:
    qf = rich_detail(err, error_details_pb2.QuotaFailure)
    return [] if qf is None else [(v.subject, v.description) for v in qf.violations]


def outcome(result: Any) -> str:
    if isinstance(result, BaseException):
        assert isinstance(result, aio.AioRpcError), repr(result)
        return f"{result.code().name}:{error_details(result).reason}"
    return "OK"


async def organizer_events(running: RunningServer, organizer: Account) -> int:
    async with running.engine.connect() as conn:
        value: int = (
            await conn.execute(
                text("SELECT count(*) FROM events WHERE organizer_id = :o"),
                {"o": uuid.UUID(organizer.user.id)},
            )
        ).scalar_one()
    return value


async def test_places_per_event_cap_at_and_past_the_limit(
    capped: Stubs, stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    at_cap = await stubs.create_venue(admin, small_layout(rows=5, seats=5, ga=PLACES - 25))
    past_cap = await stubs.create_venue(admin, small_layout(rows=5, seats=5, ga=PLACES - 24))
    assert (at_cap.capacity, past_cap.capacity) == (PLACES, PLACES + 1)
    ok = await capped.events.CreateEvent(create_request(at_cap), metadata=organizer.md)
    assert ok.event.capacity == PLACES
    with pytest.raises(aio.AioRpcError) as err:
        await capped.events.CreateEvent(create_request(past_cap), metadata=organizer.md)
    d = error_details(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert d.metadata == {"quota": "places_per_event", "limit": "30", "requested": "31"}
    [(subject, _)] = quota_failure(err.value)
    assert subject == f"organizer:{organizer.user.id}"
    assert await organizer_events(running, organizer) == 1
    # ADMIN is exempt.
    exempt = await capped.events.CreateEvent(create_request(past_cap), metadata=admin.md)
    assert exempt.event.capacity == PLACES + 1


async def test_live_events_cap_counts_only_events_on_sale(
    capped: Stubs, stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    venue = await stubs.create_venue(admin)
    made = [
        (await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)).event
        for _ in range(LIVE)
    ]
    with pytest.raises(aio.AioRpcError) as err:
        await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)
    d = error_details(err.value)
    assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert d.metadata["quota"] == "live_events" and d.metadata["limit"] == str(LIVE)
    assert quota_failure(err.value)
    # A cancelled event frees its slot...
    await capped.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=made[0].id, reason="moved"), metadata=organizer.md
    )
    made.append(
        (await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)).event
    )
    # ...and so does one that has started (database clock).
    async with running.engine.begin() as conn:
        await conn.execute(
            text("UPDATE events SET start_time = now() - interval '1 minute' WHERE id = :e"),
            {"e": uuid.UUID(made[1].id)},
        )
    made.append(
        (await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)).event
    )
    with pytest.raises(aio.AioRpcError) as err:
        await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)
    assert error_details(err.value).reason == "QUOTA_EXCEEDED"
    assert await organizer_events(running, organizer) == LIVE + 2
    # Other organizers have quotas of their own; ADMIN has none.
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org2")
    await capped.events.CreateEvent(create_request(venue), metadata=other.md)
    for _ in range(LIVE + 1):
        await capped.events.CreateEvent(create_request(venue), metadata=admin.md)


async def one_slot_left(
    capped: Stubs, stubs: Stubs, admin: Account
) -> tuple[Account, venue_pb2.Venue]:
    """A new organizer with LIVE - 1 events on sale at a new venue: one create left."""
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="org")
    venue = await stubs.create_venue(admin)
    for _ in range(LIVE - 1):
        await capped.events.CreateEvent(create_request(venue), metadata=organizer.md)
    return organizer, venue


async def test_concurrent_creates_at_the_limit_only_one_wins(
    capped: Stubs, stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    organizer, venue = await one_slot_left(capped, stubs, admin)
    results = await asyncio.gather(
        *(
            capped.events.CreateEvent(create_request(venue), metadata=organizer.md)
            for _ in range(10)
        ),
        return_exceptions=True,
    )
    assert Counter(outcome(r) for r in results) == {
        "OK": 1,
        "RESOURCE_EXHAUSTED:QUOTA_EXCEEDED": 9,
    }
    assert await organizer_events(running, organizer) == LIVE


async def test_a_retry_at_the_limit_gets_its_event_not_a_quota_error(
    capped: Stubs, stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Twins of one request_id racing for the last slot: both get the one event created."""
    organizer, venue = await one_slot_left(capped, stubs, admin)
    request = create_request(venue, request_id=str(uuid.uuid4()))
    twins = await asyncio.gather(
        *(capped.events.CreateEvent(request, metadata=organizer.md) for _ in range(5))
    )
    assert len({t.event.id for t in twins}) == 1
    late = await capped.events.CreateEvent(request, metadata=organizer.md)
    assert late.event.id == twins[0].event.id
    assert await organizer_events(running, organizer) == LIVE
