"""Live streams resumed across breaks: `watch_seats` (EventService.WatchSeatBatches, or
WatchSeats from an older server), `watch_orders` (BookingService.WatchOrders) and `watch_gate`
(GateService.WatchGate).

    async for change in watch_seats(client.events, event_id):
        seat_map[change.seat_id] = change.status

The one resume loop of the client code (`follow_stream`); each stream only says how to ask
for "the changes after N" and which messages move its resume point. The server numbers each
stream's changes densely in commit order, so a reconnect with the last sequence received
gets exactly what was missed: the caller sees every change once, in order, however often
the connection breaks.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Protocol, TypeVar, runtime_checkable

import grpc
from grpc import aio

from ticketing.errors import TicketingError, decode_error
from ticketing.stubs import CallMetadata
from ticketing.v1 import booking_pb2, event_pb2, gate_pb2

__all__ = [
    "DEFAULT_GIVE_UP_SECONDS",
    "ResumeHook",
    "SeatStreams",
    "follow_stream",
    "is_resumable",
    "watch_gate",
    "watch_orders",
    "watch_seats",
]

DEFAULT_GIVE_UP_SECONDS = 30.0
"""How long reconnections may keep failing (no change received) before the error is raised."""

_FIRST_BACKOFF_SECONDS = 0.1
_MAX_BACKOFF_SECONDS = 2.0

RequestT = TypeVar("RequestT")
ChangeT = TypeVar("ChangeT")

ResumeHook = Callable[[TicketingError, int], None]
"""Called with the error that ended a stream and the sequence the next one resumes after."""

SeatChanges = aio.UnaryStreamMultiCallable[event_pb2.WatchSeatsRequest, event_pb2.SeatChange]
SeatBatches = aio.UnaryStreamMultiCallable[
    event_pb2.WatchSeatBatchesRequest, event_pb2.SeatChangeBatch
]
OrderChanges = aio.UnaryStreamMultiCallable[booking_pb2.WatchOrdersRequest, booking_pb2.OrderChange]
GateChanges = aio.UnaryStreamMultiCallable[gate_pb2.WatchGateRequest, gate_pb2.GateChange]


@runtime_checkable
class SeatStreams(Protocol):
    """What `watch_seats` needs of an EventService stub (`client.events`): its seat streams."""

    @property
    def WatchSeats(self) -> SeatChanges:
        """One change per message (every server that has seat streams)."""
        ...

    @property
    def WatchSeatBatches(self) -> SeatBatches:
        """A page of changes per message (servers since WatchSeatBatches)."""
        ...


def is_resumable(error: TicketingError) -> bool:
    """Whether a stream ended by `error` is worth reopening from its last sequence: UNAVAILABLE
    (server restarting or shutting down, connection lost) and STREAM_TOO_SLOW (the server
    stopped waiting for this reader). Anything else (NOT_FOUND, SEQUENCE_AHEAD,
    SEAT_STREAMS_OFF, STREAM_LIMIT_EXCEEDED, PERMISSION_DENIED ...) would fail the same way
    again."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return True
    return error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "STREAM_TOO_SLOW"


async def follow_stream(
    method: aio.UnaryStreamMultiCallable[RequestT, ChangeT],
    request_after: Callable[[int], RequestT],
    resume_point: Callable[[ChangeT, int], int],
    after_sequence: int = 0,
    *,
    metadata: CallMetadata | None = None,
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
    on_resume: ResumeHook | None = None,
    restart_when_pruned: bool = False,
) -> AsyncGenerator[ChangeT, None]:
    """Yield what `method` (a server-streaming stub method) streams, reopening it on breaks;
    never ends by itself.

    `request_after(n)` is the request for the changes after sequence n; `resume_point(change,
    current)` is where a reopened stream must start once `change` was received (`current`
    if the change does not move it, e.g. a snapshot entry before the snapshot is whole).
    When the stream ends with a resumable error (`is_resumable`), it is reopened after the
    resume point with a jittered backoff, so the caller sees each change exactly once and in
    sequence order. `on_resume` is called before each reopening. Other errors, and resumable
    ones that go on for `give_up_after` seconds without a single message received, raise
    TicketingError. With `restart_when_pruned`, a stream refused with SEQUENCE_PRUNED (the
    server no longer keeps the changes after the resume point: the reader was away longer
    than its TICKETING_OUTBOX_RETENTION) is reopened from the point the error names instead
    (0 for the seat streams: a fresh snapshot). Stop iterating (or `aclose()`) to cancel
    the call.
    """
    resume_after = after_sequence
    failing_since: float | None = None
    attempt = 0
    while True:
        call = method(request_after(resume_after), metadata=metadata)
        try:
            async for change in call:
                failing_since, attempt = None, 0
                # The resume point is the last change this reader *received*: the server's
                # `resume_after_sequence` metadata counts what it handed to gRPC, which is
                # the same after a clean status but may be ahead when the connection broke.
                resume_after = resume_point(change, resume_after)
                yield change
            # The server never ends a stream with OK; if one does (a proxy), carry on.
            error = TicketingError(grpc.StatusCode.UNAVAILABLE, "the stream ended")
        except aio.AioRpcError as err:
            error = decode_error(err)
            restart = error.metadata.get("resume_after_sequence", "")
            if restart_when_pruned and error.reason == "SEQUENCE_PRUNED" and restart.isdigit():
                resume_after = int(restart)
                if on_resume is not None:
                    on_resume(error, resume_after)
                continue
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


def _seat_resume_point(change: event_pb2.SeatChange, current: int) -> int:
    # A snapshot counts only once whole: its entries all carry the sequence it is consistent
    # with, and resuming after that number mid-snapshot would lose the seats not yet sent.
    if not change.snapshot or change.snapshot_complete:
        return change.sequence
    return current


def _batch_resume_point(batch: event_pb2.SeatChangeBatch, current: int) -> int:
    # A batch is received whole or not at all: its last change that moves the point wins.
    for change in batch.changes:
        current = _seat_resume_point(change, current)
    return current


def watch_seats(
    source: SeatStreams | SeatChanges,
    event_id: str,
    after_sequence: int = 0,
    *,
    metadata: CallMetadata | None = None,
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
    on_resume: ResumeHook | None = None,
) -> AsyncIterator[event_pb2.SeatChange]:
    """Yield the event's seat changes one by one; never ends by itself.

    `source` is an EventService stub (`client.events`): the changes come from
    WatchSeatBatches, many per message, which costs a busy server far less than one message
    per change; a server older than that RPC answers UNIMPLEMENTED and the stream goes on
    from WatchSeats, from where it was, without a gap or a repeat. A stub's `WatchSeats`
    method itself (what this took before) still works and uses WatchSeats only.

    `after_sequence` 0 starts with a snapshot (every seat, `snapshot` set, the last with
    `snapshot_complete`), then changes; N > 0 starts with the changes after N. Breaks are
    resumed as `follow_stream` says. A snapshot may come again, whole, when the resume
    point is still 0 (the break came before the snapshot finished, or before the event's
    first change), or when the server no longer keeps the changes after it
    (SEQUENCE_PRUNED: away longer than the server's retention): treat snapshot entries as
    "the seat is now", not as changes.
    """

    def singly(method: SeatChanges, after: int) -> AsyncGenerator[event_pb2.SeatChange, None]:
        return follow_stream(
            method,
            lambda n: event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=n),
            _seat_resume_point,
            after,
            metadata=metadata,
            give_up_after=give_up_after,
            on_resume=on_resume,
            restart_when_pruned=True,
        )

    if not isinstance(source, SeatStreams):
        return singly(source, after_sequence)
    batches = follow_stream(
        source.WatchSeatBatches,
        lambda n: event_pb2.WatchSeatBatchesRequest(event_id=event_id, after_sequence=n),
        _batch_resume_point,
        after_sequence,
        metadata=metadata,
        give_up_after=give_up_after,
        on_resume=on_resume,
        restart_when_pruned=True,
    )
    return _unbatched(batches, lambda after: singly(source.WatchSeats, after), after_sequence)


async def _unbatched(
    batches: AsyncGenerator[event_pb2.SeatChangeBatch, None],
    fallback: Callable[[int], AsyncGenerator[event_pb2.SeatChange, None]],
    after_sequence: int,
) -> AsyncGenerator[event_pb2.SeatChange, None]:
    """The changes of `batches` one by one; on UNIMPLEMENTED, those of `fallback(n)`, n
    being the resume point of what was yielded."""
    resume_after = after_sequence
    try:
        async for batch in batches:
            for change in batch.changes:
                # Kept here too: the fallback below must start where the caller is.
                resume_after = _seat_resume_point(change, resume_after)
                yield change
    except TicketingError as error:
        # Only an older server (or a proxy that does not know the method) says this; any
        # other error is the stream's own and would be the same on WatchSeats.
        if error.code != grpc.StatusCode.UNIMPLEMENTED:
            raise
    finally:
        await batches.aclose()
    # The error ends a batch stream between two batches, so the caller has had every
    # change up to `resume_after`, and WatchSeats goes on from exactly there.
    async for change in fallback(resume_after):
        yield change


def watch_orders(
    method: OrderChanges,
    after_sequence: int = 0,
    *,
    event_id: str = "",
    metadata: CallMetadata | None = None,
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
    on_resume: ResumeHook | None = None,
) -> AsyncIterator[booking_pb2.OrderChange]:
    """Yield the order changes the caller may see as `method` (a stub's `WatchOrders`)
    streams them (only `event_id`'s when given); never ends by itself.

    `after_sequence` 0 starts at the stream's first change, N after N. After the backlog, and
    again after each reopening, comes an `OrderChange` with `caught_up` set and only its
    sequence: everything up to there has been sent (others' changes included, so it moves
    the resume point of a reader that saw none of its own). The sequences a reader gets skip
    others' numbers, never one of its own.
    """
    return follow_stream(
        method,
        lambda after: booking_pb2.WatchOrdersRequest(after_sequence=after, event_id=event_id),
        # No snapshot: every message, the caught_up marker included, is a resume point.
        lambda change, _: change.sequence,
        after_sequence,
        metadata=metadata,
        give_up_after=give_up_after,
        on_resume=on_resume,
    )


def _gate_resume_point(change: gate_pb2.GateChange, current: int) -> int:
    # Snapshot entries (one per gate) all carry the snapshot's sequence and nothing says
    # which is last: resuming after it mid-snapshot would lose the gates not yet sent, so
    # the point moves only with the first scan or caught_up marker after the snapshot.
    return current if change.snapshot else change.sequence


def watch_gate(
    method: GateChanges,
    event_id: str,
    after_sequence: int = 0,
    *,
    metadata: CallMetadata | None = None,
    give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
    on_resume: ResumeHook | None = None,
) -> AsyncIterator[gate_pb2.GateChange]:
    """Yield the event's gate scans as `method` (a stub's `WatchGate`) streams them, each with
    its gate's counts after it; never ends by itself.

    `after_sequence` 0 starts with a snapshot (one entry per gate that scanned, `snapshot`
    set, its counts as of the snapshot's sequence), N > 0 with the scans after N (their
    counts continue from those at N). Then, and again after each reopening, a `caught_up`
    marker. A snapshot may come again, whole, only while the resume point is 0: treat its
    entries as "the gate is now".
    """
    return follow_stream(
        method,
        lambda after: gate_pb2.WatchGateRequest(event_id=event_id, after_sequence=after),
        _gate_resume_point,
        after_sequence,
        metadata=metadata,
        give_up_after=give_up_after,
        on_resume=on_resume,
    )
