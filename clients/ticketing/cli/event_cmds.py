"""ticketctl events create / list / show / cancel / seats / update / staff."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import uuid
import zoneinfo
from collections.abc import Sequence

from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ticketing.cli import partner_cmds
from ticketing.cli.common import (
    CliError,
    StreamBreaks,
    add_target_args,
    console,
    err_console,
    open_client,
    print_limited,
    redraw_live,
    take_listing,
)
from ticketing.cli.seatmap import (
    ASCII_GLYPHS,
    UNICODE_GLYPHS,
    LiveSeatMap,
    describe_change,
    format_money,
    render_seat_map,
)
from ticketing.client import Client
from ticketing.pagination import paginate
from ticketing.v1 import auth_pb2, event_pb2, event_pb2_grpc, venue_pb2

# ListSeats clamps larger pages to this; asking for the most means the fewest round trips
# (a 100,000-place arena is ten calls of about 0.7 MB each, under the 4 MB message limit).
SEAT_PAGE_SIZE = 10_000
# Creating a large inventory is one big INSERT; give it more than the SDK's 10 s default.
CREATE_EVENT_TIMEOUT_SECONDS = 60.0
# A live map is redrawn at most this often: a rush of hundreds of sales a second is drawn as
# a few frames, not one per sale (drawing a large map costs more than applying a change).


def parse_time(text: str, zone: dt.tzinfo | None, option: str) -> Timestamp:
    """An ISO 8601 date or date-time; without an offset it is read in `zone`.

    `zone` None means the machine's local time zone.
    """
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError(
            f"{option}: {text!r} is not an ISO 8601 time such as 2030-05-01T20:00+02:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=zone) if zone is not None else value.astimezone()
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC))
    return ts


def _zone(name: str) -> dt.tzinfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (ValueError, zoneinfo.ZoneInfoNotFoundError):
        return dt.UTC


def show_time(ts: Timestamp, time_zone: str) -> str:
    """A timestamp as wall-clock time at the venue, with the zone's abbreviation."""
    return ts.ToDatetime(dt.UTC).astimezone(_zone(time_zone)).strftime("%Y-%m-%d %H:%M %Z")


def _status(value: int) -> str:
    return event_pb2.EventStatus.Name(value).removeprefix("EVENT_STATUS_")  # type: ignore[arg-type]


def _match_section(
    sections: Sequence[venue_pb2.Section] | Sequence[event_pb2.EventSection], key: str
) -> str:
    """The section id `key` names, by id or by name (case-insensitive)."""
    wanted = key.strip()
    for s in sections:
        sid = s.id if isinstance(s, venue_pb2.Section) else s.section_id
        if sid == wanted:
            return sid
    matches = [s for s in sections if s.name.casefold() == wanted.casefold()]
    if len(matches) == 1:
        s = matches[0]
        return s.id if isinstance(s, venue_pb2.Section) else s.section_id
    names = ", ".join(repr(s.name) for s in sections)
    raise CliError(escape(f"no section {key!r}; sections are {names}"))


def _minor(text: str, option: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise CliError(
            f"{option}: {text!r} is not a whole number of minor units (12.50 EUR is 1250)"
        ) from None
    if value < 0:
        raise CliError(f"{option}: a price cannot be negative")
    return value


def section_prices(
    sections: Sequence[venue_pb2.Section], prices: Sequence[str], price_all: str | None
) -> dict[str, int]:
    """Prices keyed by section id from `--price SECTION=MINOR` and `--price-all MINOR`.

    Named prices win over --price-all. Every section needs a price: the error names the
    sections left without one, rather than the server's list of ids.
    """
    out: dict[str, int] = {}
    if price_all is not None:
        default = _minor(price_all, "--price-all")
        out = {s.id: default for s in sections}
    for item in prices:
        # Split at the last '=' so section names may contain one.
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            raise CliError(escape(f"--price {item!r}: expected SECTION=MINOR, e.g. Stalls=4500"))
        out[_match_section(sections, key)] = _minor(value, f"--price {key}")
    missing = [s.name for s in sections if s.id not in out]
    if missing:
        raise CliError(
            escape(
                "no price for section(s) "
                + ", ".join(repr(n) for n in missing)
                + "; give --price NAME=MINOR for each or --price-all MINOR"
            )
        )
    return out


def print_event(event: event_pb2.Event) -> None:
    """Event header and a table of sections with prices and live availability."""
    status = _status(event.status)
    color = {"ON_SALE": "green", "CANCELLED": "red"}.get(status, "yellow")
    console.print(f"[bold]{escape(event.name)}[/]  [{color}]{status}[/]")
    console.print(f"  id: {event.id}")
    console.print(f"  venue: {escape(event.venue_name)} ({event.venue_id})")
    when = show_time(event.start_time, event.time_zone)
    if event.HasField("end_time"):
        when += f" until {show_time(event.end_time, event.time_zone)}"
    console.print(f"  start: {when}")
    if event.HasField("doors_open_time"):
        console.print(f"  doors open: {show_time(event.doors_open_time, event.time_zone)}")
    limits = f"at most {event.max_tickets_per_order} per order"
    if event.HasField("max_tickets_per_customer"):
        limits += f", {event.max_tickets_per_customer} per customer"
    console.print(f"  currency: {event.currency_code}; {limits}")
    console.print(f"  organizer: {event.organizer_id}")
    if event.status == event_pb2.EVENT_STATUS_CANCELLED:
        console.print(
            f"  cancelled {show_time(event.cancel_time, event.time_zone)}: "
            f"{escape(event.cancel_reason)}"
        )
    if event.description:
        console.print(f"  {escape(event.description)}")
    table = Table("section", "kind")
    for numeric in ("price", "capacity", "available", "sold"):
        table.add_column(numeric, no_wrap=True, justify="right")
    # Sections are named on the command line, so on a narrow terminal the id gives way.
    table.add_column("id", overflow="fold")
    for s in event.sections:
        kind = "general admission" if s.kind == venue_pb2.SECTION_KIND_GENERAL_ADMISSION else ""
        table.add_row(
            escape(s.name),
            kind or "reserved",
            format_money(s.price_minor, event.currency_code),
            str(s.capacity),
            f"[green]{s.available_count}[/]",
            f"[red]{s.sold_count}[/]" if s.sold_count else "0",
            s.section_id,
        )
    table.add_section()
    table.add_row(
        "total",
        "",
        "",
        str(event.capacity),
        f"[green]{event.available_count}[/]",
        str(event.sold_count),
        "",
    )
    console.print(table)


async def cmd_events_create(args: argparse.Namespace) -> int:
    """`events create ...`: price every section, create the event and its inventory."""
    async with open_client(args) as client:
        venue = (await client.venues.GetVenue(venue_pb2.GetVenueRequest(venue_id=args.venue))).venue
        # A time without an offset means wall-clock time at the venue, as on a poster.
        zone = _zone(venue.time_zone)
        request = event_pb2.CreateEventRequest(
            venue_id=venue.id,
            name=args.name,
            description=args.description or "",
            start_time=parse_time(args.start, zone, "--start"),
            currency_code=args.currency.strip().upper(),
            section_prices=section_prices(venue.sections, args.price, args.price_all),
            max_tickets_per_order=args.max_per_order,
            # AIP-155: the server creates the event once even if this call is resent.
            request_id=str(uuid.uuid4()),
        )
        if args.end:
            request.end_time.CopyFrom(parse_time(args.end, zone, "--end"))
        if args.doors:
            request.doors_open_time.CopyFrom(parse_time(args.doors, zone, "--doors"))
        if args.max_per_customer is not None:
            request.max_tickets_per_customer = args.max_per_customer
        resp = await client.events.CreateEvent(request, timeout=CREATE_EVENT_TIMEOUT_SECONDS)
    console.print("event created:")
    print_event(resp.event)
    return 0


async def cmd_events_list(args: argparse.Namespace) -> int:
    """`events list [filters]`: events by start time, upcoming unless --after says otherwise."""
    need_token = args.organizer == "me"
    table = Table("start", "name", "venue", "status", "places")
    table.add_column("id", no_wrap=True, min_width=36)
    async with open_client(args, need_token=need_token) as client:
        organizer = args.organizer or ""
        if need_token:
            me = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
            organizer = me.user.id
        request = event_pb2.ListEventsRequest(
            venue_id=args.venue or "",
            organizer_id=organizer,
            include_cancelled=args.include_cancelled,
        )
        if args.after:
            request.start_after.CopyFrom(parse_time(args.after, None, "--after"))
        if args.before:
            request.start_before.CopyFrom(parse_time(args.before, None, "--before"))
        events, more = await take_listing(
            client.events.ListEvents, request, lambda page: page.events, args.limit
        )
    for e in events:
        # ListEvents leaves live counts out, so only the capacity is shown here.
        table.add_row(
            show_time(e.start_time, e.time_zone),
            escape(e.name),
            escape(e.venue_name),
            _status(e.status),
            str(e.capacity),
            e.id,
        )
    print_limited(table, len(events), more)
    return 0


async def cmd_events_show(args: argparse.Namespace) -> int:
    """`events show ID`: the event with live availability per section (no token needed)."""
    async with open_client(args, need_token=False) as client:
        resp = await client.events.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))
    print_event(resp.event)
    return 0


async def cmd_events_cancel(args: argparse.Namespace) -> int:
    """`events cancel ID --reason TEXT`: take the event off sale (owner or ADMIN)."""
    async with open_client(args) as client:
        resp = await client.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=args.event_id, reason=args.reason)
        )
    console.print("event cancelled:")
    print_event(resp.event)
    return 0


async def cmd_events_update(args: argparse.Namespace) -> int:
    """`events update ID [--doors T | --clear-doors] [--end T | --clear-end]` (owner or ADMIN)."""
    if (args.doors and args.clear_doors) or (args.end and args.clear_end):
        raise CliError("give a time or --clear-..., not both")
    paths: list[str] = []
    async with open_client(args) as client:
        current = (
            await client.events.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))
        ).event
        # Like `events create`: a time without an offset is wall-clock time at the venue.
        zone = _zone(current.time_zone)
        change = event_pb2.Event(id=current.id)
        if args.doors or args.clear_doors:
            paths.append("doors_open_time")
            if args.doors:
                change.doors_open_time.CopyFrom(parse_time(args.doors, zone, "--doors"))
        if args.end or args.clear_end:
            paths.append("end_time")
            if args.end:
                change.end_time.CopyFrom(parse_time(args.end, zone, "--end"))
        if not paths:
            raise CliError("nothing to change: give --doors, --end, --clear-doors or --clear-end")
        resp = await client.events.UpdateEvent(
            event_pb2.UpdateEventRequest(event=change, update_mask=FieldMask(paths=paths))
        )
    console.print("event updated:")
    print_event(resp.event)
    return 0


def _print_staff(staff: Sequence[event_pb2.StaffMember], time_zone: str) -> None:
    table = Table("user id", "email", "name", "assigned")
    for s in staff:
        table.add_row(
            s.user_id, escape(s.email), escape(s.display_name), show_time(s.assign_time, time_zone)
        )
    console.print(table)


async def cmd_events_staff_add(args: argparse.Namespace) -> int:
    """`events staff add EVENT USER_ID`: let an entry manager work the event's gates."""
    async with open_client(args) as client:
        resp = await client.events.AssignStaff(
            event_pb2.AssignStaffRequest(event_id=args.event_id, user_id=args.user_id)
        )
    s = resp.staff
    console.print(f"{escape(s.email)} ({s.user_id}) may work the gates of event {s.event_id}")
    return 0


async def cmd_events_staff_remove(args: argparse.Namespace) -> int:
    """`events staff remove EVENT USER_ID`: takes effect on that user's next call."""
    async with open_client(args) as client:
        resp = await client.events.UnassignStaff(
            event_pb2.UnassignStaffRequest(event_id=args.event_id, user_id=args.user_id)
        )
    if resp.removed:
        console.print(f"{args.user_id} no longer works the gates of event {args.event_id}")
    else:
        console.print(f"{args.user_id} was not assigned to event {args.event_id}; nothing changed")
    return 0


async def cmd_events_staff_list(args: argparse.Namespace) -> int:
    """`events staff list EVENT`: everyone assigned to the event's gates."""
    staff: list[event_pb2.StaffMember] = []
    token = ""
    async with open_client(args) as client:
        event = (
            await client.events.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))
        ).event
        while True:
            resp = await client.events.ListStaff(
                event_pb2.ListStaffRequest(event_id=event.id, page_size=1_000, page_token=token)
            )
            staff.extend(resp.staff)
            token = resp.next_page_token
            if not token:
                break
    _print_staff(staff, event.time_zone)
    console.print(f"{len(staff)} assigned to {escape(event.name)}")
    return 0


async def fetch_seats(
    stub: event_pb2_grpc.EventServiceAsyncStub, event_id: str, section_id: str = ""
) -> list[event_pb2.Seat]:
    """Every seat of the event (or of one section), page after page."""
    request = event_pb2.ListSeatsRequest(event_id=event_id, section_id=section_id)
    pages = paginate(stub.ListSeats, request, lambda page: page.seats, page_size=SEAT_PAGE_SIZE)
    return [seat async for seat in pages]


def _event_line(event: event_pb2.Event) -> str:
    return (
        f"[bold]{escape(event.name)}[/]  {show_time(event.start_time, event.time_zone)}  "
        f"{escape(event.venue_name)}  {_status(event.status)}"
    )


async def cmd_events_seats(args: argparse.Namespace) -> int:
    """`events seats ID [--section NAME|ID] [--ids [N] | --watch]`: draw the seat map of every
    or one section, once or (--watch) live."""
    if args.watch and args.ids:
        raise CliError("--watch draws the map; it cannot be combined with --ids")
    async with open_client(args, need_token=False) as client:
        stub = client.events
        event = (await stub.GetEvent(event_pb2.GetEventRequest(event_id=args.event_id))).event
        sections = list(event.sections)
        section_id = ""
        if args.section:
            section_id = _match_section(sections, args.section)
            sections = [s for s in sections if s.section_id == section_id]
        seats = await fetch_seats(stub, event.id, section_id)
        if args.watch:
            return await _watch_seat_map(client, event, sections, seats)
    console.print(_event_line(event))
    console.print()
    if args.ids:
        # The map has no room for ids; `book --seats` needs them, so list free ones.
        table = Table("seat id", "section", "row", "seat", "price")
        names = {s.section_id: s.name for s in event.sections}
        free = [s for s in seats if s.status == event_pb2.SEAT_STATUS_AVAILABLE]
        for seat in free[: args.ids]:
            table.add_row(
                str(seat.id),
                escape(names.get(seat.section_id, seat.section_id)),
                escape(seat.row_label) or "-",
                escape(seat.label) or "-",
                format_money(seat.price_minor, event.currency_code),
            )
        console.print(table)
        console.print(f"{min(len(free), args.ids)} of {len(free)} available seats listed")
        return 0
    glyphs = ASCII_GLYPHS if console.options.ascii_only else UNICODE_GLYPHS
    console.print(
        render_seat_map(
            sections, seats, currency_code=event.currency_code, width=console.width, glyphs=glyphs
        )
    )
    return 0


class _Follower:
    """What `events seats --watch` has seen: the live map, and its reconnections."""

    def __init__(self, seats: Sequence[event_pb2.Seat], *, echo_breaks: bool) -> None:
        self.map = LiveSeatMap(seats)
        self.breaks = StreamBreaks(echo=echo_breaks)


async def _watch_seat_map(
    client: Client,
    event: event_pb2.Event,
    sections: Sequence[event_pb2.EventSection],
    seats: Sequence[event_pb2.Seat],
) -> int:
    """Follow WatchSeats until Ctrl-C: on a terminal the map redrawn in place, otherwise one
    line per change (a snapshot as one summary line), so the output can be piped or logged.
    Breaks are resumed from the last sequence by the SDK (`Client.watch_seats`)."""
    follower = _Follower(seats, echo_breaks=not console.is_terminal)
    try:
        if console.is_terminal:
            await _redraw_live(client, event, sections, follower)
        else:
            await _print_changes(client, event, follower)
    except asyncio.CancelledError:
        # Ctrl-C: asyncio.run cancels this task; say where the watch stopped (a later
        # `--watch` starts from a fresh snapshot anyway) and let main() exit with 130.
        err_console.print(
            f"stopped after #{follower.map.sequence} ({follower.map.changes} changes, "
            f"{follower.breaks.count} reconnections)",
            highlight=False,
        )
        raise
    return 0


async def _print_changes(client: Client, event: event_pb2.Event, follower: _Follower) -> None:
    async for change in client.watch_seats(event.id, on_resume=follower.breaks.on_resume):
        seat = follower.map.apply(change)
        if change.snapshot:
            if change.snapshot_complete:
                t = follower.map.totals()
                console.print(
                    f"snapshot at #{change.sequence}: {t.available} available, {t.held} held, "
                    f"{t.sold} sold",
                    highlight=False,
                )
            continue
        console.print(escape(describe_change(change, seat)), highlight=False, soft_wrap=True)


async def _redraw_live(
    client: Client,
    event: event_pb2.Event,
    sections: Sequence[event_pb2.EventSection],
    follower: _Follower,
) -> None:
    glyphs = ASCII_GLYPHS if console.options.ascii_only else UNICODE_GLYPHS

    def frame() -> RenderableType:
        status = f"live · #{follower.map.sequence} · {follower.map.changes} changes"
        if follower.breaks.count:
            status += f" · {follower.breaks.count} reconnections ({follower.breaks.last})"
        return Group(
            Text.from_markup(_event_line(event)),
            Text(""),
            render_seat_map(
                sections,
                follower.map.seats,
                currency_code=event.currency_code,
                width=console.width,
                glyphs=glyphs,
            ),
            Text(f"{status} · Ctrl-C to stop", "dim"),
        )

    await redraw_live(
        console,
        client.watch_seats(event.id, on_resume=follower.breaks.on_resume),
        follower.map.apply,
        frame,
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `events create|list|show|cancel|seats` to the ticketctl parser."""
    events = sub.add_parser("events", help="events, prices and seat maps")
    events_sub = events.add_subparsers(dest="events_command", required=True)

    p = events_sub.add_parser(
        "create",
        help="put an event on sale with its whole inventory (ADMIN, ORGANIZER)",
        description="Times without an offset are wall-clock times at the venue. Prices are "
        "integer minor units of the currency (1250 = 12.50 EUR).",
    )
    p.add_argument("--venue", required=True, metavar="ID", help="venue id")
    p.add_argument("--name", required=True)
    p.add_argument("--description")
    p.add_argument("--start", required=True, metavar="ISO8601", help="e.g. 2030-05-01T20:00")
    p.add_argument("--end", metavar="ISO8601", help="optional; after --start (gates close then)")
    p.add_argument(
        "--doors",
        metavar="ISO8601",
        help="optional; before --start: gates admit from then (default: the server's lead)",
    )
    p.add_argument("--currency", required=True, metavar="CODE", help="ISO 4217, e.g. EUR")
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="SECTION=MINOR",
        help="price of one section, by name or id (repeat for each section)",
    )
    p.add_argument(
        "--price-all", metavar="MINOR", help="price for every section without its own --price"
    )
    p.add_argument("--max-per-order", type=int, required=True, metavar="N", help="1..100")
    p.add_argument(
        "--max-per-customer", type=int, metavar="N", help="cap over all orders (optional)"
    )
    add_target_args(p)
    p.set_defaults(handler=cmd_events_create)

    p = events_sub.add_parser("list", help="list events by start time (upcoming by default)")
    p.add_argument("--venue", metavar="ID", help="only events at this venue")
    p.add_argument(
        "--organizer", metavar="ID", help="only events owned by this user ('me' for yourself)"
    )
    p.add_argument(
        "--include-cancelled",
        "--all",
        dest="include_cancelled",
        action="store_true",
        help="also list cancelled events",
    )
    p.add_argument(
        "--after",
        metavar="ISO8601",
        help="only events starting at or after this (default: now; local time if no offset)",
    )
    p.add_argument("--before", metavar="ISO8601", help="only events starting before this")
    p.add_argument("--limit", type=int, default=100)
    add_target_args(p)
    p.set_defaults(handler=cmd_events_list)

    p = events_sub.add_parser("show", help="show an event with availability per section")
    p.add_argument("event_id")
    add_target_args(p)
    p.set_defaults(handler=cmd_events_show)

    p = events_sub.add_parser("cancel", help="take an event off sale for good (owner or ADMIN)")
    p.add_argument("event_id")
    p.add_argument("--reason", required=True, help="shown to customers")
    add_target_args(p)
    p.set_defaults(handler=cmd_events_cancel)

    p = events_sub.add_parser(
        "seats", help="draw the seat map: available, held and sold places (--watch: live)"
    )
    p.add_argument("event_id")
    p.add_argument("--section", metavar="NAME|ID", help="only this section")
    p.add_argument(
        "--ids",
        type=int,
        nargs="?",
        const=50,
        default=0,
        metavar="N",
        help="instead of the map, list the first N available seats with their ids (for book)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep the map live as seats are held, sold and released (Ctrl-C stops); "
        "piped, print one line per change",
    )
    add_target_args(p)
    p.set_defaults(handler=cmd_events_seats)

    p = events_sub.add_parser(
        "update",
        help="change when the gates open (--doors) and close (--end) (owner or ADMIN)",
        description="Times without an offset are wall-clock times at the venue. --clear-doors "
        "and --clear-end go back to the server's defaults (a lead before start; start plus a "
        "default duration).",
    )
    p.add_argument("event_id")
    p.add_argument("--doors", metavar="ISO8601", help="gates admit from then; before the start")
    p.add_argument("--clear-doors", action="store_true", help="use the server's default lead")
    p.add_argument("--end", metavar="ISO8601", help="gates close then; after the start")
    p.add_argument("--clear-end", action="store_true", help="use the server's default duration")
    add_target_args(p)
    p.set_defaults(handler=cmd_events_update)

    staff = events_sub.add_parser(
        "staff", help="who may scan at an event's gates (owner or ADMIN manage it)"
    )
    staff_sub = staff.add_subparsers(dest="staff_command", required=True)
    for name, handler, text in (
        ("add", cmd_events_staff_add, "assign an ENTRY_MANAGER (their id: `ticketctl whoami`)"),
        ("remove", cmd_events_staff_remove, "unassign; applies to their next call"),
    ):
        p = staff_sub.add_parser(name, help=text)
        p.add_argument("event_id")
        p.add_argument("user_id")
        add_target_args(p)
        p.set_defaults(handler=handler)
    p = staff_sub.add_parser("list", help="list the event's gate staff")
    p.add_argument("event_id")
    add_target_args(p)
    p.set_defaults(handler=cmd_events_staff_list)
    # Allocations to partners' channels (issue 13) live with the partner commands.
    partner_cmds.register_event_commands(events_sub)
