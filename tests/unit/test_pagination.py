"""AIP-158 paging: page sizes, and page tokens that are opaque, bound to their query, tamper-proof."""

from __future__ import annotations

import base64
import datetime as dt
import json
import string
import uuid
from functools import partial

import pytest

from tests.unit.rejection import violations
from ticketd import pagination
from ticketd.pagination import PageTokens

BAD_TOKEN = ("page_token", "is not a valid page token for this listing")
QUERY = {"event": "e-1", "status": ["SOLD", "AVAILABLE"]}
# base64url's alphabet in value order (index = the 6 bits a character stands for).
URLSAFE = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


@pytest.mark.parametrize(
    ("asked", "served"),
    [(0, pagination.DEFAULT_PAGE_SIZE), (1, 1), (499, 499), (500, 500), (501, 500), (10**9, 500)],
)
def test_page_size_zero_is_the_default_and_too_large_is_clamped(asked: int, served: int) -> None:
    assert pagination.resolve_page_size(asked) == served


def test_page_size_default_and_maximum_are_per_listing() -> None:
    assert pagination.resolve_page_size(0, default=20, maximum=100) == 20
    assert pagination.resolve_page_size(150, default=20, maximum=100) == 100


def test_negative_page_size_is_invalid_argument() -> None:
    # Declared in the contract for every listing, enforced at the edge.
    from ticketd.app import contract_rules
    from ticketing.v1 import event_pb2

    found = contract_rules().violations(event_pb2.ListEventsRequest(page_size=-1))
    assert [(v.path, v.description) for v in found] == [("page_size", "must not be negative")]


def test_a_token_gives_back_its_position() -> None:
    pages = PageTokens("secret")
    position = ["2030-05-01T20:00:00+00:00", "a1b2", 7]
    token = pages.encode("orders", QUERY, position)
    assert pages.decode("orders", QUERY, token) == position
    # Opaque: URL-safe text without padding, and no readable position in it.
    assert set(token) <= set(URLSAFE)
    assert "a1b2" not in token


def test_an_empty_token_is_the_first_page() -> None:
    assert PageTokens("secret").decode("orders", QUERY, "") is None


def test_the_query_fingerprint_ignores_key_order() -> None:
    pages = PageTokens("secret")
    token = pages.encode("orders", {"a": 1, "b": 2}, 5)
    assert pages.decode("orders", {"b": 2, "a": 1}, token) == 5


@pytest.mark.parametrize(
    ("kind", "query", "secret"),
    [
        ("events", QUERY, "secret"),  # another listing
        ("orders", {**QUERY, "event": "e-2"}, "secret"),  # the same listing, other filters
        ("orders", QUERY, "other-secret"),  # another server's key
    ],
)
def test_a_token_is_refused_outside_its_listing(kind: str, query: object, secret: str) -> None:
    token = PageTokens("secret").encode("orders", QUERY, 5)
    assert violations(lambda: PageTokens(secret).decode(kind, query, token)) == [BAD_TOKEN]


def test_every_one_character_edit_is_refused() -> None:
    pages = PageTokens("secret")
    token = pages.encode("orders", QUERY, [1, 2])
    for i, original in enumerate(token):
        for replacement in (URLSAFE[(URLSAFE.index(original) + 1) % 64], "A"):
            if replacement == original:
                continue
            edited = token[:i] + replacement + token[i + 1 :]
            assert violations(partial(pages.decode, "orders", QUERY, edited)) == [BAD_TOKEN]


def test_an_edit_hidden_in_base64_s_unused_bits_is_refused() -> None:
    # When the payload is not a multiple of 3 bytes, the last character carries bits that
    # base64 decoding ignores: flipping one decodes to the same bytes and the same MAC.
    pages = PageTokens("secret")
    for n in range(50):
        token = pages.encode("orders", QUERY, n)
        if len(token) % 4:
            break
    else:
        raise AssertionError("no token with a partial last quantum")
    last = token[-1]
    twin = token[:-1] + URLSAFE[URLSAFE.index(last) ^ 1]
    assert twin != token
    assert base64.urlsafe_b64decode(twin + "=" * (-len(twin) % 4)) == base64.urlsafe_b64decode(
        token + "=" * (-len(token) % 4)
    )
    assert violations(partial(pages.decode, "orders", QUERY, twin)) == [BAD_TOKEN]


@pytest.mark.parametrize(
    "token",
    [
        "not base64 at all!",
        "QUJD",  # valid base64, shorter than a MAC
        "A" * (2048 + 1),  # longer than any token the server makes
    ],
)
def test_garbage_tokens_are_refused(token: str) -> None:
    assert violations(lambda: PageTokens("secret").decode("orders", QUERY, token)) == [BAD_TOKEN]


def test_a_forged_payload_without_the_key_is_refused() -> None:
    body = json.dumps({"k": "orders", "q": "0" * 16, "p": 1}).encode()
    forged = base64.urlsafe_b64encode(body + b"\0" * 16).decode().rstrip("=")
    assert violations(lambda: PageTokens("secret").decode("orders", QUERY, forged)) == [BAD_TOKEN]


def test_time_keysets_round_trip() -> None:
    pages = PageTokens("secret")
    when = dt.datetime(2030, 5, 1, 20, 0, 0, 123456, tzinfo=dt.UTC)
    row = uuid.uuid4()
    token = pagination.encode_time_keyset(pages, "scans", QUERY, when, row)
    assert pagination.decode_time_keyset(pages, "scans", QUERY, token) == (when, row)
    assert pagination.decode_time_keyset(pages, "scans", QUERY, "") is None


def test_a_signed_token_of_the_wrong_shape_is_still_refused() -> None:
    pages = PageTokens("secret")
    token = pages.encode("scans", QUERY, ["yesterday", "not-a-uuid"])
    assert violations(lambda: pagination.decode_time_keyset(pages, "scans", QUERY, token)) == [
        ("page_token", "is not a valid page token")
    ]
