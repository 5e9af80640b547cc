"""Event input validation, section pricing and who may manage an event."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from functools import partial
from typing import Any

import pytest

from tests.unit.people import Role, caller
from tests.unit.rejection import fields, reason_of, rejected, violations
from ticketd.events import rules
from ticketd.events.rules import EventSpec
from ticketd.shared import SectionKind

START = dt.datetime(2030, 5, 1, 20, 0, tzinfo=dt.UTC)
SECTION_A, SECTION_B = uuid.uuid4(), uuid.uuid4()


def event(**changes: Any) -> EventSpec:
    spec = EventSpec(
        venue_id=uuid.uuid4(),
        name="Opening night",
        description="Line one\n\tLine two",
        start_time=START,
        end_time=START + dt.timedelta(hours=3),
        currency_code="EUR",
        section_prices={str(SECTION_A): 4500, str(SECTION_B): 0},
        max_tickets_per_order=6,
        max_tickets_per_customer=None,
        doors_open_time=START - dt.timedelta(hours=1),
    )
    return replace(spec, **changes)


def test_a_good_event_passes() -> None:
    rules.validate_event_fields(event())
    rules.validate_event_fields(event(end_time=None, doors_open_time=None))
    rules.validate_event_fields(event(max_tickets_per_customer=rules.MAX_TICKETS_PER_CUSTOMER))


def test_every_bad_field_is_reported_at_once() -> None:
    spec = event(
        name=" ",
        description="x" * (rules.MAX_DESCRIPTION + 1),
        end_time=START,
        doors_open_time=START,
        currency_code="eur",
        max_tickets_per_order=0,
        max_tickets_per_customer=0,
        section_prices={"b": -1, "a": rules.MAX_PRICE_MINOR + 1},
    )
    assert fields(lambda: rules.validate_event_fields(spec)) == [
        "name",
        "description",
        "end_time",
        "doors_open_time",
        "currency_code",
        "max_tickets_per_order",
        "max_tickets_per_customer",
        "section_prices[a]",  # sorted by key, so the answer is stable
        "section_prices[b]",
    ]


@pytest.mark.parametrize(
    "name", ["two\nlines", "bell\x07", "x" * (rules.MAX_EVENT_NAME + 1)], ids=repr
)
def test_a_name_is_one_line_of_bounded_length(name: str) -> None:
    assert violations(lambda: rules.validate_event_fields(event(name=name))) == [
        ("name", f"1..{rules.MAX_EVENT_NAME} characters, one line")
    ]


def test_description_allows_newlines_and_tabs_but_no_other_control_characters() -> None:
    rules.validate_event_fields(event(description="a\nb\tc"))
    assert fields(lambda: rules.validate_event_fields(event(description="a\x00b"))) == [
        "description"
    ]


@pytest.mark.parametrize("code", ["EU", "EURO", "Eur", "E1R", ""])
def test_currency_is_three_upper_case_letters(code: str) -> None:
    assert fields(lambda: rules.validate_event_fields(event(currency_code=code))) == [
        "currency_code"
    ]


def test_a_long_section_key_is_cut_in_the_field_path() -> None:
    key = "k" * 100
    spec = event(section_prices={key: -5})
    assert fields(lambda: rules.validate_event_fields(spec)) == [f"section_prices[{key[:40]}]"]


def test_prices_must_cover_exactly_the_venue_s_sections() -> None:
    other = uuid.uuid4()
    now = START - dt.timedelta(days=1)
    prices = {str(SECTION_A): 100, str(other): 100}
    assert violations(
        lambda: rules.check_prices_cover_sections(prices, [SECTION_A, SECTION_B], now, START)
    ) == [
        (f"section_prices[{SECTION_B}]", "every section needs a price"),
        (f"section_prices[{other}]", "not a section of this venue"),
    ]
    rules.check_prices_cover_sections(
        {str(SECTION_A): 1, str(SECTION_B): 2}, [SECTION_A, SECTION_B], now, START
    )


def test_the_start_must_be_after_the_database_clock() -> None:
    prices = {str(SECTION_A): 1}
    assert fields(lambda: rules.check_prices_cover_sections(prices, [SECTION_A], START, START)) == [
        "start_time"
    ]


def test_only_the_owning_organizer_or_an_admin_manages_an_event() -> None:
    owner = caller(Role.ORGANIZER)
    rules.ensure_can_manage(owner, owner.user_id)
    rules.ensure_can_manage(caller(Role.ADMIN), owner.user_id)
    for stranger in (
        caller(Role.ORGANIZER),  # another organizer
        caller(Role.CUSTOMER, user_id=owner.user_id),  # the owner's id without the role
        caller(Role.SUPPORT, Role.ENTRY_MANAGER),
    ):
        error = rejected(partial(rules.ensure_can_manage, stranger, owner.user_id))
        assert reason_of(error) == "NOT_EVENT_OWNER"


def test_cancel_reason_is_trimmed_and_bounded() -> None:
    assert rules.validate_cancel_reason("  storm warning \n") == "storm warning"
    for bad in ("   ", "x" * (rules.MAX_CANCEL_REASON + 1)):
        assert violations(partial(rules.validate_cancel_reason, bad)) == [
            ("reason", f"1..{rules.MAX_CANCEL_REASON} characters")
        ]


def test_counts_add_up_over_sections() -> None:
    sections = (
        rules.EventSectionRecord(SECTION_A, "A", SectionKind.RESERVED, 10, 5, 3, 2),
        rules.EventSectionRecord(SECTION_B, "B", SectionKind.GENERAL_ADMISSION, 0, 9, 9, 0),
    )
    record = rules.EventRecord(
        id=uuid.uuid4(),
        venue_id=uuid.uuid4(),
        venue_name="Hall",
        time_zone="UTC",
        organizer_id=uuid.uuid4(),
        name="Night",
        description="",
        start_time=START,
        end_time=None,
        currency_code="EUR",
        max_tickets_per_order=6,
        max_tickets_per_customer=None,
        capacity=14,
        status=rules.EventStatus.ON_SALE,
        cancel_reason=None,
        cancel_time=None,
        create_time=START,
        sections=sections,
    )
    assert (record.available_count, record.sold_count) == (12, 2)
