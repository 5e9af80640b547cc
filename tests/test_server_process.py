"""`ticketd` as a user runs it: a separate process, from nothing, with the embedded database."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import GENEROUS_AUTH_ENV
from tests.support import PASSWORD, unique_email
from ticketd.db.embedded import fallback_cluster_dir
from ticketing.v1 import auth_pb2, auth_pb2_grpc, common_pb2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ticketd-e2e-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(fallback_cluster_dir(path).parent, ignore_errors=True)


def _start(env_extra: dict[str, str], data_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TICKETING_JWT_SECRET")}
    env |= {
        "TICKETING_DATA_DIR": str(data_dir),
        "TICKETING_LISTEN": f"127.0.0.1:{port}",
        "TICKETING_BCRYPT_ROUNDS": "4",
        "TICKETING_ADMIN_EMAIL": "boot@example.test",
        "TICKETING_ADMIN_PASSWORD": "boot-password-1",
        "TICKETING_SHUTDOWN_GRACE": "3",
        **GENEROUS_AUTH_ENV,
        **env_extra,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ticketd"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "ticketd listening on" in line:
            return proc, f"127.0.0.1:{port}", "".join(lines)
    proc.kill()
    raise AssertionError("ticketd did not start:\n" + "".join(lines))


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError("ticketd did not stop on SIGTERM:\n" + out) from None
    return proc.returncode, out


async def _use(target: str) -> tuple[str, str]:
    async with aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert (
            await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
        ).status == health_pb2.HealthCheckResponse.SERVING
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        email = unique_email("e2e")
        await auth.Register(
            auth_pb2.RegisterRequest(email=email, password=PASSWORD, display_name="E"), timeout=10
        )
        login = await auth.Login(auth_pb2.LoginRequest(email=email, password=PASSWORD), timeout=10)
        admin = await auth.Login(
            auth_pb2.LoginRequest(email="boot@example.test", password="boot-password-1"),
            timeout=10,
        )
        assert common_pb2.ROLE_ADMIN in admin.user.roles
        return login.user.id, login.access_token


async def test_embedded_default_from_nothing_survives_restart(data_dir: Path) -> None:
    proc, target, started = _start({}, data_dir)
    try:
        user_id, token = await _use(target)
    finally:
        code, out = _stop(proc)
    assert code == 0, out
    assert "no DATABASE_URL: using embedded PostgreSQL" in started
    secret = data_dir / "jwt_secret"
    assert secret.exists() and (secret.stat().st_mode & 0o777) == 0o600

    # Second start: same data, same secret, so the old token still works.
    proc, target, _ = _start({}, data_dir)
    try:
        async with aio.insecure_channel(target) as channel:
            auth = auth_pb2_grpc.AuthServiceStub(channel)
            me = await auth.GetCurrentUser(
                auth_pb2.GetCurrentUserRequest(),
                metadata=(("authorization", f"Bearer {token}"),),
                timeout=10,
            )
            assert me.user.id == user_id
    finally:
        code, out = _stop(proc)
    assert code == 0, out


async def test_bad_configuration_is_a_clear_error(data_dir: Path) -> None:
    env = {**os.environ, "TICKETING_BCRYPT_ROUNDS": "many", "TICKETING_DATA_DIR": str(data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ticketd",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"TICKETING_BCRYPT_ROUNDS must be an integer" in out


async def test_migrate_command_brings_a_fresh_database_to_head(pg_admin_url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    name = f"ticketing_migrate_{os.urandom(4).hex()}"
    plain = make_url(pg_admin_url).set(drivername="postgresql")
    admin = await asyncpg.connect(plain.render_as_string(hide_password=False))
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = plain.set(database=name).render_as_string(hide_password=False)
        env = {**os.environ, "DATABASE_URL": url}
        for _ in range(2):  # the second run finds nothing to do
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ticketd",
                "migrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, out.decode()
            assert b"database schema is up to date" in out
        conn = await asyncpg.connect(url)
        try:
            version = await conn.fetchval("SELECT version_num FROM alembic_version")
            tables = {
                r["tablename"]
                for r in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                )
            }
        finally:
            await conn.close()
        from alembic.script import ScriptDirectory

        from ticketd.db.migrate import alembic_config

        assert version == ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert {
            "users",
            "venues",
            "events",
            "seats",
            "orders",
            "tickets",
            "refunds",
            "scans",
        } <= tables
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
