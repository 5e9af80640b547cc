"""Where ticketctl keeps the signed-in session (token file, 0600)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:50051"


def config_dir() -> Path:
    override = os.environ.get("TICKETCTL_CONFIG_DIR")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ticketing"


@dataclass(frozen=True)
class SavedSession:
    target: str
    token: str
    email: str


def session_path() -> Path:
    return config_dir() / "session.json"


def save_session(session: SavedSession) -> Path:
    """Write the token readable by the owner only; replaces any earlier session atomically."""
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
    path = session_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return SavedSession(str(data["target"]), str(data["token"]), str(data.get("email", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_session() -> None:
    session_path().unlink(missing_ok=True)
