"""`memory://`: per-process rate-limit state, the reference every other store agrees with.

A bucket is one dict entry: key -> `full_at` (a float). Full buckets are evicted as the
store is used (a slice of the table per `EVICT_EVERY` acquires), so idle keys cost nothing
for long. One lock makes each `acquire` atomic across threads.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Sequence
from itertools import chain

from engine.limits.stores.base import (
    EPSILON,
    AcquireResult,
    Outcome,
    Quota,
    Spec,
)

# tuple.__new__ makes these named tuples without a Python-level __new__ call (hot path)
_outcome = functools.partial(tuple.__new__, Outcome)
_result = functools.partial(tuple.__new__, AcquireResult)

EVICT_EVERY = 1024  # acquires between eviction slices
EVICT_SLICE = 256  # keys examined per slice


class MemoryStore:
    persistent = False  # nothing to write back: logs stay with the limiter

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._full_at: dict[str, float] = {}
        self._quotas: dict[tuple[str, str], Quota] = {}
        self._lock = threading.RLock()
        self._since_evict = 0
        self._evict_cursor: list[str] = []
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
                with self._lock:
                    full_at = self._full_at.get(key)
                    have = spec[1]
                    if full_at is not None and full_at > now:
                        have -= (full_at - now) * spec[2]
                        start = full_at
                    else:
                        start = now
                    if have + EPSILON >= spec[3]:
                        self._full_at[key] = new = start + spec[3] / spec[2]
                        self._since_evict += 1
                        if self._since_evict >= EVICT_EVERY:
                            self._evict_slice(now)
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
        with self._lock:
            haves: list[float] = []
            for spec in specs:
                full_at = get(spec[0])
                have = spec[1]
                if full_at is not None and full_at > now:
                    have -= (full_at - now) * spec[2]
                if not have + EPSILON >= spec[3]:
                    return None
                haves.append(have)
            fulls: list[float] = []
            for spec in specs:
                key = spec[0]
                full_at = get(key)  # read again: the same bucket may come twice
                new = (now if full_at is None or full_at < now else full_at) + spec[3] / spec[2]
                table[key] = new
                fulls.append(new)
            self._since_evict += 1
            if self._since_evict >= EVICT_EVERY:
                self._evict_slice(now)
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
            outcome = _outcome((spec, have, have + EPSILON >= spec[3], full_at))
            out.append(outcome)
            if not outcome[2]:
                return out, outcome
        return out, None

    def _take_all(self, outcomes: list[Outcome], now: float) -> list[Outcome]:
        return [self._take(o, now) for o in outcomes]

    def _take(self, outcome: Outcome, now: float) -> Outcome:
        spec = outcome[0]
        full_at = self._full_at.get(spec[0])
        start = now if full_at is None or full_at < now else full_at
        new = start + spec[3] / spec[2]
        self._full_at[spec[0]] = new
        return _outcome((spec, outcome[1], outcome[2], new))

    def _maybe_evict(self, now: float) -> None:
        self._since_evict += 1
        if self._since_evict >= EVICT_EVERY:
            self._evict_slice(now)

    def _evict_slice(self, now: float) -> None:
        """Delete the full buckets among the next `EVICT_SLICE` keys (oldest first)."""
        self._since_evict = 0
        if not self._evict_cursor:
            self._evict_cursor = list(reversed(self._full_at))  # oldest entries last
        batch = self._evict_cursor[-EVICT_SLICE:]
        del self._evict_cursor[-EVICT_SLICE:]
        table = self._full_at
        for key in batch:
            full_at = table.get(key)
            if full_at is not None and full_at <= now:
                del table[key]

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
