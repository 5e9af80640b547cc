"""Sign-in throttling: per caller address a token bucket and a failure backoff, per email a
failure backoff.

- Address bucket: TICKETING_AUTH_PEER_RATE attempts/s, TICKETING_AUTH_PEER_BURST at once.
- Address backoff: once an address's last TICKETING_AUTH_PEER_BURST sign-ins all failed, it
  waits 1 s, then 2 s, 4 s ... (capped) between attempts; a success resets it. So a flood
  from one address costs its burst of password checks and then next to nothing.
- Email backoff: the same after TICKETING_LOGIN_FAILURES_PER_EMAIL failures for one email,
  from anywhere.

All are in-memory and per process (README, docs/scaling.md): N processes behind a balancer
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


class FailureBackoff:
    """Failure counts per key (an email, an address) with exponential, capped backoff; pure
    (clock injected)."""

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
        """Reserve one attempt for key `email`: None means go ahead (call `end` afterwards);
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
    """The per-address bucket and backoff and the per-email backoff: TOO_MANY_ATTEMPTS."""

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
        self._peer_failures = FailureBackoff(BackoffPolicy(threshold=peer_burst), clock=clock)
        self._emails = FailureBackoff(BackoffPolicy(threshold=failures_per_email), clock=clock)

    @property
    def emails(self) -> FailureBackoff:
        """The per-email backoff."""
        return self._emails

    @property
    def peers(self) -> FailureBackoff:
        """The per-address backoff."""
        return self._peer_failures

    def admit_peer(self, peer: str) -> SignInAttempt:
        """One attempt from address `peer`, or RESOURCE_EXHAUSTED TOO_MANY_ATTEMPTS.

        The attempt's `heavy` says the address has used more than half its burst: its
        password work should run at background priority (a person signing in now and then
        never is). Finish the attempt with its outcome; leaving its `with` block unfinished
        records NOT_TRIED.
        """
        wait = self._peer_failures.begin(peer)
        if wait is not None:
            raise ResourceExhausted(
                _PEER_MESSAGE, reason=Reason.TOO_MANY_ATTEMPTS, retry_after=round(wait, 3)
            )
        if not self._peers.try_take(peer):
            self._peer_failures.end(peer, Outcome.NOT_TRIED)
            # An empty bucket gains its next token within 1/rate seconds.
            raise ResourceExhausted(
                _PEER_MESSAGE,
                reason=Reason.TOO_MANY_ATTEMPTS,
                retry_after=round(1.0 / self._peers.rate, 3),
            )
        heavy = not self._light.try_take(peer)
        return SignInAttempt([(self._peer_failures, peer)], heavy=heavy)

    def admit_email(self, attempt: SignInAttempt, email: str) -> None:
        """Add `email` to `attempt`, or raise TOO_MANY_ATTEMPTS (the attempt is then not
        tried: its `with` block records that)."""
        wait = self._emails.begin(email)
        if wait is not None:
            raise ResourceExhausted(
                _EMAIL_MESSAGE, reason=Reason.TOO_MANY_ATTEMPTS, retry_after=round(wait, 3)
            )
        attempt.add(self._emails, email)


class SignInAttempt:
    """One reserved attempt under one or more backoffs; `finish` it once with its outcome
    (used as a context manager, an unfinished attempt ends as NOT_TRIED)."""

    def __init__(self, keys: list[tuple[FailureBackoff, str]], *, heavy: bool = False) -> None:
        self._keys = keys
        self.heavy = heavy
        self._done = False

    def add(self, backoff: FailureBackoff, key: str) -> None:
        """Record the outcome under `key` of `backoff` too (already reserved there)."""
        self._keys.append((backoff, key))

    def finish(self, outcome: Outcome) -> None:
        """Record the outcome under every key (later calls are ignored)."""
        if not self._done:
            self._done = True
            for backoff, key in self._keys:
                backoff.end(key, outcome)

    def __enter__(self) -> SignInAttempt:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish(Outcome.NOT_TRIED)
