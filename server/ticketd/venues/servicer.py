"""VenueService: protobuf <-> venue domain; no SQL here."""

from __future__ import annotations

from typing import Any

from ticketd.convert import parse_uuid, timestamp
from ticketd.db.engine import Database
from ticketd.errors import InvalidArgument
from ticketd.pagination import PageTokens, resolve_page_size
from ticketd.venues import repository as repo
from ticketd.venues.rules import (
    RowSpec,
    SectionKind,
    SectionSpec,
    VenueRecord,
    VenueSpec,
    clean,
    validate_venue,
)
from ticketing.v1 import venue_pb2, venue_pb2_grpc

KIND_FROM_PROTO = {
    venue_pb2.SECTION_KIND_RESERVED: SectionKind.RESERVED,
    venue_pb2.SECTION_KIND_GENERAL_ADMISSION: SectionKind.GENERAL_ADMISSION,
}
KIND_TO_PROTO = {v: k for k, v in KIND_FROM_PROTO.items()}


def spec_from_proto(venue: venue_pb2.Venue) -> VenueSpec:
    """The caller's venue as a spec; unknown section kinds are INVALID_ARGUMENT."""
    sections = []
    for i, s in enumerate(venue.sections):
        kind = KIND_FROM_PROTO.get(s.kind)
        if kind is None:
            raise InvalidArgument.one(
                f"venue.sections[{i}].kind", "must be RESERVED or GENERAL_ADMISSION"
            )
        sections.append(
            SectionSpec(
                name=s.name,
                kind=kind,
                rows=tuple(RowSpec(r.label, r.seat_count, tuple(r.seat_labels)) for r in s.rows),
                ga_capacity=s.capacity if kind is SectionKind.GENERAL_ADMISSION else 0,
            )
        )
    return VenueSpec(
        name=venue.name, address=venue.address, time_zone=venue.time_zone, sections=tuple(sections)
    )


def venue_to_proto(venue: VenueRecord) -> venue_pb2.Venue:
    return venue_pb2.Venue(
        id=str(venue.id),
        name=venue.name,
        address=venue.address,
        time_zone=venue.time_zone,
        capacity=venue.capacity,
        create_time=timestamp(venue.create_time),
        update_time=timestamp(venue.update_time),
        sections=[
            venue_pb2.Section(
                id=str(s.id),
                name=s.name,
                kind=KIND_TO_PROTO[s.kind],
                capacity=s.capacity,
                rows=[
                    venue_pb2.Row(label=r.label, seat_count=r.seat_count, seat_labels=r.seat_labels)
                    for r in s.rows
                ],
            )
            for s in venue.sections
        ],
    )


class VenueServicer(venue_pb2_grpc.VenueServiceServicer):
    """Implements ticketing.v1.VenueService; access rules are in ticketd.auth.policy."""

    def __init__(self, db: Database, pages: PageTokens) -> None:
        self._db = db
        self._pages = pages

    async def CreateVenue(
        self, request: venue_pb2.CreateVenueRequest, context: Any
    ) -> venue_pb2.CreateVenueResponse:
        spec = spec_from_proto(request.venue)
        validate_venue(spec)
        async with self._db.session() as session, session.begin():
            venue_id = await repo.create_venue(session, clean(spec))
            venue = await repo.get_venue(session, venue_id)
        return venue_pb2.CreateVenueResponse(venue=venue_to_proto(venue))

    async def UpdateVenue(
        self, request: venue_pb2.UpdateVenueRequest, context: Any
    ) -> venue_pb2.UpdateVenueResponse:
        venue_id = parse_uuid(request.venue.id, "venue.id")
        spec = spec_from_proto(request.venue)
        validate_venue(spec)
        async with self._db.session() as session, session.begin():
            await repo.replace_venue(session, venue_id, clean(spec))
            venue = await repo.get_venue(session, venue_id)
        return venue_pb2.UpdateVenueResponse(venue=venue_to_proto(venue))

    async def GetVenue(
        self, request: venue_pb2.GetVenueRequest, context: Any
    ) -> venue_pb2.GetVenueResponse:
        venue_id = parse_uuid(request.venue_id, "venue_id")
        async with self._db.session() as session:
            venue = await repo.get_venue(session, venue_id)
        return venue_pb2.GetVenueResponse(venue=venue_to_proto(venue))

    async def ListVenues(
        self, request: venue_pb2.ListVenuesRequest, context: Any
    ) -> venue_pb2.ListVenuesResponse:
        size = resolve_page_size(request.page_size)
        position = self._pages.decode("venues", {}, request.page_token)
        after: tuple[str, str] | None = None
        if position is not None:
            if not (isinstance(position, list) and len(position) == 2):
                raise InvalidArgument.one("page_token", "is not a valid page token")
            after = (str(position[0]), str(position[1]))
        async with self._db.session() as session:
            venues = await repo.list_venues(session, after=after, limit=size + 1)
        token = ""
        if len(venues) > size:
            venues = venues[:size]
            token = self._pages.encode("venues", {}, [venues[-1].name, str(venues[-1].id)])
        return venue_pb2.ListVenuesResponse(
            venues=[venue_to_proto(v) for v in venues], next_page_token=token
        )
