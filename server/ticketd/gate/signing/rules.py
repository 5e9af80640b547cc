"""The signed ticket code (format version 1) and the sealing of private keys. Pure: no I/O.

A signed code is `TK1.` + URL-safe base64 (no padding) of, big-endian:

    offset size  field
    0      1     version (1)
    1      2     key id (per event, 1..65535)
    3      16    event id (UUID bytes)
    19     16    ticket id (UUID bytes)
    35     4     not before: first second of the scan window (unix seconds, rounded up)
    39     4     not after: end of the scan window, exclusive (unix seconds, rounded down)
    43     8     code tag: SQL ticket_code_tag(plain code) (a rotation changes it)
    51     1     n, length of the seat text in bytes (0..64)
    52     n     seat text, UTF-8 ("Stalls/A/12", or the section for general admission)
    52+n   64    Ed25519 signature of CONTEXT + bytes [0, 52+n)

`.` is not in the base64url alphabet, so a signed code is never mistaken for a plain code
(which is base64url itself). Ed25519 signatures are deterministic, so the same ticket, key
and window always give the same text: codes are derived on read, never stored. The window is
rounded inwards to whole seconds, so an offline check is never more lenient than the
server's `gate_window`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import math
import os
import struct
import uuid
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SIGNED_PREFIX = "TK1."
VERSION = 1
CONTEXT = b"ticketing.v1 signed ticket\n"
"""Signed before the payload: a signature made for anything else never verifies here."""
MAX_SEAT_BYTES = 64
TAG_BYTES = 8
SIGNATURE_BYTES = 64
_HEAD = struct.Struct(">BH16s16sII8sB")
MAX_SIGNED_CHARS = len(SIGNED_PREFIX) + math.ceil(
    (_HEAD.size + MAX_SEAT_BYTES + SIGNATURE_BYTES) * 4 / 3
)
SEALED_BYTES = 12 + 32 + 16  # nonce, private key, GCM tag


@dataclass(frozen=True)
class SignedFields:
    """What a signed code says."""

    key_id: int
    event_id: uuid.UUID
    ticket_id: uuid.UUID
    not_before: int
    not_after: int
    code_tag: bytes
    seat: str


@dataclass(frozen=True)
class SignedCode:
    """A decoded signed code: its fields, the bytes the signature covers, the signature."""

    fields: SignedFields
    signed: bytes
    signature: bytes


def is_signed_form(code: str) -> bool:
    """True when `code` is meant as a signed code (whether or not it is a valid one)."""
    return code.startswith(SIGNED_PREFIX)


def seat_text(section: str, row: str | None, seat: str | None) -> str:
    """The seat text a code carries, cut to MAX_SEAT_BYTES on a character boundary."""
    text = "/".join(p for p in (section, row or "", seat or "") if p) if row else section
    raw = text.encode("utf-8")
    if len(raw) <= MAX_SEAT_BYTES:
        return text
    return raw[:MAX_SEAT_BYTES].decode("utf-8", errors="ignore")


def window_seconds(doors: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """(not_before, not_after) of a scan window [doors, end), rounded inwards."""
    return math.ceil(doors.timestamp()), math.floor(end.timestamp())


def payload_bytes(f: SignedFields) -> bytes:
    """The signed part of a code (without CONTEXT, without the signature)."""
    seat = f.seat.encode("utf-8")
    if len(seat) > MAX_SEAT_BYTES or len(f.code_tag) != TAG_BYTES:
        raise ValueError("seat text or code tag out of range")
    head = _HEAD.pack(
        VERSION,
        f.key_id,
        f.event_id.bytes,
        f.ticket_id.bytes,
        f.not_before,
        f.not_after,
        f.code_tag,
        len(seat),
    )
    return head + seat


def encode(f: SignedFields, signature: bytes) -> str:
    """The code text for fields and their signature (over CONTEXT + payload_bytes(f))."""
    raw = payload_bytes(f) + signature
    return SIGNED_PREFIX + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode(code: str) -> SignedCode | None:
    """The parts of a signed code, or None when it is not a well-formed version-1 code."""
    if not is_signed_form(code) or len(code) > MAX_SIGNED_CHARS:
        return None
    body = code[len(SIGNED_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    # Only the canonical text: any edit of the characters is a different, refused code.
    if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != body:
        return None
    if len(raw) < _HEAD.size + SIGNATURE_BYTES:
        return None
    version, key_id, event, ticket, nb, na, tag, n = _HEAD.unpack_from(raw)
    if version != VERSION or len(raw) != _HEAD.size + n + SIGNATURE_BYTES or n > MAX_SEAT_BYTES:
        return None
    signed = raw[: _HEAD.size + n]
    try:
        seat = signed[_HEAD.size :].decode("utf-8")
    except UnicodeDecodeError:
        return None
    fields = SignedFields(
        key_id, uuid.UUID(bytes=event), uuid.UUID(bytes=ticket), nb, na, tag, seat
    )
    return SignedCode(fields, signed, raw[_HEAD.size + n :])


def verify(code: SignedCode, public_key: bytes) -> bool:
    """Whether `public_key` (raw Ed25519, 32 bytes) made the code's signature."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(code.signature, CONTEXT + code.signed)
    except (InvalidSignature, ValueError):
        return False
    return True


def _aad(event_id: uuid.UUID, key_id: int) -> bytes:
    # Binds a sealed key to its row: a sealed key copied to another event or id fails to open.
    return event_id.bytes + key_id.to_bytes(2, "big")


def seal(kek: bytes, event_id: uuid.UUID, key_id: int, private_raw: bytes) -> bytes:
    """nonce || AES-256-GCM(private key) under `kek`, bound to (event, key id)."""
    nonce = os.urandom(12)
    return nonce + AESGCM(kek).encrypt(nonce, private_raw, _aad(event_id, key_id))


def unseal(kek: bytes, event_id: uuid.UUID, key_id: int, sealed: bytes) -> bytes:
    """The raw private key; ValueError if `kek` is not the one it was sealed with."""
    try:
        return AESGCM(kek).decrypt(sealed[:12], sealed[12:], _aad(event_id, key_id))
    except InvalidTag:
        raise ValueError(
            f"signing key {key_id} of event {event_id} does not open with this "
            "TICKETING_KEYS_SECRET"
        ) from None
