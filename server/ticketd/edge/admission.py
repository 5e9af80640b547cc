"""Admission: how many calls of each kind may be in flight, decided in our own code.

grpc's `maximum_concurrent_rpcs` counts every call before any interceptor runs, health
checks included: 110 concurrent bcrypt Logins used to make a server refuse its own health
checks, and a balancer would then drain a server that was merely busy hashing. So the
limit lives here, where the method is known:

- health and reflection are exempt: never counted, never refused;
- password RPCs (Register, Login, ChangePassword) have their own budget, so a sign-in
  flood cannot use up the budget of bookings and scans (and the password pool behind them
  refuses fast on its own);
- everything else shares TICKETING_MAX_CONCURRENT_RPCS.

Over a budget the call is refused at once with RESOURCE_EXHAUSTED `OVERLOADED` and a
RetryInfo. grpc's own limit stays configured far above these (`Settings.grpc_hard_limit`),
as a last resort only. Counters are per process.
"""

from __future__ import annotations

import enum

from ticketd.errors import Reason, ResourceExhausted

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


class Admitted:
    """One admitted call; `release` it exactly once when the call ends."""

    __slots__ = ("_admission", "_kind")

    def __init__(self, admission: Admission | None, kind: CallClass) -> None:
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

    def __init__(self, *, general_limit: int, password_limit: int) -> None:
        if general_limit < 1 or password_limit < 1:
            raise ValueError("limits must be >= 1")
        self._limits = {CallClass.GENERAL: general_limit, CallClass.PASSWORD: password_limit}
        self._in_flight = {CallClass.GENERAL: 0, CallClass.PASSWORD: 0}

    def in_flight(self, kind: CallClass) -> int:
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

    def _release(self, kind: CallClass) -> None:
        self._in_flight[kind] -= 1
