"""Pure input rules of issue 10 items 14-17, without a database or a server.

Zones, labels, currencies, the SQLSTATE classifier (no OS or library error raised outside the
database is ever a database error) and the edge's request decoding.
"""

from __future__ import annotations

import uuid
import zoneinfo
from typing import Any

import asyncpg
import pytest
from asyncpg.exceptions import _base as asyncpg_base
from google.protobuf.message import DecodeError, Message

from ticketd.db import sqlstate
from ticketd.edge.decoding import bad_utf8_field, decode_request
from ticketd.errors import Aborted, InvalidArgument, Reason, Unavailable
from ticketd.events.currencies import ACTIVE_CURRENCIES, is_priceable
from ticketd.shared import SectionKind
from ticketd.venues.rules import (
    MAX_LABEL,
    RowSpec,
    SectionSpec,
    VenueSpec,
    clean,
    iana_time_zones,
    normalize_label,
    time_zone_violation,
    validate_venue,
)
from ticketing.v1 import booking_pb2, event_pb2, venue_pb2

# --- 14: zones -----------------------------------------------------------------------------------


def test_zone_set_is_real_names_only() -> None:
    zones = iana_time_zones()
    assert {"Europe/Berlin", "UTC", "Etc/UTC", "America/Argentina/Buenos_Aires"} <= zones
    assert not {"Factory", "localtime", "posixrules", "America", "Etc"} & zones
    assert not any(z.startswith(("posix/", "right/")) for z in zones)
    # Every name in the set is one zoneinfo can load: the set never promises more.
    for name in sorted(zones)[::25]:
        zoneinfo.ZoneInfo(name)


@pytest.mark.parametrize(
    "name",
    [
        *("America", "Etc", "Africa", "localtime", "Factory", "posixrules", "posix/UTC"),
        *("right/UTC", "../etc/passwd", "/etc/localtime", "UTC\x00", "utc", " UTC"),
        *("Europe/Berlin/", "x" * 65),
    ],
)
def test_not_zones_are_refused_without_touching_the_file_system(name: str) -> None:
    assert time_zone_violation(name) is not None


def test_empty_zone_is_required() -> None:
    assert time_zone_violation("") == "is required"


# --- 14: no OS or library error is a database error ----------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        IsADirectoryError(21, "Is a directory"),
        FileNotFoundError(2, "No such file"),
        PermissionError(13, "Permission denied"),
        ConnectionResetError(104, "reset by a peer that is not the database"),
        zoneinfo.ZoneInfoNotFoundError("No time zone found with key America"),
        ValueError("bad"),
        KeyError("k"),
        asyncpg_base.DataError("invalid input for query argument $1"),
        asyncpg.InterfaceError("cannot perform operation: another operation is in progress"),
    ],
)
def test_errors_on_a_healthy_connection_are_not_database_errors(exc: BaseException) -> None:
    """With the connection alive, an OS or library error is a bug (INTERNAL), not DB_UNAVAILABLE."""
    assert sqlstate.classify(exc, connection_lost=False) is None


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(113, "No route to host"),
        asyncpg.InterfaceError("connection is closed"),
    ],
)
def test_socket_errors_that_took_the_connection_down_are_unavailable(exc: BaseException) -> None:
    mapped = sqlstate.classify(exc, connection_lost=True)
    assert isinstance(mapped, Unavailable) and mapped.reason is Reason.DB_UNAVAILABLE


def test_postgres_errors_are_classified_by_sqlstate() -> None:
    locked = sqlstate.classify(asyncpg.LockNotAvailableError("x"), connection_lost=False)
    assert isinstance(locked, Aborted) and locked.reason is Reason.LOCKED
    down = sqlstate.classify(asyncpg.AdminShutdownError("x"), connection_lost=True)
    assert isinstance(down, Unavailable) and down.reason is Reason.DB_UNAVAILABLE
    assert sqlstate.classify(asyncpg.UndefinedTableError("x"), connection_lost=False) is None


# --- 15: labels ----------------------------------------------------------------------------------


def _venue(*sections: SectionSpec) -> VenueSpec:
    return VenueSpec(name="V", address="", time_zone="UTC", sections=sections)


def _row(label: str, *seats: str) -> RowSpec:
    return RowSpec(label, len(seats) or 1, tuple(seats))


def _fields(spec: VenueSpec) -> list[str]:
    with pytest.raises(InvalidArgument) as err:
        validate_venue(spec)
    return [v.field for v in err.value.violations]


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (" 1", "1"),
        ("1 ", "1"),
        ("\u00a01\u3000", "1"),
        ("Upper  Tier", "Upper Tier"),
        ("Upper\u00a0\u2003Tier", "Upper Tier"),
        ("e\u0301", "\u00e9"),  # NFC
        ("A", "A"),
    ],
)
def test_normalize_label(raw: str, stored: str) -> None:
    assert normalize_label(raw) == stored


def test_seat_label_duplicates_are_found_after_trimming() -> None:
    spec = _venue(SectionSpec("R", SectionKind.RESERVED, (_row("A", "1", " 1", "1 "),)))
    assert _fields(spec) == [
        "venue.sections[0].rows[0].seat_labels[1]",
        "venue.sections[0].rows[0].seat_labels[2]",
    ]


def test_look_alike_labels_are_duplicates() -> None:
    full_width = "\uff11"  # FULLWIDTH DIGIT ONE
    spec = _venue(SectionSpec("R", SectionKind.RESERVED, (_row("A", "1", full_width),)))
    assert _fields(spec) == ["venue.sections[0].rows[0].seat_labels[1]"]
    rows = (_row("a", "1"), _row("A", "1"))
    assert _fields(_venue(SectionSpec("R", SectionKind.RESERVED, rows))) == [
        "venue.sections[0].rows[1].label"
    ]


def test_invisible_characters_are_refused() -> None:
    for bad in ("A\u200b", "\ufeffA", "\u202eA", "A\u2066B", "A\tB", "A\nB"):
        spec = _venue(SectionSpec(bad, SectionKind.GENERAL_ADMISSION, ga_capacity=1))
        assert _fields(spec) == ["venue.sections[0].name"], repr(bad)


def test_length_limits_apply_to_the_normalised_label() -> None:
    at_limit = "  " + "x" * MAX_LABEL + "\u00a0"
    spec = _venue(SectionSpec("R", SectionKind.RESERVED, (_row(at_limit, at_limit),)))
    validate_venue(spec)
    stored = clean(spec).sections[0].rows[0]
    assert stored.label == "x" * MAX_LABEL and stored.seat_labels == ("x" * MAX_LABEL,)
    past = _venue(SectionSpec("R", SectionKind.RESERVED, (_row("x" * (MAX_LABEL + 1)),)))
    assert _fields(past) == ["venue.sections[0].rows[0].label"]


def test_whitespace_only_labels_are_required() -> None:
    spec = _venue(SectionSpec("R", SectionKind.RESERVED, (_row("\u3000", "1", " \u00a0"),)))
    assert _fields(spec) == [
        "venue.sections[0].rows[0].label",
        "venue.sections[0].rows[0].seat_labels[1]",
    ]


def test_clean_stores_what_validate_checked() -> None:
    spec = _venue(
        SectionSpec(" Upper\u00a0Tier ", SectionKind.RESERVED, (_row(" A", " 1", "2\u3000"),))
    )
    validate_venue(spec)
    section = clean(spec).sections[0]
    assert section.name == "Upper Tier"
    assert section.rows[0] == RowSpec("A", 2, ("1", "2"))


def test_a_row_of_bad_labels_gives_a_bounded_answer() -> None:
    spec = _venue(SectionSpec("R", SectionKind.RESERVED, (_row("A", *(["1"] * 5_000)),)))
    assert len(_fields(spec)) == 10


# --- 16: currencies ------------------------------------------------------------------------------


def test_currency_list() -> None:
    assert len(ACTIVE_CURRENCIES) == 178
    assert all(len(c) == 3 and c.isascii() and c.isupper() for c in ACTIVE_CURRENCIES)
    for code in ("EUR", "USD", "JPY", "BHD", "CHF", "XOF", "SLE", "ZWG", "XCG"):
        assert is_priceable(code), code
    assert ACTIVE_CURRENCIES["JPY"] == 0 and ACTIVE_CURRENCIES["BHD"] == 3
    for code in ("ZZZ", "ABC", "HRK", "CUC", "SLL", "ZWL", "ANG", "BGN", "eur", "", "EURO"):
        assert not is_priceable(code), code
    # On the list, but with no minor unit: nothing can be priced in them.
    for code in ("XXX", "XTS", "XAU", "XAG", "XDR", "XBA", "XSU", "XUA"):
        assert code in ACTIVE_CURRENCIES and not is_priceable(code), code


# --- 17: request decoding ------------------------------------------------------------------------

MARK = b"zq7Mark"


def _wire(message: Message, bad: bytes = b"zq7\xffark") -> bytes:
    raw = message.SerializeToString()
    assert raw.count(MARK) == 1
    return raw.replace(MARK, bad)


def test_bad_utf8_field_names_the_path() -> None:
    mark = MARK.decode()
    venue = venue_pb2.Venue(
        name="V",
        sections=[
            venue_pb2.Section(name="GA"),
            venue_pb2.Section(name="R", rows=[venue_pb2.Row(label="A", seat_labels=["1", mark])]),
        ],
    )
    cases = [
        (venue_pb2.GetVenueRequest(venue_id=mark), "venue_id"),
        (venue_pb2.CreateVenueRequest(venue=venue), "venue.sections[1].rows[0].seat_labels[1]"),
        (event_pb2.CreateEventRequest(name="x", section_prices={mark: 1}), "section_prices"),
        (booking_pb2.ListOrdersRequest(page_size=3, customer_email=mark), "customer_email"),
    ]
    for message, path in cases:
        descriptor: Any = message.DESCRIPTOR
        assert bad_utf8_field(_wire(message), descriptor) == path
        with pytest.raises(InvalidArgument) as err:
            decode_request(_wire(message), type(message).FromString)
        assert [v.field for v in err.value.violations] == [path]


def test_valid_bytes_decode_and_broken_framing_is_invalid_argument() -> None:
    request = venue_pb2.GetVenueRequest(venue_id=str(uuid.uuid4()))
    assert decode_request(request.SerializeToString(), venue_pb2.GetVenueRequest.FromString) == (
        request
    )
    for raw in (b"\x0a\x7fabc", b"\xff" * 10 + b"\x01", b"\x0b"):
        with pytest.raises(DecodeError):
            venue_pb2.GetVenueRequest.FromString(raw)
        with pytest.raises(InvalidArgument) as err:
            decode_request(raw, venue_pb2.GetVenueRequest.FromString)
        assert [v.field for v in err.value.violations] == ["request"]
        assert bad_utf8_field(raw, venue_pb2.GetVenueRequest.DESCRIPTOR) is None
