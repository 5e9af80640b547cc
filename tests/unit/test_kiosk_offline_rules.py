"""The kiosk's offline switching rules and the journal's upload bookkeeping (no server)."""

from __future__ import annotations

import io
import json
import os
import stat
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from ticketing.kiosk.device import DeviceFile, device_path
from ticketing.kiosk.journal import Journal
from ticketing.kiosk.offline import OfflineVerdict
from ticketing.kiosk.render import PlainRenderer, RichRenderer
from ticketing.kiosk.switching import (
    UPLOAD_BATCH,
    Link,
    Mode,
    batches,
    goes_offline,
    offline_outcome,
)
from ticketing.kiosk.views import Counts, Outcome, ScanResultView, SeatView, reason_text


@pytest.mark.parametrize(
    ("status", "offline"),
    [
        ("UNAVAILABLE", True),
        ("DEADLINE_EXCEEDED", True),
        ("NOT_SERVING", True),
        # The server answered: it is there, the kiosk retries online.
        ("RESOURCE_EXHAUSTED", False),
        ("ABORTED", False),
        ("PERMISSION_DENIED", False),
        ("UNAUTHENTICATED", False),
        ("", False),
    ],
)
def test_only_an_absent_server_switches_offline(status: str, offline: bool) -> None:
    assert goes_offline(status) is offline
    link = Link()
    assert link.call_failed(status) is offline
    assert link.offline is offline


def test_offline_then_back_online_makes_a_sync_due_at_once() -> None:
    link = Link(sync_interval=30)
    assert link.sync_due(0.0)
    link.synced(0.0)
    assert not link.sync_due(10.0)
    assert link.call_failed("UNAVAILABLE")
    assert not link.call_failed("DEADLINE_EXCEEDED")  # already offline: no second switch
    assert not link.sync_due(100.0)  # never while offline
    assert link.server_answered(12.0)
    assert link.mode is Mode.ONLINE
    assert link.sync_due(12.0)  # revocations may have been written meanwhile
    assert not link.server_answered(13.0)
    link.synced(13.0)
    assert not link.sync_due(42.9) and link.sync_due(43.0)


def test_every_offline_verdict_has_a_screen() -> None:
    for verdict in OfflineVerdict:
        outcome = offline_outcome(verdict)
        assert reason_text(outcome)
    assert offline_outcome(OfflineVerdict.ADMIT) is Outcome.ADMITTED
    assert offline_outcome(OfflineVerdict.NOT_VERIFIABLE) is Outcome.PLAIN_CODE
    assert offline_outcome(OfflineVerdict.OFFLINE_REFUSED) is Outcome.OFFLINE_REFUSED
    assert offline_outcome(OfflineVerdict.ALREADY_ADMITTED_HERE) is Outcome.ALREADY_USED
    assert reason_text(Outcome.PLAIN_CODE).startswith("PLAIN CODE")
    assert reason_text(Outcome.OFFLINE_REFUSED).startswith("OFFLINE ADMISSION NOT ALLOWED")
    assert reason_text(Outcome.DEVICE_REVOKED).startswith("DEVICE REVOKED")


@pytest.mark.parametrize("n", [0, 1, 99, 100, 101, 250])
def test_batches_respect_the_upload_limit_and_keep_order(n: int) -> None:
    items = list(range(n))
    cut = list(batches(items))
    assert all(1 <= len(b) <= UPLOAD_BATCH for b in cut)
    assert [x for b in cut for x in b] == items
    assert len(cut) == -(-n // UPLOAD_BATCH)
    with pytest.raises(ValueError):
        list(batches(items, 0))


def _admit(journal: Journal, scan_id: str, code: str, ticket: str, *, offline: bool) -> None:
    journal.record_read(scan_id, code, "event", "gate")
    journal.record_result(
        scan_id,
        {
            "result": "ADMITTED",
            "ticket_id": ticket,
            "scan_time": f"2026-01-01T00:00:0{scan_id[-1]}+00:00",
            "offline": offline,
        },
    )


def test_journal_keeps_offline_admissions_waiting_until_uploaded_across_restarts(
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path)
    _admit(journal, "s1", "TK1.a", "t1", offline=True)
    _admit(journal, "s2", "plain", "t2", offline=False)
    _admit(journal, "s3", "TK1.c", "t3", offline=True)
    journal.record_read("s4", "TK1.d", "event", "gate")
    journal.record_result("s4", {"result": "FORGED", "ticket_id": "t4", "offline": True})
    assert [w.scan_id for w in journal.waiting_uploads()] == ["s1", "s3"]
    assert journal.admitted_here() == {"t1", "t2", "t3"}
    journal.record_upload("s1", {"upload_result": "ACCEPTED"})
    assert journal.waiting_count == 1
    journal.close()

    # A restart (or a kill -9 after the last fsync) sees the same.
    again = Journal.open(path)
    assert [(w.scan_id, w.code) for w in again.waiting_uploads()] == [("s3", "TK1.c")]
    assert again.admitted_here() == {"t1", "t2", "t3"}
    assert again.pending() == []
    again.record_upload("s3", {"upload_result": "CONFLICT"})
    again.close()
    assert Journal.open(path).waiting_count == 0
    uploads = [json.loads(x) for x in path.read_text().splitlines() if '"upload"' in x]
    assert [u["upload_result"] for u in uploads] == ["ACCEPTED", "CONFLICT"]


def test_device_file_is_0600_and_refuses_junk(tmp_path: Path) -> None:
    path = device_path(tmp_path, "ev/../1", "north gate")
    assert path.parent == tmp_path and "/" not in path.name[len("kiosk-device-") :]
    device = DeviceFile("d", "ev", "north", "North", "tkd_secret")
    device.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.chmod(path, 0o644)
    assert DeviceFile.load(path) == device
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    path.write_text('{"device_id": "d"}')
    with pytest.raises(ValueError):
        DeviceFile.load(path)
    path.write_text(json.dumps({**device.__dict__, "credential": "Bearer x"}))
    with pytest.raises(ValueError):
        DeviceFile.load(path)


def test_offline_screens_plain_and_rich() -> None:
    out = io.StringIO()
    plain = PlainRenderer(out)
    counts = Counts()
    admitted = ScanResultView(
        "s1", "h", Outcome.ADMITTED, "ADMIT", seat=SeatView("Standing"), offline=True
    )
    counts.add(admitted)
    counts.waiting = 1
    plain.mode_changed(Mode.OFFLINE, 0)
    plain.show(admitted, counts)
    refused = ScanResultView(
        "s2", "h", Outcome.PLAIN_CODE, reason_text(Outcome.PLAIN_CODE), offline=True
    )
    counts.add(refused)
    plain.show(refused, counts)
    plain.uploaded(Counter({"ACCEPTED": 1}), 0)
    plain.mode_changed(Mode.ONLINE, 1)
    plain.device_revoked()
    counts.waiting = 0
    plain.summary(counts, 0)
    assert out.getvalue().splitlines() == [
        "STATUS OFFLINE waiting=0",
        "ADMIT s1 Standing",
        "OFFLINE waiting=1",
        "REJECT PLAIN_CODE s2 PLAIN CODE: cannot be verified offline, scan the ticket's QR code",
        "OFFLINE waiting=1",
        "UPLOAD accepted=1 conflict=0 revoked=0 invalid=0 waiting=0",
        "STATUS ONLINE waiting=1",
        "STATUS DEVICE REVOKED",
        "OFFLINE admitted=1 waiting=0",
        "SUMMARY admitted=1 rejected=1 unresolved=0 empty_lines=0 PLAIN_CODE=1",
    ]

    screen = io.StringIO()
    rich = RichRenderer(Console(file=screen, width=100, color_system=None))
    rich.mode_changed(Mode.OFFLINE, 3)
    rich.show(admitted, counts)
    rich.device_revoked()
    text = screen.getvalue()
    assert "OFFLINE" in text and "waiting=" in text
    assert "OFFLINE (checked by this kiosk)" in text
    assert "DEVICE REVOKED" in text and "\u2588" in text  # the big block letters


EVENTS = st.lists(
    st.one_of(
        st.sampled_from(["UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_SERVING", "ABORTED", "OK"]),
        st.floats(min_value=0, max_value=100),
    ),
    max_size=40,
)


@given(EVENTS)
def test_the_link_follows_the_last_answer_or_absence(events: list[str | float]) -> None:
    """Model check: OFFLINE exactly when the last decisive event was an absence; a switch is
    reported once per change; never a sync while offline."""
    link = Link(sync_interval=10)
    model_offline = False
    now = 0.0
    for event in events:
        if isinstance(event, float):
            now += event
            assert not (link.offline and link.sync_due(now))
            if link.sync_due(now):
                link.synced(now)
            continue
        if event == "OK":
            assert link.server_answered(now) is model_offline
            if model_offline:
                assert link.sync_due(now)
            model_offline = False
        else:
            switched = link.call_failed(event)
            decisive = goes_offline(event)
            assert switched is (decisive and not model_offline)
            model_offline = model_offline or decisive
        assert link.offline is model_offline
