"""`Stubs`: a typed stub for every ticketing.v1 service over one channel.

The one container of the generated stubs: `ticketing.Client` is one (with auth, deadlines,
retries and helpers on its channel), and tools that want exactly one RPC on the wire per call
(the load-test harness, the tests) build one on a bare channel.
"""

from __future__ import annotations

from grpc import aio

from ticketing.v1 import (
    audit_pb2_grpc,
    auth_pb2_grpc,
    booking_pb2_grpc,
    event_pb2_grpc,
    gate_pb2_grpc,
    partner_pb2_grpc,
    venue_pb2_grpc,
)

__all__ = ["CallMetadata", "Stubs", "api_key", "bearer", "device"]

CallMetadata = tuple[tuple[str, str], ...]
"""Metadata for one call, e.g. `bearer(token)`."""


def bearer(token: str) -> CallMetadata:
    """Call metadata carrying an access token: `authorization: Bearer <token>`."""
    return (("authorization", f"Bearer {token}"),)


def device(credential: str) -> CallMetadata:
    """Call metadata carrying a kiosk device credential: `authorization: Device <tkd_...>`."""
    return (("authorization", f"Device {credential}"),)


def api_key(secret: str) -> CallMetadata:
    """Call metadata carrying a partner's API key: `authorization: ApiKey <secret>`."""
    return (("authorization", f"ApiKey {secret}"),)


class Stubs:
    """Typed stubs for every service over one channel; the channel is the caller's to close."""

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(channel)
        self.venues: venue_pb2_grpc.VenueServiceAsyncStub = venue_pb2_grpc.VenueServiceStub(channel)
        self.events: event_pb2_grpc.EventServiceAsyncStub = event_pb2_grpc.EventServiceStub(channel)
        self.booking: booking_pb2_grpc.BookingServiceAsyncStub = (
            booking_pb2_grpc.BookingServiceStub(channel)
        )
        self.gate: gate_pb2_grpc.GateServiceAsyncStub = gate_pb2_grpc.GateServiceStub(channel)
        self.partners: partner_pb2_grpc.PartnerServiceAsyncStub = (
            partner_pb2_grpc.PartnerServiceStub(channel)
        )
        self.audit: audit_pb2_grpc.AuditServiceAsyncStub = audit_pb2_grpc.AuditServiceStub(channel)
