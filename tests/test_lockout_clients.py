"""The lock-out commands of ticketctl (passwd, users disable/enable/revoke-tokens) and the
rush harness's set-up under sign-in throttling, against real servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grpc import aio

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, RunningServer
from tests.support import Stubs, error_details
from tests.test_auth_flood import strict_server
from tests.test_cli import cli_for, ok
from ticketing.rush.provision import TokenCache, provision_accounts
from ticketing.rush.stubs import Stubs as RushStubs
from ticketing.stubs import bearer
from ticketing.v1 import auth_pb2

ME = auth_pb2.GetCurrentUserRequest()


async def test_ticketctl_passwd_changes_the_password_and_keeps_this_session(
    running: RunningServer, stubs: Stubs, tmp_path: Path
) -> None:
    acct = await stubs.register("cli-passwd")
    cli = cli_for(running.target, tmp_path / "config")
    ok(await cli("login", acct.email, "--password-stdin", stdin=acct.password + "\n"))
    new = "a new cli passphrase"
    out = ok(await cli("passwd", "--password-stdin", stdin=f"{acct.password}\n{new}\n"))
    assert "password changed" in out.out
    # The saved session holds the fresh token; the token from before is revoked.
    saved = json.loads((tmp_path / "config" / "session.json").read_text())
    me = await stubs.auth.GetCurrentUser(ME, metadata=bearer(saved["token"]))
    assert me.user.id == acct.user.id
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.GetCurrentUser(ME, metadata=acct.md)
    assert error_details(err.value).reason == "INVALID_TOKEN"
    ok(await cli("whoami"))
    relogin = await stubs.auth.Login(auth_pb2.LoginRequest(email=acct.email, password=new))
    assert relogin.user.id == acct.user.id
    wrong = await cli("passwd", "--password-stdin", stdin="not-it-at-all\nanother new one\n")
    assert wrong.code == 1 and "BAD_CREDENTIALS" in wrong.err


async def test_ticketctl_users_disable_enable_and_revoke(
    running: RunningServer, stubs: Stubs, tmp_path: Path
) -> None:
    acct = await stubs.register("cli-disable")
    admin_cli = cli_for(running.target, tmp_path / "admin")
    ok(await admin_cli("login", ADMIN_EMAIL, TICKETING_PASSWORD=ADMIN_PASSWORD))
    out = ok(await admin_cli("users", "disable", acct.user.id))
    assert "DISABLED" in out.out
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.GetCurrentUser(ME, metadata=acct.md)
    assert error_details(err.value).reason == "ACCOUNT_DISABLED"
    out = ok(await admin_cli("users", "enable", acct.user.id))
    assert "DISABLED" not in out.out
    user_cli = cli_for(running.target, tmp_path / "user")
    ok(await user_cli("login", acct.email, TICKETING_PASSWORD=acct.password))
    out = ok(await user_cli("users", "revoke-tokens", acct.user.id))
    assert "revoked" in out.out
    after = await user_cli("whoami")
    assert after.code == 1 and "INVALID_TOKEN" in after.err
    refused = await user_cli("users", "disable", acct.user.id)
    assert refused.code == 1 and "UNAUTHENTICATED" in refused.err


async def test_rush_set_up_waits_out_sign_in_throttling(
    running: RunningServer, tmp_path: Path
) -> None:
    """Buyers registered from one address at a strict server: the harness honours each
    TOO_MANY_ATTEMPTS / AUTH_BUSY RetryInfo instead of failing the run."""
    limits = dict(auth_peer_rate=20.0, auth_peer_burst=2, auth_concurrency=1, auth_queue=1)
    async with (
        strict_server(running, **limits) as served,
        aio.insecure_channel(served.flood_target) as ch,
    ):
        accounts = await provision_accounts(
            [RushStubs(ch)],
            TokenCache(tmp_path / "tokens.json"),
            served.flood_target,
            admin_email=ADMIN_EMAIL,
            admin_password=ADMIN_PASSWORD,
            buyers=12,
            buyer_prefix=f"throttled-{tmp_path.name[-8:]}",
            buyer_password="rush buyer password",
            gate_staff=0,
        )
    assert len({b.user_id for b in accounts.buyers}) == 12
    assert accounts.stats.registered == 12
