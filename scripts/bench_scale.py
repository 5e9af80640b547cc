"""Scale-out: worker processes, nginx grpc_pass in front, client-side round_robin.

One run, on a throwaway database `ticketing_scale_<random>` (on DATABASE_URL's PostgreSQL,
else postgresql://postgres@127.0.0.1:5432/postgres; dropped at the end), every leg a
`ticketing-rush specific` closed loop on a fresh event, each audited through the API:

  1. workers: `ticketd serve --workers 1`, then `--workers 2` (same total pool), on one port;
  2. nginx: N plain ticketd processes (same database and JWT secret) behind Debian's nginx
     with docs/deploy/nginx-grpc.conf (its upstream and listen lines replaced), the rush
     through nginx. nginx missing: installed with apt-get when running as root, else the
     leg is skipped and the report says how to install it;
  3. round_robin: the same N processes, the rush with `--round-robin` over their addresses.

Writes docs/bench_scale.json (or --json) and, unless --no-docs, the "Scale-out" section of
docs/benchmarks.md. Exit 1 if an audit failed. Bounded: every rush has a duration.

On a many-core host the same command measures what the issue asks of it (`--workers-max`
and `--servers` raise N); on the 2-core development box expect little from a second worker:
the client, PostgreSQL and both workers share the same two cores.

Usage: scripts/bench_scale [--quick] [--servers N] [--workers-max N] [--duration S]
       [--concurrency N] [--seats N] [--buyers N] [--pool-size N] [--json PATH] [--no-docs]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, wait_for_quiet
from scripts.benchlib.database import admin_url, database_name, throwaway_database
from scripts.benchlib.harness import HarnessError, run_harness, summarize
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import (
    benchmark_server,
    free_port,
    new_jwt_secret,
    new_password,
)
from scripts.benchlib.report import header, log, write_json

DOCS = ROOT / "docs"
NGINX_CONF = DOCS / "deploy" / "nginx-grpc.conf"
BENCHMARKS_MD = DOCS / "benchmarks.md"
SECTION_TITLE = "## Scale-out: workers, nginx, round_robin"
ADMIN_EMAIL = "scale-admin@example.test"
HARNESS_SLACK_S = 240.0
INSTALL_HINT = "apt-get install -y nginx (Debian/Ubuntu), then run scripts/bench_scale again"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a supervisor's workers, for CPU accounting)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    found.append(int(entry))
    return found


def find_nginx() -> tuple[str | None, str]:
    """nginx's path, installing Debian's package when missing and allowed; else a reason."""
    sbin = Path("/usr/sbin/nginx")
    found = shutil.which("nginx") or (str(sbin) if sbin.exists() else None)
    if found:
        return found, "present"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"nginx is not installed and this user cannot install it: {INSTALL_HINT}"
    log("nginx missing: apt-get install -y nginx")
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "nginx"], check=True, timeout=600, capture_output=True
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"apt-get install nginx failed ({exc}): {INSTALL_HINT}"
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return (found, "installed") if Path(found).exists() else (None, INSTALL_HINT)


def nginx_version(binary: str) -> str:
    """`nginx version: nginx/1.22.1` (nginx -v writes it to stderr)."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    return done.stderr.strip()


def nginx_config(upstreams: Sequence[str], port: int) -> str:
    """docs/deploy/nginx-grpc.conf with our servers in the upstream and our listen port."""
    text = NGINX_CONF.read_text(encoding="utf-8")
    lines = "\n".join(f"        server {u} max_fails=3 fail_timeout=5s;" for u in upstreams)
    text, n = re.subn(
        r"(?m)^        server 127\.0\.0\.1:\d+ [^\n]*\n(?:        server [^\n]*\n)*",
        lines + "\n",
        text,
    )
    assert n == 1, "the upstream block of docs/deploy/nginx-grpc.conf changed shape"
    text, n = re.subn(r"listen 127\.0\.0\.1:\d+ http2;", f"listen 127.0.0.1:{port} http2;", text)
    assert n == 1, "the listen line of docs/deploy/nginx-grpc.conf changed shape"
    # One nginx worker: the box has two cores, which the servers and PostgreSQL need.
    return text.replace("worker_processes auto;", "worker_processes 1;")


@contextlib.asynccontextmanager
async def running_nginx(binary: str, upstreams: Sequence[str], tmp: Path) -> AsyncIterator[str]:
    """nginx in the foreground in its own prefix; yields HOST:PORT; stopped at the end."""
    prefix = tmp / "nginx"
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx-grpc.conf"
    conf.write_text(nginx_config(upstreams, port), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-p",
        str(prefix),
        "-c",
        str(conf),
        "-e",
        str(prefix / "error.log"),
        "-g",
        "daemon off;",
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if proc.returncode is not None:
                raise RuntimeError(f"nginx exited: {(prefix / 'error.log').read_text()}")
            await asyncio.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


class Bench:
    """The runs of one invocation and what they share."""

    def __init__(self, args: argparse.Namespace, reports: Path) -> None:
        self.args = args
        self.reports = reports
        self.admin_password = new_password()
        self.token_cache = reports / "tokens.json"
        self.runs: list[dict[str, Any]] = []

    async def rush(
        self,
        name: str,
        targets: Sequence[str],
        pids: Sequence[int],
        database: str,
        extra: Sequence[str] = (),
    ) -> dict[str, Any]:
        """One audited `ticketing-rush specific` closed loop; its summary (kept in runs)."""
        a = self.args
        args = [
            "--seats",
            str(a.seats),
            "--buyers",
            str(a.buyers),
            "--seed",
            "42",
            "--concurrency",
            str(a.concurrency),
            "--duration",
            str(a.duration),
            "--connections",
            str(4 * max(1, len(targets))),
            *extra,
        ]
        log(f"\n== {name}: ticketing-rush specific {' '.join(args)}")
        try:
            run = await run_harness(
                "specific",
                targets,
                args,
                admin_email=ADMIN_EMAIL,
                admin_password=self.admin_password,
                report_path=self.reports / f"{name}.json",
                cpu=CpuGroups(tuple(pids), (), database),
                timeout_s=a.duration + HARNESS_SLACK_S,
                token_cache=self.token_cache,
            )
        except HarnessError as exc:
            log(str(exc))
            raise
        summary = summarize(run.report)
        row = {
            "name": name,
            "command": run.command,
            "ok_rps": summary["ok_rps"],
            "rps": summary["rps"],
            "tickets_per_s": summary["tickets_per_s"],
            "p50_ms": summary["latency"]["p50_ms"],
            "p99_ms": summary["latency"]["p99_ms"],
            "audit": summary["audit"],
            "audit_failed": summary["audit_failed"],
            "cpu": run.cpu,
        }
        log(
            f"   {row['ok_rps']:.0f} ok/s, p99 {row['p99_ms']} ms, audit "
            f"{'pass' if row['audit'] else 'FAIL'}"
        )
        self.runs.append(row)
        return row


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin = admin_url()
    idle = await wait_for_quiet(30, sample_s=2)
    machine = await machine_info(admin, idle)
    result: dict[str, Any] = header("bench_scale", "scripts/bench_scale")
    result["machine"] = machine
    result["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    secret = new_jwt_secret()
    with tempfile.TemporaryDirectory(prefix="ticketing-bench-scale-") as tmp_text:
        tmp = Path(tmp_text)
        reports = tmp / "reports"
        reports.mkdir()
        bench = Bench(args, reports)
        async with throwaway_database(admin, "ticketing_scale") as url:
            database = database_name(url)
            # 1. Worker processes on one port, the same total pool.
            for workers in range(1, args.workers_max + 1):
                proc = benchmark_server(
                    url,
                    tmp / f"w{workers}",
                    admin_email=ADMIN_EMAIL,
                    admin_password=bench.admin_password,
                    jwt_secret=secret,
                    pool_size=args.pool_size,
                    name=f"workers-{workers}",
                )
                proc.port = free_port()  # a supervisor needs its port up front
                proc.args = ("serve", "--log-level", "WARNING", "--workers", str(workers))
                await proc.start(timeout_s=120)
                try:
                    assert proc.pid is not None
                    pids = [proc.pid, *children(proc.pid)]
                    await bench.rush(f"workers-{workers}", [proc.target], pids, database)
                finally:
                    await proc.stop()
            # 2 and 3. N plain processes, the pool split between them.
            servers = [
                benchmark_server(
                    url,
                    tmp / f"s{i}",
                    admin_email=ADMIN_EMAIL,
                    admin_password=bench.admin_password,
                    jwt_secret=secret,
                    pool_size=max(2, args.pool_size // args.servers),
                    name=f"server-{i}",
                )
                for i in range(args.servers)
            ]
            await asyncio.gather(*(s.start(timeout_s=120) for s in servers))
            try:
                targets = [s.target for s in servers]
                pids = [s.pid for s in servers if s.pid is not None]
                binary, status = await asyncio.to_thread(find_nginx)
                result["nginx"] = {"status": status}
                if binary is None:
                    log(f"\n== nginx: SKIPPED: {status}")
                else:
                    result["nginx"]["version"] = await asyncio.to_thread(nginx_version, binary)
                    async with running_nginx(binary, targets, tmp) as front:
                        await bench.rush(f"nginx-{args.servers}", [front], pids, database)
                await bench.rush(
                    f"round-robin-{args.servers}", targets, pids, database, ["--round-robin"]
                )
            finally:
                await asyncio.gather(*(s.stop() for s in servers))
    result["runs"] = bench.runs
    by = {r["name"]: r for r in bench.runs}
    one = by.get("workers-1")
    if one and one["ok_rps"]:
        result["ratios"] = {name: round(r["ok_rps"] / one["ok_rps"], 2) for name, r in by.items()}
    return result


def render(result: dict[str, Any]) -> str:
    """The Scale-out section of docs/benchmarks.md."""
    a = result["args"]
    m = result["machine"]
    lines = [
        SECTION_TITLE,
        "",
        "**Question.** What do N worker processes on one port, nginx `grpc_pass` in front of "
        "N servers, and the SDK's client-side `round_robin` give on this machine, and do the "
        "invariants hold through each?",
        "",
        f"**Command** (one run, {result['when']}):",
        "",
        "```sh",
        "scripts/bench_scale" + (" --quick" if a.get("quick") else ""),
        "```",
        "",
        f"**Setup.** {m.get('nproc', '?')} cores ({m.get('cpu_model') or 'unknown'}), "
        f"PostgreSQL {m.get('postgresql_version', '?')}; {m.get('layout')}; "
        f"{m.get('busy_cores_before_start') or 0:.2f} cores busy with other work at the start. "
        f"Each leg: `ticketing-rush specific`, closed loop, {a['concurrency']} users, "
        f"{a['duration']:g} s, {a['connections']} connections, a fresh {a['seats']:,}-seat "
        f"event, {a['buyers']} buyers; total "
        f"pool {a['pool_size']} connections, divided between workers or servers. nginx: "
        f"{result.get('nginx', {}).get('version', result.get('nginx', {}).get('status'))}, "
        "config docs/deploy/nginx-grpc.conf.",
        "",
        "| leg | ok bookings/s | vs 1 worker | p50 ms | p99 ms | audit |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ratios = result.get("ratios", {})
    for r in result["runs"]:
        lines.append(
            f"| {r['name']} | {r['ok_rps']:.0f} | {ratios.get(r['name'], 0):.2f}x | "
            f"{r['p50_ms']} | {r['p99_ms']} | {'pass' if r['audit'] else 'FAIL'} |"
        )
    if result.get("nginx", {}).get("status", "").startswith("nginx is not"):
        lines += ["", f"nginx leg skipped: {result['nginx']['status']}"]
    lines += [
        "",
        "**Reading.** On two cores a second worker has no idle core to use: the rush client, "
        "PostgreSQL and the workers already share both, so the ratio shows the cost of the "
        "extra process, not the gain a many-core host gets from the same command "
        "(`scripts/bench_scale --workers-max 8 --servers 4`). nginx adds one proxy hop per "
        "call (its CPU is on the same cores); round_robin spreads calls with no hop.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace our section (from its heading to the next `## `) or append it."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    start = text.find(f"\n{SECTION_TITLE}\n")
    if start == -1:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        nxt = text.find("\n## ", start + 1 + len(SECTION_TITLE))
        tail = "" if nxt == -1 else text[nxt:]
        new = text[: start + 1] + section.rstrip("\n") + "\n" + tail
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, write the JSON and the docs; exit 1 if an audit failed."""
    parser = argparse.ArgumentParser(prog="bench_scale", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--servers", type=int, default=2, help="ticketd processes behind nginx")
    parser.add_argument("--workers-max", type=int, default=2, help="measure 1..N workers")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per leg")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop users")
    parser.add_argument("--seats", type=int, default=20_000, help="places per event")
    parser.add_argument("--buyers", type=int, default=500, help="customer accounts")
    parser.add_argument("--pool-size", type=int, default=20, help="total database pool")
    parser.add_argument("--connections", type=int, default=16, help="client connections")
    parser.add_argument("--json", type=Path, default=DOCS / "bench_scale.json")
    parser.add_argument("--no-docs", action="store_true", help="do not touch docs/")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.seats, args.buyers, args.concurrency = 4.0, 2_000, 40, 8
    if not (1 <= args.servers <= 16 and 1 <= args.workers_max <= 64 and args.duration <= 600):
        parser.error("--servers 1..16, --workers-max 1..64, --duration at most 600")
    started = time.perf_counter()
    result = asyncio.run(run(args))
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_json(result, args.json)
    if not args.no_docs:
        write_section(render(result))
    log(f"\nreport: {args.json}")
    failed = [r["name"] for r in result["runs"] if not r["audit"]]
    if failed:
        log(f"AUDIT FAILED: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
