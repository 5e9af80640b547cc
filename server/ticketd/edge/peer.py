"""The caller's address as throttling keys it: the IP of `context.peer()`, never the port.

A port changes with every connection, so a key that included it would give a flood a fresh
bucket per connection. IPv6 addresses are keyed by their /64 network: one host is normally
handed a whole /64 and can pick any address in it. IPv4-mapped IPv6 addresses count as the
IPv4 address they carry. Behind a proxy every caller has the proxy's address (see README).
"""

from __future__ import annotations

import ipaddress
import urllib.parse

UNKNOWN_PEER = "unknown"


def peer_address(peer: str | None) -> str:
    """`ipv4:1.2.3.4:5678` -> `1.2.3.4`; `ipv6:[2001:db8::1]:5678` -> `2001:db8::/64`;
    `unix:...` -> `unix`; anything unparseable -> `unknown` (one shared key)."""
    if not peer:
        return UNKNOWN_PEER
    # Newer gRPC cores write the peer as a URI: `ipv6:%5B::1%5D:5678`.
    scheme, _, rest = urllib.parse.unquote(peer).partition(":")
    if scheme == "unix" or scheme == "unix-abstract":
        return "unix"
    if scheme == "ipv4":
        host = rest.rsplit(":", 1)[0]
    elif scheme == "ipv6":
        host = rest.rsplit(":", 1)[0] if rest.startswith("[") else rest
        host = host.strip("[]").split("%", 1)[0]  # drop a zone id such as %eth0
    else:
        return UNKNOWN_PEER
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return UNKNOWN_PEER
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def context_peer(context: object) -> str:
    """The throttling key of a grpc.aio servicer context's caller."""
    peer = getattr(context, "peer", None)
    try:
        return peer_address(peer() if callable(peer) else None)
    except RuntimeError:
        return UNKNOWN_PEER
