"""Benchmark gate validation: ValidateTicket throughput and latency with concurrent kiosks.

A thin wrapper around the rush harness's gate scenario (`ticketing-rush gate`, which sells an
event out untimed and then has kiosks scan every ticket, with a share of duplicate scans of
already scanned tickets shown at another gate). One run, on this machine:

  * a throwaway database `ticketing_bench_<random>` on the local PostgreSQL (dropped at the
    end) and `python -m ticketd` as a separate process on 127.0.0.1 (free port);
  * pass 1: `ticketing-rush gate` on a new event of `--tickets` reserved seats, sold out in
    100-place best-available orders, then scanned by `--kiosks` concurrent kiosks (default
    16; a closed loop, no think time) over as many connections and gates, `--duplicates`
    (default 10%) of the scans being repeats; the first `--warmup` seconds of scans are left
    out of the figures;
  * `--passes` (default 3) in all: before passes 2.. every ticket is VALID again and the
    event's scan log emptied (SQL), and the harness scans the same event again (`--event`);
    the report's `results` is the pass with the median throughput, and every pass is listed
    (a shared machine is noisy);
  * after each pass, besides the harness's own invariant audit (through the API), the
    database is checked: every ticket USED exactly once, one ADMITTED scan per ticket, one
    log entry per answered scan;
  * the transport ceiling for context: grpc.health.v1 Health/Check, same number of
    connections and calls in flight (the harness has no such scenario).

The per-gate scan rate bound (default 100/s, burst 200 per gate) would cap 16 gates at
1,600 scans/s and measure the limiter rather than the engine, so the server is started with
TICKETING_GATE_SCAN_RATE and TICKETING_GATE_SCAN_BURST = `--gate-rate` (default 1,000,000),
and the per-caller bound (TICKETING_CALLER_SCAN_RATE/_BURST: one account scans for every kiosk)
the same; refusals are still counted and reported. `--max-seconds` bounds each pass's
scanning; every call has a 5 s deadline.

Usage: scripts/bench_gate [--json PATH] [--tickets 5000] [--kiosks 16] [--duplicates 0.1]
       [--passes 3] [--max-seconds 120] [--gate-rate 1000000] [--pool-size 20] [--seed 1]
       [--warmup 0.5]
Admin URL: DATABASE_URL, else postgresql://postgres@127.0.0.1:5432/postgres. Loopback only.
Output: a table on stdout, JSON in --json (default docs/bench_gate.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups
from scripts.benchlib.database import admin_url, connect_db, database_name, throwaway_database
from scripts.benchlib.harness import HarnessError, run_harness, summarize
from scripts.benchlib.loops import Outcome, closed_loop
from scripts.benchlib.machine import machine_info
from scripts.benchlib.process import ServerProcess, benchmark_server
from scripts.benchlib.provision import channel
from scripts.benchlib.report import header, log, write_json

DEFAULT_JSON = ROOT / "docs" / "bench_gate.json"
ADMIN_EMAIL = "bench-admin@example.test"
ORDER_SIZE = 100  # the most one order may hold (Event.max_tickets_per_order)
CALL_TIMEOUT_S = 5.0
CEILING_SECONDS = 3.0
# Customers who buy the tickets in the untimed sell phase (the harness reuses them).
BUYERS = 16
# Set-up, the sell phase and the audit come on top of the scanning's --max-seconds.
HARNESS_SLACK_S = 240.0
# What the gate scenario prints when the sell phase is over and the scanning begins: the
# CPU window starts there.
SCANNING = "; scanning"


# ---------------------------------------------------------------------------------------------
# Passes


async def reset_scans(conn: asyncpg.Connection, event_id: str) -> None:
    """Un-burn every ticket of the event and empty its scan log, for the next pass."""
    await conn.execute(
        "UPDATE tickets SET status = 'VALID', used_time = NULL, used_gate_id = NULL, "
        "used_scan_id = NULL WHERE event_id = $1::uuid",
        event_id,
    )
    await conn.execute("DELETE FROM scans WHERE event_id = $1::uuid", event_id)
    await conn.execute("VACUUM (ANALYZE) tickets, scans")


async def verify(conn: asyncpg.Connection, event_id: str, run: dict[str, Any]) -> dict[str, Any]:
    """Exactly once, read straight from PostgreSQL, next to the harness's own audit."""
    row = await conn.fetchrow(
        """
        SELECT
          (SELECT count(*) FROM tickets WHERE event_id = $1::uuid
             AND status IN ('VALID', 'USED')) AS tickets,
          (SELECT count(*) FROM tickets WHERE event_id = $1::uuid AND status = 'USED')
            AS used,
          (SELECT count(*) FROM tickets WHERE event_id = $1::uuid AND status = 'VALID')
            AS valid,
          (SELECT count(*) FROM scans WHERE event_id = $1::uuid AND result = 'ADMITTED')
            AS admitted_scans,
          (SELECT count(*) FROM scans WHERE event_id = $1::uuid) AS logged,
          (SELECT count(*) FROM (SELECT ticket_id FROM scans
             WHERE event_id = $1::uuid AND result = 'ADMITTED'
             GROUP BY ticket_id HAVING count(*) > 1) x) AS tickets_admitted_twice
        """,
        event_id,
    )
    checks: dict[str, Any] = {
        "tickets": row["tickets"],
        "tickets_used": row["used"],
        "tickets_still_valid": row["valid"],
        "admitted_scans_logged": row["admitted_scans"],
        "tickets_admitted_twice": row["tickets_admitted_twice"],
        # Every answered scan (warm-up included) is one scan log entry.
        "scans_logged": row["logged"],
        "scans_answered": run["answered_with_warmup"],
        "harness_audit_passed": run["audit"],
        "harness_audit_failed": run["audit_failed"],
    }
    checks["ok"] = (
        row["used"] == row["tickets"] == row["admitted_scans"]
        and row["tickets_admitted_twice"] == 0
        and row["logged"] == run["answered_with_warmup"]
        and bool(run["audit"])
    )
    return checks


def pass_result(n: int, command: str, run: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    """One pass's figures from the harness's report summary."""
    actions = run["actions"]
    return {
        "pass": n,
        "event_id": run["event_id"],
        "command": command,
        "scans": run["count"],
        "duplicate_scans": actions.get("scan_duplicate", {}).get("count", 0),
        "warmup_scans": run["warmup_requests"],
        # The harness stops by itself once every ticket is scanned; anything else means the
        # --max-seconds bound cut the pass short.
        "completed": run["stop"] == "exhausted",
        "stop_reason": run["stop"],
        "wall_s": run["seconds"],
        "validations_per_s": run["ok_rps"],
        "statuses": run["statuses"],
        "results": run["scans"],
        "latency_all": run["latency"],
        "latency_by_action": {name: a["latency"] for name, a in sorted(actions.items())},
        "cpu": cpu,
        "loadavg_after": list(os.getloadavg()),
        "sell_phase": run["setup"].get("sellPhase"),
    }


async def run_pass(
    n: int,
    args: argparse.Namespace,
    server: ServerProcess,
    conn: asyncpg.Connection,
    event_id: str | None,
    work: Path,
) -> dict[str, Any]:
    """Pass n: `ticketing-rush gate` on a new event (n = 1) or on `event_id` again."""
    harness_args = [
        *(["--event", event_id] if event_id else ["--seats", str(args.tickets)]),
        *("--order-size", str(ORDER_SIZE), "--buyers", str(BUYERS)),
        *("--concurrency", str(args.kiosks), "--connections", str(args.kiosks)),
        *("--gates", str(args.kiosks), "--dup-share", str(args.duplicates)),
        *("--duration", str(args.max_seconds), "--warmup", str(args.warmup)),
        *("--timeout", str(CALL_TIMEOUT_S), "--seed", str(args.seed + n - 1)),
    ]
    assert server.admin_password is not None and server.pid is not None
    try:
        harness = await run_harness(
            "gate",
            [server.target],
            harness_args,
            admin_email=ADMIN_EMAIL,
            admin_password=server.admin_password,
            report_path=work / f"pass-{n}.json",
            cpu=CpuGroups((server.pid,), (), database_name(server.database_url or "")),
            timeout_s=args.max_seconds + HARNESS_SLACK_S,
            token_cache=work / "tokens.json",
            shown={event_id or "": "EVENT_ID"} if event_id else None,
            cpu_from=SCANNING,
        )
    except HarnessError:
        log(f"ticketd log (tail):\n{server.log(60)}")
        raise
    run = summarize(harness.report)
    result = pass_result(n, harness.command, run, harness.cpu)
    result["verification"] = await verify(conn, run["event_id"], run)
    return result


async def transport_ceiling(target: str, connections: int) -> dict[str, Any]:
    """Health/Check back to back, one call in flight per connection, for CEILING_SECONDS."""
    channels = [channel(target) for _ in range(connections)]
    stubs = [health_pb2_grpc.HealthStub(ch) for ch in channels]
    request = health_pb2.HealthCheckRequest()

    async def call(k: int) -> Outcome:
        try:
            await stubs[k].Check(request, timeout=CALL_TIMEOUT_S)
        except aio.AioRpcError as err:
            return Outcome(err.code().name)
        return Outcome()

    try:
        window = await closed_loop(
            connections, call, duration_s=CEILING_SECONDS, call_timeout_s=CALL_TIMEOUT_S
        )
    finally:
        for ch in channels:
            await ch.close(None)
    figures = window.figures()
    return {
        "calls_per_s": figures["rps_all"],
        **{k: figures[k] for k in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")},
        "statuses": figures["statuses"],
    }


# ---------------------------------------------------------------------------------------------
# Report


def _line(p: dict[str, Any]) -> str:
    lat = p["latency_all"]
    return (
        f"pass {p['pass']}: {p['validations_per_s']} validations/s, p50 {lat['p50_ms']} ms, "
        f"p99 {lat['p99_ms']} ms, statuses {p['statuses']}, ok {p['verification']['ok']}"
    )


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """The whole run; the report as written to --json."""
    admin = admin_url()
    started = time.perf_counter()
    machine = await machine_info(admin)
    passes: list[dict[str, Any]] = []
    async with throwaway_database(admin) as url:
        with tempfile.TemporaryDirectory(prefix="ticketing-bench-gate-") as tmp:
            work = Path(tmp)
            server = benchmark_server(
                url,
                work / "server",
                admin_email=ADMIN_EMAIL,
                pool_size=args.pool_size,
                env={
                    "TICKETING_GATE_SCAN_RATE": str(args.gate_rate),
                    "TICKETING_GATE_SCAN_BURST": str(args.gate_rate),
                    # One gate account scans for every kiosk: the per-caller bound must not
                    # cap it either.
                    "TICKETING_CALLER_SCAN_RATE": str(args.gate_rate),
                    "TICKETING_CALLER_SCAN_BURST": str(args.gate_rate),
                },
            )
            await server.start()
            log(f"ticketd pid {server.pid} on {server.target}")
            conn = await connect_db(url)
            try:
                event_id: str | None = None
                for n in range(1, args.passes + 1):
                    if event_id is not None:
                        await reset_scans(conn, event_id)
                    passes.append(await run_pass(n, args, server, conn, event_id, work))
                    event_id = passes[-1]["event_id"]
                    log(_line(passes[-1]))
                ceiling = await transport_ceiling(server.target, args.kiosks)
            finally:
                await conn.close()
                await server.stop(timeout=15)
    by_rate = sorted(passes, key=lambda p: p["validations_per_s"] or 0.0)
    median = by_rate[len(by_rate) // 2]
    return {
        **header(
            "gate validation (GateService.ValidateTicket) with concurrent kiosks",
            "scripts/bench_gate",
        ),
        "setup": {
            "server": "separate process: python -m ticketd (DATABASE_URL, TICKETING_LISTEN="
            "127.0.0.1:0, TICKETING_BCRYPT_ROUNDS=4)",
            "db_pool_size": args.pool_size,
            "gate_rate_bound": f"TICKETING_GATE_SCAN_RATE=TICKETING_GATE_SCAN_BURST="
            f"{args.gate_rate} per gate (default 100/s, burst 200, lifted so the engine, "
            "not the limiter, is measured)",
            "harness": "ticketing-rush gate (clients/ticketing/rush), as its own process; "
            "each pass's command is in passes[].command",
            "kiosks": args.kiosks,
            "gates": [f"gate-{k:02d}" for k in range(args.kiosks)],
            "client": f"ticketing-rush closed loop of {args.kiosks} users over {args.kiosks} "
            "connections (own HTTP/2 connection each) and gates, no think time; a fresh "
            "ticket goes to the next gate in turn, a duplicate to another gate than its "
            "first scan",
            "tickets": passes[0]["verification"]["tickets"],
            "ticket_sale": f"BookSeats best available, {ORDER_SIZE} places per order, untimed "
            "(the harness's sell phase)",
            "duplicates": args.duplicates,
            "warmup": f"scans due in the first {args.warmup:g} s of each pass are left out of "
            "the figures (ticketing-rush --warmup)",
            "call_timeout_s": CALL_TIMEOUT_S,
            "validations_per_s": "answered ValidateTicket calls / (last answer - first "
            "measured send), the harness's okRps",
            "cpu": "from the end of the sell phase to the harness's exit (its audit "
            "included); client = the harness",
            "passes": f"{args.passes} passes over the same tickets; between passes every "
            "ticket is set VALID again and the event's scan log emptied; `results` is the "
            "pass with the median validations/s",
        },
        "median_pass": median["pass"],
        "results": median,
        "passes": passes,
        "transport_ceiling_health_check": ceiling,
        "verification_ok": all(p["verification"]["ok"] for p in passes),
        "machine": machine,
        "loadavg_at_end": list(os.getloadavg()),
        "total_runtime_s": round(time.perf_counter() - started, 1),
    }


def render_table(report: dict[str, Any]) -> str:
    """The report as the table printed on stdout."""
    median = report["results"]
    lines = [
        f"kiosks={report['setup']['kiosks']} tickets={report['setup']['tickets']} "
        f"scans (median pass)={median['scans']} (duplicates {median['duplicate_scans']}, "
        f"warm-up {median['warmup_scans']} left out)",
        f"{'pass':>4} {'valid/s':>8} {'wall s':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'srv':>5} {'pg':>5} {'cli':>5}  statuses",
    ]
    for p in report["passes"]:
        lat, cores = p["latency_all"], p["cpu"]["cores_used"]
        lines.append(
            f"{p['pass']:>4} {p['validations_per_s']:>8} {p['wall_s']:>7} {lat['p50_ms']:>7} "
            f"{lat['p90_ms']:>7} {lat['p99_ms']:>7} {lat['max_ms']:>7} {cores['server']:>5.2f} "
            f"{cores['postgres']:>5.2f} {cores['client']:>5.2f}  {p['statuses']}"
        )
    lines.append(f"median pass: {median['pass']}, results {median['results']}")
    for name, stats in median["latency_by_action"].items():
        lines.append(f"  {name:<15} p50 {stats['p50_ms']} ms  p99 {stats['p99_ms']} ms")
    c = report["transport_ceiling_health_check"]
    lines.append(f"Health/Check ceiling {c['calls_per_s']} calls/s  p99 {c['p99_ms']} ms")
    lines.append(f"verification ok in every pass: {report['verification_ok']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print the table, write the JSON; exit 1 if a check failed."""
    parser = argparse.ArgumentParser(prog="bench_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--json", metavar="PATH", default=str(DEFAULT_JSON))
    parser.add_argument("--tickets", type=int, default=5000, help="tickets sold and scanned")
    parser.add_argument("--kiosks", type=int, default=16, help="concurrent kiosks (gates)")
    parser.add_argument("--duplicates", type=float, default=0.1, help="share of rescans")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="bound on each pass")
    parser.add_argument("--gate-rate", type=int, default=1_000_000, help="per-gate rate bound")
    parser.add_argument("--pool-size", type=int, default=20, help="TICKETING_DB_POOL_SIZE")
    parser.add_argument("--seed", type=int, default=1, help="scan order")
    parser.add_argument("--passes", type=int, default=3, help="measured passes (median)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds left out per pass")
    args = parser.parse_args(argv)
    if not 100 <= args.tickets <= 100_000:
        parser.error("--tickets must be 100..100000")
    if not 1 <= args.kiosks <= 256:
        parser.error("--kiosks must be 1..256")
    if not 0 <= args.duplicates <= 0.5:
        parser.error("--duplicates must be 0..0.5")
    if not 1 <= args.passes <= 10:
        parser.error("--passes must be 1..10")
    if not 1 <= args.max_seconds <= 600:
        parser.error("--max-seconds must be 1..600")
    if not 0 <= args.warmup < args.max_seconds:
        parser.error("--warmup must be 0 and shorter than --max-seconds")
    report = asyncio.run(bench(args))
    print(render_table(report))
    write_json(report, Path(args.json))
    log(f"report written to {args.json} ({report['total_runtime_s']} s)")
    return 0 if report["verification_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
