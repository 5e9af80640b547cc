"""When a kiosk works offline, and what an offline verdict means at the gate. Pure rules, no I/O.

The kiosk has no operator switch: it goes OFFLINE by itself when a call fails in a way that
says "the server is not there" (UNAVAILABLE, DEADLINE_EXCEEDED), and back ONLINE when the
server answers again (a health probe, or any answered call, even a refusal). A server that
answers "slow down" (RESOURCE_EXHAUSTED) or "try again" (ABORTED) is there: the kiosk stays
online and retries.

Offline admission needs a synced kit (`ticketing.kiosk.offline.OfflineKit`); a kiosk that never
got one keeps retrying online as before, since it could judge nothing by itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from ticketing.kiosk.offline import OfflineVerdict
from ticketing.kiosk.views import Outcome

__all__ = [
    "OFFLINE_TRIGGERS",
    "UPLOAD_BATCH",
    "Link",
    "Mode",
    "batches",
    "goes_offline",
    "offline_outcome",
]

OFFLINE_TRIGGERS = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "NOT_SERVING"})
"""Status names after which the kiosk stops waiting for the server (NOT_SERVING: the health
check says the server is up but cannot validate, e.g. its database is away)."""

UPLOAD_BATCH = 100
"""UploadOfflineScans takes at most this many scans per call."""


class Mode(StrEnum):
    """Whether scans go to the server or are judged by the kiosk itself."""

    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"


def goes_offline(status_name: str) -> bool:
    """True when a failed call with this status means the server cannot be reached."""
    return status_name in OFFLINE_TRIGGERS


@dataclass
class Link:
    """The kiosk's view of its link, and when it syncs its kit next.

    Times are monotonic seconds supplied by the caller, so the rules are testable without a
    clock. `sync_interval` is how often keys and revocations are fetched while online;
    `revocation_interval` how often, in between, only the revocations after the kit's last
    sequence are asked for (one ListRevocations call, empty when nothing is new), so that a
    refund or a reissued code stops admitting here within seconds even if the link drops
    next. Keys change rarely; revocations are what an offline kiosk must not be late with.
    """

    sync_interval: float = 30.0
    mode: Mode = Mode.ONLINE
    next_sync: float = 0.0
    revocation_interval: float = 2.0
    next_revocations: float = 0.0

    @property
    def offline(self) -> bool:
        return self.mode is Mode.OFFLINE

    def call_failed(self, status_name: str) -> bool:
        """A call failed; returns True when that switched the kiosk to OFFLINE."""
        if self.mode is Mode.ONLINE and goes_offline(status_name):
            self.mode = Mode.OFFLINE
            return True
        return False

    def server_answered(self, now: float) -> bool:
        """The server answered; returns True when that switched the kiosk back ONLINE.

        Coming back makes a sync due at once: revocations may have been written meanwhile.
        """
        if self.mode is Mode.OFFLINE:
            self.mode = Mode.ONLINE
            self.next_sync = now
            self.next_revocations = now
            return True
        return False

    def sync_due(self, now: float) -> bool:
        """Whether to fetch keys and revocations now (only online)."""
        return self.mode is Mode.ONLINE and now >= self.next_sync

    def synced(self, now: float) -> None:
        """A sync finished (revocations included); the next is one interval later."""
        self.next_sync = now + self.sync_interval
        self.next_revocations = now + self.revocation_interval

    def revocations_due(self, now: float) -> bool:
        """Whether to ask for new revocations now (only online, between syncs)."""
        return self.mode is Mode.ONLINE and now >= self.next_revocations

    def revocations_refreshed(self, now: float) -> None:
        """A revocation refresh finished (or failed): the next is one interval later."""
        self.next_revocations = now + self.revocation_interval


_OUTCOMES: dict[OfflineVerdict, Outcome] = {
    OfflineVerdict.ADMIT: Outcome.ADMITTED,
    OfflineVerdict.NOT_VERIFIABLE: Outcome.PLAIN_CODE,
    OfflineVerdict.FORGED: Outcome.FORGED,
    OfflineVerdict.WRONG_EVENT: Outcome.WRONG_EVENT,
    OfflineVerdict.REVOKED: Outcome.REVOKED,
    OfflineVerdict.ALREADY_ADMITTED_HERE: Outcome.ALREADY_USED,
    OfflineVerdict.NOT_YET_OPEN: Outcome.NOT_YET_OPEN,
    OfflineVerdict.EVENT_OVER: Outcome.EVENT_OVER,
    OfflineVerdict.EVENT_CANCELLED: Outcome.EVENT_CANCELLED,
    OfflineVerdict.OFFLINE_REFUSED: Outcome.OFFLINE_REFUSED,
}


def offline_outcome(verdict: OfflineVerdict) -> Outcome:
    """What the gate shows for the kiosk's own verdict."""
    return _OUTCOMES[verdict]


T = TypeVar("T")


def batches(items: Sequence[T], size: int = UPLOAD_BATCH) -> Iterator[Sequence[T]]:
    """`items` in order, cut into runs of at most `size` (the upload limit)."""
    if size <= 0:
        raise ValueError("size must be positive")
    for start in range(0, len(items), size):
        yield items[start : start + size]
