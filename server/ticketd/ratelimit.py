"""In-process token buckets (per server process; see README for what scale-out changes)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """One bucket per key: `rate` tokens per second, holding at most `burst`.

    Buckets idle long enough to be full again are forgotten, so memory stays bounded even
    when a caller invents keys.
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def try_take(
        self,
        key: Hashable,
        tokens: float = 1.0,
        *,
        rate: float | None = None,
        burst: float | None = None,
    ) -> bool:
        """Take tokens if the bucket has them; False means: refuse this call. `rate` and
        `burst` override the defaults for this key (a partner's own budget, say)."""
        rate = self.rate if rate is None else rate
        burst = self.burst if burst is None else burst
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        if bucket.tokens >= tokens:
            bucket.tokens -= tokens
            return True
        return False
