"""`--observe`: a watcher that follows the event's seat stream during the rush (WatchSeatBatches
through the SDK's `watch_seats`, or WatchSeats on a server without it).

It opens the stream (its own connection) before the first request and waits for the
snapshot, so every change of the rush reaches it as a live change; it resumes across breaks
with the SDK's `watch_seats`. At the end it catches up with the stream's last change (the
sequence of a fresh snapshot taken after the rush) and checks, as two audit checks:

- `seat_stream_dense`: the live changes came numbered snapshot+1, +2, ... with no gap and no
  repeat, across every reconnection;
- `seat_stream_matches_seat_map`: the map the stream built (snapshot + changes) equals
  ListSeats seat by seat. One difference is by design and is counted, not failed: a seat
  of a hold that ran out reads AVAILABLE in ListSeats at once (a query condition) but the
  stream says so only when the server's sweeper tidies it (docs/streams.md), so a seat the
  stream shows HELD, ListSeats AVAILABLE and whose hold is over is `unsweptExpiredHolds`.

The report's `observer` object: `snapshotSequence`, `finalSequence`, `changes`, `gaps`
(missing numbers), `repeats`, `reconnects`, `mismatches`, `unsweptExpiredHolds`,
`catchUpSeconds`, and `deliveryLag` (receive time minus the change's change_time, both
wall clocks: p50/p99/max in ms; meaningful when the harness and the database share a clock).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ticketing.errors import TicketingError
from ticketing.rush.audit import MAX_EXAMPLES, Check, list_holds
from ticketing.rush.provision import Account, load_seat_map
from ticketing.rush.stats import new_histogram
from ticketing.stubs import Stubs
from ticketing.v1 import booking_pb2, event_pb2
from ticketing.watch import watch_seats

# Bounds of the observer's own waits: the snapshot before the rush, the catch-up after it.
SNAPSHOT_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 60.0


@dataclass
class StreamLedger:
    """What the stream said, applied in order: the map it builds and every irregularity."""

    status: dict[int, int] = field(default_factory=dict)
    snapshot_sequence: int = 0
    sequence: int = 0
    snapshot_done: bool = False
    changes: int = 0
    gaps: int = 0
    repeats: int = 0
    examples: list[str] = field(default_factory=list)
    snapshots: int = 0
    _pending: dict[int, int] = field(default_factory=dict)

    def apply(self, change: event_pb2.SeatChange) -> None:
        """Take one message of the stream (snapshot entry or live change)."""
        if change.snapshot:
            # A snapshot (the first, or a new one when a stream broke before its first
            # change) replaces the whole map once complete.
            self._pending[change.seat_id] = change.status
            if change.snapshot_complete:
                self.status = self._pending
                self._pending = {}
                self.snapshot_sequence = self.sequence = change.sequence
                self.snapshot_done = True
                self.snapshots += 1
            return
        if change.sequence <= self.sequence:
            self.repeats += 1
            self._example(f"change #{change.sequence} after #{self.sequence} (repeat)")
            return
        if change.sequence != self.sequence + 1:
            self.gaps += change.sequence - self.sequence - 1
            self._example(f"#{self.sequence} followed by #{change.sequence} (gap)")
        self.sequence = change.sequence
        self.changes += 1
        self.status[change.seat_id] = change.status

    def _example(self, text: str) -> None:
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(text)


class SeatObserver:
    """Follows one event's seat stream in the background; `finish()` checks it."""

    def __init__(self, stubs: Stubs, event_id: str) -> None:
        self._stubs = stubs
        self._event_id = event_id
        self.ledger = StreamLedger()
        self.reconnects = 0
        self._lag = new_histogram()
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the stream and wait (bounded) for its snapshot. Raises TicketingError when
        the server refuses it (SEAT_STREAMS_OFF: start it with TICKETING_SEAT_STREAMS=on)."""
        self._task = asyncio.create_task(self._follow())
        await self._until(lambda: self.ledger.snapshot_done, SNAPSHOT_TIMEOUT_S)

    async def until_changes(self, count: int, within: float = SNAPSHOT_TIMEOUT_S) -> None:
        """Wait (bounded) until `count` changes after the snapshot have arrived."""
        await self._until(lambda: self.ledger.changes >= count, within)

    def _resumed(self, error: TicketingError, after: int) -> None:
        self.reconnects += 1

    async def _follow(self) -> None:
        # The stub, not its WatchSeats: batches, so a rush's changes cost the server (and
        # this harness) one message per page; WatchSeats on a server without them.
        async for change in watch_seats(
            self._stubs.events, self._event_id, on_resume=self._resumed
        ):
            self.ledger.apply(change)
            if not change.snapshot:
                lag_us = (time.time_ns() - change.change_time.ToNanoseconds()) // 1000
                self._lag.record_value(max(1, lag_us))
            self._moved.set()

    async def _until(self, done: Any, within: float) -> None:
        assert self._task is not None
        async with asyncio.timeout(within):
            while not done():
                if self._task.done():
                    self._task.result()  # the stream's error (or a bug) surfaces here
                    raise RuntimeError("the seat stream ended")
                self._moved.clear()
                moved = asyncio.ensure_future(self._moved.wait())
                try:
                    await asyncio.wait([self._task, moved], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    moved.cancel()

    async def stop(self) -> None:
        """Close the stream (idempotent)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def finish(self, admin: Account) -> tuple[dict[str, Any], list[Check]]:
        """After the rush: catch up with the stream's last change, compare with ListSeats,
        close the stream. Returns the report's `observer` object and the two checks."""
        seats = await load_seat_map(self._stubs, self._event_id)
        holds = await list_holds(self._stubs, admin, self._event_id)
        final = await _last_sequence(self._stubs, self._event_id)
        t0 = time.perf_counter()
        caught_up = True
        try:
            await self._until(lambda: self.ledger.sequence >= final, CATCH_UP_TIMEOUT_S)
        except TimeoutError:
            caught_up = False
        catch_up = time.perf_counter() - t0
        await self.stop()
        return self._verdict(seats, holds, final, caught_up, catch_up)

    def _verdict(
        self,
        seats: list[event_pb2.Seat],
        holds: list[booking_pb2.Hold],
        final: int,
        caught_up: bool,
        catch_up: float,
    ) -> tuple[dict[str, Any], list[Check]]:
        ledger = self.ledger
        dense = Check(
            "seat_stream_dense",
            "the seat stream numbered its changes snapshot+1, +2, ... with no gap or repeat",
        )
        for example in ledger.examples:
            dense.fail(example)
        for _ in range(ledger.gaps + ledger.repeats - len(ledger.examples)):
            dense.violations += 1
        if not caught_up:
            dense.fail(f"the stream stopped at #{ledger.sequence}; the event is at #{final}")
        over = {
            s.seat_id
            for h in holds
            if h.status == booking_pb2.HOLD_STATUS_EXPIRED
            or (
                h.status == booking_pb2.HOLD_STATUS_ACTIVE
                and h.expire_time.ToNanoseconds() <= time.time_ns()
            )
            for s in h.seats
        }
        same = Check(
            "seat_stream_matches_seat_map",
            "the map built from the seat stream equals ListSeats, seat by seat",
        )
        unswept = 0
        for seat in seats:
            streamed = ledger.status.get(seat.id)
            if streamed == seat.status:
                continue
            if (
                streamed == event_pb2.SEAT_STATUS_HELD
                and seat.status == event_pb2.SEAT_STATUS_AVAILABLE
                and seat.id in over
            ):
                unswept += 1
                continue
            same.fail(f"seat {seat.id}: stream {_name(streamed)}, ListSeats {_name(seat.status)}")
        for seat_id in sorted(set(ledger.status) - {s.id for s in seats}):
            same.fail(f"seat {seat_id} is in the stream but not in ListSeats")
        lag = self._lag
        report = {
            "snapshotSequence": ledger.snapshot_sequence,
            "finalSequence": final,
            "streamSequence": ledger.sequence,
            "changes": ledger.changes,
            "gaps": ledger.gaps,
            "repeats": ledger.repeats,
            "snapshots": ledger.snapshots,
            "reconnects": self.reconnects,
            "mismatches": same.violations,
            "unsweptExpiredHolds": unswept,
            "catchUpSeconds": round(catch_up, 3),
            "deliveryLag": {
                "p50Ms": lag.get_value_at_percentile(50) / 1000 if ledger.changes else 0,
                "p99Ms": lag.get_value_at_percentile(99) / 1000 if ledger.changes else 0,
                "maxMs": lag.get_max_value() / 1000 if ledger.changes else 0,
            },
        }
        return report, [dense, same]


def _name(status: int | None) -> str:
    if status is None:
        return "absent"
    return event_pb2.SeatStatus.Name(status).removeprefix("SEAT_STATUS_")  # type: ignore[arg-type]


async def _last_sequence(stubs: Stubs, event_id: str) -> int:
    """The event's last change now: the sequence of a fresh snapshot (its last entry)."""
    call = stubs.events.WatchSeats(event_pb2.WatchSeatsRequest(event_id=event_id))
    try:
        async with asyncio.timeout(SNAPSHOT_TIMEOUT_S):
            async for change in call:
                if change.snapshot_complete or not change.snapshot:
                    return int(change.sequence)
    finally:
        call.cancel()
    raise RuntimeError("the seat stream ended before its snapshot")


def merge_into_audit(audit: dict[str, Any], checks: list[Check]) -> None:
    """Add the observer's checks to the report's `audit` object (passed/failed updated)."""
    audit["checks"].extend(c.as_dict() for c in checks)
    audit["failed"].extend(c.name for c in checks if not c.passed)
    audit["passed"] = audit["passed"] and all(c.passed for c in checks)
