"""Pure gate rules: scan input, results, who may act at an event's gates, what a rejected
code may reveal."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ticketd.auth.principal import Principal, Role
from ticketd.errors import FieldViolation, InvalidArgument, PermissionDenied, Reason

# A plain code is 32 characters; a signed code (ticketd.gate.signing.rules) at most 248.
MAX_CODE_CHARS = 256
MAX_GATE_CHARS = 64


class ScanResult(StrEnum):
    ADMITTED = "ADMITTED"
    ALREADY_USED = "ALREADY_USED"
    VOID = "VOID"
    WRONG_EVENT = "WRONG_EVENT"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    NOT_YET_OPEN = "NOT_YET_OPEN"
    EVENT_OVER = "EVENT_OVER"
    EVENT_CANCELLED = "EVENT_CANCELLED"
    # Offline uploads only: admitted by a kiosk offline after an admission elsewhere, and
    # admitted offline on a revoked code.
    CONFLICT = "CONFLICT"
    REVOKED = "REVOKED"


# What the SQL function gate_window() says of an event at an instant. OPEN admits; each of the
# others is the result of any scan at that instant, before any code is looked at.
WINDOW_OPEN = "OPEN"
WINDOW_REFUSALS: dict[str, ScanResult] = {
    "NOT_YET_OPEN": ScanResult.NOT_YET_OPEN,
    "EVENT_OVER": ScanResult.EVENT_OVER,
    "EVENT_CANCELLED": ScanResult.EVENT_CANCELLED,
}


@dataclass(frozen=True)
class ScanInput:
    code: str
    """What was scanned (plain or signed code): its hash is what the log keeps."""
    event_id: uuid.UUID
    gate_id: str
    scan_id: uuid.UUID
    plain_code: str | None = None
    """The plain code a scanned signed code stands for (resolved by the signing service;
    "" when it resolves to none); None: `code` is itself a plain code."""

    @property
    def lookup_code(self) -> str:
        """The plain code to find the ticket by."""
        return self.code if self.plain_code is None else self.plain_code

    @property
    def code_hash(self) -> str:
        # The log keeps a hash, never the code: a leaked log must not admit anyone.
        return hashlib.sha256(self.code.encode("utf-8")).hexdigest()[:32]


@dataclass(frozen=True)
class TicketPlace:
    ticket_id: uuid.UUID
    order_id: uuid.UUID
    section_name: str
    row_label: str | None
    seat_number: int | None
    seat_label: str | None


@dataclass(frozen=True)
class ScanOutcome:
    result: ScanResult
    scan_time: dt.datetime
    place: TicketPlace | None = None
    first_scan_time: dt.datetime | None = None
    first_gate_id: str | None = None
    repeat: bool = False


@dataclass(frozen=True)
class ScanConflictRecord:
    first_scan_id: uuid.UUID
    first_gate_id: str | None
    first_scan_time: dt.datetime | None


@dataclass(frozen=True)
class ScanRecord:
    scan_id: uuid.UUID
    event_id: uuid.UUID
    gate_id: str
    entry_manager_id: uuid.UUID | None
    result: ScanResult
    ticket_id: uuid.UUID | None
    code_hash: str
    scan_time: dt.datetime
    repeat_count: int
    device_id: uuid.UUID | None = None
    offline: bool = False
    upload_time: dt.datetime | None = None
    conflict: ScanConflictRecord | None = None


@dataclass(frozen=True)
class GateCounts:
    gate_id: str
    by_result: dict[ScanResult, int]
    last_scan_time: dt.datetime
    offline_by_result: dict[ScanResult, int] = field(default_factory=dict)
    """The offline uploads among `by_result`."""

    @property
    def admitted(self) -> int:
        """Tickets burned here, online or by an accepted offline upload."""
        return self.by_result.get(ScanResult.ADMITTED, 0)

    @property
    def offline_admitted(self) -> int:
        """Offline uploads, whatever their result: each let a person in at the kiosk."""
        return sum(self.offline_by_result.values())

    @property
    def conflicts(self) -> int:
        return self.by_result.get(ScanResult.CONFLICT, 0)

    @property
    def inside(self) -> int:
        """People inside through this gate: its admissions (there are no exit scans; with
        them it would be admissions minus exits)."""
        return self.admitted

    @property
    def rejected(self) -> int:
        """Online scans that admitted nobody (offline uploads all admitted someone)."""
        online = {r: n - self.offline_by_result.get(r, 0) for r, n in self.by_result.items()}
        return sum(n for r, n in online.items() if r is not ScanResult.ADMITTED)


def validate_scan(code: str, gate_id: str) -> tuple[str, str]:
    """Trimmed code and gate; INVALID_ARGUMENT for empty or oversized input."""
    out: list[FieldViolation] = []
    code = code.strip()
    gate = gate_id.strip()
    if not code:
        out.append(FieldViolation("code", "is required"))
    elif len(code) > MAX_CODE_CHARS:
        out.append(FieldViolation("code", f"must be at most {MAX_CODE_CHARS} characters"))
    if not gate:
        out.append(FieldViolation("gate_id", "is required"))
    elif len(gate) > MAX_GATE_CHARS or not gate.isprintable():
        out.append(FieldViolation("gate_id", f"1..{MAX_GATE_CHARS} printable characters"))
    if out:
        raise InvalidArgument(out)
    return code, gate


def classify_unburned(
    ticket_event_id: uuid.UUID | None, status: str | None, event_id: uuid.UUID
) -> ScanResult:
    """Why a code that did not burn was refused (read after the burn attempt)."""
    if ticket_event_id is None:
        return ScanResult.UNKNOWN_CODE
    if ticket_event_id != event_id:
        return ScanResult.WRONG_EVENT
    if status == "USED":
        return ScanResult.ALREADY_USED
    if status == "VOID":
        return ScanResult.VOID
    # A VALID ticket of this event that the conditional UPDATE did not burn cannot occur
    # (the UPDATE waits for any lock on the row and re-checks it). Should it ever, refuse:
    # never admit anyone without a burn.
    return ScanResult.ALREADY_USED


def shows_place(result: ScanResult) -> bool:
    """Seat details only for tickets of this event; nothing about other events' tickets."""
    return result in (
        ScanResult.ADMITTED,
        ScanResult.ALREADY_USED,
        ScanResult.VOID,
        ScanResult.CONFLICT,
        ScanResult.REVOKED,
    )


def scan_id_mismatch(scan_id: uuid.UUID) -> InvalidArgument:
    """The one answer for a scan_id that is not a retry of the caller's own scan: used with
    another code, event or gate, or by another caller. It says nothing about the first scan."""
    return InvalidArgument(
        [FieldViolation("scan_id", "was already used for a different scan; make a new one")],
        "this scan_id was already used for a different scan",
        reason=Reason.SCAN_ID_MISMATCH,
        metadata={"scan_id": str(scan_id)},
    )


def check_may_scan(principal: Principal, is_staff: bool) -> None:
    """ValidateTicket: ADMIN at every event, an ENTRY_MANAGER only where assigned."""
    if principal.has(Role.ADMIN) or (is_staff and principal.has(Role.ENTRY_MANAGER)):
        return
    raise PermissionDenied(
        "you are not assigned to this event's gates", reason=Reason.NOT_EVENT_STAFF
    )


def check_may_read(principal: Principal, organizer_id: uuid.UUID, is_staff: bool) -> None:
    """ListScans and GetGateStats: ADMIN and SUPPORT at every event (support answers "I was
    refused at the door" for any event, read-only), the event's own ORGANIZER, and an
    ENTRY_MANAGER assigned to it. Any one role that qualifies is enough."""
    if principal.has(Role.ADMIN, Role.SUPPORT):
        return
    if principal.has(Role.ORGANIZER) and principal.user_id == organizer_id:
        return
    if is_staff and principal.has(Role.ENTRY_MANAGER):
        return
    if principal.has(Role.ENTRY_MANAGER):
        raise PermissionDenied(
            "you are not assigned to this event's gates", reason=Reason.NOT_EVENT_STAFF
        )
    raise PermissionDenied(
        "only the event's organizer, its staff, support or an admin may read its gates",
        reason=Reason.NOT_EVENT_OWNER,
    )


def check_device_scope(principal: Principal, event_id: uuid.UUID, gate_id: str | None) -> None:
    """A device acts only for the event and gate it was created for (users pass through)."""
    scope = principal.device
    if scope is None:
        return
    if scope.event_id != event_id or (gate_id is not None and scope.gate_id != gate_id):
        raise PermissionDenied(
            "this kiosk device is enrolled for another event or gate",
            reason=Reason.DEVICE_SCOPE,
            metadata={"event_id": str(scope.event_id), "gate_id": scope.gate_id},
        )


def check_may_sync(principal: Principal, event_id: uuid.UUID, is_staff: bool) -> None:
    """GetVerificationKeys, ListRevocations, UploadOfflineScans: ADMIN, an ENTRY_MANAGER
    assigned to the event, or the event's own device (its gate is checked where one is named)."""
    if principal.is_device:
        check_device_scope(principal, event_id, None)
        return
    check_may_scan(principal, is_staff)


def check_may_manage_gates(principal: Principal, organizer_id: uuid.UUID) -> None:
    """Devices, signing keys and the offline setting: the event's ORGANIZER, or ADMIN."""
    if principal.has(Role.ADMIN):
        return
    if principal.has(Role.ORGANIZER) and principal.user_id == organizer_id:
        return
    raise PermissionDenied(
        "only the event's organizer or an admin may manage its gates",
        reason=Reason.NOT_EVENT_OWNER,
    )


# --- Offline uploads ---------------------------------------------------------------------


class OfflineResult(StrEnum):
    ACCEPTED = "ACCEPTED"
    CONFLICT = "CONFLICT"
    REVOKED = "REVOKED"
    INVALID = "INVALID"


@dataclass(frozen=True)
class OfflineScanInput:
    scan: ScanInput
    scan_time: dt.datetime


@dataclass(frozen=True)
class OfflineOutcome:
    scan_id: uuid.UUID
    result: OfflineResult
    logged: ScanResult | None
    """What the scan log holds for it; None when nothing could be logged (mismatch)."""
    place: TicketPlace | None = None
    first_scan_time: dt.datetime | None = None
    first_gate_id: str | None = None
    repeat: bool = False
    detail: str = ""


def offline_result_of(logged: ScanResult) -> OfflineResult:
    """How a logged scan counts for the kiosk that uploaded it (also for a scan_id first
    validated online: ADMITTED there is ACCEPTED here)."""
    if logged is ScanResult.ADMITTED:
        return OfflineResult.ACCEPTED
    if logged is ScanResult.CONFLICT or logged is ScanResult.ALREADY_USED:
        return OfflineResult.CONFLICT
    if logged in (ScanResult.REVOKED, ScanResult.VOID):
        return OfflineResult.REVOKED
    return OfflineResult.INVALID


_DETAILS = {
    ScanResult.UNKNOWN_CODE: "no ticket has this code (or its signature does not verify)",
    ScanResult.WRONG_EVENT: "a ticket of another event",
    ScanResult.NOT_YET_OPEN: "scanned before the scan window opened",
    ScanResult.EVENT_OVER: "scanned after the scan window closed",
    ScanResult.EVENT_CANCELLED: "scanned after the event was cancelled",
    ScanResult.REVOKED: "the ticket was refunded, voided or its codes were rotated",
    ScanResult.CONFLICT: "the ticket had been admitted elsewhere first",
}
FUTURE_DETAIL = "the scan time is later than the server's clock allows"


def detail_of(logged: ScanResult) -> str:
    return _DETAILS.get(logged, "")


def judge_offline(
    *, status: str, window_at_scan: str, future: bool, code_current: bool
) -> ScanResult:
    """What an uploaded offline admission of a ticket of this event counts as, given the
    ticket as committed now (locked) and the scan window at the kiosk's scan time."""
    if future:
        return ScanResult.NOT_YET_OPEN
    refusal = WINDOW_REFUSALS.get(window_at_scan)
    if refusal is not None:
        return refusal
    if status == "VOID" or not code_current:
        return ScanResult.REVOKED
    if status == "USED":
        return ScanResult.CONFLICT
    return ScanResult.ADMITTED


# WatchGate (issue 15): the event's scans as a stream, each with its gate's counts after it.


@dataclass(frozen=True)
class GateChangeRecord:
    """One scan of the event's gate stream with its gate's counts after it; in a snapshot
    (no scan), a gate's counts as of `sequence`; `caught_up`: neither, only a marker that
    everything up to `sequence` has been sent."""

    sequence: int
    gate: GateCounts | None
    scan_id: uuid.UUID | None = None
    result: ScanResult | None = None
    offline: bool = False
    scan_time: dt.datetime | None = None
    snapshot: bool = False
    caught_up: bool = False


def counted(
    gates: dict[str, GateCounts],
    gate_id: str,
    result: ScanResult,
    offline: bool,
    scan_time: dt.datetime,
) -> GateCounts:
    """`gates` with one more scan at `gate_id` (updated in place); the gate's new counts."""
    old = gates.get(gate_id)
    by_result = dict(old.by_result) if old else {}
    by_result[result] = by_result.get(result, 0) + 1
    offline_by = dict(old.offline_by_result) if old else {}
    if offline:
        offline_by[result] = offline_by.get(result, 0) + 1
    last = scan_time if old is None or scan_time > old.last_scan_time else old.last_scan_time
    new = GateCounts(gate_id, by_result, last, offline_by)
    gates[gate_id] = new
    return new


def counts_from_rows(rows: list[Any]) -> dict[str, GateCounts]:
    """Per-gate counts from rows of (gate_id, result, offline, n, last)."""
    gates: dict[str, GateCounts] = {}
    for r in rows:
        old = gates.get(r["gate_id"])
        result = ScanResult(r["result"])
        by_result = dict(old.by_result) if old else {}
        by_result[result] = by_result.get(result, 0) + r["n"]
        offline_by = dict(old.offline_by_result) if old else {}
        if r["offline"]:
            offline_by[result] = offline_by.get(result, 0) + r["n"]
        last = r["last"] if old is None or r["last"] > old.last_scan_time else old.last_scan_time
        gates[r["gate_id"]] = GateCounts(r["gate_id"], by_result, last, offline_by)
    return gates
