"""The typed SDK entry point: `connect(target, token)` -> stubs with auth, deadlines and retry.

gRPC refuses call credentials on insecure channels, so on plaintext (loopback development)
the bearer token is attached by a client interceptor, and over TLS by call credentials.

Besides the raw stubs (`client.auth`, `.venues`, `.events`, `.booking`) the client offers
booking helpers that choose the request_id and retry a lost lock race once; failed calls raise
`grpc.aio.AioRpcError`, which `ticketing.sdk.decode_error` turns into a `TicketingError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc
from grpc import aio

from ticketing.sdk import (
    DEFAULT_ABORT_BACKOFF_SECONDS,
    RetryHook,
    new_request_id,
    retry_once_on_aborted,
)
from ticketing.v1 import (
    auth_pb2_grpc,
    booking_pb2,
    booking_pb2_grpc,
    event_pb2_grpc,
    gate_pb2_grpc,
    venue_pb2_grpc,
)

DEFAULT_TIMEOUT_SECONDS = 10.0

# Retry only UNAVAILABLE (server or database briefly away). The server also answers
# UNAVAILABLE when its database connection drops mid-call, and a dropped COMMIT may still have
# committed, so an automatic resend is only safe where a repeat cannot act twice:
# - AuthService: Login and reads are harmless; a repeated Register finds the email taken
#   (ALREADY_EXISTS) and SetUserRoles sets the same roles again.
# - BookingService: safe ONLY because BookSeats and RefundOrder carry a request_id (AIP-155) and
#   the server answers a repeat with the original order. Never send them without one.
# - GateService is absent on purpose: the kiosk retries ValidateTicket itself with the same
#   scan_id and must see each failure at once to show that the server is unreachable.
# - Venue and event reads. CreateVenue, UpdateVenue, CreateEvent and CancelEvent have no
#   request_id, so they are deliberately absent: a resend after an unseen commit would create
#   a second venue or event. (An empty `{}` name would be the default for every method,
#   these included, which is why there is none.)
# ABORTED is retried by the SDK's booking helpers (ticketing.sdk.retry_once_on_aborted), which
# resend the same request_id.
_RETRY_NAMES: list[dict[str, str]] = [
    {"service": "ticketing.v1.AuthService"},
    {"service": "ticketing.v1.BookingService"},
    {"service": "ticketing.v1.VenueService", "method": "GetVenue"},
    {"service": "ticketing.v1.VenueService", "method": "ListVenues"},
    {"service": "ticketing.v1.EventService", "method": "GetEvent"},
    {"service": "ticketing.v1.EventService", "method": "ListEvents"},
    {"service": "ticketing.v1.EventService", "method": "ListSeats"},
]
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRY_NAMES,
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


class _AuthAndDeadline(aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Adds `authorization: Bearer` (plaintext only) and a default deadline to each call."""

    def __init__(self, token: Callable[[], str | None], timeout: float, add_token: bool) -> None:
        self._token = token
        self._timeout = timeout
        self._add_token = add_token

    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        metadata = list(client_call_details.metadata or [])
        token = self._token()
        if self._add_token and token and not any(k == "authorization" for k, _ in metadata):
            metadata.append(("authorization", f"Bearer {token}"))
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


class _TokenCallCredentials(grpc.AuthMetadataPlugin):
    def __init__(self, token: Callable[[], str | None]) -> None:
        self._token = token

    def __call__(
        self, context: grpc.AuthMetadataContext, callback: grpc.AuthMetadataPluginCallback
    ) -> None:
        token = self._token()
        callback((("authorization", f"Bearer {token}"),) if token else (), None)


class Client:
    """Connected stubs for every service, plus booking helpers. Close when done.

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
        self.channel = channel
        self.token = token
        self.abort_backoff_seconds = abort_backoff_seconds
        self.on_abort_retry = on_abort_retry
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(channel)
        self.venues: venue_pb2_grpc.VenueServiceAsyncStub = venue_pb2_grpc.VenueServiceStub(channel)
        self.events: event_pb2_grpc.EventServiceAsyncStub = event_pb2_grpc.EventServiceStub(channel)
        self.booking: booking_pb2_grpc.BookingServiceAsyncStub = (
            booking_pb2_grpc.BookingServiceStub(channel)
        )
        self.gate: gate_pb2_grpc.GateServiceAsyncStub = gate_pb2_grpc.GateServiceStub(channel)

    async def login(self, email: str, password: str) -> str:
        """Sign in and remember the token for later calls; returns it."""
        from ticketing.v1 import auth_pb2

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
    ) -> booking_pb2.Order:
        """Buy these seats (inventory ids from EventService.ListSeats) in one order.

        `request_id` defaults to a fresh UUID; pass your own (and keep it) to retry a call
        whose outcome you never saw without booking twice. An ABORTED (SEAT_LOCKED: someone
        else held a seat) is retried once with the same request_id.
        `attempt_timeout` (default: the client's) is the gRPC deadline of each attempt; the
        server bounds its lock waits by it.
        Refusals raise AioRpcError; see `ticketing.sdk.decode_error` for the reason.
        """
        request = booking_pb2.BookSeatsRequest(
            event_id=event_id,
            request_id=request_id or new_request_id(),
            seat_ids=booking_pb2.SeatIds(ids=list(seat_ids)),
        )
        return (await self._book(request, attempt_timeout)).order

    async def book_best_available(
        self,
        event_id: str,
        section_id: str,
        quantity: int,
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
    ) -> booking_pb2.Order:
        """Buy the `quantity` best free places of one section (EventSection.section_id).

        Same request_id and retry rules as `book_seats`; not enough places is SOLD_OUT.
        """
        request = booking_pb2.BookSeatsRequest(
            event_id=event_id,
            request_id=request_id or new_request_id(),
            best_available=booking_pb2.BestAvailable(section_id=section_id, quantity=quantity),
        )
        return (await self._book(request, attempt_timeout)).order

    async def refund_order(
        self,
        order_id: str,
        reason: str,
        *,
        request_id: str | None = None,
        attempt_timeout: float | None = None,
    ) -> booking_pb2.Order:
        """Refund a whole order; returns it REFUNDED with its tickets VOID.

        Same request_id and retry rules as `book_seats`: a repeat of a refund that happened
        returns the refunded order instead of ALREADY_REFUNDED.
        """
        request = booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=request_id or new_request_id(), reason=reason
        )

        def send(
            r: booking_pb2.RefundOrderRequest,
        ) -> Awaitable[booking_pb2.RefundOrderResponse]:
            return self.booking.RefundOrder(r, timeout=attempt_timeout)

        response = await retry_once_on_aborted(
            send,
            request,
            backoff_seconds=self.abort_backoff_seconds,
            on_retry=self.on_abort_retry,
        )
        return response.order

    async def get_order(self, order_id: str) -> booking_pb2.Order:
        """One order with its tickets (codes only for its owner, SUPPORT and ADMIN)."""
        return (await self.booking.GetOrder(booking_pb2.GetOrderRequest(order_id=order_id))).order

    async def iter_orders(
        self,
        *,
        event_id: str = "",
        customer_email: str = "",
        page_size: int = 0,
    ) -> AsyncIterator[booking_pb2.Order]:
        """Every order the caller may see, newest first, fetching pages as it goes.

        A CUSTOMER sees their own; SUPPORT and ADMIN see all and may filter by email.
        `page_size` 0 is the server default; stop iterating early to fetch no more pages.
        """
        token = ""
        while True:
            page = await self.booking.ListOrders(
                booking_pb2.ListOrdersRequest(
                    event_id=event_id,
                    customer_email=customer_email,
                    page_size=page_size,
                    page_token=token,
                )
            )
            for order in page.orders:
                yield order
            token = page.next_page_token
            if not token:
                return

    async def _book(
        self, request: booking_pb2.BookSeatsRequest, attempt_timeout: float | None
    ) -> booking_pb2.BookSeatsResponse:
        def send(r: booking_pb2.BookSeatsRequest) -> Awaitable[booking_pb2.BookSeatsResponse]:
            return self.booking.BookSeats(r, timeout=attempt_timeout)

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


def connect(
    target: str,
    token: str | None = None,
    *,
    tls: bool | grpc.ChannelCredentials = False,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    options: Sequence[tuple[str, Any]] = (),
    abort_backoff_seconds: float = DEFAULT_ABORT_BACKOFF_SECONDS,
    on_abort_retry: RetryHook | None = None,
) -> Client:
    """Open a channel to `target` (host:port) and return ready-to-use stubs.

    `tls=True` uses the system roots; pass ChannelCredentials for a private CA. Every call
    gets `timeout` seconds unless it passes its own, and UNAVAILABLE is retried with backoff
    where a resend cannot act twice. The last two settings shape the booking helpers' one
    retry on ABORTED (see `Client`).
    """
    holder: dict[str, Client] = {}

    def current_token() -> str | None:
        return holder["client"].token if "client" in holder else token

    channel_options = [
        ("grpc.service_config", _RETRY_SERVICE_CONFIG),
        ("grpc.enable_retries", 1),
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
            interceptors=[interceptor],  # type: ignore[list-item]
        )
    client = Client(
        channel=channel,
        token=token,
        abort_backoff_seconds=abort_backoff_seconds,
        on_abort_retry=on_abort_retry,
    )
    holder["client"] = client
    return client
