"""Partner resellers (issue 13): partners, API keys, and the partner principal.

Everything goes through a real server and PostgreSQL: keys are shown once and stored only as
a keyed hash (read back from the table), a revoked key or a suspended partner is refused on
its very next call, and a partner manages its own keys but never sees another's.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import asyncpg
import grpc
import pytest
from grpc import aio

from tests.conftest import RunningServer, second_server
from tests.support import (
    Account,
    StreamReader,
    Stubs,
    all_pages,
    error_details,
    retry_delay,
    unique_email,
)
from ticketd.app import API_KEY_HMAC_PURPOSE
from ticketd.auth.credentials import SecretHasher, derive_key
from ticketd.db.database import PoolOptions
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import auth_pb2, booking_pb2, common_pb2, event_pb2, partner_pb2

S = grpc.StatusCode


async def new_partner(
    stubs: Stubs, admin: Account, name: str = "Acme Tickets"
) -> partner_pb2.Partner:
    created = await stubs.partners.CreatePartner(
        partner_pb2.CreatePartnerRequest(display_name=name, contact_email=unique_email("ops")),
        metadata=admin.md,
    )
    return created.partner


async def new_key(
    stubs: Stubs, md: CallMetadata, partner_id: str = "", name: str = "production"
) -> partner_pb2.CreateApiKeyResponse:
    return await stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(partner_id=partner_id, display_name=name), metadata=md
    )


async def refusal(call: object) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = error_details(err.value)
    return details.code, details.reason


async def whoami(stubs: Stubs, secret: str) -> partner_pb2.Partner:
    got = await stubs.partners.GetPartner(partner_pb2.GetPartnerRequest(), metadata=api_key(secret))
    return got.partner


async def test_key_is_shown_once_and_stored_only_as_a_keyed_hash(
    stubs: Stubs, admin: Account, raw: asyncpg.Connection, running: RunningServer
) -> None:
    partner = await new_partner(stubs, admin)
    assert partner.status == partner_pb2.PARTNER_STATUS_ACTIVE
    created = await new_key(stubs, admin.md, partner.id)
    secret = created.secret
    # Recognisable prefix, then 256 random bits (43 URL-safe base64 characters).
    assert secret.startswith("tkp_") and len(secret) == 4 + 43
    assert created.api_key.partner_id == partner.id
    assert not created.api_key.HasField("last_used_time")

    row = await raw.fetchrow(
        "SELECT * FROM partner_api_keys WHERE id = $1", uuid.UUID(created.api_key.key_id)
    )
    assert row is not None
    stored = bytes(row["secret_hash"])
    # Not the secret, not a bare (unkeyed) hash of it: the HMAC under the server's key.
    assert secret.encode() not in stored and len(stored) == 32
    assert stored != hashlib.sha256(secret.encode()).digest()
    keys_secret = running.components.settings.jwt_secret or ""
    hasher = SecretHasher(derive_key(keys_secret, API_KEY_HMAC_PURPOSE))
    assert stored == hasher.digest(secret)
    assert all(secret not in str(value) for value in row.values())

    # Never shown again: listing gives metadata only (ApiKey has no secret field at all).
    listed = await stubs.partners.ListApiKeys(
        partner_pb2.ListApiKeysRequest(partner_id=partner.id), metadata=admin.md
    )
    assert [k.key_id for k in listed.api_keys] == [created.api_key.key_id]
    assert "secret" not in partner_pb2.ApiKey.DESCRIPTOR.fields_by_name

    # The key authenticates as its partner, and the call is recorded as its last use.
    assert (await whoami(stubs, secret)).id == partner.id
    listed = await stubs.partners.ListApiKeys(
        partner_pb2.ListApiKeysRequest(partner_id=partner.id), metadata=admin.md
    )
    assert listed.api_keys[0].HasField("last_used_time")
    assert (
        listed.api_keys[0].last_used_time.ToDatetime() >= created.api_key.create_time.ToDatetime()
    )


async def test_revoked_key_is_refused_on_its_next_call(stubs: Stubs, admin: Account) -> None:
    partner = await new_partner(stubs, admin)
    first = await new_key(stubs, admin.md, partner.id, "old")
    # Rotation by the partner itself: a new key made with the old one, then the old revoked.
    second = await new_key(stubs, api_key(first.secret), name="new")
    assert second.api_key.partner_id == partner.id
    revoked = await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=first.api_key.key_id),
        metadata=api_key(second.secret),
    )
    assert revoked.api_key.HasField("revoke_time")
    assert await refusal(whoami(stubs, first.secret)) == (S.UNAUTHENTICATED, "API_KEY_REVOKED")
    assert (await whoami(stubs, second.secret)).id == partner.id
    # Revoking again changes nothing: the first revoke_time stays.
    again = await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=first.api_key.key_id), metadata=admin.md
    )
    assert again.api_key.revoke_time == revoked.api_key.revoke_time
    # A key may revoke itself; its own next call is then refused.
    await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=second.api_key.key_id),
        metadata=api_key(second.secret),
    )
    assert await refusal(whoami(stubs, second.secret)) == (S.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_suspended_partner_is_refused_at_once_and_back_when_active(
    stubs: Stubs, admin: Account
) -> None:
    partner = await new_partner(stubs, admin)
    key = await new_key(stubs, admin.md, partner.id)
    assert (await whoami(stubs, key.secret)).id == partner.id

    async def set_status(status: partner_pb2.PartnerStatus.ValueType) -> partner_pb2.Partner:
        resp = await stubs.partners.SetPartnerStatus(
            partner_pb2.SetPartnerStatusRequest(partner_id=partner.id, status=status),
            metadata=admin.md,
        )
        return resp.partner

    assert (await set_status(partner_pb2.PARTNER_STATUS_SUSPENDED)).status == (
        partner_pb2.PARTNER_STATUS_SUSPENDED
    )
    expected = (S.UNAUTHENTICATED, "PARTNER_SUSPENDED")
    assert await refusal(whoami(stubs, key.secret)) == expected
    assert await refusal(new_key(stubs, api_key(key.secret))) == expected
    # Idempotent, and reversible: the unrevoked key works again.
    await set_status(partner_pb2.PARTNER_STATUS_SUSPENDED)
    await set_status(partner_pb2.PARTNER_STATUS_ACTIVE)
    assert (await whoami(stubs, key.secret)).id == partner.id
    # A revoked key stays revoked whatever the partner's status (revoked wins).
    await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=key.api_key.key_id), metadata=admin.md
    )
    await set_status(partner_pb2.PARTNER_STATUS_SUSPENDED)
    assert await refusal(whoami(stubs, key.secret)) == (S.UNAUTHENTICATED, "API_KEY_REVOKED")
    bad_status = stubs.partners.SetPartnerStatus(
        partner_pb2.SetPartnerStatusRequest(
            partner_id=partner.id, status=partner_pb2.PARTNER_STATUS_UNSPECIFIED
        ),
        metadata=admin.md,
    )
    assert (await refusal(bad_status))[0] == S.INVALID_ARGUMENT


async def test_a_partner_never_reaches_another_partners_objects(
    stubs: Stubs, admin: Account
) -> None:
    mine, theirs = (
        await new_partner(stubs, admin, "Mine"),
        await new_partner(stubs, admin, "Theirs"),
    )
    my_key = await new_key(stubs, admin.md, mine.id)
    their_key = await new_key(stubs, admin.md, theirs.id)
    md = api_key(my_key.secret)
    not_found = (S.NOT_FOUND, "PARTNER_NOT_FOUND")
    assert (
        await refusal(
            stubs.partners.GetPartner(
                partner_pb2.GetPartnerRequest(partner_id=theirs.id), metadata=md
            )
        )
        == not_found
    )
    assert await refusal(new_key(stubs, md, theirs.id)) == not_found
    assert (
        await refusal(
            stubs.partners.ListApiKeys(
                partner_pb2.ListApiKeysRequest(partner_id=theirs.id), metadata=md
            )
        )
        == not_found
    )
    # Someone else's key id is answered exactly like an unknown one.
    for key_id in (their_key.api_key.key_id, str(uuid.uuid4())):
        revoke = stubs.partners.RevokeApiKey(
            partner_pb2.RevokeApiKeyRequest(key_id=key_id), metadata=md
        )
        assert await refusal(revoke) == (S.NOT_FOUND, "API_KEY_NOT_FOUND")
    assert (await whoami(stubs, their_key.secret)).id == theirs.id
    # Its own objects, by id or by the empty "myself".
    own = await stubs.partners.GetPartner(
        partner_pb2.GetPartnerRequest(partner_id=mine.id), metadata=md
    )
    assert own.partner.id == mine.id
    listed = await stubs.partners.ListApiKeys(partner_pb2.ListApiKeysRequest(), metadata=md)
    assert [k.key_id for k in listed.api_keys] == [my_key.api_key.key_id]
    # An ADMIN must name the partner: there is no "myself" for a user.
    assert (
        await refusal(
            stubs.partners.ListApiKeys(partner_pb2.ListApiKeysRequest(), metadata=admin.md)
        )
    )[0] == S.INVALID_ARGUMENT


async def test_partner_keys_reach_only_what_the_policy_names(stubs: Stubs, admin: Account) -> None:
    partner = await new_partner(stubs, admin)
    md = api_key((await new_key(stubs, admin.md, partner.id)).secret)
    denied = (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    assert (
        await refusal(stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=md))
        == denied
    )
    assert (
        await refusal(
            stubs.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(
                    display_name="Sock puppet", contact_email=unique_email("x")
                ),
                metadata=md,
            )
        )
        == denied
    )
    assert (
        await refusal(stubs.partners.ListPartners(partner_pb2.ListPartnersRequest(), metadata=md))
        == denied
    )
    # Public reads ignore the credential, as for every caller.
    await stubs.events.ListEvents(event_pb2.ListEventsRequest(page_size=1), metadata=md)
    # No account may hold ROLE_PARTNER: it is a key's role, never a user's.
    user = await stubs.register("would-be-partner")
    set_roles = stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(user_id=user.user.id, roles=[common_pb2.ROLE_PARTNER]),
        metadata=admin.md,
    )
    assert (await refusal(set_roles))[0] == S.INVALID_ARGUMENT


@pytest.mark.parametrize(
    "header",
    [
        "ApiKey tkp_" + "A" * 43,  # well-formed, unknown
        "ApiKey not-a-key",
        "apikey tkp_",
        "ApiKey tkd_" + "A" * 43,  # a device credential's prefix under the wrong scheme
    ],
)
async def test_unknown_or_malformed_keys_are_unauthenticated(stubs: Stubs, header: str) -> None:
    call = stubs.partners.GetPartner(
        partner_pb2.GetPartnerRequest(), metadata=(("authorization", header),)
    )
    assert (await refusal(call))[0] == S.UNAUTHENTICATED


async def test_partner_input_is_validated_and_listing_pages(stubs: Stubs, admin: Account) -> None:
    for name, email, field in [
        ("", "ops@example.test", "display_name"),
        ("x" * 101, "ops@example.test", "display_name"),
        ("Fine", "not an email", "contact_email"),
        ("Fine", "a@b", "contact_email"),
    ]:
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.partners.CreatePartner(
                partner_pb2.CreatePartnerRequest(display_name=name, contact_email=email),
                metadata=admin.md,
            )
        details = error_details(err.value)
        assert details.code == S.INVALID_ARGUMENT
        assert [f for f, _ in details.field_violations] == [field]
    created = await stubs.partners.CreatePartner(
        partner_pb2.CreatePartnerRequest(
            display_name="  Spaced  ", contact_email="OPS@Example.TEST"
        ),
        metadata=admin.md,
    )
    assert (created.partner.display_name, created.partner.contact_email) == (
        "Spaced",
        "ops@example.test",
    )
    made = {(await new_partner(stubs, admin, f"Pager {i}")).id for i in range(3)} | {
        created.partner.id
    }
    pages = await all_pages(
        stubs.partners.ListPartners, partner_pb2.ListPartnersRequest(page_size=2), admin.md
    )
    assert all(len(page.partners) <= 2 for page in pages) and len(pages) >= 2
    seen = [p.id for page in pages for p in page.partners]
    assert len(seen) == len(set(seen)) and made <= set(seen)


async def test_a_flooding_partner_is_refused_and_another_still_served(
    running: RunningServer, stubs: Stubs, admin: Account, raw: asyncpg.Connection
) -> None:
    """Per-partner admission: the flooder gets RESOURCE_EXHAUSTED PARTNER_BUDGET_EXCEEDED
    with a RetryInfo (never INTERNAL); another partner and the public are still served; a
    partner's own rate column overrides the default."""
    flooder, calm, big = [await new_partner(stubs, admin, n) for n in ("Flood", "Calm", "Big")]
    keys = {p.id: (await new_key(stubs, admin.md, p.id)).secret for p in (flooder, calm, big)}
    await raw.execute("UPDATE partners SET rate_per_second = 1000 WHERE id = $1", uuid.UUID(big.id))
    # A rate of one call a second with a burst of 5: deterministic on any machine, since
    # the flood below is sent at once (refills add at most a call or two).
    async with (
        second_server(
            running, PoolOptions(pool_size=5), partner_rate=1.0, partner_burst=5
        ) as server,
        aio.insecure_channel(server.target) as channel,
    ):
        other = Stubs(channel)

        async def call(secret: str) -> grpc.StatusCode | aio.AioRpcError:
            try:
                await whoami(other, secret)
            except aio.AioRpcError as err:
                return err
            return S.OK

        flood = await asyncio.gather(*(call(keys[flooder.id]) for _ in range(40)))
        refused = [r for r in flood if isinstance(r, aio.AioRpcError)]
        assert 0 < len(refused) < 40
        for err in refused:
            details = error_details(err)
            assert (details.code, details.reason) == (
                S.RESOURCE_EXHAUSTED,
                "PARTNER_BUDGET_EXCEEDED",
            )
            assert details.metadata["partner_id"] == flooder.id
            delay = retry_delay(err)
            assert delay is not None and delay > 0
        # The flooder's budget is its own: the calm partner and the public get through.
        assert [await call(keys[calm.id]) for _ in range(3)] == [S.OK] * 3
        await other.events.ListEvents(event_pb2.ListEventsRequest(page_size=1))
        # Its own column: 1,000 calls a second (burst scaled to 5,000) is never refused here.
        assert await asyncio.gather(*(call(keys[big.id]) for _ in range(40))) == [S.OK] * 40


async def test_held_refusals_keep_no_place_and_never_outlive_the_deadline(
    running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    """An over-budget partner's refusals are held before they are sent (so a client that
    ignores RetryInfo cannot make the server refuse as fast as it can ask), but a held
    refusal keeps no admission place: with the whole server's budget at 3 calls and 30 of
    the flooder's refusals held, a customer and another partner are still served. A
    refusal is still RESOURCE_EXHAUSTED, even when the caller's deadline is shorter than
    the hold."""
    flooder, calm = [await new_partner(stubs, admin, n) for n in ("Held", "Served")]
    keys = {p.id: (await new_key(stubs, admin.md, p.id)).secret for p in (flooder, calm)}
    customer = await stubs.register("held")
    async with (
        second_server(
            running,
            PoolOptions(pool_size=5),
            partner_rate=1.0,
            partner_burst=1,
            max_concurrent_rpcs=3,
            partner_refusal_hold_seconds=2.0,
        ) as server,
        aio.insecure_channel(server.target) as channel,
    ):
        other = Stubs(channel)
        # The first call spends the flooder's only token and makes its budget known.
        await whoami(other, keys[flooder.id])

        async def flood_call(timeout: float) -> tuple[grpc.StatusCode, str | None]:
            return await refusal(
                other.partners.GetPartner(
                    partner_pb2.GetPartnerRequest(),
                    metadata=api_key(keys[flooder.id]),
                    timeout=timeout,
                )
            )

        held = [asyncio.create_task(flood_call(10.0)) for _ in range(30)]
        for _ in range(100):
            if server.server.interceptor.held_refusals >= 30:
                break
            await asyncio.sleep(0.01)
        assert server.server.interceptor.held_refusals == 30
        # 30 refusals are held; the server's whole budget (3) is still free for others.
        assert (await whoami(other, keys[calm.id])).id == calm.id
        got = await other.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=customer.md
        )
        assert got.user.id == customer.user.id
        # A deadline shorter than the hold: still the refusal, answered before it.
        assert await flood_call(0.5) == (S.RESOURCE_EXHAUSTED, "PARTNER_BUDGET_EXCEEDED")
        results = await asyncio.gather(*held)
        assert set(results) == {(S.RESOURCE_EXHAUSTED, "PARTNER_BUDGET_EXCEEDED")}
        assert server.server.interceptor.held_refusals == 0


async def test_a_partners_streams_count_against_its_own_budget(
    running: RunningServer, stubs: Stubs, admin: Account
) -> None:
    """A partner may keep at most TICKETING_PARTNER_MAX_STREAMS streams open (per process):
    the next is RESOURCE_EXHAUSTED PARTNER_BUDGET_EXCEEDED (budget `streams`) with a
    RetryInfo, while another partner still opens its own; a closed stream gives its place
    back. Opening a stream also takes a token of the partner's rate, so a reconnect loop is
    held to the rate (budget `rate`)."""
    busy, other_partner, looping = [
        await new_partner(stubs, admin, n) for n in ("Streams", "Other", "Loop")
    ]
    keys = {
        p.id: (await new_key(stubs, admin.md, p.id)).secret for p in (busy, other_partner, looping)
    }
    async with (
        second_server(
            running,
            PoolOptions(pool_size=5),
            partner_max_streams=2,
            partner_rate=1.0,
            partner_burst=4,
            partner_refusal_hold_seconds=0.0,
        ) as server,
        aio.insecure_channel(server.target) as channel,
    ):
        other = Stubs(channel)

        def watch(secret: str) -> StreamReader[booking_pb2.OrderChange]:
            return StreamReader(
                other.booking.WatchOrders(
                    booking_pb2.WatchOrdersRequest(after_sequence=0), metadata=api_key(secret)
                )
            )

        async def caught_up(reader: StreamReader[booking_pb2.OrderChange]) -> None:
            await reader.wait_for(lambda: any(c.caught_up for c in reader.items))

        async def settled(reader: StreamReader[booking_pb2.OrderChange]) -> None:
            """Wait until the stream sent something or ended."""
            await reader.wait_for(lambda: reader.error is not None or bool(reader.items))

        async def refused(reader: StreamReader[booking_pb2.OrderChange]) -> aio.AioRpcError:
            await asyncio.wait_for(reader.task, 10)
            assert reader.error is not None and not reader.items
            return reader.error

        opened = [watch(keys[busy.id]) for _ in range(2)]
        readers = list(opened)
        try:
            for reader in opened:
                await caught_up(reader)
            third = watch(keys[busy.id])
            readers.append(third)
            err = await refused(third)
            details = error_details(err)
            assert (details.code, details.reason) == (
                S.RESOURCE_EXHAUSTED,
                "PARTNER_BUDGET_EXCEEDED",
            )
            assert details.metadata["budget"] == "streams"
            assert details.metadata["partner_id"] == busy.id
            assert (delay := retry_delay(err)) is not None and delay > 0
            # Another partner's budget is its own.
            theirs = watch(keys[other_partner.id])
            readers.append(theirs)
            await caught_up(theirs)
            # A closed stream gives its place back (once the server has seen the cancel).
            await opened[0].stop()
            for _ in range(50):
                again = watch(keys[busy.id])
                readers.append(again)
                await settled(again)
                if again.error is None:
                    break
                await asyncio.sleep(0.05)
            assert again.error is None

            # A reconnect loop: every opening takes a rate token (burst 4 at 1/s), so
            # opening and closing at once is refused on the rate long before 20 tries.
            reasons = []
            for _ in range(20):
                loop_reader = watch(keys[looping.id])
                readers.append(loop_reader)
                await settled(loop_reader)
                if loop_reader.error is not None:
                    reasons.append(error_details(loop_reader.error).metadata.get("budget"))
                    break
                await loop_reader.stop()
            assert reasons == ["rate"]
        finally:
            for reader in readers:
                await reader.stop()
