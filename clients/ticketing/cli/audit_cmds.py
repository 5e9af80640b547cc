"""`ticketctl audit list` (issue 15): who did what, when, to what, from which principal.

ADMIN sees every entry, SUPPORT the order entries, ORGANIZER the entries of their events.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re

from rich.markup import escape
from rich.table import Table

from ticketing.cli.common import (
    CliError,
    add_target_args,
    list_page_size,
    open_client,
    print_limited,
    take,
)
from ticketing.v1 import audit_pb2

_ACTOR_KIND = {
    audit_pb2.AUDIT_ACTOR_KIND_USER: "user",
    audit_pb2.AUDIT_ACTOR_KIND_PARTNER_KEY: "partner key",
    audit_pb2.AUDIT_ACTOR_KIND_DEVICE: "device",
    audit_pb2.AUDIT_ACTOR_KIND_SYSTEM: "system",
}
_RELATIVE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_KIND = re.compile(r"^[a-z_]+$")


def parse_when(text: str, option: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """An ISO 8601 time (UTC when it names no offset) or a span back from now: `90s`,
    `15m`, `2h`, `7d`."""
    text = text.strip()
    relative = _RELATIVE.match(text)
    if relative:
        span = dt.timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return (now or dt.datetime.now(dt.UTC)) - span
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(
            f"{option}: {text!r} is neither an ISO 8601 time nor a span like 15m, 2h, 7d"
        ) from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def parse_subject(text: str) -> tuple[str, str]:
    """(subject_kind, subject_id) from `KIND:ID`, a bare kind (`order`) or a bare id."""
    text = text.strip()
    if ":" in text:
        kind, _, subject_id = text.partition(":")
        return kind.strip(), subject_id.strip()
    if _KIND.match(text):
        return text, ""
    return "", text


def _actor(entry: audit_pb2.AuditEntry) -> str:
    kind = _ACTOR_KIND.get(entry.actor.kind, "?")
    if entry.actor.kind == audit_pb2.AUDIT_ACTOR_KIND_SYSTEM:
        return kind
    text = f"{kind} {entry.actor.id}"
    if entry.actor.key_id:
        text += f" (key {entry.actor.key_id})"
    return text


def _when(entry: audit_pb2.AuditEntry) -> str:
    return f"{entry.create_time.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"


def _as_json(entry: audit_pb2.AuditEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "create_time": entry.create_time.ToDatetime(dt.UTC).isoformat(),
        "actor": {
            "kind": _ACTOR_KIND.get(entry.actor.kind, "?"),
            "id": entry.actor.id,
            "key_id": entry.actor.key_id,
        },
        "action": entry.action,
        "subject": {"kind": entry.subject_kind, "id": entry.subject_id},
        "event_id": entry.event_id,
        "details": dict(entry.details),
    }


async def _list(args: argparse.Namespace) -> int:
    kind, subject_id = parse_subject(args.subject) if args.subject else ("", "")
    since = parse_when(args.since, "--since") if args.since else None
    until = parse_when(args.until, "--until") if args.until else None
    async with open_client(args) as client:
        entries, more = await take(
            client.iter_audit_entries(
                actor_id=args.actor or "",
                action=args.action or "",
                subject_kind=kind,
                subject_id=subject_id,
                event_id=args.event or "",
                start_time=since,
                end_time=until,
                page_size=list_page_size(args.limit),
            ),
            args.limit,
        )
    if args.json:
        for entry in entries:
            print(json.dumps(_as_json(entry), sort_keys=True))
        return 0
    table = Table("time", "actor", "action", "subject", "event", "details")
    for e in entries:
        details = ", ".join(f"{k}={v}" for k, v in sorted(e.details.items()))
        table.add_row(
            _when(e),
            _actor(e),
            e.action,
            f"{e.subject_kind} {e.subject_id}",
            e.event_id or "-",
            escape(details),
        )
    print_limited(table, len(entries), more)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `audit list`."""
    audit = sub.add_parser("audit", help="the audit log: who did what, when")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    p = audit_sub.add_parser(
        "list",
        help="audit entries, newest first (ADMIN all; SUPPORT orders; ORGANIZER own events)",
    )
    p.add_argument("--actor", metavar="ID", help="a user, partner, device or API key id")
    p.add_argument("--action", metavar="NAME", help="e.g. order.refunded, user.role_granted")
    p.add_argument(
        "--subject", metavar="KIND:ID", help="order:ID, a kind alone (order) or an id alone"
    )
    p.add_argument("--event", metavar="ID", help="only entries of this event")
    p.add_argument("--since", metavar="TIME", help="ISO 8601 time, or a span back: 15m, 2h, 7d")
    p.add_argument("--until", metavar="TIME", help="ISO 8601 time (exclusive), or a span back")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    add_target_args(p)
    p.set_defaults(handler=_list)
