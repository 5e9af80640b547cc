"""The ticket-validation loop of one kiosk, independent of any screen.

`Kiosk.scan(code)` journals the scan, sends it with a fresh scan_id, retries transport
failures with that same scan_id inside a bounded budget, journals the result and returns a
`ScanResultView`. Whatever the screen is (rich, plain lines, a test) only sees views and the
`KioskObserver` callbacks.

Offline (issue 14): with a synced `OfflineKit`, a call that fails with "the server is not
there" (`ticketing.kiosk.switching`) switches the kiosk OFFLINE at once, and that scan and the
following ones are judged locally (signed codes only), journaled with `"offline": true` and
uploaded with their scan_ids (UploadOfflineScans, idempotent) once the server answers again.
`maintain` is the background task that probes the server, uploads and syncs the kit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from ticketing.errors import TicketingError, decode_error
from ticketing.kiosk.health import UNREACHABLE, check_gate_service
from ticketing.kiosk.journal import Journal, OfflineAdmission, PendingScan, code_hash
from ticketing.kiosk.offline import OfflineKit, OfflineVerdict
from ticketing.kiosk.switching import Link, Mode, batches, offline_outcome
from ticketing.kiosk.views import (
    FROM_PROTO,
    Counts,
    Outcome,
    ScanResultView,
    SeatView,
    reason_text,
)
from ticketing.v1 import gate_pb2, gate_pb2_grpc

# Worth another attempt with the same scan_id: the server did nothing (UNAVAILABLE,
# RESOURCE_EXHAUSTED, ABORTED), or we cannot know (DEADLINE_EXCEEDED) and the scan_id makes a
# repeat harmless. Every other status is the server's final word on this scan.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Deadline per call and the bounded backoff between calls of one scan."""

    attempt_timeout: float = 3.0
    """gRPC deadline of each ValidateTicket call, seconds."""
    budget: float = 30.0
    """Total time one scan may take before it is recorded UNRESOLVED, seconds."""
    initial_backoff: float = 0.2
    """First pause between attempts; doubles up to `max_backoff` (full jitter)."""
    max_backoff: float = 2.0


class KioskObserver(Protocol):
    """What a screen hears about besides finished scans."""

    def link_changed(self, reachable: bool, detail: str) -> None:
        """The server became unreachable (detail says why) or reachable again."""

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        """Attempt `attempt` of a scan failed with `status`; the next one follows soon."""

    def mode_changed(self, mode: Mode, waiting: int) -> None:
        """The kiosk now admits ONLINE or OFFLINE; `waiting` scans wait for upload."""

    def uploaded(self, results: Counter[str], waiting: int) -> None:
        """A batch of offline admissions was uploaded: its results, and what still waits."""

    def device_revoked(self) -> None:
        """The server refused this kiosk's device credential as revoked."""


class _SilentObserver:
    def link_changed(self, reachable: bool, detail: str) -> None:
        pass

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        pass

    def mode_changed(self, mode: Mode, waiting: int) -> None:
        pass

    def uploaded(self, results: Counter[str], waiting: int) -> None:
        pass

    def device_revoked(self) -> None:
        pass


DEVICE_REVOKED_REASON = "DEVICE_REVOKED"


def _is_device_revoked(error: TicketingError) -> bool:
    return error.code == grpc.StatusCode.UNAUTHENTICATED and error.reason == DEVICE_REVOKED_REASON


def _seat_of(ticket_seat: str) -> SeatView:
    # A signed code carries "Section/Row/Seat", or the section alone for general admission.
    parts = ticket_seat.rsplit("/", 2)
    return SeatView(*parts) if len(parts) == 3 else SeatView(ticket_seat)


def _timestamp(iso: str) -> Timestamp:
    ts = Timestamp()
    try:
        ts.FromDatetime(dt.datetime.fromisoformat(iso))
    except ValueError:
        ts.GetCurrentTime()
    return ts


ResponseT = TypeVar("ResponseT")

Reauthenticate = Callable[[], Awaitable[bool]]
"""Signs in again (after an expired token); True when a fresh token is in place."""


class Kiosk:
    """One gate's scanner: validates codes against one event and keeps the counts.

    `gate` is a GateService stub whose channel adds the bearer token; `health`, if given, is
    a grpc.health.v1 Health stub on the same channel, for `maintain`; `kit` (saved to
    `kit_path` after each sync) lets it admit signed codes offline. Scans must be
    awaited one at a time (a turnstile serves one person at a time).
    """

    def __init__(
        self,
        gate: gate_pb2_grpc.GateServiceAsyncStub,
        journal: Journal,
        *,
        event_id: str,
        gate_id: str,
        observer: KioskObserver | None = None,
        policy: RetryPolicy | None = None,
        reauthenticate: Reauthenticate | None = None,
        doors_open_time: dt.datetime | None = None,
        health: Any | None = None,
        kit: OfflineKit | None = None,
        kit_path: Path | None = None,
        link: Link | None = None,
        clock: Callable[[], dt.datetime] | None = None,
    ) -> None:
        self.event_id = event_id
        self.gate_id = gate_id
        self.journal = journal
        self.counts = Counts()
        self.policy = policy or RetryPolicy()
        self.doors_open_time = doors_open_time
        self._gate = gate
        self._health = health
        self._observer: KioskObserver = observer or _SilentObserver()
        self._reauthenticate = reauthenticate
        self._reachable: bool | None = None
        self._why_not = ""  # the status name behind the last "unreachable"
        self.kit = kit
        self.kit_path = kit_path
        self.link = link or Link()
        # The kiosk's wall clock for offline verdicts and scan times (a test may move it).
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.device_revoked = False
        self.sync_error = ""
        """Why the last sync failed ("" when it worked)."""
        self.upload_error = ""
        """Why the server refused the last upload ("" when it took it)."""
        self.kit_save_error = ""
        """Why the kit could not be written to kit_path ("" when it could)."""
        self._upload_after = 0.0
        self.clock_skew_seconds: float | None = None
        """Server clock minus this kiosk's at the last sync (positive: the kiosk is behind)."""
        self.upload_results: Counter[str] = Counter()
        self.counts.waiting = journal.waiting_count

    @property
    def offline_ready(self) -> bool:
        """Whether the kiosk can judge scans itself (it has a synced kit)."""
        return self.kit is not None and self.kit.synced

    @property
    def reachable(self) -> bool | None:
        """Last known state of the link to the server (None before the first answer)."""
        return self._reachable

    async def scan(self, code: str) -> ScanResultView:
        """Validate one physical scan of `code` (trimmed; the caller skips empty lines).

        Never raises for anything the server or network does: refusals, bad input and an
        exhausted retry budget all come back as a view. Raises JournalError if the journal
        cannot be written (then nothing was sent), and CancelledError leaves the scan
        pending in the journal, to be re-submitted by the next start.
        """
        code = code.strip()
        scan_id = str(uuid.uuid4())
        self.journal.record_read(scan_id, code, self.event_id, self.gate_id)
        return await self._resolve(scan_id, code, self.event_id, self.gate_id, resubmitted=False)

    async def resubmit(self, pending: PendingScan) -> ScanResultView:
        """Finish a scan a crash interrupted: same scan_id, code, event and gate as read, so
        the server answers with its original result if it had processed it."""
        return await self._resolve(
            pending.scan_id, pending.code, pending.event_id, pending.gate_id, resubmitted=True
        )

    async def _resolve(
        self, scan_id: str, code: str, event_id: str, gate_id: str, *, resubmitted: bool
    ) -> ScanResultView:
        request = gate_pb2.ValidateTicketRequest(
            code=code, event_id=event_id, gate_id=gate_id, scan_id=scan_id
        )
        base = {"scan_id": scan_id, "code_hash": code_hash(code), "resubmitted": resubmitted}
        if self.device_revoked:
            view = self._revoked_view(base, 0)
        elif self.link.offline and self.offline_ready:
            view = self._judge_offline(base, code, 0)
        else:
            view = await self._submit(request, code_hash(code), resubmitted)
        self.journal.record_result(scan_id, view.journal_fields())
        self.counts.add(view)
        self.counts.waiting = self.journal.waiting_count
        return view

    def _judge_offline(self, base: dict[str, Any], code: str, attempt: int) -> ScanResultView:
        assert self.kit is not None
        now = self.clock()
        verdict, ticket = self.kit.judge(code, now, self.journal.admitted_here())
        outcome = offline_outcome(verdict)
        here = verdict is OfflineVerdict.ALREADY_ADMITTED_HERE
        return ScanResultView(
            **base,
            outcome=outcome,
            reason=reason_text(
                outcome,
                first_gate_id=self.gate_id if here else "",
                doors_open_time=self.doors_open_time,
            ),
            seat=_seat_of(ticket.seat) if ticket is not None else None,
            ticket_id=ticket.ticket_id if ticket is not None else "",
            scan_time=now,
            first_gate_id=self.gate_id if here else "",
            attempts=attempt,
            offline=True,
        )

    def _revoked_view(self, base: dict[str, Any], attempt: int) -> ScanResultView:
        return ScanResultView(
            **base,
            outcome=Outcome.DEVICE_REVOKED,
            reason=reason_text(Outcome.DEVICE_REVOKED),
            attempts=attempt,
            error="UNAUTHENTICATED DEVICE_REVOKED",
        )

    def _note_revoked(self) -> None:
        if not self.device_revoked:
            self.device_revoked = True
            self._observer.device_revoked()

    async def _submit(
        self, request: gate_pb2.ValidateTicketRequest, hashed: str, resubmitted: bool
    ) -> ScanResultView:
        # The kiosk's own resend loop, apart from the SDK's retry policy (GateService is left
        # out of the channel's service config on purpose): a scan is re-sent with its scan_id
        # on more statuses (DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED too), for a budget of
        # seconds rather than a few attempts, and each failure must reach the screen at once
        # ("SERVER UNREACHABLE") and end as UNRESOLVED, a result the journal keeps.
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.budget
        backoff = policy.initial_backoff
        attempt = 0
        reauthenticated = False
        base = {"scan_id": request.scan_id, "code_hash": hashed, "resubmitted": resubmitted}
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            try:
                response = await self._gate.ValidateTicket(
                    request, timeout=max(0.1, min(policy.attempt_timeout, remaining))
                )
            except aio.AioRpcError as err:
                error = decode_error(err)
                if error.code in RETRYABLE:
                    last_error = f"{error.code.name}: {error.message}".rstrip(": ")
                    if error.code in UNREACHABLE:
                        self._set_reachable(False, last_error)
                    if self.link.offline and self.offline_ready:
                        # Same scan_id offline: if the server did process this attempt,
                        # the upload gets its stored answer instead of a second burn.
                        return self._judge_offline(base, request.code, attempt)
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return self._unresolved(base, attempt, last_error)
                    self._observer.retrying(request.scan_id, attempt, error.code.name, remaining)
                    # Full jitter: kiosks that lost the server together do not come back
                    # in lockstep and trip the per-gate rate bound all at once. A server
                    # that says how long to wait (RetryInfo) is taken at its word.
                    pause = random.uniform(0, backoff)
                    if error.retry_delay is not None:
                        pause = max(pause, error.retry_delay)
                    await asyncio.sleep(min(pause, remaining))
                    backoff = min(backoff * 2, policy.max_backoff)
                    if deadline - loop.time() <= 0:
                        return self._unresolved(base, attempt, last_error)
                    continue
                # The server answered, so it is reachable, even if it said no.
                self._set_reachable(True, "")
                if (
                    error.code == grpc.StatusCode.UNAUTHENTICATED
                    and self._reauthenticate is not None
                    and not reauthenticated
                ):
                    reauthenticated = True
                    if await self._reauthenticate():
                        continue
                if _is_device_revoked(error):
                    self._note_revoked()
                    return self._revoked_view(base, attempt)
                return self._refused(base, attempt, error)
            self._set_reachable(True, "")
            return self._from_response(base, attempt, response)

    def _from_response(
        self, base: dict[str, Any], attempt: int, response: gate_pb2.ValidateTicketResponse
    ) -> ScanResultView:
        outcome = FROM_PROTO.get(response.result, Outcome.ERROR)
        first_time = (
            response.first_scan_time.ToDatetime(tzinfo=dt.UTC)
            if response.HasField("first_scan_time")
            else None
        )
        error = "" if outcome is not Outcome.ERROR else f"unexpected result {response.result}"
        return ScanResultView(
            **base,
            outcome=outcome,
            reason=reason_text(
                outcome,
                first_gate_id=response.first_gate_id,
                first_scan_time=first_time,
                doors_open_time=self.doors_open_time,
                error=error,
            ),
            seat=SeatView.from_proto(response.ticket) if response.HasField("ticket") else None,
            ticket_id=response.ticket.ticket_id,
            scan_time=response.scan_time.ToDatetime(tzinfo=dt.UTC)
            if response.HasField("scan_time")
            else None,
            first_gate_id=response.first_gate_id,
            first_scan_time=first_time,
            repeat=response.repeat,
            attempts=attempt,
            error=error,
        )

    def _refused(
        self, base: dict[str, Any], attempt: int, decoded: TicketingError
    ) -> ScanResultView:
        if decoded.code == grpc.StatusCode.INVALID_ARGUMENT:
            detail = "; ".join(f"{v.field} {v.description}" for v in decoded.field_violations)
            error = detail or decoded.message
            outcome = Outcome.INVALID
        else:
            error = f"{decoded.code.name}" + (f" {decoded.reason}" if decoded.reason else "")
            error += f": {decoded.message}" if decoded.message else ""
            outcome = Outcome.ERROR
        return ScanResultView(
            **base,
            outcome=outcome,
            reason=reason_text(outcome, error=error),
            attempts=attempt,
            error=error,
        )

    def _unresolved(self, base: dict[str, Any], attempt: int, error: str) -> ScanResultView:
        return ScanResultView(
            **base,
            outcome=Outcome.UNRESOLVED,
            reason=reason_text(Outcome.UNRESOLVED),
            attempts=attempt,
            error=error,
        )

    def _set_reachable(self, reachable: bool, detail: str) -> None:
        # Report changes of state, and of the reason while down: "not serving" (the server
        # is up, its database is not) and "unreachable" call for different people.
        why_not = "" if reachable else detail.split(":", 1)[0]
        if reachable:
            switched = self.link.server_answered(time.monotonic())
        else:
            switched = self.link.call_failed(why_not)
        if reachable != self._reachable or why_not != self._why_not:
            self._reachable = reachable
            self._why_not = why_not
            self._observer.link_changed(reachable, detail)
        if switched and self.offline_ready:
            self._observer.mode_changed(self.link.mode, self.journal.waiting_count)

    async def sync(self) -> bool:
        """Fetch the event's keys and the revocations after the kit's last sequence, save
        the kit. False when the server could not be asked (the kit stays as it was)."""
        if self.kit is None:
            return False
        timeout = self.policy.attempt_timeout
        try:
            keys = await self._signed_in(
                self._gate.GetVerificationKeys,
                gate_pb2.GetVerificationKeysRequest(event_id=self.event_id),
                timeout,
            )
            revocations: list[gate_pb2.Revocation] = []
            if keys.last_revocation_sequence > self.kit.last_sequence:
                # One after_sequence for every page: page tokens are bound to it.
                request = gate_pb2.ListRevocationsRequest(
                    event_id=self.event_id, after_sequence=self.kit.last_sequence
                )
                while True:
                    page = await self._signed_in(self._gate.ListRevocations, request, timeout)
                    revocations.extend(page.revocations)
                    if not page.next_page_token:
                        break
                    request.page_token = page.next_page_token
        except aio.AioRpcError as err:
            error = decode_error(err)
            self.sync_error = f"{error.code.name}" + (f" {error.reason}" if error.reason else "")
            self._call_failed(error)
            return False
        self.sync_error = ""
        self._set_reachable(True, "")
        if keys.HasField("server_time"):
            server_now = keys.server_time.ToDatetime(tzinfo=dt.UTC)
            self.clock_skew_seconds = (server_now - self.clock()).total_seconds()
        self.kit.apply_keys(keys)
        self.kit.apply_revocations(revocations)
        if self.kit_path is not None:
            try:
                self.kit.save(self.kit_path)
            except OSError as exc:
                # The kit in memory still admits; only a restart while offline would miss it.
                self.kit_save_error = f"cannot save the kit: {exc.strerror}"
        self.link.synced(time.monotonic())
        return True

    async def refresh_revocations(self, page_size: int = 0) -> int | None:
        """Ask only for the revocations after the kit's last sequence (between full syncs)
        and apply them; the kit is saved when something was new. Returns how many were new,
        None when the server could not be asked (handled as a failed sync: an unreachable
        server turns the kiosk offline, a revoked device is noted). A kit never synced gets
        a full `sync` instead: its keys matter as much as its revocations."""
        if self.kit is None:
            return None
        if not self.kit.synced:
            return 0 if await self.sync() else None
        kit = self.kit
        # One after_sequence for every page: page tokens are bound to it. Sequences are
        # dense and commit-ordered (gate.proto), so resuming from the last one applied
        # never skips a revocation and never applies one twice.
        request = gate_pb2.ListRevocationsRequest(
            event_id=self.event_id, after_sequence=kit.last_sequence, page_size=page_size
        )
        revocations: list[gate_pb2.Revocation] = []
        try:
            while True:
                page = await self._signed_in(
                    self._gate.ListRevocations, request, self.policy.attempt_timeout
                )
                revocations.extend(page.revocations)
                if not page.next_page_token:
                    break
                request.page_token = page.next_page_token
        except aio.AioRpcError as err:
            error = decode_error(err)
            self.sync_error = f"{error.code.name}" + (f" {error.reason}" if error.reason else "")
            self._call_failed(error)
            self.link.revocations_refreshed(time.monotonic())
            return None
        self._set_reachable(True, "")
        before = kit.last_sequence
        kit.apply_revocations(revocations)
        new = sum(1 for r in revocations if r.sequence > before)
        if new and self.kit_path is not None:
            try:
                kit.save(self.kit_path)
            except OSError as exc:
                self.kit_save_error = f"cannot save the kit: {exc.strerror}"
        self.link.revocations_refreshed(time.monotonic())
        return new

    async def _signed_in(
        self, method: Callable[..., Awaitable[ResponseT]], request: Any, deadline_s: float
    ) -> ResponseT:
        """One call; an expired token (a person's, not a device's) is renewed once first."""
        try:
            return await method(request, timeout=deadline_s)
        except aio.AioRpcError as err:
            if (
                err.code() != grpc.StatusCode.UNAUTHENTICATED
                or self._reauthenticate is None
                or _is_device_revoked(decode_error(err))
                or not await self._reauthenticate()
            ):
                raise
        return await method(request, timeout=deadline_s)

    def kit_doors(self) -> dt.datetime | None:
        """The scan window's start as last synced, if any."""
        if self.kit is None or not self.kit.synced or not self.kit.doors:
            return None
        return dt.datetime.fromtimestamp(self.kit.doors, dt.UTC)

    async def upload(self) -> int:
        """Upload the journal's offline admissions in batches (UploadOfflineScans), journal
        each answer; returns how many were acknowledged. Stops at the first failed call:
        what is left is uploaded next time, and a repeat is answered from the server's
        record (idempotent by scan_id), so nothing is lost or counted twice."""
        done = 0
        waiting: list[OfflineAdmission] = self.journal.waiting_uploads()
        for batch in batches(waiting):
            request = gate_pb2.UploadOfflineScansRequest(
                event_id=self.event_id,
                gate_id=self.gate_id,
                scans=[
                    gate_pb2.OfflineScan(
                        scan_id=w.scan_id, code=w.code, scan_time=_timestamp(w.scan_time)
                    )
                    for w in batch
                ],
            )
            try:
                reply = await self._signed_in(
                    self._gate.UploadOfflineScans, request, self.policy.attempt_timeout
                )
            except aio.AioRpcError as err:
                error = decode_error(err)
                self._call_failed(error)
                if error.code not in UNREACHABLE:
                    # A refusal (scope, role) will not change by itself: ask again only
                    # after a sync interval, not on every probe.
                    self.upload_error = f"{error.code.name} {error.reason}".rstrip()
                    self._upload_after = time.monotonic() + self.link.sync_interval
                return done
            self.upload_error = ""
            self._set_reachable(True, "")
            results: Counter[str] = Counter()
            for outcome in reply.outcomes:
                name = gate_pb2.OfflineScanResult.Name(outcome.result).removeprefix(
                    "OFFLINE_SCAN_RESULT_"
                )
                self.journal.record_upload(
                    outcome.scan_id,
                    {
                        "upload_result": name,
                        "logged_result": gate_pb2.ValidationResult.Name(
                            outcome.logged_result
                        ).removeprefix("VALIDATION_RESULT_"),
                        "first_gate_id": outcome.first_gate_id or None,
                        "first_scan_time": outcome.first_scan_time.ToDatetime(
                            tzinfo=dt.UTC
                        ).isoformat()
                        if outcome.HasField("first_scan_time")
                        else None,
                        "repeat": outcome.repeat,
                        "detail": outcome.detail or None,
                    },
                )
                results[name] += 1
            done += len(reply.outcomes)
            self.upload_results.update(results)
            self.counts.waiting = self.journal.waiting_count
            self._observer.uploaded(results, self.journal.waiting_count)
        return done

    def _call_failed(self, error: TicketingError) -> None:
        if _is_device_revoked(error):
            self._note_revoked()
        elif error.code in UNREACHABLE:
            self._set_reachable(False, f"{error.code.name}: {error.message}".rstrip(": "))

    async def maintain(self, interval: float = 1.0, check_timeout: float = 1.0) -> None:
        """Until cancelled: probe the server (health), and while it answers, upload what
        waits, sync the kit when due and, between syncs, fetch new revocations. The probe
        is what brings an idle offline kiosk back online."""
        while True:
            started = time.monotonic()
            if self._health is not None:
                why_not = await check_gate_service(self._health, check_timeout)
                self._set_reachable(not why_not, why_not)
            if not self.link.offline and not self.device_revoked:
                if self.journal.waiting_count and time.monotonic() >= self._upload_after:
                    await self.upload()
                if self.kit is not None and self.link.sync_due(time.monotonic()):
                    await self.sync()
                elif self.kit is not None and self.link.revocations_due(time.monotonic()):
                    await self.refresh_revocations()
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
