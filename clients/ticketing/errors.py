"""One error type for every failed call: `TicketingError`, and `decode_error`, its one decoder.

The server puts AIP-193 rich details on every refusal (google.rpc.ErrorInfo with a stable
UPPER_SNAKE `reason`, BadRequest, PreconditionFailure, RetryInfo). `decode_error` reads them
from an `AioRpcError` into a `TicketingError`, so a caller can `match` on `reason` instead of
parsing messages. The SDK's helpers raise TicketingError (from the AioRpcError); around raw
stub calls, `with ticketing_errors():` does the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

__all__ = [
    "FieldViolation",
    "PreconditionViolation",
    "TicketingError",
    "decode_error",
    "ticketing_errors",
]

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


class TicketingError(Exception):
    """A failed call: status code, the server's reason, and its rich details.

    `reason` and `domain` are "" when the status carried no ErrorInfo, which happens when the
    failure came from gRPC itself (DEADLINE_EXCEEDED on the client, a connection that never
    opened). `retry_delay` is the server's google.rpc.RetryInfo in seconds, None without one.
    Two errors with the same fields are equal.
    """

    # A plain class, not a frozen dataclass: Python itself sets __traceback__, __cause__ and
    # __notes__ on exceptions, which a frozen dataclass would refuse.
    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        precondition_violations: tuple[PreconditionViolation, ...] = (),
        retry_delay: float | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.field_violations = field_violations
        self.precondition_violations = precondition_violations
        self.retry_delay = retry_delay

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

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.code,
            self.message,
            self.reason,
            self.domain,
            tuple(sorted(self.metadata.items())),
            self.field_violations,
            self.precondition_violations,
            self.retry_delay,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TicketingError):
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __str__(self) -> str:
        reason = f" ({self.reason})" if self.reason else ""
        return f"{self.code.name}{reason}: {self.message}"

    def __repr__(self) -> str:
        return (
            f"TicketingError(code={self.code}, message={self.message!r}, "
            f"reason={self.reason!r}, metadata={dict(self.metadata)!r}, "
            f"field_violations={self.field_violations!r}, "
            f"precondition_violations={self.precondition_violations!r}, "
            f"retry_delay={self.retry_delay!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception pickles as type(*args); args holds only code and message.
        return (
            type(self),
            (
                self.code,
                self.message,
                self.reason,
                self.domain,
                dict(self.metadata),
                self.field_violations,
                self.precondition_violations,
                self.retry_delay,
            ),
        )


def decode_error(err: aio.AioRpcError) -> TicketingError:
    """Decode a failed call with its google.rpc rich details (ErrorInfo, BadRequest,
    PreconditionFailure, RetryInfo) into a TicketingError.

    Never raises: details it cannot parse are left out, and the code and message always come
    from the call itself.
    """
    reason = domain = ""
    metadata: dict[str, str] = {}
    fields: list[FieldViolation] = []
    preconditions: list[PreconditionViolation] = []
    retry_delay: float | None = None
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
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_delay = retry.retry_delay.ToTimedelta().total_seconds()
    return TicketingError(
        code=err.code(),
        message=err.details() or "",
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=tuple(fields),
        precondition_violations=tuple(preconditions),
        retry_delay=retry_delay,
    )


@contextlib.contextmanager
def ticketing_errors() -> Iterator[None]:
    """An AioRpcError raised inside the block leaves it as a TicketingError (raised from it).

    What the SDK's helpers do; use it around raw stub calls to handle one error type:

        with ticketing_errors():
            reply = await client.events.GetEvent(request)
    """
    try:
        yield
    except aio.AioRpcError as err:
        raise decode_error(err) from err
