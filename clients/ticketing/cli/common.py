"""Shared pieces of ticketctl commands: connecting, printing errors and tables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable

import grpc
from grpc import aio
from rich.console import Console

from ticketing.cli.config import DEFAULT_TARGET, load_session
from ticketing.client import Client, connect
from ticketing.sdk import decode_error
from ticketing.v1 import common_pb2

console = Console()
err_console = Console(stderr=True)

Handler = Callable[[argparse.Namespace], Awaitable[int]]


class CliError(Exception):
    """A problem to show the user as one line, with exit code 1."""


def resolve_target(args: argparse.Namespace) -> str:
    if getattr(args, "target", None):
        return str(args.target)
    env = os.environ.get("TICKETING_TARGET")
    if env:
        return env
    saved = load_session()
    return saved.target if saved else DEFAULT_TARGET


def open_client(args: argparse.Namespace, *, need_token: bool = True) -> Client:
    """A client for the target, with the saved token (or TICKETING_TOKEN) attached."""
    token = os.environ.get("TICKETING_TOKEN")
    saved = load_session()
    if token is None and saved is not None:
        token = saved.token
    if need_token and not token:
        raise CliError("not signed in: run `ticketctl login` first")
    return connect(resolve_target(args), token, tls=bool(getattr(args, "tls", False)))


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


def describe_rpc_error(err: aio.AioRpcError) -> str:
    """One readable paragraph: status, message, reason and per-field problems."""
    decoded = decode_error(err)
    lines = [f"{err.code().name}: {err.details()}"]
    if decoded.reason:
        lines.append(f"  reason: {decoded.reason}")
    lines += [f"  {v.field}: {v.description}" for v in decoded.field_violations]
    lines += [f"  {v.type} {v.subject}: {v.description}" for v in decoded.precondition_violations]
    if err.code() == grpc.StatusCode.UNAVAILABLE:
        lines.append("  is the server running? (scripts/run starts one)")
    return "\n".join(lines)


def add_target_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target", help=f"server host:port (default: saved, $TICKETING_TARGET, {DEFAULT_TARGET})"
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
