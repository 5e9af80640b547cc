"""Channels, typed stubs and error decoding for the harness.

The harness talks to the generated stubs directly (no SDK interceptors, no automatic
retries): every RPC it counts is exactly one RPC on the wire, and a refusal is reported as
the server gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc import aio

from ticketing.sdk import decode_error
from ticketing.v1 import (
    auth_pb2_grpc,
    booking_pb2_grpc,
    event_pb2_grpc,
    gate_pb2_grpc,
    venue_pb2_grpc,
)

Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    """Call metadata carrying an access token."""
    return (("authorization", f"Bearer {token}"),)


class Stubs:
    """Typed stubs for every service over one channel."""

    def __init__(self, channel: aio.Channel) -> None:
        self.channel = channel
        self.auth: auth_pb2_grpc.AuthServiceAsyncStub = auth_pb2_grpc.AuthServiceStub(channel)
        self.venues: venue_pb2_grpc.VenueServiceAsyncStub = venue_pb2_grpc.VenueServiceStub(channel)
        self.events: event_pb2_grpc.EventServiceAsyncStub = event_pb2_grpc.EventServiceStub(channel)
        self.booking: booking_pb2_grpc.BookingServiceAsyncStub = (
            booking_pb2_grpc.BookingServiceStub(channel)
        )
        self.gate: gate_pb2_grpc.GateServiceAsyncStub = gate_pb2_grpc.GateServiceStub(channel)


def parse_targets(text: str) -> list[str]:
    """`HOST:PORT[,HOST:PORT...]` -> the list; channels are spread over them round-robin."""
    targets = [t.strip() for t in text.split(",") if t.strip()]
    if not targets:
        raise ValueError("--target needs at least one HOST:PORT")
    for target in targets:
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"target {target!r} is not HOST:PORT")
    return targets


def open_channels(targets: Sequence[str], count: int) -> list[aio.Channel]:
    """`count` channels, each its own HTTP/2 connection, spread over `targets`."""
    # Without a local subchannel pool, channels to one target share a single connection,
    # and --connections would measure nothing.
    options = [("grpc.use_local_subchannel_pool", 1)]
    return [aio.insecure_channel(targets[i % len(targets)], options=options) for i in range(count)]


@dataclass(frozen=True)
class RpcFailure:
    """The parts of a failed call the harness acts on."""

    code: str
    reason: str
    metadata: dict[str, str]
    seat_ids: tuple[int, ...]


def decode_failure(err: aio.AioRpcError) -> RpcFailure:
    """Status code name, ErrorInfo reason and metadata, and the seat ids a
    PreconditionFailure names (sold seats). Never raises on malformed details."""
    decoded = decode_error(err)
    code = decoded.code
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    return RpcFailure(name, decoded.reason, dict(decoded.metadata), decoded.seat_ids)
