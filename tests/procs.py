"""A `ticketd` server in its own process, for tests that kill, stop or starve it."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD, GENEROUS_AUTH_ENV


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """Start/stop/kill one ticketd process on a fixed port (so restarts keep the address)."""

    database_url: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    output: list[str] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DATABASE_URL": self.database_url,
                "TICKETING_LISTEN": self.target,
                "TICKETING_DATA_DIR": str(self.data_dir),
                "TICKETING_JWT_SECRET": self.jwt_secret,
                "TICKETING_BCRYPT_ROUNDS": "4",
                "TICKETING_ADMIN_EMAIL": ADMIN_EMAIL,
                "TICKETING_ADMIN_PASSWORD": ADMIN_PASSWORD,
                "TICKETING_SHUTDOWN_GRACE": "5",
                "TICKETING_DB_POOL_SIZE": "20",
                **GENEROUS_AUTH_ENV,
                **self.extra_env,
            }
        )
        return env

    async def start(self, *, wait_ready: bool = True) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ticketd",
            env=self.env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_bound()
        if wait_ready:
            await self.wait_health(health_pb2.HealthCheckResponse.SERVING)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                return
            self.output.append(line.decode(errors="replace"))

    async def wait_bound(self, timeout: float = 30) -> None:
        async def loop() -> None:
            while True:
                assert self.proc is not None
                if self.proc.returncode is not None:
                    raise AssertionError("ticketd exited:\n" + self.log())
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return
                except OSError:
                    await asyncio.sleep(0.05)

        await asyncio.wait_for(loop(), timeout)

    async def health(self) -> int:
        async with aio.insecure_channel(self.target) as ch:
            resp = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
            return int(resp.status)

    async def wait_health(self, status: int, timeout: float = 30) -> None:
        async def loop() -> None:
            while True:
                try:
                    if await self.health() == status:
                        return
                except aio.AioRpcError:
                    pass
                await asyncio.sleep(0.1)

        try:
            await asyncio.wait_for(loop(), timeout)
        except TimeoutError:
            raise AssertionError(f"health never became {status}:\n" + self.log()) from None

    async def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.wait_exit()

    async def stop(self) -> int:
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc and self.proc.returncode is not None else 0
        await self.signal(signal.SIGTERM)
        return await self.wait_exit()

    def log(self) -> str:
        return "".join(self.output[-200:])
