"""Set-up over the public API, as any client would do it: sign-in, venues, events, buyers.

Raw generated stubs (no SDK interceptors, no retries): every call is one RPC on the wire.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from ticketing.v1 import (
    auth_pb2,
    auth_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    venue_pb2,
    venue_pb2_grpc,
)

Metadata = tuple[tuple[str, str], ...]
SEATS_PER_ROW = 100
ROWS_PER_SECTION = 50
CALL_TIMEOUT_S = 10.0
SETUP_TIMEOUT_S = 300.0
REGISTER_AT_ONCE = 16


def channel(target: str) -> aio.Channel:
    """A plaintext channel with its own TCP/HTTP2 connection (a local subchannel pool:
    otherwise channels to one target share a single connection)."""
    return aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def bearer(token: str) -> Metadata:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


def days_from_now(days: float) -> Timestamp:
    """A protobuf Timestamp `days` from now (events must start in the future)."""
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return ts


async def login(ch: aio.Channel, email: str, password: str) -> Metadata:
    """Sign in; the metadata that carries the access token."""
    resp = await auth_pb2_grpc.AuthServiceStub(ch).Login(
        auth_pb2.LoginRequest(email=email, password=password), timeout=CALL_TIMEOUT_S
    )
    return bearer(resp.access_token)


def arena_layout(places: int, name: str | None = None) -> venue_pb2.Venue:
    """A reserved-seating venue of exactly `places`: rows of 100 seats (the last one
    shorter), sections of up to 50 rows (5,000 places each)."""
    if places <= 0:
        raise ValueError(f"places must be positive, got {places}")
    rows = -(-places // SEATS_PER_ROW)
    venue = venue_pb2.Venue(name=name or f"Bench arena {places}", time_zone="UTC")
    for first in range(0, rows, ROWS_PER_SECTION):
        venue.sections.append(
            venue_pb2.Section(
                name=f"Block {first // ROWS_PER_SECTION + 1}",
                kind=venue_pb2.SECTION_KIND_RESERVED,
                rows=[
                    venue_pb2.Row(
                        label=str(r - first + 1),
                        seat_count=min(SEATS_PER_ROW, places - r * SEATS_PER_ROW),
                    )
                    for r in range(first, min(rows, first + ROWS_PER_SECTION))
                ],
            )
        )
    return venue


async def create_venue(ch: aio.Channel, md: Metadata, places: int) -> venue_pb2.Venue:
    """A new `arena_layout` venue of `places` (as an ADMIN)."""
    resp = await venue_pb2_grpc.VenueServiceStub(ch).CreateVenue(
        venue_pb2.CreateVenueRequest(venue=arena_layout(places)),
        metadata=md,
        timeout=SETUP_TIMEOUT_S,
    )
    return resp.venue


def event_request(
    venue: venue_pb2.Venue, name: str, *, price_minor: int = 5_000, max_per_order: int = 10
) -> event_pb2.CreateEventRequest:
    """CreateEvent for `venue` a year from now, one EUR price for every section."""
    return event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name=name,
        start_time=days_from_now(365),
        currency_code="EUR",
        section_prices={s.id: price_minor for s in venue.sections},
        max_tickets_per_order=max_per_order,
    )


async def create_event(
    ch: aio.Channel,
    md: Metadata,
    places: int,
    name: str,
    *,
    price_minor: int = 5_000,
    max_per_order: int = 10,
) -> event_pb2.Event:
    """A new venue of `places` and an event on sale there. Its seats are one INSERT ...
    SELECT, so their ids are contiguous (pgbench's picks rely on that)."""
    venue = await create_venue(ch, md, places)
    resp = await event_pb2_grpc.EventServiceStub(ch).CreateEvent(
        event_request(venue, name, price_minor=price_minor, max_per_order=max_per_order),
        metadata=md,
        timeout=SETUP_TIMEOUT_S,
    )
    return resp.event


async def register_buyers(target: str, count: int, password: str) -> list[Metadata]:
    """`count` new customer accounts (Register + Login, 16 at a time); their metadata."""
    sem = asyncio.Semaphore(REGISTER_AT_ONCE)
    tag = uuid.uuid4().hex[:8]
    async with channel(target) as ch:
        auth = auth_pb2_grpc.AuthServiceStub(ch)

        async def one(i: int) -> Metadata:
            email = f"bench-buyer-{tag}-{i}@example.test"
            async with sem:
                await auth.Register(
                    auth_pb2.RegisterRequest(
                        email=email, password=password, display_name=f"Buyer {i}"
                    ),
                    timeout=CALL_TIMEOUT_S,
                )
                return await login(ch, email, password)

        return list(await asyncio.gather(*(one(i) for i in range(count))))
