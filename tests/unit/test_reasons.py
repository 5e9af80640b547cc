"""The server's reasons and the contract's ErrorReason catalogue are one list."""

from __future__ import annotations

import re
from pathlib import Path

from ticketd.edge.status import code_for, to_status
from ticketd.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
)
from ticketing.v1 import common_pb2

SERVER = Path(__file__).resolve().parents[2] / "server" / "ticketd"


def test_every_reason_is_in_the_contract_and_back() -> None:
    contract = {
        name
        for name in common_pb2.ErrorReason.DESCRIPTOR.values_by_name
        if name != "ERROR_REASON_UNSPECIFIED"
    }
    assert {r.value for r in Reason} == contract
    # A reason's value is its name: ErrorInfo.reason is the enum value's name.
    assert all(r.name == r.value for r in Reason)


def test_no_reason_is_a_free_string_in_the_server() -> None:
    offenders = [
        f"{path.relative_to(SERVER)}:{n}"
        for path in SERVER.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"reason\s*=\s*[\"']", line)
    ]
    assert offenders == []


def test_status_codes_follow_the_kind_of_error() -> None:
    import grpc

    assert code_for(InvalidArgument.one("x", "bad")) == grpc.StatusCode.INVALID_ARGUMENT
    assert code_for(NotFound("no", reason=Reason.EVENT_NOT_FOUND)) == grpc.StatusCode.NOT_FOUND
    assert code_for(Aborted("again", reason=Reason.SEAT_LOCKED)) == grpc.StatusCode.ABORTED
    precondition = FailedPrecondition("sold", reason=Reason.SEAT_UNAVAILABLE)
    assert code_for(precondition) == grpc.StatusCode.FAILED_PRECONDITION


def test_retry_info_is_sent_when_the_error_says_when() -> None:
    from google.rpc import error_details_pb2, status_pb2

    status = to_status(
        ResourceExhausted("slow down", reason=Reason.SCAN_RATE_EXCEEDED, retry_after=1.5)
    )
    raw = dict(status.trailing_metadata)["grpc-status-details-bin"]
    details = status_pb2.Status.FromString(raw).details
    infos = [d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    retry = error_details_pb2.RetryInfo()
    infos[0].Unpack(retry)
    assert retry.retry_delay.ToNanoseconds() == 1_500_000_000
