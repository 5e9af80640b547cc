"""A `ticketd` server in its own process, for tests that kill, stop, freeze or starve it.

The process handling is the benchmark library's (scripts/benchlib/process.py); this module
only holds the tests' defaults.
"""

from __future__ import annotations

from pathlib import Path

from scripts.benchlib.process import ServerProcess, free_port, new_jwt_secret
from tests.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

__all__ = ["ServerProcess", "free_port", "ticketd_process"]


def ticketd_process(
    database_url: str,
    data_dir: Path,
    *,
    jwt_secret: str | None = None,
    extra_env: dict[str, str] | None = None,
    shutdown_grace_s: float = 5,
) -> ServerProcess:
    """ticketd on a fixed free port (a restart keeps the address), with the tests' admin,
    bcrypt rounds 4, a pool of 20, seat streams on, and its own JWT secret unless given one (share the
    in-process server's so tokens work on both, as behind a load balancer)."""
    return ServerProcess(
        database_url,
        data_dir,
        port=free_port(),
        jwt_secret=jwt_secret or new_jwt_secret(),
        admin_email=ADMIN_EMAIL,
        admin_password=ADMIN_PASSWORD,
        shutdown_grace_s=shutdown_grace_s,
        pool_size=20,
        # Seat streams on, as on the in-process servers: every server writing to the test
        # database records seat changes alike.
        extra_env={"TICKETING_SEAT_STREAMS": "on", **(extra_env or {})},
        inherit_ticketing_env=True,
    )
