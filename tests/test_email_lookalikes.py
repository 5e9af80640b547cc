"""Look-alike and invisible-character accounts, through the real server; and the migration
that brings emails stored with plain lower() to the normalised form."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc import aio

from scripts.benchlib.database import plain_url, throwaway_database
from tests.support import PASSWORD, Account, Stubs, error_details
from ticketd.db import migrate
from ticketing.v1 import auth_pb2


def _tag() -> str:
    return uuid.uuid4().hex[:10]


async def _register(stubs: Stubs, email: str, name: str = "Look") -> auth_pb2.RegisterResponse:
    return await stubs.auth.Register(
        auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name=name)
    )


# (how the first account spells its address, a look-alike spelling registered later)
LOOK_ALIKES = [
    ("alice-{t}@example.test", "\uff21\uff2c\uff29\uff23\uff25-{t}@example.test"),  # fullwidth
    ("alice-{t}@example.test", "alice-{t}@\uff45xample.test"),  # fullwidth in the domain
    ("kate-{t}@example.test", "\u212aate-{t}@example.test"),  # Kelvin sign
    ("fish-{t}@example.test", "\ufb01sh-{t}@example.test"),  # fi ligature
    ("strasse-{t}@example.test", "STRA\u00dfE-{t}@example.test"),  # sharp s
    ("bold-{t}@example.test", "\U0001d41bold-{t}@example.test"),  # mathematical bold b
    ("j\u00fcrgen-{t}@example.test", "ju\u0308rgen-{t}@example.test"),  # decomposed umlaut
]


@pytest.mark.parametrize(("first", "second"), LOOK_ALIKES)
async def test_a_look_alike_of_an_existing_address_is_taken(
    stubs: Stubs, first: str, second: str
) -> None:
    tag = _tag()
    original = await _register(stubs, first.format(t=tag))
    with pytest.raises(aio.AioRpcError) as err:
        await _register(stubs, second.format(t=tag))
    details = error_details(err.value)
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
    # Signing in with the look-alike spelling reaches the one account.
    login = await stubs.auth.Login(
        auth_pb2.LoginRequest(email=second.format(t=tag), password=PASSWORD)
    )
    assert login.user.id == original.user.id


async def test_emails_are_stored_normalised(stubs: Stubs, admin: Account) -> None:
    tag = _tag()
    reg = await _register(stubs, f"\uff2aOSE-{tag}@EXAMPLE.test")
    assert reg.user.email == f"jose-{tag}@example.test"
    # ListUsers finds it by any spelling of the prefix.
    listed = await stubs.auth.ListUsers(
        auth_pb2.ListUsersRequest(email_prefix=f"\uff2aose-{tag}"), metadata=admin.md
    )
    assert [u.id for u in listed.users] == [reg.user.id]


@pytest.mark.parametrize(
    "char",
    [
        "\u202e",
        "\u2067",
        "\u200b",
        "\u200d",
        "\u2060",
        "\ufeff",
        "\u00ad",
        "\u3164",
        "\ue000",
        "\u2028",
        "\u0378",
        "\ufe0f",
        "\u0085",
    ],
)
async def test_invisible_or_bidi_characters_are_refused_field_by_field(
    stubs: Stubs, char: str
) -> None:
    tag = _tag()
    cases = [
        (f"ad{char}min-{tag}@example.test", "Fine Name", ["email"]),
        (f"fine-{tag}@example.test", f"Ad{char}min", ["display_name"]),
        (f"x{char}y-{tag}@example.test", f"A{char}B", ["display_name", "email"]),
    ]
    for email, name, fields in cases:
        with pytest.raises(aio.AioRpcError) as err:
            await _register(stubs, email, name)
        details = error_details(err.value)
        assert details.code == grpc.StatusCode.INVALID_ARGUMENT, (email, name)
        assert sorted(f for f, _ in details.field_violations) == fields
        assert all(f"U+{ord(char):04X}" in d for _, d in details.field_violations)
    # Nothing was created: the clean address is still free.
    ok = await _register(stubs, f"fine-{tag}@example.test", "Fine Name")
    assert ok.user.display_name == "Fine Name"


async def test_a_bidi_override_cannot_fake_a_name_at_login(stubs: Stubs) -> None:
    """A login with an invisible character answers like any wrong address (no lookup)."""
    acct = await stubs.register("bidi")
    local, domain = acct.email.split("@")
    with pytest.raises(aio.AioRpcError) as err:
        await stubs.auth.Login(
            auth_pb2.LoginRequest(email=f"{local}\u200b@{domain}", password=acct.password)
        )
    assert error_details(err.value).reason == "BAD_CREDENTIALS"


@pytest.fixture
async def old_schema_database(pg_admin_url: str) -> AsyncIterator[str]:
    """A database of its own at the schema before account security (revision 0004)."""
    async with throwaway_database(pg_admin_url, "ticketing_migration") as url:
        await migrate.upgrade(url, "0004")
        yield url


async def test_the_migration_normalises_rows_stored_with_lower(old_schema_database: str) -> None:
    conn = await asyncpg.connect(plain_url(old_schema_database))
    try:
        rows = [
            # (email as the old code stored it, with plain lower(); roles)
            ("stra\u00dfe@example.test", ["CUSTOMER"]),  # -> strasse@, free: rewritten
            ("\uff4a\uff4f@example.test", ["CUSTOMER"]),  # fullwidth "jo" -> jo@, free
            ("plain@example.test", ["CUSTOMER"]),  # ASCII: untouched, holds its address
            ("\uff50lain@example.test", ["CUSTOMER"]),  # fullwidth look-alike: disabled
            ("\U0001d429lain@example.test", ["ADMIN"]),  # bold look-alike, admin: reported
        ]
        ids = []
        for email, roles in rows:
            ids.append(
                await conn.fetchval(
                    "INSERT INTO users (email, display_name, password_hash, roles) "
                    "VALUES ($1, 'Old', 'x', $2) RETURNING id",
                    email,
                    roles,
                )
            )
    finally:
        await conn.close()
    await migrate.upgrade(old_schema_database)
    conn = await asyncpg.connect(plain_url(old_schema_database))
    try:
        after = {
            r["id"]: (r["email"], r["status"], r["token_generation"])
            for r in await conn.fetch("SELECT id, email, status, token_generation FROM users")
        }
        # Registering a look-alike now conflicts with the normalised row.
        conflict = await conn.fetchval(
            "INSERT INTO users (email, display_name, password_hash, roles) "
            "VALUES ('strasse@example.test', 'New', 'x', ARRAY['CUSTOMER']) "
            "ON CONFLICT (email) DO NOTHING RETURNING id"
        )
    finally:
        await conn.close()
    assert after[ids[0]] == ("strasse@example.test", "ACTIVE", 0)
    assert after[ids[1]] == ("jo@example.test", "ACTIVE", 0)
    assert after[ids[2]] == ("plain@example.test", "ACTIVE", 0)
    assert after[ids[3]] == ("\uff50lain@example.test", "DISABLED", 0)
    assert after[ids[4]] == ("\U0001d429lain@example.test", "ACTIVE", 0)  # admins stay
    assert conflict is None
