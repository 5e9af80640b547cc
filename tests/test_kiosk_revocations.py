"""Live revocations at the kiosk (issue 15): while online, between full syncs, the kiosk asks
only for the revocations after its kit's last sequence, so a refund stops admitting at an
offline gate within seconds; paging and the cursor never skip or repeat one; a revoked
device and an absent server are handled as a failed sync. The link's timing rules are tested
alone."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, cast

from grpc_health.v1 import health_pb2_grpc

from scripts.benchlib.process import free_port
from tests.conftest import RunningServer
from tests.support import Account, Stubs, book_request
from tests.test_kiosk_offline import until
from tests.test_offline_gates import enrolled, open_event, signed_tickets
from ticketing.client import Client, connect
from ticketing.kiosk.journal import Journal
from ticketing.kiosk.main import kit_path_for
from ticketing.kiosk.offline import OfflineKit
from ticketing.kiosk.switching import Link, Mode
from ticketing.kiosk.validation import Kiosk, RetryPolicy
from ticketing.kiosk.views import Outcome
from ticketing.v1 import booking_pb2, event_pb2, gate_pb2

AVAILABLE = event_pb2.SEAT_STATUS_AVAILABLE

if TYPE_CHECKING:
    from ticketing.v1 import gate_pb2_grpc


class CountingGate:
    """The real GateService stub, counting key syncs and noting each ListRevocations."""

    def __init__(self, gate: gate_pb2_grpc.GateServiceAsyncStub) -> None:
        self.gate = gate
        self.key_calls = 0
        self.after: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.gate, name)

    async def GetVerificationKeys(
        self, request: gate_pb2.GetVerificationKeysRequest, timeout: float | None = None
    ) -> gate_pb2.GetVerificationKeysResponse:
        self.key_calls += 1
        return await self.gate.GetVerificationKeys(request, timeout=timeout)

    async def ListRevocations(
        self, request: gate_pb2.ListRevocationsRequest, timeout: float | None = None
    ) -> gate_pb2.ListRevocationsResponse:
        if not request.page_token:
            self.after.append(request.after_sequence)
        return await self.gate.ListRevocations(request, timeout=timeout)


def device_kiosk(
    target: str, credential: str, event_id: str, journal: Path, link: Link
) -> tuple[Kiosk, CountingGate, Client]:
    client = connect(target, device_credential=credential, timeout=2)
    gate = CountingGate(client.gate)
    kiosk = Kiosk(
        cast("gate_pb2_grpc.GateServiceAsyncStub", gate),
        Journal.open(journal),
        event_id=event_id,
        gate_id="live",
        policy=RetryPolicy(attempt_timeout=1, budget=2),
        health=health_pb2_grpc.HealthStub(client.channel),
        kit=OfflineKit(event_id),
        kit_path=kit_path_for(journal),
        link=link,
    )
    return kiosk, gate, client


async def refund(stubs: Stubs, owner: Account, order_id: str) -> None:
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=str(uuid.uuid4()), reason="cannot come"
        ),
        metadata=owner.md,
    )


async def test_a_refund_reaches_an_online_kiosk_between_syncs_and_is_refused_offline(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 3)
    # A second order that stays valid: it must still be admitted offline.
    other = await stubs.register("still-coming")
    free = [s.id for s in await stubs.all_seats(event_id) if s.status == AVAILABLE]
    kept = (await stubs.booking.BookSeats(book_request(event_id, free), metadata=other.md)).order
    _, cred = await enrolled(stubs, admin, event_id, "live")
    journal = tmp_path / "live.jsonl"
    # Keys once an hour (never again in this test), revocations every 0.1 s.
    link = Link(sync_interval=3600, revocation_interval=0.1)
    kiosk, gate, client = device_kiosk(running.target, cred, event_id, journal, link)
    maintain = asyncio.create_task(kiosk.maintain(0.05, check_timeout=0.5))
    try:
        assert kiosk.kit is not None
        kit = kiosk.kit
        await until(lambda: kit.synced, "the first sync")
        assert kit.last_sequence == 0 and gate.key_calls == 1
        await until(lambda: len(gate.after) >= 2, "revocation polls while nothing is new")
        await refund(stubs, buyer, order_id)
        revoked = {t.id for t in tickets}
        await until(lambda: kit.voided == revoked, "the refund's revocations")
        assert kit.last_sequence == 3
        await asyncio.sleep(0.3)  # more polls: nothing new, so nothing applied twice
        assert gate.key_calls == 1, "revocations came without another key sync"
        assert gate.after == sorted(gate.after) and set(gate.after) == {0, 3}
        assert OfflineKit.load(kit_path_for(journal), event_id).voided == revoked
    finally:
        maintain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await maintain
    try:
        kiosk.link.call_failed("UNAVAILABLE")  # the network drops right after
        codes = [t.signed_code for t in tickets]
        refused = await kiosk.scan(codes[0])
        assert refused.offline and refused.outcome is Outcome.REVOKED
        kept_codes = await signed_tickets(stubs, other, kept.id)
        admitted = await kiosk.scan(kept_codes[0].signed_code)
        assert admitted.offline and admitted.admitted
    finally:
        kiosk.journal.close()
        await client.close()


async def test_pages_are_followed_and_the_cursor_never_repeats(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 3)
    _, cred = await enrolled(stubs, admin, event_id, "pages")
    kiosk, gate, client = device_kiosk(
        running.target, cred, event_id, tmp_path / "pages.jsonl", Link(revocation_interval=0.1)
    )
    try:
        assert await kiosk.refresh_revocations() == 0  # never synced: a full sync instead
        assert kiosk.kit is not None and kiosk.kit.synced and gate.key_calls == 1
        await refund(stubs, buyer, order_id)
        assert await kiosk.refresh_revocations(page_size=1) == 3  # three pages, one call
        assert kiosk.kit.voided == {t.id for t in tickets}
        assert await kiosk.refresh_revocations(page_size=1) == 0
        assert gate.after == [0, 3] and gate.key_calls == 1
    finally:
        kiosk.journal.close()
        await client.close()


async def test_a_revoked_device_and_an_absent_server(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    event_id, _, _, _ = await open_event(stubs, admin, 1)
    device_id, cred = await enrolled(stubs, admin, event_id, "gone")
    kiosk, _, client = device_kiosk(
        running.target, cred, event_id, tmp_path / "gone.jsonl", Link(revocation_interval=0.1)
    )
    try:
        assert await kiosk.sync()
        await stubs.gate.RevokeDevice(
            gate_pb2.RevokeDeviceRequest(device_id=device_id), metadata=admin.md
        )
        assert await kiosk.refresh_revocations() is None
        assert kiosk.device_revoked and "DEVICE_REVOKED" in kiosk.sync_error
    finally:
        kiosk.journal.close()
        await client.close()

    # Nobody listens on this port: the refresh fails as unreachable and the kiosk goes
    # offline by itself, with the kit it had (still usable offline).
    kit = OfflineKit(event_id, synced=True, last_sequence=7)
    away, _, client = device_kiosk(
        f"127.0.0.1:{free_port()}", cred, event_id, tmp_path / "away.jsonl", Link()
    )
    away.kit = kit
    try:
        assert await away.refresh_revocations() is None
        assert away.link.mode is Mode.OFFLINE and kit.last_sequence == 7
    finally:
        away.journal.close()
        await client.close()


def test_link_timing_rules() -> None:
    link = Link(sync_interval=30, revocation_interval=2)
    assert link.sync_due(0) and link.revocations_due(0)
    link.synced(10)  # a full sync carries revocations too
    assert not link.sync_due(39) and not link.revocations_due(11.9)
    assert link.revocations_due(12) and link.sync_due(40)
    link.revocations_refreshed(12)
    assert not link.revocations_due(13.9) and link.revocations_due(14)
    link.call_failed("UNAVAILABLE")
    assert not link.revocations_due(100) and not link.sync_due(100)  # offline: nothing
    assert link.server_answered(100)
    assert link.revocations_due(100) and link.sync_due(100)  # back: both at once
