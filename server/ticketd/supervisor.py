"""`ticketd serve --workers N`: one supervisor, N worker processes on one port.

One ticketd process uses one core (the GIL). The supervisor starts N ordinary `ticketd serve`
processes ("workers") that all listen on the configured address with SO_REUSEPORT, so the
kernel spreads new connections over them. A gRPC connection is long-lived: a client's calls
stay on the worker its connection landed on, and balancing is per connection.

Keeping "one port, one ticketd" (the issue): SO_REUSEPORT lets every process of the same user
that sets it join a port, so it alone would let a second, independent ticketd silently share
the port with the first and take half its connections. Two things prevent that:

1. A lock file per port, `<runtime dir>/port-<PORT>.lock`, held with flock() by the supervisor
   for its whole life (the kernel drops it when the process dies, so a crash leaves no stale
   lock). A second supervisor on the same port fails to take it and says who holds it. The
   runtime dir is per user ($XDG_RUNTIME_DIR/ticketd, else /tmp/ticketd-<uid>, mode 0700).
2. A guard socket: the supervisor binds (never listens on) the address itself with
   SO_REUSEPORT before any worker starts, and keeps it bound. A plain ticketd (one process,
   which binds without SO_REUSEPORT) is then refused by the kernel with EADDRINUSE; a process
   of another user cannot join a reuseport group at all; and the port stays reserved while a
   crashed worker restarts, so nothing else can take it in between. A bound socket that does
   not listen receives no connections, so the guard never swallows a client.

Worker 0 migrates the schema and makes sure of the bootstrap admin; the others start once it
serves. Each worker also serves gRPC health alone on a private loopback port: the supervisor
checks each worker there (the shared port would answer from whichever worker the kernel
picks), kills one that stops answering, and restarts crashed workers with capped backoff.
SIGTERM (or SIGINT) is passed to every worker (each says NOT_SERVING and drains in-flight
calls within its grace), and the supervisor exits 0 once all have stopped.

Limits: the database pool and the per-process budgets are divided by N (see
`worker_environment`), so N workers together keep to what is configured; see docs/scaling.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ticketd.auth.tokens import load_or_create_secret
from ticketd.config import Settings

log = logging.getLogger("ticketd.supervisor")

HEALTH_INTERVAL_S = 1.0
HEALTH_TIMEOUT_S = 2.0
HEALTH_MISSES = 3
"""Consecutive unanswered health checks before a worker is killed and restarted: a worker
that only answers slowly under load must not be shot."""
START_TIMEOUT_S = 60.0
"""How long a new worker may take to answer its first health check."""
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_S = 30.0
"""A worker that ran this long before it died restarts at the shortest backoff again."""


class PortInUse(RuntimeError):
    """Another ticketd (or another program) holds the port; the message says which."""


def runtime_dir() -> Path:
    """This user's private directory for port locks and multiprocess metrics (0700)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    tmp = Path(tempfile.gettempdir()) / f"ticketd-{os.getuid()}"
    path = Path(base) / "ticketd" if base else tmp
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    # A directory someone else made (or a symlink) in /tmp must not hold our locks.
    if info.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise PortInUse(f"{path} is not a private directory of this user")
    return path


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) of TICKETING_LISTEN (`[::]:50051` gives "::")."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class PortGuard:
    """The lock file and guard sockets that keep one port to one ticketd (module docstring)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._lock_fd: int | None = None
        self._sockets: list[socket.socket] = []

    def acquire(self) -> int:
        """Reserve the port (choosing a free one if it is 0); returns it. PortInUse if held."""
        infos = socket.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen: list[tuple[int, object]] = []
        try:
            for family, kind, proto, _, address in infos:
                if (family, address[0]) in seen:
                    continue
                seen.append((family, address[0]))
                sock = socket.socket(family, kind, proto)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    # Like gRPC: "::" is dual-stack, a named v6 address is v6 only.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                try:
                    sock.bind((address[0], self.port, *address[2:]))
                except OSError as exc:
                    sock.close()
                    raise PortInUse(
                        f"{self.host}:{self.port} is already in use by another process "
                        f"(a ticketd without --workers, or another program): {exc.strerror}"
                    ) from None
                self._sockets.append(sock)
                if self.port == 0:
                    self.port = int(sock.getsockname()[1])
            self._lock()
        except BaseException:
            self.release()
            raise
        return self.port

    def _lock(self) -> None:
        path = runtime_dir() / f"port-{self.port}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise PortInUse(
                f"port {self.port} is already served by another ticketd supervisor "
                f"(pid {holder}, lock {path}); stop it or choose another TICKETING_LISTEN"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def release(self) -> None:
        """Give the port back (closing the guard sockets, then the lock)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None


def worker_environment(settings: Settings, workers: int) -> dict[str, str]:
    """The per-process settings of one worker out of `workers`: the totals divided by N.

    Divided (each worker enforces its share, so N together keep to the configured total):
    the database pool (N pools must not exceed PostgreSQL's max_connections), the admission
    limit, the password queue, the per-address sign-in rate and burst, and the per-gate and
    per-caller scan rates and bursts. A client's calls stay on one worker per connection, so
    a caller on one connection gets 1/N of a rate; one spreading over N connections gets the
    whole. Never below 1 (2 for password workers, see default_auth_concurrency). Not divided:
    the per-email sign-in backoff (a count per email cannot be split; with N workers an
    attacker spreading over connections gets up to N times the attempts before backoff).
    """

    def share(value: int, floor: int = 1) -> str:
        return str(max(floor, value // workers))

    return {
        "TICKETING_DB_POOL_SIZE": share(settings.db_pool_size),
        "TICKETING_MAX_CONCURRENT_RPCS": share(settings.max_concurrent_rpcs),
        "TICKETING_AUTH_CONCURRENCY": share(settings.auth_concurrency, 2),
        "TICKETING_AUTH_QUEUE": share(settings.auth_queue, 0),
        "TICKETING_AUTH_PEER_RATE": f"{max(0.001, settings.auth_peer_rate / workers):g}",
        "TICKETING_AUTH_PEER_BURST": share(settings.auth_peer_burst),
        "TICKETING_GATE_SCAN_RATE": share(settings.gate_scan_rate),
        "TICKETING_GATE_SCAN_BURST": share(settings.gate_scan_burst),
        "TICKETING_CALLER_SCAN_RATE": share(settings.caller_scan_rate),
        "TICKETING_CALLER_SCAN_BURST": share(settings.caller_scan_burst),
    }


def free_loopback_port() -> int:
    """A free port on 127.0.0.1 for a worker's private health server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Worker:
    """One worker process and what the supervisor knows of it."""

    index: int
    health_port: int = 0
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    backoff_s: float = BACKOFF_START_S
    restarts: int = 0
    serving: bool = False
    answered: bool = False
    misses: int = 0
    monitor: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class Supervisor:
    """Starts, watches, restarts and finally drains the workers."""

    def __init__(
        self,
        settings: Settings,
        workers: int,
        *,
        log_level: str = "INFO",
        database_url: str,
        secrets: dict[str, str],
        on_worker_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.count = workers
        self.log_level = log_level
        self.database_url = database_url
        self.secrets = secrets
        self.on_worker_exit = on_worker_exit
        self.workers = [Worker(i) for i in range(workers)]
        self.stopping = asyncio.Event()
        self.listen = settings.listen
        self.extra_env: dict[str, str] = {}

    def _env(self, worker: Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("TICKETING_WORKERS", None)
        # The supervisor serves /metrics for all; workers only write their samples.
        env.pop("TICKETING_METRICS_LISTEN", None)
        env |= worker_environment(self.settings, self.count)
        env |= self.secrets
        env |= self.extra_env
        env["DATABASE_URL"] = self.database_url
        env["TICKETING_LISTEN"] = self.listen
        return env

    async def _spawn(self, worker: Worker) -> None:
        worker.health_port = free_loopback_port()
        worker.serving = False
        worker.answered = False
        worker.misses = 0
        args = [
            "-m",
            "ticketd",
            "serve",
            "--log-level",
            self.log_level,
            "--worker-index",
            str(worker.index),
            "--worker-health",
            f"127.0.0.1:{worker.health_port}",
        ]
        # Output is inherited: the workers' logs go where the supervisor's go.
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, *args, env=self._env(worker)
        )
        worker.started_at = time.monotonic()
        log.info("worker %d started (pid %d)", worker.index, worker.proc.pid)

    async def _check(self, worker: Worker) -> int | None:
        """The worker's health status, or None when it does not answer."""
        try:
            async with aio.insecure_channel(f"127.0.0.1:{worker.health_port}") as channel:
                resp = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=HEALTH_TIMEOUT_S
                )
                return int(resp.status)
        except aio.AioRpcError:
            return None

    async def _wait_serving(self, worker: Worker) -> bool:
        """Until the worker serves (True), or it exits or the supervisor stops (False)."""
        while not self.stopping.is_set() and worker.running:
            if await self._check(worker) == health_pb2.HealthCheckResponse.SERVING:
                worker.serving = True
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.2)
        return False

    async def _monitor(self, worker: Worker) -> None:
        """Health-check one worker; restart it when it dies or stops answering."""
        while not self.stopping.is_set():
            assert worker.proc is not None
            exited = asyncio.create_task(worker.proc.wait())
            stop = asyncio.create_task(self.stopping.wait())
            try:
                while not exited.done() and not self.stopping.is_set():
                    await asyncio.wait({exited, stop}, timeout=HEALTH_INTERVAL_S)
                    if exited.done() or self.stopping.is_set():
                        break
                    status = await self._check(worker)
                    worker.answered = worker.answered or status is not None
                    worker.misses = 0 if status is not None else worker.misses + 1
                    worker.serving = status == health_pb2.HealthCheckResponse.SERVING
                    # A starting worker (imports, binding) has START_TIMEOUT_S to answer
                    # at all; once it has, HEALTH_MISSES in a row.
                    starting = not worker.answered
                    late = time.monotonic() - worker.started_at > START_TIMEOUT_S
                    if (starting and late) or (not starting and worker.misses >= HEALTH_MISSES):
                        log.error(
                            "worker %d (pid %d) did not answer %d health checks: killing it",
                            worker.index,
                            worker.proc.pid,
                            worker.misses,
                        )
                        with contextlib.suppress(ProcessLookupError):
                            worker.proc.kill()
                        await exited
            finally:
                stop.cancel()
            if self.stopping.is_set():
                return
            code = await worker.proc.wait()
            if self.on_worker_exit is not None:
                self.on_worker_exit(worker.proc.pid)
            lived = time.monotonic() - worker.started_at
            if lived >= BACKOFF_RESET_S:
                worker.backoff_s = BACKOFF_START_S
            log.error(
                "worker %d (pid %d) exited with %d after %.1fs; restarting in %.1fs",
                worker.index,
                worker.proc.pid,
                code,
                lived,
                worker.backoff_s,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), worker.backoff_s)
            if self.stopping.is_set():
                return
            worker.backoff_s = min(BACKOFF_MAX_S, worker.backoff_s * 2)
            worker.restarts += 1
            await self._spawn(worker)

    async def run(self) -> int:
        """Start the workers (worker 0 first, it migrates), watch them until SIGTERM, then
        drain them all. Returns the exit status: 0 after a clean drain."""
        host, port = split_listen(self.listen)
        first = self.workers[0]
        await self._spawn(first)
        # Worker 0 alone until it serves: it migrates, and the others must not race it.
        if not await self._wait_serving(first):
            if self.stopping.is_set():
                return await self.drain()
            log.error("worker 0 exited before serving; see its log above")
            return 1
        for worker in self.workers[1:]:
            await self._spawn(worker)
        for worker in self.workers:
            worker.monitor = asyncio.create_task(self._monitor(worker))
        ready = await asyncio.gather(*(self._wait_serving(w) for w in self.workers[1:]))
        if not self.stopping.is_set() and all(ready):
            shown = f"[{host}]" if ":" in host else host
            log.info("ticketd serving with %d workers", self.count)
            print(f"ticketd listening on {shown}:{port} ({self.count} workers)", flush=True)
        await self.stopping.wait()
        return await self.drain()

    async def drain(self) -> int:
        """SIGTERM to every worker; SIGKILL to those still there after their grace."""
        for worker in self.workers:
            if worker.monitor is not None:
                worker.monitor.cancel()
        running = [w for w in self.workers if w.running]
        for worker in running:
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(signal.SIGTERM)
        limit = self.settings.grace_seconds + 15
        codes: list[int] = []
        for worker in running:
            assert worker.proc is not None
            try:
                codes.append(await asyncio.wait_for(worker.proc.wait(), limit))
            except TimeoutError:
                log.error("worker %d did not stop in %ds: killing it", worker.index, limit)
                worker.proc.kill()
                codes.append(await worker.proc.wait())
            if self.on_worker_exit is not None:
                self.on_worker_exit(worker.proc.pid)
        failed = [c for c in codes if c != 0]
        log.info("all %d workers stopped%s", len(running), f" ({failed})" if failed else "")
        return 0 if not failed else 1


async def supervise(settings: Settings, workers: int, *, log_level: str = "INFO") -> int:
    """`ticketd serve --workers N` (N > 1): reserve the port, run the supervisor, clean up."""
    from ticketd.observability import metrics

    host, port = split_listen(settings.listen)
    guard = PortGuard(host, port)
    try:
        port = guard.acquire()
    except PortInUse as exc:
        print(f"ticketd: {exc}", file=sys.stderr, flush=True)
        return 2
    shown = f"[{host}]" if ":" in host else host
    log.info("bound %s:%d; waiting for the database", shown, port)
    secrets = {
        "TICKETING_JWT_SECRET": settings.jwt_secret or load_or_create_secret(settings.data_dir),
        "TICKETING_KEYS_SECRET": settings.keys_secret
        or load_or_create_secret(settings.data_dir, "keys_secret"),
    }
    embedded = None
    url = settings.database_url or ""
    metrics_dir: Path | None = None
    exporter = None
    loop = asyncio.get_running_loop()
    try:
        if not url:
            # One embedded PostgreSQL for all workers, owned by the supervisor.
            from ticketd.db.embedded import EmbeddedPostgres

            embedded = EmbeddedPostgres(settings.data_dir)
            url = await asyncio.to_thread(embedded.start)
        supervisor = Supervisor(
            settings,
            workers,
            log_level=log_level,
            database_url=url,
            secrets=secrets,
        )
        supervisor.listen = f"{shown}:{port}"
        if settings.metrics_listen:
            metrics_dir = Path(tempfile.mkdtemp(prefix=f"metrics-{port}-", dir=runtime_dir()))
            supervisor.extra_env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            supervisor.on_worker_exit = lambda pid: metrics.mark_process_dead(pid, metrics_dir)
            exporter = metrics.serve_multiprocess(settings.metrics_listen, metrics_dir)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, supervisor.stopping.set)
        return await supervisor.run()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if exporter is not None:
            exporter.shutdown()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        guard.release()
