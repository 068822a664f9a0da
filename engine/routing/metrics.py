"""What routing knows about past outcomes, per provider/model, over a sliding window.

`MetricsView` is the read interface the evaluator uses; `NoMetrics` means nothing measured
(catalog priors stand everywhere). `LiveMetrics` is the in-memory window:

- latency percentiles from a log-bucketed histogram (the DDSketch mapping): bucket i holds
  values in (γ^(i-1), γ^i] with γ = (1+α)/(1-α); reporting 2γ^i/(γ+1) for a bucket puts
  every quantile within a relative error α = 1% of a value of that rank — a stated bound,
  not a multiple of the mean;
- the window is cut into `SLICES` time slices; an outcome updates its slice and the running
  window totals in O(1); a slice that leaves the window is subtracted whole;
- `record()` of the usual outcome (a success in the newest slice, ending no run of
  failures) appends its latency to its model's pending list and adds its cost, nothing
  more: pending latencies are bucketed in bulk (`PENDING_LATENCIES` at a time, or when the
  model's stats are computed or a slice starts or leaves), so the hot path computes no
  logarithm and touches no histogram;
- success rate, average cost and count come from the same totals;
- consecutive failures and the time of the last one, for cooldown (the evaluator decides,
  with the route's `cooldown after N failures for D`).

Routing reads a `MetricsSnapshot`: every model's `ModelStats` at one time, rebuilt at most
every `refresh_ms` of the clock (`DEFAULT_REFRESH_MS`, 250 ms), so a decision may see
measurements up to that old; `refresh_ms=0` rebuilds whenever anything changed (always
fresh). A rebuild recomputes only the models with outcomes (or expired slices) since the
last one, each in one walk of its histogram for all three percentiles (its buckets' sorted
order kept: a bucket that appears is inserted in it; one that empties has them sorted
again). Failure counts are the exception: a failure, or a success ending a run of
failures, reaches the next decision's snapshot at once (cooldown never waits), the model's
other figures staying as they were. `stats(key)` and `refresh()` are the exact reads: they
rebuild first if anything changed.
"""

from __future__ import annotations

import math
import threading
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Any, Protocol, runtime_checkable

RELATIVE_ACCURACY = 0.01
GAMMA = (1 + RELATIVE_ACCURACY) / (1 - RELATIVE_ACCURACY)
_LOG_GAMMA = math.log(GAMMA)
_ceil = math.ceil
_log = math.log
MIN_LATENCY_MS = 0.01  # smaller values share the lowest bucket
SLICES = 24
PENDING_LATENCIES = 16  # successes noted per newest slice before they are bucketed in bulk
DEFAULT_REFRESH_MS = 250.0  # a decision reads measurements at most this old (docs/metrics.md)
PERCENTILES = (0.50, 0.95, 0.99)  # what ModelStats reports, ascending
_NOTHING_YET = -math.inf  # the time of the empty snapshot a window starts with
_NO_SLICE = math.nan  # a series' `start` while it has no slice (equal to no start)

# Walks of a histogram for percentiles (one per model per rebuild), counted so tests can
# check that a decision does not sort histograms (`quantiles`).
percentile_passes = 0


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


class MetricsSnapshot:
    """Every measured model's `ModelStats` at one time (`taken_at`, the metrics' clock): what
    one decision reads, whole. `routes` is where the evaluator keeps what it derived from
    these stats per route (its measured columns); a new snapshot starts it empty."""

    __slots__ = ("health_keys", "parent", "routes", "stats", "taken_at")

    def __init__(
        self,
        stats: dict[str, ModelStats],
        taken_at: float,
        parent: MetricsSnapshot | None = None,
        health_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.stats = stats
        self.taken_at = taken_at
        self.routes: dict[int, Any] = {}
        # a snapshot that differs from `parent` only in the failure counts and times of
        # `health_keys`: what was derived from the parent can be patched, not rebuilt
        self.parent = parent
        self.health_keys = health_keys


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
class SnapshotMetrics(MetricsView, Protocol):
    """A view that hands out whole snapshots (`LiveMetrics`, `SharedMetrics`): the evaluator
    reads one per decision and routes on columns built once per snapshot."""

    def snapshot(self) -> MetricsSnapshot: ...


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


@dataclass(slots=True)
class _Slice:
    start: float  # epoch seconds
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    failed: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class _Series:
    """One model's window: its slices, oldest first, and their totals. The successes
    `record()` took in the newest slice since the last `_settle` wait in `pending` (their
    latencies) and `pending_cost`, in neither the slice nor the totals yet."""

    slices: deque[_Slice] = field(default_factory=deque)
    counts: dict[int, int] = field(default_factory=dict)  # window totals
    n: int = 0
    failed: int = 0
    cost: float = 0.0
    consecutive_failures: int = 0
    last_failure_at: float = 0.0
    last_outcome_at: float = 0.0
    dirty: bool = True  # outcomes (or an expired slice) since its stats were computed
    start: float = _NO_SLICE  # the newest slice's start (`_NO_SLICE`: none)
    pending: list[float] = field(default_factory=list)
    pending_cost: float = 0.0
    # the first len(buckets) of `counts`' buckets (in its order) sorted: a bucket that
    # appears joins the dict's end, to be merged in when the stats are next computed (None:
    # to sort again, as after a bucket left)
    buckets: list[int] | None = None


def _settle(series: _Series) -> None:
    """The pending successes into the newest slice and the totals, in one loop."""
    pending = series.pending
    if not pending:
        return
    newest = series.slices[-1]
    totals, counts = series.counts, newest.counts
    log, ceil, log_gamma, least = _log, _ceil, _LOG_GAMMA, MIN_LATENCY_MS
    for latency in pending:
        bucket = ceil(log(latency if latency > least else least) / log_gamma)  # `bucket_of`
        totals[bucket] = totals.get(bucket, 0) + 1
        counts[bucket] = counts.get(bucket, 0) + 1
    taken = len(pending)
    newest.n += taken
    series.n += taken
    newest.cost += series.pending_cost
    series.cost += series.pending_cost
    series.pending_cost = 0.0
    pending.clear()
    series.dirty = True


def quantiles(
    counts: dict[int, int],
    n: int,
    qs: tuple[float, ...] = PERCENTILES,
    buckets: list[int] | None = None,
) -> tuple[float, ...]:
    """The values at ranks ceil(q·n) (1-based) of a histogram for each q of `qs` (ascending),
    within the relative accuracy: one walk of the sorted buckets for all of them. `buckets`:
    `sorted(counts)`, if the caller kept it."""
    global percentile_passes
    percentile_passes += 1
    if buckets is None:
        buckets = sorted(counts)
    running = list(accumulate(map(counts.__getitem__, buckets)))  # outcomes up to each bucket
    last = len(buckets) - 1
    # the first bucket whose running count reaches the rank (the last, should rank exceed n)
    return tuple(
        value_of(buckets[min(bisect_left(running, max(1, _ceil(q * n))), last)]) for q in qs
    )


_P50, _P95, _P99 = PERCENTILES


def _percentiles(counts: dict[int, int], n: int, buckets: list[int]) -> tuple[float, float, float]:
    """`quantiles(counts, n, PERCENTILES, buckets)`, the same values, in one walk with the
    three ranks spelled out (a rebuild does this for every model with new outcomes)."""
    global percentile_passes
    percentile_passes += 1
    running = list(accumulate(map(counts.__getitem__, buckets)))  # outcomes up to each bucket
    last = len(buckets) - 1
    ceil, gamma = _ceil, GAMMA
    a = buckets[min(bisect_left(running, max(1, ceil(_P50 * n))), last)]
    b = buckets[min(bisect_left(running, max(1, ceil(_P95 * n))), last)]
    c = buckets[min(bisect_left(running, max(1, ceil(_P99 * n))), last)]
    # `value_of` of each, the same operations
    return (2 * gamma**a / (gamma + 1), 2 * gamma**b / (gamma + 1), 2 * gamma**c / (gamma + 1))


def quantile(counts: dict[int, int], n: int, q: float) -> float:
    """The value at rank ceil(q·n) (1-based) of a histogram, within the relative accuracy."""
    return quantiles(counts, n, (q,))[0]


class LiveMetrics:
    """The in-memory sliding window per provider/model. Thread-safe; O(1) to record.

    `refresh_ms`: how old the snapshot a decision reads may be (`DEFAULT_REFRESH_MS`); 0 makes
    every read see every outcome recorded before it. `clock`: epoch seconds (tests pass a
    fake one, which makes the staleness exact: a snapshot is rebuilt when the clock has moved
    at least `refresh_ms` since it was taken, or went back)."""

    def __init__(
        self,
        window_s: float = 86_400.0,
        clock: object = None,
        refresh_ms: float = DEFAULT_REFRESH_MS,
    ) -> None:
        import time

        if not refresh_ms >= 0:
            raise ValueError(f"refresh_ms must be 0 or more, not {refresh_ms!r}")
        self.window_s = window_s
        self.slice_s = window_s / SLICES
        self.refresh_ms = refresh_ms
        self._refresh_s = refresh_ms / 1000.0
        self.clock = clock if callable(clock) else time.time
        self._series: dict[str, _Series] = {}
        self._lock = threading.Lock()
        self._snapshot = MetricsSnapshot({}, _NOTHING_YET)
        self._dirty = False  # any outcome since the snapshot was built
        self._health_dirty = False  # a failure, or a success ending failures, since then
        self._health_keys: set[str] = set()  # the models those outcomes were for
        self.rebuilds = 0  # snapshots built with something new in them
        self.recomputed = 0  # models whose stats a rebuild computed again
        self.bucket_sorts = 0  # histograms whose buckets a computation sorted whole
        self.health_updates = 0  # snapshots given fresh failure counts between rebuilds

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
        lock = self._lock
        lock.acquire()  # (`with` costs twice as much: its __exit__ call takes three arguments)
        try:
            series = self._series.get(model_key)
            if (
                success
                and series is not None
                and series.start == start
                and not series.consecutive_failures
            ):  # the usual outcome: a success in the newest slice, ending no run of failures
                pending = series.pending
                pending.append(latency_ms)  # bucketed in bulk (`_settle`)
                series.pending_cost += cost
                if now > series.last_outcome_at:
                    series.last_outcome_at = now
                self._dirty = True
                if len(pending) >= PENDING_LATENCIES:
                    _settle(series)
                return
            self._add(model_key, series, now, start, latency_ms, success, cost)
        finally:
            lock.release()

    def _add(
        self,
        model_key: str,
        series: _Series | None,
        now: float,
        start: float,
        latency_ms: float,
        success: bool,
        cost: float,
    ) -> None:
        """`record` of any other outcome (the lock held): a new model or slice, a past slice,
        a failure or a success ending a run of failures."""
        if series is None:
            series = self._series[model_key] = _Series()
        else:
            _settle(series)
        slices = series.slices
        current = slices[-1] if slices else None
        if current is None or current.start < start:
            slices.append(_Slice(start))
            series.start = start
            self._expire(series, now)
            current = slices[-1]
        elif current.start != start:  # an outcome from the past (an import)
            if now < self.clock() - self.window_s:
                return  # older than the window: nothing to count
            current = self._slice_for(series, start)
        bucket = _ceil(
            _log(latency_ms if latency_ms > MIN_LATENCY_MS else MIN_LATENCY_MS) / _LOG_GAMMA
        )
        counts = current.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        current.n += 1
        current.cost += cost
        counts = series.counts
        counts[bucket] = counts.get(bucket, 0) + 1
        series.n += 1
        series.cost += cost
        if success:
            if series.consecutive_failures:  # the circuit closes: no waiting for it
                series.consecutive_failures = 0
                self._health_keys.add(model_key)
                self._health_dirty = True
        else:
            current.failed += 1
            series.failed += 1
            series.consecutive_failures += 1
            if now > series.last_failure_at:
                series.last_failure_at = now
            self._health_keys.add(model_key)
            self._health_dirty = True
        if now > series.last_outcome_at:
            series.last_outcome_at = now
        series.dirty = True
        self._dirty = True

    def _slice_for(self, series: _Series, start: float) -> _Slice:
        """The slice starting at `start`, older than the newest (made if there is none)."""
        for item in series.slices:
            if item.start == start:
                return item
        made = _Slice(start)
        series.slices.append(made)
        series.slices = deque(sorted(series.slices, key=lambda s: s.start))
        return made

    def _expire(self, series: _Series, now: float) -> None:
        """Slices older than the window leave it (the pending successes settled first)."""
        horizon = now - self.window_s
        slices = series.slices
        if not slices or slices[0].start + self.slice_s > horizon:
            return
        _settle(series)
        totals = series.counts
        while slices and slices[0].start + self.slice_s <= horizon:
            old = slices.popleft()
            for bucket, count in old.counts.items():
                left = totals[bucket] - count
                if left:
                    totals[bucket] = left
                else:
                    del totals[bucket]
                    series.buckets = None
            series.n -= old.n
            series.failed -= old.failed
            series.cost -= old.cost
            series.dirty = True
        if not slices:
            series.start = _NO_SLICE

    def snapshot(self) -> MetricsSnapshot:
        """What a decision reads: the last snapshot while it is less than `refresh_ms` old
        by the clock, else a rebuilt one (`refresh`)."""
        snap = self._snapshot
        now = self.clock()
        if 0.0 <= now - snap.taken_at < self._refresh_s:
            if self._health_dirty:
                return self._health_update()
            return snap
        return self.refresh(now)

    def _health_update(self) -> MetricsSnapshot:
        """The snapshot with the failure counts and times of now (cooldown never waits for a
        refresh), the rest as it was; a model new since then gets its stats whole. Only the
        models whose counts moved get new stats: the others' are the same objects."""
        with self._lock:
            snap = self._snapshot
            stats = snap.stats.copy()
            keys = self._health_keys
            self._health_keys = set()
            self._health_dirty = False
            self.health_updates += 1
            parent: MetricsSnapshot | None = snap  # None: a model's stats computed whole
            found = self._series.get
            for key in keys:  # only the models whose failure counts moved
                series = found(key)
                if series is None:
                    continue
                old = stats.get(key)
                if old is None:
                    stats[key] = self._computed(series)
                    parent = None
                else:
                    stats[key] = ModelStats(
                        old.samples, old.p50_ms, old.p95_ms, old.p99_ms, old.success_rate,
                        old.avg_cost, series.consecutive_failures, series.last_failure_at,
                        series.last_outcome_at,
                    )  # fmt: skip
            snap.parent = None  # one generation back at most: no chain of old snapshots
            snap = self._snapshot = MetricsSnapshot(stats, snap.taken_at, parent, frozenset(keys))
            return snap

    def refresh(self, now: float | None = None) -> MetricsSnapshot:
        """The snapshot as of `now` (default: the clock): slices older than the window leave,
        the models with anything new get their stats computed again, the others keep theirs.
        Nothing new: the same snapshot (and what the evaluator built from it) stays."""
        if now is None:
            now = self.clock()
        with self._lock:
            snap = self._snapshot
            horizon = now - self.window_s
            changed = self._dirty
            for series in self._series.values():
                slices = series.slices
                if slices and slices[0].start + self.slice_s <= horizon:
                    self._expire(series, now)
                    changed = changed or series.dirty
            if not changed:
                snap.taken_at = now
                return snap
            stats = dict(snap.stats)
            for key, series in self._series.items():
                if series.dirty or series.pending:
                    stats[key] = self._computed(series)
            self._dirty = self._health_dirty = False
            self._health_keys.clear()
            self.rebuilds += 1
            snap = self._snapshot = MetricsSnapshot(stats, now)
            return snap

    def _computed(self, series: _Series) -> ModelStats:
        """A model's stats over its window (the lock held), pending successes settled."""
        _settle(series)
        self.recomputed += 1
        series.dirty = False
        n = series.n
        if n <= 0:
            return ModelStats(
                0, 0.0, 0.0, 0.0, 1.0, 0.0,
                series.consecutive_failures, series.last_failure_at, series.last_outcome_at,
            )  # fmt: skip
        counts = series.counts
        buckets = series.buckets
        if buckets is None:
            buckets = series.buckets = sorted(counts)
            self.bucket_sorts += 1
        elif len(buckets) != len(counts):  # buckets appeared: the dict's last ones
            for bucket in islice(counts, len(buckets), None):
                insort(buckets, bucket)
        p50, p95, p99 = _percentiles(counts, n, buckets)
        return ModelStats(
            n, p50, p95, p99, (n - series.failed) / n, series.cost / n,
            series.consecutive_failures, series.last_failure_at, series.last_outcome_at,
        )  # fmt: skip

    def stats(self, model_key: str) -> ModelStats | None:
        """The exact read (not the decision's): every outcome recorded so far counts."""
        if model_key not in self._series:
            return None
        return self.refresh().stats.get(model_key)

    @property
    def has_data(self) -> bool:
        return bool(self._series)

    def keys(self) -> list[str]:
        return sorted(self._series)
