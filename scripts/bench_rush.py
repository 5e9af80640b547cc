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
       [--concurrency N] [--duration S] [--pool-size 20]
(--quick: tiny sizes and pools of at most 8 connections, a smoke test.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, wait_for_quiet
from scripts.benchlib.database import (
    admin_url,
    database_name,
    throwaway_database,
    wait_for_slots,
)
from scripts.benchlib.harness import HarnessError, run_harness, summarize
from scripts.benchlib.machine import machine_info
from scripts.benchlib.pgbench import find_pgbench, pgbench_clients, run_booking_pgbench
from scripts.benchlib.process import (
    ServerProcess,
    benchmark_server,
    new_jwt_secret,
    new_password,
)
from scripts.benchlib.provision import channel, create_event, login
from scripts.benchlib.report import log, write_json

DOCS = ROOT / "docs"
CHARTS = DOCS / "rush"
BENCHMARKS_MD = DOCS / "benchmarks.md"
SECTION_TITLE = "## Ticket rush"
ADMIN_EMAIL = "rush-admin@example.test"
HARNESS_SLACK_S = 240.0
PGBENCH_CLIENTS = 32
PGBENCH_PRICE_MINOR = 4_500
LIMITED = "RESOURCE_EXHAUSTED/SCAN_RATE_EXCEEDED"
OPEN_LOOP_SHARE = 0.6


# ---------------------------------------------------------------------------------------------
# Harness runs


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
        chart_path = CHARTS / f"{name}.png"
        args = ["--buyers", str(self.args.buyers), "--connections", str(4 * len(servers))]
        args += extra
        if chart and self.charts:
            args += ["--chart", str(chart_path)]
        duration = float(extra[extra.index("--duration") + 1]) if "--duration" in extra else 10
        pids = tuple(s.pid for s in servers if s.pid is not None)
        database = database_name(servers[0].database_url or "")
        log(f"\n== {name}: ticketing-rush {scenario} {' '.join(extra)}")
        try:
            run = await run_harness(
                scenario,
                [s.target for s in servers],
                args,
                admin_email=ADMIN_EMAIL,
                admin_password=self.admin_password,
                report_path=self.reports / f"{name}.json",
                cpu=CpuGroups(pids, (), database),
                timeout_s=duration + HARNESS_SLACK_S,
                token_cache=self.token_cache,
                shown={str(chart_path): f"docs/rush/{name}.png"},
            )
        except HarnessError:
            for s in servers:
                log(f"--- {s.name} log tail:\n{s.log(60)}")
            raise
        log(run.output)
        summary = {
            "name": name,
            "command": run.command,
            "servers": len(servers),
            **summarize(run.report),
            "cpu": run.cpu,
        }
        self.runs.append(summary)
        return summary


# ---------------------------------------------------------------------------------------------
# Database ceiling: the booking transaction straight at PostgreSQL


async def database_ceiling(
    url: str, server: ServerProcess, admin_password: str, seats: int, duration: int
) -> dict[str, Any]:
    """pgbench (up to 32 clients) with scripts/pgbench_booking.sql on a fresh event: orders
    per second when nothing but PostgreSQL does the work."""
    if find_pgbench() is None:
        return {"skipped": "pgbench not found"}
    async with channel(server.target) as ch:
        md = await login(ch, ADMIN_EMAIL, admin_password)
        event = await create_event(
            ch, md, seats, "pgbench ceiling", price_minor=PGBENCH_PRICE_MINOR, max_per_order=20
        )
    # PostgreSQL is shared (other databases, our servers' pools): take at most half of the
    # connections free now. On two cores 32 clients already saturate it; more would only
    # starve whoever else connects meanwhile.
    clients = await pgbench_clients(url, PGBENCH_CLIENTS, share=0.5, reserve=0, max_wait_s=30)
    log(f"\n== database ceiling: pgbench -c {clients} -T {duration}")
    pids = (server.pid,) if server.pid is not None else ()
    result = await run_booking_pgbench(
        url,
        event.id,
        clients=clients,
        duration_s=duration,
        price_minor=PGBENCH_PRICE_MINOR,
        server_pids=pids,
    )
    log(f"pgbench: {result['orders_per_s']} orders/s, {result['tickets_per_s']} tickets/s")
    return result


# ---------------------------------------------------------------------------------------------
# Orchestration


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Every harness run, the database ceiling and the scale-out; the kept result."""
    admin = admin_url()
    idle = await wait_for_quiet(60, sample_s=2)
    started = time.perf_counter()
    machine = await machine_info(admin, idle)
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
            new_password(),
            reports,
            Path(tmp) / "tokens.json",
            charts=not args.no_docs,
        )
        # Shared by both server processes: a token from one is accepted by the other, as
        # behind a load balancer.
        secret = new_jwt_secret()
        async with throwaway_database(admin, "ticketing_rush") as url:
            a, c = (
                benchmark_server(
                    url,
                    Path(tmp) / letter,
                    admin_email=ADMIN_EMAIL,
                    admin_password=b.admin_password,
                    jwt_secret=secret,
                    name=f"server-{letter}",
                    pool_size=args.pool_size,
                )
                for letter in "ab"
            )
            try:
                await wait_for_slots(admin, args.pool_size + 4, 30)
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
                    url, a, b.admin_password, args.seats, args.pgbench_duration
                )
                result["database"] = ceiling
                # Scale-out: the same rush against one and against two server processes,
                # back to back on fresh events, so the database is in the same shape.
                sd = str(args.scale_duration)
                scale = [*core, "--concurrency", conc, "--duration", sd]
                await b.rush("scale-1", "specific", [a], scale, chart=False)
                # Another pool on a PostgreSQL other people's tests share too.
                await wait_for_slots(admin, args.pool_size + 4, 30)
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


def _lat(run: dict[str, Any], key: str) -> str:
    """One latency figure of a run (`p50_ms`, ..., `max_ms`), for the tables."""
    return _ms(run["latency"][key])


def _cores(run: dict[str, Any], group: str) -> str:
    """Cores a group used during a run (`other`: work not ours; `busy`: the machine)."""
    cpu = run["cpu"]
    if group == "other":
        value = cpu["cores_used_other"]
    elif group == "busy":
        value = cpu["cores_busy"]
    else:
        value = cpu["cores_used"][group]
    return f"{value:.2f}"


def render_section(result: dict[str, Any]) -> str:
    """The \"Ticket rush\" section of docs/benchmarks.md from a result."""
    m = result["machine"]
    runs = {r["name"]: r for r in result["runs"]}
    args = result["args"]
    db = result.get("database") or {}
    pg = m["postgresql_settings"]
    loadavg = " ".join(f"{x:.2f}" for x in m["loadavg_at_start"])
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
        f"bootstrap admin from the environment, {args.get('pool_size', 20)} pooled "
        "connections, everything else default: 100 scans/s per gate), and runs "
        "`ticketing-rush` once per scenario, each as its own process, each on a fresh "
        f"{args['seats']:,}-seat event (10 sections of 40 rows of 50). "
        f"The same {args['buyers']:,} buyers are registered "
        "through `AuthService.Register` by the first run and reused from the token cache "
        "afterwards. Every run audits the invariants through the API; the script fails if "
        "one does not hold. The database is dropped at the end.",
        "",
        f"**Machine.** {m['nproc']} CPUs ({m['cpu_model']}, Linux {m['kernel']}), Python "
        f"{m['python']}, grpcio {m['grpcio']}, PostgreSQL {m['postgresql_version'].split()[0]} "
        f"on the same host (`shared_buffers` {pg['shared_buffers']}, `synchronous_commit` "
        f"{pg['synchronous_commit']}, `fsync` {pg['fsync']}). "
        "Harness, server and PostgreSQL share the two cores, so every figure is a lower "
        "bound for a deployment where they do not; the machine is also shared with other "
        f"work (load average {loadavg} at the start, {m['busy_cores_before_start']} cores busy "
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
            f"{r['tickets_per_s']:,.0f} | "
            + " | ".join(_lat(r, k) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"))
            + f" | {_fmt_outcomes(r)} | "
            f"{r['sold']:,} / {r['capacity']:,} | {_cores(r, 'other')} | "
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
            f"{_cores(spec, 'server')} cores, PostgreSQL {_cores(spec, 'postgres')} and the "
            f"harness {_cores(spec, 'client')}, other work on the machine "
            f"{_cores(spec, 'other')}, with {_cores(spec, 'busy')} of {m['nproc']} cores "
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
            f"{db['clients']} connections; the machine was {_cores(db, 'busy')} of "
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
                f"{_lat(r, 'p50_ms')} | {_lat(r, 'p99_ms')} | {_cores(r, 'server')} | "
                f"{_cores(r, 'postgres')} | {_cores(r, 'client')} | {_cores(r, 'other')} | "
                f"{_cores(r, 'busy')} | "
                f"{'pass' if r['audit'] else 'FAIL'} |"
            )
    if s1 and s2:
        gain = s2["ok_rps"] / max(1, s1["ok_rps"])
        per_core = [r["ok_rps"] / max(0.01, r["cpu"]["cores_used"]["server"]) for r in (s1, s2)]
        cores = f"{_cores(s1, 'server')} vs {_cores(s2, 'server')} server cores"
        efficiency = (
            f"per server core the work was about the same ({per_core[0]:,.0f} vs "
            f"{per_core[1]:,.0f} orders/s), so throughput followed the CPU the server tier got"
            if abs(per_core[1] / per_core[0] - 1) <= 0.15
            else f"per server core it did less ({per_core[0]:,.0f} vs {per_core[1]:,.0f} "
            "orders/s): two server processes on two shared cores add context switches and "
            "take their extra CPU from PostgreSQL and the harness"
        )
        if s1["cpu"]["cores_busy"] >= 0.9 * m["nproc"]:
            verdict = (
                f"The machine was already saturated with one server ({_cores(s1, 'busy')} "
                f"of {m['nproc']} cores busy), so a second process found no idle core: the "
                f"server tier got {cores} only by taking CPU from PostgreSQL, the harness "
                f"and other work; {efficiency}."
            )
        else:
            verdict = (
                f"One server left cores idle ({_cores(s1, 'busy')} of {m['nproc']} busy) "
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
    """Parse arguments, run (or --render), write the docs; exit 1 if an audit failed."""
    parser = argparse.ArgumentParser(prog="bench_rush", description=__doc__.split("\n")[0])
    parser.add_argument("--seats", type=int, default=20_000, help="places per event")
    parser.add_argument("--buyers", type=int, default=2_000, help="customer accounts")
    parser.add_argument("--concurrency", type=int, default=64, help="closed-loop users")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out")
    parser.add_argument("--scale-duration", type=float, default=12.0, help="scale-out runs")
    parser.add_argument("--pgbench-duration", type=int, default=10, help="pgbench -T")
    parser.add_argument(
        "--pool-size", type=int, default=20, help="TICKETING_DB_POOL_SIZE of each server"
    )
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
        # Two servers' pools must fit next to other people's tests on a shared PostgreSQL.
        args.pool_size = min(args.pool_size, 8)
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
            write_json(result, saved)
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
