"""`memory://`: per-process rate-limit state, the reference every other store agrees with.

A bucket is one dict entry: key -> `full_at` (a float), kept in least-recently-used order
(a bucket consumed from moves to the end). One lock makes each `acquire` atomic across
threads.

Memory tracks the keys active within their refill time, not every key ever seen:

- Full buckets are evicted as the store is used, least recently used first, at a pace
  tied to new keys: an acquire owes 1 unit of eviction work and a new bucket
  `NEW_KEY_DEBT` more; every `EVICT_EVERY` units, `EVICT_SLICE` keys are examined. So
  each new key pays for two keys examined, whatever the arrival rate, and a table that
  only ever sees new keys stays within about twice the keys still refilling, plus a
  slice. A full bucket is the same as none, so eviction never changes a decision.
- `max_keys` (`memory://?max_keys=N`, default `DEFAULT_MAX_KEYS`) bounds the table: past
  it, the least recently used buckets are dropped, full ones first, down to `max_keys`
  less `1/TRIM_BATCH` of it (in one pass, so a flood of new keys pays for it in batches).
  A dropped bucket that was not full hands its used quota back; those are counted in
  `dropped_partial` (`policyctl_buckets_dropped_total` in the service's metrics).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterable, Sequence
from itertools import chain, islice

from engine.limits.stores.base import (
    EPSILON,
    TIME_SLACK_MS,
    AcquireResult,
    Adjustment,
    BucketCounts,
    ConfigurationError,
    Gauge,
    Outcome,
    Quota,
    Slots,
    Spec,
    settled,
)

# tuple.__new__ makes these named tuples without a Python-level __new__ call (hot path)
_outcome = functools.partial(tuple.__new__, Outcome)
_result = functools.partial(tuple.__new__, AcquireResult)

EVICT_EVERY = 1024  # units of eviction work (an acquire 1, a new bucket 1 + NEW_KEY_DEBT)
EVICT_SLICE = 256  # keys examined per slice: 1/4 key per acquire…
NEW_KEY_DEBT = 8  # …and 2 more per new bucket, so eviction outpaces any arrival of new keys
# About 200 B a bucket at most (bench/limits_bench.py measures ~170 B: key, float, dict
# slot): a million keys is ~200 MB, a fair share of a laptop, and more keys refilling at
# once than one process decides for in a window (~40k decisions/s, all new, for 25 s).
DEFAULT_MAX_KEYS = 1_000_000
TRIM_BATCH = 64  # past `max_keys`, drop down to `max_keys - max_keys // TRIM_BATCH`


def memory_url_options(url: str) -> int:
    """`max_keys` of a `memory://?max_keys=N` URL (the default without one). A
    ConfigurationError names anything else the query holds, or a bad number."""
    _, _, query = url.partition("?")
    max_keys = DEFAULT_MAX_KEYS
    for part in query.split("&") if query else ():
        name, eq, value = part.partition("=")
        if name != "max_keys" or not eq:
            raise ConfigurationError(
                f"unknown option `{part}` in the state store URL `{url}` (memory takes"
                " `max_keys=N`)"
            )
        try:
            max_keys = int(value.replace("_", ""))
        except ValueError:
            max_keys = 0
        if max_keys < 1:
            raise ConfigurationError(
                f"`max_keys` must be a whole number of keys, 1 or more, got `{value}` in `{url}`"
            )
    return max_keys


class MemoryStore:
    persistent = False  # nothing to write back: logs stay with the limiter

    def __init__(self, url: str = "memory://", *, max_keys: int | None = None) -> None:
        self.url = url
        if max_keys is None:  # from a `memory://?max_keys=N` URL, else the default
            max_keys = memory_url_options(url) if url.startswith("memory://") else DEFAULT_MAX_KEYS
        self.max_keys = max_keys
        if self.max_keys < 1:
            raise ConfigurationError(f"`max_keys` must be 1 or more, got {self.max_keys}")
        # key -> full_at, least recently used first (a bucket consumed from moves last)
        self._full_at: dict[str, float] = {}
        self._quotas: dict[tuple[str, str], Quota] = {}
        # in-flight gauges: key -> {lease: expires_at ms}; lease -> the gauge keys it holds
        self._slots: dict[str, dict[str, float]] = {}
        self._leases: dict[str, list[str]] = {}
        self._lock = threading.RLock()
        self._since_evict = 0  # eviction work owed (see EVICT_EVERY)
        self._evict_cursor: list[str] = []  # keys left to examine, least recent last
        self.evicted = 0  # full buckets deleted as the store is used
        self.dropped_full = 0  # full buckets dropped past `max_keys`
        self.dropped_partial = 0  # buckets not full dropped past `max_keys` (quota given back)
        # The one-pass `acquire` applies unless a subclass changes a step of `acquire_stepwise`
        # (DuckDB does: it tracks the buckets it must write back). Callers may use
        # `consume_all` in place of `acquire` (the limiter does) only when `one_pass`:
        # neither is changed either.
        cls = type(self)
        self._plain_steps = (
            cls._check is MemoryStore._check
            and cls._take is MemoryStore._take
            and cls._take_all is MemoryStore._take_all
            and cls._maybe_evict is MemoryStore._maybe_evict
        )
        self.one_pass = (
            self._plain_steps
            and cls.acquire is MemoryStore.acquire
            and cls.consume_all is MemoryStore.consume_all
        )

    def acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
    ) -> AcquireResult:
        if not consume or not self._plain_steps:
            return self.acquire_stepwise(shared, options, now, consume=consume)
        # The common case in one pass: the shared buckets and the first option all have
        # room. Otherwise nothing has changed, and `acquire_stepwise` decides.
        if options == ():  # no per-candidate buckets (a tuple: not an iterator to advance)
            if len(shared) == 1:  # one bucket: `consume_all` inlined
                spec = shared[0]
                key = spec[0]
                table = self._full_at
                with self._lock:
                    full_at = table.get(key)
                    have = spec[1]
                    if full_at is not None and full_at > now:
                        have -= (full_at - now) * spec[2]
                        start = full_at
                    else:
                        start = now
                    if have + EPSILON + spec[2] * TIME_SLACK_MS >= spec[3]:
                        if full_at is None:
                            self._since_evict += NEW_KEY_DEBT
                        else:
                            del table[key]  # consumed from: moves last (most recent)
                        table[key] = new = start + spec[3] / spec[2]
                        self._since_evict += 1
                        if self._since_evict >= EVICT_EVERY:
                            self._evict_slice(now)
                        elif full_at is None and len(table) > self.max_keys:
                            self._trim(now)
                        return _result((0, (_outcome((spec, have, True, new)),), None))
                    return self.acquire_stepwise(shared, options, now, consume=consume)
            specs = shared
        else:
            rest = iter(options)
            first = next(rest, None)
            if first is None:
                specs, options = shared, ()
            else:
                specs, options = [*shared, *first], chain((first,), rest)
        taken = self.consume_all(specs, now)
        if taken is None:
            return self.acquire_stepwise(shared, options, now, consume=consume)
        haves, fulls = taken
        outcomes: list[Outcome] = []
        i = 0
        for spec in specs:
            outcomes.append(_outcome((spec, haves[i], True, fulls[i])))
            i += 1  # noqa: SIM113
        return _result((0, tuple(outcomes), None))

    def consume_all(
        self, specs: Sequence[tuple[str, float, float, float]], now: float
    ) -> tuple[list[float], list[float]] | None:
        """Consume every bucket if all have room: (tokens available before, `full_at`
        after) per spec. None when one lacks room, and then nothing has changed.

        What `acquire` does for one option, without building outcomes; the limiter calls
        it directly on a plain memory store (`one_pass`), with plain tuples as specs."""
        table = self._full_at
        get = table.get
        pop = table.pop
        with self._lock:
            haves: list[float] = []
            keep = haves.append
            for key, have, rate, cost in specs:  # `have`: the capacity, less what is used
                full_at = get(key)
                if full_at is not None and full_at > now:
                    have -= (full_at - now) * rate
                if not have + EPSILON + rate * TIME_SLACK_MS >= cost:
                    return None
                keep(have)
            fulls: list[float] = []
            keep = fulls.append
            fresh = 0
            for key, _, rate, cost in specs:
                # read again (the same bucket may come twice), and out: it goes back last
                full_at = pop(key, None)
                if full_at is None:
                    fresh += 1
                    full_at = now
                elif full_at < now:
                    full_at = now
                table[key] = new = full_at + cost / rate
                keep(new)
            owed = self._since_evict + 1 + fresh * NEW_KEY_DEBT
            self._since_evict = owed
            if owed >= EVICT_EVERY:
                self._evict_slice(now)
            elif fresh and len(table) > self.max_keys:
                self._trim(now)
            return haves, fulls

    def acquire_stepwise(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
    ) -> AcquireResult:
        """`acquire` through the overridable steps (`_check`, `_take`, `_maybe_evict`),
        without the one-pass attempt: for a caller whose `consume_all` just found a bucket
        without room (the limiter, on a `one_pass` store)."""
        with self._lock:
            shared_out, failed = self._check(shared, now)
            if failed is not None:
                return _result((None, tuple(shared_out), failed))
            last: list[Outcome] = []
            tried = False
            for index, option in enumerate(options):
                tried = True
                last, failed = self._check(option, now)
                if failed is None:
                    taken = shared_out + last
                    if consume:
                        taken = self._take_all(taken, now)
                    self._maybe_evict(now)
                    return _result((index, tuple(taken), None))
            if not tried:  # no per-candidate buckets at all: the shared ones decide
                taken = self._take_all(shared_out, now) if consume else shared_out
                self._maybe_evict(now)
                return _result((0, tuple(taken), None))
            return _result((None, tuple(shared_out + last), failed))

    def _check(self, specs: Sequence[Spec], now: float) -> tuple[list[Outcome], Outcome | None]:
        """Each bucket's tokens at `now`; stops at the first without room."""
        table = self._full_at
        out: list[Outcome] = []
        for spec in specs:
            full_at = table.get(spec[0])
            have = spec[1]
            if full_at is None or full_at <= now:  # full: as if evicted (reported full at now)
                full_at = now
            else:
                have -= (full_at - now) * spec[2]
            fits = have + EPSILON + spec[2] * TIME_SLACK_MS >= spec[3]
            outcome = _outcome((spec, have, fits, full_at))
            out.append(outcome)
            if not outcome[2]:
                return out, outcome
        return out, None

    def _take_all(self, outcomes: list[Outcome], now: float) -> list[Outcome]:
        return [self._take(o, now) for o in outcomes]

    def _take(self, outcome: Outcome, now: float) -> Outcome:
        spec = outcome[0]
        full_at = self._full_at.pop(spec[0], None)  # out: it goes back last (most recent)
        if full_at is None:
            self._since_evict += NEW_KEY_DEBT
        start = now if full_at is None or full_at < now else full_at
        new = start + spec[3] / spec[2]
        self._full_at[spec[0]] = new
        return _outcome((spec, outcome[1], outcome[2], new))

    def _maybe_evict(self, now: float) -> None:
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._evict_slice(now)
        elif len(self._full_at) > self.max_keys:
            self._trim(now)

    def _evict_slice(self, now: float) -> None:
        """Delete the full buckets among the next `EVICT_SLICE` keys of a pass over the
        table (least recently used first); past `max_keys`, trim."""
        self._since_evict = 0
        cursor = self._evict_cursor
        if not cursor:
            cursor = self._evict_cursor = list(reversed(self._full_at))  # oldest last
        batch = cursor[-EVICT_SLICE:]
        del cursor[-EVICT_SLICE:]
        table = self._full_at
        get = table.get
        evicted = 0
        for key in batch:
            full_at = get(key)
            if full_at is not None and full_at <= now:
                del table[key]
                evicted += 1
        self.evicted += evicted
        if len(table) > self.max_keys:
            self._trim(now)

    def _trim(self, now: float) -> None:
        """Past `max_keys`: drop the least recently used buckets, full ones first, down to
        `max_keys` less a batch. Looks at the oldest twice as many as it must drop: the full
        ones among them go, then the oldest of the others, counted in `dropped_partial`."""
        table = self._full_at
        excess = len(table) - (self.max_keys - self.max_keys // TRIM_BATCH)
        if excess <= 0:
            return
        oldest = list(islice(table.items(), 2 * excess))
        partial: list[str] = []
        dropped = 0
        for key, full_at in oldest:
            if full_at <= now:
                del table[key]
                dropped += 1
            elif len(partial) < excess:
                partial.append(key)
        self.dropped_full += dropped
        if dropped < excess:
            for key in partial[: excess - dropped]:
                del table[key]
            self.dropped_partial += min(len(partial), excess - dropped)

    # ------------------------------------------------------------------ in-flight slots

    def _live(self, key: str, now: float) -> dict[str, float]:
        """A gauge's leases, the expired ones dropped (the caller holds the lock)."""
        held = self._slots.get(key)
        if held is None:
            return {}
        expired = [lease for lease, at in held.items() if at <= now]
        for lease in expired:
            del held[lease]
            keys = self._leases.get(lease)
            if keys is not None:
                with contextlib.suppress(ValueError):
                    keys.remove(key)
                if not keys:
                    del self._leases[lease]
        if not held:
            del self._slots[key]
        return held

    def take_slots(
        self, gauges: Sequence[Gauge], lease: str, now: float, *, consume: bool = True
    ) -> Slots:
        with self._lock:
            counts: list[int] = []
            for index, gauge in enumerate(gauges):
                held = self._live(gauge[0], now)
                counts.append(len(held))
                if len(held) >= gauge[1] or lease in held:
                    return Slots(tuple(counts), index, min(held.values(), default=None))
            if consume:
                keys = self._leases.setdefault(lease, [])
                for gauge in gauges:
                    self._slots.setdefault(gauge[0], {})[lease] = gauge[2]
                    keys.append(gauge[0])
            return Slots(tuple(counts), None, None)

    def release_slots(self, lease: str) -> int:
        with self._lock:
            keys = self._leases.pop(lease, None)
            released = 0
            for key in keys or ():
                held = self._slots.get(key)
                if held is not None and held.pop(lease, None) is not None:
                    released += 1
                    if not held:
                        del self._slots[key]
            return released

    def inflight(self, now: float, prefix: str = "") -> list[tuple[str, int]]:
        with self._lock:
            keys = [k for k in self._slots if k.startswith(prefix)]
            return sorted((k, n) for k in keys if (n := len(self._live(k, now))))

    # ------------------------------------------------------------------ settlement

    def settle(self, adjustments: Sequence[Adjustment], now: float) -> list[float]:
        with self._lock:
            return [self._settle(adjustment, now) for adjustment in adjustments]

    def _settle(self, adjustment: Adjustment, now: float) -> float:
        """One bucket adjusted (the caller holds the lock); the delta applied."""
        key = adjustment[0]
        new, applied = settled(self._full_at.get(key), adjustment[2], adjustment[3], now)
        if new is None:
            self._full_at.pop(key, None)
        else:
            self._full_at[key] = new
        return applied

    def bucket_counts(self) -> BucketCounts:
        """How many buckets are held, the bound, and what went to keep it."""
        with self._lock:
            return BucketCounts(
                len(self._full_at), self.max_keys, self.evicted, self.dropped_full,
                self.dropped_partial,
            )  # fmt: skip

    def peek(self, key: str) -> float | None:
        return self._full_at.get(key)

    def buckets(self, prefix: str = "") -> list[tuple[str, float]]:
        with self._lock:
            return sorted((k, v) for k, v in self._full_at.items() if k.startswith(prefix))

    def reset(self, prefix: str) -> int:
        with self._lock:
            keys = [k for k in self._full_at if k.startswith(prefix)]
            for k in keys:
                del self._full_at[k]
            return len(keys)

    def evict(self, now: float) -> int:
        with self._lock:
            keys = [k for k, v in self._full_at.items() if v <= now]
            for k in keys:
                del self._full_at[k]
            self._evict_cursor = []
            return len(keys)

    def __len__(self) -> int:
        return len(self._full_at)

    def quotas(self) -> list[Quota]:
        with self._lock:
            return sorted(self._quotas.values(), key=lambda q: (q.scope, q.key))

    def set_quota(self, quota: Quota) -> None:
        with self._lock:
            self._quotas[(quota.scope, quota.key)] = quota

    def remove_quota(self, scope: str, key: str) -> bool:
        with self._lock:
            return self._quotas.pop((scope, key), None) is not None

    def flush(self, **logs: object) -> None:
        """Nothing to write: memory state lives and dies with the process."""

    def close(self) -> None:
        pass
