"""`ticketctl orders watch` and `ticketctl gates watch` (issue 15) against a real server: a
partner sees only its own sales and, across a restart of its server, each exactly once; the
gates' counts, piped and on a terminal, equal GetGateStats after some scans; Ctrl-C stops
cleanly with where it stopped. The SDK's `watch_orders` / `watch_gate` share `watch_seats`'s
resume loop (tests/test_cli_watch.py covers that loop's breaks in depth)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import sys
import uuid
from pathlib import Path

from tests.conftest import RunningServer
from tests.support import Account, Stubs, best_request, scan_request, small_layout
from tests.test_cli import REPO, _env
from tests.test_cli_watch import READ_TIMEOUT_S, Piped, server_on
from tests.test_gate import sold_tickets
from ticketing import connect
from ticketing.cli.gate_cmds import GateBoard
from ticketing.stubs import api_key
from ticketing.v1 import booking_pb2, gate_pb2

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def partner_sale(event_id: str, section_id: str) -> booking_pb2.BookSeatsRequest:
    request = best_request(event_id, section_id, 1)
    request.on_behalf_of.CopyFrom(
        booking_pb2.EndCustomer(external_customer_id=uuid.uuid4().hex, display_name="Ann")
    )
    return request


async def ticketctl(env: dict[str, str], *args: str) -> Piped:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing.cli.main", *args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    return Piped(proc)


async def interrupt(watch: Piped) -> str:
    """Ctrl-C, then its stderr once it exited."""
    watch.proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(watch.proc.communicate(), READ_TIMEOUT_S)
    return err.decode()


async def test_orders_watch_as_a_partner_sees_its_own_sales_once_across_a_restart(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=2, ga=50))
    event = await stubs.create_event(admin, venue, max_per_order=4)
    section = venue.sections[-1].id
    partner, secret = await stubs.create_partner(admin, "CLI Watcher")
    _, rival_secret = await stubs.create_partner(admin, "CLI Rival")
    mine, rivals = api_key(secret), api_key(rival_secret)
    customer = await stubs.register("cli-orders")

    async def sell(md: tuple[tuple[str, str], ...]) -> booking_pb2.Order:
        reply = await stubs.booking.BookSeats(partner_sale(event.id, section), metadata=md)
        return reply.order

    first = server_on(running, "127.0.0.1:0")
    port = await first.__aenter__()
    env = _env(f"127.0.0.1:{port}", tmp_path / "config", TICKETING_API_KEY=secret)
    watch = await ticketctl(env, "orders", "watch")  # --after 0: from the stream's start
    try:
        await watch.line_with("caught up at #")
        sold = [await sell(mine)]
        await sell(rivals)
        await stubs.booking.BookSeats(best_request(event.id, section, 1), metadata=customer.md)
        await watch.line_with(sold[0].id)
        # Its server shuts down (UNAVAILABLE SERVER_SHUTTING_DOWN); sales go on through
        # another while it is away; a new server takes its port.
        await first.__aexit__(None, None, None)
        sold.append(await sell(mine))
        await sell(rivals)
        async with server_on(running, f"127.0.0.1:{port}"):
            sold.append(await sell(mine))
            await watch.line_with(sold[2].id)
            await asyncio.sleep(0.5)  # nothing more may arrive
            err = await interrupt(watch)
    finally:
        if watch.proc.returncode is None:
            watch.proc.kill()
            await watch.proc.wait()
    changes = [line.split(" ") for line in watch.lines if line.startswith("#")]
    assert [(c[1], c[3], c[-2], c[-1]) for c in changes] == [
        ("CONFIRMED", order.id, "PARTNER", partner.id) for order in sold
    ], watch.lines
    sequences = [int(c[0][1:]) for c in changes]
    assert sequences == sorted(set(sequences))  # in order, none twice
    assert all(line.split(" ")[5] == event.id for line in watch.lines if line.startswith("#"))
    breaks = [line for line in err.splitlines() if line.startswith("stream ended (")]
    assert breaks and breaks[0].startswith("stream ended (UNAVAILABLE"), err
    stopped = re.search(r"stopped after #(\d+) \(3 changes, (\d+) reconnections\)", err)
    assert stopped and int(stopped.group(2)) == len(breaks), err
    assert f"continue with --after {stopped.group(1)}" in err
    assert int(stopped.group(1)) >= sequences[-1]
    assert watch.proc.returncode == 130 and "Traceback" not in err

    # --after the first sale and --event: the two later sales, nothing before.
    again = await ticketctl(
        _env(running.target, tmp_path / "config", TICKETING_API_KEY=secret),
        *("orders", "watch", "--event", event.id, "--after", str(sequences[0])),
    )
    try:
        await again.line_with("caught up at #")
        err = await interrupt(again)
    finally:
        if again.proc.returncode is None:
            again.proc.kill()
            await again.proc.wait()
    assert [line.split(" ")[3] for line in again.lines if line.startswith("#")] == [
        o.id for o in sold[1:]
    ]
    assert again.proc.returncode == 130 and "Traceback" not in err


async def test_orders_watch_refuses_what_would_fail_again(
    running: RunningServer, tmp_path: Path
) -> None:
    # No key, no session: a clear one-line error, not a stream retried for 30 s.
    env = _env(running.target, tmp_path / "config")
    watch = await ticketctl(env, "orders", "watch")
    _, err = await asyncio.wait_for(watch.proc.communicate(), READ_TIMEOUT_S)
    assert watch.proc.returncode == 1 and "not signed in" in err.decode()
    watch = await ticketctl(env | {"TICKETING_API_KEY": "tk_nope"}, "orders", "watch")
    _, err = await asyncio.wait_for(watch.proc.communicate(), READ_TIMEOUT_S)
    assert watch.proc.returncode == 1 and "UNAUTHENTICATED" in err.decode(), err.decode()


async def test_gates_watch_piped_counts_equal_get_gate_stats(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    event, tickets, _ = await sold_tickets(stubs, admin, 4)

    async def scan(code: str, gate: str) -> None:
        await stubs.gate.ValidateTicket(scan_request(code, event.id, gate), metadata=admin.md)

    await scan(tickets[0].code, "north")
    env = _env(running.target, tmp_path / "config", TICKETING_TOKEN=admin.token)
    watch = await ticketctl(env, "gates", "watch", event.id)
    try:
        assert await watch.line_with("caught up at #") == "caught up at #1"
        await scan(tickets[0].code, "south")  # already used: a rejection
        await scan(tickets[1].code, "south")
        await scan(tickets[2].code, "north")
        await scan("no-such-code-" + uuid.uuid4().hex, "north")
        await watch.line_with("#5 ")
        await asyncio.sleep(0.3)  # nothing more may arrive
        err = await interrupt(watch)
    finally:
        if watch.proc.returncode is None:
            watch.proc.kill()
            await watch.proc.wait()
    assert watch.lines[0] == "gate north at #1: admitted 1 rejected 0 inside 1"
    scans = [line for line in watch.lines if line.startswith("#")]
    assert scans == [
        "#2 ALREADY_USED gate south: admitted 0 rejected 1 inside 0",
        "#3 ADMITTED gate south: admitted 1 rejected 1 inside 1",
        "#4 ADMITTED gate north: admitted 2 rejected 0 inside 2",
        "#5 UNKNOWN_CODE gate north: admitted 2 rejected 1 inside 2",
    ]
    # The last line per gate is GetGateStats's count.
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=admin.md
    )
    last = {line.split(" ")[3].rstrip(":"): line for line in scans}
    assert {g: last[g].split(": ")[1] for g in last} == {
        g.gate_id: f"admitted {g.admitted} rejected {g.rejected} inside {g.admitted}"
        for g in stats.gates
    }
    assert watch.proc.returncode == 130
    assert "stopped after #5 (4 scans, 0 reconnections)" in err and "Traceback" not in err


async def test_gates_watch_on_a_terminal_redraws_the_table(
    stubs: Stubs, admin: Account, running: RunningServer, tmp_path: Path
) -> None:
    event, tickets, _ = await sold_tickets(stubs, admin, 3)
    master, slave = pty.openpty()
    env = _env(running.target, tmp_path / "config", TERM="xterm", TICKETING_TOKEN=admin.token)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "ticketing.cli.main", "gates", "watch", event.id),
        stdout=slave,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    os.close(slave)
    os.set_blocking(master, False)
    screen = bytearray()

    async def until(pattern: str) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            # Styles (the bold totals row) are escape sequences between the cells.
            while not re.search(pattern, ANSI.sub("", screen.decode(errors="replace"))):
                with contextlib.suppress(BlockingIOError):
                    screen.extend(os.read(master, 65_536))
                await asyncio.sleep(0.05)

    try:
        await until("live · #0 · 0 scans")
        for ticket, gate in zip(tickets, ("east", "east", "west"), strict=True):
            await stubs.gate.ValidateTicket(
                scan_request(ticket.code, event.id, gate), metadata=admin.md
            )
        await until("live · #3 · 3 scans")
        # The table's rows: gate, admitted, rejected, offline, conflicts, inside.
        await until(r"east\s*│\s*2\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*2")
        await until(r"west\s*│\s*1\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*1")
        await until(r"all\s*│\s*3\s*│\s*0\s*│\s*0\s*│\s*0\s*│\s*3")
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), READ_TIMEOUT_S)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)
    assert proc.returncode == 130
    assert "stopped after #3 (3 scans, 0 reconnections)" in err.decode()
    assert "Traceback" not in err.decode()


async def test_sdk_watch_gate_board_matches_get_gate_stats(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # Through `Client.watch_gate` on a plaintext channel: the stream interceptor carries
    # the token (WatchGate is not public), and the board the CLI draws equals GetGateStats.
    event, tickets, _ = await sold_tickets(stubs, admin, 3)
    await stubs.gate.ValidateTicket(scan_request(tickets[0].code, event.id, "a"), metadata=admin.md)
    client = connect(running.target, admin.token)
    board = GateBoard()
    try:
        changes = client.watch_gate(event.id)
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for change in changes:
                board.apply(change)
                if change.caught_up:
                    break
            for ticket, gate in ((tickets[1], "b"), (tickets[0], "b"), (tickets[2], "a")):
                await stubs.gate.ValidateTicket(
                    scan_request(ticket.code, event.id, gate), metadata=admin.md
                )
            async for change in changes:
                board.apply(change)
                if board.scans == 3:
                    break
        await changes.aclose()  # type: ignore[attr-defined]
    finally:
        await client.close()
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=admin.md
    )
    assert {g: c.stats for g, c in board.gates.items()} == {g.gate_id: g for g in stats.gates}
    assert {g: c.inside for g, c in board.gates.items()} == {"a": 2, "b": 1}
    assert board.sequence == 4


async def test_sdk_watch_gate_resumes_after_a_restart_with_counts_continuing(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    # The snapshot, two scans, the server away while two more commit, one more on the new
    # server: every scan once, in order, and the counts (continued by the new server from
    # the stream at the resume point) still GetGateStats's.
    event, tickets, _ = await sold_tickets(stubs, admin, 5)

    async def scan(index: int, gate: str) -> None:
        await stubs.gate.ValidateTicket(
            scan_request(tickets[index].code, event.id, gate), metadata=admin.md
        )

    await scan(0, "a")
    breaks: list[tuple[str, int]] = []
    seen: list[gate_pb2.GateChange] = []
    board = GateBoard()
    grew = asyncio.Event()
    first = server_on(running, "127.0.0.1:0")
    port = await first.__aenter__()
    client = connect(f"127.0.0.1:{port}", admin.token)

    async def follow() -> None:
        async for change in client.watch_gate(
            event.id, on_resume=lambda e, after: breaks.append((e.reason, after))
        ):
            seen.append(change)
            board.apply(change)
            grew.set()

    async def until(scans: int) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            while board.scans < scans or not any(c.caught_up for c in seen):
                grew.clear()
                waiter = asyncio.ensure_future(grew.wait())
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if reader.done():
                    reader.result()  # the watch failed: show why

    reader = asyncio.create_task(follow())
    try:
        await until(0)
        await scan(1, "a")
        await scan(2, "b")
        await until(2)
        await first.__aexit__(None, None, None)
        await scan(3, "b")
        await scan(1, "b")  # already used
        async with server_on(running, f"127.0.0.1:{port}"):
            await scan(4, "a")
            await until(5)
            await asyncio.sleep(0.3)  # nothing more may arrive
            before_stop = list(breaks)  # this server's own shutdown at the end is one more
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await client.close()
    scans = [c for c in seen if not c.snapshot and not c.caught_up]
    assert [(c.sequence, c.gate_id, c.result) for c in scans] == [
        (2, "a", gate_pb2.VALIDATION_RESULT_ADMITTED),
        (3, "b", gate_pb2.VALIDATION_RESULT_ADMITTED),
        (4, "b", gate_pb2.VALIDATION_RESULT_ADMITTED),
        (5, "b", gate_pb2.VALIDATION_RESULT_ALREADY_USED),
        (6, "a", gate_pb2.VALIDATION_RESULT_ADMITTED),
    ]
    assert [c.gate_id for c in seen if c.snapshot] == ["a"]
    assert before_stop and before_stop[0] == ("SERVER_SHUTTING_DOWN", 3)
    assert all(after == 3 for _, after in before_stop), before_stop
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=admin.md
    )
    assert {g: c.stats for g, c in board.gates.items()} == {g.gate_id: g for g in stats.gates}
    assert {g: c.inside for g, c in board.gates.items()} == {"a": 3, "b": 2}
