"""ticketctl end to end: the real CLI in a subprocess against the real in-process server.

Each CLI run is `python -m ticketing.cli.main` with its own config dir, so the token file and
its mode are the ones a user would get, and stdout/stderr are exactly what a terminal shows
(COLUMNS fixed, colour off). The seat-map and layout helpers are also tested as pure functions.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import os
import re
import stat
import sys
import uuid
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import text

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, RunningServer
from tests.support import PASSWORD, Account, Stubs, unique_email
from ticketing.cli.event_cmds import parse_time, section_prices
from ticketing.cli.seatmap import ASCII_GLYPHS, UNICODE_GLYPHS, format_money, render_seat_map
from ticketing.cli.venue_cmds import LayoutError, expand_row_range, venue_from_layout
from ticketing.pagination import paginate
from ticketing.v1 import event_pb2, event_pb2_grpc, venue_pb2, venue_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
THEATRE = REPO / "docs" / "layouts" / "small-theatre.yaml"
FREE, SOLD, MIXED = UNICODE_GLYPHS.available, UNICODE_GLYPHS.sold, UNICODE_GLYPHS.mixed
UUID_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@dataclass
class CliResult:
    code: int
    out: str
    err: str


Ticketctl = Callable[..., Awaitable[CliResult]]


def _env(target: str, config_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TICKETING_", "TICKETCTL_")) and k not in ("NO_COLOR", "FORCE_COLOR")
    }
    env |= {
        "TICKETING_TARGET": target,
        "TICKETCTL_CONFIG_DIR": str(config_dir),
        "COLUMNS": "200",
        "LINES": "50",
        "NO_COLOR": "1",
        "TERM": "dumb",
        "PYTHONIOENCODING": "utf-8",
    }
    return env | extra


async def run_cli(
    args: tuple[str, ...], env: dict[str, str], stdin: str | None = None
) -> CliResult:
    # A subprocess, not a thread: the server runs on this event loop and must keep serving
    # while the CLI waits for it.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketing.cli.main",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(
        proc.communicate(stdin.encode() if stdin is not None else None), timeout=60
    )
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def cli_for(target: str, config_dir: Path, **extra: str) -> Ticketctl:
    """A ticketctl runner bound to one config dir (one signed-in user)."""

    async def run(*args: str, stdin: str | None = None, **more: str) -> CliResult:
        return await run_cli(args, _env(target, config_dir, **extra, **more), stdin)

    return run


def events_of(stubs: Stubs) -> event_pb2_grpc.EventServiceAsyncStub:
    return event_pb2_grpc.EventServiceStub(stubs.channel)


async def venue_names(stubs: Stubs, admin: Account) -> list[str]:
    stub: venue_pb2_grpc.VenueServiceAsyncStub = venue_pb2_grpc.VenueServiceStub(stubs.channel)
    pages = paginate(
        stub.ListVenues, venue_pb2.ListVenuesRequest(), lambda p: p.venues, metadata=admin.md
    )
    return [v.name async for v in pages]


def ok(result: CliResult) -> CliResult:
    assert result.code == 0, f"exit {result.code}\nstdout:\n{result.out}\nstderr:\n{result.err}"
    return result


@pytest.fixture(scope="module")
async def admin_cli(
    running: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Ticketctl]:
    cli = cli_for(running.target, tmp_path_factory.mktemp("admin") / "config")
    ok(await cli("login", ADMIN_EMAIL, TICKETING_PASSWORD=ADMIN_PASSWORD))
    yield cli


@pytest.mark.slow
async def test_register_login_whoami_logout(running: RunningServer, tmp_path: Path) -> None:
    config = tmp_path / "config"
    cli = cli_for(running.target, config)
    email = unique_email("cli")

    reg = ok(await cli("register", email, "--name", "Cli User", TICKETING_PASSWORD=PASSWORD))
    assert "registered" in reg.out
    assert email in reg.out
    assert not (config / "session.json").exists()

    login = ok(await cli("login", email, "--password-stdin", stdin=PASSWORD + "\n"))
    assert email in login.out
    session_file = config / "session.json"
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(config.stat().st_mode) & 0o077 == 0
    saved = json.loads(session_file.read_text())
    assert saved["email"] == email
    assert saved["target"] == running.target
    assert saved["token"].count(".") == 2

    who = ok(await cli("whoami"))
    assert "Cli User" in who.out
    assert email in who.out
    assert "roles=CUSTOMER" in who.out

    ok(await cli("logout"))
    assert not session_file.exists()
    again = await cli("whoami")
    assert again.code == 1
    assert "not signed in" in again.err


@pytest.mark.slow
async def test_wrong_password_login_saves_nothing(running: RunningServer, tmp_path: Path) -> None:
    cli = cli_for(running.target, tmp_path / "config")
    result = await cli("login", ADMIN_EMAIL, TICKETING_PASSWORD="not-the-password")
    assert result.code == 1
    assert result.err.startswith("UNAUTHENTICATED")
    assert not (tmp_path / "config" / "session.json").exists()


def _venue_id(output: str) -> str:
    match = re.search(rf"id: ({UUID_RE})", output)
    assert match, output
    return match.group(1)


def table_row(output: str, first_cell: str) -> list[str]:
    """The cells of the rich table row whose first cell is `first_cell`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) > 1 and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no table row {first_cell!r} in:\n{output}")


def _line(output: str, prefix: str) -> str:
    """The first output line that starts with `prefix` once indentation is stripped."""
    for line in output.splitlines():
        if line.strip().startswith(prefix):
            return line.strip()
    raise AssertionError(f"no line starting with {prefix!r} in:\n{output}")


async def _sell(running: RunningServer, event_id: str, section: str, where: str) -> int:
    # The seat map only reads seat status, so a sale is simulated as it ends up in the
    # inventory; going through BookingService would tie these CLI tests to booking rules.
    async with running.engine.begin() as conn:
        result = await conn.execute(
            text(
                "UPDATE seats s SET status = 'SOLD' FROM event_sections es "
                "WHERE es.event_id = s.event_id AND es.section_id = s.section_id "
                f"AND s.event_id = :event AND es.name = :section AND {where}"
            ),
            {"event": uuid.UUID(event_id), "section": section},
        )
    return int(result.rowcount)


@pytest.mark.slow
async def test_admin_creates_venue_and_event_then_draws_seats_and_cancels(
    admin_cli: Ticketctl, running: RunningServer, stubs: Stubs
) -> None:
    created = ok(await admin_cli("venues", "create", "--layout", str(THEATRE)))
    venue_id = _venue_id(created.out)
    assert re.search(r"Little Theatre\s+272 places\s+\(Europe/London\)", created.out)
    assert table_row(created.out, "Stalls")[:5] == [
        "Stalls",
        "reserved",
        "11 (A..L)",
        "14..18",
        "194",
    ]
    assert table_row(created.out, "Standing")[:5] == [
        "Standing",
        "general admission",
        "-",
        "-",
        "60",
    ]

    shown = ok(await admin_cli("venues", "show", venue_id))
    assert table_row(shown.out, "Circle")[:5] == ["Circle", "reserved", "2 (AA..BB)", "8..10", "18"]
    listed = ok(await admin_cli("venues", "list"))
    assert venue_id in listed.out

    # No offset: 20:00 on the venue's wall clock (London), whatever the machine's zone.
    start_day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=40)).date()
    start_text = f"{start_day.isoformat()}T20:00"
    made = ok(
        await admin_cli(
            "events",
            "create",
            "--venue",
            venue_id,
            "--name",
            "Opening Night",
            "--start",
            start_text,
            "--currency",
            "eur",
            "--price",
            "Stalls=4500",
            "--price",
            "circle=3000",
            "--price-all",
            "1250",
            "--max-per-order",
            "6",
            "--max-per-customer",
            "10",
            "--description",
            "First night of the season",
        )
    )
    event_id = _venue_id(made.out)
    assert "ON_SALE" in made.out
    assert table_row(made.out, "Stalls")[:6] == [
        "Stalls",
        "reserved",
        "45.00 EUR",
        "194",
        "194",
        "0",
    ]
    assert table_row(made.out, "Circle")[:3] == ["Circle", "reserved", "30.00 EUR"]
    assert table_row(made.out, "Standing")[:3] == ["Standing", "general admission", "12.50 EUR"]
    assert "at most 6 per order, 10 per customer" in made.out

    event = (await events_of(stubs).GetEvent(event_pb2.GetEventRequest(event_id=event_id))).event
    london = zoneinfo.ZoneInfo("Europe/London")
    expected_start = dt.datetime.combine(start_day, dt.time(20, 0), london)
    assert event.start_time.ToDatetime(dt.UTC) == expected_start
    assert {s.name: s.price_minor for s in event.sections} == {
        "Stalls": 4500,
        "Circle": 3000,
        "Standing": 1250,
    }
    assert event.currency_code == "EUR"
    assert event.max_tickets_per_customer == 10
    assert event.capacity == 272

    assert await _sell(running, event_id, "Stalls", "s.row_label = 'A' AND s.seat_number <= 3") == 3
    assert await _sell(running, event_id, "Circle", "s.row_label = 'BB'") == 8
    assert await _sell(running, event_id, "Standing", "s.ordinal <= 5") == 5

    show = ok(await admin_cli("events", "show", event_id))
    assert table_row(show.out, "Stalls")[:6] == [
        "Stalls",
        "reserved",
        "45.00 EUR",
        "194",
        "191",
        "3",
    ]
    assert table_row(show.out, "total")[:6] == ["total", "", "", "272", "256", "16"]

    seats = ok(await admin_cli("events", "seats", event_id))
    assert _line(seats.out, "legend:").startswith(f"legend: {FREE} available  {SOLD} sold")
    assert "general admission: █ sold ░ available" in seats.out
    assert _line(seats.out, "A ") == "A " + SOLD * 3 + FREE * 15 + " 15/18"
    assert _line(seats.out, "L ") == "L " + FREE * 14 + " 14/14"
    assert "I " not in [line.strip()[:2] for line in seats.out.splitlines()]
    assert _line(seats.out, "BB ") == "BB " + SOLD * 8 + " 0/8"
    counts = [line.strip() for line in seats.out.splitlines() if "capacity" in line]
    assert counts == [
        "available 191  sold 3  capacity 194",
        "available 10  sold 8  capacity 18",
        "available 55  sold 5  capacity 60",
        "total: available 256  sold 16  capacity 272",
    ]
    # General admission is one bar, not one cell per place.
    bar = _line(seats.out, "[")
    assert bar.count("█") == 4 and bar.count("░") == 46
    assert FREE * 60 not in seats.out

    standing = ok(await admin_cli("events", "seats", event_id, "--section", "standing"))
    assert "Stalls" not in standing.out
    assert "available 55  sold 5  capacity 60" in standing.out
    assert "total:" not in standing.out

    # The ids `book --seats` needs: first free seats of a section, sold ones left out.
    ids = ok(await admin_cli("events", "seats", event_id, "--section", "Stalls", "--ids", "5"))
    id_rows = [
        [c.strip() for c in line.strip().strip("│").split("│")]
        for line in ids.out.splitlines()
        if "Stalls" in line
    ]
    assert len(id_rows) == 5 and all(row[0].isdigit() and row[1] == "Stalls" for row in id_rows)
    assert [row[2:4] for row in id_rows] == [["A", str(n)] for n in range(4, 9)]
    assert "5 of 191 available seats listed" in ids.out

    upcoming = ok(await admin_cli("events", "list", "--venue", venue_id))
    assert event_id in upcoming.out
    assert "Opening Night" in upcoming.out
    assert event_id in ok(await admin_cli("events", "list", "--organizer", "me")).out

    cancelled = ok(await admin_cli("events", "cancel", event_id, "--reason", "Storm damage"))
    assert "CANCELLED" in cancelled.out
    assert "Storm damage" in cancelled.out
    event = (await events_of(stubs).GetEvent(event_pb2.GetEventRequest(event_id=event_id))).event
    assert event.status == event_pb2.EVENT_STATUS_CANCELLED
    assert event.cancel_reason == "Storm damage"

    assert event_id not in ok(await admin_cli("events", "list", "--venue", venue_id)).out
    assert event_id in ok(await admin_cli("events", "list", "--venue", venue_id, "--all")).out

    twice = await admin_cli("events", "cancel", event_id, "--reason", "again")
    assert twice.code == 1
    assert twice.err.startswith("FAILED_PRECONDITION")
    assert "reason: EVENT_CANCELLED" in twice.err


@pytest.mark.slow
async def test_customer_creating_a_venue_is_permission_denied(
    running: RunningServer, stubs: Stubs, admin: Account, tmp_path: Path
) -> None:
    customer = await stubs.register("customer")
    cli = cli_for(running.target, tmp_path / "config")
    ok(await cli("login", customer.email, TICKETING_PASSWORD=customer.password))
    before = await venue_names(stubs, admin)

    result = await cli("venues", "create", "--layout", str(THEATRE))

    assert result.code == 1
    assert result.out == ""
    assert result.err.splitlines()[0].startswith("PERMISSION_DENIED: ")
    assert await venue_names(stubs, admin) == before


@pytest.mark.slow
async def test_bad_layout_prints_every_field_violation(
    admin_cli: Ticketctl, stubs: Stubs, admin: Account, tmp_path: Path
) -> None:
    name = f"Broken {uuid.uuid4().hex[:8]}"
    layout = tmp_path / "broken.yaml"
    layout.write_text(
        f"name: {name}\n"
        "time_zone: Mars/Olympus_Mons\n"
        "sections:\n"
        "  - name: Stalls\n"
        "    rows: {from: A, to: C, seats: 0}\n"
        "  - name: stalls\n"
        "    capacity: 10\n"
    )

    result = await admin_cli("venues", "create", "--layout", str(layout))

    assert result.code == 1
    assert result.out == ""
    lines = [line.strip() for line in result.err.splitlines()]
    assert lines[0].startswith("INVALID_ARGUMENT")
    assert "venue.time_zone: is not an IANA time zone name" in lines
    assert "venue.sections[1].name: duplicate section name 'stalls'" in lines
    for row in range(3):
        assert f"venue.sections[0].rows[{row}].seat_count: must be between 1 and 10000" in lines
    # Rows come from a range, so the output says which row each index is.
    assert "venue.sections[0].rows[2] is section 'Stalls', row 'C'" in lines
    assert name not in await venue_names(stubs, admin)


@pytest.mark.slow
async def test_layout_shape_problems_are_reported_before_any_call(tmp_path: Path) -> None:
    layout = tmp_path / "shape.yaml"
    layout.write_text(
        "name: Shape\n"
        "time_zone: Europe/Paris\n"
        "sections:\n"
        "  - name: Stalls\n"
        "    rows:\n"
        "      - {label: on, seats: 10}\n"
        "      - {label: B, seats: ten, colour: red}\n"
        "  - name: Pit\n"
        "    kind: standing\n"
    )
    # No server and no session: the file is rejected before anything is sent.
    cli = cli_for("127.0.0.1:9", tmp_path / "config")
    result = await cli("venues", "create", "--layout", str(layout))
    assert result.code == 1
    lines = [line.strip() for line in result.err.splitlines()]
    assert lines[0] == f"{layout}: invalid layout"
    assert lines[1:] == [
        "sections[0].rows[0].label: must be text (got True; quote it)",
        "sections[0].rows[1].colour: unknown key; expected one of label, seat_labels, seats",
        "sections[0].rows[1].seats: must be a whole number (got 'ten')",
        "sections[1].kind: must be reserved or general_admission (got 'standing')",
    ]


@pytest.mark.slow
async def test_json_layout_and_dry_run(running: RunningServer, tmp_path: Path) -> None:
    layout = tmp_path / "club.json"
    layout.write_text(
        json.dumps(
            {
                "name": "Json Club",
                "time_zone": "Europe/Berlin",
                "sections": [
                    {"name": "Floor", "capacity": 120},
                    {"name": "Balcony", "rows": {"from": "01", "to": "12", "seats": 5}},
                ],
            }
        )
    )
    cli = cli_for(running.target, tmp_path / "config")
    result = ok(await cli("venues", "create", "--layout", str(layout), "--dry-run"))
    assert "Json Club  180 places  (Europe/Berlin)" in result.out
    assert table_row(result.out, "Balcony") == [
        "Balcony",
        "reserved",
        "12 (01..12)",
        "5",
        "60",
        "(new)",
    ]
    assert "dry run: nothing created" in result.out


@pytest.mark.slow
async def test_event_create_names_unpriced_and_unknown_sections(
    admin_cli: Ticketctl, stubs: Stubs
) -> None:
    venue_id = _venue_id(ok(await admin_cli("venues", "create", "--layout", str(THEATRE))).out)
    base = ("events", "create", "--venue", venue_id, "--name", "Matinee", "--currency", "EUR")
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()

    unpriced = await admin_cli(
        *base, "--start", future, "--max-per-order", "2", "--price", "Stalls=1"
    )
    assert unpriced.code == 1
    assert "no price for section(s) 'Circle', 'Standing'" in unpriced.err

    unknown = await admin_cli(*base, "--start", future, "--max-per-order", "2", "--price", "Pit=1")
    assert unknown.code == 1
    assert "no section 'Pit'; sections are 'Stalls', 'Circle', 'Standing'" in unknown.err

    past = await admin_cli(
        *base, "--start", "2001-01-01T10:00Z", "--max-per-order", "500", "--price-all", "100"
    )
    assert past.code == 1
    assert past.err.startswith("INVALID_ARGUMENT")
    assert "max_tickets_per_order: must be between 1 and 100" in past.err

    listed = await events_of(stubs).ListEvents(event_pb2.ListEventsRequest(venue_id=venue_id))
    assert list(listed.events) == []


# ---- pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (1250, "EUR", "12.50 EUR"),
        (5, "EUR", "0.05 EUR"),
        (0, "USD", "0.00 USD"),
        (100_000_000, "GBP", "1000000.00 GBP"),
        (1250, "JPY", "1250 JPY"),
        (990, "krw", "990 krw"),
        (1250, "KWD", "1.250 KWD"),
        (-1999, "EUR", "-19.99 EUR"),
    ],
)
def test_format_money(minor: int, currency: str, shown: str) -> None:
    assert format_money(minor, currency) == shown


@pytest.mark.parametrize(
    ("start", "end", "labels"),
    [
        ("A", "D", ["A", "B", "C", "D"]),
        ("Y", "AB", ["Y", "Z", "AA", "AB"]),
        ("zz", "aab", ["zz", "aaa", "aab"]),
        ("8", "11", ["8", "9", "10", "11"]),
        ("08", "11", ["08", "09", "10", "11"]),
    ],
)
def test_row_ranges(start: str, end: str, labels: list[str]) -> None:
    assert expand_row_range(start, end) == labels


@pytest.mark.parametrize(
    ("start", "end", "why"),
    [("D", "A", "backwards"), ("A", "9", "both be letters"), ("A", "ZZZZ", "more than")],
)
def test_bad_row_ranges(start: str, end: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        expand_row_range(start, end)


def test_layout_becomes_the_venue_message() -> None:
    venue = venue_from_layout(
        {
            "name": "Hall",
            "address": "Main Street 1",
            "time_zone": "Europe/Vienna",
            "sections": [
                {
                    "name": "Parterre",
                    "rows": [
                        {"from": "A", "to": "E", "seats": 4, "skip": ["C"]},
                        {"label": 12, "seats": 2, "seat_labels": [7, "8b"]},
                    ],
                },
                {"name": "Pit", "kind": "General-Admission", "capacity": 30},
            ],
        }
    )
    parterre, pit = venue.sections
    assert parterre.kind == venue_pb2.SECTION_KIND_RESERVED
    assert [(r.label, r.seat_count) for r in parterre.rows] == [
        ("A", 4),
        ("B", 4),
        ("D", 4),
        ("E", 4),
        ("12", 2),
    ]
    assert list(parterre.rows[-1].seat_labels) == ["7", "8b"]
    assert pit.kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION
    assert pit.capacity == 30
    assert not pit.rows


def test_layout_without_sections_or_kind_is_refused() -> None:
    with pytest.raises(LayoutError) as err:
        venue_from_layout({"name": "X", "time_zone": "UTC", "sections": [{"name": "S"}]})
    assert err.value.problems == ["sections[0].kind: is required (reserved or general_admission)"]
    with pytest.raises(LayoutError) as err:
        venue_from_layout(["not", "a", "mapping"])
    assert err.value.problems[0].startswith("layout: must be a mapping")


def test_prices_by_name_id_and_default() -> None:
    sections = [
        venue_pb2.Section(id="id-1", name="Stalls"),
        venue_pb2.Section(id="id-2", name="Box=A"),
        venue_pb2.Section(id="id-3", name="Pit"),
    ]
    prices = section_prices(sections, ["stalls=100", "Box=A=250", "id-3=0"], None)
    assert prices == {"id-1": 100, "id-2": 250, "id-3": 0}
    assert section_prices(sections, ["Pit=9"], "50") == {"id-1": 50, "id-2": 50, "id-3": 9}


def test_times_without_offset_are_read_in_the_given_zone() -> None:
    ts = parse_time("2031-07-01T20:00", zoneinfo.ZoneInfo("America/New_York"), "--start")
    assert ts.ToDatetime(dt.UTC) == dt.datetime(2031, 7, 2, 0, 0, tzinfo=dt.UTC)
    ts = parse_time("2031-07-01T20:00+02:00", zoneinfo.ZoneInfo("America/New_York"), "--start")
    assert ts.ToDatetime(dt.UTC) == dt.datetime(2031, 7, 1, 18, 0, tzinfo=dt.UTC)


def _render(sections: list[event_pb2.EventSection], seats: list[event_pb2.Seat], width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(render_seat_map(sections, seats, currency_code="EUR", width=width))
    return console.export_text()


def _reserved(
    section_id: str, rows: dict[str, int], sold: set[tuple[str, int]]
) -> list[event_pb2.Seat]:
    seats: list[event_pb2.Seat] = []
    for label, count in rows.items():
        for number in range(1, count + 1):
            status = (
                event_pb2.SEAT_STATUS_SOLD
                if (label, number) in sold
                else event_pb2.SEAT_STATUS_AVAILABLE
            )
            seats.append(
                event_pb2.Seat(
                    id=len(seats) + 1,
                    section_id=section_id,
                    row_label=label,
                    number=number,
                    status=status,
                )
            )
    return seats


def test_seat_map_wraps_rows_a_little_too_long() -> None:
    section = event_pb2.EventSection(
        section_id="s", name="Wide", kind=venue_pb2.SECTION_KIND_RESERVED, capacity=150
    )
    seats = _reserved("s", {"A": 150}, {("A", 150)})
    lines = _render([section], seats, width=80).splitlines()
    row_lines = [line.strip() for line in lines if line.strip()[:1] in ("A", FREE, SOLD)]
    # 80 columns leave 68 for cells next to the label and the "149/150" tail: three lines.
    assert [len(line) for line in row_lines] == [2 + 68, 68, 14 + 8]
    assert row_lines[0].startswith("A " + FREE)
    assert row_lines[2].endswith(FREE + SOLD + " 149/150")
    assert sum(line.count(FREE) for line in row_lines) == 149
    assert sum(line.count(SOLD) for line in row_lines) == 1
    assert all(len(line) <= 80 for line in lines)


def test_seat_map_draws_huge_rows_to_scale_on_one_line() -> None:
    section = event_pb2.EventSection(
        section_id="s", name="Arena", kind=venue_pb2.SECTION_KIND_RESERVED, capacity=12_000
    )
    # Row 1 has its first 100 seats sold, row 2 is half the length and all free.
    sold = {("1", n) for n in range(1, 101)}
    seats = _reserved("s", {"1": 8_000, "2": 4_000}, sold)
    out = _render([section], seats, width=100)
    # 86 columns for cells: 8,000 seats need 94 per cell, and row 2 is drawn half as long.
    assert "Arena  reserved · 0.00 EUR  (1 cell = 94 seats)" in out
    row1, row2 = _line(out, "1 "), _line(out, "2 ")
    assert row1.startswith(f"1 {SOLD}{MIXED}{FREE}")
    assert row1.endswith(" 7900/8000")
    assert row2 == "2 " + FREE * 43 + " 4000/4000"
    assert f"{MIXED} some sold (one cell = several seats)" in out
    assert "available 11900  sold 100  capacity 12000" in out
    assert all(len(line) <= 100 for line in out.splitlines())


def test_seat_map_general_admission_is_a_bar_and_ascii_works() -> None:
    section = event_pb2.EventSection(
        section_id="g",
        name="Field",
        kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION,
        capacity=50_000,
        price_minor=7_000,
    )
    seats = [
        event_pb2.Seat(
            id=n,
            section_id="g",
            status=event_pb2.SEAT_STATUS_SOLD if n == 1 else event_pb2.SEAT_STATUS_AVAILABLE,
        )
        for n in range(1, 50_001)
    ]
    console = Console(width=120, record=True, color_system=None, file=io.StringIO())
    console.print(render_seat_map([section], seats, currency_code="EUR", glyphs=ASCII_GLYPHS))
    out = console.export_text()
    assert "Field  general admission · 70.00 EUR" in out
    # One sale out of 50,000 still shows as one sold cell.
    assert "[#" + "-" * 49 + "]" in out
    assert "available 49999  sold 1  capacity 50000" in out
    assert "legend: o available  x sold  general admission: # sold - available" in out
    assert len(out.splitlines()) < 10
