"""Admission: how many calls of each kind may be in flight, decided in our own code.

grpc's `maximum_concurrent_rpcs` counts every call before any interceptor runs, health
checks included: 110 concurrent bcrypt Logins used to make a server refuse its own health
checks, and a balancer would then drain a server that was merely busy hashing. So the
limit lives here, where the method is known:

- health and reflection are exempt: never counted, never refused;
- password RPCs (Register, Login, ChangePassword) have their own budget, so a sign-in
  flood cannot use up the budget of bookings and scans (and the password pool behind them
  refuses fast on its own);
- everything else shares TICKETING_MAX_CONCURRENT_RPCS;
- a partner's API key calls (issue 13) also count against that partner's own budget: calls
  in flight (TICKETING_PARTNER_MAX_CONCURRENT_RPCS) and a token-bucket rate
  (TICKETING_PARTNER_RATE / _BURST, ticketd.ratelimit), each overridable per partner, so
  one partner's burst cannot starve the others or the public. Refused with
  RESOURCE_EXHAUSTED `PARTNER_BUDGET_EXCEEDED` and a RetryInfo.

Over a budget the call is refused at once with RESOURCE_EXHAUSTED `OVERLOADED` and a
RetryInfo. grpc's own limit stays configured far above these (`Settings.grpc_hard_limit`),
as a last resort only. Counters are per process.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Hashable
from dataclasses import dataclass

from ticketd.errors import Reason, ResourceExhausted
from ticketd.ratelimit import TokenBuckets

_EXEMPT_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
PASSWORD_METHODS = frozenset(
    {
        "/ticketing.v1.AuthService/Register",
        "/ticketing.v1.AuthService/Login",
        "/ticketing.v1.AuthService/ChangePassword",
    }
)
# What a refused caller is told to wait: long enough for a burst to drain, short enough
# that a retrying client does not notice.
_RETRY_AFTER_SECONDS = 0.2


class CallClass(enum.Enum):
    """Which budget a method's calls count against."""

    EXEMPT = "exempt"
    PASSWORD = "password"
    GENERAL = "general"


def classify(method: str) -> CallClass:
    """The budget of a full method name such as `/ticketing.v1.AuthService/Login`."""
    if method.startswith(_EXEMPT_PREFIXES):
        return CallClass.EXEMPT
    if method in PASSWORD_METHODS:
        return CallClass.PASSWORD
    return CallClass.GENERAL


@dataclass(frozen=True)
class CallerBudgets:
    """Default budgets of one kind of keyed caller (partners); each caller may override."""

    max_in_flight: int = 50
    rate: float = 100.0
    burst: float = 200.0
    max_streams: int = 10


class Admitted:
    """One admitted call; `release` it exactly once when the call ends."""

    __slots__ = ("_admission", "_kind")

    def __init__(self, admission: Admission | None, kind: CallClass | Hashable) -> None:
        self._admission = admission
        self._kind = kind

    def release(self) -> None:
        """Give the call's place back (later calls are ignored)."""
        if self._admission is not None:
            self._admission._release(self._kind)
            self._admission = None


_EXEMPT = Admitted(None, CallClass.EXEMPT)


class Admission:
    """In-flight counters per call class with fixed limits."""

    def __init__(
        self,
        *,
        general_limit: int,
        password_limit: int,
        partners: CallerBudgets | None = None,
    ) -> None:
        if general_limit < 1 or password_limit < 1:
            raise ValueError("limits must be >= 1")
        self._limits: dict[CallClass | Hashable, int] = {
            CallClass.GENERAL: general_limit,
            CallClass.PASSWORD: password_limit,
        }
        self._in_flight: dict[CallClass | Hashable, int] = {
            CallClass.GENERAL: 0,
            CallClass.PASSWORD: 0,
        }
        self._partners = partners or CallerBudgets()
        self._partner_rates = TokenBuckets(self._partners.rate, self._partners.burst)

    def in_flight(self, kind: CallClass | Hashable) -> int:
        """Calls of `kind` admitted and not yet released."""
        return self._in_flight.get(kind, 0)

    def enter(self, method: str) -> Admitted:
        """Admit one call of `method` or raise RESOURCE_EXHAUSTED OVERLOADED."""
        kind = classify(method)
        if kind is CallClass.EXEMPT:
            return _EXEMPT
        if self._in_flight[kind] >= self._limits[kind]:
            what = "sign-in" if kind is CallClass.PASSWORD else "concurrent"
            raise ResourceExhausted(
                f"the server has too many {what} calls in flight; retry shortly",
                reason=Reason.OVERLOADED,
                metadata={"limit": str(self._limits[kind])},
                retry_after=_RETRY_AFTER_SECONDS,
            )
        self._in_flight[kind] += 1
        return Admitted(self, kind)

    def enter_partner(
        self,
        partner_id: uuid.UUID,
        *,
        max_in_flight: int | None = None,
        rate: float | None = None,
    ) -> Admitted:
        """Admit one call of a partner against its own budgets (after its key is known),
        or raise RESOURCE_EXHAUSTED PARTNER_BUDGET_EXCEEDED. The in-flight place is taken
        before the rate token, so a call refused for concurrency costs no token."""
        key = ("partner", partner_id)
        limit = max_in_flight or self._partners.max_in_flight
        in_flight = self._in_flight.get(key, 0)
        if in_flight >= limit:
            raise _partner_refusal(partner_id, "concurrency", limit, _RETRY_AFTER_SECONDS)
        self._take_partner_token(partner_id, rate)
        self._in_flight[key] = in_flight + 1
        return Admitted(self, key)

    def enter_partner_stream(self, partner_id: uuid.UUID, *, rate: float | None = None) -> Admitted:
        """Admit one server stream of a partner: at most `max_streams` open at once per
        partner (a stream lives long, so it is counted apart from calls in flight, which it
        would otherwise hold for its whole life), and one token of the partner's rate to open
        it, so a client reconnecting in a loop is held to the rate like any call. Raises
        RESOURCE_EXHAUSTED PARTNER_BUDGET_EXCEEDED (budget `streams` or `rate`)."""
        key = ("partner-streams", partner_id)
        limit = self._partners.max_streams
        open_streams = self._in_flight.get(key, 0)
        if open_streams >= limit:
            raise _partner_refusal(partner_id, "streams", limit, _RETRY_AFTER_SECONDS)
        self._take_partner_token(partner_id, rate)
        self._in_flight[key] = open_streams + 1
        return Admitted(self, key)

    def _take_partner_token(self, partner_id: uuid.UUID, rate: float | None) -> None:
        """One token of the partner's rate bucket, or the `rate` refusal."""
        # A partner's own rate gets a burst in the same proportion as the default's.
        burst = None
        if rate is not None:
            burst = max(1.0, rate * self._partners.burst / self._partners.rate)
        if not self._partner_rates.try_take(("partner", partner_id), rate=rate, burst=burst):
            per_second = rate or self._partners.rate
            raise _partner_refusal(partner_id, "rate", per_second, 1.0 / per_second)

    def _release(self, kind: CallClass | Hashable) -> None:
        left = self._in_flight[kind] - 1
        if left or isinstance(kind, CallClass):
            self._in_flight[kind] = left
        else:
            # Keyed counters exist only while a call is in flight: memory stays bounded.
            del self._in_flight[kind]


def _partner_refusal(
    partner_id: uuid.UUID, budget: str, limit: float, retry_after: float
) -> ResourceExhausted:
    return ResourceExhausted(
        f"this partner's {budget} budget is used up; retry shortly",
        reason=Reason.PARTNER_BUDGET_EXCEEDED,
        metadata={"partner_id": str(partner_id), "budget": budget, "limit": f"{limit:g}"},
        retry_after=max(retry_after, 0.05),
    )
