"""The kiosk's local, append-only scan journal (JSON lines, fsync per line).

Every physical scan writes two lines:

    {"type": "read", "scan_id": ..., "code_hash": ..., "code": ..., "event_id": ...,
     "gate_id": ..., "time": ...}
    {"type": "result", "scan_id": ..., "result": "ADMITTED", "repeat": false, "seat": {...},
     "ticket_id": ..., "scan_time": ..., "first_gate_id": ..., "first_scan_time": ...,
     "attempts": 1, "error": null, "time": ...}

A scan the kiosk admitted by itself while offline has `"offline": true` in its result line
and waits for upload (GateService.UploadOfflineScans) until an "upload" line says what the
server made of it:

    {"type": "upload", "scan_id": ..., "upload_result": "ACCEPTED", "logged_result": ...,
     "first_gate_id": ..., "first_scan_time": ..., "repeat": false, "detail": ..., "time": ...}

Uploads are idempotent by scan_id, so a crash between the server's answer and this line only
means the next start uploads the scan again and gets the stored answer.

The "read" line is on disk before the first request leaves the kiosk, so a crash at any point
leaves a scan that was read but has no result: on the next start the kiosk re-submits it with
the same scan_id, and the server answers with the original result if it had processed it.

`code_hash` is the server's scan-log hash (first 32 hex chars of SHA-256 of the trimmed code),
so a supervisor can match journal lines to `GateService.ListScans` without the code. The raw
code is kept in the "read" line too, because re-submitting a pending scan needs it; the file is
created 0600 and is as sensitive as the tickets it saw (see the `ticketing.kiosk` docstring).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Journal", "JournalError", "OfflineAdmission", "PendingScan", "code_hash"]


class JournalError(Exception):
    """The journal cannot be opened or written (locked by another kiosk, unwritable...)."""


def code_hash(code: str) -> str:
    """The scan-log hash the server stores for a code: sha256(trimmed code) hex, 32 chars."""
    return hashlib.sha256(code.strip().encode("utf-8")).hexdigest()[:32]


def now_iso() -> str:
    """Wall-clock time (UTC, milliseconds) for journal lines."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class PendingScan:
    """A scan read before a crash whose result never reached the journal."""

    scan_id: str
    code: str
    event_id: str
    gate_id: str
    read_time: str


@dataclass(frozen=True)
class OfflineAdmission:
    """A scan admitted offline that the server has not acknowledged yet."""

    scan_id: str
    code: str
    scan_time: str
    """ISO 8601, the kiosk's clock when it admitted."""


@dataclass
class _Replay:
    pending: dict[str, PendingScan] = field(default_factory=dict)
    codes: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, OfflineAdmission] = field(default_factory=dict)
    admitted: set[str] = field(default_factory=set)
    results: int = 0
    damaged_lines: int = 0

    def result(self, scan_id: str, entry: dict[str, Any]) -> None:
        """Account for a result line (at replay and as it is written)."""
        self.results += 1
        self.pending.pop(scan_id, None)
        code = self.codes.pop(scan_id, None)
        if entry.get("result") != "ADMITTED":
            return
        ticket = entry.get("ticket_id")
        if isinstance(ticket, str) and ticket:
            self.admitted.add(ticket)
        if entry.get("offline") and code is not None:
            when = entry.get("scan_time") or entry.get("time") or ""
            self.waiting[scan_id] = OfflineAdmission(scan_id, code, str(when))


class Journal:
    """An open journal file: exclusive to this process (flock), appended to with fsync."""

    def __init__(self, path: Path, fd: int, replay: _Replay) -> None:
        self.path = path
        self._fd = fd
        self._pending = replay.pending
        self._replay = replay
        self.results_before = replay.results
        self.damaged_lines = replay.damaged_lines

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Open (or create, mode 0600) and lock the journal; read back what is pending.

        Raises JournalError if another process holds it: two kiosks appending to one file
        would both re-submit its pending scans and interleave their lines.
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open journal {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"journal {path} is in use by another kiosk process") from None
        try:
            # An older file may have been created with a laxer umask; it holds codes.
            if os.fstat(fd).st_mode & 0o077:
                os.fchmod(fd, 0o600)
            replay = _replay(path)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A crash mid-write left half a line; start ours on a fresh one.
                os.write(fd, b"\n")
                os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"cannot use journal {path}: {exc.strerror}") from exc
        return cls(path, fd, replay)

    def pending(self) -> list[PendingScan]:
        """Scans read but without a result, oldest first."""
        return sorted(self._pending.values(), key=lambda p: p.read_time)

    def record_read(self, scan_id: str, code: str, event_id: str, gate_id: str) -> None:
        """Durably note a scan before it is sent (the crash-recovery point)."""
        read_time = now_iso()
        self._append(
            {
                "type": "read",
                "scan_id": scan_id,
                "code_hash": code_hash(code),
                "code": code,
                "event_id": event_id,
                "gate_id": gate_id,
                "time": read_time,
            }
        )
        self._pending[scan_id] = PendingScan(scan_id, code, event_id, gate_id, read_time)
        self._replay.codes[scan_id] = code

    def record_result(self, scan_id: str, result: dict[str, Any]) -> None:
        """Durably note how a scan ended; it is no longer pending afterwards (and, if it was
        admitted offline, waits for upload)."""
        entry = {"type": "result", "scan_id": scan_id, **result, "time": now_iso()}
        self._append(entry)
        self._replay.result(scan_id, entry)

    def record_upload(self, scan_id: str, outcome: dict[str, Any]) -> None:
        """Durably note the server's answer to an uploaded offline admission."""
        self._append({"type": "upload", "scan_id": scan_id, **outcome, "time": now_iso()})
        self._replay.waiting.pop(scan_id, None)

    def waiting_uploads(self) -> list[OfflineAdmission]:
        """Offline admissions the server has not acknowledged, oldest first."""
        return sorted(self._replay.waiting.values(), key=lambda w: w.scan_time)

    @property
    def waiting_count(self) -> int:
        """How many offline admissions wait for upload."""
        return len(self._replay.waiting)

    def admitted_here(self) -> set[str]:
        """Ticket ids this journal admitted (online or offline): never admitted again offline."""
        return self._replay.admitted

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            # One write() per line on an O_APPEND fd: never interleaved, never torn by us.
            os.write(self._fd, line.encode("utf-8"))
            os.fsync(self._fd)
        except OSError as exc:
            raise JournalError(f"cannot write journal {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        """Release the lock and the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _replay(path: Path) -> _Replay:
    out = _Replay()
    for entry in _entries(path, out):
        scan_id = entry.get("scan_id")
        if not isinstance(scan_id, str):
            out.damaged_lines += 1
            continue
        if entry.get("type") == "read":
            try:
                out.pending[scan_id] = PendingScan(
                    scan_id=scan_id,
                    code=str(entry["code"]),
                    event_id=str(entry["event_id"]),
                    gate_id=str(entry["gate_id"]),
                    read_time=str(entry.get("time", "")),
                )
                out.codes[scan_id] = str(entry["code"])
            except KeyError:
                out.damaged_lines += 1
        elif entry.get("type") == "result":
            out.result(scan_id, entry)
        elif entry.get("type") == "upload":
            out.waiting.pop(scan_id, None)
    return out


def _entries(path: Path, replay: _Replay) -> Iterator[dict[str, Any]]:
    with path.open("rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                # Only a torn last line is expected (crash mid-write); it had no fsync'd
                # effect, so skipping it is correct. Anything else is counted and reported.
                replay.damaged_lines += 1
                continue
            if isinstance(entry, dict):
                yield entry
            else:
                replay.damaged_lines += 1
