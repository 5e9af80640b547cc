"""Metrics, JSON access lines and tracing, on the real in-process server.

The worker-process side (multiprocess metrics summed by the supervisor, access lines per
worker) is in tests/test_workers.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc import aio
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer
from tests.support import Account, Stubs, book_request, error_details, small_layout
from ticketd.app import TicketServer, build_components
from ticketd.db.database import Database, PoolOptions
from ticketd.edge.status import internal_status
from ticketd.observability import logs, metrics, tracing
from ticketing.v1 import auth_pb2, event_pb2

from .conftest import second_server


@pytest.fixture
def exporter() -> Iterator[metrics.Exporter]:
    served = metrics.serve("127.0.0.1:0")
    try:
        yield served
    finally:
        served.shutdown()


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _value(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_after_calls(
    stubs: Stubs, admin: Account, exporter: metrics.Exporter
) -> None:
    list_events = "/ticketing.v1.EventService/ListEvents"
    get_event = "/ticketing.v1.EventService/GetEvent"
    book = "/ticketing.v1.BookingService/BookSeats"
    before = await asyncio.to_thread(_scrape, exporter.port)

    for _ in range(3):
        await stubs.events.ListEvents(event_pb2.ListEventsRequest())
    with pytest.raises(aio.AioRpcError) as bad:
        await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id="not-a-uuid"))
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=2, ga=0))
    event = await stubs.create_event(admin, venue)
    seat = (await stubs.all_seats(event.id))[0].id
    buyer = await stubs.register("metrics")
    await stubs.booking.BookSeats(book_request(event.id, [seat]), metadata=buyer.md)
    with pytest.raises(aio.AioRpcError) as taken:
        await stubs.booking.BookSeats(book_request(event.id, [seat]), metadata=buyer.md)
    taken_reason = error_details(taken.value).reason or "none"

    after = await asyncio.to_thread(_scrape, exporter.port)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert moved("ticketd_rpc_handled_total", method=list_events, code="OK") == 3
    assert moved("ticketd_rpc_handled_total", method=get_event, code="INVALID_ARGUMENT") == 1
    assert moved("ticketd_rpc_errors_total", method=get_event, reason="INVALID_ARGUMENT") == 1
    assert moved("ticketd_rpc_duration_seconds_count", method=list_events) == 3
    assert moved("ticketd_rpc_duration_seconds_sum", method=list_events) > 0
    assert moved("ticketd_booking_outcomes_total", rpc="BookSeats", outcome="OK") == 1
    assert moved("ticketd_booking_outcomes_total", rpc="BookSeats", outcome=taken_reason) == 1
    assert moved("ticketd_rpc_handled_total", method=book, code="FAILED_PRECONDITION") == 1
    # Every call above took a pooled connection; none is held once they answered. The
    # outbox sequencer borrows one for a moment after each commit (the sale's), so "none
    # held" is awaited, bounded: a leaked connection stays in use for good.
    assert moved("ticketd_db_pool_wait_seconds_count", budget="standard") >= 3
    assert moved("ticketd_db_transaction_seconds_count") >= 2
    for _ in range(50):
        if _value(after, "ticketd_db_pool_in_use") == 0:
            break
        await asyncio.sleep(0.1)
        after = await asyncio.to_thread(_scrape, exporter.port)
    assert _value(after, "ticketd_db_pool_in_use") == 0
    assert _value(after, "ticketd_db_pool_waiting") == 0


@pytest.fixture
def access_lines(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """JSON mode's access lines, as records (the formatter is checked separately)."""
    logs._enabled = True
    caplog.set_level(logging.INFO, logger="ticketd.access")
    try:
        yield caplog
    finally:
        logs._enabled = False


async def test_json_access_line_per_rpc(
    stubs: Stubs, access_lines: pytest.LogCaptureFixture
) -> None:
    buyer = await stubs.register("access")
    await stubs.auth.GetCurrentUser(auth_pb2.GetCurrentUserRequest(), metadata=buyer.md)
    with pytest.raises(aio.AioRpcError):
        await stubs.events.GetEvent(event_pb2.GetEventRequest(event_id=str(uuid.uuid4())))
    records = [r for r in access_lines.records if r.name == "ticketd.access"]
    me = [r for r in records if r.__dict__["method"].endswith("/GetCurrentUser")][-1]
    assert me.__dict__["principal"] == f"user:{buyer.user.id}"
    assert me.__dict__["code"] == "OK" and me.__dict__["reason"] is None
    missing = [r for r in records if r.__dict__["method"].endswith("/GetEvent")][-1]
    assert missing.__dict__["code"] == "NOT_FOUND" and missing.__dict__["principal"] is None
    line = json.loads(logs.JsonFormatter().format(me))
    assert line["logger"] == "ticketd.access" and line["method"].endswith("/GetCurrentUser")
    assert line["principal"] == f"user:{buyer.user.id}" and line["duration_ms"] > 0
    assert {"time", "level", "pid", "code", "correlation_id"} <= set(line)


@pytest.fixture
async def traced(running: RunningServer) -> AsyncIterator[tuple[Stubs, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    tracing.install(spans, batch=False)
    try:
        async with (
            second_server(running, PoolOptions(pool_size=2)) as server,
            aio.insecure_channel(server.target) as channel,
        ):
            yield Stubs(channel), spans
    finally:
        tracing.uninstall()


async def test_traced_calls_carry_the_trace_id_as_correlation_id(
    traced: tuple[Stubs, InMemorySpanExporter], access_lines: pytest.LogCaptureFixture
) -> None:
    stubs, spans = traced
    await stubs.events.ListEvents(event_pb2.ListEventsRequest())
    (span,) = [s for s in spans.get_finished_spans() if s.name.endswith("/ListEvents")]
    trace_id = f"{span.context.trace_id:032x}"
    line = [r for r in access_lines.records if r.__dict__["method"].endswith("/ListEvents")][-1]
    assert line.__dict__["correlation_id"] == trace_id


def test_internal_status_uses_the_given_correlation_id() -> None:
    from google.rpc import error_details_pb2, status_pb2

    status = internal_status(RuntimeError("boom"), "/x/Y", correlation_id="ab" * 16)
    assert status.code == grpc.StatusCode.INTERNAL
    assert "ab" * 16 in status.details
    proto = status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    proto.details[0].Unpack(info)
    assert info.metadata["correlation_id"] == "ab" * 16


async def test_an_internal_error_under_tracing_names_the_trace(
    running: RunningServer, stubs: Stubs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected where the edge loads the caller (a bug, not a client's doing): the
    client sees INTERNAL whose correlation id is the trace id of the call's span."""
    buyer = await stubs.register("traced")
    spans = InMemorySpanExporter()
    tracing.install(spans, batch=False)
    db = Database(running.components.db.url, PoolOptions(pool_size=2))
    try:
        settings = running.components.settings
        components = build_components(settings, db, settings.jwt_secret or "")

        async def broken(claims: object) -> None:
            raise RuntimeError("injected fault")

        monkeypatch.setattr(components.accounts, "principal_for", broken)
        server = TicketServer(components)
        port = await server.start("127.0.0.1:0")
        try:
            async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(aio.AioRpcError) as failed:
                    await Stubs(channel).auth.GetCurrentUser(
                        auth_pb2.GetCurrentUserRequest(), metadata=buyer.md
                    )
        finally:
            await server.stop(0)
    finally:
        tracing.uninstall()
        await db.dispose()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    details = error_details(failed.value)
    assert details.reason == "INTERNAL"
    (span,) = [s for s in spans.get_finished_spans() if s.name.endswith("/GetCurrentUser")]
    trace_id = f"{span.context.trace_id:032x}"
    assert details.metadata["correlation_id"] == trace_id
    assert trace_id in (failed.value.details() or "")
