"""Start-up of a kiosk: who signs in, and checks that fail fast (exit non-zero) before any scan.

Credentials, in order:
  1. TICKETING_TOKEN, an access token;
  2. TICKETING_KIOSK_EMAIL + TICKETING_KIOSK_PASSWORD, signed in with AuthService.Login;
  3. the token `ticketctl login` saved (the session store, `ticketing.session`).
With an email and password the kiosk also signs in again by itself when its token expires
mid-shift; with a bare token an expired token turns every scan into ERROR (UNAUTHENTICATED).

Before signing in, the kiosk waits (at most --connect-timeout) for the server to serve
(`wait_for_server`, a health poll); the calls here are then plain SDK calls, with the
channel's retry policy and nothing of their own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ticketing.client import Client
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.kiosk.health import UNREACHABLE, check_gate_service
from ticketing.session import load_session, session_path
from ticketing.v1 import auth_pb2, common_pb2, event_pb2, gate_pb2

# Exit codes (documented in main's --help).
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_JOURNAL = 4

GATE_ROLES = frozenset({common_pb2.ROLE_ENTRY_MANAGER, common_pb2.ROLE_ADMIN})


class StartupError(Exception):
    """The kiosk cannot start; the message is for the operator, `exit_code` for the shell."""

    def __init__(self, message: str, exit_code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Credentials:
    """How this kiosk signs in; `source` names where it came from, for messages."""

    token: str | None
    email: str | None
    password: str | None
    source: str

    @property
    def can_login(self) -> bool:
        return bool(self.email and self.password)


def credentials_from_env(environ: Mapping[str, str] | None = None) -> Credentials:
    """The kiosk's credentials (see the module docstring for the order)."""
    env = os.environ if environ is None else environ
    email = env.get("TICKETING_KIOSK_EMAIL") or None
    password = env.get("TICKETING_KIOSK_PASSWORD") or None
    if bool(email) != bool(password):
        raise StartupError("set TICKETING_KIOSK_EMAIL and TICKETING_KIOSK_PASSWORD together")
    token = env.get("TICKETING_TOKEN") or None
    if token:
        return Credentials(token, email, password, "TICKETING_TOKEN")
    if email:
        return Credentials(None, email, password, "TICKETING_KIOSK_EMAIL")
    saved = load_session()
    if saved is not None and saved.token:
        return Credentials(saved.token, None, None, f"ticketctl session ({session_path()})")
    raise StartupError(
        "not signed in: run `ticketctl login EMAIL` as an entry manager, or set "
        "TICKETING_TOKEN, or TICKETING_KIOSK_EMAIL and TICKETING_KIOSK_PASSWORD"
    )


async def wait_for_server(
    health: Any,
    *,
    budget: float,
    interval: float,
    target: str,
    on_wait: Callable[[str], None],
) -> None:
    """Poll the gate service's health every `interval` s until it serves, at most `budget` s.

    A kiosk is often switched on before the server, or the server before its database (it
    says NOT_SERVING meanwhile); the kiosk waits, saying so once, instead of failing at once,
    but not forever: EXIT_UNREACHABLE tells a supervisor to look. This only waits for the
    server to be there: the calls that follow (sign-in, the event) are plain SDK calls, and
    the channel's UNAVAILABLE policy is all the retrying they get.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    warned = False
    while True:
        remaining = deadline - loop.time()
        why_not = await check_gate_service(health, max(0.1, min(interval, remaining)))
        if not why_not:
            return
        if loop.time() + interval > deadline:
            raise StartupError(
                f"server {target} unreachable for {budget:.0f} s ({why_not})", EXIT_UNREACHABLE
            )
        if not warned:
            on_wait(f"waiting for server {target} ({why_not.split(':', 1)[0]})")
            warned = True
        await asyncio.sleep(interval)


async def sign_in(client: Client, credentials: Credentials) -> common_pb2.User:
    """Sign in if needed and check the account may validate tickets; returns the user."""

    async def whoami() -> common_pb2.User:
        with ticketing_errors():
            reply = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        return reply.user

    async def login() -> None:
        assert credentials.email and credentials.password
        await client.login(credentials.email, credentials.password)

    try:
        if client.token is None:
            await login()
        try:
            user = await whoami()
        except TicketingError as err:
            if err.code != grpc.StatusCode.UNAUTHENTICATED or not credentials.can_login:
                raise
            # The given token expired, but we have a password: sign in afresh.
            await login()
            user = await whoami()
    except TicketingError as err:
        if err.code == grpc.StatusCode.UNAUTHENTICATED:
            raise StartupError(
                f"sign-in refused ({credentials.source}): {err.message}; check the email "
                "and password, or run `ticketctl login` again"
            ) from None
        raise _failed("sign-in failed", err) from None
    if not GATE_ROLES.intersection(user.roles):
        raise StartupError(
            f"{user.email} may not validate tickets: the account needs the ENTRY_MANAGER role"
        )
    return user


async def load_event(client: Client, event_id: str) -> event_pb2.Event:
    """The event this gate admits to; StartupError when it does not exist."""
    try:
        with ticketing_errors():
            reply = await client.events.GetEvent(event_pb2.GetEventRequest(event_id=event_id))
    except TicketingError as err:
        if err.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise StartupError(f"unknown event {event_id!r}: {err.message}") from None
        raise _failed(f"cannot read event {event_id!r}", err) from None
    return reply.event


def _failed(what: str, err: TicketingError) -> StartupError:
    # The server went away again between the wait and this call: still "unreachable".
    exit_code = EXIT_UNREACHABLE if err.code in UNREACHABLE else EXIT_REFUSED
    reason = f" ({err.reason})" if err.reason else ""
    return StartupError(f"{what}: {err.code.name}{reason}: {err.message}", exit_code)


async def check_assignment(client: Client, event: event_pb2.Event, user: common_pb2.User) -> None:
    """StartupError unless this account may work the event's gates: an ENTRY_MANAGER must be
    assigned to it (EventService.AssignStaff). One cheap call, the newest scan of the log,
    which the server allows exactly to those who may also scan there."""
    try:
        with ticketing_errors():
            await client.gate.ListScans(gate_pb2.ListScansRequest(event_id=event.id, page_size=1))
    except TicketingError as err:
        if err.code == grpc.StatusCode.PERMISSION_DENIED:
            raise StartupError(
                f"{user.email} is not assigned to the gates of {event.name!r} ({event.id}): "
                f"its organizer runs `ticketctl events staff add {event.id} {user.id}`"
            ) from None
        raise _failed("cannot check the gate assignment", err) from None
