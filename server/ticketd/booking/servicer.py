"""BookingService: protobuf <-> booking domain; no SQL here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ticketd.auth.principal import Principal, current_principal
from ticketd.booking.rules import (
    BestAvailable,
    HoldRecord,
    HoldStatus,
    OrderChangeRecord,
    OrderRecord,
    OrderStatus,
    TicketStatus,
    may_see_codes,
    validate_payment_reference,
    validate_refund_reason,
    validate_selection,
)
from ticketd.booking.service import BookingService
from ticketd.edge.convert import optional_time, optional_uuid, parse_uuid, timestamp
from ticketd.edge.streaming import write_pages
from ticketd.errors import InvalidArgument
from ticketd.pagination import (
    PageTokens,
    decode_time_keyset,
    resolve_page_size,
    time_keyset,
)
from ticketd.shared import EndCustomer
from ticketing.v1 import booking_pb2, booking_pb2_grpc

ORDER_STATUS = {
    OrderStatus.CONFIRMED: booking_pb2.ORDER_STATUS_CONFIRMED,
    OrderStatus.REFUNDED: booking_pb2.ORDER_STATUS_REFUNDED,
}
TICKET_STATUS = {
    TicketStatus.VALID: booking_pb2.TICKET_STATUS_VALID,
    TicketStatus.USED: booking_pb2.TICKET_STATUS_USED,
    TicketStatus.VOID: booking_pb2.TICKET_STATUS_VOID,
}


def end_customer_to_proto(customer: EndCustomer | None) -> booking_pb2.EndCustomer | None:
    if customer is None:
        return None
    return booking_pb2.EndCustomer(
        external_customer_id=customer.external_customer_id,
        display_name=customer.display_name,
        email=customer.email,
    )


def on_behalf_of(request: Any) -> EndCustomer | None:
    """The end customer a partner's request names; None when the field is unset."""
    if not request.HasField("on_behalf_of"):
        return None
    given = request.on_behalf_of
    return EndCustomer(given.external_customer_id, given.display_name, given.email)


def _channel(partner_id: Any) -> dict[str, Any]:
    """The sales channel fields of an order or hold (issue 13)."""
    if partner_id is None:
        return {"sales_channel": booking_pb2.SALES_CHANNEL_PUBLIC}
    return {"sales_channel": booking_pb2.SALES_CHANNEL_PARTNER, "partner_id": str(partner_id)}


def order_to_proto(order: OrderRecord, *, show_codes: bool) -> booking_pb2.Order:
    """The order as a client sees it; ticket codes only when `show_codes` (the caller owns
    the order: `ticketd.booking.rules.may_see_codes`). No default, so that no call site can
    leak codes by forgetting to decide."""
    msg = booking_pb2.Order(
        id=str(order.id),
        event_id=str(order.event_id),
        # A partner's order has no account: its buyer is end_customer.
        customer_id="" if order.partner_id else str(order.customer_id),
        end_customer=end_customer_to_proto(order.end_customer),
        **_channel(order.partner_id),
        request_id=str(order.request_id),
        status=ORDER_STATUS[order.status],
        total_minor=order.total_minor,
        currency_code=order.currency_code,
        create_time=timestamp(order.create_time),
        refund_reason=order.refund_reason or "",
        payment_reference=order.payment_reference or "",
        tickets=[
            booking_pb2.Ticket(
                id=str(t.id),
                seat_id=t.seat_id,
                section_id=str(t.section_id),
                section_name=t.section_name,
                row_label=t.row_label or "",
                seat_number=t.seat_number or 0,
                seat_label=t.seat_label or "",
                code=t.code if show_codes else "",
                signed_code=t.signed_code if show_codes else "",
                status=TICKET_STATUS[t.status],
                price_minor=t.price_minor,
            )
            for t in order.tickets
        ],
    )
    if order.refund_time is not None:
        msg.refund_time.CopyFrom(timestamp(order.refund_time))
    return msg


HOLD_STATUS = {
    HoldStatus.ACTIVE: booking_pb2.HOLD_STATUS_ACTIVE,
    HoldStatus.CONFIRMED: booking_pb2.HOLD_STATUS_CONFIRMED,
    HoldStatus.RELEASED: booking_pb2.HOLD_STATUS_RELEASED,
    HoldStatus.EXPIRED: booking_pb2.HOLD_STATUS_EXPIRED,
}

# Durations a client may send: anything longer is refused by the service's ttl rule; this
# bound only keeps the conversion from overflowing.
_MAX_TTL_SECONDS = 10 * 365 * 86400


def hold_to_proto(hold: HoldRecord) -> booking_pb2.Hold:
    return booking_pb2.Hold(
        id=str(hold.id),
        event_id=str(hold.event_id),
        customer_id="" if hold.partner_id else str(hold.customer_id),
        end_customer=end_customer_to_proto(hold.end_customer),
        **_channel(hold.partner_id),
        request_id=str(hold.request_id),
        status=HOLD_STATUS[hold.status],
        total_minor=hold.total_minor,
        currency_code=hold.currency_code,
        create_time=timestamp(hold.create_time),
        expire_time=timestamp(hold.expire_time),
        order_id=str(hold.order_id) if hold.order_id else "",
        seats=[
            booking_pb2.HoldSeat(
                seat_id=s.seat_id,
                section_id=str(s.section_id),
                section_name=s.section_name,
                row_label=s.row_label or "",
                seat_number=s.seat_number or 0,
                seat_label=s.seat_label or "",
                price_minor=s.price_minor,
            )
            for s in hold.seats
        ],
    )


def ttl_from(request: Any, field: str = "ttl") -> dt.timedelta | None:
    """The request's optional Duration as a timedelta (None when unset)."""
    if not request.HasField(field):
        return None
    d = getattr(request, field)
    if d.seconds < 0 or d.nanos < 0 or d.seconds > _MAX_TTL_SECONDS or d.nanos >= 10**9:
        raise InvalidArgument.one(field, "a positive duration")
    return dt.timedelta(seconds=d.seconds, microseconds=d.nanos // 1000)


def selection_from(request: Any) -> Any:
    which = request.WhichOneof("selection")
    return validate_selection(
        list(request.seat_ids.ids) if which == "seat_ids" else None,
        BestAvailable(
            parse_uuid(request.best_available.section_id, "best_available.section_id"),
            request.best_available.quantity,
        )
        if which == "best_available"
        else None,
    )


def order_for(principal: Principal, order: OrderRecord) -> booking_pb2.Order:
    """The order as `principal` sees it: ticket codes on their own orders only (staff see
    anyone's orders, without codes)."""
    return order_to_proto(
        order, show_codes=may_see_codes(principal, order.customer_id, order.partner_id)
    )


def order_change_to_proto(change: OrderChangeRecord) -> booking_pb2.OrderChange:
    """One order change as WatchOrders streams it (never the buyer)."""
    if change.caught_up:
        return booking_pb2.OrderChange(sequence=change.sequence, caught_up=True)
    assert change.change_time is not None
    return booking_pb2.OrderChange(
        sequence=change.sequence,
        order_id=str(change.order_id),
        event_id=str(change.event_id),
        status=ORDER_STATUS[change.status],
        **_channel(change.partner_id),
        total_minor=change.total_minor,
        currency_code=change.currency_code,
        change_time=timestamp(change.change_time),
    )


class BookingServicer(booking_pb2_grpc.BookingServiceServicer):
    """Implements ticketing.v1.BookingService; access rules are in ticketd.auth.policy."""

    def __init__(
        self,
        service: BookingService,
        pages: PageTokens,
        *,
        send_timeout: float = 30.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self._service = service
        self._pages = pages
        self._send_timeout = send_timeout
        self._poll_seconds = poll_seconds

    async def WatchOrders(  # type: ignore[override]
        self, request: booking_pb2.WatchOrdersRequest, context: Any
    ) -> None:
        event_id = optional_uuid(request.event_id, "event_id")
        pages = self._service.watch_orders(
            current_principal(),
            event_id,
            request.after_sequence,
            poll_seconds=self._poll_seconds,
        )
        await write_pages(
            context,
            pages,
            order_change_to_proto,
            send_timeout=self._send_timeout,
            after_sequence=request.after_sequence,
        )

    async def BookSeats(
        self, request: booking_pb2.BookSeatsRequest, context: Any
    ) -> booking_pb2.BookSeatsResponse:
        principal = current_principal()
        event_id = parse_uuid(request.event_id, "event_id")
        request_id = parse_uuid(request.request_id, "request_id")
        selection = selection_from(request)
        order = await self._service.book(
            principal, event_id, request_id, selection, on_behalf_of(request)
        )
        return booking_pb2.BookSeatsResponse(order=order_for(principal, order))

    async def GetOrder(
        self, request: booking_pb2.GetOrderRequest, context: Any
    ) -> booking_pb2.GetOrderResponse:
        order, show_codes = await self._service.get_order(
            current_principal(),
            parse_uuid(request.order_id, "order_id"),
            signed_codes=request.include_signed_codes,
        )
        return booking_pb2.GetOrderResponse(order=order_to_proto(order, show_codes=show_codes))

    async def ListOrders(
        self, request: booking_pb2.ListOrdersRequest, context: Any
    ) -> booking_pb2.ListOrdersResponse:
        principal = current_principal()
        size = resolve_page_size(request.page_size)
        event_id = optional_uuid(request.event_id, "event_id")
        email = request.customer_email.strip().lower()
        if len(email) > 254:
            raise InvalidArgument.one("customer_email", "must be at most 254 characters")
        external = request.external_customer_id.strip()
        if len(external) > 200:
            raise InvalidArgument.one("external_customer_id", "must be at most 200 characters")
        after = optional_time(request, "created_after")
        until = optional_time(request, "created_before")
        query = {
            "event": str(event_id),
            "email": email,
            "caller": str(principal.user_id),
            "external": external,
            "after": after.isoformat() if after else "",
            "before": until.isoformat() if until else "",
        }
        before = decode_time_keyset(self._pages, "orders", query, request.page_token)
        rows = await self._service.list_orders(
            principal,
            event_id=event_id,
            customer_email=email or None,
            before=before,
            limit=size + 1,
            external_customer_id=external or None,
            created_after=after,
            created_before=until,
        )
        orders, token = self._pages.page(
            "orders",
            query,
            rows,
            size,
            lambda o: order_for(principal, o),
            lambda o: time_keyset(o.create_time, o.id),
        )
        return booking_pb2.ListOrdersResponse(orders=orders, next_page_token=token)

    async def RefundOrder(
        self, request: booking_pb2.RefundOrderRequest, context: Any
    ) -> booking_pb2.RefundOrderResponse:
        principal = current_principal()
        order_id = parse_uuid(request.order_id, "order_id")
        request_id = parse_uuid(request.request_id, "request_id")
        reason = validate_refund_reason(request.reason)
        order = await self._service.refund(principal, order_id, request_id, reason)
        return booking_pb2.RefundOrderResponse(order=order_for(principal, order))

    async def RotateTicketCodes(
        self, request: booking_pb2.RotateTicketCodesRequest, context: Any
    ) -> booking_pb2.RotateTicketCodesResponse:
        principal = current_principal()
        order_id = parse_uuid(request.order_id, "order_id")
        request_id = parse_uuid(request.request_id, "request_id")
        order, rotated = await self._service.rotate_codes(principal, order_id, request_id)
        return booking_pb2.RotateTicketCodesResponse(
            order=order_for(principal, order),
            rotated_count=rotated,
        )

    async def HoldSeats(
        self, request: booking_pb2.HoldSeatsRequest, context: Any
    ) -> booking_pb2.HoldSeatsResponse:
        principal = current_principal()
        event_id = parse_uuid(request.event_id, "event_id")
        request_id = parse_uuid(request.request_id, "request_id")
        selection = selection_from(request)
        hold = await self._service.hold(
            principal, event_id, request_id, selection, ttl_from(request), on_behalf_of(request)
        )
        return booking_pb2.HoldSeatsResponse(hold=hold_to_proto(hold))

    async def ExtendHold(
        self, request: booking_pb2.ExtendHoldRequest, context: Any
    ) -> booking_pb2.ExtendHoldResponse:
        hold = await self._service.extend_hold(
            current_principal(), parse_uuid(request.hold_id, "hold_id"), ttl_from(request)
        )
        return booking_pb2.ExtendHoldResponse(hold=hold_to_proto(hold))

    async def ConfirmHold(
        self, request: booking_pb2.ConfirmHoldRequest, context: Any
    ) -> booking_pb2.ConfirmHoldResponse:
        principal = current_principal()
        hold_id = parse_uuid(request.hold_id, "hold_id")
        request_id = parse_uuid(request.request_id, "request_id")
        reference = validate_payment_reference(request.payment_reference)
        order = await self._service.confirm_hold(
            principal, hold_id, request_id, reference, on_behalf_of(request)
        )
        return booking_pb2.ConfirmHoldResponse(order=order_for(principal, order))

    async def ReleaseHold(
        self, request: booking_pb2.ReleaseHoldRequest, context: Any
    ) -> booking_pb2.ReleaseHoldResponse:
        hold = await self._service.release_hold(
            current_principal(), parse_uuid(request.hold_id, "hold_id")
        )
        return booking_pb2.ReleaseHoldResponse(hold=hold_to_proto(hold))

    async def GetHold(
        self, request: booking_pb2.GetHoldRequest, context: Any
    ) -> booking_pb2.GetHoldResponse:
        hold = await self._service.get_hold(
            current_principal(), parse_uuid(request.hold_id, "hold_id")
        )
        return booking_pb2.GetHoldResponse(hold=hold_to_proto(hold))

    async def ListHolds(
        self, request: booking_pb2.ListHoldsRequest, context: Any
    ) -> booking_pb2.ListHoldsResponse:
        principal = current_principal()
        size = resolve_page_size(request.page_size)
        event_id = optional_uuid(request.event_id, "event_id")
        email = request.customer_email.strip().lower()
        if len(email) > 254:
            raise InvalidArgument.one("customer_email", "must be at most 254 characters")
        query = {"event": str(event_id), "email": email, "caller": str(principal.user_id)}
        before = decode_time_keyset(self._pages, "holds", query, request.page_token)
        rows = await self._service.list_holds(
            principal,
            event_id=event_id,
            customer_email=email or None,
            before=before,
            limit=size + 1,
        )
        holds, token = self._pages.page(
            "holds", query, rows, size, hold_to_proto, lambda h: time_keyset(h.create_time, h.id)
        )
        return booking_pb2.ListHoldsResponse(holds=holds, next_page_token=token)
