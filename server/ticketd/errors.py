"""Domain errors and their one mapping to gRPC status codes with rich details (AIP-193).

Domain code raises the exceptions defined here and never imports grpc; the interceptor turns
them into a status with `google.rpc` details via `to_grpc_status`. Database driver errors are
mapped here by SQLSTATE (never by message text), so every RPC answers contention and outages
the same way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

DOMAIN = "ticketing.v1"

log = logging.getLogger("ticketd.errors")


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


class DomainError(Exception):
    """Base of every error a client may see.

    `reason` is stable UPPER_SNAKE: clients switch on it, so never rename one.
    """

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})


class InvalidArgument(DomainError):
    """Malformed input: one violation per bad field."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[FieldViolation], message: str | None = None) -> None:
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text or "invalid request")

    @classmethod
    def one(cls, field_path: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field_path, description)])


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The system is not in a state that allows this call (seat sold, event started...)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[Precondition] = (),
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.violations = list(violations)


class Aborted(DomainError):
    """Concurrency conflict (lock wait exceeded, serialization failure): retry the whole flow."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unavailable(DomainError):
    """Database down or pool exhausted: retry with backoff."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


# SQLSTATEs: https://www.postgresql.org/docs/current/errcodes-appendix.html
_LOCK_NOT_AVAILABLE = "55P03"
_SERIALIZATION_FAILURE = "40001"
_DEADLOCK_DETECTED = "40P01"
_QUERY_CANCELED = "57014"
# Text PostgreSQL cannot store (a NUL byte, or bytes invalid in the database encoding).
_BAD_TEXT = frozenset({"22021", "22P05"})
_UNAVAILABLE_SQLSTATES = frozenset(
    {
        "57P01",  # admin_shutdown (pg_terminate_backend, server stop)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up)
        "53300",  # too_many_connections
        "08000",
        "08003",
        "08006",
        "08001",
        "08004",
    }
)


def sqlstate_of(exc: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy or asyncpg exception, if any."""
    for current in _chain(exc):
        for attr in ("sqlstate", "pgcode"):
            value = getattr(current, attr, None)
            if isinstance(value, str) and value:
                return value
    return None


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sqlalchemy.exc.TimeoutError, ConnectionError, OSError)):
        return True
    # asyncpg's connection-level failures, seen through SQLAlchemy's adaptor.
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(
        names
        & {
            "ConnectionDoesNotExistError",
            "InterfaceError",
            "ConnectionFailureError",
            "InternalClientError",
            "CannotConnectNowError",
            "TooManyConnectionsError",
        }
    )


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        nxt = getattr(current, "orig", None)
        current = nxt if isinstance(nxt, BaseException) else current.__cause__


def from_exception(exc: BaseException) -> DomainError | None:
    """Map an unexpected exception to a domain error, or None when it is a real bug (INTERNAL)."""
    if isinstance(exc, DomainError):
        return exc
    state = sqlstate_of(exc)
    if state in _BAD_TEXT:
        return InvalidArgument(
            [FieldViolation("request", "text fields must not contain NUL characters")]
        )
    if state == _LOCK_NOT_AVAILABLE:
        return Aborted("a row needed by this call is locked by another; retry", reason="LOCKED")
    if state in (_SERIALIZATION_FAILURE, _DEADLOCK_DETECTED):
        return Aborted("concurrent update conflict; retry", reason="CONCURRENCY_CONFLICT")
    if state == _QUERY_CANCELED:
        return Aborted("the database statement took too long; retry", reason="STATEMENT_TIMEOUT")
    if state in _UNAVAILABLE_SQLSTATES or (state is None and _is_connection_error(exc)):
        return Unavailable(
            "the database is unavailable; retry with backoff", reason="DB_UNAVAILABLE"
        )
    return None


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_grpc_status(error: DomainError) -> grpc.Status:
    """Build the status a client receives, with ErrorInfo and any BadRequest/PreconditionFailure."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
        )
    ]
    if isinstance(error, InvalidArgument) and error.violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    if isinstance(error, FailedPrecondition) and error.violations:
        details.append(
            _pack(
                error_details_pb2.PreconditionFailure(
                    violations=[
                        error_details_pb2.PreconditionFailure.Violation(
                            type=v.type, subject=v.subject, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    code_value: int = error.code.value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status(exc: BaseException, method: str) -> grpc.Status:
    """INTERNAL with a correlation id; the stack goes to the log, never to the client."""
    correlation_id = uuid.uuid4().hex
    log.error("internal error in %s [correlation_id=%s]", method, correlation_id, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (correlation id {correlation_id})",
        details=[
            _pack(
                error_details_pb2.ErrorInfo(
                    reason="INTERNAL", domain=DOMAIN, metadata={"correlation_id": correlation_id}
                )
            )
        ],
    )
    return rpc_status.to_status(status)
