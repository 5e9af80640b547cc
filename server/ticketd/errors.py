"""Domain errors: what went wrong, in the server's own terms, with no gRPC in sight.

Domain code raises these; the edge (`ticketd.edge.status`) turns each kind into a status code
with rich details (AIP-193), and the database layer (`ticketd.db.sqlstate`) turns driver
errors into them. Every error carries a `Reason` from the catalogue below, which mirrors
`enum ErrorReason` in protos/ticketing/v1/common.proto: partners switch on it, so a reason is
never renamed (a unit test keeps the two lists equal).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    """Stable UPPER_SNAKE reasons sent as `google.rpc.ErrorInfo.reason`."""

    # Generic
    INTERNAL = "INTERNAL"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    # Authentication and authorization
    UNAUTHENTICATED = "UNAUTHENTICATED"
    INVALID_TOKEN = "INVALID_TOKEN"
    BAD_CREDENTIALS = "BAD_CREDENTIALS"
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    NO_POLICY = "NO_POLICY"
    # Accounts
    EMAIL_TAKEN = "EMAIL_TAKEN"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    LAST_ADMIN = "LAST_ADMIN"
    # Venues and events
    VENUE_NOT_FOUND = "VENUE_NOT_FOUND"
    EVENT_NOT_FOUND = "EVENT_NOT_FOUND"
    NOT_EVENT_OWNER = "NOT_EVENT_OWNER"
    EVENT_CANCELLED = "EVENT_CANCELLED"
    EVENT_STARTED = "EVENT_STARTED"
    # Booking and refunds
    EVENT_NOT_ON_SALE = "EVENT_NOT_ON_SALE"
    SEAT_UNAVAILABLE = "SEAT_UNAVAILABLE"
    SEAT_LOCKED = "SEAT_LOCKED"
    SOLD_OUT = "SOLD_OUT"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    REQUEST_ID_MISMATCH = "REQUEST_ID_MISMATCH"
    ORDER_NOT_FOUND = "ORDER_NOT_FOUND"
    NOT_ORDER_OWNER = "NOT_ORDER_OWNER"
    ALREADY_REFUNDED = "ALREADY_REFUNDED"
    TICKET_USED = "TICKET_USED"
    # Gates
    SCAN_ID_MISMATCH = "SCAN_ID_MISMATCH"
    SCAN_NOT_FOUND = "SCAN_NOT_FOUND"
    SCAN_RATE_EXCEEDED = "SCAN_RATE_EXCEEDED"
    # Contention and availability
    RETRY = "RETRY"
    LOCKED = "LOCKED"
    CONCURRENCY_CONFLICT = "CONCURRENCY_CONFLICT"
    STATEMENT_TIMEOUT = "STATEMENT_TIMEOUT"
    DB_UNAVAILABLE = "DB_UNAVAILABLE"
    DB_POOL_EXHAUSTED = "DB_POOL_EXHAUSTED"
    # Gate staff and scan window (issue 10)
    NOT_EVENT_STAFF = "NOT_EVENT_STAFF"
    NOT_ENTRY_MANAGER = "NOT_ENTRY_MANAGER"
    EVENT_OVER = "EVENT_OVER"
    TOO_MANY_GATES = "TOO_MANY_GATES"
    # Limits that protect the server
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    # Password work and admission (appended: the catalogue never renumbers)
    TOO_MANY_ATTEMPTS = "TOO_MANY_ATTEMPTS"
    AUTH_BUSY = "AUTH_BUSY"
    OVERLOADED = "OVERLOADED"
    # Account lock-out
    ACCOUNT_DISABLED = "ACCOUNT_DISABLED"
    NOT_ACCOUNT_OWNER = "NOT_ACCOUNT_OWNER"
    # Kiosk devices and offline gates (issue 14)
    DEVICE_REVOKED = "DEVICE_REVOKED"
    ENROLLMENT_TOKEN_INVALID = "ENROLLMENT_TOKEN_INVALID"
    DEVICE_SCOPE = "DEVICE_SCOPE"
    DEVICE_NOT_FOUND = "DEVICE_NOT_FOUND"
    # Holds and checkout (issue 12)
    HOLD_NOT_FOUND = "HOLD_NOT_FOUND"
    NOT_HOLD_OWNER = "NOT_HOLD_OWNER"
    HOLD_EXPIRED = "HOLD_EXPIRED"
    HOLD_LIMIT_EXCEEDED = "HOLD_LIMIT_EXCEEDED"
    HOLD_NOT_ACTIVE = "HOLD_NOT_ACTIVE"
    # Partner resellers (issue 13)
    PARTNER_NOT_FOUND = "PARTNER_NOT_FOUND"
    API_KEY_NOT_FOUND = "API_KEY_NOT_FOUND"
    API_KEY_REVOKED = "API_KEY_REVOKED"
    PARTNER_SUSPENDED = "PARTNER_SUSPENDED"
    PARTNER_BUDGET_EXCEEDED = "PARTNER_BUDGET_EXCEEDED"
    ALLOCATION_NOT_FOUND = "ALLOCATION_NOT_FOUND"
    # Streams (issue 15)
    STREAM_TOO_SLOW = "STREAM_TOO_SLOW"
    STREAM_LIMIT_EXCEEDED = "STREAM_LIMIT_EXCEEDED"
    SEQUENCE_AHEAD = "SEQUENCE_AHEAD"
    SERVER_SHUTTING_DOWN = "SERVER_SHUTTING_DOWN"
    SEAT_STREAMS_OFF = "SEAT_STREAMS_OFF"
    SEQUENCE_PRUNED = "SEQUENCE_PRUNED"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field in a request: `field` is a dotted path such as `venue.sections[2].name`."""

    field: str
    description: str


@dataclass(frozen=True)
class Precondition:
    """One failed precondition: `type` such as SEAT, `subject` such as the seat id."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One used-up quota (google.rpc.QuotaFailure): `subject` such as `organizer:<id>`."""

    subject: str
    description: str


class DomainError(Exception):
    """Base of every error a client may see; each subclass is one kind of failure.

    Every raise names its reason: a forgotten one must not reach clients as INTERNAL.
    """

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    """Malformed input: one violation per bad field."""

    def __init__(
        self,
        violations: Iterable[FieldViolation],
        message: str | None = None,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(
            text or "invalid request", reason=reason or Reason.INVALID_ARGUMENT, metadata=metadata
        )

    @classmethod
    def one(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])


class Unauthenticated(DomainError):
    """No, malformed, expired or revoked credentials."""

    def __init__(self, message: str, *, reason: Reason = Reason.UNAUTHENTICATED) -> None:
        super().__init__(message, reason=reason)


class PermissionDenied(DomainError):
    """The caller is known but its role or its relation to the object forbids the call."""


class NotFound(DomainError):
    """The named object does not exist (or the caller may not know that it does)."""


class AlreadyExists(DomainError):
    """The object to create exists already."""


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this call (seat sold, event started...)."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[Precondition] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class Aborted(DomainError):
    """Concurrency conflict (lock wait exceeded, serialization failure): retry the whole flow."""


class Unavailable(DomainError):
    """Database down or pool exhausted: retry with backoff."""


def stream_shut_down(after: int) -> Unavailable:
    """A stream ended by the server's shutdown, with where its reader resumes (every
    resumable stream says it the same way)."""
    return Unavailable(
        "the server is shutting down; reconnect with after_sequence",
        reason=Reason.SERVER_SHUTTING_DOWN,
        metadata={"resume_after_sequence": str(after)},
    )


def stream_pruned(after: int, pruned_through: int, *, restart: int) -> FailedPrecondition:
    """A reader whose position is behind the stream's retention: the changes after `after`
    up to `pruned_through` are gone; it starts again after `restart` (every resumable
    stream says it the same way)."""
    return FailedPrecondition(
        f"the changes after sequence {after} up to {pruned_through} are no longer kept "
        f"(TICKETING_OUTBOX_RETENTION); start again with after_sequence {restart}",
        reason=Reason.SEQUENCE_PRUNED,
        metadata={"pruned_through": str(pruned_through), "resume_after_sequence": str(restart)},
    )


class ResourceExhausted(DomainError):
    """A rate, budget or quota is used up; `retry_after` says when trying again makes sense."""

    def __init__(
        self,
        message: str,
        *,
        reason: Reason,
        metadata: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        quota_violations: Iterable[QuotaViolation] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after
        self.quota_violations = list(quota_violations)


def not_found(reason: Reason, what: str, **ids: object) -> NotFound:
    """NOT_FOUND for one object, naming its ids in the error's metadata."""
    return NotFound(f"no such {what}", reason=reason, metadata={k: str(v) for k, v in ids.items()})
