"""Benchmark a ticket rush end to end with `ticketing-rush`, next to the database ceiling.

One run, on a throwaway database `ticketing_rush_<random>` (created on the PostgreSQL named by
DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres, and dropped at the end):

  1. starts `python -m ticketd serve` as its own process on 127.0.0.1 (bcrypt rounds 4,
     bootstrap admin from the environment, default pool and limits);
  2. runs the standard scenario set with the harness, each as its own `ticketing-rush`
     process on a fresh 20,000-seat event with the same 2,000 buyers (registered by the first
     run, then taken from the token cache):
       specific (closed loop, Zipf 1.1 hot spots), best-available, specific as an open loop at
       70% of the closed-loop rate, a gate storm (sell out, then scan with 10% duplicates),
       and a full sale (bookings + refunds + scans);
  3. measures the database ceiling: the same booking transaction straight at PostgreSQL with
     pgbench and scripts/pgbench_booking.sql (read-only reuse), on a fresh event;
  4. scale-out: starts a second server process on another port (same database, same JWT
     secret) and repeats the specific rush against one and then both servers, and shows
     that the per-gate scan limit is per process;
  5. writes the "Ticket rush" section of docs/benchmarks.md (other sections untouched) and
     the charts in docs/rush/.

Every harness run audits the invariants through the API and the benchmark fails if any
audit fails. Bounded: every run has a duration; the whole script takes about 4 minutes.

Usage: scripts/bench_rush [--quick] [--no-docs] [--reports DIR] [--seats N] [--buyers N]
       [--concurrency N] [--duration S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import resource
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from benchlib import log, plain_url, throwaway_database
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHARTS = DOCS / "rush"
BENCHMARKS_MD = DOCS / "benchmarks.md"
SECTION_TITLE = "## Ticket rush"
PGBENCH_SCRIPT = ROOT / "scripts" / "pgbench_booking.sql"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ADMIN_EMAIL = "rush-admin@example.test"
SERVER_START_TIMEOUT_S = 60.0
HARNESS_SLACK_S = 240.0
PGBENCH_CLIENTS = 32
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIMITED = "RESOURCE_EXHAUSTED/SCAN_RATE_EXCEEDED"
OPEN_LOOP_SHARE = 0.6


@dataclass
class ServerProcess:
    """`python -m ticketd serve` on 127.0.0.1 and a free port; stopped with SIGTERM."""

    database_url: str
    admin_password: str
    jwt_secret: str
    data_dir: Path
    name: str
    proc: asyncio.subprocess.Process | None = None
    port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TICKETING_")}
        env.update(
            DATABASE_URL=self.database_url,
            TICKETING_LISTEN="127.0.0.1:0",
            TICKETING_DATA_DIR=str(self.data_dir),
            # Shared by every server process: a token from one is accepted by the others,
            # as behind a load balancer.
            TICKETING_JWT_SECRET=self.jwt_secret,
            TICKETING_BCRYPT_ROUNDS="4",
            TICKETING_ADMIN_EMAIL=ADMIN_EMAIL,
            TICKETING_ADMIN_PASSWORD=self.admin_password,
            TICKETING_SHUTDOWN_GRACE="2",
            # Sign-up of many buyers from one address: the production sign-in throttle
            # (per-address rate, per-email backoff, small bcrypt queue) is set generously.
            TICKETING_AUTH_CONCURRENCY="2",
            TICKETING_AUTH_QUEUE="100000",
            TICKETING_AUTH_PEER_RATE="1000000",
            TICKETING_AUTH_PEER_BURST="1000000",
            TICKETING_LOGIN_FAILURES_PER_EMAIL="1000000",
        )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with (self.data_dir / f"{self.name}.log").open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ticketd",
                "serve",
                "--log-level",
                "WARNING",
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
                env=env,
                cwd=str(ROOT),
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = await asyncio.wait_for(
                    self.proc.stdout.readline(), deadline - time.monotonic()
                )
            except TimeoutError:
                break
            if not line:
                break
            match = re.search(rb"listening on [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                return
        await self.stop()
        tail = (self.data_dir / f"{self.name}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"ticketd did not start:\n{tail}")

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()

    def log_tail(self) -> str:
        path = self.data_dir / f"{self.name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


# ---------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc): who used the two cores during a harness run


def _proc_cpu(pid: int) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _postgres_cpu(database: str) -> float:
    """CPU of PostgreSQL working for us: backends connected to our database, plus the
    shared auxiliary processes (WAL writer, checkpointer...). Other databases' backends on
    the same server are other work, not ours."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
            cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        if not comm.startswith(("postgres", "postmaster")):
            continue
        client_backend = "(" in cmdline.split(":", 2)[-1] or "[local]" in cmdline
        if client_backend and f" {database} " not in cmdline:
            continue
        fields = raw.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def _machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (all processes, even short-lived
    ones such as pgbench's backends, which /proc no longer lists once they exit)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(parts) - parts[3] - parts[4]) / CLK_TCK


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    """CPU seconds used by the servers, PostgreSQL and finished children (the harness or
    pgbench) between `start()` and `stop()`, as cores (CPU seconds per wall second)."""

    server_pids: Sequence[int]
    database: str
    wall: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)

    def _sample(self) -> dict[str, float]:
        return {
            "servers": sum(_proc_cpu(p) for p in self.server_pids),
            "postgres": _postgres_cpu(self.database),
            "client": _children_cpu(),
            "machine": _machine_busy(),
        }

    def start(self) -> None:
        self.wall = time.perf_counter()
        self.marks = self._sample()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self.wall
        now = self._sample()
        used = {k: (now[k] - self.marks[k]) / wall for k in now}
        ours = used["servers"] + used["postgres"] + used["client"]
        used["other"] = max(0.0, used["machine"] - ours)
        return {k: round(v, 2) for k, v in used.items()} | {"wall_s": round(wall, 1)}


# ---------------------------------------------------------------------------------------------
# Harness runs


def harness_path() -> str:
    script = Path(sys.executable).parent / "ticketing-rush"
    if script.exists():
        return str(script)
    found = shutil.which("ticketing-rush")
    if found:
        return found
    raise FileNotFoundError("ticketing-rush not installed in this environment (pip install -e .)")


@dataclass
class Bench:
    """Shared state of one benchmark run."""

    args: argparse.Namespace
    admin_password: str
    reports: Path
    token_cache: Path
    charts: bool
    runs: list[dict[str, Any]] = field(default_factory=list)

    async def rush(
        self,
        name: str,
        scenario: str,
        servers: Sequence[ServerProcess],
        extra: Sequence[str],
        *,
        chart: bool = True,
    ) -> dict[str, Any]:
        """One `ticketing-rush` process; returns a summary (and keeps it in self.runs)."""
        target = ",".join(s.target for s in servers)
        report_path = self.reports / f"{name}.json"
        chart_path = CHARTS / f"{name}.png"
        common = [
            "--admin-email",
            ADMIN_EMAIL,
            "--admin-password",
            self.admin_password,
            "--buyers",
            str(self.args.buyers),
            "--connections",
            str(4 * len(servers)),
        ]
        command = [harness_path(), scenario, "--target", target, *common, *extra]
        command += ["--json", str(report_path), "--token-cache", str(self.token_cache)]
        if chart and self.charts:
            command += ["--chart", str(chart_path)]
        shown = " ".join(
            [
                "ticketing-rush",
                scenario,
                "--target",
                "HOST:PORT" + ",HOST:PORT" * (len(servers) - 1),
            ]
            + [
                "--admin-email",
                ADMIN_EMAIL,
                "--admin-password",
                "$PASSWORD",
                "--buyers",
                str(self.args.buyers),
                "--connections",
                str(4 * len(servers)),
                *extra,
                "--json",
                f"{name}.json",
            ]
            + (["--chart", f"docs/rush/{name}.png"] if chart and self.charts else [])
        )
        log(f"\n== {name}: {shown}")
        database = make_url(servers[0].database_url).database or ""
        cpu = CpuWindow([s.pid for s in servers if s.pid], database)
        cpu.start()
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        duration = float(extra[extra.index("--duration") + 1]) if "--duration" in extra else 10
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), duration + HARNESS_SLACK_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        used = cpu.stop()
        log(out.decode(errors="replace").rstrip())
        if proc.returncode not in (0, 1) or not report_path.exists():
            for s in servers:
                log(f"--- {s.name} log tail:\n{s.log_tail()}")
            raise RuntimeError(f"{name}: ticketing-rush exited {proc.returncode}")
        report = json.loads(report_path.read_text())
        summary = summarize(name, shown, report, used, len(servers))
        self.runs.append(summary)
        return summary


def _pct(report: dict[str, Any], p: float) -> float | None:
    """Percentile p of a report in milliseconds (None when nothing was measured)."""
    for d in report["latencyDistribution"]:
        if d["percentage"] == p:
            return round(float(d["latency"]) / 1e6, 1)
    return None


def summarize(
    name: str, command: str, report: dict[str, Any], cpu: dict[str, float], servers: int
) -> dict[str, Any]:
    """The figures the docs table shows, from one harness report."""
    return {
        "name": name,
        "command": command,
        "servers": servers,
        "scenario": report["scenario"],
        "load": (
            f"closed, {report['concurrency']} users"
            if report["loadModel"] == "closed"
            else f"open, {report['rate']:g}/s"
        ),
        "count": report["count"],
        "seconds": round(report["total"] / 1e9, 1),
        "rps": report["rps"],
        "ok_rps": report["okRps"],
        "tickets_per_s": report["ticketsPerSecond"],
        "p50": _pct(report, 50),
        "p90": _pct(report, 90),
        "p99": _pct(report, 99),
        "p999": _pct(report, 99.9),
        "max": round(report["slowest"] / 1e6, 1),
        "errors": report["errorDistribution"],
        "scans": report["scanResults"],
        "unexpected": report["unexpectedErrors"],
        "sold": report["sold"],
        "capacity": report["capacity"],
        "stop": report["stopReason"],
        "audit": report["audit"]["passed"],
        "audit_failed": report["audit"]["failed"],
        "audit_counts": report["audit"]["counts"],
        "setup": report["setup"],
        "actions": {k: {"count": v["count"], "ok": v["ok"]} for k, v in report["actions"].items()},
        "cpu": cpu,
    }


# ---------------------------------------------------------------------------------------------
# Database ceiling: the booking transaction straight at PostgreSQL


def find_pgbench() -> str | None:
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    return None


async def new_event(target: str, admin_password: str, seats: int) -> str:
    """A fresh event through the API (contiguous seat ids: one INSERT ... SELECT)."""
    from grpc import aio

    from ticketing.rush.provision import create_event
    from ticketing.rush.stubs import Stubs
    from ticketing.v1 import auth_pb2

    async with aio.insecure_channel(target) as channel:
        stubs = Stubs(channel)
        login = await stubs.auth.Login(
            auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=admin_password), timeout=30
        )
        from ticketing.rush.provision import Account

        admin = Account(ADMIN_EMAIL, login.user.id, login.access_token)
        event = await create_event(stubs, admin, seats, 20, "pgbench ceiling")
    return event.id


async def database_ceiling(
    url: str, target: str, admin_password: str, seats: int, duration: int, cpu_pids: list[int]
) -> dict[str, Any]:
    """pgbench (up to 32 clients) with scripts/pgbench_booking.sql on a fresh event: orders
    per second when nothing but PostgreSQL does the work."""
    pgbench = find_pgbench()
    if pgbench is None or not PGBENCH_SCRIPT.exists():
        return {"skipped": "pgbench or scripts/pgbench_booking.sql not found"}
    event_id = await new_event(target, admin_password, seats)
    parsed = make_url(url)
    conn = await asyncpg.connect(plain_url(url))
    try:
        # PostgreSQL is shared (other databases, our servers' pools): take at most half of
        # the connections free now. On two cores 32 clients already saturate it; more would
        # only starve whoever else connects meanwhile.
        free_sql = (
            "SELECT current_setting('max_connections')::int "
            "- current_setting('superuser_reserved_connections')::int "
            "- (SELECT count(*) FROM pg_stat_activity)"
        )
        free = await conn.fetchval(free_sql)
        for _ in range(30):  # bounded: someone else's burst of connections usually passes
            if free // 2 >= PGBENCH_CLIENTS // 2:
                break
            await asyncio.sleep(1)
            free = await conn.fetchval(free_sql)
        clients = max(4, min(PGBENCH_CLIENTS, free // 2))
        # The script books as users md5('bench-buyer-' || client_id)::uuid (as in
        # scripts/bench_booking.py): make them exist.
        await conn.execute(
            """
            INSERT INTO users (id, email, display_name, password_hash, roles)
            SELECT md5('bench-buyer-' || n)::uuid, 'pgbench-buyer-' || n || '@example.test',
                   'pgbench buyer', 'not-a-hash', ARRAY['CUSTOMER']
            FROM generate_series(0, $1 - 1) AS n
            ON CONFLICT DO NOTHING
            """,
            clients,
        )
        bounds = await conn.fetchrow(
            "SELECT min(id) AS lo, count(*) AS n FROM seats WHERE event_id = $1::uuid", event_id
        )
        command = [
            pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(duration),
            "-f",
            str(PGBENCH_SCRIPT),
            "-D",
            f"event_id={event_id}",
            "-D",
            f"seat_min={bounds['lo']}",
            "-D",
            f"seats={bounds['n']}",
            "-D",
            f"clients={clients}",
            "-D",
            "price=4500",
            "-D",
            f"seed={random.randrange(1, 2**31)}",
            "-D",
            "i=0",
            "-h",
            parsed.host or "127.0.0.1",
            "-p",
            str(parsed.port or 5432),
            "-U",
            parsed.username or "postgres",
            parsed.database or "",
        ]
        env = dict(os.environ)
        if parsed.password:
            env["PGPASSWORD"] = parsed.password
        log(f"\n== database ceiling: pgbench -c {clients} -T {duration}")
        cpu = CpuWindow(cpu_pids, parsed.database or "")
        cpu.start()
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), duration + 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        used = cpu.stop()
        text = out.decode() + err.decode()
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{text[-3000:]}")
        row = await conn.fetchrow(
            "SELECT count(*) AS orders, coalesce(sum(ticket_count), 0) AS tickets "
            "FROM orders WHERE event_id = $1::uuid",
            event_id,
        )
    finally:
        await conn.close()

    def num(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    result = {
        "clients": clients,
        "duration_s": duration,
        "tps": num(r"tps = ([\d.]+) \(without initial connection time\)"),
        "latency_avg_ms": num(r"latency average = ([\d.]+) ms"),
        "orders": row["orders"],
        "orders_per_s": round(row["orders"] / duration, 1),
        "tickets_per_s": round(row["tickets"] / duration, 1),
        "cpu": used,
        "command": f"pgbench -n -M prepared -c {clients} -j 2 -T {duration} "
        "-f scripts/pgbench_booking.sql -D event_id=... (seat picks: uniform permutation, 1-2 "
        "places per order)",
    }
    log(f"pgbench: {result['orders_per_s']} orders/s, {result['tickets_per_s']} tickets/s")
    return result


# ---------------------------------------------------------------------------------------------
# Orchestration


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown CPU"


async def machine_info(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(plain_url(url))
    try:
        settings = {
            name: await conn.fetchval(f"SHOW {name}")
            for name in ("shared_buffers", "synchronous_commit", "fsync", "max_connections")
        }
        version = await conn.fetchval("SHOW server_version")
    finally:
        await conn.close()
    return {
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "postgresql": version.split(" ")[0],
        "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pg_settings": settings,
    }


async def wait_for_quiet(limit_s: float = 60.0, busy_cores: float = 0.5) -> float:
    """Wait (at most `limit_s`) until the machine is nearly idle, sampled over 2 s: figures
    from a machine busy with other work say little. Returns the busy cores last seen."""
    deadline = time.monotonic() + limit_s
    while True:
        before, t0 = _machine_busy(), time.perf_counter()
        await asyncio.sleep(2)
        busy = (_machine_busy() - before) / (time.perf_counter() - t0)
        if busy <= busy_cores or time.monotonic() >= deadline:
            return round(busy, 2)
        log(f"machine busy with other work ({busy:.2f} cores); waiting for it to calm down")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = os.environ.get("DATABASE_URL") or DEFAULT_ADMIN_URL
    idle = await wait_for_quiet()
    started = time.perf_counter()
    machine = await machine_info(admin_url)
    machine["busy_before"] = idle
    seats, duration, warmup = str(args.seats), args.duration, args.warmup
    conc = str(args.concurrency)
    core = ["--seats", seats, "--seed", "42", "--warmup", str(warmup)]
    result: dict[str, Any] = {"machine": machine, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="ticketing-bench-rush-") as tmp:
        reports = Path(args.reports) if args.reports else Path(tmp) / "reports"
        reports.mkdir(parents=True, exist_ok=True)
        if not args.no_docs:
            CHARTS.mkdir(parents=True, exist_ok=True)
        b = Bench(
            args,
            secrets.token_urlsafe(16),
            reports,
            Path(tmp) / "tokens.json",
            charts=not args.no_docs,
        )
        secret = secrets.token_urlsafe(48)
        async with throwaway_database(admin_url, "ticketing_rush") as url:
            a = ServerProcess(url, b.admin_password, secret, Path(tmp) / "a", "server-a")
            c = ServerProcess(url, b.admin_password, secret, Path(tmp) / "b", "server-b")
            try:
                await a.start()
                log(f"server A pid {a.pid} on {a.target}")
                d = str(duration)
                specific = await b.rush(
                    "specific",
                    "specific",
                    [a],
                    [*core, "--concurrency", conc, "--duration", d, "--skew", "zipf:1.1"],
                )
                await b.rush(
                    "best-available",
                    "best-available",
                    [a],
                    [*core, "--concurrency", conc, "--duration", d],
                )
                # Well inside what the closed loop sustained, so the open loop shows the
                # latency a crowd arriving at that pace sees, not a collapse.
                rate = max(20, round(OPEN_LOOP_SHARE * specific["rps"] / 10) * 10)
                await b.rush(
                    "specific-open",
                    "specific",
                    [a],
                    [*core, "--rate", str(rate), "--duration", d],
                )
                await b.rush(
                    "gate",
                    "gate",
                    [a],
                    [
                        *core,
                        "--concurrency",
                        conc,
                        "--duration",
                        d,
                        "--dup-share",
                        "0.1",
                        "--gates",
                        "16",
                    ],
                )
                await b.rush(
                    "sale",
                    "sale",
                    [a],
                    [*core, "--concurrency", conc, "--duration", d, "--gates", "16"],
                )
                ceiling = await database_ceiling(
                    url,
                    a.target,
                    b.admin_password,
                    args.seats,
                    args.pgbench_duration,
                    [p for p in (a.pid,) if p],
                )
                result["database"] = ceiling
                # Scale-out: the same rush against one and against two server processes,
                # back to back on fresh events, so the database is in the same shape.
                sd = str(args.scale_duration)
                scale = [*core, "--concurrency", conc, "--duration", sd]
                await b.rush("scale-1", "specific", [a], scale, chart=False)
                await c.start()
                log(f"server B pid {c.pid} on {c.target}")
                await b.rush("scale-2", "specific", [a, c], scale, chart=False)
                # The per-gate scan bound lives in each process: one gate, 300 scans/s offered.
                limit = [
                    "--seats", str(args.gate_limit_tickets), "--seed", "42", "--rate", "300",
                    "--duration", "5", "--gates", "1", "--dup-share", "0",
                ]  # fmt: skip
                await b.rush("gate-limit-1", "gate", [a], limit, chart=False)
                await b.rush("gate-limit-2", "gate", [a, c], limit, chart=False)
            finally:
                await c.stop()
                await a.stop()
    result["runs"] = b.runs
    result["total_s"] = round(time.perf_counter() - started, 1)
    return result


# ---------------------------------------------------------------------------------------------
# The docs section


def _fmt_outcomes(run: dict[str, Any]) -> str:
    parts = [f"{k} {v}" for k, v in run["errors"].items()]
    parts += [f"{k} {v}" for k, v in run["scans"].items()]
    return ", ".join(parts) or "all OK"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def render_section(result: dict[str, Any]) -> str:
    m = result["machine"]
    runs = {r["name"]: r for r in result["runs"]}
    args = result["args"]
    db = result.get("database") or {}
    lines = [
        SECTION_TITLE,
        "",
        "**Question.** What does a ticket rush look like from the outside: how many bookings "
        "and scans per second one server sustains while thousands of buyers fight over the "
        "same seats, what latency they see, what share of them lose the race, and do the "
        "invariants hold afterwards? And how far is that from what PostgreSQL alone can do?",
        "",
        f"**Command** (all figures below are from one run, {result['total_s']:.0f} s in total):",
        "",
        "```sh",
        "scripts/bench_rush",
        "```",
        "",
        "The script creates a throwaway database on the local PostgreSQL, starts `python -m "
        "ticketd serve` as a separate process on 127.0.0.1 (`TICKETING_BCRYPT_ROUNDS=4`, "
        "bootstrap admin from the environment, everything else default: 20 pooled "
        "connections, 100 scans/s per gate), and runs `ticketing-rush` once per scenario, "
        "each as its own process, each on a fresh "
        f"{args['seats']:,}-seat event (10 sections of 40 rows of 50). "
        f"The same {args['buyers']:,} buyers are registered "
        "through `AuthService.Register` by the first run and reused from the token cache "
        "afterwards. Every run audits the invariants through the API; the script fails if "
        "one does not hold. The database is dropped at the end.",
        "",
        f"**Machine.** {m['nproc']} CPUs ({m['cpu']}, Linux {m['kernel']}), Python "
        f"{m['python']}, grpcio {m['grpcio']}, PostgreSQL {m['postgresql']} on the same host "
        f"(`shared_buffers` {m['pg_settings']['shared_buffers']}, `synchronous_commit` "
        f"{m['pg_settings']['synchronous_commit']}, `fsync` {m['pg_settings']['fsync']}). "
        "Harness, server and PostgreSQL share the two cores, so every figure is a lower "
        "bound for a deployment where they do not; the machine is also shared with other "
        f"work (load average {m['loadavg']} at the start, {m['busy_before']} cores busy "
        "just before), so expect +-15% between runs.",
        "",
        "| run | load | requests/s | ok/s | tickets/s | p50 ms | p90 ms | p99 ms | p99.9 ms "
        "| max ms | outcomes | sold / capacity | other work | audit |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|---|",
    ]
    for name in ("specific", "best-available", "specific-open", "gate", "sale"):
        r = runs.get(name)
        if r is None:
            continue
        lines.append(
            f"| {name} | {r['load']} | {r['rps']:,.0f} | {r['ok_rps']:,.0f} | "
            f"{r['tickets_per_s']:,.0f} | {_ms(r['p50'])} | {_ms(r['p90'])} | {_ms(r['p99'])} | "
            f"{_ms(r['p999'])} | {_ms(r['max'])} | {_fmt_outcomes(r)} | "
            f"{r['sold']:,} / {r['capacity']:,} | {r['cpu']['other']} | "
            f"{'pass' if r['audit'] else 'FAIL'} |"
        )
    lines += [
        "",
        "Figures exclude the warm-up (requests due in the first "
        f"{args['warmup']:g} s). Latency is from an HDR histogram; in the open loop it is "
        "measured from each request's due time, so queueing inside the harness or the server "
        "is not hidden (coordinated omission). *requests/s* counts every answered call, "
        "*ok/s* the successful ones (orders, refunds, answered scans: a refused scan is a "
        "normal answer), *tickets/s* places sold, *other work* the cores used meanwhile "
        "by processes that are neither the server, its PostgreSQL backends nor the harness "
        "(a disturbed run shows here). The runs stop at the duration or when the event is "
        "sold out (the harness stops by itself: *exhausted*).",
        "",
    ]
    spec = runs.get("specific")
    best = runs.get("best-available")
    gate = runs.get("gate")
    notes: list[str] = []
    if spec:
        lost = sum(v for k, v in spec["errors"].items() if "SEAT_UNAVAILABLE" in k)
        notes.append(
            f"- **Hot spots.** With Zipf 1.1 over seat rank, {lost:,} of {spec['count']:,} "
            f"specific-seat bookings ({100 * lost / max(1, spec['count']):.0f}%) lost the race "
            "for a seat another buyer had just taken (`SEAT_UNAVAILABLE`, naming the seats; "
            "the harness drops them from its map, as a real client would). Locks are taken "
            "in id order in one statement, so contention shows up as fast refusals, not "
            "deadlocks or timeouts."
        )
        notes.append(
            f"- **CPU.** During the specific run the server process used "
            f"{spec['cpu']['servers']} cores, PostgreSQL {spec['cpu']['postgres']} and the "
            f"harness {spec['cpu']['client']}, other work on the machine "
            f"{spec['cpu']['other']}, with {spec['cpu']['machine']} of {m['nproc']} cores "
            "busy: the server is CPU-bound on its one Python thread and the machine is "
            "saturated; what the harness and other work use is taken from it."
        )
    if best:
        notes.append(
            f"- **Best available** ({best['ok_rps']:,.0f} orders/s, "
            f"{best['tickets_per_s']:,.0f} tickets/s) never queues on a row lock (`SKIP "
            "LOCKED`); `SEAT_LOCKED` only appears when a section's last places are all "
            "locked by in-flight buyers, and `SOLD_OUT` as sections empty."
        )
    if gate:
        sell = gate["setup"]["sellPhase"]
        notes.append(
            f"- **Gate storm.** After selling the event out ({sell['tickets']:,} "
            f"tickets in {sell['seconds']:.1f} s, untimed), "
            f"{gate['ok_rps']:,.0f} scans/s over 16 gates; every duplicate was refused "
            "(`ALREADY_USED`) and the audit found each admitted ticket admitted exactly once."
        )
    lines += notes
    lines += [
        "",
        "**Database ceiling.** The same booking transaction (same statements, lock order "
        "and round trips as `server/ticketd/booking/repository.py`) sent straight at "
        "PostgreSQL by pgbench, with `scripts/pgbench_booking.sql`:",
        "",
    ]
    if "skipped" in db or not db:
        lines.append(f"- skipped: {db.get('skipped', 'not run')}")
    else:
        lines += [
            "```sh",
            db["command"],
            "```",
            "",
            f"- PostgreSQL alone: **{db['orders_per_s']:,.0f} orders/s** "
            f"({db['tickets_per_s']:,.0f} tickets/s, {db['tps']:,.0f} transactions/s, "
            f"{db['clients']} connections; the machine was {db['cpu']['machine']} of "
            f"{m['nproc']} cores busy).",
        ]
        for name in ("specific", "best-available"):
            r = runs.get(name)
            if r:
                lines.append(
                    f"- {name} through gRPC: {r['ok_rps']:,.0f} orders/s = "
                    f"**{r['ok_rps'] / db['orders_per_s']:.2f}x** of the ceiling "
                    f"(tickets: {r['tickets_per_s'] / max(1, db['tickets_per_s']):.2f}x)."
                )
        lines.append(
            "- The ceiling's picks are uniform and never collide, the rush's are skewed "
            "and do, and pgbench is a C client: the ratio is a floor. The gap is the Python "
            "server (gRPC, protobuf, asyncpg, token checks: one role lookup per call) and "
            "the harness sharing its CPU."
        )
    s1, s2 = runs.get("scale-1"), runs.get("scale-2")
    g1, g2 = runs.get("gate-limit-1"), runs.get("gate-limit-2")
    lines += [
        "",
        "**Scale-out.** A second `ticketd` process on another port, same database and JWT "
        "secret; the harness spreads its connections over both (`--target A,B`). Same "
        f"specific rush on fresh events, {args['scale_duration']:g} s each, back to back:",
        "",
        "| servers | ok/s | tickets/s | p50 ms | p99 ms | server cores | PostgreSQL cores | "
        "harness cores | other work | machine busy | audit |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for r in (s1, s2):
        if r:
            lines.append(
                f"| {r['servers']} | {r['ok_rps']:,.0f} | {r['tickets_per_s']:,.0f} | "
                f"{_ms(r['p50'])} | {_ms(r['p99'])} | {r['cpu']['servers']} | "
                f"{r['cpu']['postgres']} | {r['cpu']['client']} | {r['cpu']['other']} | "
                f"{r['cpu']['machine']} | "
                f"{'pass' if r['audit'] else 'FAIL'} |"
            )
    if s1 and s2:
        gain = s2["ok_rps"] / max(1, s1["ok_rps"])
        per_core = [r["ok_rps"] / max(0.01, r["cpu"]["servers"]) for r in (s1, s2)]
        cores = f"{s1['cpu']['servers']} vs {s2['cpu']['servers']} server cores"
        efficiency = (
            f"per server core the work was about the same ({per_core[0]:,.0f} vs "
            f"{per_core[1]:,.0f} orders/s), so throughput followed the CPU the server tier got"
            if abs(per_core[1] / per_core[0] - 1) <= 0.15
            else f"per server core it did less ({per_core[0]:,.0f} vs {per_core[1]:,.0f} "
            "orders/s): two server processes on two shared cores add context switches and "
            "take their extra CPU from PostgreSQL and the harness"
        )
        if s1["cpu"]["machine"] >= 0.9 * m["nproc"]:
            verdict = (
                f"The machine was already saturated with one server ({s1['cpu']['machine']} "
                f"of {m['nproc']} cores busy), so a second process found no idle core: the "
                f"server tier got {cores} only by taking CPU from PostgreSQL, the harness "
                f"and other work; {efficiency}."
            )
        else:
            verdict = (
                f"One server left cores idle ({s1['cpu']['machine']} of {m['nproc']} busy) "
                f"because its Python runs on one thread; a second process uses them "
                f"({cores}); {efficiency}."
            )
        lines += [
            "",
            f"Two processes give **{gain:.2f}x** the orders/s of one. {verdict} On separate "
            "hosts the server tier scales out until PostgreSQL (the ceiling above) is the "
            "limit. What this run shows on any host: the invariants held with two servers "
            "selling the same seats at the same time, because locks and constraints live in "
            "PostgreSQL, not in the process.",
        ]
    if g1 and g2:
        a1 = g1["scans"].get("ADMITTED", 0)
        a2 = g2["scans"].get("ADMITTED", 0)
        lines += [
            "",
            "The per-gate scan bound (100/s, burst 200) lives in each process: one gate "
            "offered 300 scans/s for 5 s was answered "
            f"{a1:,} times by one server and {a2:,} times by two "
            f"(`{LIMITED}`: {g1['errors'].get(LIMITED, 0):,} "
            f"vs {g2['errors'].get(LIMITED, 0):,}). "
            "See docs/scaling.md.",
        ]
    lines += ["", "**Commands** (as run by the script; `$PASSWORD` is the bootstrap admin's):", ""]
    lines.append("```sh")
    for r in result["runs"]:
        lines.append(r["command"])
    lines.append("```")
    charts = ("specific", "best-available", "specific-open", "gate", "sale")
    if not args["no_docs"]:
        lines += [
            "",
            "**Charts** (requests, ok and errors per second; p50 and p99 per second):",
            "",
        ]
        for name in charts:
            if name in runs:
                lines.append(f"![{name}](rush/{name}.png)")
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace our section (from its heading to the next `## `) or append it; everything
    else in the file is kept as it is at the moment of writing."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{SECTION_TITLE}\n")
    if start == -1 and text.startswith(f"{SECTION_TITLE}\n"):
        start = 0
    if start == -1:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        body_from = start + (1 if text[start] == "\n" else 0)
        nxt = text.find("\n## ", body_from + len(SECTION_TITLE))
        tail = "" if nxt == -1 else "\n" + text[nxt + 1 :]
        new = text[:body_from] + section + tail
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_rush", description=__doc__.split("\n")[0])
    parser.add_argument("--seats", type=int, default=20_000, help="places per event")
    parser.add_argument("--buyers", type=int, default=2_000, help="customer accounts")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop users")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out")
    parser.add_argument("--scale-duration", type=float, default=12.0, help="scale-out runs")
    parser.add_argument("--pgbench-duration", type=int, default=10, help="pgbench -T")
    parser.add_argument("--gate-limit-tickets", type=int, default=2_000)
    parser.add_argument("--reports", help="keep the harness JSON reports in this directory")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--render", metavar="JSON", help="only rewrite the docs from a kept bench_rush.json"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seats, args.buyers, args.concurrency = 2_000, 50, 16
        args.duration, args.warmup, args.scale_duration = 3.0, 0.5, 3.0
        args.pgbench_duration, args.gate_limit_tickets = 2, 500
    if not 2 <= args.duration <= 60 or not 0 <= args.warmup < args.duration:
        parser.error("--duration must be 2..60 s and --warmup below it")
    if not 1_000 <= args.seats <= 200_000 or not 1 <= args.buyers <= 20_000:
        parser.error("--seats 1,000..200,000 and --buyers 1..20,000")
    if args.render:
        result = json.loads(Path(args.render).read_text(encoding="utf-8"))
    else:
        result = asyncio.run(bench(args))
        if args.reports:
            saved = Path(args.reports) / "bench_rush.json"
            saved.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
            log(f"benchmark result kept in {saved} (re-render: --render {saved})")
    failed = [r["name"] for r in result["runs"] if not r["audit"]]
    section = render_section(result)
    if args.no_docs:
        print(section)
    else:
        write_section(section)
        log(f"\nwrote the '{SECTION_TITLE[3:]}' section of {BENCHMARKS_MD} and {CHARTS}/*.png")
    log(f"total {result['total_s']} s")
    if failed:
        log(f"INVARIANT AUDIT FAILED in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
