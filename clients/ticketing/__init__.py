"""ticketing: the Python client for the ticketing.v1 gRPC API (stubs, SDK, tools)."""

from ticketing.client import Client, connect
from ticketing.sdk import TicketingError, decode_error

__all__ = ["Client", "TicketingError", "connect", "decode_error"]
