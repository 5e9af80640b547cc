"""Pure booking rules: selections, limits, who may see or refund an order."""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from ticketd.auth.principal import Principal, Role
from ticketd.errors import (
    Aborted,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Precondition,
    Reason,
    not_found,
)
from ticketd.shared import EndCustomer

# Ticket codes: 24 random bytes = 192 bits, 32 URL-safe characters, never derived from ids.
TICKET_CODE_BYTES = 24
MAX_REFUND_REASON = 1_000


class OrderStatus(StrEnum):
    CONFIRMED = "CONFIRMED"
    REFUNDED = "REFUNDED"


class TicketStatus(StrEnum):
    VALID = "VALID"
    USED = "USED"
    VOID = "VOID"


@dataclass(frozen=True)
class SpecificSeats:
    seat_ids: tuple[int, ...]

    @property
    def quantity(self) -> int:
        return len(self.seat_ids)


@dataclass(frozen=True)
class BestAvailable:
    section_id: uuid.UUID
    quantity: int


Selection = SpecificSeats | BestAvailable


@dataclass(frozen=True)
class Channel:
    """Which places a caller may take (issue 13), passed to SQL seat_is_free_for: an open
    allocation's places only by its partner; the rest (the public pool) by accounts, and by
    a partner whose `public_sales` flag is set."""

    partner_id: uuid.UUID | None = None
    public_pool: bool = True


PUBLIC = Channel()


@dataclass(frozen=True)
class AllocationRecord:
    """Places of an event set aside for one partner's channel (issue 13)."""

    id: uuid.UUID
    event_id: uuid.UUID
    partner_id: uuid.UUID
    request_id: uuid.UUID
    create_time: dt.datetime
    release_time: dt.datetime | None
    """When its unsold places return (or returned) to the public pool; None = never."""
    released: bool
    """release_time has passed (database clock at the read)."""
    seat_ids: tuple[int, ...]


def allocation_not_found(allocation_id: uuid.UUID) -> NotFound:
    return not_found(Reason.ALLOCATION_NOT_FOUND, "allocation", allocation_id=allocation_id)


@dataclass(frozen=True)
class EventRefunds:
    """What cancelling an event did to its orders."""

    refunded_orders: int
    attended_orders: int
    """Live orders left CONFIRMED because a ticket of theirs was used at a gate."""
    attended_order_ids: tuple[uuid.UUID, ...]
    """The first of those, oldest first, at most as many as the caller asked to see."""


@dataclass(frozen=True)
class TicketRecord:
    id: uuid.UUID
    seat_id: int
    section_id: uuid.UUID
    section_name: str
    row_label: str | None
    seat_number: int | None
    seat_label: str | None
    code: str
    status: TicketStatus
    price_minor: int
    signed_code: str = ""
    """The ticket's signed code (issue 14), filled in by GetOrder for the owner only."""


@dataclass(frozen=True)
class OrderRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    customer_id: uuid.UUID
    request_id: uuid.UUID
    status: OrderStatus
    total_minor: int
    currency_code: str
    create_time: dt.datetime
    refund_time: dt.datetime | None
    refund_reason: str | None
    payment_reference: str | None = None
    """ConfirmHold's payment_reference (the payment provider's id); None for BookSeats."""
    tickets: tuple[TicketRecord, ...] = field(default=())
    partner_id: uuid.UUID | None = None
    """The partner that sold it (issue 13); None for the public channel. Then
    `customer_id` is the partner's end customer's id (partner_customers), not an account."""
    end_customer: EndCustomer | None = None


def new_ticket_code() -> str:
    return secrets.token_urlsafe(TICKET_CODE_BYTES)


def validate_selection(seat_ids: list[int] | None, best: BestAvailable | None) -> Selection:
    """The selection as the domain sees it; no seat id listed twice.

    The contract declares (and the edge enforces) the rest: exactly one selection, 1..100
    seat ids that are positive, a quantity of 1..100.
    """
    if seat_ids is not None:
        seen: set[int] = set()
        twice = []
        for i, sid in enumerate(seat_ids):
            if sid in seen:
                twice.append(FieldViolation(f"seat_ids.ids[{i}]", f"seat {sid} is listed twice"))
            seen.add(sid)
        if twice:
            raise InvalidArgument(twice)
        return SpecificSeats(tuple(sorted(seat_ids)))
    assert best is not None, "the contract requires one selection"
    return best


def request_fingerprint(event_id: uuid.UUID, selection: Selection) -> str:
    """What a request_id was first used for; a replay must match it exactly."""
    if isinstance(selection, SpecificSeats):
        what = "seats:" + ",".join(map(str, selection.seat_ids))
    else:
        what = f"best:{selection.section_id}:{selection.quantity}"
    return hashlib.sha256(f"{event_id}|{what}".encode()).hexdigest()[:32]


def not_on_sale(event_id: uuid.UUID, why: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"the event is not on sale: {why}",
        reason=Reason.EVENT_NOT_ON_SALE,
        metadata={"event_id": str(event_id)},
    )


def check_order_limit(quantity: int, max_per_order: int) -> None:
    if quantity > max_per_order:
        raise FailedPrecondition(
            f"at most {max_per_order} tickets per order",
            reason=Reason.LIMIT_EXCEEDED,
            metadata={"limit": "max_tickets_per_order", "max": str(max_per_order)},
        )


def check_customer_limit(held: int, quantity: int, max_per_customer: int | None) -> None:
    if max_per_customer is not None and held + quantity > max_per_customer:
        raise FailedPrecondition(
            f"at most {max_per_customer} tickets per customer for this event (you hold {held})",
            reason=Reason.LIMIT_EXCEEDED,
            metadata={
                "limit": "max_tickets_per_customer",
                "max": str(max_per_customer),
                "held": str(held),
            },
        )


def is_owner(principal: Principal, customer_id: uuid.UUID, partner_id: uuid.UUID | None) -> bool:
    """Whose an order or hold is: a partner's API key owns what its partner sold (for any
    of its end customers); an account owns what it bought itself on the public channel."""
    if principal.partner_id is not None:
        return partner_id == principal.partner_id
    return partner_id is None and principal.user_id == customer_id


def check_on_behalf_of(principal: Principal, on_behalf_of: EndCustomer | None) -> None:
    """A partner sells only for a named end customer; nobody else names one."""
    if principal.partner_id is not None and on_behalf_of is None:
        raise InvalidArgument.one(
            "on_behalf_of", "is required: a partner sells to one of its end customers"
        )
    if principal.partner_id is None and on_behalf_of is not None:
        raise InvalidArgument.one(
            "on_behalf_of", "only a partner's API key sells on behalf of an end customer"
        )


def can_read_order(
    principal: Principal,
    customer_id: uuid.UUID,
    event_organizer_id: uuid.UUID,
    partner_id: uuid.UUID | None = None,
) -> bool:
    if is_owner(principal, customer_id, partner_id):
        return True
    if principal.partner_id is not None:
        return False
    if principal.has(Role.ADMIN, Role.SUPPORT):
        return True
    return principal.has(Role.ORGANIZER) and principal.user_id == event_organizer_id


def may_see_codes(
    principal: Principal, customer_id: uuid.UUID, partner_id: uuid.UUID | None = None
) -> bool:
    """Ticket codes are bearer credentials: only the order's owner reads them.

    Not SUPPORT (who can list every customer's orders), not the event's organizer, and not
    ADMIN either: nothing an admin does needs a customer's live code, and an admin token is
    the one worth stealing. Staff replace codes instead (RotateTicketCodes); the owner then
    reads the new ones. A partner's orders are the partner's: it delivers the codes to its
    end customers (SUPPORT sees those orders, not their codes).
    """
    return is_owner(principal, customer_id, partner_id)


def ensure_can_rotate(
    principal: Principal, customer_id: uuid.UUID, partner_id: uuid.UUID | None = None
) -> None:
    """The owner, or SUPPORT/ADMIN on the owner's behalf (re-sending codes), may rotate."""
    if is_owner(principal, customer_id, partner_id) or principal.has(Role.ADMIN, Role.SUPPORT):
        return
    raise PermissionDenied(
        "you may not rotate the codes of this order", reason=Reason.NOT_ORDER_OWNER
    )


def check_can_rotate(*, refunded: bool, event_cancelled: bool, event_started: bool) -> None:
    """Codes are replaced only before the event starts, for a live order: a refunded
    order's tickets admit nobody anyway, and once the event has started a gate may be
    admitting the holder with the old code at this very moment."""
    if refunded:
        raise FailedPrecondition("the order is refunded", reason=Reason.ALREADY_REFUNDED)
    if event_cancelled:
        raise FailedPrecondition("the event is cancelled", reason=Reason.EVENT_CANCELLED)
    if event_started:
        raise FailedPrecondition(
            "ticket codes cannot be rotated once the event has started",
            reason=Reason.EVENT_STARTED,
        )


def ensure_can_refund(
    principal: Principal, customer_id: uuid.UUID, partner_id: uuid.UUID | None = None
) -> None:
    """SUPPORT/ADMIN; the customer who bought it; the partner that sold it (under the same
    rules as customers: before the start, no ticket used)."""
    if principal.has(Role.ADMIN, Role.SUPPORT):
        return
    owner = is_owner(principal, customer_id, partner_id)
    if owner and (principal.has(Role.CUSTOMER) or principal.partner_id is not None):
        return
    raise PermissionDenied("you may not refund this order", reason=Reason.NOT_ORDER_OWNER)


def order_not_found(order_id: uuid.UUID) -> NotFound:
    return not_found(Reason.ORDER_NOT_FOUND, "order", order_id=order_id)


def seat_locked() -> Aborted:
    return Aborted(
        "a requested seat is being booked by someone else right now; retry",
        reason=Reason.SEAT_LOCKED,
    )


def validate_refund_reason(reason: str) -> str:
    cleaned = reason.strip()
    if not cleaned or len(cleaned) > MAX_REFUND_REASON:
        raise InvalidArgument.one("reason", f"1..{MAX_REFUND_REASON} characters")
    return cleaned


# Holds (issue 12) ---------------------------------------------------------------------------

MAX_PAYMENT_REFERENCE = 200


class HoldStatus(StrEnum):
    ACTIVE = "ACTIVE"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"
    """Never stored: ACTIVE past its expire_time on the database clock (SQL hold_expired)."""


@dataclass(frozen=True)
class HoldSeatRecord:
    seat_id: int
    section_id: uuid.UUID
    section_name: str
    row_label: str | None
    seat_number: int | None
    seat_label: str | None
    price_minor: int


@dataclass(frozen=True)
class HoldRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    customer_id: uuid.UUID
    request_id: uuid.UUID
    status: HoldStatus
    total_minor: int
    currency_code: str
    create_time: dt.datetime
    expire_time: dt.datetime
    order_id: uuid.UUID | None
    seats: tuple[HoldSeatRecord, ...] = field(default=())
    partner_id: uuid.UUID | None = None
    """The partner that made it; None for the public channel (as OrderRecord)."""
    end_customer: EndCustomer | None = None


def resolve_hold_ttl(
    requested: dt.timedelta | None, *, default: dt.timedelta, maximum: dt.timedelta
) -> dt.timedelta:
    """The ttl a hold gets: `default` when none is asked for, else 1 s .. `maximum`."""
    if requested is None:
        return min(default, maximum)
    if requested < dt.timedelta(seconds=1) or requested > maximum:
        raise InvalidArgument.one(
            "ttl", f"between 1s and {int(maximum.total_seconds())}s (TICKETING_HOLD_MAX_TTL)"
        )
    return requested


def hold_not_found(hold_id: uuid.UUID) -> NotFound:
    return not_found(Reason.HOLD_NOT_FOUND, "hold", hold_id=hold_id)


def can_read_hold(
    principal: Principal,
    customer_id: uuid.UUID,
    event_organizer_id: uuid.UUID,
    partner_id: uuid.UUID | None = None,
) -> bool:
    """Whoever may read the orders of this customer at this event may read their holds."""
    return can_read_order(principal, customer_id, event_organizer_id, partner_id)


def ensure_hold_owner(
    principal: Principal, customer_id: uuid.UUID, partner_id: uuid.UUID | None = None
) -> None:
    """A hold is its customer's (or its partner's): only they extend, confirm or release it."""
    if not is_owner(principal, customer_id, partner_id):
        raise PermissionDenied("this hold is not yours", reason=Reason.NOT_HOLD_OWNER)


def hold_not_active(hold_id: uuid.UUID, status: HoldStatus) -> FailedPrecondition:
    return FailedPrecondition(
        f"the hold is {status.value.lower()}",
        reason=Reason.HOLD_NOT_ACTIVE,
        metadata={"hold_id": str(hold_id), "status": status.value},
    )


def hold_expired_error(hold_id: uuid.UUID, taken: list[int]) -> FailedPrecondition:
    """A hold whose seats (some of them) belong to someone else now: nothing was written."""
    what = f"{len(taken)} of its seats were taken" if taken else "it expired"
    return FailedPrecondition(
        f"the hold expired and {what}",
        reason=Reason.HOLD_EXPIRED,
        metadata={"hold_id": str(hold_id), "seat_ids": ",".join(map(str, taken))},
        violations=[
            Precondition("SEAT", str(sid), "taken after the hold expired") for sid in taken
        ],
    )


def extended_expiry(
    *,
    create_time: dt.datetime,
    expire_time: dt.datetime,
    now: dt.datetime,
    ttl: dt.timedelta,
    max_ttl: dt.timedelta,
) -> dt.datetime:
    """The new expire_time of an active hold extended by `ttl` from `now`: never earlier
    than it was, and never more than `max_ttl` after the hold's creation (else
    HOLD_LIMIT_EXCEEDED: a countdown that can be reset forever is a seat taken forever)."""
    wanted = max(expire_time, now + ttl)
    limit = create_time + max_ttl
    if wanted > limit:
        raise FailedPrecondition(
            f"a hold lives at most {int(max_ttl.total_seconds())}s from its creation",
            reason=Reason.HOLD_LIMIT_EXCEEDED,
            metadata={"max_expire_time": limit.isoformat()},
        )
    return wanted


def hold_confirm_fingerprint(hold_id: uuid.UUID) -> str:
    """The request fingerprint of the order a ConfirmHold makes: its hold."""
    return hashlib.sha256(f"hold|{hold_id}".encode()).hexdigest()[:32]


def validate_payment_reference(reference: str) -> str | None:
    cleaned = reference.strip()
    if len(cleaned) > MAX_PAYMENT_REFERENCE:
        raise InvalidArgument.one(
            "payment_reference", f"at most {MAX_PAYMENT_REFERENCE} characters"
        )
    return cleaned or None


# WatchOrders (issue 15): one stream of order changes for all orders, filtered per reader.


@dataclass(frozen=True)
class OrderChangeRecord:
    """One order change as WatchOrders sends it (the buyer is never named)."""

    sequence: int
    order_id: uuid.UUID
    event_id: uuid.UUID
    status: OrderStatus
    partner_id: uuid.UUID | None
    total_minor: int
    currency_code: str
    change_time: dt.datetime | None
    caught_up: bool = False
    """Not a change: everything up to `sequence` has been sent (see caught_up_at)."""

    @classmethod
    def caught_up_at(cls, sequence: int) -> OrderChangeRecord:
        """The marker WatchOrders sends once its backlog is sent: the reader has every
        change up to `sequence` it may see, and may resume from there."""
        return cls(
            sequence=sequence,
            order_id=uuid.UUID(int=0),
            event_id=uuid.UUID(int=0),
            status=OrderStatus.CONFIRMED,
            partner_id=None,
            total_minor=0,
            currency_code="",
            change_time=None,
            caught_up=True,
        )


@dataclass(frozen=True)
class OrderWatchScope:
    """Whose order changes a reader receives: everyone's, or the union of those set."""

    everyone: bool = False
    partner_id: uuid.UUID | None = None
    """A partner's key: the orders it sold."""
    organizer_id: uuid.UUID | None = None
    """An ORGANIZER: the orders of its events."""
    customer_id: uuid.UUID | None = None
    """Any signed-in user: the orders it bought itself (public channel)."""

    def admits(
        self, partner_id: uuid.UUID | None, organizer_id: uuid.UUID, customer_id: uuid.UUID
    ) -> bool:
        """Whether a change of an order sold by `partner_id` (None: public channel), of an
        event of `organizer_id`, bought by `customer_id`, is this reader's (the same test as
        order_stream.changes_after's SQL, for pages the readers share)."""
        return (
            self.everyone
            or (self.partner_id is not None and partner_id == self.partner_id)
            or (self.organizer_id is not None and organizer_id == self.organizer_id)
            or (
                self.customer_id is not None
                and partner_id is None
                and customer_id == self.customer_id
            )
        )


def order_watch_scope(principal: Principal) -> OrderWatchScope:
    """What WatchOrders shows a caller, as GetOrder would let it read each order: a
    partner its own sales only; ADMIN and SUPPORT every order; an ORGANIZER its events'
    orders; and every user its own purchases (a CUSTOMER sees only those)."""
    if principal.partner_id is not None:
        return OrderWatchScope(partner_id=principal.partner_id)
    if principal.has(Role.ADMIN, Role.SUPPORT):
        return OrderWatchScope(everyone=True)
    return OrderWatchScope(
        organizer_id=principal.user_id if principal.has(Role.ORGANIZER) else None,
        customer_id=principal.user_id,
    )
