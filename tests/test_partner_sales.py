"""Selling on behalf of end customers (issue 13): partner orders and holds, their channel,
per-end-customer caps, own-orders-only listing, partner refunds, and codes kept from staff.

Real server, real PostgreSQL: rows are read back to check what the database records.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import grpc
import pytest
from grpc import aio

from tests.support import (
    Account,
    Stubs,
    best_request,
    error_details,
    small_layout,
)
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, partner_pb2

S = grpc.StatusCode


@dataclass
class Shop:
    """One event (at most 2 tickets per customer) and two partners with a key each."""

    event: event_pb2.Event
    section_id: str
    partner: partner_pb2.Partner
    md: CallMetadata
    rival: partner_pb2.Partner
    rival_md: CallMetadata


@pytest.fixture(scope="module")
async def shop(stubs: Stubs, admin: Account) -> Shop:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="ps-org")
    venue = await stubs.create_venue(admin, small_layout(name="Partner Hall", ga=200))
    event = await stubs.create_event(
        organizer, venue, name="Partner Night", max_per_order=4, max_per_customer=2
    )
    partner, secret = await stubs.create_partner(admin, "Seller")
    rival, rival_secret = await stubs.create_partner(admin, "Rival")
    return Shop(event, venue.sections[1].id, partner, api_key(secret), rival, api_key(rival_secret))


@pytest.fixture(scope="module")
async def customer(stubs: Stubs) -> Account:
    return await stubs.register("ps-customer")


def end_customer(external_id: str, name: str = "Ann Buyer") -> booking_pb2.EndCustomer:
    return booking_pb2.EndCustomer(
        external_customer_id=external_id, display_name=name, email="Ann@Example.TEST"
    )


def on_behalf(
    shop: Shop, external_id: str, quantity: int = 1, request_id: str | None = None
) -> booking_pb2.BookSeatsRequest:
    request = best_request(shop.event.id, shop.section_id, quantity)
    request.on_behalf_of.CopyFrom(end_customer(external_id))
    if request_id:
        request.request_id = request_id
    return request


async def refusal(call: object) -> tuple[grpc.StatusCode, str | None, list[str]]:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = error_details(err.value)
    return details.code, details.reason, [f for f, _ in details.field_violations]


async def test_a_partner_order_records_partner_and_end_customer(
    stubs: Stubs, shop: Shop, raw: asyncpg.Connection
) -> None:
    external = f"cust-{uuid.uuid4().hex[:8]}"
    request = on_behalf(shop, external, 2)
    order = (await stubs.booking.BookSeats(request, metadata=shop.md)).order
    assert order.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER
    assert order.partner_id == shop.partner.id
    assert order.customer_id == ""
    assert order.end_customer.external_customer_id == external
    assert order.end_customer.email == "ann@example.test"
    # The partner delivers the codes: they are its to read.
    assert all(t.code for t in order.tickets) and len(order.tickets) == 2
    row = await raw.fetchrow(
        "SELECT o.partner_id, o.account_id, pc.external_customer_id, pc.partner_id AS owner "
        "FROM orders o JOIN partner_customers pc ON pc.id = o.end_customer_id WHERE o.id = $1",
        uuid.UUID(order.id),
    )
    assert row is not None
    assert (str(row["partner_id"]), row["account_id"]) == (shop.partner.id, None)
    assert (row["external_customer_id"], str(row["owner"])) == (external, shop.partner.id)
    # A retry of the same request for the same end customer answers the same order.
    again = await stubs.booking.BookSeats(request, metadata=shop.md)
    assert again.order.id == order.id
    got = await stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=order.id), metadata=shop.md
    )
    assert got.order.tickets[0].code == order.tickets[0].code


async def test_on_behalf_of_is_required_for_partners_and_refused_for_others(
    stubs: Stubs, shop: Shop, customer: Account
) -> None:
    plain = best_request(shop.event.id, shop.section_id, 1)
    assert await refusal(stubs.booking.BookSeats(plain, metadata=shop.md)) == (
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["on_behalf_of"],
    )
    assert await refusal(stubs.booking.BookSeats(on_behalf(shop, "x"), metadata=customer.md)) == (
        S.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["on_behalf_of"],
    )
    bad = on_behalf(shop, "")
    assert (await refusal(stubs.booking.BookSeats(bad, metadata=shop.md)))[2] == [
        "on_behalf_of.external_customer_id"
    ]
    bad = on_behalf(shop, "ok")
    bad.on_behalf_of.email = "not an email"
    assert (await refusal(stubs.booking.BookSeats(bad, metadata=shop.md)))[2] == [
        "on_behalf_of.email"
    ]


async def test_per_customer_cap_counts_per_end_customer_within_the_partner(
    stubs: Stubs, shop: Shop
) -> None:
    first, second = f"cap-{uuid.uuid4().hex[:8]}", f"cap-{uuid.uuid4().hex[:8]}"
    await stubs.booking.BookSeats(on_behalf(shop, first, 2), metadata=shop.md)
    assert (await refusal(stubs.booking.BookSeats(on_behalf(shop, first), metadata=shop.md)))[
        :2
    ] == (S.FAILED_PRECONDITION, "LIMIT_EXCEEDED")
    # Another end customer of the same partner has a cap of their own...
    await stubs.booking.BookSeats(on_behalf(shop, second, 2), metadata=shop.md)
    # ...and so has the same external id at another partner (ids are the partner's own).
    await stubs.booking.BookSeats(on_behalf(shop, first, 2), metadata=shop.rival_md)
    # A live hold counts too, as for accounts.
    third = f"cap-{uuid.uuid4().hex[:8]}"
    hold = booking_pb2.HoldSeatsRequest(
        event_id=shop.event.id,
        request_id=str(uuid.uuid4()),
        best_available=booking_pb2.BestAvailable(section_id=shop.section_id, quantity=2),
        on_behalf_of=end_customer(third),
    )
    await stubs.booking.HoldSeats(hold, metadata=shop.md)
    assert (await refusal(stubs.booking.BookSeats(on_behalf(shop, third), metadata=shop.md)))[
        :2
    ] == (S.FAILED_PRECONDITION, "LIMIT_EXCEEDED")


async def test_hold_and_confirm_on_behalf_and_nobody_else_touches_it(
    stubs: Stubs, shop: Shop, customer: Account
) -> None:
    external = f"hold-{uuid.uuid4().hex[:8]}"
    held = (
        await stubs.booking.HoldSeats(
            booking_pb2.HoldSeatsRequest(
                event_id=shop.event.id,
                request_id=str(uuid.uuid4()),
                best_available=booking_pb2.BestAvailable(section_id=shop.section_id, quantity=1),
                on_behalf_of=end_customer(external),
            ),
            metadata=shop.md,
        )
    ).hold
    assert held.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER
    assert (held.partner_id, held.end_customer.external_customer_id) == (shop.partner.id, external)
    # The rival partner is told it does not exist; a customer that it is not theirs.
    get = booking_pb2.GetHoldRequest(hold_id=held.id)
    assert (await refusal(stubs.booking.GetHold(get, metadata=shop.rival_md)))[:2] == (
        S.NOT_FOUND,
        "HOLD_NOT_FOUND",
    )
    assert (await refusal(stubs.booking.GetHold(get, metadata=customer.md)))[:2] == (
        S.PERMISSION_DENIED,
        "NOT_HOLD_OWNER",
    )

    def confirm(external_id: str) -> booking_pb2.ConfirmHoldRequest:
        return booking_pb2.ConfirmHoldRequest(
            hold_id=held.id,
            request_id=str(uuid.uuid4()),
            payment_reference="psp-1",
            on_behalf_of=end_customer(external_id),
        )

    rival_confirm = stubs.booking.ConfirmHold(confirm(external), metadata=shop.rival_md)
    assert (await refusal(rival_confirm))[0] in (S.NOT_FOUND, S.INVALID_ARGUMENT)
    wrong = await refusal(stubs.booking.ConfirmHold(confirm("someone-else"), metadata=shop.md))
    assert wrong == (S.INVALID_ARGUMENT, "INVALID_ARGUMENT", ["on_behalf_of.external_customer_id"])
    order = (await stubs.booking.ConfirmHold(confirm(external), metadata=shop.md)).order
    assert order.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER
    assert order.end_customer.external_customer_id == external
    assert order.tickets[0].code
    listed = await stubs.booking.ListHolds(
        booking_pb2.ListHoldsRequest(event_id=shop.event.id), metadata=shop.md
    )
    assert held.id in {h.id for h in listed.holds}
    assert all(h.partner_id == shop.partner.id for h in listed.holds)


async def test_list_orders_shows_a_partner_its_own_orders_only(
    stubs: Stubs, shop: Shop, customer: Account
) -> None:
    external = f"list-{uuid.uuid4().hex[:8]}"
    mine = (await stubs.booking.BookSeats(on_behalf(shop, external), metadata=shop.md)).order
    theirs = (
        await stubs.booking.BookSeats(on_behalf(shop, external), metadata=shop.rival_md)
    ).order
    public = (
        await stubs.booking.BookSeats(
            best_request(shop.event.id, shop.section_id, 1), metadata=customer.md
        )
    ).order

    async def listed(md: CallMetadata, **filters: object) -> list[str]:
        response = await stubs.booking.ListOrders(
            booking_pb2.ListOrdersRequest(page_size=500, **filters),  # type: ignore[arg-type]
            metadata=md,
        )
        return [o.id for o in response.orders]

    everything = await listed(shop.md)
    assert mine.id in everything and theirs.id not in everything and public.id not in everything
    assert await listed(shop.md, external_customer_id=external) == [mine.id]
    assert await listed(shop.md, external_customer_id="nobody-at-all") == []
    assert mine.id in await listed(shop.md, event_id=shop.event.id)
    assert await listed(shop.md, created_after=mine.create_time, external_customer_id=external) == [
        mine.id
    ]
    assert (
        await listed(shop.md, created_before=mine.create_time, external_customer_id=external) == []
    )
    # A customer's own listing never shows partner orders; only partners filter by end customer.
    assert mine.id not in await listed(customer.md)
    assert (
        await refusal(
            stubs.booking.ListOrders(
                booking_pb2.ListOrdersRequest(external_customer_id=external), metadata=customer.md
            )
        )
    )[2] == ["external_customer_id"]
    got = stubs.booking.GetOrder(booking_pb2.GetOrderRequest(order_id=public.id), metadata=shop.md)
    assert (await refusal(got))[:2] == (S.NOT_FOUND, "ORDER_NOT_FOUND")


async def test_support_sees_partner_orders_but_not_their_codes(
    stubs: Stubs, shop: Shop, admin: Account
) -> None:
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="ps-support")
    order = (await stubs.booking.BookSeats(on_behalf(shop, "support-case"), metadata=shop.md)).order
    for staff in (support, admin):
        got = await stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=order.id, include_signed_codes=True),
            metadata=staff.md,
        )
        assert got.order.partner_id == shop.partner.id
        assert got.order.end_customer.external_customer_id == "support-case"
        assert [t.code for t in got.order.tickets] == [""]
        assert [t.signed_code for t in got.order.tickets] == [""]


async def test_partners_refund_their_own_orders_under_the_customer_rules(
    stubs: Stubs, shop: Shop, customer: Account, raw: asyncpg.Connection
) -> None:
    order = (await stubs.booking.BookSeats(on_behalf(shop, "refunder"), metadata=shop.md)).order

    def refund(request_id: str) -> booking_pb2.RefundOrderRequest:
        return booking_pb2.RefundOrderRequest(
            order_id=order.id, request_id=request_id, reason="customer changed plans"
        )

    assert (
        await refusal(stubs.booking.RefundOrder(refund(str(uuid.uuid4())), metadata=shop.rival_md))
    )[:2] == (S.NOT_FOUND, "ORDER_NOT_FOUND")
    assert (
        await refusal(stubs.booking.RefundOrder(refund(str(uuid.uuid4())), metadata=customer.md))
    )[:2] == (S.PERMISSION_DENIED, "NOT_ORDER_OWNER")
    request_id = str(uuid.uuid4())
    refunded = (await stubs.booking.RefundOrder(refund(request_id), metadata=shop.md)).order
    assert refunded.status == booking_pb2.ORDER_STATUS_REFUNDED
    again = await stubs.booking.RefundOrder(refund(request_id), metadata=shop.md)
    assert again.order.status == booking_pb2.ORDER_STATUS_REFUNDED
    row = await raw.fetchrow(
        "SELECT refunded_by, refunded_by_partner FROM refunds WHERE order_id = $1",
        uuid.UUID(order.id),
    )
    assert row is not None
    assert (row["refunded_by"], str(row["refunded_by_partner"])) == (None, shop.partner.id)


async def test_the_database_refuses_an_end_customer_of_another_partner(
    shop: Shop, raw: asyncpg.Connection
) -> None:
    """The composite key: a partner's order cannot name another partner's end customer."""
    theirs = await raw.fetchval(
        "SELECT id FROM partner_customers WHERE partner_id = $1 LIMIT 1", uuid.UUID(shop.rival.id)
    )
    assert theirs is not None
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await raw.execute(
            "INSERT INTO orders (id, event_id, customer_id, request_id, request_hash, status, "
            "total_minor, currency_code, ticket_count, partner_id) "
            "VALUES ($1, $2, $3, $4, 'x', 'CONFIRMED', 0, 'EUR', 1, $5)",
            uuid.uuid4(),
            uuid.UUID(shop.event.id),
            theirs,
            uuid.uuid4(),
            uuid.UUID(shop.partner.id),
        )
