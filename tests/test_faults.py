"""Faults survived with nothing lost: killed servers, killed connections, database outages,
shutdown under load, overload. Each ends with the invariant audit read from PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import shutil
import signal
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2
from sqlalchemy.engine import make_url

from tests.conftest import RunningServer
from tests.procs import ServerProcess, free_port, ticketd_process
from tests.support import Account, Stubs, audit, book_request, error_details, small_layout
from ticketd.db.embedded import EmbeddedPostgres, fallback_cluster_dir
from ticketing.v1 import auth_pb2, booking_pb2

# Slow tier: kills servers and database connections, stops PostgreSQL.
pytestmark = pytest.mark.slow

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
_background: set[asyncio.Future[Any]] = set()


def _plain(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def data_dir() -> Any:
    path = Path(tempfile.mkdtemp(prefix="ticketd-fault-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(
    running: RunningServer, database_url: str, data_dir: Path
) -> AsyncIterator[ServerProcess]:
    """A second server process on the test database, sharing the in-process server's
    secret so tokens made by either work on both (as behind a load balancer)."""
    proc = ticketd_process(
        database_url, data_dir, jwt_secret=running.components.settings.jwt_secret or ""
    )
    await proc.start()
    try:
        yield proc
    finally:
        await proc.kill()


async def _world(
    stubs: Stubs, admin: Account, buyers: int, rows: int = 10, seats: int = 20
) -> tuple[str, list[int], list[Account]]:
    venue = await stubs.create_venue(admin, small_layout(rows=rows, seats=seats, ga=0))
    event = await stubs.create_event(admin, venue, max_per_order=4)
    ids = [s.id for s in await stubs.all_seats(event.id)]
    accounts = list(await asyncio.gather(*(stubs.register("buyer") for _ in range(buyers))))
    return event.id, ids, accounts


def _outcome(r: Any) -> str:
    """OK, or code:reason; every UNAVAILABLE is one outcome (retry later, whatever the cause:
    server gone, connection killed, connection slots exhausted)."""
    if isinstance(
        r,
        booking_pb2.BookSeatsResponse
        | booking_pb2.HoldSeatsResponse
        | booking_pb2.ConfirmHoldResponse,
    ):
        return "OK"
    assert isinstance(r, aio.AioRpcError), repr(r)
    assert r.code() not in NEVER, (r.code(), r.details())
    if r.code() == grpc.StatusCode.UNAVAILABLE:
        return "UNAVAILABLE"
    return f"{r.code().name}:{error_details(r).reason}"


async def _confirmed_exist(stubs: Stubs, buyers: list[Account], results: list[Any]) -> int:
    """Every order a client saw confirmed exists, confirmed, with exactly those tickets.

    Read back as each order's owner: only the owner is shown the ticket codes."""
    owners = {b.user.id: b for b in buyers}
    seen = [r.order for r in results if isinstance(r, booking_pb2.BookSeatsResponse)]
    for order in seen:
        stored = (
            await stubs.booking.GetOrder(
                booking_pb2.GetOrderRequest(order_id=order.id),
                metadata=owners[order.customer_id].md,
            )
        ).order
        assert stored.status == booking_pb2.ORDER_STATUS_CONFIRMED
        assert [t.seat_id for t in stored.tickets] == [t.seat_id for t in order.tickets]
        assert [t.code for t in stored.tickets] == [t.code for t in order.tickets]
    return len(seen)


async def _rush(
    target: str, event_id: str, ids: list[int], buyers: list[Account], n: int, seed: int
) -> list[asyncio.Task[Any]]:
    rng = random.Random(seed)
    channels = [aio.insecure_channel(target) for _ in range(4)]
    pool = [Stubs(ch) for ch in channels]
    tasks = [
        asyncio.ensure_future(
            pool[i % 4].booking.BookSeats(
                book_request(event_id, rng.sample(ids, rng.randint(1, 3))),
                metadata=buyers[i % len(buyers)].md,
                timeout=20,
            )
        )
        for i in range(n)
    ]

    async def close_later() -> None:
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in channels:
            await ch.close(None)

    _background.add(asyncio.ensure_future(close_later()))
    return tasks


async def _when_done(tasks: Sequence[asyncio.Future[Any]], count: int) -> None:
    for _ in range(2000):
        if sum(t.done() for t in tasks) >= count:
            return
        await asyncio.sleep(0.005)


async def test_server_killed_mid_rush_loses_nothing(
    stubs: Stubs, admin: Account, server: ServerProcess, running: RunningServer
) -> None:
    event_id, ids, buyers = await _world(stubs, admin, 60)
    tasks = await _rush(server.target, event_id, ids, buyers, 400, seed=11)
    await _when_done(tasks, 40)
    await server.kill()  # SIGKILL: no graceful anything
    results = await asyncio.gather(*tasks, return_exceptions=True)
    outcomes = Counter(_outcome(r) for r in results)
    assert outcomes["OK"] >= 1
    assert sum(n for k, n in outcomes.items() if k.startswith("UNAVAILABLE")) >= 1, outcomes
    assert set(outcomes) <= {
        "OK",
        "FAILED_PRECONDITION:SEAT_UNAVAILABLE",
        "ABORTED:SEAT_LOCKED",
        "UNAVAILABLE",
    }, outcomes
    await server.start()
    assert await _confirmed_exist(stubs, buyers, results) == outcomes["OK"]
    assert await audit(running.engine, event_id) == {}


async def test_server_killed_mid_checkout_loses_nothing(
    stubs: Stubs, admin: Account, server: ServerProcess, running: RunningServer
) -> None:
    """Issue 12: holds and confirmations racing when the server is SIGKILLed. Every hold
    and every order a client saw acknowledged is there, as acknowledged; nothing is
    half-written (a hold without its seats, a confirmed hold without its order)."""
    event_id, ids, buyers = await _world(stubs, admin, 40)
    rng = random.Random(12)
    channels = [aio.insecure_channel(server.target) for _ in range(4)]
    pool = [Stubs(ch) for ch in channels]

    def hold_call(i: int, seats: list[int]) -> asyncio.Future[Any]:
        request = booking_pb2.HoldSeatsRequest(
            event_id=event_id, request_id=str(uuid.uuid4()), seat_ids=booking_pb2.SeatIds(ids=seats)
        )
        request.ttl.FromSeconds(600)
        return asyncio.ensure_future(
            pool[i % 4].booking.HoldSeats(request, metadata=buyers[i % 40].md, timeout=20)
        )

    try:
        # Phase 1 (the server is up): 60 holds of disjoint seats to confirm later.
        first = await asyncio.gather(
            *(hold_call(i, ids[2 * i : 2 * i + 2]) for i in range(60)), return_exceptions=True
        )
        held = [
            (i, r.hold) for i, r in enumerate(first) if isinstance(r, booking_pb2.HoldSeatsResponse)
        ]
        assert len(held) == 60, Counter(_outcome(r) for r in first)
        # Phase 2: the 60 confirmations and 200 more holds of the other seats race; kill -9.
        confirms = [
            asyncio.ensure_future(
                pool[i % 4].booking.ConfirmHold(
                    booking_pb2.ConfirmHoldRequest(
                        hold_id=h.id, request_id=str(uuid.uuid4()), payment_reference=f"pay-{i}"
                    ),
                    metadata=buyers[i % 40].md,
                    timeout=20,
                )
            )
            for i, h in held
        ]
        rest = ids[120:]
        holds = [hold_call(i, rng.sample(rest, rng.randint(1, 3))) for i in range(200)]
        everything = [*confirms, *holds]
        await _when_done(everything, 40)
        await server.kill()
        confirmed = await asyncio.gather(*confirms, return_exceptions=True)
        later = await asyncio.gather(*holds, return_exceptions=True)
    finally:
        for ch in channels:
            await ch.close(None)
    outcomes = Counter(_outcome(r) for r in [*confirmed, *later])
    assert outcomes["UNAVAILABLE"] >= 1, outcomes
    assert set(outcomes) <= {
        "OK",
        "FAILED_PRECONDITION:SEAT_UNAVAILABLE",
        "ABORTED:SEAT_LOCKED",
        "UNAVAILABLE",
    }, outcomes
    await server.start()
    owner = {b.user.id: b for b in buyers}
    for (i, h), r in zip(held, confirmed, strict=True):
        stored = (
            await stubs.booking.GetHold(
                booking_pb2.GetHoldRequest(hold_id=h.id), metadata=buyers[i % 40].md
            )
        ).hold
        assert [s.seat_id for s in stored.seats] == [s.seat_id for s in h.seats]
        if isinstance(r, booking_pb2.ConfirmHoldResponse):
            assert stored.status == booking_pb2.HOLD_STATUS_CONFIRMED
            assert stored.order_id == r.order.id
            order = (
                await stubs.booking.GetOrder(
                    booking_pb2.GetOrderRequest(order_id=r.order.id),
                    metadata=owner[r.order.customer_id].md,
                )
            ).order
            assert [t.seat_id for t in order.tickets] == [s.seat_id for s in h.seats]
        else:  # lost with the server: either it committed first or the hold is intact
            assert stored.status in (
                booking_pb2.HOLD_STATUS_ACTIVE,
                booking_pb2.HOLD_STATUS_CONFIRMED,
            )
    for r in later:
        if isinstance(r, booking_pb2.HoldSeatsResponse):
            stored = (
                await stubs.booking.GetHold(
                    booking_pb2.GetHoldRequest(hold_id=r.hold.id),
                    metadata=owner[r.hold.customer_id].md,
                )
            ).hold
            assert stored.status == booking_pb2.HOLD_STATUS_ACTIVE
            assert [s.seat_id for s in stored.seats] == [s.seat_id for s in r.hold.seats]
    assert await audit(running.engine, event_id) == {}


async def test_killed_database_connections_mid_rush(
    stubs: Stubs, admin: Account, running: RunningServer, database_url: str
) -> None:
    event_id, ids, buyers = await _world(stubs, admin, 60)
    killer = await asyncpg.connect(_plain(database_url))
    killed = 0
    try:
        tasks = await _rush(running.target, event_id, ids, buyers, 300, seed=5)
        for _ in range(6):
            killed += len(
                await killer.fetch(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'ticketd' AND datname = current_database()"
                )
            )
            await asyncio.sleep(0.03)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await killer.close()
    assert killed > 0
    outcomes = Counter(_outcome(r) for r in results)
    assert set(outcomes) <= {
        "OK",
        "FAILED_PRECONDITION:SEAT_UNAVAILABLE",
        "ABORTED:SEAT_LOCKED",
        "UNAVAILABLE",
        "ABORTED:CONCURRENCY_CONFLICT",
    }, outcomes
    # The pool recovers by itself: the next calls succeed.
    free = [s.id for s in await stubs.all_seats(event_id) if s.status == 1][:2]
    order = (
        await stubs.booking.BookSeats(book_request(event_id, free), metadata=buyers[0].md)
    ).order
    assert len(order.tickets) == 2
    await _confirmed_exist(stubs, buyers, results)
    assert await audit(running.engine, event_id) == {}


async def test_graceful_shutdown_under_load(
    stubs: Stubs, admin: Account, server: ServerProcess, running: RunningServer
) -> None:
    event_id, ids, buyers = await _world(stubs, admin, 60)
    tasks = await _rush(server.target, event_id, ids, buyers, 300, seed=9)
    await _when_done(tasks, 30)
    server.signal(signal.SIGTERM)
    code = await server.wait_exit(30)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert code == 0, server.log()
    assert "health NOT_SERVING" in server.log()
    outcomes = Counter(_outcome(r) for r in results)
    assert outcomes["OK"] >= 1, outcomes
    # In flight at SIGTERM: finish, or (past the grace period on a starved machine) are
    # cancelled cleanly; arriving after it: UNAVAILABLE. Never half-written.
    assert set(outcomes) <= {
        "CANCELLED:None",
        "OK",
        "FAILED_PRECONDITION:SEAT_UNAVAILABLE",
        "ABORTED:SEAT_LOCKED",
        "UNAVAILABLE",
    }, outcomes
    assert await _confirmed_exist(stubs, buyers, results) == outcomes["OK"]
    assert await audit(running.engine, event_id) == {}


async def test_overload_is_refused_fast_and_server_stays_healthy(
    stubs: Stubs, admin: Account, running: RunningServer, database_url: str, data_dir: Path
) -> None:
    proc = ticketd_process(
        database_url,
        data_dir,
        jwt_secret=running.components.settings.jwt_secret or "",
        extra_env={"TICKETING_MAX_CONCURRENT_RPCS": "8", "TICKETING_LOCK_TIMEOUT_MS": "3000"},
    )
    await proc.start()
    try:
        event_id, ids, buyers = await _world(stubs, admin, 30, rows=1, seats=5)
        blocker = await asyncpg.connect(_plain(database_url))
        try:
            tx = blocker.transaction()
            await tx.start()
            await blocker.execute("SELECT 1 FROM seats WHERE id = $1 FOR UPDATE", ids[0])
            async with aio.insecure_channel(proc.target) as ch:
                far = Stubs(ch)
                results = await asyncio.gather(
                    *(
                        far.booking.BookSeats(
                            book_request(event_id, [ids[0]]), metadata=b.md, timeout=15
                        )
                        for b in buyers
                    ),
                    return_exceptions=True,
                )
            await tx.rollback()
        finally:
            await blocker.close()
        codes = Counter(
            r.code() if isinstance(r, aio.AioRpcError) else grpc.StatusCode.OK for r in results
        )
        assert codes[grpc.StatusCode.RESOURCE_EXHAUSTED] >= 20, codes
        assert set(codes) <= {
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.OK,
        }, codes
        assert await proc.health() == health_pb2.HealthCheckResponse.SERVING
        async with aio.insecure_channel(proc.target) as ch:
            order = (
                await Stubs(ch).booking.BookSeats(
                    book_request(event_id, [ids[1]]), metadata=buyers[0].md
                )
            ).order
        assert order.status == booking_pb2.ORDER_STATUS_CONFIRMED
    finally:
        await proc.kill()
    assert await audit(running.engine, event_id) == {}


async def test_database_down_at_start_and_restarted_while_serving(data_dir: Path) -> None:
    pg_dir = Path(tempfile.mkdtemp(prefix="ticketd-pg-"))
    pg_dir.chmod(0o755)
    port = free_port()
    pg = EmbeddedPostgres(pg_dir, port=port)
    try:
        url = pg.start()  # make the cluster, then take it away before ticketd starts
        pg.stop()
        proc = ticketd_process(url, data_dir, shutdown_grace_s=1)
        await proc.start(wait_ready=False)
        try:
            # Down at start: the process lives, says NOT_SERVING, and keeps retrying.
            await proc.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await asyncio.sleep(1.5)
            assert proc.proc is not None and proc.proc.returncode is None
            assert "not answering" in proc.log()
            await asyncio.to_thread(pg.start)
            await proc.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout=30)
            async with aio.insecure_channel(proc.target) as ch:
                stubs = Stubs(ch)
                await stubs.register("first")
                # Restarted while serving: NOT_SERVING while away, calls fail UNAVAILABLE.
                await asyncio.to_thread(pg.stop)
                await proc.wait_health(health_pb2.HealthCheckResponse.NOT_SERVING, timeout=20)
                with pytest.raises(aio.AioRpcError) as err:
                    await stubs.auth.Register(
                        auth_pb2.RegisterRequest(
                            email=f"x{uuid.uuid4().hex[:6]}@example.test",
                            password="p" * 10,
                            display_name="X",
                        ),
                        timeout=10,
                    )
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
                assert "database not answering" in proc.log()
                await asyncio.to_thread(pg.start)
                await proc.wait_health(health_pb2.HealthCheckResponse.SERVING, timeout=30)
                acct = await stubs.register("after")
                me = await stubs.auth.GetCurrentUser(
                    auth_pb2.GetCurrentUserRequest(), metadata=acct.md
                )
                assert me.user.email == acct.email
            assert await proc.stop() == 0
        finally:
            await proc.kill()
    finally:
        pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(fallback_cluster_dir(pg_dir).parent, ignore_errors=True)
