"""GateService: protobuf <-> gate domain; no SQL here."""

from __future__ import annotations

from typing import Any

from ticketd.auth.principal import current_principal
from ticketd.edge.convert import parse_uuid, timestamp
from ticketd.gate.rules import ScanInput, ScanRecord, ScanResult, validate_scan
from ticketd.gate.service import GateService
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
}


def scan_to_proto(s: ScanRecord) -> gate_pb2.Scan:
    return gate_pb2.Scan(
        scan_id=str(s.scan_id),
        event_id=str(s.event_id),
        gate_id=s.gate_id,
        entry_manager_id=str(s.entry_manager_id),
        result=RESULT_TO_PROTO[s.result],
        ticket_id=str(s.ticket_id) if s.ticket_id else "",
        code_hash=s.code_hash,
        scan_time=timestamp(s.scan_time),
        repeat_count=s.repeat_count,
    )


class GateServicer(gate_pb2_grpc.GateServiceServicer):
    """Implements ticketing.v1.GateService; access rules are in ticketd.auth.policy."""

    def __init__(self, service: GateService, pages: PageTokens) -> None:
        self._service = service
        self._pages = pages

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
        response = gate_pb2.ValidateTicketResponse(
            result=RESULT_TO_PROTO[outcome.result],
            scan_time=timestamp(outcome.scan_time),
            first_gate_id=outcome.first_gate_id or "",
            repeat=outcome.repeat,
        )
        if outcome.first_scan_time is not None:
            response.first_scan_time.CopyFrom(timestamp(outcome.first_scan_time))
        if outcome.place is not None:
            p = outcome.place
            response.ticket.CopyFrom(
                gate_pb2.ScannedTicket(
                    ticket_id=str(p.ticket_id),
                    order_id=str(p.order_id),
                    section_name=p.section_name,
                    row_label=p.row_label or "",
                    seat_number=p.seat_number or 0,
                    seat_label=p.seat_label or "",
                )
            )
        return response

    async def ListScans(
        self, request: gate_pb2.ListScansRequest, context: Any
    ) -> gate_pb2.ListScansResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        gate = request.gate_id.strip() or None
        size = resolve_page_size(request.page_size, 100, 1_000)
        query = {"event": str(event_id), "gate": gate}
        before = decode_time_keyset(self._pages, "scans", query, request.page_token)
        rows = await self._service.list_scans(current_principal(), event_id, gate, before, size + 1)
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
            gates=[
                gate_pb2.GateStats(
                    gate_id=g.gate_id,
                    admitted=g.admitted,
                    rejected=g.rejected,
                    last_scan_time=timestamp(g.last_scan_time),
                    by_result=[
                        gate_pb2.ResultCount(result=RESULT_TO_PROTO[r], count=n)
                        for r, n in sorted(g.by_result.items(), key=lambda kv: kv[0].value)
                    ],
                )
                for g in gates
            ],
            total_admitted=sum(g.admitted for g in gates),
            total_rejected=sum(g.rejected for g in gates),
            tickets_outstanding=outstanding,
        )
