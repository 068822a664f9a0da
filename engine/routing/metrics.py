"""What routing knows about past outcomes, per provider/model, over a sliding window.

`MetricsView` is the read interface the evaluator uses; `NoMetrics` means nothing measured
(catalog priors stand everywhere). `LiveMetrics` is the in-memory window:

- latency percentiles from a log-bucketed histogram (the DDSketch mapping): bucket i holds
  values in (γ^(i-1), γ^i] with γ = (1+α)/(1-α); reporting 2γ^i/(γ+1) for a bucket puts
  every quantile within a relative error α = 1% of a value of that rank — a stated bound,
  not a multiple of the mean;
- the window is cut into `SLICES` time slices; an outcome updates its slice and the running
  window totals in O(1); a slice that leaves the window is subtracted whole;
- success rate, average cost and count come from the same totals;
- consecutive failures and the time of the last one, for cooldown (the evaluator decides,
  with the route's `cooldown after N failures for D`).

Percentiles are recomputed from the totals lazily: when at least 1% more outcomes arrived
since the last computation, or a second of the clock has passed.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
_ceil = math.ceil
_log = math.log
MIN_LATENCY_MS = 0.01  # smaller values share the lowest bucket
SLICES = 24


@dataclass(frozen=True, slots=True)
class ModelStats:
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    success_rate: float
    avg_cost: float
    consecutive_failures: int = 0
    last_failure_at: float = 0.0  # epoch seconds
    last_outcome_at: float = 0.0  # epoch seconds: an unhealthy model is probed again later


class MetricsView(Protocol):
    @property
    def has_data(self) -> bool:
        """False while nothing at all has been measured (routing can skip asking)."""
        ...

    def stats(self, model_key: str) -> ModelStats | None:
        """Measurements for `provider/model` over the window, or None if there are none."""
        ...


@runtime_checkable
class RecordingMetrics(MetricsView, Protocol):
    """A view that takes outcomes (`PolicyEngine.record`, the warm start): `LiveMetrics`,
    `SharedMetrics`. Checked with `isinstance` once, when an engine is made."""

    def record(
        self,
        model_key: str,
        latency_ms: float,
        success: bool,
        cost: float = 0.0,
        at: float | None = None,
    ) -> None: ...


@runtime_checkable
class ClosableMetrics(MetricsView, Protocol):
    """A view holding a connection or a thread to close with the engine: `SharedMetrics`."""

    def close(self) -> None: ...


class NoMetrics:
    """Nothing measured yet: every model routes on its catalog priors."""

    has_data = False

    def stats(self, model_key: str) -> ModelStats | None:
        return None


def bucket_of(latency_ms: float) -> int:
    return math.ceil(math.log(max(latency_ms, MIN_LATENCY_MS)) / _LOG_GAMMA)


def value_of(bucket: int) -> float:
    return 2 * GAMMA**bucket / (GAMMA + 1)


@dataclass
class _Slice:
    start: float  # epoch seconds
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    ok: int = 0
    cost: float = 0.0


@dataclass
class _Series:
    slices: deque[_Slice] = field(default_factory=deque)
    counts: dict[int, int] = field(default_factory=dict)  # window totals
    n: int = 0
    ok: int = 0
    cost: float = 0.0
    consecutive_failures: int = 0
    last_failure_at: float = 0.0
    last_outcome_at: float = 0.0
    cached: ModelStats | None = None
    cached_n: int = -1
    cached_at: float = 0.0
    changes: int = 0  # outcomes since the cache was computed


def quantile(counts: dict[int, int], n: int, q: float) -> float:
    """The value at rank ceil(q·n) (1-based) of a histogram, within the relative accuracy."""
    rank = max(1, math.ceil(q * n))
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank:
            return value_of(bucket)
    return value_of(max(counts))  # pragma: no cover - rank <= n


class LiveMetrics:
    """The in-memory sliding window per provider/model. Thread-safe; O(1) to record."""

    def __init__(self, window_s: float = 86_400.0, clock: object = None) -> None:
        import time

        self.window_s = window_s
        self.slice_s = window_s / SLICES
        self.clock = clock if callable(clock) else time.time
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()

    def record(
        self,
        model_key: str,
        latency_ms: float,
        success: bool,
        cost: float = 0.0,
        at: float | None = None,
    ) -> None:
        now = self.clock() if at is None else at
        start = now - now % self.slice_s
        floor = latency_ms if latency_ms > MIN_LATENCY_MS else MIN_LATENCY_MS
        bucket = _ceil(_log(floor) / _LOG_GAMMA)  # bucket_of, inlined: the hot path
        with self._lock:
            series = self._series.get(model_key)
            if series is None:
                series = self._series[model_key] = _Series()
            slices = series.slices
            if not slices or slices[-1].start < start:
                slices.append(_Slice(start))
                self._expire(series, now)
                current = slices[-1]
            elif slices[-1].start == start:
                current = slices[-1]
            else:  # an outcome from the past (an import): find or make its slice
                if now < self.clock() - self.window_s:
                    return  # older than the window: nothing to count
                current = self._slice_for(series, start)
            current.counts[bucket] = current.counts.get(bucket, 0) + 1
            current.n += 1
            current.cost += cost
            series.counts[bucket] = series.counts.get(bucket, 0) + 1
            series.n += 1
            series.cost += cost
            if success:
                current.ok += 1
                series.ok += 1
                series.consecutive_failures = 0
            else:
                series.consecutive_failures += 1
                series.last_failure_at = max(series.last_failure_at, now)
            series.changes += 1
            series.last_outcome_at = max(series.last_outcome_at, now)

    def _slice_for(self, series: _Series, start: float) -> _Slice:
        for item in series.slices:
            if item.start == start:
                return item
        made = _Slice(start)
        series.slices.append(made)
        series.slices = deque(sorted(series.slices, key=lambda s: s.start))
        return made

    def _expire(self, series: _Series, now: float) -> None:
        horizon = now - self.window_s
        slices = series.slices
        while slices and slices[0].start + self.slice_s <= horizon:
            old = slices.popleft()
            for bucket, count in old.counts.items():
                left = series.counts[bucket] - count
                if left:
                    series.counts[bucket] = left
                else:
                    del series.counts[bucket]
            series.n -= old.n
            series.ok -= old.ok
            series.cost -= old.cost
            series.changes += old.n

    def stats(self, model_key: str) -> ModelStats | None:
        series = self._series.get(model_key)
        if series is None:
            return None
        now = self.clock()
        cached = series.cached
        if (
            cached is not None
            and series.changes * 100 < max(series.n, 1)
            and now - series.cached_at < 1.0
            and cached.consecutive_failures == series.consecutive_failures
            and cached.last_outcome_at == series.last_outcome_at
        ):
            return cached
        with self._lock:
            if series.slices and series.slices[0].start + self.slice_s <= now - self.window_s:
                self._expire(series, now)
            n = series.n
            if n <= 0:
                stats = ModelStats(
                    0, 0.0, 0.0, 0.0, 1.0, 0.0,
                    series.consecutive_failures, series.last_failure_at, series.last_outcome_at,
                )  # fmt: skip
            else:
                stats = ModelStats(
                    samples=n,
                    p50_ms=quantile(series.counts, n, 0.50),
                    p95_ms=quantile(series.counts, n, 0.95),
                    p99_ms=quantile(series.counts, n, 0.99),
                    success_rate=series.ok / n,
                    avg_cost=series.cost / n,
                    consecutive_failures=series.consecutive_failures,
                    last_failure_at=series.last_failure_at,
                    last_outcome_at=series.last_outcome_at,
                )
            series.cached = stats
            series.cached_at = now
            series.changes = 0
            return stats

    @property
    def has_data(self) -> bool:
        return bool(self._series)

    def keys(self) -> list[str]:
        return sorted(self._series)
