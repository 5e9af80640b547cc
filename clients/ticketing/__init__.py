"""ticketing: the Python client for the ticketing.v1 gRPC API (stubs, SDK, tools)."""

from ticketing.client import Client, connect, end_customer
from ticketing.errors import TicketingError, decode_error
from ticketing.pagination import paginate
from ticketing.stubs import Stubs

__all__ = [
    "Client",
    "Stubs",
    "TicketingError",
    "connect",
    "decode_error",
    "end_customer",
    "paginate",
]
