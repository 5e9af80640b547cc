"""Token buckets on an injected clock: burst, refill, per-key independence, bounded memory."""

from __future__ import annotations

import pytest

from ticketd.ratelimit import TokenBuckets


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def takes(buckets: TokenBuckets, key: str, times: int) -> int:
    """How many of `times` single takes succeed right now."""
    return sum(buckets.try_take(key) for _ in range(times))


def test_a_burst_then_refusal() -> None:
    buckets = TokenBuckets(rate=10, burst=5, clock=FakeClock())
    assert takes(buckets, "gate-1", 8) == 5
    assert buckets.try_take("gate-1") is False


def test_tokens_come_back_at_the_rate() -> None:
    clock = FakeClock()
    # Rate and steps are powers of two, so the clock arithmetic is exact.
    buckets = TokenBuckets(rate=4, burst=5, clock=clock)
    assert takes(buckets, "g", 5) == 5
    clock.advance(0.125)  # half a token
    assert buckets.try_take("g") is False
    clock.advance(0.125)
    assert buckets.try_take("g") is True
    assert buckets.try_take("g") is False
    clock.advance(0.75)
    assert takes(buckets, "g", 10) == 3


def test_a_long_idle_refills_only_up_to_the_burst() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=100, burst=3, clock=clock)
    assert takes(buckets, "g", 3) == 3
    clock.advance(3_600)
    assert takes(buckets, "g", 10) == 3


def test_keys_do_not_share_tokens() -> None:
    buckets = TokenBuckets(rate=1, burst=2, clock=FakeClock())
    assert takes(buckets, "north", 5) == 2
    assert takes(buckets, "south", 5) == 2
    assert buckets.try_take(("event", 1)) is True  # any hashable key


def test_a_take_may_cost_more_or_less_than_one() -> None:
    buckets = TokenBuckets(rate=1, burst=2, clock=FakeClock())
    assert buckets.try_take("g", 1.5) is True
    assert buckets.try_take("g", 1.0) is False  # 0.5 left
    assert buckets.try_take("g", 0.5) is True


def test_a_refused_take_costs_nothing() -> None:
    clock = FakeClock()
    buckets = TokenBuckets(rate=1, burst=2, clock=clock)
    assert buckets.try_take("g", 2) is True
    clock.advance(1)
    assert buckets.try_take("g", 2) is False
    assert buckets.try_take("g", 1) is True


def test_memory_is_bounded_by_forgetting_the_least_recently_used_key() -> None:
    buckets = TokenBuckets(rate=1, burst=1, max_keys=2, clock=FakeClock())
    assert buckets.try_take("a") and buckets.try_take("b")
    assert buckets.try_take("a") is False  # "a" is now the most recently used
    assert buckets.try_take("c") is True  # a third key: "b" is forgotten
    assert buckets.try_take("a") is False  # "a" was kept, still empty
    assert buckets.try_take("b") is True  # "b" starts again from a full bucket


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (1, 0.5)])
def test_nonsense_settings_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be > 0 and burst >= 1"):
        TokenBuckets(rate=rate, burst=burst)
