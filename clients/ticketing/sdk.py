"""What a partner needs around the generated stubs: decoded errors and safe retries.

`decode_error(err)` turns an `AioRpcError` into a `TicketingError` whose `reason` is the
server's stable `ErrorInfo.reason` (SEAT_UNAVAILABLE, SOLD_OUT, SEAT_LOCKED, ...), so a caller
can `match` on it instead of parsing messages. `retry_once_on_aborted` is the rule the SDK's
booking helpers (`Client.book_seats` and friends in `ticketing.client`) follow for ABORTED.

Nothing here opens a channel, so this module can be used with any stubs and tested alone.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

__all__ = [
    "DEFAULT_ABORT_BACKOFF_SECONDS",
    "FieldViolation",
    "PreconditionViolation",
    "RetryHook",
    "TicketingError",
    "decode_error",
    "new_request_id",
    "retry_once_on_aborted",
]

DEFAULT_ABORT_BACKOFF_SECONDS = 0.25

# Where grpc-status (and every gRPC implementation) puts the serialized google.rpc.Status.
_STATUS_DETAILS_KEY = "grpc-status-details-bin"

# Codes the server uses for "nothing happened, try again" (ENGINEERING.md, Errors table).
_RETRYABLE_CODES = frozenset({grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field (google.rpc.BadRequest), e.g. `seat_ids.ids[1]`."""

    field: str
    description: str


@dataclass(frozen=True)
class PreconditionViolation:
    """One failed precondition (google.rpc.PreconditionFailure), e.g. type SEAT, subject "42"."""

    type: str
    subject: str
    description: str


@dataclass(frozen=True)
class TicketingError:
    """A failed call as data: status code, the server's reason, and its rich details.

    `reason` is "" when the status carried no ErrorInfo, which happens when the failure came
    from gRPC itself (DEADLINE_EXCEEDED on the client, a connection that never opened).
    """

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    field_violations: tuple[FieldViolation, ...] = ()
    precondition_violations: tuple[PreconditionViolation, ...] = ()

    @property
    def retryable(self) -> bool:
        """True for ABORTED and UNAVAILABLE: the call did nothing and may be sent again.

        Resend mutations with the same request_id, so that a retry can never act twice.
        """
        return self.code in _RETRYABLE_CODES

    @property
    def seat_ids(self) -> tuple[int, ...]:
        """The seats a SEAT_UNAVAILABLE refusal names (already sold): drop them and re-pick."""
        ids: list[int] = []
        for violation in self.precondition_violations:
            if violation.type == "SEAT" and violation.subject.isdigit():
                ids.append(int(violation.subject))
        return tuple(ids)


def decode_error(err: aio.AioRpcError) -> TicketingError:
    """Decode the google.rpc rich details of a failed call (ErrorInfo, BadRequest, ...).

    Never raises: details it cannot parse are left out, and the code and message always come
    from the call itself.
    """
    reason = domain = ""
    metadata: dict[str, str] = {}
    fields: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    # grpc-stubs types trailing metadata loosely; at runtime it is (key, str | bytes) pairs.
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            continue
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, domain = info.reason, info.domain
                metadata.update(info.metadata)
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                fields += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                failure = error_details_pb2.PreconditionFailure()
                detail.Unpack(failure)
                preconditions += [
                    PreconditionViolation(v.type, v.subject, v.description)
                    for v in failure.violations
                ]
    return TicketingError(
        code=err.code(),
        message=err.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(fields),
        precondition_violations=tuple(preconditions),
    )


def new_request_id() -> str:
    """A fresh AIP-155 request_id. Keep it to retry the same mutation later, even from
    another process: the server answers a repeat with the original result."""
    return str(uuid.uuid4())


RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")

RetryHook = Callable[[TicketingError], Awaitable[None]]
"""Called with the decoded ABORTED error just before the one retry (for logs and metrics)."""


async def retry_once_on_aborted(
    call: Callable[[RequestT], Awaitable[ResponseT]],
    request: RequestT,
    *,
    backoff_seconds: float = DEFAULT_ABORT_BACKOFF_SECONDS,
    on_retry: RetryHook | None = None,
) -> ResponseT:
    """`await call(request)`; on ABORTED, wait a jittered backoff and send it once more.

    The very same request object is sent again, so its request_id is unchanged and the
    server returns the original result if the first attempt did act: a retry never books
    or refunds twice. Only ABORTED is handled here (UNAVAILABLE is retried by the channel's
    service config); a second ABORTED, and any other error, is raised as the AioRpcError.
    """
    try:
        return await call(request)
    except aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        first = err
    if on_retry is not None:
        await on_retry(decode_error(first))
    # Jitter spreads out a crowd that all lost the same lock at the same moment, so the
    # retries do not collide again in lockstep.
    await asyncio.sleep(backoff_seconds * random.uniform(0.5, 1.5))
    return await call(request)
