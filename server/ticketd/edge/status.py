"""Domain errors -> gRPC status with rich details (AIP-193); the only place that knows both.

The status code follows from the kind of error (the class); `ErrorInfo.reason` is the
error's `Reason`, whose names are `enum ErrorReason` in common.proto.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ticketd import errors

DOMAIN = "ticketing.v1"

log = logging.getLogger("ticketd.errors")

_CODES: dict[type[errors.DomainError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


def code_for(error: errors.DomainError) -> grpc.StatusCode:
    """The status code for a domain error (its nearest known class)."""
    for cls in type(error).__mro__:
        code = _CODES.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def to_status(error: errors.DomainError) -> grpc.Status:
    """The status a client receives: ErrorInfo, plus BadRequest / PreconditionFailure /
    QuotaFailure / RetryInfo where the error carries them."""
    details = [
        _pack(
            error_details_pb2.ErrorInfo(
                reason=error.reason.value, domain=DOMAIN, metadata=error.metadata
            )
        )
    ]
    if isinstance(error, errors.InvalidArgument) and error.violations:
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
    if isinstance(error, errors.FailedPrecondition) and error.violations:
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
    if isinstance(error, errors.ResourceExhausted) and error.quota_violations:
        details.append(
            _pack(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=v.subject, description=v.description
                        )
                        for v in error.quota_violations
                    ]
                )
            )
        )
    if isinstance(error, errors.ResourceExhausted) and error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(max(0.0, error.retry_after) * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    code_value: int = code_for(error).value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=details)
    return rpc_status.to_status(status)


def internal_status(
    exc: BaseException, method: str, *, correlation_id: str | None = None
) -> grpc.Status:
    """INTERNAL with a correlation id (a new random one unless given: the trace id when
    tracing is on); the stack goes to the log, never to the client."""
    correlation_id = correlation_id or uuid.uuid4().hex
    log.error("internal error in %s [correlation_id=%s]", method, correlation_id, exc_info=exc)
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"internal error (correlation id {correlation_id})",
        details=[
            _pack(
                error_details_pb2.ErrorInfo(
                    reason=errors.Reason.INTERNAL.value,
                    domain=DOMAIN,
                    metadata={"correlation_id": correlation_id},
                )
            )
        ],
    )
    return rpc_status.to_status(status)
