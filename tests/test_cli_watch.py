"""Following a seat map live (issue 15): the SDK's `watch_seats` (every change once, in order,
across a slow-reader cut and a server restart; errors that would repeat raised at once) and
`ticketctl events seats EVENT --watch` (piped: one line per change; on a terminal: the map
redrawn; Ctrl-C stops cleanly)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pty
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer
from tests.support import Account, Stubs, small_layout
from tests.test_cli import REPO, _env
from ticketd.app import TicketServer, build_components
from ticketd.db.database import Database, PoolOptions
from ticketing import connect
from ticketing.cli.seatmap import (
    ASCII_GLYPHS,
    LiveSeatMap,
    describe_change,
    render_seat_map,
)
from ticketing.errors import TicketingError
from ticketing.v1 import booking_pb2, event_pb2
from ticketing.watch import watch_seats

SOLD, AVAILABLE, HELD = (
    event_pb2.SEAT_STATUS_SOLD,
    event_pb2.SEAT_STATUS_AVAILABLE,
    event_pb2.SEAT_STATUS_HELD,
)
READ_TIMEOUT_S = 30.0


async def new_event(
    stubs: Stubs, admin: Account, rows: int = 4, seats: int = 10, per_order: int = 10
) -> tuple[event_pb2.Event, list[int]]:
    venue = await stubs.create_venue(admin, small_layout(rows=rows, seats=seats, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=per_order)
    return event, [s.id for s in await stubs.all_seats(event.id)]


def book(event_id: str, seats: list[int]) -> booking_pb2.BookSeatsRequest:
    return booking_pb2.BookSeatsRequest(
        event_id=event_id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=seats)
    )


@contextlib.asynccontextmanager
async def server_on(running: RunningServer, listen: str, **overrides: object) -> AsyncIterator[int]:
    """Another in-process server on the test database, bound to `listen` (so a restarted one
    can take the port of the one before), stopped with a 2 s grace at the end."""
    settings = dataclasses.replace(running.components.settings, **overrides)  # type: ignore[arg-type]
    db = Database(running.components.db.url, PoolOptions(pool_size=4))
    server = TicketServer(build_components(settings, db, settings.jwt_secret or ""))
    port = await server.start(listen)
    try:
        yield port
    finally:
        await server.stop(2)
        await db.dispose()


# The SDK ------------------------------------------------------------------------------------


async def test_watch_seats_resumes_after_a_restart_with_exactly_the_missed_changes(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    event, ids = await new_event(stubs, admin)
    buyer = await stubs.register("sdk-watch")
    got: list[event_pb2.SeatChange] = []
    breaks: list[tuple[str, int]] = []
    arrived = asyncio.Event()

    first = server_on(running, "127.0.0.1:0")
    port = await first.__aenter__()
    client = connect(f"127.0.0.1:{port}")

    async def follow() -> None:
        async for change in client.watch_seats(
            event.id, on_resume=lambda e, after: breaks.append((e.reason, after))
        ):
            got.append(change)
            arrived.set()

    async def until(count: int) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while not any(c.snapshot_complete for c in got) or (
                len([c for c in got if not c.snapshot]) < count
            ):
                arrived.clear()
                await arrived.wait()

    reader = asyncio.create_task(follow())
    try:
        await until(0)  # the snapshot first, so that the sales below are changes
        await stubs.booking.BookSeats(book(event.id, ids[:3]), metadata=buyer.md)
        await until(3)
        # Its shutdown ends the stream (UNAVAILABLE SERVER_SHUTTING_DOWN); sales go on
        # elsewhere while it is down; a new server takes its port.
        await first.__aexit__(None, None, None)
        await stubs.booking.BookSeats(book(event.id, ids[3:5]), metadata=buyer.md)
        async with server_on(running, f"127.0.0.1:{port}"):
            await stubs.booking.BookSeats(book(event.id, ids[5:6]), metadata=buyer.md)
            await until(6)
            before_stop = list(breaks)
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await client.close()

    snapshot = [c for c in got if c.snapshot]
    changes = [c for c in got if not c.snapshot]
    assert len(snapshot) == len(ids) and snapshot[-1].snapshot_complete
    assert [(c.sequence, c.seat_id, c.status) for c in changes] == [
        (i + 1, ids[i], SOLD) for i in range(6)
    ]
    assert before_stop and before_stop[0] == ("SERVER_SHUTTING_DOWN", 3)
    assert all(after == 3 for _, after in before_stop)


async def test_watch_seats_resumes_a_reader_the_server_found_too_slow(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # A 64 KiB client window (as in test_streams) and a reader that stops taking changes
    # while 2,600 commit: the server ends the stream STREAM_TOO_SLOW, the SDK reopens it
    # after the last change it received, and the caller sees 1..2600 once each.
    event, ids = await new_event(stubs, admin, rows=26, seats=100, per_order=100)
    buyer = await stubs.register("slow-watch")
    breaks: list[tuple[str, int]] = []
    async with server_on(running, "127.0.0.1:0", stream_send_timeout_seconds=0.5) as port:
        channel = aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 65_536)],
        )
        try:
            changes = watch_seats(
                Stubs(channel).events.WatchSeats,
                event.id,
                on_resume=lambda e, after: breaks.append((e.reason, after)),
            )
            seen: list[event_pb2.SeatChange] = []
            async with asyncio.timeout(READ_TIMEOUT_S):
                async for change in changes:
                    if change.snapshot_complete:
                        break
                for row in range(26):
                    await stubs.booking.BookSeats(
                        book(event.id, ids[row * 100 : (row + 1) * 100]), metadata=buyer.md
                    )
                await asyncio.sleep(2.0)  # not reading: the server gives up on this reader
                async for change in changes:
                    seen.append(change)
                    if change.sequence == len(ids):
                        break
            await changes.aclose()  # type: ignore[attr-defined]
        finally:
            await channel.close(None)
    assert [c.sequence for c in seen] == list(range(1, len(ids) + 1))
    assert sorted(c.seat_id for c in seen) == ids and {c.status for c in seen} == {SOLD}
    assert not any(c.snapshot for c in seen)
    assert breaks and breaks[0][0] == "STREAM_TOO_SLOW" and 0 < breaks[0][1] < len(ids)


async def test_errors_that_would_repeat_are_raised_at_once(stubs: Stubs, admin: Account) -> None:
    event, _ = await new_event(stubs, admin)
    cases = [
        (str(uuid.uuid4()), 0, grpc.StatusCode.NOT_FOUND, "EVENT_NOT_FOUND"),
        (event.id, 10**9, grpc.StatusCode.FAILED_PRECONDITION, "SEQUENCE_AHEAD"),
        (event.id, -1, grpc.StatusCode.INVALID_ARGUMENT, None),
    ]
    resumed: list[int] = []
    for event_id, after, code, reason in cases:
        start = time.monotonic()
        with pytest.raises(TicketingError) as err:
            async with asyncio.timeout(10):
                async for _ in watch_seats(
                    stubs.events.WatchSeats,
                    event_id,
                    after,
                    on_resume=lambda e, a: resumed.append(a),
                ):
                    pass
        assert err.value.code == code, err.value
        if reason is not None:
            assert err.value.reason == reason
        assert resumed == [] and time.monotonic() - start < 5


async def test_a_server_that_stays_away_is_given_up_on(unused_tcp_port: int) -> None:
    resumed: list[int] = []
    channel = aio.insecure_channel(f"127.0.0.1:{unused_tcp_port}")
    try:
        with pytest.raises(TicketingError) as err:
            async with asyncio.timeout(20):
                async for _ in watch_seats(
                    Stubs(channel).events.WatchSeats,
                    str(uuid.uuid4()),
                    5,
                    give_up_after=1.0,
                    on_resume=lambda e, a: resumed.append(a),
                ):
                    pass
    finally:
        await channel.close(None)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert len(resumed) >= 2 and set(resumed) == {5}


# The live map (pure) ------------------------------------------------------------------------


def test_live_map_applies_snapshot_and_changes() -> None:
    section = event_pb2.EventSection(section_id="s", name="Stalls", capacity=3)
    seats = [
        event_pb2.Seat(id=i, section_id="s", row_label="A", number=i, label=f"A{i}")
        for i in (1, 2, 3)
    ]
    live = LiveSeatMap(seats)
    for seat_id in (1, 2, 3):
        live.apply(
            event_pb2.SeatChange(
                sequence=4,
                seat_id=seat_id,
                status=SOLD if seat_id == 1 else AVAILABLE,
                snapshot=True,
                snapshot_complete=seat_id == 3,
            )
        )
    assert (live.sequence, live.changes) == (4, 0)
    change = event_pb2.SeatChange(sequence=5, seat_id=2, status=HELD)
    seat = live.apply(change)
    assert describe_change(change, seat) == "#5 HELD seat 2 A2"
    assert live.apply(event_pb2.SeatChange(sequence=6, seat_id=99, status=SOLD)) is None
    assert (live.sequence, live.changes) == (6, 2)
    t = live.totals()
    assert (t.available, t.held, t.sold, t.capacity) == (1, 1, 1, 3)
    from rich.console import Console

    with open(os.devnull, "w") as sink:
        out = Console(width=80, record=True, no_color=True, file=sink)
        out.print(render_seat_map([section], live.seats, currency_code="EUR", glyphs=ASCII_GLYPHS))
    text = out.export_text()
    assert "A xho 1/3" in text
    assert "available 1  held 1  sold 1  capacity 3" in text
    assert "legend: o available  h held  x sold" in text


# ticketctl ----------------------------------------------------------------------------------


class Piped:
    """`ticketctl events seats EVENT --watch` in a subprocess, stdout a pipe (not a tty)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line_with(self, text: str) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(READ_TIMEOUT_S):
            while True:
                raw = await self.proc.stdout.readline()
                assert raw, f"ticketctl ended; so far: {self.lines}"
                line = raw.decode().rstrip("\n")
                self.lines.append(line)
                if text in line:
                    return line


async def test_piped_watch_prints_each_change_and_stops_cleanly_on_ctrl_c(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    event, ids = await new_event(stubs, admin)
    buyer = await stubs.register("cli-watch")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing.cli.main", "events", "seats", event.id, "--watch"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(running.target, tmp_path / "config"),
        cwd=REPO,
    )
    watch = Piped(proc)
    try:
        assert await watch.line_with("snapshot at") == (
            f"snapshot at #0: {len(ids)} available, 0 held, 0 sold"
        )
        await stubs.booking.BookSeats(book(event.id, ids[:2]), metadata=buyer.md)
        hold = await stubs.booking.HoldSeats(
            booking_pb2.HoldSeatsRequest(
                event_id=event.id,
                request_id=str(uuid.uuid4()),
                seat_ids=booking_pb2.SeatIds(ids=[ids[7]]),
            ),
            metadata=buyer.md,
        )
        await stubs.booking.ReleaseHold(
            booking_pb2.ReleaseHoldRequest(hold_id=hold.hold.id), metadata=buyer.md
        )
        await watch.line_with("#4 ")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    changes = [line.split(" ")[:4] for line in watch.lines if line.startswith("#")]
    assert changes == [
        ["#1", "SOLD", "seat", str(ids[0])],
        ["#2", "SOLD", "seat", str(ids[1])],
        ["#3", "HELD", "seat", str(ids[7])],
        ["#4", "AVAILABLE", "seat", str(ids[7])],
    ]
    assert proc.returncode == 130
    assert "stopped after #4 (4 changes, 0 reconnections)" in err.decode()
    assert "Traceback" not in err.decode()


async def test_piped_watch_resumes_after_its_server_restarts(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    event, ids = await new_event(stubs, admin)
    buyer = await stubs.register("cli-restart")
    first = server_on(running, "127.0.0.1:0")
    port = await first.__aenter__()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing.cli.main", "events", "seats", event.id, "--watch"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(f"127.0.0.1:{port}", tmp_path / "config"),
        cwd=REPO,
    )
    watch = Piped(proc)
    try:
        await watch.line_with("snapshot at #0")
        await stubs.booking.BookSeats(book(event.id, ids[:1]), metadata=buyer.md)
        await watch.line_with("#1 ")
        await first.__aexit__(None, None, None)
        await stubs.booking.BookSeats(book(event.id, ids[1:2]), metadata=buyer.md)
        async with server_on(running, f"127.0.0.1:{port}"):
            await watch.line_with("#2 ")
            proc.send_signal(signal.SIGINT)
            _, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    changes = [line.split(" ")[:4] for line in watch.lines if line.startswith("#")]
    assert changes == [["#1", "SOLD", "seat", str(ids[0])], ["#2", "SOLD", "seat", str(ids[1])]]
    text = err.decode()
    # One line per failed attempt while the server was away, all resuming after #1: the
    # first says why (normally SERVER_SHUTTING_DOWN, unless the connection broke first).
    breaks = [line for line in text.splitlines() if line.startswith("stream ended (")]
    assert breaks and all(line.endswith("; resuming after #1") for line in breaks), text
    assert breaks[0].startswith("stream ended (UNAVAILABLE"), text
    assert proc.returncode == 130 and "Traceback" not in text


async def test_watch_on_a_terminal_redraws_the_map(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    event, ids = await new_event(stubs, admin, rows=1, seats=10)
    buyer = await stubs.register("tty-watch")
    master, slave = pty.openpty()
    env = _env(running.target, tmp_path / "config", TERM="xterm")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing.cli.main", "events", "seats", event.id, "--watch"),
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    os.set_blocking(master, False)
    screen = bytearray()

    async def until(text: str) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while text.encode() not in screen:
                with contextlib.suppress(BlockingIOError):
                    screen.extend(os.read(master, 65_536))
                await asyncio.sleep(0.05)

    try:
        await until("available 10  sold 0  capacity 10")
        await stubs.booking.BookSeats(book(event.id, ids[:3]), metadata=buyer.md)
        await until("available 7  sold 3  capacity 10")
        await until("live · #3 · 3 changes")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert proc.returncode == 130
    assert "stopped after #3" in err.decode() and "Traceback" not in err.decode()
