"""ticketing-kiosk end to end: the real program in a subprocess against a real server.

Each run is `python -m ticketing.kiosk.main --plain` started with asyncio (so the in-process
server keeps serving on the test loop), fed codes through stdin, and checked on its output,
its journal, and the server's own scan log. The outage test runs `ticketd` as a separate
process on a fixed port with a fixed JWT secret, so it can be killed, frozen and restarted
under a kiosk that keeps running. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import re
import signal
import stat
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc import aio
from rich.console import Console
from sqlalchemy import text

from scripts.benchlib.process import free_port
from tests.conftest import RunningServer
from tests.procs import ticketd_process
from tests.support import Account, Stubs, best_request, future, scan_request, small_layout
from ticketing.kiosk.journal import Journal
from ticketing.kiosk.render import RichRenderer
from ticketing.kiosk.validation import Kiosk
from ticketing.kiosk.views import Counts, Outcome, ScanResultView, SeatView
from ticketing.pagination import paginate
from ticketing.v1 import booking_pb2, common_pb2, event_pb2, gate_pb2

if TYPE_CHECKING:
    from ticketing.v1 import gate_pb2_grpc

UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
WAIT = 30.0  # upper bound for any one expected line; the happy path takes well under 1 s


def sha(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()[:32]


def kiosk_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TICKETING_", "TICKETCTL_"))}
    # An empty config dir: no `ticketctl login` session of whoever runs the tests leaks in.
    env["TICKETCTL_CONFIG_DIR"] = str(tmp_path / "ticketctl-config")
    return env | extra


class KioskRun:
    """A running kiosk: feed it lines, wait for output lines, stop it."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def feed(self, *lines: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("".join(line + "\n" for line in lines).encode())
        await self.proc.stdin.drain()

    async def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """Read output until a line matches; fail with everything seen so far otherwise."""
        assert self.proc.stdout is not None
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                raw = await asyncio.wait_for(self.proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s; output so far:\n"
                    + "\n".join(self.lines)
                ) from None
            if not raw:
                raise AssertionError(
                    f"kiosk ended before {pattern!r}; output:\n" + "\n".join(self.lines)
                )
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            match = regex.search(line)
            if match:
                return match

    async def finish(self, timeout: float = WAIT) -> tuple[int, str]:
        """Close stdin (end of input), wait for exit; returns (exit code, stderr)."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.is_closing():
            self.proc.stdin.close()
        return await self.wait(timeout)

    async def wait(self, timeout: float = WAIT) -> tuple[int, str]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        try:
            out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError("kiosk did not exit:\n" + "\n".join(self.lines)) from None
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@contextlib.asynccontextmanager
async def kiosk(
    tmp_path: Path, target: str, event_id: str, *args: str, env: dict[str, str]
) -> AsyncIterator[KioskRun]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing.kiosk.main",
        "--plain",
        "--target",
        target,
        "--event",
        event_id,
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=str(tmp_path),
    )
    run = KioskRun(proc)
    try:
        yield run
    finally:
        run.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 10)


async def run_kiosk(
    tmp_path: Path, target: str, event_id: str, lines: list[str], *args: str, env: dict[str, str]
) -> tuple[int, list[str], str]:
    """Pipe `lines` into a kiosk and wait for it to finish at end of input."""
    async with kiosk(tmp_path, target, event_id, *args, env=env) as run:
        await run.feed(*lines)
        code, err = await run.finish()
        return code, run.lines, err


def read_journal(path: Path, torn: int = 0) -> list[dict[str, Any]]:
    """The journal's entries; exactly `torn` lines may be unparseable (crash debris)."""
    entries, bad = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except ValueError:
            bad += 1
    assert bad == torn
    return entries


async def all_scans(stubs: Stubs, who: Account, event_id: str) -> dict[str, gate_pb2.Scan]:
    request = gate_pb2.ListScansRequest(event_id=event_id)
    pages = paginate(stubs.gate.ListScans, request, lambda p: p.scans, metadata=who.md)
    return {s.scan_id: s async for s in pages}


@pytest.fixture(scope="module")
async def gatekeeper(stubs: Stubs, admin: Account) -> Account:
    return await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="kiosk")


@dataclass
class Sale:
    event: event_pb2.Event
    seated: list[booking_pb2.Ticket]
    standing: list[booking_pb2.Ticket]
    buyer: Account
    standing_order_id: str


async def sell(
    stubs: Stubs, admin: Account, reserved: int = 2, ga: int = 3, *staff: Account
) -> Sale:
    """An event with a reserved section (one row "A") and a standing section, sold out; its
    gates open now and `staff` assigned to them."""
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=reserved, ga=ga))
    event = await stubs.create_event(admin, venue, max_per_order=100, doors_open_time=future(0))
    await stubs.assign_staff(admin, event.id, *staff)
    buyer = await stubs.register("fan")
    seated = await stubs.booking.BookSeats(
        best_request(event.id, venue.sections[0].id, reserved), metadata=buyer.md
    )
    standing = await stubs.booking.BookSeats(
        best_request(event.id, venue.sections[1].id, ga), metadata=buyer.md
    )
    return Sale(
        event, list(seated.order.tickets), list(standing.order.tickets), buyer, standing.order.id
    )


@pytest.mark.slow
async def test_piped_codes_admit_reject_and_match_the_server_scan_log(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account, gatekeeper: Account
) -> None:
    sale = await sell(stubs, admin, 2, 3, gatekeeper)
    event, seated, standing, buyer = sale.event, sale.seated, sale.standing, sale.buyer
    other = await sell(stubs, admin, reserved=1, ga=1)
    other_standing = other.standing
    # The standing order refunded: its codes must scan VOID.
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=sale.standing_order_id, request_id=str(uuid.uuid4()), reason="ill"
        ),
        metadata=buyer.md,
    )
    journal = tmp_path / "gate.jsonl"
    lines = [
        seated[0].code,  # ADMIT Stalls/A/1
        seated[0].code,  # the same ticket again: ALREADY_USED at this gate
        "",  # a stray Enter
        "garbage-code",  # UNKNOWN_CODE
        "   ",  # whitespace only: also not a scan
        "x" * 500,  # INVALID_ARGUMENT from the server; the loop goes on
        standing[0].code,  # refunded: VOID
        other_standing[0].code,  # a real ticket of another event: WRONG_EVENT
        f"  {seated[1].code} \r",  # scanner noise around a valid code still admits
    ]
    code, out, err = await run_kiosk(
        tmp_path,
        running.target,
        event.id,
        lines,
        "--gate",
        "north-1",
        "--journal",
        str(journal),
        env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token),
    )
    assert code == 0, (out, err)
    results = [line for line in out if line.startswith(("ADMIT", "REJECT", "UNRESOLVED"))]
    # ADMIT <scan_id> <seat> / REJECT <RESULT> <scan_id> <reason>: compare the kind.
    kinds = [r.split()[0] if r.startswith("ADMIT") else " ".join(r.split()[:2]) for r in results]
    assert kinds == [
        "ADMIT",
        "REJECT ALREADY_USED",
        "REJECT UNKNOWN_CODE",
        "REJECT INVALID",
        "REJECT VOID",
        "REJECT WRONG_EVENT",
        "ADMIT",
    ]
    assert re.fullmatch(rf"ADMIT {UUID_RE} Stalls/A/1", results[0])
    assert re.fullmatch(rf"ADMIT {UUID_RE} Stalls/A/2", results[6])
    assert re.search(r"ALREADY USED at north-1 \d\d:\d\d:\d\d \| Stalls/A/1$", results[1])
    assert "VOID (refunded" in results[4] and results[4].endswith("| Standing")
    assert "INVALID CODE (code must be at most 256 characters)" in results[3]
    assert out[-1] == (
        "SUMMARY admitted=2 rejected=5 unresolved=0 empty_lines=2 "
        "ALREADY_USED=1 VOID=1 WRONG_EVENT=1 UNKNOWN_CODE=1 INVALID=1"
    )
    assert not any(line.startswith(("STATUS SERVER UNREACHABLE", "RETRY")) for line in out)

    # The journal: owner-only, a read line then a result line per scan, no empty lines.
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600
    entries = read_journal(journal)
    reads = [e for e in entries if e["type"] == "read"]
    done = {e["scan_id"]: e for e in entries if e["type"] == "result"}
    assert len(reads) == len(done) == 7
    assert [e["type"] for e in entries] == ["read", "result"] * 7
    sent = [line.strip() for line in lines if line.strip()]
    assert [r["code"] for r in reads] == sent
    assert all(r["code_hash"] == sha(r["code"]) for r in reads)
    assert [done[r["scan_id"]]["result"] for r in reads] == [
        "ADMITTED",
        "ALREADY_USED",
        "UNKNOWN_CODE",
        "INVALID",
        "VOID",
        "WRONG_EVENT",
        "ADMITTED",
    ]
    assert [r.split()[1] for r in results if r.startswith("ADMIT")] == [
        r["scan_id"] for r in reads if done[r["scan_id"]]["result"] == "ADMITTED"
    ]
    first = done[reads[0]["scan_id"]]
    assert first["seat"] == {"section": "Stalls", "row": "A", "seat": "1"}
    assert first["repeat"] is False and first["attempts"] == 1 and first["scan_time"]
    assert done[reads[1]["scan_id"]]["first_gate_id"] == "north-1"

    # Every scan the server answered is in its scan log under the same id and code hash;
    # the malformed one never reached it.
    scans = await all_scans(stubs, gatekeeper, event.id)
    answered = [r for r in reads if done[r["scan_id"]]["result"] != "INVALID"]
    assert set(scans) == {r["scan_id"] for r in answered}
    for r in answered:
        s = scans[r["scan_id"]]
        assert s.code_hash == r["code_hash"]
        assert (
            gate_pb2.ValidationResult.Name(s.result).removeprefix("VALIDATION_RESULT_")
            == done[r["scan_id"]]["result"]
        )
        assert s.gate_id == "north-1" and s.entry_manager_id == gatekeeper.user.id
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=gatekeeper.md
    )
    assert (stats.total_admitted, stats.total_rejected) == (2, 4)


async def test_scans_outside_the_window_are_rejected_with_the_reason(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account, gatekeeper: Account
) -> None:
    """Before doors-open and after the end the kiosk rejects, saying why; nothing burns."""
    early = await sell(stubs, admin, 1, 1, gatekeeper)
    await stubs.events.UpdateEvent(
        event_pb2.UpdateEventRequest(
            event=event_pb2.Event(id=early.event.id, doors_open_time=future(29)),
            update_mask=field_mask_pb2.FieldMask(paths=["doors_open_time"]),
        ),
        metadata=admin.md,
    )
    over = await sell(stubs, admin, 1, 1, gatekeeper)
    async with running.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE events SET doors_open_time = NULL, start_time = clock_timestamp() - "
                "interval '5 hours', end_time = clock_timestamp() - interval '1 hour' "
                "WHERE id = :e"
            ),
            {"e": uuid.UUID(over.event.id)},
        )
    env = kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token)
    for sale, kind, reason in (
        (early, "NOT_YET_OPEN", r"DOORS NOT OPEN \(until \d{4}-\d\d-\d\d \d\d:\d\d\)"),
        (over, "EVENT_OVER", "EVENT OVER: the gates are closed"),
    ):
        code, out, err = await run_kiosk(
            tmp_path,
            running.target,
            sale.event.id,
            [sale.seated[0].code],
            "--gate",
            "g",
            "--journal",
            str(tmp_path / f"{kind}.jsonl"),
            env=env,
        )
        assert code == 0, (out, err)
        (line,) = [x for x in out if x.startswith(("ADMIT", "REJECT"))]
        assert re.fullmatch(rf"REJECT {kind} {UUID_RE} {reason}", line), line
        scans = await all_scans(stubs, gatekeeper, sale.event.id)
        assert [gate_pb2.ValidationResult.Name(s.result) for s in scans.values()] == [
            f"VALIDATION_RESULT_{kind}"
        ]
    async with running.engine.connect() as conn:
        burned = (
            await conn.execute(
                text("SELECT count(*) FROM tickets WHERE event_id IN (:a, :b) AND status = 'USED'"),
                {"a": uuid.UUID(early.event.id), "b": uuid.UUID(over.event.id)},
            )
        ).scalar_one()
    assert burned == 0


@pytest.mark.slow
async def test_rich_screen_shows_big_panels_and_a_summary(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account, gatekeeper: Account
) -> None:
    sale = await sell(stubs, admin, 1, 1, gatekeeper)
    event, seated = sale.event, sale.seated
    codes = tmp_path / "codes.txt"
    codes.write_text(f"{seated[0].code}\n{seated[0].code}\nnope\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing.kiosk.main",
        "--target",
        running.target,
        "--event",
        event.id,
        "--gate",
        "east",
        "--input",
        str(codes),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token, COLUMNS="100"),
        cwd=str(tmp_path),
    )
    out, err = await asyncio.wait_for(proc.communicate(), WAIT)
    text = out.decode()
    assert proc.returncode == 0, (text, err.decode())
    block = "\u2588"
    assert text.count(block * 5) >= 3  # block letters: ADMIT and twice REJECT
    assert "Stalls · Row A · Seat 1" in text
    assert re.search(r"ALREADY USED at east \d\d:\d\d:\d\d", text)
    assert "UNKNOWN CODE" in text
    assert "admitted 1   rejected 2 (ALREADY USED 1 · UNKNOWN CODE 1)" in text
    assert "Gate closed" in text and re.search(r"total\s+┃\s+3", text)
    # The default journal goes to the working directory, named after event and gate.
    journal = tmp_path / f"kiosk-journal-{event.id}-east.jsonl"
    assert len(read_journal(journal)) == 6


def test_panel_colours_and_texts() -> None:
    console = Console(record=True, width=100, force_terminal=True, color_system="truecolor")
    renderer = RichRenderer(console)
    admitted = ScanResultView(
        scan_id=str(uuid.uuid4()),
        code_hash="0" * 32,
        outcome=Outcome.ADMITTED,
        reason="ADMIT",
        seat=SeatView("Balcony", "C", "12"),
    )
    rejected = ScanResultView(
        scan_id=str(uuid.uuid4()),
        code_hash="0" * 32,
        outcome=Outcome.VOID,
        reason="VOID (refunded or event cancelled)",
        seat=SeatView("Standing"),
    )
    for view, colour in ((admitted, "green4"), (rejected, "red3")):
        segments = list(console.render(renderer.panel(view)))
        backgrounds = {s.style.bgcolor.name for s in segments if s.style and s.style.bgcolor}
        assert backgrounds == {colour}
        text = "".join(s.text for s in segments)
        assert view.seat is not None and view.seat.text() in text
        assert view.scan_id in text
    assert admitted.seat is not None and admitted.seat.text() == "Balcony · Row C · Seat 12"
    assert rejected.seat is not None and rejected.seat.text() == "Standing (general admission)"
    counts = Counts(admitted=4, unresolved=1)
    counts.rejected[Outcome.ALREADY_USED] = 2
    assert renderer.counts_line(counts).plain == (
        "admitted 4   rejected 2 (ALREADY USED 2)   unresolved 1"
    )


@pytest.mark.slow
async def test_pending_scans_from_a_crash_are_resubmitted_with_their_scan_id(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account, gatekeeper: Account
) -> None:
    sale = await sell(stubs, admin, 1, 2, gatekeeper)
    event, seated, standing = sale.event, sale.seated, sale.standing
    path = tmp_path / "crashed.jsonl"
    journal = Journal.open(path)
    # Crash 1: the server burned the ticket but the kiosk died before journaling the answer.
    lost_reply = str(uuid.uuid4())
    journal.record_read(lost_reply, seated[0].code, event.id, "west")
    first = await stubs.gate.ValidateTicket(
        scan_request(seated[0].code, event.id, gate="west", scan_id=lost_reply),
        metadata=gatekeeper.md,
    )
    assert first.result == gate_pb2.VALIDATION_RESULT_ADMITTED
    # Crash 2: the kiosk died after journaling the read, before sending anything.
    never_sent = str(uuid.uuid4())
    journal.record_read(never_sent, standing[0].code, event.id, "west")
    journal.close()
    with path.open("a") as fh:
        fh.write('{"type": "result", "scan_id": "tor')  # torn by the crash, no newline
    code, out, err = await run_kiosk(
        tmp_path,
        running.target,
        event.id,
        [standing[1].code],
        "--gate",
        "west",
        "--journal",
        str(path),
        env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token),
    )
    assert code == 0, (out, err)
    assert "INFO resubmitting 2 pending scan(s) from the journal" in out
    assert "WARN journal has 1 unreadable line(s); skipped" in out
    admits = [line for line in out if line.startswith("ADMIT")]
    # Pending scans first, in the order they were read, then the new input.
    assert [a.split()[1] for a in admits[:2]] == [lost_reply, never_sent]
    assert len(admits) == 3 and admits[2].split()[1] not in (lost_reply, never_sent)
    assert not any(line.startswith("REJECT") for line in out)
    results = {e["scan_id"]: e for e in read_journal(path, torn=1) if e["type"] == "result"}
    # The lost reply comes back as the original ADMITTED (a repeat), not ALREADY_USED.
    assert results[lost_reply]["result"] == "ADMITTED" and results[lost_reply]["repeat"] is True
    assert results[lost_reply]["resubmitted"] is True
    assert results[never_sent]["result"] == "ADMITTED" and results[never_sent]["repeat"] is False
    scans = await all_scans(stubs, gatekeeper, event.id)
    assert len(scans) == 3
    assert scans[lost_reply].repeat_count == 1 and scans[never_sent].repeat_count == 0
    assert {s.result for s in scans.values()} == {gate_pb2.VALIDATION_RESULT_ADMITTED}

    # Nothing is pending any more: a second start re-submits nothing.
    code, out, _ = await run_kiosk(
        tmp_path,
        running.target,
        event.id,
        [],
        "--gate",
        "west",
        "--journal",
        str(path),
        env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token),
    )
    assert code == 0 and not any("resubmitting" in line for line in out)
    assert out[-1] == "SUMMARY admitted=0 rejected=0 unresolved=0 empty_lines=0"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.slow
async def test_signal_closes_the_gate_with_a_summary_and_exit_0(
    sig: signal.Signals,
    tmp_path: Path,
    running: RunningServer,
    stubs: Stubs,
    admin: Account,
    gatekeeper: Account,
) -> None:
    sale = await sell(stubs, admin, 1, 1, gatekeeper)
    event, seated = sale.event, sale.seated
    env = kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token)
    async with kiosk(tmp_path, running.target, event.id, "--gate", "g1", env=env) as run:
        await run.expect(r"^INFO gate=g1 ")
        await run.feed(seated[0].code)
        await run.expect(rf"^ADMIT {UUID_RE} Stalls/A/1$")
        run.proc.send_signal(sig)  # stdin still open: the kiosk is waiting for a scan
        code, err = await run.wait()
    assert code == 0, err
    assert run.lines[-1].startswith("SUMMARY admitted=1 rejected=0 unresolved=0")


@pytest.mark.slow
async def test_startup_refusals_exit_non_zero_with_a_reason(
    tmp_path: Path, running: RunningServer, stubs: Stubs, admin: Account, gatekeeper: Account
) -> None:
    sale = await sell(stubs, admin, 1, 1, gatekeeper)
    event, seated, buyer = sale.event, sale.seated, sale.buyer
    # An entry manager, but not of this event (issue 10: staff are scoped to events).
    stranger = await stubs.account_with_roles(
        admin, common_pb2.ROLE_ENTRY_MANAGER, tag="kiosk-stranger"
    )
    cases: list[tuple[dict[str, str], str, str]] = [
        ({"TICKETING_TOKEN": "not-a-token"}, event.id, "sign-in refused"),
        ({"TICKETING_TOKEN": buyer.token}, event.id, "needs the ENTRY_MANAGER role"),
        (
            {"TICKETING_TOKEN": stranger.token},
            event.id,
            f"is not assigned to the gates of 'Show' ({event.id}): its organizer runs "
            f"`ticketctl events staff add {event.id} {stranger.user.id}`",
        ),
        ({"TICKETING_TOKEN": gatekeeper.token}, str(uuid.uuid4()), "unknown event"),
        ({"TICKETING_TOKEN": gatekeeper.token}, "not-an-id", "unknown event"),
        (
            {"TICKETING_KIOSK_EMAIL": gatekeeper.email, "TICKETING_KIOSK_PASSWORD": "wrong-pass"},
            event.id,
            "sign-in refused",
        ),
        ({"TICKETING_KIOSK_EMAIL": gatekeeper.email}, event.id, "together"),
        ({}, event.id, "not signed in"),
    ]
    for extra, event_id, message in cases:
        code, out, err = await run_kiosk(
            tmp_path,
            running.target,
            event_id,
            [seated[0].code],
            "--gate",
            "g",
            env=kiosk_env(tmp_path, **extra),
        )
        assert (code, message in err) == (1, True), (extra, out, err)
    # No scan was sent by any of them.
    assert await all_scans(stubs, gatekeeper, event.id) == {}

    # A journal another kiosk holds is refused too (two kiosks would both re-submit it).
    held = Journal.open(tmp_path / "held.jsonl")
    try:
        code, _, err = await run_kiosk(
            tmp_path,
            running.target,
            event.id,
            [],
            "--gate",
            "g",
            "--journal",
            str(tmp_path / "held.jsonl"),
            env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token),
        )
    finally:
        held.close()
    assert code == 1 and "in use by another kiosk" in err

    # A ticketctl session works as the credential source.
    config = tmp_path / "ticketctl-config"
    config.mkdir(exist_ok=True)
    (config / "session.json").write_text(
        json.dumps({"target": running.target, "token": gatekeeper.token, "email": "x"})
    )
    code, out, err = await run_kiosk(
        tmp_path,
        running.target,
        event.id,
        [seated[0].code],
        "--gate",
        "g",
        env=kiosk_env(tmp_path),
    )
    assert code == 0 and any(line.startswith("ADMIT") for line in out), (out, err)


# ---------------------------------------------------------------------------------------------
# A server that goes away and comes back


class ScriptedHealth:
    """A Health stub that answers the given statuses (or raises the given codes) in turn."""

    def __init__(self, *answers: int | grpc.StatusCode) -> None:
        self.answers = list(answers)
        self.checks = 0

    async def Check(self, request: Any, timeout: float | None = None) -> Any:
        from grpc_health.v1 import health_pb2

        self.checks += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, grpc.StatusCode):
            raise aio.AioRpcError(answer, aio.Metadata(), aio.Metadata(), answer.name, None)
        return health_pb2.HealthCheckResponse(status=answer)


async def test_start_waits_for_the_server_to_serve_then_gives_up_with_exit_3(
    tmp_path: Path, gatekeeper: Account
) -> None:
    from grpc_health.v1 import health_pb2

    from ticketing.kiosk.signin import EXIT_UNREACHABLE, StartupError, wait_for_server

    serving, not_serving = (
        health_pb2.HealthCheckResponse.SERVING,
        health_pb2.HealthCheckResponse.NOT_SERVING,
    )
    warnings: list[str] = []
    # Down, then up without its database, then serving: one notice, then on.
    health = ScriptedHealth(grpc.StatusCode.UNAVAILABLE, not_serving, serving)
    await wait_for_server(health, budget=10, interval=0.01, target="t:1", on_wait=warnings.append)
    assert health.checks == 3 and warnings == ["waiting for server t:1 (UNAVAILABLE)"]
    # A server that answers at all (here: no health service) is there.
    await wait_for_server(
        ScriptedHealth(grpc.StatusCode.UNIMPLEMENTED),
        budget=10,
        interval=0.01,
        target="t:1",
        on_wait=warnings.append,
    )
    with pytest.raises(StartupError) as err:
        await wait_for_server(
            ScriptedHealth(not_serving), budget=0.05, interval=0.01, target="t:1", on_wait=print
        )
    assert err.value.exit_code == EXIT_UNREACHABLE and "unreachable for 0 s" in str(err.value)

    # The command: nothing listens on the port, so it says it waits, then exits 3.
    code, out, stderr = await run_kiosk(
        tmp_path,
        f"127.0.0.1:{free_port()}",
        str(uuid.uuid4()),
        [],
        "--gate",
        "g",
        "--connect-timeout",
        "2",
        "--health-interval",
        "0.2",
        env=kiosk_env(tmp_path, TICKETING_TOKEN=gatekeeper.token),
    )
    assert code == 3, (out, stderr)
    assert any(line.startswith("WARN waiting for server 127.0.0.1:") for line in out), out
    assert "unreachable for 2 s (UNAVAILABLE" in stderr


@pytest.mark.slow
async def test_kiosk_reports_an_outage_and_finishes_the_scan_when_the_server_returns(
    tmp_path: Path,
    running: RunningServer,
    database_url: str,
    stubs: Stubs,
    admin: Account,
    gatekeeper: Account,
) -> None:
    sale = await sell(stubs, admin, 1, 2, gatekeeper)
    event, seated, standing = sale.event, sale.seated, sale.standing
    codes = [seated[0].code, standing[0].code, standing[1].code]
    server = ticketd_process(database_url, tmp_path, shutdown_grace_s=1)
    journal = tmp_path / "outage.jsonl"
    # Signed in with a password through the process server (its own JWT secret).
    env = kiosk_env(
        tmp_path,
        TICKETING_KIOSK_EMAIL=gatekeeper.email,
        TICKETING_KIOSK_PASSWORD=gatekeeper.password,
    )
    await server.start()
    try:
        async with kiosk(
            tmp_path,
            server.target,
            event.id,
            "--gate",
            "south",
            "--journal",
            str(journal),
            "--attempt-timeout",
            "1",
            "--health-interval",
            "0.3",
            "--retry-budget",
            "60",
            "--no-offline",  # the online retry loop itself (offline: test_kiosk_offline*.py)
            env=env,
        ) as run:
            await run.feed(codes[0])
            await run.expect(rf"^ADMIT {UUID_RE} Stalls/A/1$")

            # 1. The server dies (SIGKILL: no goodbye). The idle kiosk notices on its own.
            await server.kill()
            await run.expect(r"^STATUS SERVER UNREACHABLE -- retrying \(UNAVAILABLE")
            await run.feed(codes[1])
            pending = (await run.expect(rf"^RETRY ({UUID_RE}) attempt=1 UNAVAILABLE")).group(1)
            await run.expect(rf"^RETRY {pending} attempt=2 UNAVAILABLE")
            await server.start()  # same port, same database
            await run.expect(rf"^ADMIT {pending} Standing$")
            # The screen said the server was back before it showed the answer.
            down = max(i for i, x in enumerate(run.lines) if x.startswith("STATUS SERVER UNR"))
            assert "STATUS SERVER OK" in run.lines[down:]

            # 2. The server freezes (SIGSTOP): the request sits unanswered, calls and health
            # checks time out, and the answer may be produced after the kiosk gave up on it.
            server.signal(signal.SIGSTOP)
            await run.expect(r"^STATUS SERVER UNREACHABLE -- retrying \(DEADLINE_EXCEEDED")
            await run.feed(codes[2])
            frozen = (await run.expect(rf"^RETRY ({UUID_RE}) attempt=1 DEADLINE_EXCEEDED")).group(1)
            server.signal(signal.SIGCONT)
            await run.expect(rf"^ADMIT {frozen} Standing$")
            code, err = await run.finish()
    finally:
        await server.kill()
    assert code == 0, err
    assert run.lines[-1] == "SUMMARY admitted=3 rejected=0 unresolved=0 empty_lines=0"
    assert not any(line.startswith(("REJECT", "UNRESOLVED")) for line in run.lines)

    # One burn per ticket, under the kiosk's scan ids; nothing logged as ALREADY_USED.
    entries = read_journal(journal)
    reads = [e for e in entries if e["type"] == "read"]
    results = {e["scan_id"]: e for e in entries if e["type"] == "result"}
    assert [r["scan_id"] for r in reads][1:] == [pending, frozen]
    assert results[pending]["attempts"] >= 2 and results[frozen]["attempts"] >= 2
    scans = await all_scans(stubs, gatekeeper, event.id)
    assert set(scans) == {r["scan_id"] for r in reads}
    assert Counter(s.result for s in scans.values()) == {gate_pb2.VALIDATION_RESULT_ADMITTED: 3}
    assert {s.code_hash for s in scans.values()} == {sha(c) for c in codes}
    stats = await stubs.gate.GetGateStats(
        gate_pb2.GetGateStatsRequest(event_id=event.id), metadata=gatekeeper.md
    )
    assert (stats.total_admitted, stats.total_rejected, stats.tickets_outstanding) == (3, 0, 0)


@pytest.mark.slow
async def test_rate_limits_wait_unanswered_scans_are_unresolved_and_stops_leave_pending(
    tmp_path: Path,
    running: RunningServer,
    database_url: str,
    stubs: Stubs,
    admin: Account,
    gatekeeper: Account,
) -> None:
    sale = await sell(stubs, admin, 1, 4, gatekeeper)
    codes = [sale.seated[0].code, *(t.code for t in sale.standing)]
    # One scan per second per gate: the second of two quick scans is refused at first.
    server = ticketd_process(
        database_url,
        tmp_path,
        shutdown_grace_s=1,
        extra_env={"TICKETING_GATE_SCAN_RATE": "1", "TICKETING_GATE_SCAN_BURST": "1"},
    )
    journal = tmp_path / "slow.jsonl"
    env = kiosk_env(
        tmp_path,
        TICKETING_KIOSK_EMAIL=gatekeeper.email,
        TICKETING_KIOSK_PASSWORD=gatekeeper.password,
    )
    # The online retry loop itself; offline admission is in test_kiosk_offline*.py.
    args = ["--gate", "slow", "--journal", str(journal), "--attempt-timeout", "1", "--no-offline"]
    await server.start()
    try:
        async with kiosk(
            tmp_path, server.target, sale.event.id, *args, "--retry-budget", "3", env=env
        ) as run:
            await run.feed(codes[0], codes[1])
            await run.expect(rf"^ADMIT {UUID_RE} Stalls/A/1$")
            limited = (await run.expect(rf"^RETRY ({UUID_RE}) attempt=1 RESOURCE_EXHAUSTED")).group(
                1
            )
            await run.expect(rf"^ADMIT {limited} Standing$")

            await server.kill()
            await run.feed(codes[2])
            lost = (await run.expect(rf"^UNRESOLVED ({UUID_RE}) UNAVAILABLE")).group(1)
            # The loop goes on: the next scan works once the server is back.
            await server.start()
            await run.expect(r"^STATUS SERVER OK")
            await run.feed(codes[3])
            await run.expect(rf"^ADMIT {UUID_RE} Standing$")
            code, err = await run.finish()
        assert code == 0, err
        assert run.lines[-1] == "SUMMARY admitted=3 rejected=0 unresolved=1 empty_lines=0"
        results = {e["scan_id"]: e for e in read_journal(journal) if e["type"] == "result"}
        assert results[lost]["result"] == "UNRESOLVED" and results[lost]["attempts"] >= 2
        assert results[lost]["error"].startswith("UNAVAILABLE")
        assert results[limited]["attempts"] >= 2 and results[limited]["result"] == "ADMITTED"

        # UNRESOLVED is final: a restart does not re-submit it (staff dealt with that person).
        # But a kiosk stopped while a scan is still retrying leaves that scan pending...
        async with kiosk(tmp_path, server.target, sale.event.id, *args, env=env) as run:
            await run.expect(r"^INFO gate=slow ")
            await server.kill()
            await run.feed(codes[4])
            stopped = (await run.expect(rf"^RETRY ({UUID_RE}) attempt=1 UNAVAILABLE")).group(1)
            run.proc.send_signal(signal.SIGTERM)
            code, err = await run.wait()
        assert code == 0, err
        assert not any("resubmitting" in line for line in run.lines)
        assert run.lines[-2:] == [
            "SUMMARY admitted=0 rejected=0 unresolved=0 empty_lines=0",
            "PENDING 1 scan(s) left for the next start",
        ]
        # ...which the next start finishes first, under the same scan id.
        await server.start()
        async with kiosk(tmp_path, server.target, sale.event.id, *args, env=env) as run:
            code, err = await run.finish()
        assert code == 0, err
        assert "INFO resubmitting 1 pending scan(s) from the journal" in run.lines
        assert f"ADMIT {stopped} Standing" in run.lines
    finally:
        await server.kill()
    scans = await all_scans(stubs, gatekeeper, sale.event.id)
    assert len(scans) == 4 and lost not in scans and stopped in scans
    assert {s.result for s in scans.values()} == {gate_pb2.VALIDATION_RESULT_ADMITTED}


class FakeGate:
    """A GateService stub that fails with the given codes first, then admits."""

    def __init__(self, *failures: grpc.StatusCode) -> None:
        self.failures = list(failures)
        self.requests: list[gate_pb2.ValidateTicketRequest] = []

    async def ValidateTicket(
        self, request: gate_pb2.ValidateTicketRequest, timeout: float | None = None
    ) -> gate_pb2.ValidateTicketResponse:
        self.requests.append(request)
        if self.failures:
            code = self.failures.pop(0)
            raise aio.AioRpcError(
                code, aio.Metadata(), aio.Metadata(), details=code.name, debug_error_string=""
            )
        return gate_pb2.ValidateTicketResponse(
            result=gate_pb2.VALIDATION_RESULT_ADMITTED,
            ticket=gate_pb2.ScannedTicket(section_name="Standing"),
        )


@pytest.mark.slow
async def test_expired_token_signs_in_again_once_and_other_refusals_are_errors(
    tmp_path: Path,
) -> None:
    logins: list[str] = []

    async def sign_in_again() -> bool:
        logins.append("login")
        return True

    journal = Journal.open(tmp_path / "unit.jsonl")
    gate = FakeGate(grpc.StatusCode.UNAUTHENTICATED)
    k = Kiosk(
        # A test double of the one method Kiosk calls (the stub class exists only in .pyi).
        cast("gate_pb2_grpc.GateServiceAsyncStub", gate),
        journal,
        event_id=str(uuid.uuid4()),
        gate_id="g",
        reauthenticate=sign_in_again,
    )
    view = await k.scan("code-1")
    assert view.admitted and view.attempts == 2 and logins == ["login"]
    assert len({r.scan_id for r in gate.requests}) == 1  # the retry kept the scan_id

    # Refused again after signing in, or refused for another reason: ERROR, not admitted,
    # and the kiosk carries on.
    gate.failures = [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED]
    view = await k.scan("code-2")
    assert view.outcome is Outcome.ERROR and view.error.startswith("UNAUTHENTICATED")
    gate.failures = [grpc.StatusCode.PERMISSION_DENIED]
    view = await k.scan("code-3")
    assert view.outcome is Outcome.ERROR and "PERMISSION_DENIED" in view.reason
    assert (k.counts.admitted, k.counts.rejected[Outcome.ERROR]) == (1, 2)
    journal.close()
    assert [
        e["result"] for e in read_journal(tmp_path / "unit.jsonl") if e["type"] == "result"
    ] == [
        "ADMITTED",
        "ERROR",
        "ERROR",
    ]


def test_plain_renderer_lines_are_stable() -> None:
    from ticketing.kiosk.render import PlainRenderer

    out = io.StringIO()
    renderer = PlainRenderer(out)
    counts = Counts()
    renderer.link_changed(False, "UNAVAILABLE: connection refused")
    renderer.retrying("abc", 2, "UNAVAILABLE", 27.25)
    renderer.show(
        ScanResultView("abc", "h", Outcome.UNRESOLVED, "x", attempts=9, error="UNAVAILABLE: gone"),
        counts,
    )
    renderer.link_changed(True, "")
    assert out.getvalue().splitlines() == [
        "STATUS SERVER UNREACHABLE -- retrying (UNAVAILABLE: connection refused)",
        "RETRY abc attempt=2 UNAVAILABLE 27.2s left",
        "UNRESOLVED abc UNAVAILABLE: gone",
        "STATUS SERVER OK",
    ]
