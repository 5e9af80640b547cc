"""Pure event rules: the event model, input validation, who may manage an event."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from ticketd.auth.principal import Principal, Role
from ticketd.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    QuotaViolation,
    Reason,
    ResourceExhausted,
)
from ticketd.events.currencies import is_priceable
from ticketd.shared import SectionKind

MAX_EVENT_NAME = 200
MAX_DESCRIPTION = 5_000
MAX_PRICE_MINOR = 100_000_000
MAX_TICKETS_PER_ORDER = 100
MAX_TICKETS_PER_CUSTOMER = 10_000
MAX_CANCEL_REASON = 1_000
# CancelEvent names at most this many attended orders (38 bytes each on the wire, so the
# response stays far below the smallest allowed message limit); the count is always exact.
MAX_REPORTED_ATTENDED_ORDERS = 1_000


class EventStatus(StrEnum):
    ON_SALE = "ON_SALE"
    STARTED = "STARTED"
    CANCELLED = "CANCELLED"


class SeatStatus(StrEnum):
    AVAILABLE = "AVAILABLE"
    SOLD = "SOLD"
    HELD = "HELD"
    """Under a live hold; a seat whose hold expired reads AVAILABLE (SQL seat_is_free)."""
    ALLOCATED = "ALLOCATED"
    """Free but in an open allocation of a partner (SQL seat_is_free_for, issue 13): not
    available to the public. Never stored: derived on the database clock."""


@dataclass(frozen=True)
class EventSpec:
    venue_id: uuid.UUID
    name: str
    description: str
    start_time: dt.datetime
    end_time: dt.datetime | None
    currency_code: str
    section_prices: dict[str, int]
    max_tickets_per_order: int
    max_tickets_per_customer: int | None
    doors_open_time: dt.datetime | None = None


@dataclass(frozen=True)
class EventFilter:
    """Which events ListEvents shows."""

    venue_id: uuid.UUID | None
    organizer_id: uuid.UUID | None
    start_after: dt.datetime | None
    start_before: dt.datetime | None
    include_cancelled: bool


@dataclass(frozen=True)
class EventSectionRecord:
    section_id: uuid.UUID
    name: str
    kind: SectionKind
    price_minor: int
    capacity: int
    available_count: int = 0
    sold_count: int = 0
    held_count: int = 0


@dataclass(frozen=True)
class EventRecord:
    id: uuid.UUID
    venue_id: uuid.UUID
    venue_name: str
    time_zone: str
    organizer_id: uuid.UUID
    name: str
    description: str
    start_time: dt.datetime
    end_time: dt.datetime | None
    currency_code: str
    max_tickets_per_order: int
    max_tickets_per_customer: int | None
    capacity: int
    status: EventStatus
    cancel_reason: str | None
    cancel_time: dt.datetime | None
    create_time: dt.datetime
    doors_open_time: dt.datetime | None = None
    sections: tuple[EventSectionRecord, ...] = field(default=())

    @property
    def available_count(self) -> int:
        return sum(s.available_count for s in self.sections)

    @property
    def sold_count(self) -> int:
        return sum(s.sold_count for s in self.sections)


@dataclass(frozen=True)
class SeatRecord:
    id: int
    section_id: uuid.UUID
    section_name: str
    row_label: str | None
    seat_number: int | None
    seat_label: str | None
    price_minor: int
    status: SeatStatus


@dataclass(frozen=True)
class SeatChangeRecord:
    """One entry of an event's seat stream: a change, or (snapshot) a seat's state as of
    change `sequence`."""

    sequence: int
    seat_id: int
    section_id: uuid.UUID
    status: SeatStatus
    change_time: dt.datetime
    snapshot: bool = False
    snapshot_complete: bool = False


def _control_free(value: str) -> bool:
    return not any((ord(ch) < 32 and ch not in "\n\t") or ord(ch) == 127 for ch in value)


def validate_event_fields(spec: EventSpec) -> None:
    """Checks that need no database; raises INVALID_ARGUMENT with every bad field."""
    out: list[FieldViolation] = []
    name = spec.name.strip()
    if not name:
        out.append(FieldViolation("name", "is required"))
    elif len(name) > MAX_EVENT_NAME or not _control_free(name) or "\n" in name:
        out.append(FieldViolation("name", f"1..{MAX_EVENT_NAME} characters, one line"))
    if len(spec.description) > MAX_DESCRIPTION or not _control_free(spec.description):
        out.append(FieldViolation("description", f"at most {MAX_DESCRIPTION} characters"))
    out += event_time_violations(spec.start_time, spec.doors_open_time, spec.end_time)
    if not is_priceable(spec.currency_code):
        # The real list, not a pattern: "ZZZ" has the shape of a code and is none.
        out.append(
            FieldViolation("currency_code", "must be an active ISO 4217 currency code such as EUR")
        )
    if not 1 <= spec.max_tickets_per_order <= MAX_TICKETS_PER_ORDER:
        out.append(
            FieldViolation(
                "max_tickets_per_order", f"must be between 1 and {MAX_TICKETS_PER_ORDER}"
            )
        )
    cap = spec.max_tickets_per_customer
    if cap is not None and not 1 <= cap <= MAX_TICKETS_PER_CUSTOMER:
        out.append(
            FieldViolation(
                "max_tickets_per_customer", f"must be between 1 and {MAX_TICKETS_PER_CUSTOMER}"
            )
        )
    for key, price in sorted(spec.section_prices.items()):
        if not 0 <= price <= MAX_PRICE_MINOR:
            out.append(
                FieldViolation(
                    f"section_prices[{key[:40]}]", f"must be between 0 and {MAX_PRICE_MINOR}"
                )
            )
    if out:
        raise InvalidArgument(out)


def check_prices_cover_sections(
    prices: dict[str, int], section_ids: list[uuid.UUID], now: dt.datetime, start: dt.datetime
) -> None:
    """Every venue section priced, nothing else, and the start in the future (db clock)."""
    out: list[FieldViolation] = []
    if start <= now:
        out.append(FieldViolation("start_time", "must be in the future"))
    known = {str(s) for s in section_ids}
    for sid in sorted(known - prices.keys()):
        out.append(FieldViolation(f"section_prices[{sid}]", "every section needs a price"))
    for key in sorted(prices.keys() - known):
        out.append(FieldViolation(f"section_prices[{key[:40]}]", "not a section of this venue"))
    if out:
        raise InvalidArgument(out)


def ensure_can_manage(principal: Principal, organizer_id: uuid.UUID) -> None:
    """Only the owning organizer or an ADMIN may change or cancel an event."""
    if principal.has(Role.ADMIN):
        return
    if principal.has(Role.ORGANIZER) and principal.user_id == organizer_id:
        return
    raise PermissionDenied(
        "only the event's organizer or an admin may do this", reason=Reason.NOT_EVENT_OWNER
    )


def check_can_cancel(event: EventRecord) -> None:
    """An event is cancelled once, and only before it starts (then its orders can still be
    refunded; after the start people have been admitted on them)."""
    if event.status is EventStatus.CANCELLED:
        raise FailedPrecondition("the event is already cancelled", reason=Reason.EVENT_CANCELLED)
    if event.status is EventStatus.STARTED:
        raise event_started_error(event.id)


def event_started_error(event_id: uuid.UUID) -> FailedPrecondition:
    """CancelEvent after the start (database clock, judged at the write)."""
    return FailedPrecondition(
        "the event has started: it can no longer be cancelled",
        reason=Reason.EVENT_STARTED,
        metadata={"event_id": str(event_id)},
    )


@dataclass(frozen=True)
class CancelResult:
    """A cancelled event and what happened to its orders."""

    event: EventRecord
    refunded_orders: int
    attended_orders: int
    """Orders left CONFIRMED because a ticket of theirs was used at a gate."""
    attended_order_ids: tuple[uuid.UUID, ...]
    """The first MAX_REPORTED_ATTENDED_ORDERS of those, oldest first."""


@dataclass(frozen=True)
class EventQuotas:
    """Caps on what one organizer may create (ADMIN is exempt: admins run the system)."""

    places_per_event: int
    """`TICKETING_QUOTA_EVENT_PLACES`: most places (inventory rows) in one event."""
    live_events: int
    """`TICKETING_QUOTA_LIVE_EVENTS`: most events on sale at once per organizer; 0 = no cap."""


def quota_applies(principal: Principal) -> bool:
    """Organizer quotas bind everyone but ADMIN (who sets them and may need to exceed them)."""
    return not principal.has(Role.ADMIN)


def _quota_exceeded(
    principal: Principal, quota: str, limit: int, asked: int, what: str
) -> ResourceExhausted:
    return ResourceExhausted(
        f"quota exceeded: {what}",
        reason=Reason.QUOTA_EXCEEDED,
        metadata={"quota": quota, "limit": str(limit), "requested": str(asked)},
        quota_violations=[QuotaViolation(f"organizer:{principal.user_id}", what)],
    )


def check_places_quota(principal: Principal, capacity: int, quotas: EventQuotas) -> None:
    """An event of `capacity` places must fit the per-event cap (equal to it is fine)."""
    if quota_applies(principal) and capacity > quotas.places_per_event:
        raise _quota_exceeded(
            principal,
            "places_per_event",
            quotas.places_per_event,
            capacity,
            f"an event may have at most {quotas.places_per_event} places; "
            f"this venue has {capacity}",
        )


def check_live_events_quota(principal: Principal, live_events: int, quotas: EventQuotas) -> None:
    """One more event on sale must fit: `live_events` is how many the organizer has now."""
    cap = quotas.live_events
    if quota_applies(principal) and cap and live_events + 1 > cap:
        raise _quota_exceeded(
            principal,
            "live_events",
            cap,
            live_events + 1,
            f"an organizer may have at most {cap} events on sale at once; "
            "cancel one or wait until one starts",
        )


def event_fingerprint(spec: EventSpec) -> str:
    """What a CreateEvent request_id was first used for; a repeat must match it exactly."""
    body = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]


def validate_cancel_reason(reason: str) -> str:
    cleaned = reason.strip()
    if not cleaned or len(cleaned) > MAX_CANCEL_REASON:
        raise InvalidArgument.one("reason", f"1..{MAX_CANCEL_REASON} characters")
    return cleaned


# --- UpdateEvent: the scan window's fields -------------------------------------------------

UPDATABLE_FIELDS = ("doors_open_time", "end_time")


def event_time_violations(
    start: dt.datetime, doors: dt.datetime | None, end: dt.datetime | None, prefix: str = ""
) -> list[FieldViolation]:
    """CreateEvent's and UpdateEvent's one check of the times: doors before start, end after."""
    out: list[FieldViolation] = []
    if end is not None and end <= start:
        out.append(FieldViolation(f"{prefix}end_time", "must be after start_time"))
    if doors is not None and doors >= start:
        out.append(FieldViolation(f"{prefix}doors_open_time", "must be before start_time"))
    return out


@dataclass(frozen=True)
class EventTimesUpdate:
    """What an UpdateEvent changes: each field in `fields` gets its value here (None clears)."""

    fields: frozenset[str]
    doors_open_time: dt.datetime | None = None
    end_time: dt.datetime | None = None

    def applied_to(self, event: EventRecord) -> tuple[dt.datetime | None, dt.datetime | None]:
        """(doors_open_time, end_time) after the update."""
        doors = self.doors_open_time if "doors_open_time" in self.fields else event.doors_open_time
        end = self.end_time if "end_time" in self.fields else event.end_time
        return doors, end


def resolve_update_mask(paths: list[str], set_fields: set[str]) -> frozenset[str]:
    """The fields an UpdateEvent changes (AIP-134). An empty mask means the updatable fields
    set in the request's event; "*" means all updatable fields; anything else is refused."""
    if not paths:
        chosen = frozenset(f for f in UPDATABLE_FIELDS if f in set_fields)
        if not chosen:
            raise InvalidArgument.one(
                "update_mask", f"name the fields to change: {', '.join(UPDATABLE_FIELDS)}"
            )
        return chosen
    out: set[str] = set()
    bad: list[FieldViolation] = []
    for i, path in enumerate(paths):
        if path == "*":
            out.update(UPDATABLE_FIELDS)
        elif path in UPDATABLE_FIELDS:
            out.add(path)
        else:
            bad.append(
                FieldViolation(
                    f"update_mask.paths[{i}]",
                    f"cannot be changed; updatable: {', '.join(UPDATABLE_FIELDS)}",
                )
            )
    if bad:
        raise InvalidArgument(bad)
    return frozenset(out)


def check_can_update(event: EventRecord, window_state: str) -> None:
    """A cancelled event, or one whose scan window is over (gate_window), stays as it is."""
    if event.status is EventStatus.CANCELLED:
        raise FailedPrecondition("the event is cancelled", reason=Reason.EVENT_CANCELLED)
    if window_state == "EVENT_OVER":
        raise FailedPrecondition("the event is over", reason=Reason.EVENT_OVER)


# --- Staff: who works an event's gates ------------------------------------------------------


@dataclass(frozen=True)
class StaffRecord:
    event_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    display_name: str
    assign_time: dt.datetime
    assigned_by: uuid.UUID


def check_can_be_staff(user_id: uuid.UUID, roles: tuple[Role, ...] | frozenset[Role]) -> None:
    """Only an ENTRY_MANAGER works the gates; anyone else is refused with a clear reason."""
    if Role.ENTRY_MANAGER not in roles:
        raise FailedPrecondition(
            "only a user with the ENTRY_MANAGER role can be assigned to an event's gates",
            reason=Reason.NOT_ENTRY_MANAGER,
            metadata={"user_id": str(user_id)},
        )
