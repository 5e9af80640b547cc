"""The scan flow: one transaction per scan; idempotent by scan_id; rejections are results."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncGenerator
from typing import Any

from ticketd.auth.principal import Principal, Role
from ticketd.db import outbox
from ticketd.db.database import Connection, Database
from ticketd.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    stream_shut_down,
)
from ticketd.gate import repository as repo
from ticketd.gate.limits import ScanLimiter
from ticketd.gate.rules import (
    FUTURE_DETAIL,
    WINDOW_REFUSALS,
    GateChangeRecord,
    GateCounts,
    OfflineOutcome,
    OfflineResult,
    OfflineScanInput,
    ScanInput,
    ScanOutcome,
    ScanRecord,
    ScanResult,
    check_device_scope,
    check_may_read,
    check_may_scan,
    check_may_sync,
    classify_unburned,
    counted,
    counts_from_rows,
    detail_of,
    judge_offline,
    offline_result_of,
    scan_id_mismatch,
    shows_place,
)
from ticketd.gate.signing.rules import is_signed_form
from ticketd.gate.signing.service import SigningService
from ticketd.shared import ScanWindowDefaults, event_not_found

# Gate changes read from the outbox per query: what a gate stream holds in memory at most.
GATE_STREAM_PAGE = 500


class _TwinLoggedFirst(Exception):
    """A call with the same scan_id is in the log already: answer from it (or refuse)."""


class GateService:
    """Validates scans (online and uploaded offline) and reads the scan log."""

    def __init__(
        self,
        db: Database,
        *,
        limiter: ScanLimiter,
        window: ScanWindowDefaults,
        signing: SigningService,
        clock_skew: dt.timedelta = dt.timedelta(minutes=5),
    ) -> None:
        self._db = db
        self._signing = signing
        self._skew = clock_skew
        # Per gate, per caller and gate names per caller: see ticketd.gate.limits. Codes carry
        # 192 random bits, so the bounds are defence in depth against a kiosk used to
        # enumerate, not the only wall.
        self._limiter = limiter
        self._window = window
        self._closing = asyncio.Event()

    def stop_streams(self) -> None:
        """Server shutdown: every gate stream ends (SERVER_SHUTTING_DOWN, with where to
        resume) instead of holding the shutdown for its whole grace period."""
        self._closing.set()

    async def watch_gate(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        after_sequence: int,
        *,
        poll_seconds: float,
    ) -> AsyncGenerator[list[GateChangeRecord], None]:
        """The event's scans as they commit, each with its gate's counts after it (who may:
        check_may_read). after_sequence 0: first every gate's counts as of one sequence
        (snapshot), then the scans after it; N: the scans after N, counts continuing from
        those at N. Then a caught_up marker once what committed before the call is sent."""
        async with self._db.connection() as conn:
            await self._check_read(conn, principal, event_id)
            if after_sequence == 0:
                after, rows = await repo.gate_snapshot(conn, event_id)
            else:
                # Numbered first: a resume point is judged against what has committed.
                await self._db.outbox.catch_up(outbox.GATES, event_id)
                last = await repo.last_gate_change(conn, event_id)
                if after_sequence > last:
                    raise FailedPrecondition(
                        f"after_sequence {after_sequence} is beyond the stream's last change "
                        f"{last}",
                        reason=Reason.SEQUENCE_AHEAD,
                        metadata={"last_sequence": str(last)},
                    )
                after = after_sequence
                rows = await repo.gate_counts_at(conn, event_id, after)
        gates = counts_from_rows(rows)
        if after_sequence == 0 and gates:
            yield [
                GateChangeRecord(sequence=after, gate=g, snapshot=True)
                for g in sorted(gates.values(), key=lambda g: g.gate_id)
            ]

        async def read_page(start: int) -> tuple[list[Any], bool]:
            async with self._db.connection() as conn:
                changes = await repo.gate_changes_after(conn, event_id, start, GATE_STREAM_PAGE)
            return changes, len(changes) == GATE_STREAM_PAGE

        def select(changes: list[Any]) -> list[GateChangeRecord]:
            """This reader's records of a page: its own counts move on with each scan."""
            records = []
            for r in changes:
                result = ScanResult(r["result"])
                gate = counted(gates, r["gate_id"], result, r["offline"], r["scan_time"])
                records.append(
                    GateChangeRecord(
                        sequence=r["sequence"],
                        gate=gate,
                        scan_id=r["scan_id"],
                        result=result,
                        offline=r["offline"],
                        scan_time=r["scan_time"],
                    )
                )
            return records

        async def read(start: int) -> tuple[list[GateChangeRecord], int, bool]:
            changes, more = await read_page(start)
            records = select(changes)
            return records, records[-1].sequence if records else start, more

        pages = self._db.outbox.follow(
            outbox.GATES,
            event_id,
            after,
            read,
            poll_seconds=poll_seconds,
            closing=self._closing,
            closed=stream_shut_down,
            caught_up=lambda at: GateChangeRecord(sequence=at, gate=None, caught_up=True),
            # One reader of the event's new scans for all its watchers; counts per watcher.
            tail=outbox.Tail(read_page, _sequence_of, select),
        )
        try:
            async for page in pages:
                yield page
        finally:
            await pages.aclose()

    def admit_rate(self, principal: Principal, event_id: uuid.UUID, gate_id: str) -> None:
        """RESOURCE_EXHAUSTED (with RetryInfo) when this caller or gate must slow down."""
        self._limiter.admit(principal.user_id, event_id, gate_id)

    async def _resolved(self, scan: ScanInput) -> ScanInput:
        """A scanned signed code stands for the ticket's current plain code ("" when its
        signature does not verify, or the ticket's codes were rotated since)."""
        if not is_signed_form(scan.code):
            return scan
        async with self._db.connection() as conn:
            verified = await self._signing.verify(conn, scan.code)
            plain = await repo.plain_code(conn, verified.fields) if verified else None
        return dataclasses.replace(scan, plain_code=plain or "")

    async def validate(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        """One physical scan: ADMITTED (burned now), the stored answer of a repeat, or why not."""
        check_device_scope(principal, scan.event_id, scan.gate_id)
        scan = await self._resolved(scan)
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
        first_gate = stored.used_gate_id if admitted_at else None
        if stored.result is ScanResult.CONFLICT:
            admitted_at, first_gate = stored.first_scan_time, stored.first_gate_id
        return ScanOutcome(
            result=stored.result,
            scan_time=stored.scan_time,
            place=stored.place if shows_place(stored.result) else None,
            first_scan_time=admitted_at,
            first_gate_id=first_gate,
            repeat=True,
        )

    async def _validate_once(self, principal: Principal, scan: ScanInput) -> ScanOutcome:
        async with self._db.transaction() as conn:
            attempt = await repo.scan_and_burn(
                conn,
                scan,
                principal.user_id,
                admin=principal.has(Role.ADMIN),
                window=self._window,
                device=principal.is_device,
            )
            if attempt is None:
                raise event_not_found(scan.event_id)
            # Before the repeat check: an unassigned caller's retries are refused too.
            if not principal.is_device:
                check_may_scan(principal, attempt.is_staff)
            if attempt.seen:
                raise _TwinLoggedFirst()
            refusal = WINDOW_REFUSALS.get(attempt.window)
            if refusal is not None:
                logged = await repo.log_rejection(
                    conn,
                    scan,
                    principal.user_id,
                    refusal,
                    None,
                    attempt.at,
                    device=principal.is_device,
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
            state = await repo.ticket_state(conn, scan.lookup_code)
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
                device=principal.is_device,
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
        conflicts_only: bool = False,
    ) -> list[ScanRecord]:
        """A page of the event's scan log, newest first (see check_may_read for who)."""
        async with self._db.connection() as conn:
            await self._check_read(conn, principal, event_id)
            return await repo.list_scans(
                conn,
                event_id,
                gate_id=gate_id,
                before=before,
                limit=limit,
                conflicts_only=conflicts_only,
            )

    async def stats(
        self, principal: Principal, event_id: uuid.UUID
    ) -> tuple[list[GateCounts], int]:
        """Per-gate counts and outstanding tickets (see check_may_read for who)."""
        async with self._db.connection() as conn:
            await self._check_read(conn, principal, event_id)
            return await repo.gate_counts(conn, event_id)

    # --- offline uploads ----------------------------------------------------------------

    async def upload_offline(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        gate_id: str,
        scans: list[OfflineScanInput],
    ) -> list[OfflineOutcome]:
        """UploadOfflineScans: one transaction per scan, in request order; idempotent by
        scan_id (a repeat returns the stored result and writes nothing but its count)."""
        check_device_scope(principal, event_id, gate_id)
        async with self._db.connection() as conn:
            access = await repo.read_access(conn, event_id, principal.user_id)
        if access is None:
            raise event_not_found(event_id)
        check_may_sync(principal, event_id, access.is_staff)
        out: list[OfflineOutcome] = []
        for item in scans:
            resolved = OfflineScanInput(await self._resolved(item.scan), item.scan_time)
            try:
                out.append(await self._upload_once(principal, resolved))
            except _TwinLoggedFirst:
                out.append(await self._upload_repeat(principal, resolved))
        return out

    async def _upload_repeat(self, principal: Principal, item: OfflineScanInput) -> OfflineOutcome:
        scan = item.scan
        try:
            stored = await self._repeat(principal, scan)
        except InvalidArgument as exc:
            if exc.reason is not Reason.SCAN_ID_MISMATCH:
                raise
            return OfflineOutcome(
                scan.scan_id,
                OfflineResult.INVALID,
                None,
                detail="this scan_id was already used for a different scan",
            )
        return OfflineOutcome(
            scan.scan_id,
            offline_result_of(stored.result),
            stored.result,
            place=stored.place if shows_place(stored.result) else None,
            first_scan_time=stored.first_scan_time,
            first_gate_id=stored.first_gate_id,
            repeat=True,
            detail=detail_of(stored.result),
        )

    async def _ticket_of(self, conn: Connection, scan: ScanInput) -> uuid.UUID | None:
        if scan.plain_code is None:
            return await repo.ticket_id_by_code(conn, scan.code)
        # A signed code names its ticket: even when rotated (plain_code ""), the upload is
        # about that ticket, and is REVOKED rather than unknown.
        verified = await self._signing.verify(conn, scan.code)
        return verified.fields.ticket_id if verified else None

    async def _upload_once(self, principal: Principal, item: OfflineScanInput) -> OfflineOutcome:
        scan, at = item.scan, item.scan_time
        device = principal.is_device
        async with self._db.transaction() as conn:
            if await repo.stored_scan(conn, scan.scan_id) is not None:
                raise _TwinLoggedFirst()
            ticket_id = await self._ticket_of(conn, scan)
            ticket = (
                await repo.lock_offline_ticket(conn, ticket_id, at, self._window, self._skew)
                if ticket_id
                else None
            )
            conflict: repo.Admission | None = None
            if ticket is None or ticket.event_id != scan.event_id:
                logged = ScanResult.UNKNOWN_CODE if ticket is None else ScanResult.WRONG_EVENT
                ticket_id = None
            else:
                logged = judge_offline(
                    status=ticket.status,
                    window_at_scan=ticket.window_at_scan,
                    future=ticket.future,
                    code_current=scan.lookup_code == ticket.code,
                )
                if logged is ScanResult.CONFLICT:
                    conflict = await repo.admission_of(conn, ticket.place.ticket_id)
                    if conflict is None:  # pragma: no cover - every USED ticket has one
                        logged = ScanResult.REVOKED
                elif logged is ScanResult.ADMITTED and not await repo.burn_offline(
                    conn, ticket.place.ticket_id, at, scan.gate_id, scan.scan_id
                ):  # pragma: no cover - the ticket is locked VALID
                    raise RuntimeError("offline burn of a locked VALID ticket failed")
            stored_at = await repo.log_rejection(
                conn,
                scan,
                principal.user_id,
                logged,
                ticket_id,
                at,
                device=device,
                offline=True,
                conflict_scan_id=conflict.scan_id if conflict else None,
            )
            if stored_at is None:
                # A twin of this scan_id logged first: leaving rolls our burn back.
                raise _TwinLoggedFirst()
        future = ticket is not None and ticket.future and ticket_id is not None
        return OfflineOutcome(
            scan.scan_id,
            offline_result_of(logged),
            logged,
            place=ticket.place if ticket is not None and ticket_id is not None else None,
            first_scan_time=conflict.scan_time if conflict else None,
            first_gate_id=conflict.gate_id if conflict else None,
            detail=FUTURE_DETAIL if future else detail_of(logged),
        )


_USED_INFO = frozenset({ScanResult.ADMITTED, ScanResult.ALREADY_USED})


def _sequence_of(row: Any) -> int:
    sequence: int = row["sequence"]
    return sequence
