"""VenueService: protobuf <-> venue domain; no SQL here."""

from __future__ import annotations

import uuid
from typing import Any

from ticketd.auth.principal import current_principal
from ticketd.edge.convert import (
    KIND_FROM_PROTO,
    KIND_TO_PROTO,
    optional_uuid,
    parse_uuid,
    timestamp,
)
from ticketd.errors import InvalidArgument
from ticketd.pagination import PageTokens, resolve_page_size
from ticketd.shared import SectionKind
from ticketd.venues.rules import RowSpec, SectionSpec, VenueRecord, VenueSpec
from ticketd.venues.service import VenueService
from ticketing.v1 import venue_pb2, venue_pb2_grpc


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


def venue_response_bytes(venue: VenueRecord) -> int:
    """Bytes of the answer carrying this venue: CreateVenue, UpdateVenue and GetVenue
    responses all hold it as their field 1, so they are the same size."""
    return venue_pb2.GetVenueResponse(venue=venue_to_proto(venue)).ByteSize()


class VenueServicer(venue_pb2_grpc.VenueServiceServicer):
    """Implements ticketing.v1.VenueService; access rules are in ticketd.auth.policy."""

    def __init__(self, venues: VenueService, pages: PageTokens) -> None:
        self._venues = venues
        self._pages = pages

    async def CreateVenue(
        self, request: venue_pb2.CreateVenueRequest, context: Any
    ) -> venue_pb2.CreateVenueResponse:
        request_id = optional_uuid(request.request_id, "request_id")
        venue = await self._venues.create(
            current_principal().user_id, spec_from_proto(request.venue), request_id
        )
        return venue_pb2.CreateVenueResponse(venue=venue_to_proto(venue))

    async def UpdateVenue(
        self, request: venue_pb2.UpdateVenueRequest, context: Any
    ) -> venue_pb2.UpdateVenueResponse:
        venue_id = parse_uuid(request.venue.id, "venue.id")
        venue = await self._venues.replace(venue_id, spec_from_proto(request.venue))
        return venue_pb2.UpdateVenueResponse(venue=venue_to_proto(venue))

    async def GetVenue(
        self, request: venue_pb2.GetVenueRequest, context: Any
    ) -> venue_pb2.GetVenueResponse:
        venue = await self._venues.get(parse_uuid(request.venue_id, "venue_id"))
        return venue_pb2.GetVenueResponse(venue=venue_to_proto(venue))

    async def ListVenues(
        self, request: venue_pb2.ListVenuesRequest, context: Any
    ) -> venue_pb2.ListVenuesResponse:
        size = resolve_page_size(request.page_size)
        position = self._pages.decode("venues", {}, request.page_token)
        after: tuple[str, uuid.UUID] | None = None
        if position is not None:
            try:
                after = (str(position[0]), uuid.UUID(str(position[1])))
            except (TypeError, ValueError, IndexError, KeyError):
                raise InvalidArgument.one("page_token", "is not a valid page token") from None
        rows = await self._venues.list_venues(after=after, limit=size + 1)
        venues, token = self._pages.page(
            "venues", {}, rows, size, venue_to_proto, lambda v: [v.name, str(v.id)]
        )
        return venue_pb2.ListVenuesResponse(venues=venues, next_page_token=token)
