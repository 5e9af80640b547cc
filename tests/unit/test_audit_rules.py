"""Pure audit rules (issue 15): actors of each principal kind, details bounds, who reads
what, the CLI's filter parsing, and the action catalogue documented. No database."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from pathlib import Path

import pytest

from tests.unit.people import Role, caller
from ticketd.audit.rules import (
    MAX_DETAIL_VALUE_CHARS,
    MAX_DETAILS,
    SYSTEM,
    Action,
    Actor,
    ActorKind,
    AuditFilter,
    SubjectKind,
    clean_details,
    may_filter_event,
    visibility_for,
)
from ticketd.auth.principal import DeviceScope, PartnerScope, Principal, PrincipalKind
from ticketd.errors import InvalidArgument
from ticketing.cli.audit_cmds import parse_subject, parse_when
from ticketing.cli.common import CliError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "audit.md"


def test_actor_of_each_principal_kind() -> None:
    user = caller(Role.ADMIN)
    assert Actor.of(user) == Actor(ActorKind.USER, user.user_id)
    partner, key = uuid.uuid4(), uuid.uuid4()
    by_key = Principal(
        partner,
        "",
        frozenset(),
        kind=PrincipalKind.PARTNER,
        partner=PartnerScope(partner_id=partner, key_id=key),
    )
    assert Actor.of(by_key) == Actor(ActorKind.PARTNER_KEY, partner, key)
    device_id = uuid.uuid4()
    kiosk = Principal(
        device_id,
        "",
        frozenset(),
        kind=PrincipalKind.DEVICE,
        device=DeviceScope(event_id=uuid.uuid4(), gate_id="g"),
    )
    assert Actor.of(kiosk) == Actor(ActorKind.DEVICE, device_id)
    assert Actor.of(None) == SYSTEM and SYSTEM.id is None


def test_details_are_bounded_text() -> None:
    assert clean_details(None) == {}
    assert clean_details({"n": 3, "skip": None, "ok": True}) == {"n": "3", "ok": "True"}
    long = clean_details({"reason": "x" * 10_000})
    assert len(long["reason"]) == MAX_DETAIL_VALUE_CHARS
    many = clean_details({f"k{i}": i for i in range(50)})
    assert len(many) == MAX_DETAILS


def test_visibility_is_the_union_of_the_roles() -> None:
    assert visibility_for(caller(Role.ADMIN)).everything
    support = visibility_for(caller(Role.SUPPORT))
    assert (support.everything, support.orders, support.organizer_id) == (False, True, None)
    org = caller(Role.ORGANIZER)
    assert visibility_for(org).organizer_id == org.user_id
    both = visibility_for(caller(Role.SUPPORT, Role.ORGANIZER))
    assert both.orders and both.organizer_id is not None
    assert visibility_for(caller(Role.CUSTOMER)).nothing
    assert visibility_for(caller(Role.ENTRY_MANAGER)).nothing
    kiosk = Principal(uuid.uuid4(), "", frozenset(), kind=PrincipalKind.DEVICE)
    assert visibility_for(kiosk).nothing


def test_event_filter_only_for_the_events_organizer_unless_admin_or_support() -> None:
    org = caller(Role.ORGANIZER)
    mine = visibility_for(org)
    assert may_filter_event(mine, org.user_id)
    assert not may_filter_event(mine, uuid.uuid4())
    assert may_filter_event(visibility_for(caller(Role.SUPPORT)), uuid.uuid4())
    assert may_filter_event(visibility_for(caller(Role.ADMIN)), uuid.uuid4())


def test_an_empty_time_range_is_refused() -> None:
    t = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    AuditFilter(start_time=t, end_time=t + dt.timedelta(microseconds=1)).check()
    AuditFilter(start_time=t).check()
    for end in (t, t - dt.timedelta(seconds=1)):
        with pytest.raises(InvalidArgument) as err:
            AuditFilter(start_time=t, end_time=end).check()
        assert err.value.violations[0].field == "end_time"


def test_cli_subject_and_time_parsing() -> None:
    oid = str(uuid.uuid4())
    assert parse_subject(f"order:{oid}") == ("order", oid)
    assert parse_subject("order") == ("order", "")
    assert parse_subject(oid) == ("", oid)
    now = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
    assert parse_when("15m", "--since", now=now) == now - dt.timedelta(minutes=15)
    assert parse_when("7d", "--since", now=now) == now - dt.timedelta(days=7)
    assert parse_when("2030-01-02T03:04:05", "--since") == dt.datetime(
        2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC
    )
    offset = parse_when("2030-01-02T03:04:05+02:00", "--until")
    assert offset.utcoffset() == dt.timedelta(hours=2)
    with pytest.raises(CliError, match="--since"):
        parse_when("last tuesday", "--since")


def test_action_names_are_stable_and_all_documented() -> None:
    names = [a.value for a in Action]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z_]+\.[a-z_]+", n) for n in names)
    # Every action's noun is a subject kind; every name is in docs/audit.md.
    kinds = {k.value for k in SubjectKind}
    assert {n.split(".")[0] for n in names} <= kinds
    documented = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", DOCS.read_text()))
    assert set(names) <= documented
