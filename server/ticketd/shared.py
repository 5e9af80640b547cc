"""Vocabulary that several domains share (so that none has to import another for it)."""

from __future__ import annotations

import uuid
from enum import StrEnum

from ticketd.errors import NotFound, Reason, not_found


class SectionKind(StrEnum):
    """How a section is sold: numbered seats in rows, or a number of standing places."""

    RESERVED = "RESERVED"
    GENERAL_ADMISSION = "GENERAL_ADMISSION"


def event_not_found(event_id: uuid.UUID) -> NotFound:
    """NOT_FOUND for an event id: booking and gates refer to events too."""
    return not_found(Reason.EVENT_NOT_FOUND, "event", event_id=event_id)
