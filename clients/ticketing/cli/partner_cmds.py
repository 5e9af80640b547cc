"""`ticketctl partners ...` and `ticketctl events allocate|allocations|release` (issue 13):
partner resellers, their API keys, and places set aside for their channels.

ADMIN manages partners with a signed-in session. A partner manages its own keys with one of
them: set TICKETING_API_KEY and `partners keys ...` authenticate as the partner.
"""

from __future__ import annotations

import argparse
import datetime as dt

from rich.table import Table

from ticketing.cli.common import (
    API_KEY_ENV,
    CliError,
    add_target_args,
    console,
    list_page_size,
    open_client_or_partner,
    print_limited,
    take,
)
from ticketing.client import Client
from ticketing.v1 import partner_pb2

_STATUS = {
    partner_pb2.PARTNER_STATUS_ACTIVE: "active",
    partner_pb2.PARTNER_STATUS_SUSPENDED: "suspended",
}


def _client(args: argparse.Namespace) -> Client:
    """As the partner when TICKETING_API_KEY is set, else the signed-in user."""
    return open_client_or_partner(args)


def _when(ts: object) -> str:
    if not getattr(ts, "seconds", 0):
        return "-"
    return f"{ts.ToDatetime():%Y-%m-%d %H:%M:%S} UTC"  # type: ignore[attr-defined]


async def _create(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        partner = await client.create_partner(args.name, args.email)
    console.print(f"partner {partner.id} ({partner.display_name}) {_STATUS[partner.status]}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        partners, more = await take(
            client.iter_partners(page_size=list_page_size(args.limit)), args.limit
        )
    table = Table("id", "name", "contact", "status", "created")
    for p in partners:
        table.add_row(
            p.id, p.display_name, p.contact_email, _STATUS.get(p.status, "?"), _when(p.create_time)
        )
    print_limited(table, len(partners), more)
    return 0


async def _set_status(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        partner = await client.set_partner_status(args.partner, suspended=args.suspend)
    console.print(f"partner {partner.id}: {_STATUS[partner.status]}")
    return 0


async def _update(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        partner = await client.update_partner(
            args.partner,
            public_sales=args.public_sales,
            max_concurrent_rpcs=args.max_concurrent,
            rate_per_second=args.rate,
        )
    in_flight = (
        partner.max_concurrent_rpcs if partner.HasField("max_concurrent_rpcs") else "default"
    )
    rate = partner.rate_per_second if partner.HasField("rate_per_second") else "default"
    budget = f"{in_flight} in flight, {rate}/s"
    public = "may sell publicly" if partner.public_sales else "allocations only"
    console.print(f"partner {partner.id}: {public}; budget {budget}")
    return 0


async def _keys_create(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        created = await client.create_api_key(args.name, partner_id=args.partner or "")
    key = created.api_key
    console.print(f"API key {key.key_id} ({key.display_name}) of partner {key.partner_id}")
    console.print("secret (shown once; send as 'authorization: ApiKey <secret>'):")
    print(created.secret)
    return 0


async def _keys_list(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        keys, more = await take(
            client.iter_api_keys(
                partner_id=args.partner or "", page_size=list_page_size(args.limit)
            ),
            args.limit,
        )
    table = Table("key id", "name", "created", "last used", "revoked")
    for k in keys:
        table.add_row(
            k.key_id,
            k.display_name,
            _when(k.create_time),
            _when(k.last_used_time),
            _when(k.revoke_time),
        )
    print_limited(table, len(keys), more)
    return 0


async def _keys_revoke(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        key = await client.revoke_api_key(args.key)
    console.print(f"API key {key.key_id} revoked at {_when(key.revoke_time)}")
    return 0


def _release_time(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise CliError(f"--release: {text!r} is not an ISO 8601 time") from None
    # Without an offset, UTC: an allocation's end is an instant, not a venue wall clock.
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


async def _allocate(args: argparse.Namespace) -> int:
    if bool(args.seat) == bool(args.section):
        raise CliError("give --seat (repeatable) or --section with --quantity")
    async with _client(args) as client:
        made = await client.allocate_seats(
            args.event,
            args.partner,
            args.seat or None,
            best_section_id=args.section,
            quantity=args.quantity,
            release_time=_release_time(args.release),
        )
    until = _when(made.release_time) if made.HasField("release_time") else "ReleaseAllocation"
    console.print(
        f"allocation {made.id}: {len(made.seat_ids)} places for partner {made.partner_id} "
        f"until {until}"
    )
    console.print("seats: " + " ".join(map(str, made.seat_ids)))
    return 0


async def _allocations(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        rows, more = await take(
            client.iter_allocations(args.event, page_size=list_page_size(args.limit)), args.limit
        )
    table = Table("id", "partner", "places", "created", "release", "released")
    for a in rows:
        release = _when(a.release_time) if a.HasField("release_time") else "-"
        table.add_row(
            a.id,
            a.partner_id,
            str(len(a.seat_ids)),
            _when(a.create_time),
            release,
            "yes" if a.released else "no",
        )
    print_limited(table, len(rows), more)
    return 0


async def _release(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        done = await client.release_allocation(args.allocation)
    console.print(f"allocation {done.id} released at {_when(done.release_time)}")
    return 0


def register_event_commands(
    events_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add `events allocate|allocations|release` (called by ticketing.cli.event_cmds)."""
    p = events_sub.add_parser(
        "allocate", help="set places aside for a partner's channel (ORGANIZER, ADMIN)"
    )
    p.add_argument("--event", required=True, metavar="ID")
    p.add_argument("--partner", required=True, metavar="ID")
    p.add_argument(
        "--seat",
        type=int,
        action="append",
        default=[],
        metavar="SEAT_ID",
        help="a seat id (repeat), or use --section and --quantity",
    )
    p.add_argument("--section", metavar="ID", help="best free places of this section")
    p.add_argument("--quantity", type=int, default=0, metavar="N")
    p.add_argument(
        "--release",
        metavar="ISO8601",
        help="unsold places return to the public then (UTC without an offset)",
    )
    add_target_args(p)
    p.set_defaults(handler=_allocate)

    p = events_sub.add_parser("allocations", help="an event's allocations")
    p.add_argument("--event", required=True, metavar="ID")
    p.add_argument("--limit", type=int, default=50)
    add_target_args(p)
    p.set_defaults(handler=_allocations)

    p = events_sub.add_parser("release", help="return an allocation's unsold places now")
    p.add_argument("allocation", help="allocation id")
    add_target_args(p)
    p.set_defaults(handler=_release)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `partners create|list|suspend|activate|update` and `partners keys
    create|list|revoke`."""
    partners = sub.add_parser("partners", help="partner resellers and their API keys")
    partners_sub = partners.add_subparsers(dest="partners_command", required=True)

    p = partners_sub.add_parser("create", help="register a partner reseller (ADMIN)")
    p.add_argument("--name", required=True)
    p.add_argument("--email", required=True, help="the partner's contact email")
    add_target_args(p)
    p.set_defaults(handler=_create)

    p = partners_sub.add_parser("list", help="partners, oldest first (ADMIN)")
    p.add_argument("--limit", type=int, default=50)
    add_target_args(p)
    p.set_defaults(handler=_list)

    for name, suspend, text in (
        ("suspend", True, "refuse every key of a partner from its next call (ADMIN)"),
        ("activate", False, "let a suspended partner's unrevoked keys work again (ADMIN)"),
    ):
        p = partners_sub.add_parser(name, help=text)
        p.add_argument("partner", help="partner id")
        add_target_args(p)
        p.set_defaults(handler=_set_status, suspend=suspend)

    p = partners_sub.add_parser(
        "update", help="public-pool permission and own budget of a partner (ADMIN)"
    )
    p.add_argument("partner", help="partner id")
    p.add_argument(
        "--public-sales",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="may it sell from the public pool too (--no-public-sales: allocations only)",
    )
    p.add_argument("--max-concurrent", type=int, help="its calls in flight (0: server default)")
    p.add_argument("--rate", type=int, help="its calls per second (0: server default)")
    add_target_args(p)
    p.set_defaults(handler=_update)

    keys = partners_sub.add_parser("keys", help=f"API keys (as the partner: set {API_KEY_ENV})")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    p = keys_sub.add_parser("create", help="a new API key; prints its secret once")
    p.add_argument("--partner", metavar="ID", help="the partner (ADMIN); default: yourself")
    p.add_argument("--name", required=True, help="e.g. 'production 2026'")
    add_target_args(p)
    p.set_defaults(handler=_keys_create)

    p = keys_sub.add_parser("list", help="a partner's keys and when each was last used")
    p.add_argument("--partner", metavar="ID", help="the partner (ADMIN); default: yourself")
    p.add_argument("--limit", type=int, default=50)
    add_target_args(p)
    p.set_defaults(handler=_keys_list)

    p = keys_sub.add_parser("revoke", help="refuse a key from its next call on")
    p.add_argument("key", help="key id")
    add_target_args(p)
    p.set_defaults(handler=_keys_revoke)
