"""A kiosk's device credential: enrollment (`--enroll TOKEN`) and the file that keeps it.

The organizer creates a device for one event and gate (`ticketctl gates devices create`) and
hands its one-time enrollment token ("tke_...") to whoever sets up the kiosk.
`ticketing-kiosk --enroll TOKEN` exchanges it (GateService.EnrollDevice, a public call: the
token is the authentication) for the device credential ("tkd_..."), which it writes to
`kiosk-device-<event>-<gate>.json` in the device directory (--device-dir, else
$TICKETING_KIOSK_DIR, else the current directory), mode 0600, replaced atomically. Later starts
with the same --event and --gate find it there and send `authorization: Device <credential>`:
no human password at the gate. The file is as sensitive as a password; revoke the device
(`ticketctl gates devices revoke`) if the kiosk is lost.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["DeviceFile", "default_device_dir", "device_path"]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:80]


def default_device_dir() -> Path:
    """$TICKETING_KIOSK_DIR, else the current directory (beside the journal)."""
    return Path(os.environ.get("TICKETING_KIOSK_DIR") or Path.cwd())


def device_path(directory: Path, event_id: str, gate_id: str) -> Path:
    """<directory>/kiosk-device-<event>-<gate>.json, names made safe for a file name."""
    return directory / f"kiosk-device-{_safe(event_id)}-{_safe(gate_id)}.json"


@dataclass(frozen=True)
class DeviceFile:
    """What an enrolled kiosk keeps: which device it is, and its credential."""

    device_id: str
    event_id: str
    gate_id: str
    display_name: str
    credential: str

    def save(self, path: Path) -> None:
        """Write (0600, atomically: a crash leaves the old file or the new one)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DeviceFile:
        """Read a saved credential; ValueError when the file is not one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            device = cls(
                device_id=str(data["device_id"]),
                event_id=str(data["event_id"]),
                gate_id=str(data["gate_id"]),
                display_name=str(data["display_name"]),
                credential=str(data["credential"]),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path} is not a kiosk device file: {exc}") from None
        if not device.credential.startswith("tkd_"):
            raise ValueError(f"{path} holds no device credential")
        if os.stat(path).st_mode & 0o077:
            # Someone loosened it (a copy, an archive): it is a password, tighten it again.
            os.chmod(path, 0o600)
        return device
