"""The principal cache (issue 16): repeat credentials answered from memory, and every
revocation still effective on the very next call, with the cache warm, in the process that
made the change and in another server on the same database.

"Warm" is proven, not assumed: each test first calls until the server counts a cache hit
for the credential, then changes it, then expects the next call refused.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, second_server
from tests.support import Account, Stubs, error_details, small_layout, unique_email
from ticketd.auth.cache import PrincipalCache
from ticketd.auth.principal import Principal
from ticketd.db.database import PoolOptions
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import auth_pb2, common_pb2, partner_pb2, venue_pb2

S = grpc.StatusCode


def cache_of(server: RunningServer) -> PrincipalCache:
    return server.server.principals


async def warm(cache: PrincipalCache, call: object) -> None:
    """Call (a zero-argument coroutine factory) until the cache answers it from memory."""
    for _ in range(300):  # a new server starts listening in the background
        if cache.live:
            break
        await asyncio.sleep(0.01)
    assert cache.live, "the cache must be listening for these tests to mean anything"
    for _ in range(5):
        before = cache.hits
        await call()  # type: ignore[operator]
        if cache.hits > before:
            return
    raise AssertionError("the credential never came from the cache")


async def refused(call: object) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = error_details(err.value)
    return details.code, details.reason


async def partner_with_key(stubs: Stubs, admin: Account) -> tuple[str, str, str]:
    partner, secret = await stubs.create_partner(admin, "Cache Tickets")
    keys = await stubs.partners.ListApiKeys(
        partner_pb2.ListApiKeysRequest(partner_id=partner.id), metadata=admin.md
    )
    return partner.id, keys.api_keys[0].key_id, secret


def whoami_partner(stubs: Stubs, secret: str) -> object:
    return lambda: stubs.partners.GetPartner(
        partner_pb2.GetPartnerRequest(), metadata=api_key(secret)
    )


def whoami_user(stubs: Stubs, md: CallMetadata) -> object:
    return lambda: stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md)


async def test_repeat_calls_are_answered_from_memory(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    cache = cache_of(running)
    _, _, secret = await partner_with_key(stubs, admin)
    await warm(cache, whoami_partner(stubs, secret))
    hits = cache.hits
    for _ in range(10):
        await whoami_partner(stubs, secret)()  # type: ignore[operator]
    assert cache.hits >= hits + 10


async def test_revoked_key_is_refused_on_the_next_call_with_the_cache_warm(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    _, key_id, secret = await partner_with_key(stubs, admin)
    await warm(cache_of(running), whoami_partner(stubs, secret))
    await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin.md
    )
    got = await refused(whoami_partner(stubs, secret)())  # type: ignore[operator]
    assert got == (S.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_suspended_partner_is_refused_on_the_next_call_with_the_cache_warm(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    partner_id, _, secret = await partner_with_key(stubs, admin)
    await warm(cache_of(running), whoami_partner(stubs, secret))
    await stubs.partners.SetPartnerStatus(
        partner_pb2.SetPartnerStatusRequest(
            partner_id=partner_id, status=partner_pb2.PARTNER_STATUS_SUSPENDED
        ),
        metadata=admin.md,
    )
    got = await refused(whoami_partner(stubs, secret)())  # type: ignore[operator]
    assert got == (S.UNAUTHENTICATED, "PARTNER_SUSPENDED")


async def test_role_revoked_is_refused_on_the_next_call_with_the_cache_warm(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """An ADMIN demoted to CUSTOMER cannot CreateVenue on the very next call."""
    demoted = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="demoted")
    await warm(cache_of(running), whoami_user(stubs, demoted.md))
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(user_id=demoted.user.id, roles=[common_pb2.ROLE_CUSTOMER]),
        metadata=admin.md,
    )
    create = stubs.venues.CreateVenue(
        venue_pb2.CreateVenueRequest(venue=small_layout()),
        metadata=demoted.md,
    )
    assert await refused(create) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


async def test_password_change_ends_old_tokens_on_the_next_call_with_the_cache_warm(
    stubs: Stubs, running: RunningServer
) -> None:
    user = await stubs.register("pwchange")
    await warm(cache_of(running), whoami_user(stubs, user.md))
    await stubs.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            old_password=user.password, new_password="another-long-password-1"
        ),
        metadata=user.md,
    )
    got = await refused(whoami_user(stubs, user.md)())  # type: ignore[operator]
    assert got[0] == S.UNAUTHENTICATED


async def test_a_change_made_behind_the_servers_back_is_seen_on_the_next_call(
    stubs: Stubs, admin: Account, running: RunningServer, raw: asyncpg.Connection
) -> None:
    """No RPC of this process made the change (another tool wrote the row): only the
    trigger's NOTIFY can tell the cache."""
    cache = cache_of(running)
    _, key_id, secret = await partner_with_key(stubs, admin)
    await warm(cache, whoami_partner(stubs, secret))
    epoch = cache.epoch()
    await raw.execute(
        "UPDATE partner_api_keys SET revoke_time = clock_timestamp() WHERE id = $1",
        uuid.UUID(key_id),
    )
    # The notification is asynchronous here (no RPC waited for it): wait for it, bounded.
    for _ in range(200):
        if cache.epoch() != epoch:
            break
        await asyncio.sleep(0.01)
    assert cache.epoch() != epoch, "the trigger's NOTIFY never reached the cache"
    got = await refused(whoami_partner(stubs, secret)())  # type: ignore[operator]
    assert got == (S.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_revocation_on_one_server_is_seen_by_another_on_the_next_call(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Two servers on one database, each with a warm cache: a key revoked and a role
    removed through the first are refused by the second on its next call."""
    partner_id, key_id, secret = await partner_with_key(stubs, admin)
    demoted = await stubs.account_with_roles(admin, common_pb2.ROLE_ADMIN, tag="demoted2")
    async with (
        second_server(running, PoolOptions(pool_size=4)) as other,
        aio.insecure_channel(other.target) as ch,
    ):
        there = Stubs(ch)
        await warm(cache_of(other), whoami_partner(there, secret))
        await warm(cache_of(other), whoami_user(there, demoted.md))

        await stubs.partners.RevokeApiKey(
            partner_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin.md
        )
        got = await refused(whoami_partner(there, secret)())  # type: ignore[operator]
        assert got == (S.UNAUTHENTICATED, "API_KEY_REVOKED")

        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=demoted.user.id, roles=[common_pb2.ROLE_CUSTOMER]),
            metadata=admin.md,
        )
        create = there.venues.CreateVenue(
            venue_pb2.CreateVenueRequest(venue=small_layout()),
            metadata=demoted.md,
        )
        assert await refused(create) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
        assert partner_id


async def test_racing_revocations_and_calls_never_leave_a_revoked_key_working(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Calls of a key run concurrently with its revocation (a fill may race the change):
    once RevokeApiKey has answered, every later call is refused."""
    for _ in range(5):
        _, key_id, secret = await partner_with_key(stubs, admin)
        call = whoami_partner(stubs, secret)
        await warm(cache_of(running), call)

        async def hammer(call: object) -> None:
            for _ in range(20):
                try:
                    await call()  # type: ignore[operator]
                except aio.AioRpcError as err:
                    assert err.code() == S.UNAUTHENTICATED

        hammering = [asyncio.create_task(hammer(call)) for _ in range(4)]
        await stubs.partners.RevokeApiKey(
            partner_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin.md
        )
        got = [await refused(call()) for _ in range(3)]  # type: ignore[operator]
        await asyncio.gather(*hammering)
        got.append(await refused(call()))  # type: ignore[operator]
        assert set(got) == {(S.UNAUTHENTICATED, "API_KEY_REVOKED")}


async def test_without_a_listener_nothing_is_served_from_memory() -> None:
    """A cache that is not listening (database away) serves nothing and stores nothing."""
    cache = PrincipalCache("postgresql://127.0.0.1:1/none", ttl=60)
    key = cache.key("apikey", "tkp_x")
    principal = Principal(user_id=uuid.uuid4(), email=unique_email(), roles=frozenset())
    cache.put(key, principal, cache.epoch())
    assert cache.get(key) is None
    assert not cache.live
    await cache.close()


async def test_a_fill_that_raced_an_invalidation_is_dropped() -> None:
    cache = PrincipalCache(None, ttl=60)
    cache._live = True  # a unit test of the epoch rule only: no database here
    key = cache.key("apikey", "tkp_y")
    principal = Principal(user_id=uuid.uuid4(), email="", roles=frozenset())
    epoch = cache.epoch()
    cache.invalidate()  # a change committed while the lookup was in flight
    cache.put(key, principal, epoch)
    assert cache.get(key) is None
    cache.put(key, principal, cache.epoch())
    assert cache.get(key) == principal


async def test_concurrent_revocations_each_take_effect_and_the_cache_stays_on(
    stubs: Stubs, admin: Account, running: RunningServer
) -> None:
    """Eight RevokeApiKey calls at once (their barriers share one listening connection):
    every key is refused on its next call, and the cache is still listening afterwards."""
    cache = cache_of(running)
    made = [await partner_with_key(stubs, admin) for _ in range(8)]
    for _, _, secret in made:
        await warm(cache, whoami_partner(stubs, secret))
    await asyncio.gather(
        *(
            stubs.partners.RevokeApiKey(
                partner_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=admin.md
            )
            for _, key_id, _ in made
        )
    )
    for _, _, secret in made:
        got = await refused(whoami_partner(stubs, secret)())  # type: ignore[operator]
        assert got == (S.UNAUTHENTICATED, "API_KEY_REVOKED")
    assert cache.live
    _, _, fresh = await partner_with_key(stubs, admin)
    await warm(cache, whoami_partner(stubs, fresh))
