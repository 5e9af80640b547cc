"""`ticketctl gates ...`: kiosk devices (create with a one-time enrollment token and its QR,
list, revoke) and an event's offline policy (issue 14)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ticketing.cli.common import add_target_args, open_client
from ticketing.cli.qr import terminal_qr
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `gates devices create|list|revoke` and `gates offline` to the ticketctl parser."""
    gates = sub.add_parser("gates", help="kiosk devices and offline admission")
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
