"""The SDK's one retry policy, in two parts:

- UNAVAILABLE (server or database briefly away) is retried by gRPC itself, from the channel's
  service config (`SERVICE_CONFIG`, set by `ticketing.connect`), for the methods where a
  resend cannot act twice;
- ABORTED (a lost lock race: SEAT_LOCKED, CONCURRENCY_CONFLICT) is retried once by the SDK's
  booking helpers with the same request_id (`retry_once_on_aborted`).

Nothing else in the SDK retries. Tools with a different need say so where they keep their own
loop (the kiosk re-sends a scan with the same scan_id for as long as its budget allows).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from grpc import aio

from ticketing.errors import TicketingError, decode_error

__all__ = [
    "DEFAULT_ABORT_BACKOFF_SECONDS",
    "SERVICE_CONFIG",
    "RetryHook",
    "retry_once_on_aborted",
]

DEFAULT_ABORT_BACKOFF_SECONDS = 0.25

# Retry only UNAVAILABLE (server or database briefly away). The server also answers
# UNAVAILABLE when its database connection drops mid-call, and a dropped COMMIT may still have
# committed, so an automatic resend is only safe where a repeat cannot act twice:
# - AuthService: Login and reads are harmless; a repeated Register finds the email taken
#   (ALREADY_EXISTS) and SetUserRoles sets the same roles again.
# - BookingService: safe ONLY because BookSeats, RefundOrder, HoldSeats and ConfirmHold carry a
#   request_id (AIP-155) and the server answers a repeat with the original result. Never send
#   them without one. ExtendHold and ReleaseHold need none: a repeated release answers
#   RELEASED again, a repeated extension moves the expiry to (about) the same instant.
# - GateService is absent on purpose: the kiosk retries ValidateTicket itself with the same
#   scan_id and must see each failure at once to show that the server is unreachable.
# - Venue and event reads. CreateVenue, UpdateVenue, CreateEvent and CancelEvent have no
#   request_id, so they are deliberately absent: a resend after an unseen commit would create
#   a second venue or event. (An empty `{}` name would be the default for every method,
#   these included, which is why there is none.)
# ABORTED is retried by the SDK's booking helpers (retry_once_on_aborted below), which resend
# the same request_id.
_RETRY_NAMES: list[dict[str, str]] = [
    {"service": "ticketing.v1.AuthService"},
    {"service": "ticketing.v1.BookingService"},
    {"service": "ticketing.v1.VenueService", "method": "GetVenue"},
    {"service": "ticketing.v1.VenueService", "method": "ListVenues"},
    {"service": "ticketing.v1.EventService", "method": "GetEvent"},
    {"service": "ticketing.v1.EventService", "method": "ListEvents"},
    {"service": "ticketing.v1.EventService", "method": "ListSeats"},
]
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRY_NAMES,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
"""The `grpc.service_config` channel option: UNAVAILABLE retried with backoff, see above."""

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
    """`await call(request)`; on ABORTED, wait and send it once more.

    The pause is the server's RetryInfo delay when it gives one, else a jittered
    `backoff_seconds`. The very same request object is sent again, so its request_id is
    unchanged and the server returns the original result if the first attempt did act: a
    retry never books or refunds twice. Only ABORTED is handled here (UNAVAILABLE is retried
    by the channel's service config); a second ABORTED, and any other error, is raised as the
    AioRpcError the call raised.
    """
    try:
        return await call(request)
    except aio.AioRpcError as err:
        if err.code() != grpc.StatusCode.ABORTED:
            raise
        first = decode_error(err)
    if on_retry is not None:
        await on_retry(first)
    # Jitter spreads out a crowd that all lost the same lock at the same moment, so the
    # retries do not collide again in lockstep.
    pause = first.retry_delay
    if pause is None:
        pause = backoff_seconds * random.uniform(0.5, 1.5)
    await asyncio.sleep(pause)
    return await call(request)
