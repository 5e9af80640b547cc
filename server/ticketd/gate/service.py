"""The scan flow: one transaction per scan; idempotent by scan_id; rejections are results."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.auth.principal import Principal
from ticketd.db.database import Database
from ticketd.errors import FailedPrecondition, NotFound, Reason, ResourceExhausted
from ticketd.gate import repository as repo
from ticketd.gate.rules import (
    GateCounts,
    ScanInput,
    ScanOutcome,
    ScanRecord,
    ScanResult,
    classify_unburned,
    shows_place,
)
from ticketd.ratelimit import TokenBuckets
from ticketd.shared import event_not_found


class _TwinLoggedFirst(Exception):
    """A concurrent call with the same scan_id answered first."""


class GateService:
    """Validates scans and reads the scan log."""

    def __init__(
        self,
        db: Database,
        *,
        gate_rate: float,
        gate_burst: float,
    ) -> None:
        self._db = db
        # Per gate: a busy gate's scanners share it. Codes carry 192 random bits, so the
        # bound is defence in depth against a kiosk used to enumerate, not the only wall.
        self._per_gate = TokenBuckets(gate_rate, gate_burst)

    def admit_rate(self, event_id: uuid.UUID, gate_id: str) -> None:
        if not self._per_gate.try_take((event_id, gate_id)):
            raise ResourceExhausted(
                "too many scans at this gate; slow down", reason=Reason.SCAN_RATE_EXCEEDED
            )

    async def validate(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        try:
            return await self._validate_once(principal, scan)
        except _TwinLoggedFirst:
            return await self._repeat(scan)

    async def _repeat(self, scan: ScanInput) -> ScanOutcome:
        async with self._db.transaction() as conn:
            stored = await repo.stored_scan(conn, scan.scan_id)
            if stored is None:  # pragma: no cover - the twin's row exists by construction
                raise NotFound("scan vanished", reason=Reason.SCAN_NOT_FOUND)
            if (stored.event_id, stored.gate_id, stored.code_hash) != (
                scan.event_id,
                scan.gate_id,
                scan.code_hash,
            ):
                # Refused before anything is written: a mismatch is not a retry of that scan.
                raise FailedPrecondition(
                    "this scan_id was already used for a different scan",
                    reason=Reason.SCAN_ID_MISMATCH,
                    metadata={"scan_id": str(scan.scan_id)},
                )
            await repo.count_repeat(conn, scan.scan_id)
        admitted_at = stored.used_time if stored.result in _USED_INFO else None
        return ScanOutcome(
            result=stored.result,
            scan_time=stored.scan_time,
            place=stored.place if shows_place(stored.result) else None,
            first_scan_time=admitted_at,
            first_gate_id=stored.used_gate_id if admitted_at else None,
            repeat=True,
        )

    async def _validate_once(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        async with self._db.transaction() as conn:
            ctx = await repo.scan_context(conn, scan.event_id, scan.scan_id)
            if ctx is None:
                raise event_not_found(scan.event_id)
            if ctx.existing is not None:
                raise _TwinLoggedFirst()
            if ctx.not_open:
                logged = await repo.log_rejection(
                    conn, scan, principal.user_id, ScanResult.NOT_OPEN, None
                )
                if logged is None:
                    raise _TwinLoggedFirst()
                return ScanOutcome(ScanResult.NOT_OPEN, logged)
            burned = await repo.burn(conn, scan, principal.user_id)
            if burned is not None:
                return ScanOutcome(
                    ScanResult.ADMITTED,
                    burned.used_time,
                    place=burned.place,
                    first_scan_time=burned.used_time,
                    first_gate_id=scan.gate_id,
                )
            state = await repo.ticket_state(conn, scan.code)
            result = classify_unburned(
                state.event_id if state else None, state.status if state else None, scan.event_id
            )
            same_event = state is not None and state.event_id == scan.event_id
            logged = await repo.log_rejection(
                conn,
                scan,
                principal.user_id,
                result,
                state.place.ticket_id if (state is not None and same_event) else None,
            )
            if logged is None:
                raise _TwinLoggedFirst()
            used = result is ScanResult.ALREADY_USED and state is not None
            return ScanOutcome(
                result,
                logged,
                place=state.place if (state is not None and shows_place(result)) else None,
                first_scan_time=state.used_time if used and state else None,
                first_gate_id=state.used_gate_id if used and state else None,
            )

    async def list_scans(
        self,
        event_id: uuid.UUID,
        gate_id: str | None,
        before: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScanRecord]:
        async with self._db.connection() as conn:
            if not await repo.event_exists(conn, event_id):
                raise event_not_found(event_id)
            return await repo.list_scans(
                conn, event_id, gate_id=gate_id, before=before, limit=limit
            )

    async def stats(self, event_id: uuid.UUID) -> tuple[list[GateCounts], int]:
        async with self._db.connection() as conn:
            if not await repo.event_exists(conn, event_id):
                raise event_not_found(event_id)
            return await repo.gate_counts(conn, event_id)


_USED_INFO = frozenset({ScanResult.ADMITTED, ScanResult.ALREADY_USED})
