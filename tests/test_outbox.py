"""The outbox sequencer (migration 0014, ticketd.db.outbox) against the real server and
PostgreSQL: writers that commit in the opposite order of their records are still read
without a skip, rolled-back records are never numbered, several sequencers at once keep the
numbers dense, writers never wait for sequencing, and a snapshot taken in the middle of a
rush is exactly the state at its sequence."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import RunningServer
from tests.support import Account, Stubs, client_pool
from tests.test_streams import Watcher, book, new_event
from ticketing.v1 import event_pb2

SOLD = event_pb2.SEAT_STATUS_SOLD


@pytest.fixture
async def watchers() -> AsyncIterator[list[Watcher]]:
    """Watchers a test opens, stopped at its end."""
    made: list[Watcher] = []
    yield made
    for w in made:
        await w.stop()


@contextlib.asynccontextmanager
async def connections(running: RunningServer, n: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`n` connections of the test's own (writers and sequencers outside the server)."""
    conns = [await asyncpg.connect(running.components.db.url) for _ in range(n)]
    try:
        yield conns
    finally:
        for conn in conns:
            await conn.close()


async def begin_sale(conn: asyncpg.Connection, seat_id: int) -> None:
    """A writer's transaction up to (not including) its commit: the seat SOLD and its
    change recorded, as a booking statement does."""
    await conn.execute("BEGIN")
    await conn.execute("UPDATE seats SET status = 'SOLD' WHERE id = $1", seat_id)
    await conn.fetchval("SELECT record_seat_changes(ARRAY[$1]::bigint[], 'SOLD')", seat_id)


def delivered(w: Watcher) -> int:
    """The sequence a watcher is consistent with (0 before its snapshot completed)."""
    if not any(c.snapshot_complete for c in w.items):
        return 0
    return w.items[-1].sequence


async def numbered(conn: asyncpg.Connection, event_id: str) -> list[tuple[int, int]]:
    rows = await conn.fetch(
        "SELECT sequence, seat_id FROM seat_changes WHERE event_id = $1 AND sequence IS NOT "
        "NULL ORDER BY sequence",
        uuid.UUID(event_id),
    )
    return [(r["sequence"], r["seat_id"]) for r in rows]


async def unnumbered(conn: asyncpg.Connection, event_id: str) -> int:
    value: int = await conn.fetchval(
        "SELECT count(*) FROM seat_changes WHERE event_id = $1 AND sequence IS NULL",
        uuid.UUID(event_id),
    )
    return value


async def test_writers_committing_in_the_opposite_order_are_read_without_a_skip(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    w = Watcher(stubs, event_id)
    watchers.append(w)
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    async with connections(running, 3) as (first, second, sequencer):
        await begin_sale(first, ids[0])  # records first (the lower id) ...
        await begin_sale(second, ids[1])
        await second.execute("COMMIT")  # ... but commits last
        # The sequencer does not wait for the writer still in flight, and numbers only
        # what committed: the second writer's change gets 1.
        async with asyncio.timeout(5):
            assert await sequencer.fetchval("SELECT outbox_sequence('seats', $1)", event_id) == 1
        await w.until(lambda w: len(w.changes) >= 1)
        assert [(c.sequence, c.seat_id) for c in w.changes] == [(1, ids[1])]
        await first.execute("COMMIT")
        # Committed later, numbered later: 2, never a number below what the reader has.
        await w.until(lambda w: len(w.changes) >= 2)
    assert [(c.sequence, c.seat_id, c.status) for c in w.changes] == [
        (1, ids[1], SOLD),
        (2, ids[0], SOLD),
    ]
    state = {c.seat_id: c.status for c in w.items}
    assert state == {s.id: s.status for s in await stubs.all_seats(event_id)}


async def test_a_rolled_back_record_is_never_numbered_even_if_a_sequencer_ran_meanwhile(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("outbox-rollback")
    w = Watcher(stubs, event_id)
    watchers.append(w)
    await w.until(lambda w: any(c.snapshot_complete for c in w.items))
    async with connections(running, 2) as (writer, sequencer):
        await begin_sale(writer, ids[3])
        await sequencer.fetchval("SELECT outbox_sequence('seats', $1)", event_id)
        await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
        await w.until(lambda w: len(w.changes) >= 1)
        await writer.execute("ROLLBACK")
        await stubs.booking.BookSeats(book(event_id, ids[1:2]), metadata=buyer.md)
        await w.until(lambda w: len(w.changes) >= 2)
        await sequencer.fetchval("SELECT outbox_sequence('seats', $1)", event_id)
        assert await numbered(sequencer, event_id) == [(1, ids[0]), (2, ids[1])]
        assert await unnumbered(sequencer, event_id) == 0
    await asyncio.sleep(0.3)  # nothing else may arrive
    assert [(c.sequence, c.seat_id) for c in w.changes] == [(1, ids[0]), (2, ids[1])]


async def test_concurrent_writers_and_sequencers_keep_numbers_dense_for_a_polling_reader(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # Two sequencers at once (as two ticketd workers), four writers that wait a random
    # moment between recording and committing (so commits overtake each other), and a
    # reader that polls numbered records: every read must continue exactly where the last
    # one ended. Bounded: 4 x 20 transactions, 30 s at most.
    event_id, ids = await new_event(stubs, admin, rows=10, seats=20)
    key = uuid.UUID(event_id)
    rng = random.Random(14)
    plan = rng.sample(ids, 80)
    done = asyncio.Event()
    read: list[tuple[int, int]] = []
    rolled_back: list[int] = []

    async def writer(conn: asyncpg.Connection, seats: list[int]) -> None:
        for i, seat in enumerate(seats):
            await begin_sale(conn, seat)
            await asyncio.sleep(rng.random() * 0.01)
            if i % 5 == 4:
                await conn.execute("ROLLBACK")
                rolled_back.append(seat)
            else:
                await conn.execute("COMMIT")

    async def sequencer(conn: asyncpg.Connection) -> int:
        runs = 0
        while not done.is_set():
            await conn.fetchval("SELECT outbox_sequence('seats', $1)", key)
            runs += 1
            await asyncio.sleep(0.001)
        return runs

    async def reader(conn: asyncpg.Connection) -> None:
        last = 0
        while not done.is_set() or len(read) < len(plan) - len(rolled_back):
            rows = await conn.fetch(
                "SELECT sequence, seat_id FROM seat_changes WHERE event_id = $1 "
                "AND sequence > $2 ORDER BY sequence",
                key,
                last,
            )
            got = [(r["sequence"], r["seat_id"]) for r in rows]
            # Each read starts right after the previous one and has no hole.
            assert [s for s, _ in got] == list(range(last + 1, last + 1 + len(got)))
            read.extend(got)
            if got:
                last = got[-1][0]
            await asyncio.sleep(0.002)

    async with connections(running, 7) as conns:
        async with asyncio.timeout(30):
            sequencers = [asyncio.ensure_future(sequencer(c)) for c in conns[4:6]]
            reading = asyncio.ensure_future(reader(conns[6]))
            await asyncio.gather(*(writer(conns[i], plan[i::4]) for i in range(4)))
            done.set()
            runs = await asyncio.gather(*sequencers)
            await conns[0].fetchval("SELECT outbox_sequence('seats', $1)", key)
            await reading
        assert await unnumbered(conns[0], event_id) == 0
        assert await numbered(conns[0], event_id) == read
    assert min(runs) > 0
    committed = [s for s in plan if s not in rolled_back]
    assert len(rolled_back) == 16
    assert sorted(seat for _, seat in read) == sorted(committed)  # each once, none rolled back
    assert [s for s, _ in read] == list(range(1, len(committed) + 1))


async def test_a_snapshot_taken_mid_rush_is_exactly_the_state_at_its_sequence(
    stubs: Stubs, admin: Account, running: RunningServer, watchers: list[Watcher]
) -> None:
    event_id, ids = await new_event(stubs, admin, rows=10, seats=20)
    buyers = list(await asyncio.gather(*(stubs.register("midrush") for _ in range(16))))
    rng = random.Random(1515)

    async def rush(pool: list[Stubs], n: int) -> None:
        await asyncio.gather(
            *(
                pool[i % len(pool)].booking.BookSeats(
                    book(event_id, rng.sample(ids, rng.randint(1, 2))),
                    metadata=buyers[i % 16].md,
                    timeout=30,
                )
                for i in range(n)
            ),
            return_exceptions=True,
        )

    async with client_pool(running.target, 4) as pool:
        selling = asyncio.ensure_future(rush(pool, 150))
        for _ in range(4):  # watchers join while the sales go on
            await asyncio.sleep(0.05)
            watchers.append(Watcher(stubs, event_id))
        await selling
    async with connections(running, 1) as (conn,):
        last = await conn.fetchval("SELECT outbox_sequence('seats', $1)", uuid.UUID(event_id))
    for w in watchers:
        await w.until(lambda w: delivered(w) >= last)
    final = {s.id: s.status for s in await stubs.all_seats(event_id)}
    for w in watchers:
        snapshot = [c for c in w.items if c.snapshot]
        at = snapshot[0].sequence
        assert {c.sequence for c in snapshot} == {at} and len(snapshot) == len(ids)
        # The changes continue exactly after the snapshot's sequence ...
        assert [c.sequence for c in w.changes] == list(range(at + 1, last + 1))
        # ... and the snapshot already holds every change up to it, none after: each
        # change after it turns an AVAILABLE seat SOLD (a seat is sold once).
        state = {c.seat_id: c.status for c in snapshot}
        for c in w.changes:
            assert state[c.seat_id] != SOLD, (at, c.sequence, c.seat_id)
            state[c.seat_id] = c.status
        assert state == final


async def test_sequencing_an_unknown_stream_kind_fails_and_an_unknown_key_is_empty(
    running: RunningServer,
) -> None:
    async with connections(running, 1) as (conn,):
        with pytest.raises(asyncpg.PostgresError):
            await conn.fetchval("SELECT outbox_sequence('nope', $1)", uuid.uuid4())
        assert await conn.fetchval("SELECT outbox_sequence('seats', $1)", uuid.uuid4()) == 0
