"""Gate decisions: scan input, why a code was refused, and what a refusal may reveal."""

from __future__ import annotations

import datetime as dt
import string
import uuid

import pytest

from tests.unit.rejection import fields, violations
from ticketd.gate import rules
from ticketd.gate.rules import ScanResult

EVENT = uuid.uuid4()


def test_scan_input_is_trimmed() -> None:
    assert rules.validate_scan("  CODE-1 \n", " north gate ") == ("CODE-1", "north gate")


def test_both_fields_are_required() -> None:
    assert violations(lambda: rules.validate_scan(" ", "")) == [
        ("code", "is required"),
        ("gate_id", "is required"),
    ]


def test_sizes_and_printable_gate_names() -> None:
    assert fields(lambda: rules.validate_scan("c" * (rules.MAX_CODE_CHARS + 1), "g")) == ["code"]
    assert fields(lambda: rules.validate_scan("c", "g" * (rules.MAX_GATE_CHARS + 1))) == ["gate_id"]
    assert fields(lambda: rules.validate_scan("c", "gate\x1b[2J")) == ["gate_id"]
    rules.validate_scan("c" * rules.MAX_CODE_CHARS, "g" * rules.MAX_GATE_CHARS)


@pytest.mark.parametrize(
    ("ticket_event", "status", "expected"),
    [
        (None, None, ScanResult.UNKNOWN_CODE),
        (uuid.uuid4(), "VALID", ScanResult.WRONG_EVENT),
        (uuid.uuid4(), "USED", ScanResult.WRONG_EVENT),
        (EVENT, "USED", ScanResult.ALREADY_USED),
        (EVENT, "VOID", ScanResult.VOID),
        # A VALID ticket that did not burn is refused, never admitted.
        (EVENT, "VALID", ScanResult.ALREADY_USED),
    ],
)
def test_why_a_code_did_not_burn(
    ticket_event: uuid.UUID | None, status: str | None, expected: ScanResult
) -> None:
    assert rules.classify_unburned(ticket_event, status, EVENT) is expected


def test_only_this_event_s_tickets_show_their_place() -> None:
    shown = {r for r in ScanResult if rules.shows_place(r)}
    # CONFLICT and REVOKED are offline uploads of this event's tickets (issue 14).
    assert shown == {
        ScanResult.ADMITTED,
        ScanResult.ALREADY_USED,
        ScanResult.VOID,
        ScanResult.CONFLICT,
        ScanResult.REVOKED,
    }


def test_the_scan_log_keeps_a_hash_never_the_code() -> None:
    scan = rules.ScanInput("SECRET-CODE-123", EVENT, "north", uuid.uuid4())
    digest = scan.code_hash
    assert len(digest) == 32 and set(digest) <= set(string.hexdigits.lower())
    assert "SECRET" not in digest
    assert (
        digest == rules.ScanInput("SECRET-CODE-123", uuid.uuid4(), "south", uuid.uuid4()).code_hash
    )
    assert digest != rules.ScanInput("SECRET-CODE-124", EVENT, "north", uuid.uuid4()).code_hash


def test_gate_counts_split_admitted_from_rejected() -> None:
    counts = rules.GateCounts(
        "north",
        {ScanResult.ADMITTED: 7, ScanResult.ALREADY_USED: 2, ScanResult.UNKNOWN_CODE: 1},
        dt.datetime(2030, 5, 1, tzinfo=dt.UTC),
    )
    assert (counts.admitted, counts.rejected) == (7, 3)
    empty = rules.GateCounts("south", {}, dt.datetime(2030, 5, 1, tzinfo=dt.UTC))
    assert (empty.admitted, empty.rejected) == (0, 0)
