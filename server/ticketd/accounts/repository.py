"""All SQL for users."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

import asyncpg
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from ticketd.auth.principal import Principal, Role
from ticketd.db.models import User
from ticketd.errors import AlreadyExists, FailedPrecondition, NotFound


@dataclass(frozen=True)
class UserRecord:
    id: uuid.UUID
    email: str
    display_name: str
    roles: tuple[Role, ...]
    create_time: dt.datetime


def _record(user: User) -> UserRecord:
    return UserRecord(
        id=user.id,
        email=user.email,
        display_name=user.display_name,
        roles=tuple(sorted((Role(r) for r in user.roles), key=_ROLE_ORDER.index)),
        create_time=user.create_time,
    )


_ROLE_ORDER = [Role.ADMIN, Role.ORGANIZER, Role.CUSTOMER, Role.SUPPORT, Role.ENTRY_MANAGER]


def sort_roles(roles: set[Role] | frozenset[Role]) -> list[str]:
    return [r.value for r in _ROLE_ORDER if r in roles]


async def create_user(
    session: AsyncSession, *, email: str, display_name: str, password_hash: str, roles: set[Role]
) -> UserRecord:
    """Insert a user; ALREADY_EXISTS when the (lower-cased) email is taken.

    ON CONFLICT DO NOTHING rather than catching the unique violation: two concurrent
    registrations of one email then resolve inside PostgreSQL without an aborted transaction.
    """
    stmt = (
        insert(User)
        .values(
            email=email,
            display_name=display_name,
            password_hash=password_hash,
            roles=sort_roles(roles),
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User)
    )
    user = (await session.execute(stmt)).scalar_one_or_none()
    if user is None:
        raise AlreadyExists("an account with this email already exists", reason="EMAIL_TAKEN")
    return _record(user)


async def get_credentials(session: AsyncSession, email: str) -> tuple[UserRecord, str] | None:
    """The user and password hash for a lower-cased email, or None."""
    user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
    if user is None:
        return None
    return _record(user), user.password_hash


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> UserRecord:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound("no such user", reason="USER_NOT_FOUND", metadata={"user_id": str(user_id)})
    return _record(user)


async def load_principal(conn: asyncpg.Connection, user_id: uuid.UUID) -> Principal | None:
    """The caller's current roles, read fresh on every RPC (tokens carry no roles).

    Runs on every authenticated call, so it is one prepared statement on the raw driver.
    """
    row = await conn.fetchrow("SELECT email, roles FROM users WHERE id = $1", user_id)
    if row is None:
        return None
    return Principal(
        user_id=user_id, email=row["email"], roles=frozenset(Role(r) for r in row["roles"])
    )


async def set_roles(session: AsyncSession, user_id: uuid.UUID, roles: set[Role]) -> UserRecord:
    """Replace a user's roles; FAILED_PRECONDITION rather than leave the system without an
    admin. The admins are locked in id order, so two admins demoting each other at once
    take turns and the second sees the first's change."""
    if Role.ADMIN not in roles:
        admins = list(
            (
                await session.execute(
                    select(User.id)
                    .where(text("'ADMIN' = ANY(roles)"))
                    .order_by(User.id)
                    .with_for_update()
                )
            ).scalars()
        )
        if admins == [user_id]:
            raise FailedPrecondition(
                "this is the last admin; make someone else an admin first",
                reason="LAST_ADMIN",
            )
    stmt = update(User).where(User.id == user_id).values(roles=sort_roles(roles)).returning(User)
    user = (await session.execute(stmt)).scalar_one_or_none()
    if user is None:
        raise NotFound("no such user", reason="USER_NOT_FOUND", metadata={"user_id": str(user_id)})
    return _record(user)


async def list_users(
    session: AsyncSession, *, email_prefix: str, after_email: str | None, limit: int
) -> list[UserRecord]:
    """Users ordered by email (unique), after `after_email`, optionally by email prefix."""
    stmt = select(User).order_by(User.email).limit(limit)
    if email_prefix:
        escaped = email_prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        stmt = stmt.where(User.email.like(escaped + "%", escape="\\"))
    if after_email is not None:
        stmt = stmt.where(User.email > after_email)
    return [_record(u) for u in (await session.execute(stmt)).scalars()]


async def ensure_admin(
    session: AsyncSession, *, email: str, password_hash: str
) -> tuple[UserRecord, bool]:
    """Make sure `email` exists and holds ADMIN; returns (user, created).

    An existing account keeps its password and other roles and gains ADMIN; this runs on
    every start, so it must be idempotent.
    """
    stmt = (
        insert(User)
        .values(
            email=email,
            display_name="Administrator",
            password_hash=password_hash,
            roles=[Role.ADMIN.value],
        )
        .on_conflict_do_nothing(index_elements=[User.email])
        .returning(User)
    )
    created = (await session.execute(stmt)).scalar_one_or_none()
    if created is not None:
        return _record(created), True
    user = (
        await session.execute(select(User).where(User.email == email).with_for_update())
    ).scalar_one()
    if Role.ADMIN.value not in user.roles:
        user.roles = sort_roles({Role(r) for r in user.roles} | {Role.ADMIN})
        await session.flush()
    return _record(user), False
