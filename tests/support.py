"""Helpers shared by tests: real stubs, rich error details, account set-up."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from ticketing.v1 import auth_pb2, auth_pb2_grpc, common_pb2

PASSWORD = "correct horse battery"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def unique_email(tag: str = "user") -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}@example.test"


@dataclass
class ErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str | None
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]
    precondition_violations: list[tuple[str, str, str]]


def error_details(err: aio.AioRpcError) -> ErrorDetails:
    """Decode google.rpc.Status details from an aio call error."""
    reason: str | None = None
    metadata: dict[str, str] = {}
    fields: list[tuple[str, str]] = []
    pre: list[tuple[str, str, str]] = []
    for key, value in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for any_msg in status.details:
            if any_msg.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                any_msg.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
                assert info.domain == "ticketing.v1"
            elif any_msg.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                any_msg.Unpack(bad)
                fields += [(v.field, v.description) for v in bad.field_violations]
            elif any_msg.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                pf = error_details_pb2.PreconditionFailure()
                any_msg.Unpack(pf)
                pre += [(v.type, v.subject, v.description) for v in pf.violations]
    return ErrorDetails(err.code(), err.details() or "", reason, metadata, fields, pre)


@dataclass
class Account:
    user: common_pb2.User
    token: str
    email: str
    password: str

    @property
    def md(self) -> tuple[tuple[str, str], ...]:
        return bearer(self.token)


class Stubs:
    """Typed stubs over one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(channel)

    async def register(self, tag: str = "user", password: str = PASSWORD) -> Account:
        email = unique_email(tag)
        reg = await self.auth.Register(
            auth_pb2.RegisterRequest(email=email, password=password, display_name=tag.title())
        )
        login = await self.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
        return Account(reg.user, login.access_token, email, password)

    async def account_with_roles(self, admin: Account, *roles: Any, tag: str = "user") -> Account:
        acct = await self.register(tag)
        resp = await self.auth.SetUserRoles(
            auth_pb2.SetUserRolesRequest(user_id=acct.user.id, roles=list(roles)),
            metadata=admin.md,
        )
        acct.user = resp.user
        return acct
