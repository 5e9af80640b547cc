"""The audit log's vocabulary and decisions, with no database: who an actor is, the stable
action names, what a caller may read."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from ticketd.auth.principal import Principal, PrincipalKind, Role
from ticketd.errors import FieldViolation, InvalidArgument

MAX_DETAIL_VALUE_CHARS = 200
"""A detail value is cut to this many characters."""
MAX_DETAILS = 8
"""At most this many values: with keys cut to 40 characters, even text that is all 6-byte
JSON escapes stays under the column's 16 KiB bound (migration 0015), so an act never fails
for the size of its entry."""


class ActorKind(StrEnum):
    """Which kind of principal acted (stored as text in audit_entries.actor_kind)."""

    USER = "USER"
    PARTNER_KEY = "PARTNER_KEY"
    DEVICE = "DEVICE"
    SYSTEM = "SYSTEM"


@dataclass(frozen=True)
class Actor:
    """Who acted: a user, a partner's API key (`id` the partner, `key_id` the key), a kiosk
    device, or the server itself (no id)."""

    kind: ActorKind
    id: uuid.UUID | None = None
    key_id: uuid.UUID | None = None

    @classmethod
    def of(cls, principal: Principal | None) -> Actor:
        """The actor behind a call's principal; SYSTEM when there is none (start-up work)."""
        if principal is None:
            return SYSTEM
        if principal.kind is PrincipalKind.PARTNER and principal.partner is not None:
            return cls(
                ActorKind.PARTNER_KEY, principal.partner.partner_id, principal.partner.key_id
            )
        if principal.kind is PrincipalKind.DEVICE:
            return cls(ActorKind.DEVICE, principal.user_id)
        return cls(ActorKind.USER, principal.user_id)


SYSTEM = Actor(ActorKind.SYSTEM)


class Action(StrEnum):
    """The stable action names (`noun.verb`): clients filter on them, so a name is added,
    never renamed."""

    ORDER_REFUNDED = "order.refunded"
    ORDER_CODES_ROTATED = "order.codes_rotated"
    VENUE_CREATED = "venue.created"
    VENUE_UPDATED = "venue.updated"
    EVENT_CREATED = "event.created"
    EVENT_CANCELLED = "event.cancelled"
    EVENT_TIMES_CHANGED = "event.times_changed"
    EVENT_STAFF_ASSIGNED = "event.staff_assigned"
    EVENT_STAFF_UNASSIGNED = "event.staff_unassigned"
    EVENT_OFFLINE_ADMISSION_SET = "event.offline_admission_set"
    SIGNING_KEY_ROTATED = "signing_key.rotated"
    ALLOCATION_CREATED = "allocation.created"
    ALLOCATION_RELEASED = "allocation.released"
    USER_ROLE_GRANTED = "user.role_granted"
    USER_ROLE_REVOKED = "user.role_revoked"
    USER_PASSWORD_CHANGED = "user.password_changed"
    USER_TOKENS_REVOKED = "user.tokens_revoked"
    USER_DISABLED = "user.disabled"
    USER_ENABLED = "user.enabled"
    PARTNER_CREATED = "partner.created"
    PARTNER_SUSPENDED = "partner.suspended"
    PARTNER_ACTIVATED = "partner.activated"
    PARTNER_UPDATED = "partner.updated"
    API_KEY_CREATED = "api_key.created"
    API_KEY_REVOKED = "api_key.revoked"
    DEVICE_CREATED = "device.created"
    DEVICE_ENROLLED = "device.enrolled"
    DEVICE_REVOKED = "device.revoked"


class SubjectKind(StrEnum):
    """What kind of object an entry is about (audit_entries.subject_kind)."""

    ORDER = "order"
    EVENT = "event"
    VENUE = "venue"
    USER = "user"
    PARTNER = "partner"
    API_KEY = "api_key"
    DEVICE = "device"
    ALLOCATION = "allocation"
    SIGNING_KEY = "signing_key"


@dataclass(frozen=True)
class Subject:
    """What was acted on."""

    kind: SubjectKind
    id: str

    @classmethod
    def of(cls, kind: SubjectKind, object_id: uuid.UUID | int | str) -> Subject:
        return cls(kind, str(object_id))


def clean_details(details: dict[str, object] | None) -> dict[str, str]:
    """Details as stored: at most MAX_DETAILS text values, each cut to a bounded length, so
    no act can fail for the size of its audit entry."""
    out: dict[str, str] = {}
    for key, value in list((details or {}).items())[:MAX_DETAILS]:
        if value is None:
            continue
        out[key[:40]] = str(value)[:MAX_DETAIL_VALUE_CHARS]
    return out


@dataclass(frozen=True)
class AuditEntryRecord:
    """One entry as stored."""

    id: int
    create_time: dt.datetime
    actor_kind: ActorKind
    actor_id: uuid.UUID | None
    actor_key_id: uuid.UUID | None
    action: str
    subject_kind: str
    subject_id: str
    event_id: uuid.UUID | None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditFilter:
    """ListAuditEntries' filters; None = any."""

    actor_id: uuid.UUID | None = None
    """A user, partner or device id; a partner's key id matches that key's entries."""
    action: str | None = None
    subject_kind: str | None = None
    subject_id: str | None = None
    event_id: uuid.UUID | None = None
    start_time: dt.datetime | None = None
    """Inclusive."""
    end_time: dt.datetime | None = None
    """Exclusive."""

    def check(self) -> None:
        """INVALID_ARGUMENT for an empty time range."""
        if (
            self.start_time is not None
            and self.end_time is not None
            and self.end_time <= self.start_time
        ):
            raise InvalidArgument([FieldViolation("end_time", "must be after start_time")])

    def fingerprint(self) -> dict[str, str]:
        """The filters as a page token's query fingerprint holds them."""
        return {k: str(v) for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True)
class Visibility:
    """Which entries a caller may read: everything (ADMIN), or the union of the order
    entries (SUPPORT) and the entries of the events they organize (ORGANIZER)."""

    everything: bool
    orders: bool
    organizer_id: uuid.UUID | None

    @property
    def nothing(self) -> bool:
        return not self.everything and not self.orders and self.organizer_id is None


def visibility_for(principal: Principal) -> Visibility:
    """What the caller's roles let it read (the policy table admits ADMIN, SUPPORT and
    ORGANIZER; any other caller sees nothing)."""
    if principal.kind is not PrincipalKind.USER:
        return Visibility(everything=False, orders=False, organizer_id=None)
    return Visibility(
        everything=principal.has(Role.ADMIN),
        orders=principal.has(Role.SUPPORT),
        organizer_id=principal.user_id if principal.has(Role.ORGANIZER) else None,
    )


def may_filter_event(visibility: Visibility, organizer_of_event: uuid.UUID | None) -> bool:
    """An event filter is allowed to ADMIN and SUPPORT (support then sees that event's order
    entries), and to the event's own organizer; an ORGANIZER naming another organizer's
    event is refused rather than shown an empty page, so that "no entries" always means
    there are none."""
    if visibility.everything or visibility.orders:
        return True
    return visibility.organizer_id is not None and organizer_of_event == visibility.organizer_id
