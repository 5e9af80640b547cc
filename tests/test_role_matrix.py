"""The role matrix, generated from the policy table: every ticketing.v1 RPC x every role.

For each RPC in `ticketd.auth.policy.POLICY` (cross-checked against the descriptor pool) and
each caller (one account per role, holding only that role, plus no token at all) a real call
goes through a generic unary-unary callable whose request and response classes come from the
method descriptor. The outcome must be what the table says:

- refused with a token -> PERMISSION_DENIED with ErrorInfo.reason ROLE_NOT_ALLOWED;
- refused without a token -> UNAUTHENTICATED;
- allowed -> anything but UNAUTHENTICATED and ROLE_NOT_ALLOWED (object-level refusals,
  INVALID_ARGUMENT and NOT_FOUND are the domain's business, not the policy's);
- never INTERNAL or UNKNOWN.

Each pair runs twice: with a realistic request built from a small fixture world (so that an
allowed call runs the real code path and, here, must succeed) and with an empty request (so
that the policy is seen to be applied before any input validation).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.message import Message
from grpc import aio

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
from ticketd.auth.principal import PrincipalKind, Role
from ticketing.stubs import api_key
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

ANONYMOUS = "ANONYMOUS"
# An enrolled kiosk (`authorization: Device ...`, issue 14): not a role, a principal kind.
DEVICE = "DEVICE"
# A partner reseller's API key (`authorization: ApiKey ...`, issue 13): ROLE_PARTNER, which
# no account can hold; like a device it is a principal kind, granted methods by name.
PARTNER = "PARTNER"
CALLERS: tuple[str, ...] = (*(role.value for role in Role), DEVICE, PARTNER, ANONYMOUS)
# Whom the PARTNER caller sells to (`on_behalf_of`, required on its sales).
END_CUSTOMER = booking_pb2.EndCustomer(external_customer_id="matrix-end-customer")
ROLE_TO_PROTO: dict[str, common_pb2.Role.ValueType] = {
    "ADMIN": common_pb2.ROLE_ADMIN,
    "ORGANIZER": common_pb2.ROLE_ORGANIZER,
    "CUSTOMER": common_pb2.ROLE_CUSTOMER,
    "SUPPORT": common_pb2.ROLE_SUPPORT,
    "ENTRY_MANAGER": common_pb2.ROLE_ENTRY_MANAGER,
}
NEVER = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN})
# Login answers wrong credentials with UNAUTHENTICATED by contract: that is the method's own
# result, not the interceptor refusing the caller.
DOMAIN_UNAUTHENTICATED = {
    "/ticketing.v1.AuthService/Login": "BAD_CREDENTIALS",
    "/ticketing.v1.GateService/EnrollDevice": "ENROLLMENT_TOKEN_INVALID",
}

# Every ticketing.v1 entry of the table; the descriptor pool must agree (checked below).
TICKETING_METHODS: tuple[str, ...] = tuple(sorted(m for m in POLICY if m.startswith("/ticketing.")))


def descriptor_methods() -> set[str]:
    """Every RPC of the services the server registers, from the descriptor pool."""
    pool = descriptor_pool.Default()
    return {
        f"/{service.full_name}/{method.name}"
        for service in (pool.FindServiceByName(name) for name in SERVICE_NAMES)
        for method in service.methods
    }


def method_descriptor(full_method: str) -> MethodDescriptor:
    service_name, method_name = full_method.lstrip("/").split("/")
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return service.methods_by_name[method_name]


def request_class(full_method: str) -> type[Message]:
    return message_factory.GetMessageClass(method_descriptor(full_method).input_type)


def response_class(full_method: str) -> type[Message]:
    return message_factory.GetMessageClass(method_descriptor(full_method).output_type)


def policy_allows(full_method: str, caller: str) -> bool:
    """What the table says, evaluated here rather than through Access.allows."""
    rule = POLICY[full_method]
    if rule.public:
        return True
    if caller == ANONYMOUS:
        return False
    if caller == DEVICE:
        return PrincipalKind.DEVICE in rule.kinds
    if caller == PARTNER:
        return PrincipalKind.PARTNER in rule.kinds
    return rule.roles is None or Role(caller) in rule.roles


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    reason: str | None
    message: str
    metadata: dict[str, str]
    response: Message | None


async def first_of_stream(
    channel: aio.Channel, full_method: str, request: Message, metadata: tuple[tuple[str, str], ...]
) -> Message:
    """A server-streaming call judged by its first message (the stream itself may never end:
    WatchSeats follows changes until the reader goes), then cancelled."""
    rpc = channel.unary_stream(
        full_method,
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class(full_method).FromString,
    )
    call = rpc(request, metadata=metadata, timeout=30)
    try:
        async for first in call:
            assert isinstance(first, Message)
            return first
    finally:
        call.cancel()
    raise AssertionError(f"{full_method} ended without a message")


async def generic_call(
    channel: aio.Channel,
    full_method: str,
    request: Message,
    metadata: tuple[tuple[str, str], ...] = (),
) -> Outcome:
    """One unary call with classes looked up from the method descriptor."""
    expected_input = method_descriptor(full_method).input_type.full_name
    assert request.DESCRIPTOR.full_name == expected_input, (full_method, expected_input)
    try:
        if method_descriptor(full_method).server_streaming:
            response = await first_of_stream(channel, full_method, request, metadata)
        else:
            rpc = channel.unary_unary(
                full_method,
                request_serializer=lambda message: message.SerializeToString(),
                response_deserializer=response_class(full_method).FromString,
            )
            response = await rpc(request, metadata=metadata, timeout=30)
    except aio.AioRpcError as err:
        details = error_details(err)
        return Outcome(err.code(), details.reason, details.message, details.metadata, None)
    assert isinstance(response, Message)
    return Outcome(grpc.StatusCode.OK, None, "", {}, response)


@dataclass
class World:
    """A venue, an event owned by the ORGANIZER account, a customer's order, a ticket code."""

    stubs: Stubs
    admin: Account
    accounts: dict[str, Account]
    venue: venue_pb2.Venue
    scratch_venue: venue_pb2.Venue
    event: event_pb2.Event
    order: booking_pb2.Order
    spare_staff: Account  # a second ENTRY_MANAGER, assigned and unassigned by the matrix
    device_md: tuple[tuple[str, str], ...]  # a kiosk of the event's "matrix-gate"
    partner: partner_pb2.Partner  # the PARTNER caller's own partner
    partner_md: tuple[tuple[str, str], ...]  # an API key of `partner`
    scratch_partner: partner_pb2.Partner  # the only partner SetPartnerStatus is offered

    @property
    def ga_section_id(self) -> str:
        return self.venue.sections[1].id

    def md(self, caller: str) -> tuple[tuple[str, str], ...]:
        if caller == DEVICE:
            return self.device_md
        if caller == PARTNER:
            return self.partner_md
        return () if caller == ANONYMOUS else self.accounts[caller].md

    async def enrollment_token(self) -> str:
        created = await self.stubs.gate.CreateDevice(
            gate_pb2.CreateDeviceRequest(
                event_id=self.event.id, gate_id="matrix-gate", display_name="matrix kiosk"
            ),
            metadata=self.accounts["ORGANIZER"].md,
        )
        return created.enrollment_token

    async def fresh_hold(self, caller: str = "CUSTOMER") -> booking_pb2.Hold:
        """A live hold of `caller` if they may hold seats (a partner's for an end customer),
        else of the CUSTOMER."""
        request = booking_pb2.HoldSeatsRequest(
            event_id=self.event.id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=self.ga_section_id, quantity=1),
        )
        if caller == PARTNER:
            request.on_behalf_of.CopyFrom(END_CUSTOMER)
            return (await self.stubs.booking.HoldSeats(request, metadata=self.partner_md)).hold
        who = self.accounts[caller if caller in ("CUSTOMER", "ADMIN") else "CUSTOMER"]
        return (await self.stubs.booking.HoldSeats(request, metadata=who.md)).hold

    async def fresh_order(self, caller: str = "CUSTOMER") -> booking_pb2.Order:
        """A new order of the CUSTOMER, or for the PARTNER caller one it sold."""
        request = best_request(self.event.id, self.ga_section_id, 1)
        if caller == PARTNER:
            request.on_behalf_of.CopyFrom(END_CUSTOMER)
            return (await self.stubs.booking.BookSeats(request, metadata=self.partner_md)).order
        customer = self.accounts["CUSTOMER"]
        return (await self.stubs.booking.BookSeats(request, metadata=customer.md)).order


@pytest.fixture(scope="module")
async def world(stubs: Stubs, admin: Account) -> World:
    accounts: dict[str, Account] = {}
    for name, proto_role in ROLE_TO_PROTO.items():
        acct = await stubs.account_with_roles(admin, proto_role, tag=f"matrix-{name.lower()}")
        me = await stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=acct.md)
        assert list(me.user.roles) == [proto_role], name
        accounts[name] = acct
    venue = await stubs.create_venue(admin, small_layout(name="Matrix Hall", ga=300))
    scratch = await stubs.create_venue(admin, small_layout(name="Matrix Scratch"))
    event = await stubs.create_event(accounts["ORGANIZER"], venue, name="Matrix Show")
    order = (
        await stubs.booking.BookSeats(
            best_request(event.id, venue.sections[1].id, 2), metadata=accounts["CUSTOMER"].md
        )
    ).order
    # The ENTRY_MANAGER works this event's gates (else its gate calls are NOT_EVENT_STAFF).
    await stubs.assign_staff(accounts["ORGANIZER"], event.id, accounts["ENTRY_MANAGER"])
    spare = await stubs.account_with_roles(
        admin, common_pb2.ROLE_ENTRY_MANAGER, tag="matrix-spare-staff"
    )
    partners = [
        (
            await stubs.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(
                    display_name=name, contact_email=unique_email("matrix-partner")
                ),
                metadata=admin.md,
            )
        ).partner
        for name in ("Matrix Reseller", "Matrix Scratch Reseller")
    ]
    key = await stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(partner_id=partners[0].id, display_name="matrix"),
        metadata=admin.md,
    )
    world = World(
        stubs,
        admin,
        accounts,
        venue,
        scratch,
        event,
        order,
        spare,
        (),
        partners[0],
        api_key(key.secret),
        partners[1],
    )
    enrolled = await stubs.gate.EnrollDevice(
        gate_pb2.EnrollDeviceRequest(enrollment_token=await world.enrollment_token())
    )
    world.device_md = (("authorization", f"Device {enrolled.device_credential}"),)
    return world


RequestBuilder = Callable[[World], Awaitable[Message]]


async def _register(w: World) -> Message:
    return auth_pb2.RegisterRequest(
        email=unique_email("matrix-new"), password=PASSWORD, display_name="Matrix"
    )


async def _login(w: World) -> Message:
    customer = w.accounts["CUSTOMER"]
    return auth_pb2.LoginRequest(email=customer.email, password=customer.password)


async def _get_current_user(w: World) -> Message:
    return auth_pb2.GetCurrentUserRequest()


async def _set_user_roles(w: World) -> Message:
    target = await w.stubs.register("matrix-target")
    return auth_pb2.SetUserRolesRequest(
        user_id=target.user.id, roles=[common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT]
    )


async def _set_user_status(w: World) -> Message:
    target = await w.stubs.register("matrix-status")
    return auth_pb2.SetUserStatusRequest(
        user_id=target.user.id, status=common_pb2.USER_STATUS_DISABLED
    )


CallerBuilder = Callable[[World, str], Awaitable[Message]]


async def _change_password(w: World, caller: str) -> Message:
    # Every matrix account was registered with PASSWORD; keeping it keeps the world usable
    # (the token it revokes is replaced by the response's, see AFTER_SUCCESS).
    return auth_pb2.ChangePasswordRequest(old_password=PASSWORD, new_password=PASSWORD)


async def _revoke_tokens(w: World, caller: str) -> Message:
    # Allowed for everyone signed in, for themselves: each caller signs itself out.
    own = w.accounts.get(caller, w.accounts["CUSTOMER"])
    return auth_pb2.RevokeTokensRequest(user_id=own.user.id)


async def _adopt_new_token(w: World, caller: str, response: Message) -> None:
    assert isinstance(response, auth_pb2.ChangePasswordResponse)
    w.accounts[caller].token = response.access_token


async def _sign_in_again(w: World, caller: str, response: Message) -> None:
    acct = w.accounts[caller]
    login = await w.stubs.auth.Login(
        auth_pb2.LoginRequest(email=acct.email, password=acct.password)
    )
    acct.token = login.access_token


# Requests that depend on who calls (their own account), and what an allowed call leaves to
# repair so that later cases of the same caller still hold a valid token.
async def _extend_hold(w: World, caller: str) -> Message:
    # Holds are their customer's own: each allowed caller acts on a hold of theirs.
    return booking_pb2.ExtendHoldRequest(hold_id=(await w.fresh_hold(caller)).id)


async def _confirm_hold(w: World, caller: str) -> Message:
    request = booking_pb2.ConfirmHoldRequest(
        hold_id=(await w.fresh_hold(caller)).id, request_id=str(uuid.uuid4())
    )
    if caller == PARTNER:
        request.on_behalf_of.CopyFrom(END_CUSTOMER)
    return request


async def _release_hold(w: World, caller: str) -> Message:
    return booking_pb2.ReleaseHoldRequest(hold_id=(await w.fresh_hold(caller)).id)


async def _book_seats(w: World, caller: str) -> Message:
    request: booking_pb2.BookSeatsRequest = best_request(w.event.id, w.ga_section_id, 1)
    if caller == PARTNER:
        request.on_behalf_of.CopyFrom(END_CUSTOMER)
    return request


async def _hold_seats(w: World, caller: str) -> Message:
    request = booking_pb2.HoldSeatsRequest(
        event_id=w.event.id,
        request_id=str(uuid.uuid4()),
        best_available=booking_pb2.BestAvailable(section_id=w.ga_section_id, quantity=1),
    )
    if caller == PARTNER:
        request.on_behalf_of.CopyFrom(END_CUSTOMER)
    return request


async def _get_order(w: World, caller: str) -> Message:
    # The CUSTOMER's order of the ORGANIZER's event: every allowed role may read it; a
    # partner reads the orders it sold.
    order_id = (await w.fresh_order(PARTNER)).id if caller == PARTNER else w.order.id
    return booking_pb2.GetOrderRequest(order_id=order_id)


async def _refund_order(w: World, caller: str) -> Message:
    order = await w.fresh_order(PARTNER if caller == PARTNER else "CUSTOMER")
    return booking_pb2.RefundOrderRequest(
        order_id=order.id, request_id=str(uuid.uuid4()), reason="matrix test"
    )


async def _get_hold(w: World, caller: str) -> Message:
    # The CUSTOMER's hold of the ORGANIZER's event: read where its orders are read.
    return booking_pb2.GetHoldRequest(
        hold_id=(await w.fresh_hold(PARTNER if caller == PARTNER else "CUSTOMER")).id
    )


REALISTIC_FOR_CALLER: dict[str, CallerBuilder] = {
    "/ticketing.v1.BookingService/BookSeats": _book_seats,
    "/ticketing.v1.BookingService/HoldSeats": _hold_seats,
    "/ticketing.v1.BookingService/GetOrder": _get_order,
    "/ticketing.v1.BookingService/RefundOrder": _refund_order,
    "/ticketing.v1.BookingService/GetHold": _get_hold,
    "/ticketing.v1.BookingService/ExtendHold": _extend_hold,
    "/ticketing.v1.BookingService/ConfirmHold": _confirm_hold,
    "/ticketing.v1.BookingService/ReleaseHold": _release_hold,
    "/ticketing.v1.AuthService/ChangePassword": _change_password,
    "/ticketing.v1.AuthService/RevokeTokens": _revoke_tokens,
}
AFTER_SUCCESS: dict[str, Callable[[World, str, Message], Awaitable[None]]] = {
    "/ticketing.v1.AuthService/ChangePassword": _adopt_new_token,
    "/ticketing.v1.AuthService/RevokeTokens": _sign_in_again,
}


async def _list_users(w: World) -> Message:
    return auth_pb2.ListUsersRequest(page_size=5, email_prefix="matrix-")


async def _create_venue(w: World) -> Message:
    return venue_pb2.CreateVenueRequest(venue=small_layout(name=f"Matrix {uuid.uuid4().hex[:6]}"))


async def _update_venue(w: World) -> Message:
    venue = small_layout(name="Matrix Scratch (renamed)")
    venue.id = w.scratch_venue.id
    return venue_pb2.UpdateVenueRequest(venue=venue)


async def _get_venue(w: World) -> Message:
    return venue_pb2.GetVenueRequest(venue_id=w.venue.id)


async def _list_venues(w: World) -> Message:
    return venue_pb2.ListVenuesRequest(page_size=5)


async def _create_event(w: World) -> Message:
    return event_pb2.CreateEventRequest(
        venue_id=w.venue.id,
        name="Matrix Premiere",
        start_time=future(40),
        currency_code="EUR",
        section_prices={s.id: 1200 for s in w.venue.sections},
        max_tickets_per_order=4,
    )


async def _cancel_event(w: World) -> Message:
    # A fresh event of the ORGANIZER account: its owner and ADMIN may cancel it.
    event = await w.stubs.create_event(w.accounts["ORGANIZER"], w.venue, name="Matrix Doomed")
    return event_pb2.CancelEventRequest(event_id=event.id, reason="matrix test")


async def _get_event(w: World) -> Message:
    return event_pb2.GetEventRequest(event_id=w.event.id)


async def _list_events(w: World) -> Message:
    return event_pb2.ListEventsRequest(page_size=5, organizer_id=w.accounts["ORGANIZER"].user.id)


async def _list_seats(w: World) -> Message:
    return event_pb2.ListSeatsRequest(event_id=w.event.id, page_size=10)


async def _update_event(w: World) -> Message:
    changed = event_pb2.Event(id=w.event.id, end_time=future(30.2))
    return event_pb2.UpdateEventRequest(event=changed, update_mask=FieldMask(paths=["end_time"]))


async def _assign_staff(w: World) -> Message:
    return event_pb2.AssignStaffRequest(event_id=w.event.id, user_id=w.spare_staff.user.id)


async def _unassign_staff(w: World) -> Message:
    return event_pb2.UnassignStaffRequest(event_id=w.event.id, user_id=w.spare_staff.user.id)


async def _allocate_seats(w: World) -> Message:
    return _allocation_request(w)


def _allocation_request(w: World) -> event_pb2.AllocateSeatsRequest:
    return event_pb2.AllocateSeatsRequest(
        event_id=w.event.id,
        partner_id=w.partner.id,
        request_id=str(uuid.uuid4()),
        best_available=booking_pb2.BestAvailable(section_id=w.ga_section_id, quantity=1),
    )


async def _list_allocations(w: World) -> Message:
    return event_pb2.ListAllocationsRequest(event_id=w.event.id, page_size=5)


async def _release_allocation(w: World) -> Message:
    # A fresh allocation of the ORGANIZER's event: its owner and ADMIN may release it.
    made = await w.stubs.events.AllocateSeats(
        _allocation_request(w), metadata=w.accounts["ORGANIZER"].md
    )
    return event_pb2.ReleaseAllocationRequest(allocation_id=made.allocation.id)


async def _list_staff(w: World) -> Message:
    return event_pb2.ListStaffRequest(event_id=w.event.id, page_size=5)


async def _list_orders(w: World) -> Message:
    return booking_pb2.ListOrdersRequest(page_size=5, event_id=w.event.id)


async def _rotate_ticket_codes(w: World) -> Message:
    # A fresh order of the CUSTOMER: the owner, SUPPORT and ADMIN may rotate its codes.
    order = await w.fresh_order()
    return booking_pb2.RotateTicketCodesRequest(order_id=order.id, request_id=str(uuid.uuid4()))


async def _list_holds(w: World) -> Message:
    return booking_pb2.ListHoldsRequest(page_size=5, event_id=w.event.id)


async def _validate_ticket(w: World) -> Message:
    request: gate_pb2.ValidateTicketRequest = scan_request(
        w.order.tickets[0].code, w.event.id, gate="matrix-gate"
    )
    return request


async def _list_scans(w: World) -> Message:
    return gate_pb2.ListScansRequest(event_id=w.event.id, page_size=5)


async def _get_gate_stats(w: World) -> Message:
    return gate_pb2.GetGateStatsRequest(event_id=w.event.id)


async def _get_verification_keys(w: World) -> Message:
    return gate_pb2.GetVerificationKeysRequest(event_id=w.event.id)


async def _list_revocations(w: World) -> Message:
    return gate_pb2.ListRevocationsRequest(event_id=w.event.id, page_size=5)


async def _upload_offline_scans(w: World) -> Message:
    scan = gate_pb2.OfflineScan(scan_id=str(uuid.uuid4()), code="matrix-offline-code")
    scan.scan_time.GetCurrentTime()
    return gate_pb2.UploadOfflineScansRequest(
        event_id=w.event.id, gate_id="matrix-gate", scans=[scan]
    )


async def _create_device(w: World) -> Message:
    return gate_pb2.CreateDeviceRequest(
        event_id=w.event.id, gate_id="matrix-gate", display_name="matrix spare"
    )


async def _enroll_device(w: World) -> Message:
    return gate_pb2.EnrollDeviceRequest(enrollment_token=await w.enrollment_token())


async def _list_devices(w: World) -> Message:
    return gate_pb2.ListDevicesRequest(event_id=w.event.id, page_size=5)


async def _revoke_device(w: World) -> Message:
    created = await w.stubs.gate.CreateDevice(
        gate_pb2.CreateDeviceRequest(
            event_id=w.event.id, gate_id="matrix-gate", display_name="to revoke"
        ),
        metadata=w.accounts["ORGANIZER"].md,
    )
    return gate_pb2.RevokeDeviceRequest(device_id=created.device.id)


async def _rotate_signing_key(w: World) -> Message:
    return gate_pb2.RotateSigningKeyRequest(event_id=w.event.id)


async def _set_offline_admission(w: World) -> Message:
    return gate_pb2.SetOfflineAdmissionRequest(event_id=w.event.id, allowed=True)


_AUTH = "/ticketing.v1.AuthService/"
_VENUE = "/ticketing.v1.VenueService/"
_EVENT = "/ticketing.v1.EventService/"
_BOOKING = "/ticketing.v1.BookingService/"
_GATE = "/ticketing.v1.GateService/"
_PARTNER = "/ticketing.v1.PartnerService/"
_AUDIT = "/ticketing.v1.AuditService/"


async def _create_partner(w: World) -> Message:
    return partner_pb2.CreatePartnerRequest(
        display_name="Matrix New Reseller", contact_email=unique_email("matrix-new-partner")
    )


async def _list_partners(w: World) -> Message:
    return partner_pb2.ListPartnersRequest(page_size=5)


async def _get_partner(w: World) -> Message:
    return partner_pb2.GetPartnerRequest(partner_id=w.partner.id)


async def _set_partner_status(w: World) -> Message:
    return partner_pb2.SetPartnerStatusRequest(
        partner_id=w.scratch_partner.id, status=partner_pb2.PARTNER_STATUS_SUSPENDED
    )


async def _update_partner(w: World) -> Message:
    # 0: back to the server's default budget (what the scratch partner has anyway).
    return partner_pb2.UpdatePartnerRequest(partner_id=w.scratch_partner.id, rate_per_second=0)


async def _create_api_key(w: World) -> Message:
    return partner_pb2.CreateApiKeyRequest(partner_id=w.partner.id, display_name="matrix spare")


async def _list_api_keys(w: World) -> Message:
    return partner_pb2.ListApiKeysRequest(partner_id=w.partner.id, page_size=5)


async def _revoke_api_key(w: World) -> Message:
    # A fresh key of the PARTNER caller's partner: never the key the matrix calls with.
    created = await w.stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(partner_id=w.partner.id, display_name="to revoke"),
        metadata=w.admin.md,
    )
    return partner_pb2.RevokeApiKeyRequest(key_id=created.api_key.key_id)


async def _list_audit_entries(w: World) -> Message:
    # The world's event is the ORGANIZER's own: each allowed role may filter on it.
    return audit_pb2.ListAuditEntriesRequest(page_size=5, event_id=w.event.id)


async def _watch_seats(w: World) -> Message:
    return event_pb2.WatchSeatsRequest(event_id=w.event.id)


async def _watch_seat_batches(w: World) -> Message:
    return event_pb2.WatchSeatBatchesRequest(event_id=w.event.id)


async def _watch_gate(w: World) -> Message:
    # The ORGANIZER owns the event and the ENTRY_MANAGER works its gates: a snapshot or the
    # caught_up marker comes at once.
    return gate_pb2.WatchGateRequest(event_id=w.event.id)


async def _watch_orders(w: World) -> Message:
    # Every allowed caller gets a first message: its backlog, or the caught_up marker.
    return booking_pb2.WatchOrdersRequest(event_id=w.event.id)


REALISTIC: dict[str, RequestBuilder] = {
    _AUTH + "Register": _register,
    _AUTH + "Login": _login,
    _AUTH + "GetCurrentUser": _get_current_user,
    _AUTH + "SetUserRoles": _set_user_roles,
    _AUTH + "ListUsers": _list_users,
    _AUTH + "SetUserStatus": _set_user_status,
    _VENUE + "CreateVenue": _create_venue,
    _VENUE + "UpdateVenue": _update_venue,
    _VENUE + "GetVenue": _get_venue,
    _VENUE + "ListVenues": _list_venues,
    _EVENT + "CreateEvent": _create_event,
    _EVENT + "CancelEvent": _cancel_event,
    _EVENT + "GetEvent": _get_event,
    _EVENT + "ListEvents": _list_events,
    _EVENT + "ListSeats": _list_seats,
    _EVENT + "WatchSeats": _watch_seats,
    _EVENT + "WatchSeatBatches": _watch_seat_batches,
    _BOOKING + "WatchOrders": _watch_orders,
    _GATE + "WatchGate": _watch_gate,
    _EVENT + "UpdateEvent": _update_event,
    _EVENT + "AssignStaff": _assign_staff,
    _EVENT + "UnassignStaff": _unassign_staff,
    _EVENT + "ListStaff": _list_staff,
    _EVENT + "AllocateSeats": _allocate_seats,
    _EVENT + "ListAllocations": _list_allocations,
    _EVENT + "ReleaseAllocation": _release_allocation,
    _BOOKING + "ListOrders": _list_orders,
    _BOOKING + "RotateTicketCodes": _rotate_ticket_codes,
    _BOOKING + "ListHolds": _list_holds,
    _GATE + "ValidateTicket": _validate_ticket,
    _GATE + "ListScans": _list_scans,
    _GATE + "GetGateStats": _get_gate_stats,
    _GATE + "GetVerificationKeys": _get_verification_keys,
    _GATE + "ListRevocations": _list_revocations,
    _GATE + "UploadOfflineScans": _upload_offline_scans,
    _GATE + "CreateDevice": _create_device,
    _GATE + "EnrollDevice": _enroll_device,
    _GATE + "ListDevices": _list_devices,
    _GATE + "RevokeDevice": _revoke_device,
    _GATE + "RotateSigningKey": _rotate_signing_key,
    _GATE + "SetOfflineAdmission": _set_offline_admission,
    _PARTNER + "CreatePartner": _create_partner,
    _PARTNER + "ListPartners": _list_partners,
    _PARTNER + "GetPartner": _get_partner,
    _PARTNER + "SetPartnerStatus": _set_partner_status,
    _PARTNER + "UpdatePartner": _update_partner,
    _PARTNER + "CreateApiKey": _create_api_key,
    _PARTNER + "ListApiKeys": _list_api_keys,
    _PARTNER + "RevokeApiKey": _revoke_api_key,
    _AUDIT + "ListAuditEntries": _list_audit_entries,
}


def _short(full_method: str) -> str:
    return full_method.removeprefix("/ticketing.v1.").replace("/", ".")


MATRIX = [
    pytest.param(method, caller, id=f"{_short(method)}-{caller}")
    for method in TICKETING_METHODS
    for caller in CALLERS
]


def test_matrix_covers_every_rpc_of_every_service() -> None:
    served = descriptor_methods()
    assert set(TICKETING_METHODS) == served
    assert set(REALISTIC) | set(REALISTIC_FOR_CALLER) == served, (
        "every RPC needs a realistic request builder"
    )
    assert not set(REALISTIC) & set(REALISTIC_FOR_CALLER)
    assert len(MATRIX) == len(served) * len(CALLERS)
    # The matrix must contain both branches, or it would prove nothing.
    verdicts = {policy_allows(m, c) for m in TICKETING_METHODS for c in CALLERS}
    assert verdicts == {True, False}


# The access rules as the .proto comments document them, pinned here on purpose: a change to
# the policy table must be a deliberate change to this list too, never a silent one.
_ANY = "any signed-in user"
_PUBLIC = "public"
DOCUMENTED: dict[str, str | frozenset[str]] = {
    _AUTH + "Register": _PUBLIC,
    _AUTH + "Login": _PUBLIC,
    _AUTH + "GetCurrentUser": _ANY,
    _AUTH + "SetUserRoles": frozenset({"ADMIN"}),
    _AUTH + "ListUsers": frozenset({"ADMIN", "SUPPORT"}),
    _AUTH + "ChangePassword": _ANY,
    _AUTH + "RevokeTokens": _ANY,
    _AUTH + "SetUserStatus": frozenset({"ADMIN"}),
    _VENUE + "CreateVenue": frozenset({"ADMIN"}),
    _VENUE + "UpdateVenue": frozenset({"ADMIN"}),
    _VENUE + "GetVenue": _ANY,
    _VENUE + "ListVenues": _ANY,
    _EVENT + "CreateEvent": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "CancelEvent": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "GetEvent": _PUBLIC,
    _EVENT + "ListEvents": _PUBLIC,
    _EVENT + "ListSeats": _PUBLIC,
    _EVENT + "WatchSeats": _PUBLIC,
    _EVENT + "WatchSeatBatches": _PUBLIC,
    _EVENT + "UpdateEvent": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "AssignStaff": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "UnassignStaff": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "ListStaff": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "AllocateSeats": frozenset({"ADMIN", "ORGANIZER"}),
    _EVENT + "ListAllocations": frozenset({"ADMIN", "ORGANIZER", "PARTNER"}),
    _EVENT + "ReleaseAllocation": frozenset({"ADMIN", "ORGANIZER"}),
    _BOOKING + "BookSeats": frozenset({"CUSTOMER", "ADMIN", "PARTNER"}),
    _BOOKING + "GetOrder": frozenset({"CUSTOMER", "SUPPORT", "ADMIN", "ORGANIZER", "PARTNER"}),
    _BOOKING + "ListOrders": frozenset({"CUSTOMER", "SUPPORT", "ADMIN", "PARTNER"}),
    _BOOKING + "RefundOrder": frozenset({"CUSTOMER", "SUPPORT", "ADMIN", "PARTNER"}),
    _BOOKING + "RotateTicketCodes": frozenset({"CUSTOMER", "SUPPORT", "ADMIN"}),
    _BOOKING + "HoldSeats": frozenset({"CUSTOMER", "ADMIN", "PARTNER"}),
    _BOOKING + "ExtendHold": frozenset({"CUSTOMER", "ADMIN", "PARTNER"}),
    _BOOKING + "ConfirmHold": frozenset({"CUSTOMER", "ADMIN", "PARTNER"}),
    _BOOKING + "ReleaseHold": frozenset({"CUSTOMER", "ADMIN", "PARTNER"}),
    _BOOKING + "GetHold": frozenset({"CUSTOMER", "SUPPORT", "ADMIN", "ORGANIZER", "PARTNER"}),
    _BOOKING + "ListHolds": frozenset({"CUSTOMER", "SUPPORT", "ADMIN", "PARTNER"}),
    _BOOKING + "WatchOrders": frozenset({"CUSTOMER", "ORGANIZER", "SUPPORT", "ADMIN", "PARTNER"}),
    _GATE + "ValidateTicket": frozenset({"ENTRY_MANAGER", "ADMIN", "DEVICE"}),
    _GATE + "ListScans": frozenset({"ADMIN", "SUPPORT", "ENTRY_MANAGER", "ORGANIZER"}),
    _GATE + "GetGateStats": frozenset({"ADMIN", "SUPPORT", "ENTRY_MANAGER", "ORGANIZER"}),
    _GATE + "WatchGate": frozenset({"ADMIN", "ENTRY_MANAGER", "ORGANIZER"}),
    _GATE + "GetVerificationKeys": frozenset({"ENTRY_MANAGER", "ADMIN", "DEVICE"}),
    _GATE + "ListRevocations": frozenset({"ENTRY_MANAGER", "ADMIN", "DEVICE"}),
    _GATE + "UploadOfflineScans": frozenset({"ENTRY_MANAGER", "ADMIN", "DEVICE"}),
    _GATE + "CreateDevice": frozenset({"ORGANIZER", "ADMIN"}),
    _GATE + "EnrollDevice": _PUBLIC,
    _GATE + "ListDevices": frozenset({"ORGANIZER", "ADMIN"}),
    _GATE + "RevokeDevice": frozenset({"ORGANIZER", "ADMIN"}),
    _GATE + "RotateSigningKey": frozenset({"ORGANIZER", "ADMIN"}),
    _GATE + "SetOfflineAdmission": frozenset({"ORGANIZER", "ADMIN"}),
    _PARTNER + "CreatePartner": frozenset({"ADMIN"}),
    _PARTNER + "ListPartners": frozenset({"ADMIN"}),
    _PARTNER + "GetPartner": frozenset({"ADMIN", "PARTNER"}),
    _PARTNER + "SetPartnerStatus": frozenset({"ADMIN"}),
    _PARTNER + "UpdatePartner": frozenset({"ADMIN"}),
    _PARTNER + "CreateApiKey": frozenset({"ADMIN", "PARTNER"}),
    _PARTNER + "ListApiKeys": frozenset({"ADMIN", "PARTNER"}),
    _PARTNER + "RevokeApiKey": frozenset({"ADMIN", "PARTNER"}),
    _AUDIT + "ListAuditEntries": frozenset({"ADMIN", "SUPPORT", "ORGANIZER"}),
}


def test_policy_table_matches_the_documented_contract() -> None:
    def documented_allows(full_method: str, caller: str) -> bool:
        rule = DOCUMENTED[full_method]
        if rule == _PUBLIC:
            return True
        if caller == ANONYMOUS:
            return False
        # "any signed-in user" means users: a device or a partner's key reaches only what
        # names it.
        return (rule == _ANY and caller not in (DEVICE, PARTNER)) or caller in rule

    assert set(DOCUMENTED) == set(TICKETING_METHODS)
    differences = [
        (m, c)
        for m in TICKETING_METHODS
        for c in CALLERS
        if documented_allows(m, c) != policy_allows(m, c)
    ]
    assert differences == []


def check_against_policy(full_method: str, caller: str, outcome: Outcome) -> None:
    """The assertions of the matrix, shared by the realistic and the empty variant."""
    where = f"{full_method} as {caller}: {outcome.code.name} {outcome.reason} {outcome.message!r}"
    assert outcome.code not in NEVER, where
    if not policy_allows(full_method, caller):
        if caller == ANONYMOUS:
            assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, where
        else:
            assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, where
            assert outcome.reason == "ROLE_NOT_ALLOWED", where
            assert outcome.metadata.get("method") == full_method, where
        return
    if outcome.code == grpc.StatusCode.UNAUTHENTICATED:
        assert outcome.reason == DOMAIN_UNAUTHENTICATED.get(full_method), where
    assert not (
        outcome.code == grpc.StatusCode.PERMISSION_DENIED and outcome.reason == "ROLE_NOT_ALLOWED"
    ), where


@pytest.mark.parametrize(("full_method", "caller"), MATRIX)
async def test_realistic_request_is_allowed_or_refused_per_policy(
    world: World, channel: aio.Channel, full_method: str, caller: str
) -> None:
    for_caller = REALISTIC_FOR_CALLER.get(full_method)
    builder = REALISTIC.get(full_method)
    if for_caller is not None:
        request = await for_caller(world, caller)
    else:
        assert builder is not None, f"no realistic request for {full_method}"
        request = await builder(world)
    outcome = await generic_call(channel, full_method, request, world.md(caller))
    check_against_policy(full_method, caller, outcome)
    after = AFTER_SUCCESS.get(full_method)
    if after is not None and outcome.response is not None:
        await after(world, caller, outcome.response)
    if policy_allows(full_method, caller):
        # The world makes every allowed call legitimate (the ORGANIZER owns the event, the
        # CUSTOMER owns the order...), so the allowed branch must reach the real code path
        # and succeed; anything else means the request, not the policy, was tested.
        assert outcome.code == grpc.StatusCode.OK, (full_method, caller, outcome)
        assert isinstance(outcome.response, response_class(full_method))


@pytest.mark.parametrize(("full_method", "caller"), MATRIX)
async def test_empty_request_is_judged_by_policy_before_validation(
    world: World, channel: aio.Channel, full_method: str, caller: str
) -> None:
    outcome = await generic_call(
        channel, full_method, request_class(full_method)(), world.md(caller)
    )
    check_against_policy(full_method, caller, outcome)


async def test_refused_mutations_leave_no_trace(world: World, channel: aio.Channel) -> None:
    """A sample of refused mutating calls: the objects they aimed at are untouched."""
    event = await world.stubs.create_event(world.accounts["ORGANIZER"], world.venue)
    order = await world.fresh_order()
    attempts: list[tuple[str, Message, str]] = [
        (_EVENT + "CancelEvent", event_pb2.CancelEventRequest(event_id=event.id, reason="x"), c)
        for c in ("CUSTOMER", "SUPPORT", "ENTRY_MANAGER", ANONYMOUS)
    ] + [
        (
            _BOOKING + "RefundOrder",
            booking_pb2.RefundOrderRequest(
                order_id=order.id, request_id=str(uuid.uuid4()), reason="x"
            ),
            c,
        )
        for c in ("ORGANIZER", "ENTRY_MANAGER", ANONYMOUS)
    ]
    for full_method, request, caller in attempts:
        outcome = await generic_call(channel, full_method, request, world.md(caller))
        assert not policy_allows(full_method, caller)
        check_against_policy(full_method, caller, outcome)
    got_event = await world.stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))
    assert got_event.event.status == event_pb2.EVENT_STATUS_ON_SALE
    got_order = await world.stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=order.id), metadata=world.admin.md
    )
    assert got_order.order.status == booking_pb2.ORDER_STATUS_CONFIRMED
