"""`ticketctl hold`, `holds list/show/extend/release` and `checkout` end to end against the
real in-process server (one ticketctl subprocess per command, as in test_cli_booking)."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.support import Account, Stubs
from tests.test_cli_booking import UUID, Shop, failed, ok, order_id_in, shop, ticketctl
from ticketing.cli.hold_cmds import countdown, parse_duration
from ticketing.v1 import booking_pb2

from google.protobuf.timestamp_pb2 import Timestamp  # isort: skip

pytestmark = pytest.mark.slow

__all__ = ["shop"]  # the fixture, shared


def hold_id_in(out: str) -> str:
    match = re.search(rf"hold ({UUID})", out)
    assert match, out
    return match.group(1)


async def test_hold_show_extend_checkout(running: RunningServer, stubs: Stubs, shop: Shop) -> None:
    ids = f"{shop.seats[0].id},{shop.seats[1].id}"
    out = ok(
        await ticketctl(
            running, shop.buyer, shop.config, "hold", shop.event.id, "--seats", ids, "--ttl", "5m"
        )
    ).out
    hold_id = hold_id_in(out)
    assert "ACTIVE" in out and "left" in out and "25.00" in out
    hold = (
        await stubs.booking.GetHold(
            booking_pb2.GetHoldRequest(hold_id=hold_id), metadata=shop.buyer.md
        )
    ).hold
    assert (hold.expire_time.ToDatetime() - hold.create_time.ToDatetime()).total_seconds() == 300
    listed = ok(await ticketctl(running, shop.buyer, shop.config, "holds", "list")).out
    assert hold_id in listed
    shown = ok(await ticketctl(running, shop.buyer, shop.config, "holds", "show", hold_id)).out
    assert str(shop.seats[1].id) in shown
    extended = ok(
        await ticketctl(
            running, shop.buyer, shop.config, "holds", "extend", hold_id, "--ttl", "10m"
        )
    ).out
    assert "ACTIVE" in extended
    after = (
        await stubs.booking.GetHold(
            booking_pb2.GetHoldRequest(hold_id=hold_id), metadata=shop.buyer.md
        )
    ).hold
    assert after.expire_time.ToDatetime() > hold.expire_time.ToDatetime()
    too_long = failed(
        await ticketctl(
            running, shop.buyer, shop.config, "holds", "extend", hold_id, "--ttl", "30m"
        )
    )
    assert "HOLD_LIMIT_EXCEEDED" in too_long.err + too_long.out
    done = ok(
        await ticketctl(
            running, shop.buyer, shop.config, "checkout", hold_id, "--payment-ref", "ch_42"
        )
    ).out
    assert "left" in done and "ch_42" in done
    order_id = order_id_in(done)
    order = (
        await stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=order_id), metadata=shop.buyer.md
        )
    ).order
    assert order.payment_reference == "ch_42" and len(order.tickets) == 2


async def test_best_hold_and_release(running: RunningServer, stubs: Stubs, shop: Shop) -> None:
    out = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "hold",
            shop.event.id,
            "--best",
            "Standing",
            "--quantity",
            "3",
        )
    ).out
    hold_id = hold_id_in(out)
    released = ok(
        await ticketctl(running, shop.buyer, shop.config, "holds", "release", hold_id)
    ).out
    assert "RELEASED" in released
    late = failed(
        await ticketctl(running, shop.buyer, shop.config, "checkout", hold_id, "--payment-ref", "x")
    )
    assert "HOLD_NOT_ACTIVE" in late.err + late.out


async def test_checkout_of_someone_elses_hold_is_refused(
    running: RunningServer, stubs: Stubs, shop: Shop, tmp_path: Path
) -> None:
    out = ok(
        await ticketctl(
            running,
            shop.buyer,
            shop.config,
            "hold",
            shop.event.id,
            "--seats",
            str(shop.seats[5].id),
        )
    ).out
    hold_id = hold_id_in(out)
    thief: Account = await stubs.register("cli-thief")
    refused = failed(
        await ticketctl(running, thief, tmp_path, "checkout", hold_id, "--payment-ref", "x")
    )
    assert "NOT_HOLD_OWNER" in refused.err + refused.out
    bad = await ticketctl(
        running, shop.buyer, shop.config, "hold", shop.event.id, "--seats", "1", "--ttl", "soon"
    )
    assert bad.code != 0 and "not a duration" in bad.err + bad.out
    assert uuid.UUID(hold_id)


def test_duration_and_countdown_formats() -> None:
    assert (
        parse_duration("5m") == 300 and parse_duration("90s") == 90 and parse_duration("90") == 90
    )
    assert parse_duration("1h") == 3600 and parse_duration("1m30s") == 90
    ts = Timestamp()
    ts.FromSeconds(1_000)
    import datetime as dt

    base = dt.datetime.fromtimestamp(1_000, dt.UTC)
    assert countdown(ts, base - dt.timedelta(seconds=252)) == "4m 12s left"
    assert countdown(ts, base - dt.timedelta(seconds=9)) == "9s left"
    assert countdown(ts, base) == "expired"
