"""What a partner needs around the generated stubs, in one import.

- errors: `TicketingError` (code, the server's stable `reason`, violations, retry delay) and
  `decode_error`, its one decoder (`ticketing.errors`);
- retries: the channel's UNAVAILABLE policy and `retry_once_on_aborted` (`ticketing.retry`);
- pages: `paginate` (`ticketing.pagination`);
- streams: `watch_seats`, `watch_orders`, `watch_gate`: live changes resumed across breaks,
  all on one loop, `follow_stream` (`ticketing.watch`);
- `new_request_id` for mutations a caller may have to repeat (AIP-155).

Nothing here opens a channel, so all of it can be used with any stubs and tested alone;
`ticketing.connect` opens one with all of it wired in.
"""

from __future__ import annotations

import uuid

from ticketing.errors import (
    FieldViolation,
    PreconditionViolation,
    TicketingError,
    decode_error,
    ticketing_errors,
)
from ticketing.pagination import paginate
from ticketing.retry import DEFAULT_ABORT_BACKOFF_SECONDS, RetryHook, retry_once_on_aborted
from ticketing.watch import follow_stream, watch_gate, watch_orders, watch_seats

__all__ = [
    "DEFAULT_ABORT_BACKOFF_SECONDS",
    "FieldViolation",
    "PreconditionViolation",
    "RetryHook",
    "TicketingError",
    "decode_error",
    "follow_stream",
    "new_request_id",
    "paginate",
    "retry_once_on_aborted",
    "ticketing_errors",
    "watch_gate",
    "watch_orders",
    "watch_seats",
]


def new_request_id() -> str:
    """A fresh AIP-155 request_id. Keep it to retry the same mutation later, even from
    another process: the server answers a repeat with the original result."""
    return str(uuid.uuid4())
