"""The NUL check over any request: the dotted path of the first text PostgreSQL cannot store."""

from __future__ import annotations

from ticketd.edge.textcheck import nul_field
from ticketing.v1 import event_pb2, venue_pb2


def venue_request() -> venue_pb2.CreateVenueRequest:
    return venue_pb2.CreateVenueRequest(
        venue=venue_pb2.Venue(
            name="Hall",
            time_zone="UTC",
            sections=[
                venue_pb2.Section(name="Stalls", rows=[venue_pb2.Row(label="A", seat_count=2)]),
                venue_pb2.Section(
                    name="Circle",
                    rows=[
                        venue_pb2.Row(label="A", seat_count=2, seat_labels=["1", "2"]),
                        venue_pb2.Row(label="B", seat_count=2, seat_labels=["1", "2"]),
                    ],
                ),
            ],
        )
    )


def test_clean_requests_pass() -> None:
    assert nul_field(venue_request()) is None
    assert nul_field(venue_pb2.CreateVenueRequest()) is None


def test_top_level_and_nested_fields_are_named() -> None:
    request = event_pb2.CreateEventRequest(name="Night\x00")
    assert nul_field(request) == "name"
    nested = venue_request()
    nested.venue.time_zone = "U\x00TC"
    assert nul_field(nested) == "venue.time_zone"


def test_repeated_messages_and_strings_carry_their_index() -> None:
    request = venue_request()
    request.venue.sections[1].rows[1].seat_labels[0] = "\x00"
    assert nul_field(request) == "venue.sections[1].rows[1].seat_labels[0]"
    request = venue_request()
    request.venue.sections[1].name = "Cir\x00cle"
    assert nul_field(request) == "venue.sections[1].name"


def test_map_keys_and_values_are_named_by_key() -> None:
    assert nul_field(event_pb2.CreateEventRequest(section_prices={"s\x00": 100})) == (
        "section_prices['s\\x00']"
    )
    # int values cannot hold text; only the key can be bad here.
    assert nul_field(event_pb2.CreateEventRequest(section_prices={"s1": 100})) is None


def test_the_first_bad_field_in_field_number_order_wins() -> None:
    request = event_pb2.CreateEventRequest(name="\x00", description="\x00")
    assert nul_field(request) == "name"


def test_the_prefix_is_prepended() -> None:
    assert nul_field(event_pb2.CreateEventRequest(name="\x00"), "event.") == "event.name"
