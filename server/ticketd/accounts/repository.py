"""All SQL for users. Functions return records or None; the service decides what is an error."""

from __future__ import annotations

import uuid
from typing import Any

from ticketd.accounts.rules import UserRecord, sort_roles
from ticketd.auth.principal import Principal, Role
from ticketd.db.database import Connection

_COLUMNS = "id, email, display_name, roles, create_time"


def _record(row: Any) -> UserRecord:
    return UserRecord(
        id=row["id"],
        email=row["email"],
        display_name=row["display_name"],
        roles=tuple(Role(r) for r in sort_roles({Role(r) for r in row["roles"]})),
        create_time=row["create_time"],
    )


async def insert_user(
    conn: Connection, *, email: str, display_name: str, password_hash: str, roles: set[Role]
) -> UserRecord | None:
    """Insert a user; None when the (normalised) email is taken.

    ON CONFLICT DO NOTHING rather than catching the unique violation: two concurrent
    registrations of one email then resolve inside PostgreSQL without an aborted transaction.
    """
    row = await conn.fetchrow(
        f"""
        INSERT INTO users (email, display_name, password_hash, roles)
        VALUES ($1, $2, $3, $4)
        ON CONFLICT (email) DO NOTHING
        RETURNING {_COLUMNS}
        """,
        email,
        display_name,
        password_hash,
        sort_roles(roles),
    )
    return None if row is None else _record(row)


async def credentials(conn: Connection, email: str) -> tuple[UserRecord, str] | None:
    """The user and password hash for a normalised email, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, password_hash FROM users WHERE email = $1", email
    )
    return None if row is None else (_record(row), row["password_hash"])


async def user_by_id(conn: Connection, user_id: uuid.UUID) -> UserRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    return None if row is None else _record(row)


async def user_id_by_email(conn: Connection, email: str) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval("SELECT id FROM users WHERE email = $1", email)
    return value


async def principal(conn: Connection, user_id: uuid.UUID) -> Principal | None:
    """The caller's current roles, read fresh on every RPC (tokens carry no roles)."""
    row = await conn.fetchrow("SELECT email, roles FROM users WHERE id = $1", user_id)
    if row is None:
        return None
    return Principal(
        user_id=user_id, email=row["email"], roles=frozenset(Role(r) for r in row["roles"])
    )


async def lock_admins(conn: Connection) -> list[uuid.UUID]:
    """Every admin's id, locked in id order: two admins demoting each other at once take
    turns, and the second sees the first's change."""
    rows = await conn.fetch(
        "SELECT id FROM users WHERE 'ADMIN' = ANY(roles) ORDER BY id FOR UPDATE"
    )
    return [r["id"] for r in rows]


async def update_roles(conn: Connection, user_id: uuid.UUID, roles: set[Role]) -> UserRecord | None:
    row = await conn.fetchrow(
        f"UPDATE users SET roles = $2 WHERE id = $1 RETURNING {_COLUMNS}",
        user_id,
        sort_roles(roles),
    )
    return None if row is None else _record(row)


async def list_users(
    conn: Connection, *, email_prefix: str, after_email: str | None, limit: int
) -> list[UserRecord]:
    """Users ordered by email (unique), after `after_email`, optionally by email prefix."""
    clauses = ["TRUE"]
    args: list[Any] = []
    if email_prefix:
        escaped = email_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args.append(escaped + "%")
        clauses.append(f"email LIKE ${len(args)} ESCAPE '\\'")
    if after_email is not None:
        args.append(after_email)
        clauses.append(f"email > ${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM users WHERE {' AND '.join(clauses)} "
        f"ORDER BY email LIMIT ${len(args)}",
        *args,
    )
    return [_record(r) for r in rows]


async def lock_user_by_email(conn: Connection, email: str) -> UserRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE email = $1 FOR UPDATE", email)
    return None if row is None else _record(row)
