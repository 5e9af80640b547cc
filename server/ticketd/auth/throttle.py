"""Sign-in throttling: a token bucket per caller address and a backoff per email.

Both are in-memory and per process (README, docs/scaling.md): N processes behind a balancer
allow N times the rates. They bound what one address, or many addresses aiming at one email,
can make the server do; the bcrypt pool (`ticketd.auth.workpool`) bounds the total.

The per-email state is keyed by the normalised email as typed, whether or not an account has
it, and is consulted before the database: an unknown and a known email answer alike, so the
backoff itself says nothing about which accounts exist.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ticketd.errors import Reason, ResourceExhausted
from ticketd.ratelimit import TokenBuckets

_PEER_MESSAGE = "too many sign-in attempts from your address; retry later"
_EMAIL_MESSAGE = "too many failed sign-ins for this email address; retry later"


@dataclass(frozen=True)
class BackoffPolicy:
    """When failed sign-ins of one email start to cost waiting time.

    After `threshold` failures, each further failure blocks the email for `base` seconds,
    doubling per failure up to `cap`. A success resets; so does `forget_after` seconds
    without a failure.
    """

    threshold: int
    base: float = 1.0
    cap: float = 300.0
    forget_after: float = 900.0

    def delay(self, failures: int) -> float:
        """Seconds an email is blocked right after its `failures`-th consecutive failure."""
        if failures < self.threshold:
            return 0.0
        exponent = min(failures - self.threshold, 32)  # 2**32 s is past any cap
        return min(self.cap, self.base * 2.0**exponent)

    def allowance(self, failures: int) -> int:
        """Attempts that may be in flight at once: the failures left before the threshold,
        and one at a time beyond it, so a parallel burst cannot outrun the backoff."""
        return max(1, self.threshold - failures)


class Outcome(enum.Enum):
    """How a sign-in attempt ended, as the backoff needs to know."""

    SUCCESS = "success"
    FAILURE = "failure"
    NOT_TRIED = "not_tried"
    """Refused before the password was checked (pool busy, database error...)."""


@dataclass
class _EmailState:
    failures: int = 0
    pending: int = 0
    blocked_until: float = 0.0
    last_failure: float = 0.0


class EmailBackoff:
    """Per-email failure counts with exponential, capped backoff; pure (clock injected)."""

    def __init__(
        self,
        policy: BackoffPolicy,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self._max_keys = max_keys
        self._clock = clock
        self._states: OrderedDict[str, _EmailState] = OrderedDict()

    def begin(self, email: str) -> float | None:
        """Reserve one attempt for `email`: None means go ahead (call `end` afterwards);
        a number is the seconds to wait before trying again."""
        now = self._clock()
        state = self._states.get(email)
        if (
            state is not None
            and state.pending == 0
            and now - state.last_failure > self.policy.forget_after
        ):
            del self._states[email]
            state = None
        if state is None:
            state = _EmailState()
            self._states[email] = state
            if len(self._states) > self._max_keys:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(email)
            if now < state.blocked_until:
                return state.blocked_until - now
            if state.pending >= self.policy.allowance(state.failures):
                # Others are being checked right now: about one hash from now.
                return self.policy.base
        state.pending += 1
        return None

    def end(self, email: str, outcome: Outcome) -> None:
        """Record how a reserved attempt ended."""
        state = self._states.get(email)
        if state is None:
            return  # evicted meanwhile (bounded memory): nothing to record
        state.pending = max(0, state.pending - 1)
        if outcome is Outcome.SUCCESS:
            state.failures = 0
            state.blocked_until = 0.0
        elif outcome is Outcome.FAILURE:
            now = self._clock()
            state.failures += 1
            state.last_failure = now
            delay = self.policy.delay(state.failures)
            if delay:
                state.blocked_until = max(state.blocked_until, now + delay)
        if state.pending == 0 and state.failures == 0:
            del self._states[email]

    def failures(self, email: str) -> int:
        """Consecutive failures recorded for `email` (for tests and diagnostics)."""
        state = self._states.get(email)
        return state.failures if state else 0


class SignInThrottle:
    """The per-address bucket and the per-email backoff, raising TOO_MANY_ATTEMPTS."""

    def __init__(
        self,
        *,
        peer_rate: float,
        peer_burst: int,
        failures_per_email: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._peers = TokenBuckets(peer_rate, peer_burst, clock=clock)
        # The same rate with half the burst: an address that fails to take from it has used
        # more than half its burst recently, and its password work runs in the background.
        self._light = TokenBuckets(peer_rate, max(1.0, peer_burst / 2), clock=clock)
        self._emails = EmailBackoff(BackoffPolicy(threshold=failures_per_email), clock=clock)

    @property
    def emails(self) -> EmailBackoff:
        """The per-email backoff."""
        return self._emails

    def admit_peer(self, peer: str) -> bool:
        """Take one attempt from `peer`'s bucket or raise RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS.

        Returns True when the address is a heavy user (more than half its burst used): its
        password work should run at background priority. A person signing in now and then
        never is.
        """
        if not self._peers.try_take(peer):
            # An empty bucket gains its next token within 1/rate seconds.
            raise ResourceExhausted(
                _PEER_MESSAGE,
                reason=Reason.TOO_MANY_ATTEMPTS,
                retry_after=round(1.0 / self._peers.rate, 3),
            )
        return not self._light.try_take(peer)

    def begin_email(self, email: str) -> EmailAttempt:
        """Reserve a sign-in attempt for `email` or raise TOO_MANY_ATTEMPTS with RetryInfo."""
        wait = self._emails.begin(email)
        if wait is not None:
            raise ResourceExhausted(
                _EMAIL_MESSAGE, reason=Reason.TOO_MANY_ATTEMPTS, retry_after=round(wait, 3)
            )
        return EmailAttempt(self._emails, email)


class EmailAttempt:
    """One reserved attempt; `finish` it exactly once (a context manager does it on error)."""

    def __init__(self, backoff: EmailBackoff, email: str) -> None:
        self._backoff = backoff
        self._email = email
        self._done = False

    def finish(self, outcome: Outcome) -> None:
        """Record the outcome (later calls are ignored)."""
        if not self._done:
            self._done = True
            self._backoff.end(self._email, outcome)

    def __enter__(self) -> EmailAttempt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(Outcome.NOT_TRIED)
