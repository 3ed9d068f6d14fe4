"""Small random draws shared by the generators (always from a passed `random.Random`)."""

from __future__ import annotations

import math
from bisect import bisect
from random import Random
from typing import Generic, Sequence, TypeVar

T = TypeVar("T")


def weighted(pairs: Sequence[tuple[T, float]], r: float) -> T:
    """The value at cumulative probability `r` in ((value, weight), ...)."""
    total = sum(w for _, w in pairs)
    acc = 0.0
    for value, weight in pairs:
        acc += weight / total
        if r < acc:
            return value
    return pairs[-1][0]


def poisson(rng: Random, mean: float) -> int:
    """Knuth for small means, a rounded normal for large ones."""
    if mean <= 0:
        return 0
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def lognormal_ms(rng: Random, median_ms: float, sigma: float) -> int:
    return int(median_ms * math.exp(rng.gauss(0.0, sigma)))


class Choice(Generic[T]):
    """A fixed weighted choice: `choice(r)` maps a uniform draw in [0, 1) to a value."""

    __slots__ = ("values", "_cum")

    def __init__(self, pairs: Sequence[tuple[T, float]]):
        total = sum(w for _, w in pairs)
        self.values = tuple(v for v, _ in pairs)
        cum, acc = [], 0.0
        for _, weight in pairs:
            acc += weight / total
            cum.append(acc)
        cum[-1] = 1.0
        self._cum = cum

    def __call__(self, r: float) -> T:
        return self.values[bisect(self._cum, r)]
