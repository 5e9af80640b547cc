"""Outcome counting and HDR latency histograms for one run, overall and per second.

Latencies are recorded in microseconds (HDR histograms up to 10 minutes, 3 significant
digits overall, 2 per second and per action to keep memory flat on long runs) and reported
in nanoseconds, as ghz does.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

# Anything slower than the largest deadline a run allows is clamped here, so a stuck call is
# still counted (as "at least this slow") instead of being dropped by the histogram.
MAX_LATENCY_US = 600_000_000
PERCENTILES = (10, 25, 50, 75, 90, 95, 99, 99.9)

# Refusals that are the point of a rush (someone else got the seat first), not failures of
# the system under test. Everything else that is not OK counts as unexpected. HOLD_EXPIRED
# is the checkout's late payment whose seat someone else took after the hold ran out.
CONTENTION_REASONS = frozenset({"SEAT_UNAVAILABLE", "SEAT_LOCKED", "SOLD_OUT", "HOLD_EXPIRED"})


@dataclass(frozen=True)
class FollowUp:
    """The same simulated user's next request, `delay_s` of think time after an answer (a
    checkout: pay for the hold a moment after it was granted). The load loop sends it as a
    request of its own, timed from when it is due, so think time is never latency."""

    delay_s: float
    call: Callable[[], Awaitable[Outcome]]


@dataclass(frozen=True)
class Pause:
    """Nothing to send right now, but the scenario is not over: ask again in `seconds` (a
    checkout crowd that sees no free seat while abandoned holds are about to run out)."""

    seconds: float


@dataclass(frozen=True)
class Outcome:
    """What one request ended with.

    `code` is "OK" or a grpc.StatusCode name; `reason` the server's ErrorInfo.reason (empty
    when none); `scan_result` the ValidationResult name of a gate scan without the prefix
    (ADMITTED, ALREADY_USED, ...); `tickets` the places a successful booking bought;
    `follow_up` what the same user sends next, after think time (None: the user is done).
    """

    action: str
    code: str
    reason: str = ""
    scan_result: str = ""
    tickets: int = 0
    follow_up: FollowUp | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        """True when the RPC succeeded (a refused gate scan is still a success)."""
        return self.code == "OK"

    @property
    def error_key(self) -> str:
        """`CODE/REASON`, or `CODE` when the status carried no ErrorInfo."""
        return f"{self.code}/{self.reason}" if self.reason else self.code


def new_histogram(digits: int = 3) -> Any:
    """An HDR histogram of microseconds, 1 us .. MAX_LATENCY_US."""
    return HdrHistogram(1, MAX_LATENCY_US, digits)


def _record(hist: Any, latency_us: int) -> None:
    hist.record_value(min(max(1, latency_us), MAX_LATENCY_US))


@dataclass
class Second:
    """One second of the run (by completion time)."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    tickets: int = 0
    hist: Any = field(default_factory=lambda: new_histogram(2))


@dataclass
class ActionStats:
    """Counts and latencies of one kind of request (book_specific, scan, ...)."""

    count: int = 0
    ok: int = 0
    tickets: int = 0
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    hist: Any = field(default_factory=lambda: new_histogram(2))


class Recorder:
    """Collects every completed request of a run; warm-up requests are kept apart."""

    def __init__(self, warmup_s: float) -> None:
        self.warmup_s = warmup_s
        self.hist = new_histogram(3)
        self.seconds: dict[int, Second] = {}
        self.actions: dict[str, ActionStats] = {}
        self.status_codes: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.scan_results: collections.Counter[str] = collections.Counter()
        self.count = 0
        self.ok = 0
        self.tickets = 0
        self.unexpected = 0
        self.warmup_count = 0
        # Including the warm-up: what the live display shows.
        self.all_requests = 0
        self.all_errors = 0
        self.first_measured_s: float | None = None
        self.last_end_s = 0.0

    def record(self, outcome: Outcome, start_s: float, end_s: float, latency_us: int) -> None:
        """One completed request. `start_s` (intended send time) and `end_s` are seconds
        since the run started; requests intended to start during the warm-up only show up
        in the time series (flagged) and `warmup.count`."""
        second = self.seconds.get(int(end_s))
        if second is None:
            second = self.seconds[int(end_s)] = Second()
        self.all_requests += 1
        self.all_errors += not outcome.ok
        second.requests += 1
        second.ok += outcome.ok
        second.errors += not outcome.ok
        second.tickets += outcome.tickets
        _record(second.hist, latency_us)
        if start_s < self.warmup_s:
            self.warmup_count += 1
            return
        if self.first_measured_s is None or start_s < self.first_measured_s:
            self.first_measured_s = start_s
        self.last_end_s = max(self.last_end_s, end_s)
        self.count += 1
        self.ok += outcome.ok
        self.tickets += outcome.tickets
        _record(self.hist, latency_us)
        self.status_codes[outcome.code] += 1
        if not outcome.ok:
            self.errors[outcome.error_key] += 1
            if outcome.reason not in CONTENTION_REASONS:
                self.unexpected += 1
        if outcome.reason:
            self.reasons[outcome.reason] += 1
        if outcome.scan_result:
            self.scan_results[outcome.scan_result] += 1
        action = self.actions.get(outcome.action)
        if action is None:
            action = self.actions[outcome.action] = ActionStats()
        action.count += 1
        action.ok += outcome.ok
        action.tickets += outcome.tickets
        action.codes[outcome.error_key if not outcome.ok else "OK"] += 1
        _record(action.hist, latency_us)

    @property
    def errors_total(self) -> int:
        """Measured requests that did not end OK."""
        return self.count - self.ok

    def p99_ms(self) -> float:
        """p99 of the measured requests so far, in milliseconds (0 before any)."""
        if not self.count:
            return 0.0
        return float(self.hist.get_value_at_percentile(99)) / 1000

    def measured_seconds(self) -> float:
        """Wall time of the measured part: from the first measured send to the last reply."""
        if self.first_measured_s is None:
            return 0.0
        return max(1e-9, self.last_end_s - self.first_measured_s)


def histogram_summary(hist: Any) -> dict[str, Any]:
    """ghz-style latency fields of one histogram, in nanoseconds."""
    total = hist.get_total_count()
    if not total:
        return {"average": 0, "fastest": 0, "slowest": 0, "latencyDistribution": []}
    return {
        "average": round(hist.get_mean_value() * 1000),
        "fastest": hist.get_min_value() * 1000,
        "slowest": hist.get_max_value() * 1000,
        "latencyDistribution": [
            {"percentage": p, "latency": hist.get_value_at_percentile(p) * 1000}
            for p in PERCENTILES
        ],
    }


def latency_histogram(hist: Any, buckets: int = 10) -> list[dict[str, Any]]:
    """ghz's "histogram": `buckets` equal-width bins from fastest to slowest; each with its
    upper `mark` in seconds, `count` and `frequency` (share of all requests)."""
    total = hist.get_total_count()
    if not total:
        return []
    lo, hi = hist.get_min_value(), hist.get_max_value()
    width = max(1, (hi - lo) / buckets)
    counts = [0] * buckets
    for item in hist.get_recorded_iterator():
        index = min(buckets - 1, int((item.value_iterated_to - lo) / width))
        counts[max(0, index)] += item.count_at_value_iterated_to
    return [
        {
            "mark": round((lo + width * (i + 1)) / 1e6, 6),
            "count": n,
            "frequency": round(n / total, 6),
        }
        for i, n in enumerate(counts)
    ]
