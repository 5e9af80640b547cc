"""Pure rules of partners and their API keys: input, records, who may manage what."""

from __future__ import annotations

import datetime as dt
import unicodedata
import uuid
from dataclasses import dataclass
from enum import StrEnum

from ticketd.auth.principal import Principal, PrincipalKind, Role
from ticketd.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    Reason,
    Unauthenticated,
    not_found,
)
from ticketd.shared import EndCustomer

MAX_NAME = 100
MAX_EMAIL = 254
# How stale ApiKey.last_used_time may get: a busy key is written at most this often, so
# authenticating stays a read on almost every call.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class PartnerStatus(StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"


@dataclass(frozen=True)
class PartnerRecord:
    id: uuid.UUID
    display_name: str
    contact_email: str
    status: PartnerStatus
    create_time: dt.datetime
    public_sales: bool = True
    max_concurrent_rpcs: int | None = None
    rate_per_second: int | None = None


@dataclass(frozen=True)
class PartnerSettings:
    """UpdatePartner's changes: None leaves a setting alone; a budget of 0 means the
    server's default again (stored as no override)."""

    public_sales: bool | None = None
    max_concurrent_rpcs: int | None = None
    rate_per_second: int | None = None

    def check(self) -> None:
        """A request that changes nothing is a mistake worth telling."""
        if (
            self.public_sales is None
            and self.max_concurrent_rpcs is None
            and (self.rate_per_second is None)
        ):
            raise InvalidArgument.one(
                "public_sales",
                "set at least one of public_sales, max_concurrent_rpcs, rate_per_second",
            )


@dataclass(frozen=True)
class ApiKeyRecord:
    id: uuid.UUID
    partner_id: uuid.UUID
    display_name: str
    create_time: dt.datetime
    last_used_time: dt.datetime | None
    revoke_time: dt.datetime | None


@dataclass(frozen=True)
class KeyLookup:
    """What authenticating one API key needs: the key's and its partner's state."""

    key_id: uuid.UUID
    partner_id: uuid.UUID
    revoked: bool
    partner_status: PartnerStatus
    max_in_flight: int | None = None
    rate_per_second: int | None = None
    public_sales: bool = True


def _name_violation(value: str, field: str) -> FieldViolation | None:
    if not value or len(value) > MAX_NAME or not value.isprintable():
        return FieldViolation(field, f"1..{MAX_NAME} printable characters")
    return None


def normalize_contact_email(email: str) -> str:
    """NFKC then case folding, like account emails: look-alikes compare equal."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def _email_violation(email: str, field: str) -> FieldViolation | None:
    local, at, domain = email.rpartition("@")
    ok = (
        at == "@"
        and 3 <= len(email) <= MAX_EMAIL
        and local
        and "." in domain.strip(".")
        and email.isprintable()
        and not any(c.isspace() for c in email)
    )
    return None if ok else FieldViolation(field, "is not an email address")


def validate_partner_input(display_name: str, contact_email: str) -> tuple[str, str]:
    """Trimmed name and normalised email; INVALID_ARGUMENT naming each bad field."""
    name, email = display_name.strip(), normalize_contact_email(contact_email)
    out = [
        v
        for v in (
            _name_violation(name, "display_name"),
            _email_violation(email, "contact_email"),
        )
        if v is not None
    ]
    if out:
        raise InvalidArgument(out)
    return name, email


MAX_EXTERNAL_ID = 200


def validate_end_customer(customer: EndCustomer, field: str = "on_behalf_of") -> EndCustomer:
    """Trimmed id and name, normalised email (may be empty); INVALID_ARGUMENT per field."""
    ext = customer.external_customer_id.strip()
    name = customer.display_name.strip()
    email = normalize_contact_email(customer.email)
    out: list[FieldViolation] = []
    if not ext or len(ext) > MAX_EXTERNAL_ID or not ext.isprintable():
        out.append(
            FieldViolation(
                f"{field}.external_customer_id", f"1..{MAX_EXTERNAL_ID} printable characters"
            )
        )
    if len(name) > MAX_NAME or not name.isprintable():
        out.append(
            FieldViolation(f"{field}.display_name", f"at most {MAX_NAME} printable characters")
        )
    if email:
        bad = _email_violation(email, f"{field}.email")
        if bad is not None:
            out.append(bad)
    if out:
        raise InvalidArgument(out)
    return EndCustomer(ext, name, email)


def validate_key_name(display_name: str) -> str:
    name = display_name.strip()
    bad = _name_violation(name, "display_name")
    if bad is not None:
        raise InvalidArgument([bad])
    return name


def partner_not_found(partner_id: uuid.UUID) -> NotFound:
    return not_found(Reason.PARTNER_NOT_FOUND, "partner", partner_id=partner_id)


def key_not_found(key_id: uuid.UUID) -> NotFound:
    return not_found(Reason.API_KEY_NOT_FOUND, "API key", key_id=key_id)


def resolve_partner_id(principal: Principal, given: uuid.UUID | None) -> uuid.UUID:
    """The partner a call names: `given`, or for an API key caller its own partner."""
    if given is not None:
        return given
    own = principal.partner_id
    if own is None:
        raise InvalidArgument.one("partner_id", "is required")
    return own


def check_may_manage_partner(principal: Principal, partner_id: uuid.UUID) -> None:
    """ADMIN for every partner; an API key only for its own partner. Anyone else is told
    NOT_FOUND, so a partner cannot probe other partners' ids."""
    if principal.kind is PrincipalKind.USER and principal.has(Role.ADMIN):
        return
    if principal.partner_id == partner_id:
        return
    raise partner_not_found(partner_id)


def authentication_refusal(lookup: KeyLookup) -> Unauthenticated | None:
    """Why a known key authenticates nobody right now, or None: revoked wins."""
    if lookup.revoked:
        return Unauthenticated(
            "this API key was revoked; use another key of the partner",
            reason=Reason.API_KEY_REVOKED,
        )
    if lookup.partner_status is not PartnerStatus.ACTIVE:
        return Unauthenticated(
            "this partner is suspended; ask the operator", reason=Reason.PARTNER_SUSPENDED
        )
    return None
