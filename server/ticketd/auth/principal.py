"""Who is calling: set by the interceptor for the duration of one RPC."""

from __future__ import annotations

import enum
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

from ticketd.errors import Unauthenticated


class Role(enum.StrEnum):
    """Roles as stored in the database (text); the proto enum is `ticketing.v1.Role`."""

    ADMIN = "ADMIN"
    ORGANIZER = "ORGANIZER"
    CUSTOMER = "CUSTOMER"
    SUPPORT = "SUPPORT"
    ENTRY_MANAGER = "ENTRY_MANAGER"


class PrincipalKind(enum.StrEnum):
    """What kind of credential authenticated the caller. Users hold roles; every other kind
    is granted methods by kind in the policy table (`ticketd.auth.policy`), never by role."""

    USER = "USER"
    """`authorization: Bearer <JWT>`: a signed-in account."""
    DEVICE = "DEVICE"
    """`authorization: Device <credential>`: an enrolled gate kiosk (GateService.EnrollDevice)."""
    PARTNER = "PARTNER"
    """`authorization: ApiKey <secret>`: a partner reseller (PartnerService.CreateApiKey); the
    policy table calls it ROLE_PARTNER."""


@dataclass(frozen=True)
class DeviceScope:
    """The one event and gate a device principal acts for."""

    event_id: uuid.UUID
    gate_id: str


@dataclass(frozen=True)
class PartnerScope:
    """The partner an API key principal acts for, and the key it called with."""

    partner_id: uuid.UUID
    key_id: uuid.UUID
    max_in_flight: int | None = None
    """The partner's own concurrency budget; None = the server's default."""
    rate_per_second: float | None = None
    """The partner's own sustained call rate; None = the server's default."""
    public_sales: bool = True
    """The partner may also sell from the public pool, not only its allocations."""


@dataclass(frozen=True)
class Principal:
    """The caller, with roles as the database holds them at the start of this call.

    For kind USER, `user_id` is the account. For kind DEVICE, `user_id` is the device's id
    (scan logs and rate limits key on it), `email` is empty, `roles` is empty (so no role
    check ever passes) and `device` is its scope. For kind PARTNER, `user_id` is the
    partner's id, `email` is empty, `roles` is empty and `partner` names partner and key.
    """

    user_id: uuid.UUID
    email: str
    roles: frozenset[Role]
    kind: PrincipalKind = PrincipalKind.USER
    device: DeviceScope | None = None
    partner: PartnerScope | None = None

    def has(self, *roles: Role) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_device(self) -> bool:
        return self.kind is PrincipalKind.DEVICE

    @property
    def partner_id(self) -> uuid.UUID | None:
        """The partner of an API key principal; None for every other caller."""
        return self.partner.partner_id if self.partner is not None else None


_current: ContextVar[Principal | None] = ContextVar("ticketd_principal", default=None)


def current_principal() -> Principal:
    """The caller of the current RPC; raises UNAUTHENTICATED on a public call with no token."""
    principal = _current.get()
    if principal is None:
        raise Unauthenticated("this call needs a signed-in user")
    return principal


def bind_principal(principal: Principal | None) -> object:
    """Set the caller for the current task; returns a token for `unbind_principal`."""
    return _current.set(principal)


def unbind_principal(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
