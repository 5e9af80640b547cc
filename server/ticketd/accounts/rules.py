"""Pure account rules: the user record, input validation, who may change roles and status."""

from __future__ import annotations

import datetime as dt
import enum
import re
import unicodedata
import uuid
from dataclasses import dataclass

from ticketd.auth.passwords import password_violation
from ticketd.auth.principal import Principal, Role
from ticketd.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Reason,
)

MAX_EMAIL_CHARS = 254
MAX_DISPLAY_NAME_CHARS = 100
# Deliberately loose: one @, something on each side, a dot in the domain, no spaces or
# control characters. Deliverability is not ours to judge.
_EMAIL = re.compile(r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+\.[^@\s\x00-\x1f\x7f]+$")

# Unicode categories that never belong in a name people read or an address they type:
# controls (Cc), format characters (Cf: zero-width space/joiners, the bidirectional
# overrides and isolates U+202A..U+202E, U+2066..U+2069, soft hyphen, BOM...), private use
# (Co), unassigned (Cn), surrogates (Cs) and the line/paragraph separators (Zl, Zp).
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cn", "Cs", "Zl", "Zp"})
# Characters outside those categories that still render as nothing (or as a blank that is
# not a space), the usual fillers of look-alike names: Hangul fillers, the blank Braille
# pattern, the combining grapheme joiner, Khmer inherent vowels, Mongolian free variation
# selectors, the variation selectors (which also refuses emoji presentation selectors: the
# price of making "Admin" and "Admin<VS16>" impossible), and the null notehead.
_INVISIBLE_FILLERS = frozenset(
    {0x115F, 0x1160, 0x3164, 0xFFA0, 0x2800, 0x034F, 0x17B4, 0x17B5, 0x1D159}
    | {0x180B, 0x180C, 0x180D, 0x180F}
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)


class UserStatus(enum.StrEnum):
    """Account status as stored (text); the proto enum is `ticketing.v1.UserStatus`."""

    ACTIVE = "ACTIVE"
    DISABLED = "DISABLED"


def invisible_character(text: str) -> str | None:
    """The first invisible or bidirectional-control character of `text` as `U+XXXX`, or None."""
    for ch in text:
        code = ord(ch)
        if code in _INVISIBLE_FILLERS or unicodedata.category(ch) in _REFUSED_CATEGORIES:
            return f"U+{code:04X}"
    return None


def normalize_email(email: str) -> str:
    """The form an email is stored, compared and looked up in: NFKC, then case folding.

    NFKC folds compatibility look-alikes (fullwidth U+FF21, the "fi" ligature U+FB01,
    mathematical bold U+1D41A, the Kelvin sign U+212A) into their plain letters; case
    folding is Unicode's caseless match (U+00DF sharp s -> "ss", final sigma -> sigma),
    stronger than lower(). Surrounding whitespace goes too, also where NFKC creates
    it (U+00B8 becomes a space and a combining cedilla). Repeated until stable, because
    case folding can produce text NFKC changes again: the result is a fixed point, so
    normalising a stored email never changes it.
    """
    value = email.strip()
    for _ in range(4):
        folded = unicodedata.normalize(
            "NFKC", unicodedata.normalize("NFKC", value).casefold()
        ).strip()
        if folded == value:
            break
        value = folded
    return value


def email_violation(email: str, field: str = "email") -> FieldViolation | None:
    """Why `email` cannot be an account's address, or None."""
    hidden = invisible_character(email.strip())
    if hidden is not None:
        return FieldViolation(field, f"must not contain invisible or control characters ({hidden})")
    normalized = normalize_email(email)
    if not normalized:
        return FieldViolation(field, "is required")
    if len(normalized) > MAX_EMAIL_CHARS:
        return FieldViolation(field, f"must be at most {MAX_EMAIL_CHARS} characters")
    hidden = invisible_character(normalized)
    if hidden is not None:
        return FieldViolation(field, f"must not contain invisible or control characters ({hidden})")
    if not _EMAIL.match(normalized):
        return FieldViolation(field, "is not an email address")
    return None


def normalize_email_prefix(prefix: str) -> str:
    """A ListUsers email prefix in the stored form (so look-alike prefixes match too)."""
    return normalize_email(prefix)


def clean_display_name(name: str) -> str:
    return unicodedata.normalize("NFC", name).strip()


def display_name_violation(name: str, field: str = "display_name") -> FieldViolation | None:
    cleaned = clean_display_name(name)
    if not cleaned:
        return FieldViolation(field, "is required")
    if len(cleaned) > MAX_DISPLAY_NAME_CHARS:
        return FieldViolation(field, f"must be at most {MAX_DISPLAY_NAME_CHARS} characters")
    hidden = invisible_character(cleaned)
    if hidden is not None:
        return FieldViolation(
            field, f"must not contain control, invisible or bidirectional characters ({hidden})"
        )
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
    status: UserStatus = UserStatus.ACTIVE


@dataclass(frozen=True)
class Credentials:
    """What Login and ChangePassword need of one account."""

    user: UserRecord
    password_hash: str
    token_generation: int


@dataclass(frozen=True)
class AdminRow:
    """One account holding ADMIN, as locked by the repository."""

    id: uuid.UUID
    active: bool


_ROLE_ORDER = [Role.ADMIN, Role.ORGANIZER, Role.CUSTOMER, Role.SUPPORT, Role.ENTRY_MANAGER]


def sort_roles(roles: set[Role] | frozenset[Role]) -> list[str]:
    """Roles in the contract's enum order, as stored."""
    return [r.value for r in _ROLE_ORDER if r in roles]


def check_keeps_an_admin(admins: list[AdminRow], user_id: uuid.UUID, *, stays: bool) -> None:
    """Refuse to leave the system without an active admin.

    `admins`: every ADMIN account now, locked; `stays`: whether `user_id` is still an active
    admin after the change. Only active admins count: a disabled admin cannot sign in.
    """
    target_counts = any(a.id == user_id and a.active for a in admins)
    others = [a for a in admins if a.active and a.id != user_id]
    if target_counts and not stays and not others:
        raise FailedPrecondition(
            "this is the last active admin; make someone else an admin first",
            reason=Reason.LAST_ADMIN,
        )


def check_may_revoke_tokens(caller: Principal, user_id: uuid.UUID) -> None:
    """Anyone may sign themselves out everywhere; only an ADMIN may do it to someone else."""
    if caller.user_id != user_id and not caller.has(Role.ADMIN):
        raise PermissionDenied(
            "only an admin may revoke another user's tokens", reason=Reason.NOT_ACCOUNT_OWNER
        )
