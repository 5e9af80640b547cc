"""A short, revocation-safe cache of the principal behind each credential (issue 16).

Without it every authenticated call reads its caller from PostgreSQL first (the user's roles,
status and token generation; the API key and its partner; the device): one pooled connection
and one round trip before the call's own work. With it a credential seen in the last
`ttl` seconds is answered from memory, and stays correct because:

- **The database announces every change a principal depends on.** Triggers (migration 0017)
  NOTIFY `ticketing_auth_changes` when a user's roles, status or token generation change, a
  key or device is revoked, or a partner is suspended or its budgets change. PostgreSQL
  delivers the notification to every listening session at the writer's commit, so every
  ticketd process, every `--workers` worker and every other instance on the database, drops
  its whole cache then. Drop-everything is deliberate: such writes are rare, and nothing
  has to work out which entries a change touches.
- **The writer's own process never waits for it.** The edge calls `invalidate()` after any
  call of a method that changes credentials succeeds (`AUTH_CHANGING_METHODS`), before its
  answer is sent, and then `barrier()`: a notification of its own on the listening
  connection, awaited. Notifications arrive in commit order, so once the barrier is back
  the change's own notification has been handled here, and PostgreSQL has handed it to every
  other listening session too.
- **A lookup that raced a change is never stored.** `epoch()` is taken before the database
  read; `put` stores only if no invalidation happened since. A read that saw the old state
  either lands before the invalidation (and is dropped by it) or after (and is refused).
- **No listener, no cache.** Entries are served only while the listening connection is up;
  when it drops the cache is cleared and bypassed until it is back (notifications sent
  meanwhile would be lost). The TTL bounds how long an entry lives even so.
- **Refusals are never cached**: a revoked, suspended, unknown or disabled credential is
  read from the database on each call.

Multi-process: each process has its own cache and its own listening connection (one more
PostgreSQL connection per process, outside the pool); correctness across processes rests on
the NOTIFY at commit, not on anything shared between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import asyncpg

from ticketd.auth.principal import Principal

log = logging.getLogger("ticketd.auth.cache")

CHANNEL = "ticketing_auth_changes"

# Calls after which the caller's own process drops its cache before answering (the trigger's
# NOTIFY reaches the others, and this one too, at commit; this makes it certain here).
AUTH_CHANGING_METHODS = frozenset(
    {
        "/ticketing.v1.AuthService/SetUserRoles",
        "/ticketing.v1.AuthService/ChangePassword",
        "/ticketing.v1.AuthService/RevokeTokens",
        "/ticketing.v1.AuthService/SetUserStatus",
        "/ticketing.v1.GateService/RevokeDevice",
        "/ticketing.v1.PartnerService/SetPartnerStatus",
        "/ticketing.v1.PartnerService/UpdatePartner",
        "/ticketing.v1.PartnerService/RevokeApiKey",
    }
)

# How long an idle process waits before trying to LISTEN again after losing the connection.
_RECONNECT_SECONDS = 1.0
_BARRIER_SECONDS = 0.5


class PrincipalCache:
    """Principals by credential, valid while the process LISTENs for auth changes."""

    def __init__(
        self,
        url: str | None,
        *,
        ttl: float = 2.0,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`url` of the database to LISTEN on (None, or `ttl` <= 0: the cache is off and
        every call reads the database, as before)."""
        self._url = url
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._entries: dict[Hashable, tuple[float, Principal]] = {}
        self._epoch = 0
        self._conn: Any = None
        self._live = False
        self._connecting: asyncio.Task[None] | None = None
        self._next_attempt = 0.0
        self._barriers: dict[str, asyncio.Event] = {}
        # One statement at a time on the listening connection (asyncpg refuses a second
        # while one runs): concurrent writers' barriers take turns.
        self._barrier_lock = asyncio.Lock()
        # Credentials are keyed by a keyed hash with a per-process key: the dict never holds
        # a usable secret, and nothing outside this process can predict its keys.
        self._salt = secrets.token_bytes(32)
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._url is not None and self._ttl > 0

    @property
    def live(self) -> bool:
        """Whether entries are being served (the listening connection is up)."""
        return self._live

    def key(self, scheme: str, secret: str) -> bytes:
        """The cache key of one presented secret of `scheme`."""
        return hashlib.blake2b(
            f"{scheme}\0{secret}".encode(), key=self._salt, digest_size=20
        ).digest()

    @staticmethod
    def user_key(user_id: uuid.UUID, generation: int) -> tuple[str, uuid.UUID, int]:
        """The key of a signed-in user's tokens of one generation (all of them share it:
        the token itself is verified on every call, the cache only replaces the row read)."""
        return ("user", user_id, generation)

    def epoch(self) -> int:
        """Take before the database read whose result may be `put`."""
        return self._epoch

    def get(self, key: Hashable) -> Principal | None:
        """The cached principal, or None (miss, expired, or not listening)."""
        if not self._live:
            self._ensure_listening()
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        expires, principal = entry
        if expires <= self._clock():
            del self._entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return principal

    def put(self, key: Hashable, principal: Principal, epoch: int) -> None:
        """Store a principal read from the database after `epoch()` returned `epoch`;
        ignored if anything was invalidated since (the read may predate the change)."""
        if not self._live or epoch != self._epoch:
            return
        if len(self._entries) >= self._max:
            # Bounded memory; a full clear is rare and costs only re-reads.
            self._entries.clear()
        self._entries[key] = (self._clock() + self._ttl, principal)

    def invalidate(self) -> None:
        """Drop every entry, and refuse every fill that started before now."""
        self._epoch += 1
        self._entries.clear()

    def start(self) -> None:
        """Start listening in the background, without delaying the server's start (its
        database may not answer yet): until it listens, and after a failure (logged, and
        retried on later calls), every call reads the database."""
        self._next_attempt = 0.0
        self._ensure_listening()

    async def barrier(self) -> None:
        """Wait (bounded) until this process has handled every auth change committed before
        now: a notification of our own, sent after them, comes back after them."""
        async with self._barrier_lock:
            conn = self._conn
            if not self._live or conn is None:
                return
            token = secrets.token_hex(8)
            done = asyncio.Event()
            self._barriers[token] = done
            try:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, "barrier:" + token)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), _BARRIER_SECONDS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("auth cache barrier failed (%s); cache off until it listens", exc)
                self._lost(conn)
            finally:
                self._barriers.pop(token, None)

    async def close(self) -> None:
        """Stop listening (server shutdown); the cache stays off from then on."""
        self._live = False
        self._url = None
        self.invalidate()
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connecting
            self._connecting = None
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    def _ensure_listening(self) -> None:
        if not self.enabled or self._connecting is not None:
            return
        now = self._clock()
        if now < self._next_attempt:
            return
        self._next_attempt = now + _RECONNECT_SECONDS
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._connecting = loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            conn = await asyncpg.connect(
                self._url, timeout=3, server_settings={"application_name": "ticketd-auth-cache"}
            )
            conn.add_termination_listener(self._lost)
            await conn.add_listener(CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            log.warning("auth cache cannot LISTEN (%s); every call reads the database", exc)
        else:
            self._conn = conn
            # Anything committed before LISTEN took effect was never announced to us.
            self.invalidate()
            self._live = True
        finally:
            self._connecting = None

    def _notified(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if payload.startswith("barrier:"):
            done = self._barriers.get(payload.removeprefix("barrier:"))
            if done is not None:
                done.set()
            return
        self.invalidate()

    def _lost(self, conn: Any) -> None:
        if conn is not self._conn:
            return
        self._live = False
        self._conn = None
        self.invalidate()
        with contextlib.suppress(Exception):
            conn.terminate()
