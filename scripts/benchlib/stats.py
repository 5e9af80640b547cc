"""Latency statistics in one shape: nearest-rank percentiles over all samples, histograms.

`latency_summary` (from raw samples in seconds) and `summary_from_report` (from a ghz-like
report of `ticketing-rush`, nanoseconds) give the same keys, in milliseconds::

    {"mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}

with None for every figure when there were no samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SUMMARY_PERCENTILES = {"p50_ms": 50.0, "p90_ms": 90.0, "p99_ms": 99.0, "p999_ms": 99.9}
NS_PER_MS = 1e6


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..100] of an already sorted sequence (all samples are
    kept, so no interpolation); NaN for an empty one."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _empty() -> dict[str, float | None]:
    return {"mean_ms": None, **dict.fromkeys(SUMMARY_PERCENTILES), "max_ms": None}


def latency_summary(samples_s: Iterable[float]) -> dict[str, float | None]:
    """Mean, p50/p90/p99/p99.9 and max in milliseconds of latencies given in seconds."""
    ms = sorted(s * 1000 for s in samples_s)
    if not ms:
        return _empty()
    out: dict[str, float | None] = {"mean_ms": round(sum(ms) / len(ms), 2)}
    for key, q in SUMMARY_PERCENTILES.items():
        out[key] = round(percentile(ms, q), 2)
    out["max_ms"] = round(ms[-1], 2)
    return out


def latency_histogram(samples_s: Iterable[float], buckets: int = 10) -> list[dict[str, Any]]:
    """ghz's histogram: `buckets` equal-width bins from the fastest to the slowest sample,
    each `{"mark_ms": upper bound, "count", "frequency"}`."""
    ms = sorted(s * 1000 for s in samples_s)
    if not ms:
        return []
    low, high = ms[0], ms[-1]
    width = (high - low) / buckets or 1.0
    counts = [0] * buckets
    for value in ms:
        counts[min(buckets - 1, int((value - low) / width))] += 1
    return [
        {"mark_ms": round(low + (i + 1) * width, 3), "count": n, "frequency": round(n / len(ms), 6)}
        for i, n in enumerate(counts)
    ]


def _ms(ns: float) -> float:
    return round(float(ns) / NS_PER_MS, 2)


def summary_from_report(
    count: int,
    average_ns: float,
    slowest_ns: float | None,
    distribution: Iterable[Mapping[str, Any]],
) -> dict[str, float | None]:
    """The `latency_summary` shape from a ghz-like report's fields (`count`, `average`,
    `slowest`, `latencyDistribution: [{"percentage", "latency"}]`, nanoseconds); a
    percentile or maximum the report does not give is None."""
    if not count:
        return _empty()
    by_pct = {float(d["percentage"]): float(d["latency"]) for d in distribution}
    out: dict[str, float | None] = {"mean_ms": _ms(average_ns)}
    for key, q in SUMMARY_PERCENTILES.items():
        out[key] = _ms(by_pct[q]) if q in by_pct else None
    out["max_ms"] = _ms(slowest_ns) if slowest_ns is not None else None
    return out
