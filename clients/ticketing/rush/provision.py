"""Set-up before a rush: the admin, the venue and event, buyers and gate staff.

Everything goes through the public API as a real deployment would: the admin signs in
(Login), creates the venue and event; buyers register themselves (AuthService.Register,
public) and sign in; gate staff are buyers the admin promotes with SetUserRoles.

bcrypt makes Register and Login deliberately expensive (that is their job), so tokens are
kept in a cache file keyed by target and email. A second run against the same server checks
each cached token with one cheap GetCurrentUser call and skips the bcrypt work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc import aio

from ticketing.pagination import paginate
from ticketing.stubs import CallMetadata, Stubs, api_key, bearer
from ticketing.v1 import auth_pb2, booking_pb2, common_pb2, event_pb2, partner_pb2, venue_pb2

SETUP_CALL_TIMEOUT_S = 60.0
# AllocateSeats takes at most this many places per call.
ALLOCATION_CHUNK = 100
# Tokens this close to expiry are not reused: a run must not lose its buyers half-way.
TOKEN_MARGIN_S = 300.0
PARALLEL_SIGNUPS = 16
# Cached tokens checked with the server before the rest are trusted (see _cache_still_valid).
CACHE_SAMPLE = 8
# The server throttles Register/Login per address (TOO_MANY_ATTEMPTS) and refuses them when
# its password workers are busy (AUTH_BUSY), each with a RetryInfo. Set-up registers
# thousands of buyers from one address, so it waits as told, up to this long per account.
SIGNUP_RETRY_BUDGET_S = 300.0
_RETRY_REASONS = frozenset({"TOO_MANY_ATTEMPTS", "AUTH_BUSY"})

T = TypeVar("T")


def retry_info_delay(err: aio.AioRpcError) -> float | None:
    """Seconds a RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS/AUTH_BUSY refusal asks us to wait,
    or None when the error is anything else (or carries no RetryInfo)."""
    if err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    reason, delay = "", None
    trailing: Any = err.trailing_metadata() or ()
    for key, value in trailing:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            details = status_pb2.Status.FromString(value).details
        except DecodeError:
            return None
        for detail in details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                delay = retry.retry_delay.ToNanoseconds() / 1e9
    return delay if reason in _RETRY_REASONS else None


async def honouring_retry_info(
    call: Callable[[], Awaitable[T]], *, budget_s: float = SIGNUP_RETRY_BUDGET_S
) -> T:
    """`call()`, repeated after each throttling refusal once its RetryInfo delay (plus a
    little jitter, so parallel sign-ups do not return in lock-step) has passed; any other
    error, or running out of `budget_s`, raises."""
    deadline = time.monotonic() + budget_s
    while True:
        try:
            return await call()
        except aio.AioRpcError as err:
            delay = retry_info_delay(err)
            if delay is None:
                raise
            pause = max(0.01, delay) * random.uniform(1.0, 1.5)
            if time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)


def default_token_cache() -> Path:
    """`$XDG_CACHE_HOME/ticketing/rush-tokens.json` (else ~/.cache/...)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ticketing" / "rush-tokens.json"


class TokenCache:
    """Access tokens by (target, email), stored 0600 as JSON; expired entries are pruned."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, object]] = {}
        if path is not None and path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                loaded = {}
            if isinstance(loaded, dict):
                self._entries = {k: v for k, v in loaded.items() if isinstance(v, dict)}

    @staticmethod
    def key(target: str, email: str) -> str:
        """The cache key: one server address and one account."""
        return f"{target}|{email.lower()}"

    def get(self, target: str, email: str) -> Account | None:
        """The cached account (token, user id, roles) unless its token is about to expire."""
        entry = self._entries.get(self.key(target, email))
        if not entry:
            return None
        expires, token = entry.get("expires"), entry.get("token")
        user_id, roles = entry.get("user_id"), entry.get("roles")
        if not isinstance(token, str) or not isinstance(expires, int | float):
            return None
        if not isinstance(user_id, str) or not isinstance(roles, list):
            return None
        if expires - time.time() <= TOKEN_MARGIN_S:
            return None
        return Account(email, user_id, token, tuple(int(r) for r in roles))

    def put(self, target: str, account: Account, expires: float) -> None:
        """Remember an account's token until `expires` (epoch seconds)."""
        self._entries[self.key(target, account.email)] = {
            "token": account.token,
            "expires": expires,
            "user_id": account.user_id,
            "roles": list(account.roles),
        }

    def set_roles(self, target: str, email: str, roles: tuple[int, ...]) -> None:
        """Record roles the admin just gave an account."""
        entry = self._entries.get(self.key(target, email))
        if entry is not None:
            entry["roles"] = list(roles)

    def forget(self, target: str, email: str) -> None:
        """Drop a token the server refused."""
        self._entries.pop(self.key(target, email), None)

    def save(self) -> None:
        """Write the cache atomically with mode 0600 (tokens are credentials)."""
        if self.path is None:
            return
        now = time.time()
        live = {}
        for key, entry in self._entries.items():
            expires = entry.get("expires")
            if isinstance(expires, int | float) and expires > now:
                live[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(live, out)
        os.replace(tmp, self.path)


@dataclass
class Account:
    """A signed-in user of the run."""

    email: str
    user_id: str
    token: str
    roles: tuple[int, ...] = ()

    @property
    def md(self) -> CallMetadata:
        """Call metadata with this account's token."""
        return bearer(self.token)


@dataclass
class SignupStats:
    """How the accounts of a run were obtained."""

    from_cache: int = 0
    registered: int = 0
    logged_in: int = 0
    seconds: float = 0.0


@dataclass
class Accounts:
    """Everyone taking part in a run."""

    admin: Account
    buyers: list[Account]
    gate_staff: list[Account] = field(default_factory=list)
    stats: SignupStats = field(default_factory=SignupStats)


def _expiry(response: auth_pb2.LoginResponse) -> float:
    if response.HasField("expire_time"):
        return float(response.expire_time.seconds)
    return time.time() + 3600


async def _cached_account(stubs: Stubs, token: str) -> Account | None:
    try:
        me = await stubs.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=bearer(token), timeout=SETUP_CALL_TIMEOUT_S
        )
    except aio.AioRpcError as err:
        if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND):
            return None
        raise
    return Account(me.user.email, me.user.id, token, tuple(me.user.roles))


async def sign_in(
    stubs: Stubs,
    cache: TokenCache,
    target: str,
    email: str,
    password: str,
    *,
    register_as: str | None,
    stats: SignupStats,
    trust_cache: bool = False,
) -> Account:
    """A cached token if the server still accepts it, else Login (registering first, when
    `register_as` names the display name, if the account does not exist yet). With
    `trust_cache`, a cached token is used without asking the server first."""
    cached = cache.get(target, email)
    if cached is not None:
        account = cached if trust_cache else await _cached_account(stubs, cached.token)
        if account is not None:
            stats.from_cache += 1
            return account
        cache.forget(target, email)
    if register_as is not None:
        request = auth_pb2.RegisterRequest(email=email, password=password, display_name=register_as)
        try:
            await honouring_retry_info(
                lambda: stubs.auth.Register(request, timeout=SETUP_CALL_TIMEOUT_S)
            )
            stats.registered += 1
        except aio.AioRpcError as err:
            # A buyer of an earlier run whose token expired: just sign in again.
            if err.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
    credentials = auth_pb2.LoginRequest(email=email, password=password)
    login = await honouring_retry_info(
        lambda: stubs.auth.Login(credentials, timeout=SETUP_CALL_TIMEOUT_S)
    )
    stats.logged_in += 1
    account = Account(email, login.user.id, login.access_token, tuple(login.user.roles))
    cache.put(target, account, _expiry(login))
    return account


async def _cache_still_valid(
    stubs: Sequence[Stubs], cache: TokenCache, target: str, emails: Sequence[str]
) -> bool:
    """Whether the server still accepts the cached tokens, judged on a sample.

    What invalidates cached tokens in practice hits all of them at once (a new JWT secret, a
    recreated database), so a few GetCurrentUser calls tell, where checking 2,000 tokens one
    by one would cost seconds on every run. A token refused later shows up in the report
    as UNAUTHENTICATED.
    """
    cached = [a for a in (cache.get(target, e) for e in emails) if a is not None]
    if not cached:
        return False
    sample = random.Random().sample(cached, min(CACHE_SAMPLE, len(cached)))
    checks = await asyncio.gather(
        *(_cached_account(stubs[i % len(stubs)], a.token) for i, a in enumerate(sample))
    )
    return all(
        found is not None and found.user_id == account.user_id
        for found, account in zip(checks, sample, strict=True)
    )


def buyer_email(prefix: str, i: int) -> str:
    """The i-th buyer of a run (stable across runs, so cached tokens can be reused)."""
    return f"{prefix}-{i}@rush.example.test"


async def provision_accounts(
    stubs: Sequence[Stubs],
    cache: TokenCache,
    target: str,
    *,
    admin_email: str,
    admin_password: str,
    buyers: int,
    buyer_prefix: str,
    buyer_password: str,
    gate_staff: int,
) -> Accounts:
    """The admin, `buyers` customers and `gate_staff` entry managers, signed in
    concurrently (a few at a time, so the server's bcrypt pool is busy but not flooded)."""
    started = time.perf_counter()
    stats = SignupStats()
    admin = await sign_in(
        stubs[0], cache, target, admin_email, admin_password, register_as=None, stats=stats
    )
    people = [(buyer_email(buyer_prefix, i), f"Rush buyer {i}") for i in range(buyers)]
    people += [
        (buyer_email(f"{buyer_prefix}-gate", i), f"Rush gate {i}") for i in range(gate_staff)
    ]
    trust = await _cache_still_valid(stubs, cache, target, [email for email, _ in people])
    sem = asyncio.Semaphore(PARALLEL_SIGNUPS)

    async def one(i: int, email: str, name: str) -> Account:
        async with sem:
            return await sign_in(
                stubs[i % len(stubs)],
                cache,
                target,
                email,
                buyer_password,
                register_as=name,
                stats=stats,
                trust_cache=trust,
            )

    everyone = await asyncio.gather(*(one(i, e, name) for i, (e, name) in enumerate(people)))
    customers, staff = list(everyone[:buyers]), list(everyone[buyers:])
    for account in staff:
        if common_pb2.ROLE_ENTRY_MANAGER not in account.roles:
            changed = await stubs[0].auth.SetUserRoles(
                auth_pb2.SetUserRolesRequest(
                    user_id=account.user_id,
                    roles=[common_pb2.ROLE_ENTRY_MANAGER, common_pb2.ROLE_CUSTOMER],
                ),
                metadata=admin.md,
                timeout=SETUP_CALL_TIMEOUT_S,
            )
            account.roles = tuple(changed.user.roles)
            cache.set_roles(target, account.email, account.roles)
    cache.save()
    stats.seconds = time.perf_counter() - started
    return Accounts(admin, list(customers), staff, stats)


def venue_layout(places: int, name: str) -> venue_pb2.Venue:
    """A reserved-seating venue of exactly `places` seats: up to 10 sections, rows of up to
    50 seats. Section order is desirability order (the first section is the best)."""
    if not 1 <= places <= 200_000:
        raise ValueError("--seats must be 1..200,000")
    sections = max(1, min(10, places // 50))
    base, extra = divmod(places, sections)
    venue = venue_pb2.Venue(name=name, address="Rush harness", time_zone="UTC")
    for s in range(sections):
        capacity = base + (1 if s < extra else 0)
        width = min(50, capacity)
        rows = [
            venue_pb2.Row(label=str(r + 1), seat_count=min(width, capacity - r * width))
            for r in range(math.ceil(capacity / width))
        ]
        venue.sections.append(
            venue_pb2.Section(
                name=f"Block {s + 1}", kind=venue_pb2.SECTION_KIND_RESERVED, rows=rows
            )
        )
    return venue


def _days_from_now(days: int) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return ts


async def create_event(
    stubs: Stubs, admin: Account, places: int, max_per_order: int, label: str
) -> event_pb2.Event:
    """A new venue of `places` seats and an event on sale there (one price, EUR)."""
    venue = (
        await stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=venue_layout(places, f"Rush arena {label}")),
            metadata=admin.md,
            timeout=SETUP_CALL_TIMEOUT_S,
        )
    ).venue
    return (
        await stubs.events.CreateEvent(
            event_pb2.CreateEventRequest(
                venue_id=venue.id,
                name=f"Ticket rush {label}",
                start_time=_days_from_now(30),
                # Doors open at once: the gate scenarios scan now, not in 30 days.
                doors_open_time=_days_from_now(0),
                currency_code="EUR",
                section_prices={s.id: 4_500 for s in venue.sections},
                max_tickets_per_order=max_per_order,
            ),
            metadata=admin.md,
            timeout=SETUP_CALL_TIMEOUT_S,
        )
    ).event


async def assign_gate_staff(
    stubs: Stubs, admin: Account, event_id: str, staff: Sequence[Account]
) -> None:
    """Assign the run's gate staff to the event (idempotent): an ENTRY_MANAGER may scan only
    at events it is assigned to."""
    for account in staff:
        await stubs.events.AssignStaff(
            event_pb2.AssignStaffRequest(event_id=event_id, user_id=account.user_id),
            metadata=admin.md,
            timeout=SETUP_CALL_TIMEOUT_S,
        )


async def get_event(stubs: Stubs, event_id: str) -> event_pb2.Event:
    """The event with live counts (public)."""
    return (
        await stubs.events.GetEvent(
            event_pb2.GetEventRequest(event_id=event_id), timeout=SETUP_CALL_TIMEOUT_S
        )
    ).event


async def load_seat_map(stubs: Stubs, event_id: str) -> list[event_pb2.Seat]:
    """Every place of the event through ListSeats (public), 10,000 per page."""
    pages = paginate(
        stubs.events.ListSeats,
        event_pb2.ListSeatsRequest(event_id=event_id),
        lambda page: page.seats,
        page_size=10_000,
        page_timeout=SETUP_CALL_TIMEOUT_S,
    )
    return [seat async for seat in pages]


@dataclass
class PartnerSeller:
    """A partner reseller of the run: its API key and the places allocated to it."""

    partner_id: str
    secret: str
    seat_ids: list[int]

    @property
    def md(self) -> CallMetadata:
        """Call metadata with this partner's API key."""
        return api_key(self.secret)


async def provision_partners(
    stubs: Stubs,
    admin: Account,
    event_id: str,
    free_seat_ids: Sequence[int],
    *,
    partners: int,
    places_each: int,
    label: str,
) -> list[PartnerSeller]:
    """`partners` new partners that may not sell outside their allocations, each with one API
    key and `places_each` of the event's free places allocated to it (consecutive ids: a
    block of the house, as a reseller gets).
    Created through the public API as the admin (PartnerService, AllocateSeats)."""
    sellers: list[PartnerSeller] = []
    for k in range(partners):
        partner = (
            await stubs.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(
                    display_name=f"Rush partner {k} {label}",
                    contact_email=f"rush-partner-{k}-{label}@example.test",
                ),
                metadata=admin.md,
                timeout=SETUP_CALL_TIMEOUT_S,
            )
        ).partner
        # Allocation-only: the audit then proves the server never lets it sell elsewhere.
        await stubs.partners.UpdatePartner(
            partner_pb2.UpdatePartnerRequest(partner_id=partner.id, public_sales=False),
            metadata=admin.md,
            timeout=SETUP_CALL_TIMEOUT_S,
        )
        key = await stubs.partners.CreateApiKey(
            partner_pb2.CreateApiKeyRequest(partner_id=partner.id, display_name="rush"),
            metadata=admin.md,
            timeout=SETUP_CALL_TIMEOUT_S,
        )
        block = list(free_seat_ids[k * places_each : (k + 1) * places_each])
        for start in range(0, len(block), ALLOCATION_CHUNK):
            await stubs.events.AllocateSeats(
                event_pb2.AllocateSeatsRequest(
                    event_id=event_id,
                    partner_id=partner.id,
                    request_id=str(uuid.uuid4()),
                    seat_ids=booking_pb2.SeatIds(ids=block[start : start + ALLOCATION_CHUNK]),
                ),
                metadata=admin.md,
                timeout=SETUP_CALL_TIMEOUT_S,
            )
        sellers.append(PartnerSeller(partner.id, key.secret, block))
    return sellers
