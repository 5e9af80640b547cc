"""ticketctl hold / holds list|show|extend|release / checkout (issue 12).

A hold locks seats for you at selection; `checkout` confirms it at payment with the payment
provider's reference. Holding and confirming go through the SDK helpers (one request_id per
run, ABORTED retried once with it); on an unknown outcome the error names the request_id, so
running the same command again with `--request-id` returns the first result.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shlex

from google.protobuf.timestamp_pb2 import Timestamp
from rich.markup import escape
from rich.table import Table

from ticketing.cli.booking_cmds import (
    _OUTCOME_UNKNOWN,
    _add_request_id,
    _events_by_id,
    _outcome_unknown,
    parse_seat_ids,
    print_order,
    resolve_section,
)
from ticketing.cli.common import (
    CliError,
    add_target_args,
    console,
    list_page_size,
    open_client,
    print_limited,
    take,
)
from ticketing.cli.seatmap import format_money
from ticketing.errors import TicketingError
from ticketing.sdk import new_request_id
from ticketing.v1 import booking_pb2, event_pb2

_DURATION = re.compile(r"^\s*(?:(\d+)h)?\s*(?:(\d+)m)?\s*(?:(\d+)s?)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from `5m`, `90s`, `90`, `1h`, `1m30s`; at least one second."""
    match = _DURATION.match(text)
    if not text.strip() or match is None or not any(match.groups()):
        raise CliError(escape(f"--ttl: {text!r} is not a duration; give e.g. 5m, 90s or 1h"))
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total < 1:
        raise CliError("--ttl: at least 1s")
    return float(total)


def _hold_status(value: int) -> str:
    return booking_pb2.HoldStatus.Name(value).removeprefix("HOLD_STATUS_")  # type: ignore[arg-type]


def countdown(expire_time: Timestamp, now: dt.datetime | None = None) -> str:
    """`4m 12s left` until `expire_time` (by this machine's clock), or `expired`."""
    left = expire_time.ToDatetime(dt.UTC) - (now or dt.datetime.now(dt.UTC))
    seconds = int(left.total_seconds())
    if seconds <= 0:
        return "expired"
    minutes, secs = divmod(seconds, 60)
    return f"{minutes}m {secs:02d}s left" if minutes else f"{secs}s left"


def print_hold(hold: booking_pb2.Hold) -> None:
    status = _hold_status(hold.status)
    color = {"ACTIVE": "green", "CONFIRMED": "cyan"}.get(status, "yellow")
    console.print(f"[bold]hold {hold.id}[/]  [{color}]{status}[/]")
    console.print(f"  event: {hold.event_id}")
    count = len(hold.seats)
    console.print(
        f"  total: {format_money(hold.total_minor, hold.currency_code)}"
        f"  ({count} seat{'s' if count != 1 else ''})"
    )
    expires = hold.expire_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if hold.status == booking_pb2.HOLD_STATUS_ACTIVE:
        console.print(f"  expires: {expires}  [bold]{countdown(hold.expire_time)}[/]")
    else:
        console.print(f"  expires: {expires}")
    if hold.order_id:
        console.print(f"  order: {hold.order_id}")
    table = Table("section", "row", "seat")
    table.add_column("seat id", justify="right")
    table.add_column("price", justify="right", no_wrap=True)
    for s in hold.seats:
        seat = s.seat_label or (str(s.seat_number) if s.seat_number else "")
        table.add_row(
            escape(s.section_name),
            escape(s.row_label) or "-",
            escape(seat) or "-",
            str(s.seat_id),
            format_money(s.price_minor, hold.currency_code),
        )
    console.print(table)


async def cmd_hold(args: argparse.Namespace) -> int:
    if args.seats is not None and args.quantity is not None:
        raise CliError("--quantity goes with --best SECTION, not with --seats")
    ttl = parse_duration(args.ttl) if args.ttl is not None else None
    request_id = args.request_id or new_request_id()
    async with open_client(args) as client:
        if args.best is not None:
            event = (
                await client.events.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))
            ).event
            section_id = resolve_section(event, args.best).section_id
            quantity = 1 if args.quantity is None else args.quantity
            holding = client.hold_seats(
                args.event_id,
                best_section_id=section_id,
                quantity=quantity,
                ttl_seconds=ttl,
                request_id=request_id,
            )
            again = f"--best {section_id} --quantity {quantity}"
        else:
            seat_ids = parse_seat_ids(args.seats)
            holding = client.hold_seats(
                args.event_id, seat_ids, ttl_seconds=ttl, request_id=request_id
            )
            again = f"--seats {','.join(map(str, seat_ids))}"
        try:
            hold = await holding
        except TicketingError as err:
            if err.code in _OUTCOME_UNKNOWN:
                command = f"ticketctl hold {shlex.quote(args.event_id)} {again}"
                raise _outcome_unknown(err, "hold", request_id, command) from None
            raise
    print_hold(hold)
    console.print(f"pay, then: ticketctl checkout {hold.id} --payment-ref REF")
    return 0


async def cmd_holds_list(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        holds, more = await take(
            client.iter_holds(
                event_id=args.event or "",
                customer_email=args.customer or "",
                page_size=list_page_size(args.limit),
            ),
            args.limit,
        )
    if not holds:
        console.print("no holds")
        return 0
    table = Table("hold", "event", "status")
    table.add_column("seats", justify="right")
    table.add_column("total", justify="right", no_wrap=True)
    table.add_column("expires", no_wrap=True)
    for h in holds:
        status = _hold_status(h.status)
        left = countdown(h.expire_time) if h.status == booking_pb2.HOLD_STATUS_ACTIVE else ""
        table.add_row(
            h.id,
            h.event_id,
            status,
            str(len(h.seats)),
            format_money(h.total_minor, h.currency_code),
            left or h.expire_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    print_limited(table, len(holds), more)
    return 0


async def cmd_holds_show(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        hold = await client.get_hold(args.hold_id)
    print_hold(hold)
    return 0


async def cmd_holds_extend(args: argparse.Namespace) -> int:
    ttl = parse_duration(args.ttl) if args.ttl is not None else None
    async with open_client(args) as client:
        hold = await client.extend_hold(args.hold_id, ttl)
    print_hold(hold)
    return 0


async def cmd_holds_release(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        hold = await client.release_hold(args.hold_id)
    print_hold(hold)
    console.print("the seats are free again")
    return 0


async def cmd_checkout(args: argparse.Namespace) -> int:
    request_id = args.request_id or new_request_id()
    async with open_client(args) as client:
        hold = await client.get_hold(args.hold_id)
        if hold.status == booking_pb2.HOLD_STATUS_ACTIVE:
            console.print(
                f"hold {hold.id}: {len(hold.seats)} seat(s), "
                f"{format_money(hold.total_minor, hold.currency_code)}, "
                f"[bold]{countdown(hold.expire_time)}[/]"
            )
        try:
            order = await client.confirm_hold(args.hold_id, args.payment_ref, request_id=request_id)
        except TicketingError as err:
            if err.code in _OUTCOME_UNKNOWN:
                command = (
                    f"ticketctl checkout {shlex.quote(args.hold_id)}"
                    f" --payment-ref {shlex.quote(args.payment_ref)}"
                )
                raise _outcome_unknown(err, "checkout", request_id, command) from None
            if err.reason == "HOLD_EXPIRED":
                raise CliError(
                    escape(
                        f"the hold expired and seat(s) {err.metadata.get('seat_ids', '')} were "
                        "taken meanwhile: nothing was booked; refund the payment "
                        f"{args.payment_ref!r}"
                    )
                ) from None
            raise
        event = (await _events_by_id(client, [order.event_id])).get(order.event_id)
    print_order(order, event)
    console.print(f"  payment reference: {escape(order.payment_reference)}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `hold`, `holds list|show|extend|release` and `checkout` to ticketctl."""
    p = sub.add_parser(
        "hold",
        help="hold seats of an event until checkout (CUSTOMER, ADMIN)",
        description="Lock specific seats or the best free places of a section for you, "
        "until `ticketctl checkout`, `holds release` or expiry.",
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
    p.add_argument("--ttl", metavar="DURATION", help="how long, e.g. 5m (default: the server's)")
    _add_request_id(p)
    add_target_args(p)
    p.set_defaults(handler=cmd_hold)

    holds = sub.add_parser("holds", help="holds: list, show, extend, release")
    holds_sub = holds.add_subparsers(dest="holds_command", required=True)

    p = holds_sub.add_parser(
        "list", help="holds newest first (customers see their own; SUPPORT and ADMIN all)"
    )
    p.add_argument("--event", metavar="ID", help="only holds of this event")
    p.add_argument("--customer", metavar="EMAIL", help="only this customer's (SUPPORT, ADMIN)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="show at most N (default 50)")
    add_target_args(p)
    p.set_defaults(handler=cmd_holds_list)

    p = holds_sub.add_parser("show", help="one hold with its seats and countdown")
    p.add_argument("hold_id")
    add_target_args(p)
    p.set_defaults(handler=cmd_holds_show)

    p = holds_sub.add_parser(
        "extend", help="keep an active hold longer (up to the server's maximum from creation)"
    )
    p.add_argument("hold_id")
    p.add_argument("--ttl", metavar="DURATION", help="from now, e.g. 5m (default: the server's)")
    add_target_args(p)
    p.set_defaults(handler=cmd_holds_extend)

    p = holds_sub.add_parser("release", help="give the seats back now")
    p.add_argument("hold_id")
    add_target_args(p)
    p.set_defaults(handler=cmd_holds_release)

    p = sub.add_parser(
        "checkout",
        help="confirm a hold into an order after payment (the hold's customer)",
        description="Turn the hold into a confirmed order, storing the payment provider's "
        "reference. A hold that expired is still confirmed while its seats are free.",
    )
    p.add_argument("hold_id")
    p.add_argument("--payment-ref", required=True, metavar="REF", help="the payment provider's id")
    _add_request_id(p)
    add_target_args(p)
    p.set_defaults(handler=cmd_checkout)
