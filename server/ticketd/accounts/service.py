"""Accounts: registration, sign-in, roles. Each method is one unit of work on the database."""

from __future__ import annotations

import uuid

from ticketd.accounts import repository as repo
from ticketd.accounts.rules import (
    UserRecord,
    check_keeps_an_admin,
    clean_display_name,
    email_violation,
    normalize_email,
    validate_registration,
)
from ticketd.auth.passwords import MAX_PASSWORD_BYTES, PasswordHasher, password_violation
from ticketd.auth.principal import Principal, Role
from ticketd.auth.tokens import IssuedToken, TokenService
from ticketd.db.database import Database
from ticketd.errors import AlreadyExists, NotFound, Reason, Unauthenticated, not_found

_BAD_CREDENTIALS = "email or password is wrong"


def _user_not_found(user_id: uuid.UUID) -> NotFound:
    return not_found(Reason.USER_NOT_FOUND, "user", user_id=user_id)


class AccountService:
    """Creates accounts, signs users in, manages roles."""

    def __init__(self, db: Database, hasher: PasswordHasher, tokens: TokenService) -> None:
        self._db = db
        self._hasher = hasher
        self._tokens = tokens

    async def register(self, email: str, password: str, display_name: str) -> UserRecord:
        """A new CUSTOMER account; ALREADY_EXISTS EMAIL_TAKEN when the email is taken."""
        validate_registration(email, password, display_name)
        # Hash before taking a connection: none is held during 0.25 s of bcrypt.
        password_hash = await self._hasher.hash(password)
        async with self._db.connection() as conn:
            user = await repo.insert_user(
                conn,
                email=normalize_email(email),
                display_name=clean_display_name(display_name),
                password_hash=password_hash,
                roles={Role.CUSTOMER},
            )
        if user is None:
            raise AlreadyExists(
                "an account with this email already exists", reason=Reason.EMAIL_TAKEN
            )
        return user

    async def login(self, email: str, password: str) -> tuple[UserRecord, IssuedToken]:
        """A token for valid credentials; one UNAUTHENTICATED answer for every failure."""
        # Malformed input is refused before any lookup; these answers say nothing about
        # which accounts exist.
        if email_violation(email) is not None or not password:
            raise Unauthenticated(_BAD_CREDENTIALS, reason=Reason.BAD_CREDENTIALS)
        if len(password.encode("utf-8")) > 4 * MAX_PASSWORD_BYTES:
            raise Unauthenticated(_BAD_CREDENTIALS, reason=Reason.BAD_CREDENTIALS)
        async with self._db.connection() as conn:
            found = await repo.credentials(conn, normalize_email(email))
        # Unknown email still pays for one bcrypt check, so both failures take the same time.
        ok = await self._hasher.verify(password, found[1] if found else None)
        if not ok or found is None:
            raise Unauthenticated(_BAD_CREDENTIALS, reason=Reason.BAD_CREDENTIALS)
        return found[0], self._tokens.issue(found[0].id)

    async def principal_for(self, user_id: uuid.UUID) -> Principal | None:
        """The roles a token's user holds now; None if the user no longer exists."""
        async with self._db.connection() as conn:
            return await repo.principal(conn, user_id)

    async def get_user(self, user_id: uuid.UUID) -> UserRecord:
        async with self._db.connection() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise _user_not_found(user_id)
        return user

    async def set_roles(self, user_id: uuid.UUID, roles: set[Role]) -> UserRecord:
        """Replace a user's roles; never removes the last admin (LAST_ADMIN)."""
        async with self._db.transaction() as conn:
            if Role.ADMIN not in roles:
                check_keeps_an_admin(await repo.lock_admins(conn), user_id, roles)
            user = await repo.update_roles(conn, user_id, roles)
        if user is None:
            raise _user_not_found(user_id)
        return user

    async def list_users(
        self, *, email_prefix: str, after_email: str | None, limit: int
    ) -> list[UserRecord]:
        async with self._db.connection() as conn:
            return await repo.list_users(
                conn, email_prefix=email_prefix, after_email=after_email, limit=limit
            )

    async def user_id_by_email(self, email: str) -> uuid.UUID | None:
        """The id of the account with this email (any case), or None."""
        async with self._db.connection() as conn:
            return await repo.user_id_by_email(conn, normalize_email(email))

    async def ensure_admin(self, email: str, password: str) -> tuple[UserRecord, bool]:
        """Make sure `email` exists and holds ADMIN; returns (user, created).

        An existing account keeps its password and other roles and gains ADMIN; this runs on
        every start, so it must be idempotent.
        """
        problem = email_violation(email) or password_violation(password)
        if problem is not None:
            raise ValueError(f"TICKETING_ADMIN_{problem.field.upper()} {problem.description}")
        password_hash = await self._hasher.hash(password)
        normalized = normalize_email(email)
        async with self._db.transaction() as conn:
            created = await repo.insert_user(
                conn,
                email=normalized,
                display_name="Administrator",
                password_hash=password_hash,
                roles={Role.ADMIN},
            )
            if created is not None:
                return created, True
            user = await repo.lock_user_by_email(conn, normalized)
            assert user is not None  # the insert conflicted on this email
            if Role.ADMIN not in user.roles:
                updated = await repo.update_roles(conn, user.id, {*user.roles, Role.ADMIN})
                assert updated is not None
                user = updated
        return user, False
