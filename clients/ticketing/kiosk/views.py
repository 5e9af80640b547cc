"""What a scan ended as, in display-ready form, and the running counts. No I/O here."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ticketing.v1 import gate_pb2


class Outcome(StrEnum):
    """How one physical scan ended at this kiosk (the journal's `result` field)."""

    ADMITTED = "ADMITTED"
    ALREADY_USED = "ALREADY_USED"
    VOID = "VOID"
    WRONG_EVENT = "WRONG_EVENT"
    UNKNOWN_CODE = "UNKNOWN_CODE"
    NOT_YET_OPEN = "NOT_YET_OPEN"
    EVENT_OVER = "EVENT_OVER"
    EVENT_CANCELLED = "EVENT_CANCELLED"
    # Refused by the server as malformed (INVALID_ARGUMENT): not in the server's scan log.
    INVALID = "INVALID"
    # Any other refusal (PERMISSION_DENIED, UNAUTHENTICATED, INTERNAL...): not admitted.
    ERROR = "ERROR"
    # No answer within the retry budget: the server may or may not have burned the ticket.
    UNRESOLVED = "UNRESOLVED"
    # Offline only (the kiosk's own verdicts, `ticketing.kiosk.switching`):
    # a plain code, which only the server can check;
    PLAIN_CODE = "PLAIN_CODE"
    # a signed code whose signature does not verify with a synced key of this event;
    FORGED = "FORGED"
    # the ticket, or this signed code of it, is on the synced revocation list (also online);
    REVOKED = "REVOKED"
    # the event does not allow offline admission (GateService.SetOfflineAdmission).
    OFFLINE_REFUSED = "OFFLINE_REFUSED"
    # This kiosk's device credential was revoked (GateService.RevokeDevice).
    DEVICE_REVOKED = "DEVICE_REVOKED"


FROM_PROTO: dict[int, Outcome] = {
    gate_pb2.VALIDATION_RESULT_ADMITTED: Outcome.ADMITTED,
    gate_pb2.VALIDATION_RESULT_ALREADY_USED: Outcome.ALREADY_USED,
    gate_pb2.VALIDATION_RESULT_VOID: Outcome.VOID,
    gate_pb2.VALIDATION_RESULT_WRONG_EVENT: Outcome.WRONG_EVENT,
    gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE: Outcome.UNKNOWN_CODE,
    gate_pb2.VALIDATION_RESULT_NOT_YET_OPEN: Outcome.NOT_YET_OPEN,
    gate_pb2.VALIDATION_RESULT_EVENT_OVER: Outcome.EVENT_OVER,
    gate_pb2.VALIDATION_RESULT_EVENT_CANCELLED: Outcome.EVENT_CANCELLED,
    gate_pb2.VALIDATION_RESULT_REVOKED: Outcome.REVOKED,
}


@dataclass(frozen=True)
class SeatView:
    """The place a ticket is for; row and seat are empty for general admission."""

    section: str
    row: str = ""
    seat: str = ""

    @classmethod
    def from_proto(cls, ticket: gate_pb2.ScannedTicket) -> SeatView:
        """From the server's ScannedTicket (the printed label wins over the number)."""
        seat = ticket.seat_label or (str(ticket.seat_number) if ticket.seat_number else "")
        return cls(ticket.section_name, ticket.row_label, seat)

    @property
    def general_admission(self) -> bool:
        return not self.row and not self.seat

    def text(self) -> str:
        """For people: "Stalls · Row A · Seat 3" or "Standing (general admission)"."""
        if self.general_admission:
            return f"{self.section} (general admission)"
        parts = [self.section]
        if self.row:
            parts.append(f"Row {self.row}")
        if self.seat:
            parts.append(f"Seat {self.seat}")
        return " · ".join(parts)

    def compact(self) -> str:
        """For scripts: "Stalls/A/3", or just the section for general admission."""
        if self.general_admission:
            return self.section
        return f"{self.section}/{self.row}/{self.seat}"

    def as_dict(self) -> dict[str, str]:
        return {"section": self.section, "row": self.row, "seat": self.seat}


def local_clock(when: dt.datetime) -> str:
    """HH:MM:SS in the kiosk's local time zone (what the staff's watches show)."""
    return when.astimezone().strftime("%H:%M:%S")


def reason_text(
    outcome: Outcome,
    *,
    first_gate_id: str = "",
    first_scan_time: dt.datetime | None = None,
    doors_open_time: dt.datetime | None = None,
    error: str = "",
) -> str:
    """The one line of text gate staff read under ADMIT / REJECT."""
    match outcome:
        case Outcome.ADMITTED:
            return "ADMIT"
        case Outcome.ALREADY_USED:
            where = f" at {first_gate_id}" if first_gate_id else ""
            when = f" {local_clock(first_scan_time)}" if first_scan_time else ""
            return f"ALREADY USED{where}{when}"
        case Outcome.VOID:
            return "VOID (refunded or event cancelled)"
        case Outcome.WRONG_EVENT:
            return "WRONG EVENT"
        case Outcome.UNKNOWN_CODE:
            return "UNKNOWN CODE"
        case Outcome.EVENT_OVER:
            return "EVENT OVER: the gates are closed"
        case Outcome.EVENT_CANCELLED:
            return "EVENT CANCELLED: nobody is admitted"
        case Outcome.NOT_YET_OPEN:
            if doors_open_time is None:
                return "DOORS NOT OPEN"
            local = doors_open_time.astimezone()
            today = dt.datetime.now().astimezone().date()
            stamp = local.strftime("%H:%M") if local.date() == today else f"{local:%Y-%m-%d %H:%M}"
            return f"DOORS NOT OPEN (until {stamp})"
        case Outcome.INVALID:
            return f"INVALID CODE ({error})" if error else "INVALID CODE"
        case Outcome.ERROR:
            return f"ERROR: {error}" if error else "ERROR"
        case Outcome.UNRESOLVED:
            return "NO ANSWER FROM SERVER: check the ticket by hand"
        case Outcome.PLAIN_CODE:
            return "PLAIN CODE: cannot be verified offline, scan the ticket's QR code"
        case Outcome.FORGED:
            return "FORGED OR UNKNOWN SIGNED CODE"
        case Outcome.REVOKED:
            return "REVOKED (refunded or reissued)"
        case Outcome.OFFLINE_REFUSED:
            return "OFFLINE ADMISSION NOT ALLOWED for this event: wait for the server"
        case Outcome.DEVICE_REVOKED:
            return "DEVICE REVOKED: this kiosk may no longer admit; enroll it again"


def _iso(when: dt.datetime | None) -> str | None:
    return when.isoformat(timespec="microseconds") if when else None


@dataclass(frozen=True)
class ScanResultView:
    """Everything the screen and the journal need about one finished scan."""

    scan_id: str
    code_hash: str
    outcome: Outcome
    reason: str
    seat: SeatView | None = None
    ticket_id: str = ""
    scan_time: dt.datetime | None = None
    first_gate_id: str = ""
    first_scan_time: dt.datetime | None = None
    repeat: bool = False
    attempts: int = 1
    error: str = ""
    resubmitted: bool = False
    offline: bool = False
    """Judged by the kiosk itself, without the server (uploaded later if admitted)."""

    @property
    def admitted(self) -> bool:
        """True only when the person may walk in."""
        return self.outcome is Outcome.ADMITTED

    def journal_fields(self) -> dict[str, Any]:
        """The journal's "result" line (scan_id and time are added by the journal)."""
        return {
            "result": self.outcome.value,
            "repeat": self.repeat,
            "seat": self.seat.as_dict() if self.seat else None,
            "ticket_id": self.ticket_id or None,
            "scan_time": _iso(self.scan_time),
            "first_gate_id": self.first_gate_id or None,
            "first_scan_time": _iso(self.first_scan_time),
            "attempts": self.attempts,
            "error": self.error or None,
            "resubmitted": self.resubmitted,
            "offline": self.offline,
        }


REJECTIONS = (
    Outcome.ALREADY_USED,
    Outcome.VOID,
    Outcome.WRONG_EVENT,
    Outcome.UNKNOWN_CODE,
    Outcome.NOT_YET_OPEN,
    Outcome.EVENT_OVER,
    Outcome.EVENT_CANCELLED,
    Outcome.INVALID,
    Outcome.ERROR,
    Outcome.PLAIN_CODE,
    Outcome.FORGED,
    Outcome.REVOKED,
    Outcome.OFFLINE_REFUSED,
    Outcome.DEVICE_REVOKED,
)


@dataclass
class Counts:
    """Scans this kiosk run handled: admitted, rejected by reason, unresolved."""

    admitted: int = 0
    rejected: Counter[Outcome] = field(default_factory=Counter)
    unresolved: int = 0
    empty_lines: int = 0
    offline_admitted: int = 0
    waiting: int = 0
    """Offline admissions not yet acknowledged by the server (kept by the kiosk)."""

    def add(self, view: ScanResultView) -> None:
        if view.outcome is Outcome.ADMITTED:
            self.admitted += 1
            self.offline_admitted += view.offline
        elif view.outcome is Outcome.UNRESOLVED:
            self.unresolved += 1
        else:
            self.rejected[view.outcome] += 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def scans(self) -> int:
        return self.admitted + self.rejected_total + self.unresolved
