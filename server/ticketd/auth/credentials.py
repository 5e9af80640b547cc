"""Credentials on the wire and high-entropy secrets at rest.

`parse_authorization` reads the one `authorization` header into a `Credential` of a scheme:

    authorization: Bearer <JWT>            a signed-in user (ticketd.auth.tokens)
    authorization: Device tkd_<secret>     an enrolled gate kiosk (GateService.EnrollDevice)
    authorization: ApiKey tkp_<secret>     a partner reseller (PartnerService.CreateApiKey)

A new kind of caller adds a scheme here and a loader for it in the interceptor's table
(ticketd.app); the interceptor itself only dispatches on the scheme.

Secrets the server hands out (enrollment tokens, device credentials, API keys) are 256 random bits
behind a recognisable prefix, shown once, and stored only as HMAC-SHA-256 under a key derived
from the server's keys secret (`SecretHasher`): a copy of the database authenticates nobody,
and a lookup is one indexed equality on the hash.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from ticketd.errors import Unauthenticated

MAX_HEADER_CHARS = 4096

ENROLLMENT_PREFIX = "tke_"
DEVICE_CREDENTIAL_PREFIX = "tkd_"
API_KEY_PREFIX = "tkp_"


class Scheme(enum.StrEnum):
    """The authorization schemes the server accepts (case-insensitive on the wire)."""

    BEARER = "bearer"
    DEVICE = "device"
    API_KEY = "apikey"


@dataclass(frozen=True)
class Credential:
    """What one call presented: the scheme and its secret (never logged)."""

    scheme: Scheme
    secret: str

    def __repr__(self) -> str:
        return f"Credential({self.scheme.value}, <redacted>)"


_MALFORMED = "authorization must be 'Bearer <token>', 'Device <credential>' or 'ApiKey <secret>'"


def parse_authorization(metadata: Any) -> Credential | None:
    """The credential of `authorization` metadata; None when there is none. Raises
    UNAUTHENTICATED for two headers, an unknown scheme, or an empty or oversized value."""
    values = [v for k, v in (metadata or ()) if k == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated("send exactly one authorization header")
    value: str | bytes = values[0]
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if len(value) > MAX_HEADER_CHARS:
        raise Unauthenticated(_MALFORMED)
    scheme_text, _, secret = value.partition(" ")
    try:
        scheme = Scheme(scheme_text.lower())
    except ValueError:
        raise Unauthenticated(_MALFORMED) from None
    secret = secret.strip()
    if not secret:
        raise Unauthenticated(_MALFORMED)
    return Credential(scheme, secret)


def derive_key(secret: str, purpose: str) -> bytes:
    """A 32-byte key for one purpose from the server's keys secret (HKDF-SHA-256, RFC 5869,
    one block: expand(extract(salt=0, secret), info=purpose)). Different purposes give
    unrelated keys, so one secret serves every use without any two sharing a key."""
    prk = hmac.new(b"\0" * 32, secret.encode("utf-8"), hashlib.sha256).digest()
    return hmac.new(prk, purpose.encode("utf-8") + b"\x01", hashlib.sha256).digest()


def new_secret(prefix: str) -> str:
    """A fresh high-entropy secret (256 bits, URL-safe) behind `prefix`."""
    return prefix + secrets.token_urlsafe(32)


class SecretHasher:
    """Keyed hashes of handed-out secrets: what the database stores and looks up."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("the HMAC key must be at least 32 bytes")
        self._key = key

    def digest(self, secret: str) -> bytes:
        """HMAC-SHA-256 of `secret` (32 bytes)."""
        return hmac.new(self._key, secret.encode("utf-8"), hashlib.sha256).digest()
