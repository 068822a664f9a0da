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

Capabilities beyond `Store` are named protocols, checked with `isinstance` (once, where a
store is taken in: never per decision), never discovered with `getattr`. A new store
implements `Store` and claims any of the others by having their members:

| protocol           | members                                     | claimed by            |
|--------------------|---------------------------------------------|-----------------------|
| `Store`            | url, persistent, acquire, peek, buckets,    | memory, DuckDB, Redis |
|                    | reset, evict, quotas, set_quota,            |                       |
|                    | remove_quota, flush, close                  |                       |
| `OnePassCheck`     | one_pass, consume_all, acquire_stepwise     | memory (`one_pass`)   |
| `Persistence`      | write_configs, connection                   | DuckDB                |
| `BucketInspection` | bucket_details, cleanup                     | DuckDB                |
| `SQLQueries`       | read                                        | DuckDB                |
| `HeldBuckets`      | bucket_counts                               | memory, DuckDB        |
| `InFlightSlots`    | take_slots, release_slots, inflight         | memory, DuckDB, Redis |
| `Settles`          | settle                                      | memory, DuckDB, Redis |
| `SharedReservations` | acquire_reserving, settle_reservation,    | Redis                 |
|                    | reservation_counts                          |                       |
| `AffinityPins`     | swap_pin, set_pin, acquire(pin=)            | Redis                 |

- `OnePassCheck`: the limiter may call `consume_all` in place of `acquire` (and then
  `acquire_stepwise` when a bucket lacks room), with plain tuples as specs. The claim is
  `uses_one_pass(store)`: the members *and* `one_pass` true, which a class that changes a
  step of `acquire` (DuckDB, a wrapping subclass) inherits the methods of but turns off.
- `Persistence`: state and logs outlive the process; `persistent` is true, `flush` writes,
  the engine records the policy's limits (`write_configs`) and keeps its outcome log on
  `connection` (warming the live metrics from it).
- `BucketInspection`: per bucket its capacity, rate and last use (`policyctl ratelimit
  buckets` shows them, `reset` restores exactly), and `cleanup` by idle time (a store
  without it evicts every full bucket; Redis buckets expire by their TTL).
- `SQLQueries`: `read(fn)` runs `fn(connection)` under the store's lock, so the admin's
  stats and violations queries (`engine.analytics.queries`) never meet a write on another
  thread.
- `InFlightSlots`: gauges for `concurrent` limits (docs/ratelimits.md, In-flight limits):
  a gauge is a set of leases, each with its expiry (ms); `take_slots` takes one slot of
  every gauge given, all-or-nothing, under one lease id (the decision's request id), and
  `release_slots` frees every slot that lease holds, once (a second call frees nothing). A
  slot whose lease ran out counts as free. Memory and DuckDB keep them in memory (never
  written to the DuckDB file: leases are short), Redis in a sorted set per gauge.
- `Settles`: `settle` applies a decision's reserve-then-settle adjustments (docs/ratelimits.md,
  Reserve, then settle) in one step: per bucket, the difference between what the decision's
  estimate took and what it used; a refund never makes a bucket more than full (`settled`).
  Memory and DuckDB under the store's lock, Redis in one script (`redis_settle.lua`).
- `SharedReservations`: the reservation records themselves live in the store, so the outcome
  may reach any instance sharing it (memory and DuckDB stores have one process: the limiter
  keeps their records in its own table). `acquire_reserving` is `acquire` (consuming) that,
  when it admits, writes the decision's record in the same atomic step (a `Ticket`: the
  request id, its input tokens, the expiry on the engine's clock, and which bucket keys are
  reserved); `settle_reservation` takes the record out atomically (once: a second call on
  any instance finds nothing), computes the adjustments from a `Usage` with the limiter's
  rules (`Limiter.settle`) and applies them, all in one step; `reservation_counts` is this
  store object's own reservations still outstanding, and those expired since it last asked.
  Redis: one script per call (`redis_gcra.lua` writes, `redis_settle.lua` takes).
- `AffinityPins`: `affinity` pins every instance shares (docs/language.md, Session
  affinity): `swap_pin` reads a key's pin and writes this decision's in one round trip
  (`redis_pin.lua`), and `acquire(…, pin=)` moves it to the candidate the limits admit in
  their own call (`redis_pin_fold.lua`); the engine's clock decides whether a pin is live,
  the store's expiry only cleans up. Memory and DuckDB state keep pins in the engine (`PinTable`).
- `HeldBuckets`: the buckets live in this process (`BucketCounts`: how many, the memory
  store's `max_keys` bound, and how many were evicted or dropped past it); the service's
  `/metrics` shows them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeGuard, TypeVar, runtime_checkable

from engine.analytics.records import ConfigRow, DecisionRow, ViolationRow
from engine.errors import EXIT_BUSY, EXIT_ERROR, PolicyctlError
from engine.limits.records import PinWrite

EPSILON = 1e-9  # float slack so that exactly-refilled tokens count
# ... and slack in time: a bucket's full-at time is epoch milliseconds (about 1.8e12, where
# a float's step is 2.4e-4 ms), and each consumption adds to it, rounding; 10 µs of refill
# (`rate * TIME_SLACK_MS` tokens) absorbs that, so that at any epoch exactly N requests
# fit a limit of N (without it, at 1e9 s only 6 of `limit user 7 per 1m` did)
TIME_SLACK_MS = 0.01

T = TypeVar("T")


class ConfigurationError(PolicyctlError, ValueError):
    """A state store URL or setting that cannot be used."""


class StoreBusyError(PolicyctlError, RuntimeError, exit_code=EXIT_BUSY):
    """The state is locked by another process and the wait timed out (`locked`). A file
    that cannot be opened for another reason (not a DuckDB file) is a ConfigurationError."""

    def __init__(self, message: str, *, locked: bool = False) -> None:
        super().__init__(message)
        self.locked = locked


class StoreUnavailableError(PolicyctlError, RuntimeError, exit_code=EXIT_ERROR):
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


class Gauge(NamedTuple):
    """One in-flight gauge to take a slot of for one request."""

    key: str  # e.g. `model/concurrent/600000/openai/gpt-4o`
    limit: int  # slots
    expires_at: float  # ms: when a slot taken now is released with no outcome (the lease)


class Slots(NamedTuple):
    """What `take_slots` found: the slots held per gauge before this request (up to the full
    one), the full gauge's index (None: every slot taken, or free on a dry run), and the
    full gauge's soonest lease expiry (ms; None when unknown)."""

    held: tuple[int, ...]
    failed: int | None
    free_at: float | None


@dataclass(slots=True)
class SlotTake:
    """In-flight gauges for a store to take in its bucket call (`acquire(…, slots=)` on a
    store whose `folds_slots` is true: a Redis Cluster, where a per-key gauge rides in the
    script call of its key's buckets). All-or-nothing with the buckets: a full gauge
    denies with no bucket consumed (`slots.failed` set, the bucket result empty), a bucket
    denial leaves no gauge taken. `slots` is what the gauges found, set by the store when
    its bucket call ran (None: it did not run, so nothing was taken); `asked`, set by the
    store when it was asked at all (asked with no `slots`: it failed, `StoreUnavailableError`)."""

    gauges: Sequence[Gauge]
    lease: str
    slots: Slots | None = None
    asked: bool = False


class Adjustment(NamedTuple):
    """One bucket's settlement: what the decision really used less what its estimate took."""

    key: str
    capacity: float  # limit + burst (a DuckDB store writes it with the bucket)
    rate: float  # tokens per millisecond
    delta: float  # tokens (dollars for spend): > 0 charges more, < 0 refunds


class Ticket(NamedTuple):
    """What an admission reserves if it is allowed (`SharedReservations.acquire_reserving`):
    every consumed bucket whose key is in `units`, with the cost it took as the estimate."""

    request_id: str
    input_tokens: float  # the request's (an outcome with output tokens only settles by them)
    expires_at: float  # ms on the engine's clock: later, an outcome settles nothing
    units: Mapping[str, str]  # bucket key -> `tokens` or `spend`: the buckets reserved


class Usage(NamedTuple):
    """What an outcome reports, for settling (None: not reported)."""

    input_tokens: float | None
    output_tokens: float | None
    cost: float | None


class Settled(NamedTuple):
    """One bucket of a settled reservation: its key, unit and the delta applied (> 0
    charged, < 0 refunded; a refund past full is cut short; 0 when not adjusted), what the
    estimate took and what the outcome reported (None: not reported)."""

    key: str
    unit: str
    delta: float
    estimate: float = 0.0
    actual: float | None = None
    adjusted: bool = True  # False: the actual was not reported, or equals the estimate


class Settlement(NamedTuple):
    """What `settle_reservation` found: `settled` (and the buckets it adjusted), `expired`
    (the record was past its expiry: taken out, nothing applied), or `absent` (never
    reserved, or settled already). `buckets`: every bucket of the record, adjusted or not
    (for the analytics rows)."""

    state: str
    applied: tuple[Settled, ...] = ()
    buckets: tuple[Settled, ...] = ()
    expires_at: float | None = None  # ms: the record's expiry (None: absent)


class ReservationCounts(NamedTuple):
    """A store object's own reservations: outstanding now (neither settled anywhere nor
    expired), and those that expired unsettled since the last call."""

    outstanding: int
    expired: int


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
class BucketCounts:
    """What a store holding buckets in memory holds, and what it let go."""

    held: int  # buckets held now
    max_keys: int | None  # the bound on `held` (None: none, every bucket is kept)
    evicted: int  # full buckets deleted as the store was used (as if they had stayed)
    dropped_full: int  # full buckets dropped past `max_keys` (as if they had stayed)
    dropped_partial: int  # buckets not full dropped past `max_keys`: quota handed back


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


def settled(
    full_at: float | None, rate: float, delta: float, now: float
) -> tuple[float | None, float]:
    """A bucket after adjusting it by `delta` tokens (> 0 takes more, < 0 gives back): its new
    `full_at` (None: full, so absent) and the delta applied. A refund stops at full: only the
    tokens missing at `now` come back (a bucket never holds more than its capacity)."""
    start = now if full_at is None or full_at < now else full_at
    new = start + delta / rate
    if new <= now:
        return None, (now - start) * rate
    return new, delta


@runtime_checkable
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


@runtime_checkable
class OnePassCheck(Store, Protocol):
    """A store whose check-and-consume the limiter may call in one pass (memory)."""

    one_pass: bool  # false when a subclass changes a step: then only `acquire` is right

    def consume_all(
        self, specs: Sequence[tuple[str, float, float, float]], now: float
    ) -> tuple[list[float], list[float]] | None:
        """Consume every bucket if all have room: (tokens available before, `full_at`
        after) per spec; None when one lacks room, and then nothing has changed."""
        ...

    def acquire_stepwise(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
    ) -> AcquireResult:
        """`acquire` without the one-pass attempt (after `consume_all` found no room)."""
        ...


@runtime_checkable
class Persistence(Store, Protocol):
    """A store whose state and logs outlive the process (DuckDB)."""

    def write_configs(self, rows: Iterable[ConfigRow]) -> None:
        """Record the policy's limits (`rate_limit_configs`)."""
        ...

    @property
    def connection(self) -> Any:
        """The database connection the outcome log shares."""
        ...


@runtime_checkable
class BucketInspection(Store, Protocol):
    """A store that keeps each bucket's parameters and last use (DuckDB)."""

    def bucket_details(self) -> list[tuple[str, float, float, float, float]]:
        """(key, full_at_ms, capacity, rate_per_ms, last_used_ms) of every stored bucket."""
        ...

    def cleanup(self, now: float, idle_ms: float) -> int:
        """Delete buckets that are full and unused for `idle_ms`; how many."""
        ...


@runtime_checkable
class HeldBuckets(Store, Protocol):
    """A store that holds its buckets in this process's memory (memory, DuckDB)."""

    def bucket_counts(self) -> BucketCounts:
        """Buckets held, the bound, and the buckets let go (the service's /metrics)."""
        ...


@runtime_checkable
class InFlightSlots(Store, Protocol):
    """A store that keeps in-flight gauges (`concurrent` limits)."""

    def take_slots(
        self, gauges: Sequence[Gauge], lease: str, now: float, *, consume: bool = True
    ) -> Slots:
        """A slot of every gauge under `lease`, all-or-nothing: a gauge is full when it holds
        `limit` live leases or already holds `lease`. `consume` false: only look."""
        ...

    def release_slots(self, lease: str) -> int:
        """Free every slot `lease` holds; how many (0 the second time)."""
        ...

    def inflight(self, now: float, prefix: str = "") -> list[tuple[str, int]]:
        """(gauge key, live slots) of every gauge holding any, whose key starts with
        `prefix`."""
        ...


@runtime_checkable
class Settles(Store, Protocol):
    """A store that settles reservations (every store here)."""

    def settle(self, adjustments: Sequence[Adjustment], now: float) -> list[float]:
        """Apply every adjustment (one decision's) in one atomic step; the delta applied to
        each (a refund past full is cut short)."""
        ...


class PinRecord(NamedTuple):
    """An affinity pin as a shared store keeps it."""

    model: str  # the model's key, `provider/id`
    at: float  # epoch seconds (the engine's clock): the key's last request
    input_tokens: float  # that request's input tokens


@runtime_checkable
class AffinityPins(Store, Protocol):
    """A store that keeps `affinity` pins for every instance on it (Redis)."""

    def swap_pin(
        self,
        key: str,
        now: float,
        ttl_ms: float,
        keep_ms: float,
        input_tokens: float,
        default: str,
        eligible: Sequence[str],
        write: bool,
    ) -> tuple[PinRecord | None, str | None]:
        """In one atomic step: the pin of `key` if it is live at `now` (epoch seconds: within
        `ttl_ms` of its `at`), and, with `write`, `key` pinned at `now` to that pin's model
        when it is in `eligible`, else to `default`, kept `keep_ms`. Returns (the live pin,
        the model written or None)."""
        ...

    def set_pin(self, key: str, pin: PinRecord, keep_ms: float) -> None:
        """Pin `key` as `pin` says, kept `keep_ms`."""
        ...

    def acquire(
        self,
        shared: Sequence[Spec],
        options: Iterable[Sequence[Spec]],
        now: float,
        *,
        consume: bool = True,
        pin: PinWrite | None = None,
    ) -> AcquireResult:
        """`Store.acquire`; with `pin` (consuming), the key pinned to the model of the
        candidate admitted (the first of `pin.models` with no options), in the same call."""
        ...


@runtime_checkable
class SharedReservations(Settles, Protocol):
    """A store that keeps reservation records itself, for every instance sharing it (Redis)."""

    def acquire_reserving(
        self,
        shared: Sequence[Spec],
        options: Sequence[Sequence[Spec]],
        now: float,
        ticket: Ticket,
        *,
        pin: PinWrite | None = None,
    ) -> AcquireResult:
        """`acquire` (consuming); when it admits, the reservation record of `ticket` is
        written in the same atomic step (merged into a live one under the same id); `pin`
        as `acquire`'s on a store that is also `AffinityPins`."""
        ...

    def settle_reservation(self, request_id: str, usage: Usage, now: float) -> Settlement:
        """Take the record of `request_id` out and apply its adjustments, atomically."""
        ...

    def reservation_counts(self, now: float) -> ReservationCounts:
        """This store object's reservations outstanding at `now`, and expired since the
        last call."""
        ...


@runtime_checkable
class SQLQueries(Store, Protocol):
    """A store on a SQL database the log queries can read (DuckDB)."""

    def read(self, fn: Callable[[Any], T]) -> T:
        """`fn(connection)` under the store's lock."""
        ...


def uses_one_pass(store: Store) -> TypeGuard[OnePassCheck]:
    """Whether the limiter may use `store`'s one-pass check (decided once per store)."""
    return isinstance(store, OnePassCheck) and store.one_pass
