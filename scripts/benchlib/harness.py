"""`ticketing-rush` (the load harness in clients/ticketing/rush) run as its own process.

The harness does the set-up, the load, its ghz-like JSON report and the invariant audit;
this module starts it, measures the CPU of every group while it runs (the harness is the
client group: a reaped child), and reduces its report to the figures benchmarks show.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.benchlib.cpu import CpuGroups, CpuMeter
from scripts.benchlib.stats import summary_from_report

# Exit statuses of ticketing-rush that still wrote a report: 0 audit passed, 1 failed.
REPORTED = (0, 1)


class HarnessError(RuntimeError):
    """The harness could not carry out the run (no report); the message has its output."""


def harness_path() -> str:
    """The `ticketing-rush` next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / "ticketing-rush"
    if beside.exists():
        return str(beside)
    found = shutil.which("ticketing-rush")
    if found:
        return found
    raise FileNotFoundError("ticketing-rush is not installed here (pip install -e '.[rush]')")


@dataclass(frozen=True)
class HarnessRun:
    """One finished harness run: the command as shown (no address, no password), its
    report, the CPU used meanwhile, its console output and its exit status."""

    command: str
    report: dict[str, Any]
    cpu: dict[str, Any]
    output: str
    exit_code: int


async def run_harness(
    scenario: str,
    targets: Sequence[str],
    args: Sequence[str],
    *,
    admin_email: str,
    admin_password: str,
    report_path: Path,
    cpu: CpuGroups,
    timeout_s: float,
    token_cache: Path | None = None,
    shown: Mapping[str, str] | None = None,
    cpu_from: str | None = None,
) -> HarnessRun:
    """Run `ticketing-rush SCENARIO --target ... ARGS --json REPORT_PATH` and wait for it
    (killed after `timeout_s`). `shown` replaces argument values in the command as
    reported (e.g. a temporary chart path by the one the docs use). The CPU window runs
    from the start, or from the first output line containing `cpu_from` (e.g. the line
    the gate scenario prints when its untimed sell phase is over), to the exit."""
    # `--opt=value`: a value that starts with "-" would otherwise read as an option.
    secret = [f"--admin-email={admin_email}", f"--admin-password={admin_password}"]
    tail = ["--json", str(report_path)]
    if token_cache is not None:
        tail += ["--token-cache", str(token_cache)]
    command = [harness_path(), scenario, "--target", ",".join(targets), *secret, *args, *tail]
    swaps = {
        str(report_path): report_path.name,
        secret[1]: "--admin-password=$PASSWORD",
        **(shown or {}),
    }
    display = ["ticketing-rush", scenario, "--target", ",".join(["HOST:PORT"] * len(targets))]
    display += [swaps.get(a, a) for a in [*secret, *args, "--json", str(report_path)]]
    meter = CpuMeter(cpu)
    meter.start()
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        marker = cpu_from
        while line := (await proc.stdout.readline()).decode(errors="replace"):
            lines.append(line)
            if marker is not None and marker in line:
                meter.start()
                marker = None
        await proc.wait()

    try:
        await asyncio.wait_for(read(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    used = meter.stop()
    output = "".join(lines).rstrip()
    try:
        if proc.returncode not in REPORTED:
            raise FileNotFoundError(report_path)
        text = await asyncio.to_thread(report_path.read_text, encoding="utf-8")
    except FileNotFoundError:
        raise HarnessError(
            f"ticketing-rush {scenario} exited {proc.returncode}:\n{output}"
        ) from None
    report = json.loads(text)
    return HarnessRun(" ".join(display), report, used, output, int(proc.returncode or 0))


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """The figures benchmarks show, from one harness report: load, rates, latency (the
    `scripts.benchlib.stats` shape, ms), outcomes, per-action figures, sold places and the
    audit verdict."""
    closed = report["loadModel"] == "closed"
    return {
        "scenario": report["scenario"],
        "load": f"closed, {report['concurrency']} users"
        if closed
        else f"open, {report['rate']:g}/s",
        "event_id": report["event"]["id"],
        "count": report["count"],
        "seconds": round(report["total"] / 1e9, 3),
        "rps": report["rps"],
        "ok_rps": report["okRps"],
        "tickets_per_s": report["ticketsPerSecond"],
        "latency": summary_from_report(
            report["count"], report["average"], report["slowest"], report["latencyDistribution"]
        ),
        "statuses": report["statusCodeDistribution"],
        "errors": report["errorDistribution"],
        "scans": report["scanResults"],
        "unexpected": report["unexpectedErrors"],
        "actions": {
            name: {
                "count": a["count"],
                "ok": a["ok"],
                "latency": summary_from_report(
                    a["count"], a["average"], None, a["latencyDistribution"]
                ),
            }
            for name, a in report["actions"].items()
        },
        "warmup_requests": report["warmup"]["count"],
        # Every answered request, warm-up included (the time series counts by completion).
        "answered_with_warmup": sum(row["ok"] for row in report["timeSeries"]),
        "sold": report["sold"],
        "capacity": report["capacity"],
        "stop": report["stopReason"],
        "audit": report["audit"]["passed"],
        "audit_failed": report["audit"]["failed"],
        "audit_counts": report["audit"]["counts"],
        "setup": report["setup"],
    }
