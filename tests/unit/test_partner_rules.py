"""Pure partner rules (issue 13): input, who manages which partner, key refusals, and whose
an order is once partners sell. No database."""

from __future__ import annotations

import uuid

import pytest

from ticketd.auth.principal import PartnerScope, Principal, PrincipalKind, Role
from ticketd.booking.rules import (
    can_read_order,
    check_on_behalf_of,
    ensure_can_refund,
    is_owner,
    may_see_codes,
)
from ticketd.errors import InvalidArgument, NotFound, PermissionDenied, Reason
from ticketd.partners.rules import (
    KeyLookup,
    PartnerStatus,
    authentication_refusal,
    check_may_manage_partner,
    resolve_partner_id,
    validate_end_customer,
    validate_partner_input,
)
from ticketd.shared import EndCustomer


def user(*roles: Role) -> Principal:
    return Principal(uuid.uuid4(), "u@example.test", frozenset(roles))


def partner_key(partner_id: uuid.UUID | None = None) -> Principal:
    pid = partner_id or uuid.uuid4()
    return Principal(
        pid,
        "",
        frozenset(),
        kind=PrincipalKind.PARTNER,
        partner=PartnerScope(partner_id=pid, key_id=uuid.uuid4()),
    )


def fields(err: pytest.ExceptionInfo[InvalidArgument]) -> list[str]:
    return [v.field for v in err.value.violations]


def test_partner_input_is_trimmed_and_normalised() -> None:
    assert validate_partner_input("  Acme ", " OPS@Acme.Example ") == ("Acme", "ops@acme.example")
    with pytest.raises(InvalidArgument) as err:
        validate_partner_input("", "nope")
    assert fields(err) == ["display_name", "contact_email"]


@pytest.mark.parametrize(
    ("customer", "bad"),
    [
        (EndCustomer(""), ["on_behalf_of.external_customer_id"]),
        (EndCustomer("x" * 201), ["on_behalf_of.external_customer_id"]),
        (EndCustomer("ok", "n" * 101), ["on_behalf_of.display_name"]),
        (EndCustomer("ok", "", "not-an-email"), ["on_behalf_of.email"]),
        (EndCustomer("tab\there"), ["on_behalf_of.external_customer_id"]),
    ],
)
def test_end_customer_limits(customer: EndCustomer, bad: list[str]) -> None:
    with pytest.raises(InvalidArgument) as err:
        validate_end_customer(customer)
    assert fields(err) == bad


def test_end_customer_at_the_limits_is_kept_normalised() -> None:
    kept = validate_end_customer(EndCustomer(" " + "x" * 200 + " ", "n" * 100, "A@B.example"))
    assert kept == EndCustomer("x" * 200, "n" * 100, "a@b.example")
    assert validate_end_customer(EndCustomer("c-1")) == EndCustomer("c-1", "", "")


def test_who_manages_which_partner() -> None:
    mine = uuid.uuid4()
    check_may_manage_partner(user(Role.ADMIN), mine)
    check_may_manage_partner(partner_key(mine), mine)
    for outsider in (partner_key(), user(Role.SUPPORT), user(Role.CUSTOMER)):
        with pytest.raises(NotFound) as err:
            check_may_manage_partner(outsider, mine)
        assert err.value.reason is Reason.PARTNER_NOT_FOUND
    assert resolve_partner_id(partner_key(mine), None) == mine
    with pytest.raises(InvalidArgument):
        resolve_partner_id(user(Role.ADMIN), None)


def test_a_revoked_key_is_refused_before_a_suspended_partner() -> None:
    def lookup(revoked: bool, status: PartnerStatus) -> KeyLookup:
        return KeyLookup(uuid.uuid4(), uuid.uuid4(), revoked, status)

    assert authentication_refusal(lookup(False, PartnerStatus.ACTIVE)) is None
    refused = authentication_refusal(lookup(True, PartnerStatus.SUSPENDED))
    assert refused is not None and refused.reason is Reason.API_KEY_REVOKED
    refused = authentication_refusal(lookup(False, PartnerStatus.SUSPENDED))
    assert refused is not None and refused.reason is Reason.PARTNER_SUSPENDED


def test_whose_order_is_it() -> None:
    seller, rival, buyer = partner_key(), partner_key(), user(Role.CUSTOMER)
    end_customer_id = uuid.uuid4()
    assert seller.partner_id is not None
    sold = (end_customer_id, seller.partner_id)
    assert is_owner(seller, *sold) and may_see_codes(seller, *sold)
    assert not is_owner(rival, *sold) and not is_owner(buyer, *sold)
    # An account never owns a partner's order, even were the ids to collide.
    assert not is_owner(buyer, buyer.user_id, seller.partner_id)
    assert is_owner(buyer, buyer.user_id, None)
    # A partner never owns a public order, even its own id as customer.
    assert not is_owner(seller, seller.user_id, None)
    support, organizer = user(Role.SUPPORT), user(Role.ORGANIZER)
    assert can_read_order(support, end_customer_id, organizer.user_id, seller.partner_id)
    assert not may_see_codes(support, *sold)
    assert not can_read_order(rival, end_customer_id, organizer.user_id, seller.partner_id)
    ensure_can_refund(seller, *sold)
    with pytest.raises(PermissionDenied):
        ensure_can_refund(rival, *sold)


def test_on_behalf_of_is_for_partners_only() -> None:
    check_on_behalf_of(partner_key(), EndCustomer("c"))
    check_on_behalf_of(user(Role.CUSTOMER), None)
    for principal, given in ((partner_key(), None), (user(Role.CUSTOMER), EndCustomer("c"))):
        with pytest.raises(InvalidArgument) as err:
            check_on_behalf_of(principal, given)
        assert fields(err) == ["on_behalf_of"]
