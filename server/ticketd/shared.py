"""Vocabulary that several domains share (so that none has to import another for it)."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from enum import StrEnum

from ticketd.errors import NotFound, Reason, not_found


class SectionKind(StrEnum):
    """How a section is sold: numbered seats in rows, or a number of standing places."""

    RESERVED = "RESERVED"
    GENERAL_ADMISSION = "GENERAL_ADMISSION"


def event_not_found(event_id: uuid.UUID) -> NotFound:
    """NOT_FOUND for an event id: booking and gates refer to events too."""
    return not_found(Reason.EVENT_NOT_FOUND, "event", event_id=event_id)


@dataclass(frozen=True)
class ScanWindowDefaults:
    """The server's defaults for an event's scan window, passed to the SQL function
    `gate_window` (migration 0005), the one definition of the window: gates and events both
    judge it there."""

    doors_open_lead: dt.timedelta
    """Gates open this long before start when the event sets no doors_open_time."""
    default_duration: dt.timedelta
    """Gates close this long after start when the event sets no end_time."""


@dataclass(frozen=True)
class EndCustomer:
    """A partner reseller's customer, as the partner names them (issue 13): booking records
    orders for them, the partners domain keeps them."""

    external_customer_id: str
    display_name: str = ""
    email: str = ""
