"""The shared tail of a stream (ticketd.db.outbox `Sequencer.follow` with a `Tail`): many
watchers of one event are served by one reader of its new changes, and still each gets every
change after its own starting point exactly once, in order, whether it opened before the
rush, joined in the middle of it, or fell too far behind and read for itself."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import Callable

import pytest
from grpc import aio

from tests.conftest import RunningServer
from tests.support import Account, Stubs, client_pool
from tests.test_streams import Watcher, book, last_sequence, new_event
from ticketd.db import outbox
from ticketing.v1 import event_pb2


async def rush(
    running: RunningServer, stubs: Stubs, event_id: str, ids: list[int], sales: int, tag: str
) -> list[int]:
    """`sales` concurrent BookSeats of 1-3 random seats from 8 channels; the seats sold."""
    buyers = list(await asyncio.gather(*(stubs.register(tag) for _ in range(8))))
    rng = random.Random(sales)
    async with client_pool(running.target, 8) as pool:
        results = await asyncio.gather(
            *(
                pool[i % 8].booking.BookSeats(
                    book(event_id, rng.sample(ids, rng.randint(1, 3))),
                    metadata=buyers[i % 8].md,
                    timeout=30,
                )
                for i in range(sales)
            ),
            return_exceptions=True,
        )
    return [t.seat_id for r in results if not isinstance(r, BaseException) for t in r.order.tickets]


def caught_up_to(last: int, after: int) -> Callable[[Watcher], bool]:
    """Whether a watcher opened at `after` (0: with a snapshot) has everything up to `last`."""

    def done(w: Watcher) -> bool:
        opened = bool(after) or any(c.snapshot_complete for c in w.items)
        return opened and (w.items[-1].sequence if w.items else after) >= last

    return done


def followers(running: RunningServer, event_id: str) -> int:
    return running.components.db.outbox.shared_followers(outbox.SEATS, uuid.UUID(event_id))


async def test_fifty_watchers_of_one_event_each_get_every_change_once_in_order(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin, rows=10, seats=30)
    buyer = await stubs.register("tail-first")
    await stubs.booking.BookSeats(book(event_id, ids[:2]), metadata=buyer.md)
    start = await last_sequence(running, event_id)
    # Half from the snapshot, half from the change before the last (so each has one at
    # once): both read their backlog themselves, then share the tail.
    watchers = [Watcher(stubs, event_id, after=0 if i % 2 else start - 1) for i in range(50)]
    try:
        for w in watchers:
            await w.until(lambda w: any(c.snapshot_complete or not c.snapshot for c in w.items))
        async with asyncio.timeout(10):
            while followers(running, event_id) < 50:  # noqa: ASYNC110 - a server-side count
                await asyncio.sleep(0.02)
        sold = await rush(running, stubs, event_id, ids[2:], 150, "tail-rush")
        last = await last_sequence(running, event_id)
        assert last == start + len(sold) and len(sold) > 50
        for w in watchers:
            await w.until(lambda w: bool(w.changes) and w.changes[-1].sequence >= last)
        # One reader served them all (every one of them is on the event's tail).
        assert followers(running, event_id) == 50
        for i, w in enumerate(watchers):
            first = start + 1 if i % 2 else start  # after the snapshot at start, or from start
            assert [c.sequence for c in w.changes] == list(range(first, last + 1)), i
        expected = [(c.sequence, c.seat_id, c.status) for c in watchers[1].changes]
        for w in watchers[1::2]:
            assert [(c.sequence, c.seat_id, c.status) for c in w.changes] == expected
        assert sorted(c.seat_id for c in watchers[1].changes) == sorted(sold)
    finally:
        for w in watchers:
            await w.stop()
    # The last follower gone, the tail is gone too.
    async with asyncio.timeout(5):
        while followers(running, event_id):  # noqa: ASYNC110 - a server-side count
            await asyncio.sleep(0.05)


async def test_a_watcher_joining_in_the_middle_of_a_rush_gets_exactly_what_follows_its_start(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin, rows=10, seats=30)
    early = Watcher(stubs, event_id)
    joiners: list[tuple[int, Watcher]] = []
    try:
        await early.until(lambda w: any(c.snapshot_complete for c in w.items))
        # A first part of the rush, delivered, so the tail is running and there is a
        # point a few changes back to join from.
        before = await rush(running, stubs, event_id, ids, 60, "tail-mid")
        await early.until(lambda w: len(w.changes) >= len(before))
        sales = asyncio.ensure_future(rush(running, stubs, event_id, ids, 200, "tail-mid2"))
        # While the rest runs: join from a fresh snapshot, and from a few changes behind
        # where the early watcher is (a backlog, then the tail).
        while len(joiners) < 8:
            at = early.changes[-1].sequence
            joiners.append((at - 3, Watcher(stubs, event_id, after=at - 3)))
            joiners.append((0, Watcher(stubs, event_id, after=0)))
            await asyncio.sleep(0.03)
        sold = before + await sales
        last = await last_sequence(running, event_id)
        assert last == len(sold)
        await early.until(lambda w: bool(w.changes) and w.changes[-1].sequence >= last)
        assert [c.sequence for c in early.changes] == list(range(1, last + 1))
        truth = {c.sequence: (c.seat_id, c.status) for c in early.changes}
        for after, w in joiners:
            await w.until(caught_up_to(last, after))
        for after, w in joiners:
            snapshot = [c for c in w.items if c.snapshot]
            begin = snapshot[-1].sequence if snapshot else after
            got = [(c.sequence, (c.seat_id, c.status)) for c in w.changes]
            assert got == [(n, truth[n]) for n in range(begin + 1, last + 1)], (after, begin)
            if not after:  # snapshot plus changes is the map at the end
                state = {c.seat_id: c.status for c in w.items}
                assert state == {c.seat_id: c.status for c in early.items}
    finally:
        for w in [early, *(w for _, w in joiners)]:
            await w.stop()


async def test_a_watcher_too_far_behind_leaves_the_tail_and_still_gets_everything_in_order(
    stubs: Stubs, admin: Account, running: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A small bound, so a reader that stops taking changes falls past it quickly.
    monkeypatch.setattr(outbox, "FOLLOWER_BOUND", 50)
    event_id, ids = await new_event(stubs, admin, rows=20, seats=30)
    fast = Watcher(stubs, event_id)
    # A tiny HTTP/2 window, read by no one for now: its stream's writes block, its pages
    # pile up on the tail until it is dropped from it.
    channel = aio.insecure_channel(
        running.target,
        options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)],
    )
    slow_call = Stubs(channel).events.WatchSeats(event_pb2.WatchSeatsRequest(event_id=event_id))
    try:
        await fast.until(lambda w: any(c.snapshot_complete for c in w.items))
        buyer = await stubs.register("tail-slow-first")
        await stubs.booking.BookSeats(book(event_id, ids[:1]), metadata=buyer.md)
        # It reads its snapshot and the first change, so it is on the tail, then stops.
        items: list[event_pb2.SeatChange] = []
        async with asyncio.timeout(20):
            while not items or items[-1].snapshot:
                item = await slow_call.read()
                assert isinstance(item, event_pb2.SeatChange)
                items.append(item)
        async with asyncio.timeout(10):
            while followers(running, event_id) < 2:  # noqa: ASYNC110 - a server-side count
                await asyncio.sleep(0.02)
        sold = await rush(running, stubs, event_id, ids[1:], 250, "tail-slow")
        last = await last_sequence(running, event_id)
        assert last == len(sold) + 1 and last > 100
        await fast.until(lambda w: bool(w.changes) and w.changes[-1].sequence >= last)
        # The slow one is off the tail (it fell behind by more than the bound); the fast
        # one, all read, is on it (again, if it too fell behind for a moment).
        async with asyncio.timeout(10):
            while followers(running, event_id) != 1:  # noqa: ASYNC110 - a server-side count
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        assert followers(running, event_id) == 1
        async with asyncio.timeout(20):
            while not items[-1].sequence >= last or items[-1].snapshot:
                item = await slow_call.read()
                assert isinstance(item, event_pb2.SeatChange)
                items.append(item)
        changes = [c for c in items if not c.snapshot]
        assert [(c.sequence, c.seat_id) for c in changes] == [
            (c.sequence, c.seat_id) for c in fast.changes
        ]
        assert [c.sequence for c in changes] == list(range(1, last + 1))
    finally:
        slow_call.cancel()
        await channel.close(None)
        await fast.stop()
