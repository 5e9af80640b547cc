"""One `python -m ticketd` server process: environment, ready wait, logs, stop and kill.

Used by every benchmark that runs the server apart from its client (so client, server and
PostgreSQL CPU are three processes, as in production) and by the tests that kill, stop,
freeze or starve a server. One object may be started again after it stopped (a restart keeps
its port when the port was fixed, so clients reconnect to the same address).

Output: stdout and stderr are merged into one pipe that a reader task drains all the time (a
full pipe would block the server), kept in memory (`log()`) and, when `log_path` is set,
appended to that file. Ready means the line `ticketd listening on HOST:PORT`, which the
server prints once the database answered, the schema is migrated and health says SERVING.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import secrets
import signal
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
HOST_V6 = "::1"
DUAL_STACK_HOST = "localhost"  # gRPC binds it on 127.0.0.1 and on ::1
# "ticketd listening on HOST:PORT" once serving; the INFO line "bound HOST:PORT; waiting
# for the database" as soon as the port is bound (NOT_SERVING until the database answers).
_LISTENING = re.compile(r"ticketd listening on [\w.\-\[\]:]+:(\d+)")
_BOUND = re.compile(r"\bbound [\w.\-\[\]:]+:(\d+); waiting for the database")
KEPT_LINES = 20_000
READ_LIMIT = 1 << 20


# The waits below take a `timeout` (ASYNC109 notwithstanding): a bounded wait is their
# contract, and callers (the process tests) want the log in the error, not a bare timeout.


class ServerStartError(RuntimeError):
    """ticketd exited or did not become ready in time; the message carries its log tail."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that must keep its address)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def new_password() -> str:
    """A random password that never starts with "-" (it is passed on command lines)."""
    return "pw-" + secrets.token_urlsafe(16)


def new_jwt_secret() -> str:
    """A random HS256 key; processes given the same one accept each other's tokens."""
    return secrets.token_urlsafe(48)


# Sign-in limits for servers that tests and benchmarks start: their set-up registers and signs
# in thousands of users from one address, which the production defaults (per-address rate,
# per-email backoff, a small password queue) rightly throttle. A benchmark of those limits
# (bench_auth_flood) passes `sign_in_limits={}` to run with the production defaults.
LOAD_TEST_SIGN_IN_LIMITS = {
    "TICKETING_AUTH_CONCURRENCY": "4",
    "TICKETING_AUTH_QUEUE": "100000",
    "TICKETING_AUTH_PEER_RATE": "1000000",
    "TICKETING_AUTH_PEER_BURST": "1000000",
    "TICKETING_LOGIN_FAILURES_PER_EMAIL": "1000000",
}


@dataclass
class ServerProcess:
    """A ticketd process on 127.0.0.1 (and on ::1 with `dual_stack`).

    `port` 0 lets the server pick a free one (read back from its output at start); a fixed
    port survives restarts. `dual_stack` listens on `localhost:PORT`, which gRPC binds on
    127.0.0.1 and ::1, so clients can reach it from two addresses (`target`, `target_v6`)
    that its per-address limits tell apart (with port 0, gRPC binds ::1 on the port that
    127.0.0.1 got). `database_url` None runs the server's own embedded PostgreSQL.
    `jwt_secret` None lets the server generate and keep one in `data_dir`. `sign_in_limits`
    (default LOAD_TEST_SIGN_IN_LIMITS), then `extra_env`, are applied last. DATABASE_URL is
    never inherited from this process's environment, nor are TICKETING_* unless
    `inherit_ticketing_env` (the tests' choice; a benchmark is configured by these fields).
    """

    database_url: str | None
    data_dir: Path
    port: int = 0
    jwt_secret: str | None = field(default_factory=new_jwt_secret)
    admin_email: str | None = None
    admin_password: str | None = None
    bcrypt_rounds: int = 4
    shutdown_grace_s: float = 2
    pool_size: int | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    sign_in_limits: dict[str, str] = field(default_factory=lambda: dict(LOAD_TEST_SIGN_IN_LIMITS))
    module: str = "ticketd"
    args: Sequence[str] = ()
    log_path: Path | None = None
    name: str = "ticketd"
    inherit_ticketing_env: bool = False
    dual_stack: bool = False
    proc: asyncio.subprocess.Process | None = field(default=None, init=False)
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=KEPT_LINES), init=False
    )
    _reader: asyncio.Task[None] | None = field(default=None, init=False)
    _ready: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _bound: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    @property
    def target(self) -> str:
        """HOST:PORT to dial (the port is known once started)."""
        return f"{HOST}:{self.port}"

    @property
    def target_v6(self) -> str:
        """[::1]:PORT to dial over IPv6 loopback (only served with `dual_stack`)."""
        return f"[{HOST_V6}]:{self.port}"

    @property
    def listen(self) -> str:
        """TICKETING_LISTEN: HOST:PORT, or localhost:PORT with `dual_stack`."""
        return f"{DUAL_STACK_HOST}:{self.port}" if self.dual_stack else self.target

    @property
    def pid(self) -> int | None:
        """The running process's id, or None before start."""
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists and has not exited."""
        return self.proc is not None and self.proc.returncode is None

    def env(self) -> dict[str, str]:
        """The server's environment."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "TICKETING_JWT_SECRET")
            and (self.inherit_ticketing_env or not k.startswith("TICKETING_"))
        }
        settings = {
            "TICKETING_LISTEN": self.listen,
            "TICKETING_DATA_DIR": str(self.data_dir),
            "TICKETING_BCRYPT_ROUNDS": str(self.bcrypt_rounds),
            "TICKETING_SHUTDOWN_GRACE": f"{self.shutdown_grace_s:g}",
        }
        if self.database_url:
            settings["DATABASE_URL"] = self.database_url
        if self.jwt_secret is not None:
            settings["TICKETING_JWT_SECRET"] = self.jwt_secret
        if self.admin_email is not None and self.admin_password is not None:
            settings["TICKETING_ADMIN_EMAIL"] = self.admin_email
            settings["TICKETING_ADMIN_PASSWORD"] = self.admin_password
        if self.pool_size is not None:
            settings["TICKETING_DB_POOL_SIZE"] = str(self.pool_size)
        return env | settings | self.sign_in_limits | self.extra_env

    async def start(self, *, wait_ready: bool = True, timeout_s: float = 60) -> None:
        """Start the process. With `wait_ready`, return once it serves (raise
        ServerStartError with its log if it exits or takes longer than `timeout_s`);
        without, once its port is bound (it may still say NOT_SERVING)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self._bound.clear()
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            *self.args,
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            limit=READ_LIMIT,
        )
        self._reader = asyncio.create_task(self._read(self.proc))
        await self._wait_for(self._ready if wait_ready else self._bound, timeout_s)

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        log = self.log_path.open("a", encoding="utf-8") if self.log_path else None
        try:
            while line := (await proc.stdout.readline()).decode(errors="replace"):
                self.lines.append(line)
                if log is not None:
                    log.write(line)
                    log.flush()
                self._watch(line)
        finally:
            if log is not None:
                log.close()

    def _watch(self, line: str) -> None:
        for pattern, event in ((_LISTENING, self._ready), (_BOUND, self._bound)):
            match = pattern.search(line)
            if match:
                if self.port == 0:
                    self.port = int(match.group(1))
                event.set()
                self._bound.set()

    async def _wait_for(self, event: asyncio.Event, timeout_s: float) -> None:
        assert self.proc is not None
        waiter = asyncio.create_task(event.wait())
        exited = asyncio.create_task(self.proc.wait())
        # A fixed port can be probed; a free one chosen by the server is only known from
        # its output.
        fixed = event is self._bound and self.port != 0
        probe = asyncio.create_task(self._probe_port()) if fixed else None
        watched = {waiter, exited} | ({probe} if probe else set())
        try:
            done, _ = await asyncio.wait(
                watched, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in watched:
                task.cancel()
        if waiter in done or (probe is not None and probe in done):
            return
        if exited in done:
            await self._drain_output()
            raise ServerStartError(f"{self.name} exited ({self.proc.returncode}):\n{self.log()}")
        await self.kill()
        raise ServerStartError(f"{self.name} not ready after {timeout_s:g} s:\n{self.log()}")

    async def _probe_port(self) -> None:
        """With a fixed port, bound is when a TCP connection succeeds (the INFO log line
        saying so is missing when the server runs at --log-level WARNING)."""
        while True:
            try:
                _, writer = await asyncio.open_connection(HOST, self.port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return

    async def health(self) -> int:
        """The grpc.health.v1 status of the whole server (raises AioRpcError if down)."""
        async with aio.insecure_channel(self.target) as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return int(resp.status)

    async def wait_health(self, status: int, timeout: float = 30) -> None:  # noqa: ASYNC109
        """Wait until health reports `status`; AssertionError with the log if it never does
        (the tests that use this want a failed expectation, not a crash)."""

        async def loop() -> None:
            while True:
                with contextlib.suppress(aio.AioRpcError):
                    if await self.health() == status:
                        return
                await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"health never became {status}:\n{self.log()}") from None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` (SIGTERM, SIGSTOP, SIGCONT...) to the running process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        """Wait for the process to exit; its exit status (negative: killed by a signal)."""
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._drain_output()
        return code

    async def _drain_output(self) -> None:
        # The pipe reaches EOF when the process is gone, unless a child it left behind
        # still holds it: never wait for the reader for long.
        if self._reader is not None and not self._reader.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), 5)
            except TimeoutError:
                self._reader.cancel()

    async def stop(self, timeout: float = 30) -> int:  # noqa: ASYNC109
        """SIGTERM (graceful: health NOT_SERVING, in-flight calls get the grace period),
        then SIGKILL if it is still there after `timeout`. Returns the exit status (0 after
        a clean shutdown; also 0 when it was not running)."""
        if self.proc is None:
            return 0
        if self.proc.returncode is not None:
            return self.proc.returncode
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except TimeoutError:
            await self.kill()
            return self.proc.returncode if self.proc.returncode is not None else -9

    async def kill(self) -> None:
        """SIGKILL, no goodbye (SIGCONT first: a frozen process cannot die otherwise)."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)
                self.proc.kill()
            await self.wait_exit()

    def log(self, lines: int | None = 200) -> str:
        """The last `lines` lines of output (all that is kept with None)."""
        kept = list(self.lines)
        return "".join(kept if lines is None else kept[-lines:])


def benchmark_server(
    database_url: str,
    data_dir: Path,
    *,
    admin_email: str,
    admin_password: str | None = None,
    jwt_secret: str | None = None,
    pool_size: int | None = None,
    env: dict[str, str] | None = None,
    module: str = "ticketd",
    name: str = "ticketd",
) -> ServerProcess:
    """ticketd as every benchmark runs it: a free port, bcrypt rounds 4, the given bootstrap
    admin (a random password unless given), WARNING-level logs kept in
    `data_dir/<name>.log`, 2 s shutdown grace. `module` may be an instrumented wrapper
    run as `python -m MODULE serve`."""
    return ServerProcess(
        database_url,
        data_dir,
        jwt_secret=jwt_secret or new_jwt_secret(),
        admin_email=admin_email,
        admin_password=admin_password or new_password(),
        pool_size=pool_size,
        extra_env=dict(env or {}),
        module=module,
        args=("serve", "--log-level", "WARNING"),
        log_path=data_dir / f"{name}.log",
        name=name,
    )
