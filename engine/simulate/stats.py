"""Confidence intervals for the A/B report: means, proportions, a percentile, differences.

Every interval is two-sided at 95% unless `z` says otherwise, and every function is pure
(no draws, so a report is reproducible without a seed):

- a mean: the normal approximation, the estimate ± z × the sample standard error
  (the standard deviation with n − 1, over √n); a difference of two means: Welch's
  standard error, √(s₁²/n₁ + s₂²/n₂), with the normal z (the samples are large);
- a proportion: the Wilson score interval, which stays inside [0, 1] and is honest for
  rates near 0; a difference of two proportions: Newcombe's hybrid score interval
  (method 10 of Newcombe 1998), built from the two Wilson intervals;
- a percentile (nearest rank): distribution-free, between two order statistics whose ranks
  the normal approximation of the binomial gives; a difference of two percentiles: each
  one's standard error read off its interval (its width over 2z), combined as for means
  (after Bonett and Price's interval for a difference of medians).

A function returns None when there are too few samples for an interval (no sample; one
sample for a mean).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054: two-sided 95%


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its confidence interval [low, high]."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def sign(self) -> int:
        """+1: entirely above zero, -1: entirely below, 0: the interval includes zero."""
        if self.low > 0:
            return 1
        if self.high < 0:
            return -1
        return 0


def mean_interval(values: Sequence[float], z: float = Z95) -> Interval | None:
    """The mean ± z × its standard error (None: fewer than two values)."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    half = z * _std_error(values, mean)
    return Interval(mean, mean - half, mean + half)


def mean_difference(a: Sequence[float], b: Sequence[float], z: float = Z95) -> Interval | None:
    """mean(b) − mean(a), with Welch's standard error (None: either has under two values)."""
    if len(a) < 2 or len(b) < 2:
        return None
    mean_a = math.fsum(a) / len(a)
    mean_b = math.fsum(b) / len(b)
    half = z * math.hypot(_std_error(a, mean_a), _std_error(b, mean_b))
    diff = mean_b - mean_a
    return Interval(diff, diff - half, diff + half)


def _std_error(values: Sequence[float], mean: float) -> float:
    n = len(values)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return math.sqrt(variance / n)


def wilson(successes: int, n: int, z: float = Z95) -> Interval | None:
    """The Wilson score interval of `successes` out of `n` (None: n is 0)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n}")
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def proportion_difference(
    successes_a: int, n_a: int, successes_b: int, n_b: int, z: float = Z95
) -> Interval | None:
    """p_b − p_a with Newcombe's hybrid score interval (None: either n is 0)."""
    a = wilson(successes_a, n_a, z)
    b = wilson(successes_b, n_b, z)
    if a is None or b is None:
        return None
    diff = b.value - a.value
    low = diff - math.hypot(b.value - b.low, a.high - a.value)
    high = diff + math.hypot(b.high - b.value, a.value - a.low)
    return Interval(diff, low, high)


def percentile_interval(values: Sequence[float], p: float, z: float = Z95) -> Interval | None:
    """The nearest-rank `p` percentile (0 < p < 1) and a distribution-free interval: the
    order statistics at ranks floor(np − z√(np(1−p))) and ceil(np + z√(np(1−p))) + 1,
    kept within 1 … n (None: no values)."""
    n = len(values)
    if n == 0:
        return None
    if not 0 < p < 1:
        raise ValueError(f"percentile {p} is not between 0 and 1")
    ordered = sorted(values)
    rank = max(1, math.ceil(p * n))
    spread = z * math.sqrt(n * p * (1 - p))
    low_rank = min(n, max(1, math.floor(n * p - spread)))
    high_rank = min(n, max(1, math.ceil(n * p + spread) + 1))
    return Interval(ordered[rank - 1], ordered[low_rank - 1], ordered[high_rank - 1])


def percentile_difference(
    a: Sequence[float], b: Sequence[float], p: float, z: float = Z95
) -> Interval | None:
    """percentile(b) − percentile(a); each standard error is its interval's width over 2z
    (None: either has no values)."""
    ia = percentile_interval(a, p, z)
    ib = percentile_interval(b, p, z)
    if ia is None or ib is None:
        return None
    diff = ib.value - ia.value
    half = math.hypot(ia.high - ia.low, ib.high - ib.low) / 2
    return Interval(diff, diff - half, diff + half)
