"""`ticketctl partners ...` and `events allocate|allocations|release` end to end: the real
CLI in a subprocess against the real in-process server (the harness of tests/test_cli.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import RunningServer
from tests.support import Account, Stubs, small_layout, unique_email
from tests.test_cli import UUID_RE, admin_cli, ok
from tests.test_cli import Ticketctl as Cli
from ticketing.v1 import common_pb2, partner_pb2

pytestmark = pytest.mark.slow

__all__ = ["admin_cli"]  # the fixture, shared


def first_id(pattern: str, out: str) -> str:
    match = re.search(pattern.format(id=f"({UUID_RE})"), out)
    assert match, out
    return match.group(1)


async def test_partners_and_keys_from_the_command_line(
    running: RunningServer, stubs: Stubs, admin: Account, admin_cli: Cli, tmp_path: Path
) -> None:
    created = ok(
        await admin_cli(
            "partners", "create", "--name", "Cli Reseller", "--email", unique_email("cli-partner")
        )
    )
    partner_id = first_id(r"partner {id}", created.out)
    assert partner_id in ok(await admin_cli("partners", "list", "--limit", "500")).out

    key_out = ok(
        await admin_cli("partners", "keys", "create", "--partner", partner_id, "--name", "cli key")
    ).out
    secret = re.search(r"^(tkp_\S+)$", key_out, re.M)
    assert secret, key_out
    key_id = first_id(r"API key {id}", key_out)
    # As the partner (TICKETING_API_KEY): its own keys, no --partner needed.
    mine = ok(await admin_cli("partners", "keys", "list", TICKETING_API_KEY=secret.group(1)))
    assert key_id in mine.out and "cli key" in mine.out
    second = ok(
        await admin_cli(
            "partners", "keys", "create", "--name", "rotated", TICKETING_API_KEY=secret.group(1)
        )
    ).out
    ok(await admin_cli("partners", "keys", "revoke", key_id, TICKETING_API_KEY=secret.group(1)))
    refused = await admin_cli("partners", "keys", "list", TICKETING_API_KEY=secret.group(1))
    assert refused.code == 1 and "API_KEY_REVOKED" in refused.err

    suspended = ok(await admin_cli("partners", "suspend", partner_id)).out
    assert "suspended" in suspended
    new_secret = re.search(r"^(tkp_\S+)$", second, re.M)
    assert new_secret, second
    refused = await admin_cli("partners", "keys", "list", TICKETING_API_KEY=new_secret.group(1))
    assert refused.code == 1 and "PARTNER_SUSPENDED" in refused.err
    ok(await admin_cli("partners", "activate", partner_id))
    ok(await admin_cli("partners", "keys", "list", TICKETING_API_KEY=new_secret.group(1)))
    closed = ok(
        await admin_cli("partners", "update", partner_id, "--no-public-sales", "--rate", "20")
    ).out
    assert "allocations only" in closed and "20/s" in closed
    reopened = ok(
        await admin_cli("partners", "update", partner_id, "--public-sales", "--rate", "0")
    )
    assert "may sell publicly" in reopened.out and "default/s" in reopened.out
    nothing = await admin_cli("partners", "update", partner_id)
    assert nothing.code != 0 and "INVALID_ARGUMENT" in nothing.err


async def test_allocations_from_the_command_line(
    running: RunningServer, stubs: Stubs, admin: Account, admin_cli: Cli
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="cli-al")
    venue = await stubs.create_venue(admin, small_layout(name="Cli Allocation Hall", ga=10))
    event = await stubs.create_event(organizer, venue, name="Cli Allocation")
    partner = (
        await stubs.partners.CreatePartner(
            partner_pb2.CreatePartnerRequest(
                display_name="Cli Allocated", contact_email=unique_email("cli-al")
            ),
            metadata=admin.md,
        )
    ).partner
    made = ok(
        await admin_cli(
            "events",
            "allocate",
            "--event",
            event.id,
            "--partner",
            partner.id,
            "--section",
            venue.sections[1].id,
            "--quantity",
            "3",
            "--release",
            "2099-01-01T00:00:00",
        )
    )
    allocation_id = first_id(r"allocation {id}: 3 places", made.out)
    listed = ok(await admin_cli("events", "allocations", "--event", event.id)).out
    assert allocation_id in listed and partner.id in listed
    released = ok(await admin_cli("events", "release", allocation_id)).out
    assert f"allocation {allocation_id} released" in released
    bad = await admin_cli("events", "allocate", "--event", event.id, "--partner", partner.id)
    assert bad.code == 1 and "--seat" in bad.err
