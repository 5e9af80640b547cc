"""Scan rate limits: per gate, per caller, and how many gate names one caller keeps busy.

The per-gate bucket alone is keyed on a name the client chooses, so a caller inventing a new
gate name per scan escapes it (issue 10, item 7). Three bounds, checked in this order, all in
process memory (per server process, like the per-gate bound before):

1. gate names per caller: at most `max_gates` distinct (event, gate) pairs a caller has used
   and that are still "warm" (used within the time a bucket takes to refill from empty, after
   which forgetting it loses nothing). A new name beyond that is refused TOO_MANY_GATES. This
   also bounds memory: a caller can make at most `max_gates` gate buckets live at once.
2. the caller's own bucket, whatever gate names it uses (SCAN_RATE_EXCEEDED);
3. the gate's bucket, shared by every caller scanning at that gate (SCAN_RATE_EXCEEDED).

A refused scan spends no token of a later bound; one refused by the gate bound has spent the
caller's token (an enumerating caller is slowed down by its own refusals too).
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable

from ticketd.errors import Reason, ResourceExhausted
from ticketd.ratelimit import TokenBuckets

GateKey = tuple[uuid.UUID, str]

# Callers tracked at once; beyond this the least recently seen is forgotten (they are signed-in
# accounts, so this is only a backstop).
MAX_CALLERS = 100_000


class ScanLimiter:
    """Admits or refuses one scan by caller and gate; never touches the database."""

    def __init__(
        self,
        *,
        gate_rate: float,
        gate_burst: float,
        caller_rate: float,
        caller_burst: float,
        max_gates: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_gates < 1:
            raise ValueError("max_gates must be >= 1")
        self._clock = clock
        self._gate_rate = gate_rate
        self._caller_rate = caller_rate
        self._per_gate = TokenBuckets(gate_rate, gate_burst, clock=clock)
        self._per_caller = TokenBuckets(caller_rate, caller_burst, clock=clock)
        self.max_gates = max_gates
        # A gate name is warm while its bucket may still be below full.
        self._warm_seconds = gate_burst / gate_rate
        self._gates: OrderedDict[Hashable, OrderedDict[GateKey, float]] = OrderedDict()

    def admit(self, caller: uuid.UUID, event_id: uuid.UUID, gate_id: str) -> None:
        """Return if the scan may proceed; raise RESOURCE_EXHAUSTED (with retry_after) if not."""
        now = self._clock()
        key: GateKey = (event_id, gate_id)
        warm = self._warm_gates(caller, now)
        if key not in warm and len(warm) >= self.max_gates:
            oldest = next(iter(warm.values()))
            raise ResourceExhausted(
                "this account is scanning at too many gates at once",
                reason=Reason.TOO_MANY_GATES,
                metadata={"max": str(self.max_gates)},
                retry_after=max(0.0, oldest + self._warm_seconds - now),
            )
        if not self._per_caller.try_take(caller):
            raise ResourceExhausted(
                "too many scans from this account; slow down",
                reason=Reason.SCAN_RATE_EXCEEDED,
                metadata={"limit": "caller"},
                retry_after=1.0 / self._caller_rate,
            )
        warm[key] = now
        warm.move_to_end(key)
        if not self._per_gate.try_take(key):
            raise ResourceExhausted(
                "too many scans at this gate; slow down",
                reason=Reason.SCAN_RATE_EXCEEDED,
                metadata={"limit": "gate"},
                retry_after=1.0 / self._gate_rate,
            )

    def warm_gate_count(self, caller: uuid.UUID) -> int:
        """How many gate names `caller` keeps warm now (for tests and introspection)."""
        return len(self._warm_gates(caller, self._clock()))

    def _warm_gates(self, caller: uuid.UUID, now: float) -> OrderedDict[GateKey, float]:
        warm = self._gates.get(caller)
        if warm is None:
            warm = OrderedDict()
            self._gates[caller] = warm
            if len(self._gates) > MAX_CALLERS:
                self._gates.popitem(last=False)
        else:
            self._gates.move_to_end(caller)
        # Ordered by last use: the cold ones are at the front.
        while warm:
            first_key, last_used = next(iter(warm.items()))
            if now - last_used < self._warm_seconds:
                break
            del warm[first_key]
        return warm
