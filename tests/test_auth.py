"""AuthService end to end: real server, real PostgreSQL, generated stubs."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import grpc
import jwt
import pytest
from grpc import aio

from tests.conftest import ADMIN_EMAIL, RunningServer
from tests.support import PASSWORD, Account, Stubs, error_details, token_claims, unique_email
from ticketing.stubs import bearer
from ticketing.v1 import auth_pb2, common_pb2


async def test_register_login_whoami(stubs: Stubs) -> None:
    email = unique_email("Alice").replace("alice", "ALICE")
    reg = await stubs.auth.Register(
        auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="  Alice  ")
    )
    assert reg.user.email == email.lower()
    assert reg.user.display_name == "Alice"
    assert list(reg.user.roles) == [common_pb2.ROLE_CUSTOMER]
    assert uuid.UUID(reg.user.id)
    assert reg.user.create_time.seconds > 0

    login = await stubs.auth.Login(auth_pb2.LoginRequest(email=email.upper(), password=PASSWORD))
    assert login.user.id == reg.user.id
    assert login.expire_time.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)

    me = await stubs.auth.GetCurrentUser(
        auth_pb2.GetCurrentUserRequest(), metadata=bearer(login.access_token)
    )
    assert me.user == reg.user


async def test_duplicate_email_any_case_is_already_exists(stubs: Stubs) -> None:
    acct = await stubs.register("dup")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Register(
            auth_pb2.RegisterRequest(email=acct.email.upper(), password=PASSWORD, display_name="x")
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_details(err.value).reason == "EMAIL_TAKEN"


async def test_concurrent_registrations_of_one_email_exactly_one_wins(stubs: Stubs) -> None:
    email = unique_email("race")
    request = auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="Racer")
    results = await asyncio.gather(
        *(stubs.auth.Register(request) for _ in range(20)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, auth_pb2.RegisterResponse)]
    losses = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(wins) == 1
    assert len(losses) == 19
    assert {e.code() for e in losses} == {grpc.StatusCode.ALREADY_EXISTS}


@pytest.mark.parametrize(
    ("password", "why"),
    [("short", "at least 8"), ("x" * 73, "at most 72"), ("é" * 37, "at most 72"), ("", "at least")],
)
async def test_bad_passwords_are_invalid_argument(stubs: Stubs, password: str, why: str) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Register(
            auth_pb2.RegisterRequest(email=unique_email(), password=password, display_name="P")
        )
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == ["password"]
    assert why in details.field_violations[0][1]


async def test_every_bad_field_is_reported(stubs: Stubs) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Register(
            auth_pb2.RegisterRequest(email="not-an-email", password="x", display_name=" ")
        )
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(f for f, _ in details.field_violations) == ["display_name", "email", "password"]


async def test_wrong_password_and_unknown_email_answer_alike(stubs: Stubs) -> None:
    acct = await stubs.register("login")
    answers = []
    for email, password in [(acct.email, "wrong-password"), (unique_email("nobody"), PASSWORD)]:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        d = error_details(err.value)
        answers.append((d.code, d.message, d.reason))
    assert answers[0] == answers[1]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED


def _forge(running: RunningServer, user_id: str, **changes: object) -> str:
    settings = running.components.settings
    claims = token_claims(settings, user_id)
    key = str(changes.pop("key", settings.jwt_secret))
    alg = str(changes.pop("alg", "HS256"))
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    if alg == "none":
        # An unsigned token: pyjwt's stubs want a key even where the algorithm ignores it.
        return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]
    return jwt.encode(claims, key, algorithm=alg)


async def test_bad_tokens_are_unauthenticated(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    uid = admin.user.id
    now = dt.datetime.now(dt.UTC)
    good = _forge(running, uid)
    bad_tokens = {
        "expired": _forge(running, uid, exp=now - dt.timedelta(minutes=10)),
        "not yet valid": _forge(running, uid, nbf=now + dt.timedelta(minutes=10)),
        "wrong key": _forge(running, uid, key="another-secret-that-is-long-enough-000000"),
        "alg none": _forge(running, uid, alg="none"),
        "wrong audience": _forge(running, uid, aud="someone-else"),
        "wrong issuer": _forge(running, uid, iss="evil"),
        "no exp": _forge(running, uid, exp=None),
        "unknown user": _forge(running, str(uuid.uuid4())),
        "sub not uuid": _forge(running, "admin"),
        "tampered payload": good.split(".")[0] + ".eyJzdWIiOiJ4In0." + good.split(".")[2],
        "garbage": "not-a-jwt",
    }
    me = auth_pb2.GetCurrentUserRequest()
    assert (await stubs.auth.GetCurrentUser(me, metadata=bearer(good))).user.id == uid
    for name, token in bad_tokens.items():
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.GetCurrentUser(me, metadata=bearer(token))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert "Traceback" not in (err.value.details() or "")
    for header in ["", "Bearer", "Basic abc", "Bearer " + "x" * 5000, "bearer  "]:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.GetCurrentUser(me, metadata=(("authorization", header),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, header
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.GetCurrentUser(me)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_customer_cannot_set_roles(stubs: Stubs) -> None:
    customer = await stubs.register("cust")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=customer.user.id, roles=[common_pb2.ROLE_ADMIN]),
            metadata=customer.md,
        )
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.PERMISSION_DENIED
    assert details.reason == "ROLE_NOT_ALLOWED"
    me = await stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=customer.md)
    assert list(me.user.roles) == [common_pb2.ROLE_CUSTOMER]


async def test_register_never_takes_roles_from_the_caller(stubs: Stubs) -> None:
    # Unknown fields (e.g. a "roles" field a hostile client adds) are ignored by proto3.
    raw = auth_pb2.RegisterRequest(
        email=unique_email("sneaky"), password=PASSWORD, display_name="S"
    ).SerializeToString() + bytes([0x20, 0x01])  # field 4, varint 1 (ROLE_ADMIN)
    reg = await stubs.channel.unary_unary(
        "/ticketing.v1.AuthService/Register",
        request_serializer=lambda b: b,
        response_deserializer=auth_pb2.RegisterResponse.FromString,
    )(raw)
    assert list(reg.user.roles) == [common_pb2.ROLE_CUSTOMER]


async def test_admin_sets_roles_and_reduced_roles_apply_at_once(
    stubs: Stubs, admin: Account
) -> None:
    user = await stubs.register("staff")
    resp = await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            user_id=user.user.id,
            roles=[common_pb2.ROLE_SUPPORT, common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT],
        ),
        metadata=admin.md,
    )
    assert list(resp.user.roles) == [common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT]
    listed = await stubs.auth.ListUsers(
        auth_pb2.ListUsersRequest(email_prefix=user.email), metadata=user.md
    )
    assert [u.id for u in listed.users] == [user.user.id]
    # Same token, role taken away: refused on the very next call.
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(user_id=user.user.id, roles=[common_pb2.ROLE_CUSTOMER]),
        metadata=admin.md,
    )
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(), metadata=user.md)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize(
    ("user_id", "roles", "field"),
    [
        ("not-a-uuid", [common_pb2.ROLE_ADMIN], "user_id"),
        ("", [common_pb2.ROLE_ADMIN], "user_id"),
        (str(uuid.uuid4()), [], "roles"),
        (str(uuid.uuid4()), [common_pb2.ROLE_UNSPECIFIED], "roles[0]"),
        (str(uuid.uuid4()), [common_pb2.ROLE_ADMIN, common_pb2.Role.ValueType(99)], "roles[1]"),
    ],
)
async def test_set_roles_validation(
    stubs: Stubs, admin: Account, user_id: str, roles: list[common_pb2.Role.ValueType], field: str
) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=user_id, roles=roles),
            metadata=admin.md,
        )
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == [field]


async def test_set_roles_of_unknown_user_is_not_found(stubs: Stubs, admin: Account) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=str(uuid.uuid4()), roles=[common_pb2.ROLE_ADMIN]),
            metadata=admin.md,
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_users_pages_every_user_once(stubs: Stubs, admin: Account) -> None:
    prefix = f"page-{uuid.uuid4().hex[:8]}"
    made = await asyncio.gather(*(stubs.register(f"{prefix}-{i:02d}") for i in range(7)))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await stubs.auth.ListUsers(
            auth_pb2.ListUsersRequest(page_size=3, page_token=token, email_prefix=prefix.upper()),
            metadata=admin.md,
        )
        pages += 1
        seen += [u.email for u in resp.users]
        token = resp.next_page_token
        if not token:
            break
        # A new user sorting before the cursor must not shift later pages.
        if pages == 1:
            await stubs.register(f"{prefix}-00a")
    assert pages == 3
    assert sorted(a.email for a in made) == [e for e in seen if "-00a-" not in e]
    assert len(seen) == len(set(seen))


async def test_list_users_rejects_bad_paging(stubs: Stubs, admin: Account) -> None:
    first = await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(page_size=1), metadata=admin.md)
    assert first.next_page_token
    tampered = first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB")
    cases = [
        auth_pb2.ListUsersRequest(page_size=-1),
        auth_pb2.ListUsersRequest(page_token=tampered),
        auth_pb2.ListUsersRequest(page_token="garbage!!"),
        # A token from one filter replayed against another.
        auth_pb2.ListUsersRequest(page_token=first.next_page_token, email_prefix="x"),
    ]
    for request in cases:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.ListUsers(request, metadata=admin.md)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
    big = await stubs.auth.ListUsers(auth_pb2.ListUsersRequest(page_size=10_000), metadata=admin.md)
    assert len(big.users) <= 500


async def test_bootstrap_admin_exists_and_is_idempotent(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    from ticketd.app import ensure_bootstrap_admin

    assert admin.email == ADMIN_EMAIL
    assert common_pb2.ROLE_ADMIN in admin.user.roles
    await ensure_bootstrap_admin(running.components)  # a second start changes nothing
    resp = await stubs.auth.ListUsers(
        auth_pb2.ListUsersRequest(email_prefix=ADMIN_EMAIL), metadata=admin.md
    )
    assert [u.email for u in resp.users] == [ADMIN_EMAIL]
    assert resp.users[0].id == admin.user.id


async def test_the_last_admin_cannot_be_demoted_even_by_two_admins_at_once(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    from sqlalchemy import text

    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="admin2")
    engine = running.engine
    async with engine.begin() as conn:
        # Other tests' admins would make this pass trivially: only these two stay admins.
        saved = (
            await conn.execute(
                text("SELECT id, roles FROM users WHERE 'ADMIN' = ANY(roles) AND id <> ALL(:keep)"),
                {"keep": [uuid.UUID(admin.user.id), uuid.UUID(other.user.id)]},
            )
        ).all()
        await conn.execute(
            text("UPDATE users SET roles = ARRAY['CUSTOMER'] WHERE id = ANY(:ids)"),
            {"ids": [r.id for r in saved]},
        )
    try:
        demote = [
            stubs.auth.SetUserRoles(
                auth_pb2.SetUserRolesRequest(
                    user_id=target.user.id, roles=[common_pb2.ROLE_CUSTOMER]
                ),
                metadata=actor.md,
            )
            for actor, target in ((admin, other), (other, admin))
        ]
        results = await asyncio.gather(*demote, return_exceptions=True)
        refused = [r for r in results if isinstance(r, aio.AioRpcError)]
        # Exactly one demotion wins; the other is refused: by LAST_ADMIN, or because its
        # caller was just demoted (ROLE_NOT_ALLOWED). Either way one admin remains.
        assert len(refused) == 1
        assert error_details(refused[0]).reason in ("LAST_ADMIN", "ROLE_NOT_ALLOWED")
        async with engine.connect() as conn:
            left = (
                await conn.execute(text("SELECT count(*) FROM users WHERE 'ADMIN' = ANY(roles)"))
            ).scalar_one()
        assert left == 1
    finally:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE users SET roles = ARRAY['ADMIN'] WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(admin.user.id), uuid.UUID(other.user.id)]},
            )
            for row in saved:
                await conn.execute(
                    text("UPDATE users SET roles = :roles WHERE id = :id"),
                    {"roles": list(row.roles), "id": row.id},
                )
