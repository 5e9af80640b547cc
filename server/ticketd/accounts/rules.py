"""Pure account rules: the user record, input validation, who may change roles."""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid
from dataclasses import dataclass

from ticketd.auth.passwords import password_violation
from ticketd.auth.principal import Role
from ticketd.errors import FailedPrecondition, FieldViolation, InvalidArgument, Reason

MAX_EMAIL_CHARS = 254
MAX_DISPLAY_NAME_CHARS = 100
# Deliberately loose: one @, something on each side, a dot in the domain, no spaces or
# control characters. Deliverability is not ours to judge.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")


def normalize_email(email: str) -> str:
    return email.strip().lower()


def email_violation(email: str, field: str = "email") -> FieldViolation | None:
    normalized = normalize_email(email)
    if not normalized:
        return FieldViolation(field, "is required")
    if len(normalized) > MAX_EMAIL_CHARS:
        return FieldViolation(field, f"must be at most {MAX_EMAIL_CHARS} characters")
    if not _EMAIL.match(normalized):
        return FieldViolation(field, "is not an email address")
    return None


def clean_display_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


def display_name_violation(name: str, field: str = "display_name") -> FieldViolation | None:
    cleaned = clean_display_name(name)
    if not cleaned:
        return FieldViolation(field, "is required")
    if len(cleaned) > MAX_DISPLAY_NAME_CHARS:
        return FieldViolation(field, f"must be at most {MAX_DISPLAY_NAME_CHARS} characters")
    if any(unicodedata.category(ch) == "Cc" for ch in cleaned):
        return FieldViolation(field, "must not contain control characters")
    return None


def validate_registration(email: str, password: str, display_name: str) -> None:
    """Raise INVALID_ARGUMENT with one violation per bad field."""
    violations = [
        v
        for v in (
            email_violation(email),
            password_violation(password),
            display_name_violation(display_name),
        )
        if v is not None
    ]
    if violations:
        raise InvalidArgument(violations)


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    display_name: str
    roles: tuple[Role, ...]
    create_time: dt.datetime


_ROLE_ORDER = [Role.ADMIN, Role.ORGANIZER, Role.CUSTOMER, Role.SUPPORT, Role.ENTRY_MANAGER]


def sort_roles(roles: set[Role] | frozenset[Role]) -> list[str]:
    """Roles in the contract's enum order, as stored."""
    return [r.value for r in _ROLE_ORDER if r in roles]


def check_keeps_an_admin(admins: list[uuid.UUID], user_id: uuid.UUID, new_roles: set[Role]) -> None:
    """Refuse to leave the system without an admin (`admins`: every admin now, locked)."""
    if Role.ADMIN not in new_roles and admins == [user_id]:
        raise FailedPrecondition(
            "this is the last admin; make someone else an admin first", reason=Reason.LAST_ADMIN
        )
