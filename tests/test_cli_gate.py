"""ticketctl for the gates' trust rules (issue 10): `events create --doors`, `events update`
(doors-open and end), `events staff add/remove/list`. The real CLI in a subprocess against
the real in-process server, as in tests/test_cli.py.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from pathlib import Path

from tests.conftest import RunningServer
from tests.support import PASSWORD, Account, Stubs, small_layout
from tests.test_cli import UUID_RE, cli_for, ok
from ticketing.v1 import common_pb2, event_pb2


async def test_organizer_sets_doors_and_end_and_manages_gate_staff(
    running: RunningServer, stubs: Stubs, admin: Account, tmp_path: Path
) -> None:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="cli-org")
    gate = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="cli-gate")
    customer = await stubs.register("cli-cust")
    venue = await stubs.create_venue(admin, small_layout(name="Cli Gate Hall"))
    cli = cli_for(running.target, tmp_path / "org")
    ok(await cli("login", organizer.email, TICKETING_PASSWORD=PASSWORD))

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")  # the venue's zone: times without offset
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=40)).date().isoformat()
    made = ok(
        await cli(
            *("events", "create", "--venue", venue.id, "--name", "Doors Night"),
            *("--start", f"{day}T20:00", "--doors", f"{day}T18:30", "--end", f"{day}T23:00"),
            *("--currency", "EUR", "--price-all", "1000", "--max-per-order", "4"),
        )
    )
    match = re.search(rf"id: ({UUID_RE})", made.out)
    assert match, made.out
    event_id = match.group(1)
    assert re.search(rf"doors open: {day} 18:30 CES?T", made.out), made.out

    async def get() -> event_pb2.Event:
        return (await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event_id))).event

    event = await get()
    wall = dt.datetime.fromisoformat(f"{day}T18:30").replace(tzinfo=berlin)
    assert event.doors_open_time.ToDatetime(dt.UTC) == wall.astimezone(dt.UTC)

    moved = ok(await cli("events", "update", event_id, "--doors", f"{day}T17:00"))
    assert re.search(rf"doors open: {day} 17:00", moved.out), moved.out
    cleared = ok(await cli("events", "update", event_id, "--clear-doors", "--clear-end"))
    assert "doors open:" not in cleared.out
    event = await get()
    assert not event.HasField("doors_open_time") and not event.HasField("end_time")

    refused = await cli("events", "update", event_id, "--end", f"{day}T19:00")
    assert refused.code == 1 and "INVALID_ARGUMENT" in refused.err
    assert "event.end_time: must be after start_time" in refused.err
    nothing = await cli("events", "update", event_id)
    assert nothing.code == 1 and "nothing to change" in nothing.err

    added = ok(await cli("events", "staff", "add", event_id, gate.user.id))
    assert f"{gate.email} ({gate.user.id}) may work the gates" in added.out
    listed = ok(await cli("events", "staff", "list", event_id))
    assert gate.email in listed.out and gate.user.id in listed.out
    assert "1 assigned to Doors Night" in listed.out
    wrong = await cli("events", "staff", "add", event_id, customer.user.id)
    assert wrong.code == 1 and "NOT_ENTRY_MANAGER" in wrong.err
    removed = ok(await cli("events", "staff", "remove", event_id, gate.user.id))
    assert "no longer works the gates" in removed.out
    again = ok(await cli("events", "staff", "remove", event_id, gate.user.id))
    assert "was not assigned" in again.out
    assert "0 assigned" in ok(await cli("events", "staff", "list", event_id)).out

    # Someone else's event: the server's refusal, readable.
    other = cli_for(running.target, tmp_path / "gate")
    ok(await other("login", gate.email, TICKETING_PASSWORD=PASSWORD))
    denied = await other("events", "staff", "add", event_id, gate.user.id)
    assert denied.code == 1 and "PERMISSION_DENIED" in denied.err
