"""ticketctl venues create / list / show, and the layout file format they read.

A layout file is YAML (or JSON, which YAML also reads) describing one venue:

    name: Little Theatre              # required
    address: 1 Stage Street, Bristol  # optional
    time_zone: Europe/London          # IANA name, required
    sections:
      - name: Stalls
        kind: reserved                # or general_admission; inferred from rows/capacity
        rows:
          - {label: A, seats: 12}
          - {label: B, seats: 14, seat_labels: [101, 102, ...]}   # exactly `seats` labels
          - {from: C, to: K, seats: 16, skip: [I]}               # rows C..K without I
      - name: Standing
        kind: general_admission
        capacity: 200

`rows` is a list of rows and ranges, or a single range. Ranges count letters like a
spreadsheet (A..Z, AA, AB, ...) or numbers (1..40, or 01..40 to keep the width). The file is
only reshaped here; the server checks the rules (unique names, counts, limits) and its
violations are printed with the section and row they point at. Examples: docs/layouts/.
"""

from __future__ import annotations

import argparse
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml
from rich.markup import escape
from rich.table import Table

from ticketing.cli.common import (
    CliError,
    add_target_args,
    console,
    describe_error,
    open_client,
    print_limited,
    take_listing,
)
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.v1 import venue_pb2

# Far above the server's 2,000 rows per section: it is there only so that a typo such as
# `to: ZZZZ` fails here in a moment instead of building a huge request.
MAX_RANGE_ROWS = 10_000

_VENUE_KEYS = frozenset({"name", "address", "time_zone", "sections"})
_SECTION_KEYS = frozenset({"name", "kind", "rows", "capacity"})
_ROW_KEYS = frozenset({"label", "seats", "seat_labels"})
_RANGE_KEYS = frozenset({"from", "to", "seats", "skip", "seat_labels"})
_KINDS = {
    "reserved": venue_pb2.SECTION_KIND_RESERVED,
    "general_admission": venue_pb2.SECTION_KIND_GENERAL_ADMISSION,
    "ga": venue_pb2.SECTION_KIND_GENERAL_ADMISSION,
}
_VIOLATION_PATH = re.compile(r"^venue\.sections\[(\d+)\](?:\.rows\[(\d+)\])?")


class LayoutError(CliError):
    """A layout file that cannot be read or has the wrong shape; lists every problem."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = [f"{source}: invalid layout"] + [f"  {p}" for p in problems]
        super().__init__(escape("\n".join(lines)))


def _letters_to_number(text: str) -> int:
    value = 0
    for ch in text.upper():
        value = value * 26 + (ord(ch) - ord("A") + 1)
    return value


def _number_to_letters(value: int, lower: bool) -> str:
    out = ""
    while value:
        value, rem = divmod(value - 1, 26)
        out = chr(ord("A") + rem) + out
    return out.lower() if lower else out


def expand_row_range(start: str, end: str) -> list[str]:
    """Labels from `start` to `end` inclusive: letters (A..Z, AA..) or numbers (1..40, 01..40).

    Raises ValueError when the ends are not the same kind, run backwards or span more than
    MAX_RANGE_ROWS labels.
    """
    if start.isdigit() and end.isdigit():
        first, last = int(start), int(end)
        # A leading zero in `from` asks for fixed-width labels (01, 02, ... 40).
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        if last - first + 1 > MAX_RANGE_ROWS:
            raise ValueError(f"spans more than {MAX_RANGE_ROWS} rows")
        if last < first:
            raise ValueError(f"runs backwards ({start} after {end})")
        return [str(n).zfill(width) for n in range(first, last + 1)]
    if start.isascii() and start.isalpha() and end.isascii() and end.isalpha():
        if start.islower() != end.islower():
            raise ValueError("from and to must have the same letter case")
        first, last = _letters_to_number(start), _letters_to_number(end)
        if last < first:
            raise ValueError(f"runs backwards ({start} after {end})")
        if last - first + 1 > MAX_RANGE_ROWS:
            raise ValueError(f"spans more than {MAX_RANGE_ROWS} rows")
        return [_number_to_letters(n, start.islower()) for n in range(first, last + 1)]
    raise ValueError("from and to must both be letters (A..Z, AA..) or both be numbers")


class _Reader:
    """Turns parsed YAML into a Venue message, collecting every shape problem with its path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def bad(self, path: str, why: str) -> None:
        self.problems.append(f"{path}: {why}")

    def mapping(self, value: object, path: str, allowed: frozenset[str]) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.bad(path, f"must be a mapping with keys {', '.join(sorted(allowed))}")
            return {}
        for key in value:
            if key not in allowed:
                self.bad(
                    f"{path}.{key}", f"unknown key; expected one of {', '.join(sorted(allowed))}"
                )
        return value

    def text(self, value: object, path: str, *, required: bool = True) -> str:
        # YAML turns unquoted 12 into an int (fine, it is a label) but `on`/`no` into booleans
        # and 1.5 into a float, which are almost certainly not what the author meant.
        if value is None:
            if required:
                self.bad(path, "is required")
            return ""
        if isinstance(value, bool) or not isinstance(value, str | int):
            self.bad(path, f"must be text (got {value!r}; quote it)")
            return ""
        return str(value)

    def count(self, value: object, path: str) -> int:
        if value is None:
            self.bad(path, "is required")
            return 0
        if isinstance(value, bool) or not isinstance(value, int):
            self.bad(path, f"must be a whole number (got {value!r})")
            return 0
        return value

    def seat_labels(self, value: object, path: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.bad(path, "must be a list of labels")
            return []
        return [self.text(v, f"{path}[{i}]") for i, v in enumerate(value)]

    def rows(self, value: object, path: str) -> list[venue_pb2.Row]:
        items = [value] if isinstance(value, Mapping) else value
        if not isinstance(items, list):
            self.bad(path, "must be a list of rows ({label, seats}) or ranges ({from, to, seats})")
            return []
        out: list[venue_pb2.Row] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if isinstance(value, list) else path
            if isinstance(item, Mapping) and ("from" in item or "to" in item):
                out += self.row_range(item, item_path)
                continue
            row = self.mapping(item, item_path, _ROW_KEYS)
            if not row:
                continue
            out.append(
                venue_pb2.Row(
                    label=self.text(row.get("label"), f"{item_path}.label"),
                    seat_count=self.count(row.get("seats"), f"{item_path}.seats"),
                    seat_labels=self.seat_labels(
                        row.get("seat_labels"), f"{item_path}.seat_labels"
                    ),
                )
            )
        return out

    def row_range(self, item: Mapping[str, Any], path: str) -> list[venue_pb2.Row]:
        self.mapping(item, path, _RANGE_KEYS)
        start = self.text(item.get("from"), f"{path}.from")
        end = self.text(item.get("to"), f"{path}.to")
        seats = self.count(item.get("seats"), f"{path}.seats")
        labels = self.seat_labels(item.get("seat_labels"), f"{path}.seat_labels")
        skip_value = item.get("skip", [])
        skip_list = skip_value if isinstance(skip_value, list) else [skip_value]
        skip = {self.text(s, f"{path}.skip") for s in skip_list}
        if not start or not end:
            return []
        try:
            names = expand_row_range(start, end)
        except ValueError as err:
            self.bad(path, str(err))
            return []
        return [
            venue_pb2.Row(label=name, seat_count=seats, seat_labels=labels)
            for name in names
            if name not in skip
        ]

    def section(self, value: object, path: str) -> venue_pb2.Section:
        data = self.mapping(value, path, _SECTION_KEYS)
        section = venue_pb2.Section(name=self.text(data.get("name"), f"{path}.name"))
        kind_text = data.get("kind")
        if kind_text is None:
            # Saying `rows` or `capacity` already says which kind is meant.
            if "rows" in data:
                kind_text = "reserved"
            elif "capacity" in data:
                kind_text = "general_admission"
        if kind_text is None:
            self.bad(f"{path}.kind", "is required (reserved or general_admission)")
            return section
        kind = _KINDS.get(str(kind_text).strip().lower().replace("-", "_").replace(" ", "_"))
        if kind is None:
            self.bad(f"{path}.kind", f"must be reserved or general_admission (got {kind_text!r})")
            return section
        section.kind = kind
        if kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION:
            section.capacity = self.count(data.get("capacity"), f"{path}.capacity")
            if "rows" in data:
                # Passed through so the server's own message explains the rule.
                section.rows.extend(self.rows(data["rows"], f"{path}.rows"))
        else:
            if "capacity" in data:
                self.bad(
                    f"{path}.capacity",
                    "is only for general_admission; a reserved section holds its rows' seats",
                )
            section.rows.extend(self.rows(data.get("rows", []), f"{path}.rows"))
        return section

    def venue(self, value: object) -> venue_pb2.Venue:
        data = self.mapping(value, "layout", _VENUE_KEYS)
        venue = venue_pb2.Venue(
            name=self.text(data.get("name"), "name"),
            address=self.text(data.get("address"), "address", required=False),
            time_zone=self.text(data.get("time_zone"), "time_zone"),
        )
        sections = data.get("sections")
        if not isinstance(sections, list) or not sections:
            self.bad("sections", "must be a non-empty list of sections")
            return venue
        venue.sections.extend(self.section(s, f"sections[{i}]") for i, s in enumerate(sections))
        return venue


def venue_from_layout(data: object, source: str = "layout") -> venue_pb2.Venue:
    """The Venue message a parsed layout describes; LayoutError lists every shape problem."""
    reader = _Reader()
    venue = reader.venue(data)
    if reader.problems:
        raise LayoutError(source, reader.problems)
    return venue


def load_layout(path: Path) -> venue_pb2.Venue:
    """Read a YAML or JSON layout file (see the module docstring for the format)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as err:
        raise CliError(escape(f"cannot read {path}: {err.strerror or err}")) from None
    try:
        data = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as err:
        kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
        raise LayoutError(str(path), [f"not valid {kind}: {err}"]) from None
    return venue_from_layout(data, str(path))


def locate_violations(venue: venue_pb2.Venue, fields: Sequence[str]) -> list[str]:
    """Where each server field path lands in the layout, by section name and row label.

    Ranges expand into many rows, so `venue.sections[1].rows[17]` would otherwise make the
    reader count rows by hand.
    """
    notes: list[str] = []
    seen: set[str] = set()
    for field in fields:
        match = _VIOLATION_PATH.match(field)
        if match is None or match.group(0) in seen:
            continue
        seen.add(match.group(0))
        section_index = int(match.group(1))
        if section_index >= len(venue.sections):
            continue
        section = venue.sections[section_index]
        where = f"section {section.name!r}"
        if match.group(2) is not None:
            row_index = int(match.group(2))
            if row_index < len(section.rows):
                where += f", row {section.rows[row_index].label!r}"
        notes.append(f"  {match.group(0)} is {where}")
    return notes


def _kind_name(kind: int) -> str:
    if kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION:
        return "general admission"
    if kind == venue_pb2.SECTION_KIND_RESERVED:
        return "reserved"
    return "?"


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}..{high}"


def layout_table(venue: venue_pb2.Venue) -> Table:
    """One line per section: kind, rows (count and first..last label), seats per row, places."""
    table = Table("section", "kind", "rows", "seats/row", "places")
    table.add_column("id", no_wrap=True, min_width=36)
    for section in venue.sections:
        capacity = section.capacity or sum(r.seat_count for r in section.rows)
        if section.kind == venue_pb2.SECTION_KIND_RESERVED and section.rows:
            rows = section.rows
            span = rows[0].label if len(rows) == 1 else f"{rows[0].label}..{rows[-1].label}"
            row_text = f"{len(rows)} ({span})"
            per_row = _span([r.seat_count for r in rows])
        else:
            row_text, per_row = "-", "-"
        table.add_row(
            escape(section.name),
            _kind_name(section.kind),
            escape(row_text),
            per_row,
            str(capacity),
            section.id or "(new)",
        )
    return table


def print_venue(venue: venue_pb2.Venue) -> None:
    """Venue header and its layout summary table."""
    capacity = venue.capacity or sum(
        s.capacity or sum(r.seat_count for r in s.rows) for s in venue.sections
    )
    console.print(f"[bold]{escape(venue.name)}[/]  {capacity} places  ({venue.time_zone})")
    if venue.address:
        console.print(f"  address: {escape(venue.address)}")
    if venue.id:
        console.print(f"  id: {venue.id}")
    console.print(layout_table(venue))


async def cmd_venues_create(args: argparse.Namespace) -> int:
    """`venues create --layout FILE [--dry-run]`: read the layout, create the venue, show it."""
    venue = load_layout(Path(args.layout))
    if args.dry_run:
        print_venue(venue)
        console.print("(dry run: nothing created)")
        return 0
    async with open_client(args) as client:
        try:
            # AIP-155: the server creates the venue once even if this call is resent.
            request = venue_pb2.CreateVenueRequest(venue=venue, request_id=str(uuid.uuid4()))
            with ticketing_errors():
                resp = await client.venues.CreateVenue(request)
        except TicketingError as err:
            if err.code != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            notes = locate_violations(venue, [v.field for v in err.field_violations])
            lines = [describe_error(err)]
            if notes:
                lines += [f"in {args.layout}:", *notes]
            raise CliError(escape("\n".join(lines))) from None
    console.print("venue created:")
    print_venue(resp.venue)
    return 0


async def cmd_venues_list(args: argparse.Namespace) -> int:
    """`venues list [--limit N]`: venues by name with capacity and section count."""
    table = Table("name", "places", "sections", "time zone")
    table.add_column("id", no_wrap=True, min_width=36)
    async with open_client(args) as client:
        venues, more = await take_listing(
            client.venues.ListVenues, venue_pb2.ListVenuesRequest(), lambda p: p.venues, args.limit
        )
    for v in venues:
        table.add_row(escape(v.name), str(v.capacity), str(len(v.sections)), v.time_zone, v.id)
    print_limited(table, len(venues), more)
    return 0


async def cmd_venues_show(args: argparse.Namespace) -> int:
    """`venues show ID`: the venue and its layout summary."""
    async with open_client(args) as client:
        resp = await client.venues.GetVenue(venue_pb2.GetVenueRequest(venue_id=args.venue_id))
    print_venue(resp.venue)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `venues create|list|show` to the ticketctl parser."""
    venues = sub.add_parser("venues", help="venues and their seating layouts")
    venues_sub = venues.add_subparsers(dest="venues_command", required=True)

    p = venues_sub.add_parser(
        "create",
        help="create a venue from a YAML or JSON layout file (ADMIN)",
        # The module docstring past its first line is the layout format reference.
        description="Create a venue (ADMIN) from a layout file.\n\n" + __doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--layout", required=True, metavar="FILE", help="layout file (.yaml or .json)")
    p.add_argument(
        "--dry-run", action="store_true", help="read the layout and show it; create nothing"
    )
    add_target_args(p)
    p.set_defaults(handler=cmd_venues_create)

    p = venues_sub.add_parser("list", help="list venues by name")
    p.add_argument("--limit", type=int, default=100)
    add_target_args(p)
    p.set_defaults(handler=cmd_venues_list)

    p = venues_sub.add_parser("show", help="show a venue and a summary of its layout")
    p.add_argument("venue_id")
    add_target_args(p)
    p.set_defaults(handler=cmd_venues_show)
