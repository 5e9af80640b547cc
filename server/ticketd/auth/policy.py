"""The role policy: one table mapping every full RPC method name to who may call it.

Default deny: a method missing from this table is refused for everyone, and a test walks every
RPC in the descriptor pool so that a new RPC cannot ship without an entry. Object-level rules
(an organizer's own events, a customer's own orders) live in each domain's rules module; this
table only says which roles may reach a method at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from ticketd.auth.principal import PrincipalKind, Role


@dataclass(frozen=True)
class Access:
    """Who may call one method: `public` needs no credentials; else a user holding any of
    `roles` (None = any user), or a principal of one of the other `kinds` (devices...)."""

    public: bool = False
    roles: frozenset[Role] | None = None
    kinds: frozenset[PrincipalKind] = frozenset()
    """Non-user principal kinds allowed (default none: a device reaches only what names it)."""

    def allows(self, roles: frozenset[Role], kind: PrincipalKind = PrincipalKind.USER) -> bool:
        if self.public:
            return True
        if kind is not PrincipalKind.USER:
            return kind in self.kinds
        return self.roles is None or not self.roles.isdisjoint(roles)


PUBLIC = Access(public=True)
SIGNED_IN = Access()


def roles(*allowed: Role | PrincipalKind) -> Access:
    """Users with any of the given roles, plus any of the given non-user principal kinds."""
    return Access(
        roles=frozenset(a for a in allowed if isinstance(a, Role)),
        kinds=frozenset(a for a in allowed if isinstance(a, PrincipalKind)),
    )


ADMIN = Role.ADMIN
ORGANIZER = Role.ORGANIZER
CUSTOMER = Role.CUSTOMER
SUPPORT = Role.SUPPORT
ENTRY_MANAGER = Role.ENTRY_MANAGER
# Not a user role: an enrolled kiosk (`authorization: Device ...`), scoped to one event and
# gate (ticketd.gate.rules checks the scope on every call).
DEVICE = PrincipalKind.DEVICE
# ROLE_PARTNER: a partner reseller's API key (`authorization: ApiKey ...`), acting for its own
# partner only (ticketd.partners.rules checks the partner on every call).
PARTNER = PrincipalKind.PARTNER

_AUTH = "/ticketing.v1.AuthService/"
_VENUE = "/ticketing.v1.VenueService/"
_EVENT = "/ticketing.v1.EventService/"
_BOOKING = "/ticketing.v1.BookingService/"
_GATE = "/ticketing.v1.GateService/"
_PARTNER = "/ticketing.v1.PartnerService/"
_AUDIT = "/ticketing.v1.AuditService/"

POLICY: dict[str, Access] = {
    # Infrastructure: load balancers and tools must reach these without a token.
    "/grpc.health.v1.Health/Check": PUBLIC,
    "/grpc.health.v1.Health/Watch": PUBLIC,
    "/grpc.health.v1.Health/List": PUBLIC,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": PUBLIC,
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": PUBLIC,
    # AuthService
    _AUTH + "Register": PUBLIC,
    _AUTH + "Login": PUBLIC,
    _AUTH + "GetCurrentUser": SIGNED_IN,
    _AUTH + "SetUserRoles": roles(ADMIN),
    _AUTH + "ListUsers": roles(ADMIN, SUPPORT),
    # Account lock-out: anyone for themselves (RevokeTokens of someone else needs ADMIN,
    # checked in ticketd.accounts.rules); only an ADMIN disables or enables accounts.
    _AUTH + "ChangePassword": SIGNED_IN,
    _AUTH + "RevokeTokens": SIGNED_IN,
    _AUTH + "SetUserStatus": roles(ADMIN),
    # VenueService: ADMIN edits, anyone signed in reads.
    _VENUE + "CreateVenue": roles(ADMIN),
    _VENUE + "UpdateVenue": roles(ADMIN),
    _VENUE + "GetVenue": SIGNED_IN,
    _VENUE + "ListVenues": SIGNED_IN,
    # EventService: reading is public; ownership is checked in ticketd.events.rules.
    _EVENT + "CreateEvent": roles(ADMIN, ORGANIZER),
    _EVENT + "CancelEvent": roles(ADMIN, ORGANIZER),
    _EVENT + "GetEvent": PUBLIC,
    _EVENT + "ListEvents": PUBLIC,
    _EVENT + "ListSeats": PUBLIC,
    # Follows the same seat map live (issue 15); bounded per server by TICKETING_MAX_STREAMS.
    _EVENT + "WatchSeats": PUBLIC,
    # The same stream, a page of changes per message: the same audience.
    _EVENT + "WatchSeatBatches": PUBLIC,
    # The scan window and the gate staff of an event: its owner or ADMIN (ticketd.events.rules).
    _EVENT + "UpdateEvent": roles(ADMIN, ORGANIZER),
    _EVENT + "AssignStaff": roles(ADMIN, ORGANIZER),
    _EVENT + "UnassignStaff": roles(ADMIN, ORGANIZER),
    _EVENT + "ListStaff": roles(ADMIN, ORGANIZER),
    # Allocations to partners' channels (issue 13): the event's owner or ADMIN; a partner
    # reads its own allocations only (ticketd.events.service.list_allocations).
    _EVENT + "AllocateSeats": roles(ADMIN, ORGANIZER),
    _EVENT + "ListAllocations": roles(ADMIN, ORGANIZER, PARTNER),
    _EVENT + "ReleaseAllocation": roles(ADMIN, ORGANIZER),
    # BookingService: ownership of orders is checked in ticketd.booking.rules.
    # A partner's key (issue 13) sells for its end customers and manages what it sold.
    _BOOKING + "BookSeats": roles(CUSTOMER, ADMIN, PARTNER),
    _BOOKING + "GetOrder": roles(CUSTOMER, SUPPORT, ADMIN, ORGANIZER, PARTNER),
    _BOOKING + "ListOrders": roles(CUSTOMER, SUPPORT, ADMIN, PARTNER),
    # Order changes live: each caller sees what GetOrder would show it (ticketd.booking.rules
    # order_watch_scope): a partner its sales, an organizer its events', a customer its own.
    _BOOKING + "WatchOrders": roles(CUSTOMER, ORGANIZER, SUPPORT, ADMIN, PARTNER),
    _BOOKING + "RefundOrder": roles(CUSTOMER, SUPPORT, ADMIN, PARTNER),
    # The owner replaces leaked codes; SUPPORT/ADMIN re-send them (they never read codes).
    _BOOKING + "RotateTicketCodes": roles(CUSTOMER, SUPPORT, ADMIN),
    # Holds (issue 12): made, extended, confirmed and released by who may book, and only
    # the hold's own customer (ticketd.booking.rules.ensure_hold_owner); read where orders are.
    _BOOKING + "HoldSeats": roles(CUSTOMER, ADMIN, PARTNER),
    _BOOKING + "ExtendHold": roles(CUSTOMER, ADMIN, PARTNER),
    _BOOKING + "ConfirmHold": roles(CUSTOMER, ADMIN, PARTNER),
    _BOOKING + "ReleaseHold": roles(CUSTOMER, ADMIN, PARTNER),
    _BOOKING + "GetHold": roles(CUSTOMER, SUPPORT, ADMIN, ORGANIZER, PARTNER),
    _BOOKING + "ListHolds": roles(CUSTOMER, SUPPORT, ADMIN, PARTNER),
    # GateService: only gate staff burn tickets, and an ENTRY_MANAGER only at the events they
    # are assigned to; supervisors and the event's own organizer read the log
    # (ticketd.gate.rules checks the event).
    _GATE + "ValidateTicket": roles(ENTRY_MANAGER, ADMIN, DEVICE),
    _GATE + "ListScans": roles(ADMIN, SUPPORT, ENTRY_MANAGER, ORGANIZER),
    _GATE + "GetGateStats": roles(ADMIN, SUPPORT, ENTRY_MANAGER, ORGANIZER),
    # Live scans and counts: the event's organizer, its assigned staff, ADMIN (gate rules
    # check_may_read decides the event; SUPPORT reads the log with ListScans instead).
    _GATE + "WatchGate": roles(ADMIN, ORGANIZER, ENTRY_MANAGER),
    # Offline gates (issue 14): what a kiosk syncs and uploads, for its own event and gate.
    _GATE + "GetVerificationKeys": roles(ENTRY_MANAGER, ADMIN, DEVICE),
    _GATE + "ListRevocations": roles(ENTRY_MANAGER, ADMIN, DEVICE),
    _GATE + "UploadOfflineScans": roles(ENTRY_MANAGER, ADMIN, DEVICE),
    # Devices and keys are managed by the event's owner (ticketd.gate rules check it).
    _GATE + "CreateDevice": roles(ORGANIZER, ADMIN),
    # The enrollment token is the credential: no account, no device yet.
    _GATE + "EnrollDevice": PUBLIC,
    _GATE + "ListDevices": roles(ORGANIZER, ADMIN),
    _GATE + "RevokeDevice": roles(ORGANIZER, ADMIN),
    _GATE + "RotateSigningKey": roles(ORGANIZER, ADMIN),
    _GATE + "SetOfflineAdmission": roles(ORGANIZER, ADMIN),
    # PartnerService (issue 13): ADMIN manages partners; a partner reads itself and manages
    # its own keys (ticketd.partners.rules.check_may_manage_partner).
    _PARTNER + "CreatePartner": roles(ADMIN),
    _PARTNER + "ListPartners": roles(ADMIN),
    _PARTNER + "GetPartner": roles(ADMIN, PARTNER),
    _PARTNER + "SetPartnerStatus": roles(ADMIN),
    _PARTNER + "UpdatePartner": roles(ADMIN),
    _PARTNER + "CreateApiKey": roles(ADMIN, PARTNER),
    _PARTNER + "ListApiKeys": roles(ADMIN, PARTNER),
    _PARTNER + "RevokeApiKey": roles(ADMIN, PARTNER),
    # AuditService (issue 15): ADMIN all, SUPPORT order entries, ORGANIZER their events'
    # entries (ticketd.audit.rules.visibility_for).
    _AUDIT + "ListAuditEntries": roles(ADMIN, SUPPORT, ORGANIZER),
}


def access_for(method: str) -> Access | None:
    """The rule for a full method name, or None: the caller is refused (default deny)."""
    return POLICY.get(method)
