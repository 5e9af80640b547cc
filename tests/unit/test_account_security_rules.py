"""Pure account rules: email normalisation, invisible characters, admin and revocation
checks, the token generation claim, the new settings."""

from __future__ import annotations

import datetime as dt
import uuid

import jwt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ticketd.accounts.rules import (
    AdminRow,
    check_keeps_an_admin,
    check_may_revoke_tokens,
    display_name_violation,
    email_violation,
    invisible_character,
    normalize_email,
)
from ticketd.auth.principal import Principal, Role
from ticketd.auth.tokens import TokenService
from ticketd.config import ConfigError, Settings
from ticketd.errors import FailedPrecondition, PermissionDenied, Reason, Unauthenticated


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob@example.com ", "bob@example.com"),
        ("\uff21lice@example.com", "alice@example.com"),  # fullwidth A
        ("\U0001d41alice@example.com", "alice@example.com"),  # mathematical bold a
        ("\ufb01sh@example.com", "fish@example.com"),  # fi ligature
        ("\u212aate@example.com", "kate@example.com"),  # Kelvin sign
        ("stra\u00dfe@example.com", "strasse@example.com"),  # sharp s folds to ss
        ("\u1e9e@example.com", "ss@example.com"),  # capital sharp s
        ("\u03a3\u03c2@example.gr", "\u03c3\u03c3@example.gr"),  # sigma, final sigma
        ("J\u00dcRGEN@example.de", "j\u00fcrgen@example.de"),
        ("ju\u0308rgen@example.de", "j\u00fcrgen@example.de"),  # decomposed u + diaeresis
    ],
)
def test_look_alikes_normalise_to_one_address(typed: str, stored: str) -> None:
    assert normalize_email(typed) == stored


@given(st.text(max_size=40))
def test_normalisation_is_a_fixed_point(text: str) -> None:
    once = normalize_email(text)
    assert normalize_email(once) == once


@pytest.mark.parametrize(
    "char",
    [
        "\u202e",  # RIGHT-TO-LEFT OVERRIDE (Cf)
        "\u2066",  # LEFT-TO-RIGHT ISOLATE (Cf)
        "\u200b",  # ZERO WIDTH SPACE (Cf)
        "\u200d",  # ZERO WIDTH JOINER (Cf)
        "\ufeff",  # BOM (Cf)
        "\u00ad",  # SOFT HYPHEN (Cf)
        "\u0007",  # BEL (Cc)
        "\u0085",  # NEXT LINE (Cc)
        "\ue000",  # private use (Co)
        "\U000e0001",  # LANGUAGE TAG (Cf)
        "\u0378",  # unassigned (Cn)
        "\u2028",  # LINE SEPARATOR (Zl)
        "\u2029",  # PARAGRAPH SEPARATOR (Zp)
        "\u3164",  # HANGUL FILLER (Lo, renders blank)
        "\u115f",  # HANGUL CHOSEONG FILLER
        "\u2800",  # BRAILLE PATTERN BLANK
        "\u034f",  # COMBINING GRAPHEME JOINER
        "\ufe0f",  # VARIATION SELECTOR-16
        "\U000e0100",  # VARIATION SELECTOR-17
        "\u180b",  # MONGOLIAN FREE VARIATION SELECTOR ONE
    ],
)
def test_invisible_characters_are_refused_in_names_and_emails(char: str) -> None:
    assert invisible_character(f"ab{char}c") == f"U+{ord(char):04X}"
    name = display_name_violation(f"Ad{char}min")
    assert name is not None and name.field == "display_name"
    assert f"U+{ord(char):04X}" in name.description
    email = email_violation(f"ad{char}min@example.com")
    assert email is not None and email.field == "email"


@pytest.mark.parametrize(
    "name", ["Alice", "José Ñúñez", "李小龍", "Zoë O'Brien-Smith", "Ahmed أحمد", "😀 Smiley"]
)
def test_ordinary_names_are_accepted(name: str) -> None:
    assert display_name_violation(name) is None


def test_email_limits_apply_to_the_normalised_form() -> None:
    assert email_violation("a" * 242 + "@example.com") is None  # 254 characters
    too_long = email_violation("a" * 243 + "@example.com")
    assert too_long is not None and "254" in too_long.description
    # U+FDFA expands to 18 characters under NFKC: the stored form is what must fit.
    expands = email_violation("\ufdfa" * 14 + "@example.com")
    assert expands is not None and "254" in expands.description


def _admins(*rows: tuple[uuid.UUID, bool]) -> list[AdminRow]:
    return [AdminRow(i, a) for i, a in rows]


def test_the_last_active_admin_stays() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(FailedPrecondition) as err:
        check_keeps_an_admin(_admins((a, True), (b, False)), a, stays=False)
    assert err.value.reason is Reason.LAST_ADMIN
    check_keeps_an_admin(_admins((a, True), (b, True)), a, stays=False)
    check_keeps_an_admin(_admins((a, True), (b, False)), b, stays=False)  # b does not count
    check_keeps_an_admin(_admins((a, True)), a, stays=True)
    check_keeps_an_admin(_admins((a, True)), uuid.uuid4(), stays=False)  # not an admin


def test_only_admins_revoke_someone_elses_tokens() -> None:
    me, other = uuid.uuid4(), uuid.uuid4()
    customer = Principal(me, "me@example.com", frozenset({Role.CUSTOMER}))
    admin = Principal(me, "me@example.com", frozenset({Role.ADMIN}))
    check_may_revoke_tokens(customer, me)
    check_may_revoke_tokens(admin, other)
    with pytest.raises(PermissionDenied) as err:
        check_may_revoke_tokens(customer, other)
    assert err.value.reason is Reason.NOT_ACCOUNT_OWNER


SECRET = "s" * 40


def test_tokens_carry_the_generation() -> None:
    tokens = TokenService(SECRET, issuer="ticketd", audience="ticketing.v1", ttl_seconds=60)
    uid = uuid.uuid4()
    claims = tokens.verify(tokens.issue(uid, 7).token)
    assert (claims.user_id, claims.generation) == (uid, 7)


@pytest.mark.parametrize(
    ("gen", "ok"), [(None, True), (0, True), (True, False), ("1", False), (-1, False)]
)
def test_generation_claims_from_older_or_forged_tokens(gen: object, ok: bool) -> None:
    tokens = TokenService(SECRET, issuer="ticketd", audience="ticketing.v1", ttl_seconds=60)
    now = dt.datetime.now(dt.UTC)
    claims: dict[str, object] = {
        "sub": str(uuid.uuid4()),
        "iss": "ticketd",
        "aud": "ticketing.v1",
        "iat": now,
        "nbf": now,
        "exp": now + dt.timedelta(minutes=1),
    }
    if gen is not None:
        claims["gen"] = gen
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    if ok:
        assert tokens.verify(token).generation == 0
    else:
        with pytest.raises(Unauthenticated):
            tokens.verify(token)


def test_auth_settings_from_the_environment() -> None:
    base = {"TICKETING_DATA_DIR": "/tmp/x"}
    defaults = Settings.from_env(base)
    assert defaults.auth_concurrency >= 2
    assert (defaults.auth_queue, defaults.auth_peer_rate, defaults.auth_peer_burst) == (8, 0.5, 10)
    assert defaults.login_failures_per_email == 5
    assert defaults.grpc_hard_limit > defaults.max_concurrent_rpcs + defaults.auth_rpc_limit
    given_env = Settings.from_env(
        base
        | {
            "TICKETING_AUTH_CONCURRENCY": "3",
            "TICKETING_AUTH_QUEUE": "0",
            "TICKETING_AUTH_PEER_RATE": "0.5",
            "TICKETING_AUTH_PEER_BURST": "4",
            "TICKETING_LOGIN_FAILURES_PER_EMAIL": "2",
        }
    )
    assert (given_env.auth_concurrency, given_env.auth_queue) == (3, 0)
    assert (given_env.auth_peer_rate, given_env.auth_peer_burst) == (0.5, 4)
    assert given_env.login_failures_per_email == 2
    for name, bad in [
        ("TICKETING_AUTH_CONCURRENCY", "0"),
        ("TICKETING_AUTH_PEER_RATE", "nan"),
        ("TICKETING_AUTH_PEER_RATE", "fast"),
        ("TICKETING_AUTH_PEER_BURST", "-1"),
        ("TICKETING_LOGIN_FAILURES_PER_EMAIL", "0"),
    ]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env(base | {name: bad})
