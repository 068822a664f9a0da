"""The one small interface every rate-limit state store implements.

Buckets are token buckets kept in GCRA form: a bucket is one number, the time (ms) at which
it is full again (`full_at`). With capacity C = limit + burst and refill rate r = limit /
window per ms, the tokens available at `now` are `C - max(0, full_at - now) * r`;
consuming c tokens moves `full_at` to `max(full_at, now) + c / r`. A bucket whose `full_at`
has passed is full, which is the same as not existing, so idle buckets can be evicted.

`acquire` is the whole decision's check-and-consume, atomically and all-or-nothing: the
shared buckets (global, user, ip, named scopes, tokens, spend) and, in ranked order, one
option per routing candidate (its provider and model buckets). The first option whose
buckets, together with the shared ones, all have room is consumed; a Redis store does
this in one server-side script, so one round trip per decision.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from engine.analytics.records import DecisionRow, ViolationRow

EPSILON = 1e-9  # float slack so that exactly-refilled tokens count


class ConfigurationError(ValueError):
    """A state store URL or setting that cannot be used."""


class StoreBusyError(RuntimeError):
    """The state is locked by another process and the wait timed out."""


class StoreUnavailableError(RuntimeError):
    """The store cannot be reached or did not answer in time (Redis down or slow)."""


class Spec(NamedTuple):
    """One bucket to check for one request."""

    key: str  # the bucket's identity, e.g. `user/requests/60000/alice`
    capacity: float  # limit + burst
    rate: float  # tokens per millisecond (limit / window_ms)
    cost: float  # tokens this request takes


class Outcome(NamedTuple):
    """A bucket after `acquire`: available before, and whether it had room."""

    spec: Spec
    available: float  # tokens available at `now`, before consuming
    allowed: bool
    full_at: float  # when the bucket is full again, after consuming (if consumed)


class AcquireResult(NamedTuple):
    option: int | None  # the option consumed, or None when denied
    outcomes: tuple[Outcome, ...]  # shared buckets, then the chosen (or last tried) option's
    failed: Outcome | None  # the first bucket without room, when denied


@dataclass(frozen=True, slots=True)
class Quota:
    """A limit set at run time for one key; overrides the policy until it expires."""

    scope: str
    key: str
    limit: float
    window_ms: float
    burst: float
    expires_at: float | None  # epoch seconds, or None for no expiry


@dataclass(frozen=True, slots=True)
class BucketRow:
    key: str
    tokens: float
    capacity: float
    full_at_ms: float


def available(full_at: float | None, capacity: float, rate: float, now: float) -> float:
    if full_at is None or full_at <= now:
        return capacity
    return capacity - (full_at - now) * rate


def consumed(full_at: float | None, rate: float, cost: float, now: float) -> float:
    start = now if full_at is None or full_at < now else full_at
    return start + cost / rate


class Store(Protocol):
    """Rate-limit state. Times are milliseconds since the epoch, from an injected clock."""

    url: str
    persistent: bool  # whether `flush` writes logs somewhere (the engine then hands them over)

    def acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
    ) -> AcquireResult: ...

    def peek(self, key: str) -> float | None:
        """A bucket's `full_at`, or None if it is full (absent)."""
        ...

    def buckets(self, prefix: str = "") -> list[tuple[str, float]]:
        """(key, full_at) of every stored bucket whose key starts with `prefix`."""
        ...

    def reset(self, prefix: str) -> int:
        """Refill (delete) every bucket whose key starts with `prefix`; how many."""
        ...

    def evict(self, now: float) -> int:
        """Delete buckets that are full again at `now`; how many."""
        ...

    def quotas(self) -> list[Quota]: ...

    def set_quota(self, quota: Quota) -> None: ...

    def remove_quota(self, scope: str, key: str) -> bool: ...

    def flush(
        self,
        *,
        violations: Sequence[ViolationRow] = (),
        stats: dict[tuple[str, str], tuple[int, int]] | None = None,
        decisions: Sequence[DecisionRow] = (),
    ) -> None:
        """Write state and a batch of logs (persistent stores); a no-op in memory."""
        ...

    def close(self) -> None: ...
