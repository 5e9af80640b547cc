"""Screens for the kiosk: a rich full-width panel per scan, or one plain line per scan.

Both implement `KioskObserver` (link and retry notices) plus `started`, `show`, `info`,
`warning` and `summary`; neither knows how a scan is validated.

Plain lines (stable, for scripts and tests; fields are separated by one space and the last
field may contain spaces):

    INFO <text>
    WARN <text>
    STATUS SERVER UNREACHABLE -- retrying (<status>: <details>)
    STATUS SERVER OK
    RETRY <scan_id> attempt=<n> <STATUS> <seconds>s left
    ADMIT <scan_id> <seat>
    REJECT <RESULT> <scan_id> <reason>[ | <seat>]
    UNRESOLVED <scan_id> <last error>
    OFFLINE waiting=<n>                       (after a scan judged offline)
    STATUS OFFLINE waiting=<n>                (switched to offline admission)
    STATUS ONLINE waiting=<n>                 (the server answers again)
    UPLOAD accepted=<n> conflict=<n> revoked=<n> invalid=<n> waiting=<n>
    STATUS DEVICE REVOKED
    OFFLINE admitted=<n> waiting=<n>          (before SUMMARY, if any)
    SUMMARY admitted=<n> rejected=<n> unresolved=<n> empty_lines=<n> [<RESULT>=<n> ...]
    PENDING <n> scan(s) left for the next start

<seat> is "Section/Row/Seat", or the section alone for general admission.
"""

from __future__ import annotations

import datetime as dt
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.align import Align
from rich.box import HEAVY
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ticketing.kiosk.switching import Mode
from ticketing.kiosk.views import REJECTIONS, Counts, Outcome, ScanResultView, local_clock

UPLOAD_RESULTS = ("ACCEPTED", "CONFLICT", "REVOKED", "INVALID")


def upload_text(results: Counter[str], waiting: int) -> str:
    """accepted=<n> conflict=<n> revoked=<n> invalid=<n> waiting=<n>"""
    counts = " ".join(f"{r.lower()}={results[r]}" for r in UPLOAD_RESULTS)
    return f"{counts} waiting={waiting}"


@dataclass(frozen=True)
class StartInfo:
    """What the kiosk is set up for, shown once at start."""

    target: str
    event_id: str
    event_name: str
    gate_id: str
    user: str
    journal: Path
    pending: int
    doors_open_time: dt.datetime | None = None


def _label(outcome: Outcome) -> str:
    return outcome.value.replace("_", " ")


class PlainRenderer:
    """One line per event on a text stream, flushed at once (pipes see lines as they come)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out or sys.stdout

    def _line(self, text: str) -> None:
        # Keep one record per line whatever the server put in a message.
        self._out.write(text.replace("\n", " ") + "\n")
        self._out.flush()

    def started(self, info: StartInfo) -> None:
        self._line(
            f"INFO gate={info.gate_id} event={info.event_id} name={info.event_name!r} "
            f"user={info.user} target={info.target} journal={info.journal}"
        )
        if info.doors_open_time is not None:
            self._line(f"INFO doors open {info.doors_open_time.astimezone().isoformat()}")
        if info.pending:
            self._line(f"INFO resubmitting {info.pending} pending scan(s) from the journal")

    def info(self, text: str) -> None:
        self._line(f"INFO {text}")

    def warning(self, text: str) -> None:
        self._line(f"WARN {text}")

    def link_changed(self, reachable: bool, detail: str) -> None:
        if reachable:
            self._line("STATUS SERVER OK")
        else:
            self._line(f"STATUS SERVER UNREACHABLE -- retrying ({detail})")

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        self._line(f"RETRY {scan_id} attempt={attempt} {status} {remaining:.1f}s left")

    def mode_changed(self, mode: Mode, waiting: int) -> None:
        self._line(f"STATUS {mode.value} waiting={waiting}")

    def uploaded(self, results: Counter[str], waiting: int) -> None:
        self._line(f"UPLOAD {upload_text(results, waiting)}")

    def device_revoked(self) -> None:
        self._line("STATUS DEVICE REVOKED")

    def show(self, view: ScanResultView, counts: Counts) -> None:
        seat = view.seat.compact() if view.seat else ""
        if view.outcome is Outcome.ADMITTED:
            self._line(f"ADMIT {view.scan_id} {seat}".rstrip())
        elif view.outcome is Outcome.UNRESOLVED:
            self._line(f"UNRESOLVED {view.scan_id} {view.error}")
        else:
            tail = f" | {seat}" if seat else ""
            self._line(f"REJECT {view.outcome.value} {view.scan_id} {view.reason}{tail}")
        if view.offline:
            self._line(f"OFFLINE waiting={counts.waiting}")

    def summary(self, counts: Counts, pending: int) -> None:
        if counts.offline_admitted or counts.waiting:
            self._line(f"OFFLINE admitted={counts.offline_admitted} waiting={counts.waiting}")
        by_reason = " ".join(
            f"{o.value}={counts.rejected[o]}" for o in REJECTIONS if counts.rejected[o]
        )
        self._line(
            f"SUMMARY admitted={counts.admitted} rejected={counts.rejected_total} "
            f"unresolved={counts.unresolved} empty_lines={counts.empty_lines} {by_reason}".rstrip()
        )
        if pending:
            self._line(f"PENDING {pending} scan(s) left for the next start")


# A 5-row block font for the few words the big panel shows; a gate needs to be read from
# a couple of metres away, which a bold 1-row word in a terminal is not.
_FONT: dict[str, tuple[str, ...]] = {
    "A": (" ### ", "#   #", "#####", "#   #", "#   #"),
    "C": (" ####", "#    ", "#    ", "#    ", " ####"),
    "D": ("#### ", "#   #", "#   #", "#   #", "#### "),
    "E": ("#####", "#    ", "#### ", "#    ", "#####"),
    "I": ("#####", "  #  ", "  #  ", "  #  ", "#####"),
    "J": ("#####", "   # ", "   # ", "#  # ", " ##  "),
    "K": ("#   #", "#  # ", "###  ", "#  # ", "#   #"),
    "M": ("#   #", "## ##", "# # #", "#   #", "#   #"),
    "N": ("#   #", "##  #", "# # #", "#  ##", "#   #"),
    "O": (" ### ", "#   #", "#   #", "#   #", " ### "),
    "R": ("#### ", "#   #", "#### ", "#  # ", "#   #"),
    "S": (" ####", "#    ", " ### ", "    #", "#### "),
    "T": ("#####", "  #  ", "  #  ", "  #  ", "  #  "),
    "V": ("#   #", "#   #", "#   #", " # # ", "  #  "),
    "W": ("#   #", "#   #", "# # #", "## ##", "#   #"),
    " ": ("  ", "  ", "  ", "  ", "  "),
}


def block_letters(word: str) -> str | None:
    """`word` in 5-row block letters, or None if the font lacks a letter."""
    if any(ch not in _FONT for ch in word):
        return None
    rows = ["  ".join(_FONT[ch][r] for ch in word).replace("#", "\u2588") for r in range(5)]
    return "\n".join(rows)


_STYLES = {
    "ADMIT": "bold white on green4",
    "REJECT": "bold white on red3",
    "NO ANSWER": "bold black on yellow3",
}


class RichRenderer:
    """A big coloured panel per scan with the reason, the seat and the running counts.

    On a terminal each result replaces the screen, so the newest answer is always at the
    top where staff look; into a pipe or file it just appends.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._info: StartInfo | None = None
        self._reachable: bool | None = None
        self._detail = ""
        self._mode = Mode.ONLINE
        self._waiting = 0
        self._revoked = False

    def _header(self) -> Text:
        info = self._info
        if info is None:
            return Text("")
        return Text.assemble(
            ("GATE ", "dim"),
            (info.gate_id, "bold"),
            ("  ·  ", "dim"),
            (info.event_name or info.event_id, "bold"),
            ("  ·  ", "dim"),
            (info.user, ""),
            ("  ·  journal ", "dim"),
            (str(info.journal), "dim"),
        )

    def _link_line(self) -> Text:
        if self._revoked:
            return Text(" DEVICE REVOKED ", style="bold white on red")
        if self._mode is Mode.OFFLINE:
            return Text(
                f" OFFLINE — admitting signed codes by itself  ·  waiting={self._waiting} ",
                style="bold black on yellow3",
            )
        if self._reachable is False:
            return Text(
                f" SERVER UNREACHABLE — retrying  ({self._detail}) ", style="bold white on red"
            )
        if self._reachable is True:
            return Text("server OK", style="green")
        return Text("server: checking…", style="dim")

    def started(self, info: StartInfo) -> None:
        self._info = info
        self.console.print(self._header())
        if info.doors_open_time is not None:
            self.console.print(f"Doors open {info.doors_open_time.astimezone():%Y-%m-%d %H:%M}")
        if info.pending:
            self.console.print(
                f"[bold yellow]Re-submitting {info.pending} scan(s) a crash left unfinished…"
            )
        self.console.print("[dim]Scan a ticket (Ctrl-C to close the gate).")

    def info(self, text: str) -> None:
        self.console.print(f"[cyan]{text}", highlight=False)

    def warning(self, text: str) -> None:
        self.console.print(f"[bold yellow]{text}", highlight=False)

    def link_changed(self, reachable: bool, detail: str) -> None:
        was = self._reachable
        self._reachable = reachable
        self._detail = detail
        if not reachable:
            self.console.print(self._link_line())
        elif was is False:
            self.console.print(Text(" SERVER REACHABLE AGAIN ", style="bold white on green4"))

    def mode_changed(self, mode: Mode, waiting: int) -> None:
        self._mode = mode
        self._waiting = waiting
        self.console.print(
            self._link_line()
            if mode is Mode.OFFLINE
            else Text(
                f" ONLINE again  ·  {waiting} offline scan(s) to upload ",
                style="bold white on green4",
            )
        )

    def uploaded(self, results: Counter[str], waiting: int) -> None:
        self._waiting = waiting
        self.console.print(f"[cyan]uploaded offline scans: {upload_text(results, waiting)}")

    def device_revoked(self) -> None:
        self._revoked = True
        self.console.print(self.revoked_panel())

    def revoked_panel(self) -> Panel:
        """The screen of a kiosk whose device credential was revoked."""
        big = block_letters("REVOKED") if self.console.width >= 70 else None
        style = _STYLES["REJECT"]
        return Panel(
            Group(
                Align.center(Text(big or "DEVICE REVOKED", style=style)),
                Text(""),
                Align.center(
                    Text("DEVICE REVOKED: this kiosk may no longer admit anyone.", style=style)
                ),
                Align.center(
                    Text("Ask the organizer for a new enrollment token (--enroll).", style=style)
                ),
            ),
            box=HEAVY,
            style=style,
            expand=True,
        )

    def retrying(self, scan_id: str, attempt: int, status: str, remaining: float) -> None:
        self.console.print(
            f"[yellow]scan {scan_id[:8]}… attempt {attempt} failed ({status}); "
            f"retrying, {remaining:.0f} s left",
            highlight=False,
        )

    def panel(self, view: ScanResultView) -> Panel:
        """The big panel for one result (public so it can be tested on its own)."""
        if view.outcome is Outcome.ADMITTED:
            word = "ADMIT"
        elif view.outcome is Outcome.UNRESOLVED:
            word = "NO ANSWER"
        else:
            word = "REJECT"
        style = _STYLES[word]
        width = self.console.width
        big = block_letters(word) if width >= 70 else None
        parts: list[RenderableType] = [Text("")]
        parts.append(Align.center(Text(big or word, style=style)))
        parts.append(Text(""))
        if view.outcome is not Outcome.ADMITTED:
            parts.append(Align.center(Text(view.reason, style=style)))
        if view.offline:
            parts.append(Align.center(Text("OFFLINE (checked by this kiosk)", style=style)))
        if view.seat is not None:
            parts.append(Align.center(Text(view.seat.text(), style=style)))
        if view.repeat:
            parts.append(Align.center(Text("(answer repeated for a retried scan)", style=style)))
        parts.append(Text(""))
        scan_time = f"  {local_clock(view.scan_time)}" if view.scan_time else ""
        return Panel(
            Group(*parts),
            box=HEAVY,
            style=style,
            subtitle=f"scan {view.scan_id}{scan_time}",
            expand=True,
        )

    def counts_line(self, counts: Counts) -> Text:
        """admitted / rejected by reason / unresolved, for under the panel."""
        text = Text.assemble(("admitted ", "dim"), (str(counts.admitted), "bold green"))
        text.append("   rejected ", style="dim")
        text.append(str(counts.rejected_total), style="bold red")
        reasons = [f"{_label(o)} {counts.rejected[o]}" for o in REJECTIONS if counts.rejected[o]]
        if reasons:
            text.append(" (" + " · ".join(reasons) + ")", style="red")
        if counts.unresolved:
            text.append("   unresolved ", style="dim")
            text.append(str(counts.unresolved), style="bold yellow")
        if counts.offline_admitted or counts.waiting:
            text.append(f"   offline {counts.offline_admitted}", style="yellow")
            text.append(f"   waiting={counts.waiting}", style="bold yellow")
        return text

    def show(self, view: ScanResultView, counts: Counts) -> None:
        if self.console.is_terminal:
            self.console.clear()
            self.console.print(self._header())
        self._waiting = counts.waiting
        self.console.print(self.panel(view))
        self.console.print(self.counts_line(counts))
        if self.console.is_terminal or view.offline:
            self.console.print(self._link_line())

    def summary(self, counts: Counts, pending: int) -> None:
        self.console.print()  # off the line a ^C may have left the cursor on
        table = Table(title="Gate closed", box=HEAVY)
        table.add_column("result")
        table.add_column("scans", justify="right")
        table.add_row(Text("ADMITTED", style="bold green"), str(counts.admitted))
        for outcome in REJECTIONS:
            if counts.rejected[outcome]:
                table.add_row(Text(_label(outcome), style="red"), str(counts.rejected[outcome]))
        if counts.unresolved:
            table.add_row(Text("UNRESOLVED", style="yellow"), str(counts.unresolved))
        table.add_row(Text("total", style="bold"), str(counts.scans))
        if counts.offline_admitted or counts.waiting:
            table.add_row(Text("admitted offline", style="yellow"), str(counts.offline_admitted))
            table.add_row(Text("waiting for upload", style="yellow"), str(counts.waiting))
        self.console.print(table)
        if pending:
            self.console.print(
                f"[yellow]{pending} scan(s) still pending: they are re-submitted on the next "
                "start with the same journal."
            )
