"""Outbox pruning (migration 0019, ticketd.db.outbox.prune) through the real server and
PostgreSQL: old changes go oldest first and never past a younger one, in bounded batches; a
reader asking to resume from a pruned position is refused with SEQUENCE_PRUNED and where to
start again (a fresh snapshot for seats, the first kept change for orders), at the start or
when a prune overtakes it mid-stream; a prune racing writers, sequencers and watchers never
lets a watcher receive a hole; the server's own pruning round deletes what is past its
retention."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, second_server
from tests.support import Account, Stubs, error_details
from tests.test_outbox import connections
from tests.test_streams import Watcher, book, last_sequence, new_event
from tests.test_watch_orders import OrderWatcher, head
from ticketd.db import outbox
from ticketd.db.database import PoolOptions
from ticketing import watch
from ticketing.errors import TicketingError
from ticketing.v1 import booking_pb2, event_pb2

HOUR = 3600.0


@pytest.fixture
async def watchers() -> AsyncIterator[list[Any]]:
    made: list[Any] = []
    yield made
    for w in made:
        await w.stop()


async def age(conn: asyncpg.Connection, event_id: str, sequences: list[int]) -> None:
    """Make the event's seat changes with these numbers two hours old."""
    await conn.execute(
        "UPDATE seat_changes SET change_time = change_time - interval '2 hours' "
        "WHERE event_id = $1 AND sequence = ANY($2::bigint[])",
        uuid.UUID(event_id),
        sequences,
    )


async def kept(conn: asyncpg.Connection, event_id: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT sequence FROM seat_changes WHERE event_id = $1 AND sequence IS NOT NULL "
        "ORDER BY sequence",
        uuid.UUID(event_id),
    )
    return [r["sequence"] for r in rows]


async def pruned_through(conn: asyncpg.Connection, event_id: str) -> int:
    return await outbox.pruned_through(conn, outbox.SEATS, uuid.UUID(event_id))


async def refused(call: Any) -> aio.AioRpcError:
    """The error a stream call ends with (bounded)."""
    with pytest.raises(aio.AioRpcError) as err:
        async with asyncio.timeout(10):
            async for _ in call:
                pass
    return err.value


async def test_old_seat_changes_go_oldest_first_never_past_a_younger_one_in_batches(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("pruned")
    for seat in ids[:6]:
        await stubs.booking.BookSeats(book(event_id, [seat]), metadata=buyer.md)
    assert await last_sequence(running, event_id) == 6
    async with connections(running, 1) as (conn,):
        # 1, 2, 3 and 5 are old, 4 is not: the prefix stops before 4.
        await age(conn, event_id, [1, 2, 3, 5])
        # A budget of 2 deletes 2 (one short transaction each), the next call the third.
        assert await outbox.prune(conn, outbox.SEATS, HOUR, 2) == 2
        assert await kept(conn, event_id) == [3, 4, 5, 6]
        assert await pruned_through(conn, event_id) == 2
        while await outbox.prune(conn, outbox.SEATS, HOUR, 2) > 0:
            pass
        assert await kept(conn, event_id) == [4, 5, 6]
        assert await pruned_through(conn, event_id) == 3
        # Nothing younger than the retention goes, however large the budget.
        assert await outbox.prune(conn, outbox.SEATS, HOUR, 10_000) == 0
        await age(conn, event_id, [4, 6])
        assert await outbox.prune(conn, outbox.SEATS, HOUR, 10_000) >= 3
        assert await kept(conn, event_id) == []
        assert await pruned_through(conn, event_id) == 6
        # Bad calls are refused, not half-done.
        with pytest.raises(asyncpg.PostgresError, match="limit must be at least 1"):
            await outbox.prune(conn, outbox.SEATS, HOUR, 0)
        with pytest.raises(ValueError, match="never pruned"):
            await outbox.prune(conn, outbox.GATES, HOUR, 10)


async def test_resuming_from_a_pruned_position_is_refused_with_a_fresh_snapshot_to_start_from(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Any]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("resume-pruned")
    await stubs.booking.BookSeats(book(event_id, ids[:3]), metadata=buyer.md)
    assert await last_sequence(running, event_id) == 3
    async with connections(running, 1) as (conn,):
        await age(conn, event_id, [1, 2])
        assert await outbox.prune(conn, outbox.SEATS, HOUR, 1000) >= 2
    err = await refused(
        stubs.events.WatchSeats(event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=1))
    )
    details = error_details(err)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "SEQUENCE_PRUNED"
    assert details.metadata == {"pruned_through": "2", "resume_after_sequence": "0"}
    # Exactly at the pruned edge nothing is missing: it reads on from 3.
    edge = Watcher(stubs, event_id, after=2)
    watchers.append(edge)
    await edge.until(lambda w: len(w.items) >= 1)
    assert [(c.sequence, c.seat_id) for c in edge.items] == [(3, ids[2])]
    # The restart the error names: a snapshot that still shows the pruned sales.
    fresh = Watcher(stubs, event_id)
    watchers.append(fresh)
    await fresh.until(lambda w: any(c.snapshot_complete for c in w.items))
    sold = {c.seat_id for c in fresh.items if c.status == event_pb2.SEAT_STATUS_SOLD}
    assert sold == set(ids[:3]) and {c.sequence for c in fresh.items} == {3}


async def test_a_prune_that_overtakes_a_watcher_on_the_shared_tail_ends_it_before_the_hole(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Any]
) -> None:
    # The watcher is caught up (on its process's shared tail). Changes 2-3 are numbered and
    # pruned in the one transaction, so it never read them; the next change (4) must not be
    # delivered as if 2-3 never existed.
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("overtaken")
    await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
    watcher = Watcher(stubs, event_id, after=await last_sequence(running, event_id))
    watchers.append(watcher)
    key = uuid.UUID(event_id)
    for _ in range(1000):  # bounded: 10 s
        if running.components.db.outbox.shared_followers(outbox.SEATS, key) >= 1:
            break
        await asyncio.sleep(0.01)
    assert running.components.db.outbox.shared_followers(outbox.SEATS, key) == 1
    async with connections(running, 1) as (conn,):
        async with conn.transaction():
            await conn.fetchval("SELECT record_seat_changes($1::bigint[], 'HELD')", ids[1:3])
        async with conn.transaction():
            assert await conn.fetchval("SELECT outbox_sequence('seats', $1)", key) == 3
            await conn.execute(
                "DELETE FROM seat_changes WHERE event_id = $1 AND sequence IN (2, 3)", key
            )
            await conn.execute(
                "INSERT INTO outbox_pruned (stream, key, pruned_through) VALUES ('seats', $1, 3)",
                key,
            )
    await stubs.booking.BookSeats(book(event_id, ids[3:4]), metadata=buyer.md)
    with pytest.raises(aio.AioRpcError) as err:
        await watcher.until(lambda w: False)
    details = error_details(err.value)
    assert details.reason == "SEQUENCE_PRUNED"
    assert details.metadata["resume_after_sequence"] == "0"
    assert watcher.items == []  # change 4 was never sent after the hole


async def test_pruning_racing_writers_sequencers_and_watchers_never_delivers_a_hole(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # Bounded: 4 writers x 15 bookings, a pruner deleting everything numbered (retention 0)
    # as fast as it can, watchers joining at random points; 60 s at most. Each watcher either
    # keeps reading a dense run of numbers or is ended with SEQUENCE_PRUNED: never a hole.
    event_id, ids = await new_event(stubs, admin, rows=6, seats=10)
    buyers = [await stubs.register(f"race-{i}") for i in range(4)]
    done = asyncio.Event()
    outcomes: list[tuple[int, list[int], str | None]] = []

    async def write(i: int) -> None:
        for seat in ids[i * 15 : (i + 1) * 15]:
            await stubs.booking.BookSeats(book(event_id, [seat]), metadata=buyers[i].md)

    async def prune(conn: asyncpg.Connection) -> int:
        deleted = 0
        while not done.is_set():
            deleted += await outbox.prune(conn, outbox.SEATS, 0, 3)
            await asyncio.sleep(0.005)
        return deleted

    async def watch(start: int) -> None:
        await asyncio.sleep(start * 0.05)
        # Half from a snapshot (at the head), half a little behind (likely pruned).
        after = 0 if start % 2 else max(0, await last_sequence(running, event_id) - 2)
        call = stubs.events.WatchSeats(
            event_pb2.WatchSeatsRequest(event_id=event_id, after_sequence=after)
        )
        got: list[int] = []
        reason = None
        try:
            async with asyncio.timeout(3):
                async for change in call:
                    if change.snapshot:
                        after = change.sequence  # the changes follow the snapshot's number
                    else:
                        got.append(change.sequence)
        except TimeoutError:
            call.cancel()
        except aio.AioRpcError as err:
            reason = error_details(err).reason
        outcomes.append((after, got, reason))

    async with connections(running, 1) as (conn,):
        async with asyncio.timeout(60):
            pruner = asyncio.ensure_future(prune(conn))
            await asyncio.gather(*(write(i) for i in range(4)), *(watch(s) for s in range(8)))
            done.set()
            deleted = await pruner
    assert deleted > 0
    assert len(outcomes) == 8
    for after, got, reason in outcomes:
        assert reason in (None, "SEQUENCE_PRUNED")
        # Exactly the numbers after where it started, none skipped, none repeated.
        assert got == list(range(after + 1, after + 1 + len(got)))


async def test_watch_orders_from_zero_starts_at_the_first_kept_change_and_refuses_older(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Any]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("orders-pruned")
    await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
    await stubs.booking.BookSeats(book(event_id, ids[1:2]), metadata=buyer.md)
    top = await head(running)
    async with connections(running, 1) as (conn,):
        # Every order change so far is older than the retention (0 s): all pruned.
        while await outbox.prune(conn, outbox.ORDERS, 0, 1000) > 0:
            pass
        through = await outbox.pruned_through(conn, outbox.ORDERS, outbox.ALL)
    assert through >= top
    err = await refused(
        stubs.booking.WatchOrders(
            booking_pb2.WatchOrdersRequest(after_sequence=top - 1), metadata=admin.md
        )
    )
    details = error_details(err)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details.reason == "SEQUENCE_PRUNED"
    assert details.metadata["resume_after_sequence"] == str(through)
    # From 0: no error, the pruned ones are simply not there, the new one is.
    watcher = OrderWatcher(stubs, buyer.md, 0)
    watchers.append(watcher)
    await watcher.until(0)
    assert watcher.changes == []
    third = await stubs.booking.BookSeats(book(event_id, ids[2:3]), metadata=buyer.md)
    await watcher.until(1)
    assert [c.order_id for c in watcher.changes] == [third.order.id]
    assert watcher.changes[0].sequence > through


async def test_the_servers_pruning_round_deletes_what_is_past_its_retention(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("swept-changes")
    await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    await stubs.booking.BookSeats(book(event_id, ids[2:3]), metadata=buyer.md)
    assert await last_sequence(running, event_id) == 3
    async with connections(running, 1) as (conn,):
        await age(conn, event_id, [1, 2])
        async with second_server(
            running,
            PoolOptions(pool_size=2),
            outbox_retention_seconds=int(HOUR),
            outbox_prune_interval_seconds=0.05,
        ):
            for _ in range(200):  # bounded: 10 s
                if await kept(conn, event_id) == [3]:
                    break
                await asyncio.sleep(0.05)
        assert await kept(conn, event_id) == [3]
        assert await pruned_through(conn, event_id) == 2


async def test_the_sdk_seat_watch_starts_again_from_a_snapshot_when_its_position_was_pruned(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("sdk-pruned")
    await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    await stubs.booking.BookSeats(book(event_id, ids[2:3]), metadata=buyer.md)
    async with connections(running, 1) as (conn,):
        await age(conn, event_id, [1, 2, 3])
        assert await outbox.prune(conn, outbox.SEATS, HOUR, 1000) >= 3
    resumes: list[tuple[str | None, int]] = []
    changes = watch.watch_seats(
        stubs.events, event_id, 1, on_resume=lambda err, after: resumes.append((err.reason, after))
    )
    got: list[event_pb2.SeatChange] = []
    async with asyncio.timeout(20):
        async for change in changes:
            got.append(change)
            if change.snapshot_complete:
                break
    assert isinstance(changes, AsyncGenerator)
    await changes.aclose()
    assert resumes == [("SEQUENCE_PRUNED", 0)]
    assert all(c.snapshot and c.sequence == 3 for c in got)
    sold = {c.seat_id for c in got if c.status == event_pb2.SEAT_STATUS_SOLD}
    assert sold == set(ids[:3])
    # Orders are not restarted behind the caller's back: what was missed must be reconciled.
    await head(running)
    async with connections(running, 1) as (conn,):
        while await outbox.prune(conn, outbox.ORDERS, 0, 1000) > 0:
            pass
    with pytest.raises(TicketingError) as err:
        async with asyncio.timeout(20):
            async for _ in watch.watch_orders(stubs.booking.WatchOrders, 1, metadata=admin.md):
                pass
    assert err.value.reason == "SEQUENCE_PRUNED"
