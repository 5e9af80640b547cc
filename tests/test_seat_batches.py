"""WatchSeatBatches (issue 15: one message per page of changes, not per change) through the
real server: the same stream as WatchSeats, cut into batches of at most 500 changes; exact
resumption; public like WatchSeats (its slow-reader end, stream limit, shutdown and readers
leaving mid-snapshot are tested with WatchSeats' in tests/test_streams.py); and the SDK's `watch_seats`, which reads batches and falls back to WatchSeats on a server without
the RPC."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, second_server
from tests.support import Account, StreamReader, Stubs, error_details
from tests.test_shared_tail import rush
from tests.test_streams import Watcher, book, every_kind_of_change, last_sequence
from tests.test_streams import new_event as streams_event
from ticketd.db.database import PoolOptions
from ticketd.events import service as events_service
from ticketd.events.service import STREAM_PAGE
from ticketing.client import connect
from ticketing.v1 import event_pb2, event_pb2_grpc
from ticketing.watch import watch_seats

SOLD, AVAILABLE, HELD = (
    event_pb2.SEAT_STATUS_SOLD,
    event_pb2.SEAT_STATUS_AVAILABLE,
    event_pb2.SEAT_STATUS_HELD,
)
READ_TIMEOUT_S = 20.0
SERVICE = "ticketing.v1.EventService"


async def new_event(
    stubs: Stubs, admin: Account, rows: int = 4, seats: int = 10
) -> tuple[str, list[int]]:
    # Orders of up to 100 places: a few orders make a backlog of more than one page.
    return await streams_event(stubs, admin, rows, seats, max_per_order=100)


class BatchWatcher(StreamReader[event_pb2.SeatChangeBatch]):
    """A WatchSeatBatches call read in the background, batches kept as they came."""

    def __init__(self, stubs: Stubs, event_id: str, after: int = 0, metadata: Any = None) -> None:
        super().__init__(
            stubs.events.WatchSeatBatches(
                event_pb2.WatchSeatBatchesRequest(event_id=event_id, after_sequence=after),
                metadata=metadata,
            ),
            READ_TIMEOUT_S,
        )

    @property
    def flat(self) -> list[event_pb2.SeatChange]:
        return [c for batch in self.items for c in batch.changes]

    @property
    def changes(self) -> list[event_pb2.SeatChange]:
        return [c for c in self.flat if not c.snapshot]

    async def until(self, done: Any) -> None:
        await self.wait_for(lambda: bool(done(self)))


@pytest.fixture
async def readers() -> AsyncIterator[list[StreamReader[Any]]]:
    made: list[StreamReader[Any]] = []
    yield made
    for r in made:
        await r.stop()


def snapshot_complete(w: BatchWatcher | Watcher) -> bool:
    items = w.flat if isinstance(w, BatchWatcher) else w.items
    return any(c.snapshot_complete for c in items)


def without_time(c: event_pb2.SeatChange) -> tuple[int, int, str, int, bool, bool]:
    # Two snapshots are read at two instants: everything but change_time must agree.
    return (c.sequence, c.seat_id, c.section_id, c.status, c.snapshot, c.snapshot_complete)


def check_batches(batches: list[event_pb2.SeatChangeBatch]) -> None:
    """What the contract promises of every batch: 1..500 changes in sequence order,
    snapshot entries never mixed with changes, snapshot_complete last in its batch."""
    for batch in batches:
        assert 1 <= len(batch.changes) <= STREAM_PAGE == 500
        kinds = {c.snapshot for c in batch.changes}
        assert len(kinds) == 1, "a batch mixes snapshot entries and changes"
        sequences = [c.sequence for c in batch.changes]
        assert sequences == sorted(sequences)
        for c in batch.changes[:-1]:
            assert not c.snapshot_complete
    live = [c.sequence for b in batches for c in b.changes if not c.snapshot]
    if live:
        assert live == list(range(live[0], live[0] + len(live))), "a gap or a repeat"


async def test_batches_carry_exactly_what_watch_seats_sends(
    stubs: Stubs, admin: Account, readers: list[StreamReader[Any]]
) -> None:
    # 650 seats: a snapshot of two batches (500 + 150), one outbox page each.
    event_id, ids = await new_event(stubs, admin, rows=26, seats=25)
    buyer = await stubs.register("batched")
    batched = BatchWatcher(stubs, event_id)  # anonymous: public, like WatchSeats
    single = Watcher(stubs, event_id)
    readers.extend([batched, single])
    await batched.until(snapshot_complete)
    await single.until(snapshot_complete)
    assert [len(b.changes) for b in batched.items] == [500, 150]
    assert [without_time(c) for c in batched.flat] == [without_time(c) for c in single.items]
    assert [c.seat_id for c in batched.flat] == ids

    await every_kind_of_change(stubs, buyer, event_id, ids[:3], ids[9])
    await batched.until(lambda w: len(w.changes) >= 8)
    await single.until(lambda w: len(w.changes) >= 8)
    await asyncio.sleep(0.3)  # nothing more may arrive
    # The same records, change_time included: one outbox, two framings.
    assert batched.changes == single.changes
    assert [(c.sequence, c.seat_id, c.status) for c in batched.changes] == [
        (1, ids[0], SOLD),
        (2, ids[1], SOLD),
        (3, ids[2], SOLD),
        (4, ids[9], HELD),
        (5, ids[9], AVAILABLE),
        (6, ids[0], AVAILABLE),
        (7, ids[1], AVAILABLE),
        (8, ids[2], AVAILABLE),
    ]
    # One sale's three seats are one commit: they come in one batch, not three messages.
    assert any(len(b.changes) >= 3 for b in batched.items[2:])
    check_batches(batched.items)


async def test_a_batch_never_holds_more_than_one_outbox_page(
    stubs: Stubs, admin: Account, readers: list[StreamReader[Any]]
) -> None:
    """700 sold seats missed by a resuming reader (its backlog), then 700 refunded in one
    transaction (CancelEvent) while it follows live: both come in batches of at most 500."""
    event_id, ids = await new_event(stubs, admin, rows=28, seats=25)
    buyers = await asyncio.gather(*(stubs.register("bulk") for _ in range(7)))
    await asyncio.gather(
        *(
            stubs.booking.BookSeats(book(event_id, ids[i * 100 : (i + 1) * 100]), metadata=b.md)
            for i, b in enumerate(buyers)
        )
    )
    w = BatchWatcher(stubs, event_id, after=1)
    readers.append(w)
    await w.until(lambda w: len(w.changes) >= 699)
    assert [c.sequence for c in w.changes] == list(range(2, 701))
    assert max(len(b.changes) for b in w.items) == 500
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=event_id, reason="too many batches"),
        metadata=admin.md,
    )
    await w.until(lambda w: len(w.changes) >= 699 + 700)
    await asyncio.sleep(0.3)
    refunds = w.changes[699:]
    assert [c.sequence for c in refunds] == list(range(701, 1401))
    assert {c.status for c in refunds} == {AVAILABLE}
    assert sorted(c.seat_id for c in refunds) == ids[:700]
    assert len(w.items) >= 4  # 700 + 700 changes cannot fit in fewer pages of 500
    check_batches(w.items)


async def test_resuming_a_batch_stream_gets_exactly_the_missed_changes(
    stubs: Stubs, admin: Account, readers: list[StreamReader[Any]]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("resumer")
    first = BatchWatcher(stubs, event_id, metadata=buyer.md)  # signed in works too
    readers.append(first)
    await first.until(snapshot_complete)
    await stubs.booking.BookSeats(book(event_id, ids[:3]), metadata=buyer.md)
    await first.until(lambda w: len(w.changes) >= 3)
    await first.stop()
    resume_from = first.changes[-1].sequence
    assert resume_from == 3
    await stubs.booking.BookSeats(book(event_id, ids[3:5]), metadata=buyer.md)
    await stubs.booking.BookSeats(book(event_id, ids[5:6]), metadata=buyer.md)
    again = BatchWatcher(stubs, event_id, after=resume_from)
    single = Watcher(stubs, event_id, after=resume_from)
    readers.extend([again, single])
    await again.until(lambda w: len(w.flat) >= 3)
    await single.until(lambda w: len(w.items) >= 3)
    await asyncio.sleep(0.3)
    assert [(c.sequence, c.seat_id) for c in again.flat] == [(4, ids[3]), (5, ids[4]), (6, ids[5])]
    assert again.flat == single.items
    assert not any(c.snapshot for c in again.flat)
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stubs.events.WatchSeatBatches(
            event_pb2.WatchSeatBatchesRequest(event_id=event_id, after_sequence=7), timeout=5
        ):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(err.value)
    assert details.reason == "SEQUENCE_AHEAD" and details.metadata["last_sequence"] == "6"


async def test_unknown_event_bad_input_and_streams_off(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    cases: list[tuple[event_pb2.WatchSeatBatchesRequest, grpc.StatusCode]] = [
        (event_pb2.WatchSeatBatchesRequest(event_id=str(uuid.uuid4())), grpc.StatusCode.NOT_FOUND),
        (event_pb2.WatchSeatBatchesRequest(event_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
        (
            event_pb2.WatchSeatBatchesRequest(event_id=str(uuid.uuid4()), after_sequence=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in stubs.events.WatchSeatBatches(request, timeout=5):
                pass
        assert err.value.code() == code, request
    event_id, _ = await new_event(stubs, admin)
    async with second_server(
        running, PoolOptions(pool_size=2, seat_streams=False), seat_streams=False
    ) as srv:
        channel = aio.insecure_channel(srv.target)
        try:
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in Stubs(channel).events.WatchSeatBatches(
                    event_pb2.WatchSeatBatchesRequest(event_id=event_id), timeout=5
                ):
                    pass
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_details(err.value).reason == "SEAT_STREAMS_OFF"
        finally:
            await channel.close(None)


# The SDK against servers with and without WatchSeatBatches.


class Relay:
    """A grpc.aio server offering only some of EventService's seat streams, each relayed to
    the real server: with `batches=False` it is a server from before WatchSeatBatches
    (grpc itself answers UNIMPLEMENTED for a method nobody registered). With
    `batches_then_unimplemented` N, its WatchSeatBatches relays N batches and then answers
    UNIMPLEMENTED, as a server replaced mid-stream by an older one would. `called` lists
    the methods asked for, in order."""

    def __init__(
        self, upstream: str, *, batches: bool, batches_then_unimplemented: int | None = None
    ) -> None:
        self._channel = aio.insecure_channel(upstream)
        self._stub = event_pb2_grpc.EventServiceStub(self._channel)
        self._cut = batches_then_unimplemented
        self.called: list[str] = []
        handlers = {
            "WatchSeats": grpc.unary_stream_rpc_method_handler(
                self._watch_seats,
                request_deserializer=event_pb2.WatchSeatsRequest.FromString,
                response_serializer=event_pb2.SeatChange.SerializeToString,
            )
        }
        if batches:
            handlers["WatchSeatBatches"] = grpc.unary_stream_rpc_method_handler(
                self._watch_seat_batches,
                request_deserializer=event_pb2.WatchSeatBatchesRequest.FromString,
                response_serializer=event_pb2.SeatChangeBatch.SerializeToString,
            )
        self.server = aio.server()
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _watch_seats(
        self, request: event_pb2.WatchSeatsRequest, context: Any
    ) -> AsyncIterator[event_pb2.SeatChange]:
        self.called.append(f"WatchSeats after {request.after_sequence}")
        async for change in self._stub.WatchSeats(request):
            yield change

    async def _watch_seat_batches(
        self, request: event_pb2.WatchSeatBatchesRequest, context: Any
    ) -> AsyncIterator[event_pb2.SeatChangeBatch]:
        self.called.append(f"WatchSeatBatches after {request.after_sequence}")
        sent = 0
        async for batch in self._stub.WatchSeatBatches(request):
            if self._cut is not None and sent == self._cut:
                await context.abort(grpc.StatusCode.UNIMPLEMENTED, "downgraded")
            yield batch
            sent += 1


@contextlib.asynccontextmanager
async def relay(
    upstream: str, *, batches: bool, batches_then_unimplemented: int | None = None
) -> AsyncIterator[Relay]:
    r = Relay(upstream, batches=batches, batches_then_unimplemented=batches_then_unimplemented)
    await r.server.start()
    try:
        yield r
    finally:
        await r.server.stop(0)
        await r._channel.close(None)


async def sdk_changes(
    stream: AsyncIterator[event_pb2.SeatChange], count: int
) -> list[event_pb2.SeatChange]:
    """The first `count` messages of an SDK stream (bounded), then the stream closed."""
    got: list[event_pb2.SeatChange] = []
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for change in stream:
                got.append(change)
                if len(got) == count:
                    break
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    return got


async def test_the_sdk_reads_batches_and_yields_the_changes_one_by_one(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin, rows=26, seats=25)
    buyer = await stubs.register("sdk")
    await stubs.booking.BookSeats(book(event_id, ids[:4]), metadata=buyer.md)
    async with relay(running.target, batches=True) as new_server:
        channel = aio.insecure_channel(new_server.target)
        try:
            events = Stubs(channel).events
            # The stub: batches. The stub's WatchSeats method (the old way): WatchSeats.
            batched = await sdk_changes(watch_seats(events, event_id), len(ids))
            single = await sdk_changes(watch_seats(events.WatchSeats, event_id), len(ids))
            assert new_server.called == ["WatchSeatBatches after 0", "WatchSeats after 0"]
            assert [without_time(c) for c in batched] == [without_time(c) for c in single]
            assert batched[-1].snapshot_complete and batched[-1].sequence == 4
            # Resumed from N: the changes after it, as single messages.
            after_one = await sdk_changes(watch_seats(events, event_id, 1), 3)
            assert [(c.sequence, c.seat_id, c.status) for c in after_one] == [
                (2, ids[1], SOLD),
                (3, ids[2], SOLD),
                (4, ids[3], SOLD),
            ]
        finally:
            await channel.close(None)
    # Client.watch_seats, anonymous, straight at the real server.
    async with connect(running.target) as client:
        via_client = await sdk_changes(client.watch_seats(event_id, 2), 2)
    assert [(c.sequence, c.seat_id) for c in via_client] == [(3, ids[2]), (4, ids[3])]


async def test_the_sdk_falls_back_to_watch_seats_on_an_older_server(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("old-server")
    async with relay(running.target, batches=False) as old_server:
        channel = aio.insecure_channel(old_server.target)
        try:
            stream = watch_seats(Stubs(channel).events, event_id)
            snapshot = await anext(stream)
            assert snapshot.snapshot and snapshot.seat_id == ids[0]
            rest = [await anext(stream) for _ in range(len(ids) - 1)]
            assert rest[-1].snapshot_complete
            await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
            live = [await asyncio.wait_for(anext(stream), READ_TIMEOUT_S) for _ in range(2)]
            await stream.aclose()  # type: ignore[attr-defined]
            assert [(c.sequence, c.seat_id, c.status) for c in live] == [
                (1, ids[0], SOLD),
                (2, ids[1], SOLD),
            ]
            # Asked for batches once, was told UNIMPLEMENTED, and went on with WatchSeats.
            assert old_server.called == ["WatchSeats after 0"]
        finally:
            await channel.close(None)


async def test_the_sdk_falls_back_mid_stream_from_where_it_was(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """A batch stream cut by UNIMPLEMENTED after the snapshot (a server downgraded under
    the client): the SDK goes on with WatchSeats after the snapshot's sequence, so no seat
    comes twice and no change is lost."""
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("downgraded")
    await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
    async with relay(running.target, batches=True, batches_then_unimplemented=1) as server:
        channel = aio.insecure_channel(server.target)
        try:
            stream = watch_seats(Stubs(channel).events, event_id)
            snapshot = [await asyncio.wait_for(anext(stream), READ_TIMEOUT_S) for _ in ids]
            assert snapshot[-1].snapshot_complete and {c.sequence for c in snapshot} == {1}
            await stubs.booking.BookSeats(book(event_id, ids[1:3]), metadata=buyer.md)
            live = [await asyncio.wait_for(anext(stream), READ_TIMEOUT_S) for _ in range(2)]
            await stream.aclose()  # type: ignore[attr-defined]
            assert [(c.sequence, c.seat_id, c.snapshot) for c in live] == [
                (2, ids[1], False),
                (3, ids[2], False),
            ]
            assert server.called == ["WatchSeatBatches after 0", "WatchSeats after 1"]
        finally:
            await channel.close(None)


async def test_a_burst_of_commits_comes_in_one_batch_per_tail_read(
    stubs: Stubs,
    admin: Account,
    readers: list[StreamReader[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The event's shared tail reads at most once per TAIL_MIN_INTERVAL_S (3 s here, so the
    burst below is well inside one interval however slow the machine): ten sales that
    commit together come in at most two batches (one if no read falls inside the burst),
    not one message per commit."""
    monkeypatch.setattr(events_service, "TAIL_MIN_INTERVAL_S", 3.0)
    event_id, ids = await new_event(stubs, admin)
    buyers = await asyncio.gather(*(stubs.register("burst") for _ in range(10)))
    w = BatchWatcher(stubs, event_id)
    readers.append(w)
    await w.until(snapshot_complete)
    await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyers[0].md)
    await w.until(lambda w: len(w.changes) == 1)  # the tail has just read
    before = len(w.items)
    await asyncio.gather(
        *(
            stubs.booking.BookSeats(book(event_id, [ids[1 + i]]), metadata=b.md)
            for i, b in enumerate(buyers)
        )
    )
    await w.until(lambda w: len(w.changes) == 11)
    assert [c.sequence for c in w.changes] == list(range(1, 12))
    assert 1 <= len(w.items) - before <= 2, [len(b.changes) for b in w.items[before:]]


async def test_two_events_at_the_same_sequences_get_their_own_batches(
    stubs: Stubs, admin: Account, readers: list[StreamReader[Any]]
) -> None:
    """Live batches are built once per page for all watchers, named by event and sequences:
    two events whose changes carry the same numbers never get each other's."""
    (first, first_ids), (second, second_ids) = await asyncio.gather(
        new_event(stubs, admin), new_event(stubs, admin)
    )
    buyer = await stubs.register("two-events")
    watchers = {e: [BatchWatcher(stubs, e) for _ in range(3)] for e in (first, second)}
    every = [w for ws in watchers.values() for w in ws]
    readers.extend(every)
    for w in every:
        await w.until(snapshot_complete)
    for event_id, ids in ((first, first_ids), (second, second_ids)):
        await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    for event_id, ids in ((first, first_ids), (second, second_ids)):
        for w in watchers[event_id]:
            await w.until(lambda w: len(w.changes) >= 2)
            assert [(c.sequence, c.seat_id) for c in w.changes] == [(1, ids[0]), (2, ids[1])]


async def test_batch_watchers_joining_during_a_rush_get_exactly_what_follows(
    stubs: Stubs, admin: Account, running: RunningServer, readers: list[StreamReader[Any]]
) -> None:
    """Batch watchers opened before and in the middle of 200 concurrent sales each get the
    changes after their start once, in order, in batches of at most 500, equal to what a
    WatchSeats watcher from the start got."""
    event_id, ids = await new_event(stubs, admin, rows=10, seats=30)
    single = Watcher(stubs, event_id)
    early = BatchWatcher(stubs, event_id)
    readers.extend([single, early])
    await single.until(snapshot_complete)
    await early.until(snapshot_complete)
    sales = asyncio.ensure_future(rush(running, stubs, event_id, ids, 200, "batch-rush"))
    joiners: list[tuple[int, BatchWatcher]] = []
    while len(joiners) < 6 and not sales.done():
        at = early.changes[-1].sequence if early.changes else 0
        joiner = BatchWatcher(stubs, event_id, after=at)
        joiners.append((at, joiner))
        readers.append(joiner)
        await asyncio.sleep(0.05)
    sold = await sales
    last = await last_sequence(running, event_id)
    assert last == len(sold) > 0
    await single.until(lambda w: bool(w.changes) and w.changes[-1].sequence >= last)
    await early.until(lambda w: bool(w.changes) and w.changes[-1].sequence >= last)
    assert early.changes == single.changes
    truth = {c.sequence: (c.seat_id, c.status) for c in single.changes}
    for at, w in joiners:
        if at == 0:  # joined before the first change: a snapshot, then everything
            await w.until(snapshot_complete)
            at = next(c.sequence for c in w.flat if c.snapshot_complete)
        await w.until(lambda w, start=at: (w.flat[-1].sequence if w.flat else start) >= last)
        got = [(c.sequence, (c.seat_id, c.status)) for c in w.changes]
        assert got == [(n, truth[n]) for n in range(at + 1, last + 1)], at
        check_batches(w.items)
    check_batches(early.items)
