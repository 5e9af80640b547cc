"""bcrypt password hashing, always off the event loop (one hash costs ~0.25 s at 12 rounds)."""

from __future__ import annotations

import asyncio

import bcrypt

from ticketd.errors import FieldViolation

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (5.x: rejects) anything beyond 72 bytes


def password_violation(password: str, field: str = "password") -> FieldViolation | None:
    """Why a new password is unacceptable, or None."""
    size = len(password.encode("utf-8"))
    if size < MIN_PASSWORD_BYTES:
        return FieldViolation(field, f"must be at least {MIN_PASSWORD_BYTES} bytes")
    if size > MAX_PASSWORD_BYTES:
        return FieldViolation(field, f"must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return None


class PasswordHasher:
    """Hashes and checks passwords in a worker thread with a fixed cost."""

    def __init__(self, rounds: int) -> None:
        self._rounds = rounds
        # A real hash of a random password: checking against it when the email is unknown
        # costs the same as a real check, so timing does not reveal which emails exist.
        self._dummy = bcrypt.hashpw(b"dummy-password-for-timing", bcrypt.gensalt(rounds))

    async def hash(self, password: str) -> str:
        raw = password.encode("utf-8")
        hashed = await asyncio.to_thread(bcrypt.hashpw, raw, bcrypt.gensalt(self._rounds))
        return hashed.decode("ascii")

    async def verify(self, password: str, hashed: str | None) -> bool:
        """True if `password` matches; with `hashed=None` burns the same time and says False."""
        raw = password.encode("utf-8")
        if len(raw) > MAX_PASSWORD_BYTES:
            raw = raw[:MAX_PASSWORD_BYTES]  # never matches a stored hash: new ones are <= 72
            hashed_bytes = self._dummy
            await asyncio.to_thread(bcrypt.checkpw, raw, hashed_bytes)
            return False
        target = hashed.encode("ascii") if hashed else self._dummy
        ok = await asyncio.to_thread(bcrypt.checkpw, raw, target)
        return ok and hashed is not None
