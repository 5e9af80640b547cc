"""Who sees and who may rotate ticket codes (issue 10, item 18): pure rules, no database."""

from __future__ import annotations

import uuid

import pytest

from ticketd.auth.principal import Principal, Role
from ticketd.booking.rules import check_can_rotate, ensure_can_rotate, may_see_codes
from ticketd.errors import FailedPrecondition, PermissionDenied, Reason

OWNER = uuid.uuid4()


def _who(*roles: Role, user_id: uuid.UUID | None = None) -> Principal:
    return Principal(user_id or uuid.uuid4(), "x@example.test", frozenset(roles))


def test_only_the_owner_sees_codes() -> None:
    assert may_see_codes(_who(Role.CUSTOMER, user_id=OWNER), OWNER)
    # An admin who bought the tickets is their owner.
    assert may_see_codes(_who(Role.ADMIN, user_id=OWNER), OWNER)
    for role in Role:
        assert not may_see_codes(_who(role), OWNER), role
    assert not may_see_codes(_who(*Role), OWNER)


def test_owner_support_and_admin_may_rotate() -> None:
    ensure_can_rotate(_who(Role.CUSTOMER, user_id=OWNER), OWNER)
    ensure_can_rotate(_who(Role.SUPPORT), OWNER)
    ensure_can_rotate(_who(Role.ADMIN), OWNER)
    for role in (Role.CUSTOMER, Role.ORGANIZER, Role.ENTRY_MANAGER):
        with pytest.raises(PermissionDenied) as err:
            ensure_can_rotate(_who(role), OWNER)
        assert err.value.reason is Reason.NOT_ORDER_OWNER


@pytest.mark.parametrize(
    ("refunded", "cancelled", "started", "reason"),
    [
        (True, False, False, Reason.ALREADY_REFUNDED),
        (True, True, True, Reason.ALREADY_REFUNDED),
        (False, True, False, Reason.EVENT_CANCELLED),
        (False, True, True, Reason.EVENT_CANCELLED),
        (False, False, True, Reason.EVENT_STARTED),
    ],
)
def test_rotation_refusals(refunded: bool, cancelled: bool, started: bool, reason: Reason) -> None:
    with pytest.raises(FailedPrecondition) as err:
        check_can_rotate(refunded=refunded, event_cancelled=cancelled, event_started=started)
    assert err.value.reason is reason


def test_a_live_order_before_the_start_may_rotate() -> None:
    check_can_rotate(refunded=False, event_cancelled=False, event_started=False)
