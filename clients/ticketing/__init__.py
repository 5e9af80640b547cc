"""ticketing: the Python client for the ticketing.v1 gRPC API (stubs, SDK, tools)."""

from ticketing.client import Client, connect

__all__ = ["Client", "connect"]
