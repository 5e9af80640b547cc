"""Booking decisions: what a selection may be, limits, and who may see or refund an order."""

from __future__ import annotations

import string
import uuid
from functools import partial

import pytest

from tests.unit.people import Role, caller
from tests.unit.rejection import fields, metadata_of, reason_of, rejected, violations
from ticketd.app import contract_rules
from ticketd.booking import rules
from ticketd.booking.rules import BestAvailable, SpecificSeats
from ticketing.v1 import booking_pb2

EVENT = uuid.uuid4()
SECTION = uuid.uuid4()


def test_specific_seats_come_back_sorted() -> None:
    assert rules.validate_selection([7, 3, 5], None) == SpecificSeats((3, 5, 7))
    assert SpecificSeats((3, 5, 7)).quantity == 3


def test_best_available_is_passed_through() -> None:
    best = BestAvailable(SECTION, 100)
    assert rules.validate_selection(None, best) is best


def test_a_seat_listed_twice_is_named_by_its_index() -> None:
    assert violations(lambda: rules.validate_selection([4, 1, 4, 9, 1], None)) == [
        ("seat_ids.ids[2]", "seat 4 is listed twice"),
        ("seat_ids.ids[4]", "seat 1 is listed twice"),
    ]


# The rest of a selection's shape is declared in the contract (booking.proto) and enforced at
# the edge: checked here through the compiled contract rules on real request messages.
CONTRACT = contract_rules()


def _declared(request: booking_pb2.BookSeatsRequest) -> list[tuple[str, str]]:
    return [(v.path, v.description) for v in CONTRACT.violations(request)]


def test_a_selection_is_required() -> None:
    assert _declared(booking_pb2.BookSeatsRequest()) == [("selection", "give one of its fields")]


@pytest.mark.parametrize("count", [0, 101])
def test_seat_count_is_bounded(count: int) -> None:
    request = booking_pb2.BookSeatsRequest(
        seat_ids=booking_pb2.SeatIds(ids=list(range(1, count + 1)))
    )
    assert [path for path, _ in _declared(request)] == ["seat_ids.ids"]


def test_each_bad_seat_id_is_named_by_its_index() -> None:
    request = booking_pb2.BookSeatsRequest(seat_ids=booking_pb2.SeatIds(ids=[4, 0, 5, -2, 9]))
    assert _declared(request) == [
        ("seat_ids.ids[1]", "must be greater than 0"),
        ("seat_ids.ids[3]", "must be greater than 0"),
    ]


@pytest.mark.parametrize("quantity", [0, -1, 101])
def test_best_available_quantity_is_bounded(quantity: int) -> None:
    request = booking_pb2.BookSeatsRequest(
        best_available=booking_pb2.BestAvailable(section_id=str(SECTION), quantity=quantity)
    )
    assert _declared(request) == [("best_available.quantity", "must be between 1 and 100")]


def test_request_fingerprint_tells_requests_apart() -> None:
    seats = rules.validate_selection([2, 1], None)
    same = rules.request_fingerprint(EVENT, rules.validate_selection([1, 2], None))
    assert rules.request_fingerprint(EVENT, seats) == same
    assert len(same) == 32 and set(same) <= set(string.hexdigits.lower())
    others = {
        rules.request_fingerprint(EVENT, SpecificSeats((1, 3))),
        rules.request_fingerprint(uuid.uuid4(), seats),
        rules.request_fingerprint(EVENT, BestAvailable(SECTION, 2)),
        rules.request_fingerprint(EVENT, BestAvailable(SECTION, 3)),
        rules.request_fingerprint(EVENT, BestAvailable(uuid.uuid4(), 2)),
    }
    assert len(others) == 5 and same not in others


def test_order_limit() -> None:
    rules.check_order_limit(6, 6)
    error = rejected(lambda: rules.check_order_limit(7, 6))
    assert reason_of(error) == "LIMIT_EXCEEDED"
    assert metadata_of(error) == {"limit": "max_tickets_per_order", "max": "6"}


def test_customer_limit_counts_what_is_already_held() -> None:
    rules.check_customer_limit(held=10_000, quantity=50, max_per_customer=None)
    rules.check_customer_limit(held=3, quantity=2, max_per_customer=5)
    error = rejected(lambda: rules.check_customer_limit(held=4, quantity=2, max_per_customer=5))
    assert reason_of(error) == "LIMIT_EXCEEDED"
    assert metadata_of(error) == {"limit": "max_tickets_per_customer", "max": "5", "held": "4"}


def test_errors_that_services_raise_carry_reason_and_subject() -> None:
    off = rules.not_on_sale(EVENT, "it has started")
    assert (reason_of(off), metadata_of(off)) == ("EVENT_NOT_ON_SALE", {"event_id": str(EVENT)})
    assert "it has started" in str(off)
    order = uuid.uuid4()
    missing = rules.order_not_found(order)
    assert (reason_of(missing), metadata_of(missing)) == (
        "ORDER_NOT_FOUND",
        {"order_id": str(order)},
    )


def test_who_may_read_an_order() -> None:
    customer, organizer = caller(Role.CUSTOMER), caller(Role.ORGANIZER)
    read = rules.can_read_order
    assert read(customer, customer.user_id, organizer.user_id)
    assert read(organizer, customer.user_id, organizer.user_id)
    assert read(caller(Role.ADMIN), customer.user_id, organizer.user_id)
    assert read(caller(Role.SUPPORT), customer.user_id, organizer.user_id)
    assert not read(caller(Role.CUSTOMER), customer.user_id, organizer.user_id)
    assert not read(caller(Role.ORGANIZER), customer.user_id, organizer.user_id)
    # The organizer's id without the ORGANIZER role reads nothing of the event's orders.
    demoted = caller(Role.CUSTOMER, user_id=organizer.user_id)
    assert not read(demoted, customer.user_id, organizer.user_id)
    assert not read(caller(Role.ENTRY_MANAGER), customer.user_id, organizer.user_id)


def test_who_may_refund_an_order() -> None:
    owner = caller(Role.CUSTOMER)
    for allowed in (owner, caller(Role.ADMIN), caller(Role.SUPPORT)):
        rules.ensure_can_refund(allowed, owner.user_id)
    for refused in (
        caller(Role.CUSTOMER),  # someone else's order
        caller(Role.ORGANIZER, user_id=owner.user_id),  # own order, CUSTOMER role taken away
        caller(Role.ENTRY_MANAGER),
    ):
        error = rejected(partial(rules.ensure_can_refund, refused, owner.user_id))
        assert reason_of(error) == "NOT_ORDER_OWNER"


def test_refund_reason_is_trimmed_and_bounded() -> None:
    assert rules.validate_refund_reason("  cannot come ") == "cannot come"
    for bad in ("", "x" * (rules.MAX_REFUND_REASON + 1)):
        assert fields(partial(rules.validate_refund_reason, bad)) == ["reason"]


def test_ticket_codes_are_long_url_safe_and_unique() -> None:
    codes = {rules.new_ticket_code() for _ in range(1_000)}
    assert len(codes) == 1_000
    alphabet = set(string.ascii_letters + string.digits + "-_")
    assert all(len(code) == 32 and set(code) <= alphabet for code in codes)
