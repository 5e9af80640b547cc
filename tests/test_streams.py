"""WatchSeats (issue 15) through the real server: a snapshot then every committed change in
order, dense commit-ordered sequences, exact resumption, rolled-back changes never seen, a
slow reader ended with a resume point instead of buffered without bound, expiry shown once
swept, stream limits and shutdown (the limits on WatchSeatBatches too: the same stream;
its own tests are in tests/test_seat_batches.py)."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer, second_server
from tests.procs import ticketd_process
from tests.support import Account, StreamReader, Stubs, client_pool, error_details, small_layout
from ticketd.db.database import PoolOptions
from ticketd.events.service import STREAM_PAGE
from ticketing.v1 import booking_pb2, event_pb2

SOLD, AVAILABLE, HELD = (
    event_pb2.SEAT_STATUS_SOLD,
    event_pb2.SEAT_STATUS_AVAILABLE,
    event_pb2.SEAT_STATUS_HELD,
)
READ_TIMEOUT_S = 20.0
# The two framings of the one seat stream: the tests of its limits run on both.
RPCS = ("WatchSeats", "WatchSeatBatches")
SeatMessage = event_pb2.SeatChange | event_pb2.SeatChangeBatch


def seat_stream(stubs: Stubs, rpc: str, event_id: str, after: int = 0, **call: Any) -> Any:
    """A WatchSeats or WatchSeatBatches call (the same request fields)."""
    if rpc == "WatchSeats":
        return stubs.events.WatchSeats(
            event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=after), **call
        )
    return stubs.events.WatchSeatBatches(
        event_pb2.WatchSeatBatchesRequest(event_id=event_id, after_sequence=after), **call
    )


def changes_in(message: SeatMessage) -> list[event_pb2.SeatChange]:
    """The changes one message of either RPC carries."""
    if isinstance(message, event_pb2.SeatChangeBatch):
        return list(message.changes)
    return [message]


async def new_event(
    stubs: Stubs, admin: Account, rows: int = 4, seats: int = 10, max_per_order: int = 10
) -> tuple[str, list[int]]:
    venue = await stubs.create_venue(admin, small_layout(rows=rows, seats=seats, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=max_per_order)
    return event.id, [s.id for s in await stubs.all_seats(event.id)]


class Watcher(StreamReader[event_pb2.SeatChange]):
    """A WatchSeats call read in the background into a list, with helpers to wait."""

    def __init__(self, stubs: Stubs, event_id: str, after: int = 0) -> None:
        super().__init__(
            stubs.events.WatchSeats(
                event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=after)
            ),
            READ_TIMEOUT_S,
        )

    @property
    def changes(self) -> list[event_pb2.SeatChange]:
        return [c for c in self.items if not c.snapshot]

    async def until(self, done: Any) -> None:
        """Wait (bounded) until done(self) holds."""
        await self.wait_for(lambda: bool(done(self)))


@pytest.fixture
async def watchers() -> AsyncIterator[list[Watcher]]:
    made: list[Watcher] = []
    yield made
    for w in made:
        await w.stop()


def book(event_id: str, seats: list[int]) -> booking_pb2.BookSeatsRequest:
    return booking_pb2.BookSeatsRequest(
        event_id=event_id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=seats)
    )


async def every_kind_of_change(
    stubs: Stubs, buyer: Account, event_id: str, sold: list[int], held: int
) -> None:
    """Sell `sold` in one order, hold and release `held`, then refund the order: the stream
    records SOLD for each of `sold`, HELD and AVAILABLE for `held`, AVAILABLE for each of
    `sold`, in that order."""
    order = (await stubs.booking.BookSeats(book(event_id, sold), metadata=buyer.md)).order
    hold_req = booking_pb2.HoldSeatsRequest(
        event_id=event_id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=[held])
    )
    hold = (await stubs.booking.HoldSeats(hold_req, metadata=buyer.md)).hold
    await stubs.booking.ReleaseHold(
        booking_pb2.ReleaseHoldRequest(hold_id=hold.id), metadata=buyer.md
    )
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=order.id, request_id=str(uuid.uuid4()), reason="changed my mind"
        ),
        metadata=buyer.md,
    )


async def last_sequence(running: RunningServer, event_id: str) -> int:
    """The event's last change number once everything committed so far is numbered
    (sequences are assigned after commit, by the outbox sequencer)."""
    async with running.engine.connect() as conn:
        await conn.execute(text("SELECT outbox_sequence('seats', :e)"), {"e": uuid.UUID(event_id)})
        await conn.commit()
        value = (
            await conn.execute(
                text("SELECT coalesce(max(sequence), 0) FROM seat_changes WHERE event_id = :e"),
                {"e": uuid.UUID(event_id)},
            )
        ).scalar_one()
    return int(value)


async def test_snapshot_then_every_kind_of_change_in_order(
    stubs: Stubs, admin: Account, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("watched")
    w = Watcher(stubs, event_id)
    watchers.append(w)
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    snapshot = [c for c in w.items if c.snapshot]
    assert [c.seat_id for c in snapshot] == ids and {c.status for c in snapshot} == {AVAILABLE}
    assert {c.sequence for c in snapshot} == {0} and snapshot[-1].snapshot_complete
    assert sum(c.snapshot_complete for c in snapshot) == 1

    await every_kind_of_change(stubs, buyer, event_id, ids[:2], ids[5])
    await w.until(lambda w: len(w.changes) >= 6)
    got = [(c.sequence, c.seat_id, c.status) for c in w.changes]
    assert got == [
        (1, ids[0], SOLD),
        (2, ids[1], SOLD),
        (3, ids[5], HELD),
        (4, ids[5], AVAILABLE),
        (5, ids[0], AVAILABLE),
        (6, ids[1], AVAILABLE),
    ]
    # Public, like ListSeats: a seat change never names a holder or a buyer.
    assert set(event_pb2.SeatChange.DESCRIPTOR.fields_by_name) == {
        "sequence", "seat_id", "section_id", "status", "change_time", "snapshot",
        "snapshot_complete",
    }  # fmt: skip


async def test_a_watcher_sees_every_sale_of_a_200_buyer_rush_once_in_order(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin, rows=10, seats=20)
    buyers = list(await asyncio.gather(*(stubs.register("rusher") for _ in range(40))))
    w = Watcher(stubs, event_id)
    watchers.append(w)
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    rng = random.Random(15)
    async with client_pool(running.target, 8) as pool:
        results = await asyncio.gather(
            *(
                pool[i % 8].booking.BookSeats(
                    book(event_id, rng.sample(ids, rng.randint(1, 3))),
                    metadata=buyers[i % 40].md,
                    timeout=30,
                )
                for i in range(200)
            ),
            return_exceptions=True,
        )
    sold = [t.seat_id for r in results if not isinstance(r, BaseException) for t in r.order.tickets]
    assert len(sold) == len(set(sold)) > 20
    last = await last_sequence(running, event_id)
    assert last == len(sold)  # every sale recorded once, and nothing for the refusals
    await w.until(lambda w: len(w.changes) >= last)
    changes = w.changes
    assert [c.sequence for c in changes] == list(range(1, last + 1))  # no gap, no repeat
    assert sorted(c.seat_id for c in changes) == sorted(sold)
    assert {c.status for c in changes} == {SOLD}
    # The stream's final map is ListSeats.
    state = {c.seat_id: c.status for c in w.items}
    assert state == {s.id: s.status for s in await stubs.all_seats(event_id)}


async def test_resuming_with_the_last_sequence_gets_exactly_the_missed_changes(
    stubs: Stubs, admin: Account, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("resumer")
    first = Watcher(stubs, event_id)
    watchers.append(first)
    await first.until(lambda w: any(c.snapshot_complete for c in w.items))
    await stubs.booking.BookSeats(book(event_id, ids[:3]), metadata=buyer.md)
    await first.until(lambda w: len(w.changes) >= 3)
    await first.stop()  # disconnect
    resume_from = first.changes[-1].sequence
    await stubs.booking.BookSeats(book(event_id, ids[3:5]), metadata=buyer.md)
    await stubs.booking.BookSeats(book(event_id, ids[5:6]), metadata=buyer.md)
    again = Watcher(stubs, event_id, after=resume_from)
    watchers.append(again)
    await again.until(lambda w: len(w.items) >= 3)
    await asyncio.sleep(0.3)  # nothing more may arrive
    assert [(c.sequence, c.seat_id) for c in again.items] == [
        (4, ids[3]),
        (5, ids[4]),
        (6, ids[5]),
    ]
    assert not any(c.snapshot for c in again.items)
    # Resuming at the end waits for the next change; beyond it is refused.
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stubs.events.WatchSeats(
            event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=7), timeout=5
        ):
            pass
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = error_details(err.value)
    assert details.reason == "SEQUENCE_AHEAD" and details.metadata["last_sequence"] == "6"


async def test_a_rolled_back_change_never_appears_and_leaves_no_gap(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("rollback")
    w = Watcher(stubs, event_id)
    watchers.append(w)
    # The snapshot first: a sale before it would be in the snapshot, not a change.
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
    # A sale refused (one seat taken) writes nothing, so records nothing.
    with pytest.raises(aio.AioRpcError):
        await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    # A writer that recorded a change and then rolled back (as a killed connection does).
    async with running.engine.connect() as conn:
        tx = await conn.begin()
        await conn.execute(text("SET LOCAL ticketing.seat_streams = 'on'"))
        await conn.execute(text("UPDATE seats SET status = 'SOLD' WHERE id = :s"), {"s": ids[7]})
        await conn.execute(
            text("SELECT record_seat_changes(ARRAY[:s]::bigint[], 'SOLD')"), {"s": ids[7]}
        )
        await tx.rollback()
    await stubs.booking.BookSeats(book(event_id, ids[2:3]), metadata=buyer.md)
    await w.until(lambda w: len(w.changes) >= 2)
    await asyncio.sleep(0.3)
    assert [(c.sequence, c.seat_id) for c in w.changes] == [(1, ids[0]), (2, ids[2])]


async def test_an_expired_hold_shows_available_once_swept(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("expiring")
    request = booking_pb2.HoldSeatsRequest(
        event_id=event_id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=ids[:2])
    )
    request.ttl.FromSeconds(1)
    await stubs.booking.HoldSeats(request, metadata=buyer.md)
    w = Watcher(stubs, event_id)
    watchers.append(w)
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    await asyncio.sleep(1.2)
    while await running.components.booking.sweep_expired_holds() > 0:
        pass
    await w.until(lambda w: len(w.changes) >= 2)
    assert [(c.seat_id, c.status) for c in w.changes] == [(ids[0], AVAILABLE), (ids[1], AVAILABLE)]
    state = {c.seat_id: c.status for c in w.items}
    assert state == {s.id: s.status for s in await stubs.all_seats(event_id)}


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_reader_that_never_reads_is_ended_with_a_resume_point(
    admin: Account, running: RunningServer, rpc: str
) -> None:
    # A client window of 64 KiB with no auto-tuning (as a slow mobile link) and a snapshot
    # of 4,160 seats, far more than that: the server must stop and end the stream instead
    # of queueing the rest for a reader that never takes it.
    async with second_server(
        running, PoolOptions(pool_size=4), stream_send_timeout_seconds=0.5
    ) as srv:
        channel = aio.insecure_channel(
            srv.target,
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_536)],
        )
        stubs = Stubs(channel)
        try:
            event_id, ids = await new_event(stubs, admin, rows=26, seats=160)
            call = seat_stream(stubs, rpc, event_id)
            await asyncio.sleep(2.0)  # never reads meanwhile
            received = 0
            with pytest.raises(aio.AioRpcError) as err:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    async for message in call:
                        received += len(changes_in(message))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (received, err.value)
            details = error_details(err.value)
            assert details.reason == "STREAM_TOO_SLOW"
            # Mid-snapshot: nothing to resume after but 0 (a new snapshot).
            assert details.metadata["resume_after_sequence"] == "0"
            assert 0 < received < len(ids)
            if rpc == "WatchSeatBatches":  # whole batches of 500 (one outbox page) only
                assert received % STREAM_PAGE == 0
        finally:
            await channel.close(None)


@pytest.mark.parametrize("rpc", RPCS)
async def test_stream_limit_and_shutdown_say_where_to_resume(
    admin: Account, running: RunningServer, stubs: Stubs, rpc: str
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("before")
    await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    other_rpc = RPCS[1 - RPCS.index(rpc)]
    async with second_server(running, PoolOptions(pool_size=4), max_streams=1) as srv:
        channel = aio.insecure_channel(srv.target)
        other = Stubs(channel)
        try:
            first: StreamReader[SeatMessage] = StreamReader(seat_stream(other, rpc, event_id))
            await first.wait_for(
                lambda: any(c.snapshot_complete for m in first.items for c in changes_in(m))
            )
            # The snapshot is consistent with the two sales: its sequence is 2.
            assert {c.sequence for m in first.items for c in changes_in(m)} == {2}
            # One stream per server here, whichever RPC: the other one is refused too.
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in seat_stream(other, other_rpc, event_id, timeout=5):
                    pass
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error_details(err.value).reason == "STREAM_LIMIT_EXCEEDED"
            await srv.server.stop(2)
            await asyncio.wait_for(first.task, 10)
            assert first.error is not None
            assert first.error.code() == grpc.StatusCode.UNAVAILABLE
            details = error_details(first.error)
            assert details.reason == "SERVER_SHUTTING_DOWN"
            # The snapshot was delivered whole: resume after its sequence.
            assert details.metadata["resume_after_sequence"] == "2"
        finally:
            await channel.close(None)


async def test_unknown_event_and_bad_input(stubs: Stubs) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in stubs.events.WatchSeats(
            event_pb2.WatchSeatsRequest(event_id=str(uuid.uuid4())), timeout=5
        ):
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for bad in (
        event_pb2.WatchSeatsRequest(event_id="nope"),
        event_pb2.WatchSeatsRequest(event_id=str(uuid.uuid4()), after_sequence=-1),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            async for _ in stubs.events.WatchSeats(bad, timeout=5):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.slow
async def test_watchers_resume_on_the_restarted_server_after_a_kill_9(
    stubs: Stubs, admin: Account, running: RunningServer, database_url: str, tmp_path: Path
) -> None:
    proc = ticketd_process(
        database_url, tmp_path, jwt_secret=running.components.settings.jwt_secret or ""
    )
    await proc.start()
    channel = aio.insecure_channel(proc.target)
    try:
        event_id, ids = await new_event(stubs, admin)
        buyer = await stubs.register("restarted")
        watcher = Watcher(Stubs(channel), event_id)
        await watcher.until(lambda w: any(c.snapshot_complete for c in w.items))
        await stubs.booking.BookSeats(book(event_id, ids[:3]), metadata=buyer.md)
        await watcher.until(lambda w: len(w.changes) >= 3)
        await proc.kill()  # SIGKILL: the stream just breaks
        await asyncio.wait_for(watcher.task, 10)
        assert watcher.error is not None
        assert watcher.error.code() == grpc.StatusCode.UNAVAILABLE
        last = watcher.changes[-1].sequence
        # Sales go on elsewhere while the watcher's server is down.
        await stubs.booking.BookSeats(book(event_id, ids[3:5]), metadata=buyer.md)
        await proc.start()
        again = Watcher(Stubs(channel), event_id, after=last)
        try:
            await again.until(lambda w: len(w.items) >= 2)
            await asyncio.sleep(0.3)
            assert [(c.sequence, c.seat_id) for c in again.items] == [
                (last + 1, ids[3]),
                (last + 2, ids[4]),
            ]
        finally:
            await again.stop()
    finally:
        await channel.close(None)
        await proc.kill()


async def test_a_server_with_seat_streams_off_records_nothing_and_says_so(
    admin: Account, running: RunningServer, stubs: Stubs
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("unstreamed")
    async with second_server(
        running, PoolOptions(pool_size=2, seat_streams=False), seat_streams=False
    ) as srv:
        channel = aio.insecure_channel(srv.target)
        try:
            off = Stubs(channel)
            await off.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in off.events.WatchSeats(
                    event_pb2.WatchSeatsRequest(event_id=event_id), timeout=5
                ):
                    pass
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_details(err.value).reason == "SEAT_STREAMS_OFF"
        finally:
            await channel.close(None)
    assert await last_sequence(running, event_id) == 0


@pytest.mark.parametrize("rpc", RPCS)
async def test_a_reader_leaving_mid_snapshot_ends_its_stream_quietly(
    stubs: Stubs,
    admin: Account,
    running: RunningServer,
    caplog: pytest.LogCaptureFixture,
    rpc: str,
) -> None:
    """Readers that cancel after one message of a 2,000-seat snapshot (the server is still
    writing): each stream ends as CANCELLED, with no internal error logged and its place
    among the server's streams given back."""
    event_id, _ = await new_event(stubs, admin, rows=25, seats=80)
    interceptor = running.server.interceptor
    before = interceptor.open_streams
    caplog.set_level(logging.ERROR, logger="ticketd")
    for _ in range(5):
        call = seat_stream(stubs, rpc, event_id)
        async for _message in call:
            break
        call.cancel()
    for _ in range(500):  # bounded: 10 s
        if interceptor.open_streams <= before:
            break
        await asyncio.sleep(0.02)
    assert interceptor.open_streams <= before
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
