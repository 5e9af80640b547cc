"""Start-up of a kiosk: who signs in, and checks that fail fast (exit non-zero) before any scan.

Credentials, in order:
  1. TICKETING_TOKEN, an access token;
  2. TICKETING_KIOSK_EMAIL + TICKETING_KIOSK_PASSWORD, signed in with AuthService.Login;
  3. the token `ticketctl login` saved (ticketing.cli.config.load_session).
With an email and password the kiosk also signs in again by itself when its token expires
mid-shift; with a bare token an expired token turns every scan into ERROR (UNAUTHENTICATED).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc import aio

from ticketing.cli.config import DEFAULT_TARGET, load_session, session_path
from ticketing.client import Client
from ticketing.sdk import decode_error
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


def resolve_target(explicit: str | None, environ: Mapping[str, str]) -> str:
    """--target, else TICKETING_TARGET, else the `ticketctl login` target, else the default."""
    if explicit:
        return explicit
    if environ.get("TICKETING_TARGET"):
        return environ["TICKETING_TARGET"]
    saved = load_session()
    return saved.target if saved else DEFAULT_TARGET


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


T = TypeVar("T")

_TRANSPORT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


async def retry_transport(
    call: Callable[[], Awaitable[T]],
    *,
    budget: float,
    target: str,
    on_wait: Callable[[str], None],
) -> T:
    """`call()`, retried while the server cannot be reached, for at most `budget` seconds.

    A kiosk is often switched on before the server is up; it waits (saying so) instead of
    failing at once, but not forever: EXIT_UNREACHABLE tells a supervisor to look.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    delay = 0.25
    warned = False
    while True:
        try:
            return await call()
        except aio.AioRpcError as err:
            if err.code() not in _TRANSPORT:
                raise
            if loop.time() + delay > deadline:
                raise StartupError(
                    f"server {target} unreachable for {budget:.0f} s ({err.code().name}: "
                    f"{err.details()})",
                    EXIT_UNREACHABLE,
                ) from None
            if not warned:
                on_wait(f"waiting for server {target} ({err.code().name})")
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def sign_in(
    client: Client,
    credentials: Credentials,
    *,
    budget: float,
    target: str,
    on_wait: Callable[[str], None],
) -> common_pb2.User:
    """Sign in if needed and check the account may validate tickets; returns the user."""

    async def login() -> None:
        assert credentials.email and credentials.password
        await client.login(credentials.email, credentials.password)

    async def whoami() -> common_pb2.User:
        reply = await client.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        return reply.user

    try:
        if client.token is None:
            await retry_transport(login, budget=budget, target=target, on_wait=on_wait)
        try:
            user = await retry_transport(whoami, budget=budget, target=target, on_wait=on_wait)
        except aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAUTHENTICATED or not credentials.can_login:
                raise
            # The given token expired, but we have a password: sign in afresh.
            await retry_transport(login, budget=budget, target=target, on_wait=on_wait)
            user = await retry_transport(whoami, budget=budget, target=target, on_wait=on_wait)
    except aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise StartupError(
                f"sign-in refused ({credentials.source}): {err.details()}; check the email "
                "and password, or run `ticketctl login` again"
            ) from None
        raise StartupError(f"sign-in failed: {_describe(err)}") from None
    if not GATE_ROLES.intersection(user.roles):
        raise StartupError(
            f"{user.email} may not validate tickets: the account needs the ENTRY_MANAGER role"
        )
    return user


async def load_event(
    client: Client, event_id: str, *, budget: float, target: str, on_wait: Callable[[str], None]
) -> event_pb2.Event:
    """The event this gate admits to; StartupError when it does not exist."""

    async def get() -> event_pb2.Event:
        reply = await client.events.GetEvent(event_pb2.GetEventRequest(event_id=event_id))
        return reply.event

    try:
        return await retry_transport(get, budget=budget, target=target, on_wait=on_wait)
    except aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise StartupError(f"unknown event {event_id!r}: {err.details()}") from None
        raise StartupError(f"cannot read event {event_id!r}: {_describe(err)}") from None


async def check_assignment(
    client: Client,
    event: event_pb2.Event,
    user: common_pb2.User,
    *,
    budget: float,
    target: str,
    on_wait: Callable[[str], None],
) -> None:
    """StartupError unless this account may work the event's gates: an ENTRY_MANAGER must be
    assigned to it (EventService.AssignStaff). One cheap call, the newest scan of the log,
    which the server allows exactly to those who may also scan there."""

    async def probe() -> None:
        await client.gate.ListScans(gate_pb2.ListScansRequest(event_id=event.id, page_size=1))

    try:
        await retry_transport(probe, budget=budget, target=target, on_wait=on_wait)
    except aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.PERMISSION_DENIED:
            raise StartupError(
                f"{user.email} is not assigned to the gates of {event.name!r} ({event.id}): "
                f"its organizer runs `ticketctl events staff add {event.id} {user.id}`"
            ) from None
        raise StartupError(f"cannot check the gate assignment: {_describe(err)}") from None


def _describe(err: aio.AioRpcError) -> str:
    decoded = decode_error(err)
    reason = f" ({decoded.reason})" if decoded.reason else ""
    return f"{decoded.code.name}{reason}: {decoded.message}"
