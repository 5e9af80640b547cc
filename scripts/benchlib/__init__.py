"""The benchmark library: everything the four benchmarks (and the process tests) share.

Each module has one job; a benchmark keeps only its own workload and its report:

- `process`    a `python -m ticketd` server process: environment, ready wait, logs, stop/kill.
- `database`   admin URL, throwaway databases, connections that wait for a free slot.
- `cpu`        CPU per process group (server, PostgreSQL backends, client, kernel) between two
               samples of /proc, in one JSON shape; waiting for a quiet machine.
- `machine`    the machine a run happened on, one schema for every benchmark's JSON.
- `stats`      nearest-rank percentiles, latency summaries and histograms (one shape).
- `loops`      closed-loop and open-loop drivers, bounded in time and count.
- `provision`  venues, events and buyers over the public API.
- `pgbench`    the database ceiling: scripts/pgbench_booking.sql straight at PostgreSQL.
- `harness`    running `ticketing-rush` as a process and summarising its report.
- `report`     progress logging, the common report header, writing JSON.

Import it as `scripts.benchlib.<module>` (the benchmarks run as `python -m scripts.bench_x`
and pytest puts the repository root on sys.path).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
"""The repository root (scripts/benchlib/ is two levels below it)."""
