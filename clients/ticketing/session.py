"""The signed-in session on this machine, shared by ticketctl and the kiosk.

`ticketctl login` saves target, token and email in `session.json` (mode 0600, replaced
atomically) under `$TICKETCTL_CONFIG_DIR`, else `$XDG_CONFIG_HOME/ticketing`, else
`~/.config/ticketing`; `ticketctl logout` removes it. `resolve_target` is how every tool picks
the server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_TARGET",
    "SavedSession",
    "clear_session",
    "config_dir",
    "load_session",
    "resolve_target",
    "save_session",
    "session_path",
]

DEFAULT_TARGET = "127.0.0.1:50051"


@dataclass(frozen=True)
class SavedSession:
    """Who signed in where: the server's host:port, the access token and the account's email."""

    target: str
    token: str
    email: str


def config_dir() -> Path:
    """The directory of the session file (see the module docstring for the order)."""
    override = os.environ.get("TICKETCTL_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ticketing"


def session_path() -> Path:
    """The session file, whether or not it exists."""
    return config_dir() / "session.json"


def save_session(session: SavedSession) -> Path:
    """Write the session readable by the owner only; replaces any earlier one atomically."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = session_path()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"target": session.target, "token": session.token, "email": session.email}, fh)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def load_session() -> SavedSession | None:
    """The saved session, or None when there is none (or it cannot be read)."""
    path = session_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SavedSession(str(data["target"]), str(data["token"]), str(data.get("email", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_session() -> None:
    """Forget the saved session (nothing happens when there is none)."""
    session_path().unlink(missing_ok=True)


def resolve_target(explicit: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The server to talk to: `explicit` (a --target), else $TICKETING_TARGET, else the saved
    session's target, else DEFAULT_TARGET."""
    if explicit:
        return explicit
    env = os.environ if environ is None else environ
    if env.get("TICKETING_TARGET"):
        return env["TICKETING_TARGET"]
    saved = load_session()
    return saved.target if saved else DEFAULT_TARGET
