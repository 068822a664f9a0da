"""The sliding windows alerts are computed over: per series (an alert, a key), the window
cut into slices, each holding a latency histogram (the live metrics' log buckets, so the
percentiles have the same 1% relative accuracy), outcome and success counts and a sum; a
slice that leaves the window is subtracted whole. Not thread-safe: the monitor's tick
thread is the only one that touches them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.routing.metrics import bucket_of, quantiles

SLICES = 30  # per window: a count `per 1m` is exact to 2 s


@dataclass(slots=True)
class _Slice:
    start: float
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    ok: int = 0
    total: float = 0.0


@dataclass(slots=True)
class Window:
    """One series' sliding window of `window_s` seconds."""

    window_s: float
    slices: deque[_Slice] = field(default_factory=deque)
    counts: dict[int, int] = field(default_factory=dict)
    n: int = 0
    ok: int = 0
    total: float = 0.0

    @property
    def slice_s(self) -> float:
        return self.window_s / SLICES

    def add(self, at: float, amount: float, latency_ms: float | None, ok: bool) -> None:
        """An event at `at` (epoch seconds): `amount` summed (a violation: 1; spend: the
        cost), its latency into the histogram, and whether it succeeded."""
        width = self.slice_s
        start = at - at % width
        slices = self.slices
        if slices and slices[-1].start == start:
            item = slices[-1]
        elif not slices or slices[-1].start < start:
            item = _Slice(start)
            slices.append(item)
        else:  # late: an event of a slice before the newest (an outcome given `at`)
            item = next((s for s in slices if s.start == start), None)  # type: ignore[assignment]
            if item is None:
                if start < slices[0].start:
                    return  # older than anything held: the window has passed it
                item = _Slice(start)
                slices.append(item)
                self.slices = deque(sorted(slices, key=lambda s: s.start))
        item.n += 1
        item.total += amount
        self.n += 1
        self.total += amount
        if ok:
            item.ok += 1
            self.ok += 1
        if latency_ms is not None:
            bucket = bucket_of(latency_ms)
            item.counts[bucket] = item.counts.get(bucket, 0) + 1
            self.counts[bucket] = self.counts.get(bucket, 0) + 1

    def expire(self, now: float) -> None:
        """Drop the slices wholly before `now - window_s`."""
        horizon = now - self.window_s
        width = self.slice_s
        slices = self.slices
        while slices and slices[0].start + width <= horizon:
            old = slices.popleft()
            self.n -= old.n
            self.ok -= old.ok
            self.total -= old.total
            for bucket, count in old.counts.items():
                left = self.counts[bucket] - count
                if left:
                    self.counts[bucket] = left
                else:
                    del self.counts[bucket]
        if not slices:
            self.n = self.ok = 0
            self.total = 0.0
            self.counts.clear()

    def percentile(self, q: float) -> float | None:
        if self.n <= 0 or not self.counts:
            return None
        return quantiles(self.counts, sum(self.counts.values()), (q,))[0]

    def success_rate(self) -> float | None:
        return None if self.n <= 0 else self.ok / self.n

    @property
    def empty(self) -> bool:
        return not self.slices
