"""The audit log (issue 15): entries written in the transaction of each act, read back through
AuditService.ListAuditEntries with each role's scope, paged without gaps or repeats.

Everything goes through a real server and PostgreSQL; entries are read through the RPC (and,
for the rollback proofs, straight from the table)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from tests.conftest import RunningServer
from tests.support import Account, Stubs, best_request, error_details, small_layout
from tests.test_cli import Ticketctl as Cli
from tests.test_cli import admin_cli, cli_for, ok
from ticketd.audit.rules import MAX_DETAILS, clean_details
from ticketing.stubs import CallMetadata, api_key
from ticketing.v1 import (
    audit_pb2,
    auth_pb2,
    booking_pb2,
    common_pb2,
    event_pb2,
    gate_pb2,
    partner_pb2,
)

__all__ = ["admin_cli"]  # the fixture, shared

S = grpc.StatusCode
USER = audit_pb2.AUDIT_ACTOR_KIND_USER
PARTNER_KEY = audit_pb2.AUDIT_ACTOR_KIND_PARTNER_KEY
DEVICE = audit_pb2.AUDIT_ACTOR_KIND_DEVICE


async def entries(
    stubs: Stubs, md: CallMetadata, page_size: int = 500, **filters: object
) -> list[audit_pb2.AuditEntry]:
    """Every entry the caller may read with these filters (all pages), newest first."""
    request = audit_pb2.ListAuditEntriesRequest(page_size=page_size, **filters)  # type: ignore[arg-type]
    found: list[audit_pb2.AuditEntry] = []
    for _ in range(1_000):  # bounded: a broken token loop fails instead of spinning
        page = await stubs.audit.ListAuditEntries(request, metadata=md)
        found += page.entries
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token
    raise AssertionError("more than 1,000 pages")


async def refused(call: object) -> tuple[grpc.StatusCode, str | None]:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    details = error_details(err.value)
    return details.code, details.reason


def stamp(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


@dataclass
class Show:
    organizer: Account
    event: event_pb2.Event
    ga_section: str


async def new_show(stubs: Stubs, admin: Account, tag: str) -> Show:
    organizer = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag=tag)
    venue = await stubs.create_venue(admin, small_layout(name=f"Audit {tag}", ga=200))
    event = await stubs.create_event(organizer, venue)
    ga = next(s.id for s in venue.sections if s.name == "Standing")
    return Show(organizer, event, ga)


async def buy(stubs: Stubs, buyer: CallMetadata, show: Show, **extra: object) -> booking_pb2.Order:
    request = best_request(show.event.id, show.ga_section, 1)
    for name, value in extra.items():
        getattr(request, name).CopyFrom(value)
    return (await stubs.booking.BookSeats(request, metadata=buyer)).order


async def refund(stubs: Stubs, md: CallMetadata, order_id: str) -> None:
    await stubs.booking.RefundOrder(
        booking_pb2.RefundOrderRequest(
            order_id=order_id, request_id=str(uuid.uuid4()), reason="changed plans"
        ),
        metadata=md,
    )


async def test_refunds_name_who_refunded_customer_support_and_partner_key(
    stubs: Stubs, admin: Account
) -> None:
    show = await new_show(stubs, admin, "audit-refund")
    customer = await stubs.register("audit-cust")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="audit-sup")
    own = await buy(stubs, customer.md, show)
    helped = await buy(stubs, customer.md, show)
    await refund(stubs, customer.md, own.id)
    await refund(stubs, support.md, helped.id)
    # A retry of the same refund (same request_id) acts once and records once.
    retried = await buy(stubs, customer.md, show)
    request = booking_pb2.RefundOrderRequest(
        order_id=retried.id, request_id=str(uuid.uuid4()), reason="twice"
    )
    await stubs.booking.RefundOrder(request, metadata=customer.md)
    await stubs.booking.RefundOrder(request, metadata=customer.md)

    partner, secret = await stubs.create_partner(admin, "Audit Resale")
    sold = await buy(
        stubs,
        api_key(secret),
        show,
        on_behalf_of=booking_pb2.EndCustomer(external_customer_id="audit-1"),
    )
    await refund(stubs, api_key(secret), sold.id)
    keys = await stubs.partners.ListApiKeys(
        partner_pb2.ListApiKeysRequest(partner_id=partner.id), metadata=admin.md
    )

    def only(order_id: str, found: list[audit_pb2.AuditEntry]) -> audit_pb2.AuditEntry:
        assert len(found) == 1, found
        (entry,) = found
        assert (entry.action, entry.subject_kind, entry.subject_id) == (
            "order.refunded",
            "order",
            order_id,
        )
        assert entry.event_id == show.event.id
        return entry

    by_customer = only(own.id, await entries(stubs, admin.md, subject_id=own.id))
    assert (by_customer.actor.kind, by_customer.actor.id) == (USER, customer.user.id)
    assert by_customer.details["reason"] == "changed plans"
    by_support = only(helped.id, await entries(stubs, admin.md, subject_id=helped.id))
    assert (by_support.actor.kind, by_support.actor.id) == (USER, support.user.id)
    only(retried.id, await entries(stubs, admin.md, subject_id=retried.id))
    by_partner = only(sold.id, await entries(stubs, admin.md, subject_id=sold.id))
    assert (by_partner.actor.kind, by_partner.actor.id) == (PARTNER_KEY, partner.id)
    assert by_partner.actor.key_id == keys.api_keys[0].key_id
    # The actor filter finds a partner's acts by the partner or by the key.
    for actor_id in (partner.id, keys.api_keys[0].key_id):
        found = await entries(stubs, admin.md, actor_id=actor_id, action="order.refunded")
        assert [e.subject_id for e in found] == [sold.id]


async def test_cancel_records_one_entry_with_its_refunds(stubs: Stubs, admin: Account) -> None:
    show = await new_show(stubs, admin, "audit-cancel")
    customer = await stubs.register("audit-cancel-cust")
    for _ in range(3):
        await buy(stubs, customer.md, show)
    await stubs.events.CancelEvent(
        event_pb2.CancelEventRequest(event_id=show.event.id, reason="storm"),
        metadata=show.organizer.md,
    )
    found = await entries(stubs, admin.md, event_id=show.event.id, action="event.cancelled")
    assert len(found) == 1
    (entry,) = found
    assert (entry.actor.kind, entry.actor.id) == (USER, show.organizer.user.id)
    assert (entry.subject_kind, entry.subject_id) == ("event", show.event.id)
    assert entry.details["refunded_orders"] == "3"
    assert entry.details["reason"] == "storm"
    # The creation is on record too, oldest last.
    actions = [e.action for e in await entries(stubs, admin.md, event_id=show.event.id)]
    assert actions == ["event.cancelled", "event.created"]


async def test_role_changes_record_each_role_granted_and_revoked(
    stubs: Stubs, admin: Account
) -> None:
    user = await stubs.register("audit-roles")
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            user_id=user.user.id,
            roles=[common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT, common_pb2.ROLE_ORGANIZER],
        ),
        metadata=admin.md,
    )
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            user_id=user.user.id, roles=[common_pb2.ROLE_SUPPORT, common_pb2.ROLE_ORGANIZER]
        ),
        metadata=admin.md,
    )
    # Setting the roles it has changes nothing and records nothing.
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            user_id=user.user.id, roles=[common_pb2.ROLE_SUPPORT, common_pb2.ROLE_ORGANIZER]
        ),
        metadata=admin.md,
    )
    found = await entries(stubs, admin.md, subject_kind="user", subject_id=user.user.id)
    assert [(e.action, e.details["role"]) for e in reversed(found)] == [
        ("user.role_granted", "ORGANIZER"),
        ("user.role_granted", "SUPPORT"),
        ("user.role_revoked", "CUSTOMER"),
    ]
    assert {(e.actor.kind, e.actor.id) for e in found} == {(USER, admin.user.id)}
    assert all(e.event_id == "" for e in found)


async def test_concurrent_role_changes_replay_to_the_final_roles(
    stubs: Stubs, admin: Account
) -> None:
    """Each change is diffed against the roles it replaced under a row lock: replaying the
    entries in order from the first roles gives exactly the roles the user ends with."""
    user = await stubs.register("audit-race")
    choices = [common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT, common_pb2.ROLE_ORGANIZER]
    rng = random.Random(15)
    sets = [rng.sample(choices, rng.randint(1, 3)) for _ in range(12)]
    await asyncio.gather(
        *(
            stubs.auth.SetUserRoles(
                auth_pb2.SetUserRolesRequest(user_id=user.user.id, roles=roles),
                metadata=admin.md,
            )
            for roles in sets
        )
    )
    final = await stubs.auth.ListUsers(
        auth_pb2.ListUsersRequest(email_prefix=user.email, page_size=1), metadata=admin.md
    )
    roles = {"CUSTOMER"}
    for e in reversed(await entries(stubs, admin.md, subject_id=user.user.id)):
        if e.action == "user.role_granted":
            assert e.details["role"] not in roles
            roles.add(e.details["role"])
        else:
            assert e.action == "user.role_revoked" and e.details["role"] in roles
            roles.remove(e.details["role"])
    assert roles == {common_pb2.Role.Name(r).removeprefix("ROLE_") for r in final.users[0].roles}


async def test_password_change_token_revocation_and_status(stubs: Stubs, admin: Account) -> None:
    user = await stubs.register("audit-pw")
    changed = await stubs.auth.ChangePassword(
        auth_pb2.ChangePasswordRequest(old_password=user.password, new_password="a new long one"),
        metadata=user.md,
    )
    fresh = (("authorization", f"Bearer {changed.access_token}"),)
    await stubs.auth.RevokeTokens(
        auth_pb2.RevokeTokensRequest(user_id=user.user.id), metadata=fresh
    )
    await stubs.auth.SetUserStatus(
        auth_pb2.SetUserStatusRequest(user_id=user.user.id, status=common_pb2.USER_STATUS_DISABLED),
        metadata=admin.md,
    )
    found = list(reversed(await entries(stubs, admin.md, subject_id=user.user.id)))
    assert [(e.action, e.actor.id) for e in found] == [
        ("user.password_changed", user.user.id),
        ("user.tokens_revoked", user.user.id),
        ("user.disabled", admin.user.id),
    ]
    # A wrong old password changes nothing and records nothing.
    other = await stubs.register("audit-pw-wrong")
    assert (
        await refused(
            stubs.auth.ChangePassword(
                auth_pb2.ChangePasswordRequest(
                    old_password="not it at all", new_password="another long one"
                ),
                metadata=other.md,
            )
        )
    )[0] == S.PERMISSION_DENIED
    assert await entries(stubs, admin.md, subject_id=other.user.id) == []


async def test_api_keys_and_partner_status(stubs: Stubs, admin: Account) -> None:
    partner, secret = await stubs.create_partner(admin, "Audit Keys")
    spare = await stubs.partners.CreateApiKey(
        partner_pb2.CreateApiKeyRequest(display_name="spare"), metadata=api_key(secret)
    )
    # The partner revokes its spare key with its first key; the admin then suspends it.
    await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=spare.api_key.key_id), metadata=api_key(secret)
    )
    # Revoking a revoked key changes nothing and records nothing.
    await stubs.partners.RevokeApiKey(
        partner_pb2.RevokeApiKeyRequest(key_id=spare.api_key.key_id), metadata=admin.md
    )
    await stubs.partners.SetPartnerStatus(
        partner_pb2.SetPartnerStatusRequest(
            partner_id=partner.id, status=partner_pb2.PARTNER_STATUS_SUSPENDED
        ),
        metadata=admin.md,
    )
    on_key = await entries(stubs, admin.md, subject_id=spare.api_key.key_id)
    assert [e.action for e in on_key] == ["api_key.revoked", "api_key.created"]
    revoked, created = on_key
    assert (revoked.actor.kind, revoked.actor.id) == (PARTNER_KEY, partner.id)
    assert revoked.actor.key_id != spare.api_key.key_id  # revoked with the other key
    assert created.details["partner_id"] == partner.id
    on_partner = await entries(stubs, admin.md, subject_kind="partner", subject_id=partner.id)
    assert [(e.action, e.actor.id) for e in on_partner] == [
        ("partner.suspended", admin.user.id),
        ("partner.created", admin.user.id),
    ]


async def test_devices_created_enrolled_revoked(stubs: Stubs, admin: Account) -> None:
    show = await new_show(stubs, admin, "audit-dev")
    created = await stubs.gate.CreateDevice(
        gate_pb2.CreateDeviceRequest(event_id=show.event.id, gate_id="north", display_name="k1"),
        metadata=show.organizer.md,
    )
    device_id = created.device.id
    await stubs.gate.EnrollDevice(
        gate_pb2.EnrollDeviceRequest(enrollment_token=created.enrollment_token)
    )
    await stubs.gate.RevokeDevice(
        gate_pb2.RevokeDeviceRequest(device_id=device_id), metadata=show.organizer.md
    )
    found = await entries(stubs, show.organizer.md, subject_kind="device", subject_id=device_id)
    assert [(e.action, e.actor.kind, e.actor.id) for e in found] == [
        ("device.revoked", USER, show.organizer.user.id),
        ("device.enrolled", DEVICE, device_id),
        ("device.created", USER, show.organizer.user.id),
    ]
    assert {e.event_id for e in found} == {show.event.id}
    assert {e.details["gate_id"] for e in found} == {"north"}


async def test_a_rolled_back_act_leaves_no_entry_and_no_act_commits_without_one(
    stubs: Stubs, admin: Account, raw: asyncpg.Connection
) -> None:
    customer = await stubs.register("audit-rollback")
    # Refused acts roll back: nothing recorded.
    show = await new_show(stubs, admin, "audit-rb")
    order = await buy(stubs, customer.md, show)
    stranger = await stubs.register("audit-stranger")
    code, reason = await refused(
        stubs.booking.RefundOrder(
            booking_pb2.RefundOrderRequest(
                order_id=order.id, request_id=str(uuid.uuid4()), reason="not mine"
            ),
            metadata=stranger.md,
        )
    )
    assert (code, reason) == (S.PERMISSION_DENIED, "NOT_ORDER_OWNER")
    assert await entries(stubs, admin.md, subject_id=order.id) == []

    # While the audit table cannot be written, the act itself cannot commit: the role
    # change waits on the entry's insert, times out and rolls back whole.
    async with raw.transaction():
        await raw.execute("LOCK TABLE audit_entries IN EXCLUSIVE MODE")
        with pytest.raises(aio.AioRpcError) as err:
            await stubs.auth.SetUserRoles(
                auth_pb2.SetUserRolesRequest(
                    user_id=customer.user.id,
                    roles=[common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT],
                ),
                metadata=admin.md,
                timeout=1.5,
            )
        assert err.value.code() in (S.ABORTED, S.DEADLINE_EXCEEDED)
    # The server's transaction may still be unwinding its lock wait: give it a moment.
    for _ in range(50):
        roles = await raw.fetchval("SELECT roles FROM users WHERE id = $1", customer.user.id)
        busy = await raw.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'INSERT INTO audit_entries%'"
            " AND state = 'active'"
        )
        if not busy:
            break
        await asyncio.sleep(0.1)
    assert list(roles) == ["CUSTOMER"]
    assert await entries(stubs, admin.md, subject_id=customer.user.id) == []
    # And entries are append-only, in the database itself.
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await raw.execute("DELETE FROM audit_entries")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await raw.execute("UPDATE audit_entries SET action = 'order.refunded'")


async def test_organizers_read_only_their_own_events(stubs: Stubs, admin: Account) -> None:
    mine = await new_show(stubs, admin, "audit-org-a")
    theirs = await new_show(stubs, admin, "audit-org-b")
    customer = await stubs.register("audit-org-cust")
    await refund(stubs, customer.md, (await buy(stubs, customer.md, theirs)).id)
    await refund(stubs, customer.md, (await buy(stubs, customer.md, mine)).id)

    seen = await entries(stubs, mine.organizer.md)
    assert seen and {e.event_id for e in seen} == {mine.event.id}
    assert {"event.created", "order.refunded"} <= {e.action for e in seen}
    # Naming another organizer's event is refused, not answered with an empty page.
    assert await refused(
        stubs.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(event_id=theirs.event.id),
            metadata=mine.organizer.md,
        )
    ) == (S.PERMISSION_DENIED, "NOT_EVENT_OWNER")
    # Other filters cannot reach past the scope: the other event as a subject, its
    # organizer as the actor.
    assert await entries(stubs, mine.organizer.md, subject_id=theirs.event.id) == []
    assert await entries(stubs, mine.organizer.md, actor_id=theirs.organizer.user.id) == []
    assert await refused(
        stubs.audit.ListAuditEntries(
            audit_pb2.ListAuditEntriesRequest(event_id=str(uuid.uuid4())),
            metadata=mine.organizer.md,
        )
    ) == (S.NOT_FOUND, "EVENT_NOT_FOUND")
    # Roles the policy does not admit are refused before anything is read.
    assert await refused(
        stubs.audit.ListAuditEntries(audit_pb2.ListAuditEntriesRequest(), metadata=customer.md)
    ) == (S.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")


async def test_support_reads_only_order_entries(stubs: Stubs, admin: Account) -> None:
    show = await new_show(stubs, admin, "audit-sup-scope")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="audit-sup2")
    customer = await stubs.register("audit-sup-cust")
    order = await buy(stubs, customer.md, show)
    await refund(stubs, support.md, order.id)
    seen = await entries(stubs, support.md, page_size=200)
    assert seen and {e.subject_kind for e in seen} == {"order"}
    assert order.id in {e.subject_id for e in seen}
    # Any event may be named; only its order entries come back.
    of_event = await entries(stubs, support.md, event_id=show.event.id)
    assert [(e.action, e.subject_id) for e in of_event] == [("order.refunded", order.id)]
    assert await entries(stubs, support.md, action="user.role_granted") == []
    # The same filters as ADMIN see the event's creation too.
    assert len(await entries(stubs, admin.md, event_id=show.event.id)) == 2


async def test_paging_has_no_gaps_or_repeats_while_entries_are_written(
    stubs: Stubs, admin: Account, raw: asyncpg.Connection
) -> None:
    user = await stubs.register("audit-pages")
    for _ in range(40):
        await stubs.auth.RevokeTokens(
            auth_pb2.RevokeTokensRequest(user_id=user.user.id), metadata=admin.md
        )
    expected = [
        str(i)
        for i in await raw.fetchval(
            "SELECT array_agg(id ORDER BY id DESC) FROM audit_entries WHERE subject_id = $1",
            user.user.id,
        )
    ]
    assert len(expected) == 40
    request = audit_pb2.ListAuditEntriesRequest(page_size=7, subject_id=user.user.id)
    first = await stubs.audit.ListAuditEntries(request, metadata=admin.md)
    assert len(first.entries) == 7 and first.next_page_token
    # Written while the reader pages: newer than its cursor, so never repeated or skipped.
    writers = [
        stubs.auth.RevokeTokens(
            auth_pb2.RevokeTokensRequest(user_id=user.user.id), metadata=admin.md
        )
        for _ in range(5)
    ]
    seen = [e.id for e in first.entries]
    request.page_token = first.next_page_token
    pages = 1
    for _ in range(100):
        if writers:
            await writers.pop()
        page = await stubs.audit.ListAuditEntries(request, metadata=admin.md)
        pages += 1
        assert len(page.entries) <= 7
        seen += [e.id for e in page.entries]
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert seen == expected
    assert pages == 6  # 40 entries in pages of 7
    # Newest first, and the 5 written meanwhile are there on a fresh listing.
    assert len(await entries(stubs, admin.md, subject_id=user.user.id)) == 45


async def test_page_tokens_and_limits(stubs: Stubs, admin: Account) -> None:
    user = await stubs.register("audit-tokens")
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="audit-tok-s")
    for _ in range(3):
        await stubs.auth.RevokeTokens(
            auth_pb2.RevokeTokensRequest(user_id=user.user.id), metadata=admin.md
        )
    page = await stubs.audit.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(page_size=1, subject_id=user.user.id),
        metadata=admin.md,
    )
    token = page.next_page_token
    assert token
    bad = [
        # The token of one listing on another's filters, or another caller's listing.
        (audit_pb2.ListAuditEntriesRequest(page_token=token, subject_id="x"), admin.md),
        (
            audit_pb2.ListAuditEntriesRequest(page_token=token, subject_id=user.user.id),
            support.md,
        ),
        (
            audit_pb2.ListAuditEntriesRequest(
                page_token=token[:-2] + "AA", subject_id=user.user.id
            ),
            admin.md,
        ),
        (audit_pb2.ListAuditEntriesRequest(page_size=-1), admin.md),
        (audit_pb2.ListAuditEntriesRequest(actor_id="not-a-uuid"), admin.md),
        (audit_pb2.ListAuditEntriesRequest(event_id="nope"), admin.md),
        (audit_pb2.ListAuditEntriesRequest(action="x" * 65), admin.md),
        (
            audit_pb2.ListAuditEntriesRequest(
                start_time=stamp(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
                end_time=stamp(dt.datetime(2030, 1, 1, tzinfo=dt.UTC)),
            ),
            admin.md,
        ),
    ]
    for request, md in bad:
        code, _ = await refused(stubs.audit.ListAuditEntries(request, metadata=md))
        assert code == S.INVALID_ARGUMENT, request
    # Above the maximum is clamped (500), never refused.
    clamped = await stubs.audit.ListAuditEntries(
        audit_pb2.ListAuditEntriesRequest(page_size=1_000_000), metadata=admin.md
    )
    assert len(clamped.entries) <= 500


async def test_filters_action_subject_and_time_range(
    stubs: Stubs, admin: Account, raw: asyncpg.Connection
) -> None:
    user = await stubs.register("audit-filters")
    for roles in (
        [common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT],
        [common_pb2.ROLE_CUSTOMER],
        [common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_ENTRY_MANAGER],
    ):
        await stubs.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=user.user.id, roles=roles), metadata=admin.md
        )
    every = list(reversed(await entries(stubs, admin.md, subject_id=user.user.id)))
    assert [e.action for e in every] == [
        "user.role_granted",
        "user.role_revoked",
        "user.role_granted",
    ]
    granted = await entries(stubs, admin.md, subject_id=user.user.id, action="user.role_granted")
    assert [e.id for e in granted] == [every[2].id, every[0].id]
    assert await entries(stubs, admin.md, subject_id=user.user.id, subject_kind="order") == []
    # [start_time, end_time): the second entry's own time is in, the third's is out.
    second = every[1].create_time.ToDatetime(dt.UTC)
    third = every[2].create_time.ToDatetime(dt.UTC)
    assert second < third
    window = await entries(
        stubs,
        admin.md,
        subject_id=user.user.id,
        start_time=stamp(second),
        end_time=stamp(third),
    )
    assert [e.id for e in window] == [every[1].id]
    stored = await raw.fetchval(
        "SELECT create_time FROM audit_entries WHERE id = $1", int(every[1].id)
    )
    assert stored == second


@pytest.mark.slow
async def test_ticketctl_audit_list(
    running: RunningServer, stubs: Stubs, admin: Account, admin_cli: Cli, tmp_path: Path
) -> None:
    user = await stubs.register("audit-cli")
    await stubs.auth.SetUserRoles(
        auth_pb2.SetUserRolesRequest(
            user_id=user.user.id, roles=[common_pb2.ROLE_CUSTOMER, common_pb2.ROLE_SUPPORT]
        ),
        metadata=admin.md,
    )
    out = ok(
        await admin_cli(
            "audit", "list", "--subject", f"user:{user.user.id}", "--action", "user.role_granted"
        )
    ).out
    assert "user.role_granted" in out and "role=SUPPORT" in out and admin.user.id in out
    lines = ok(
        await admin_cli(
            "audit",
            "list",
            "--actor",
            admin.user.id,
            "--subject",
            user.user.id,
            "--since",
            "1h",
            "--json",
        )
    ).out.splitlines()
    assert [json.loads(line)["details"] for line in lines] == [{"role": "SUPPORT"}]
    assert ok(await admin_cli("audit", "list", "--subject", user.user.id, "--until", "1h")).out
    assert json.loads(lines[0])["actor"] == {"kind": "user", "id": admin.user.id, "key_id": ""}
    # An organizer naming someone else's event: one line saying why, exit 1.
    show = await new_show(stubs, admin, "audit-cli-org")
    other = await stubs.account_with_roles(admin, common_pb2.ROLE_ORGANIZER, tag="audit-cli-o")
    org_cli = cli_for(running.target, tmp_path / "org", TICKETING_TOKEN=other.token)
    denied = await org_cli("audit", "list", "--event", show.event.id)
    assert denied.code == 1 and "NOT_EVENT_OWNER" in denied.err
    bad = await admin_cli("audit", "list", "--since", "yesterday-ish")
    assert bad.code == 1 and "--since" in bad.err


async def test_other_administrative_acts_are_recorded(stubs: Stubs, admin: Account) -> None:
    show = await new_show(stubs, admin, "audit-admin-acts")
    org = show.organizer
    event_id = show.event.id
    staff = await stubs.account_with_roles(admin, common_pb2.ROLE_ENTRY_MANAGER, tag="audit-em")
    await stubs.assign_staff(org, event_id, staff)
    await stubs.events.UnassignStaff(
        event_pb2.UnassignStaffRequest(event_id=event_id, user_id=staff.user.id), metadata=org.md
    )
    # Unassigning someone not assigned changes nothing and records nothing.
    await stubs.events.UnassignStaff(
        event_pb2.UnassignStaffRequest(event_id=event_id, user_id=staff.user.id), metadata=org.md
    )
    partner, _ = await stubs.create_partner(admin, "Audit Alloc")
    made = await stubs.events.AllocateSeats(
        event_pb2.AllocateSeatsRequest(
            event_id=event_id,
            partner_id=partner.id,
            request_id=str(uuid.uuid4()),
            best_available=booking_pb2.BestAvailable(section_id=show.ga_section, quantity=2),
        ),
        metadata=org.md,
    )
    for _ in range(2):  # the second release changes nothing and records nothing
        await stubs.events.ReleaseAllocation(
            event_pb2.ReleaseAllocationRequest(allocation_id=made.allocation.id),
            metadata=org.md,
        )
    await stubs.gate.RotateSigningKey(
        gate_pb2.RotateSigningKeyRequest(event_id=event_id), metadata=org.md
    )
    await stubs.gate.SetOfflineAdmission(
        gate_pb2.SetOfflineAdmissionRequest(event_id=event_id, allowed=True), metadata=org.md
    )
    customer = await stubs.register("audit-rotate")
    order = await buy(stubs, customer.md, show)
    support = await stubs.account_with_roles(admin, common_pb2.ROLE_SUPPORT, tag="audit-rot-s")
    await stubs.booking.RotateTicketCodes(
        booking_pb2.RotateTicketCodesRequest(order_id=order.id, request_id=str(uuid.uuid4())),
        metadata=support.md,
    )
    found = list(reversed(await entries(stubs, org.md, event_id=event_id)))
    assert [(e.action, e.subject_kind, e.actor.id) for e in found] == [
        ("event.created", "event", org.user.id),
        ("event.staff_assigned", "user", org.user.id),
        ("event.staff_unassigned", "user", org.user.id),
        ("allocation.created", "allocation", org.user.id),
        ("allocation.released", "allocation", org.user.id),
        ("signing_key.rotated", "signing_key", org.user.id),
        ("event.offline_admission_set", "event", org.user.id),
        ("order.codes_rotated", "order", support.user.id),
    ]
    assert found[3].details == {"partner_id": partner.id, "places": "2"}
    assert found[7].details == {"rotated_tickets": "1"}
    # Venues are an ADMIN's: their entries have no event, so only ADMIN reads them.
    venue = await stubs.create_venue(admin, small_layout(name="Audit Venue Entry"))
    on_venue = await entries(stubs, admin.md, subject_kind="venue", subject_id=venue.id)
    assert [(e.action, e.actor.id, e.event_id) for e in on_venue] == [
        ("venue.created", admin.user.id, "")
    ]
    assert await entries(stubs, org.md, subject_id=venue.id) == []


async def test_the_bootstrap_admin_is_granted_by_the_system(stubs: Stubs, admin: Account) -> None:
    found = await entries(stubs, admin.md, subject_id=admin.user.id, action="user.role_granted")
    system = [e for e in found if e.actor.kind == audit_pb2.AUDIT_ACTOR_KIND_SYSTEM]
    assert [(e.details["role"], e.actor.id) for e in system] == [("ADMIN", "")]


class _RollBack(Exception):
    pass


async def test_the_largest_details_fit_the_column(raw: asyncpg.Connection) -> None:
    """What `clean_details` keeps, at its worst (every character a 6-byte JSON escape, the
    most values, the longest keys), is accepted by the table's size check: no act can fail
    for the size of its entry."""
    worst = clean_details({f"{i:02d}" + "\x01" * 100: "\x01" * 10_000 for i in range(20)})
    assert len(worst) == MAX_DETAILS
    sizes: list[int] = []
    with pytest.raises(_RollBack):
        async with raw.transaction():  # rolled back: nothing left in the shared database
            sizes.append(
                await raw.fetchval(
                    "INSERT INTO audit_entries (actor_kind, action, subject_kind, subject_id,"
                    " details) VALUES ('SYSTEM', 'user.role_granted', 'user', 'x', $1::jsonb)"
                    " RETURNING octet_length(details::text)",
                    json.dumps(worst),
                )
            )
            raise _RollBack
    assert sizes[0] > 8_000  # really the worst case, not a small one
