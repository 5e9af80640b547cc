"""Issue 10, item 18: ticket codes are the owner's; staff rotate them, never read them.

End to end through the real server and PostgreSQL:
- GetOrder, ListOrders and RefundOrder fill in codes for the order's owner only: SUPPORT,
  ADMIN and the event's organizer see orders with empty codes (SUPPORT could list every
  customer's live codes in one call before).
- BookingService.RotateTicketCodes (owner, SUPPORT, ADMIN) gives the VALID tickets new codes
  in one transaction: an old code scans UNKNOWN_CODE at once, a new one admits; USED tickets
  keep theirs; a request_id repeats without rotating twice (also when sent concurrently) and
  is refused for another order; refused after the start, for refunded orders and for callers
  who are not the owner, with nothing written.
- `ticketctl orders rotate-codes ORDER_ID`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    all_pages,
    audit,
    best_request,
    error_details,
    scan_request,
    small_layout,
)
from tests.test_cli_booking import failed, ok, ticketctl
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2, venue_pb2

S = grpc.StatusCode
ADMITTED = gate_pb2.VALIDATION_RESULT_ADMITTED
UNKNOWN_CODE = gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE


def _ts(delta: dt.timedelta) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + delta)
    return ts


@dataclass
class Box:
    """An event whose doors are open (scans are accepted now) and which starts in 2 hours."""

    organizer: Account
    support: Account
    other_admin: Account
    entry: Account
    venue: venue_pb2.Venue
    event: event_pb2.Event

    @property
    def ga(self) -> str:
        return self.venue.sections[1].id


@pytest.fixture(scope="module")
async def box(stubs: Stubs, admin: Account) -> Box:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="codes-org")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="codes-sup")
    other_admin = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="codes-adm")
    entry = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="codes-gate")
    venue = await stubs.create_venue(admin, small_layout(name="Codes Hall", ga=500))
    event = await _event(stubs, organizer, venue)
    return Box(organizer, support, other_admin, entry, venue, event)


async def _event(stubs: Stubs, owner: Account, venue: venue_pb2.Venue) -> event_pb2.Event:
    request = event_pb2.CreateEventRequest(
        venue_id=venue.id,
        name="Codes",
        start_time=_ts(dt.timedelta(hours=2)),
        doors_open_time=_ts(dt.timedelta(minutes=-1)),
        currency_code="EUR",
        section_prices={s.id: 1500 for s in venue.sections},
        max_tickets_per_order=10,
    )
    return (await stubs.events.CreateEvent(request, metadata=owner.md)).event


async def _book(stubs: Stubs, box: Box, buyer: Account, n: int = 3) -> booking_pb2.Order:
    request = best_request(box.event.id, box.ga, n)
    return (await stubs.booking.BookSeats(request, metadata=buyer.md)).order


async def _rotate(
    stubs: Stubs, who: Account, order_id: str, request_id: str | None = None
) -> booking_pb2.RotateTicketCodesResponse:
    request = booking_pb2.RotateTicketCodesRequest(
        order_id=order_id, request_id=request_id or str(uuid.uuid4())
    )
    return await stubs.booking.RotateTicketCodes(request, metadata=who.md)


async def _owner_view(stubs: Stubs, owner: Account, order_id: str) -> booking_pb2.Order:
    request = booking_pb2.GetOrderRequest(order_id=order_id)
    return (await stubs.booking.GetOrder(request, metadata=owner.md)).order


async def _codes_in_db(running: RunningServer, order_id: str) -> dict[str, tuple[str, str]]:
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, code, status FROM tickets WHERE order_id = :o"),
                {"o": uuid.UUID(order_id)},
            )
        ).all()
    return {str(r.id): (r.code, r.status) for r in rows}


async def _rotations(running: RunningServer, order_id: str) -> int:
    async with running.engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT count(*) FROM code_rotations WHERE order_id = :o"),
            {"o": uuid.UUID(order_id)},
        )
    return int(value)


async def _scan(stubs: Stubs, admin: Account, box: Box, code: str) -> int:
    result = await stubs.gate.ValidateTicket(scan_request(code, box.event.id), metadata=admin.md)
    return int(result.result)


# --- who sees codes -----------------------------------------------------------------------------


async def test_codes_are_shown_to_the_owner_only(stubs: Stubs, admin: Account, box: Box) -> None:
    buyer = await stubs.register("codes-buyer")
    order = await _book(stubs, box, buyer)
    assert all(t.code for t in order.tickets)  # the owner's own BookSeats answer
    get = booking_pb2.GetOrderRequest(order_id=order.id)
    assert (await stubs.booking.GetOrder(get, metadata=buyer.md)).order == order
    signed = booking_pb2.GetOrderRequest(order_id=order.id, include_signed_codes=True)
    owned = (await stubs.booking.GetOrder(signed, metadata=buyer.md)).order
    # Signed codes (issue 14) go to the owner only, like the plain ones.
    assert all(t.signed_code.startswith("TK1.") for t in owned.tickets)
    for staff in (box.support, box.other_admin, admin, box.organizer):
        seen = (await stubs.booking.GetOrder(signed, metadata=staff.md)).order
        assert seen.id == order.id and len(seen.tickets) == 3
        assert [t.code for t in seen.tickets] == ["", "", ""]
        assert [t.signed_code for t in seen.tickets] == ["", "", ""]
        # Everything but the codes is there: support can still help the customer.
        assert [t.seat_id for t in seen.tickets] == [t.seat_id for t in order.tickets]
    mine = await stubs.booking.ListOrders(booking_pb2.ListOrdersRequest(), metadata=buyer.md)
    assert [t.code for t in mine.orders[0].tickets] == [t.code for t in order.tickets]


async def test_support_lists_every_order_and_no_code(
    stubs: Stubs, admin: Account, box: Box
) -> None:
    """The issue's attack: one ListOrders page of everyone's orders carried 8,217 live codes."""
    for _ in range(3):
        await _book(stubs, box, await stubs.register("codes-many"), 2)
    for staff in (box.support, box.other_admin):
        pages = await all_pages(
            stubs.booking.ListOrders, booking_pb2.ListOrdersRequest(page_size=500), staff.md
        )
        orders = [order for page in pages for order in page.orders]
        assert len(orders) >= 3
        leaked = [t.code for o in orders for t in o.tickets if t.code]
        assert leaked == [], f"{len(leaked)} codes shown to a non-owner"


async def test_refund_by_support_answers_without_codes(stubs: Stubs, box: Box) -> None:
    buyer = await stubs.register("codes-refund")
    order = await _book(stubs, box, buyer, 1)
    refunded = await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), reason="customer asked"
        ),
        metadata=box.support.md,
    )
    assert refunded.order.status == booking_pb2.ORDER_STATUS_REFUNDED
    assert [t.code for t in refunded.order.tickets] == [""]


# --- rotation -----------------------------------------------------------------------------------


async def test_owner_rotation_kills_old_codes_at_once(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-rotate")
    order = await _book(stubs, box, buyer)
    old = [t.code for t in order.tickets]
    rotated = await _rotate(stubs, buyer, order.id)
    assert rotated.rotated_count == 3
    new = [t.code for t in rotated.order.tickets]
    assert all(new) and not set(new) & set(old) and len(set(new)) == 3
    assert [t.id for t in rotated.order.tickets] == [t.id for t in order.tickets]
    assert await _owner_view(stubs, buyer, order.id) == rotated.order
    assert await _scan(stubs, admin, box, old[0]) == UNKNOWN_CODE
    assert await _scan(stubs, admin, box, new[0]) == ADMITTED
    assert await _rotations(running, order.id) == 1
    assert await audit(running.engine, box.event.id) == {}


async def test_support_rotates_without_seeing_and_the_owner_reads_the_new_codes(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-resend")
    order = await _book(stubs, box, buyer, 2)
    for staff in (box.support, box.other_admin):
        before = await _owner_view(stubs, buyer, order.id)
        rotated = await _rotate(stubs, staff, order.id)
        assert rotated.rotated_count == 2
        assert [t.code for t in rotated.order.tickets] == ["", ""]
        after = await _owner_view(stubs, buyer, order.id)
        assert not {t.code for t in after.tickets} & {t.code for t in before.tickets}
        assert await _scan(stubs, admin, box, before.tickets[0].code) == UNKNOWN_CODE
    assert await _rotations(running, order.id) == 2


async def test_used_tickets_keep_their_code(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-used")
    order = await _book(stubs, box, buyer, 3)
    used = order.tickets[1]
    assert await _scan(stubs, admin, box, used.code) == ADMITTED
    rotated = await _rotate(stubs, buyer, order.id)
    assert rotated.rotated_count == 2
    by_id = {t.id: t for t in rotated.order.tickets}
    assert by_id[used.id].code == used.code
    assert by_id[used.id].status == booking_pb2.TICKET_STATUS_USED
    others = [t for t in order.tickets if t.id != used.id]
    assert all(by_id[t.id].code != t.code for t in others)
    # The used code still answers "already used", not "unknown": the scan log stays true.
    again = await stubs.gate.ValidateTicket(
        scan_request(used.code, box.event.id), metadata=admin.md
    )
    assert again.result == gate_pb2.VALIDATION_RESULT_ALREADY_USED
    db = await _codes_in_db(running, order.id)
    assert db[used.id] == (used.code, "USED")


async def test_request_id_is_idempotent_and_bound_to_one_order(
    stubs: Stubs, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-idem")
    order = await _book(stubs, box, buyer, 2)
    other = await _book(stubs, box, buyer, 1)
    request_id = str(uuid.uuid4())
    first = await _rotate(stubs, buyer, order.id, request_id)
    again = await _rotate(stubs, buyer, order.id, request_id)
    assert again.rotated_count == first.rotated_count == 2
    assert again.order == first.order  # the same codes: nothing rotated the second time
    assert await _rotations(running, order.id) == 1
    before = await _codes_in_db(running, other.id)
    with pytest.raises(aio.AioRpcError) as err:
        await _rotate(stubs, buyer, other.id, request_id)
    details = error_details(err.value)
    assert (details.code, details.reason) == (S.FAILED_PRECONDITION, "REQUEST_ID_MISMATCH")
    assert await _codes_in_db(running, other.id) == before
    assert await _rotations(running, other.id) == 0
    # A request_id is the caller's: support may use the same one for its own rotation.
    staff = await _rotate(stubs, box.support, order.id, request_id)
    assert staff.rotated_count == 2
    assert await _rotations(running, order.id) == 2


async def test_concurrent_twins_rotate_once(stubs: Stubs, box: Box, running: RunningServer) -> None:
    buyer = await stubs.register("codes-twins")
    order = await _book(stubs, box, buyer, 4)
    request_id = str(uuid.uuid4())
    answers = await asyncio.gather(*(_rotate(stubs, buyer, order.id, request_id) for _ in range(8)))
    assert {a.rotated_count for a in answers} == {4}
    assert len({tuple(t.code for t in a.order.tickets) for a in answers}) == 1
    assert await _rotations(running, order.id) == 1
    current = await _owner_view(stubs, buyer, order.id)
    assert current == answers[0].order


async def test_scans_racing_a_rotation_never_admit_with_a_dead_code(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    """Each racing scan of an old code either admitted before the rotation (then that ticket
    is USED with its old code and was not rotated) or is UNKNOWN_CODE."""
    buyer = await stubs.register("codes-race")
    order = await _book(stubs, box, buyer, 6)
    old = {t.id: t.code for t in order.tickets}
    scans = [_scan(stubs, admin, box, code) for code in old.values()]
    results = await asyncio.gather(_rotate(stubs, buyer, order.id), *scans)
    rotation, outcomes = results[0], results[1:]
    assert isinstance(rotation, booking_pb2.RotateTicketCodesResponse)
    db = await _codes_in_db(running, order.id)
    for (ticket_id, code), outcome in zip(old.items(), outcomes, strict=True):
        if outcome == ADMITTED:
            assert db[ticket_id] == (code, "USED")
        else:
            assert outcome == UNKNOWN_CODE
            assert db[ticket_id][0] != code and db[ticket_id][1] == "VALID"
    assert rotation.rotated_count == sum(1 for o in outcomes if o != ADMITTED)
    assert await audit(running.engine, box.event.id) == {}


# --- refusals -----------------------------------------------------------------------------------


async def _refused(stubs: Stubs, who: Account, order_id: str) -> tuple[S, str | None]:
    with pytest.raises(aio.AioRpcError) as err:
        await _rotate(stubs, who, order_id)
    details = error_details(err.value)
    return details.code, details.reason


async def test_rotation_refusals_change_nothing(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-refused")
    stranger = await stubs.register("codes-stranger")
    order = await _book(stubs, box, buyer, 2)
    before = await _codes_in_db(running, order.id)
    assert await _refused(stubs, stranger, order.id) == (S.PERMISSION_DENIED, "NOT_ORDER_OWNER")
    for role_refused in (box.organizer, box.entry):
        assert await _refused(stubs, role_refused, order.id) == (
            S.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )
    assert await _refused(stubs, buyer, str(uuid.uuid4())) == (S.NOT_FOUND, "ORDER_NOT_FOUND")
    for bad in ("", "not-a-uuid"):
        assert (await _refused(stubs, buyer, bad))[0] == S.INVALID_ARGUMENT
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.RotateTicketCodes(
            booking_pb2.RotateTicketCodesRequest(order_id=order.id, request_id="x"),
            metadata=buyer.md,
        )
    assert error_details(err.value).field_violations[0][0] == "request_id"
    assert await _codes_in_db(running, order.id) == before
    assert await _rotations(running, order.id) == 0


async def test_refunded_orders_and_started_events_are_refused(
    stubs: Stubs, admin: Account, box: Box, running: RunningServer
) -> None:
    buyer = await stubs.register("codes-late")
    refunded = await _book(stubs, box, buyer, 1)
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=refunded.id, request_id=str(uuid.uuid4()), reason="changed plans"
        ),
        metadata=buyer.md,
    )
    before = await _codes_in_db(running, refunded.id)
    for who in (buyer, box.support):
        assert await _refused(stubs, who, refunded.id) == (
            S.FAILED_PRECONDITION,
            "ALREADY_REFUNDED",
        )
    assert await _codes_in_db(running, refunded.id) == before

    # An event that has started (its start moved into the past behind the server's back).
    event = await _event(stubs, box.organizer, box.venue)
    order = (
        await stubs.booking.BookSeats(best_request(event.id, box.ga, 2), metadata=buyer.md)
    ).order
    async with running.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE events SET doors_open_time = now() - interval '2 hours', "
                "start_time = now() - interval '1 minute' WHERE id = :e"
            ),
            {"e": uuid.UUID(event.id)},
        )
    before = await _codes_in_db(running, order.id)
    for who in (buyer, box.support, admin):
        assert await _refused(stubs, who, order.id) == (S.FAILED_PRECONDITION, "EVENT_STARTED")
    assert await _codes_in_db(running, order.id) == before
    assert await _rotations(running, order.id) == 0


async def test_cancelled_event_is_refused(stubs: Stubs, box: Box, running: RunningServer) -> None:
    buyer = await stubs.register("codes-cancelled")
    event = await _event(stubs, box.organizer, box.venue)
    order = (
        await stubs.booking.BookSeats(best_request(event.id, box.ga, 1), metadata=buyer.md)
    ).order
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event.id, reason="storm"), metadata=box.organizer.md
    )
    code, reason = await _refused(stubs, buyer, order.id)
    # Cancelling refunds the orders today; either refusal says "nothing to rotate".
    assert (code, reason) in {
        (S.FAILED_PRECONDITION, "ALREADY_REFUNDED"),
        (S.FAILED_PRECONDITION, "EVENT_CANCELLED"),
    }
    assert await _rotations(running, order.id) == 0


# --- ticketctl ----------------------------------------------------------------------------------


async def test_ticketctl_orders_rotate_codes(
    running: RunningServer, stubs: Stubs, admin: Account, box: Box, tmp_path: Path
) -> None:
    buyer = await stubs.register("codes-cli")
    order = await _book(stubs, box, buyer, 2)
    old = [t.code for t in order.tickets]
    mine = ok(await ticketctl(running, buyer, tmp_path, "orders", "rotate-codes", order.id))
    assert "rotated 2 ticket codes" in mine.out
    new = [t.code for t in (await _owner_view(stubs, buyer, order.id)).tickets]
    assert all(code in mine.out for code in new)
    assert not any(code in mine.out for code in old)
    by_support = ok(
        await ticketctl(running, box.support, tmp_path, "orders", "rotate-codes", order.id)
    )
    assert "rotated 2 ticket codes" in by_support.out
    assert "shown to the order's owner only" in by_support.out
    newest = [t.code for t in (await _owner_view(stubs, buyer, order.id)).tickets]
    assert not any(code in by_support.out for code in newest + new)
    # The same request_id again: the first answer, no second rotation.
    request_id = str(uuid.uuid4())
    args = ("orders", "rotate-codes", order.id, "--request-id", request_id)
    ok(await ticketctl(running, buyer, tmp_path, *args))
    final = [t.code for t in (await _owner_view(stubs, buyer, order.id)).tickets]
    ok(await ticketctl(running, buyer, tmp_path, *args))
    assert [t.code for t in (await _owner_view(stubs, buyer, order.id)).tickets] == final
    stranger = await stubs.register("codes-cli-stranger")
    refused = failed(
        await ticketctl(running, stranger, tmp_path, "orders", "rotate-codes", order.id)
    )
    assert "NOT_ORDER_OWNER" in refused.err + refused.out
