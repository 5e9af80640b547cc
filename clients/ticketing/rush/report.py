"""The run's report: ghz-like JSON, a per-second CSV and a PNG chart.

Field reference: see the `ticketing.rush` package docstring.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from ticketing.rush.stats import Recorder, histogram_summary, latency_histogram


def time_series(recorder: Recorder) -> list[dict[str, Any]]:
    """One entry per second of the run (by completion time), warm-up seconds flagged."""
    if not recorder.seconds:
        return []
    out = []
    for second in range(max(recorder.seconds) + 1):
        bucket = recorder.seconds.get(second)
        if bucket is None:
            out.append(
                {
                    "second": second,
                    "warmup": second < recorder.warmup_s,
                    "requests": 0,
                    "ok": 0,
                    "errors": 0,
                    "tickets": 0,
                    "p50": 0,
                    "p99": 0,
                    "max": 0,
                }
            )
            continue
        hist = bucket.hist
        out.append(
            {
                "second": second,
                # A second counts as warm-up if it started before the warm-up ended.
                "warmup": second < recorder.warmup_s,
                "requests": bucket.requests,
                "ok": bucket.ok,
                "errors": bucket.errors,
                "tickets": bucket.tickets,
                "p50": hist.get_value_at_percentile(50) * 1000,
                "p99": hist.get_value_at_percentile(99) * 1000,
                "max": hist.get_max_value() * 1000,
            }
        )
    return out


def action_breakdown(recorder: Recorder) -> dict[str, Any]:
    """Per kind of request: count, ok, tickets, rps, outcome counts and latency."""
    seconds = recorder.measured_seconds()
    out: dict[str, Any] = {}
    for name, stats in sorted(recorder.actions.items()):
        summary = histogram_summary(stats.hist)
        out[name] = {
            "count": stats.count,
            "ok": stats.ok,
            "tickets": stats.tickets,
            "rps": round(stats.count / seconds, 2) if seconds else 0.0,
            "outcomes": dict(stats.codes.most_common()),
            "average": summary["average"],
            "latencyDistribution": [
                d for d in summary["latencyDistribution"] if d["percentage"] in (50, 90, 99)
            ],
        }
    return out


def build_report(recorder: Recorder, **extra: Any) -> dict[str, Any]:
    """The ghz-like core from the recorder, plus the caller's fields (options, audit...)."""
    seconds = recorder.measured_seconds()
    summary = histogram_summary(recorder.hist)
    report: dict[str, Any] = {
        "count": recorder.count,
        "total": round(seconds * 1e9),
        "average": summary["average"],
        "fastest": summary["fastest"],
        "slowest": summary["slowest"],
        "rps": round(recorder.count / seconds, 2) if seconds else 0.0,
        "okRps": round(recorder.ok / seconds, 2) if seconds else 0.0,
        "ticketsPerSecond": round(recorder.tickets / seconds, 2) if seconds else 0.0,
        "ok": recorder.ok,
        "errors": recorder.errors_total,
        "unexpectedErrors": recorder.unexpected,
        "tickets": recorder.tickets,
        "latencyDistribution": summary["latencyDistribution"],
        "histogram": latency_histogram(recorder.hist),
        "statusCodeDistribution": dict(recorder.status_codes.most_common()),
        "errorDistribution": dict(recorder.errors.most_common()),
        "reasons": dict(recorder.reasons.most_common()),
        "scanResults": dict(recorder.scan_results.most_common()),
        "actions": action_breakdown(recorder),
        "warmup": {"seconds": recorder.warmup_s, "count": recorder.warmup_count},
        "timeSeries": time_series(recorder),
    }
    report.update(extra)
    return report


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write the report as indented JSON (atomically: a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


CSV_COLUMNS = ("second", "warmup", "requests", "ok", "errors", "tickets", "p50_ms", "p99_ms")


def write_csv(report: dict[str, Any], path: Path) -> None:
    """The time series as CSV, latencies in milliseconds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for row in report["timeSeries"]:
            writer.writerow(
                [
                    row["second"],
                    int(row["warmup"]),
                    row["requests"],
                    row["ok"],
                    row["errors"],
                    row["tickets"],
                    round(row["p50"] / 1e6, 3),
                    round(row["p99"] / 1e6, 3),
                ]
            )


def write_chart(report: dict[str, Any], path: Path, title: str) -> None:
    """PNG: requests/ok/errors per second on top, p50/p99 latency (ms) below; the warm-up
    is shaded. Uses matplotlib's Agg backend, so no display is needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report["timeSeries"]
    # Each row covers [second, second + 1): draw steps, and repeat the last value to close
    # the final interval.
    xs = [row["second"] for row in series] + ([series[-1]["second"] + 1] if series else [])

    def ys(key: str, scale: float = 1.0) -> list[float]:
        values = [row[key] / scale for row in series]
        return values + values[-1:]

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    try:
        for key, label, color in (
            ("requests", "requests/s", "tab:blue"),
            ("ok", "ok/s", "tab:green"),
            ("errors", "errors/s", "tab:red"),
        ):
            top.step(xs, ys(key), where="post", label=label, color=color)
        top.set_ylabel("per second")
        top.set_ylim(bottom=0)
        top.legend(loc="upper right", fontsize="small")
        top.grid(alpha=0.3)
        bottom.step(xs, ys("p50", 1e6), where="post", label="p50", color="tab:blue")
        bottom.step(xs, ys("p99", 1e6), where="post", label="p99", color="tab:orange")
        bottom.set_ylim(bottom=0)
        bottom.set_ylabel("latency (ms)")
        bottom.set_xlabel("seconds since start (by completion)")
        bottom.legend(loc="upper right", fontsize="small")
        bottom.grid(alpha=0.3)
        warmup = float(report.get("warmup", {}).get("seconds", 0) or 0)
        if warmup > 0:
            for axis in (top, bottom):
                axis.axvspan(0, warmup, color="grey", alpha=0.15, label="_warm-up")
        fig.suptitle(title, fontsize="medium")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
