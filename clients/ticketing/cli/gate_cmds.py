"""`ticketctl gates ...`: kiosk devices (create with a one-time enrollment token and its QR,
list, revoke), an event's offline policy (issue 14) and its gates live (`gates watch`,
issue 15)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses

from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ticketing.cli.common import (
    CliError,
    StreamBreaks,
    add_target_args,
    err_console,
    open_client,
    redraw_live,
)
from ticketing.cli.qr import terminal_qr
from ticketing.client import Client
from ticketing.v1 import gate_pb2

console = Console()

_STATES = {
    gate_pb2.DEVICE_STATE_PENDING: "pending",
    gate_pb2.DEVICE_STATE_ENROLLED: "enrolled",
    gate_pb2.DEVICE_STATE_EXPIRED: "expired",
    gate_pb2.DEVICE_STATE_REVOKED: "revoked",
}


async def _create(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        reply = await client.gate.CreateDevice(
            gate_pb2.CreateDeviceRequest(
                event_id=args.event, gate_id=args.gate, display_name=args.name
            )
        )
    d = reply.device
    console.print(f"device {d.id} for gate {d.gate_id!r} of event {d.event_id}")
    console.print(
        "enrollment token (shown once; valid until "
        f"{d.enrollment_expire_time.ToDatetime():%Y-%m-%d %H:%M} UTC):"
    )
    print(reply.enrollment_token)
    if not args.no_qr:
        print(terminal_qr(reply.enrollment_token))
    console.print(f"on the kiosk: ticketing-kiosk --enroll {reply.enrollment_token}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        reply = await client.gate.ListDevices(
            gate_pb2.ListDevicesRequest(event_id=args.event, page_size=1000)
        )
    table = Table("id", "gate", "name", "state")
    for d in reply.devices:
        table.add_row(d.id, d.gate_id, d.display_name, _STATES.get(d.state, "?"))
    console.print(table)
    return 0


async def _revoke(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        reply = await client.gate.RevokeDevice(gate_pb2.RevokeDeviceRequest(device_id=args.device))
    console.print(f"device {reply.device.id}: {_STATES.get(reply.device.state, '?')}")
    return 0


async def _offline(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        reply = await client.gate.SetOfflineAdmission(
            gate_pb2.SetOfflineAdmissionRequest(event_id=args.event, allowed=args.allow)
        )
    console.print(f"offline admission {'allowed' if reply.allowed else 'refused'}")
    return 0


# As `events seats --watch`: a rush at the doors is drawn as a few frames a second.


@dataclasses.dataclass
class GateCounts:
    """One gate's counts as the stream last gave them."""

    stats: gate_pb2.GateStats
    inside: int


class GateBoard:
    """What `gates watch` has seen: each gate's latest counts (from the snapshot, then from
    each scan, which carries its gate's counts after it), the sequence and the scans seen."""

    def __init__(self, after_sequence: int = 0) -> None:
        self.gates: dict[str, GateCounts] = {}
        self.sequence = after_sequence
        self.scans = 0

    def apply(self, change: gate_pb2.GateChange) -> None:
        """Take one message of the stream (snapshot entry, scan or caught_up marker)."""
        self.sequence = max(self.sequence, change.sequence)
        if change.caught_up:
            return
        # A snapshot entry is "the gate is now" (one may come again, whole, after a break
        # before the first scan): replacing, never adding, keeps the counts right.
        self.gates[change.gate_id] = GateCounts(change.gate, change.inside)
        if not change.snapshot:
            self.scans += 1

    def table(self) -> Table:
        """Gates by id with their counts, and the totals."""
        table = Table("gate")
        for column in ("admitted", "rejected", "offline", "conflicts", "inside"):
            table.add_column(column, justify="right")
        table.add_column("last scan", no_wrap=True)
        for gate_id in sorted(self.gates):
            c = self.gates[gate_id]
            last = c.stats.last_scan_time
            table.add_row(
                escape(gate_id),
                str(c.stats.admitted),
                str(c.stats.rejected),
                str(c.stats.offline_admitted),
                str(c.stats.conflicts),
                str(c.inside),
                f"{last.ToDatetime():%H:%M:%S} UTC" if last.seconds else "-",
            )
        every = list(self.gates.values())
        table.add_row(
            "all",
            str(sum(c.stats.admitted for c in every)),
            str(sum(c.stats.rejected for c in every)),
            str(sum(c.stats.offline_admitted for c in every)),
            str(sum(c.stats.conflicts for c in every)),
            str(sum(c.inside for c in every)),
            "",
            style="bold",
        )
        return table


def describe_gate_change(change: gate_pb2.GateChange) -> str:
    """One line per message: `#5 ADMITTED gate north: admitted 2 rejected 0 inside 2` for a
    scan (` offline` when uploaded), `gate north at #2: ...` for a snapshot entry."""
    counts = (
        f"admitted {change.gate.admitted} rejected {change.gate.rejected} inside {change.inside}"
    )
    if change.snapshot:
        return f"gate {change.gate_id} at #{change.sequence}: {counts}"
    result = gate_pb2.ValidationResult.Name(change.result).removeprefix("VALIDATION_RESULT_")
    offline = " offline" if change.offline else ""
    return f"#{change.sequence} {result}{offline} gate {change.gate_id}: {counts}"


async def _watch(args: argparse.Namespace) -> int:
    """`gates watch EVENT [--after SEQ]`: on a terminal a table of the gates' counts redrawn
    live; piped, one line per scan (snapshot entries as `gate G at #N` lines)."""
    if args.after < 0:
        raise CliError("--after: a sequence is 0 or more (0: a snapshot of the counts first)")
    board = GateBoard(args.after)
    breaks = StreamBreaks(echo=not console.is_terminal)
    try:
        async with open_client(args) as client:
            if console.is_terminal:
                await _redraw_gates(client, args.event, args.after, board, breaks)
            else:
                async for change in client.watch_gate(
                    args.event, args.after, on_resume=breaks.on_resume
                ):
                    board.apply(change)
                    if change.caught_up:
                        console.print(f"caught up at #{change.sequence}", highlight=False)
                    else:
                        console.print(escape(describe_gate_change(change)), highlight=False)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task; say where it stopped and let main() exit 130.
        err_console.print(
            f"stopped after #{board.sequence} ({board.scans} scans, {breaks.count} reconnections)",
            highlight=False,
        )
        raise
    return 0


async def _redraw_gates(
    client: Client, event_id: str, after: int, board: GateBoard, breaks: StreamBreaks
) -> None:
    def frame() -> RenderableType:
        status = f"live · #{board.sequence} · {board.scans} scans"
        if breaks.count:
            status += f" · {breaks.count} reconnections ({breaks.last})"
        return Group(
            Text(f"gates of event {event_id}"),
            board.table(),
            Text(f"{status} · Ctrl-C to stop", "dim"),
        )

    await redraw_live(
        console, client.watch_gate(event_id, after, on_resume=breaks.on_resume), board.apply, frame
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gates devices create|list|revoke`, `gates offline` and `gates watch` to the
    ticketctl parser."""
    gates = sub.add_parser("gates", help="kiosk devices, offline admission, live gate counts")
    gates_sub = gates.add_subparsers(dest="gates_command", required=True)
    devices = gates_sub.add_parser("devices", help="kiosk devices of an event's gates")
    devices_sub = devices.add_subparsers(dest="devices_command", required=True)

    p = devices_sub.add_parser("create", help="register a kiosk; prints its enrollment token")
    p.add_argument("event", help="event id")
    p.add_argument("gate", help="gate name, e.g. north-1")
    p.add_argument("--name", required=True, help="what people call this kiosk")
    p.add_argument("--no-qr", action="store_true", help="do not draw the token as a QR code")
    add_target_args(p)
    p.set_defaults(handler=_create)

    p = devices_sub.add_parser("list", help="an event's kiosks and their state")
    p.add_argument("event", help="event id")
    add_target_args(p)
    p.set_defaults(handler=_list)

    p = devices_sub.add_parser("revoke", help="refuse a kiosk from its next call on")
    p.add_argument("device", help="device id")
    add_target_args(p)
    p.set_defaults(handler=_revoke)

    p = gates_sub.add_parser("offline", help="allow or refuse offline admission for an event")
    p.add_argument("event", help="event id")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--allow", action="store_true", dest="allow")
    group.add_argument("--refuse", action="store_false", dest="allow")
    add_target_args(p)
    p.set_defaults(handler=_offline)

    p = gates_sub.add_parser(
        "watch",
        help="an event's gates live: counts per gate (ADMIN, its ORGANIZER, assigned staff)",
        description="On a terminal, a table of each gate's counts redrawn as scans commit; "
        "piped, one line per scan with its gate's counts after it. Breaks are resumed with "
        "nothing missed or repeated. Ctrl-C stops.",
    )
    p.add_argument("event", help="event id")
    p.add_argument(
        "--after",
        type=int,
        default=0,
        metavar="SEQ",
        help="only the scans after this sequence: gates show once they scan (default 0: a "
        "snapshot of every gate's counts first)",
    )
    add_target_args(p)
    p.set_defaults(handler=_watch)
