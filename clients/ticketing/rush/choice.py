"""Seeded choices for the rush: which seats, which section, how many places.

Buyers in a rush do not pick uniformly: everyone wants the centre of the front rows. The
harness ranks every place by desirability (section order, then row, then distance from the
row's centre) and draws a rank from a Zipf law over the places it still believes free, so
many buyers fight over the same few seats while a long tail spreads over the rest.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Skew:
    """How picks spread over ranks: `zipf` with an exponent (>0), or `uniform`."""

    kind: str
    exponent: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Skew:
        """`uniform`, `zipf` (exponent 1.1) or `zipf:S`; ValueError otherwise."""
        name, _, arg = text.strip().lower().partition(":")
        if name == "uniform" and not arg:
            return cls("uniform")
        if name == "zipf":
            exponent = float(arg) if arg else 1.1
            if not 0 < exponent <= 10:
                raise ValueError("zipf exponent must be in (0, 10]")
            return cls("zipf", exponent)
        raise ValueError(f"unknown skew {text!r}: use zipf[:S] or uniform")

    def __str__(self) -> str:
        return f"zipf:{self.exponent:g}" if self.kind == "zipf" else "uniform"


class RankSampler:
    """Draws a 0-based rank below `m` (any m <= n): Zipf or uniform, O(log n) per draw.

    One cumulative table over all n ranks serves every prefix length m, because the Zipf
    weights of ranks 1..m do not depend on how many more there are.
    """

    def __init__(self, n: int, skew: Skew) -> None:
        self._uniform = skew.kind == "uniform"
        self._cdf: list[float] = []
        if not self._uniform:
            s = skew.exponent
            self._cdf = list(itertools.accumulate(k**-s for k in range(1, n + 1)))

    def draw(self, rng: random.Random, m: int) -> int:
        """A rank in [0, m); m must be at least 1."""
        if self._uniform:
            return rng.randrange(m)
        u = rng.random() * self._cdf[m - 1]
        return min(bisect.bisect_left(self._cdf, u, 0, m), m - 1)


class RankPool:
    """The set of ranks still present, with the k-th present rank in O(log n).

    A Fenwick tree over presence bits: removing a sold seat and finding "the 5th best seat
    still free" both cost a few dozen operations even at 200,000 places.
    """

    def __init__(self, n: int) -> None:
        self._n = n
        self._tree = [0] * (n + 1)
        self._present = bytearray(b"\x01" * n)
        for i in range(1, n + 1):
            self._tree[i] += 1
            parent = i + (i & -i)
            if parent <= n:
                self._tree[parent] += self._tree[i]
        self._count = n
        self._top = 1 << max(0, n.bit_length() - 1) if n else 0

    def __len__(self) -> int:
        return self._count

    def __contains__(self, rank: int) -> bool:
        return 0 <= rank < self._n and bool(self._present[rank])

    def _add(self, rank: int, delta: int) -> None:
        i = rank + 1
        while i <= self._n:
            self._tree[i] += delta
            i += i & -i

    def remove(self, rank: int) -> bool:
        """Take a rank out; False if it was not present."""
        if rank not in self:
            return False
        self._present[rank] = 0
        self._count -= 1
        self._add(rank, -1)
        return True

    def add(self, rank: int) -> bool:
        """Put a rank back (a refunded seat); False if it was present already."""
        if not 0 <= rank < self._n or self._present[rank]:
            return False
        self._present[rank] = 1
        self._count += 1
        self._add(rank, 1)
        return True

    def kth(self, k: int) -> int:
        """The k-th (0-based) present rank; IndexError when k >= len(self)."""
        if not 0 <= k < self._count:
            raise IndexError(k)
        pos = 0
        remaining = k + 1
        step = self._top
        while step:
            nxt = pos + step
            if nxt <= self._n and self._tree[nxt] < remaining:
                pos = nxt
                remaining -= self._tree[nxt]
            step >>= 1
        return pos


def parse_order_size(text: str) -> tuple[int, int]:
    """`3` or `1-4` -> (low, high) places per order, 1 <= low <= high <= 100."""
    low_text, _, high_text = text.partition("-")
    low = int(low_text)
    high = int(high_text) if high_text else low
    if not 1 <= low <= high <= 100:
        raise ValueError("order size must be N or LOW-HIGH with 1 <= LOW <= HIGH <= 100")
    return low, high
