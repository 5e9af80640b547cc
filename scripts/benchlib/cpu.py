"""Who used the CPU during a measurement window, per process group, from /proc (Linux).

Groups: `server` (the ticketd processes), `postgres` (the backends of our database, plus the
shared postmaster, WAL writer, checkpointer and background writer: they work for whoever
writes, which during a window is us), `client` (this process, its reaped children such as a
finished harness or pgbench, and any live client processes named), `kernel_irq` (interrupt
time, where loopback TCP delivery largely runs) and `kernel_threads` (kworkers, jbd2:
WAL fsyncs). `other` is the machine's busy time not in any group: other people's work, or
other databases' backends on a shared PostgreSQL. A window where `other` is high was
disturbed.

One JSON shape for every benchmark (`cpu_between`)::

    {"window_s", "cores_available", "cores_busy", "machine_busy_pct",
     "cores_used": {"server", "postgres", "client", "kernel_irq", "kernel_threads"},
     "cores_used_other", "cpu_ms_per_call": {...same keys...}}   # the last only with calls

Per-process figures are deltas per pid, so a process that exits inside the window is
under-counted (never negative); sample while the processes of interest are alive.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.benchlib.report import log

CLK_TCK = os.sysconf("SC_CLK_TCK")
GROUPS = ("server", "postgres", "client", "kernel_irq", "kernel_threads")
# "postgres: [cluster: ]USER DATABASE HOST(PORT)|[local] STATE": a client backend.
_CLIENT_BACKEND = re.compile(r"(?:^postgres:|:)\s(\S+) (\S+) (?:\[local\]|\S+\(\d+\))(?:\s|$)")
_AUTOVACUUM = re.compile(r"autovacuum worker (\S+)")


def cores_available() -> int:
    """CPUs this process may run on (what `nproc` prints)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _stat(pid_dir: str) -> tuple[str, list[str]] | None:
    """(comm, fields after the comm) of /proc/PID/stat, or None if the process is gone."""
    try:
        raw = Path(pid_dir, "stat").read_text()
    except OSError:
        return None
    return raw[raw.find("(") + 1 : raw.rfind(")")], raw.rsplit(")", 1)[1].split()


def _own_seconds(fields: list[str]) -> float:
    # utime and stime, fields 14 and 15 of stat (11 and 12 after the comm).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one live process (0 when it is gone)."""
    stat = _stat(f"/proc/{pid}")
    return _own_seconds(stat[1]) if stat else 0.0


def _is_ours(title: str, database: str | None) -> bool:
    """Does this PostgreSQL process work for `database` (None: every process is ours)?"""
    if database is None:
        return True
    backend = _CLIENT_BACKEND.search(title)
    if backend is not None:
        return backend.group(2) == database
    vacuum = _AUTOVACUUM.search(title)
    if vacuum is not None:
        return vacuum.group(1) == database
    return True  # postmaster and the shared auxiliary processes


@dataclass(frozen=True)
class CpuGroups:
    """Whose CPU counts as what. `database` names our database (its backends are
    `postgres`; None counts every PostgreSQL process)."""

    server_pids: Sequence[int] = ()
    client_pids: Sequence[int] = ()
    database: str | None = None


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one instant."""

    wall: float
    machine_busy: float
    machine_total: float
    kernel_irq: float
    server: float
    client: float
    postgres: dict[int, float] = field(default_factory=dict)
    kernel_threads: dict[int, float] = field(default_factory=dict)


def _machine_seconds() -> tuple[float, float, float]:
    """(busy, total, irq + softirq) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    total = sum(parts[:8])
    idle = parts[3] + parts[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK, (parts[5] + parts[6]) / CLK_TCK


def _scan_proc(database: str | None) -> tuple[dict[int, float], dict[int, float]]:
    """CPU seconds per pid of our PostgreSQL processes and of kernel threads."""
    postgres: dict[int, float] = {}
    kernel: dict[int, float] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(entry.path)
        if stat is None:
            continue
        comm, fields = stat
        pid = int(entry.name)
        if comm.startswith(("postgres", "postmaster")):
            try:
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, UnicodeDecodeError):
                title = ""
            if _is_ours(title.strip(), database):
                postgres[pid] = _own_seconds(fields)
        elif fields[1] == "2" or pid == 2:  # kthreadd and its children
            kernel[pid] = _own_seconds(fields)
    return postgres, kernel


def sample(groups: CpuGroups) -> CpuSample:
    """Take one sample of every group."""
    busy, total, irq = _machine_seconds()
    # The wall clock goes with /proc/stat, read first: the scan below can take a while on a
    # busy machine, and "other" is machine time minus ours over the same wall time.
    wall = time.perf_counter()
    postgres, kernel = _scan_proc(groups.database)
    times = os.times()
    # Reaped children (a finished harness or pgbench run) are client work; live ones are
    # read from /proc when named. A child counted live at the first sample and reaped by
    # the second moves from one term to the other, so its delta stays right.
    client = times.user + times.system + times.children_user + times.children_system
    client += sum(process_cpu_seconds(p) for p in groups.client_pids)
    return CpuSample(
        wall=wall,
        machine_busy=busy,
        machine_total=total,
        kernel_irq=irq,
        server=sum(process_cpu_seconds(p) for p in groups.server_pids),
        client=client,
        postgres=postgres,
        kernel_threads=kernel,
    )


def _per_pid_delta(a: dict[int, float], b: dict[int, float]) -> float:
    return sum(max(0.0, v - a.get(pid, 0.0)) for pid, v in b.items())


def cpu_between(a: CpuSample, b: CpuSample, calls: int = 0) -> dict[str, Any]:
    """Cores used by each group between two samples (CPU seconds per wall second), what
    else the machine did, and, given `calls`, CPU milliseconds per call per group."""
    wall = max(1e-9, b.wall - a.wall)
    used = {
        "server": max(0.0, b.server - a.server),
        "postgres": _per_pid_delta(a.postgres, b.postgres),
        "client": max(0.0, b.client - a.client),
        "kernel_irq": b.kernel_irq - a.kernel_irq,
        "kernel_threads": _per_pid_delta(a.kernel_threads, b.kernel_threads),
    }
    busy = b.machine_busy - a.machine_busy
    total = b.machine_total - a.machine_total
    out: dict[str, Any] = {
        "window_s": round(wall, 3),
        "cores_available": cores_available(),
        "cores_busy": round(busy / wall, 3),
        "machine_busy_pct": round(100 * busy / total, 1) if total > 0 else None,
        "cores_used": {k: round(v / wall, 3) for k, v in used.items()},
        "cores_used_other": round(max(0.0, busy - sum(used.values())) / wall, 3),
    }
    if calls:
        out["cpu_ms_per_call"] = {k: round(1000 * v / calls, 3) for k, v in used.items()}
    return out


@dataclass
class CpuMeter:
    """`start()` then `stop(calls)`: the window between them in the `cpu_between` shape."""

    groups: CpuGroups
    first: CpuSample | None = None

    def start(self) -> None:
        """Open the window."""
        self.first = sample(self.groups)

    def stop(self, calls: int = 0) -> dict[str, Any]:
        """Close the window and return what each group used in it."""
        assert self.first is not None, "CpuMeter.stop() before start()"
        return cpu_between(self.first, sample(self.groups), calls)


def disturbed(cpu: dict[str, Any], limit_cores: float) -> bool:
    """True when other work used more than `limit_cores` during the window."""
    return float(cpu["cores_used_other"]) > limit_cores


async def busy_cores(seconds: float = 1.0) -> float:
    """Cores the whole machine kept busy over the next `seconds`."""
    busy0, _, _ = _machine_seconds()
    t0 = time.perf_counter()
    await asyncio.sleep(seconds)
    busy1, _, _ = _machine_seconds()
    return (busy1 - busy0) / max(1e-9, time.perf_counter() - t0)


async def wait_for_quiet(
    max_wait_s: float, limit_cores: float = 0.5, sample_s: float = 1.0
) -> float:
    """Wait (at most `max_wait_s`) until the machine is nearly idle: figures from a machine
    busy with other work say little. Returns the busy cores last seen."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy = await busy_cores(sample_s)
        if busy <= limit_cores or time.monotonic() >= deadline:
            return round(busy, 2)
        log(f"machine busy with other work ({busy:.2f} cores); waiting for it to calm down")
