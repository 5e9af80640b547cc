"""AuthService: protobuf <-> domain for accounts; no SQL here."""

from __future__ import annotations

from typing import Any

from ticketd.accounts import repository as repo
from ticketd.accounts.repository import UserRecord
from ticketd.accounts.rules import (
    clean_display_name,
    email_violation,
    normalize_email,
    validate_registration,
)
from ticketd.auth.passwords import MAX_PASSWORD_BYTES, PasswordHasher
from ticketd.auth.principal import Role, current_principal
from ticketd.auth.tokens import TokenService
from ticketd.convert import ROLE_TO_PROTO, parse_uuid, roles_from_proto, timestamp
from ticketd.db.engine import Database
from ticketd.errors import InvalidArgument, Unauthenticated
from ticketd.pagination import PageTokens, resolve_page_size
from ticketing.v1 import auth_pb2, auth_pb2_grpc, common_pb2

_BAD_CREDENTIALS = "email or password is wrong"


def user_to_proto(user: UserRecord) -> common_pb2.User:
    return common_pb2.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        roles=[ROLE_TO_PROTO[r] for r in user.roles],
        create_time=timestamp(user.create_time),
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Implements ticketing.v1.AuthService; access rules are in ticketd.auth.policy."""

    def __init__(
        self, db: Database, hasher: PasswordHasher, tokens: TokenService, pages: PageTokens
    ) -> None:
        self._db = db
        self._hasher = hasher
        self._tokens = tokens
        self._pages = pages

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Any
    ) -> auth_pb2.RegisterResponse:
        validate_registration(request.email, request.password, request.display_name)
        # Hash before opening a transaction: no connection is held during 0.25 s of bcrypt.
        password_hash = await self._hasher.hash(request.password)
        async with self._db.session() as session, session.begin():
            user = await repo.create_user(
                session,
                email=normalize_email(request.email),
                display_name=clean_display_name(request.display_name),
                password_hash=password_hash,
                roles={Role.CUSTOMER},
            )
        return auth_pb2.RegisterResponse(user=user_to_proto(user))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        # Malformed input is refused before any lookup; these answers say nothing about
        # which accounts exist.
        if email_violation(request.email) is not None or not request.password:
            raise Unauthenticated(_BAD_CREDENTIALS, reason="BAD_CREDENTIALS")
        if len(request.password.encode("utf-8")) > 4 * MAX_PASSWORD_BYTES:
            raise Unauthenticated(_BAD_CREDENTIALS, reason="BAD_CREDENTIALS")
        async with self._db.session() as session:
            found = await repo.get_credentials(session, normalize_email(request.email))
        # Unknown email still pays for one bcrypt check, so both failures take the same time.
        ok = await self._hasher.verify(request.password, found[1] if found else None)
        if not ok or found is None:
            raise Unauthenticated(_BAD_CREDENTIALS, reason="BAD_CREDENTIALS")
        user = found[0]
        issued = self._tokens.issue(user.id)
        return auth_pb2.LoginResponse(
            access_token=issued.token,
            expire_time=timestamp(issued.expire_time),
            user=user_to_proto(user),
        )

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Any
    ) -> auth_pb2.GetCurrentUserResponse:
        principal = current_principal()
        async with self._db.session() as session:
            user = await repo.get_user(session, principal.user_id)
        return auth_pb2.GetCurrentUserResponse(user=user_to_proto(user))

    async def SetUserRoles(
        self, request: auth_pb2.SetUserRolesRequest, context: Any
    ) -> auth_pb2.SetUserRolesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        roles = roles_from_proto(list(request.roles))
        if not roles:
            raise InvalidArgument.one("roles", "at least one role is required")
        async with self._db.session() as session, session.begin():
            user = await repo.set_roles(session, user_id, roles)
        return auth_pb2.SetUserRolesResponse(user=user_to_proto(user))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Any
    ) -> auth_pb2.ListUsersResponse:
        size = resolve_page_size(request.page_size)
        prefix = request.email_prefix.strip().lower()
        if len(prefix) > 254:
            raise InvalidArgument.one("email_prefix", "must be at most 254 characters")
        query = {"email_prefix": prefix}
        after = self._pages.decode("users", query, request.page_token)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument.one("page_token", "is not a valid page token for this listing")
        async with self._db.session() as session:
            users = await repo.list_users(
                session, email_prefix=prefix, after_email=after, limit=size + 1
            )
        next_token = ""
        if len(users) > size:
            users = users[:size]
            next_token = self._pages.encode("users", query, users[-1].email)
        return auth_pb2.ListUsersResponse(
            users=[user_to_proto(u) for u in users], next_page_token=next_token
        )
