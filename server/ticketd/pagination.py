"""AIP-158 pagination: page sizes and opaque, tamper-checked page tokens.

A token is base64url(JSON payload + HMAC). The payload holds the keyset position and a
fingerprint of the listing's filters, so a token is refused (INVALID_ARGUMENT) when edited or
replayed against a different query.

Pages are cut by count (page_size) and by size: a page never grows past the transport's
message limit, however large its items are (500 orders of 100 tickets are ~7 MB). The token
then continues right after the last item shown, so nothing is skipped or repeated.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from ticketd.errors import InvalidArgument, Reason, ResourceExhausted


class Measured(Protocol):
    """What a page item must offer: its encoded size (protobuf messages do)."""

    def ByteSize(self) -> int: ...


RowT = TypeVar("RowT")
ItemT = TypeVar("ItemT", bound=Measured)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_MAX_TOKEN_CHARS = 2048
# Room a page leaves in its message for everything but the items: the next_page_token (at
# most _MAX_TOKEN_CHARS, or it would be refused when sent back), its framing and any small
# fields a List response adds. Generous on purpose: the cut must hold for every listing.
PAGE_RESERVE_BYTES = 4 * 1024


def page_budget(max_message_bytes: int) -> int:
    """Bytes the items of one page may take in a message of at most `max_message_bytes`."""
    return max(1, max_message_bytes - PAGE_RESERVE_BYTES)


def _varint_len(value: int) -> int:
    n = 1
    while value >= 0x80:
        value >>= 7
        n += 1
    return n


def repeated_item_bytes(item_size: int) -> int:
    """What one element of a repeated message field adds to its message: tag (field numbers
    1..15 take one byte), length, body."""
    return 1 + _varint_len(item_size) + item_size


def resolve_page_size(
    page_size: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """0 -> default, above max -> max (negative sizes are refused by the contract: every
    page_size declares `int32.gte = 0`, which a unit test checks)."""
    if page_size <= 0:
        return default
    return min(page_size, maximum)


class PageTokens:
    """Signs and checks page tokens with a server secret; knows the page byte budget."""

    def __init__(self, secret: str, *, max_message_bytes: int = 4 * 1024 * 1024) -> None:
        self._key = hashlib.sha256(b"ticketing-page-token:" + secret.encode()).digest()
        self.page_bytes = page_budget(max_message_bytes)
        """What the items of one page may take (pass to `next_page` as `max_bytes`)."""

    def _mac(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()[:16]

    def encode(self, kind: str, query: Any, position: Any) -> str:
        """A token for the page after `position` of listing `kind` with filters `query`."""
        body = json.dumps(
            {"k": kind, "q": _fingerprint(query), "p": position},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        return base64.urlsafe_b64encode(body + self._mac(body)).decode().rstrip("=")

    def page(
        self,
        kind: str,
        query: Any,
        rows: Sequence[RowT],
        size: int,
        to_item: Callable[[RowT], ItemT],
        position: Callable[[RowT], Any],
    ) -> tuple[list[ItemT], str]:
        """`next_page` of listing `kind` with filters `query` (rows fetched with
        `limit=size + 1`), cut by this server's page byte budget; its token holds
        `position(last row shown)`, which `decode(kind, query, token)` gives back."""
        return next_page(
            rows,
            size,
            to_item,
            lambda row: self.encode(kind, query, position(row)),
            max_bytes=self.page_bytes,
        )

    def decode(self, kind: str, query: Any, token: str) -> Any:
        """The position stored in `token`, or None for an empty token (the first page)."""
        if not token:
            return None
        bad = InvalidArgument.one("page_token", "is not a valid page token for this listing")
        if len(token) > _MAX_TOKEN_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise bad from None
        body, mac = raw[:-16], raw[-16:]
        if len(raw) <= 16 or not hmac.compare_digest(mac, self._mac(body)):
            raise bad
        # base64 ignores unused low bits of the last character: insist on the canonical
        # text, so that any edit of a token is refused, not just most edits.
        if base64.urlsafe_b64encode(raw).decode().rstrip("=") != token:
            raise bad
        try:
            payload = json.loads(body)
        except ValueError:
            raise bad from None
        if payload.get("k") != kind or payload.get("q") != _fingerprint(query):
            raise bad
        return payload.get("p")


def decode_time_keyset(
    pages: PageTokens, kind: str, query: Any, token: str
) -> tuple[dt.datetime, uuid.UUID] | None:
    """A (timestamp, id) keyset position from a token made by `encode_time_keyset`."""
    position = pages.decode(kind, query, token)
    if position is None:
        return None
    try:
        return dt.datetime.fromisoformat(position[0]), uuid.UUID(position[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise InvalidArgument.one("page_token", "is not a valid page token") from None


def time_keyset(when: dt.datetime, row_id: uuid.UUID) -> list[str]:
    """A (timestamp, id) keyset position as a token holds it (`decode_time_keyset` reads it)."""
    return [when.isoformat(), str(row_id)]


def encode_time_keyset(
    pages: PageTokens, kind: str, query: Any, when: dt.datetime, row_id: uuid.UUID
) -> str:
    return pages.encode(kind, query, time_keyset(when, row_id))


def _fingerprint(query: Any) -> str:
    return hashlib.sha256(
        json.dumps(query, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()[:16]


def next_page(
    rows: Sequence[RowT],
    size: int,
    to_item: Callable[[RowT], ItemT],
    token_after: Callable[[RowT], str],
    *,
    max_bytes: int,
) -> tuple[list[ItemT], str]:
    """One page from `rows` fetched with `limit=size + 1`: the items, and the token for the
    page after the last one shown ("" when there is none).

    The page ends after `size` items or before the item that would take the items past
    `max_bytes` (see `page_budget`), whichever comes first; the token then points right
    after the last item shown. A single item larger than the budget cannot be sent at all:
    RESOURCE_EXHAUSTED RESPONSE_TOO_LARGE (the limits on what can be created keep that from
    happening at any allowed TICKETING_MAX_MESSAGE_BYTES).
    """
    items: list[ItemT] = []
    used = 0
    for row in rows[:size]:
        item = to_item(row)
        used += repeated_item_bytes(item.ByteSize())
        if used > max_bytes:
            if not items:
                raise ResourceExhausted(
                    "one item of this listing is larger than the transport limit",
                    reason=Reason.RESPONSE_TOO_LARGE,
                    metadata={"max_bytes": str(max_bytes)},
                )
            return items, token_after(rows[len(items) - 1])
        items.append(item)
    token = token_after(rows[len(items) - 1]) if len(rows) > size and items else ""
    return items, token
