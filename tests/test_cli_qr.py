"""ticketctl QR tickets (issue 14): `orders show --qr` and `tickets export --png`. The real CLI
in a subprocess against the real in-process server, as in tests/test_cli_gate.py.

No QR decoder is installed (zbar, OpenCV), so the PNG is checked module by module against
segno's own matrix for the ticket's signed code: the printed symbol is exactly that code's QR.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import segno
from PIL import Image

from tests.conftest import RunningServer
from tests.support import PASSWORD, Account, Stubs, best_request, future, small_layout
from tests.test_cli import cli_for, ok
from ticketing.cli.qr import ERROR_LEVEL, PNG_WIDTH, QR_BORDER, QR_SCALE, QR_TOP, qr_left
from ticketing.v1 import booking_pb2


def _dark_modules(image: Image.Image, size: int) -> list[list[int]]:
    """The module grid read back from an exported ticket (1 = dark), `size` modules a side."""
    qr_width = (size + 2 * QR_BORDER) * QR_SCALE
    left = qr_left(image.width, qr_width)
    grid: list[list[int]] = []
    for row in range(size):
        y = QR_TOP + (QR_BORDER + row) * QR_SCALE + QR_SCALE // 2
        line: list[int] = []
        for col in range(size):
            x = left + (QR_BORDER + col) * QR_SCALE + QR_SCALE // 2
            pixel = image.getpixel((x, y))
            assert isinstance(pixel, int)
            line.append(1 if pixel < 128 else 0)
        grid.append(line)
    return grid


async def test_orders_show_qr_and_tickets_export_png(
    running: RunningServer, stubs: Stubs, admin: Account, tmp_path: Path
) -> None:
    venue = await stubs.create_venue(admin, small_layout(name="QR Hall", rows=1, seats=2, ga=3))
    event = await stubs.create_event(admin, venue, max_per_order=10, doors_open_time=future(1))
    buyer = await stubs.register("qr-fan")
    seated = await stubs.booking.BookSeats(
        best_request(event.id, venue.sections[0].id, 2), metadata=buyer.md
    )
    standing = await stubs.booking.BookSeats(
        best_request(event.id, venue.sections[1].id, 1), metadata=buyer.md
    )
    order_id = seated.order.id
    full = await stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=order_id, include_signed_codes=True),
        metadata=buyer.md,
    )
    codes = {t.id: t.signed_code for t in full.order.tickets}
    assert len(codes) == 2 and all(c.startswith("TK1.") for c in codes.values())

    cli = cli_for(running.target, tmp_path / "fan")
    ok(await cli("login", buyer.email, TICKETING_PASSWORD=PASSWORD))
    shown = ok(await cli("orders", "show", order_id, "--qr"))
    for ticket_id in codes:
        assert f"ticket {ticket_id}" in shown.out
    assert "Row A · Seat 1" in shown.out and "Row A · Seat 2" in shown.out
    assert shown.out.count("█") > 100  # the symbols themselves (segno's block characters)
    plain = ok(await cli("orders", "show", order_id))
    assert "█" not in plain.out

    out_dir = tmp_path / "print"
    exported = ok(await cli("tickets", "export", order_id, "--png", str(out_dir)))
    assert "2 ticket(s) written" in exported.out
    files = sorted(out_dir.glob("*.png"))
    assert [f.name for f in files] == [
        "ticket-001-Stalls-Row_A-Seat_1.png",
        "ticket-002-Stalls-Row_A-Seat_2.png",
    ]
    for path, ticket in zip(files, full.order.tickets, strict=True):
        with Image.open(path) as raw:
            assert raw.format == "PNG" and raw.width == PNG_WIDTH
            image = raw.convert("L")
        symbol = segno.make(codes[ticket.id], error=ERROR_LEVEL)
        size = len(symbol.matrix)
        assert image.height >= QR_TOP + (size + 2 * QR_BORDER) * QR_SCALE
        expected = [[1 if m else 0 for m in row] for row in symbol.matrix]
        assert _dark_modules(image, size) == expected

    # A refunded order has no valid ticket to print; someone else's order is refused.
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=standing.order.id, request_id=str(uuid.uuid4()), reason="test"
        ),
        metadata=admin.md,
    )
    none = ok(await cli("tickets", "export", standing.order.id, "--png", str(tmp_path / "x")))
    assert "0 ticket(s) written" in none.out and "1 not VALID" in none.out
    stranger = await stubs.register("qr-stranger")
    other = cli_for(running.target, tmp_path / "stranger")
    ok(await other("login", stranger.email, TICKETING_PASSWORD=PASSWORD))
    denied = await other("tickets", "export", order_id, "--png", str(tmp_path / "y"))
    assert denied.code == 1 and ("PERMISSION_DENIED" in denied.err or "NOT_FOUND" in denied.err)
    assert not (tmp_path / "y").exists()
