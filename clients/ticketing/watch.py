"""`watch_seats`: an event's seat changes (EventService.WatchSeats), resumed across breaks.

    async for change in watch_seats(client.events, event_id):
        seat_map[change.seat_id] = change.status

The one resume loop of the client code. The server numbers each event's changes densely in
commit order, so a reconnect with the last sequence received gets exactly what was missed:
the caller sees every change once, in order, however often the connection breaks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from ticketing.errors import TicketingError, decode_error
from ticketing.stubs import CallMetadata
from ticketing.v1 import event_pb2

__all__ = ["DEFAULT_GIVE_UP_SECONDS", "ResumeHook", "is_resumable", "watch_seats"]

DEFAULT_GIVE_UP_SECONDS = 30.0
"""How long reconnections may keep failing (no change received) before the error is raised."""

_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 2.0

ResumeHook = Callable[[TicketingError, int], None]
"""Called with the error that ended a stream and the sequence the next one resumes after."""

SeatChanges = aio.UnaryStreamMultiCallable[event_pb2.WatchSeatsRequest, event_pb2.SeatChange]


def is_resumable(error: TicketingError) -> bool:
    """Whether a stream ended by `error` is worth reopening from its last sequence: UNAVAILABLE
    (server restarting or shutting down, connection lost) and STREAM_TOO_SLOW (the server
    stopped waiting for this reader). Anything else (NOT_FOUND, SEQUENCE_AHEAD,
    SEAT_STREAMS_OFF, STREAM_LIMIT_EXCEEDED ...) would fail the same way again."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "STREAM_TOO_SLOW"


async def watch_seats(
    method: SeatChanges,
    event_id: str,
    after_sequence: int = 0,
    *,
    metadata: CallMetadata | None = None,
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
    on_resume: ResumeHook | None = None,
) -> AsyncIterator[event_pb2.SeatChange]:
    """Yield the event's seat changes as `method` (a stub's `WatchSeats`) streams them; never
    ends by itself.

    `after_sequence` 0 starts with a snapshot (every seat, `snapshot` set, the last with
    `snapshot_complete`), then changes; N > 0 starts with the changes after N. When the stream
    ends with a resumable error (`is_resumable`), it is reopened after the last change
    received, with a jittered backoff, so the caller sees each change exactly once and in
    sequence order. A snapshot may come again, whole, only when the resume point is still 0
    (the break came before the snapshot finished, or before the event's first change): treat
    snapshot entries as "the seat is now", not as changes. `on_resume` is called before each
    reopening. Other errors, and resumable ones that go on for `give_up_after` seconds without
    a single change received, raise TicketingError. Stop iterating (or `aclose()`) to cancel
    the call.
    """
    resume_after = after_sequence
    failing_since: float | None = None
    attempt = 0
    while True:
        call = method(
            event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=resume_after),
            metadata=metadata,
        )
        try:
            async for change in call:
                failing_since, attempt = None, 0
                # The resume point is the last change this reader *received*: the server's
                # `resume_after_sequence` metadata counts what it handed to gRPC, which is
                # the same after a clean status but may be ahead when the connection broke.
                if not change.snapshot or change.snapshot_complete:
                    resume_after = change.sequence
                yield change
            # The server never ends a stream with OK; if one does (a proxy), carry on.
            error = TicketingError(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        except aio.AioRpcError as err:
            error = decode_error(err)
            if not is_resumable(error):
                raise error from err
        finally:
            call.cancel()
        now = time.monotonic()
        if failing_since is None:
            failing_since = now
        elif now - failing_since > give_up_after:
            raise error
        if on_resume is not None:
            on_resume(error, resume_after)
        # A slow reader resumes at once (the server is fine); an absent server gets backoff,
        # jittered so a crowd of watchers does not reconnect in lockstep after a restart.
        if error.reason != "STREAM_TOO_SLOW":
            pause = min(_MAX_BACKOFF_SECONDS, _FIRST_BACKOFF_SECONDS * 2**attempt)
            await asyncio.sleep(pause * random.uniform(0.5, 1.0))
        attempt += 1
