"""Pure hold rules (issue 12): ttl bounds, the extension cap, who may act on a hold."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from tests.unit.people import Role, caller
from tests.unit.rejection import rejected
from ticketd.booking.rules import (
    MAX_PAYMENT_REFERENCE,
    can_read_hold,
    ensure_hold_owner,
    extended_expiry,
    hold_confirm_fingerprint,
    hold_expired_error,
    resolve_hold_ttl,
    validate_payment_reference,
)
from ticketd.errors import Reason

S = dt.timedelta(seconds=1)
DEFAULT, MAX = 600 * S, 1800 * S
T0 = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def reason(call: object) -> Reason:
    exc = rejected(call)  # type: ignore[arg-type]  # a zero-argument callable
    return exc.reason  # type: ignore[attr-defined, no-any-return]  # a DomainError


def test_ttl_defaults_and_bounds() -> None:
    assert resolve_hold_ttl(None, default=DEFAULT, maximum=MAX) == DEFAULT
    # A default above the maximum is clamped, never a hold longer than the cap.
    assert resolve_hold_ttl(None, default=2 * MAX, maximum=MAX) == MAX
    assert resolve_hold_ttl(S, default=DEFAULT, maximum=MAX) == S
    assert resolve_hold_ttl(MAX, default=DEFAULT, maximum=MAX) == MAX


@pytest.mark.parametrize("bad", [dt.timedelta(0), S - dt.timedelta(microseconds=1), MAX + S])
def test_ttl_out_of_bounds_is_invalid(bad: dt.timedelta) -> None:
    assert reason(lambda: resolve_hold_ttl(bad, default=DEFAULT, maximum=MAX)) is (
        Reason.INVALID_ARGUMENT
    )


def test_extension_moves_expiry_from_now_and_never_back() -> None:
    now = T0 + 100 * S
    assert (
        extended_expiry(create_time=T0, expire_time=T0 + 600 * S, now=now, ttl=900 * S, max_ttl=MAX)
        == now + 900 * S
    )
    # A shorter ttl than what is left keeps the current expiry.
    assert (
        extended_expiry(create_time=T0, expire_time=T0 + 600 * S, now=now, ttl=S, max_ttl=MAX)
        == T0 + 600 * S
    )


def test_extension_cap_is_from_creation_exactly() -> None:
    now = T0 + 1000 * S
    at_cap = extended_expiry(
        create_time=T0, expire_time=T0 + 1200 * S, now=now, ttl=800 * S, max_ttl=MAX
    )
    assert at_cap == T0 + MAX
    past = 800 * S + dt.timedelta(microseconds=1)
    assert (
        reason(
            lambda: extended_expiry(
                create_time=T0, expire_time=T0 + 1200 * S, now=now, ttl=past, max_ttl=MAX
            )
        )
        is Reason.HOLD_LIMIT_EXCEEDED
    )


def test_only_the_holds_customer_acts_on_it() -> None:
    me = uuid.uuid4()
    ensure_hold_owner(caller(Role.CUSTOMER, user_id=me), me)
    for other in (caller(Role.CUSTOMER), caller(Role.ADMIN), caller(Role.SUPPORT)):
        assert reason(lambda o=other: ensure_hold_owner(o, me)) is Reason.NOT_HOLD_OWNER


def test_holds_are_read_where_orders_are() -> None:
    me, organizer = uuid.uuid4(), uuid.uuid4()
    assert can_read_hold(caller(Role.CUSTOMER, user_id=me), me, organizer)
    assert can_read_hold(caller(Role.SUPPORT), me, organizer)
    assert can_read_hold(caller(Role.ADMIN), me, organizer)
    assert can_read_hold(caller(Role.ORGANIZER, user_id=organizer), me, organizer)
    assert not can_read_hold(caller(Role.ORGANIZER), me, organizer)
    assert not can_read_hold(caller(Role.CUSTOMER), me, organizer)


def test_hold_expired_names_the_taken_seats() -> None:
    err = hold_expired_error(uuid.uuid4(), [7, 9])
    assert err.reason is Reason.HOLD_EXPIRED
    assert err.metadata["seat_ids"] == "7,9"
    assert [v.subject for v in err.violations] == ["7", "9"]


def test_confirm_fingerprint_is_per_hold() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert hold_confirm_fingerprint(a) == hold_confirm_fingerprint(a)
    assert hold_confirm_fingerprint(a) != hold_confirm_fingerprint(b)


def test_payment_reference_limits() -> None:
    assert validate_payment_reference("  ch_1  ") == "ch_1"
    assert validate_payment_reference("") is None
    assert validate_payment_reference("x" * MAX_PAYMENT_REFERENCE) == "x" * MAX_PAYMENT_REFERENCE
    assert (
        reason(lambda: validate_payment_reference("x" * (MAX_PAYMENT_REFERENCE + 1)))
        is Reason.INVALID_ARGUMENT
    )
