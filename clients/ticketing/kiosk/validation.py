"""The ticket-validation loop of one kiosk, independent of any screen.

`Kiosk.scan(code)` journals the scan, sends it with a fresh scan_id, retries transport
failures with that same scan_id inside a bounded budget, journals the result and returns a
`ScanResultView`. Whatever the screen is (rich, plain lines, a test) only sees views and the
`KioskObserver` callbacks.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc import aio

from ticketing.errors import TicketingError, decode_error
from ticketing.kiosk.health import UNREACHABLE, check_gate_service
from ticketing.kiosk.journal import Journal, PendingScan, code_hash
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


class _SilentObserver:
    def link_changed(self, reachable: bool, detail: str) -> None:
        pass

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        pass


Reauthenticate = Callable[[], Awaitable[bool]]
"""Signs in again (after an expired token); True when a fresh token is in place."""


class Kiosk:
    """One gate's scanner: validates codes against one event and keeps the counts.

    `gate` is a GateService stub whose channel adds the bearer token; `health`, if given, is
    a grpc.health.v1 Health stub on the same channel, for `watch_health`. Scans must be
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
        view = await self._submit(request, code_hash(code), resubmitted)
        self.journal.record_result(scan_id, view.journal_fields())
        self.counts.add(view)
        return view

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
        if reachable == self._reachable and why_not == self._why_not:
            return
        self._reachable = reachable
        self._why_not = why_not
        self._observer.link_changed(reachable, detail)

    async def watch_health(self, interval: float = 1.0, check_timeout: float = 1.0) -> None:
        """Poll grpc.health.v1 Health/Check for the gate service until cancelled.

        A poll with a short deadline rather than Health/Watch (see `ticketing.kiosk.health`).
        Polling also keeps the channel reconnecting while nobody scans, so the first scan
        after an outage does not pay for the reconnect.
        """
        if self._health is None:
            return
        while True:
            started = time.monotonic()
            why_not = await check_gate_service(self._health, check_timeout)
            self._set_reachable(not why_not, why_not)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
