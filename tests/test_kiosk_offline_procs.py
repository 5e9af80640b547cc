"""The offline kiosk with real processes: `ticketd` killed under a running kiosk, and the kiosk
itself killed (-9) in the middle of its upload. Every call goes through the process server
(its signing keys and device credentials are sealed with its own secret); every wait is
bounded."""

from __future__ import annotations

import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from grpc import aio

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.procs import ServerProcess, ticketd_process
from tests.support import Account, Stubs, best_request, future, small_layout
from tests.test_kiosk import UUID_RE, kiosk, kiosk_env
from tests.test_offline_gates import enrolled, signed_tickets
from ticketing.kiosk.device import DeviceFile
from ticketing.pagination import paginate
from ticketing.v1 import auth_pb2, booking_pb2, gate_pb2

pytestmark = pytest.mark.slow


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ticketd_process(database_url, tmp_path / "ticketd", shutdown_grace_s=1)
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


async def _admin(stubs: Stubs) -> Account:
    login = await stubs.auth.Login(
        auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD)
    )
    return Account(login.user, login.access_token, ADMIN_EMAIL, ADMIN_PASSWORD)


async def _gate_setup(
    server: ServerProcess, tmp_path: Path, orders: list[int], gate: str
) -> tuple[str, list[booking_pb2.Ticket], Path]:
    """An event with open gates, `orders` standing orders of those sizes, and a device of
    `gate` saved to a file; returns (event id, tickets with signed codes, device file)."""
    channel = aio.insecure_channel(server.target)
    try:
        stubs = Stubs(channel)
        admin = await _admin(stubs)
        venue = await stubs.create_venue(admin, small_layout(rows=1, seats=1, ga=sum(orders)))
        event = await stubs.create_event(
            admin, venue, max_per_order=100, doors_open_time=future(-0.01)
        )
        buyer = await stubs.register("procs-fan")
        tickets: list[booking_pb2.Ticket] = []
        for n in orders:
            order = await stubs.booking.BookSeats(
                best_request(event.id, venue.sections[1].id, n), metadata=buyer.md
            )
            tickets += await signed_tickets(stubs, buyer, order.order.id)
        device_id, cred = await enrolled(stubs, admin, event.id, gate)
    finally:
        await channel.close(None)
    path = tmp_path / f"device-{gate}.json"
    DeviceFile(device_id, event.id, gate, f"kiosk {gate}", cred).save(path)
    return event.id, tickets, path


async def _server_view(
    server: ServerProcess, event_id: str
) -> tuple[gate_pb2.GetGateStatsResponse, list[gate_pb2.Scan]]:
    channel = aio.insecure_channel(server.target)
    try:
        stubs = Stubs(channel)
        admin = await _admin(stubs)
        stats = await stubs.gate.GetGateStats(
            gate_pb2.GetGateStatsRequest(event_id=event_id), metadata=admin.md
        )
        pages = paginate(
            stubs.gate.ListScans,
            gate_pb2.ListScansRequest(event_id=event_id),
            lambda p: p.scans,
            metadata=admin.md,
        )
        return stats, [s async for s in pages]
    finally:
        await channel.close(None)


def _entries(path: Path) -> list[dict[str, object]]:
    # A kill -9 may leave half a line at the end; nothing else may be unreadable.
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except ValueError:
            assert i == len(lines) - 1, "only the last line may be torn"
    return out


ARGS = ("--attempt-timeout", "1", "--health-interval", "0.3", "--connect-timeout", "10")


async def test_server_killed_mid_run_the_kiosk_admits_offline_and_uploads_when_it_returns(
    tmp_path: Path, server: ServerProcess
) -> None:
    event_id, tickets, device = await _gate_setup(server, tmp_path, [5], "west")
    journal = tmp_path / "west.jsonl"
    args = ("--device", str(device), "--journal", str(journal), *ARGS)
    async with kiosk(tmp_path, server.target, event_id, *args, env=kiosk_env(tmp_path)) as run:
        await run.feed(tickets[0].signed_code)
        await run.expect(rf"^ADMIT {UUID_RE} Standing$")
        await server.kill()
        await run.expect(r"^STATUS OFFLINE waiting=0$")
        await run.feed(tickets[1].signed_code, tickets[2].signed_code, tickets[3].code)
        await run.expect(rf"^ADMIT {UUID_RE} Standing$")
        await run.expect(r"^OFFLINE waiting=1$")
        await run.expect(r"^OFFLINE waiting=2$")
        await run.expect(rf"^REJECT PLAIN_CODE {UUID_RE} PLAIN CODE")
        await run.feed(tickets[1].signed_code)  # the same ticket again, still offline
        await run.expect(rf"^REJECT ALREADY_USED {UUID_RE} ALREADY USED at west")
        await server.start()  # same port, same database
        await run.expect(r"^STATUS ONLINE waiting=2$")
        await run.expect(r"^UPLOAD accepted=2 conflict=0 revoked=0 invalid=0 waiting=0$")
        await run.feed(tickets[3].code)  # online again: the plain code is checked by the server
        await run.expect(rf"^ADMIT {UUID_RE} Standing$")
        code, err = await run.finish()
    assert code == 0, err
    assert "OFFLINE admitted=2 waiting=0" in run.lines
    assert run.lines[-1] == (
        "SUMMARY admitted=4 rejected=2 unresolved=0 empty_lines=0 ALREADY_USED=1 PLAIN_CODE=1"
    )
    entries = _entries(journal)
    offline = [e["scan_id"] for e in entries if e["type"] == "result" and e.get("offline")]
    uploads = {e["scan_id"]: e for e in entries if e["type"] == "upload"}
    admitted_offline = [
        e["scan_id"]
        for e in entries
        if e["type"] == "result" and e.get("offline") and e["result"] == "ADMITTED"
    ]
    assert len(offline) == 4 and set(uploads) == set(admitted_offline)
    stats, scans = await _server_view(server, event_id)
    west = {g.gate_id: g for g in stats.gates}["west"]
    assert (west.admitted, west.offline_admitted, west.conflicts) == (4, 2, 0)
    assert stats.tickets_outstanding == 1  # the fifth, for the restart below
    # The scan log has the kiosk's scan ids: its online scans and its uploaded ones.
    assert set(admitted_offline) <= {s.scan_id for s in scans}

    # Restarted while the server is away: the saved kit lets it start OFFLINE and admit.
    await server.kill()
    env = kiosk_env(tmp_path)
    async with kiosk(
        tmp_path, server.target, event_id, *args, "--connect-timeout", "1", env=env
    ) as run:
        await run.expect(r"^WARN .*starting OFFLINE with the saved kit$")
        await run.expect(r"^STATUS OFFLINE waiting=0$")
        await run.feed(tickets[4].signed_code, tickets[0].signed_code)
        await run.expect(r"^OFFLINE waiting=1$")
        await run.expect(rf"^REJECT ALREADY_USED {UUID_RE} ALREADY USED at west")
        code, err = await run.finish()
    assert code == 0, err
    assert "OFFLINE admitted=1 waiting=1" in run.lines
    await server.start()
    async with kiosk(tmp_path, server.target, event_id, *args, env=env) as run:
        await run.expect(r"^INFO 1 offline scan\(s\) from an earlier run to upload$")
        await run.expect(r"^UPLOAD accepted=1 conflict=0 revoked=0 invalid=0 waiting=0$")
        code, err = await run.finish()
    assert code == 0, err
    stats, _ = await _server_view(server, event_id)
    assert (stats.total_admitted, stats.total_offline_admitted, stats.tickets_outstanding) == (
        5,
        3,
        0,
    )


async def test_kiosk_killed_mid_upload_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, server: ServerProcess
) -> None:
    # 150 offline admissions: two upload batches (100 + 50).
    event_id, tickets, device = await _gate_setup(server, tmp_path, [75, 75], "dock")
    journal = tmp_path / "dock.jsonl"
    args = ("--device", str(device), "--journal", str(journal), *ARGS)
    env = kiosk_env(tmp_path)
    async with kiosk(tmp_path, server.target, event_id, *args, env=env) as run:
        await run.expect(r"^INFO gate=dock ")
        await server.kill()
        await run.expect(r"^STATUS OFFLINE waiting=0$")
        await run.feed(*(t.signed_code for t in tickets))
        await run.expect(rf"^OFFLINE waiting={len(tickets)}$")
        await server.start()
        await run.expect(r"^UPLOAD accepted=100 ")
        run.proc.send_signal(signal.SIGKILL)  # while the second batch is on its way
        await run.proc.wait()
    first = _entries(journal)
    uploaded_before = {e["scan_id"] for e in first if e["type"] == "upload"}
    assert 100 <= len(uploaded_before) <= len(tickets)

    async with kiosk(tmp_path, server.target, event_id, *args, env=env) as run:
        if len(uploaded_before) < len(tickets):
            await run.expect(r"^UPLOAD accepted=\d+ conflict=0 revoked=0 invalid=0 waiting=0$")
        code, err = await run.finish()
    assert code == 0, err
    entries = _entries(journal)
    admitted = {
        e["scan_id"]
        for e in entries
        if e["type"] == "result" and e.get("offline") and e["result"] == "ADMITTED"
    }
    uploads = Counter(e["scan_id"] for e in entries if e["type"] == "upload")
    assert len(admitted) == len(tickets)
    assert set(uploads) == admitted and set(uploads.values()) == {1}
    assert {e["upload_result"] for e in entries if e["type"] == "upload"} == {"ACCEPTED"}
    stats, scans = await _server_view(server, event_id)
    assert (stats.total_admitted, stats.total_offline_admitted, stats.total_conflicts) == (
        len(tickets),
        len(tickets),
        0,
    )
    assert stats.tickets_outstanding == 0
    assert len(scans) == len(tickets) and {s.scan_id for s in scans} == admitted
