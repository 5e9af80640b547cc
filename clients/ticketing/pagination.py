"""`paginate`: every item of an AIP-158 list call, fetching pages as the caller iterates.

    async for seat in paginate(client.events.ListSeats, request, lambda page: page.seats):
        ...

The one page-token loop of the client code: it sets `page_token`, follows
`next_page_token` and stops at an empty one (the server's "no more").
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol, TypeVar

from grpc import aio

from ticketing.errors import ticketing_errors
from ticketing.stubs import CallMetadata

__all__ = ["PageRequest", "PageResponse", "paginate"]


class PageRequest(Protocol):
    """A List request (AIP-158): `page_size` 0 is the server's default, larger is clamped."""

    page_size: int
    page_token: str


class PageResponse(Protocol):
    """A List response: `next_page_token` is empty on the last page."""

    @property
    def next_page_token(self) -> str: ...


RequestT = TypeVar("RequestT", bound=PageRequest)
ResponseT = TypeVar("ResponseT", bound=PageResponse)
ItemT = TypeVar("ItemT")


async def paginate(
    method: aio.UnaryUnaryMultiCallable[RequestT, ResponseT],
    request: RequestT,
    items: Callable[[ResponseT], Iterable[ItemT]],
    *,
    page_size: int = 0,
    metadata: CallMetadata | None = None,
    page_timeout: float | None = None,
) -> AsyncIterator[ItemT]:
    """Yield `items(page)` of every page `method` returns for `request` (filters and all).

    Starts at the request's `page_token` (empty: the first page). `page_size`, when not 0,
    replaces the request's own. `metadata` goes with every page's call and `page_timeout` is
    each one's deadline (default: the channel's). The request is copied, never changed. A
    page is fetched only when the caller iterates into it, so stopping early fetches no
    more. A failed page raises TicketingError.
    """
    page_request = copy.deepcopy(request)
    if page_size:
        page_request.page_size = page_size
    while True:
        with ticketing_errors():
            page = await method(page_request, metadata=metadata, timeout=page_timeout)
        for item in items(page):
            yield item
        if not page.next_page_token:
            return
        page_request.page_token = page.next_page_token
