"""`ticketing-rush --observe` (issue 15): a watcher follows WatchSeats through the rush and the
audit checks the stream (dense sequences, final map equal to ListSeats); it fails loudly
when the seat map changes behind the stream, and a server without seat streams is refused at
set-up. The ledger's gap and repeat bookkeeping is tested alone."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import ADMIN_EMAIL, RunningServer, second_server
from tests.support import Account, Stubs, book_request, small_layout
from tests.test_cli_watch import server_on
from tests.test_rush import INVARIANTS, check_names, rush, rush_args
from ticketd.db.database import PoolOptions
from ticketing.rush.main import EXIT_OK, EXIT_RUN_FAILED, async_main
from ticketing.rush.observer import SeatObserver, StreamLedger
from ticketing.rush.provision import Account as RushAccount
from ticketing.v1 import booking_pb2, event_pb2

STREAM_CHECKS = ["seat_stream_dense", "seat_stream_matches_seat_map"]
SOLD, AVAILABLE, HELD = (
    event_pb2.SEAT_STATUS_SOLD,
    event_pb2.SEAT_STATUS_AVAILABLE,
    event_pb2.SEAT_STATUS_HELD,
)


@pytest.mark.parametrize("scenario", ["mixed", "sale", "checkout"])
async def test_an_observed_rush_sees_every_change_once_and_ends_equal_to_list_seats(
    running: RunningServer, tmp_path: Path, scenario: str
) -> None:
    code, report = await rush(
        running,
        tmp_path,
        scenario,
        *("--seats", "60", "--buyers", "8", "--concurrency", "8", "--requests", "80"),
        *("--seed", "15", "--mix", "book=0.6,refund=0.3,scan=0.1", "--gates", "2"),
        *("--duration", "20", "--hold-ttl", "1", "--think", "0-0.1", "--observe"),
    )
    assert code == EXIT_OK, report["audit"]
    assert list(check_names(report)) == INVARIANTS + STREAM_CHECKS
    seen = report["observer"]
    assert seen["gaps"] == 0 and seen["repeats"] == 0 and seen["mismatches"] == 0
    assert seen["streamSequence"] == seen["finalSequence"] > seen["snapshotSequence"]
    # Dense: every number after the snapshot's arrived once.
    assert seen["changes"] == seen["finalSequence"] - seen["snapshotSequence"]
    assert seen["changes"] >= report["tickets"] > 0
    assert seen["deliveryLag"]["p99Ms"] >= seen["deliveryLag"]["p50Ms"] > 0
    if scenario == "sale":
        # A refund gives its seats back: more changes than places sold at the end.
        assert seen["changes"] > report["sold"]


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_200_buyer_rush_is_seen_whole_by_the_observer(
    running: RunningServer, tmp_path: Path
) -> None:
    """Issue 15's test through the harness: 200 buyers at once; the watcher sees every sale
    exactly once, in sequence order, and its final map equals ListSeats."""
    code, report = await rush(
        running,
        tmp_path,
        "specific",
        *("--seats", "400", "--buyers", "200", "--concurrency", "200", "--requests", "600"),
        *("--seed", "200", "--duration", "60", "--connections", "8", "--observe"),
    )
    assert code == EXIT_OK, report["audit"]
    seen = report["observer"]
    assert (seen["gaps"], seen["repeats"], seen["mismatches"]) == (0, 0, 0)
    # No refunds or holds here: one change per place sold, each exactly once.
    assert seen["changes"] == report["tickets"] == report["sold"] > 0
    assert seen["streamSequence"] == seen["finalSequence"]


async def new_event(stubs: Stubs, admin: Account) -> tuple[str, list[int]]:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=10)
    return event.id, [s.id for s in await stubs.all_seats(event.id)]


async def test_a_seat_changed_behind_the_stream_fails_the_map_check(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("observed")
    observer = SeatObserver(stubs, event_id)
    await observer.start()
    try:
        await stubs.booking.BookSeats(
            booking_pb2.BookSeatsRequest(
                event_id=event_id,
                request_id=str(uuid.uuid4()),
                seat_ids=booking_pb2.SeatIds(ids=ids[:2]),
            ),
            metadata=buyer.md,
        )
        # Sold in the table without a recorded change: what a writer that forgot
        # record_seat_changes would do. The stream cannot know; the comparison must.
        async with running.engine.begin() as conn:
            await conn.execute(
                text("UPDATE seats SET status = 'SOLD' WHERE id = :s"), {"s": ids[9]}
            )
        report, checks = await observer.finish(RushAccount(ADMIN_EMAIL, admin.user.id, admin.token))
    finally:
        await observer.stop()
    verdict = {c.name: c for c in checks}
    assert verdict["seat_stream_dense"].passed
    assert not verdict["seat_stream_matches_seat_map"].passed
    assert verdict["seat_stream_matches_seat_map"].examples == [
        f"seat {ids[9]}: stream AVAILABLE, ListSeats SOLD"
    ]
    assert (report["changes"], report["mismatches"], report["finalSequence"]) == (2, 1, 2)


async def test_the_observer_resumes_across_a_restart_with_nothing_lost(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event_id, ids = await new_event(stubs, admin)
    buyer = await stubs.register("restart-observed")
    first = server_on(running, "127.0.0.1:0")
    port = await first.__aenter__()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    observer = SeatObserver(Stubs(channel), event_id)
    try:
        await observer.start()
        for i in range(3):
            await stubs.booking.BookSeats(book_request(event_id, [ids[i]]), metadata=buyer.md)
        # Once those three arrived the observer's resume point is theirs: a new event's
        # snapshot is consistent with sequence 0, and resuming from 0 is a new snapshot,
        # not the changes this test counts.
        await observer.until_changes(3)
        await first.__aexit__(None, None, None)  # the observer's server goes away mid-sale
        for i in range(3, 6):
            await stubs.booking.BookSeats(book_request(event_id, [ids[i]]), metadata=buyer.md)
        async with server_on(running, f"127.0.0.1:{port}"):
            await stubs.booking.BookSeats(book_request(event_id, [ids[6]]), metadata=buyer.md)
            report, checks = await observer.finish(
                RushAccount(ADMIN_EMAIL, admin.user.id, admin.token)
            )
    finally:
        await observer.stop()
        await channel.close(None)
    assert all(c.passed for c in checks), [c.as_dict() for c in checks]
    assert report["reconnects"] >= 1
    assert (report["changes"], report["gaps"], report["repeats"]) == (7, 0, 0)


async def test_observe_on_a_server_without_seat_streams_is_refused_at_set_up(
    running: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with second_server(
        running, PoolOptions(pool_size=4, seat_streams=False), seat_streams=False
    ) as srv:
        args = rush_args(srv, tmp_path, "specific", "--seats", "10", "--buyers", "2")
        code = await async_main([*args, "--requests", "5", "--observe"])
    assert code == EXIT_RUN_FAILED
    assert "SEAT_STREAMS_OFF" in capsys.readouterr().err


def change(sequence: int, seat: int, status: int, **flags: bool) -> event_pb2.SeatChange:
    return event_pb2.SeatChange(sequence=sequence, seat_id=seat, status=status, **flags)  # type: ignore[arg-type]


def test_ledger_counts_gaps_and_repeats_and_takes_a_new_snapshot_whole() -> None:
    ledger = StreamLedger()
    ledger.apply(change(3, 1, AVAILABLE, snapshot=True))
    assert not ledger.snapshot_done and ledger.status == {}
    ledger.apply(change(3, 2, SOLD, snapshot=True, snapshot_complete=True))
    assert ledger.snapshot_done and ledger.status == {1: AVAILABLE, 2: SOLD}
    ledger.apply(change(4, 1, HELD))
    ledger.apply(change(4, 1, SOLD))  # a repeat: ignored, counted
    ledger.apply(change(7, 2, AVAILABLE))  # 5 and 6 never came
    assert (ledger.sequence, ledger.changes, ledger.gaps, ledger.repeats) == (7, 2, 2, 1)
    assert ledger.status == {1: HELD, 2: AVAILABLE}
    assert ledger.examples == ["change #4 after #4 (repeat)", "#4 followed by #7 (gap)"]
    # A fresh snapshot (a stream that broke before its first change) replaces the map once
    # complete; a half-read one changes nothing.
    ledger.apply(change(9, 1, SOLD, snapshot=True))
    assert ledger.status == {1: HELD, 2: AVAILABLE}
    ledger.apply(change(9, 2, SOLD, snapshot=True, snapshot_complete=True))
    assert ledger.status == {1: SOLD, 2: SOLD} and ledger.sequence == 9 and ledger.snapshots == 2
