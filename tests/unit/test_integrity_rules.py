"""Pure decisions behind issue 10's items 1, 9, 10 and 11: no database, no server."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import pytest

from ticketd.auth.principal import Principal, Role
from ticketd.config import MIN_MESSAGE_BYTES, ConfigError, Settings
from ticketd.db.database import PoolOptions
from ticketd.errors import FailedPrecondition, InvalidArgument, Reason, ResourceExhausted
from ticketd.events.rules import (
    MAX_DESCRIPTION,
    MAX_EVENT_NAME,
    MAX_REPORTED_ATTENDED_ORDERS,
    EventQuotas,
    EventRecord,
    EventStatus,
    check_can_cancel,
    check_live_events_quota,
    check_places_quota,
)
from ticketd.pagination import next_page, page_budget, repeated_item_bytes
from ticketd.shared import SectionKind
from ticketd.venues.rules import (
    MAX_SECTION_NAME,
    MAX_SECTIONS,
    RowSpec,
    SectionRecord,
    SectionSpec,
    VenueRecord,
    VenueSpec,
    check_response_fits,
    projected_record,
)
from ticketd.venues.servicer import venue_response_bytes
from ticketing.v1 import booking_pb2, event_pb2, venue_pb2

ORGANIZER = Principal(uuid.uuid4(), "o@example.test", frozenset({Role.ORGANIZER}))
ADMIN = Principal(uuid.uuid4(), "a@example.test", frozenset({Role.ADMIN, Role.ORGANIZER}))


@dataclass
class Item:
    size: int

    def ByteSize(self) -> int:
        return self.size


def _page(sizes: list[int], size: int, max_bytes: int) -> tuple[list[int], str]:
    rows = list(range(len(sizes)))
    items, token = next_page(
        rows, size, lambda r: Item(sizes[r]), lambda r: f"after-{r}", max_bytes=max_bytes
    )
    return [i.size for i in items], token


def test_a_page_is_cut_before_the_item_that_would_not_fit() -> None:
    each = repeated_item_bytes(100)
    assert each == 102
    # Exactly three items' worth: all three shown; more rows exist, so a token after #2.
    assert _page([100] * 5, 3, 3 * each) == ([100] * 3, "after-2")
    # One byte less: the third no longer fits; the token continues right after the second.
    assert _page([100] * 5, 3, 3 * each - 1) == ([100] * 2, "after-1")
    # Cut by size on the last row fetched: still a token (the cut row comes next).
    assert _page([100] * 3, 3, 2 * each) == ([100] * 2, "after-1")
    # By count, as before: no token when nothing follows.
    assert _page([100] * 3, 3, 10_000) == ([100] * 3, "")
    assert _page([], 3, 10) == ([], "")


def test_an_item_larger_than_a_whole_page_is_a_clear_error() -> None:
    with pytest.raises(ResourceExhausted) as err:
        _page([500, 1], 2, 100)
    assert err.value.reason is Reason.RESPONSE_TOO_LARGE


def test_item_framing_matches_protobuf() -> None:
    for n in (0, 1, 200, 20_000):
        seat = event_pb2.Seat(section_name="x" * n)
        listing = event_pb2.ListSeatsResponse(seats=[seat])
        assert listing.ByteSize() == repeated_item_bytes(seat.ByteSize())
    assert page_budget(MIN_MESSAGE_BYTES) < MIN_MESSAGE_BYTES


def _event(status: EventStatus) -> EventRecord:
    now = dt.datetime.now(dt.UTC)
    return EventRecord(
        id=uuid.uuid4(),
        venue_id=uuid.uuid4(),
        venue_name="V",
        time_zone="UTC",
        organizer_id=ORGANIZER.user_id,
        name="E",
        description="",
        start_time=now,
        end_time=None,
        currency_code="EUR",
        max_tickets_per_order=4,
        max_tickets_per_customer=None,
        capacity=10,
        status=status,
        cancel_reason=None,
        cancel_time=None,
        create_time=now,
    )


def test_cancel_only_before_the_start_and_once() -> None:
    check_can_cancel(_event(EventStatus.ON_SALE))
    with pytest.raises(FailedPrecondition) as err:
        check_can_cancel(_event(EventStatus.STARTED))
    assert err.value.reason is Reason.EVENT_STARTED
    with pytest.raises(FailedPrecondition) as err:
        check_can_cancel(_event(EventStatus.CANCELLED))
    assert err.value.reason is Reason.EVENT_CANCELLED


def test_quotas_at_and_past_each_limit() -> None:
    quotas = EventQuotas(places_per_event=100, live_events=3)
    check_places_quota(ORGANIZER, 100, quotas)
    with pytest.raises(ResourceExhausted) as err:
        check_places_quota(ORGANIZER, 101, quotas)
    assert err.value.reason is Reason.QUOTA_EXCEEDED
    assert err.value.quota_violations[0].subject == f"organizer:{ORGANIZER.user_id}"
    check_live_events_quota(ORGANIZER, 2, quotas)  # the third one fits
    with pytest.raises(ResourceExhausted):
        check_live_events_quota(ORGANIZER, 3, quotas)
    # ADMIN is exempt from both; 0 live events means no cap.
    check_places_quota(ADMIN, 10**6, quotas)
    check_live_events_quota(ADMIN, 10**6, quotas)
    check_live_events_quota(ORGANIZER, 10**6, EventQuotas(places_per_event=1, live_events=0))


def _labelled_spec() -> VenueSpec:
    return VenueSpec(
        name="  Hall  ",
        address="Somewhere",
        time_zone="Europe/Berlin",
        sections=(
            SectionSpec(
                "Stalls",
                SectionKind.RESERVED,
                rows=tuple(
                    RowSpec(f"R{i}", 50, tuple(f"s{n}" for n in range(50))) for i in range(20)
                ),
            ),
        ),
    )


def test_the_projected_venue_is_never_smaller_than_the_stored_one() -> None:
    spec = _labelled_spec()
    projected = venue_response_bytes(projected_record(spec))
    stored = projected_record(spec)
    for when in (
        dt.datetime(2025, 1, 1, tzinfo=dt.UTC),
        dt.datetime(2031, 6, 1, 12, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime.now(dt.UTC),
    ):
        real = VenueRecord(
            id=uuid.uuid4(),
            name=stored.name,
            address=stored.address,
            time_zone=stored.time_zone,
            capacity=stored.capacity,
            create_time=when,
            update_time=when,
            sections=tuple(
                SectionRecord(uuid.uuid4(), s.name, s.kind, s.capacity, s.rows)
                for s in stored.sections
            ),
        )
        actual = venue_response_bytes(real)
        assert actual <= projected <= actual + 12
    # The projection is of the venue as stored: trimmed names.
    assert stored.name == "Hall"


def test_the_venue_size_limit_at_and_past_the_byte() -> None:
    check_response_fits(1000, 1000)
    with pytest.raises(InvalidArgument) as err:
        check_response_fits(1001, 1000)
    assert err.value.reason is Reason.RESPONSE_TOO_LARGE
    assert [v.field for v in err.value.violations] == ["venue.sections"]
    assert err.value.metadata == {"response_bytes": "1001", "max_bytes": "1000"}


def test_the_largest_bounded_answers_fit_the_smallest_allowed_limit() -> None:
    """Events and orders have no size check of their own: their fields are bounded, and at
    their bounds they fit TICKETING_MAX_MESSAGE_BYTES' minimum with room to spare."""
    wide = "\U0001f3ab"  # 4 bytes in UTF-8
    ts = event_pb2.Event().start_time.__class__(seconds=2**35 - 1, nanos=999_999_999)
    big = 2**31 - 1
    event = event_pb2.Event(
        id=str(uuid.uuid4()),
        venue_id=str(uuid.uuid4()),
        organizer_id=str(uuid.uuid4()),
        name=wide * MAX_EVENT_NAME,
        description=wide * MAX_DESCRIPTION,
        start_time=ts,
        end_time=ts,
        currency_code="EUR",
        sections=[
            event_pb2.EventSection(
                section_id=str(uuid.uuid4()),
                name=wide * MAX_SECTION_NAME,
                kind=venue_pb2.SECTION_KIND_RESERVED,
                price_minor=2**62,
                capacity=big,
                available_count=big,
                sold_count=big,
            )
            for _ in range(MAX_SECTIONS)
        ],
        max_tickets_per_order=big,
        max_tickets_per_customer=big,
        status=event_pb2.EVENT_STATUS_CANCELLED,
        cancel_reason=wide * 1_100,
        create_time=ts,
        cancel_time=ts,
        capacity=big,
        available_count=big,
        sold_count=big,
        venue_name=wide * 200,
        time_zone="x" * 64,
        doors_open_time=ts,
    )
    cancel = event_pb2.CancelEventResponse(
        event=event,
        refunded_order_count=big,
        attended_order_count=big,
        attended_order_ids=[str(uuid.uuid4()) for _ in range(MAX_REPORTED_ATTENDED_ORDERS)],
    )
    ticket = booking_pb2.Ticket(
        id=str(uuid.uuid4()),
        seat_id=2**63 - 1,
        section_id=str(uuid.uuid4()),
        section_name=wide * MAX_SECTION_NAME,
        row_label=wide * 20,
        seat_number=big,
        seat_label=wide * 20,
        code="c" * 64,
        status=booking_pb2.TICKET_STATUS_VOID,
        price_minor=2**62,
    )
    order = booking_pb2.Order(
        id=str(uuid.uuid4()),
        event_id=str(uuid.uuid4()),
        customer_id=str(uuid.uuid4()),
        status=booking_pb2.ORDER_STATUS_REFUNDED,
        total_minor=2**62,
        currency_code="EUR",
        tickets=[ticket] * 100,
        create_time=ts,
        refund_time=ts,
        refund_reason=wide * 1_100,
        request_id=str(uuid.uuid4()),
    )
    assert cancel.ByteSize() < MIN_MESSAGE_BYTES // 4
    assert booking_pb2.GetOrderResponse(order=order).ByteSize() < MIN_MESSAGE_BYTES // 4


def test_new_settings_are_read_and_bounded() -> None:
    s = Settings.from_env(
        {
            "TICKETING_DB_PUBLIC_SHARE": "25",
            "TICKETING_QUOTA_EVENT_PLACES": "5000",
            "TICKETING_QUOTA_LIVE_EVENTS": "0",
        }
    )
    assert (s.db_public_share_percent, s.quota_event_places, s.quota_live_events) == (25, 5000, 0)
    defaults = Settings.from_env({})
    assert (defaults.db_public_share_percent, defaults.quota_event_places) == (50, 200_000)
    assert defaults.quota_live_events == 100
    for name, value in (
        ("TICKETING_MAX_MESSAGE_BYTES", str(MIN_MESSAGE_BYTES - 1)),
        ("TICKETING_DB_PUBLIC_SHARE", "0"),
        ("TICKETING_QUOTA_EVENT_PLACES", "200001"),
        ("TICKETING_QUOTA_LIVE_EVENTS", "-1"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


def test_the_public_share_of_the_pool() -> None:
    assert PoolOptions(pool_size=20).public_connections == 10
    assert PoolOptions(pool_size=4, public_share_percent=50).public_connections == 2
    assert PoolOptions(pool_size=3, public_share_percent=10).public_connections == 1
    assert PoolOptions(pool_size=5, public_share_percent=100).public_connections == 5
