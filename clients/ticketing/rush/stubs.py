"""Channels for the harness.

The harness talks to the generated stubs directly (`ticketing.stubs.Stubs` on these bare
channels: no SDK interceptors, no automatic retries): every RPC it counts is exactly one RPC
on the wire, and a refusal is reported as the server gave it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grpc import aio

# Re-exported: scripts/bench_rush.py imports Stubs from here (it lives in ticketing.stubs).
from ticketing.stubs import Stubs

__all__ = ["Stubs", "open_channels", "parse_targets"]


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

    def for_target(target: str) -> list[tuple[str, Any]]:
        # --round-robin: one ipv4:/ipv6: target over several servers (ticketing.client).
        balanced = target.startswith(("ipv4:", "ipv6:")) and "," in target
        return [*options, ("grpc.lb_policy_name", "round_robin")] if balanced else options

    picked = [targets[i % len(targets)] for i in range(count)]
    return [aio.insecure_channel(t, options=for_target(t)) for t in picked]
