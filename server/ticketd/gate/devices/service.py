"""Kiosk devices: create (with a one-time enrollment token), enroll, list, revoke, and the
device principal behind a credential (read on every call, so a revocation is effective on
the device's next call)."""

from __future__ import annotations

import datetime as dt
import uuid

from ticketd.audit import service as audit
from ticketd.auth.credentials import (
    DEVICE_CREDENTIAL_PREFIX,
    ENROLLMENT_PREFIX,
    SecretHasher,
    new_secret,
)
from ticketd.auth.principal import DeviceScope, Principal, PrincipalKind
from ticketd.db.database import Database
from ticketd.errors import PermissionDenied, Reason, not_found
from ticketd.gate.devices import repository as repo
from ticketd.gate.devices.rules import (
    DeviceRecord,
    device_revoked,
    enrollment_refused,
    validate_device_input,
)
from ticketd.gate.rules import check_may_manage_gates
from ticketd.shared import event_not_found


class DeviceService:
    """Devices of events' gates; secrets in and out only at create and enroll."""

    def __init__(self, db: Database, *, hasher: SecretHasher, enroll_ttl: dt.timedelta) -> None:
        self._db = db
        self._hasher = hasher
        self._ttl = enroll_ttl

    async def create(
        self, principal: Principal, event_id: uuid.UUID, gate_id: str, display_name: str
    ) -> tuple[DeviceRecord, str, dt.datetime]:
        """(device, enrollment token shown once, now)."""
        gate, name = validate_device_input(gate_id, display_name)
        token = new_secret(ENROLLMENT_PREFIX)
        async with self._db.transaction() as conn:
            owner = await repo.event_owner(conn, event_id)
            if owner is None:
                raise event_not_found(event_id)
            check_may_manage_gates(principal, owner)
            device = await repo.insert_device(
                conn,
                event_id=event_id,
                gate_id=gate,
                display_name=name,
                created_by=principal.user_id,
                enrollment_hash=self._hasher.digest(token),
                ttl=self._ttl,
            )
            await audit.record(
                conn,
                principal,
                audit.Action.DEVICE_CREATED,
                audit.Subject.of(audit.SubjectKind.DEVICE, device.id),
                event_id=event_id,
                details={"gate_id": gate},
            )
            now = await repo.clock(conn)
        return device, token, now

    async def enroll(self, token: str) -> tuple[DeviceRecord, str, dt.datetime]:
        """(device, credential shown once, now); one refusal for every bad token."""
        token = token.strip()
        if not token.startswith(ENROLLMENT_PREFIX):
            raise enrollment_refused()
        credential = new_secret(DEVICE_CREDENTIAL_PREFIX)
        async with self._db.transaction() as conn:
            device = await repo.enroll(
                conn, self._hasher.digest(token), self._hasher.digest(credential)
            )
            if device is None:
                raise enrollment_refused()
            # The enrollment token is the credential: the device itself is the actor.
            await audit.record(
                conn,
                audit.Actor(audit.ActorKind.DEVICE, device.id),
                audit.Action.DEVICE_ENROLLED,
                audit.Subject.of(audit.SubjectKind.DEVICE, device.id),
                event_id=device.event_id,
                details={"gate_id": device.gate_id},
            )
            now = await repo.clock(conn)
        return device, credential, now

    async def principal_for(self, credential: str) -> Principal | None:
        """The device principal of a credential; None if unknown; DEVICE_REVOKED if revoked."""
        if not credential.startswith(DEVICE_CREDENTIAL_PREFIX):
            return None
        async with self._db.connection() as conn:
            device = await repo.by_credential(conn, self._hasher.digest(credential))
        if device is None:
            return None
        if device.revoke_time is not None:
            raise device_revoked()
        return Principal(
            user_id=device.id,
            email="",
            roles=frozenset(),
            kind=PrincipalKind.DEVICE,
            device=DeviceScope(event_id=device.event_id, gate_id=device.gate_id),
        )

    async def list(
        self,
        principal: Principal,
        event_id: uuid.UUID,
        after: tuple[dt.datetime, uuid.UUID] | None,
        limit: int,
    ) -> tuple[list[DeviceRecord], dt.datetime]:
        async with self._db.connection() as conn:
            owner = await repo.event_owner(conn, event_id)
            if owner is None:
                raise event_not_found(event_id)
            check_may_manage_gates(principal, owner)
            return await repo.list_devices(conn, event_id, after, limit), await repo.clock(conn)

    async def revoke(
        self, principal: Principal, device_id: uuid.UUID
    ) -> tuple[DeviceRecord, dt.datetime]:
        """Revoke (idempotent); the event's owner or ADMIN. Someone else's device is
        NOT_FOUND, so device ids of other organizers' events are not confirmed."""
        async with self._db.transaction() as conn:
            device = await repo.device(conn, device_id, lock=True)
            owner = await repo.event_owner(conn, device.event_id) if device else None
            if device is None or owner is None:
                raise not_found(Reason.DEVICE_NOT_FOUND, "device", device_id=device_id)
            try:
                check_may_manage_gates(principal, owner)
            except PermissionDenied:
                raise not_found(Reason.DEVICE_NOT_FOUND, "device", device_id=device_id) from None
            await repo.revoke(conn, device_id, principal.user_id)
            if device.revoke_time is None:
                await audit.record(
                    conn,
                    principal,
                    audit.Action.DEVICE_REVOKED,
                    audit.Subject.of(audit.SubjectKind.DEVICE, device_id),
                    event_id=device.event_id,
                    details={"gate_id": device.gate_id},
                )
            after = await repo.device(conn, device_id)
            now = await repo.clock(conn)
        assert after is not None
        return after, now
