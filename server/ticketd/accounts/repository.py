"""All SQL for users. Functions return records or None; the service decides what is an error."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ticketd.accounts.rules import AdminRow, Credentials, UserRecord, UserStatus, sort_roles
from ticketd.auth.principal import Principal, Role
from ticketd.db.database import Connection
from ticketd.db.records import record_from_row

_COLUMNS = "id, email, display_name, roles, create_time, status"


def _record(row: Any) -> UserRecord:
    return record_from_row(
        UserRecord,
        row,
        roles=tuple(Role(r) for r in sort_roles({Role(r) for r in row["roles"]})),
        status=UserStatus(row["status"]),
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


def _credentials(row: Any) -> Credentials:
    return Credentials(_record(row), row["password_hash"], row["token_generation"])


async def credentials(conn: Connection, email: str) -> Credentials | None:
    """The user, password hash and token generation for a normalised email, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, password_hash, token_generation FROM users WHERE email = $1", email
    )
    return None if row is None else _credentials(row)


async def credentials_by_id(conn: Connection, user_id: uuid.UUID) -> Credentials | None:
    """The user, password hash and token generation for an id, or None."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, password_hash, token_generation FROM users WHERE id = $1", user_id
    )
    return None if row is None else _credentials(row)


async def user_by_id(conn: Connection, user_id: uuid.UUID) -> UserRecord | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1", user_id)
    return None if row is None else _record(row)


async def user_id_by_email(conn: Connection, email: str) -> uuid.UUID | None:
    value: uuid.UUID | None = await conn.fetchval("SELECT id FROM users WHERE email = $1", email)
    return value


@dataclass(frozen=True)
class PrincipalRow:
    """The per-call read: current roles, status and token generation of one user."""

    principal: Principal
    status: UserStatus
    token_generation: int


async def principal(conn: Connection, user_id: uuid.UUID) -> PrincipalRow | None:
    """The caller's current roles, status and token generation, read fresh on every RPC in
    one indexed lookup (tokens carry no roles; revocation needs no other round trip)."""
    row = await conn.fetchrow(
        "SELECT email, roles, status, token_generation FROM users WHERE id = $1", user_id
    )
    if row is None:
        return None
    return PrincipalRow(
        Principal(
            user_id=user_id, email=row["email"], roles=frozenset(Role(r) for r in row["roles"])
        ),
        UserStatus(row["status"]),
        row["token_generation"],
    )


async def lock_admins(conn: Connection) -> list[AdminRow]:
    """Every admin, locked in id order, with whether it is active: two admins demoting or
    disabling each other at once take turns, and the second sees the first's change (READ
    COMMITTED re-reads a row once its lock is granted)."""
    rows = await conn.fetch(
        "SELECT id, status FROM users WHERE 'ADMIN' = ANY(roles) ORDER BY id FOR UPDATE"
    )
    return [AdminRow(r["id"], r["status"] == UserStatus.ACTIVE.value) for r in rows]


async def update_roles(conn: Connection, user_id: uuid.UUID, roles: set[Role]) -> UserRecord | None:
    row = await conn.fetchrow(
        f"UPDATE users SET roles = $2 WHERE id = $1 RETURNING {_COLUMNS}",
        user_id,
        sort_roles(roles),
    )
    return None if row is None else _record(row)


async def update_status(
    conn: Connection, user_id: uuid.UUID, status: UserStatus
) -> UserRecord | None:
    """Set a user's status; disabling also moves the token generation on, so tokens from
    before stay revoked if the account is enabled again."""
    row = await conn.fetchrow(
        f"""
        UPDATE users
           SET status = $2,
               token_generation = token_generation
                   + CASE WHEN $2 = 'DISABLED' AND status <> 'DISABLED' THEN 1 ELSE 0 END
         WHERE id = $1
        RETURNING {_COLUMNS}
        """,
        user_id,
        status.value,
    )
    return None if row is None else _record(row)


async def bump_token_generation(conn: Connection, user_id: uuid.UUID) -> UserRecord | None:
    """Revoke every token issued so far to `user_id`: the generation they carry is now old."""
    row = await conn.fetchrow(
        f"""
        UPDATE users SET token_generation = token_generation + 1
         WHERE id = $1
        RETURNING {_COLUMNS}
        """,
        user_id,
    )
    return None if row is None else _record(row)


async def replace_password(
    conn: Connection, user_id: uuid.UUID, *, expected_hash: str, new_hash: str
) -> tuple[UserRecord, int] | None:
    """Compare-and-set the password of an active user and move its token generation on.

    None when the stored hash is no longer `expected_hash` (a concurrent change won) or the
    account is disabled or gone. Returns the user and the new generation.
    """
    row = await conn.fetchrow(
        f"""
        UPDATE users
           SET password_hash = $3, token_generation = token_generation + 1
         WHERE id = $1 AND password_hash = $2 AND status = 'ACTIVE'
        RETURNING {_COLUMNS}, token_generation
        """,
        user_id,
        expected_hash,
        new_hash,
    )
    return None if row is None else (_record(row), row["token_generation"])


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


async def lock_user(conn: Connection, user_id: uuid.UUID) -> UserRecord | None:
    """The user as it is now, locked FOR UPDATE until the transaction ends (so a change can
    be compared with what it replaced, e.g. for the audit log)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM users WHERE id = $1 FOR UPDATE", user_id)
    return None if row is None else _record(row)
