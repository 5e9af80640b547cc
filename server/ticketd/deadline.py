"""The current call's deadline: set by the edge for each RPC, read where work is bounded.

Carried in a context variable so that the database layer can keep lock waits and
statements inside the caller's deadline without every service passing it along.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token

_deadline: ContextVar[float | None] = ContextVar("ticketd_call_deadline", default=None)


def set_call_deadline(remaining_seconds: float | None) -> Token[float | None]:
    """Record that the current call must be done within `remaining_seconds` (None: no limit)."""
    value = None if remaining_seconds is None else time.monotonic() + remaining_seconds
    return _deadline.set(value)


def reset_call_deadline(token: Token[float | None]) -> None:
    _deadline.reset(token)


def remaining_seconds() -> float | None:
    """Seconds left before the current call's deadline, or None when it has none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
