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


@dataclass(frozen=True)
class DeviceScope:
    """The one event and gate a device principal acts for."""

    event_id: uuid.UUID
    gate_id: str


@dataclass(frozen=True)
class Principal:
    """The caller, with roles as the database holds them at the start of this call.

    For kind USER, `user_id` is the account. For kind DEVICE, `user_id` is the device's id
    (scan logs and rate limits key on it), `email` is empty, `roles` is empty (so no role
    check ever passes) and `device` is its scope.
    """

    user_id: uuid.UUID
    email: str
    roles: frozenset[Role]
    kind: PrincipalKind = PrincipalKind.USER
    device: DeviceScope | None = None

    def has(self, *roles: Role) -> bool:
        return not self.roles.isdisjoint(roles)

    @property
    def is_device(self) -> bool:
        return self.kind is PrincipalKind.DEVICE


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
