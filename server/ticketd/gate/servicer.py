"""GateService: protobuf <-> gate domain; no SQL here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from ticketd.auth.principal import current_principal
from ticketd.edge.convert import parse_time, parse_uuid, timestamp
from ticketd.edge.streaming import write_pages
from ticketd.errors import InvalidArgument
from ticketd.gate.devices.rules import DeviceRecord, DeviceState
from ticketd.gate.devices.service import DeviceService
from ticketd.gate.rules import (
    GateChangeRecord,
    GateCounts,
    OfflineOutcome,
    OfflineResult,
    OfflineScanInput,
    ScanInput,
    ScanRecord,
    ScanResult,
    TicketPlace,
    validate_scan,
)
from ticketd.gate.service import GateService
from ticketd.gate.signing.service import KeyRow, RevocationRow, SigningService
from ticketd.observability import metrics
from ticketd.pagination import (
    PageTokens,
    decode_time_keyset,
    resolve_page_size,
    time_keyset,
)
from ticketing.v1 import gate_pb2, gate_pb2_grpc

RESULT_TO_PROTO = {
    ScanResult.ADMITTED: gate_pb2.VALIDATION_RESULT_ADMITTED,
    ScanResult.ALREADY_USED: gate_pb2.VALIDATION_RESULT_ALREADY_USED,
    ScanResult.VOID: gate_pb2.VALIDATION_RESULT_VOID,
    ScanResult.WRONG_EVENT: gate_pb2.VALIDATION_RESULT_WRONG_EVENT,
    ScanResult.UNKNOWN_CODE: gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE,
    ScanResult.NOT_YET_OPEN: gate_pb2.VALIDATION_RESULT_NOT_YET_OPEN,
    ScanResult.EVENT_OVER: gate_pb2.VALIDATION_RESULT_EVENT_OVER,
    ScanResult.EVENT_CANCELLED: gate_pb2.VALIDATION_RESULT_EVENT_CANCELLED,
    ScanResult.CONFLICT: gate_pb2.VALIDATION_RESULT_CONFLICT,
    ScanResult.REVOKED: gate_pb2.VALIDATION_RESULT_REVOKED,
}
OFFLINE_TO_PROTO = {
    OfflineResult.ACCEPTED: gate_pb2.OFFLINE_SCAN_RESULT_ACCEPTED,
    OfflineResult.CONFLICT: gate_pb2.OFFLINE_SCAN_RESULT_CONFLICT,
    OfflineResult.REVOKED: gate_pb2.OFFLINE_SCAN_RESULT_REVOKED,
    OfflineResult.INVALID: gate_pb2.OFFLINE_SCAN_RESULT_INVALID,
}
DEVICE_STATE_TO_PROTO = {
    DeviceState.PENDING: gate_pb2.DEVICE_STATE_PENDING,
    DeviceState.ENROLLED: gate_pb2.DEVICE_STATE_ENROLLED,
    DeviceState.EXPIRED: gate_pb2.DEVICE_STATE_EXPIRED,
    DeviceState.REVOKED: gate_pb2.DEVICE_STATE_REVOKED,
}
CAUSE_TO_PROTO = {
    "VOIDED": gate_pb2.REVOCATION_CAUSE_VOIDED,
    "REISSUED": gate_pb2.REVOCATION_CAUSE_REISSUED,
}


def place_to_proto(p: TicketPlace) -> gate_pb2.ScannedTicket:
    return gate_pb2.ScannedTicket(
        ticket_id=str(p.ticket_id),
        order_id=str(p.order_id),
        section_name=p.section_name,
        row_label=p.row_label or "",
        seat_number=p.seat_number or 0,
        seat_label=p.seat_label or "",
    )


def device_to_proto(d: DeviceRecord, now: dt.datetime) -> gate_pb2.Device:
    msg = gate_pb2.Device(
        id=str(d.id),
        event_id=str(d.event_id),
        gate_id=d.gate_id,
        display_name=d.display_name,
        state=DEVICE_STATE_TO_PROTO[d.state(now)],
        created_by=str(d.created_by),
        create_time=timestamp(d.create_time),
        enrollment_expire_time=timestamp(d.enrollment_expire_time),
    )
    if d.enroll_time is not None:
        msg.enroll_time.CopyFrom(timestamp(d.enroll_time))
    if d.revoke_time is not None:
        msg.revoke_time.CopyFrom(timestamp(d.revoke_time))
    return msg


def key_to_proto(k: KeyRow, expire: dt.datetime) -> gate_pb2.VerificationKey:
    msg = gate_pb2.VerificationKey(
        key_id=k.key_id,
        public_key=k.public_key,
        create_time=timestamp(k.create_time),
        expire_time=timestamp(expire),
    )
    if k.retire_time is not None:
        msg.retire_time.CopyFrom(timestamp(k.retire_time))
    return msg


def outcome_to_proto(o: OfflineOutcome) -> gate_pb2.OfflineScanOutcome:
    msg = gate_pb2.OfflineScanOutcome(
        scan_id=str(o.scan_id),
        result=OFFLINE_TO_PROTO[o.result],
        logged_result=RESULT_TO_PROTO[o.logged]
        if o.logged
        else gate_pb2.VALIDATION_RESULT_UNSPECIFIED,
        first_gate_id=o.first_gate_id or "",
        repeat=o.repeat,
        detail=o.detail,
    )
    if o.place is not None:
        msg.ticket.CopyFrom(place_to_proto(o.place))
    if o.first_scan_time is not None:
        msg.first_scan_time.CopyFrom(timestamp(o.first_scan_time))
    return msg


def scan_to_proto(s: ScanRecord) -> gate_pb2.Scan:
    msg = gate_pb2.Scan(
        scan_id=str(s.scan_id),
        event_id=str(s.event_id),
        gate_id=s.gate_id,
        entry_manager_id=str(s.entry_manager_id) if s.entry_manager_id else "",
        result=RESULT_TO_PROTO[s.result],
        ticket_id=str(s.ticket_id) if s.ticket_id else "",
        code_hash=s.code_hash,
        scan_time=timestamp(s.scan_time),
        repeat_count=s.repeat_count,
        device_id=str(s.device_id) if s.device_id else "",
        offline=s.offline,
    )
    if s.upload_time is not None:
        msg.upload_time.CopyFrom(timestamp(s.upload_time))
    if s.conflict is not None:
        c = s.conflict
        msg.conflict.CopyFrom(
            gate_pb2.ScanConflict(
                first_scan_id=str(c.first_scan_id), first_gate_id=c.first_gate_id or ""
            )
        )
        if c.first_scan_time is not None:
            msg.conflict.first_scan_time.CopyFrom(timestamp(c.first_scan_time))
    return msg


def gate_stats_to_proto(g: GateCounts) -> gate_pb2.GateStats:
    """One gate's counts, as GetGateStats and WatchGate show them."""
    return gate_pb2.GateStats(
        gate_id=g.gate_id,
        admitted=g.admitted,
        rejected=g.rejected,
        offline_admitted=g.offline_admitted,
        conflicts=g.conflicts,
        last_scan_time=timestamp(g.last_scan_time),
        by_result=[
            gate_pb2.ResultCount(result=RESULT_TO_PROTO[r], count=n)
            for r, n in sorted(g.by_result.items(), key=lambda kv: kv[0].value)
        ],
    )


def gate_change_to_proto(c: GateChangeRecord) -> gate_pb2.GateChange:
    """One entry of WatchGate: a scan and its gate's counts, a snapshot entry, or the
    caught_up marker."""
    msg = gate_pb2.GateChange(
        sequence=c.sequence, offline=c.offline, snapshot=c.snapshot, caught_up=c.caught_up
    )
    if c.gate is not None:
        msg.gate_id = c.gate.gate_id
        msg.gate.CopyFrom(gate_stats_to_proto(c.gate))
        msg.inside = c.gate.inside
    if c.scan_id is not None:
        msg.scan_id = str(c.scan_id)
    if c.result is not None:
        msg.result = RESULT_TO_PROTO[c.result]
    if c.scan_time is not None:
        msg.scan_time.CopyFrom(timestamp(c.scan_time))
    return msg


def gate_resume_point(change: GateChangeRecord, delivered: int) -> int:
    """Where a reader that has `change` resumes: snapshot entries (one per gate) all carry
    the snapshot's sequence and none says it is the last, so a reader cut mid-snapshot
    that resumed after that number would never get the gates not yet sent; the point moves
    only with the first scan or caught_up marker after the snapshot."""
    return delivered if change.snapshot else change.sequence


class GateServicer(gate_pb2_grpc.GateServiceServicer):
    """Implements ticketing.v1.GateService; access rules are in ticketd.auth.policy."""

    def __init__(
        self,
        service: GateService,
        signing: SigningService,
        devices: DeviceService,
        pages: PageTokens,
        *,
        send_timeout: float = 30.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self._service = service
        self._signing = signing
        self._devices = devices
        self._pages = pages
        self._send_timeout = send_timeout
        self._poll_seconds = poll_seconds

    async def WatchGate(  # type: ignore[override]
        self, request: gate_pb2.WatchGateRequest, context: Any
    ) -> None:
        event_id = parse_uuid(request.event_id, "event_id")
        pages = self._service.watch_gate(
            current_principal(), event_id, request.after_sequence, poll_seconds=self._poll_seconds
        )
        await write_pages(
            context,
            pages,
            gate_change_to_proto,
            send_timeout=self._send_timeout,
            after_sequence=request.after_sequence,
            resume_point=gate_resume_point,
        )

    async def ValidateTicket(
        self, request: gate_pb2.ValidateTicketRequest, context: Any
    ) -> gate_pb2.ValidateTicketResponse:
        principal = current_principal()
        code, gate = validate_scan(request.code, request.gate_id)
        scan = ScanInput(
            code=code,
            event_id=parse_uuid(request.event_id, "event_id"),
            gate_id=gate,
            scan_id=parse_uuid(request.scan_id, "scan_id"),
        )
        self._service.admit_rate(principal, scan.event_id, scan.gate_id)
        outcome = await self._service.validate(principal, scan)
        metrics.GATE_SCANS.labels(outcome.result.name).inc()
        response = gate_pb2.ValidateTicketResponse(
            result=RESULT_TO_PROTO[outcome.result],
            scan_time=timestamp(outcome.scan_time),
            first_gate_id=outcome.first_gate_id or "",
            repeat=outcome.repeat,
        )
        if outcome.first_scan_time is not None:
            response.first_scan_time.CopyFrom(timestamp(outcome.first_scan_time))
        if outcome.place is not None:
            response.ticket.CopyFrom(place_to_proto(outcome.place))
        return response

    async def ListScans(
        self, request: gate_pb2.ListScansRequest, context: Any
    ) -> gate_pb2.ListScansResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        gate = request.gate_id.strip() or None
        size = resolve_page_size(request.page_size, 100, 1_000)
        query: dict[str, object] = {"event": str(event_id), "gate": gate}
        if request.conflicts_only:
            query["conflicts"] = True
        before = decode_time_keyset(self._pages, "scans", query, request.page_token)
        rows = await self._service.list_scans(
            current_principal(), event_id, gate, before, size + 1, request.conflicts_only
        )
        scans, token = self._pages.page(
            "scans", query, rows, size, scan_to_proto, lambda s: time_keyset(s.scan_time, s.scan_id)
        )
        return gate_pb2.ListScansResponse(scans=scans, next_page_token=token)

    async def GetGateStats(
        self, request: gate_pb2.GetGateStatsRequest, context: Any
    ) -> gate_pb2.GetGateStatsResponse:
        gates, outstanding = await self._service.stats(
            current_principal(), parse_uuid(request.event_id, "event_id")
        )
        return gate_pb2.GetGateStatsResponse(
            gates=[gate_stats_to_proto(g) for g in gates],
            total_admitted=sum(g.admitted for g in gates),
            total_rejected=sum(g.rejected for g in gates),
            tickets_outstanding=outstanding,
            total_offline_admitted=sum(g.offline_admitted for g in gates),
            total_conflicts=sum(g.conflicts for g in gates),
        )

    # --- offline gates (issue 14) ---------------------------------------------------------

    async def GetVerificationKeys(
        self, request: gate_pb2.GetVerificationKeysRequest, context: Any
    ) -> gate_pb2.GetVerificationKeysResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        kit = await self._signing.verification_keys(current_principal(), event_id)
        g = kit.gate
        return gate_pb2.GetVerificationKeysResponse(
            event_id=str(event_id),
            keys=[key_to_proto(k, g.end) for k in kit.keys],
            doors_open_time=timestamp(g.doors),
            end_time=timestamp(g.end),
            cancelled=g.cancelled,
            offline_admission_allowed=g.offline_admission,
            last_revocation_sequence=g.last_revocation,
            server_time=timestamp(dt.datetime.now(dt.UTC)),
        )

    async def ListRevocations(
        self, request: gate_pb2.ListRevocationsRequest, context: Any
    ) -> gate_pb2.ListRevocationsResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        size = resolve_page_size(request.page_size, 1_000, 10_000)
        query = {"event": str(event_id), "after": request.after_sequence}
        position = self._pages.decode("revocations", query, request.page_token)
        after = request.after_sequence if position is None else int(position)
        rows, last = await self._signing.revocations(current_principal(), event_id, after, size + 1)

        def to_proto(r: RevocationRow) -> gate_pb2.Revocation:
            return gate_pb2.Revocation(
                sequence=r.sequence,
                ticket_id=str(r.ticket_id),
                cause=CAUSE_TO_PROTO[r.cause],
                code_tag=r.code_tag or b"",
                revoke_time=timestamp(r.revoke_time),
            )

        items, token = self._pages.page(
            "revocations", query, rows, size, to_proto, lambda r: r.sequence
        )
        return gate_pb2.ListRevocationsResponse(
            revocations=items, next_page_token=token, last_sequence=last
        )

    async def UploadOfflineScans(
        self, request: gate_pb2.UploadOfflineScansRequest, context: Any
    ) -> gate_pb2.UploadOfflineScansResponse:
        principal = current_principal()
        event_id = parse_uuid(request.event_id, "event_id")
        gate = request.gate_id.strip()
        scans: list[OfflineScanInput] = []
        for i, s in enumerate(request.scans):
            code, gate = validate_scan(s.code, request.gate_id)
            if not s.HasField("scan_time"):
                raise InvalidArgument.one(f"scans[{i}].scan_time", "is required")
            scans.append(
                OfflineScanInput(
                    ScanInput(
                        code=code,
                        event_id=event_id,
                        gate_id=gate,
                        scan_id=parse_uuid(s.scan_id, f"scans[{i}].scan_id"),
                    ),
                    parse_time(s.scan_time, f"scans[{i}].scan_time"),
                )
            )
        if len({s.scan.scan_id for s in scans}) != len(scans):
            raise InvalidArgument.one("scans", "a scan_id appears twice in one upload")
        # One token of the gate's and the caller's scan rate per batch (at most 100 scans):
        # a kiosk catching up after an outage must not be refused for its own backlog.
        self._service.admit_rate(principal, event_id, gate)
        outcomes = await self._service.upload_offline(principal, event_id, gate, scans)
        return gate_pb2.UploadOfflineScansResponse(outcomes=[outcome_to_proto(o) for o in outcomes])

    async def CreateDevice(
        self, request: gate_pb2.CreateDeviceRequest, context: Any
    ) -> gate_pb2.CreateDeviceResponse:
        device, token, now = await self._devices.create(
            current_principal(),
            parse_uuid(request.event_id, "event_id"),
            request.gate_id,
            request.display_name,
        )
        return gate_pb2.CreateDeviceResponse(
            device=device_to_proto(device, now), enrollment_token=token
        )

    async def EnrollDevice(
        self, request: gate_pb2.EnrollDeviceRequest, context: Any
    ) -> gate_pb2.EnrollDeviceResponse:
        device, credential, now = await self._devices.enroll(request.enrollment_token)
        return gate_pb2.EnrollDeviceResponse(
            device=device_to_proto(device, now), device_credential=credential
        )

    async def ListDevices(
        self, request: gate_pb2.ListDevicesRequest, context: Any
    ) -> gate_pb2.ListDevicesResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        size = resolve_page_size(request.page_size, 100, 1_000)
        query = {"event": str(event_id)}
        after = decode_time_keyset(self._pages, "devices", query, request.page_token)
        rows, now = await self._devices.list(current_principal(), event_id, after, size + 1)
        devices, token = self._pages.page(
            "devices",
            query,
            rows,
            size,
            lambda d: device_to_proto(d, now),
            lambda d: time_keyset(d.create_time, d.id),
        )
        return gate_pb2.ListDevicesResponse(devices=devices, next_page_token=token)

    async def RevokeDevice(
        self, request: gate_pb2.RevokeDeviceRequest, context: Any
    ) -> gate_pb2.RevokeDeviceResponse:
        device, now = await self._devices.revoke(
            current_principal(), parse_uuid(request.device_id, "device_id")
        )
        return gate_pb2.RevokeDeviceResponse(device=device_to_proto(device, now))

    async def RotateSigningKey(
        self, request: gate_pb2.RotateSigningKeyRequest, context: Any
    ) -> gate_pb2.RotateSigningKeyResponse:
        key, withdrawn, expire = await self._signing.rotate(
            current_principal(),
            parse_uuid(request.event_id, "event_id"),
            withdraw_previous=request.withdraw_previous,
        )
        return gate_pb2.RotateSigningKeyResponse(
            key=key_to_proto(key, expire), withdrawn_count=withdrawn
        )

    async def SetOfflineAdmission(
        self, request: gate_pb2.SetOfflineAdmissionRequest, context: Any
    ) -> gate_pb2.SetOfflineAdmissionResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        allowed = await self._signing.set_offline_admission(
            current_principal(), event_id, request.allowed
        )
        return gate_pb2.SetOfflineAdmissionResponse(event_id=str(event_id), allowed=allowed)
