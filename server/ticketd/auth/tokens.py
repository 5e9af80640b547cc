"""Access tokens: HS256 JWTs with the algorithm pinned and exp/iat/nbf/iss/aud verified.

Tokens carry the user id and the user's token generation (`gen`) only. Roles, status and
the current generation are read from the database on every call (one row, see
`ticketd.accounts.service.AccountService.principal_for`), so an admin who removes a role,
disables the account or revokes its tokens (the generation moves on) takes effect on the next
call, and a tampered token can at most claim a user id, which the signature check refuses.
Tokens issued before generations existed carry no `gen` and count as generation 0.
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


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: who, and which generation of their tokens."""

    user_id: uuid.UUID
    generation: int


class TokenService:
    """Issues and verifies access tokens for one secret, issuer and audience."""

    def __init__(self, secret: str, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        if len(secret.encode()) < 32:
            raise ValueError("JWT secret must be at least 32 bytes")
        self._secret = secret
        self._issuer = issuer
        self._audience = audience
        self._ttl = dt.timedelta(seconds=ttl_seconds)

    def issue(
        self, user_id: uuid.UUID, generation: int, *, now: dt.datetime | None = None
    ) -> IssuedToken:
        """A signed token for `user_id` at token `generation`, valid from now for the
        configured lifetime (or until the user's generation moves on)."""
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
            "gen": generation,
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=ALGORITHM), expires)

    def verify(self, token: str) -> TokenClaims:
        """The user and generation a valid token names; UNAUTHENTICATED for anything else,
        with no detail."""
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
            generation = claims.get("gen", 0)
            # bool is an int in Python; a JSON `true` is no generation.
            if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
                raise ValueError("bad generation")
            return TokenClaims(uuid.UUID(str(claims["sub"])), generation)
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
