"""Shared pieces of ticketctl commands: connecting, printing errors and tables."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

import grpc
from grpc import aio
from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from ticketing.client import Client, connect
from ticketing.errors import TicketingError
from ticketing.pagination import PageRequest, PageResponse, paginate
from ticketing.session import DEFAULT_TARGET, load_session, resolve_target
from ticketing.v1 import common_pb2

console = Console()
err_console = Console(stderr=True)

Handler = Callable[[argparse.Namespace], Awaitable[int]]


class CliError(Exception):
    """A problem to show the user as one line, with exit code 1."""


# The server clamps larger pages to this.
MAX_PAGE_SIZE = 500

T = TypeVar("T")
RequestT = TypeVar("RequestT", bound=PageRequest)
ResponseT = TypeVar("ResponseT", bound=PageResponse)


def open_client(args: argparse.Namespace, *, need_token: bool = True) -> Client:
    """A client for the target, with the saved token (or TICKETING_TOKEN) attached."""
    token = os.environ.get("TICKETING_TOKEN")
    saved = load_session()
    if token is None and saved is not None:
        token = saved.token
    if need_token and not token:
        raise CliError("not signed in: run `ticketctl login` first")
    target = resolve_target(getattr(args, "target", None))
    return connect(target, token, tls=bool(getattr(args, "tls", False)))


API_KEY_ENV = "TICKETING_API_KEY"


def open_client_or_partner(args: argparse.Namespace) -> Client:
    """As the partner when TICKETING_API_KEY is set (its secret never on the command line,
    where `ps` and shell history would show it), else the signed-in user."""
    key = os.environ.get(API_KEY_ENV)
    if key:
        target = resolve_target(getattr(args, "target", None))
        return connect(target, api_key=key, tls=bool(getattr(args, "tls", False)))
    return open_client(args)


class StreamBreaks:
    """The reconnections of a `ticketctl ... watch`, for its `on_resume` hook: counted, the
    last one kept for a live display's footer and, when `echo` (piped output), each printed
    on stderr as it happens (printing on a terminal would tear the live display)."""

    def __init__(self, *, echo: bool) -> None:
        self.count = 0
        self.last = ""
        self._echo = echo

    def on_resume(self, error: TicketingError, after: int) -> None:
        """Record one break: the stream ended with `error` and resumes after `after`."""
        self.count += 1
        reason = f" {error.reason}" if error.reason else ""
        self.last = f"stream ended ({error.code.name}{reason}); resuming after #{after}"
        if self._echo:
            err_console.print(escape(self.last), highlight=False)


def role_name(value: int) -> str:
    return common_pb2.Role.Name(value).removeprefix("ROLE_")  # type: ignore[arg-type]


def parse_role(text: str) -> common_pb2.Role.ValueType:
    name = text.strip().upper().replace("-", "_")
    if not name.startswith("ROLE_"):
        name = "ROLE_" + name
    try:
        return common_pb2.Role.Value(name)
    except ValueError:
        choices = ", ".join(role_name(v) for v in common_pb2.Role.values() if v)
        raise CliError(f"unknown role {text!r}; choose from {choices}") from None


def describe_error(error: TicketingError) -> str:
    """One readable paragraph: status, message, reason and per-field problems."""
    lines = [f"{error.code.name}: {error.message}"]
    if error.reason:
        lines.append(f"  reason: {error.reason}")
    lines += [f"  {v.field}: {v.description}" for v in error.field_violations]
    lines += [f"  {v.type} {v.subject}: {v.description}" for v in error.precondition_violations]
    if error.code == grpc.StatusCode.UNAVAILABLE:
        lines.append("  is the server running? (scripts/run starts one)")
    return "\n".join(lines)


def list_page_size(limit: int) -> int:
    """The page size for showing `limit` items: one more, to tell whether there are more."""
    return min(limit + 1, MAX_PAGE_SIZE)


async def take(items: AsyncIterator[T], limit: int) -> tuple[list[T], bool]:
    """The first `limit` items (page with `list_page_size(limit)`) and whether there are more.

    Reading one past the limit answers "more?" without another round trip.
    """
    if limit < 1:
        raise CliError("--limit must be at least 1")
    taken: list[T] = []
    async for item in items:
        taken.append(item)
        if len(taken) > limit:
            break
    return taken[:limit], len(taken) > limit


async def take_listing(
    method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
    request: RequestT,
    items: Callable[[ResponseT], Iterable[T]],
    limit: int,
) -> tuple[list[T], bool]:
    """The first `limit` items of a List call (`ticketing.paginate`) and whether there are more."""
    return await take(paginate(method, request, items, page_size=list_page_size(limit)), limit)


def print_limited(table: Table, shown: int, more: bool) -> None:
    """Print a listing cut at --limit, saying so when there are more."""
    console.print(table)
    if more:
        console.print(f"(first {shown} shown; raise --limit for more)")


def add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", help=f"server host:port (default: saved, $TICKETING_TARGET, {DEFAULT_TARGET})"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")


# A live terminal view redraws at most this often, however fast its stream changes.
REDRAW_INTERVAL_SECONDS = 0.25


async def redraw_live(
    console: Console,
    changes: AsyncIterator[Any],
    apply: Callable[[Any], object],
    frame: Callable[[], RenderableType],
) -> None:
    """Follow `changes` (each handed to `apply`) and redraw `frame()` while something
    changed, at most every REDRAW_INTERVAL_SECONDS: the live seat map and gate board. The
    stream's own error (its watch gave up) ends the command; Ctrl-C cancels both."""
    dirty = True

    async def follow() -> None:
        nonlocal dirty
        async for change in changes:
            apply(change)
            dirty = True

    reader = asyncio.create_task(follow())
    try:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while not reader.done():
                await asyncio.wait({reader}, timeout=REDRAW_INTERVAL_SECONDS)
                if dirty:
                    dirty = False
                    live.update(frame(), refresh=True)
            reader.result()  # the watch gave up: its TicketingError ends the command
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
