"""The scan flow: one transaction per scan; idempotent by scan_id; rejections are results."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.auth.principal import Principal, Role
from ticketd.db.database import Connection, Database
from ticketd.errors import NotFound, Reason
from ticketd.gate import repository as repo
from ticketd.gate.limits import ScanLimiter
from ticketd.gate.rules import (
    WINDOW_REFUSALS,
    GateCounts,
    ScanInput,
    ScanOutcome,
    ScanRecord,
    ScanResult,
    check_may_read,
    check_may_scan,
    classify_unburned,
    scan_id_mismatch,
    shows_place,
)
from ticketd.shared import ScanWindowDefaults, event_not_found


class _TwinLoggedFirst(Exception):
    """A call with the same scan_id is in the log already: answer from it (or refuse)."""


class GateService:
    """Validates scans and reads the scan log."""

    def __init__(self, db: Database, *, limiter: ScanLimiter, window: ScanWindowDefaults) -> None:
        self._db = db
        # Per gate, per caller and gate names per caller: see ticketd.gate.limits. Codes carry
        # 192 random bits, so the bounds are defence in depth against a kiosk used to
        # enumerate, not the only wall.
        self._limiter = limiter
        self._window = window

    def admit_rate(self, principal: Principal, event_id: uuid.UUID, gate_id: str) -> None:
        """RESOURCE_EXHAUSTED (with RetryInfo) when this caller or gate must slow down."""
        self._limiter.admit(principal.user_id, event_id, gate_id)

    async def validate(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        """One physical scan: ADMITTED (burned now), the stored answer of a repeat, or why not."""
        try:
            return await self._validate_once(principal, scan)
        except _TwinLoggedFirst:
            return await self._repeat(principal, scan)

    async def _repeat(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        async with self._db.transaction() as conn:
            stored = await repo.stored_scan(conn, scan.scan_id)
            if stored is None:  # pragma: no cover - the twin's row exists by construction
                raise NotFound("scan vanished", reason=Reason.SCAN_NOT_FOUND)
            # A scan_id is its first caller's: anyone else replaying it learns nothing and
            # changes nothing. Refused before anything is written: not a retry of that scan.
            if (stored.entry_manager_id, stored.event_id, stored.gate_id, stored.code_hash) != (
                principal.user_id,
                scan.event_id,
                scan.gate_id,
                scan.code_hash,
            ):
                raise scan_id_mismatch(scan.scan_id)
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
            attempt = await repo.scan_and_burn(
                conn, scan, principal.user_id, admin=principal.has(Role.ADMIN), window=self._window
            )
            if attempt is None:
                raise event_not_found(scan.event_id)
            # Before the repeat check: an unassigned caller's retries are refused too.
            check_may_scan(principal, attempt.is_staff)
            if attempt.seen:
                raise _TwinLoggedFirst()
            refusal = WINDOW_REFUSALS.get(attempt.window)
            if refusal is not None:
                logged = await repo.log_rejection(
                    conn, scan, principal.user_id, refusal, None, attempt.at
                )
                if logged is None:
                    raise _TwinLoggedFirst()
                return ScanOutcome(refusal, logged)
            burned = attempt.burned
            if burned is not None:
                if not attempt.logged:
                    # A twin of this scan_id (another code) logged first. Raising leaves the
                    # transaction, which rolls our burn back: the loser burns nothing.
                    raise _TwinLoggedFirst()
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
                attempt.at,
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

    @staticmethod
    async def _check_read(conn: Connection, principal: Principal, event_id: uuid.UUID) -> None:
        access = await repo.read_access(conn, event_id, principal.user_id)
        if access is None:
            raise event_not_found(event_id)
        check_may_read(principal, access.organizer_id, access.is_staff)

    async def list_scans(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        gate_id: str | None,
        before: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[ScanRecord]:
        """A page of the event's scan log, newest first (see check_may_read for who)."""
        async with self._db.connection() as conn:
            await self._check_read(conn, principal, event_id)
            return await repo.list_scans(
                conn, event_id, gate_id=gate_id, before=before, limit=limit
            )

    async def stats(
        self, principal: Principal, event_id: uuid.UUID
    ) -> tuple[list[GateCounts], int]:
        """Per-gate counts and outstanding tickets (see check_may_read for who)."""
        async with self._db.connection() as conn:
            await self._check_read(conn, principal, event_id)
            return await repo.gate_counts(conn, event_id)


_USED_INFO = frozenset({ScanResult.ADMITTED, ScanResult.ALREADY_USED})
