"""EventService: protobuf <-> event domain; no SQL here."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from ticketd.auth.principal import current_principal
from ticketd.booking import repository as booking_repo
from ticketd.convert import parse_uuid, timestamp
from ticketd.db.engine import Database
from ticketd.errors import FailedPrecondition, InvalidArgument
from ticketd.events import repository as repo
from ticketd.events.rules import (
    EventRecord,
    EventSpec,
    EventStatus,
    SeatRecord,
    SeatStatus,
    check_prices_cover_sections,
    ensure_can_manage,
    validate_cancel_reason,
    validate_event_fields,
)
from ticketd.pagination import (
    PageTokens,
    decode_time_keyset,
    encode_time_keyset,
    resolve_page_size,
)
from ticketd.venues import repository as venues_repo
from ticketd.venues.servicer import KIND_TO_PROTO
from ticketing.v1 import event_pb2, event_pb2_grpc

STATUS_TO_PROTO = {
    EventStatus.ON_SALE: event_pb2.EVENT_STATUS_ON_SALE,
    EventStatus.STARTED: event_pb2.EVENT_STATUS_STARTED,
    EventStatus.CANCELLED: event_pb2.EVENT_STATUS_CANCELLED,
}
SEAT_STATUS_TO_PROTO = {
    SeatStatus.AVAILABLE: event_pb2.SEAT_STATUS_AVAILABLE,
    SeatStatus.SOLD: event_pb2.SEAT_STATUS_SOLD,
}
SEAT_STATUS_FROM_PROTO = {v: k for k, v in SEAT_STATUS_TO_PROTO.items()}

DEFAULT_SEAT_PAGE = 1_000
MAX_SEAT_PAGE = 10_000
# Timestamps far outside any plausible event are refused rather than stored.
_MIN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_MAX_TIME = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)


def _time(ts: Timestamp, field: str) -> dt.datetime:
    try:
        value = ts.ToDatetime(dt.UTC)
    except (ValueError, OverflowError):
        raise InvalidArgument.one(field, "is not a valid timestamp") from None
    if not _MIN_TIME <= value < _MAX_TIME:
        raise InvalidArgument.one(field, "must be between 2000 and 2200")
    return value


def event_to_proto(event: EventRecord) -> event_pb2.Event:
    msg = event_pb2.Event(
        id=str(event.id),
        venue_id=str(event.venue_id),
        venue_name=event.venue_name,
        time_zone=event.time_zone,
        organizer_id=str(event.organizer_id),
        name=event.name,
        description=event.description,
        start_time=timestamp(event.start_time),
        currency_code=event.currency_code,
        max_tickets_per_order=event.max_tickets_per_order,
        status=STATUS_TO_PROTO[event.status],
        cancel_reason=event.cancel_reason or "",
        create_time=timestamp(event.create_time),
        capacity=event.capacity,
        available_count=event.available_count,
        sold_count=event.sold_count,
        sections=[
            event_pb2.EventSection(
                section_id=str(s.section_id),
                name=s.name,
                kind=KIND_TO_PROTO[s.kind],
                price_minor=s.price_minor,
                capacity=s.capacity,
                available_count=s.available_count,
                sold_count=s.sold_count,
            )
            for s in event.sections
        ],
    )
    if event.end_time is not None:
        msg.end_time.CopyFrom(timestamp(event.end_time))
    if event.cancel_time is not None:
        msg.cancel_time.CopyFrom(timestamp(event.cancel_time))
    if event.max_tickets_per_customer is not None:
        msg.max_tickets_per_customer = event.max_tickets_per_customer
    if event.doors_open_time is not None:
        msg.doors_open_time.CopyFrom(timestamp(event.doors_open_time))
    return msg


def seat_to_proto(seat: SeatRecord) -> event_pb2.Seat:
    return event_pb2.Seat(
        id=seat.id,
        section_id=str(seat.section_id),
        section_name=seat.section_name,
        row_label=seat.row_label or "",
        number=seat.seat_number or 0,
        label=seat.seat_label or "",
        price_minor=seat.price_minor,
        status=SEAT_STATUS_TO_PROTO[seat.status],
    )


def spec_from_request(request: event_pb2.CreateEventRequest) -> EventSpec:
    venue_id = parse_uuid(request.venue_id, "venue_id")
    if not request.HasField("start_time"):
        raise InvalidArgument.one("start_time", "is required")
    start = _time(request.start_time, "start_time")
    end = _time(request.end_time, "end_time") if request.HasField("end_time") else None
    spec = EventSpec(
        venue_id=venue_id,
        name=request.name,
        description=request.description,
        start_time=start,
        end_time=end,
        currency_code=request.currency_code,
        section_prices=dict(request.section_prices),
        max_tickets_per_order=request.max_tickets_per_order,
        max_tickets_per_customer=request.max_tickets_per_customer
        if request.HasField("max_tickets_per_customer")
        else None,
        doors_open_time=_time(request.doors_open_time, "doors_open_time")
        if request.HasField("doors_open_time")
        else None,
    )
    validate_event_fields(spec)
    return spec


class EventServicer(event_pb2_grpc.EventServiceServicer):
    """Implements ticketing.v1.EventService; access rules are in ticketd.auth.policy."""

    def __init__(self, db: Database, pages: PageTokens) -> None:
        self._db = db
        self._pages = pages

    async def CreateEvent(
        self, request: event_pb2.CreateEventRequest, context: Any
    ) -> event_pb2.CreateEventResponse:
        principal = current_principal()
        spec = spec_from_request(request)
        async with self._db.session() as session, session.begin():
            venue = await venues_repo.get_venue(session, spec.venue_id, lock_for_share=True)
            now = await repo.db_now(session)
            check_prices_cover_sections(
                spec.section_prices, [s.id for s in venue.sections], now, spec.start_time
            )
            event_id = await repo.create_event(
                session, organizer_id=principal.user_id, spec=spec, venue=venue
            )
            event = await repo.get_event(session, event_id)
        return event_pb2.CreateEventResponse(event=event_to_proto(event))

    async def GetEvent(
        self, request: event_pb2.GetEventRequest, context: Any
    ) -> event_pb2.GetEventResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        async with self._db.session() as session:
            event = await repo.get_event(session, event_id)
        return event_pb2.GetEventResponse(event=event_to_proto(event))

    async def ListEvents(
        self, request: event_pb2.ListEventsRequest, context: Any
    ) -> event_pb2.ListEventsResponse:
        size = resolve_page_size(request.page_size)
        filters = repo.EventFilter(
            venue_id=parse_uuid(request.venue_id, "venue_id") if request.venue_id else None,
            organizer_id=parse_uuid(request.organizer_id, "organizer_id")
            if request.organizer_id
            else None,
            start_after=_time(request.start_after, "start_after")
            if request.HasField("start_after")
            else None,
            start_before=_time(request.start_before, "start_before")
            if request.HasField("start_before")
            else None,
            include_cancelled=request.include_cancelled,
        )
        query = {
            "venue": str(filters.venue_id),
            "organizer": str(filters.organizer_id),
            "after": filters.start_after.isoformat() if filters.start_after else None,
            "before": filters.start_before.isoformat() if filters.start_before else None,
            "cancelled": filters.include_cancelled,
        }
        after = decode_time_keyset(self._pages, "events", query, request.page_token)
        async with self._db.session() as session:
            events = await repo.list_events(session, filters, after=after, limit=size + 1)
        token = ""
        if len(events) > size:
            events = events[:size]
            last = events[-1]
            token = encode_time_keyset(self._pages, "events", query, last.start_time, last.id)
        return event_pb2.ListEventsResponse(
            events=[event_to_proto(e) for e in events], next_page_token=token
        )

    async def ListSeats(
        self, request: event_pb2.ListSeatsRequest, context: Any
    ) -> event_pb2.ListSeatsResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        section_id = parse_uuid(request.section_id, "section_id") if request.section_id else None
        status: SeatStatus | None = None
        if request.status != event_pb2.SEAT_STATUS_UNSPECIFIED:
            status = SEAT_STATUS_FROM_PROTO.get(request.status)
            if status is None:
                raise InvalidArgument.one("status", "unknown seat status")
        size = resolve_page_size(request.page_size, DEFAULT_SEAT_PAGE, MAX_SEAT_PAGE)
        query = {
            "event": str(event_id),
            "section": str(section_id),
            "status": status.value if status else None,
        }
        position = self._pages.decode("seats", query, request.page_token)
        if position is not None and not isinstance(position, int):
            raise InvalidArgument.one("page_token", "is not a valid page token")
        async with self._db.session() as session:
            seats = await repo.list_seats(
                session,
                event_id,
                section_id=section_id,
                status=status,
                after_id=position,
                limit=size + 1,
            )
        token = ""
        if len(seats) > size:
            seats = seats[:size]
            token = self._pages.encode("seats", query, seats[-1].id)
        return event_pb2.ListSeatsResponse(
            seats=[seat_to_proto(s) for s in seats], next_page_token=token
        )

    async def CancelEvent(
        self, request: event_pb2.CancelEventRequest, context: Any
    ) -> event_pb2.CancelEventResponse:
        principal = current_principal()
        event_id = parse_uuid(request.event_id, "event_id")
        reason = validate_cancel_reason(request.reason)
        async with self._db.session() as session, session.begin():
            event = await repo.get_event(session, event_id, with_counts=False, lock="FOR UPDATE")
            ensure_can_manage(principal, event.organizer_id)
            if event.status is EventStatus.CANCELLED:
                raise FailedPrecondition("the event is already cancelled", reason="EVENT_CANCELLED")
            await repo.mark_cancelled(session, event_id, reason)
            # Same transaction, same connection: the event and all of its refunds
            # commit together. Bookings hold the event row KEY SHARE, so none is in
            # flight now and none can start until we commit.
            conn = await session.connection()
            raw = (await conn.get_raw_connection()).driver_connection
            await booking_repo.refund_event_orders(
                raw, event_id, refunded_by=principal.user_id, reason=f"event cancelled: {reason}"
            )
            event = await repo.get_event(session, event_id)
        return event_pb2.CancelEventResponse(event=event_to_proto(event))
