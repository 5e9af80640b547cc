"""`ticketing-rush`: command line, set-up, the rush, the report and the audit, in that order.

`main()` is the console script; `async_main(argv)` runs the same thing inside an existing
event loop (tests call it next to an in-process server); `run_rush(options)` takes parsed
options and returns the report and the exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import random
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ticketing.client import balanced_target
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.rush.audit import audit_event
from ticketing.rush.choice import Skew, parse_order_size
from ticketing.rush.inventory import EventView
from ticketing.rush.load import LoadPlan, RunClock, run_load
from ticketing.rush.observer import SeatObserver, merge_into_audit
from ticketing.rush.progress import live_progress
from ticketing.rush.provision import (
    Accounts,
    PartnerSeller,
    TokenCache,
    assign_gate_staff,
    create_event,
    default_token_cache,
    get_event,
    load_seat_map,
    provision_accounts,
    provision_partners,
)
from ticketing.rush.report import build_report, write_chart, write_csv, write_json
from ticketing.rush.stats import Recorder
from ticketing.rush.stubs import open_channels, parse_targets
from ticketing.rush.workload import (
    SCENARIOS,
    Checkout,
    Mix,
    Observed,
    Workload,
    WorkloadOptions,
    sell_out,
)
from ticketing.stubs import Stubs
from ticketing.v1 import event_pb2

EXIT_OK = 0
EXIT_AUDIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUN_FAILED = 3

# Per gate, per server process (TICKETING_GATE_SCAN_RATE, default 100/s). Planning for 80%
# of it leaves the burst for the duplicates and jitter of an open loop.
GATE_RATE_PER_S = 100
GATE_PLANNING_SHARE = 0.8
DEFAULT_CLOSED_LOOP_GATES = 16
MAX_GATE_STAFF = 16
DEFAULT_DURATION_S = 10.0
SELL_WORKERS = 32


@dataclass(frozen=True)
class RushOptions:
    """Everything one run needs; built from the command line by `parse_options`."""

    scenario: str
    targets: tuple[str, ...]
    admin_email: str
    admin_password: str
    seats: int
    buyers: int
    json_path: Path
    concurrency: int | None = 32
    rate: float | None = None
    duration_s: float | None = DEFAULT_DURATION_S
    requests: int | None = None
    connections: int = 4
    warmup_s: float = 0.0
    seed: int = 0
    skew: Skew = field(default_factory=lambda: Skew("zipf", 1.1))
    dup_share: float = 0.1
    event_id: str | None = None
    csv_path: Path | None = None
    chart_path: Path | None = None
    quiet: bool = False
    timeout_s: float = 10.0
    order_size: tuple[int, int] = (1, 4)
    best_share: float = 0.5
    mix: Mix = field(default_factory=Mix)
    checkout: Checkout = field(default_factory=Checkout)
    partners: int = 2
    partner_share: float = 0.3
    partner_places: int | None = None
    gates: int | None = None
    gate_tickets: int | None = None
    max_inflight: int = 10_000
    token_cache: Path | None = None
    buyer_prefix: str = "rush-buyer"
    buyer_password: str = "rush-buyer-password"
    observe: bool = False

    @property
    def target(self) -> str:
        """The --target text (comma-separated when several servers)."""
        return ",".join(self.targets)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def parse_think(text: str) -> tuple[float, float]:
    """`S` or `LO-HI` seconds of think time (0 <= LO <= HI <= 60)."""
    low_text, sep, high_text = text.partition("-")
    try:
        low = float(low_text)
        high = float(high_text) if sep else low
    except ValueError:
        raise ValueError(f"bad --think {text!r}: use S or LO-HI seconds") from None
    if not 0 <= low <= high <= 60:
        raise ValueError(f"bad --think {text!r}: need 0 <= LO <= HI <= 60 seconds")
    return low, high


def build_parser() -> argparse.ArgumentParser:
    """The command line of `ticketing-rush`."""
    parser = argparse.ArgumentParser(
        prog="ticketing-rush",
        description="Ticket-rush load harness: set up an event and a crowd, rush it through "
        "the public API, report throughput/latency/outcomes, then audit every invariant.",
        epilog="Exit status: 0 all invariants hold, 1 an invariant failed (see the report's "
        "audit), 2 bad usage, 3 the run could not be carried out. JSON fields: "
        "python -c 'import ticketing.rush; help(ticketing.rush)'.",
    )
    parser.add_argument(
        "scenario",
        choices=(*SCENARIOS, "audit"),
        help="specific | best-available | mixed | gate | sale | checkout | partners; "
        "`audit` only audits --event",
    )
    parser.add_argument("--target", required=True, help="HOST:PORT[,HOST:PORT...] of ticketd")
    parser.add_argument(
        "--round-robin",
        action="store_true",
        help="several --target IPs as one round_robin target (calls, not connections, spread)",
    )
    parser.add_argument("--admin-email", required=True)
    parser.add_argument("--admin-password", required=True)
    parser.add_argument("--seats", type=_positive_int, default=1_000, help="places of a new event")
    parser.add_argument("--buyers", type=_positive_int, default=100, help="customer accounts")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, help="closed loop: users in flight")
    load.add_argument("--rate", type=_positive_float, help="open loop: arrivals per second")
    parser.add_argument("--duration", type=_positive_float, help="seconds (default 10)")
    parser.add_argument("--requests", type=_positive_int, help="stop after this many sends")
    parser.add_argument("--connections", type=_positive_int, default=4, help="gRPC channels")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds left out of stats")
    parser.add_argument("--seed", type=int, help="seed of every choice (default: random)")
    parser.add_argument("--skew", default="zipf:1.1", help="zipf[:S] or uniform seat picks")
    parser.add_argument("--dup-share", type=_share, default=0.1, help="duplicate scan share")
    parser.add_argument("--event", help="reuse this event instead of creating one")
    parser.add_argument("--json", required=True, type=Path, help="report path")
    parser.add_argument("--csv", type=Path, help="time series as CSV")
    parser.add_argument("--chart", type=Path, help="PNG chart of throughput and latency")
    parser.add_argument("--quiet", action="store_true", help="no progress bar, no summary")
    parser.add_argument("--timeout", type=_positive_float, default=10.0, help="per-call deadline")
    parser.add_argument("--order-size", default="1-4", help="places per booking: N or LO-HI")
    parser.add_argument("--best-share", type=_share, default=0.5, help="mixed: best-available")
    parser.add_argument(
        "--mix", default="book=0.7,refund=0.15,scan=0.15", help="sale: shares of each action"
    )
    checkout = parser.add_argument_group("checkout scenario (hold, think, pay or abandon)")
    checkout.add_argument("--abandon-share", type=_share, default=0.3, help="holders who never pay")
    checkout.add_argument(
        "--release-share", type=_share, default=0.5, help="abandoners who release (others expire)"
    )
    checkout.add_argument("--late-share", type=_share, default=0.05, help="payers paying late")
    checkout.add_argument("--think", default="0.05-0.5", help="seconds before paying: S or LO-HI")
    checkout.add_argument(
        "--hold-ttl", type=_positive_float, default=5.0, help="seconds a hold lasts (>= 1)"
    )
    resellers = parser.add_argument_group("partners scenario (resellers with allocations)")
    resellers.add_argument("--partners", type=_positive_int, default=2, help="partner resellers")
    resellers.add_argument(
        "--partner-share", type=_share, default=0.3, help="share of requests by partners"
    )
    resellers.add_argument(
        "--partner-places", type=_positive_int, help="places allocated to each (default 10%%)"
    )
    parser.add_argument("--gates", type=_positive_int, help="gates (default: from the rate)")
    parser.add_argument("--gate-tickets", type=_positive_int, help="gate: tickets to sell first")
    parser.add_argument("--max-inflight", type=_positive_int, default=10_000, help="open loop cap")
    parser.add_argument("--token-cache", type=Path, help="default ~/.cache/ticketing/...")
    parser.add_argument("--no-token-cache", action="store_true", help="always sign in anew")
    parser.add_argument("--buyer-prefix", default="rush-buyer", help="buyer email prefix")
    parser.add_argument("--buyer-password", default="rush-buyer-password")
    parser.add_argument(
        "--observe",
        action="store_true",
        help="follow WatchSeats during the rush (own connection) and audit the stream: no "
        "gap or repeat, final map equal to ListSeats (server: TICKETING_SEAT_STREAMS=on)",
    )
    return parser


def parse_options(argv: Sequence[str] | None = None) -> RushOptions:
    """Parse and validate the command line; exits with status 2 on bad usage."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        targets = parse_targets(args.target)
        if args.round_robin:
            targets = [balanced_target(targets)[0]]
        skew = Skew.parse(args.skew)
        order_size = parse_order_size(args.order_size)
        mix = Mix.parse(args.mix)
        think = parse_think(args.think)
    except ValueError as exc:
        parser.error(str(exc))
    if not 1 <= args.hold_ttl <= 1800:
        parser.error("--hold-ttl must be 1..1800 s (the server's limits)")
    if args.scenario == "audit" and not args.event:
        parser.error("audit needs --event")
    if args.scenario == "audit" and args.observe:
        parser.error("--observe follows a rush; `audit` has none")
    if not 0 <= args.warmup <= 3600:
        parser.error("--warmup must be 0..3600 s")
    if args.duration is not None and args.warmup >= args.duration:
        parser.error("--warmup must be shorter than --duration")
    if args.event is not None:
        try:
            uuid.UUID(args.event)
        except ValueError:
            parser.error("--event must be an event id (UUID)")
    duration = args.duration
    if duration is None and args.requests is None:
        duration = DEFAULT_DURATION_S
    concurrency = args.concurrency if args.rate is None else None
    if concurrency is None and args.rate is None:
        concurrency = 32
    token_cache = None if args.no_token_cache else (args.token_cache or default_token_cache())
    return RushOptions(
        scenario=args.scenario,
        targets=tuple(targets),
        admin_email=args.admin_email,
        admin_password=args.admin_password,
        seats=args.seats,
        buyers=args.buyers,
        json_path=args.json,
        concurrency=concurrency,
        rate=args.rate,
        duration_s=duration,
        requests=args.requests,
        connections=args.connections,
        warmup_s=args.warmup,
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(2**31),
        skew=skew,
        dup_share=args.dup_share,
        event_id=args.event,
        csv_path=args.csv,
        chart_path=args.chart,
        quiet=args.quiet,
        timeout_s=args.timeout,
        order_size=order_size,
        best_share=args.best_share,
        mix=mix,
        checkout=Checkout(
            abandon=args.abandon_share,
            release=args.release_share,
            late=args.late_share,
            think_s=think,
            hold_ttl_s=args.hold_ttl,
        ),
        partners=args.partners,
        partner_share=args.partner_share,
        partner_places=args.partner_places,
        gates=args.gates,
        gate_tickets=args.gate_tickets,
        max_inflight=args.max_inflight,
        token_cache=token_cache,
        buyer_prefix=args.buyer_prefix,
        buyer_password=args.buyer_password,
        observe=args.observe,
    )


def plan_gates(options: RushOptions) -> int:
    """How many gates the kiosks spread over: enough that no gate goes above 80% of the
    server's per-gate scan rate in an open loop; a fixed 16 in a closed loop."""
    if options.gates is not None:
        return options.gates
    if options.rate is None:
        return DEFAULT_CLOSED_LOOP_GATES
    share = 1.0
    if options.scenario == "sale":
        mix = options.mix
        share = mix.scan / (mix.book + mix.refund + mix.scan)
    scan_rate = options.rate * share
    return max(4, math.ceil(scan_rate / (GATE_RATE_PER_S * GATE_PLANNING_SHARE)))


def _options_json(options: RushOptions) -> dict[str, Any]:
    raw = asdict(options)
    raw.pop("admin_password", None)
    raw.pop("buyer_password", None)
    raw["skew"] = str(options.skew)
    raw["order_size"] = f"{options.order_size[0]}-{options.order_size[1]}"
    for key, value in list(raw.items()):
        if isinstance(value, Path):
            raw[key] = str(value)
        elif isinstance(value, tuple):
            raw[key] = list(value)
    return raw


@dataclass
class RushResult:
    """The report as written, and the exit status it implies."""

    report: dict[str, Any]
    exit_code: int


def _say(options: RushOptions, text: str) -> None:
    if not options.quiet:
        print(text, file=sys.stderr, flush=True)


async def run_rush(options: RushOptions) -> RushResult:
    """Set up, rush, report, audit. Writes --json (and --csv/--chart) before returning.
    Raises grpc.aio.AioRpcError or TicketingError when the set-up itself fails (server down,
    bad admin)."""
    started = time.perf_counter()
    channels = open_channels(options.targets, options.connections)
    stubs = [Stubs(c) for c in channels]
    try:
        return await _run(options, stubs, started)
    finally:
        for channel in channels:
            await channel.close(None)


async def _run(options: RushOptions, stubs: list[Stubs], started: float) -> RushResult:
    rng = random.Random(options.seed)
    cache = TokenCache(options.token_cache)
    rush = options.scenario != "audit"
    scans = options.scenario in ("gate", "sale")
    gates = plan_gates(options) if scans else 0
    accounts: Accounts = await provision_accounts(
        stubs,
        cache,
        options.target,
        admin_email=options.admin_email,
        admin_password=options.admin_password,
        buyers=options.buyers if rush else 0,
        buyer_prefix=options.buyer_prefix,
        buyer_password=options.buyer_password,
        gate_staff=min(gates, MAX_GATE_STAFF) if scans else 0,
    )
    _say(
        options,
        f"accounts: {len(accounts.buyers)} buyers, {len(accounts.gate_staff)} gate staff "
        f"({accounts.stats.from_cache} from cache, {accounts.stats.registered} registered) "
        f"in {accounts.stats.seconds:.1f} s",
    )
    created = options.event_id is None
    setup_t0 = time.perf_counter()
    if options.event_id is None:
        label = f"{options.scenario} {options.seats} {uuid.uuid4().hex[:6]}"
        event = await create_event(
            stubs[0], accounts.admin, options.seats, max(options.order_size[1], 20), label
        )
    else:
        event = await get_event(stubs[0], options.event_id)
    await assign_gate_staff(stubs[0], accounts.admin, event.id, accounts.gate_staff)
    event_seconds = time.perf_counter() - setup_t0
    order_size = (
        min(options.order_size[0], event.max_tickets_per_order),
        min(options.order_size[1], event.max_tickets_per_order),
    )
    seats = await load_seat_map(stubs[0], event.id)
    observed = Observed()
    sellers: list[PartnerSeller] = []
    if options.scenario == "partners":
        free = [s.id for s in seats if s.status == event_pb2.SEAT_STATUS_AVAILABLE]
        each = options.partner_places or max(1, len(free) // 10)
        each = min(each, len(free) // (2 * options.partners))  # the public keeps half
        sellers = await provision_partners(
            stubs[0],
            accounts.admin,
            event.id,
            free,
            partners=options.partners,
            places_each=each,
            label=uuid.uuid4().hex[:6],
        )
        observed.partner_only.update(seller.partner_id for seller in sellers)
        _say(options, f"partners: {len(sellers)} with {each} allocated places each")
        seats = await load_seat_map(stubs[0], event.id)
    view = EventView(event, seats, options.skew)
    sell: dict[str, Any] | None = None
    workload = Workload(
        WorkloadOptions(
            scenario=options.scenario if rush else "specific",
            order_size=order_size,
            best_share=options.best_share,
            dup_share=options.dup_share,
            mix=options.mix,
            gates=max(1, gates),
            timeout_s=options.timeout_s,
            checkout=options.checkout,
            partner_share=options.partner_share,
        ),
        stubs,
        accounts.buyers,
        accounts.gate_staff,
        view,
        rng,
        observed,
        sellers,
    )
    if options.scenario == "gate":
        target = options.gate_tickets or view.believed_free
        stats = await sell_out(
            view,
            stubs,
            accounts.buyers,
            observed,
            per_order=event.max_tickets_per_order,
            target_tickets=min(target, view.believed_free),
            workers=SELL_WORKERS,
            rng=rng,
            timeout_s=options.timeout_s,
        )
        tickets = list(stats.sold)
        rng.shuffle(tickets)
        workload.unscanned.extend(tickets)
        sell = {
            "orders": stats.orders,
            "tickets": stats.tickets,
            "refusals": dict(stats.refusals),
            "seconds": round(stats.seconds, 3),
            "ticketsToScan": len(tickets),
        }
        _say(options, f"sold {stats.tickets} tickets in {stats.seconds:.1f} s; scanning")

    recorder = Recorder(options.warmup_s)
    clock = RunClock()
    plan = LoadPlan(
        concurrency=options.concurrency,
        rate=options.rate,
        duration_s=options.duration_s,
        requests=options.requests,
        warmup_s=options.warmup_s,
        timeout_s=options.timeout_s,
        max_inflight=options.max_inflight,
        think_max_s=options.checkout.think_max_s if options.scenario == "checkout" else 0.0,
    )
    stop_reason = "audit only"
    observation: dict[str, Any] | None = None
    # The observer has a connection of its own, so its stream never shares an HTTP/2
    # connection (and its flow control) with the load it watches.
    observer_channels = open_channels(options.targets[:1], 1) if options.observe else []
    observer: SeatObserver | None = None
    try:
        if observer_channels:
            observer = SeatObserver(Stubs(observer_channels[0]), event.id)
            await observer.start()
            _say(options, f"observing the seat stream from #{observer.ledger.sequence}")
        if rush:
            title = f"{options.scenario} {plan.model}"
            async with live_progress(plan, recorder, clock, title, enabled=not options.quiet):
                stop_reason = await run_load(plan, workload.next_call, recorder, clock)
        after = await get_event(stubs[0], event.id)
        audit = await audit_event(stubs[0], accounts.admin, event.id, observed)
        if observer is not None:
            observation, stream_checks = await observer.finish(accounts.admin)
            merge_into_audit(audit, stream_checks)
    finally:
        if observer is not None:
            await observer.stop()
        for channel in observer_channels:
            await channel.close(None)
    exit_code = EXIT_OK if audit["passed"] else EXIT_AUDIT_FAILED
    report = build_report(
        recorder,
        name="ticketing-rush",
        scenario=options.scenario,
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        target=options.target,
        loadModel=plan.model,
        concurrency=options.concurrency,
        rate=options.rate,
        connections=options.connections,
        seed=options.seed,
        skew=str(options.skew),
        stopReason=stop_reason,
        sent=clock.sent,
        skippedArrivals=clock.skipped,
        gates=gates,
        event={
            "id": event.id,
            "created": created,
            "maxTicketsPerOrder": event.max_tickets_per_order,
            "sections": len(event.sections),
        },
        sold=after.sold_count,
        capacity=after.capacity,
        soldBefore=event.sold_count,
        setup={
            "buyers": len(accounts.buyers),
            "gateStaff": len(accounts.gate_staff),
            "accountsFromCache": accounts.stats.from_cache,
            "accountsRegistered": accounts.stats.registered,
            "logins": accounts.stats.logged_in,
            "accountSeconds": round(accounts.stats.seconds, 3),
            "eventSeconds": round(event_seconds, 3),
            "sellPhase": sell,
        },
        options=_options_json(options),
        audit=audit,
        # Only with --observe, so that a report without it keeps its documented fields.
        **({"observer": observation} if observation is not None else {}),
        exitCode=exit_code,
        wallSeconds=round(time.perf_counter() - started, 3),
    )
    write_json(report, options.json_path)
    if options.csv_path is not None:
        write_csv(report, options.csv_path)
    if options.chart_path is not None:
        write_chart(report, options.chart_path, f"ticketing-rush {options.scenario} ({plan.model})")
    if not options.quiet:
        print(summary(report))
    return RushResult(report, exit_code)


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def summary(report: dict[str, Any]) -> str:
    """A short human-readable summary of a report (what the command prints)."""
    dist = {d["percentage"]: d["latency"] for d in report["latencyDistribution"]}
    lines = [
        f"scenario {report['scenario']} ({report['loadModel']} loop), "
        f"stopped by {report['stopReason']}",
        f"  requests {report['count']} in {report['total'] / 1e9:.2f} s = {report['rps']} req/s "
        f"({report['okRps']} ok/s, {report['ticketsPerSecond']} tickets/s)",
    ]
    if dist:
        lines.append(
            "  latency p50 {} p90 {} p99 {} p99.9 {} max {}".format(
                _ms(dist[50]),
                _ms(dist[90]),
                _ms(dist[99]),
                _ms(dist[99.9]),
                _ms(report["slowest"]),
            )
        )
    lines.append(f"  status {report['statusCodeDistribution']}")
    if report["errorDistribution"]:
        lines.append(f"  errors {report['errorDistribution']}")
    if report["scanResults"]:
        lines.append(f"  scans {report['scanResults']}")
    lines.append(f"  sold {report['sold']}/{report['capacity']}")
    audit = report["audit"]
    verdict = "PASSED" if audit["passed"] else "FAILED: " + ", ".join(audit["failed"])
    lines.append(f"  audit {verdict}")
    for check in audit["checks"]:
        if not check["passed"]:
            for example in check["examples"]:
                lines.append(f"    {check['name']}: {example}")
    return "\n".join(lines)


async def async_main(argv: Sequence[str] | None = None) -> int:
    """Run the command inside the current event loop; returns the exit status."""
    try:
        options = parse_options(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with ticketing_errors():
            result = await run_rush(options)
    except TicketingError as err:
        print(
            f"ticketing-rush: set-up failed: {err.code.name} {err.reason} {err.message}",
            file=sys.stderr,
        )
        return EXIT_RUN_FAILED
    if not result.report["audit"]["passed"]:
        failed = ", ".join(result.report["audit"]["failed"])
        print(f"ticketing-rush: INVARIANT AUDIT FAILED: {failed}", file=sys.stderr)
    return result.exit_code


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (`ticketing-rush`)."""
    try:
        return asyncio.run(async_main(argv))
    except KeyboardInterrupt:
        return 130
