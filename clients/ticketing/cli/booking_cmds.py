"""ticketctl book / orders list / watch / show / refund / rotate-codes.

Bookings and refunds go through the SDK helpers, so each run sends one request_id and a lost
lock race (ABORTED) is retried once with it. When the outcome of a call is unknown (deadline
passed, server unreachable), the error names the request_id: running the same command again
with `--request-id` returns the original order instead of booking or refunding twice.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shlex
from collections.abc import Iterable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from rich.markup import escape
from rich.table import Table

from ticketing.cli.common import (
    CliError,
    StreamBreaks,
    add_target_args,
    console,
    describe_error,
    err_console,
    list_page_size,
    open_client,
    open_client_or_partner,
    print_limited,
    take,
)
from ticketing.cli.event_cmds import show_time
from ticketing.cli.qr import show_order_qr
from ticketing.cli.seatmap import format_money
from ticketing.client import Client
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.sdk import new_request_id
from ticketing.v1 import booking_pb2, event_pb2

# Failures after which the server may or may not have acted: the request_id is the way back.
_OUTCOME_UNKNOWN = frozenset(
    {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}
)


def parse_seat_ids(text: str) -> list[int]:
    """Seat ids from `12,13,14` (spaces allowed); each a positive whole number."""
    ids: list[int] = []
    for part in text.split(","):
        item = part.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) <= 0:
            raise CliError(escape(f"--seats: {item!r} is not a seat id; give ids like 12,13,14"))
        ids.append(int(item))
    if not ids:
        raise CliError("--seats: give at least one seat id, e.g. --seats 12,13,14")
    return ids


def resolve_section(event: event_pb2.Event, key: str) -> event_pb2.EventSection:
    """The event section `key` names: its id, or its name (case-insensitive)."""
    wanted = key.strip()
    for section in event.sections:
        if section.section_id == wanted:
            return section
    named = [s for s in event.sections if s.name.casefold() == wanted.casefold()]
    if len(named) == 1:
        return named[0]
    names = ", ".join(repr(s.name) for s in event.sections)
    raise CliError(escape(f"no section {key!r} in event {event.id}; sections are {names}"))


def _order_status(value: int) -> str:
    return booking_pb2.OrderStatus.Name(value).removeprefix("ORDER_STATUS_")  # type: ignore[arg-type]


def _ticket_status(value: int) -> str:
    return booking_pb2.TicketStatus.Name(value).removeprefix("TICKET_STATUS_")  # type: ignore[arg-type]


def _when(ts: Timestamp, event: event_pb2.Event | None) -> str:
    if event is not None and event.time_zone:
        return show_time(ts, event.time_zone)
    return ts.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def tickets_table(order: booking_pb2.Order) -> Table:
    """One line per ticket: place (section, row, seat), price, status and the gate code."""
    table = Table("section", "row", "seat")
    table.add_column("seat id", justify="right")
    table.add_column("price", justify="right", no_wrap=True)
    table.add_column("status")
    # Codes are what a holder shows at the gate: never cut one short with an ellipsis.
    table.add_column("code", overflow="fold", min_width=32)
    for t in order.tickets:
        seat = t.seat_label or (str(t.seat_number) if t.seat_number else "")
        status = _ticket_status(t.status)
        table.add_row(
            escape(t.section_name),
            escape(t.row_label) or "-",
            escape(seat) or "-",
            str(t.seat_id),
            format_money(t.price_minor, order.currency_code),
            status if status == "VALID" else f"[yellow]{status}[/]",
            t.code or "(hidden)",
        )
    return table


def print_order(order: booking_pb2.Order, event: event_pb2.Event | None = None) -> None:
    """Order header (status, event, total, refund) and its tickets table."""
    status = _order_status(order.status)
    color = "green" if order.status == booking_pb2.ORDER_STATUS_CONFIRMED else "yellow"
    console.print(f"[bold]order {order.id}[/]  [{color}]{status}[/]")
    if event is not None:
        console.print(
            f"  event: {escape(event.name)} at {escape(event.venue_name)}, "
            f"{show_time(event.start_time, event.time_zone)}  ({order.event_id})"
        )
    else:
        console.print(f"  event: {order.event_id}")
    count = len(order.tickets)
    console.print(
        f"  total: {format_money(order.total_minor, order.currency_code)}"
        f"  ({count} ticket{'s' if count != 1 else ''})"
    )
    console.print(f"  booked: {_when(order.create_time, event)}  request id: {order.request_id}")
    if order.status == booking_pb2.ORDER_STATUS_REFUNDED:
        console.print(
            f"  refunded: {_when(order.refund_time, event)}: {escape(order.refund_reason)}"
        )
    console.print(tickets_table(order))


async def _events_by_id(client: Client, event_ids: Iterable[str]) -> dict[str, event_pb2.Event]:
    """The events for display; one that cannot be read is left out (shown by id instead)."""
    wanted = sorted(set(event_ids))

    async def one(event_id: str) -> event_pb2.Event | None:
        try:
            resp = await client.events.GetEvent(event_pb2.GetEventRequest(event_id=event_id))
        except aio.AioRpcError:
            return None
        return resp.event

    found = await asyncio.gather(*(one(i) for i in wanted))
    return {i: e for i, e in zip(wanted, found, strict=True) if e is not None}


def _outcome_unknown(err: TicketingError, what: str, request_id: str, again: str) -> CliError:
    return CliError(
        escape(
            f"{describe_error(err)}\n"
            f"  the {what} may or may not have happened; to find out without doing it twice, run:\n"
            f"  {again} --request-id {request_id}"
        )
    )


async def cmd_book(args: argparse.Namespace) -> int:
    if args.seats is not None and args.quantity is not None:
        raise CliError("--quantity goes with --best SECTION, not with --seats")
    seat_ids = parse_seat_ids(args.seats) if args.seats is not None else []
    request_id = args.request_id or new_request_id()
    async with open_client(args) as client:
        event: event_pb2.Event | None = None
        if args.best is not None:
            event = (
                await client.events.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))
            ).event
            section_id = resolve_section(event, args.best).section_id
            quantity = 1 if args.quantity is None else args.quantity
            booking = client.book_best_available(
                args.event_id, section_id, quantity, request_id=request_id
            )
            again = f"--best {section_id} --quantity {quantity}"
        else:
            booking = client.book_seats(args.event_id, seat_ids, request_id=request_id)
            again = f"--seats {','.join(map(str, seat_ids))}"
        try:
            order = await booking
        except TicketingError as err:
            if err.code in _OUTCOME_UNKNOWN:
                command = f"ticketctl book {shlex.quote(args.event_id)} {again}"
                raise _outcome_unknown(err, "booking", request_id, command) from None
            raise
        if event is None:
            event = (await _events_by_id(client, [order.event_id])).get(order.event_id)
    print_order(order, event)
    return 0


async def cmd_orders_list(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        orders, more = await take(
            client.iter_orders(
                event_id=args.event or "",
                customer_email=args.customer or "",
                page_size=list_page_size(args.limit),
            ),
            args.limit,
        )
        events = await _events_by_id(client, (o.event_id for o in orders))
    if not orders:
        console.print("no orders")
        return 0
    table = Table("order", "event", "status")
    table.add_column("tickets", justify="right")
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("booked", no_wrap=True)
    for o in orders:
        event = events.get(o.event_id)
        status = _order_status(o.status)
        table.add_row(
            o.id,
            escape(event.name) if event is not None else o.event_id,
            status if o.status == booking_pb2.ORDER_STATUS_CONFIRMED else f"[yellow]{status}[/]",
            str(len(o.tickets)),
            format_money(o.total_minor, o.currency_code),
            _when(o.create_time, event),
        )
    print_limited(table, len(orders), more)
    return 0


async def cmd_orders_show(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        order = await client.get_order(args.order_id)
        event = (await _events_by_id(client, [order.event_id])).get(order.event_id)
    print_order(order, event)
    if args.qr:
        await show_order_qr(args)
    return 0


async def cmd_orders_refund(args: argparse.Namespace) -> int:
    request_id = args.request_id or new_request_id()
    async with open_client(args) as client:
        try:
            order = await client.refund_order(args.order_id, args.reason, request_id=request_id)
        except TicketingError as err:
            if err.code in _OUTCOME_UNKNOWN:
                command = (
                    f"ticketctl orders refund {shlex.quote(args.order_id)}"
                    f" --reason {shlex.quote(args.reason)}"
                )
                raise _outcome_unknown(err, "refund", request_id, command) from None
            raise
        event = (await _events_by_id(client, [order.event_id])).get(order.event_id)
    print_order(order, event)
    return 0


async def cmd_orders_rotate_codes(args: argparse.Namespace) -> int:
    """Replace the order's VALID ticket codes (the old ones stop admitting at once).

    Self-contained on the raw stub: one request_id per run, shown on an unknown outcome so
    the same rotation can be repeated without rotating twice.
    """
    request_id = args.request_id or new_request_id()
    async with open_client(args) as client:
        try:
            with ticketing_errors():
                response = await client.booking.RotateTicketCodes(
                    booking_pb2.RotateTicketCodesRequest(
                        order_id=args.order_id, request_id=request_id
                    )
                )
        except TicketingError as err:
            if err.code in _OUTCOME_UNKNOWN:
                command = f"ticketctl orders rotate-codes {shlex.quote(args.order_id)}"
                raise _outcome_unknown(err, "rotation", request_id, command) from None
            raise
        event = (await _events_by_id(client, [response.order.event_id])).get(
            response.order.event_id
        )
    count = response.rotated_count
    console.print(
        f"rotated {count} ticket code{'s' if count != 1 else ''}: the old codes no longer admit"
    )
    print_order(response.order, event)
    if count and not any(t.code for t in response.order.tickets):
        # Staff never see codes: the owner reads the new ones with `ticketctl orders show`.
        console.print("the new codes are shown to the order's owner only")
    return 0


def describe_order_change(change: booking_pb2.OrderChange) -> str:
    """One line for a change: `#7 CONFIRMED order ID event ID 25.00 EUR PARTNER PARTNER_ID`."""
    channel = booking_pb2.SalesChannel.Name(change.sales_channel).removeprefix("SALES_CHANNEL_")
    line = (
        f"#{change.sequence} {_order_status(change.status)} order {change.order_id} "
        f"event {change.event_id} {format_money(change.total_minor, change.currency_code)} "
        f"{channel}"
    )
    return f"{line} {change.partner_id}" if change.partner_id else line


async def cmd_orders_watch(args: argparse.Namespace) -> int:
    """`orders watch [--event ID] [--after SEQ]`: one line per order change the caller may
    see, until Ctrl-C; as the partner when TICKETING_API_KEY is set."""
    if args.after < 0:
        raise CliError("--after: a sequence is 0 or more (0: from the first change)")
    breaks = StreamBreaks(echo=True)  # lines, not a live display: every break can be told
    resume_after, changes = args.after, 0
    try:
        async with open_client_or_partner(args) as client:
            async for change in client.watch_orders(
                args.after, event_id=args.event or "", on_resume=breaks.on_resume
            ):
                resume_after = change.sequence
                if change.caught_up:
                    console.print(f"caught up at #{change.sequence}", highlight=False)
                    continue
                changes += 1
                console.print(escape(describe_order_change(change)), highlight=False)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task; say where to pick up (`--after N` gets
        # exactly what came since) and let main() exit with 130.
        err_console.print(
            f"stopped after #{resume_after} ({changes} changes, {breaks.count} reconnections);"
            f" continue with --after {resume_after}",
            highlight=False,
        )
        raise
    return 0


def _add_request_id(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--request-id",
        metavar="UUID",
        help="repeat an earlier attempt whose outcome you did not see (default: a new one)",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `book` and `orders list|watch|show|refund|rotate-codes` to the ticketctl parser."""
    p = sub.add_parser(
        "book",
        help="buy seats of an event (CUSTOMER, ADMIN)",
        description="Buy specific seats (ids from the event's seat list) or the best free "
        "places of a section. Prints the order with its ticket codes.",
    )
    p.add_argument("event_id")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--seats", metavar="IDS", help="seat ids, e.g. 12,13,14")
    what.add_argument(
        "--best", metavar="SECTION", help="best free places of this section (name or id)"
    )
    p.add_argument(
        "--quantity", type=int, metavar="N", help="how many places with --best (default 1)"
    )
    _add_request_id(p)
    add_target_args(p)
    p.set_defaults(handler=cmd_book)

    orders = sub.add_parser("orders", help="orders: list, watch, show, refund, rotate-codes")
    orders_sub = orders.add_subparsers(dest="orders_command", required=True)

    p = orders_sub.add_parser(
        "list", help="orders newest first (customers see their own; SUPPORT and ADMIN all)"
    )
    p.add_argument("--event", metavar="ID", help="only orders of this event")
    p.add_argument("--customer", metavar="EMAIL", help="only this customer's (SUPPORT, ADMIN)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N (default 50)")
    add_target_args(p)
    p.set_defaults(handler=cmd_orders_list)

    p = orders_sub.add_parser(
        "watch",
        help="follow order changes live (partner, ORGANIZER, SUPPORT, ADMIN; Ctrl-C stops)",
        description="One line per order confirmed or refunded, as it commits: a partner "
        "(TICKETING_API_KEY set) sees its own sales, an organizer its events' orders, SUPPORT "
        "and ADMIN all. Breaks are resumed with nothing missed or repeated; after the backlog "
        "a 'caught up at #N' line says everything up to N has been shown.",
    )
    p.add_argument("--event", metavar="ID", help="only orders of this event")
    p.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQ",
        help="start after this sequence (what a stopped watch printed; default 0: from the start)",
    )
    add_target_args(p)
    p.set_defaults(handler=cmd_orders_watch)

    p = orders_sub.add_parser("show", help="one order with its tickets and codes")
    p.add_argument("order_id")
    p.add_argument(
        "--qr", action="store_true", help="also draw each valid ticket's signed code as a QR"
    )
    add_target_args(p)
    p.set_defaults(handler=cmd_orders_show)

    p = orders_sub.add_parser(
        "refund", help="refund a whole order before the event starts (owner, SUPPORT, ADMIN)"
    )
    p.add_argument("order_id")
    p.add_argument("--reason", required=True, help="why; kept in the refund record")
    _add_request_id(p)
    add_target_args(p)
    p.set_defaults(handler=cmd_orders_refund)

    p = orders_sub.add_parser(
        "rotate-codes",
        help="give the order's valid tickets new codes before the event (owner, SUPPORT, ADMIN)",
        description="Replace a leaked or lost code: every VALID ticket of the order gets a new "
        "code and the old ones stop admitting at once. Codes are shown to the owner only.",
    )
    p.add_argument("order_id")
    _add_request_id(p)
    add_target_args(p)
    p.set_defaults(handler=cmd_orders_rotate_codes)
