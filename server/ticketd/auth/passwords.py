"""bcrypt password hashing, always in the bounded password pool (one hash costs ~0.25-0.5 s
of CPU at 12 rounds), never on the event loop or the default executor."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import bcrypt

from ticketd.auth.workpool import PasswordSlot, PasswordWorkPool
from ticketd.errors import FieldViolation

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt ignores (5.x: rejects) anything beyond 72 bytes
# The address recorded for password work the server does for itself (bootstrap admin).
LOCAL_PEER = "local"


def password_violation(password: str, field: str = "password") -> FieldViolation | None:
    """Why a new password is unacceptable, or None."""
    size = len(password.encode("utf-8"))
    if size < MIN_PASSWORD_BYTES:
        return FieldViolation(field, f"must be at least {MIN_PASSWORD_BYTES} bytes")
    if size > MAX_PASSWORD_BYTES:
        return FieldViolation(field, f"must be at most {MAX_PASSWORD_BYTES} bytes (bcrypt's limit)")
    return None


def _hash(raw: bytes, rounds: int) -> bytes:
    return bcrypt.hashpw(raw, bcrypt.gensalt(rounds))


class PasswordHasher:
    """Hashes and checks passwords in the password pool with a fixed cost.

    Every call names the caller's address (`peer`): the pool shares its workers and queue
    fairly between addresses, and refuses with AUTH_BUSY when both are full.
    """

    def __init__(self, rounds: int, pool: PasswordWorkPool) -> None:
        self._rounds = rounds
        self._pool = pool
        # A real hash of a random password: checking against it when the email is unknown
        # costs the same as a real check, so timing does not reveal which emails exist.
        self._dummy = bcrypt.hashpw(b"dummy-password-for-timing", bcrypt.gensalt(rounds))

    @property
    def pool(self) -> PasswordWorkPool:
        """The pool the hashes run in."""
        return self._pool

    def reserve(
        self, *, peer: str, background: bool = False
    ) -> AbstractAsyncContextManager[PasswordSlot]:
        """A password worker held for one `hash_in`/`verify_in` (see PasswordWorkPool.reserve)."""
        return self._pool.reserve(peer, background=background)

    async def hash_in(self, slot: PasswordSlot, password: str) -> str:
        """A new bcrypt hash of `password` (which the caller has validated), in `slot`."""
        hashed = await slot.run(_hash, password.encode("utf-8"), self._rounds)
        return hashed.decode("ascii")

    async def verify_in(self, slot: PasswordSlot, password: str, hashed: str | None) -> bool:
        """True if `password` matches, checked in `slot`; with `hashed=None` it burns the same
        time and says False."""
        raw = password.encode("utf-8")
        if len(raw) > MAX_PASSWORD_BYTES:
            # Never matches a stored hash (new ones are <= 72 bytes), costs the same.
            await slot.run(bcrypt.checkpw, raw[:MAX_PASSWORD_BYTES], self._dummy)
            return False
        target = hashed.encode("ascii") if hashed else self._dummy
        ok = await slot.run(bcrypt.checkpw, raw, target)
        return bool(ok) and hashed is not None

    async def hash(self, password: str, *, peer: str, background: bool = False) -> str:
        """Reserve a worker and hash `password` in it."""
        async with self.reserve(peer=peer, background=background) as slot:
            return await self.hash_in(slot, password)

    async def verify(
        self, password: str, hashed: str | None, *, peer: str, background: bool = False
    ) -> bool:
        """Reserve a worker and check `password` against `hashed` in it."""
        async with self.reserve(peer=peer, background=background) as slot:
            return await self.verify_in(slot, password, hashed)
