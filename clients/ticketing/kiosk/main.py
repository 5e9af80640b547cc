"""`ticketing-kiosk`: a turnstile's scanner loop (see the `ticketing.kiosk` docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import re
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
from grpc_health.v1 import health_pb2_grpc
from rich.console import Console

from ticketing.client import Client, connect
from ticketing.errors import TicketingError, ticketing_errors
from ticketing.kiosk.device import DeviceFile, default_device_dir, device_path
from ticketing.kiosk.journal import Journal, JournalError
from ticketing.kiosk.lines import LineReader
from ticketing.kiosk.offline import OfflineKit
from ticketing.kiosk.render import PlainRenderer, RichRenderer, StartInfo
from ticketing.kiosk.signin import (
    EXIT_JOURNAL,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    Credentials,
    StartupError,
    check_assignment,
    credentials_from_env,
    load_event,
    sign_in,
    wait_for_server,
)
from ticketing.kiosk.switching import Link, Mode
from ticketing.kiosk.validation import Kiosk, RetryPolicy
from ticketing.session import resolve_target
from ticketing.v1 import common_pb2, event_pb2, gate_pb2

Renderer = PlainRenderer | RichRenderer

# When the server comes back, the kiosk should notice within a second or two, not after
# gRPC's default reconnect backoff (which grows to two minutes).
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]

# After Ctrl-C, a scan in flight gets this long to finish so the person at the gate gets an
# answer; past it, it stays pending in the journal and the next start re-submits it.
STOP_GRACE_SECONDS = 3.0

EPILOG = """\
credentials (first found): a device credential (--enroll TOKEN once, then found as
kiosk-device-<event>-<gate>.json in --device-dir, or --device FILE); TICKETING_TOKEN;
TICKETING_KIOSK_EMAIL + TICKETING_KIOSK_PASSWORD (also used to sign in again when the token
expires); the `ticketctl login` session.

offline: the kiosk syncs the event's keys and revocations (--sync-interval), in between
asks for new revocations only (--revocation-interval), and, when the server cannot be
reached, admits signed (QR) codes by itself, journals them and uploads them when the server
answers again (docs/offline-gates.md). --no-offline keeps it waiting for the server instead.

exit codes: 0 closed normally (end of input, Ctrl-C, SIGTERM); 1 refused at start (bad
credentials, not an entry manager, not assigned to the event, unknown event, journal in
use); 2 usage; 3 server unreachable at start; 4 journal could not be written (no scan is
sent unjournaled).
"""


def _gate_id(text: str) -> str:
    gate = text.strip()
    if not gate or len(gate) > 64 or not gate.isprintable():
        raise argparse.ArgumentTypeError("a gate is 1..64 printable characters, e.g. north-1")
    return gate


def _positive(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be between 0 and 3600 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line (public for --help tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="ticketing-kiosk",
        description="Validate scanned ticket codes at a gate: one code per line on stdin "
        "(a barcode scanner types like a keyboard) or from --input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--target",
        help="server host:port (default: $TICKETING_TARGET, "
        "the ticketctl session's, 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--event", help="id of the event this gate admits to (an enrolled device knows it)"
    )
    parser.add_argument("--gate", type=_gate_id, help="this gate's name (likewise)")
    parser.add_argument(
        "--enroll",
        metavar="TOKEN",
        help="enroll this kiosk with a one-time token (`ticketctl gates devices create`), "
        "store the device credential (0600) and run with it",
    )
    parser.add_argument("--device", metavar="FILE", help="the device credential file to use")
    parser.add_argument(
        "--device-dir",
        metavar="DIR",
        help="where device credentials are kept (default $TICKETING_KIOSK_DIR, else .)",
    )
    parser.add_argument(
        "--no-offline",
        action="store_true",
        help="never admit offline: retry online, then UNRESOLVED (the behaviour before offline)",
    )
    parser.add_argument(
        "--sync-interval",
        type=_positive,
        default=30.0,
        help="fetch keys and new revocations this often while online, s (30)",
    )
    parser.add_argument(
        "--revocation-interval",
        type=_positive,
        default=2.0,
        help="between syncs, ask for new revocations only, this often while online, s (2)",
    )
    parser.add_argument("--input", metavar="FILE", help="read codes from FILE, not stdin")
    parser.add_argument(
        "--journal",
        metavar="PATH",
        help="append-only scan journal (default ./kiosk-journal-<event>-<gate>.jsonl)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--plain", action="store_true", help="one text line per scan")
    parser.add_argument(
        "--attempt-timeout", type=_positive, default=3.0, help="deadline per call, s (3)"
    )
    parser.add_argument(
        "--retry-budget",
        type=_positive,
        default=30.0,
        help="give up on one scan after this long and record it UNRESOLVED, s (30)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive,
        default=30.0,
        help="wait this long for the server at start, then exit 3, s (30)",
    )
    parser.add_argument(
        "--health-interval", type=_positive, default=1.0, help="health poll period, s (1)"
    )
    return parser


def default_journal_path(event_id: str, gate_id: str) -> Path:
    """./kiosk-journal-<event>-<gate>.jsonl, with the names made safe for a file name."""

    def safe(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]

    return Path.cwd() / f"kiosk-journal-{safe(event_id)}-{safe(gate_id)}.jsonl"


T = TypeVar("T")


async def until_stopped(
    coro: Coroutine[Any, Any, T], stop: asyncio.Event, grace: float = STOP_GRACE_SECONDS
) -> T | None:
    """Run `coro`; if `stop` is set first, give it `grace` seconds more, then cancel it.

    Returns None when it was cancelled (a cancelled scan stays pending in the journal).
    """
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and grace > 0:
            await asyncio.wait({task}, timeout=grace)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return None
        return task.result()
    finally:
        stopper.cancel()


async def scan_loop(
    kiosk: Kiosk, renderer: Renderer, stream: BinaryIO, stop: asyncio.Event
) -> None:
    """Re-submit what a crash left pending, then validate line after line until EOF or stop."""
    for pending in kiosk.journal.pending():
        if stop.is_set():
            return
        view = await until_stopped(kiosk.resubmit(pending), stop)
        if view is None:
            return
        renderer.show(view, kiosk.counts)
    reader = LineReader(stream.fileno())
    reader.start()
    while not stop.is_set():
        line = await until_stopped(reader.next_line(), stop, grace=0)
        if line is None:  # end of input, or stopped while waiting for it
            return
        code = line.strip()
        if not code:
            # A stray Enter on the scanner: not a scan, nothing to send or journal.
            kiosk.counts.empty_lines += 1
            continue
        view = await until_stopped(kiosk.scan(code), stop)
        if view is None:
            return
        renderer.show(view, kiosk.counts)


def kit_path_for(journal: Path) -> Path:
    """The offline kit lives beside the journal: <journal stem>.kit.json."""
    return journal.with_name(journal.stem + ".kit.json")


async def enroll(args: argparse.Namespace, target: str, renderer: Renderer) -> DeviceFile:
    """Exchange the --enroll token for a device credential and store it (0600)."""
    client = connect(target, tls=bool(args.tls), timeout=args.attempt_timeout)
    try:
        health = health_pb2_grpc.HealthStub(client.channel)
        await wait_for_server(
            health,
            budget=args.connect_timeout,
            interval=args.health_interval,
            target=target,
            on_wait=renderer.warning,
        )
        try:
            with ticketing_errors():
                reply = await client.gate.EnrollDevice(
                    gate_pb2.EnrollDeviceRequest(enrollment_token=args.enroll.strip())
                )
        except TicketingError as err:
            if err.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
                raise StartupError(
                    "enrollment refused: the token is unknown, used, expired or revoked; ask "
                    "the organizer for a new one (`ticketctl gates devices create`)"
                ) from None
            raise StartupError(f"enrollment failed: {err.code.name}: {err.message}") from None
    finally:
        await client.close()
    device = DeviceFile(
        device_id=reply.device.id,
        event_id=reply.device.event_id,
        gate_id=reply.device.gate_id,
        display_name=reply.device.display_name,
        credential=reply.device_credential,
    )
    path = _device_file_path(args, device.event_id, device.gate_id)
    try:
        device.save(path)
    except OSError as exc:
        # The token is spent: say so, so the organizer knows to revoke and create another.
        raise StartupError(
            f"enrolled device {device.device_id} but cannot write {path}: {exc.strerror}; "
            "revoke it and enroll a new one",
            EXIT_JOURNAL,
        ) from None
    renderer.info(
        f"enrolled device {device.device_id} ({device.display_name}) for event "
        f"{device.event_id} gate {device.gate_id}; credential saved to {path}"
    )
    return device


def _device_file_path(args: argparse.Namespace, event_id: str, gate_id: str) -> Path:
    if args.device:
        return Path(args.device)
    directory = Path(args.device_dir) if args.device_dir else default_device_dir()
    return device_path(directory, event_id, gate_id)


async def find_device(
    args: argparse.Namespace, target: str, renderer: Renderer
) -> DeviceFile | None:
    """The device this kiosk runs as (enrolled now, or saved earlier), or None (a person)."""
    if args.enroll:
        device = await enroll(args, target, renderer)
    else:
        path = (
            Path(args.device)
            if args.device
            else _device_file_path(args, args.event or "", args.gate or "")
        )
        if not args.device and not path.exists():
            return None
        try:
            device = DeviceFile.load(path)
        except ValueError as exc:
            raise StartupError(str(exc)) from None
    mine = ((args.event, device.event_id, "event"), (args.gate, device.gate_id, "gate"))
    for given, own, what in mine:
        if given and given != own:
            raise StartupError(f"this device is enrolled for {what} {own!r}, not {given!r}")
    args.event, args.gate = device.event_id, device.gate_id
    return device


async def run(args: argparse.Namespace, renderer: Renderer, stream: BinaryIO) -> int:
    """Start up (failing fast), then serve the gate until EOF or SIGINT/SIGTERM."""
    target = resolve_target(args.target)
    device = await find_device(args, target, renderer)
    if device is not None:
        return await run_device(args, renderer, stream, device, target)
    credentials = credentials_from_env()
    client = connect(
        target,
        credentials.token,
        tls=bool(args.tls),
        timeout=args.attempt_timeout,
        options=CHANNEL_OPTIONS,
    )
    try:
        health = health_pb2_grpc.HealthStub(client.channel)
        await wait_for_server(
            health,
            budget=args.connect_timeout,
            interval=args.health_interval,
            target=target,
            on_wait=renderer.warning,
        )
        user = await sign_in(client, credentials)
        event = await load_event(client, args.event)
        await check_assignment(client, event, user)
        path = Path(args.journal) if args.journal else default_journal_path(event.id, args.gate)
        try:
            journal = Journal.open(path)
        except JournalError as exc:
            raise StartupError(str(exc)) from None
        try:
            return await _serve_person(
                args, renderer, stream, client, health, credentials, user, event, journal, target
            )
        finally:
            journal.close()
    finally:
        await client.close()


async def run_device(
    args: argparse.Namespace,
    renderer: Renderer,
    stream: BinaryIO,
    device: DeviceFile,
    target: str,
) -> int:
    """Serve the gate as an enrolled device: no sign-in; the kit's sync is the first call
    (a revoked device is told so there). With a synced kit saved from an earlier run, a
    server that is away at start means starting OFFLINE rather than exiting."""
    client = connect(
        target,
        device_credential=device.credential,
        tls=bool(args.tls),
        timeout=args.attempt_timeout,
        options=CHANNEL_OPTIONS,
    )
    try:
        default = default_journal_path(device.event_id, device.gate_id)
        path = Path(args.journal) if args.journal else default
        kit_path = kit_path_for(path)
        kit = None if args.no_offline else OfflineKit.load(kit_path, device.event_id)
        health = health_pb2_grpc.HealthStub(client.channel)
        link = Link(sync_interval=args.sync_interval, revocation_interval=args.revocation_interval)
        try:
            await wait_for_server(
                health,
                budget=args.connect_timeout,
                interval=args.health_interval,
                target=target,
                on_wait=renderer.warning,
            )
        except StartupError as exc:
            if exc.exit_code != EXIT_UNREACHABLE or kit is None or not kit.synced:
                raise
            renderer.warning(f"{exc}: starting OFFLINE with the saved kit")
            link.mode = Mode.OFFLINE
        try:
            journal = Journal.open(path)
        except JournalError as exc:
            raise StartupError(str(exc)) from None
        try:
            kiosk = Kiosk(
                client.gate,
                journal,
                event_id=device.event_id,
                gate_id=device.gate_id,
                observer=renderer,
                policy=RetryPolicy(attempt_timeout=args.attempt_timeout, budget=args.retry_budget),
                health=health,
                kit=kit,
                kit_path=kit_path,
                link=link,
            )
            if not link.offline:
                await kiosk.sync()
                if kiosk.device_revoked:
                    raise StartupError(
                        f"DEVICE REVOKED: device {device.device_id} ({device.display_name}) "
                        "may no longer admit; ask the organizer for a new enrollment token"
                    )
                if kiosk.sync_error and not kiosk.link.offline:
                    # Refused, not unreachable: a saved kit must not outlive its credential.
                    raise StartupError(f"the server refused this device: {kiosk.sync_error}")
                if kiosk.sync_error and not kiosk.offline_ready:
                    # The server went away again since the health check, and nothing saved.
                    raise StartupError(
                        f"server {target} unreachable ({kiosk.sync_error})", EXIT_UNREACHABLE
                    )
            _warn_clock(kiosk, renderer)
            doors = kiosk.kit_doors()
            info = StartInfo(
                target=target,
                event_id=device.event_id,
                event_name=device.display_name,
                gate_id=device.gate_id,
                user=f"device {device.device_id}",
                journal=journal.path,
                pending=len(journal.pending()),
                doors_open_time=doors,
            )
            kiosk.doors_open_time = doors
            return await _serve(args, renderer, stream, kiosk, info, cancelled=False)
        finally:
            journal.close()
    finally:
        await client.close()


CLOCK_WARNING_SECONDS = 60.0


def _warn_clock(kiosk: Kiosk, renderer: Renderer) -> None:
    if kiosk.kit_save_error:
        renderer.warning(f"{kiosk.kit_save_error}: a restart while offline could not admit")
    # Offline verdicts (doors open? event over?) and uploaded scan times use this clock.
    skew = kiosk.clock_skew_seconds
    if skew is not None and abs(skew) > CLOCK_WARNING_SECONDS:
        side = "behind" if skew > 0 else "ahead of"
        renderer.warning(
            f"this kiosk's clock is {abs(skew):.0f} s {side} the server's: offline checks "
            "of the scan window use it; set the clock (NTP)"
        )


async def _serve_person(
    args: argparse.Namespace,
    renderer: Renderer,
    stream: BinaryIO,
    client: Client,
    health: Any,
    credentials: Credentials,
    user: common_pb2.User,
    event: event_pb2.Event,
    journal: Journal,
    target: str,
) -> int:
    async def reauthenticate() -> bool:
        assert credentials.email and credentials.password
        try:
            await client.login(credentials.email, credentials.password)
        except TicketingError:
            return False
        return True

    doors = (
        event.doors_open_time.ToDatetime(tzinfo=dt.UTC)
        if event.HasField("doors_open_time")
        else None
    )
    kit_path = kit_path_for(journal.path)
    kiosk = Kiosk(
        client.gate,
        journal,
        event_id=event.id,
        gate_id=args.gate,
        observer=renderer,
        policy=RetryPolicy(attempt_timeout=args.attempt_timeout, budget=args.retry_budget),
        reauthenticate=reauthenticate if credentials.can_login else None,
        doors_open_time=doors,
        health=health,
        kit=None if args.no_offline else OfflineKit.load(kit_path, event.id),
        kit_path=kit_path,
        link=Link(sync_interval=args.sync_interval, revocation_interval=args.revocation_interval),
    )
    if kiosk.kit is not None and not await kiosk.sync():
        renderer.warning(f"offline kit not synced ({kiosk.sync_error}); retrying later")
    _warn_clock(kiosk, renderer)
    info = StartInfo(
        target=target,
        event_id=event.id,
        event_name=event.name,
        gate_id=args.gate,
        user=user.email,
        journal=journal.path,
        pending=len(journal.pending()),
        doors_open_time=doors,
    )
    return await _serve(
        args, renderer, stream, kiosk, info, cancelled=bool(event.cancel_time.seconds)
    )


async def _serve(
    args: argparse.Namespace,
    renderer: Renderer,
    stream: BinaryIO,
    kiosk: Kiosk,
    info: StartInfo,
    *,
    cancelled: bool,
) -> int:
    journal = kiosk.journal
    renderer.started(info)
    if journal.damaged_lines:
        renderer.warning(f"journal has {journal.damaged_lines} unreadable line(s); skipped")
    if cancelled or (kiosk.kit is not None and kiosk.kit.cancelled):
        renderer.warning("this event is CANCELLED: every scan is refused (EVENT_CANCELLED)")
    if kiosk.link.offline:
        renderer.mode_changed(Mode.OFFLINE, journal.waiting_count)
    elif journal.waiting_count:
        renderer.info(f"{journal.waiting_count} offline scan(s) from an earlier run to upload")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.create_task(kiosk.maintain(args.health_interval, check_timeout=1.0))
    exit_code = 0
    try:
        await scan_loop(kiosk, renderer, stream, stop)
    except JournalError as exc:
        # Never validate a scan that could be lost in a crash: stop and say so.
        renderer.warning(f"stopping: {exc}")
        exit_code = EXIT_JOURNAL
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if exit_code == 0 and not kiosk.link.offline and journal.waiting_count:
        # One last, bounded upload on the way out; whatever is left goes at the next start
        # (and a cut-off batch is answered from the server's record then).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(kiosk.upload(), STOP_GRACE_SECONDS)
    renderer.summary(kiosk.counts, len(journal.pending()))
    return exit_code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `ticketing-kiosk` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.enroll and not args.device and not (args.event and args.gate):
        parser.error("give --event and --gate (or --enroll TOKEN, or --device FILE)")
    renderer: Renderer = PlainRenderer() if args.plain else RichRenderer(Console())
    try:
        stream: BinaryIO = open(args.input, "rb") if args.input else sys.stdin.buffer  # noqa: SIM115
    except OSError as exc:
        print(f"ticketing-kiosk: cannot read {args.input}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(run(args, renderer, stream))
    except StartupError as exc:
        print(f"ticketing-kiosk: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        # Ctrl-C during start-up, before the scan loop took over the signal.
        print("ticketing-kiosk: interrupted during start-up", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        if args.input:
            stream.close()


if __name__ == "__main__":
    sys.exit(main())
