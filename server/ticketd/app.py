"""Builds the grpc.aio server: interceptor, servicers, health, reflection, limits."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ticketd.accounts.service import AccountService
from ticketd.accounts.servicer import AuthServicer
from ticketd.audit.service import AuditService
from ticketd.audit.servicer import AuditServicer
from ticketd.auth.cache import PrincipalCache
from ticketd.auth.credentials import Scheme, SecretHasher, derive_key
from ticketd.auth.passwords import PasswordHasher
from ticketd.auth.throttle import SignInThrottle
from ticketd.auth.tokens import TokenService
from ticketd.auth.workpool import PasswordWorkPool
from ticketd.booking.service import BookingService
from ticketd.booking.servicer import BookingServicer
from ticketd.config import Settings
from ticketd.db import outbox
from ticketd.db.database import Database
from ticketd.edge.admission import Admission, CallerBudgets
from ticketd.edge.contract_rules import ContractRules
from ticketd.edge.interceptor import AuthInterceptor
from ticketd.events.rules import EventQuotas
from ticketd.events.service import EventService
from ticketd.events.servicer import EventServicer
from ticketd.gate.devices.service import DeviceService
from ticketd.gate.limits import ScanLimiter
from ticketd.gate.service import GateService
from ticketd.gate.servicer import GateServicer
from ticketd.gate.signing.service import SigningService
from ticketd.observability import tracing
from ticketd.pagination import PageTokens
from ticketd.partners.service import PartnerService
from ticketd.partners.servicer import PartnerServicer
from ticketd.shared import ScanWindowDefaults
from ticketd.venues.service import VenueService
from ticketd.venues.servicer import VenueServicer, venue_response_bytes
from ticketing.v1 import (
    audit_pb2,
    audit_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    booking_pb2,
    booking_pb2_grpc,
    event_pb2,
    event_pb2_grpc,
    gate_pb2,
    gate_pb2_grpc,
    partner_pb2,
    partner_pb2_grpc,
    venue_pb2,
    venue_pb2_grpc,
)

log = logging.getLogger("ticketd")

# HKDF purposes of the keys secret: one key each, never shared between uses.
KEK_PURPOSE = "ticketing.v1 event signing key seal"
DEVICE_HMAC_PURPOSE = "ticketing.v1 device credential hmac"
API_KEY_HMAC_PURPOSE = "ticketing.v1 partner api key hmac"

_SERVICES = tuple(
    service
    for module in (auth_pb2, venue_pb2, event_pb2, booking_pb2, gate_pb2, partner_pb2, audit_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)
SERVICE_NAMES = tuple(service.full_name for service in _SERVICES)


def contract_rules() -> ContractRules:
    """The contract's declared request rules, compiled for every RPC's request type."""
    return ContractRules(method.input_type for service in _SERVICES for method in service.methods)


@dataclass
class Components:
    """Everything the servicers share; built once per process."""

    settings: Settings
    db: Database
    tokens: TokenService
    pages: PageTokens
    password_pool: PasswordWorkPool
    accounts: AccountService
    venues: VenueService
    events: EventService
    booking: BookingService
    gate: GateService
    signing: SigningService
    devices: DeviceService
    partners: PartnerService
    audit: AuditService


def build_components(
    settings: Settings, db: Database, jwt_secret: str, *, keys_secret: str | None = None
) -> Components:
    """The services, wired to each other: a domain reaches another only through its service.

    `keys_secret` (else settings.keys_secret) seals signing keys and keys the hashes of
    device credentials and partner API keys; embedders that pass neither (tests) get one
    derived from the JWT secret, under its own HKDF purpose. `ticketd` itself always has
    its own (see __main__)."""
    tokens = TokenService(
        jwt_secret,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.token_ttl_seconds,
    )
    pool = PasswordWorkPool(settings.auth_concurrency, settings.auth_queue)
    throttle = SignInThrottle(
        peer_rate=settings.auth_peer_rate,
        peer_burst=settings.auth_peer_burst,
        failures_per_email=settings.login_failures_per_email,
    )
    accounts = AccountService(db, PasswordHasher(settings.bcrypt_rounds, pool), tokens, throttle)
    venues = VenueService(
        db, response_size=venue_response_bytes, max_response_bytes=settings.max_message_bytes
    )
    window = ScanWindowDefaults(
        doors_open_lead=dt.timedelta(seconds=settings.doors_open_lead_seconds),
        default_duration=dt.timedelta(seconds=settings.default_event_duration_seconds),
    )
    keys = keys_secret or settings.keys_secret or jwt_secret
    signing = SigningService(db, kek=derive_key(keys, KEK_PURPOSE), window=window)
    devices = DeviceService(
        db,
        hasher=SecretHasher(derive_key(keys, DEVICE_HMAC_PURPOSE)),
        enroll_ttl=dt.timedelta(seconds=settings.device_enroll_ttl_seconds),
    )
    partners = PartnerService(db, hasher=SecretHasher(derive_key(keys, API_KEY_HMAC_PURPOSE)))
    booking = BookingService(
        db,
        customers=accounts,
        end_customers=partners,
        signed_codes=signing,
        hold_ttl=dt.timedelta(seconds=settings.hold_ttl_seconds),
        hold_max_ttl=dt.timedelta(seconds=settings.hold_max_ttl_seconds),
    )
    limiter = ScanLimiter(
        gate_rate=settings.gate_scan_rate,
        gate_burst=settings.gate_scan_burst,
        caller_rate=settings.caller_scan_rate,
        caller_burst=settings.caller_scan_burst,
        max_gates=settings.caller_max_gates,
    )
    return Components(
        settings=settings,
        db=db,
        tokens=tokens,
        pages=PageTokens(jwt_secret, max_message_bytes=settings.max_message_bytes),
        password_pool=pool,
        accounts=accounts,
        venues=venues,
        events=EventService(
            db,
            venues=venues,
            booking=booking,
            accounts=accounts,
            window=window,
            quotas=EventQuotas(
                places_per_event=settings.quota_event_places,
                live_events=settings.quota_live_events,
            ),
            partners=partners,
        ),
        booking=booking,
        gate=GateService(
            db,
            limiter=limiter,
            window=window,
            signing=signing,
            clock_skew=dt.timedelta(seconds=settings.offline_clock_skew_seconds),
        ),
        signing=signing,
        devices=devices,
        partners=partners,
        audit=AuditService(db),
    )


class TicketServer:
    """A running (or ready to run) ticketd gRPC server."""

    def __init__(self, components: Components, *, reuse_port: bool = False) -> None:
        """`reuse_port`: bind with SO_REUSEPORT, as a worker of `serve --workers N` does
        (the supervisor guards the port against anything else; ticketd.supervisor)."""
        self.components = components
        settings = components.settings
        pages = components.pages
        self.admission = Admission(
            general_limit=settings.max_concurrent_rpcs,
            password_limit=settings.auth_rpc_limit,
            partners=CallerBudgets(
                max_in_flight=settings.partner_max_concurrent_rpcs,
                rate=settings.partner_rate,
                burst=settings.partner_burst,
                max_streams=settings.partner_max_streams,
            ),
        )
        # One more PostgreSQL connection per process, outside the pool: it LISTENs for the
        # auth changes that empty this cache (ticketd.auth.cache).
        self.principals = PrincipalCache(
            components.db.url if settings.auth_cache_ttl_seconds > 0 else None,
            ttl=settings.auth_cache_ttl_seconds,
        )
        self.interceptor = interceptor = AuthInterceptor(
            components.tokens,
            components.accounts.principal_for,
            contract_rules(),
            self.admission,
            secret_loaders={
                Scheme.DEVICE: components.devices.principal_for,
                Scheme.API_KEY: components.partners.principal_for,
            },
            max_streams=settings.max_streams,
            partner_hint=components.partners.budget_hint,
            principals=self.principals,
            refusal_hold=settings.partner_refusal_hold_seconds,
        )
        self.server = aio.server(
            # Tracing first, so its span is current while ours maps errors (trace id =
            # correlation id); an empty list unless OTEL_* asks for it.
            interceptors=[*tracing.server_interceptors(), interceptor],
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # A fixed port must not be bound twice silently; scale-out opts in explicitly.
                ("grpc.so_reuseport", 1 if reuse_port else 0),
                ("grpc.keepalive_time_ms", 60_000),
                ("grpc.http2.max_pings_without_data", 0),
                # One connection's burst waits on its own side of the wire instead of
                # queueing ahead of every other client's calls here (0: grpc's default).
                *(
                    [("grpc.max_concurrent_streams", settings.max_streams_per_connection)]
                    if settings.max_streams_per_connection
                    else []
                ),
            ],
            # Admission is ours (ticketd.edge.admission: health exempt, password calls on
            # their own budget); grpc's limit, which counts health too, is a last resort.
            maximum_concurrent_rpcs=settings.grpc_hard_limit,
        )
        auth_pb2_grpc.add_AuthServiceServicer_to_server(
            AuthServicer(components.accounts, pages), self.server
        )
        venue_pb2_grpc.add_VenueServiceServicer_to_server(
            VenueServicer(components.venues, pages), self.server
        )
        event_pb2_grpc.add_EventServiceServicer_to_server(
            EventServicer(
                components.events,
                pages,
                send_timeout=settings.stream_send_timeout_seconds,
                poll_seconds=settings.stream_poll_seconds,
                seat_streams=settings.seat_streams,
            ),
            self.server,
        )
        booking_pb2_grpc.add_BookingServiceServicer_to_server(
            BookingServicer(
                components.booking,
                pages,
                send_timeout=settings.stream_send_timeout_seconds,
                poll_seconds=settings.stream_poll_seconds,
            ),
            self.server,
        )
        gate_pb2_grpc.add_GateServiceServicer_to_server(
            GateServicer(
                components.gate,
                components.signing,
                components.devices,
                pages,
                send_timeout=settings.stream_send_timeout_seconds,
                poll_seconds=settings.stream_poll_seconds,
            ),
            self.server,
        )
        partner_pb2_grpc.add_PartnerServiceServicer_to_server(
            PartnerServicer(components.partners, pages), self.server
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(components.audit, pages), self.server
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, reflection.SERVICE_NAME, health.SERVICE_NAME), self.server
        )
        self.port = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._health_server: aio.Server | None = None

    async def start_health_only(self, listen: str) -> int:
        """Also serve health alone on `listen` (a worker's private loopback port, where its
        supervisor checks this very process). Returns the bound port."""
        self._health_server = aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._health_server)
        port = self._health_server.add_insecure_port(listen)
        await self._health_server.start()
        return port

    async def start(self, listen: str | None = None, *, serving: bool = True) -> int:
        """Bind and start; returns the bound port. With `serving=False` health says
        NOT_SERVING until `set_serving(True)` (the database is not ready yet)."""
        settings = self.components.settings
        address = listen or settings.listen
        try:
            if settings.tls_enabled:
                assert settings.tls_cert is not None and settings.tls_key is not None
                creds = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.port = self.server.add_secure_port(address, creds)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError:
            # grpc says only "Failed to bind"; the usual cause is another server on it.
            raise OSError(
                f"could not bind {address}: the address is in use (another ticketd, or a "
                "ticketd --workers supervisor, already serves this port?)"
            ) from None
        if self.port == 0:
            raise OSError(f"could not bind {address}")
        await self.server.start()
        self.principals.start()
        await self.set_serving(serving)
        # Numbers committed outbox records whether anyone watches or not (streams' readers
        # also sequence before they read): ticketd.db.outbox. Order changes are recorded
        # whatever TICKETING_SEAT_STREAMS says, so it always runs.
        self.components.db.outbox.start()
        if settings.hold_sweep_interval_seconds > 0 and self._sweeper is None:
            self._sweeper = asyncio.create_task(
                sweep_holds(self.components.booking, settings.hold_sweep_interval_seconds)
            )
        if (
            settings.outbox_retention_seconds > 0
            and settings.outbox_prune_interval_seconds > 0
            and self._pruner is None
        ):
            self._pruner = asyncio.create_task(
                prune_outbox(
                    self.components.db,
                    settings.outbox_retention_seconds,
                    settings.outbox_prune_interval_seconds,
                )
            )
        return self.port

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING first (balancers drain), then let in-flight calls finish."""
        await self.set_serving(False)
        # Streams never end by themselves: tell them to end (with where to resume) now.
        self.components.events.stop_streams()
        self.components.booking.stop_streams()
        self.components.gate.stop_streams()
        for task in (self._sweeper, self._pruner):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._pruner = None
        await self.server.stop(self.components.settings.grace_seconds if grace is None else grace)
        await self.components.db.outbox.stop()
        await self.principals.close()
        if self._health_server is not None:
            await self._health_server.stop(0)
        tracing.shutdown()

    async def wait(self) -> None:
        await self.server.wait_for_termination()


async def sweep_holds(booking: BookingService, interval: float) -> None:
    """Every `interval` seconds, tidy expired holds' places and the places of allocations
    past their release_time (so seat streams show both);
    a failure (database away) is logged and retried next round: nothing depends on it."""
    while True:
        await asyncio.sleep(interval)
        try:
            while await booking.sweep_expired_holds() > 0:
                pass
            while await booking.sweep_expired_allocations() > 0:
                pass
        except Exception as exc:  # the next round retries; sales never depend on it
            log.warning("hold sweep failed: %s", exc)


async def prune_outbox(db: Database, keep_seconds: float, interval: float) -> None:
    """Every `interval` seconds, delete the seat and order changes older than `keep_seconds`
    (ticketd.db.outbox.prune_round); a failure is logged and retried next round."""
    while True:
        await asyncio.sleep(interval)
        try:
            deleted = await outbox.prune_round(db.connection, keep_seconds)
            if deleted:
                log.info("outbox: pruned %d changes older than %g s", deleted, keep_seconds)
        except Exception as exc:  # the next round retries; nothing depends on it
            log.warning("outbox pruning failed: %s", exc)


async def ensure_bootstrap_admin(components: Components) -> None:
    """Create (or promote) TICKETING_ADMIN_EMAIL; idempotent, runs on every start."""
    settings = components.settings
    if not settings.admin_email or not settings.admin_password:
        return
    user, created = await components.accounts.ensure_admin(
        settings.admin_email, settings.admin_password
    )
    log.info("bootstrap admin %s %s", user.email, "created" if created else "present")


async def wait_for_database(
    db: Database,
    *,
    stop: asyncio.Event | None = None,
    attempts: int | None = None,
    max_delay: float = 5.0,
) -> bool:
    """Retry with capped backoff until PostgreSQL answers, logging each miss clearly.

    Without `attempts` it waits until `stop` is set: a server whose database is down keeps
    running NOT_SERVING instead of crash-looping. Returns True once the database answers.
    """
    delay = 0.2
    attempt = 0
    while attempts is None or attempt < attempts:
        attempt += 1
        if await db.ping():
            if attempt > 1:
                log.info("database answers again after %d attempts", attempt)
            return True
        log.warning(
            "database %s not answering (attempt %d); retrying in %.1fs",
            db.display_url,
            attempt,
            delay,
        )
        if stop is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                return False
        else:
            await asyncio.sleep(delay)
        delay = min(delay * 2, max_delay)
    return False


async def watch_database(
    server: TicketServer, stop: asyncio.Event, *, interval: float = 2.0
) -> None:
    """Keep health in step with the database: NOT_SERVING while it does not answer.

    Load balancers and kiosks watch health; a server whose database went away must say
    so instead of failing every call while claiming to be fine.
    """
    db = server.components.db
    healthy = True
    misses = 0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if stop.is_set():
            return
        # Two misses in a row before NOT_SERVING: one slow ping on a saturated machine
        # must not drain a busy server.
        misses = 0 if await db.ping() else misses + 1
        ok = misses < 2
        if ok != healthy:
            healthy = ok
            await server.set_serving(ok)
            if ok:
                await db.refresh_connections()
                log.info("database answers again: health SERVING")
            else:
                log.error("database not answering: health NOT_SERVING until it does")
