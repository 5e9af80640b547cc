"""Accounts: registration, sign-in, roles, lock-out. Each method is one unit of work on the
database; password work runs in the bounded password pool, never holding a connection."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from ticketd.accounts import repository as repo
from ticketd.accounts.rules import (
    UserRecord,
    UserStatus,
    check_keeps_an_admin,
    check_may_revoke_tokens,
    clean_display_name,
    email_violation,
    normalize_email,
    validate_registration,
)
from ticketd.audit import service as audit
from ticketd.auth.passwords import (
    LOCAL_PEER,
    MAX_PASSWORD_BYTES,
    PasswordHasher,
    password_violation,
)
from ticketd.auth.principal import Principal, Role
from ticketd.auth.throttle import Outcome, SignInThrottle
from ticketd.auth.tokens import IssuedToken, TokenClaims, TokenService
from ticketd.db.database import Connection, Database
from ticketd.errors import (
    Aborted,
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    Unauthenticated,
    not_found,
)

log = logging.getLogger("ticketd.accounts")

_BAD_CREDENTIALS = "email or password is wrong"
_INVALID_TOKEN = "invalid or expired access token"


def _user_not_found(user_id: uuid.UUID) -> NotFound:
    return not_found(Reason.USER_NOT_FOUND, "user", user_id=user_id)


async def _record_role_changes(
    conn: Connection,
    actor: audit.Actor,
    user_id: uuid.UUID,
    before: Iterable[Role],
    after: Iterable[Role],
) -> None:
    """One audit entry per role granted and per role revoked (none for an unchanged set)."""
    old, new = set(before), set(after)
    subject = audit.Subject.of(audit.SubjectKind.USER, user_id)
    for role in sorted(new - old):
        await audit.record(
            conn, actor, audit.Action.USER_ROLE_GRANTED, subject, details={"role": role}
        )
    for role in sorted(old - new):
        await audit.record(
            conn, actor, audit.Action.USER_ROLE_REVOKED, subject, details={"role": role}
        )


class AccountService:
    """Creates accounts, signs users in, manages roles, status and token revocation.

    `peer` arguments are the caller's address as `ticketd.edge.peer.peer_address` gives it:
    password work is throttled and shared fairly per address.
    """

    def __init__(
        self,
        db: Database,
        hasher: PasswordHasher,
        tokens: TokenService,
        throttle: SignInThrottle,
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._tokens = tokens
        self._throttle = throttle

    async def register(
        self, email: str, password: str, display_name: str, *, peer: str
    ) -> UserRecord:
        """A new CUSTOMER account; ALREADY_EXISTS EMAIL_TAKEN when the (normalised) email is
        taken; TOO_MANY_ATTEMPTS when this address registers or signs in too often."""
        with self._throttle.admit_peer(peer) as attempt:
            validate_registration(email, password, display_name)
            # Hash before taking a connection: none is held during the bcrypt work.
            password_hash = await self._hasher.hash(password, peer=peer, background=attempt.heavy)
            async with self._db.connection() as conn:
                user = await repo.insert_user(
                    conn,
                    email=normalize_email(email),
                    display_name=clean_display_name(display_name),
                    password_hash=password_hash,
                    roles={Role.CUSTOMER},
                )
            if user is None:
                # Probing which addresses have accounts backs the address off like failed
                # sign-ins do; a created account neither counts nor resets.
                attempt.finish(Outcome.FAILURE)
                raise AlreadyExists(
                    "an account with this email already exists", reason=Reason.EMAIL_TAKEN
                )
        return user

    async def login(
        self, email: str, password: str, *, peer: str
    ) -> tuple[UserRecord, IssuedToken]:
        """A token for valid credentials of an active account; one UNAUTHENTICATED answer
        for every failure; TOO_MANY_ATTEMPTS per address and, after failures, per email."""
        with self._throttle.admit_peer(peer) as attempt:
            # Malformed input is refused before any lookup; these answers say nothing about
            # which accounts exist (and count as failures of the address).
            if (
                email_violation(email) is not None
                or not password
                or len(password.encode("utf-8")) > 4 * MAX_PASSWORD_BYTES
            ):
                attempt.finish(Outcome.FAILURE)
                raise Unauthenticated(_BAD_CREDENTIALS, reason=Reason.BAD_CREDENTIALS)
            normalized = normalize_email(email)
            # Keyed by the address as typed (normalised), before the database is asked: an
            # unknown email backs off exactly like a known one.
            self._throttle.admit_email(attempt, normalized)
            # The password worker first: a Login the pool refuses costs no database work.
            async with self._hasher.reserve(peer=peer, background=attempt.heavy) as slot:
                async with self._db.connection() as conn:
                    found = await repo.credentials(conn, normalized)
                # Unknown email still pays for one bcrypt check, so both failures take the
                # same time; a disabled account answers like a wrong password (no oracle).
                ok = await self._hasher.verify_in(
                    slot, password, found.password_hash if found else None
                )
            if not ok or found is None or found.user.status is not UserStatus.ACTIVE:
                attempt.finish(Outcome.FAILURE)
                raise Unauthenticated(_BAD_CREDENTIALS, reason=Reason.BAD_CREDENTIALS)
            attempt.finish(Outcome.SUCCESS)
        return found.user, self._tokens.issue(found.user.id, found.token_generation)

    async def change_password(
        self, caller: Principal, old_password: str, new_password: str, *, peer: str
    ) -> tuple[UserRecord, IssuedToken]:
        """Replace the caller's password after checking the old one; every earlier token of
        the caller is revoked and a fresh one returned."""
        violations = []
        if not old_password:
            violations.append(FieldViolation("old_password", "is required"))
        elif len(old_password.encode("utf-8")) > MAX_PASSWORD_BYTES:
            violations.append(FieldViolation("old_password", "is not the current password"))
        problem = password_violation(new_password, "new_password")
        if problem is not None:
            violations.append(problem)
        if violations:
            raise InvalidArgument(violations)
        with self._throttle.admit_peer(peer) as attempt:
            # Guessing the old password with a stolen token must back off like Login does.
            self._throttle.admit_email(attempt, caller.email)
            async with self._hasher.reserve(peer=peer, background=attempt.heavy) as slot:
                async with self._db.connection() as conn:
                    found = await repo.credentials_by_id(conn, caller.user_id)
                if found is None:
                    raise Unauthenticated(_INVALID_TOKEN, reason=Reason.INVALID_TOKEN)
                ok = await self._hasher.verify_in(slot, old_password, found.password_hash)
            if not ok:
                attempt.finish(Outcome.FAILURE)
                raise PermissionDenied("the old password is wrong", reason=Reason.BAD_CREDENTIALS)
            attempt.finish(Outcome.SUCCESS)
        new_hash = await self._hasher.hash(new_password, peer=peer, background=attempt.heavy)
        async with self._db.transaction() as conn:
            changed = await repo.replace_password(
                conn, caller.user_id, expected_hash=found.password_hash, new_hash=new_hash
            )
            if changed is not None:
                await audit.record(
                    conn,
                    caller,
                    audit.Action.USER_PASSWORD_CHANGED,
                    audit.Subject.of(audit.SubjectKind.USER, caller.user_id),
                )
        if changed is None:
            # Another ChangePassword (or a disable) committed between our read and write.
            raise Aborted(
                "the password or account changed meanwhile; sign in again and retry",
                reason=Reason.CONCURRENCY_CONFLICT,
            )
        user, generation = changed
        return user, self._tokens.issue(user.id, generation)

    async def revoke_tokens(self, caller: Principal, user_id: uuid.UUID) -> UserRecord:
        """Every token issued to `user_id` so far is refused from the next call on."""
        check_may_revoke_tokens(caller, user_id)
        async with self._db.transaction() as conn:
            user = await repo.bump_token_generation(conn, user_id)
            if user is not None:
                await audit.record(
                    conn,
                    caller,
                    audit.Action.USER_TOKENS_REVOKED,
                    audit.Subject.of(audit.SubjectKind.USER, user_id),
                )
        if user is None:
            raise _user_not_found(user_id)
        return user

    async def set_status(self, user_id: uuid.UUID, status: UserStatus) -> UserRecord:
        """Enable or disable an account; never disables the last active admin."""
        async with self._db.transaction() as conn:
            if status is UserStatus.DISABLED:
                check_keeps_an_admin(await repo.lock_admins(conn), user_id, stays=False)
            before = await repo.lock_user(conn, user_id)
            user = await repo.update_status(conn, user_id, status)
            if before is not None and before.status is not status:
                await audit.record(
                    conn,
                    audit.current_actor(),
                    audit.Action.USER_DISABLED
                    if status is UserStatus.DISABLED
                    else audit.Action.USER_ENABLED,
                    audit.Subject.of(audit.SubjectKind.USER, user_id),
                )
        if user is None:
            raise _user_not_found(user_id)
        return user

    async def principal_for(self, claims: TokenClaims) -> Principal | None:
        """The roles a token's user holds now; None if the user no longer exists.

        The same single-row read also carries the account's status and token generation:
        a disabled account is UNAUTHENTICATED ACCOUNT_DISABLED, a token of an older
        generation (revoked) UNAUTHENTICATED INVALID_TOKEN, with no extra round trip.
        """
        async with self._db.connection() as conn:
            row = await repo.principal(conn, claims.user_id)
        if row is None:
            return None
        if row.status is not UserStatus.ACTIVE:
            raise Unauthenticated("this account is disabled", reason=Reason.ACCOUNT_DISABLED)
        if claims.generation != row.token_generation:
            raise Unauthenticated(_INVALID_TOKEN, reason=Reason.INVALID_TOKEN)
        return row.principal

    async def get_user(self, user_id: uuid.UUID) -> UserRecord:
        async with self._db.connection() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise _user_not_found(user_id)
        return user

    async def set_roles(self, user_id: uuid.UUID, roles: set[Role]) -> UserRecord:
        """Replace a user's roles; never removes the last active admin (LAST_ADMIN)."""
        async with self._db.transaction() as conn:
            if Role.ADMIN not in roles:
                check_keeps_an_admin(await repo.lock_admins(conn), user_id, stays=False)
            before = await repo.lock_user(conn, user_id)
            user = await repo.update_roles(conn, user_id, roles)
            if before is not None:
                await _record_role_changes(
                    conn, audit.current_actor(), user_id, before.roles, roles
                )
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
        """The id of the account with this email (any case or look-alike form), or None."""
        async with self._db.connection() as conn:
            return await repo.user_id_by_email(conn, normalize_email(email))

    async def ensure_admin(self, email: str, password: str) -> tuple[UserRecord, bool]:
        """Make sure `email` exists and holds ADMIN; returns (user, created).

        An existing account keeps its password, status and other roles and gains ADMIN; this
        runs on every start, so it must be idempotent. A disabled bootstrap admin stays
        disabled (an admin locked it out on purpose); the start logs a warning.
        """
        problem = email_violation(email) or password_violation(password)
        if problem is not None:
            raise ValueError(f"TICKETING_ADMIN_{problem.field.upper()} {problem.description}")
        password_hash = await self._hasher.hash(password, peer=LOCAL_PEER)
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
                await _record_role_changes(conn, audit.SYSTEM, created.id, (), created.roles)
                return created, True
            user = await repo.lock_user_by_email(conn, normalized)
            assert user is not None  # the insert conflicted on this email
            if Role.ADMIN not in user.roles:
                updated = await repo.update_roles(conn, user.id, {*user.roles, Role.ADMIN})
                assert updated is not None
                await _record_role_changes(
                    conn, audit.SYSTEM, user.id, set(user.roles), set(updated.roles)
                )
                user = updated
        if user.status is not UserStatus.ACTIVE:
            log.warning("bootstrap admin %s is disabled; enable it with SetUserStatus", user.email)
        return user, False
