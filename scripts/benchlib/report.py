"""What every benchmark report shares: progress on stderr, a header, JSON on disk."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Progress goes to stderr, so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


def header(benchmark: str, command: str) -> dict[str, Any]:
    """The first fields of every report: what was measured, the command line that ran
    (`command` plus this process's arguments) and when (UTC)."""
    return {
        "benchmark": benchmark,
        "command": " ".join([command, *sys.argv[1:]]),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write indented JSON atomically (a reader never sees half a file); makes the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
