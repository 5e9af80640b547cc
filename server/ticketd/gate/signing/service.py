"""Signing keys, signed codes derived on read, verification, the revocation list.

Private keys never leave this service: they are sealed at rest (AES-256-GCM under a key
derived from TICKETING_KEYS_SECRET) and opened into a bounded in-process cache when a code
is signed. No RPC returns one.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from ticketd.audit import service as audit
from ticketd.auth.principal import Principal
from ticketd.db.database import Connection, Database
from ticketd.gate.rules import check_may_manage_gates, check_may_sync
from ticketd.gate.signing import repository as repo
from ticketd.gate.signing import rules
from ticketd.shared import ScanWindowDefaults, event_not_found

__all__ = ["KeyRow", "RevocationRow", "SigningService", "VerificationKeys", "VerifiedCode"]

KeyRow = repo.KeyRow
RevocationRow = repo.RevocationRow

_CACHE_KEYS = 1024


@dataclass(frozen=True)
class VerificationKeys:
    """GetVerificationKeys' answer."""

    keys: list[repo.KeyRow]
    gate: repo.EventGate


@dataclass(frozen=True)
class VerifiedCode:
    """A signed code whose signature checks with a key that still verifies."""

    fields: rules.SignedFields


class SigningService:
    """Per-event Ed25519 keys and everything signed with them."""

    def __init__(self, db: Database, *, kek: bytes, window: ScanWindowDefaults) -> None:
        self._db = db
        self._kek = kek
        self._window = window
        self._private: OrderedDict[tuple[uuid.UUID, int], Ed25519PrivateKey] = OrderedDict()

    async def _gate(
        self, conn: Connection, principal: Principal, event_id: uuid.UUID
    ) -> repo.EventGate:
        gate = await repo.event_gate(conn, event_id, principal.user_id, self._window)
        if gate is None:
            raise event_not_found(event_id)
        return gate

    def _open(self, event_id: uuid.UUID, key: repo.KeyRow) -> Ed25519PrivateKey:
        cached = self._private.get((event_id, key.key_id))
        if cached is not None:
            self._private.move_to_end((event_id, key.key_id))
            return cached
        raw = rules.unseal(self._kek, event_id, key.key_id, key.sealed_private)
        private = Ed25519PrivateKey.from_private_bytes(raw)
        self._private[(event_id, key.key_id)] = private
        if len(self._private) > _CACHE_KEYS:
            self._private.popitem(last=False)
        return private

    async def _new_key(self, conn: Connection, event_id: uuid.UUID) -> repo.KeyRow:
        """A new signing key (caller holds the event lock and retired the previous one)."""
        key_id = await repo.next_key_id(conn, event_id)
        private = Ed25519PrivateKey.generate()
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        sealed = rules.seal(self._kek, event_id, key_id, raw)
        return await repo.insert_key(conn, event_id, key_id, public, sealed)

    async def _signing_key(self, event_id: uuid.UUID) -> repo.KeyRow:
        """The event's signing key, made on first need (under the event lock, so two first
        callers make one key between them)."""
        async with self._db.connection() as conn:
            key = await repo.active_key(conn, event_id)
        if key is not None:
            return key
        async with self._db.transaction() as conn:
            if not await repo.lock_event(conn, event_id):
                raise event_not_found(event_id)
            key = await repo.active_key(conn, event_id)
            return key if key is not None else await self._new_key(conn, event_id)

    async def signed_codes_for_order(self, order_id: uuid.UUID) -> dict[uuid.UUID, str]:
        """The signed code of each VALID ticket of the order, by ticket id (derived now from
        stored data: the same inputs always give the same text)."""
        async with self._db.connection() as conn:
            tickets = await repo.valid_tickets_of_order(conn, order_id)
            if not tickets:
                return {}
            event_id = tickets[0].event_id
            window = await repo.event_gate(conn, event_id, uuid.UUID(int=0), self._window)
        if window is None:  # pragma: no cover - tickets reference their event
            return {}
        key = await self._signing_key(event_id)
        private = self._open(event_id, key)
        not_before, not_after = rules.window_seconds(window.doors, window.end)
        out: dict[uuid.UUID, str] = {}
        for t in tickets:
            seat = t.seat_label or (str(t.seat_number) if t.seat_number else None)
            fields = rules.SignedFields(
                key_id=key.key_id,
                event_id=event_id,
                ticket_id=t.ticket_id,
                not_before=not_before,
                not_after=not_after,
                code_tag=t.code_tag,
                seat=rules.seat_text(t.section_name, t.row_label, seat),
            )
            signature = private.sign(rules.CONTEXT + rules.payload_bytes(fields))
            out[t.ticket_id] = rules.encode(fields, signature)
        return out

    async def verify(self, conn: Connection, code: str) -> VerifiedCode | None:
        """The fields of a signed code whose signature verifies with a key of its event that
        has not been withdrawn; None for anything else (malformed, forged, unknown key)."""
        decoded = rules.decode(code)
        if decoded is None:
            return None
        public = await repo.verifying_key(conn, decoded.fields.event_id, decoded.fields.key_id)
        if public is None or not rules.verify(decoded, public):
            return None
        return VerifiedCode(decoded.fields)

    async def verification_keys(
        self, principal: Principal, event_id: uuid.UUID
    ) -> VerificationKeys:
        """GetVerificationKeys (see check_may_sync for who)."""
        async with self._db.connection() as conn:
            gate = await self._gate(conn, principal, event_id)
        check_may_sync(principal, event_id, gate.is_staff)
        await self._signing_key(event_id)
        async with self._db.connection() as conn:
            keys = await repo.verifying_keys(conn, event_id)
            gate = await self._gate(conn, principal, event_id)
        return VerificationKeys(keys, gate)

    async def revocations(
        self, principal: Principal, event_id: uuid.UUID, after: int, limit: int
    ) -> tuple[list[repo.RevocationRow], int]:
        """A page of ListRevocations and the event's newest sequence."""
        async with self._db.connection() as conn:
            gate = await self._gate(conn, principal, event_id)
            check_may_sync(principal, event_id, gate.is_staff)
            rows = await repo.revocations_after(conn, event_id, after, limit)
        return rows, max(gate.last_revocation, rows[-1].sequence if rows else 0)

    async def rotate(
        self, principal: Principal, event_id: uuid.UUID, *, withdraw_previous: bool
    ) -> tuple[repo.KeyRow, int, dt.datetime]:
        """RotateSigningKey: (new key, keys withdrawn, when the key expires)."""
        async with self._db.transaction() as conn:
            gate = await self._gate(conn, principal, event_id)
            check_may_manage_gates(principal, gate.organizer_id)
            await repo.lock_event(conn, event_id)
            withdrawn = await repo.retire_keys(conn, event_id, withdraw=withdraw_previous)
            key = await self._new_key(conn, event_id)
            await audit.record(
                conn,
                principal,
                audit.Action.SIGNING_KEY_ROTATED,
                audit.Subject.of(audit.SubjectKind.SIGNING_KEY, key.key_id),
                event_id=event_id,
                details={"withdrawn_keys": withdrawn, "withdraw_previous": withdraw_previous},
            )
        return key, withdrawn, gate.end

    async def set_offline_admission(
        self, principal: Principal, event_id: uuid.UUID, allowed: bool
    ) -> bool:
        """SetOfflineAdmission: the event's owner or ADMIN."""
        async with self._db.transaction() as conn:
            gate = await self._gate(conn, principal, event_id)
            check_may_manage_gates(principal, gate.organizer_id)
            await repo.set_offline_admission(conn, event_id, allowed)
            await audit.record(
                conn,
                principal,
                audit.Action.EVENT_OFFLINE_ADMISSION_SET,
                audit.Subject.of(audit.SubjectKind.EVENT, event_id),
                event_id=event_id,
                details={"allowed": allowed},
            )
        return allowed
