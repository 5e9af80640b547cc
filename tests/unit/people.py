"""Callers for the ownership rules: a Principal is the rules' only input from auth."""

from __future__ import annotations

import uuid

from ticketd.auth.principal import Principal, Role

__all__ = ["Role", "caller"]


def caller(*roles: Role, user_id: uuid.UUID | None = None) -> Principal:
    """A signed-in caller with these roles (a fresh user id unless given)."""
    return Principal(user_id or uuid.uuid4(), "someone@example.test", frozenset(roles))
