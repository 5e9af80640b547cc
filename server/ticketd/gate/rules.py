"""Pure gate rules: scan input, results, who may act at an event's gates, what a rejected
code may reveal."""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum

from ticketd.auth.principal import Principal, Role
from ticketd.errors import FieldViolation, InvalidArgument, PermissionDenied, Reason

MAX_CODE_CHARS = 128
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
    event_id: uuid.UUID
    gate_id: str
    scan_id: uuid.UUID

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
class ScanRecord:
    scan_id: uuid.UUID
    event_id: uuid.UUID
    gate_id: str
    entry_manager_id: uuid.UUID
    result: ScanResult
    ticket_id: uuid.UUID | None
    code_hash: str
    scan_time: dt.datetime
    repeat_count: int


@dataclass(frozen=True)
class GateCounts:
    gate_id: str
    by_result: dict[ScanResult, int]
    last_scan_time: dt.datetime

    @property
    def admitted(self) -> int:
        return self.by_result.get(ScanResult.ADMITTED, 0)

    @property
    def rejected(self) -> int:
        return sum(n for r, n in self.by_result.items() if r is not ScanResult.ADMITTED)


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
    return result in (ScanResult.ADMITTED, ScanResult.ALREADY_USED, ScanResult.VOID)


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
