"""Protobuf <-> domain conversions shared by several servicers."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from ticketd.auth.principal import Role
from ticketd.errors import InvalidArgument
from ticketd.shared import SectionKind
from ticketing.v1 import common_pb2, venue_pb2

ROLE_TO_PROTO: dict[Role, common_pb2.Role.ValueType] = {
    Role.ADMIN: common_pb2.ROLE_ADMIN,
    Role.ORGANIZER: common_pb2.ROLE_ORGANIZER,
    Role.CUSTOMER: common_pb2.ROLE_CUSTOMER,
    Role.SUPPORT: common_pb2.ROLE_SUPPORT,
    Role.ENTRY_MANAGER: common_pb2.ROLE_ENTRY_MANAGER,
}
PROTO_TO_ROLE = {v: k for k, v in ROLE_TO_PROTO.items()}

KIND_FROM_PROTO = {
    venue_pb2.SECTION_KIND_RESERVED: SectionKind.RESERVED,
    venue_pb2.SECTION_KIND_GENERAL_ADMISSION: SectionKind.GENERAL_ADMISSION,
}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items()}

# Timestamps far outside any plausible event are refused rather than stored.
_MIN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_MAX_TIME = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def timestamp(value: dt.datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(value.astimezone(dt.UTC))
    return ts


def parse_time(ts: Timestamp, field: str) -> dt.datetime:
    """A request timestamp as an aware datetime; INVALID_ARGUMENT naming `field` otherwise."""
    try:
        value = ts.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.one(field, "is not a valid timestamp") from None
    if not _MIN_TIME <= value < _MAX_TIME:
        raise InvalidArgument.one(field, "must be between 2000 and 2200")
    return value


def optional_time(message: Any, name: str, field: str | None = None) -> dt.datetime | None:
    """`message.name` parsed when it is set, else None."""
    if not message.HasField(name):
        return None
    return parse_time(getattr(message, name), field or name)


def parse_uuid(value: str, field: str) -> uuid.UUID:
    """A UUID from request text; INVALID_ARGUMENT naming `field` otherwise."""
    if not value:
        raise InvalidArgument.one(field, "is required")
    try:
        if len(value) > 64:
            raise ValueError
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.one(field, "must be a UUID") from None


def optional_uuid(value: str, field: str) -> uuid.UUID | None:
    """A UUID filter: empty means none."""
    return parse_uuid(value, field) if value else None


def time_remaining(context: Any) -> float | None:
    """Seconds left before the caller's deadline, or None when it set none."""
    try:
        value = context.time_remaining()
    except (AttributeError, RuntimeError):
        return None
    return float(value) if value is not None else None


def roles_from_proto(values: list[int], field: str = "roles") -> set[Role]:
    roles: set[Role] = set()
    for i, value in enumerate(values):
        role = PROTO_TO_ROLE.get(value)  # type: ignore[call-overload]
        if role is None:
            raise InvalidArgument.one(f"{field}[{i}]", f"{value} is not a valid role")
        roles.add(role)
    return roles
