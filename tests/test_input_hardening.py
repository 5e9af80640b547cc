"""Issue 10, items 14-17: bad input refused cleanly, end to end (real server, real PostgreSQL).

- 14: only real IANA zone names; zoneinfo directories ("America") and the non-zones a zoneinfo
  tree carries ("localtime", "Factory", "posix/...") are INVALID_ARGUMENT `venue.time_zone`,
  never UNAVAILABLE DB_UNAVAILABLE; an OS error raised outside the database layer is never
  reported as the database being down.
- 15: seat labels, row labels and section names are normalised (surrounding space trimmed,
  inner runs of Unicode space folded to one space) BEFORE the duplicate check.
- 16: currency codes are checked against the ISO 4217 list, not a pattern.
- 17: a string field that is not valid UTF-8 is INVALID_ARGUMENT naming the field, never
  UNKNOWN; the request bytes are sent as they are through a generic channel call.

Every refusal leaves the database as it was.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc import aio
from grpc_health.v1 import health_pb2
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import Account, Stubs, error_details, future, small_layout
from ticketing.v1 import auth_pb2, booking_pb2, event_pb2, venue_pb2

S = grpc.StatusCode


async def _count(running: RunningServer, table: str) -> int:
    async with running.engine.connect() as conn:
        return int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))


async def _create_venue_error(stubs: Stubs, admin: Account, venue: venue_pb2.Venue) -> Any:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.CreateVenue(venue_pb2.CreateVenueRequest(venue=venue), metadata=admin.md)
    return error_details(err.value)


# --- 14: time zones -----------------------------------------------------------------------------

NOT_ZONES = [
    "America",  # a directory of the zoneinfo tree: IsADirectoryError inside zoneinfo
    "Etc",
    "Africa",
    "America/",
    "localtime",  # the host's zone, a file in /usr/share/zoneinfo, not an IANA name
    "Factory",  # tzdata's placeholder zone ("-00"), not a place
    "posixrules",
    "posix/Europe/Paris",  # duplicate trees (POSIX and leap-second variants)
    "right/UTC",
    "Europe/../Europe/Paris",
    "/usr/share/zoneinfo/UTC",
    "europe/berlin",  # names are case-sensitive
    " Europe/Berlin",
    "Europe/Berlin ",
    "Mars/Olympus",
    "zone.tab",
    "tzdata.zi",
]


@pytest.mark.parametrize("zone", NOT_ZONES)
async def test_only_real_iana_zones_are_accepted(
    stubs: Stubs, admin: Account, running: RunningServer, zone: str
) -> None:
    before = await _count(running, "venues")
    details = await _create_venue_error(stubs, admin, _venue(time_zone=zone))
    assert (details.code, details.reason) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT"), details
    assert [f for f, _ in details.field_violations] == ["venue.time_zone"]
    assert await _count(running, "venues") == before


@pytest.mark.parametrize("zone", ["Europe/Berlin", "UTC", "America/Argentina/Buenos_Aires"])
async def test_real_zones_still_work(stubs: Stubs, admin: Account, zone: str) -> None:
    venue = await stubs.create_venue(admin, _venue(time_zone=zone))
    assert venue.time_zone == zone


async def test_update_venue_checks_the_zone_too(stubs: Stubs, admin: Account) -> None:
    venue = await stubs.create_venue(admin, _venue())
    changed = _venue(time_zone="Etc")
    changed.id = venue.id
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.venues.UpdateVenue(
            venue_pb2.UpdateVenueRequest(venue=changed), metadata=admin.md
        )
    details = error_details(err.value)
    assert details.code == S.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == ["venue.time_zone"]
    got = await stubs.venues.GetVenue(
        venue_pb2.GetVenueRequest(venue_id=venue.id), metadata=admin.md
    )
    assert got.venue.time_zone == "Europe/Berlin"


async def test_an_os_error_in_the_block_of_a_healthy_connection_is_not_the_database(
    running: RunningServer,
) -> None:
    """The database layer classifies failures seen on its connection only: an OS error
    raised by other code inside `connection()` / `transaction()` comes out unchanged (so the
    edge reports it INTERNAL, with a correlation id), never as DB_UNAVAILABLE."""
    db = running.components.db
    for unit in (db.connection, db.transaction):
        with pytest.raises(IsADirectoryError):
            async with unit() as conn:
                assert await conn.fetchval("SELECT 1") == 1
                raise IsADirectoryError(21, "Is a directory", "/usr/share/zoneinfo/America")
    # The connection went back to the pool healthy.
    async with db.connection() as conn:
        assert await conn.fetchval("SELECT 2") == 2


# --- 15: labels and names -----------------------------------------------------------------------


def _venue(
    *,
    time_zone: str = "Europe/Berlin",
    sections: list[venue_pb2.Section] | None = None,
) -> venue_pb2.Venue:
    venue: venue_pb2.Venue = small_layout(name=f"Input {uuid.uuid4().hex[:6]}")
    venue.time_zone = time_zone
    if sections is not None:
        del venue.sections[:]
        venue.sections.extend(sections)
    return venue


def _reserved(name: str, *rows: venue_pb2.Row) -> venue_pb2.Section:
    return venue_pb2.Section(name=name, kind=venue_pb2.SECTION_KIND_RESERVED, rows=list(rows))


def _ga(name: str, capacity: int = 5) -> venue_pb2.Section:
    return venue_pb2.Section(
        name=name, kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=capacity
    )


LABEL_DUPLICATES = [
    pytest.param(
        [_reserved("R", venue_pb2.Row(label="A", seat_count=3, seat_labels=["1", " 1", "1 "]))],
        ["venue.sections[0].rows[0].seat_labels[1]", "venue.sections[0].rows[0].seat_labels[2]"],
        id="seat-labels-surrounding-space",
    ),
    pytest.param(
        [
            _reserved(
                "R", venue_pb2.Row(label="A", seat_count=2, seat_labels=["1\u00a0A", "1 \u3000A"])
            )
        ],
        ["venue.sections[0].rows[0].seat_labels[1]"],
        id="seat-labels-unicode-inner-space",
    ),
    pytest.param(
        [
            _reserved(
                "R",
                venue_pb2.Row(label="A", seat_count=1),
                venue_pb2.Row(label="\u2003A\t", seat_count=1),
            )
        ],
        ["venue.sections[0].rows[1].label"],
        id="row-labels-unicode-surrounding-space",
    ),
    pytest.param(
        [_ga("Upper Tier"), _ga("Upper  Tier"), _ga("upper\u00a0tier ")],
        ["venue.sections[1].name", "venue.sections[2].name"],
        id="section-names-inner-space-and-case",
    ),
    pytest.param(
        [_ga("Stalls"), _ga("Stalls\u200b")],
        ["venue.sections[1].name"],
        id="section-name-invisible-character",
    ),
    pytest.param(
        [_reserved("R", venue_pb2.Row(label="\ufeffA", seat_count=1))],
        ["venue.sections[0].rows[0].label"],
        id="row-label-invisible-character",
    ),
    pytest.param(
        [_reserved("R", venue_pb2.Row(label="A", seat_count=2, seat_labels=["1", "\u00a0"]))],
        ["venue.sections[0].rows[0].seat_labels[1]"],
        id="seat-label-only-space",
    ),
]


@pytest.mark.parametrize(("sections", "fields"), LABEL_DUPLICATES)
async def test_labels_are_trimmed_before_the_duplicate_check(
    stubs: Stubs,
    admin: Account,
    running: RunningServer,
    sections: list[venue_pb2.Section],
    fields: list[str],
) -> None:
    before = await _count(running, "venues")
    details = await _create_venue_error(stubs, admin, _venue(sections=sections))
    assert details.code == S.INVALID_ARGUMENT, details
    assert [f for f, _ in details.field_violations] == fields, details
    assert await _count(running, "venues") == before


async def test_labels_are_stored_normalised_and_limits_apply_after_trimming(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    labels = [" 1", "2 ", "\u00a03\u00a0", "4\u3000\u3000B", "x" * 20 + "   "]
    venue = await stubs.create_venue(
        admin,
        _venue(
            sections=[
                _reserved(
                    "  Upper\u00a0 Tier ",
                    venue_pb2.Row(label=" A ", seat_count=5, seat_labels=labels),
                )
            ]
        ),
    )
    section = venue.sections[0]
    assert section.name == "Upper Tier"
    assert section.rows[0].label == "A"
    assert list(section.rows[0].seat_labels) == ["1", "2", "3", "4 B", "x" * 20]
    event = await stubs.create_event(admin, venue)
    seats = await stubs.all_seats(event.id)
    assert [(s.row_label, s.label) for s in seats] == [
        ("A", x) for x in ["1", "2", "3", "4 B", "x" * 20]
    ]
    # Just past the limit once trimmed: 21 characters.
    details = await _create_venue_error(
        stubs,
        admin,
        _venue(sections=[_reserved("R", venue_pb2.Row(label="y" * 21, seat_count=1))]),
    )
    assert [f for f, _ in details.field_violations] == ["venue.sections[0].rows[0].label"]


# --- 16: currencies -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def hall(stubs: Stubs, admin: Account) -> venue_pb2.Venue:
    return await stubs.create_venue(admin, _venue())


def _event_request(venue: venue_pb2.Venue, currency: str) -> event_pb2.CreateEventRequest:
    return event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name="Currency check",
        start_time=future(10),
        currency_code=currency,
        section_prices={s.id: 1000 for s in venue.sections},
        max_tickets_per_order=4,
    )


@pytest.mark.parametrize(
    "currency",
    [
        "ZZZ",  # the example: three letters, not a currency
        "ABC",
        "HRK",  # Croatian kuna: withdrawn 2023 (Croatia uses EUR)
        "CUC",  # withdrawn 2021
        "XXX",  # "no currency": nothing to price in
        "XTS",  # reserved for testing
        "XAU",  # gold: no minor unit
        "eur",
        " EUR",
        "EURO",
        "",
    ],
)
async def test_currency_must_be_an_active_iso_4217_code(
    stubs: Stubs, admin: Account, running: RunningServer, hall: venue_pb2.Venue, currency: str
) -> None:
    before = await _count(running, "events")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.events.CreateEvent(_event_request(hall, currency), metadata=admin.md)
    details = error_details(err.value)
    assert details.code == S.INVALID_ARGUMENT, details
    assert [f for f, _ in details.field_violations] == ["currency_code"]
    assert await _count(running, "events") == before


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "CHF", "XOF", "SLE", "ZWG", "XCG"])
async def test_active_currencies_are_accepted(
    stubs: Stubs, admin: Account, hall: venue_pb2.Venue, currency: str
) -> None:
    event = (
        await stubs.events.CreateEvent(_event_request(hall, currency), metadata=admin.md)
    ).event
    assert event.currency_code == currency


# --- 17: invalid UTF-8 --------------------------------------------------------------------------

MARK = "zq7Mark"  # seven ASCII bytes, replaced in the wire bytes by the same number of others
BAD_BYTES = [b"zq7\xffrk!", b"zq\xc3(ark", b"\xed\xa0\x80Mark", b"zq7Mar\xc0"]


def _raw_call(channel: aio.Channel, method: str, response: type[Message]) -> Any:
    """A unary call that sends bytes exactly as given (no client-side serialization)."""
    return channel.unary_unary(
        method, request_serializer=lambda raw: raw, response_deserializer=response.FromString
    )


def _corrupt(request: Message, bad: bytes) -> bytes:
    wire = request.SerializeToString()
    assert wire.count(MARK.encode()) == 1, wire
    out = wire.replace(MARK.encode(), bad)
    assert len(out) == len(wire)
    return out


async def _send_raw(
    channel: aio.Channel, method: str, raw: bytes, response: type[Message], md: Any
) -> Any:
    with pytest.raises(aio.AioRpcError) as err:
        await _raw_call(channel, method, response)(raw, metadata=md, timeout=30)
    return error_details(err.value)


@pytest.mark.parametrize("bad", BAD_BYTES)
async def test_invalid_utf8_is_invalid_argument_naming_the_field(
    channel: aio.Channel, admin: Account, running: RunningServer, hall: venue_pb2.Venue, bad: bytes
) -> None:
    cases: list[tuple[str, Message, type[Message], str]] = [
        (
            "/ticketing.v1.VenueService/GetVenue",
            venue_pb2.GetVenueRequest(venue_id=MARK),
            venue_pb2.GetVenueResponse,
            "venue_id",
        ),
        (
            "/ticketing.v1.VenueService/CreateVenue",
            venue_pb2.CreateVenueRequest(
                venue=_venue(
                    sections=[
                        _ga("GA"),
                        _reserved(
                            "R", venue_pb2.Row(label="A", seat_count=2, seat_labels=["1", MARK])
                        ),
                    ]
                )
            ),
            venue_pb2.CreateVenueResponse,
            "venue.sections[1].rows[0].seat_labels[1]",
        ),
        (
            "/ticketing.v1.EventService/CreateEvent",
            event_pb2.CreateEventRequest(
                venue_id=hall.id,
                name="x",
                start_time=future(3),
                currency_code="EUR",
                section_prices={MARK: 1},
                max_tickets_per_order=1,
            ),
            event_pb2.CreateEventResponse,
            "section_prices",
        ),
        (
            "/ticketing.v1.BookingService/ListOrders",
            booking_pb2.ListOrdersRequest(customer_email=MARK + "@example.test"),
            booking_pb2.ListOrdersResponse,
            "customer_email",
        ),
    ]
    for method, request, response, field in cases:
        before = {t: await _count(running, t) for t in ("venues", "events", "orders")}
        details = await _send_raw(channel, method, _corrupt(request, bad), response, admin.md)
        where = f"{method} {field}: {details}"
        assert (details.code, details.reason) == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT"), where
        assert [f for f, _ in details.field_violations] == [field], where
        assert {t: await _count(running, t) for t in before} == before, where


async def test_invalid_utf8_before_sign_in_and_in_public_calls(channel: aio.Channel) -> None:
    """Public unary calls decode too (Register), and so do the public streaming ones: health
    Watch is unary-stream and must not answer UNKNOWN either."""
    register = auth_pb2.RegisterRequest(
        email=f"{MARK}@example.test", password="long enough password", display_name="X"
    )
    details = await _send_raw(
        channel,
        "/ticketing.v1.AuthService/Register",
        _corrupt(register, b"zq7\xffark"),
        auth_pb2.RegisterResponse,
        (),
    )
    assert details.code == S.INVALID_ARGUMENT and details.field_violations[0][0] == "email"
    check = health_pb2.HealthCheckRequest(service=MARK)
    details = await _send_raw(
        channel,
        "/grpc.health.v1.Health/Check",
        _corrupt(check, b"zq7\xffark"),
        health_pb2.HealthCheckResponse,
        (),
    )
    assert details.code == S.INVALID_ARGUMENT, details
    watch = channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=lambda raw: raw,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    call = watch(_corrupt(check, b"zq7\xffark"), timeout=10)
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == S.INVALID_ARGUMENT, err.value


async def test_refused_role_is_still_told_first(
    channel: aio.Channel, stubs: Stubs, admin: Account
) -> None:
    """Decoding happens after the policy check, like the NUL check: a caller whose role may
    not call the method learns that, whatever the bytes."""
    customer = await stubs.register("utf8-customer")
    request = venue_pb2.CreateVenueRequest(venue=_venue(sections=[_ga(MARK)]))
    details = await _send_raw(
        channel,
        "/ticketing.v1.VenueService/CreateVenue",
        _corrupt(request, b"zq7\xffark"),
        venue_pb2.CreateVenueResponse,
        customer.md,
    )
    assert (details.code, details.reason) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


async def test_malformed_wire_bytes_are_invalid_argument(
    channel: aio.Channel, admin: Account
) -> None:
    """Not UTF-8 but broken framing (a length running past the end): still no UNKNOWN."""
    for raw in (b"\x0a\x7fabc", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\x0b"):
        details = await _send_raw(
            channel,
            "/ticketing.v1.VenueService/GetVenue",
            raw,
            venue_pb2.GetVenueResponse,
            admin.md,
        )
        assert details.code == S.INVALID_ARGUMENT, (raw, details)


async def test_invalid_utf8_in_a_request_stream_ends_it_with_invalid_argument(
    channel: aio.Channel,
) -> None:
    """Reflection is stream-stream (an async-generator servicer): a good request is answered,
    the bad one that follows ends the stream with INVALID_ARGUMENT, not UNKNOWN."""
    from grpc_reflection.v1alpha import reflection_pb2

    good = reflection_pb2.ServerReflectionRequest(file_by_filename="ticketing/v1/venue.proto")
    bad = reflection_pb2.ServerReflectionRequest(file_containing_symbol=MARK)
    info = channel.stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=lambda raw: raw,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )

    async def requests() -> Any:
        yield good.SerializeToString()
        yield _corrupt(bad, b"zq7\xffark")

    call = info(requests(), timeout=10)
    answers = []
    with pytest.raises(aio.AioRpcError) as err:
        async for answer in call:
            answers.append(answer)
    assert err.value.code() == S.INVALID_ARGUMENT, err.value
    assert len(answers) == 1 and answers[0].HasField("file_descriptor_response")
    assert error_details(err.value).field_violations == [
        ("file_containing_symbol", "must be valid UTF-8 text")
    ]
