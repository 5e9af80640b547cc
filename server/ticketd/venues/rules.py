"""Pure venue rules: the layout model and its validation (no SQL, no grpc)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import hashlib
import json
import unicodedata
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


# Entries of a zoneinfo tree that are not places: the host's own zone ("localtime", whatever
# the machine is set to), tzdata's placeholder "Factory" ("-00", "local time zone must be
# set"), the POSIX-rules template, and the duplicate "posix/" and "right/" (leap-second)
# trees some systems carry. zoneinfo.available_timezones() lists some of them on some hosts.
_NOT_PLACES = frozenset({"Factory", "localtime", "posixrules", "leapseconds", "leap-seconds.list"})
_NOT_PLACE_PREFIXES = ("posix/", "right/")


@functools.cache
def iana_time_zones() -> frozenset[str]:
    """The IANA zone names (canonical and their backward-compatible links) this server knows.

    An exact-name lookup in this set is the whole check: `zoneinfo.ZoneInfo(name)` would
    open whatever file the name points to, so a directory ("America") raised an OS error and
    "localtime" or "Factory" were accepted. Read once, from the system tree and the `tzdata`
    package; no file is opened per request.
    """
    return frozenset(
        name
        for name in zoneinfo.available_timezones()
        if name not in _NOT_PLACES and not name.startswith(_NOT_PLACE_PREFIXES)
    )


def time_zone_violation(name: str) -> str | None:
    """Why `name` is not a venue time zone, or None for a real IANA name (case-sensitive)."""
    if not name:
        return "is required"
    if len(name) > 64 or name not in iana_time_zones():
        return "is not an IANA time zone name"
    return None


def normalize_label(value: str) -> str:
    """A seat label, row label or section name as stored and compared: NFC, surrounding
    space trimmed and every inner run of (Unicode) space folded to one ASCII space.

    ["1", " 1", "1 "] and "Upper\u00a0 Tier" / "Upper Tier" are the same on a printed
    ticket, so they must be the same to the duplicate check too: it runs on this form.
    """
    return " ".join(unicodedata.normalize("NFC", value).split())


def _label_key(value: str) -> str:
    """What two labels must differ in to be distinct: look-alikes (NFKC: full-width digits,
    ligatures) and case fold together."""
    return unicodedata.normalize("NFKC", normalize_label(value)).casefold()


def _label_violation(value: str, max_len: int) -> str | None:
    """Why a label or section name is refused (checked on the raw value first for
    characters nothing could print, then on the normalised value for length)."""
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value):
        # Control characters, and format characters (zero-width space, BOM, bidi controls):
        # invisible on a ticket, they would make look-alike labels distinct.
        return "must not contain control or invisible formatting characters"
    cleaned = normalize_label(value)
    if not cleaned:
        return "is required"
    if len(cleaned) > max_len:
        return f"must be at most {max_len} characters"
    return None


def validate_venue(spec: VenueSpec, prefix: str = "venue") -> None:
    """Raise INVALID_ARGUMENT listing every problem of the venue, one violation per field.

    Labels and section names are normalised (`normalize_label`) before their length and
    duplicate checks, exactly as `clean` stores them.
    """
    out: list[FieldViolation] = []

    def bad(path: str, why: str | None) -> None:
        if why:
            out.append(FieldViolation(path, why))

    bad(f"{prefix}.name", _text_violation(spec.name, "name", MAX_NAME))
    bad(f"{prefix}.address", _text_violation(spec.address, "address", MAX_ADDRESS, required=False))
    bad(f"{prefix}.time_zone", time_zone_violation(spec.time_zone))
    if not spec.sections:
        bad(f"{prefix}.sections", "at least one section is required")
    if len(spec.sections) > MAX_SECTIONS:
        bad(f"{prefix}.sections", f"at most {MAX_SECTIONS} sections")
        raise InvalidArgument(out)
    names: set[str] = set()
    total = 0
    for i, section in enumerate(spec.sections):
        sp = f"{prefix}.sections[{i}]"
        why = _label_violation(section.name, MAX_SECTION_NAME)
        bad(f"{sp}.name", why)
        key = _label_key(section.name)
        if why is None and key in names:
            bad(f"{sp}.name", f"duplicate section name {normalize_label(section.name)!r}")
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
            why = _label_violation(row.label, MAX_LABEL)
            bad(f"{rp}.label", why)
            key = _label_key(row.label)
            if why is None and key in labels:
                bad(
                    f"{rp}.label",
                    f"duplicate row label {normalize_label(row.label)!r} in this section",
                )
            labels.add(key)
            if not 0 < row.seat_count <= MAX_SEATS_PER_ROW:
                bad(f"{rp}.seat_count", f"must be between 1 and {MAX_SEATS_PER_ROW}")
                continue
            total += row.seat_count
            if row.seat_labels:
                if len(row.seat_labels) != row.seat_count:
                    bad(f"{rp}.seat_labels", "must be empty or have exactly seat_count labels")
                else:
                    _check_seat_labels(row.seat_labels, f"{rp}.seat_labels", out)
    if total > MAX_VENUE_PLACES:
        bad(f"{prefix}.sections", f"at most {MAX_VENUE_PLACES} places per venue (got {total})")
    if out:
        raise InvalidArgument(out)


# A row of 10,000 bad labels must not become 10,000 violations: the answer has to fit a
# message, and the first few already tell the caller what is wrong.
MAX_LABEL_VIOLATIONS = 10


def _check_seat_labels(labels: tuple[str, ...], path: str, out: list[FieldViolation]) -> None:
    """Each label valid once normalised, and distinct within its row (after normalising)."""
    seen: set[str] = set()
    found = 0
    for k, label in enumerate(labels):
        why = _label_violation(label, MAX_LABEL)
        key = _label_key(label)
        if why is None and key in seen:
            why = f"duplicate seat label {normalize_label(label)!r} in this row"
        seen.add(key)
        if why:
            out.append(FieldViolation(f"{path}[{k}]", why))
            found += 1
            if found >= MAX_LABEL_VIOLATIONS:
                return


def clean(spec: VenueSpec) -> VenueSpec:
    """The venue as stored: names trimmed, labels and section names normalised
    (`normalize_label`), the same form `validate_venue` checked."""
    return VenueSpec(
        name=spec.name.strip(),
        address=spec.address.strip(),
        time_zone=spec.time_zone,
        sections=tuple(
            SectionSpec(
                name=normalize_label(s.name),
                kind=s.kind,
                rows=tuple(
                    RowSpec(
                        normalize_label(r.label),
                        r.seat_count,
                        tuple(normalize_label(x) for x in r.seat_labels),
                    )
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
