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


@dataclass(frozen=True)
class Principal:
    """The signed-in caller, with roles as the database holds them at the start of this call."""

    user_id: uuid.UUID
    email: str
    roles: frozenset[Role]

    def has(self, *roles: Role) -> bool:
        return not self.roles.isdisjoint(roles)


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
