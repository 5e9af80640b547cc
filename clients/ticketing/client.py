"""The typed SDK entry point: `connect(target, token)` -> stubs with auth, deadlines and retry.

gRPC refuses call credentials on insecure channels, so on plaintext (loopback development)
the credential (a bearer token, or a partner's `api_key`) is attached by a client
interceptor, and over TLS by call credentials.

A `Client` is a `ticketing.stubs.Stubs` (`client.auth`, `.venues`, `.events`, `.booking`,
`.gate`, `.partners`, `.audit`: raw stubs, which raise `grpc.aio.AioRpcError`) plus helpers
that choose the request_id, retry a lost lock race once and raise `ticketing.TicketingError`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from ticketing.errors import ticketing_errors
from ticketing.pagination import paginate
from ticketing.retry import (
    DEFAULT_ABORT_BACKOFF_SECONDS,
    SERVICE_CONFIG,
    RetryHook,
    retry_once_on_aborted,
)
from ticketing.sdk import new_request_id
from ticketing.stubs import CallMetadata, Stubs, api_key, bearer, device
from ticketing.v1 import audit_pb2, auth_pb2, booking_pb2, event_pb2, gate_pb2, partner_pb2
from ticketing.watch import (
    DEFAULT_GIVE_UP_SECONDS,
    ResumeHook,
    watch_gate,
    watch_orders,
    watch_seats,
)

DEFAULT_TIMEOUT_SECONDS = 10.0

RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")


class _AuthAndDeadline(aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization` (plaintext only) and a default deadline to each call."""

    def __init__(self, auth: Callable[[], CallMetadata], timeout: float, add_token: bool) -> None:
        self._auth = auth
        self._timeout = timeout
        self._add_token = add_token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = list(client_call_details.metadata or [])
        if self._add_token and not any(k == "authorization" for k, _ in metadata):
            metadata += self._auth()
        details = aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout
            if client_call_details.timeout is not None
            else self._timeout,
            metadata=aio.Metadata(*metadata),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


class _StreamAuth(aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization` (plaintext only) to each server-streaming call (WatchOrders,
    WatchGate ...). No default deadline: a watch is meant to run until its caller stops it."""

    def __init__(self, auth: Callable[[], CallMetadata]) -> None:
        self._auth = auth

    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = list(client_call_details.metadata or [])
        if not any(k == "authorization" for k, _ in metadata):
            metadata += self._auth()
        details = aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=client_call_details.timeout,
            metadata=aio.Metadata(*metadata),
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        return await continuation(details, request)


class _TokenCallCredentials(grpc.AuthMetadataPlugin):
    def __init__(self, auth: Callable[[], CallMetadata]) -> None:
        self._auth = auth

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        callback(self._auth(), None)


def end_customer(
    external_customer_id: str, display_name: str = "", email: str = ""
) -> booking_pb2.EndCustomer:
    """The `on_behalf_of` of a partner's sale: its own id for its customer (1..200
    characters), optionally a name and an email."""
    return booking_pb2.EndCustomer(
        external_customer_id=external_customer_id, display_name=display_name, email=email
    )


class Client(Stubs):
    """Connected stubs for every service, plus helpers that raise TicketingError. Close when done.

    `login()` sets `token`. `abort_backoff_seconds` is the mean pause before the helpers'
    one retry on ABORTED; `on_abort_retry`, if set, is awaited with the decoded error first.
    """

    def __init__(
        self,
        channel: aio.Channel,
        token: str | None = None,
        *,
        abort_backoff_seconds: float = DEFAULT_ABORT_BACKOFF_SECONDS,
        on_abort_retry: RetryHook | None = None,
    ) -> None:
        super().__init__(channel)
        self.token = token
        self.abort_backoff_seconds = abort_backoff_seconds
        self.on_abort_retry = on_abort_retry

    async def login(self, email: str, password: str) -> str:
        """Sign in and remember the token for later calls; returns it.

        A wrong email or password raises TicketingError(UNAUTHENTICATED).
        """
        with ticketing_errors():
            response = await self.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        self.token = response.access_token
        return self.token

    async def book_seats(
        self,
        event_id: str,
        seat_ids: Iterable[int],
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
        on_behalf_of: booking_pb2.EndCustomer | None = None,
    ) -> booking_pb2.Order:
        """Buy these seats (inventory ids from EventService.ListSeats) in one order.

        A partner (connected with `api_key`) names its end customer in `on_behalf_of`
        (`end_customer(...)`); nobody else may.

        `request_id` defaults to a fresh UUID; pass your own (and keep it) to retry a call
        whose outcome you never saw without booking twice. An ABORTED (SEAT_LOCKED: someone
        else held a seat) is retried once with the same request_id.
        `attempt_timeout` (default: the client's) is the gRPC deadline of each attempt; the
        server bounds its lock waits by it.
        Refusals raise TicketingError: its `reason` says why (SEAT_UNAVAILABLE, ...).
        """
        request = booking_pb2.BookSeatsRequest(
            event_id=event_id,
            request_id=request_id or new_request_id(),
            seat_ids=booking_pb2.SeatIds(ids=list(seat_ids)),
            on_behalf_of=on_behalf_of,
        )
        return (await self._mutate(self.booking.BookSeats, request, attempt_timeout)).order

    async def book_best_available(
        self,
        event_id: str,
        section_id: str,
        quantity: int,
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
        on_behalf_of: booking_pb2.EndCustomer | None = None,
    ) -> booking_pb2.Order:
        """Buy the `quantity` best free places of one section (EventSection.section_id).

        Same request_id, retry and error rules as `book_seats`; not enough places is SOLD_OUT.
        """
        request = booking_pb2.BookSeatsRequest(
            event_id=event_id,
            request_id=request_id or new_request_id(),
            best_available=booking_pb2.BestAvailable(section_id=section_id, quantity=quantity),
            on_behalf_of=on_behalf_of,
        )
        return (await self._mutate(self.booking.BookSeats, request, attempt_timeout)).order

    async def refund_order(
        self,
        order_id: str,
        reason: str,
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
    ) -> booking_pb2.Order:
        """Refund a whole order; returns it REFUNDED with its tickets VOID.

        Same request_id, retry and error rules as `book_seats`: a repeat of a refund that
        happened returns the refunded order instead of ALREADY_REFUNDED.
        """
        request = booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=request_id or new_request_id(), reason=reason
        )
        return (await self._mutate(self.booking.RefundOrder, request, attempt_timeout)).order

    async def hold_seats(
        self,
        event_id: str,
        seat_ids: Iterable[int] | None = None,
        *,
        best_section_id: str | None = None,
        quantity: int = 0,
        ttl_seconds: float | None = None,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
        on_behalf_of: booking_pb2.EndCustomer | None = None,
    ) -> booking_pb2.Hold:
        """Hold seats for the caller until confirmed, released or expired: these `seat_ids`,
        or the `quantity` best free places of section `best_section_id`.

        `ttl_seconds` (default: the server's TICKETING_HOLD_TTL) is 1 .. TICKETING_HOLD_MAX_TTL.
        Same request_id, retry and error rules as `book_seats` (live holds count toward the
        per-customer cap): a repeat returns the first hold.
        """
        request = booking_pb2.HoldSeatsRequest(
            event_id=event_id, request_id=request_id or new_request_id(), on_behalf_of=on_behalf_of
        )
        if best_section_id is not None:
            if seat_ids is not None:
                raise ValueError("give seat_ids or best_section_id, not both")
            request.best_available.CopyFrom(
                booking_pb2.BestAvailable(section_id=best_section_id, quantity=quantity)
            )
        elif seat_ids is not None:
            request.seat_ids.CopyFrom(booking_pb2.SeatIds(ids=list(seat_ids)))
        else:
            raise ValueError("give seat_ids or best_section_id")
        if ttl_seconds is not None:
            request.ttl.FromNanoseconds(round(ttl_seconds * 1e9))
        return (await self._mutate(self.booking.HoldSeats, request, attempt_timeout)).hold

    async def extend_hold(
        self,
        hold_id: str,
        ttl_seconds: float | None = None,
        *,
        attempt_timeout: float | None = None,
    ) -> booking_pb2.Hold:
        """Keep an active hold `ttl_seconds` from now (default TICKETING_HOLD_TTL), never
        past TICKETING_HOLD_MAX_TTL from its creation (TicketingError HOLD_LIMIT_EXCEEDED).
        A repeat extends to (about) the same instant, so it needs no request_id."""
        request = booking_pb2.ExtendHoldRequest(hold_id=hold_id)
        if ttl_seconds is not None:
            request.ttl.FromNanoseconds(round(ttl_seconds * 1e9))
        return (await self._mutate(self.booking.ExtendHold, request, attempt_timeout)).hold

    async def confirm_hold(
        self,
        hold_id: str,
        payment_reference: str = "",
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
        on_behalf_of: booking_pb2.EndCustomer | None = None,
    ) -> booking_pb2.Order:
        """Turn the hold into a CONFIRMED order (its tickets), storing `payment_reference`.

        Keep `request_id` with the payment: a repeat returns the same order. A hold that
        expired is still confirmed while its seats are free; if one was taken, TicketingError
        HOLD_EXPIRED (nothing was written: refund the payment). ABORTED is retried once.
        """
        request = booking_pb2.ConfirmHoldRequest(
            hold_id=hold_id,
            request_id=request_id or new_request_id(),
            payment_reference=payment_reference,
            on_behalf_of=on_behalf_of,
        )
        return (await self._mutate(self.booking.ConfirmHold, request, attempt_timeout)).order

    async def release_hold(
        self, hold_id: str, *, attempt_timeout: float | None = None
    ) -> booking_pb2.Hold:
        """Give the seats back at once; a repeat answers the hold RELEASED again."""
        request = booking_pb2.ReleaseHoldRequest(hold_id=hold_id)
        return (await self._mutate(self.booking.ReleaseHold, request, attempt_timeout)).hold

    async def get_hold(self, hold_id: str) -> booking_pb2.Hold:
        """One hold (its customer, SUPPORT, ADMIN, its event's organizer)."""
        with ticketing_errors():
            reply = await self.booking.GetHold(booking_pb2.GetHoldRequest(hold_id=hold_id))
        return reply.hold

    def iter_holds(
        self, *, event_id: str = "", customer_email: str = "", page_size: int = 0
    ) -> AsyncIterator[booking_pb2.Hold]:
        """Every hold the caller may see, newest first (own; SUPPORT and ADMIN anyone's)."""
        request = booking_pb2.ListHoldsRequest(event_id=event_id, customer_email=customer_email)
        return paginate(
            self.booking.ListHolds, request, lambda page: page.holds, page_size=page_size
        )

    async def get_order(self, order_id: str) -> booking_pb2.Order:
        """One order with its tickets (codes only for its owner, SUPPORT and ADMIN).

        Raises TicketingError (NOT_FOUND, PERMISSION_DENIED, ...).
        """
        with ticketing_errors():
            reply = await self.booking.GetOrder(booking_pb2.GetOrderRequest(order_id=order_id))
        return reply.order

    def iter_orders(
        self,
        *,
        event_id: str = "",
        customer_email: str = "",
        page_size: int = 0,
        external_customer_id: str = "",
    ) -> AsyncIterator[booking_pb2.Order]:
        """Every order the caller may see, newest first, fetching pages as it goes.

        A CUSTOMER sees their own; SUPPORT and ADMIN see all and may filter by email; a
        partner sees what it sold and may filter by `external_customer_id` (reconciliation).
        `page_size` 0 is the server default; stop iterating early to fetch no more pages.
        A failed page raises TicketingError.
        """
        request = booking_pb2.ListOrdersRequest(
            event_id=event_id,
            customer_email=customer_email,
            external_customer_id=external_customer_id,
        )
        return paginate(
            self.booking.ListOrders, request, lambda page: page.orders, page_size=page_size
        )

    def watch_seats(
        self,
        event_id: str,
        after_sequence: int = 0,
        *,
        give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
        on_resume: ResumeHook | None = None,
    ) -> AsyncIterator[event_pb2.SeatChange]:
        """The event's seat map live (public): with `after_sequence` 0 a snapshot, then every
        HELD / SOLD / AVAILABLE change in sequence order, each exactly once; the stream is
        reopened from the last change received on UNAVAILABLE or STREAM_TOO_SLOW
        (`ticketing.watch.watch_seats`). Many changes come per message (WatchSeatBatches),
        or one per message from a server older than that RPC (WatchSeats); the caller sees
        the same changes either way. It has no deadline and never ends by itself: stop
        iterating to close it."""
        return watch_seats(
            self.events,
            event_id,
            after_sequence,
            give_up_after=give_up_after,
            on_resume=on_resume,
        )

    def watch_orders(
        self,
        after_sequence: int = 0,
        *,
        event_id: str = "",
        give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
        on_resume: ResumeHook | None = None,
    ) -> AsyncIterator[booking_pb2.OrderChange]:
        """Order changes live (confirmed, refunded), only those the caller may read: a partner
        its own sales, an ORGANIZER its events' orders and its own purchases, ADMIN and
        SUPPORT all, a CUSTOMER its own; `event_id` narrows to one event. From the stream's
        first change (`after_sequence` 0) or after N, then a `caught_up` marker (after each
        reopening too); reopened from the last message received on UNAVAILABLE or
        STREAM_TOO_SLOW (`ticketing.watch.watch_orders`). No deadline, never ends by itself."""
        return watch_orders(
            self.booking.WatchOrders,
            after_sequence,
            event_id=event_id,
            give_up_after=give_up_after,
            on_resume=on_resume,
        )

    def watch_gate(
        self,
        event_id: str,
        after_sequence: int = 0,
        *,
        give_up_after: float = DEFAULT_GIVE_UP_SECONDS,
        on_resume: ResumeHook | None = None,
    ) -> AsyncIterator[gate_pb2.GateChange]:
        """An event's gate scans live, each with its gate's counts after it (ADMIN, the
        event's ORGANIZER, its assigned ENTRY_MANAGERs): with `after_sequence` 0 a snapshot
        of every gate's counts first, then a `caught_up` marker (after each reopening too);
        reopened from the last scan received on UNAVAILABLE or STREAM_TOO_SLOW
        (`ticketing.watch.watch_gate`). No deadline, never ends by itself."""
        return watch_gate(
            self.gate.WatchGate,
            event_id,
            after_sequence,
            give_up_after=give_up_after,
            on_resume=on_resume,
        )

    # Partner resellers (issue 13) ---------------------------------------------------------

    async def create_partner(self, display_name: str, contact_email: str) -> partner_pb2.Partner:
        """A new ACTIVE partner (ADMIN)."""
        with ticketing_errors():
            reply = await self.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(
                    display_name=display_name, contact_email=contact_email
                )
            )
        return reply.partner

    async def get_partner(self, partner_id: str = "") -> partner_pb2.Partner:
        """One partner (ADMIN); with a partner's api_key and no id, the partner itself."""
        with ticketing_errors():
            reply = await self.partners.GetPartner(
                partner_pb2.GetPartnerRequest(partner_id=partner_id)
            )
        return reply.partner

    async def set_partner_status(self, partner_id: str, *, suspended: bool) -> partner_pb2.Partner:
        """Suspend a partner (its keys are refused from their next call) or re-activate it."""
        status = (
            partner_pb2.PARTNER_STATUS_SUSPENDED if suspended else partner_pb2.PARTNER_STATUS_ACTIVE
        )
        with ticketing_errors():
            reply = await self.partners.SetPartnerStatus(
                partner_pb2.SetPartnerStatusRequest(partner_id=partner_id, status=status)
            )
        return reply.partner

    async def update_partner(
        self,
        partner_id: str,
        *,
        public_sales: bool | None = None,
        max_concurrent_rpcs: int | None = None,
        rate_per_second: int | None = None,
    ) -> partner_pb2.Partner:
        """Change a partner's public-pool permission and its own budget (ADMIN); None leaves
        a setting alone, a budget of 0 means the server default again."""
        request = partner_pb2.UpdatePartnerRequest(partner_id=partner_id)
        if public_sales is not None:
            request.public_sales = public_sales
        if max_concurrent_rpcs is not None:
            request.max_concurrent_rpcs = max_concurrent_rpcs
        if rate_per_second is not None:
            request.rate_per_second = rate_per_second
        with ticketing_errors():
            reply = await self.partners.UpdatePartner(request)
        return reply.partner

    def iter_partners(self, *, page_size: int = 0) -> AsyncIterator[partner_pb2.Partner]:
        """Every partner, oldest first (ADMIN)."""
        return paginate(
            self.partners.ListPartners,
            partner_pb2.ListPartnersRequest(),
            lambda page: page.partners,
            page_size=page_size,
        )

    async def create_api_key(
        self, display_name: str, *, partner_id: str = ""
    ) -> partner_pb2.CreateApiKeyResponse:
        """A new key (ADMIN for any partner; a partner for itself, `partner_id` empty). The
        response's `secret` is shown only here: store it like a password."""
        with ticketing_errors():
            return await self.partners.CreateApiKey(
                partner_pb2.CreateApiKeyRequest(partner_id=partner_id, display_name=display_name)
            )

    def iter_api_keys(
        self, *, partner_id: str = "", page_size: int = 0
    ) -> AsyncIterator[partner_pb2.ApiKey]:
        """A partner's keys, oldest first, revoked ones included."""
        return paginate(
            self.partners.ListApiKeys,
            partner_pb2.ListApiKeysRequest(partner_id=partner_id),
            lambda page: page.api_keys,
            page_size=page_size,
        )

    async def revoke_api_key(self, key_id: str) -> partner_pb2.ApiKey:
        """Revoke a key: refused from its next call on (a repeat changes nothing)."""
        with ticketing_errors():
            reply = await self.partners.RevokeApiKey(partner_pb2.RevokeApiKeyRequest(key_id=key_id))
        return reply.api_key

    async def allocate_seats(
        self,
        event_id: str,
        partner_id: str,
        seat_ids: Iterable[int] | None = None,
        *,
        best_section_id: str | None = None,
        quantity: int = 0,
        release_time: Any = None,
        request_id: str | None = None,
    ) -> event_pb2.Allocation:
        """Set places aside for a partner's channel (the event's ORGANIZER or ADMIN):
        these `seat_ids`, or the `quantity` best free places of `best_section_id`.
        `release_time` (a datetime or Timestamp) returns unsold places to the public then."""
        request = event_pb2.AllocateSeatsRequest(
            event_id=event_id, partner_id=partner_id, request_id=request_id or new_request_id()
        )
        if best_section_id is not None:
            request.best_available.section_id = best_section_id
            request.best_available.quantity = quantity
        elif seat_ids is not None:
            request.seat_ids.ids.extend(seat_ids)
        else:
            raise ValueError("give seat_ids or best_section_id")
        if release_time is not None:
            if hasattr(release_time, "ToDatetime"):
                request.release_time.CopyFrom(release_time)
            else:
                request.release_time.FromDatetime(release_time)
        with ticketing_errors():
            reply = await self.events.AllocateSeats(request)
        return reply.allocation

    async def release_allocation(self, allocation_id: str) -> event_pb2.Allocation:
        """Return an allocation's unsold places to the public pool now."""
        with ticketing_errors():
            reply = await self.events.ReleaseAllocation(
                event_pb2.ReleaseAllocationRequest(allocation_id=allocation_id)
            )
        return reply.allocation

    def iter_allocations(
        self, event_id: str, *, page_size: int = 0
    ) -> AsyncIterator[event_pb2.Allocation]:
        """An event's allocations, oldest first (its ORGANIZER or ADMIN)."""
        return paginate(
            self.events.ListAllocations,
            event_pb2.ListAllocationsRequest(event_id=event_id),
            lambda page: page.allocations,
            page_size=page_size,
        )

    # The audit log (issue 15) ---------------------------------------------------------------

    def iter_audit_entries(
        self,
        *,
        actor_id: str = "",
        action: str = "",
        subject_kind: str = "",
        subject_id: str = "",
        event_id: str = "",
        start_time: dt.datetime | None = None,
        end_time: dt.datetime | None = None,
        page_size: int = 0,
    ) -> AsyncIterator[audit_pb2.AuditEntry]:
        """Audit entries the caller may read, newest first, fetching pages as it goes: ADMIN
        all, SUPPORT the order entries, ORGANIZER their events' entries. Empty filters match
        anything; `start_time` is inclusive, `end_time` exclusive (aware datetimes). A
        failed page raises TicketingError (an ORGANIZER naming another's event:
        PERMISSION_DENIED NOT_EVENT_OWNER)."""
        request = audit_pb2.ListAuditEntriesRequest(
            actor_id=actor_id,
            action=action,
            subject_kind=subject_kind,
            subject_id=subject_id,
            event_id=event_id,
        )
        for name, value in (("start_time", start_time), ("end_time", end_time)):
            if value is not None:
                stamp = Timestamp()
                stamp.FromDatetime(value.astimezone(dt.UTC))
                getattr(request, name).CopyFrom(stamp)
        return paginate(
            self.audit.ListAuditEntries, request, lambda page: page.entries, page_size=page_size
        )

    async def _mutate(
        self,
        method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
        request: RequestT,
        attempt_timeout: float | None,
    ) -> ResponseT:
        """Send a mutation that carries a request_id (or, ExtendHold and ReleaseHold, needs
        none: a repeat does no more than the first) under the SDK's ABORTED rule."""

        def send(r: RequestT) -> Awaitable[ResponseT]:
            return method(r, timeout=attempt_timeout)

        with ticketing_errors():
            return await retry_once_on_aborted(
                send,
                request,
                backoff_seconds=self.abort_backoff_seconds,
                on_retry=self.on_abort_retry,
            )

    async def close(self) -> None:
        """Close the channel; calls still in flight are cancelled."""
        await self.channel.close(None)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def balanced_target(targets: str | Sequence[str]) -> tuple[str, bool]:
    """The gRPC target for one or several servers, and whether to balance over it.

    Several servers (a list, or `HOST:PORT,HOST:PORT` text) must be IP literals (127.0.0.1:
    50051, [::1]:50051): they become one `ipv4:`/`ipv6:` target that gRPC's client-side
    `round_robin` spreads calls over, one connection per server, skipping a server that is
    down. One server, or a target that already names a resolver (`dns:///name:port`,
    `ipv4:a,b`), is kept as it is; `ipv4:`/`ipv6:` with several addresses is balanced.
    """
    if isinstance(targets, str):
        if targets.startswith(("ipv4:", "ipv6:", "dns:", "unix:")):
            return targets, targets.startswith(("ipv4:", "ipv6:")) and "," in targets
        parts = [t.strip() for t in targets.split(",") if t.strip()]
    else:
        parts = [t.strip() for t in targets if t.strip()]
    if not parts:
        raise ValueError("connect needs at least one HOST:PORT target")
    if len(parts) == 1:
        return parts[0], False
    families = set()
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"target {part!r} is not HOST:PORT")
        try:
            families.add(ipaddress.ip_address(host.strip("[]")).version)
        except ValueError:
            raise ValueError(
                f"several targets must be IP addresses ({part!r} is not); for a name, use "
                "one dns:///NAME:PORT target resolving to every server, with round_robin=True"
            ) from None
    if len(families) != 1:
        raise ValueError("several targets must be all IPv4 or all IPv6")
    scheme = "ipv4" if families == {4} else "ipv6"
    return f"{scheme}:{','.join(parts)}", True


def _api_key_metadata(secret: str) -> CallMetadata:
    return api_key(secret)


def connect(
    target: str | Sequence[str],
    token: str | None = None,
    *,
    tls: bool | grpc.ChannelCredentials = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    options: Sequence[tuple[str, Any]] = (),
    abort_backoff_seconds: float = DEFAULT_ABORT_BACKOFF_SECONDS,
    on_abort_retry: RetryHook | None = None,
    device_credential: str | None = None,
    round_robin: bool | None = None,
    api_key: str | None = None,
) -> Client:
    """Open a channel to `target` (host:port) and return ready-to-use stubs.

    Authenticate with a signed-in user's `token`, as a partner reseller with its
    `api_key` (PartnerService.CreateApiKey; sent as `authorization: ApiKey <secret>`), or
    as a kiosk with its `device_credential`: one of them at most.

    Several servers (a list of HOST:PORT, or comma-separated) are balanced call by call
    with gRPC's client-side `round_robin` (see `balanced_target`); `round_robin=True` also
    balances a single `dns:///` target over every address the name resolves to.

    `tls=True` uses the system roots; pass ChannelCredentials for a private CA. Every call
    gets `timeout` seconds unless it passes its own, and UNAVAILABLE is retried with backoff
    where a resend cannot act twice (`ticketing.retry.SERVICE_CONFIG`). The last two settings
    shape the booking helpers' one retry on ABORTED (see `Client`).

    `device_credential` (a kiosk's "tkd_..." from GateService.EnrollDevice) is sent as
    `authorization: Device <credential>` on every call instead of a bearer token.
    """
    if sum(1 for given in (token, api_key, device_credential) if given) > 1:
        raise ValueError("give a token, an api_key or a device credential, not several")
    holder: dict[str, Client] = {}

    def current_token() -> CallMetadata:
        if api_key:
            return _api_key_metadata(api_key)
        if device_credential:
            return device(device_credential)
        current = holder["client"].token if "client" in holder else token
        return bearer(current) if current else ()

    target, several = balanced_target(target)
    balance = several if round_robin is None else round_robin
    channel_options = [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
        # The service config names no load-balancing policy, so this one applies.
        *([("grpc.lb_policy_name", "round_robin")] if balance else []),
        *options,
    ]
    if tls:
        base = grpc.ssl_channel_credentials() if tls is True else tls
        creds = grpc.composite_channel_credentials(
            base, grpc.metadata_call_credentials(_TokenCallCredentials(current_token))
        )
        interceptor = _AuthAndDeadline(current_token, timeout, add_token=False)
        channel = aio.secure_channel(
            target,
            creds,
            options=channel_options,
            interceptors=[interceptor],  # type: ignore[list-item]
        )
    else:
        interceptor = _AuthAndDeadline(current_token, timeout, add_token=True)
        channel = aio.insecure_channel(
            target,
            options=channel_options,
            # Over TLS the call credentials cover streams too; here streams need their own.
            interceptors=[interceptor, _StreamAuth(current_token)],  # type: ignore[list-item]
        )
    client = Client(
        channel=channel,
        token=token,
        abort_backoff_seconds=abort_backoff_seconds,
        on_abort_retry=on_abort_retry,
    )
    holder["client"] = client
    return client
