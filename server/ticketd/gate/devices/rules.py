"""Pure rules of kiosk devices: their input, their state, what a device record says."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

from ticketd.errors import FieldViolation, InvalidArgument, Reason, Unauthenticated
from ticketd.gate.rules import MAX_GATE_CHARS

MAX_DEVICE_NAME = 100


class DeviceState(StrEnum):
    PENDING = "PENDING"
    ENROLLED = "ENROLLED"
    EXPIRED = "EXPIRED"
    REVOKED = "REVOKED"


@dataclass(frozen=True)
class DeviceRecord:
    id: uuid.UUID
    event_id: uuid.UUID
    gate_id: str
    display_name: str
    created_by: uuid.UUID
    create_time: dt.datetime
    enrollment_expire_time: dt.datetime
    enroll_time: dt.datetime | None
    revoke_time: dt.datetime | None

    def state(self, now: dt.datetime) -> DeviceState:
        """Revoked wins; then enrolled; an unused token is pending until it expires."""
        if self.revoke_time is not None:
            return DeviceState.REVOKED
        if self.enroll_time is not None:
            return DeviceState.ENROLLED
        return DeviceState.PENDING if now < self.enrollment_expire_time else DeviceState.EXPIRED


def validate_device_input(gate_id: str, display_name: str) -> tuple[str, str]:
    """Trimmed gate and name; INVALID_ARGUMENT naming each bad field."""
    gate, name = gate_id.strip(), display_name.strip()
    out: list[FieldViolation] = []
    if not gate or len(gate) > MAX_GATE_CHARS or not gate.isprintable():
        out.append(FieldViolation("gate_id", f"1..{MAX_GATE_CHARS} printable characters"))
    if not name or len(name) > MAX_DEVICE_NAME or not name.isprintable():
        out.append(FieldViolation("display_name", f"1..{MAX_DEVICE_NAME} printable characters"))
    if out:
        raise InvalidArgument(out)
    return gate, name


def enrollment_refused() -> Unauthenticated:
    """One answer for an unknown, used, expired or revoked enrollment token."""
    return Unauthenticated(
        "this enrollment token is unknown, used, expired or revoked; create a new device",
        reason=Reason.ENROLLMENT_TOKEN_INVALID,
    )


def device_revoked() -> Unauthenticated:
    return Unauthenticated(
        "this kiosk device was revoked; enroll it again with a new device",
        reason=Reason.DEVICE_REVOKED,
    )
