"""What a rule raised, read by its attributes.

The server's error classes are being moved (grpc-free domain errors); these helpers look only
at what a client sees of an error (its field violations, its stable `reason`, its metadata),
so the unit tests import nothing but the modules they test.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def rejected(call: Callable[[], object]) -> Exception:
    """The exception `call` raises; fails the test if it returns instead."""
    try:
        result = call()
    except Exception as exc:
        return exc
    raise AssertionError(f"expected a rejection, got {result!r}")


def violations(call: Callable[[], object]) -> list[tuple[str, str]]:
    """(field path, description) of each field violation of the INVALID_ARGUMENT `call` raises."""
    exc = rejected(call)
    found = getattr(exc, "violations", None)
    assert found, f"{exc!r} carries no field violations"
    return [(v.field, v.description) for v in found]


def fields(call: Callable[[], object]) -> list[str]:
    """Just the field paths, in the order the rule reports them."""
    return [path for path, _ in violations(call)]


def reason_of(error: BaseException) -> str:
    """The stable `ErrorInfo.reason` an error carries (a string or an enum member's name)."""
    reason = getattr(error, "reason", None)
    assert reason is not None, f"{error!r} has no reason"
    return str(getattr(reason, "name", reason))


def metadata_of(error: BaseException) -> Mapping[str, str]:
    """The `ErrorInfo.metadata` an error carries."""
    return dict(getattr(error, "metadata", None) or {})
