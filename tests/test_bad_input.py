"""Property-based bad input for every RPC of the five ticketing.v1 services.

Requests are generated from the message descriptors, not written per RPC: strings from a mix
of arbitrary text, SQL-looking text, unicode oddities, NUL and 10,000-character runs; integers
up to the int32/int64 limits; unknown enum numbers; repeated fields with duplicates and up to
10,000 elements; nested messages to a bounded depth; timestamps with extreme seconds and nanos.
Two examples in three start from a realistic request built from a fixture world (real event,
venue, section, seat, order and user ids, a real ticket code) and corrupt one to three fields
of it, at any depth, so that validation is passed often enough to reach the repositories and
PostgreSQL; generated string fields also draw those real ids now and then.

Each RPC is fuzzed with an ADMIN token (broadest access) and with a CUSTOMER token, as separate
derandomized cases; one more test, not derandomized, sends random requests to random RPCs with
both tokens. The answer must be one a client can act on (never INTERNAL or UNKNOWN), and a call
that failed must leave every application table exactly as it was (row counts and checksums).

Issue 10 extended it: time zones, currency codes and labels draw field-specific near misses
(zoneinfo directories and non-places, three-letter non-currencies and withdrawn codes, labels
with surrounding, inner and Unicode spaces and invisible characters), each with a targeted
property test whose oracle is independent of the server (the tzdata package's zone list, the
normalised labels); and every string field of every RPC gets bytes that are not UTF-8, sent
raw through a generic call: INVALID_ARGUMENT naming the field, never UNKNOWN.

Two server bugs found here are pinned by example tests of their own: a NUL in text that
reached PostgreSQL came back INTERNAL (SQLSTATE 22021), and a ValidateTicket refused with
SCAN_ID_MISMATCH still bumped the stored scan's repeat_count.
"""

from __future__ import annotations

import importlib.resources
import time
import unicodedata
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    PASSWORD,
    Account,
    Stubs,
    best_request,
    error_details,
    future,
    scan_request,
    small_layout,
    unique_email,
)
from ticketd.app import SERVICE_NAMES
from ticketd.auth.policy import POLICY
from ticketd.auth.principal import Role
from ticketd.events.currencies import ACTIVE_CURRENCIES
from ticketing.v1 import (
    audit_pb2,
    auth_pb2,
    booking_pb2,
    common_pb2,
    event_pb2,
    gate_pb2,
    partner_pb2,
    venue_pb2,
)

# A failing example with a 10,000-element list has a large repr.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

S = grpc.StatusCode
ACCEPTABLE = frozenset(
    {
        S.OK,
        S.INVALID_ARGUMENT,
        S.NOT_FOUND,
        S.FAILED_PRECONDITION,
        S.PERMISSION_DENIED,
        S.ALREADY_EXISTS,
        S.ABORTED,
        S.RESOURCE_EXHAUSTED,
    }
)
# Login answers bad credentials (and malformed ones) with UNAUTHENTICATED by contract.
# EnrollDevice likewise answers a bad enrollment token (issue 14).
ALSO_ACCEPTABLE = {
    "/ticketing.v1.AuthService/Login": frozenset({S.UNAUTHENTICATED}),
    "/ticketing.v1.GateService/EnrollDevice": frozenset({S.UNAUTHENTICATED}),
}
CALLERS = ("ADMIN", "CUSTOMER")


def _all_methods() -> list[str]:
    pool = descriptor_pool.Default()
    return sorted(
        f"/{svc.full_name}/{m.name}"
        for svc in (pool.FindServiceByName(n) for n in SERVICE_NAMES)
        for m in svc.methods
    )


METHODS = _all_methods()


def _method(full: str) -> Any:
    service, name = full.lstrip("/").split("/")
    return descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]


def _short(full: str) -> str:
    return full.removeprefix("/ticketing.v1.").replace("/", ".")


# Placeholders (valid UUIDs) that `materialize` swaps for a brand-new event or order just
# before a call, so that cancelling and refunding stay reachable however often they succeed.
FRESH_EVENT = "00000000-0000-4000-8000-00000000e7e7"
FRESH_ORDER = "00000000-0000-4000-8000-00000000d0d0"
FRESH_HOLD = "00000000-0000-4000-8000-00000000d0d1"


# --- the fixture world -----------------------------------------------------------------------


@dataclass(repr=False)
class World:
    stubs: Stubs
    admin: Account  # holds ADMIN only (not the bootstrap admin, whose roles others rely on)
    customer: Account  # holds CUSTOMER only; owns `order` and `refund_order`
    organizer: Account
    victim: Account  # the only user id offered to SetUserRoles
    venue: venue_pb2.Venue
    scratch_venue: venue_pb2.Venue  # the only venue id offered to UpdateVenue
    # Where the fresh events of CancelEvent & co. are made: two places, so the hundreds of
    # examples do not grow the seats table (and every snapshot's scan of it) by thousands.
    doomed_venue: venue_pb2.Venue
    event: event_pb2.Event
    cancelled_event: event_pb2.Event
    stock_event: event_pb2.Event  # 20,000 standing places: where fresh orders are booked
    window_event: event_pb2.Event  # the only event UpdateEvent is offered (gates open now)
    gate_staff: Account  # an ENTRY_MANAGER, the user AssignStaff / UnassignStaff are offered
    order: booking_pb2.Order
    refund_order: booking_pb2.Order
    used_code: str
    page_tokens: list[str]
    seat_ids: list[int]
    partner_id: str  # the only partner offered (issue 13)
    api_key_id: str  # a key of that partner, what RevokeApiKey is offered
    allocation_id: str  # an allocation of `event` to that partner
    replayed_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    strategies: dict[tuple[str, str, bool, int], Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # failure reports print it: keep it short
        return f"World(event={self.event.id}, venue={self.venue.id})"

    async def materialize(self, request: Message) -> None:
        """Point CancelEvent and RefundOrder at brand-new objects, and resolve placeholders.

        Cancelling the shared event or refunding the shared order would change what every
        later example meets, so those ids (and FRESH_EVENT / FRESH_ORDER in any top-level
        field) are replaced by a new event or order of their own. Examples stay replayable.
        """
        kind = request.DESCRIPTOR.full_name
        for f in request.DESCRIPTOR.fields:
            if f.type != FieldDescriptor.TYPE_STRING or f.is_repeated:
                continue
            value = getattr(request, f.name)
            shared_event = kind == "ticketing.v1.CancelEventRequest" and value == self.event.id
            shared_order = (
                kind == "ticketing.v1.RefundOrderRequest" and value == self.refund_order.id
            ) or (
                # Rotating the shared orders' codes would turn the world's known codes into
                # unknown ones for every later example.
                kind == "ticketing.v1.RotateTicketCodesRequest"
                and value in (self.order.id, self.refund_order.id)
            )
            if value == FRESH_EVENT or shared_event:
                event = await self.stubs.create_event(
                    self.organizer, self.doomed_venue, name="Doomed"
                )
                setattr(request, f.name, event.id)
            elif value == FRESH_ORDER or shared_order:
                stock = self.stock_event
                booked = await self.stubs.booking.BookSeats(
                    best_request(stock.id, stock.sections[-1].section_id, 1),
                    metadata=self.customer.md,
                )
                setattr(request, f.name, booked.order.id)
            elif value == FRESH_HOLD:
                # A new hold of the customer's on the stock event (holds change state).
                stock = self.stock_event
                held = await self.stubs.booking.HoldSeats(
                    booking_pb2.HoldSeatsRequest(
                        event_id=stock.id,
                        request_id=str(uuid.uuid4()),
                        best_available=booking_pb2.BestAvailable(
                            section_id=stock.sections[-1].section_id, quantity=1
                        ),
                    ),
                    metadata=self.customer.md,
                )
                setattr(request, f.name, held.hold.id)

    def md(self, caller: str) -> tuple[tuple[str, str], ...]:
        return self.admin.md if caller == "ADMIN" else self.customer.md

    @property
    def ga_section_id(self) -> str:
        return self.venue.sections[1].id

    def known_strings(self, name: str) -> list[str]:
        """Valid values for a field name, so that generated requests get past the first check."""
        known: dict[str, list[str]] = {
            "event_id": [self.event.id, self.cancelled_event.id, FRESH_EVENT],
            "venue_id": [self.venue.id],
            "section_id": [s.id for s in self.venue.sections],
            "order_id": [self.order.id, self.refund_order.id, FRESH_ORDER],
            "hold_id": [FRESH_HOLD],
            "partner_id": [self.partner_id],
            "key_id": [self.api_key_id],
            "allocation_id": [self.allocation_id],
            "contact_email": ["fuzz-partner@example.test"],
            "external_customer_id": ["fuzz-end-customer"],
            "user_id": [self.victim.user.id],
            "organizer_id": [self.organizer.user.id],
            "id": [self.scratch_venue.id],
            # Fixed per world, so that examples also replay ids: idempotent answers and the
            # REQUEST_ID_MISMATCH / SCAN_ID_MISMATCH refusals get exercised.
            "request_id": [self.order.request_id, self.replayed_id],
            "scan_id": [self.replayed_id],
            "code": [self.order.tickets[1].code, self.used_code],
            "email": [self.customer.email, self.customer.email.upper()],
            "customer_email": [self.customer.email, self.organizer.email],
            "email_prefix": [self.customer.email[:8], "root-admin"],
            "password": [PASSWORD],
            "display_name": ["Fuzzy"],
            "time_zone": ["Europe/Berlin", "UTC"],
            "currency_code": ["EUR"],
            "gate_id": ["north-1"],
            "page_token": self.page_tokens,
            "name": ["Main Hall"],
            "label": ["A"],
            "seat_labels": ["1"],
            "reason": ["changed plans"],
            "address": ["1 Main St"],
        }
        return known.get(name, [])

    def known_ints(self, name: str) -> list[int]:
        known: dict[str, list[int]] = {
            "ids": self.seat_ids,
            "quantity": [1, 2],
            "max_tickets_per_order": [4],
            "max_tickets_per_customer": [2],
            "seat_count": [3],
            "capacity": [5],
            "page_size": [1, 2],
        }
        return known.get(name, [])


@pytest.fixture(scope="module")
async def world(stubs: Stubs, admin: Account) -> World:
    fuzz_admin = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="fuzz-admin")
    customer = await stubs.register("fuzz-customer")
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="fuzz-org")
    victim = await stubs.register("fuzz-victim")
    gate_staff = await stubs.account_with_roles(
        admin, common_pb2.ROLE_ENTRY_MANAGER, tag="fuzz-gate"
    )
    venue = await stubs.create_venue(admin, small_layout(name="Fuzz Hall", ga=1_000))
    stock_venue = await stubs.create_venue(admin, small_layout(name="Fuzz Stock", ga=20_000))
    stock_event = await stubs.create_event(organizer, stock_venue, name="Fuzz Stock")
    scratch = await stubs.create_venue(admin, small_layout(name="Fuzz Scratch"))
    doomed = await stubs.create_venue(
        admin, small_layout(name="Fuzz Doomed", rows=1, seats=2, ga=0)
    )
    # Gates open now, so that the scans below and ValidateTicket's examples burn for real.
    event = await stubs.create_event(
        organizer, venue, name="Fuzz Show", max_per_order=10, doors_open_time=future(0)
    )
    window_event = await stubs.create_event(organizer, venue, name="Fuzz Window")
    cancelled = await stubs.create_event(organizer, venue, name="Fuzz Cancelled")
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=cancelled.id, reason="fixture"), metadata=admin.md
    )
    ga = venue.sections[1].id
    order = (
        await stubs.booking.BookSeats(best_request(event.id, ga, 2), metadata=customer.md)
    ).order
    refund_order = (
        await stubs.booking.BookSeats(best_request(event.id, ga, 1), metadata=customer.md)
    ).order
    used = order.tickets[0].code
    scanned = await stubs.gate.ValidateTicket(scan_request(used, event.id), metadata=admin.md)
    assert scanned.result == gate_pb2.VALIDATION_RESULT_ADMITTED
    tokens = [
        (
            await stubs.venues.ListVenues(
                venue_pb2.ListVenuesRequest(page_size=1), metadata=admin.md
            )
        ).next_page_token,
        (
            await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(page_size=1), metadata=admin.md)
        ).next_page_token,
    ]
    seats = await stubs.all_seats(event.id, section_id=venue.sections[0].id)
    partner = (
        await stubs.partners.CreatePartner(
            partner_pb2.CreatePartnerRequest(
                display_name="Fuzz Reseller", contact_email=unique_email("fuzz-partner")
            ),
            metadata=admin.md,
        )
    ).partner
    key = await stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(partner_id=partner.id, display_name="fuzz"),
        metadata=admin.md,
    )
    allocation = await stubs.events.AllocateSeats(
        event_pb2.AllocateSeatsRequest(
            event_id=event.id,
            partner_id=partner.id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=ga, quantity=1),
        ),
        metadata=organizer.md,
    )
    return World(
        stubs=stubs,
        admin=fuzz_admin,
        customer=customer,
        organizer=organizer,
        victim=victim,
        venue=venue,
        scratch_venue=scratch,
        doomed_venue=doomed,
        event=event,
        cancelled_event=cancelled,
        stock_event=stock_event,
        window_event=window_event,
        gate_staff=gate_staff,
        order=order,
        refund_order=refund_order,
        used_code=used,
        page_tokens=[t for t in tokens if t],
        seat_ids=[s.id for s in seats[:6]],
        partner_id=partner.id,
        api_key_id=key.api_key.key_id,
        allocation_id=allocation.allocation.id,
    )


# --- realistic requests, the starting point for corruption ------------------------------------


def _realistic(w: World, full: str) -> Message:
    """A request that, as it stands, would be accepted: what the mutation strategy corrupts."""
    name = full.rsplit("/", 1)[1]
    venue = small_layout(name=f"Fuzz {uuid.uuid4().hex[:6]}")
    builders: dict[str, Callable[[], Message]] = {
        "Register": lambda: auth_pb2.RegisterRequest(
            email=unique_email("fuzz-new"), password=PASSWORD, display_name="Fuzzy"
        ),
        "Login": lambda: auth_pb2.LoginRequest(email=w.customer.email, password=PASSWORD),
        "GetCurrentUser": lambda: auth_pb2.GetCurrentUserRequest(),
        "SetUserRoles": lambda: auth_pb2.SetUserRolesRequest(
            user_id=w.victim.user.id, roles=[common_pb2.ROLE_CUSTOMER]
        ),
        "ListUsers": lambda: auth_pb2.ListUsersRequest(page_size=3, email_prefix="fuzz"),
        # A wrong old password on purpose: a successful change would revoke the tokens every
        # later example is sent with (success is tested in tests/test_account_lockout.py).
        "ChangePassword": lambda: auth_pb2.ChangePasswordRequest(
            old_password="not the fuzz password", new_password="fuzz new password"
        ),
        "RevokeTokens": lambda: auth_pb2.RevokeTokensRequest(user_id=w.victim.user.id),
        "SetUserStatus": lambda: auth_pb2.SetUserStatusRequest(
            user_id=w.victim.user.id, status=common_pb2.USER_STATUS_ACTIVE
        ),
        "CreateVenue": lambda: venue_pb2.CreateVenueRequest(venue=venue),
        "UpdateVenue": lambda: venue_pb2.UpdateVenueRequest(
            venue=venue_pb2.Venue(
                id=w.scratch_venue.id,
                name=venue.name,
                address=venue.address,
                time_zone=venue.time_zone,
                sections=venue.sections,
            )
        ),
        "GetVenue": lambda: venue_pb2.GetVenueRequest(venue_id=w.venue.id),
        "ListVenues": lambda: venue_pb2.ListVenuesRequest(page_size=3),
        "CreateEvent": lambda: event_pb2.CreateEventRequest(
            venue_id=w.venue.id,
            name="Fuzz Gala",
            description="generated",
            start_time=future(20),
            end_time=future(20.1),
            doors_open_time=future(19.9),
            currency_code="EUR",
            section_prices={s.id: 1000 for s in w.venue.sections},
            max_tickets_per_order=4,
            max_tickets_per_customer=8,
        ),
        "CancelEvent": lambda: event_pb2.CancelEventRequest(event_id=FRESH_EVENT, reason="fuzzing"),
        "GetEvent": lambda: event_pb2.GetEventRequest(event_id=w.event.id),
        "ListEvents": lambda: event_pb2.ListEventsRequest(
            page_size=3,
            venue_id=w.venue.id,
            organizer_id=w.organizer.user.id,
            start_after=future(-1),
            start_before=future(365),
            include_cancelled=True,
        ),
        "WatchSeats": lambda: event_pb2.WatchSeatsRequest(event_id=w.event.id),
        "WatchSeatBatches": lambda: event_pb2.WatchSeatBatchesRequest(event_id=w.event.id),
        "ListSeats": lambda: event_pb2.ListSeatsRequest(
            event_id=w.event.id,
            section_id=w.ga_section_id,
            status=event_pb2.SEAT_STATUS_AVAILABLE,
            page_size=5,
        ),
        "BookSeats": lambda: best_request(w.event.id, w.ga_section_id, 1),
        "GetOrder": lambda: booking_pb2.GetOrderRequest(order_id=w.order.id),
        "ListOrders": lambda: booking_pb2.ListOrdersRequest(
            page_size=3, event_id=w.event.id, customer_email=w.customer.email
        ),
        "RefundOrder": lambda: booking_pb2.RefundOrderRequest(
            order_id=FRESH_ORDER, request_id=str(uuid.uuid4()), reason="fuzzing"
        ),
        "RotateTicketCodes": lambda: booking_pb2.RotateTicketCodesRequest(
            order_id=FRESH_ORDER, request_id=str(uuid.uuid4())
        ),
        # Holds (issue 12): each example acts on a fresh hold of the customer's.
        "HoldSeats": lambda: booking_pb2.HoldSeatsRequest(
            event_id=w.event.id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=w.ga_section_id, quantity=1),
        ),
        "ExtendHold": lambda: booking_pb2.ExtendHoldRequest(hold_id=FRESH_HOLD),
        "ConfirmHold": lambda: booking_pb2.ConfirmHoldRequest(
            hold_id=FRESH_HOLD, request_id=str(uuid.uuid4()), payment_reference="fuzz"
        ),
        "ReleaseHold": lambda: booking_pb2.ReleaseHoldRequest(hold_id=FRESH_HOLD),
        "GetHold": lambda: booking_pb2.GetHoldRequest(hold_id=FRESH_HOLD),
        "ListHolds": lambda: booking_pb2.ListHoldsRequest(page_size=3, event_id=w.event.id),
        "WatchOrders": lambda: booking_pb2.WatchOrdersRequest(event_id=w.event.id),
        "WatchGate": lambda: gate_pb2.WatchGateRequest(event_id=w.event.id),
        "UpdateEvent": lambda: event_pb2.UpdateEventRequest(
            event=event_pb2.Event(
                id=w.window_event.id, doors_open_time=future(0), end_time=future(30.2)
            ),
            update_mask=FieldMask(paths=["doors_open_time", "end_time"]),
        ),
        "AssignStaff": lambda: event_pb2.AssignStaffRequest(
            event_id=w.event.id, user_id=w.gate_staff.user.id
        ),
        "UnassignStaff": lambda: event_pb2.UnassignStaffRequest(
            event_id=w.window_event.id, user_id=w.gate_staff.user.id
        ),
        "ListStaff": lambda: event_pb2.ListStaffRequest(event_id=w.event.id, page_size=3),
        "ValidateTicket": lambda: scan_request(w.order.tickets[1].code, w.event.id, "fuzz-gate"),
        "ListScans": lambda: gate_pb2.ListScansRequest(
            event_id=w.event.id, gate_id="north-1", page_size=3
        ),
        "GetGateStats": lambda: gate_pb2.GetGateStatsRequest(event_id=w.event.id),
        # Offline gates (issue 14).
        "GetVerificationKeys": lambda: gate_pb2.GetVerificationKeysRequest(event_id=w.event.id),
        "ListRevocations": lambda: gate_pb2.ListRevocationsRequest(
            event_id=w.event.id, after_sequence=0, page_size=3
        ),
        "UploadOfflineScans": lambda: gate_pb2.UploadOfflineScansRequest(
            event_id=w.event.id,
            gate_id="fuzz-gate",
            scans=[
                gate_pb2.OfflineScan(
                    scan_id=str(uuid.uuid4()), code="fuzz-offline", scan_time=future(0)
                )
            ],
        ),
        "CreateDevice": lambda: gate_pb2.CreateDeviceRequest(
            event_id=w.event.id, gate_id="fuzz-gate", display_name="fuzz kiosk"
        ),
        "EnrollDevice": lambda: gate_pb2.EnrollDeviceRequest(enrollment_token="tke_fuzz"),
        "ListDevices": lambda: gate_pb2.ListDevicesRequest(event_id=w.event.id, page_size=3),
        "RevokeDevice": lambda: gate_pb2.RevokeDeviceRequest(device_id=str(uuid.uuid4())),
        "RotateSigningKey": lambda: gate_pb2.RotateSigningKeyRequest(event_id=w.event.id),
        "SetOfflineAdmission": lambda: gate_pb2.SetOfflineAdmissionRequest(
            event_id=w.event.id, allowed=True
        ),
        # Partner resellers (issue 13).
        "CreatePartner": lambda: partner_pb2.CreatePartnerRequest(
            display_name="Fuzzy", contact_email="fuzz-partner@example.test"
        ),
        "ListPartners": lambda: partner_pb2.ListPartnersRequest(page_size=3),
        "GetPartner": lambda: partner_pb2.GetPartnerRequest(partner_id=w.partner_id),
        "UpdatePartner": lambda: partner_pb2.UpdatePartnerRequest(
            partner_id=w.partner_id, public_sales=True
        ),
        "SetPartnerStatus": lambda: partner_pb2.SetPartnerStatusRequest(
            partner_id=w.partner_id, status=partner_pb2.PARTNER_STATUS_ACTIVE
        ),
        "CreateApiKey": lambda: partner_pb2.CreateApiKeyRequest(
            partner_id=w.partner_id, display_name="fuzz key"
        ),
        "ListApiKeys": lambda: partner_pb2.ListApiKeysRequest(partner_id=w.partner_id, page_size=3),
        "RevokeApiKey": lambda: partner_pb2.RevokeApiKeyRequest(key_id=w.api_key_id),
        "AllocateSeats": lambda: event_pb2.AllocateSeatsRequest(
            event_id=w.event.id,
            partner_id=w.partner_id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=w.ga_section_id, quantity=1),
        ),
        "ListAllocations": lambda: event_pb2.ListAllocationsRequest(
            event_id=w.event.id, page_size=3
        ),
        "ReleaseAllocation": lambda: event_pb2.ReleaseAllocationRequest(
            allocation_id=w.allocation_id
        ),
        # The audit log (issue 15): every filter set, on the fixture's own ids.
        "ListAuditEntries": lambda: audit_pb2.ListAuditEntriesRequest(
            page_size=3,
            actor_id=w.organizer.user.id,
            action="event.created",
            subject_kind="event",
            subject_id=w.event.id,
            event_id=w.event.id,
            start_time=future(-1),
            end_time=future(1),
        ),
    }
    return builders[name]()


# --- strategies derived from descriptors ------------------------------------------------------

SQLISH = [
    "'; DROP TABLE users;--",
    "' OR '1'='1",
    "1; SELECT pg_sleep(10)--",
    "Robert'); DROP TABLE events;--",
    "%",
    "_",
    "%%",
    "_%_",
    "\\",
    "\\%",
    "\\_",
    "\\\\",
    "$1",
    ":name",
    "\x00",
    "a\x00b",
    "\x00" * 8,
    "E'\\x00'",
]
ODD_UNICODE = [
    "",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\x7f",
    "\x1b[31m",
    "é",
    "e\u0301",
    "ǅ",
    "İ",
    "ß",
    "ﬀ",
    "Σ",
    "🎟️",
    "\u202eevil",
    "\ufeff",
    "\u2028",
    "\u200b",
    "\U0001d518\U0001d52b\U0001d526",  # mathematical fraktur letters
    "\U0010ffff",
    "null",
    "None",
    "00000000-0000-0000-0000-000000000000",
    "{00000000-0000-0000-0000-000000000000}",
    "urn:uuid:00000000-0000-0000-0000-000000000000",
]
LONG = [
    "x" * 10_000,
    "é" * 10_000,
    "%" * 10_000,
    "\x00" * 10_000,
    " " * 10_000,
    "🎟" * 10_000,
    "a" * 65,
    "a" * 101,
    "a" * 129,
    "a" * 201,
    "a" * 255,
    "a" * 501,
    "a" * 1_001,
    "a" * 5_001,
]
NOW = int(time.time())
_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_EDGE_INTS = [0, 1, -1, 2, 99, 100, 101, 500, 501, 1_000, 10_000, 10_001, 200_000, 200_001]
_EDGE_INTS += [100_000_000, 100_000_001]
MAX_DEPTH = 3


def timestamps() -> st.SearchStrategy[Timestamp]:
    seconds = st.one_of(
        st.integers(-(2**63), 2**63 - 1),
        st.sampled_from(
            [0, -1, -62135596800, -62135596801, 253402300799, 253402300800, 946684799, 7258118400]
        ),
        st.integers(NOW - 86_400 * 365, NOW + 86_400 * 365 * 3),
    )
    nanos = st.one_of(
        st.just(0),
        st.integers(-(2**31), 2**31 - 1),
        st.sampled_from([-1, 999_999_999, 1_000_000_000]),
    )
    return st.builds(lambda s, n: Timestamp(seconds=s, nanos=n), seconds, nanos)


# Field-specific near misses (issue 10, items 14-16): what a validator keyed on shape rather
# than on the real list lets through, or what an OS lookup turns into an OS error.
ZONE_LIKE = [
    *("America", "Etc", "Africa", "Europe", "US", "America/", "America/Argentina"),
    *("localtime", "Factory", "posixrules", "posix/Europe/Paris", "right/UTC", "posix"),
    *("zone.tab", "zone1970.tab", "tzdata.zi", "leapseconds", "iso3166.tab", "+VERSION"),
    *("../../etc/passwd", "/etc/localtime", "/usr/share/zoneinfo/UTC", "Europe/../UTC"),
    *("europe/berlin", "EUROPE/BERLIN", "Europe/Berlin/", " UTC", "UTC ", "Utc", "GMT+5"),
    *("Etc/GMT+5", "Etc/GMT+15", "EST5EDT", "Asia/Kolkata", "US/Pacific", "Etc/Unknown"),
]
CURRENCY_LIKE = [
    *("ZZZ", "ABC", "XXX", "XTS", "XAU", "XDR", "XBA", "HRK", "CUC", "SLL", "ZWL", "ANG"),
    *(
        "BGN",
        "VEF",
        "eur",
        "Eur",
        "EURO",
        "EU",
        " EUR",
        "EUR ",
        "E\u00a0R",
        "\uff25\uff35\uff32",
        "\u20ac",
    ),
    *("JPY", "BHD", "CLF", "XOF", "ZWG", "XCG", "SLE", "VED", "USN", "CHW"),
]
SPACES = [" ", "\u00a0", "\u2003", "\u3000", "\u2009", "\u202f", "\t", "\u200b", "\ufeff"]
LABEL_LIKE = [
    *("1", " 1", "1 ", "\u00a01", "1\u3000", "1\u200b", "\ufeff1", "\uff11", "A", "a", "A A"),
    *("A  A", "A\u00a0A", "A\u2003\u2003A", "A\tA", "e\u0301", "\u00e9", " ", "\u3000", ""),
    *("x" * 20 + " ", " " + "x" * 20, "x" * 21, "Stalls", "stalls ", "Stalls\u200b"),
]
FIELD_ODDITIES: dict[str, list[str]] = {
    "time_zone": ZONE_LIKE,
    "currency_code": CURRENCY_LIKE,
    "label": LABEL_LIKE,
    "seat_labels": LABEL_LIKE,
    "name": LABEL_LIKE,
}


def strings(known: list[str], *, small: bool, odd: Sequence[str] = ()) -> st.SearchStrategy[str]:
    parts: list[st.SearchStrategy[str]] = [
        st.text(max_size=12 if small else 40),
        st.sampled_from(SQLISH + ODD_UNICODE),
        st.uuids().map(str),
    ]
    if odd:
        parts += [st.sampled_from(odd), st.sampled_from(odd)]
    if not small:
        parts += [st.sampled_from(LONG), st.text(st.characters(codec="utf-8"), max_size=300)]
    # NUL anywhere in an otherwise ordinary string (PostgreSQL text cannot hold it).
    parts.append(st.text(max_size=8).map(lambda t: f"{t}\x00{t}"))
    if known:
        valid = st.sampled_from(known)
        parts += [
            valid,
            valid,
            valid,
            st.tuples(valid, st.sampled_from(SQLISH + ODD_UNICODE)).map("".join),
            valid.map(lambda v: f"{v}\x00"),
            valid.map(lambda v: f" {v.upper()} "),
        ]
    return st.one_of(parts)


def integers(f: FieldDescriptor, known: list[int]) -> st.SearchStrategy[int]:
    lo, hi = _INT_RANGES[f.type]
    edges = [v for v in (*_EDGE_INTS, lo, lo + 1, hi, hi - 1) if lo <= v <= hi]
    parts = [st.integers(lo, hi), st.sampled_from(edges), st.integers(max(lo, -3), min(hi, 300))]
    if known:
        parts += [st.sampled_from(known)] * 2
    return st.one_of(parts)


def scalar(w: World, f: FieldDescriptor, *, small: bool) -> st.SearchStrategy[Any]:
    if f.type == FieldDescriptor.TYPE_STRING:
        return strings(w.known_strings(f.name), small=small, odd=FIELD_ODDITIES.get(f.name, []))
    if f.type in _INT_RANGES:
        return integers(f, w.known_ints(f.name))
    if f.type == FieldDescriptor.TYPE_ENUM:
        assert f.enum_type is not None, f.full_name
        numbers = [v.number for v in f.enum_type.values]
        return st.one_of(
            st.sampled_from(numbers),
            st.sampled_from([-1, max(numbers) + 1, 99]),
            st.integers(-(2**31), 2**31 - 1),
        )
    if f.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if f.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if f.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    raise AssertionError(f"no strategy for {f.full_name} (type {f.type})")


def _message_type(f: FieldDescriptor) -> Descriptor:
    """The type of a message field (the stubs say Optional: it is None for scalar fields)."""
    assert f.message_type is not None, f.full_name
    return f.message_type


def _descriptor(msg: Message) -> Descriptor:
    """A message's descriptor. types-protobuf declares Message.DESCRIPTOR as the pure-Python
    or the upb class; at run time Descriptor's metaclass accepts the upb one as an instance."""
    desc = msg.DESCRIPTOR
    assert isinstance(desc, Descriptor)
    return desc


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and _message_type(f).GetOptions().map_entry


def single_value(w: World, f: FieldDescriptor, depth: int, *, small: bool) -> Any:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return messages(w, _message_type(f), depth + 1, small=small)
    return scalar(w, f, small=small)


def field_value(w: World, f: FieldDescriptor, depth: int, *, small: bool) -> Any:
    """A strategy for one field's whole value (a list or dict for repeated and map fields)."""
    key = ("field", f.full_name, small, depth)
    if key not in w.strategies:
        w.strategies[key] = _field_value(w, f, depth, small=small)
    return w.strategies[key]


def _field_value(w: World, f: FieldDescriptor, depth: int, *, small: bool) -> Any:
    if _is_map(f):
        key_f, value_f = (
            _message_type(f).fields_by_name["key"],
            _message_type(f).fields_by_name["value"],
        )
        keys = st.one_of(
            st.sampled_from([s.id for s in w.venue.sections]), scalar(w, key_f, small=True)
        )
        entries = st.dictionaries(keys, scalar(w, value_f, small=small), max_size=4)
        valid = st.builds(
            lambda extra: {**{s.id: 1000 for s in w.venue.sections}, **extra},
            st.dictionaries(keys, scalar(w, value_f, small=True), max_size=1),
        )
        many = st.integers(0, 3_000).map(lambda n: {f"k{i}": i for i in range(n)})
        return st.one_of(entries, valid, many)
    if not f.is_repeated:
        return single_value(w, f, depth, small=small)
    element = single_value(w, f, depth, small=small)
    parts: list[st.SearchStrategy[list[Any]]] = [st.lists(element, max_size=2 if small else 5)]
    if small:
        return st.one_of(parts)
    short = single_value(w, f, MAX_DEPTH, small=True)
    # Duplicates, up to 10,000 copies of one element.
    parts.append(st.tuples(short, st.integers(0, 10_000)).map(lambda t: [t[0]] * t[1]))
    parts.append(st.lists(element, min_size=1, max_size=3).map(lambda xs: xs + xs))
    if f.type in _INT_RANGES:
        parts.append(st.integers(1, 10_000).map(lambda n: list(range(1, n + 1))))
        known = w.known_ints(f.name)
        if known:
            parts.append(st.lists(st.sampled_from(known), min_size=1, max_size=len(known)))
    return st.one_of(parts)


def _assign(msg: Message, f: FieldDescriptor, value: Any) -> None:
    target = getattr(msg, f.name)
    if _is_map(f):
        target.clear()
        target.update(value)
    elif f.is_repeated:
        del target[:]
        target.extend(value)
    elif f.type == FieldDescriptor.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(msg, f.name, value)


def messages(w: World, desc: Descriptor, depth: int = 0, *, small: bool = False) -> Any:
    """Arbitrary messages of one type, nested to MAX_DEPTH, each field present or not."""
    if desc.full_name == "google.protobuf.Timestamp":
        return timestamps()
    key = ("message", desc.full_name, small, depth)
    if key in w.strategies:
        return w.strategies[key]
    cls = message_factory.GetMessageClass(desc)
    oneofs = [o for o in desc.oneofs if len(o.fields) > 1]
    in_oneof = {f.name for o in oneofs for f in o.fields}
    plain = [f for f in desc.fields if f.name not in in_oneof]
    if depth >= MAX_DEPTH:
        plain = [f for f in plain if f.type != FieldDescriptor.TYPE_MESSAGE]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for f in plain:
            if draw(st.integers(0, 3)) > 0:  # present three times in four
                _assign(msg, f, draw(field_value(w, f, depth, small=small)))
        for oneof in oneofs:
            choice = draw(st.sampled_from([None, *oneof.fields]))
            if choice is not None and (depth < MAX_DEPTH or choice.message_type is None):
                _assign(msg, choice, draw(field_value(w, choice, depth, small=small)))
        return msg

    w.strategies[key] = build()
    return w.strategies[key]


def _slots(msg: Message, depth: int = 0) -> list[tuple[Message, FieldDescriptor, int]]:
    """Every field of a message and of its nested messages, to pick corruption targets from."""
    out: list[tuple[Message, FieldDescriptor, int]] = []
    for f in _descriptor(msg).fields:
        out.append((msg, f, depth))
        if f.type != FieldDescriptor.TYPE_MESSAGE or _is_map(f):
            continue
        if _message_type(f).full_name == "google.protobuf.Timestamp":
            continue
        children = getattr(msg, f.name) if f.is_repeated else [getattr(msg, f.name)]
        for child in children:
            out += _slots(child, depth + 1)
    return out


def corrupted(w: World, full: str) -> st.SearchStrategy[Message]:
    """A realistic request with one to three of its fields (at any depth) replaced."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = _realistic(w, full)
        slots = _slots(msg)
        if not slots:
            return msg
        for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
            parent, f, depth = slots[draw(st.integers(0, len(slots) - 1))]
            _assign(parent, f, draw(field_value(w, f, depth, small=False)))
        return msg

    return build()


def requests_for(w: World, full: str) -> st.SearchStrategy[Message]:
    """Two in three examples corrupt a realistic request; the rest are wholly generated."""
    key = ("request", full, False, 0)
    if key not in w.strategies:
        desc = _method(full).input_type
        broken = corrupted(w, full)
        w.strategies[key] = st.one_of(messages(w, desc), broken, broken)
    strategy: st.SearchStrategy[Message] = w.strategies[key]
    return strategy


# --- calling and checking ---------------------------------------------------------------------

SNAPSHOT_SQL = text(
    """
    -- seats can be large: one scan gives count, id sum and the id sums of the sold, held
    -- and allocated ones, which catch any change of membership or status without hashing
    -- every row (materialized once, read by four columns below).
    WITH s AS MATERIALIZED (
        SELECT count(*) AS n, coalesce(sum(id), 0) AS ids,
               coalesce(sum(id) FILTER (WHERE status = 'SOLD'), 0) AS sold,
               coalesce(sum(id) FILTER (WHERE status = 'HELD'), 0) AS held,
               coalesce(sum(id) FILTER (WHERE allocation_id IS NOT NULL), 0) AS allocated
        FROM seats
    )
    SELECT
      (SELECT count(*) FROM users),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM users t),
      (SELECT count(*) FROM venues),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM venues t),
      (SELECT count(*) FROM venue_sections),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM venue_sections t),
      (SELECT count(*) FROM venue_rows),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.section_id, t.position)) FROM venue_rows t),
      (SELECT count(*) FROM events),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM events t),
      (SELECT count(*) FROM event_sections),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.event_id, t.section_id))
         FROM event_sections t),
      (SELECT n FROM s),
      (SELECT ids FROM s),
      (SELECT sold FROM s),
      (SELECT count(*) FROM orders),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM orders t),
      (SELECT count(*) FROM tickets),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM tickets t),
      (SELECT count(*) FROM refunds),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM refunds t),
      (SELECT count(*) FROM scans),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.scan_id)) FROM scans t),
      (SELECT count(*) FROM partners),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM partners t),
      (SELECT count(*) FROM partner_api_keys),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM partner_api_keys t),
      (SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM allocations t),
      (SELECT count(*) FROM allocation_seats),
      (SELECT allocated FROM s),
      (SELECT held FROM s)
    """
)
SNAPSHOT_NAMES = (
    "users",
    "users md5",
    "venues",
    "venues md5",
    "venue_sections",
    "venue_sections md5",
    "venue_rows",
    "venue_rows md5",
    "events",
    "events md5",
    "event_sections",
    "event_sections md5",
    "seats",
    "seats id sum",
    "seats sold id sum",
    "orders",
    "orders md5",
    "tickets",
    "tickets md5",
    "refunds",
    "refunds md5",
    "scans",
    "scans md5",
    "partners",
    "partners md5",
    "partner_api_keys",
    "partner_api_keys md5",
    "allocations md5",
    "allocation_seats",
    "seats allocated id sum",
    "seats held id sum",
)


async def snapshot(running: RunningServer) -> dict[str, Any]:
    async with running.engine.connect() as conn:
        row = (await conn.execute(SNAPSHOT_SQL)).one()
    return dict(zip(SNAPSHOT_NAMES, row, strict=True))


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str | None
    message: str
    fields: tuple[str, ...] = ()  # BadRequest field violations


async def call_once(
    channel: aio.Channel, full: str, payload: Any, md: Any, serializer: Callable[[Any], bytes]
) -> None:
    """One call of `full` with `payload`; a server-streaming method is judged by its first
    message (WatchSeats never ends by itself), then cancelled."""
    out_cls = message_factory.GetMessageClass(_method(full).output_type)
    if _method(full).server_streaming:
        call = channel.unary_stream(
            full, request_serializer=serializer, response_deserializer=out_cls.FromString
        )(payload, metadata=md, timeout=30)
        try:
            async for _ in call:
                break
        finally:
            call.cancel()
        return
    rpc = channel.unary_unary(
        full, request_serializer=serializer, response_deserializer=out_cls.FromString
    )
    await rpc(payload, metadata=md, timeout=30)


async def send(channel: aio.Channel, full: str, request: Message, md: Any) -> Outcome:
    try:
        await call_once(channel, full, request, md, lambda m: m.SerializeToString())
    except aio.AioRpcError as err:
        details = error_details(err)
        fields = tuple(f for f, _ in details.field_violations)
        return Outcome(err.code(), details.reason, details.message, fields)
    return Outcome(S.OK, None, "")


def _describe(request: Message) -> str:
    text_form = str(request)
    return text_form if len(text_form) < 2_000 else text_form[:2_000] + "...(truncated)"


async def check_call(
    running: RunningServer, channel: aio.Channel, world: World, full: str, request: Message
) -> None:
    """Send as ADMIN and as CUSTOMER; acceptable codes only; failures change nothing."""
    before = await snapshot(running)
    for caller in CALLERS:
        outcome = await send(channel, full, request, world.md(caller))
        where = f"{full} as {caller} -> {outcome.code.name} {outcome.reason} {outcome.message!r}"
        after = await snapshot(running)
        changed = sorted(k for k in before if before[k] != after[k])
        if outcome.code != S.OK:
            assert changed == [], f"{where} changed the database: {changed}"
        allowed = ACCEPTABLE | ALSO_ACCEPTABLE.get(full, frozenset())
        assert outcome.code in allowed, f"{where}\nrequest:\n{_describe(request)}"
        before = after


async def test_oversized_request_is_refused_by_the_transport(
    stubs: Stubs, channel: aio.Channel, running: RunningServer, world: World
) -> None:
    limit = running.components.settings.max_message_bytes
    before = await snapshot(running)
    huge = auth_pb2.RegisterRequest(
        email=unique_email("huge"), password=PASSWORD, display_name="x" * (limit + 1024 * 1024)
    )
    assert huge.ByteSize() > limit
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Register(huge)
    assert err.value.code() == S.RESOURCE_EXHAUSTED
    seats = booking_pb2.BookSeatsRequest(
        event_id=world.event.id,
        request_id=str(uuid.uuid4()),
        seat_ids=booking_pb2.SeatIds(ids=[2**62 + i for i in range(limit // 8)]),
    )
    assert seats.ByteSize() > limit
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.booking.BookSeats(seats, metadata=world.admin.md)
    assert err.value.code() == S.RESOURCE_EXHAUSTED
    assert await snapshot(running) == before
    # The server is healthy afterwards, on the same channel.
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    me = await stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=world.admin.md)
    assert me.user.id == world.admin.user.id


def _text_paths(desc: Descriptor, prefix: str = "", depth: int = 0) -> list[str]:
    """Dotted paths of every string field of a message type, at any depth; map keys too."""
    paths: list[str] = []
    for f in desc.fields:
        path = f"{prefix}{f.name}"
        if f.type == FieldDescriptor.TYPE_STRING:
            paths.append(path + ("[0]" if f.is_repeated else ""))
        elif _is_map(f):
            if _message_type(f).fields_by_name["key"].type == FieldDescriptor.TYPE_STRING:
                paths.append(path + "{}")
        elif (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and depth < MAX_DEPTH
            and _message_type(f).full_name != "google.protobuf.Timestamp"
        ):
            inner = f"{path}[0]." if f.is_repeated else f"{path}."
            paths += _text_paths(_message_type(f), inner, depth + 1)
    return paths


def _set_path(msg: Message, path: str, value: str) -> None:
    """Set the string at `path`; missing repeated elements are added on the way."""
    *parents, last = path.split(".")
    target: Any = msg
    for part in parents:
        name, _, index = part.partition("[")
        target = getattr(target, name)
        if index:
            while len(target) <= int(index.rstrip("]")):
                target.add()
            target = target[int(index.rstrip("]"))]
    if last.endswith("{}"):
        getattr(target, last[:-2])[value] = 1000
        return
    name, _, index = last.partition("[")
    if not index:
        setattr(target, name, value)
        return
    values = getattr(target, name)
    if values:
        values[0] = value
    else:
        values.append(value)


NUL_TEXT = "nul\x00inside"

NUL_CASES = [
    pytest.param(full, path, caller, id=f"{_short(full)}-{path}-{caller}")
    for full in METHODS
    for path in _text_paths(_method(full).input_type)
    for caller in CALLERS
]


def _server_path(path: str) -> str:
    """Our path as the server's BadRequest names it (map entries by their key's repr)."""
    return path.replace("{}", f"[{NUL_TEXT!r}]")


@pytest.mark.parametrize(("full", "path", "caller"), NUL_CASES)
async def test_nul_in_any_text_field_is_invalid_argument(
    world: World, running: RunningServer, channel: aio.Channel, full: str, path: str, caller: str
) -> None:
    """A NUL in one string field of an otherwise valid request.

    PostgreSQL text cannot hold NUL (SQLSTATE 22021). Callers the policy admits get
    INVALID_ARGUMENT naming that field, before any work; others still get ROLE_NOT_ALLOWED.
    Either way nothing in the database changes.
    """
    request = _realistic(world, full)
    await world.materialize(request)
    _set_path(request, path, NUL_TEXT)
    before = await snapshot(running)
    outcome = await send(channel, full, request, world.md(caller))
    after = await snapshot(running)
    where = f"{full} {path}=NUL as {caller} -> {outcome.code.name} {outcome.reason}"
    assert sorted(k for k in before if before[k] != after[k]) == [], where
    if POLICY[full].allows(frozenset({Role(caller)})):
        assert outcome.code == S.INVALID_ARGUMENT, where
        assert outcome.fields == (_server_path(path),), where
    else:
        assert (outcome.code, outcome.reason) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), where


async def test_scan_id_mismatch_leaves_the_scan_log_alone(
    world: World, running: RunningServer, stubs: Stubs
) -> None:
    """Found by the property test (a failed call changed `scans`); fixed in the server."""
    scan_id = str(uuid.uuid4())
    first = await stubs.gate.ValidateTicket(
        scan_request("no-such-code-aaaaaaaaaaaaaaaa", world.event.id, "mismatch-1", scan_id),
        metadata=world.admin.md,
    )
    assert first.result == gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE

    async def repeat_count() -> int:
        async with running.engine.connect() as conn:
            count = await conn.scalar(
                text("SELECT repeat_count FROM scans WHERE scan_id = :s"),
                {"s": uuid.UUID(scan_id)},
            )
        return int(count)

    before = await snapshot(running)
    for code, gate in [("another-code-bbbbbbbbbbbbbbbbbb", "mismatch-1"), (None, "mismatch-2")]:
        request = scan_request(
            code or "no-such-code-aaaaaaaaaaaaaaaa", world.event.id, gate, scan_id
        )
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.gate.ValidateTicket(request, metadata=world.admin.md)
        details = error_details(err.value)
        # INVALID_ARGUMENT since issue 10 (was FAILED_PRECONDITION): one code for the reason.
        assert (details.code, details.reason) == (S.INVALID_ARGUMENT, "SCAN_ID_MISMATCH")
    # A refused call must not count as a retry of someone else's scan, nor change anything.
    assert await repeat_count() == 0
    assert await snapshot(running) == before
    # A real retry (same code, same gate) is counted and answered from the log.
    again = await stubs.gate.ValidateTicket(
        scan_request("no-such-code-aaaaaaaaaaaaaaaa", world.event.id, "mismatch-1", scan_id),
        metadata=world.admin.md,
    )
    assert again.repeat and again.result == gate_pb2.VALIDATION_RESULT_UNKNOWN_CODE
    assert await repeat_count() == 1


# No shrinking: every example costs real RPCs (and some create events and orders), and a
# failure message already prints the whole request; shrinking would multiply the runtime.
NO_SHRINK = (Phase.explicit, Phase.reuse, Phase.generate)
# Every generated test: no deadline (a real server answers), replayable examples, no example
# database, no shrinking, and no health checks (fixtures are slow on purpose).
FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    phases=NO_SHRINK,
    suppress_health_check=list(HealthCheck),
)

FUZZ_CASES = [
    pytest.param(full, caller, id=f"{_short(full)}-{caller}")
    for full in METHODS
    for caller in CALLERS
]


def test_every_rpc_is_fuzzed() -> None:
    assert set(METHODS) == {m for m in POLICY if m.startswith("/ticketing.")}
    assert {(p.values[0], p.values[1]) for p in FUZZ_CASES} == {
        (m, c) for m in METHODS for c in CALLERS
    }
    assert {p.values[0] for p in NUL_CASES} <= set(METHODS)


@pytest.mark.slow  # many generated requests per case
@pytest.mark.parametrize(("full", "first_caller"), FUZZ_CASES)
# 40 per case (the FUZZ default): with the partner, allocation and stream RPCs the cases
# grew by a third, and 60 each took the suite's budget; the random-seed test below keeps
# exploring new examples every run.
@settings(FUZZ)
@given(data=st.data())
async def test_generated_requests_get_a_clean_answer(
    world: World,
    running: RunningServer,
    channel: aio.Channel,
    full: str,
    first_caller: str,
    data: st.DataObject,
) -> None:
    request = data.draw(requests_for(world, full), label="request")
    await world.materialize(request)
    before = await snapshot(running)
    outcome = await send(channel, full, request, world.md(first_caller))
    where = f"{full} as {first_caller} -> {outcome.code.name} {outcome.reason} {outcome.message!r}"
    if outcome.code != S.OK:
        after = await snapshot(running)
        changed = sorted(k for k in before if before[k] != after[k])
        assert changed == [], f"{where} changed the database: {changed}"
    allowed = ACCEPTABLE | ALSO_ACCEPTABLE.get(full, frozenset())
    assert outcome.code in allowed, f"{where}\nrequest:\n{_describe(request)}"


@pytest.mark.slow  # many generated requests per case
@settings(FUZZ, derandomize=False)  # a new seed every run
@given(data=st.data())
async def test_random_rpcs_with_a_random_seed(
    world: World, running: RunningServer, channel: aio.Channel, data: st.DataObject
) -> None:
    """Not derandomized: each run explores new examples on top of the fixed ones above."""
    full = data.draw(st.sampled_from(METHODS), label="method")
    request = data.draw(requests_for(world, full), label="request")
    await world.materialize(request)
    await check_call(running, channel, world, full, request)


# --- issue 10: zones, currencies, labels, invalid UTF-8 ---------------------------------------

# The IANA names as the tzdata package lists them (its `zones` file): an oracle independent of
# the server's zoneinfo lookups. "Factory" is in that file but is no place.
IANA_NAMES = frozenset(
    importlib.resources.files("tzdata").joinpath("zones").read_text().split()
) - {"Factory"}


def _venue_with(time_zone: str = "UTC", rows: Sequence[venue_pb2.Row] = ()) -> venue_pb2.Venue:
    venue: venue_pb2.Venue = small_layout(name=f"Fuzz {uuid.uuid4().hex[:6]}")
    venue.time_zone = time_zone
    if rows:
        del venue.sections[0].rows[:]
        venue.sections[0].rows.extend(rows)
    return venue


async def _create_venue(
    channel: aio.Channel, world: World, venue: venue_pb2.Venue
) -> tuple[Outcome, venue_pb2.Venue | None]:
    rpc = channel.unary_unary(
        "/ticketing.v1.VenueService/CreateVenue",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=venue_pb2.CreateVenueResponse.FromString,
    )
    try:
        resp = await rpc(
            venue_pb2.CreateVenueRequest(venue=venue), metadata=world.admin.md, timeout=30
        )
    except aio.AioRpcError as err:
        details = error_details(err)
        fields = tuple(f for f, _ in details.field_violations)
        return Outcome(err.code(), details.reason, details.message, fields), None
    return Outcome(S.OK, None, ""), resp.venue


def _respace(draw: Callable[[st.SearchStrategy[str]], str], value: str) -> str:
    """The value with Unicode spaces added around it and between its characters."""
    space = st.text(st.sampled_from(SPACES), max_size=2)
    chars = [draw(space) + ch for ch in value]
    return draw(space) + "".join(chars) + draw(space)


@FUZZ
@given(data=st.data())
async def test_generated_time_zones(
    world: World, running: RunningServer, channel: aio.Channel, data: st.DataObject
) -> None:
    """A zone is accepted exactly when it is an IANA name; anything else is INVALID_ARGUMENT
    naming venue.time_zone (never UNAVAILABLE: zoneinfo once raised OS errors here)."""
    base = data.draw(
        st.one_of(
            st.sampled_from(sorted(IANA_NAMES)),
            st.sampled_from(ZONE_LIKE),
            st.sampled_from(sorted(IANA_NAMES)).map(lambda z: z.rsplit("/", 1)[0]),
            st.text(st.sampled_from("AEUacegiortu/_+-0123456789."), max_size=20),
        ),
        label="zone",
    )
    zone = data.draw(st.sampled_from([base, base, base.lower(), f" {base}", f"{base}/"]))
    before = await snapshot(running)
    outcome, venue = await _create_venue(channel, world, _venue_with(time_zone=zone))
    where = f"time_zone={zone!r} -> {outcome.code.name} {outcome.reason} {outcome.message!r}"
    if zone in IANA_NAMES:
        assert outcome.code == S.OK and venue is not None and venue.time_zone == zone, where
        return
    assert outcome.code == S.INVALID_ARGUMENT, where
    assert outcome.fields == ("venue.time_zone",), where
    assert await snapshot(running) == before, where


@FUZZ
@given(data=st.data())
async def test_generated_currencies(
    world: World, running: RunningServer, channel: aio.Channel, data: st.DataObject
) -> None:
    """Three capital letters are not a currency: only codes with a minor unit on the ISO 4217
    list price an event; refusals name currency_code and write nothing."""
    code = data.draw(
        st.one_of(
            st.sampled_from(CURRENCY_LIKE),
            st.sampled_from(sorted(ACTIVE_CURRENCIES)),
            st.from_regex(r"\A[A-Z]{3}\Z"),
            st.text(max_size=5),
        ),
        label="currency",
    )
    request: Any = _realistic(world, "/ticketing.v1.EventService/CreateEvent")
    request.currency_code = code
    before = await snapshot(running)
    outcome = await send(channel, "/ticketing.v1.EventService/CreateEvent", request, world.admin.md)
    where = f"currency_code={code!r} -> {outcome.code.name} {outcome.reason} {outcome.message!r}"
    if ACTIVE_CURRENCIES.get(code) is not None:
        assert outcome.code == S.OK, where
        return
    assert code not in {"ZZZ", "XXX", "XTS", "HRK"} or outcome.code != S.OK, where
    assert outcome.code == S.INVALID_ARGUMENT and outcome.fields == ("currency_code",), where
    assert await snapshot(running) == before, where


def _normalized(label: str) -> str:
    """A label as the contract stores it: NFC, trimmed, inner runs of space folded to one."""
    return " ".join(unicodedata.normalize("NFC", label).split())


def _label_key(label: str) -> str:
    """Two labels that print alike: same NFKC form once normalised, whatever the case."""
    return unicodedata.normalize("NFKC", _normalized(label)).casefold()


def _printable(label: str) -> bool:
    return all(unicodedata.category(ch) not in ("Cc", "Cf") for ch in label)


@FUZZ
@given(data=st.data())
async def test_generated_labels(
    world: World, running: RunningServer, channel: aio.Channel, data: st.DataObject
) -> None:
    """Seat and row labels with surrounding and inner (Unicode) spaces: a venue is stored only
    if its labels are distinct once normalised, and then stored in the normalised form."""
    base = st.one_of(st.sampled_from(LABEL_LIKE), st.text("1Aa2Bé", min_size=1, max_size=3))
    raw_seats = data.draw(st.lists(base, min_size=1, max_size=4), label="seat labels")
    seats = [_respace(data.draw, s) if data.draw(st.booleans()) else s for s in raw_seats]
    raw_rows = data.draw(st.lists(base, min_size=1, max_size=3), label="row labels")
    rows = [_respace(data.draw, r) if data.draw(st.booleans()) else r for r in raw_rows]
    venue = _venue_with(
        rows=[
            venue_pb2.Row(label=r, seat_count=len(seats), seat_labels=seats if i == 0 else [])
            for i, r in enumerate(rows)
        ]
    )
    before = await snapshot(running)
    outcome, stored = await _create_venue(channel, world, venue)
    where = f"rows={rows!r} seats={seats!r} -> {outcome.code.name} {outcome.fields}"
    all_labels = rows + seats
    fine = (
        all(_printable(x) and 0 < len(_normalized(x)) <= 20 for x in all_labels)
        and len({_label_key(r) for r in rows}) == len(rows)
        and len({_label_key(x) for x in seats}) == len(seats)
    )
    if not fine:
        assert outcome.code == S.INVALID_ARGUMENT, where
        assert outcome.fields and all(
            f.startswith("venue.sections[0].rows[") for f in outcome.fields
        )
        assert await snapshot(running) == before, where
        return
    assert outcome.code == S.OK and stored is not None, where
    got = stored.sections[0]
    norm = [_normalized(x) for x in seats]
    assert [r.label for r in got.rows] == [_normalized(r) for r in rows], where
    assert list(got.rows[0].seat_labels) == norm, where


UTF8_MARK = "zq7Mark"  # replaced on the wire by as many bytes that are not UTF-8
UTF8_BAD = [
    b"zq7\xffark",
    b"zq\xc3(ark",
    b"\xed\xa0\x80Mark",
    b"zq7Mar\xc0",
    b"\xf8\x88\x80\x80\x80k!",
]


def _utf8_path(path: str) -> str:
    """The field the server names for bad bytes at `path` (a map by its name: the key itself
    may be what cannot be decoded)."""
    return path[:-2] if path.endswith("{}") else path


UTF8_CASES = [
    pytest.param(full, path, caller, id=f"{_short(full)}-{path}-{caller}")
    for full in METHODS
    for path in _text_paths(_method(full).input_type)
    for caller in CALLERS
]


async def send_raw(channel: aio.Channel, full: str, raw: bytes, md: Any) -> Outcome:
    """One call whose request bytes go out exactly as given."""
    try:
        await call_once(channel, full, raw, md, lambda b: b)
    except aio.AioRpcError as err:
        details = error_details(err)
        return Outcome(
            err.code(),
            details.reason,
            details.message,
            tuple(f for f, _ in details.field_violations),
        )
    return Outcome(S.OK, None, "")


def _with_bad_utf8(request: Message, path: str, bad: bytes) -> bytes:
    _set_path(request, path, UTF8_MARK)
    wire = request.SerializeToString()
    assert wire.count(UTF8_MARK.encode()) == 1, (path, wire)
    raw = wire.replace(UTF8_MARK.encode(), bad[: len(UTF8_MARK)].ljust(len(UTF8_MARK), b"!"))
    assert len(raw) == len(wire)
    return raw


@pytest.mark.parametrize(("full", "path", "caller"), UTF8_CASES)
async def test_invalid_utf8_in_any_text_field_is_invalid_argument(
    world: World, running: RunningServer, channel: aio.Channel, full: str, path: str, caller: str
) -> None:
    """Bytes that are not UTF-8 in one string field of an otherwise valid request (sent as
    raw bytes: a client library would refuse to encode them). Callers the policy admits get
    INVALID_ARGUMENT naming the field, never UNKNOWN; others still get ROLE_NOT_ALLOWED;
    nothing in the database changes."""
    request = _realistic(world, full)
    await world.materialize(request)
    bad = UTF8_BAD[zlib.crc32(f"{full} {path}".encode()) % len(UTF8_BAD)]
    raw = _with_bad_utf8(request, path, bad)
    before = await snapshot(running)
    outcome = await send_raw(channel, full, raw, world.md(caller))
    after = await snapshot(running)
    where = f"{full} {path}={bad!r} as {caller} -> {outcome.code.name} {outcome.reason}"
    assert sorted(k for k in before if before[k] != after[k]) == [], where
    if POLICY[full].allows(frozenset({Role(caller)})):
        assert outcome.code == S.INVALID_ARGUMENT, where
        assert outcome.fields == (_utf8_path(path),), where
    else:
        assert (outcome.code, outcome.reason) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"), where


def _invalid_utf8() -> st.SearchStrategy[bytes]:
    def broken(b: bytes) -> bool:
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    return st.binary(min_size=1, max_size=12).filter(broken)


@FUZZ
@given(data=st.data())
async def test_random_invalid_utf8_anywhere(
    world: World, running: RunningServer, channel: aio.Channel, data: st.DataObject
) -> None:
    """Random non-UTF-8 bytes (any length: framing shifts too) in a random string field of a
    random RPC, the rest generated as in the other tests: never UNKNOWN or INTERNAL, and a
    refusal changes nothing."""
    full = data.draw(st.sampled_from([m for m in METHODS if _text_paths(_method(m).input_type)]))
    path = data.draw(st.sampled_from(_text_paths(_method(full).input_type)), label="path")
    request = data.draw(requests_for(world, full), label="request")
    await world.materialize(request)
    _set_path(request, path, UTF8_MARK)
    wire = request.SerializeToString()
    bad = data.draw(_invalid_utf8(), label="bytes")
    if wire.count(UTF8_MARK.encode()) != 1:
        return  # the generated request already held the marker's text elsewhere
    raw = wire.replace(UTF8_MARK.encode(), bad)  # a length change breaks the framing: fine
    caller = data.draw(st.sampled_from(CALLERS))
    before = await snapshot(running)
    outcome = await send_raw(channel, full, raw, world.md(caller))
    where = f"{full} {path}={bad!r} as {caller} -> {outcome.code.name} {outcome.reason}"
    assert outcome.code in ACCEPTABLE | ALSO_ACCEPTABLE.get(full, frozenset()), where
    if outcome.code != S.OK:
        assert await snapshot(running) == before, where
