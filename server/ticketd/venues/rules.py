"""Pure venue rules: the layout model and its validation (no SQL, no grpc)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import uuid
import zoneinfo
from dataclasses import dataclass, field

from ticketd.errors import FieldViolation, InvalidArgument, Reason
from ticketd.shared import SectionKind

MAX_VENUE_PLACES = 200_000
MAX_SECTIONS = 200
MAX_ROWS_PER_SECTION = 2_000
MAX_SEATS_PER_ROW = 10_000
MAX_NAME = 200
MAX_SECTION_NAME = 100
MAX_ADDRESS = 500
MAX_LABEL = 20


@dataclass(frozen=True)
class RowSpec:
    label: str
    seat_count: int
    seat_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class SectionSpec:
    name: str
    kind: SectionKind
    rows: tuple[RowSpec, ...] = ()
    ga_capacity: int = 0

    @property
    def capacity(self) -> int:
        if self.kind is SectionKind.GENERAL_ADMISSION:
            return self.ga_capacity
        return sum(r.seat_count for r in self.rows)


@dataclass(frozen=True)
class VenueSpec:
    """A venue as the caller describes it, before it has ids."""

    name: str
    address: str
    time_zone: str
    sections: tuple[SectionSpec, ...]

    @property
    def capacity(self) -> int:
        return sum(s.capacity for s in self.sections)


@dataclass(frozen=True)
class SectionRecord:
    id: uuid.UUID
    name: str
    kind: SectionKind
    capacity: int
    rows: tuple[RowSpec, ...] = ()


@dataclass(frozen=True)
class VenueRecord:
    id: uuid.UUID
    name: str
    address: str
    time_zone: str
    capacity: int
    create_time: dt.datetime
    update_time: dt.datetime
    sections: tuple[SectionRecord, ...] = field(default=())


def _text_violation(value: str, path: str, max_len: int, *, required: bool = True) -> str | None:
    if required and not value.strip():
        return "is required"
    if len(value) > max_len:
        return f"must be at most {max_len} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "must not contain control characters"
    return None


def validate_venue(spec: VenueSpec, prefix: str = "venue") -> None:
    """Raise INVALID_ARGUMENT listing every problem of the venue, one violation per field."""
    out: list[FieldViolation] = []

    def bad(path: str, why: str | None) -> None:
        if why:
            out.append(FieldViolation(path, why))

    bad(f"{prefix}.name", _text_violation(spec.name, "name", MAX_NAME))
    bad(f"{prefix}.address", _text_violation(spec.address, "address", MAX_ADDRESS, required=False))
    if not spec.time_zone:
        bad(f"{prefix}.time_zone", "is required")
    else:
        try:
            if len(spec.time_zone) > 64:
                raise ValueError
            zoneinfo.ZoneInfo(spec.time_zone)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            bad(f"{prefix}.time_zone", "is not an IANA time zone name")
    if not spec.sections:
        bad(f"{prefix}.sections", "at least one section is required")
    if len(spec.sections) > MAX_SECTIONS:
        bad(f"{prefix}.sections", f"at most {MAX_SECTIONS} sections")
        raise InvalidArgument(out)
    names: set[str] = set()
    total = 0
    for i, section in enumerate(spec.sections):
        sp = f"{prefix}.sections[{i}]"
        why = _text_violation(section.name, "name", MAX_SECTION_NAME)
        bad(f"{sp}.name", why)
        key = section.name.strip().casefold()
        if why is None and key in names:
            bad(f"{sp}.name", f"duplicate section name {section.name.strip()!r}")
        names.add(key)
        if section.kind is SectionKind.GENERAL_ADMISSION:
            if section.rows:
                bad(f"{sp}.rows", "must be empty for a general-admission section")
            if not 0 < section.ga_capacity <= MAX_VENUE_PLACES:
                bad(f"{sp}.capacity", f"must be between 1 and {MAX_VENUE_PLACES}")
            else:
                total += section.ga_capacity
            continue
        if not section.rows:
            bad(f"{sp}.rows", "a reserved section needs at least one row")
        if len(section.rows) > MAX_ROWS_PER_SECTION:
            bad(f"{sp}.rows", f"at most {MAX_ROWS_PER_SECTION} rows per section")
            continue
        labels: set[str] = set()
        for j, row in enumerate(section.rows):
            rp = f"{sp}.rows[{j}]"
            why = _text_violation(row.label, "label", MAX_LABEL)
            bad(f"{rp}.label", why)
            if why is None and row.label.strip() in labels:
                bad(f"{rp}.label", f"duplicate row label {row.label.strip()!r} in this section")
            labels.add(row.label.strip())
            if not 0 < row.seat_count <= MAX_SEATS_PER_ROW:
                bad(f"{rp}.seat_count", f"must be between 1 and {MAX_SEATS_PER_ROW}")
                continue
            total += row.seat_count
            if row.seat_labels:
                if len(row.seat_labels) != row.seat_count:
                    bad(f"{rp}.seat_labels", "must be empty or have exactly seat_count labels")
                elif len(set(row.seat_labels)) != len(row.seat_labels):
                    bad(f"{rp}.seat_labels", "labels must be distinct within a row")
                else:
                    for k, lab in enumerate(row.seat_labels):
                        why = _text_violation(lab, "label", MAX_LABEL)
                        if why:
                            bad(f"{rp}.seat_labels[{k}]", why)
                            break
    if total > MAX_VENUE_PLACES:
        bad(f"{prefix}.sections", f"at most {MAX_VENUE_PLACES} places per venue (got {total})")
    if out:
        raise InvalidArgument(out)


def clean(spec: VenueSpec) -> VenueSpec:
    """Trimmed names and labels, as stored."""
    return VenueSpec(
        name=spec.name.strip(),
        address=spec.address.strip(),
        time_zone=spec.time_zone,
        sections=tuple(
            SectionSpec(
                name=s.name.strip(),
                kind=s.kind,
                rows=tuple(
                    RowSpec(r.label.strip(), r.seat_count, tuple(x.strip() for x in r.seat_labels))
                    for r in s.rows
                ),
                ga_capacity=s.ga_capacity,
            )
            for s in spec.sections
        ),
    )


# A create/update time at its widest on the wire: its seconds and nanoseconds varints take
# 5 bytes each, the most that any instant from 2004 to 3058 takes, so a venue measured with
# it is never smaller than the venue as stored and answered (at most 6 bytes per time larger:
# a real time whose nanoseconds are 0 omits that field).
WIDEST_TIME = dt.datetime(2999, 12, 31, 23, 59, 59, 999_999, tzinfo=dt.UTC)


def projected_record(spec: VenueSpec) -> VenueRecord:
    """The venue as CreateVenue/GetVenue will answer it, before it exists: the cleaned
    spec, with ids (every UUID has the same 36-character text) and times at their widest.
    Measuring this record gives the response size, exact up to 12 bytes of timestamps."""
    cleaned = clean(spec)
    placeholder = uuid.UUID(int=0)
    return VenueRecord(
        id=placeholder,
        name=cleaned.name,
        address=cleaned.address,
        time_zone=cleaned.time_zone,
        capacity=cleaned.capacity,
        create_time=WIDEST_TIME,
        update_time=WIDEST_TIME,
        sections=tuple(
            SectionRecord(placeholder, s.name, s.kind, s.capacity, s.rows) for s in cleaned.sections
        ),
    )


def check_response_fits(response_bytes: int, max_bytes: int, prefix: str = "venue") -> None:
    """Refuse a layout whose venue could not be sent back (INVALID_ARGUMENT naming the
    layout, reason RESPONSE_TOO_LARGE): a venue that is stored but cannot be read is worse
    than one never created, and a client retrying would create it twice."""
    if response_bytes > max_bytes:
        raise InvalidArgument(
            [
                FieldViolation(
                    f"{prefix}.sections",
                    f"this layout makes a venue of {response_bytes} bytes, above the server's "
                    f"message limit of {max_bytes} bytes (TICKETING_MAX_MESSAGE_BYTES): "
                    "use fewer or shorter seat labels, or split the venue",
                )
            ],
            reason=Reason.RESPONSE_TOO_LARGE,
            metadata={"response_bytes": str(response_bytes), "max_bytes": str(max_bytes)},
        )


def venue_fingerprint(spec: VenueSpec) -> str:
    """What a CreateVenue request_id was first used for; a repeat must match it exactly."""
    body = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:32]
