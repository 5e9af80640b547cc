"""The kiosk's offline half (issue 14) against real servers: enrollment, automatic switching,
local verdicts, upload on reconnect, conflicts between kiosks, device scope.

The `Kiosk` object runs in the test's loop against an in-process server started on a fixed
port, so the test can stop it (the kiosk goes offline by itself) and start another on the same
port and database (the kiosk comes back by itself). The command line (`--enroll`, the saved
credential, a revoked device) runs as a real subprocess. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import stat
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

from grpc_health.v1 import health_pb2_grpc

from scripts.benchlib.process import free_port
from tests.conftest import RunningServer
from tests.support import Account, Stubs
from tests.test_kiosk import kiosk_env
from tests.test_offline_gates import device_md, enrolled, open_event, signed_tickets, unpadded
from ticketd.app import TicketServer, build_components
from ticketd.db.database import Database, PoolOptions
from ticketing.client import Client, connect
from ticketing.kiosk.device import DeviceFile, device_path
from ticketing.kiosk.journal import Journal
from ticketing.kiosk.main import CHANNEL_OPTIONS, kit_path_for
from ticketing.kiosk.offline import OfflineKit
from ticketing.kiosk.switching import Link, Mode
from ticketing.kiosk.validation import Kiosk, RetryPolicy
from ticketing.kiosk.views import Outcome
from ticketing.v1 import booking_pb2, common_pb2, gate_pb2

if TYPE_CHECKING:
    from ticketing.v1 import gate_pb2_grpc

R = gate_pb2
WAIT = 20.0


@contextlib.asynccontextmanager
async def server_on(running: RunningServer, port: int) -> AsyncIterator[None]:
    """Another in-process server on the test database at 127.0.0.1:`port` (same secrets, so
    device credentials and signing keys work), stopped at the end."""
    settings = running.components.settings
    db = Database(running.components.db.url, PoolOptions(pool_size=4, lock_timeout_ms=5000))
    server = TicketServer(build_components(settings, db, settings.jwt_secret or ""))
    await server.start(f"127.0.0.1:{port}")
    try:
        yield
    finally:
        await server.stop(0)
        await db.dispose()


class Screen:
    """Records what a screen would show besides scans."""

    def __init__(self) -> None:
        self.modes: list[Mode] = []
        self.uploads: list[tuple[dict[str, int], int]] = []
        self.revoked = 0

    def link_changed(self, reachable: bool, detail: str) -> None:
        pass

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        pass

    def mode_changed(self, mode: Mode, waiting: int) -> None:
        self.modes.append(mode)

    def uploaded(self, results: Counter[str], waiting: int) -> None:
        self.uploads.append((dict(results), waiting))

    def device_revoked(self) -> None:
        self.revoked += 1


def device_kiosk(
    target: str, credential: str, event_id: str, gate: str, journal: Path
) -> tuple[Kiosk, Client, Screen]:
    client = connect(target, device_credential=credential, timeout=2, options=CHANNEL_OPTIONS)
    kit_path = kit_path_for(journal)
    screen = Screen()
    kiosk = Kiosk(
        client.gate,
        Journal.open(journal),
        event_id=event_id,
        gate_id=gate,
        observer=screen,
        policy=RetryPolicy(attempt_timeout=1, budget=3),
        health=health_pb2_grpc.HealthStub(client.channel),
        kit=OfflineKit.load(kit_path, event_id),
        kit_path=kit_path,
    )
    return kiosk, client, screen


async def until(condition: object, what: str, timeout: float = WAIT) -> None:
    assert callable(condition)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def reencode(raw: bytes) -> str:
    return "TK1." + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def journal_entries(path: Path, kind: str) -> list[dict[str, object]]:
    entries = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    return [e for e in entries if e["type"] == kind]


async def test_offline_kiosk_admits_valid_codes_refuses_bad_ones_and_uploads_on_reconnect(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 4)
    _, others, _, _ = await open_event(stubs, admin, 1)
    _, cred = await enrolled(stubs, admin, event_id, "north")
    # Rotation revokes the first signed codes (REISSUED); the fresh ones admit.
    await stubs.booking.RotateTicketCodes(
        booking_pb2.RotateTicketCodesRequest(order_id=order_id, request_id=str(uuid.uuid4())),
        metadata=buyer.md,
    )
    fresh = await signed_tickets(stubs, buyer, order_id)
    port = free_port()
    journal = tmp_path / "north.jsonl"
    async with server_on(running, port):
        kiosk, client, screen = device_kiosk(f"127.0.0.1:{port}", cred, event_id, "north", journal)
        assert await kiosk.sync() and kiosk.offline_ready
        assert kiosk.kit is not None and len(kiosk.kit.reissued) == 4
        assert stat.S_IMODE(os.stat(kit_path_for(journal)).st_mode) == 0o600
        online = await kiosk.scan(fresh[3].signed_code)
        assert online.admitted and not online.offline
    try:
        # The server is gone: the first failed call switches the kiosk offline, no operator.
        first = await kiosk.scan(fresh[0].signed_code)
        assert first.admitted and first.offline and first.seat is not None
        assert screen.modes == [Mode.OFFLINE] and kiosk.link.offline
        assert kiosk.counts.waiting == 1
        body = bytearray(unpadded(fresh[1].signed_code[4:]))
        body[60] ^= 1
        tampered = reencode(bytes(body))
        body = bytearray(unpadded(fresh[1].signed_code[4:]))
        body[1:3] = (99).to_bytes(2, "big")
        wrong_key = reencode(bytes(body))
        refusals = {
            fresh[0].signed_code: Outcome.ALREADY_USED,  # admitted here offline
            fresh[3].signed_code: Outcome.ALREADY_USED,  # admitted here online
            tampered: Outcome.FORGED,
            wrong_key: Outcome.FORGED,
            tickets[1].signed_code: Outcome.REVOKED,
            others[0].signed_code: Outcome.WRONG_EVENT,
            fresh[1].code: Outcome.PLAIN_CODE,
        }
        for code, outcome in refusals.items():
            view = await kiosk.scan(code)
            assert (view.outcome, view.offline) == (outcome, True), code
        kiosk.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=60)
        assert (await kiosk.scan(fresh[1].signed_code)).outcome is Outcome.EVENT_OVER
        kiosk.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(days=60)
        assert (await kiosk.scan(fresh[1].signed_code)).outcome is Outcome.NOT_YET_OPEN
        kiosk.clock = lambda: dt.datetime.now(dt.UTC)
        assert (await kiosk.scan(fresh[1].signed_code)).admitted
        assert kiosk.counts.waiting == 2 and kiosk.counts.offline_admitted == 2
        waiting = kiosk.journal.waiting_uploads()

        async with server_on(running, port):
            # A previous upload of the first reached the server, but its answer was lost.
            w = waiting[0]
            ts = R.OfflineScan(scan_id=w.scan_id, code=w.code)
            ts.scan_time.FromDatetime(dt.datetime.fromisoformat(w.scan_time))
            await stubs.gate.UploadOfflineScans(
                R.UploadOfflineScansRequest(event_id=event_id, gate_id="north", scans=[ts]),
                metadata=device_md(cred),
            )
            maintain = asyncio.create_task(kiosk.maintain(0.2, check_timeout=0.5))
            try:
                await until(lambda: kiosk.journal.waiting_count == 0, "the upload")
            finally:
                maintain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await maintain
        assert screen.modes == [Mode.OFFLINE, Mode.ONLINE]
        assert kiosk.upload_results == {"ACCEPTED": 2} and kiosk.counts.waiting == 0
        uploads = {e["scan_id"]: e for e in journal_entries(journal, "upload")}
        assert set(uploads) == {w.scan_id for w in waiting}
        assert uploads[waiting[0].scan_id]["repeat"] is True  # nothing counted twice
        assert uploads[waiting[1].scan_id]["repeat"] is False
    finally:
        kiosk.journal.close()
        await client.close()
    stats = await stubs.gate.GetGateStats(
        R.GetGateStatsRequest(event_id=event_id), metadata=admin.md
    )
    north = {g.gate_id: g for g in stats.gates}["north"]
    assert (north.admitted, north.offline_admitted, north.conflicts) == (3, 2, 0)
    assert stats.tickets_outstanding == 1


async def test_two_offline_kiosks_admit_one_ticket_one_accepted_one_conflict(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, _, _ = await open_event(stubs, admin, 1)
    port = free_port()
    target = f"127.0.0.1:{port}"
    kiosks: list[tuple[Kiosk, Client, Screen]] = []
    for gate in ("north", "south"):
        _, cred = await enrolled(stubs, admin, event_id, gate)
        kiosks.append(device_kiosk(target, cred, event_id, gate, tmp_path / f"{gate}.jsonl"))
    try:
        async with server_on(running, port):
            for k, _, _ in kiosks:
                assert await k.sync()
        for k, _, _ in kiosks:
            view = await k.scan(tickets[0].signed_code)
            assert view.admitted and view.offline
        async with server_on(running, port):
            for k, _, _ in kiosks:  # north first: its admission is the one that counts
                for _ in range(100):  # until the channel has reconnected (bounded)
                    if await k.upload():
                        break
                    await asyncio.sleep(0.1)
                assert k.journal.waiting_count == 0
        north, south = (k for k, _, _ in kiosks)
        assert north.upload_results == {"ACCEPTED": 1}
        assert south.upload_results == {"CONFLICT": 1}
        conflict = journal_entries(tmp_path / "south.jsonl", "upload")[0]
        assert conflict["first_gate_id"] == "north" and conflict["logged_result"] == "CONFLICT"
    finally:
        for k, client, _ in kiosks:
            k.journal.close()
            await client.close()
    stats = await stubs.gate.GetGateStats(
        R.GetGateStatsRequest(event_id=event_id), metadata=admin.md
    )
    assert (stats.total_admitted, stats.total_conflicts, stats.tickets_outstanding) == (1, 1, 0)
    log = await stubs.gate.ListScans(
        R.ListScansRequest(event_id=event_id, conflicts_only=True), metadata=admin.md
    )
    assert [(s.gate_id, s.conflict.first_gate_id) for s in log.scans] == [("south", "north")]


async def test_device_scope_and_a_revoked_device_at_the_kiosk(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_a, tickets, _, _ = await open_event(stubs, admin, 2)
    event_b, other, _, _ = await open_event(stubs, admin, 1)
    device_id, cred = await enrolled(stubs, admin, event_a, "gate-a")
    target = running.target

    # Another event: nothing syncs, nothing can be admitted offline, scans are refused.
    wrong, client_b, _ = device_kiosk(target, cred, event_b, "gate-a", tmp_path / "b.jsonl")
    try:
        assert not await wrong.sync() and not wrong.offline_ready
        assert wrong.sync_error == "PERMISSION_DENIED DEVICE_SCOPE"
        view = await wrong.scan(other[0].signed_code)
        assert view.outcome is Outcome.ERROR and "DEVICE_SCOPE" in view.error
    finally:
        wrong.journal.close()
        await client_b.close()

    # Another gate: its offline admission is not taken, and stays waiting in the journal.
    gate_c, client_c, _ = device_kiosk(target, cred, event_a, "gate-c", tmp_path / "c.jsonl")
    try:
        scan_id = str(uuid.uuid4())
        gate_c.journal.record_read(scan_id, tickets[0].signed_code, event_a, "gate-c")
        gate_c.journal.record_result(
            scan_id, {"result": "ADMITTED", "offline": True, "scan_time": None}
        )
        assert await gate_c.upload() == 0 and gate_c.journal.waiting_count == 1
        assert gate_c.upload_error == "PERMISSION_DENIED DEVICE_SCOPE"
    finally:
        gate_c.journal.close()
        await client_c.close()

    mine, client_a, screen = device_kiosk(target, cred, event_a, "gate-a", tmp_path / "a.jsonl")
    try:
        assert await mine.sync()
        await stubs.gate.RevokeDevice(R.RevokeDeviceRequest(device_id=device_id), metadata=admin.md)
        view = await mine.scan(tickets[1].signed_code)
        assert view.outcome is Outcome.DEVICE_REVOKED and mine.device_revoked
        assert screen.revoked == 1
        # Revoked means revoked offline too: the synced kit admits nothing any more.
        mine.link.mode = Mode.OFFLINE
        assert (await mine.scan(tickets[1].signed_code)).outcome is Outcome.DEVICE_REVOKED
        assert not await mine.sync()
    finally:
        mine.journal.close()
        await client_a.close()
    stats = await stubs.gate.GetGateStats(
        R.GetGateStatsRequest(event_id=event_a), metadata=admin.md
    )
    assert stats.total_admitted == 0 and stats.tickets_outstanding == 2


async def _kiosk_cli(tmp_path: Path, *args: str, stdin: str = "") -> tuple[int, list[str], str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing.kiosk.main",
        "--plain",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=kiosk_env(tmp_path),
        cwd=str(tmp_path),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), WAIT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode().splitlines(), err.decode()


async def test_enroll_stores_the_credential_0600_and_later_starts_need_no_password(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, _, _ = await open_event(stubs, admin, 2)
    created = await stubs.gate.CreateDevice(
        R.CreateDeviceRequest(event_id=event_id, gate_id="east", display_name="east door"),
        metadata=admin.md,
    )
    devices = tmp_path / "devices"
    common = ("--target", running.target, "--device-dir", str(devices))
    token = created.enrollment_token
    code, out, err = await _kiosk_cli(
        tmp_path, *common, "--enroll", token, stdin=tickets[0].signed_code + "\n"
    )
    assert code == 0, err
    assert any(line.startswith(f"INFO enrolled device {created.device.id}") for line in out)
    assert any(line.startswith("ADMIT ") for line in out), out
    saved = device_path(devices, event_id, "east")
    assert stat.S_IMODE(os.stat(saved).st_mode) == 0o600
    assert json.loads(saved.read_text())["credential"].startswith("tkd_")

    # Later: found by event and gate, no human password anywhere in the environment.
    code, out, err = await _kiosk_cli(
        tmp_path, *common, "--event", event_id, "--gate", "east", stdin=tickets[1].code + "\n"
    )
    assert code == 0, err
    assert any(line.startswith("ADMIT ") for line in out), out
    assert any(f"user=device {created.device.id}" in line for line in out), out

    # The token was spent; a revoked device gets a clear refusal, not a crash.
    code, _, err = await _kiosk_cli(tmp_path, *common, "--enroll", token)
    assert code == 1 and "enrollment refused" in err
    await stubs.gate.RevokeDevice(
        R.RevokeDeviceRequest(device_id=created.device.id), metadata=admin.md
    )
    code, out, err = await _kiosk_cli(tmp_path, *common, "--event", event_id, "--gate", "east")
    assert code == 1, (out, err)
    assert "STATUS DEVICE REVOKED" in out and "DEVICE REVOKED" in err
    assert "Traceback" not in err

    # A forged credential file, and one that is not a credential at all.
    forged = tmp_path / "forged.json"
    DeviceFile(created.device.id, event_id, "east", "east door", "tkd_forged").save(forged)
    code, _, err = await _kiosk_cli(tmp_path, "--target", running.target, "--device", str(forged))
    assert code == 1 and "the server refused this device: UNAUTHENTICATED" in err, err
    forged.write_text("{}")
    code, _, err = await _kiosk_cli(tmp_path, "--target", running.target, "--device", str(forged))
    assert code == 1 and "is not a kiosk device file" in err, err


class CountingGate:
    """The real GateService stub, noting the after_sequence of every ListRevocations."""

    def __init__(self, gate: gate_pb2_grpc.GateServiceAsyncStub) -> None:
        self.gate = gate
        self.after: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.gate, name)

    async def ListRevocations(
        self, request: gate_pb2.ListRevocationsRequest, timeout: float | None = None
    ) -> gate_pb2.ListRevocationsResponse:
        self.after.append(request.after_sequence)
        return await self.gate.ListRevocations(request, timeout=timeout)


async def test_periodic_sync_fetches_only_new_revocations_and_the_offline_policy(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, _, buyer, order_id = await open_event(stubs, admin, 2)
    _, cred = await enrolled(stubs, admin, event_id, "sync")
    client = connect(running.target, device_credential=cred, timeout=2)
    gate = CountingGate(client.gate)
    journal = tmp_path / "sync.jsonl"
    kiosk = Kiosk(
        cast("gate_pb2_grpc.GateServiceAsyncStub", gate),
        Journal.open(journal),
        event_id=event_id,
        gate_id="sync",
        health=health_pb2_grpc.HealthStub(client.channel),
        kit=OfflineKit(event_id),
        kit_path=kit_path_for(journal),
        link=Link(sync_interval=0.1),
    )
    maintain = asyncio.create_task(kiosk.maintain(0.05, check_timeout=0.5))

    async def rotate() -> list[booking_pb2.Ticket]:
        await stubs.booking.RotateTicketCodes(
            booking_pb2.RotateTicketCodesRequest(order_id=order_id, request_id=str(uuid.uuid4())),
            metadata=buyer.md,
        )
        return await signed_tickets(stubs, buyer, order_id)

    try:
        assert kiosk.kit is not None
        kit = kiosk.kit
        await until(lambda: kit.synced, "the first sync")
        assert gate.after == []  # nothing revoked yet: no ListRevocations at all
        fresh = await rotate()
        await until(lambda: kit.last_sequence == 2, "the rotation's revocations")
        second = await rotate()
        await until(lambda: kit.last_sequence == 4, "the second rotation's")
        await asyncio.sleep(0.3)  # a few more syncs: nothing new, so no more pages asked
        assert gate.after == [0, 2]
        assert len(kit.reissued) == 4
        assert OfflineKit.load(kit_path_for(journal), event_id).last_sequence == 4

        await stubs.gate.SetOfflineAdmission(
            R.SetOfflineAdmissionRequest(event_id=event_id, allowed=False), metadata=admin.md
        )
        await until(lambda: not kit.allowed, "the offline policy")
        maintain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintain
        kiosk.link.call_failed("UNAVAILABLE")  # as if the network dropped now
        refused = await kiosk.scan(second[0].signed_code)
        assert refused.outcome is Outcome.OFFLINE_REFUSED and refused.offline
        assert "OFFLINE ADMISSION NOT ALLOWED" in refused.reason
        kit.allowed = True  # what the next sync would bring after --allow
        assert (await kiosk.scan(fresh[0].signed_code)).outcome is Outcome.REVOKED
        assert (await kiosk.scan(second[0].signed_code)).admitted
    finally:
        maintain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintain
        kiosk.journal.close()
        await client.close()


async def test_an_entry_manager_kiosk_admits_offline_uploads_and_warns_about_its_clock(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, _, _ = await open_event(stubs, admin, 2)
    manager = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="off-em")
    await stubs.assign_staff(admin, event_id, manager)
    port = free_port()
    client = connect(f"127.0.0.1:{port}", manager.token, timeout=2, options=CHANNEL_OPTIONS)
    journal = tmp_path / "staff.jsonl"
    kiosk = Kiosk(
        client.gate,
        Journal.open(journal),
        event_id=event_id,
        gate_id="staff",
        health=health_pb2_grpc.HealthStub(client.channel),
        kit=OfflineKit(event_id),
        kit_path=kit_path_for(journal),
    )
    try:
        async with server_on(running, port):
            assert await kiosk.sync()
            assert kiosk.clock_skew_seconds is not None and abs(kiosk.clock_skew_seconds) < 30
            kiosk.clock = lambda: dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
            assert await kiosk.sync()
            assert 270 < (kiosk.clock_skew_seconds or 0) < 330  # the kiosk is 5 min behind
            kiosk.clock = lambda: dt.datetime.now(dt.UTC)
        view = await kiosk.scan(tickets[0].signed_code)
        assert view.admitted and view.offline
        async with server_on(running, port):
            for _ in range(100):  # until the channel has reconnected (bounded)
                if await kiosk.upload():
                    break
                await asyncio.sleep(0.1)
        assert kiosk.upload_results == {"ACCEPTED": 1}
    finally:
        kiosk.journal.close()
        await client.close()
    log = await stubs.gate.ListScans(R.ListScansRequest(event_id=event_id), metadata=admin.md)
    assert [(s.offline, s.entry_manager_id, s.gate_id) for s in log.scans] == [
        (True, manager.user.id, "staff")
    ]
