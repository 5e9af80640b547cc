"""EventService: protobuf <-> event domain; no SQL here."""

from __future__ import annotations

import uuid
from collections import OrderedDict
from typing import Any

from ticketd.auth.principal import current_principal
from ticketd.edge.convert import (
    KIND_TO_PROTO,
    optional_time,
    optional_uuid,
    parse_time,
    parse_uuid,
    timestamp,
)
from ticketd.edge.streaming import write_pages
from ticketd.errors import FailedPrecondition, InvalidArgument, Reason
from ticketd.events.rules import (
    EventFilter,
    EventRecord,
    EventSpec,
    EventStatus,
    EventTimesUpdate,
    SeatChangeRecord,
    SeatRecord,
    SeatStatus,
    StaffRecord,
    resolve_update_mask,
)
from ticketd.events.service import EventService
from ticketd.pagination import (
    PageTokens,
    decode_time_keyset,
    resolve_page_size,
    time_keyset,
)
from ticketing.v1 import event_pb2, event_pb2_grpc

STATUS_TO_PROTO = {
    EventStatus.ON_SALE: event_pb2.EVENT_STATUS_ON_SALE,
    EventStatus.STARTED: event_pb2.EVENT_STATUS_STARTED,
    EventStatus.CANCELLED: event_pb2.EVENT_STATUS_CANCELLED,
}
SEAT_STATUS_TO_PROTO = {
    SeatStatus.AVAILABLE: event_pb2.SEAT_STATUS_AVAILABLE,
    SeatStatus.SOLD: event_pb2.SEAT_STATUS_SOLD,
    SeatStatus.HELD: event_pb2.SEAT_STATUS_HELD,
    SeatStatus.ALLOCATED: event_pb2.SEAT_STATUS_ALLOCATED,
}
SEAT_STATUS_FROM_PROTO = {v: k for k, v in SEAT_STATUS_TO_PROTO.items()}

DEFAULT_SEAT_PAGE = 1_000
MAX_SEAT_PAGE = 10_000
DEFAULT_STAFF_PAGE = 100
MAX_STAFF_PAGE = 1_000


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
                held_count=s.held_count,
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
    return EventSpec(
        venue_id=venue_id,
        name=request.name,
        description=request.description,
        start_time=parse_time(request.start_time, "start_time"),
        end_time=optional_time(request, "end_time"),
        currency_code=request.currency_code,
        section_prices=dict(request.section_prices),
        max_tickets_per_order=request.max_tickets_per_order,
        max_tickets_per_customer=request.max_tickets_per_customer
        if request.HasField("max_tickets_per_customer")
        else None,
        doors_open_time=optional_time(request, "doors_open_time"),
    )


def update_from_request(
    request: event_pb2.UpdateEventRequest,
) -> tuple[uuid.UUID, EventTimesUpdate]:
    """The event id and the scan-window fields an UpdateEvent changes (AIP-134)."""
    if not request.HasField("event"):
        raise InvalidArgument.one("event", "is required")
    event = request.event
    event_id = parse_uuid(event.id, "event.id")
    given = {"doors_open_time"} if event.HasField("doors_open_time") else set()
    if event.HasField("end_time"):
        given.add("end_time")
    fields = resolve_update_mask(list(request.update_mask.paths), given)
    return event_id, EventTimesUpdate(
        fields=fields,
        doors_open_time=optional_time(event, "doors_open_time", "event.doors_open_time")
        if "doors_open_time" in fields
        else None,
        end_time=optional_time(event, "end_time", "event.end_time")
        if "end_time" in fields
        else None,
    )


def staff_to_proto(staff: StaffRecord) -> event_pb2.StaffMember:
    return event_pb2.StaffMember(
        event_id=str(staff.event_id),
        user_id=str(staff.user_id),
        email=staff.email,
        display_name=staff.display_name,
        assign_time=timestamp(staff.assign_time),
        assigned_by=str(staff.assigned_by),
    )


def seat_change_to_proto(change: SeatChangeRecord) -> event_pb2.SeatChange:
    return event_pb2.SeatChange(
        sequence=change.sequence,
        seat_id=change.seat_id,
        section_id=str(change.section_id),
        status=SEAT_STATUS_TO_PROTO[change.status],
        change_time=timestamp(change.change_time),
        snapshot=change.snapshot,
        snapshot_complete=change.snapshot_complete,
    )


LIVE_BATCHES_KEPT = 256
"""Live batches a server keeps built (for all events together): enough for every watcher
of a busy event to find the page the first of them built, a few pages behind."""


class SeatBatches:
    """WatchSeatBatches messages, built once per page for all the watchers of an event.

    The watchers of an event that keep up get the same pages from the shared tail, and a
    live batch is named by its event and its first and last sequence (dense per event, so
    equal names are equal contents): the first watcher to send a page builds the message,
    the others send the same object. Building it per watcher was a tenth of the server's
    event loop with 50 watchers. Snapshot batches are each watcher's own (read at its own
    instant) and are not kept."""

    def __init__(self, kept: int = LIVE_BATCHES_KEPT) -> None:
        self._kept = kept
        self._built: OrderedDict[tuple[uuid.UUID, int, int], event_pb2.SeatChangeBatch] = (
            OrderedDict()
        )

    def batch(self, event_id: uuid.UUID, page: list[SeatChangeRecord]) -> event_pb2.SeatChangeBatch:
        """The message carrying `page` (in order, as the outbox gave it)."""
        if page[0].snapshot:
            return event_pb2.SeatChangeBatch(changes=[seat_change_to_proto(c) for c in page])
        key = (event_id, page[0].sequence, page[-1].sequence)
        built = self._built.get(key)
        if built is None:
            built = event_pb2.SeatChangeBatch(changes=[seat_change_to_proto(c) for c in page])
            self._built[key] = built
            if len(self._built) > self._kept:
                self._built.popitem(last=False)
        return built


def seat_resume_point(change: SeatChangeRecord, delivered: int) -> int:
    """Where a reader that has `change` resumes: a snapshot counts only once whole, since
    its entries all carry the sequence it is consistent with, and resuming after that
    number mid-snapshot would lose the seats not yet sent."""
    if not change.snapshot or change.snapshot_complete:
        return change.sequence
    return delivered


def allocation_to_proto(a: Any) -> event_pb2.Allocation:
    """An allocation record (ticketd.booking.rules.AllocationRecord) as the API shows it."""
    msg = event_pb2.Allocation(
        id=str(a.id),
        event_id=str(a.event_id),
        partner_id=str(a.partner_id),
        seat_ids=list(a.seat_ids),
        create_time=timestamp(a.create_time),
        released=a.released,
        request_id=str(a.request_id),
    )
    if a.release_time is not None:
        msg.release_time.CopyFrom(timestamp(a.release_time))
    return msg


class EventServicer(event_pb2_grpc.EventServiceServicer):
    """Implements ticketing.v1.EventService; access rules are in ticketd.auth.policy."""

    def __init__(
        self,
        events: EventService,
        pages: PageTokens,
        *,
        send_timeout: float = 30.0,
        poll_seconds: float = 2.0,
        seat_streams: bool = True,
    ) -> None:
        self._events = events
        self._pages = pages
        self._send_timeout = send_timeout
        self._poll_seconds = poll_seconds
        self._seat_streams = seat_streams
        self._seat_batches = SeatBatches()

    async def WatchSeats(  # type: ignore[override]
        self, request: event_pb2.WatchSeatsRequest, context: Any
    ) -> None:
        await self._watch_seats(request.event_id, request.after_sequence, context, batched=False)

    async def WatchSeatBatches(  # type: ignore[override]
        self, request: event_pb2.WatchSeatBatchesRequest, context: Any
    ) -> None:
        await self._watch_seats(request.event_id, request.after_sequence, context, batched=True)

    async def _watch_seats(
        self, event_id_text: str, after_sequence: int, context: Any, *, batched: bool
    ) -> None:
        """The one seat stream behind WatchSeats (a message per change) and WatchSeatBatches
        (a message per page read from the outbox, at most STREAM_PAGE changes): the same
        checks, pages, send timeout and shutdown; only the framing differs."""
        event_id = parse_uuid(event_id_text, "event_id")
        if not self._seat_streams:
            raise FailedPrecondition(
                "this server does not record seat changes (TICKETING_SEAT_STREAMS is off)",
                reason=Reason.SEAT_STREAMS_OFF,
            )
        pages = self._events.watch_seats(event_id, after_sequence, poll_seconds=self._poll_seconds)
        await write_pages(
            context,
            pages,
            seat_change_to_proto,
            send_timeout=self._send_timeout,
            after_sequence=after_sequence,
            resume_point=seat_resume_point,
            batch=(lambda page: self._seat_batches.batch(event_id, page)) if batched else None,
        )

    async def CreateEvent(
        self, request: event_pb2.CreateEventRequest, context: Any
    ) -> event_pb2.CreateEventResponse:
        request_id = optional_uuid(request.request_id, "request_id")
        event = await self._events.create(
            current_principal(), spec_from_request(request), request_id
        )
        return event_pb2.CreateEventResponse(event=event_to_proto(event))

    async def GetEvent(
        self, request: event_pb2.GetEventRequest, context: Any
    ) -> event_pb2.GetEventResponse:
        event = await self._events.get(parse_uuid(request.event_id, "event_id"))
        return event_pb2.GetEventResponse(event=event_to_proto(event))

    async def ListEvents(
        self, request: event_pb2.ListEventsRequest, context: Any
    ) -> event_pb2.ListEventsResponse:
        size = resolve_page_size(request.page_size)
        filters = EventFilter(
            venue_id=optional_uuid(request.venue_id, "venue_id"),
            organizer_id=optional_uuid(request.organizer_id, "organizer_id"),
            start_after=optional_time(request, "start_after"),
            start_before=optional_time(request, "start_before"),
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
        rows = await self._events.list_events(filters, after=after, limit=size + 1)
        events, token = self._pages.page(
            "events", query, rows, size, event_to_proto, lambda e: time_keyset(e.start_time, e.id)
        )
        return event_pb2.ListEventsResponse(events=events, next_page_token=token)

    async def ListSeats(
        self, request: event_pb2.ListSeatsRequest, context: Any
    ) -> event_pb2.ListSeatsResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        section_id = optional_uuid(request.section_id, "section_id")
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
        rows = await self._events.list_seats(
            event_id, section_id=section_id, status=status, after_id=position, limit=size + 1
        )
        seats, token = self._pages.page("seats", query, rows, size, seat_to_proto, lambda s: s.id)
        return event_pb2.ListSeatsResponse(seats=seats, next_page_token=token)

    async def CancelEvent(
        self, request: event_pb2.CancelEventRequest, context: Any
    ) -> event_pb2.CancelEventResponse:
        result = await self._events.cancel(
            current_principal(), parse_uuid(request.event_id, "event_id"), request.reason
        )
        return event_pb2.CancelEventResponse(
            event=event_to_proto(result.event),
            refunded_order_count=result.refunded_orders,
            attended_order_count=result.attended_orders,
            attended_order_ids=[str(i) for i in result.attended_order_ids],
        )

    async def UpdateEvent(
        self, request: event_pb2.UpdateEventRequest, context: Any
    ) -> event_pb2.UpdateEventResponse:
        event_id, update = update_from_request(request)
        event = await self._events.update_times(current_principal(), event_id, update)
        return event_pb2.UpdateEventResponse(event=event_to_proto(event))

    async def AssignStaff(
        self, request: event_pb2.AssignStaffRequest, context: Any
    ) -> event_pb2.AssignStaffResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        user_id = parse_uuid(request.user_id, "user_id")
        staff = await self._events.assign_staff(current_principal(), event_id, user_id)
        return event_pb2.AssignStaffResponse(staff=staff_to_proto(staff))

    async def UnassignStaff(
        self, request: event_pb2.UnassignStaffRequest, context: Any
    ) -> event_pb2.UnassignStaffResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        user_id = parse_uuid(request.user_id, "user_id")
        removed = await self._events.unassign_staff(current_principal(), event_id, user_id)
        return event_pb2.UnassignStaffResponse(removed=removed)

    async def AllocateSeats(
        self, request: event_pb2.AllocateSeatsRequest, context: Any
    ) -> event_pb2.AllocateSeatsResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        partner_id = parse_uuid(request.partner_id, "partner_id")
        request_id = parse_uuid(request.request_id, "request_id")
        which = request.WhichOneof("selection")
        best = None
        if which == "best_available":
            best = (
                parse_uuid(request.best_available.section_id, "best_available.section_id"),
                request.best_available.quantity,
            )
        made = await self._events.allocate(
            current_principal(),
            event_id,
            partner_id,
            request_id,
            list(request.seat_ids.ids) if which == "seat_ids" else None,
            best,
            optional_time(request, "release_time"),
        )
        return event_pb2.AllocateSeatsResponse(allocation=allocation_to_proto(made))

    async def ListAllocations(
        self, request: event_pb2.ListAllocationsRequest, context: Any
    ) -> event_pb2.ListAllocationsResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        size = resolve_page_size(request.page_size, 100, 1_000)
        query = {"event": str(event_id)}
        after = decode_time_keyset(self._pages, "allocations", query, request.page_token)
        rows = await self._events.list_allocations(current_principal(), event_id, after, size + 1)
        items, token = self._pages.page(
            "allocations",
            query,
            rows,
            size,
            allocation_to_proto,
            lambda a: time_keyset(a.create_time, a.id),
        )
        return event_pb2.ListAllocationsResponse(allocations=items, next_page_token=token)

    async def ReleaseAllocation(
        self, request: event_pb2.ReleaseAllocationRequest, context: Any
    ) -> event_pb2.ReleaseAllocationResponse:
        released = await self._events.release_allocation(
            current_principal(), parse_uuid(request.allocation_id, "allocation_id")
        )
        return event_pb2.ReleaseAllocationResponse(allocation=allocation_to_proto(released))

    async def ListStaff(
        self, request: event_pb2.ListStaffRequest, context: Any
    ) -> event_pb2.ListStaffResponse:
        event_id = parse_uuid(request.event_id, "event_id")
        size = resolve_page_size(request.page_size, DEFAULT_STAFF_PAGE, MAX_STAFF_PAGE)
        query = {"event": str(event_id)}
        position = self._pages.decode("staff", query, request.page_token)
        try:
            after = uuid.UUID(position) if position is not None else None
        except (TypeError, ValueError, AttributeError):
            raise InvalidArgument.one("page_token", "is not a valid page token") from None
        rows = await self._events.list_staff(
            current_principal(), event_id, after=after, limit=size + 1
        )
        staff, token = self._pages.page(
            "staff", query, rows, size, staff_to_proto, lambda s: str(s.user_id)
        )
        return event_pb2.ListStaffResponse(staff=staff, next_page_token=token)
