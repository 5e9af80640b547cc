"""Offline admission: what a kiosk may decide without the server, and the kit it needs.

The kit (`OfflineKit`) is what `GateService.GetVerificationKeys` and `ListRevocations` give:
the event's public keys, its scan window, whether it is cancelled or refuses offline
admission, and the revocation list up to a sequence. It is kept in a file beside the journal
(0600, replaced atomically) so that a kiosk restarted while the network is down still admits.

`OfflineKit.judge` is a pure decision: a signed code (docs/offline-gates.md) is admitted
offline only when its signature verifies with a synced key of this event, its ticket and
code tag are not revoked, this kiosk has not admitted the ticket before, and the kiosk's
clock is inside both the code's window and the event's. A plain code cannot be checked
offline and is refused. This module parses the format itself rather than importing the
server: a partner's verifier can be written from the same document.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

PREFIX = "TK1."
CONTEXT = b"ticketing.v1 signed ticket\n"
HEAD_BYTES = 52
SIGNATURE_BYTES = 64


class OfflineVerdict(StrEnum):
    """How the kiosk judged a scan on its own."""

    ADMIT = "ADMIT"
    NOT_VERIFIABLE = "NOT_VERIFIABLE"  # a plain code, or no keys synced yet
    FORGED = "FORGED"  # malformed, or the signature does not verify with a known key
    WRONG_EVENT = "WRONG_EVENT"
    REVOKED = "REVOKED"
    ALREADY_ADMITTED_HERE = "ALREADY_ADMITTED_HERE"
    NOT_YET_OPEN = "NOT_YET_OPEN"
    EVENT_OVER = "EVENT_OVER"
    EVENT_CANCELLED = "EVENT_CANCELLED"
    OFFLINE_REFUSED = "OFFLINE_REFUSED"  # the event does not allow offline admission


@dataclass(frozen=True)
class SignedTicket:
    """The readable part of a signed code."""

    key_id: int
    event_id: str
    ticket_id: str
    not_before: int
    not_after: int
    code_tag: bytes
    seat: str
    signed: bytes
    signature: bytes


def parse(code: str) -> SignedTicket | None:
    """The fields of a version-1 signed code, or None when `code` is not one."""
    if not code.startswith(PREFIX):
        return None
    body = code[len(PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).decode().rstrip("=") != body:
        return None
    if len(raw) < HEAD_BYTES + SIGNATURE_BYTES or raw[0] != 1:
        return None
    seat_len = raw[51]
    if len(raw) != HEAD_BYTES + seat_len + SIGNATURE_BYTES:
        return None
    signed = raw[: HEAD_BYTES + seat_len]
    try:
        seat = signed[HEAD_BYTES:].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return SignedTicket(
        key_id=int.from_bytes(raw[1:3], "big"),
        event_id=str(uuid.UUID(bytes=raw[3:19])),
        ticket_id=str(uuid.UUID(bytes=raw[19:35])),
        not_before=int.from_bytes(raw[35:39], "big"),
        not_after=int.from_bytes(raw[39:43], "big"),
        code_tag=raw[43:51],
        seat=seat,
        signed=signed,
        signature=raw[HEAD_BYTES + seat_len :],
    )


def _verifies(ticket: SignedTicket, public_key: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(
            ticket.signature, CONTEXT + ticket.signed
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass
class OfflineKit:
    """One event's offline verification data, as last synced."""

    event_id: str
    keys: dict[int, bytes] = field(default_factory=dict)
    doors: float = 0.0
    end: float = 0.0
    cancelled: bool = False
    allowed: bool = True
    voided: set[str] = field(default_factory=set)
    reissued: set[tuple[str, str]] = field(default_factory=set)
    """(ticket id, code tag hex) of signed codes that stopped at a rotation."""
    last_sequence: int = 0
    synced: bool = False

    def judge(
        self, code: str, now: dt.datetime, admitted_here: set[str]
    ) -> tuple[OfflineVerdict, SignedTicket | None]:
        """Admit offline or say why not (see the module docstring)."""
        if not self.allowed:
            return OfflineVerdict.OFFLINE_REFUSED, None
        ticket = parse(code)
        if ticket is None:
            forged = code.startswith(PREFIX)
            return (OfflineVerdict.FORGED if forged else OfflineVerdict.NOT_VERIFIABLE), None
        if not self.synced:
            return OfflineVerdict.NOT_VERIFIABLE, ticket
        if ticket.event_id != self.event_id:
            return OfflineVerdict.WRONG_EVENT, ticket
        key = self.keys.get(ticket.key_id)
        if key is None or not _verifies(ticket, key):
            return OfflineVerdict.FORGED, ticket
        if self.cancelled:
            return OfflineVerdict.EVENT_CANCELLED, ticket
        if ticket.ticket_id in self.voided or (
            (ticket.ticket_id, ticket.code_tag.hex()) in self.reissued
        ):
            return OfflineVerdict.REVOKED, ticket
        at = now.timestamp()
        if at < max(ticket.not_before, self.doors):
            return OfflineVerdict.NOT_YET_OPEN, ticket
        if at >= min(ticket.not_after, self.end):
            return OfflineVerdict.EVENT_OVER, ticket
        if ticket.ticket_id in admitted_here:
            return OfflineVerdict.ALREADY_ADMITTED_HERE, ticket
        return OfflineVerdict.ADMIT, ticket

    def apply_keys(self, reply: Any) -> None:
        """Take a GetVerificationKeysResponse."""
        self.keys = {k.key_id: bytes(k.public_key) for k in reply.keys}
        self.doors = reply.doors_open_time.seconds + reply.doors_open_time.nanos / 1e9
        self.end = reply.end_time.seconds + reply.end_time.nanos / 1e9
        self.cancelled = reply.cancelled
        self.allowed = reply.offline_admission_allowed
        self.synced = True

    def apply_revocations(self, revocations: Any) -> None:
        """Take Revocation messages in sequence order."""
        for r in revocations:
            if r.sequence <= self.last_sequence:
                continue
            if r.code_tag:
                self.reissued.add((r.ticket_id, bytes(r.code_tag).hex()))
            else:
                self.voided.add(r.ticket_id)
            self.last_sequence = r.sequence

    def save(self, path: Path) -> None:
        """Write the kit (0600) atomically."""
        data = {
            "event_id": self.event_id,
            "keys": {str(k): v.hex() for k, v in self.keys.items()},
            "doors": self.doors,
            "end": self.end,
            "cancelled": self.cancelled,
            "allowed": self.allowed,
            "voided": sorted(self.voided),
            "reissued": sorted([t, g] for t, g in self.reissued),
            "last_sequence": self.last_sequence,
            "synced": self.synced,
        }
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path, event_id: str) -> OfflineKit:
        """The saved kit of `event_id`, or an empty (unsynced) one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("event_id") != event_id:
                return cls(event_id)
            return cls(
                event_id=event_id,
                keys={int(k): bytes.fromhex(v) for k, v in data["keys"].items()},
                doors=float(data["doors"]),
                end=float(data["end"]),
                cancelled=bool(data["cancelled"]),
                allowed=bool(data["allowed"]),
                voided=set(data["voided"]),
                reissued={(t, g) for t, g in data["reissued"]},
                last_sequence=int(data["last_sequence"]),
                synced=bool(data["synced"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return cls(event_id)
