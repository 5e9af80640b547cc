"""Drawing an event's seat map in a terminal: pure functions from sections and seats to rich.

Nothing here talks to a server or a console, so a caller (or a test) decides the width and the
glyph set and gets back a renderable it can print or export as plain text. Money formatting
lives here too because the map shows section prices.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.text import Text

from ticketing.v1 import event_pb2, venue_pb2

# ISO 4217 minor-unit exponents that are not 2. Prices travel as integer minor units, so the
# exponent decides where the decimal point goes: 1250 is 12.50 EUR but 1250 JPY and 1.250 KWD.
_ZERO_DECIMALS = frozenset(
    {"BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND"}
    | {"VUV", "XAF", "XOF", "XPF"}
)
_THREE_DECIMALS = frozenset({"BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"})

# A row may span this many terminal lines with one cell per seat; longer rows are drawn to
# scale instead (one cell for several seats) so a 10,000-seat row stays one readable line.
MAX_WRAPPED_LINES = 3
_MIN_CELLS = 10
_GA_BAR_WIDTH = 50
_INDENT = "  "


def currency_exponent(currency_code: str) -> int:
    """Digits after the decimal point for `currency_code` (2 unless ISO 4217 says otherwise)."""
    code = currency_code.upper()
    if code in _ZERO_DECIMALS:
        return 0
    if code in _THREE_DECIMALS:
        return 3
    return 2


def format_money(minor: int, currency_code: str) -> str:
    """`minor` units as a decimal amount with the code, e.g. 1250 EUR -> "12.50 EUR"."""
    exponent = currency_exponent(currency_code)
    sign = "-" if minor < 0 else ""
    whole, fraction = divmod(abs(minor), 10**exponent)
    amount = f"{whole}.{fraction:0{exponent}d}" if exponent else str(whole)
    return f"{sign}{amount} {currency_code}".rstrip()


@dataclass(frozen=True)
class Glyphs:
    """The characters a map is drawn with; shapes differ so the map reads without colour too."""

    available: str
    sold: str
    mixed: str
    bar_sold: str
    bar_available: str
    held: str


# The sold mark is U+00D7 MULTIPLICATION SIGN: one column wide everywhere, unlike most crosses.
UNICODE_GLYPHS = Glyphs(
    available="●",
    sold="\u00d7",
    mixed="◐",
    bar_sold="█",
    bar_available="░",
    held="○",
)
ASCII_GLYPHS = Glyphs(available="o", sold="x", mixed="+", bar_sold="#", bar_available="-", held="h")

AVAILABLE_STYLE = "green"
SOLD_STYLE = "red"
HELD_STYLE = "magenta"
MIXED_STYLE = "yellow"


@dataclass(frozen=True)
class SectionCounts:
    """Places of one section as seen in the seats that were drawn."""

    available: int
    sold: int
    capacity: int
    held: int = 0


def count_seats(section: event_pb2.EventSection, seats: Sequence[event_pb2.Seat]) -> SectionCounts:
    """Available, held and sold places among `seats` (all of one section), with its capacity."""
    sold = sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_SOLD)
    held = sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_HELD)
    available = sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_AVAILABLE)
    return SectionCounts(available=available, sold=sold, capacity=section.capacity, held=held)


def _counts_line(counts: SectionCounts, label: str = "") -> Text:
    # Held places are named only when there are some: most maps (no holds) read as before.
    held: list[tuple[str, str] | str] = (
        ["  held ", (str(counts.held), HELD_STYLE)] if counts.held else []
    )
    return Text.assemble(
        _INDENT,
        (label, "bold"),
        "available ",
        (str(counts.available), AVAILABLE_STYLE),
        *held,
        "  sold ",
        (str(counts.sold), SOLD_STYLE),
        f"  capacity {counts.capacity}",
    )


def _rows_in_order(seats: Sequence[event_pb2.Seat]) -> list[tuple[str, list[event_pb2.Seat]]]:
    # Seat ids follow section, row, number as created, so the first appearance of a label is
    # the row's place in the venue; numbers are sorted anyway in case pages arrive unordered.
    rows: dict[str, list[event_pb2.Seat]] = {}
    for seat in seats:
        rows.setdefault(seat.row_label, []).append(seat)
    return [(label, sorted(row, key=lambda s: s.number)) for label, row in rows.items()]


def _cell(seats: Sequence[event_pb2.Seat], glyphs: Glyphs) -> tuple[str, str]:
    sold = sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_SOLD)
    held = sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_HELD)
    if sold == 0 and held == 0:
        return glyphs.available, AVAILABLE_STYLE
    if sold == len(seats):
        return glyphs.sold, SOLD_STYLE
    if held == len(seats):
        return glyphs.held, HELD_STYLE
    return glyphs.mixed, MIXED_STYLE


def _cells(seats: Sequence[event_pb2.Seat], seats_per_cell: int, glyphs: Glyphs) -> Text:
    text = Text(no_wrap=True, overflow="crop")
    for start in range(0, len(seats), seats_per_cell):
        glyph, style = _cell(seats[start : start + seats_per_cell], glyphs)
        text.append(glyph, style)
    return text


def _reserved_lines(
    seats: Sequence[event_pb2.Seat], width: int, glyphs: Glyphs
) -> tuple[list[Text], int]:
    """Row lines of a reserved section and how many seats one cell stands for (1 = exact)."""
    rows = _rows_in_order(seats)
    label_width = max(len(label) for label, _ in rows)
    longest = max(len(row) for _, row in rows)
    trailer_width = len(f" {longest}/{longest}")
    cells_width = max(_MIN_CELLS, width - len(_INDENT) - label_width - 1 - trailer_width)
    if longest <= cells_width * MAX_WRAPPED_LINES:
        per_cell, per_line = 1, cells_width
    else:
        # One scale for the whole section keeps rows proportional: a short row looks short.
        per_cell = math.ceil(longest / cells_width)
        per_line = cells_width * per_cell
    lines: list[Text] = []
    for label, row in rows:
        free = sum(1 for s in row if s.status == event_pb2.SEAT_STATUS_AVAILABLE)
        chunks = [row[i : i + per_line] for i in range(0, len(row), per_line)]
        for index, chunk in enumerate(chunks):
            line = Text(no_wrap=True, overflow="crop")
            shown = label if index == 0 else ""
            line.append(f"{_INDENT}{shown:>{label_width}} ", "bold" if index == 0 else "")
            line.append_text(_cells(chunk, per_cell, glyphs))
            if index == len(chunks) - 1:
                line.append(f" {free}/{len(row)}", "dim")
            lines.append(line)
    return lines, per_cell


def _ga_line(counts: SectionCounts, width: int, glyphs: Glyphs) -> Text:
    bar_width = max(_MIN_CELLS, min(_GA_BAR_WIDTH, width - len(_INDENT) - 2))
    total = max(counts.capacity, counts.available + counts.sold, 1)
    sold_cells = round(bar_width * counts.sold / total)
    # A single sale or a single free place must stay visible however large the section.
    if counts.sold and sold_cells == 0:
        sold_cells = 1
    if counts.available and sold_cells == bar_width:
        sold_cells = bar_width - 1
    return Text.assemble(
        _INDENT,
        "[",
        (glyphs.bar_sold * sold_cells, SOLD_STYLE),
        (glyphs.bar_available * (bar_width - sold_cells), AVAILABLE_STYLE),
        "]",
        no_wrap=True,
        overflow="crop",
    )


def _title(section: event_pb2.EventSection, currency_code: str) -> Text:
    kind = (
        "general admission"
        if section.kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION
        else "reserved"
    )
    return Text.assemble(
        (section.name, "bold underline"),
        f"  {kind} · {format_money(section.price_minor, currency_code)}",
    )


def _legend(glyphs: Glyphs, *, with_mixed: bool, with_bar: bool, with_held: bool = False) -> Text:
    parts: list[tuple[str, str] | str] = [
        "legend: ",
        (glyphs.available, AVAILABLE_STYLE),
        " available  ",
        (glyphs.sold, SOLD_STYLE),
        " sold",
    ]
    if with_held:
        parts[3:3] = [(glyphs.held, HELD_STYLE), " held  "]
    if with_mixed:
        parts += ["  ", (glyphs.mixed, MIXED_STYLE), " some sold (one cell = several seats)"]
    if with_bar:
        parts += [
            "  general admission: ",
            (glyphs.bar_sold, SOLD_STYLE),
            " sold ",
            (glyphs.bar_available, AVAILABLE_STYLE),
            " available",
        ]
    return Text.assemble(*parts)


def render_seat_map(
    sections: Sequence[event_pb2.EventSection],
    seats: Iterable[event_pb2.Seat],
    *,
    currency_code: str,
    width: int = 100,
    glyphs: Glyphs = UNICODE_GLYPHS,
) -> RenderableType:
    """The seat map of `sections` drawn from `seats`, fitting in `width` columns.

    Reserved sections get one line per row: the label, then one cell per seat in number order
    (green available, magenta held, red sold), then available/total for the row. A row too long for
    MAX_WRAPPED_LINES lines is drawn to scale instead, one cell per several seats, and the
    section title says how many. General-admission sections are one bar, never one cell per
    place. Every section ends with its available, sold and capacity counts taken from `seats`;
    a legend and, for several sections, the totals come last. Seats of sections not listed
    are ignored; a listed section without seats is marked as such.
    """
    by_section: dict[str, list[event_pb2.Seat]] = {s.section_id: [] for s in sections}
    for seat in seats:
        if seat.section_id in by_section:
            by_section[seat.section_id].append(seat)
    parts: list[RenderableType] = []
    any_scaled = any_bar = False
    total = SectionCounts(0, 0, 0)
    for section in sections:
        section_seats = by_section[section.section_id]
        counts = count_seats(section, section_seats)
        total = SectionCounts(
            total.available + counts.available,
            total.sold + counts.sold,
            total.capacity + counts.capacity,
            total.held + counts.held,
        )
        title = _title(section, currency_code)
        if not section_seats:
            parts += [title, Text(f"{_INDENT}(no places listed)", "dim"), Text("")]
            continue
        if section.kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION:
            any_bar = True
            parts += [title, _ga_line(counts, width, glyphs)]
        else:
            lines, per_cell = _reserved_lines(section_seats, width, glyphs)
            if per_cell > 1:
                any_scaled = True
                title.append(f"  (1 cell = {per_cell} seats)", "dim")
            parts += [title, *lines]
        parts += [_counts_line(counts), Text("")]
    parts.append(_legend(glyphs, with_mixed=any_scaled, with_bar=any_bar, with_held=total.held > 0))
    if len(sections) > 1:
        parts.append(_counts_line(total, label="total: "))
    return Group(*parts)


_STATUS_NAMES: dict[int, str] = {
    event_pb2.SEAT_STATUS_AVAILABLE: "AVAILABLE",
    event_pb2.SEAT_STATUS_HELD: "HELD",
    event_pb2.SEAT_STATUS_SOLD: "SOLD",
    event_pb2.SEAT_STATUS_ALLOCATED: "ALLOCATED",
}


def status_name(status: int) -> str:
    """AVAILABLE, HELD, SOLD or ALLOCATED (the enum name without its prefix)."""
    return _STATUS_NAMES.get(status, str(status))


class LiveSeatMap:
    """An event's seats (from ListSeats: rows and numbers, which changes do not carry) kept
    current by WatchSeats changes; `render` draws it like `render_seat_map`.

    `sequence` is the last change applied (a snapshot counts once complete); `changes` counts
    the live changes applied. Changes of seats not in the map (another section than the one
    drawn) are ignored.
    """

    def __init__(self, seats: Iterable[event_pb2.Seat]) -> None:
        self._seats = {seat.id: seat for seat in seats}
        self.sequence = 0
        self.changes = 0

    def apply(self, change: event_pb2.SeatChange) -> event_pb2.Seat | None:
        """Set the seat's status from `change`; returns the seat, or None if not drawn."""
        if not change.snapshot or change.snapshot_complete:
            self.sequence = change.sequence
        if not change.snapshot:
            self.changes += 1
        seat = self._seats.get(change.seat_id)
        if seat is not None:
            seat.status = change.status
        return seat

    @property
    def seats(self) -> list[event_pb2.Seat]:
        """The seats as they are now, in inventory order."""
        return list(self._seats.values())

    def totals(self) -> SectionCounts:
        """Available, held and sold places over the whole map (capacity = seats drawn)."""
        seats = self._seats.values()
        return SectionCounts(
            available=sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_AVAILABLE),
            sold=sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_SOLD),
            capacity=len(self._seats),
            held=sum(1 for s in seats if s.status == event_pb2.SEAT_STATUS_HELD),
        )


def describe_change(change: event_pb2.SeatChange, seat: event_pb2.Seat | None) -> str:
    """One line for a change, for logs and pipes: `#12 SOLD seat 345 Stalls A12`."""
    where = ""
    if seat is not None:
        where = " ".join(part for part in (seat.section_name, seat.label) if part)
    line = f"#{change.sequence} {status_name(change.status)} seat {change.seat_id}"
    return f"{line} {where}" if where else line
