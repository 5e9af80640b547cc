"""Token and access attacks that test_auth.py does not cover yet.

Tokens here are assembled by hand (header, claims, HMAC), because PyJWT refuses on purpose to
build several of them (an HMAC keyed with a PEM public key, a mislabelled algorithm). The
server must answer all of them UNAUTHENTICATED, must read roles from the database only, and
must never echo a token, its secret, a stack trace or SQL back to the caller. The second half
is a compact table of object-level refusals.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import (
    STATUS_DETAILS_KEY,
    Account,
    Stubs,
    best_request,
    error_details,
    scan_request,
    small_layout,
    token_claims,
    trailing_metadata,
)
from ticketing.stubs import bearer
from ticketing.v1 import auth_pb2, booking_pb2, common_pb2, event_pb2, venue_pb2

PUBLIC_KEY_PEM = (
    "-----BEGIN PUBLIC KEY-----\n"
    "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
    "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u\n"
    "+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh\n"
    "kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ\n"
    "0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg\n"
    "cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc\n"
    "mwIDAQAB\n"
    "-----END PUBLIC KEY-----\n"
)
ME = auth_pb2.GetCurrentUserRequest()
FORBIDDEN_IN_ERRORS = (
    "Traceback",
    'File "',
    "sqlalchemy",
    "asyncpg",
    "SELECT ",
    "INSERT ",
    "UPDATE ",
    " FROM ",
    " WHERE ",
    "jwt.exceptions",
    "Signature verification",
)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def hand_made_jwt(
    header: dict[str, Any],
    claims: dict[str, Any],
    key: bytes | None,
    digest: Callable[..., Any] = hashlib.sha256,
) -> str:
    """header.claims.HMAC(key) with any header at all; key None leaves the signature empty."""
    signing_input = (
        _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
    )
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), digest).digest()
    return signing_input + "." + _b64url(signature)


def good_claims(running: RunningServer, user_id: Any, **extra: Any) -> dict[str, Any]:
    return token_claims(running.components.settings, user_id, **extra)


def server_secret(running: RunningServer) -> bytes:
    secret = running.components.settings.jwt_secret
    assert secret
    return secret.encode()


def assert_nothing_leaks(err: aio.AioRpcError, *secrets_: str) -> None:
    """No token, secret, stack trace or SQL in the message or any trailing metadata."""
    texts = [err.details() or ""]
    for key, value in trailing_metadata(err):
        if key == STATUS_DETAILS_KEY:
            assert isinstance(value, bytes)
            status = status_pb2.Status.FromString(value)
            texts.append(status.message)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    texts += [info.reason, *info.metadata.keys(), *info.metadata.values()]
        else:
            texts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    blob = "\n".join(texts)
    for needle in (*secrets_, *FORBIDDEN_IN_ERRORS):
        assert needle and needle not in blob, (needle, blob)


async def refused_as_unauthenticated(
    stubs: Stubs, metadata: tuple[tuple[str, str], ...], *secrets_: str
) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.GetCurrentUser(ME, metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert_nothing_leaks(err.value, *secrets_)


@pytest.fixture(scope="module")
async def customer(stubs: Stubs) -> Account:
    return await stubs.register("attack-customer")


async def test_hand_made_tokens_are_accepted_when_honest(
    stubs: Stubs, running: RunningServer, customer: Account
) -> None:
    """Control: the hand-made encoder itself produces tokens the server accepts."""
    token = hand_made_jwt(
        {"alg": "HS256", "typ": "JWT"},
        good_claims(running, customer.user.id),
        server_secret(running),
    )
    me = await stubs.auth.GetCurrentUser(ME, metadata=bearer(token))
    assert me.user.id == customer.user.id


async def test_algorithm_confusion_tokens_are_unauthenticated(
    stubs: Stubs, running: RunningServer, admin: Account
) -> None:
    secret = server_secret(running)
    claims = good_claims(running, admin.user.id)
    pem = PUBLIC_KEY_PEM.encode()
    attacks = {
        # HS256 keyed with what an RS256 verifier would use as its public key.
        "HS256 keyed with a PEM public key": hand_made_jwt({"alg": "HS256"}, claims, pem),
        "HS256 keyed with the PEM body": hand_made_jwt(
            {"alg": "HS256"}, claims, b"".join(pem.splitlines()[1:-1])
        ),
        "RS256 header, HMAC with the PEM": hand_made_jwt({"alg": "RS256"}, claims, pem),
        # Even the real secret must not help when the header names another algorithm.
        "RS256 header, HMAC with the secret": hand_made_jwt({"alg": "RS256"}, claims, secret),
        "ES256 header, HMAC with the secret": hand_made_jwt({"alg": "ES256"}, claims, secret),
        "PS256 header, HMAC with the secret": hand_made_jwt({"alg": "PS256"}, claims, secret),
        "HS512 with the secret": hand_made_jwt({"alg": "HS512"}, claims, secret, hashlib.sha512),
        "HS384 with the secret": hand_made_jwt({"alg": "HS384"}, claims, secret, hashlib.sha384),
        "alg None, no signature": hand_made_jwt({"alg": "None"}, claims, None),
        "alg nOnE, no signature": hand_made_jwt({"alg": "nOnE"}, claims, None),
        "alg missing": hand_made_jwt({"typ": "JWT"}, claims, secret),
        "embedded jwk with attacker key": hand_made_jwt(
            {"alg": "HS256", "jwk": {"kty": "oct", "k": _b64url(b"k" * 32)}}, claims, b"k" * 32
        ),
        "kid path traversal": hand_made_jwt(
            {"alg": "HS256", "kid": "../../../../dev/null"}, claims, b""
        ),
        "jku to attacker": hand_made_jwt(
            {"alg": "HS256", "jku": "https://attacker.example/jwks.json"}, claims, b"x" * 32
        ),
        "empty key": hand_made_jwt({"alg": "HS256"}, claims, b""),
        "signature stripped": hand_made_jwt({"alg": "HS256"}, claims, secret).rsplit(".", 1)[0]
        + ".",
        "two segments": ".".join(hand_made_jwt({"alg": "HS256"}, claims, secret).split(".")[:2]),
    }
    for name, token in attacks.items():
        try:
            await refused_as_unauthenticated(stubs, bearer(token), token, secret.decode())
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


async def test_role_claims_in_a_validly_signed_token_grant_nothing(
    stubs: Stubs, running: RunningServer, customer: Account, admin: Account
) -> None:
    """Roles come from the database: extra claims, even correctly signed, add none."""
    claims = good_claims(
        running,
        customer.user.id,
        roles=["ADMIN", "SUPPORT"],
        role="ADMIN",
        admin=True,
        is_admin=True,
        scope="admin ticketing.v1.*",
        groups=["admins"],
        permissions=["*"],
        **{"https://ticketing/roles": ["ADMIN"]},
    )
    token = hand_made_jwt({"alg": "HS256", "typ": "JWT"}, claims, server_secret(running))
    md = bearer(token)
    me = await stubs.auth.GetCurrentUser(ME, metadata=md)
    assert me.user.id == customer.user.id
    assert list(me.user.roles) == [common_pb2.ROLE_CUSTOMER]
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=customer.user.id, roles=[common_pb2.ROLE_ADMIN]),
            metadata=md,
        ),
        lambda: stubs.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=md),
        lambda: stubs.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=small_layout()), metadata=md
        ),
    ]
    for call in calls:
        with pytest.raises(aio.AioRpcError) as err:
            await call()
        details = error_details(err.value)
        assert (details.code, details.reason) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )
    after = await stubs.auth.GetCurrentUser(ME, metadata=customer.md)
    assert list(after.user.roles) == [common_pb2.ROLE_CUSTOMER]


async def test_a_token_stops_granting_a_role_once_it_is_taken_away(
    stubs: Stubs, admin: Account
) -> None:
    staff = await stubs.register("attack-reduced")  # logged in now, token kept below
    for role in (common_pb2.ROLE_ADMIN, common_pb2.ROLE_SUPPORT):
        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=staff.user.id, roles=[role]), metadata=admin.md
        )
        listed = await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=staff.md)
        assert listed.users
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(user_id=staff.user.id, roles=[common_pb2.ROLE_CUSTOMER]),
        metadata=admin.md,
    )
    # The same, still unexpired token: refused on the very next call.
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=staff.md)
    details = error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    me = await stubs.auth.GetCurrentUser(ME, metadata=staff.md)
    assert list(me.user.roles) == [common_pb2.ROLE_CUSTOMER]


async def test_tokens_of_deleted_or_unknown_users_are_unauthenticated(
    stubs: Stubs, running: RunningServer
) -> None:
    doomed = await stubs.register("attack-deleted")
    assert (await stubs.auth.GetCurrentUser(ME, metadata=doomed.md)).user.id == doomed.user.id
    async with running.engine.begin() as conn:
        deleted = await conn.execute(
            text("DELETE FROM users WHERE id = :id"), {"id": uuid.UUID(doomed.user.id)}
        )
        assert deleted.rowcount == 1
    secret = server_secret(running)
    tokens = {
        "deleted user's own token": doomed.token,
        "forged for the deleted user": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, doomed.user.id), secret
        ),
        "unknown uuid": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, str(uuid.uuid4())), secret
        ),
        "nil uuid": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, str(uuid.UUID(int=0))), secret
        ),
        "sql in sub": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, "' OR '1'='1' --"), secret
        ),
        "sub is a list": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, [doomed.user.id]), secret
        ),
        "sub is an email": hand_made_jwt(
            {"alg": "HS256"}, good_claims(running, doomed.email), secret
        ),
    }
    for name, token in tokens.items():
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.GetCurrentUser(ME, metadata=bearer(token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert_nothing_leaks(err.value, token, secret.decode())
    # A deleted user cannot sign in again either.
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Login(auth_pb2.LoginRequest(email=doomed.email, password=doomed.password))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_more_than_one_authorization_header_is_unauthenticated(
    stubs: Stubs, admin: Account, customer: Account
) -> None:
    combos = {
        "same token twice": (("authorization", f"Bearer {admin.token}"),) * 2,
        "customer then admin": (
            ("authorization", f"Bearer {customer.token}"),
            ("authorization", f"Bearer {admin.token}"),
        ),
        "garbage then admin": (
            ("authorization", "Bearer garbage"),
            ("authorization", f"Bearer {admin.token}"),
        ),
    }
    for name, metadata in combos.items():
        calls: list[Callable[[], Awaitable[Any]]] = [
            functools.partial(stubs.auth.GetCurrentUser, ME, metadata=metadata),
            functools.partial(stubs.auth.ListUsers, auth_pb2.ListUsersRequest(), metadata=metadata),
        ]
        for call in calls:
            with pytest.raises(aio.AioRpcError) as err:
                await call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert_nothing_leaks(err.value, admin.token, customer.token)
        # Public methods ignore whatever token comes along (they never read the caller),
        # so the ambiguity cannot grant anything there and the call is simply answered.
        listed = await stubs.events.ListEvents(
            event_pb2.ListEventsRequest(page_size=1), metadata=metadata
        )
        assert len(listed.events) <= 1


async def test_errors_never_echo_tokens_secrets_or_internals(
    stubs: Stubs, running: RunningServer, admin: Account
) -> None:
    secret = server_secret(running)
    now = dt.datetime.now(dt.UTC)
    expired = hand_made_jwt(
        {"alg": "HS256"},
        good_claims(running, admin.user.id, exp=int((now - dt.timedelta(hours=1)).timestamp())),
        secret,
    )
    wrong_key = hand_made_jwt({"alg": "HS256"}, good_claims(running, admin.user.id), b"k" * 40)
    sql_token = "'; SELECT password_hash FROM users; --"
    headers = [
        f"Bearer {expired}",
        f"Bearer {wrong_key}",
        f"Bearer {sql_token}",
        f"Bearer {admin.token[:-4]}AAAA",
        f"Basic {admin.token}",
        f"Bearer {admin.token}.extra",
        f"BEARER {wrong_key}",
        f"Bearer {expired[::-1]}",
    ]
    for header in headers:
        token = header.split(" ", 1)[1]
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.GetCurrentUser(ME, metadata=(("authorization", header),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
        assert_nothing_leaks(err.value, token, secret.decode(), admin.token)
    # A wrong password is not echoed either.
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Login(
            auth_pb2.LoginRequest(email=admin.email, password="hunter2-is-not-it")
        )
    assert_nothing_leaks(err.value, "hunter2-is-not-it", secret.decode())


async def test_hostile_input_errors_reveal_no_internals(
    stubs: Stubs, running: RunningServer, admin: Account
) -> None:
    """Whatever the status (NUL in text used to come back INTERNAL from deep in the driver),
    the client sees no driver text, SQL, stack or secret."""
    venue = await stubs.create_venue(admin, small_layout(name="Leak Hall"))
    event = await stubs.create_event(admin, venue, name="Leak Show")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: stubs.auth.ListUsers(
            auth_pb2.ListUsersRequest(email_prefix="a\x00b"), metadata=admin.md
        ),
        lambda: stubs.booking.ListOrders(
            booking_pb2.ListOrdersRequest(customer_email="x\x00@example.test"), metadata=admin.md
        ),
        lambda: stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=event.id, reason="nul\x00reason"),
            metadata=admin.md,
        ),
        lambda: stubs.events.GetEvent(event_pb2.GetEventRequest(event_id="'; DROP TABLE users;--")),
        lambda: stubs.events.ListEvents(event_pb2.ListEventsRequest(page_token="%' OR 1=1 --")),
        lambda: stubs.auth.Login(auth_pb2.LoginRequest(email="a@b.cd' --", password="x" * 300)),
    ]
    for call in calls:
        with pytest.raises(aio.AioRpcError) as err:
            await call()
        assert_nothing_leaks(
            err.value,
            server_secret(running).decode(),
            admin.token,
            "invalid byte sequence",
            "CharacterNotInRepertoire",
            "[SQL:",
            "password_hash",
            "0x00",
        )
    still = await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=event.id))
    assert still.event.status == event_pb2.EVENT_STATUS_ON_SALE


# --- Object-level access: roles may reach a method, yet not every object behind it. --------


@dataclass
class Scene:
    stubs: Stubs
    organizer_a: Account
    organizer_b: Account
    customer_a: Account
    customer_b: Account
    support: Account
    entry_manager: Account
    event: event_pb2.Event  # owned by organizer_a
    ga_section_id: str
    order: booking_pb2.Order  # customer_a's, for the event


@pytest.fixture(scope="module")
async def scene(stubs: Stubs, admin: Account) -> Scene:
    org_a = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="obj-org-a")
    org_b = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="obj-org-b")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="obj-support")
    gate = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="obj-gate")
    cust_a = await stubs.register("obj-cust-a")
    cust_b = await stubs.register("obj-cust-b")
    venue = await stubs.create_venue(admin, small_layout(name="Object Hall", ga=50))
    event = await stubs.create_event(org_a, venue, name="Object Show")
    ga = venue.sections[1].id
    order = (await stubs.booking.BookSeats(best_request(event.id, ga, 2), metadata=cust_a.md)).order
    return Scene(stubs, org_a, org_b, cust_a, cust_b, support, gate, event, ga, order)


Attempt = Callable[[Scene], Awaitable[Any]]

OBJECT_CASES: list[tuple[str, Attempt, grpc.StatusCode, str]] = [
    (
        "organizer cancels another organizer's event",
        lambda s: s.stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=s.event.id, reason="mine now"),
            metadata=s.organizer_b.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_EVENT_OWNER",
    ),
    (
        "customer reads another customer's order by id",
        lambda s: s.stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=s.order.id), metadata=s.customer_b.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ORDER_OWNER",
    ),
    (
        "customer refunds another customer's order by id",
        lambda s: s.stubs.booking.RefundOrder(
            booking_pb2.RefundOrderRequest(
                order_id=s.order.id, request_id=str(uuid.uuid4()), reason="not mine"
            ),
            metadata=s.customer_b.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ORDER_OWNER",
    ),
    (
        "customer lists another customer's orders by email",
        lambda s: s.stubs.booking.ListOrders(
            booking_pb2.ListOrdersRequest(customer_email=s.customer_a.email),
            metadata=s.customer_b.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ORDER_OWNER",
    ),
    (
        "customer lists another customer's orders by email in other case",
        lambda s: s.stubs.booking.ListOrders(
            booking_pb2.ListOrdersRequest(customer_email=f"  {s.customer_a.email.upper()} "),
            metadata=s.customer_b.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ORDER_OWNER",
    ),
    (
        "organizer of another event reads an order",
        lambda s: s.stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=s.order.id), metadata=s.organizer_b.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ORDER_OWNER",
    ),
    (
        "entry manager books seats",
        lambda s: s.stubs.booking.BookSeats(
            best_request(s.event.id, s.ga_section_id, 1), metadata=s.entry_manager.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
    (
        "support books seats",
        lambda s: s.stubs.booking.BookSeats(
            best_request(s.event.id, s.ga_section_id, 1), metadata=s.support.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
    (
        "support cancels an event",
        lambda s: s.stubs.events.CancelEvent(
            event_pb2.CancelEventRequest(event_id=s.event.id, reason="support says so"),
            metadata=s.support.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
    (
        "organizer validates a ticket of their own event",
        lambda s: s.stubs.gate.ValidateTicket(
            scan_request(s.order.tickets[0].code, s.event.id), metadata=s.organizer_a.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
    (
        "organizer refunds an order of their own event",
        lambda s: s.stubs.booking.RefundOrder(
            booking_pb2.RefundOrderRequest(
                order_id=s.order.id, request_id=str(uuid.uuid4()), reason="organizer"
            ),
            metadata=s.organizer_a.md,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
    (
        "entry manager reads an order",
        lambda s: s.stubs.booking.GetOrder(
            booking_pb2.GetOrderRequest(order_id=s.order.id), metadata=s.entry_manager.md
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "ROLE_NOT_ALLOWED",
    ),
]


@pytest.mark.parametrize(
    ("attempt", "code", "reason"),
    [pytest.param(a, c, r, id=name) for name, a, c, r in OBJECT_CASES],
)
async def test_object_level_refusals(
    scene: Scene,
    running: RunningServer,
    attempt: Attempt,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    before = await _scene_state(scene, running)
    with pytest.raises(aio.AioRpcError) as err:
        await attempt(scene)
    details = error_details(err.value)
    assert (details.code, details.reason) == (code, reason)
    assert_nothing_leaks(err.value, scene.order.tickets[0].code)
    assert await _scene_state(scene, running) == before


async def _scene_state(scene: Scene, running: RunningServer) -> tuple[Any, ...]:
    """What a refused call must not change: the event, the order, sales and scans."""
    async with running.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    """
                    SELECT (SELECT cancel_time IS NULL FROM events WHERE id = :e),
                           (SELECT status FROM orders WHERE id = :o),
                           (SELECT count(*) FROM orders WHERE event_id = :e),
                           (SELECT count(*) FROM seats WHERE event_id = :e AND status = 'SOLD'),
                           (SELECT count(*) FROM scans WHERE event_id = :e),
                           (SELECT count(*) FROM refunds)
                    """
                ),
                {"e": uuid.UUID(scene.event.id), "o": uuid.UUID(scene.order.id)},
            )
        ).one()
    return tuple(row)


async def test_object_owners_are_allowed_where_others_are_refused(scene: Scene) -> None:
    """Control for the table above: the rightful callers do get through."""
    s = scene
    got = await s.stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=s.order.id), metadata=s.customer_a.md
    )
    assert got.order.tickets[0].code == s.order.tickets[0].code
    by_organizer = await s.stubs.booking.GetOrder(
        booking_pb2.GetOrderRequest(order_id=s.order.id), metadata=s.organizer_a.md
    )
    assert by_organizer.order.id == s.order.id
    assert all(t.code == "" for t in by_organizer.order.tickets)  # codes only for owner/staff
    own = await s.stubs.booking.ListOrders(
        booking_pb2.ListOrdersRequest(customer_email=s.customer_a.email), metadata=s.customer_a.md
    )
    assert [o.id for o in own.orders] == [s.order.id]
    mine = await s.stubs.booking.ListOrders(
        booking_pb2.ListOrdersRequest(), metadata=s.customer_b.md
    )
    assert mine.orders == []
