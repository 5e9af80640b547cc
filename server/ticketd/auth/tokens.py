"""Access tokens: HS256 JWTs with the algorithm pinned and exp/iat/nbf/iss/aud verified.

Tokens carry the user id only. Roles are read from the database on every call (see the
interceptor), so an admin who removes a role takes it away at once, and a tampered token can
at most claim a user id, which the signature check refuses.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt

from ticketd.errors import Reason, Unauthenticated

ALGORITHM = "HS256"
_INVALID = "invalid or expired access token"


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expire_time: dt.datetime


class TokenService:
    """Issues and verifies access tokens for one secret, issuer and audience."""

    def __init__(self, secret: str, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("JWT secret must be at least 32 bytes")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    def issue(self, user_id: uuid.UUID, *, now: dt.datetime | None = None) -> IssuedToken:
        """A signed token for `user_id`, valid from now for the configured lifetime."""
        issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
        expires = issued + self._ttl
        claims = {
            "sub": str(user_id),
            "iss": self._issuer,
            "aud": self._audience,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": secrets.token_urlsafe(12),
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires)

    def verify(self, token: str) -> uuid.UUID:
        """The user id a valid token names; UNAUTHENTICATED for anything else, with no detail."""
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "nbf", "iss", "aud", "sub"]},
                leeway=5,
            )
            return uuid.UUID(str(claims["sub"]))
        except (jwt.PyJWTError, ValueError, TypeError, KeyError):
            raise Unauthenticated(_INVALID, reason=Reason.INVALID_TOKEN) from None


def load_or_create_secret(data_dir: Path, name: str = "jwt_secret") -> str:
    """The development secret kept in `data_dir/<name>` (0600), made once at random.

    Used only when TICKETING_JWT_SECRET (or, for `keys_secret`, TICKETING_KEYS_SECRET) is not
    set, so secrets survive restarts in development without ever falling back to a fixed
    string.
    """
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = data_dir / name
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_text(encoding="ascii").strip()
        if len(secret) < 32:
            raise ValueError(f"{path} holds a secret shorter than 32 bytes; delete it") from None
        return secret
    secret = secrets.token_urlsafe(48)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secret + "\n")
    return secret
