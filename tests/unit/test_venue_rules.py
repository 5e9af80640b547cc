"""Venue layout validation: every bad field reported once, with the request's field path."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tests.unit.rejection import fields, violations
from ticketd.shared import SectionKind
from ticketd.venues import rules
from ticketd.venues.rules import RowSpec, SectionSpec, VenueSpec

RESERVED = SectionKind.RESERVED
GA = SectionKind.GENERAL_ADMISSION


def stalls(*rows: RowSpec, name: str = "Stalls") -> SectionSpec:
    return SectionSpec(name, RESERVED, rows or (RowSpec("A", 10), RowSpec("B", 12)))


def venue(*sections: SectionSpec, **changes: Any) -> VenueSpec:
    spec = VenueSpec(
        name="Grand Hall",
        address="1 Main St",
        time_zone="Europe/Berlin",
        sections=sections or (stalls(), SectionSpec("Floor", GA, ga_capacity=500)),
    )
    return replace(spec, **changes)


def test_a_good_venue_passes_and_counts_its_places() -> None:
    spec = venue()
    rules.validate_venue(spec)
    assert spec.sections[0].capacity == 22
    assert spec.sections[1].capacity == 500
    assert spec.capacity == 522


def test_every_top_level_problem_is_reported_at_once() -> None:
    spec = venue(name="  ", address="x" * 501, time_zone="Mars/Olympus", sections=())
    assert violations(lambda: rules.validate_venue(spec)) == [
        ("venue.name", "is required"),
        ("venue.address", f"must be at most {rules.MAX_ADDRESS} characters"),
        ("venue.time_zone", "is not an IANA time zone name"),
        ("venue.sections", "at least one section is required"),
    ]


def test_missing_time_zone_and_control_characters() -> None:
    spec = venue(name="Grand\x07Hall", time_zone="")
    assert violations(lambda: rules.validate_venue(spec)) == [
        ("venue.name", "must not contain control characters"),
        ("venue.time_zone", "is required"),
    ]


def test_overlong_time_zone_is_refused_without_a_lookup() -> None:
    assert fields(lambda: rules.validate_venue(venue(time_zone="A" * 65))) == ["venue.time_zone"]


def test_the_field_prefix_is_the_caller_s() -> None:
    spec = venue(name="")
    assert fields(lambda: rules.validate_venue(spec, prefix="venue_update")) == [
        "venue_update.name"
    ]


def test_section_names_are_unique_ignoring_case_and_spaces() -> None:
    spec = venue(stalls(), stalls(name=" stalls "))
    assert violations(lambda: rules.validate_venue(spec)) == [
        ("venue.sections[1].name", "duplicate section name 'stalls'")
    ]


def test_general_admission_takes_a_capacity_and_no_rows() -> None:
    bad = SectionSpec("Floor", GA, rows=(RowSpec("A", 1),), ga_capacity=0)
    assert fields(lambda: rules.validate_venue(venue(bad))) == [
        "venue.sections[0].rows",
        "venue.sections[0].capacity",
    ]
    too_big = SectionSpec("Floor", GA, ga_capacity=rules.MAX_VENUE_PLACES + 1)
    assert fields(lambda: rules.validate_venue(venue(too_big))) == ["venue.sections[0].capacity"]


def test_a_reserved_section_needs_rows() -> None:
    empty = SectionSpec("Stalls", RESERVED)
    assert violations(lambda: rules.validate_venue(venue(empty))) == [
        ("venue.sections[0].rows", "a reserved section needs at least one row")
    ]


def test_row_rules_carry_the_row_path() -> None:
    spec = venue(
        stalls(
            RowSpec("A", 10),
            RowSpec("A", 5),  # duplicate label
            RowSpec("", 5),  # no label
            RowSpec("D", 0),  # no seats
            RowSpec("E", rules.MAX_SEATS_PER_ROW + 1),
        )
    )
    assert fields(lambda: rules.validate_venue(spec)) == [
        "venue.sections[0].rows[1].label",
        "venue.sections[0].rows[2].label",
        "venue.sections[0].rows[3].seat_count",
        "venue.sections[0].rows[4].seat_count",
    ]


def test_seat_labels_are_all_or_nothing_and_distinct() -> None:
    def check(labels: tuple[str, ...]) -> list[tuple[str, str]]:
        spec = venue(stalls(RowSpec("A", 3, labels)))
        return violations(lambda: rules.validate_venue(spec))

    assert check(("1", "2")) == [
        ("venue.sections[0].rows[0].seat_labels", "must be empty or have exactly seat_count labels")
    ]
    assert check(("1", "2", "2")) == [
        ("venue.sections[0].rows[0].seat_labels[2]", "duplicate seat label '2' in this row")
    ]
    assert check(("1", "x" * 21, "3")) == [
        (
            "venue.sections[0].rows[0].seat_labels[1]",
            f"must be at most {rules.MAX_LABEL} characters",
        )
    ]
    rules.validate_venue(venue(stalls(RowSpec("A", 3, ("a", "b", "c")))))


def test_too_many_sections_stops_before_looking_at_each() -> None:
    many = tuple(SectionSpec(f"S{i}", RESERVED) for i in range(rules.MAX_SECTIONS + 1))
    assert violations(lambda: rules.validate_venue(venue(*many))) == [
        ("venue.sections", f"at most {rules.MAX_SECTIONS} sections")
    ]


def test_too_many_rows_skips_the_rows_of_that_section() -> None:
    rows = tuple(RowSpec(str(i), 1) for i in range(rules.MAX_ROWS_PER_SECTION + 1))
    assert fields(lambda: rules.validate_venue(venue(stalls(*rows)))) == ["venue.sections[0].rows"]


def test_the_whole_venue_is_bounded_in_places() -> None:
    half = rules.MAX_VENUE_PLACES // 2
    spec = venue(SectionSpec("A", GA, ga_capacity=half), SectionSpec("B", GA, ga_capacity=half + 1))
    assert violations(lambda: rules.validate_venue(spec)) == [
        (
            "venue.sections",
            f"at most {rules.MAX_VENUE_PLACES} places per venue (got {rules.MAX_VENUE_PLACES + 1})",
        )
    ]
    rules.validate_venue(replace(spec, sections=spec.sections[:1]))


def test_clean_trims_what_is_stored_and_keeps_the_rest() -> None:
    spec = VenueSpec(
        name="  Hall ",
        address=" Road ",
        time_zone="UTC",
        sections=(
            SectionSpec(" Stalls ", RESERVED, (RowSpec(" A ", 2, (" 1", "2 ")),)),
            SectionSpec(" Floor", GA, ga_capacity=7),
        ),
    )
    cleaned = rules.clean(spec)
    assert cleaned == VenueSpec(
        name="Hall",
        address="Road",
        time_zone="UTC",
        sections=(
            SectionSpec("Stalls", RESERVED, (RowSpec("A", 2, ("1", "2")),)),
            SectionSpec("Floor", GA, ga_capacity=7),
        ),
    )
    assert cleaned.capacity == spec.capacity == 9
