"""Sign-in floods through a real server: throttled per address and per email, refused fast
when the password pool is full, and never at the expense of health checks, other calls or
another address.

Each test starts its own in-process server with strict limits on the shared test database
(the session server is generous on purpose). It listens on `localhost:PORT`, which gRPC binds
on 127.0.0.1 and ::1: the flood comes from 127.0.0.1 and the "victim" connects over ::1, so
the server sees two different addresses. Nothing here asserts on time: the figures are in
scripts/bench_auth_flood and docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

from tests.conftest import RunningServer
from tests.support import (
    PASSWORD,
    Account,
    Stubs,
    book_request,
    error_details,
    retry_delay,
    small_layout,
    unique_email,
)
from ticketd.app import Components, TicketServer, build_components
from ticketing.v1 import auth_pb2, event_pb2

NEVER = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@dataclass
class Served:
    server: TicketServer
    components: Components
    port: int

    @property
    def flood_target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def victim_target(self) -> str:
        return f"[::1]:{self.port}"


@contextlib.asynccontextmanager
async def strict_server(running: RunningServer, **limits: Any) -> AsyncIterator[Served]:
    """A second server on the test database with `limits` replacing the generous test ones."""
    settings = dataclasses.replace(running.components.settings, **limits)
    components = build_components(settings, running.components.db, settings.jwt_secret or "")
    server = TicketServer(components)
    port = await server.start("localhost:0")
    try:
        yield Served(server, components, port)
    finally:
        await server.stop(0)
        components.password_pool.shutdown()


def outcome(result: object) -> str:
    """OK, or CODE:REASON; refusals without RetryInfo are marked so a test sees them."""
    if not isinstance(result, aio.AioRpcError):
        return "OK"
    details = error_details(result)
    text = f"{details.code.name}:{details.reason}"
    if details.code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_delay(result) is None:
        text += ":NO_RETRY_INFO"
    return text


def bogus_login(stubs: Stubs) -> Awaitable[auth_pb2.LoginResponse]:
    return stubs.auth.Login(
        auth_pb2.LoginRequest(email=unique_email("nobody"), password="wrong-password"),
        timeout=60,
    )


async def health(target: str) -> int:
    async with aio.insecure_channel(target) as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    return int(resp.status)


async def test_a_login_flood_from_one_address_is_throttled_and_starves_nobody(
    running: RunningServer, stubs: Stubs
) -> None:
    victim = await stubs.register("victim")
    limits = dict(
        bcrypt_rounds=10,
        auth_concurrency=1,
        auth_queue=2,
        auth_peer_rate=0.01,
        auth_peer_burst=5,
        max_concurrent_rpcs=4,
    )
    async with (
        strict_server(running, **limits) as served,
        aio.insecure_channel(served.flood_target) as flood_ch,
        aio.insecure_channel(served.victim_target) as victim_ch,
    ):
        flood = Stubs(flood_ch)
        attempts = [asyncio.ensure_future(bogus_login(flood)) for _ in range(60)]
        await asyncio.sleep(0.1)  # the flood is in flight, its hashes running or queued
        # Health and an ordinary call from the flooding address itself, and a real Login
        # from another address, all answer while the flood is being refused.
        assert await health(served.flood_target) == health_pb2.HealthCheckResponse.SERVING
        listed = await flood.events.ListEvents(event_pb2.ListEventsRequest(page_size=1))
        assert isinstance(listed, event_pb2.ListEventsResponse)
        login = await Stubs(victim_ch).auth.Login(
            auth_pb2.LoginRequest(email=victim.email, password=victim.password), timeout=60
        )
        assert login.user.id == victim.user.id
        results = await asyncio.gather(*attempts, return_exceptions=True)
    outcomes = Counter(outcome(r) for r in results)
    assert not [r for r in results if isinstance(r, aio.AioRpcError) and r.code() in NEVER]
    # The burst of 5 reached the password check (or the full pool); the rest were refused
    # before any bcrypt work, each with a RetryInfo.
    assert outcomes["RESOURCE_EXHAUSTED:TOO_MANY_ATTEMPTS"] >= 55, outcomes
    assert set(outcomes) <= {
        "UNAUTHENTICATED:BAD_CREDENTIALS",
        "RESOURCE_EXHAUSTED:TOO_MANY_ATTEMPTS",
        "RESOURCE_EXHAUSTED:AUTH_BUSY",
    }, outcomes


async def test_a_full_password_pool_refuses_fast_and_health_still_answers(
    running: RunningServer, stubs: Stubs
) -> None:
    victim = await stubs.register("pool-victim")
    # No per-address limit here: the pool alone must hold. Its limit (1 hashing + 2
    # waiting) is far below the 40 concurrent attempts; grpc's old limit of 4 counted
    # health checks too.
    async with (
        strict_server(
            running, bcrypt_rounds=10, auth_concurrency=1, auth_queue=2, max_concurrent_rpcs=4
        ) as served,
        aio.insecure_channel(served.flood_target) as flood_ch,
        aio.insecure_channel(served.victim_target) as victim_ch,
    ):
        flood = Stubs(flood_ch)
        attempts = [asyncio.ensure_future(bogus_login(flood)) for _ in range(40)]
        await asyncio.sleep(0.1)
        for _ in range(3):
            assert await health(served.victim_target) == health_pb2.HealthCheckResponse.SERVING
        login = await Stubs(victim_ch).auth.Login(
            auth_pb2.LoginRequest(email=victim.email, password=victim.password), timeout=60
        )
        assert login.user.id == victim.user.id
        results = await asyncio.gather(*attempts, return_exceptions=True)
    outcomes = Counter(outcome(r) for r in results)
    assert outcomes["RESOURCE_EXHAUSTED:AUTH_BUSY"] >= 30, outcomes
    assert set(outcomes) <= {
        "UNAUTHENTICATED:BAD_CREDENTIALS",
        "RESOURCE_EXHAUSTED:AUTH_BUSY",
    }, outcomes


async def _sign_in_outcomes(stubs: Stubs, email: str, passwords: list[str]) -> list[str]:
    """Sequential Logins; each as OK or CODE:REASON:message:retry."""
    seen = []
    for password in passwords:
        try:
            await stubs.auth.Login(auth_pb2.LoginRequest(email=email, password=password))
            seen.append("OK")
        except aio.AioRpcError as err:
            details = error_details(err)
            retry = "retry" if retry_delay(err) is not None else "-"
            seen.append(f"{details.code.name}:{details.reason}:{details.message}:{retry}")
    return seen


async def test_failed_logins_back_off_per_email_alike_for_known_and_unknown(
    running: RunningServer, stubs: Stubs
) -> None:
    known = await stubs.register("backoff")
    unknown = unique_email("backoff-nobody")
    async with (
        strict_server(running, login_failures_per_email=3) as served,
        aio.insecure_channel(served.flood_target) as ch,
    ):
        strict = Stubs(ch)
        wrong = ["wrong-password"] * 5
        known_seen = await _sign_in_outcomes(strict, known.email, wrong)
        unknown_seen = await _sign_in_outcomes(strict, unknown, wrong)
        # Nothing tells the two apart: same codes, reasons, messages and RetryInfo.
        assert known_seen == unknown_seen
        assert [s.split(":")[1] for s in known_seen] == ["BAD_CREDENTIALS"] * 3 + [
            "TOO_MANY_ATTEMPTS"
        ] * 2
        assert known_seen[3].endswith(":retry")
        # Blocked means blocked, for the right password too, and for any spelling of the
        # address (the key is the normalised email).
        with pytest.raises(aio.AioRpcError) as err:
            await strict.auth.Login(
                auth_pb2.LoginRequest(email=known.email.upper(), password=known.password)
            )
        assert error_details(err.value).reason == "TOO_MANY_ATTEMPTS"
        delay = retry_delay(err.value)
        assert delay is not None and 0 < delay <= 1.0
        await asyncio.sleep(delay + 0.05)
        ok = await strict.auth.Login(
            auth_pb2.LoginRequest(email=known.email, password=known.password)
        )
        assert ok.user.id == known.user.id
        # The success reset the count: the next failures are plain BAD_CREDENTIALS again.
        again = await _sign_in_outcomes(strict, known.email, ["wrong-password"] * 3)
        assert [s.split(":")[1] for s in again] == ["BAD_CREDENTIALS"] * 3


async def test_a_parallel_guessing_burst_cannot_outrun_the_email_backoff(
    running: RunningServer, stubs: Stubs
) -> None:
    target = await stubs.register("burst-target")
    async with (
        strict_server(running, login_failures_per_email=3, bcrypt_rounds=6) as served,
        aio.insecure_channel(served.flood_target) as ch,
    ):
        strict = Stubs(ch)
        results = await asyncio.gather(
            *(
                strict.auth.Login(
                    auth_pb2.LoginRequest(email=target.email, password=f"guess-{i:04d}"),
                    timeout=60,
                )
                for i in range(30)
            ),
            return_exceptions=True,
        )
    outcomes = Counter(outcome(r) for r in results)
    # At most the threshold's worth of guesses were checked at all.
    assert outcomes["UNAUTHENTICATED:BAD_CREDENTIALS"] <= 3, outcomes
    assert outcomes["RESOURCE_EXHAUSTED:TOO_MANY_ATTEMPTS"] >= 27, outcomes


async def test_register_is_throttled_per_address_not_per_connection(
    running: RunningServer, stubs: Stubs
) -> None:
    existing = await stubs.register("enumerated")
    async with strict_server(running, auth_peer_burst=3, auth_peer_rate=0.01) as served:
        results: list[object] = []
        # A fresh channel per attempt: a new connection and source port each time.
        for i in range(6):
            email = existing.email if i % 2 else unique_email("throttled")
            async with aio.insecure_channel(served.flood_target) as ch:
                try:
                    results.append(
                        await Stubs(ch).auth.Register(
                            auth_pb2.RegisterRequest(
                                email=email, password=PASSWORD, display_name="Throttled"
                            )
                        )
                    )
                except aio.AioRpcError as refused:
                    results.append(refused)
        seen = [outcome(r) for r in results]
        assert seen[:3] == ["OK", "ALREADY_EXISTS:EMAIL_TAKEN", "OK"]
        assert seen[3:] == ["RESOURCE_EXHAUSTED:TOO_MANY_ATTEMPTS"] * 3
        # Login shares the address's bucket ...
        async with aio.insecure_channel(served.flood_target) as ch:
            with pytest.raises(aio.AioRpcError) as err:
                await Stubs(ch).auth.Login(
                    auth_pb2.LoginRequest(email=existing.email, password=existing.password)
                )
        assert error_details(err.value).reason == "TOO_MANY_ATTEMPTS"
        # ... while another address is unaffected.
        async with aio.insecure_channel(served.victim_target) as ch:
            reg = await Stubs(ch).auth.Register(
                auth_pb2.RegisterRequest(
                    email=unique_email("other-address"), password=PASSWORD, display_name="V6"
                )
            )
        assert reg.user.id


async def test_ordinary_calls_have_their_own_budget_and_health_is_exempt(
    running: RunningServer, stubs: Stubs, admin: Account, database_url: str
) -> None:
    venue = await stubs.create_venue(admin, small_layout(rows=1, seats=2, ga=0))
    event = await stubs.create_event(admin, venue)
    seats = await stubs.all_seats(event.id)
    buyers = [await stubs.register("budget") for _ in range(2)]
    blocker = await asyncpg.connect(
        make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    async with (
        strict_server(running, max_concurrent_rpcs=2) as served,
        aio.insecure_channel(served.flood_target) as ch,
    ):
        strict = Stubs(ch)
        tx = blocker.transaction()
        await tx.start()
        try:
            await blocker.execute("SELECT 1 FROM seats WHERE id = $1 FOR UPDATE", seats[0].id)
            # Two bookings wait on the locked seat and fill the ordinary budget.
            held = [
                asyncio.ensure_future(
                    strict.booking.BookSeats(
                        book_request(event.id, [seats[0].id]), metadata=b.md, timeout=30
                    )
                )
                for b in buyers
            ]
            await asyncio.sleep(0.3)
            with pytest.raises(aio.AioRpcError) as err:
                await strict.auth.GetCurrentUser(
                    auth_pb2.GetCurrentUserRequest(), metadata=buyers[0].md
                )
            assert outcome(err.value) == "RESOURCE_EXHAUSTED:OVERLOADED"
            # Health is never counted; password calls have a budget of their own.
            assert await health(served.flood_target) == health_pb2.HealthCheckResponse.SERVING
            login = await strict.auth.Login(
                auth_pb2.LoginRequest(email=buyers[1].email, password=buyers[1].password)
            )
            assert login.user.id == buyers[1].user.id
        finally:
            await tx.rollback()
            await blocker.close()
        results = await asyncio.gather(*held, return_exceptions=True)
        # The budget is given back as calls end: the next ordinary call is admitted.
        me = await strict.auth.GetCurrentUser(
            auth_pb2.GetCurrentUserRequest(), metadata=buyers[0].md
        )
        assert me.user.id == buyers[0].user.id
    assert sorted(outcome(r) for r in results) in (
        ["ABORTED:SEAT_LOCKED", "OK"],
        ["FAILED_PRECONDITION:SEAT_UNAVAILABLE", "OK"],
        ["ABORTED:SEAT_LOCKED", "ABORTED:SEAT_LOCKED"],
    ), results


async def test_an_address_whose_sign_ins_keep_failing_backs_off(
    running: RunningServer, stubs: Stubs
) -> None:
    """A generous rate, but every sign-in from the address fails: after a burst's worth the
    address waits, whatever emails it tries; another address is unaffected."""
    victim = await stubs.register("peer-backoff-victim")
    async with (
        strict_server(running, auth_peer_rate=1000.0, auth_peer_burst=4) as served,
        aio.insecure_channel(served.flood_target) as flood_ch,
        aio.insecure_channel(served.victim_target) as victim_ch,
    ):
        flood = Stubs(flood_ch)
        seen = []
        for _ in range(6):
            try:
                await bogus_login(flood)
                seen.append("OK")
            except aio.AioRpcError as err:
                seen.append(outcome(err))
        assert (
            seen
            == ["UNAUTHENTICATED:BAD_CREDENTIALS"] * 4
            + ["RESOURCE_EXHAUSTED:TOO_MANY_ATTEMPTS"] * 2
        )
        login = await Stubs(victim_ch).auth.Login(
            auth_pb2.LoginRequest(email=victim.email, password=victim.password)
        )
        assert login.user.id == victim.user.id
