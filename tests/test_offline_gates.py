"""Offline gates (issue 14) through the real server: signed codes, keys, revocations, devices,
offline uploads with explicit conflicts."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import uuid
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    Account,
    Stubs,
    best_request,
    error_details,
    future,
    scan_request,
    small_layout,
)
from ticketing.kiosk.offline import OfflineKit, OfflineVerdict
from ticketing.v1 import booking_pb2, gate_pb2

R = gate_pb2
CallMd = tuple[tuple[str, str], ...]


def device_md(credential: str) -> CallMd:
    return (("authorization", f"Device {credential}"),)


def now_ts(offset_seconds: float = 0) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=offset_seconds))
    return ts


async def open_event(
    stubs: Stubs, admin: Account, n: int
) -> tuple[str, list[booking_pb2.Ticket], Account, str]:
    """An event with open gates and `n` standing tickets; returns (event id, tickets with
    signed codes, buyer, order id)."""
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=1, ga=n))
    # Doors opened a quarter of an hour ago: kiosk scan times a little in the past are inside.
    event = await stubs.create_event(admin, venue, max_per_order=100, doors_open_time=future(-0.01))
    buyer = await stubs.register("offline-fan")
    order = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[1].id, n), metadata=buyer.md
        )
    ).order
    return event.id, await signed_tickets(stubs, buyer, order.id), buyer, order.id


async def signed_tickets(stubs: Stubs, owner: Account, order_id: str) -> list[booking_pb2.Ticket]:
    full = await stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=order_id, include_signed_codes=True),
        metadata=owner.md,
    )
    return list(full.order.tickets)


async def enrolled(stubs: Stubs, owner: Account, event_id: str, gate: str) -> tuple[str, str]:
    """(device id, credential) of a new device enrolled for event and gate."""
    created = await stubs.gate.CreateDevice(
        R.CreateDeviceRequest(event_id=event_id, gate_id=gate, display_name=f"kiosk {gate}"),
        metadata=owner.md,
    )
    assert created.enrollment_token.startswith("tke_")
    assert created.device.state == R.DEVICE_STATE_PENDING
    enroll = await stubs.gate.EnrollDevice(
        R.EnrollDeviceRequest(enrollment_token=created.enrollment_token)
    )
    assert enroll.device_credential.startswith("tkd_")
    assert enroll.device.state == R.DEVICE_STATE_ENROLLED
    return created.device.id, enroll.device_credential


def unpadded(text_: str) -> bytes:
    return base64.urlsafe_b64decode(text_ + "=" * (-len(text_) % 4))


CONTEXT = b"ticketing.v1 signed ticket\n"


async def test_signature_round_trip_with_an_independent_verifier(
    stubs: Stubs, admin: Account
) -> None:
    """The payload layout of docs/offline-gates.md, checked with `cryptography` directly."""
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 2)
    keys = await stubs.gate.GetVerificationKeys(
        R.GetVerificationKeysRequest(event_id=event_id), metadata=admin.md
    )
    assert len(keys.keys) == 1 and keys.offline_admission_allowed and not keys.cancelled
    public = Ed25519PublicKey.from_public_bytes(keys.keys[0].public_key)
    for ticket in tickets:
        assert ticket.signed_code.startswith("TK1.")
        raw = unpadded(ticket.signed_code[4:])
        body, signature = raw[:-64], raw[-64:]
        public.verify(signature, CONTEXT + body)  # raises if bad
        assert body[0] == 1
        assert int.from_bytes(body[1:3], "big") == keys.keys[0].key_id
        assert uuid.UUID(bytes=body[3:19]) == uuid.UUID(event_id)
        assert uuid.UUID(bytes=body[19:35]) == uuid.UUID(ticket.id)
        assert int.from_bytes(body[35:39], "big") >= keys.doors_open_time.seconds
        assert int.from_bytes(body[39:43], "big") <= keys.end_time.seconds
        seat_len = body[51]
        assert body[52 : 52 + seat_len].decode() == ticket.section_name
        tampered = bytearray(body)
        tampered[20] ^= 1
        with pytest.raises(InvalidSignature):
            public.verify(signature, CONTEXT + bytes(tampered))
    # Derived on read and deterministic: the same text again.
    assert [t.signed_code for t in await signed_tickets(stubs, buyer, order_id)] == [
        t.signed_code for t in tickets
    ]


async def test_a_signed_code_admits_online_once_and_forgeries_are_unknown(
    stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, _, _ = await open_event(stubs, admin, 2)
    signed = tickets[0].signed_code
    first = await stubs.gate.ValidateTicket(scan_request(signed, event_id), metadata=admin.md)
    assert first.result == R.VALIDATION_RESULT_ADMITTED
    assert first.ticket.ticket_id == tickets[0].id
    plain = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].code, event_id), metadata=admin.md
    )
    assert plain.result == R.VALIDATION_RESULT_ALREADY_USED
    body = bytearray(unpadded(tickets[1].signed_code[4:]))
    body[25] ^= 1
    forged = "TK1." + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    for code in (forged, tickets[1].signed_code[:-2], "TK1.", "TK1.!!!"):
        r = await stubs.gate.ValidateTicket(scan_request(code, event_id), metadata=admin.md)
        assert r.result == R.VALIDATION_RESULT_UNKNOWN_CODE, code


async def test_refund_and_rotation_revoke_with_a_gap_free_sequence(
    stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 3)
    rotated = await stubs.booking.RotateTicketCodes(
        booking_pb2.RotateTicketCodesRequest(order_id=order_id, request_id=str(uuid.uuid4())),
        metadata=buyer.md,
    )
    assert rotated.rotated_count == 3
    new = await signed_tickets(stubs, buyer, order_id)
    assert all(n.signed_code != o.signed_code for n, o in zip(new, tickets, strict=True))
    # The old signed code names its ticket still, but no longer admits (online).
    old = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].signed_code, event_id), metadata=admin.md
    )
    assert old.result == R.VALIDATION_RESULT_UNKNOWN_CODE
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=str(uuid.uuid4()), reason="offline test"
        ),
        metadata=buyer.md,
    )
    listed: list[R.Revocation] = []
    token = ""
    while True:
        page = await stubs.gate.ListRevocations(
            R.ListRevocationsRequest(event_id=event_id, page_size=2, page_token=token),
            metadata=admin.md,
        )
        listed += page.revocations
        token = page.next_page_token
        if not token:
            break
    assert [r.sequence for r in listed] == [1, 2, 3, 4, 5, 6]
    assert page.last_sequence == 6
    reissued = [r for r in listed if r.cause == R.REVOCATION_CAUSE_REISSUED]
    voided = [r for r in listed if r.cause == R.REVOCATION_CAUSE_VOIDED]
    assert (
        {r.ticket_id for r in reissued} == {r.ticket_id for r in voided} == {t.id for t in tickets}
    )
    by_ticket = {r.ticket_id: r.code_tag for r in reissued}
    for t in tickets:
        assert unpadded(t.signed_code[4:])[43:51] == by_ticket[t.id]
    after = await stubs.gate.ListRevocations(
        R.ListRevocationsRequest(event_id=event_id, after_sequence=4), metadata=admin.md
    )
    assert [r.sequence for r in after.revocations] == [5, 6]
    assert await signed_tickets(stubs, buyer, order_id) and all(
        not t.signed_code for t in await signed_tickets(stubs, buyer, order_id)
    )


@pytest.mark.slow
async def test_concurrent_refunds_of_one_event_number_revocations_in_commit_order(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Many refunds at once: sequences 1..n, each ticket once, none skipped by a reader."""
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=1, ga=40))
    event = await stubs.create_event(admin, venue, max_per_order=10)
    buyers = [await stubs.register("rev-buyer") for _ in range(20)]
    orders = [
        (
            await stubs.booking.BookSeats(
                best_request(event.id, venue.sections[1].id, 2), metadata=b.md
            )
        ).order
        for b in buyers
    ]
    seen: list[int] = []

    async def reader() -> None:
        after = 0
        for _ in range(200):
            page = await stubs.gate.ListRevocations(
                R.ListRevocationsRequest(event_id=event.id, after_sequence=after),
                metadata=admin.md,
            )
            for r in page.revocations:
                assert r.sequence == after + 1, "a reader skipped a sequence"
                after = r.sequence
                seen.append(r.sequence)
            if after == 40:
                return
            await asyncio.sleep(0.01)

    reading = asyncio.create_task(reader())
    await asyncio.gather(
        *(
            stubs.booking.RefundOrder(
                booking_pb2.RefundOrderRequest(
                    order_id=o.id, request_id=str(uuid.uuid4()), reason="x"
                ),
                metadata=b.md,
            )
            for o, b in zip(orders, buyers, strict=True)
        )
    )
    await reading
    assert seen == list(range(1, 41))
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT count(*), count(DISTINCT ticket_id), max(sequence) "
                    "FROM ticket_revocations WHERE event_id = :e"
                ),
                {"e": event.id},
            )
        ).one()
    assert tuple(rows) == (40, 40, 40)


def upload(
    event_id: str, gate: str, *scans: tuple[str, str, Timestamp]
) -> R.UploadOfflineScansRequest:
    return R.UploadOfflineScansRequest(
        event_id=event_id,
        gate_id=gate,
        scans=[R.OfflineScan(scan_id=s, code=c, scan_time=t) for s, c, t in scans],
    )


async def test_two_kiosks_admit_one_ticket_offline_one_accepted_one_conflict(
    stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, _, _ = await open_event(stubs, admin, 3)
    _, north = await enrolled(stubs, admin, event_id, "north")
    _, south = await enrolled(stubs, admin, event_id, "south")
    code = tickets[0].signed_code
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    at_north, at_south = now_ts(-20), now_ts(-10)
    other = [(str(uuid.uuid4()), t.signed_code, now_ts(-5)) for t in tickets[1:]]
    first = await stubs.gate.UploadOfflineScans(
        upload(event_id, "south", (b, code, at_south)), metadata=device_md(south)
    )
    assert first.outcomes[0].result == R.OFFLINE_SCAN_RESULT_ACCEPTED
    north_batch = upload(event_id, "north", (a, code, at_north), *other)
    second = await stubs.gate.UploadOfflineScans(north_batch, metadata=device_md(north))
    results = [o.result for o in second.outcomes]
    assert results == [R.OFFLINE_SCAN_RESULT_CONFLICT] + [R.OFFLINE_SCAN_RESULT_ACCEPTED] * 2
    conflict = second.outcomes[0]
    assert conflict.first_gate_id == "south"
    assert conflict.first_scan_time.seconds == at_south.seconds
    # Repeated and reordered: the stored answers, nothing new.
    shuffled = list(north_batch.scans)
    random.shuffle(shuffled)
    again = await stubs.gate.UploadOfflineScans(
        R.UploadOfflineScansRequest(event_id=event_id, gate_id="north", scans=shuffled),
        metadata=device_md(north),
    )
    assert all(o.repeat for o in again.outcomes)
    assert {o.scan_id: o.result for o in again.outcomes} == {
        o.scan_id: o.result for o in second.outcomes
    }
    stats = await stubs.gate.GetGateStats(
        R.GetGateStatsRequest(event_id=event_id), metadata=admin.md
    )
    gates = {g.gate_id: g for g in stats.gates}
    assert (gates["south"].admitted, gates["south"].offline_admitted) == (1, 1)
    assert (gates["north"].admitted, gates["north"].conflicts) == (2, 1)
    assert gates["north"].offline_admitted == 3 and gates["north"].rejected == 0
    assert (stats.total_admitted, stats.total_conflicts, stats.tickets_outstanding) == (3, 1, 0)
    log = await stubs.gate.ListScans(
        R.ListScansRequest(event_id=event_id, conflicts_only=True), metadata=admin.md
    )
    assert len(log.scans) == 1
    entry = log.scans[0]
    assert entry.result == R.VALIDATION_RESULT_CONFLICT and entry.offline
    assert entry.gate_id == "north" and entry.scan_time.seconds == at_north.seconds
    assert entry.conflict.first_gate_id == "south" and entry.conflict.first_scan_id == b
    assert entry.device_id and not entry.entry_manager_id
    # The ticket's state counts one admission: the first upload's.
    online = await stubs.gate.ValidateTicket(scan_request(code, event_id), metadata=admin.md)
    assert online.result == R.VALIDATION_RESULT_ALREADY_USED
    assert online.first_gate_id == "south"


async def test_uploads_of_revoked_forged_early_and_future_scans(
    stubs: Stubs, admin: Account
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 2)
    _, cred = await enrolled(stubs, admin, event_id, "east")
    await stubs.booking.RotateTicketCodes(
        booking_pb2.RotateTicketCodesRequest(order_id=order_id, request_id=str(uuid.uuid4())),
        metadata=buyer.md,
    )
    body = bytearray(unpadded(tickets[1].signed_code[4:]))
    body[30] ^= 4
    forged = "TK1." + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    batch = upload(
        event_id,
        "east",
        (str(uuid.uuid4()), tickets[0].signed_code, now_ts(-1)),  # rotated since
        (str(uuid.uuid4()), forged, now_ts(-1)),
        (str(uuid.uuid4()), "not-a-code", now_ts(-1)),
        (str(uuid.uuid4()), tickets[1].signed_code, now_ts(3600)),  # future, beyond skew
        (str(uuid.uuid4()), tickets[1].signed_code, now_ts(-86400)),  # before doors
    )
    got = await stubs.gate.UploadOfflineScans(batch, metadata=device_md(cred))
    # The clock is judged first: a scan time the kiosk cannot have had is INVALID whatever
    # became of the ticket since.
    assert [o.result for o in got.outcomes] == [
        R.OFFLINE_SCAN_RESULT_REVOKED,
        R.OFFLINE_SCAN_RESULT_INVALID,
        R.OFFLINE_SCAN_RESULT_INVALID,
        R.OFFLINE_SCAN_RESULT_INVALID,
        R.OFFLINE_SCAN_RESULT_INVALID,
    ]
    assert got.outcomes[0].logged_result == R.VALIDATION_RESULT_REVOKED
    assert got.outcomes[1].logged_result == R.VALIDATION_RESULT_UNKNOWN_CODE
    assert got.outcomes[3].logged_result == R.VALIDATION_RESULT_NOT_YET_OPEN
    assert got.outcomes[4].logged_result == R.VALIDATION_RESULT_NOT_YET_OPEN
    assert all(o.result == R.OFFLINE_SCAN_RESULT_INVALID for o in got.outcomes[1:])


async def test_an_upload_with_an_impossible_scan_time_is_refused_whole(
    stubs: Stubs, admin: Account
) -> None:
    """A scan_time protobuf itself rejects (nanos out of range) or far outside any event is
    INVALID_ARGUMENT naming the scan, not INTERNAL; nothing of the batch is stored."""
    event_id, tickets, _, _ = await open_event(stubs, admin, 1)
    _, cred = await enrolled(stubs, admin, event_id, "east")
    bad_nanos = now_ts(-1)
    bad_nanos.nanos = -1
    ancient = Timestamp(seconds=-2_000_000_000)
    for bad in (bad_nanos, ancient):
        batch = upload(
            event_id,
            "east",
            (str(uuid.uuid4()), tickets[0].signed_code, now_ts(-1)),
            (str(uuid.uuid4()), tickets[0].signed_code, bad),
        )
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.gate.UploadOfflineScans(batch, metadata=device_md(cred))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in error_details(err.value).field_violations] == ["scans[1].scan_time"]
    online = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].signed_code, event_id, gate="east"), metadata=device_md(cred)
    )
    assert online.result == R.VALIDATION_RESULT_ADMITTED


async def test_device_scope_and_revocation(stubs: Stubs, admin: Account) -> None:
    event_a, tickets, _, _ = await open_event(stubs, admin, 1)
    event_b, _, _, _ = await open_event(stubs, admin, 1)
    device_id, cred = await enrolled(stubs, admin, event_a, "gate-a")
    md = device_md(cred)
    ok = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].signed_code, event_a, gate="gate-a"), metadata=md
    )
    assert ok.result == R.VALIDATION_RESULT_ADMITTED
    refusals: list[Awaitable[object]] = [
        stubs.gate.ValidateTicket(scan_request("x", event_b, gate="gate-a"), metadata=md),
        stubs.gate.ValidateTicket(scan_request("x", event_a, gate="gate-c"), metadata=md),
        stubs.gate.UploadOfflineScans(
            upload(event_a, "gate-c", (str(uuid.uuid4()), "x", now_ts())), metadata=md
        ),
        stubs.gate.GetVerificationKeys(R.GetVerificationKeysRequest(event_id=event_b), metadata=md),
    ]
    for call in refusals:
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_details(err.value).reason == "DEVICE_SCOPE"
    for call in (
        stubs.gate.ListScans(R.ListScansRequest(event_id=event_a), metadata=md),
        stubs.booking.ListOrders(booking_pb2.ListOrdersRequest(), metadata=md),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await call
        assert error_details(err.value).reason == "ROLE_NOT_ALLOWED"
    listed = await stubs.gate.ListDevices(R.ListDevicesRequest(event_id=event_a), metadata=admin.md)
    assert [d.id for d in listed.devices] == [device_id]
    revoked = await stubs.gate.RevokeDevice(
        R.RevokeDeviceRequest(device_id=device_id), metadata=admin.md
    )
    assert revoked.device.state == R.DEVICE_STATE_REVOKED
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.gate.GetVerificationKeys(
            R.GetVerificationKeysRequest(event_id=event_a), metadata=md
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(err.value).reason == "DEVICE_REVOKED"
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.gate.GetVerificationKeys(
            R.GetVerificationKeysRequest(event_id=event_a), metadata=device_md("tkd_nope")
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_an_enrollment_token_works_once_even_when_raced(stubs: Stubs, admin: Account) -> None:
    event_id, _, _, _ = await open_event(stubs, admin, 1)
    created = await stubs.gate.CreateDevice(
        R.CreateDeviceRequest(event_id=event_id, gate_id="race", display_name="race"),
        metadata=admin.md,
    )
    request = R.EnrollDeviceRequest(enrollment_token=created.enrollment_token)
    results = await asyncio.gather(
        *(stubs.gate.EnrollDevice(request) for _ in range(8)), return_exceptions=True
    )
    ok = [r for r in results if isinstance(r, R.EnrollDeviceResponse)]
    refused = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(ok) == 1 and len(refused) == 7
    assert all(error_details(r).reason == "ENROLLMENT_TOKEN_INVALID" for r in refused)


async def test_key_rotation_keeps_old_codes_until_withdrawn(stubs: Stubs, admin: Account) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 2)
    rotated = await stubs.gate.RotateSigningKey(
        R.RotateSigningKeyRequest(event_id=event_id), metadata=admin.md
    )
    assert rotated.key.key_id == 2 and rotated.withdrawn_count == 0
    keys = await stubs.gate.GetVerificationKeys(
        R.GetVerificationKeysRequest(event_id=event_id), metadata=admin.md
    )
    assert [k.key_id for k in keys.keys] == [2, 1] and keys.keys[1].HasField("retire_time")
    ok = await stubs.gate.ValidateTicket(
        scan_request(tickets[0].signed_code, event_id), metadata=admin.md
    )
    assert ok.result == R.VALIDATION_RESULT_ADMITTED  # old key still verifies
    await stubs.gate.RotateSigningKey(
        R.RotateSigningKeyRequest(event_id=event_id, withdraw_previous=True), metadata=admin.md
    )
    gone = await stubs.gate.ValidateTicket(
        scan_request(tickets[1].signed_code, event_id), metadata=admin.md
    )
    assert gone.result == R.VALIDATION_RESULT_UNKNOWN_CODE
    fresh = await signed_tickets(stubs, buyer, order_id)
    live = [t for t in fresh if t.signed_code]
    assert unpadded(live[0].signed_code[4:])[1:3] == (3).to_bytes(2, "big")


async def _synced_kit(stubs: Stubs, md: CallMd, event_id: str) -> OfflineKit:
    kit = OfflineKit(event_id)
    kit.apply_keys(
        await stubs.gate.GetVerificationKeys(
            R.GetVerificationKeysRequest(event_id=event_id), metadata=md
        )
    )
    page = await stubs.gate.ListRevocations(
        R.ListRevocationsRequest(event_id=event_id), metadata=md
    )
    kit.apply_revocations(page.revocations)
    return kit


async def test_the_kiosk_refuses_tampered_unknown_key_expired_and_revoked_codes_offline(
    stubs: Stubs, admin: Account, tmp_path: Path
) -> None:
    event_id, tickets, buyer, order_id = await open_event(stubs, admin, 3)
    _, others, _, _ = await open_event(stubs, admin, 1)
    _, cred = await enrolled(stubs, admin, event_id, "offline-gate")
    await stubs.booking.RotateTicketCodes(
        booking_pb2.RotateTicketCodesRequest(order_id=order_id, request_id=str(uuid.uuid4())),
        metadata=buyer.md,
    )
    fresh = await signed_tickets(stubs, buyer, order_id)
    kit = await _synced_kit(stubs, device_md(cred), event_id)
    kit.save(tmp_path / "kit.json")
    kit = OfflineKit.load(tmp_path / "kit.json", event_id)  # survives a restart
    now = dt.datetime.now(dt.UTC)
    admitted: set[str] = set()
    verdict, ticket = kit.judge(fresh[0].signed_code, now, admitted)
    assert verdict is OfflineVerdict.ADMIT and ticket is not None
    admitted.add(ticket.ticket_id)
    assert kit.judge(fresh[0].signed_code, now, admitted)[0] is (
        OfflineVerdict.ALREADY_ADMITTED_HERE
    )
    body = bytearray(unpadded(fresh[1].signed_code[4:]))
    body[60] ^= 1
    tampered = "TK1." + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    assert kit.judge(tampered, now, admitted)[0] is OfflineVerdict.FORGED
    body = bytearray(unpadded(fresh[1].signed_code[4:]))
    body[1:3] = (99).to_bytes(2, "big")
    wrong_key = "TK1." + base64.urlsafe_b64encode(bytes(body)).decode().rstrip("=")
    assert kit.judge(wrong_key, now, admitted)[0] is OfflineVerdict.FORGED
    later = now + dt.timedelta(days=60)
    assert kit.judge(fresh[1].signed_code, later, admitted)[0] is OfflineVerdict.EVENT_OVER
    assert kit.judge(tickets[1].signed_code, now, admitted)[0] is OfflineVerdict.REVOKED
    assert kit.judge(others[0].signed_code, now, admitted)[0] is OfflineVerdict.WRONG_EVENT
    assert kit.judge(fresh[1].code, now, admitted)[0] is OfflineVerdict.NOT_VERIFIABLE
    await stubs.gate.SetOfflineAdmission(
        R.SetOfflineAdmissionRequest(event_id=event_id, allowed=False), metadata=admin.md
    )
    kit = await _synced_kit(stubs, device_md(cred), event_id)
    assert kit.judge(fresh[1].signed_code, now, admitted)[0] is OfflineVerdict.OFFLINE_REFUSED
