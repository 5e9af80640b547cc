"""QR codes for tickets: `ticketctl orders show ORDER --qr` and `ticketctl tickets export`.

What a QR carries is the ticket's signed code (`TK1.…`, docs/offline-gates.md), which a kiosk
can verify without the server; the plain code still works online. Signed codes are given only
to those who may see the order's codes (GetOrder with include_signed_codes), and only for
VALID tickets. segno draws the symbol (error correction M: a creased or smudged print still
scans); Pillow lays out one printable PNG per seat with the event, time, venue and place.
"""

from __future__ import annotations

import argparse
import io
import re
from dataclasses import dataclass
from pathlib import Path

from rich.markup import escape

from ticketing.cli.common import CliError, add_target_args, console, open_client
from ticketing.cli.event_cmds import show_time
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.v1 import booking_pb2, event_pb2

ERROR_LEVEL = "m"
"""segno error correction level for every ticket QR."""

PNG_WIDTH = 800
"""Width of an exported ticket in pixels (about 6.8 cm at 300 dpi)."""
QR_SCALE = 6
"""Pixels per QR module in an exported ticket."""
QR_BORDER = 4
"""Quiet zone around the symbol, in modules (the QR standard's minimum)."""
QR_TOP = 300
"""Where the QR symbol (with its quiet zone) starts, pixels from the top."""


def terminal_qr(text: str) -> str:
    """`text` as a QR code drawn with block characters (segno), for a phone or kiosk camera."""
    import segno

    out = io.StringIO()
    segno.make(text, error=ERROR_LEVEL).terminal(out=out, compact=True)
    return out.getvalue()


def seat_text(ticket: booking_pb2.Ticket) -> str:
    """ "Stalls · Row A · Seat 3", or the section for general admission."""
    seat = ticket.seat_label or (str(ticket.seat_number) if ticket.seat_number else "")
    parts = [ticket.section_name]
    if ticket.row_label:
        parts.append(f"Row {ticket.row_label}")
    if seat:
        parts.append(f"Seat {seat}")
    return " · ".join(parts)


@dataclass(frozen=True)
class TicketFace:
    """What is printed on one ticket besides its QR."""

    event_name: str
    when: str
    venue: str
    seat: str
    ticket_id: str


def ticket_png(face: TicketFace, signed_code: str) -> bytes:
    """One printable ticket as PNG: the event, time, venue and place, then the QR."""
    import segno
    from PIL import Image, ImageDraw, ImageFont

    symbol = io.BytesIO()
    segno.make(signed_code, error=ERROR_LEVEL).save(
        symbol, kind="png", scale=QR_SCALE, border=QR_BORDER
    )
    symbol.seek(0)
    qr = Image.open(symbol).convert("L")
    height = QR_TOP + qr.height + 80
    image = Image.new("L", (max(PNG_WIDTH, qr.width), height), 255)
    draw = ImageDraw.Draw(image)
    big = ImageFont.load_default(size=40)
    small = ImageFont.load_default(size=26)
    y = 30
    for text, font in (
        (face.event_name, big),
        (face.when, small),
        (face.venue, small),
        (face.seat, big),
    ):
        draw.text((40, y), text, fill=0, font=font)
        y += 62 if font is big else 44
    image.paste(qr, (qr_left(image.width, qr.width), QR_TOP))
    draw.text((40, QR_TOP + qr.height + 20), f"ticket {face.ticket_id}", fill=0, font=small)
    out = io.BytesIO()
    image.save(out, format="PNG", dpi=(300, 300))
    return out.getvalue()


def qr_left(image_width: int, qr_width: int) -> int:
    """Where the QR symbol starts horizontally (centred)."""
    return (image_width - qr_width) // 2


async def _order_with_codes(
    args: argparse.Namespace,
) -> tuple[booking_pb2.Order, event_pb2.Event | None]:
    async with open_client(args) as client:
        with ticketing_errors():
            reply = await client.booking.GetOrder(
                booking_pb2.GetOrderRequest(order_id=args.order_id, include_signed_codes=True)
            )
        event: event_pb2.Event | None
        try:
            with ticketing_errors():
                event = (
                    await client.events.GetEvent(
                        event_pb2.GetEventRequest(event_id=reply.order.event_id)
                    )
                ).event
        except TicketingError:
            event = None  # the order is still worth printing without the event's details
    return reply.order, event


def print_qr_codes(order: booking_pb2.Order) -> None:
    """Each VALID ticket's signed code as a terminal QR, under its place."""
    shown = 0
    for ticket in order.tickets:
        if not ticket.signed_code:
            continue
        console.print(f"[bold]{escape(seat_text(ticket))}[/]  ticket {ticket.id}")
        print(terminal_qr(ticket.signed_code))
        shown += 1
    if not shown:
        console.print("[yellow]no valid ticket with a code to show in this order[/]")


def _file_name(index: int, ticket: booking_pb2.Ticket) -> str:
    place = re.sub(r"[^A-Za-z0-9._-]+", "_", seat_text(ticket).replace(" · ", "-"))[:60]
    return f"ticket-{index:03d}-{place}.png"


async def cmd_tickets_export(args: argparse.Namespace) -> int:
    """Write one PNG per VALID ticket of the order into --png DIR."""
    order, event = await _order_with_codes(args)
    written = write_ticket_pngs(order, event, Path(args.png))
    skipped = len(order.tickets) - len(written)
    console.print(
        f"{len(written)} ticket(s) written to {args.png}"
        + (f"; {skipped} not VALID, not exported" if skipped else "")
    )
    return 0


def write_ticket_pngs(
    order: booking_pb2.Order, event: event_pb2.Event | None, directory: Path
) -> list[Path]:
    """One PNG per ticket that has a signed code; returns the files written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create {directory}: {exc.strerror}") from None
    written: list[Path] = []
    for index, ticket in enumerate(order.tickets, start=1):
        if not ticket.signed_code:
            continue
        face = TicketFace(
            event_name=event.name if event else order.event_id,
            when=show_time(event.start_time, event.time_zone) if event else "",
            venue=event.venue_name if event else "",
            seat=seat_text(ticket),
            ticket_id=ticket.id,
        )
        path = directory / _file_name(index, ticket)
        try:
            path.write_bytes(ticket_png(face, ticket.signed_code))
        except OSError as exc:
            raise CliError(f"cannot write {path}: {exc.strerror}") from None
        console.print(f"{path}  {escape(face.seat)}", highlight=False)
        written.append(path)
    return written


async def show_order_qr(args: argparse.Namespace) -> None:
    """For `orders show --qr`: the order's QR codes (after its table)."""
    order, _ = await _order_with_codes(args)
    print_qr_codes(order)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`ticketctl tickets export ORDER --png DIR`."""
    tickets = sub.add_parser("tickets", help="tickets: export printable tickets with QR codes")
    tickets_sub = tickets.add_subparsers(dest="tickets_command", required=True)
    p = tickets_sub.add_parser(
        "export", help="one printable PNG per seat of an order (event, time, venue, seat, QR)"
    )
    p.add_argument("order_id")
    p.add_argument("--png", metavar="DIR", required=True, help="directory to write the PNGs to")
    add_target_args(p)
    p.set_defaults(handler=cmd_tickets_export)
