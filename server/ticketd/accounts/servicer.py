"""AuthService: protobuf <-> accounts domain; no SQL here."""

from __future__ import annotations

from typing import Any

from ticketd.accounts.rules import UserRecord, UserStatus, normalize_email_prefix
from ticketd.accounts.service import AccountService
from ticketd.auth.principal import current_principal
from ticketd.edge.convert import ROLE_TO_PROTO, parse_uuid, roles_from_proto, timestamp
from ticketd.edge.peer import context_peer
from ticketd.errors import InvalidArgument
from ticketd.pagination import PageTokens, resolve_page_size
from ticketing.v1 import auth_pb2, auth_pb2_grpc, common_pb2

STATUS_TO_PROTO: dict[UserStatus, common_pb2.UserStatus.ValueType] = {
    UserStatus.ACTIVE: common_pb2.USER_STATUS_ACTIVE,
    UserStatus.DISABLED: common_pb2.USER_STATUS_DISABLED,
}
STATUS_FROM_PROTO = {v: k for k, v in STATUS_TO_PROTO.items()}


def user_to_proto(user: UserRecord) -> common_pb2.User:
    return common_pb2.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        roles=[ROLE_TO_PROTO[r] for r in user.roles],
        create_time=timestamp(user.create_time),
        status=STATUS_TO_PROTO[user.status],
    )


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    """Implements ticketing.v1.AuthService; access rules are in ticketd.auth.policy."""

    def __init__(self, accounts: AccountService, pages: PageTokens) -> None:
        self._accounts = accounts
        self._pages = pages

    async def Register(
        self, request: auth_pb2.RegisterRequest, context: Any
    ) -> auth_pb2.RegisterResponse:
        user = await self._accounts.register(
            request.email, request.password, request.display_name, peer=context_peer(context)
        )
        return auth_pb2.RegisterResponse(user=user_to_proto(user))

    async def Login(self, request: auth_pb2.LoginRequest, context: Any) -> auth_pb2.LoginResponse:
        user, issued = await self._accounts.login(
            request.email, request.password, peer=context_peer(context)
        )
        return auth_pb2.LoginResponse(
            access_token=issued.token,
            expire_time=timestamp(issued.expire_time),
            user=user_to_proto(user),
        )

    async def ChangePassword(
        self, request: auth_pb2.ChangePasswordRequest, context: Any
    ) -> auth_pb2.ChangePasswordResponse:
        user, issued = await self._accounts.change_password(
            current_principal(),
            request.old_password,
            request.new_password,
            peer=context_peer(context),
        )
        return auth_pb2.ChangePasswordResponse(
            access_token=issued.token,
            expire_time=timestamp(issued.expire_time),
            user=user_to_proto(user),
        )

    async def RevokeTokens(
        self, request: auth_pb2.RevokeTokensRequest, context: Any
    ) -> auth_pb2.RevokeTokensResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        user = await self._accounts.revoke_tokens(current_principal(), user_id)
        return auth_pb2.RevokeTokensResponse(user=user_to_proto(user))

    async def SetUserStatus(
        self, request: auth_pb2.SetUserStatusRequest, context: Any
    ) -> auth_pb2.SetUserStatusResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        status = STATUS_FROM_PROTO.get(request.status)
        if status is None:
            raise InvalidArgument.one(
                "status", "must be USER_STATUS_ACTIVE or USER_STATUS_DISABLED"
            )
        user = await self._accounts.set_status(user_id, status)
        return auth_pb2.SetUserStatusResponse(user=user_to_proto(user))

    async def GetCurrentUser(
        self, request: auth_pb2.GetCurrentUserRequest, context: Any
    ) -> auth_pb2.GetCurrentUserResponse:
        user = await self._accounts.get_user(current_principal().user_id)
        return auth_pb2.GetCurrentUserResponse(user=user_to_proto(user))

    async def SetUserRoles(
        self, request: auth_pb2.SetUserRolesRequest, context: Any
    ) -> auth_pb2.SetUserRolesResponse:
        user_id = parse_uuid(request.user_id, "user_id")
        roles = roles_from_proto(list(request.roles))
        if not roles:
            raise InvalidArgument.one("roles", "at least one role is required")
        user = await self._accounts.set_roles(user_id, roles)
        return auth_pb2.SetUserRolesResponse(user=user_to_proto(user))

    async def ListUsers(
        self, request: auth_pb2.ListUsersRequest, context: Any
    ) -> auth_pb2.ListUsersResponse:
        size = resolve_page_size(request.page_size)
        if len(request.email_prefix) > 254:
            raise InvalidArgument.one("email_prefix", "must be at most 254 characters")
        # Stored emails are normalised; the prefix is too, so "ALICE" and a fullwidth
        # "alice" find the same accounts.
        prefix = normalize_email_prefix(request.email_prefix)
        if len(prefix) > 254:
            raise InvalidArgument.one("email_prefix", "must be at most 254 characters")
        query = {"email_prefix": prefix}
        after = self._pages.decode("users", query, request.page_token)
        if after is not None and not isinstance(after, str):
            raise InvalidArgument.one("page_token", "is not a valid page token for this listing")
        rows = await self._accounts.list_users(
            email_prefix=prefix, after_email=after, limit=size + 1
        )
        users, token = self._pages.page(
            "users", query, rows, size, user_to_proto, lambda u: u.email
        )
        return auth_pb2.ListUsersResponse(users=users, next_page_token=token)
