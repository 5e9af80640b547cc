"""Locking out a compromised account: ChangePassword, RevokeTokens, SetUserStatus, and token
revocation that takes effect on the next call, through the real server and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable

import grpc
import jwt
import pytest
from grpc import aio
from sqlalchemy import text

from tests.conftest import RunningServer
from tests.support import PASSWORD, Account, Stubs, error_details, token_claims, unique_email
from ticketing.stubs import bearer
from ticketing.v1 import auth_pb2, common_pb2

ME = auth_pb2.GetCurrentUserRequest()


async def refused(call: Awaitable[object]) -> tuple[str, str | None]:
    """(code name, reason) of an awaited call that must fail."""
    with pytest.raises(aio.AioRpcError) as err:
        await call
    details = error_details(err.value)
    return details.code.name, details.reason


async def generation(running: RunningServer, user_id: str) -> int:
    async with running.engine.connect() as conn:
        value = (
            await conn.execute(
                text("SELECT token_generation FROM users WHERE id = :id"), {"id": user_id}
            )
        ).scalar_one()
    return int(value)


async def second_session(stubs: Stubs, acct: Account, password: str | None = None) -> str:
    login = await stubs.auth.Login(
        auth_pb2.LoginRequest(email=acct.email, password=password or acct.password)
    )
    return login.access_token


async def test_change_password_revokes_every_earlier_token_and_returns_a_fresh_one(
    stubs: Stubs, running: RunningServer
) -> None:
    acct = await stubs.register("passwd")
    other_device = await second_session(stubs, acct)
    new_password = "a brand new passphrase"
    changed = await stubs.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(old_password=acct.password, new_password=new_password),
        metadata=acct.md,
    )
    assert changed.user.id == acct.user.id
    assert changed.expire_time.ToDatetime(dt.UTC) > dt.datetime.now(dt.UTC)
    # The token used for the call and the other device's: refused on the very next call.
    for token in (acct.token, other_device):
        assert await refused(stubs.auth.GetCurrentUser(ME, metadata=bearer(token))) == (
            "UNAUTHENTICATED",
            "INVALID_TOKEN",
        )
    me = await stubs.auth.GetCurrentUser(ME, metadata=bearer(changed.access_token))
    assert me.user.id == acct.user.id
    # The old password no longer signs in; the new one does.
    assert await refused(
        stubs.auth.Login(auth_pb2.LoginRequest(email=acct.email, password=acct.password))
    ) == ("UNAUTHENTICATED", "BAD_CREDENTIALS")
    assert await second_session(stubs, acct, new_password)
    async with running.engine.connect() as conn:
        stored = (
            await conn.execute(
                text("SELECT password_hash FROM users WHERE id = :id"), {"id": acct.user.id}
            )
        ).scalar_one()
    assert stored.startswith("$2") and new_password not in stored


async def test_change_password_with_a_wrong_old_password_changes_nothing(
    stubs: Stubs, running: RunningServer
) -> None:
    acct = await stubs.register("passwd-wrong")
    before = await generation(running, acct.user.id)
    assert await refused(
        stubs.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(
                old_password="not my password", new_password="whatever-new-1"
            ),
            metadata=acct.md,
        )
    ) == ("PERMISSION_DENIED", "BAD_CREDENTIALS")
    assert await generation(running, acct.user.id) == before
    # Still signed in, still the old password.
    assert (await stubs.auth.GetCurrentUser(ME, metadata=acct.md)).user.id == acct.user.id
    assert await second_session(stubs, acct)


@pytest.mark.parametrize(
    ("old", "new", "fields"),
    [
        ("", "long enough new", ["old_password"]),
        (PASSWORD, "short", ["new_password"]),
        (PASSWORD, "x" * 73, ["new_password"]),
        ("", "", ["old_password", "new_password"]),
        ("y" * 73, "long enough new", ["old_password"]),
    ],
)
async def test_change_password_validation(
    stubs: Stubs, old: str, new: str, fields: list[str]
) -> None:
    acct = await stubs.register("passwd-bad")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.ChangePassword(
            auth_pb2.ChangePasswordRequest(old_password=old, new_password=new), metadata=acct.md
        )
    details = error_details(err.value)
    assert details.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in details.field_violations] == fields


async def test_two_concurrent_password_changes_exactly_one_wins(
    stubs: Stubs, running: RunningServer
) -> None:
    acct = await stubs.register("passwd-race")
    before = await generation(running, acct.user.id)
    candidates = ["first new password", "second new password"]
    results = await asyncio.gather(
        *(
            stubs.auth.ChangePassword(
                auth_pb2.ChangePasswordRequest(old_password=acct.password, new_password=p),
                metadata=acct.md,
            )
            for p in candidates
        ),
        return_exceptions=True,
    )
    wins = [i for i, r in enumerate(results) if isinstance(r, auth_pb2.ChangePasswordResponse)]
    assert len(wins) == 1, results
    loser = results[1 - wins[0]]
    assert isinstance(loser, aio.AioRpcError)
    assert (loser.code().name, error_details(loser).reason) in {
        ("ABORTED", "CONCURRENCY_CONFLICT"),  # both checked the old password; one CAS lost
        ("UNAUTHENTICATED", "INVALID_TOKEN"),  # the winner had revoked its token already
        ("PERMISSION_DENIED", "BAD_CREDENTIALS"),  # it read the winner's new hash
    }
    assert await generation(running, acct.user.id) == before + 1
    assert await second_session(stubs, acct, candidates[wins[0]])
    assert await refused(
        stubs.auth.Login(auth_pb2.LoginRequest(email=acct.email, password=candidates[1 - wins[0]]))
    ) == ("UNAUTHENTICATED", "BAD_CREDENTIALS")


async def test_revoke_tokens_signs_a_user_out_everywhere_on_the_next_call(
    stubs: Stubs, admin: Account
) -> None:
    acct = await stubs.register("revoke-self")
    laptop = await second_session(stubs, acct)
    resp = await stubs.auth.RevokeTokens(
        auth_pb2.RevokeTokensRequest(user_id=acct.user.id), metadata=acct.md
    )
    assert resp.user.id == acct.user.id
    assert resp.user.status == common_pb2.USER_STATUS_ACTIVE
    for token in (acct.token, laptop):
        assert await refused(stubs.auth.GetCurrentUser(ME, metadata=bearer(token))) == (
            "UNAUTHENTICATED",
            "INVALID_TOKEN",
        )
    # The password is unchanged: signing in again gives a working token.
    fresh = await second_session(stubs, acct)
    assert (await stubs.auth.GetCurrentUser(ME, metadata=bearer(fresh))).user.id == acct.user.id
    # An admin revokes someone else's tokens.
    victim = await stubs.register("revoke-by-admin")
    await stubs.auth.RevokeTokens(
        auth_pb2.RevokeTokensRequest(user_id=victim.user.id), metadata=admin.md
    )
    assert await refused(stubs.auth.GetCurrentUser(ME, metadata=victim.md)) == (
        "UNAUTHENTICATED",
        "INVALID_TOKEN",
    )
    assert (await stubs.auth.GetCurrentUser(ME, metadata=admin.md)).user.id == admin.user.id


async def test_only_admins_revoke_someone_elses_tokens(stubs: Stubs, admin: Account) -> None:
    target = await stubs.register("revoke-target")
    for role in (
        common_pb2.ROLE_CUSTOMER,
        common_pb2.ROLE_SUPPORT,
        common_pb2.ROLE_ORGANIZER,
        common_pb2.ROLE_ENTRY_MANAGER,
    ):
        attacker = await stubs.account_with_roles(admin, role, tag="revoke-attacker")
        assert await refused(
            stubs.auth.RevokeTokens(
                auth_pb2.RevokeTokensRequest(user_id=target.user.id), metadata=attacker.md
            )
        ) == ("PERMISSION_DENIED", "NOT_ACCOUNT_OWNER")
    assert (await stubs.auth.GetCurrentUser(ME, metadata=target.md)).user.id == target.user.id
    assert await refused(
        stubs.auth.RevokeTokens(
            auth_pb2.RevokeTokensRequest(user_id=str(uuid.uuid4())), metadata=admin.md
        )
    ) == ("NOT_FOUND", "USER_NOT_FOUND")
    for bad in ("", "not-a-uuid"):
        assert await refused(
            stubs.auth.RevokeTokens(auth_pb2.RevokeTokensRequest(user_id=bad), metadata=admin.md)
        ) == ("INVALID_ARGUMENT", "INVALID_ARGUMENT")
    assert await refused(
        stubs.auth.RevokeTokens(auth_pb2.RevokeTokensRequest(user_id=target.user.id))
    ) == ("UNAUTHENTICATED", "UNAUTHENTICATED")


async def test_a_disabled_user_is_refused_at_once_and_cannot_sign_in(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    acct = await stubs.register("disable-me")
    resp = await stubs.auth.SetUserStatus(
        auth_pb2.SetUserStatusRequest(user_id=acct.user.id, status=common_pb2.USER_STATUS_DISABLED),
        metadata=admin.md,
    )
    assert resp.user.status == common_pb2.USER_STATUS_DISABLED
    assert await refused(stubs.auth.GetCurrentUser(ME, metadata=acct.md)) == (
        "UNAUTHENTICATED",
        "ACCOUNT_DISABLED",
    )
    # Signing in answers exactly like a wrong password (no oracle for the password).
    answers = []
    for email, password in [
        (acct.email, acct.password),
        (acct.email, "wrong-password"),
        (unique_email("nobody"), PASSWORD),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        d = error_details(err.value)
        answers.append((d.code, d.reason, d.message))
    assert answers[0] == answers[1] == answers[2]
    listed = await stubs.auth.ListUsers(
        auth_pb2.ListUsersRequest(email_prefix=acct.email), metadata=admin.md
    )
    assert [u.status for u in listed.users] == [common_pb2.USER_STATUS_DISABLED]
    # Enabled again: signs in, but tokens from before the lock-out stay revoked.
    resp = await stubs.auth.SetUserStatus(
        auth_pb2.SetUserStatusRequest(user_id=acct.user.id, status=common_pb2.USER_STATUS_ACTIVE),
        metadata=admin.md,
    )
    assert resp.user.status == common_pb2.USER_STATUS_ACTIVE
    assert await refused(stubs.auth.GetCurrentUser(ME, metadata=acct.md)) == (
        "UNAUTHENTICATED",
        "INVALID_TOKEN",
    )
    fresh = await second_session(stubs, acct)
    me = await stubs.auth.GetCurrentUser(ME, metadata=bearer(fresh))
    assert me.user.status == common_pb2.USER_STATUS_ACTIVE
    async with running.engine.connect() as conn:
        status = (
            await conn.execute(
                text("SELECT status FROM users WHERE id = :id"), {"id": acct.user.id}
            )
        ).scalar_one()
    assert status == "ACTIVE"


async def test_set_user_status_validation_and_access(stubs: Stubs, admin: Account) -> None:
    target = await stubs.register("status-target")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="status-sup")
    disable = auth_pb2.SetUserStatusRequest(
        user_id=target.user.id, status=common_pb2.USER_STATUS_DISABLED
    )
    assert await refused(stubs.auth.SetUserStatus(disable, metadata=support.md)) == (
        "PERMISSION_DENIED",
        "ROLE_NOT_ALLOWED",
    )
    assert await refused(stubs.auth.SetUserStatus(disable, metadata=target.md)) == (
        "PERMISSION_DENIED",
        "ROLE_NOT_ALLOWED",
    )
    for status in (common_pb2.USER_STATUS_UNSPECIFIED, common_pb2.UserStatus.ValueType(99)):
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.SetUserStatus(
                auth_pb2.SetUserStatusRequest(user_id=target.user.id, status=status),
                metadata=admin.md,
            )
        details = error_details(err.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in details.field_violations] == ["status"]
    assert await refused(
        stubs.auth.SetUserStatus(
            auth_pb2.SetUserStatusRequest(
                user_id=str(uuid.uuid4()), status=common_pb2.USER_STATUS_DISABLED
            ),
            metadata=admin.md,
        )
    ) == ("NOT_FOUND", "USER_NOT_FOUND")
    assert (await stubs.auth.GetCurrentUser(ME, metadata=target.md)).user.id == target.user.id


@pytest.fixture
async def two_admins_only(
    stubs: Stubs, admin: Account, running: RunningServer
) -> AsyncIterator[tuple[Account, Account]]:
    """Two fresh admins as the only active admins; everything restored after.

    The session's bootstrap admin is demoted for the test, never disabled: disabling moves
    an account's token generation on, which would revoke the token every later test uses.
    """
    first = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="admin-a")
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="admin-b")
    keep = [uuid.UUID(first.user.id), uuid.UUID(other.user.id)]
    async with running.engine.begin() as conn:
        saved = (
            await conn.execute(
                text(
                    "SELECT id, roles, status FROM users "
                    "WHERE 'ADMIN' = ANY(roles) AND id <> ALL(:keep)"
                ),
                {"keep": keep},
            )
        ).all()
        await conn.execute(
            text("UPDATE users SET roles = ARRAY['CUSTOMER'] WHERE id = ANY(:ids)"),
            {"ids": [r.id for r in saved]},
        )
    try:
        yield first, other
    finally:
        async with running.engine.begin() as conn:
            for row in saved:
                await conn.execute(
                    text("UPDATE users SET roles = :roles, status = :status WHERE id = :id"),
                    {"roles": list(row.roles), "status": row.status, "id": row.id},
                )


async def _active_admins(running: RunningServer) -> int:
    async with running.engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM users "
                        "WHERE 'ADMIN' = ANY(roles) AND status = 'ACTIVE'"
                    )
                )
            ).scalar_one()
        )


async def test_two_admins_disabling_each_other_at_once_leave_one_active(
    stubs: Stubs, running: RunningServer, two_admins_only: tuple[Account, Account]
) -> None:
    a, b = two_admins_only
    results = await asyncio.gather(
        *(
            stubs.auth.SetUserStatus(
                auth_pb2.SetUserStatusRequest(
                    user_id=target.user.id, status=common_pb2.USER_STATUS_DISABLED
                ),
                metadata=actor.md,
            )
            for actor, target in ((a, b), (b, a))
        ),
        return_exceptions=True,
    )
    refusals = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(refusals) == 1, results
    # Refused by LAST_ADMIN, or because its caller had just been disabled.
    assert error_details(refusals[0]).reason in ("LAST_ADMIN", "ACCOUNT_DISABLED")
    assert await _active_admins(running) == 1


async def test_a_disabled_admin_does_not_count_as_the_remaining_admin(
    stubs: Stubs, running: RunningServer, two_admins_only: tuple[Account, Account]
) -> None:
    a, b = two_admins_only
    await stubs.auth.SetUserStatus(
        auth_pb2.SetUserStatusRequest(user_id=b.user.id, status=common_pb2.USER_STATUS_DISABLED),
        metadata=a.md,
    )
    # a is now the last active admin: neither demoting nor disabling a may succeed.
    assert await refused(
        stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=a.user.id, roles=[common_pb2.ROLE_CUSTOMER]),
            metadata=a.md,
        )
    ) == ("FAILED_PRECONDITION", "LAST_ADMIN")
    assert await refused(
        stubs.auth.SetUserStatus(
            auth_pb2.SetUserStatusRequest(
                user_id=a.user.id, status=common_pb2.USER_STATUS_DISABLED
            ),
            metadata=a.md,
        )
    ) == ("FAILED_PRECONDITION", "LAST_ADMIN")
    # The disabled admin cannot act at all.
    assert await refused(
        stubs.auth.SetUserStatus(
            auth_pb2.SetUserStatusRequest(user_id=b.user.id, status=common_pb2.USER_STATUS_ACTIVE),
            metadata=b.md,
        )
    ) == ("UNAUTHENTICATED", "ACCOUNT_DISABLED")
    assert await _active_admins(running) == 1


def _token(running: RunningServer, user_id: str, **claims: object) -> str:
    settings = running.components.settings
    body = token_claims(settings, user_id, **claims)
    assert settings.jwt_secret is not None
    return jwt.encode(body, settings.jwt_secret, algorithm="HS256")


async def test_tokens_from_before_generations_work_until_the_first_revocation(
    stubs: Stubs, running: RunningServer
) -> None:
    acct = await stubs.register("legacy-token")
    legacy = _token(running, acct.user.id)  # no `gen` claim: made by the previous release
    assert (await stubs.auth.GetCurrentUser(ME, metadata=bearer(legacy))).user.id == acct.user.id
    # Validly signed but with a generation the user never had (or a junk one): refused.
    for claims in ({"gen": 5}, {"gen": "0"}, {"gen": True}, {"gen": -1}):
        token = _token(running, acct.user.id, **claims)
        assert await refused(stubs.auth.GetCurrentUser(ME, metadata=bearer(token))) == (
            "UNAUTHENTICATED",
            "INVALID_TOKEN",
        ), claims
    await stubs.auth.RevokeTokens(
        auth_pb2.RevokeTokensRequest(user_id=acct.user.id), metadata=acct.md
    )
    assert await refused(stubs.auth.GetCurrentUser(ME, metadata=bearer(legacy))) == (
        "UNAUTHENTICATED",
        "INVALID_TOKEN",
    )
