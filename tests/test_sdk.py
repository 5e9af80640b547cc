"""The SDK (`ticketing.connect`, booking helpers, `ticketing.sdk`) against the real server.

Only the retry rule's unit test uses a stand-in, for the one thing a real server cannot be
made to do on cue: answer ABORTED exactly once. Everything else books real seats on the
in-process server and reads the outcome back from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import Account, Stubs, audit, small_layout
from ticketing import Client, connect
from ticketing.sdk import (
    FieldViolation,
    PreconditionViolation,
    TicketingError,
    decode_error,
    paginate,
    retry_once_on_aborted,
    ticketing_errors,
)
from ticketing.session import (
    DEFAULT_TARGET,
    SavedSession,
    clear_session,
    load_session,
    resolve_target,
    save_session,
    session_path,
)
from ticketing.v1 import auth_pb2, booking_pb2, event_pb2


@pytest.fixture
async def buyer(stubs: Stubs) -> Account:
    return await stubs.register("sdk-buyer")


@pytest.fixture
async def client(running: RunningServer, buyer: Account) -> AsyncIterator[Client]:
    async with connect(running.target, buyer.token) as c:
        yield c


async def orders_of(running: RunningServer, customer_id: str) -> list[tuple[str, str]]:
    """(order id, request_id) of every order the customer has, straight from PostgreSQL."""
    async with running.engine.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT id, request_id FROM orders WHERE customer_id = :c ORDER BY id"),
                {"c": uuid.UUID(customer_id)},
            )
        ).all()
    return [(str(r.id), str(r.request_id)) for r in rows]


# --- connect() ---------------------------------------------------------------------------


async def test_connect_attaches_the_bearer_token(
    running: RunningServer, stubs: Stubs, buyer: Account
) -> None:
    async with connect(running.target, buyer.token) as signed_in:
        me = await signed_in.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        assert me.user.id == buyer.user.id
        # A caller's own authorization header wins over the client's token.
        other = await stubs.register("sdk-other")
        them = await signed_in.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=other.md
        )
        assert them.user.id == other.user.id

    async with connect(running.target) as anonymous:
        with pytest.raises(aio.AioRpcError) as err:
            await anonymous.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        assert decode_error(err.value).code == grpc.StatusCode.UNAUTHENTICATED
        # login() keeps the token for every later call on the same channel.
        token = await anonymous.login(buyer.email, buyer.password)
        assert anonymous.token == token
        me = await anonymous.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest())
        assert me.user.email == buyer.email


# --- booking helpers on the real server ---------------------------------------------------


async def test_helpers_book_and_refund(
    stubs: Stubs, admin: Account, running: RunningServer, client: Client, buyer: Account
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=2, seats=5, ga=4))
    event = await stubs.create_event(admin, venue, price=1250)
    seats = await stubs.all_seats(event.id)

    by_id = await client.book_seats(event.id, [seats[4].id, seats[2].id])
    assert by_id.status == booking_pb2.ORDER_STATUS_CONFIRMED
    assert [t.seat_id for t in by_id.tickets] == [seats[2].id, seats[4].id]
    assert (by_id.total_minor, by_id.currency_code) == (2500, "EUR")
    assert uuid.UUID(by_id.request_id).version == 4

    best = await client.book_best_available(event.id, venue.sections[1].id, 3)
    assert len(best.tickets) == 3 and {t.section_name for t in best.tickets} == {"Standing"}
    assert best.request_id != by_id.request_id

    # A request_id the caller chose and kept makes a repeat return the same order.
    mine = str(uuid.uuid4())
    first = await client.book_seats(event.id, [seats[0].id], request_id=mine)
    again = await client.book_seats(event.id, [seats[0].id], request_id=mine)
    assert again == first and first.request_id == mine

    listed = [o.id async for o in client.iter_orders(event_id=event.id, page_size=1)]
    assert listed == [first.id, best.id, by_id.id]  # newest first, across pages
    assert await client.get_order(by_id.id) == by_id

    refund_id = str(uuid.uuid4())
    refunded = await client.refund_order(by_id.id, "cannot come", request_id=refund_id)
    assert refunded.status == booking_pb2.ORDER_STATUS_REFUNDED
    assert refunded.refund_reason == "cannot come"
    assert {t.status for t in refunded.tickets} == {booking_pb2.TICKET_STATUS_VOID}
    # Retrying the refund with its request_id is not ALREADY_REFUNDED: it returns the order.
    assert (await client.refund_order(by_id.id, "cannot come", request_id=refund_id)).id == by_id.id

    sold = await stubs.all_seats(event.id, status=event_pb2.SEAT_STATUS_SOLD)
    assert sorted(s.id for s in sold) == sorted([seats[0].id] + [t.seat_id for t in best.tickets])
    assert len(await orders_of(running, buyer.user.id)) == 3
    assert await audit(running.engine, event.id) == {}


async def test_aborted_booking_is_retried_once_with_the_same_request_id(
    stubs: Stubs, admin: Account, running: RunningServer, buyer: Account
) -> None:
    """A seat row-locked by someone else makes the first attempt ABORTED (SEAT_LOCKED); the
    lock is released while the SDK backs off, and its retry books with the same request_id."""
    engine = running.engine
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=3, ga=0))
    event = await stubs.create_event(admin, venue)
    seat = (await stubs.all_seats(event.id))[0].id
    retried: list[TicketingError] = []

    async with engine.connect() as blocker:
        await blocker.execute(text("SELECT 1 FROM seats WHERE id = :s FOR UPDATE"), {"s": seat})

        async def release_lock(error: TicketingError) -> None:
            retried.append(error)
            await blocker.rollback()

        async with connect(
            running.target, buyer.token, on_abort_retry=release_lock, abort_backoff_seconds=0.05
        ) as c:
            # A 2 s deadline makes the server give up the lock wait after 1 s, not 2 s.
            order = await c.book_seats(event.id, [seat], attempt_timeout=2.0)

    assert [(e.code, e.reason) for e in retried] == [(grpc.StatusCode.ABORTED, "SEAT_LOCKED")]
    assert retried[0].retryable
    assert [t.seat_id for t in order.tickets] == [seat]
    # One order, booked under the request_id the first (aborted) attempt carried.
    assert await orders_of(running, buyer.user.id) == [(order.id, order.request_id)]
    assert await audit(engine, event.id) == {}


# --- the retry rule, with a stand-in that answers ABORTED on cue --------------------------


def _status_trailer(
    code: grpc.StatusCode, reason: str, retry_delay: dt.timedelta | None = None
) -> aio.Metadata:
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="ticketing.v1"))
    status = status_pb2.Status(code=code.value[0], message=reason, details=[info])
    if retry_delay is not None:
        status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=retry_delay))
    return aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))


def _rpc_error(
    code: grpc.StatusCode, reason: str, retry_delay: dt.timedelta | None = None
) -> aio.AioRpcError:
    trailer = _status_trailer(code, reason, retry_delay)
    return aio.AioRpcError(code, aio.Metadata(), trailer, reason, debug_error_string=None)


class ScriptedBooking:
    """Stands in for BookingServiceAsyncStub: raises the scripted errors in turn, then books."""

    def __init__(self, *errors: aio.AioRpcError) -> None:
        self.errors = list(errors)
        self.requests: list[booking_pb2.BookSeatsRequest] = []

    async def BookSeats(
        self, request: booking_pb2.BookSeatsRequest, **call_options: object
    ) -> booking_pb2.BookSeatsResponse:
        self.requests.append(booking_pb2.BookSeatsRequest.FromString(request.SerializeToString()))
        if self.errors:
            raise self.errors.pop(0)
        return booking_pb2.BookSeatsResponse(
            order=booking_pb2.Order(id="o-1", request_id=request.request_id)
        )


@pytest.fixture
async def offline_client() -> AsyncIterator[Client]:
    # Never dialled: the stub is replaced before any call.
    async with Client(aio.insecure_channel("127.0.0.1:9"), abort_backoff_seconds=0) as c:
        yield c


async def test_retry_on_aborted_resends_the_same_request_id(offline_client: Client) -> None:
    fake = ScriptedBooking(_rpc_error(grpc.StatusCode.ABORTED, "SEAT_LOCKED"))
    # A scripted test double where the SDK expects a generated stub.
    offline_client.booking = fake  # type: ignore[assignment]
    seen: list[str] = []

    async def note(error: TicketingError) -> None:
        seen.append(error.reason)

    offline_client.on_abort_retry = note
    order = await offline_client.book_seats("e-1", [7, 8])
    assert len(fake.requests) == 2
    assert fake.requests[0] == fake.requests[1]
    assert uuid.UUID(fake.requests[0].request_id).version == 4
    assert order.request_id == fake.requests[0].request_id
    assert seen == ["SEAT_LOCKED"]


async def test_retry_happens_once_and_only_on_aborted(offline_client: Client) -> None:
    twice = ScriptedBooking(
        _rpc_error(grpc.StatusCode.ABORTED, "SEAT_LOCKED"),
        _rpc_error(grpc.StatusCode.ABORTED, "CONCURRENCY_CONFLICT"),
    )
    # A scripted test double where the SDK expects a generated stub.
    offline_client.booking = twice  # type: ignore[assignment]
    with pytest.raises(TicketingError) as err:
        await offline_client.book_best_available("e-1", "s-1", 2)
    assert err.value.reason == "CONCURRENCY_CONFLICT"  # the second answer
    assert len(twice.requests) == 2
    assert twice.requests[0].request_id == twice.requests[1].request_id

    refused = ScriptedBooking(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "SOLD_OUT"))
    # A scripted test double where the SDK expects a generated stub.
    offline_client.booking = refused  # type: ignore[assignment]
    with pytest.raises(TicketingError) as err:
        await offline_client.book_best_available("e-1", "s-1", 2)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert len(refused.requests) == 1

    # The same rule, used directly on any call.
    calls: list[str] = []

    async def flaky(request: str) -> str:
        calls.append(request)
        if len(calls) == 1:
            raise _rpc_error(grpc.StatusCode.ABORTED, "LOCKED")
        return request.upper()

    assert await retry_once_on_aborted(flaky, "req", backoff_seconds=0) == "REQ"
    assert calls == ["req", "req"]


# --- decoding rich error details ----------------------------------------------------------


async def test_decode_error_names_the_sold_seats(
    stubs: Stubs, admin: Account, running: RunningServer, client: Client
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=4, ga=0))
    event = await stubs.create_event(admin, venue)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    rival = await stubs.register("sdk-rival")
    async with connect(running.target, rival.token) as theirs:
        await theirs.book_seats(event.id, [ids[1], ids[2]])

    with pytest.raises(TicketingError) as err:
        await client.book_seats(event.id, [ids[0], ids[1], ids[2]])
    sold = err.value
    # The helper raised the decoded error from the call's own AioRpcError.
    assert isinstance(sold.__cause__, aio.AioRpcError) and decode_error(sold.__cause__) == sold
    assert (sold.code, sold.reason, sold.domain) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SEAT_UNAVAILABLE",
        "ticketing.v1",
    )
    assert sold.metadata == {"seat_ids": f"{ids[1]},{ids[2]}"}
    assert sold.precondition_violations == (
        PreconditionViolation("SEAT", str(ids[1]), "already sold or held"),
        PreconditionViolation("SEAT", str(ids[2]), "already sold or held"),
    )
    assert sold.seat_ids == (ids[1], ids[2])
    assert not sold.retryable
    assert "already sold" in sold.message

    with pytest.raises(TicketingError) as err:
        await client.book_seats(event.id, [ids[3], ids[3]])
    bad = err.value
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert bad.field_violations == (
        FieldViolation("seat_ids.ids[1]", f"seat {ids[3]} is listed twice"),
    )
    assert bad.seat_ids == ()


def test_decode_error_without_details() -> None:
    """A failure from gRPC itself (no ErrorInfo) still decodes, with an empty reason."""
    plain = aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, aio.Metadata(), aio.Metadata(), "Deadline", None
    )
    assert decode_error(plain) == TicketingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline")
    garbled = aio.AioRpcError(
        grpc.StatusCode.ABORTED,
        aio.Metadata(),
        aio.Metadata(("grpc-status-details-bin", b"\xff\xff not a status")),
        "x",
        None,
    )
    assert decode_error(garbled).reason == "" and decode_error(garbled).retryable


def test_ticketing_error_is_an_exception_with_the_retry_delay() -> None:
    err = _rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, "SCAN_RATE_EXCEEDED", dt.timedelta(milliseconds=1500)
    )
    decoded = decode_error(err)
    assert (decoded.reason, decoded.retry_delay) == ("SCAN_RATE_EXCEEDED", 1.5)
    assert decode_error(_rpc_error(grpc.StatusCode.ABORTED, "SEAT_LOCKED")).retry_delay is None
    assert str(decoded) == "RESOURCE_EXHAUSTED (SCAN_RATE_EXCEEDED): SCAN_RATE_EXCEEDED"
    # A real exception: raised from the call's error, equal by value, and picklable whole.
    with pytest.raises(TicketingError) as caught, ticketing_errors():
        raise err
    assert caught.value == decoded and caught.value.__cause__ is err
    assert pickle.loads(pickle.dumps(decoded)) == decoded
    assert len({decoded, decode_error(err)}) == 1


async def test_retry_on_aborted_waits_as_long_as_the_server_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauses: list[float] = []

    async def no_sleep(seconds: float) -> None:
        pauses.append(seconds)

    # Nothing else runs meanwhile: no await in this test ever yields to the event loop.
    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    told = _rpc_error(grpc.StatusCode.ABORTED, "SEAT_LOCKED", dt.timedelta(seconds=2))
    answers: list[aio.AioRpcError | None] = [
        told,
        None,
        _rpc_error(grpc.StatusCode.ABORTED, "CONCURRENCY_CONFLICT"),
        None,
    ]

    async def call(request: str) -> str:
        error = answers.pop(0)
        if error is not None:
            raise error
        return request

    assert await retry_once_on_aborted(call, "a", backoff_seconds=10) == "a"
    assert await retry_once_on_aborted(call, "b", backoff_seconds=10) == "b"
    assert answers == []
    assert pauses[0] == 2.0 and 5 <= pauses[1] <= 15  # RetryInfo, else jittered backoff


# --- paginate -----------------------------------------------------------------------------


class ScriptedListing:
    """Stands in for a List method: answers with the given pages, recording each call."""

    def __init__(self, *pages: tuple[list[int], str]) -> None:
        self.pages = list(pages)
        self.calls: list[tuple[event_pb2.ListSeatsRequest, dict[str, object]]] = []

    async def __call__(
        self, request: event_pb2.ListSeatsRequest, **options: object
    ) -> event_pb2.ListSeatsResponse:
        self.calls.append(
            (event_pb2.ListSeatsRequest.FromString(request.SerializeToString()), options)
        )
        if not self.pages:
            raise _rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_INVALID")
        ids, token = self.pages.pop(0)
        return event_pb2.ListSeatsResponse(
            seats=[event_pb2.Seat(id=i) for i in ids], next_page_token=token
        )


def _seats(page: event_pb2.ListSeatsResponse) -> list[event_pb2.Seat]:
    return list(page.seats)


async def test_paginate_follows_tokens_to_the_empty_one() -> None:
    listing = ScriptedListing(([1, 2], "t1"), ([3], "t2"), ([], "t3"), ([4], ""))
    request = event_pb2.ListSeatsRequest(event_id="e-1", page_size=7)
    pages = paginate(
        # A scripted test double where the SDK expects a generated stub.
        listing,  # type: ignore[arg-type]
        request,
        _seats,
        page_size=2,
        metadata=(("authorization", "Bearer x"),),
        page_timeout=5.0,
    )
    assert [s.id async for s in pages] == [1, 2, 3, 4]  # an empty page is not the end
    assert [(r.page_token, r.page_size, r.event_id) for r, _ in listing.calls] == [
        ("", 2, "e-1"),
        ("t1", 2, "e-1"),
        ("t2", 2, "e-1"),
        ("t3", 2, "e-1"),
    ]
    assert all(
        o == {"metadata": (("authorization", "Bearer x"),), "timeout": 5.0}
        for _, o in listing.calls
    )
    assert (request.page_token, request.page_size) == ("", 7)  # the caller's request is as it was

    # Stopping early fetches no more pages; the request's own page size and token are used.
    listing = ScriptedListing(([1, 2], "t1"), ([3], ""))
    resumed = event_pb2.ListSeatsRequest(event_id="e-1", page_size=7, page_token="t0")
    # A scripted test double where the SDK expects a generated stub.
    async for _ in paginate(listing, resumed, _seats):  # type: ignore[arg-type]
        break
    assert [(r.page_token, r.page_size) for r, _ in listing.calls] == [("t0", 7)]

    # A page that fails raises TicketingError, after the items of the pages before it.
    listing = ScriptedListing(([1], "t1"))
    seen: list[int] = []
    with pytest.raises(TicketingError) as err:
        # A scripted test double where the SDK expects a generated stub.
        async for seat in paginate(listing, request, _seats):  # type: ignore[arg-type]
            seen.append(seat.id)
    assert seen == [1] and err.value.reason == "PAGE_TOKEN_INVALID"


# --- the session store --------------------------------------------------------------------


def test_session_store_is_private_and_resolve_target_prefers_what_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKETCTL_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("TICKETING_TARGET", raising=False)
    assert load_session() is None and resolve_target() == DEFAULT_TARGET

    path = save_session(SavedSession("saved:1", "tok-1", "a@example.test"))
    assert path == session_path() and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    save_session(SavedSession("saved:2", "tok-2", "b@example.test"))  # replaces it whole
    assert load_session() == SavedSession("saved:2", "tok-2", "b@example.test")
    assert [p.name for p in path.parent.iterdir()] == ["session.json"]

    assert resolve_target() == "saved:2"
    assert resolve_target(environ={"TICKETING_TARGET": "env:3"}) == "env:3"
    monkeypatch.setenv("TICKETING_TARGET", "env:4")
    assert resolve_target() == "env:4"
    assert resolve_target("given:5") == "given:5"

    path.write_text("{not json")
    assert load_session() is None
    clear_session()
    clear_session()  # nothing there: fine
    assert not path.exists() and load_session() is None


def test_the_sdk_needs_nothing_the_tools_or_the_server_use() -> None:
    """A partner's install has grpcio, protobuf and grpcio-status only: importing the SDK
    must not reach for what ticketctl, the kiosk, the harness or the server use."""
    tools_and_server = [
        "rich",
        "yaml",
        "hdrh",
        "matplotlib",
        "grpc_health",
        "sqlalchemy",
        "asyncpg",
        "alembic",
        "bcrypt",
        "jwt",
        "ticketd",
    ]
    code = (
        "import sys\n"
        f"for name in {tools_and_server!r}:\n"
        "    sys.modules[name] = None  # importing it raises ImportError\n"
        "import ticketing, ticketing.client, ticketing.errors, ticketing.pagination\n"
        "import ticketing.retry, ticketing.sdk, ticketing.session, ticketing.stubs\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
