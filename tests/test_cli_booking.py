"""`ticketctl book` and `ticketctl orders ...` end to end against the real in-process server.

Each run is a real subprocess (the server lives on this event loop and must keep serving while
the CLI waits), started through `ticketing.cli.main.main` with `booking_cmds` registered, so
the output and exit codes are the ones a user sees, error handling included. Outcomes are
checked twice: in the printed text and in the server's own state.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import Account, Stubs, future, small_layout
from ticketing.v1 import booking_pb2, event_pb2, venue_pb2

# Slow tier: one ticketctl process per command.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# ticketctl with the booking commands, whether or not main.py lists them yet.
ENTRY = (
    "import sys\n"
    "from ticketing.cli import booking_cmds, main\n"
    "if booking_cmds not in main.COMMAND_MODULES:\n"
    "    main.COMMAND_MODULES.append(booking_cmds)\n"
    "sys.exit(main.main(sys.argv[1:]))\n"
)


@dataclass
class CliResult:
    code: int
    out: str
    err: str


async def ticketctl(
    running: RunningServer, who: Account, config: Path, *args: str, target: str | None = None
) -> CliResult:
    """Run `ticketctl ARGS` signed in as `who` (TICKETING_TOKEN), colour off, 200 columns."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TICKETING_", "TICKETCTL_")) and k not in ("NO_COLOR", "FORCE_COLOR")
    }
    env |= {
        "TICKETING_TARGET": target or running.target,
        "TICKETING_TOKEN": who.token,
        "TICKETCTL_CONFIG_DIR": str(config),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "PYTHONIOENCODING": "utf-8",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        ENTRY,
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def ok(result: CliResult) -> CliResult:
    assert result.code == 0, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


def failed(result: CliResult) -> CliResult:
    assert result.code == 1, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


def order_id_in(out: str) -> str:
    match = re.search(rf"order ({UUID})", out)
    assert match, out
    return match.group(1)


def line_with(out: str, *parts: str) -> str:
    """The one output line that holds all of `parts`."""
    lines = [line for line in out.splitlines() if all(p in line for p in parts)]
    assert len(lines) == 1, (parts, out)
    return lines[0]


@dataclass
class Shop:
    event: event_pb2.Event
    seats: list[event_pb2.Seat]
    buyer: Account
    config: Path


@pytest.fixture
async def shop(stubs: Stubs, admin: Account, tmp_path: Path) -> Shop:
    """A 2x5 reserved + 4 standing event at 12.50 EUR, and a fresh customer."""
    venue = await stubs.create_venue(admin, small_layout(name="Cli Hall", rows=2, seats=5, ga=4))
    event = await stubs.create_event(admin, venue, price=1250, name="Cli Night")
    return Shop(event, await stubs.all_seats(event.id), await stubs.register("cli-buyer"), tmp_path)


async def server_order(stubs: Stubs, who: Account, order_id: str) -> booking_pb2.Order:
    request = booking_pb2.GetOrderRequest(order_id=order_id)
    return (await stubs.booking.GetOrder(request, metadata=who.md)).order


async def test_book_show_list_refund(running: RunningServer, stubs: Stubs, shop: Shop) -> None:
    a1, a3 = shop.seats[0], shop.seats[2]
    booked = ok(
        await ticketctl(
            running, shop.buyer, shop.config, "book", shop.event.id, "--seats", f"{a3.id},{a1.id}"
        )
    )
    order_id = order_id_in(booked.out)
    order = await server_order(stubs, shop.buyer, order_id)
    assert order.status == booking_pb2.ORDER_STATUS_CONFIRMED
    assert sorted(t.seat_id for t in order.tickets) == [a1.id, a3.id]
    assert booked.out.startswith(f"order {order_id}  CONFIRMED")
    assert "Cli Night at Cli Hall" in booked.out
    assert "total: 25.00 EUR  (2 tickets)" in booked.out
    for ticket in order.tickets:
        row = line_with(booked.out, ticket.code)
        assert re.search(rf"Stalls\s+│?\s*A\s+│?\s*{ticket.seat_label}\s", row), row
        assert "12.50 EUR" in row and "VALID" in row

    shown = ok(await ticketctl(running, shop.buyer, shop.config, "orders", "show", order_id))
    assert order_id_in(shown.out) == order_id
    assert all(t.code in shown.out for t in order.tickets)
    assert f"request id: {order.request_id}" in shown.out

    listed = ok(await ticketctl(running, shop.buyer, shop.config, "orders", "list"))
    row = line_with(listed.out, order_id)
    assert "Cli Night" in row and "CONFIRMED" in row and "25.00 EUR" in row

    refunded = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "orders",
            "refund",
            order_id,
            "--reason",
            "plans changed",
        )
    )
    assert refunded.out.startswith(f"order {order_id}  REFUNDED")
    assert "plans changed" in refunded.out
    assert refunded.out.count("VOID") == 2
    after = await server_order(stubs, shop.buyer, order_id)
    assert after.status == booking_pb2.ORDER_STATUS_REFUNDED
    assert after.refund_reason == "plans changed"
    sold = await stubs.all_seats(shop.event.id, status=event_pb2.SEAT_STATUS_SOLD)
    assert sold == []


async def test_best_available_by_section_name_and_list_filters(
    running: RunningServer, stubs: Stubs, shop: Shop
) -> None:
    standing = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "book",
            shop.event.id,
            "--best",
            "standing",
            "--quantity",
            "3",
        )
    )
    ga = await server_order(stubs, shop.buyer, order_id_in(standing.out))
    assert len(ga.tickets) == 3 and {t.section_name for t in ga.tickets} == {"Standing"}
    assert "total: 37.50 EUR  (3 tickets)" in standing.out
    # General admission has no row or seat: both show as "-".
    assert re.search(r"Standing\s+│?\s*-\s+│?\s*-\s", line_with(standing.out, ga.tickets[0].code))

    stalls_id = shop.event.sections[0].section_id
    by_id = ok(
        await ticketctl(
            running, shop.buyer, shop.config, "book", shop.event.id, "--best", stalls_id
        )
    )
    one = await server_order(stubs, shop.buyer, order_id_in(by_id.out))
    assert [(t.row_label, t.seat_number) for t in one.tickets] == [("A", 1)]

    limited = ok(
        await ticketctl(running, shop.buyer, shop.config, "orders", "list", "--limit", "1")
    )
    assert one.id in limited.out and ga.id not in limited.out  # newest first
    assert "(first 1 shown; raise --limit for more)" in limited.out

    elsewhere = str(uuid.uuid4())
    empty = ok(
        await ticketctl(running, shop.buyer, shop.config, "orders", "list", "--event", elsewhere)
    )
    assert empty.out.strip() == "no orders"


async def test_zero_decimal_currency_has_no_decimals(
    running: RunningServer, stubs: Stubs, admin: Account, shop: Shop
) -> None:
    venue = await stubs.create_venue(
        admin,
        venue_pb2.Venue(
            name="Tokyo Box",
            time_zone="Asia/Tokyo",
            sections=[
                venue_pb2.Section(
                    name="Floor", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=5
                )
            ],
        ),
    )
    event = (
        await stubs.events.CreateEvent(
            event_pb2.CreateEventRequest(
                venue_id=venue.id,
                name="Yen Night",
                start_time=future(10),
                currency_code="JPY",
                section_prices={venue.sections[0].id: 4500},
                max_tickets_per_order=4,
            ),
            metadata=admin.md,
        )
    ).event
    result = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "book",
            event.id,
            "--best",
            "Floor",
            "--quantity",
            "2",
        )
    )
    assert "total: 9000 JPY  (2 tickets)" in result.out
    assert "4500 JPY" in result.out and "45.00" not in result.out


async def test_refund_of_someone_elses_order_is_denied(
    running: RunningServer, stubs: Stubs, shop: Shop
) -> None:
    booked = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "book",
            shop.event.id,
            "--seats",
            str(shop.seats[4].id),
        )
    )
    order_id = order_id_in(booked.out)
    stranger = await stubs.register("cli-stranger")
    denied = failed(
        await ticketctl(
            running, stranger, shop.config, "orders", "refund", order_id, "--reason", "mine now"
        )
    )
    assert denied.out == ""
    assert denied.err.splitlines()[0].startswith("PERMISSION_DENIED: ")
    assert (await server_order(stubs, shop.buyer, order_id)).status == (
        booking_pb2.ORDER_STATUS_CONFIRMED
    )
    hidden = failed(await ticketctl(running, stranger, shop.config, "orders", "show", order_id))
    assert hidden.err.startswith("PERMISSION_DENIED: ")


async def test_refusals_are_one_readable_error(
    running: RunningServer, stubs: Stubs, shop: Shop
) -> None:
    seat = shop.seats[5]
    ok(
        await ticketctl(
            running, shop.buyer, shop.config, "book", shop.event.id, "--seats", str(seat.id)
        )
    )
    rival = await stubs.register("cli-rival")
    taken = failed(
        await ticketctl(running, rival, shop.config, "book", shop.event.id, "--seats", str(seat.id))
    )
    assert taken.err.startswith("FAILED_PRECONDITION: ")
    assert "reason: SEAT_UNAVAILABLE" in taken.err
    assert f"SEAT {seat.id}: already sold" in taken.err

    for args, message in [
        (("--best", "Balcony"), "no section 'Balcony' in event"),
        (("--seats", "12,x"), "--seats: 'x' is not a seat id"),
        (("--seats", "12", "--quantity", "2"), "--quantity goes with --best"),
    ]:
        result = failed(await ticketctl(running, rival, shop.config, "book", shop.event.id, *args))
        assert message in result.err, result.err
        assert result.out == ""


async def test_request_id_makes_a_rerun_return_the_same_order(
    running: RunningServer, stubs: Stubs, shop: Shop
) -> None:
    request_id = str(uuid.uuid4())
    args = ("book", shop.event.id, "--seats", str(shop.seats[6].id), "--request-id", request_id)
    first = ok(await ticketctl(running, shop.buyer, shop.config, *args))
    again = ok(await ticketctl(running, shop.buyer, shop.config, *args))
    assert order_id_in(first.out) == order_id_in(again.out)
    async with running.engine.connect() as conn:
        count = (
            await conn.execute(
                text("SELECT count(*) FROM orders WHERE customer_id = :c AND request_id = :r"),
                {"c": uuid.UUID(shop.buyer.user.id), "r": uuid.UUID(request_id)},
            )
        ).scalar_one()
    assert count == 1


async def test_unknown_outcome_tells_how_to_retry_safely(
    running: RunningServer, stubs: Stubs, shop: Shop
) -> None:
    # A port nobody listens on: the call fails UNAVAILABLE, so whether it booked is unknown.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    seat = str(shop.seats[7].id)
    lost = failed(
        await ticketctl(
            running, shop.buyer, shop.config, "book", shop.event.id, "--seats", seat, target=dead
        )
    )
    assert lost.err.startswith("UNAVAILABLE: ")
    assert "the booking may or may not have happened" in lost.err
    command = lost.err.strip().splitlines()[-1].split()
    assert command[:5] == ["ticketctl", "book", shop.event.id, "--seats", seat]
    assert command[5] == "--request-id" and uuid.UUID(command[6])
    # The suggested command, run twice against the live server, books exactly once.
    first = ok(await ticketctl(running, shop.buyer, shop.config, *command[1:]))
    again = ok(await ticketctl(running, shop.buyer, shop.config, *command[1:]))
    order = await server_order(stubs, shop.buyer, order_id_in(first.out))
    assert order_id_in(again.out) == order.id and order.request_id == command[6]
