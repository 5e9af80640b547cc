"""Helpers shared by tests: real stubs, rich error details, account set-up."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ticketing import stubs as sdk_stubs
from ticketing.errors import decode_error
from ticketing.pagination import PageRequest, PageResponse, paginate
from ticketing.stubs import CallMetadata, bearer
from ticketing.v1 import (
    auth_pb2,
    booking_pb2,
    common_pb2,
    event_pb2,
    gate_pb2,
    partner_pb2,
    venue_pb2,
)

if TYPE_CHECKING:
    from ticketd.config import Settings

PASSWORD = "correct horse battery"
STATUS_DETAILS_KEY = "grpc-status-details-bin"
DetailT = TypeVar("DetailT", bound=Message)
RequestT = TypeVar("RequestT", bound=PageRequest)
ResponseT = TypeVar("ResponseT", bound=PageResponse)


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.test"


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str | None
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    precondition_violations: list[tuple[str, str, str]]


def error_details(err: aio.AioRpcError) -> ErrorDetails:
    """The SDK's decode_error, in the shape the tests assert on (reason None without one)."""
    decoded = decode_error(err)
    if decoded.reason or decoded.domain:
        assert decoded.domain == "ticketing.v1"
    return ErrorDetails(
        decoded.code,
        decoded.message,
        decoded.reason or None,
        dict(decoded.metadata),
        [(v.field, v.description) for v in decoded.field_violations],
        [(v.type, v.subject, v.description) for v in decoded.precondition_violations],
    )


def trailing_metadata(err: aio.AioRpcError) -> list[tuple[str, str | bytes]]:
    """A failed call's trailing metadata as (key, value) pairs.

    grpc-stubs declares AioRpcError.trailing_metadata() as the sync RpcError's tuple of
    `_Metadatum` objects; at runtime it is an aio.Metadata (or None) that iterates as pairs.
    """
    raw = cast("Iterable[tuple[str, str | bytes]] | None", err.trailing_metadata())
    return list(raw or ())


def rich_detail(err: aio.AioRpcError, kind: type[DetailT]) -> DetailT | None:
    """The first google.rpc detail of type `kind` in a failed call's status, or None."""
    for key, value in trailing_metadata(err):
        if key != STATUS_DETAILS_KEY:
            continue
        assert isinstance(value, bytes)
        for detail in status_pb2.Status.FromString(value).details:
            if detail.Is(kind.DESCRIPTOR):
                found = kind()
                detail.Unpack(found)
                return found
    return None


def retry_delay(err: aio.AioRpcError) -> float | None:
    """The RetryInfo delay of an error in seconds, or None without one."""
    info = rich_detail(err, error_details_pb2.RetryInfo)
    return None if info is None else float(info.retry_delay.ToNanoseconds()) / 1e9


@dataclass
class Account:
    user: common_pb2.User
    token: str
    email: str
    password: str

    @property
    def md(self) -> CallMetadata:
        return bearer(self.token)


class Stubs(sdk_stubs.Stubs):
    """The SDK's typed stubs over one channel, plus set-up helpers for tests."""

    async def register(self, tag: str = "user", password: str = PASSWORD) -> Account:
        email = unique_email(tag)
        reg = await self.auth.Register(
            auth_pb2.RegisterRequest(email=email, password=password, display_name=tag.title())
        )
        login = await self.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        return Account(reg.user, login.access_token, email, password)

    async def create_venue(
        self, admin: Account, venue: venue_pb2.Venue | None = None
    ) -> venue_pb2.Venue:
        resp = await self.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=venue or small_layout()), metadata=admin.md
        )
        return resp.venue

    async def create_event(
        self,
        owner: Account,
        venue: venue_pb2.Venue,
        *,
        price: int = 2500,
        max_per_order: int = 10,
        max_per_customer: int | None = None,
        days: float = 30,
        name: str = "Show",
        doors_open_time: Timestamp | None = None,
    ) -> event_pb2.Event:
        """An event `days` from now; its gates open `doors_open_time` (a Timestamp; unset:
        the server's default lead before start, so a scan today is NOT_YET_OPEN)."""
        request = event_pb2.CreateEventRequest(
            venue_id=venue.id,
            name=name,
            start_time=future(days),
            currency_code="EUR",
            section_prices={s.id: price for s in venue.sections},
            max_tickets_per_order=max_per_order,
            doors_open_time=doors_open_time,
        )
        if max_per_customer is not None:
            request.max_tickets_per_customer = max_per_customer
        return (await self.events.CreateEvent(request, metadata=owner.md)).event

    async def all_seats(self, event_id: str, **filters: Any) -> list[event_pb2.Seat]:
        request = event_pb2.ListSeatsRequest(event_id=event_id, **filters)
        pages = paginate(self.events.ListSeats, request, lambda p: p.seats, page_size=10_000)
        return [seat async for seat in pages]

    async def assign_staff(self, owner: Account, event_id: str, *staff: Account) -> None:
        """Let entry managers work an event's gates (as its organizer or an admin)."""
        for member in staff:
            await self.events.AssignStaff(
                event_pb2.AssignStaffRequest(event_id=event_id, user_id=member.user.id),
                metadata=owner.md,
            )

    async def create_partner(self, admin: Account, name: str) -> tuple[partner_pb2.Partner, str]:
        """A new partner reseller (as the admin) and the secret of one API key of it."""
        partner = (
            await self.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(
                    display_name=name, contact_email=unique_email("partner")
                ),
                metadata=admin.md,
            )
        ).partner
        key = await self.partners.CreateApiKey(
            partner_pb2.CreateApiKeyRequest(partner_id=partner.id, display_name="k"),
            metadata=admin.md,
        )
        return partner, key.secret

    async def account_with_roles(
        self, admin: Account, *roles: common_pb2.Role.ValueType, tag: str = "user"
    ) -> Account:
        acct = await self.register(tag)
        resp = await self.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=acct.user.id, roles=list(roles)),
            metadata=admin.md,
        )
        acct.user = resp.user
        return acct


async def all_pages(
    method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
    request: RequestT,
    metadata: CallMetadata | None = None,
) -> list[ResponseT]:
    """Every page of a List call from `request` on, in order (the SDK's paginate, a page at
    a time), for tests that look at the pages themselves."""
    return [
        page async for page in paginate(method, request, lambda page: (page,), metadata=metadata)
    ]


@contextlib.asynccontextmanager
async def client_pool(target: str, size: int) -> AsyncIterator[list[Stubs]]:
    """`size` channels to `target`, so concurrent calls arrive like separate clients (kiosks,
    buyers); closed on the way out."""
    channels = [aio.insecure_channel(target) for _ in range(size)]
    try:
        yield [Stubs(ch) for ch in channels]
    finally:
        for ch in channels:
            await ch.close(None)


def token_claims(settings: Settings, user_id: object, **extra: object) -> dict[str, Any]:
    """The claims of a valid access token for `user_id` (the server's issuer and audience,
    valid from now for 5 minutes, integer timestamps), then `extra`: for tests that sign or
    assemble tokens by hand."""
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims: dict[str, Any] = {
        "sub": user_id,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
    }
    return claims | extra


def future(days: float = 30) -> Timestamp:
    """A protobuf Timestamp `days` from now."""
    ts = Timestamp()
    ts.FromDatetime(dt.datetime.now(dt.UTC) + dt.timedelta(days=days))
    return ts


def small_layout(name: str = "Hall", rows: int = 3, seats: int = 4, ga: int = 5) -> venue_pb2.Venue:
    """A venue with one reserved section (rows x seats) and one general-admission section."""
    sections = [
        venue_pb2.Section(
            name="Stalls",
            kind=venue_pb2.SECTION_KIND_RESERVED,
            rows=[venue_pb2.Row(label=chr(ord("A") + i), seat_count=seats) for i in range(rows)],
        )
    ]
    if ga:
        sections.append(
            venue_pb2.Section(
                name="Standing", kind=venue_pb2.SECTION_KIND_GENERAL_ADMISSION, capacity=ga
            )
        )
    return venue_pb2.Venue(
        name=name, address="1 Main St", time_zone="Europe/Berlin", sections=sections
    )


def book_request(
    event_id: str, seat_ids: list[int], request_id: str | None = None
) -> booking_pb2.BookSeatsRequest:
    return booking_pb2.BookSeatsRequest(
        event_id=event_id,
        request_id=request_id or str(uuid.uuid4()),
        seat_ids=booking_pb2.SeatIds(ids=seat_ids),
    )


def best_request(event_id: str, section_id: str, quantity: int) -> booking_pb2.BookSeatsRequest:
    return booking_pb2.BookSeatsRequest(
        event_id=event_id,
        request_id=str(uuid.uuid4()),
        best_available=booking_pb2.BestAvailable(section_id=section_id, quantity=quantity),
    )


AUDIT_QUERIES = {
    "seat held by two live tickets": """
        SELECT seat_id FROM tickets WHERE status <> 'VOID' AND event_id = :e
        GROUP BY seat_id HAVING count(*) > 1""",
    "seat SOLD without a live ticket": """
        SELECT s.id FROM seats s WHERE s.event_id = :e AND s.status = 'SOLD'
        AND NOT EXISTS (SELECT 1 FROM tickets t WHERE t.seat_id = s.id AND t.status <> 'VOID')""",
    "live ticket on a seat that is not SOLD": """
        SELECT t.id FROM tickets t JOIN seats s ON s.id = t.seat_id
        WHERE t.event_id = :e AND t.status <> 'VOID' AND s.status <> 'SOLD'""",
    "order whose ticket count or total is wrong": """
        SELECT o.id FROM orders o LEFT JOIN tickets t ON t.order_id = o.id
        WHERE o.event_id = :e GROUP BY o.id, o.ticket_count, o.total_minor
        HAVING count(t.id) <> o.ticket_count OR coalesce(sum(t.price_minor), 0) <> o.total_minor""",
    "confirmed order with a void ticket": """
        SELECT o.id FROM orders o JOIN tickets t ON t.order_id = o.id
        WHERE o.event_id = :e AND o.status = 'CONFIRMED' AND t.status = 'VOID'""",
    "refunded order with a live ticket": """
        SELECT o.id FROM orders o JOIN tickets t ON t.order_id = o.id
        WHERE o.event_id = :e AND o.status = 'REFUNDED' AND t.status <> 'VOID'""",
    "ticket of another event's seat": """
        SELECT t.id FROM tickets t JOIN seats s ON s.id = t.seat_id
        WHERE t.event_id = :e AND s.event_id <> t.event_id""",
    # Holds (issue 12)
    "seat both under a hold and a live ticket": """
        SELECT s.id FROM seats s JOIN tickets t ON t.seat_id = s.id AND t.status <> 'VOID'
        WHERE s.event_id = :e AND s.hold_id IS NOT NULL""",
    "confirmed hold without exactly its order": """
        SELECT h.id FROM holds h LEFT JOIN orders o ON o.id = h.order_id
        WHERE h.event_id = :e AND h.status = 'CONFIRMED' AND (o.id IS NULL
            OR o.customer_id <> h.customer_id OR o.ticket_count <> h.seat_count
            OR (SELECT array_agg(seat_id ORDER BY seat_id) FROM tickets WHERE order_id = o.id)
               <> (SELECT array_agg(seat_id ORDER BY seat_id) FROM hold_seats
                   WHERE hold_id = h.id))""",
    "seat blocked by a hold that is not active": """
        SELECT s.id FROM seats s JOIN holds h ON h.id = s.hold_id
        WHERE s.event_id = :e AND (h.status <> 'ACTIVE' OR s.held_until <> h.expire_time)""",
}


async def audit(engine: AsyncEngine, event_id: str) -> dict[str, int]:
    """Invariant violations for one event, read straight from PostgreSQL (empty = healthy)."""
    problems: dict[str, int] = {}
    async with engine.connect() as conn:
        for name, sql in AUDIT_QUERIES.items():
            rows = (await conn.execute(text(sql), {"e": uuid.UUID(event_id)})).all()
            if rows:
                problems[name] = len(rows)
    return problems


def scan_request(
    code: str, event_id: str, gate: str = "north-1", scan_id: str | None = None
) -> gate_pb2.ValidateTicketRequest:
    return gate_pb2.ValidateTicketRequest(
        code=code, event_id=event_id, gate_id=gate, scan_id=scan_id or str(uuid.uuid4())
    )


StreamItem = TypeVar("StreamItem")


class StreamReader(Generic[StreamItem]):
    """A server-streaming call read in the background into `items` (its error kept), with
    a bounded wait for a condition on what arrived: the watch tests' one reader."""

    def __init__(self, call: Any, read_timeout: float = 20.0) -> None:
        self.call = call
        self.items: list[StreamItem] = []
        self.error: aio.AioRpcError | None = None
        self._read_timeout = read_timeout
        self._grew = asyncio.Event()
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for item in self.call:
                self.items.append(item)
                self._grew.set()
        except aio.AioRpcError as err:
            self.error = err
            self._grew.set()

    async def wait_for(self, done: Callable[[], bool]) -> None:
        """Wait (bounded) until done() holds; the stream's error if it ends first."""
        async with asyncio.timeout(self._read_timeout):
            while not done():
                if self.error is not None:
                    raise self.error
                self._grew.clear()
                await self._grew.wait()

    async def stop(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
