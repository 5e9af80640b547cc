"""docs/partners.md's quickstart script, run as a partner would: a subprocess with only an
API key, against the real server. Its output is checked against the database's view."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.support import Account, Stubs, small_layout, unique_email
from ticketing.v1 import booking_pb2, common_pb2, partner_pb2

EXAMPLE = Path(__file__).resolve().parent.parent / "clients" / "examples" / "partner_quickstart.py"


@pytest.mark.slow  # a subprocess
async def test_partner_quickstart_example_sells_and_reconciles(
    running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="ex-org")
    venue = await stubs.create_venue(admin, small_layout(name="Example Hall", ga=20))
    event = await stubs.create_event(organizer, venue, name="Example Night")
    partner = (
        await stubs.partners.CreatePartner(
            partner_pb2.CreatePartnerRequest(
                display_name="Example Reseller", contact_email=unique_email("ex")
            ),
            metadata=admin.md,
        )
    ).partner
    key = await stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(partner_id=partner.id, display_name="example"),
        metadata=admin.md,
    )
    env = {**os.environ, "TICKETING_API_KEY": key.secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--target",
        running.target,
        "--event",
        event.id,
        "--section",
        venue.sections[1].id,
        "--customer",
        "cust-42",
        "--email",
        "buyer@example.test",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["partner_id"] == partner.id
    assert result["customer"] == "cust-42"
    assert len(result["ticket_codes"]) == 2 and all(result["ticket_codes"])
    assert result["orders_of_customer"] == [result["order_id"]]
    order = await stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=result["order_id"]), metadata=admin.md
    )
    assert order.order.sales_channel == booking_pb2.SALES_CHANNEL_PARTNER
    assert order.order.partner_id == partner.id
    assert order.order.payment_reference.startswith("psp-")
