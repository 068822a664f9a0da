"""Rate limits: which `limit` statements apply to a request, and the check-and-consume.

The arithmetic (token buckets in GCRA form) lives with the store interface in
`engine.limits.stores.base`; this module turns a request and its ranked routing candidates into
bucket specs, asks the store once (all-or-nothing), and reports per bucket.

Semantics (docs/ratelimits.md): capacity = limit + burst, refill = limit per window, continuous;
scopes global, user, ip, provider, model and named scopes with a key expression; units
requests (1 per request), tokens (the request's token estimate) and spend (the candidate's
estimated cost); `when` and `until`; a keyed limit replaces the scope's default limits for
that key, an expired one is ignored; a runtime quota replaces both for its key until it
expires. Provider and model limits, and spend limits (whose cost depends on the model), are
checked per candidate: an exhausted one makes routing take the next candidate.

The evaluator asks `Limiter.check_plain` first: for the common shape (shared limits that
are plain ones on requests, at most one static provider or model part, a one-pass memory
store) it builds the first candidate's buckets from precomputed parts and takes them in one
`consume_all`; when a bucket lacks room or a quota applies it consumes nothing and answers
None, and `check`, the general path, decides and reports.

A `shadow limit` (docs/ratelimits.md, Shadow limits) never denies: the policy's plan keeps
its shadow limits apart (`_Plan.shadow`, None without any: one attribute check), and once
the enforced limits admitted a decision, its shadow buckets are checked and consumed in a
second all-or-nothing store call (as if they were enforced, for the candidate the enforced
limits chose; a shadow `concurrent` limit takes a slot of its own gauge, under the lease
`<request id>#shadow`, given back with the enforced slots by the outcome or by its lease);
one without room consumes nothing, and is reported in the verdict
(`shadow_denials`), the violations and daily stats (scope `shadow:<scope>`) and a counter.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from engine.analytics.records import InFlightRow, LimitEventRow, SettlementRow
from engine.language.program import CompiledLimit
from engine.limits.records import STORE_DOWN, UNATTRIBUTED, LimitDenial, LimitStatus
from engine.limits.stores.base import (
    EPSILON,
    TIME_SLACK_MS,
    AcquireResult,
    Adjustment,
    AffinityPins,
    Gauge,
    InFlightSlots,
    Outcome,
    PinWrite,
    Quota,
    ReservationCounts,
    Settlement,
    Settles,
    SharedReservations,
    Slots,
    SlotTake,
    Spec,
    Store,
    StoreUnavailableError,
    Ticket,
    Usage,
    available,
    consumed,
    uses_one_pass,
)
from engine.vocabulary import CONCURRENT, DEFAULT_OUTPUT_TOKENS

log = logging.getLogger("policyctl.limits")

# tuple.__new__ builds the named tuple without a Python-level __new__ call (hot path)
_spec = functools.partial(tuple.__new__, Spec)

PER_CANDIDATE_SCOPES = frozenset({"provider", "model"})
SHADOW_MARK = "shadow:"  # a shadow limit's scope in the violations and daily stats
SHADOW_LEASE = "#shadow"  # a decision's shadow slots are held under `<request id>#shadow`
MAX_VIOLATIONS_KEPT = 10_000


def window_text(window_ms: float) -> str:
    """Milliseconds, spelled out in full (never `8.64e+07`)."""
    return str(int(window_ms)) if float(window_ms).is_integer() else repr(float(window_ms))


def bucket_key(scope: str, unit: str, window_ms: float, key: str) -> str:
    return f"{scope}/{unit}/{window_text(window_ms)}/{key}"


class Applied:
    """One limit as it applies to requests: what to report about its buckets."""

    __slots__ = ("burst", "capacity", "limit", "prefix", "rate", "scope", "shadow", "source",
                 "unit", "until", "when", "whole", "window_ms")  # fmt: skip

    def __init__(
        self,
        scope: str,
        unit: str,
        limit: float,
        window_ms: float,
        burst: float,
        source: str,
        when: Any = None,
        until: float | None = None,
    ) -> None:
        self.scope = scope
        self.unit = unit
        self.whole = unit == "requests"  # counted in whole requests: `remaining` rounded down
        self.limit = limit
        self.window_ms = window_ms
        self.burst = burst
        self.source = source  # the policy location, or `quota`
        self.when = when
        self.until = until
        self.capacity = limit + burst
        self.rate = limit / window_ms  # tokens per millisecond
        self.prefix = f"{scope}/{unit}/{window_text(window_ms)}/"
        self.shadow = False  # `shadow limit …`: never denies

    def active(self, env: Mapping[str, Any] | None, now_s: float) -> bool:
        """Not expired, and its `when` holds for the request (without one, `env` None: a
        `when` counts as met, so the admin lists conditional limits)."""
        if self.until is not None and self.until <= now_s:
            return False
        return self.when is None or env is None or bool(self.when(env, None))


def quota_applied(quota: Quota) -> Applied:
    """A runtime quota as the limit it stands for (on requests, until it expires)."""
    return Applied(
        quota.scope, "requests", quota.limit, quota.window_ms, quota.burst, "quota",
        until=quota.expires_at,
    )  # fmt: skip


def _applied_from(limit: CompiledLimit, ordinal: int) -> Applied:
    applied = Applied(
        limit.scope, limit.unit, limit.amount, limit.window_ms, limit.burst, limit.location,
        limit.when, limit.until,
    )  # fmt: skip
    if ordinal:  # a second limit with the same scope, unit and window gets its own bucket
        applied.prefix = f"{limit.scope}/{limit.unit}/{window_text(limit.window_ms)}#{ordinal + 1}/"
    if limit.shadow:  # its own buckets, never an enforced limit's: `…/60000#shadow/alice`
        applied.shadow = True
        mark = f"#shadow{ordinal + 1 if ordinal else ''}"
        applied.prefix = f"{limit.scope}/{limit.unit}/{window_text(limit.window_ms)}{mark}/"
    return applied


@dataclass(frozen=True, slots=True)
class _Group:
    scope: str
    unit: str
    defaults: tuple[Applied, ...]
    keyed: Mapping[str, tuple[Applied, ...]]
    key_field: str | None  # user / ip: read this request field
    key_fn: Any  # named scopes: the compiled key expression
    conditional: bool  # some default has `when` or `until`
    keyed_fixed: bool  # no keyed limit has `when` or `until`: a key's list is all active
    shadow: bool = False  # `shadow limit …`s (kept apart: a shadow keyed limit never
    # replaces an enforced default)


class Verdict(NamedTuple):
    option: int | None  # the candidate consumed (index into the ranking), None if denied
    statuses: list[LimitStatus]
    denied_by: LimitDenial | None
    # the shadow limits that would have denied an allowed decision (`shadow limit …`)
    shadow_denials: tuple[LimitDenial, ...] = ()


# tuple.__new__ builds the named tuple without a Python-level __new__ call (hot path)
_new_verdict = functools.partial(tuple.__new__, Verdict)


@dataclass(frozen=True, slots=True)
class Violation:
    at: float  # epoch seconds
    scope: str
    key: str
    unit: str
    requested: float
    available: float
    request_id: str | None


def group_limits(limits: Sequence[CompiledLimit]) -> tuple[_Group, ...]:
    order: list[tuple[str, str, bool]] = []
    members: dict[tuple[str, str, bool], list[CompiledLimit]] = {}
    for limit in limits:
        ident = (limit.scope, limit.unit, limit.shadow)
        if ident not in members:
            order.append(ident)
            members[ident] = []
        members[ident].append(limit)
    seen: Counter[tuple[str, str, float, str | None, bool]] = Counter()
    ordinals: dict[int, int] = {}
    for limit in limits:
        ident4 = (limit.scope, limit.unit, limit.window_ms, limit.key, limit.shadow)
        ordinals[id(limit)] = seen[ident4]
        seen[ident4] += 1
    groups = []
    for ident in order:
        found = members[ident]
        defaults = tuple(_applied_from(lim, ordinals[id(lim)]) for lim in found if lim.key is None)
        keyed: dict[str, list[Applied]] = {}
        for lim in found:
            if lim.key is not None:
                keyed.setdefault(lim.key, []).append(_applied_from(lim, ordinals[id(lim)]))
        first = found[0]
        groups.append(
            _Group(
                scope=ident[0],
                unit=ident[1],
                defaults=defaults,
                keyed={k: tuple(v) for k, v in keyed.items()},
                key_field=first.key_field,
                key_fn=first.key_fn,
                conditional=any(a.when is not None or a.until is not None for a in defaults),
                keyed_fixed=all(
                    a.when is None and a.until is None for k in keyed.values() for a in k
                ),
                shadow=ident[2],
            )
        )
    return tuple(groups)


def applicable(
    group: _Group | _Part,
    key: str,
    quota: Quota | None,
    env: Mapping[str, Any] | None,
    now_s: float,
) -> Sequence[Applied]:
    """The limits of one scope and unit that apply to one key: the key's runtime `quota`
    (requests only, unless expired), else the key's active keyed limits, else the scope's
    active defaults. `env` is the request (None: the admin asks without one, and a `when`
    counts as met).

    The one statement of the rule: the limiter's hot path and the admin both ask here; the
    hot path's shortcuts (`_Part.static`, `_Part.plain`) are its cases with no quota, fixed
    per policy."""
    if (
        quota is not None
        and group.unit == "requests"
        and (quota.expires_at is None or quota.expires_at > now_s)
    ):
        return [quota_applied(quota)]
    if group.keyed:
        found = group.keyed.get(key)
        if found:
            if group.keyed_fixed:
                return found
            keyed = [a for a in found if a.active(env, now_s)]
            if keyed:
                return keyed
    if group.conditional:
        return [a for a in group.defaults if a.active(env, now_s)]
    return group.defaults


Bucket = tuple[str, float, float, float]  # a `Spec` as a plain tuple: key, capacity, rate, cost


class _Part:
    """One group of limits, ready for the hot path (built once per policy)."""

    __slots__ = ("cache", "conditional", "defaults", "is_global", "is_provider", "items",
                 "key_field", "key_fn", "keyed", "keyed_fixed", "plain", "requests", "scope",
                 "spend", "static", "unit")  # fmt: skip

    def __init__(self, group: _Group) -> None:
        self.scope = group.scope
        self.unit = group.unit
        self.requests = group.unit == "requests"
        self.spend = group.unit == "spend"
        self.defaults = group.defaults
        self.keyed = group.keyed
        self.key_field = group.key_field
        self.key_fn = group.key_fn
        self.conditional = group.conditional
        self.keyed_fixed = group.keyed_fixed
        self.is_global = group.scope == "global"
        self.is_provider = group.scope == "provider"
        # requests limits without `when`/`until` whose keys are few (global, and the
        # catalog's providers and models): a key's buckets are the same every time, so cached
        everything = [*group.defaults, *(a for k in group.keyed.values() for a in k)]
        self.static = (
            self.requests
            and (self.is_global or group.scope in PER_CANDIDATE_SCOPES)
            and all(a.when is None and a.until is None for a in everything)
        )
        # no keyed limits, no `when`/`until`: the defaults apply to every key (unless a quota)
        self.plain = not group.keyed and not group.conditional
        # a plain part's buckets for a key, but the key: (prefix, capacity, rate, owner)
        self.items = tuple((a.prefix, a.capacity, a.rate, a) for a in group.defaults)
        # static parts: key -> its buckets and their owners
        self.cache: dict[str, tuple[list[Bucket], list[tuple[Applied, str]]]] = {}

    def static_buckets(self, key: str) -> tuple[list[Bucket], list[tuple[Applied, str]]]:
        """A static part's buckets and their owners for one key (built once, then cached)."""
        found = self.cache.get(key)
        if found is None:
            applied = applicable(self, key, None, None, 0.0)  # static: no `when`, no `until`
            found = (
                [_spec((a.prefix + key, a.capacity, a.rate, 1.0)) for a in applied],
                [(a, key) for a in applied],
            )
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[key] = found
        return found


class _Plan:
    """A policy's limits, grouped and split: the shared ones, the per-candidate ones, and
    the shadow limits' own plan (None: the policy has none)."""

    __slots__ = ("inflight", "lone_scopes", "lone_static", "per_candidate", "plain", "scopes",
                 "shadow", "shared")  # fmt: skip

    def __init__(self, groups: tuple[_Group, ...], shadow: bool = False) -> None:
        parts = [_Part(group) for group in groups if group.shadow == shadow]
        # `concurrent` limits: gauges, taken around the buckets (`Limiter._check_inflight`)
        self.inflight = tuple(p for p in parts if p.unit == CONCURRENT)
        parts = [p for p in parts if p.unit != CONCURRENT]
        self.shared = tuple(p for p in parts if p.scope not in PER_CANDIDATE_SCOPES)
        self.per_candidate = tuple(p for p in parts if p.scope in PER_CANDIDATE_SCOPES)
        # the one per-candidate part, when there is one and it is static (the common case)
        self.lone_static = (
            self.per_candidate[0]
            if len(self.per_candidate) == 1 and self.per_candidate[0].static
            else None
        )
        self.shadow = _Plan(groups, True) if not shadow and any(g.shadow for g in groups) else None
        # `Limiter.check_plain`'s plan: the shared parts, each a plain one on requests (no
        # keyed limits, no `when`/`until`), and at most the lone static per-candidate part;
        # None: another shape
        self.plain = (
            self.shared
            if (not self.per_candidate or self.lone_static is not None)
            and not self.inflight
            and self.shadow is None
            and all(p.plain and p.requests for p in self.shared)
            else None
        )
        # ... and the scopes its decisions are tallied under when every shared part applies
        # (and no per-candidate one)
        self.scopes = tuple(item[3].scope for p in self.plain or () for item in p.items)
        self.lone_scopes: dict[str, tuple[str, ...]] = {}  # ... and a candidate's, by its key


_PENDING_MAX = 4096  # allowed decisions kept uncounted, at most
_CACHE_MAX = 4096  # keys per cache: candidates come from the catalog, so this is generous


def _part_key(part: _Part, env: Mapping[str, Any]) -> str | None:
    """The request's key for one part (`""` for global; None: the request has none). What
    `Limiter.check` and `Limiter.check_plain` do inline, on their hot path (a call per part
    there costs more than the lines)."""
    if part.is_global:
        return ""
    if part.key_field is not None:
        value = env[part.key_field]
    elif part.key_fn is not None:
        value = part.key_fn(env, None)
    else:
        return None
    if value is None or value == "":
        return None
    return value if type(value) is str else _key_text(value)


def _key_text(value: Any) -> str:
    """A scope key read from the request that is not a string (a metadata value)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _specs(buckets: Sequence[Bucket]) -> list[Spec]:
    """Buckets as the store interface's `Spec`s."""
    return [b if type(b) is Spec else _spec(b) for b in buckets]


def _as_is(buckets: list[Bucket]) -> list[Bucket]:
    return buckets


class Reserved(NamedTuple):
    """One bucket a decision's estimate took (reserve-then-settle)."""

    key: str
    capacity: float
    rate: float
    estimate: float  # tokens, or dollars for spend
    spend: bool


@dataclass(slots=True)
class Reservation:
    """What one decision's estimates took, until its outcome settles them or it expires."""

    buckets: list[Reserved]
    input_tokens: float  # the request's, for an outcome that reports output tokens only
    expires_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class SettlementCounts:
    """Reserve-then-settle since the start: reservations settled by an outcome, expired
    unsettled, outstanding now; per unit (`tokens`, `spend`), the amounts refunded and
    charged, summed over the buckets adjusted."""

    settled: int
    expired: int
    outstanding: int
    refunded: dict[str, float]
    charged: dict[str, float]


class LimitEvents(Protocol):
    """Where the limiter hands its events for the analytics tables (settlements, in-flight
    releases): `engine.analytics.writer.OutcomeWriter`, a bounded queue written off the
    hot path. None on the limiter (a memory-only engine): no event is made."""

    def submit_event(self, row: LimitEventRow) -> None: ...


def event_scope(key: str) -> str:
    """The scope of a bucket or gauge key (`user/tokens/60000/alice`): `shadow:user` for a
    shadow limit's (`…/60000#shadow/…`), as the violations name it."""
    parts = key.split("/", 3)
    scope = parts[0]
    return SHADOW_MARK + scope if len(parts) > 2 and "#shadow" in parts[2] else scope


DEFAULT_SETTLE_WITHIN_S = 600.0  # a reservation not settled by then expires (the estimate stands)
MAX_RESERVATIONS = 100_000  # kept at most; past it the oldest go (counted as expired)
_RESERVED_UNITS = frozenset({"tokens", "spend"})


@dataclass
class Limiter:
    """Checks and consumes a decision's limits in one store call, and keeps the tallies."""

    store: Store
    clock: Callable[[], float] = time.time  # epoch seconds
    violations: deque[Violation] = field(default_factory=lambda: deque(maxlen=MAX_VIOLATIONS_KEPT))
    # (day, scopes that applied) -> allowed decisions; (day, scope) -> denials by that scope
    allowed_tallies: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    denied_tallies: Counter[tuple[str, str]] = field(default_factory=Counter)
    # scope -> the decisions a shadow limit of it would have denied, since the start
    shadow_denied: Counter[str] = field(default_factory=Counter)
    _groups: dict[int, tuple[_Group, ...]] = field(default_factory=dict)
    _quota_cache: tuple[float, dict[tuple[str, str], Quota]] = (0.0, {})
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _day_number: int = -1
    _day_text: str = ""
    store_errors: int = 0
    _last_store_log: float = float("-inf")
    # the policy's limits tuple (kept alive, so its identity stays unique) and its plan
    _plan: tuple[object, _Plan | None] = (None, None)
    # scopes in order of appearance -> the same without repeats (the allowed tallies' key)
    _scope_sets: dict[tuple[str, ...], tuple[str, ...]] = field(default_factory=dict)
    # allowed decisions not yet counted into `allowed_tallies`: (day, scopes in order)
    _pending: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    # a plain memory store's check-and-consume-all, for when every bucket has room
    _consume_all: (
        Callable[[Sequence[Bucket], float], tuple[list[float], list[float]] | None] | None
    ) = None

    # whether `check_plain` may take a plain plan (`_Plan.plain`): the store has
    # `_consume_all` and the policy reserves nothing (else it leaves every call to `check`)
    _plain: bool = False
    # ... and its `acquire` without the one-pass attempt, for when `_consume_all` failed
    _acquire_stepwise: Callable[..., AcquireResult] | None = None
    # the store's in-flight gauges (None: it keeps none, and `concurrent` limits are off);
    # `_gauged`: a policy with `concurrent` limits was seen (outcomes then release slots)
    _slots: InFlightSlots | None = None
    _gauged: bool = False
    _shadow_gauged: bool = False  # ... and `shadow limit … concurrent` ones
    # reserve-then-settle (docs/ratelimits.md): request id -> what its estimates took, oldest
    # first; `_reserving`: the policy has token or spend limits and the store settles
    settle_within_s: float = DEFAULT_SETTLE_WITHIN_S
    _reservations: dict[str, Reservation] = field(default_factory=dict)
    _reserve_lock: threading.Lock = field(default_factory=threading.Lock)
    _settles: Settles | None = None
    _reserving: bool = False
    # ... or, on a store that keeps them (Redis), there: written by the admission's own store
    # call, settled by whichever instance the outcome reaches (`_reserve_in_store`: the
    # policy reserves and the store does)
    _shared: SharedReservations | None = None
    _reserve_in_store: bool = False
    # whether an outcome may have anything to release or settle: while False, `release` and
    # `settle` return at once, and the engine skips both calls. In-flight slots once the
    # policy has `concurrent` limits (`_gauged`); reservations kept here once it reserved
    # (they outlive a reload); on a store that keeps them, while the policy reserves or
    # is not known yet (`_settle_in_store`)
    takes_outcomes: bool = False
    _last_outstanding: int = 0  # the store's count, kept for when it cannot be asked
    reservations_settled: int = 0
    reservations_expired: int = 0
    # per unit (`tokens`, `spend`), summed over the buckets adjusted
    refunded: Counter[str] = field(default_factory=Counter)
    charged: Counter[str] = field(default_factory=Counter)
    # the store writes an affinity pin in its bucket call (`acquire(…, pin=)`: Redis)
    _pins_in_acquire: bool = False
    # the store takes per-key in-flight gauges in its bucket call (`acquire(…, slots=)`)
    _slots_in_acquire: bool = False
    # the analytics tables' events (None: no analytics, nothing made); with them, the
    # slots each allowed decision took: lease -> (taken at, [(gauge key, lease ends at)])
    events: LimitEvents | None = None
    _leases: dict[str, tuple[float, list[tuple[str, float]]]] = field(default_factory=dict)
    untracked_leases: int = 0  # past `MAX_RESERVATIONS` held: their releases go unlogged

    def __post_init__(self) -> None:
        store = self.store
        if isinstance(store, InFlightSlots):
            self._slots = store
        if isinstance(store, Settles):
            self._settles = store
        if isinstance(store, SharedReservations):
            self._shared = store
            self.takes_outcomes = True  # settled in the store until the policy is known
        self._pins_in_acquire = isinstance(store, AffinityPins)
        self._slots_in_acquire = getattr(store, "folds_slots", False) is True
        if uses_one_pass(store):  # decided once: the hot path reads `_consume_all`
            self._consume_all = store.consume_all
            self._acquire_stepwise = store.acquire_stepwise

    def groups(self, limits: tuple[CompiledLimit, ...]) -> tuple[_Group, ...]:
        cached = self._groups.get(id(limits))
        if cached is None:
            cached = group_limits(limits)
            self._groups = {id(limits): cached}  # one policy at a time
        return cached

    def prepare(self, limits: tuple[CompiledLimit, ...]) -> None:
        """Know the serving policy's limits before its first decision (the engine calls this
        when a policy is loaded): an instance that only receives outcomes (another instance
        on the same Redis decided) then releases in-flight slots and settles reservations."""
        known, plan = self._plan
        if known is not limits or plan is None:
            self._plan_for(limits)

    def _plan_for(self, limits: tuple[CompiledLimit, ...]) -> _Plan:
        plan = _Plan(group_limits(limits))
        if plan.inflight:
            self._gauged = True
        if plan.shadow is not None and plan.shadow.inflight:
            self._gauged = self._shadow_gauged = True
        self._reserving = self._settles is not None and any(
            limit.unit in _RESERVED_UNITS for limit in limits
        )
        self._reserve_in_store = self._reserving and self._shared is not None
        self._plain = self._consume_all is not None and not self._reserving
        self.takes_outcomes = (
            self._gauged
            or self._reserving
            or (self._shared is None and self._settles is not None and self.takes_outcomes)
        )
        self._plan = (limits, plan)  # one policy at a time
        return plan

    def _quotas(self, now_s: float) -> dict[tuple[str, str], Quota]:
        loaded_at, quotas = self._quota_cache
        if now_s - loaded_at > 1.0 or loaded_at == 0.0:
            # Store down: keep the last known quotas; the bucket call meets the outage and
            # applies `on_store_error` (and the quotas are read again in a second).
            with contextlib.suppress(StoreUnavailableError):
                quotas = {(q.scope, q.key): q for q in self.store.quotas()}
            self._quota_cache = (now_s, quotas)
        return quotas

    def refresh_quotas(self) -> None:
        self._quota_cache = (0.0, {})

    def check_plain(
        self, limits: tuple[CompiledLimit, ...], env: Mapping[str, Any], provider: str, model: str
    ) -> Verdict | None:
        """`check` (consumed, recorded, no pin) when the first ranked candidate (`provider`,
        `model`: its `provider/id` key) has room, for a policy of the common shape
        (`_Plan.plain`: shared limits that are all plain ones on requests, such as user, ip,
        global or team limits without keyed values, `when` or `until`, and at most one static
        provider or model part) on a one-pass memory store: the decision's buckets built
        from each part's precomputed items and taken in one `consume_all`. None when the
        policy is not of that shape, a quota applies to one of its keys, or a bucket lacks
        room: then nothing was consumed or counted, and the caller asks `check`, which
        reports it."""
        known, plan = self._plan
        if known is not limits or plan is None or not self._plain or plan.plain is None:
            return None
        parts = plan.plain
        now_s = self.clock()
        loaded_at, quotas = self._quota_cache  # cached for a second (`_quotas`)
        if now_s - loaded_at > 1.0 or loaded_at == 0.0:
            quotas = self._quotas(now_s)
        buckets: list[Bucket] = []
        info: list[tuple[Applied, str]] = []
        whole = True  # every part applied: the tally's scopes are the plan's
        for part in parts:
            if part.is_global:
                key = ""
            else:
                if part.key_field is not None:
                    value = env[part.key_field]
                elif part.key_fn is not None:
                    value = part.key_fn(env, None)
                else:
                    value = None
                if value is None or value == "":
                    whole = False
                    continue
                key = value if type(value) is str else _key_text(value)
            if quotas and (part.scope, key) in quotas:
                return None  # the quota stands for the part's limits: `check` applies it
            for prefix, capacity, rate, applied in part.items:
                buckets.append((prefix + key, capacity, rate, 1.0))
                info.append((applied, key))
        scopes = plan.scopes
        lone = plan.lone_static
        if lone is not None:  # the first candidate's buckets: the part's cache
            key = provider if lone.is_provider else model
            if quotas and (lone.scope, key) in quotas:
                return None
            found = lone.cache.get(key)
            if found is None:
                found = lone.static_buckets(key)
            if found[1]:
                buckets += found[0]
                info += found[1]
                if whole:  # the shared parts' scopes and the candidate's
                    scopes = plan.lone_scopes.get(key)  # type: ignore[assignment]
                    if scopes is None:
                        scopes = plan.scopes + tuple([a.scope for a, _ in found[1]])
                        if len(plan.lone_scopes) >= _CACHE_MAX:
                            plan.lone_scopes.clear()
                        plan.lone_scopes[key] = scopes
        if not buckets:
            return _new_verdict((0, [], None, ()))
        taken = self._consume_all(buckets, now_s * 1000.0)  # type: ignore[misc]
        if taken is None:
            return None
        return self._allowed(buckets, info, taken, now_s, env, scopes if whole else None)

    def check(
        self,
        limits: tuple[CompiledLimit, ...],
        env: Mapping[str, Any],
        candidates: Iterable[tuple[str, str, float]],  # (provider, provider/model, cost), ranked
        *,
        consume: bool = True,
        on_store_error: str = "open",
        record: bool = True,
        gauges: bool = True,
        shadow: bool = True,
        pin: PinWrite | None = None,
        slot_take: SlotTake | None = None,
    ) -> Verdict:
        """`record` false (a shadow route's dry run): no tallies, no violations either.
        `shadow` false: the enforced limits only (the policy's shadow limits are not asked);
        `gauges` false: the buckets alone (what `_check_inflight` asks between its gauges).
        `pin`: an affinity pin the store writes for the candidate its bucket call admits
        (`pin.models`: the candidates' model keys in order), when it can (Redis); then
        `pin.written` is set. `slot_take`: in-flight gauges the store takes in its bucket call
        (`_check_inflight`, on a store with `folds_slots`)."""
        pins: dict[str, Any] | None = (
            {"pin": pin} if pin is not None and self._pins_in_acquire else None
        )
        if slot_take is not None:
            pins = {**(pins or {}), "slots": slot_take}
        known, plan = self._plan
        if known is not limits or plan is None:
            plan = self._plan_for(limits)
        if plan.shadow is not None and shadow:
            return self._with_shadow(
                plan.shadow, limits, env, list(candidates), consume, on_store_error, record, pin
            )
        if plan.inflight and gauges and self._slots is not None:
            return self._check_inflight(
                plan, limits, env, candidates, consume, on_store_error, record, pin
            )
        now_s = self.clock()
        now = now_s * 1000.0
        max_tokens = env["max_tokens"]
        tokens = env["input_tokens"] + (
            max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        )
        shared: list[Bucket] = []
        shared_info: list[tuple[Applied, str]] = []
        spend: list[tuple[Applied, str]] = []
        # the quotas, read when the first key is known (where `_applied` would read them)
        quotas: dict[tuple[str, str], Quota] | None = None
        applied: Sequence[Applied]
        for part in plan.shared:
            if part.is_global:
                key = ""
            else:
                if part.key_field is not None:
                    value = env[part.key_field]
                elif part.key_fn is not None:
                    value = part.key_fn(env, None)
                else:
                    continue
                if value is None or value == "":
                    continue
                key = value if type(value) is str else _key_text(value)
            if quotas is None:  # cached for a second (`_quotas`, its test inline)
                loaded_at, quotas = self._quota_cache
                if now_s - loaded_at > 1.0 or loaded_at == 0.0:
                    quotas = self._quotas(now_s)
            if quotas and part.requests and (part.scope, key) in quotas:
                applied = applicable(part, key, quotas[part.scope, key], env, now_s)
            elif part.static:
                found = part.cache.get(key)
                if found is None:
                    found = part.static_buckets(key)
                shared += found[0]
                shared_info += found[1]
                continue
            elif part.plain and not part.spend:
                cost = 1.0 if part.requests else tokens
                for prefix, capacity, rate, a in part.items:
                    shared.append((prefix + key, capacity, rate, cost))
                    shared_info.append((a, key))
                continue
            elif part.plain:
                applied = part.defaults
            else:  # keyed limits, or `when`/`until`
                applied = applicable(part, key, None, env, now_s)
            if part.spend:
                for a in applied:
                    spend.append((a, key))
                continue
            cost = 1.0 if part.requests else tokens
            for a in applied:
                shared.append((a.prefix + key, a.capacity, a.rate, cost))
                shared_info.append((a, key))
        per_candidate = plan.per_candidate
        consume_all = self._consume_all if consume else None
        if not per_candidate and not spend:
            if not shared:
                return _new_verdict((0, [], None, ()))
            acquire = self.store.acquire
            if consume_all is not None:
                taken = consume_all(shared, now)
                if taken is not None:
                    return self._allowed(shared, shared_info, taken, now_s, env)
                acquire = self._acquire_stepwise  # type: ignore[assignment]
            try:
                if consume and self._reserve_in_store:
                    result = self._acquire_reserving(
                        _specs(shared), [], [shared_info], env, now, pins
                    )
                else:
                    result = acquire(
                        shared if consume_all is not None else _specs(shared), (), now,
                        consume=consume, **(pins or {}),
                    )  # fmt: skip
            except StoreUnavailableError as err:
                return self._store_down(err, on_store_error, now_s)
            return self._verdict(result, shared_info, None, env, now_s, record, consume)
        # One option per candidate, in ranking order, built as the store asks for them.
        option_info: list[list[tuple[Applied, str]]] = []
        option_buckets: list[list[Bucket]] = []  # for a denial: which option fits first
        ranked = iter(candidates)
        first: list[Bucket] | None = None
        if consume_all is not None:  # the first option now: it usually has room
            candidate = next(ranked, None)
            if candidate is not None:
                if quotas is None and per_candidate:
                    quotas = self._quotas(now_s)  # cached for a second
                # `_option`'s case of one static part, no spend limits, no quota: its cache
                lone = plan.lone_static
                found = None
                if lone is not None and not spend:
                    key = candidate[0] if lone.is_provider else candidate[1]
                    if not (quotas and (lone.scope, key) in quotas):
                        found = lone.cache.get(key)
                        if found is None:
                            found = lone.static_buckets(key)
                if found is not None:
                    first, info = found  # the part's cached lists: copied if kept below
                    buckets = shared + first
                    taken = consume_all(buckets, now)
                    if taken is not None:
                        return self._allowed(buckets, shared_info + info, taken, now_s, env)
                    first, info = list(first), list(info)
                else:
                    first, info = self._option(plan, spend, candidate, tokens, env, now_s, quotas)
                    buckets = shared + first
                    taken = consume_all(buckets, now)
                    if taken is not None:
                        return self._allowed(buckets, shared_info + info, taken, now_s, env)
                option_info.append(info)
                option_buckets.append(first)
            else:
                taken = consume_all(shared, now)
                if taken is not None:
                    return self._allowed(shared, shared_info, taken, now_s, env)

        # A memory store reads specs by position: plain tuples do; other stores get `Spec`s.
        as_specs: Callable[[list[Bucket]], Sequence[Bucket]] = (
            _as_is if consume_all is not None else _specs
        )

        def options() -> Iterator[Sequence[Bucket]]:
            nonlocal quotas
            if first is not None:
                yield as_specs(first)
            for candidate in ranked:
                if quotas is None and per_candidate:
                    quotas = self._quotas(now_s)  # cached for a second
                buckets, info = self._option(plan, spend, candidate, tokens, env, now_s, quotas)
                option_info.append(info)
                option_buckets.append(buckets)
                yield as_specs(buckets)

        # the stores' own `acquire`; a one-pass store's without the pass that just failed
        acquire = self._acquire_stepwise if consume_all is not None else self.store.acquire
        try:
            if consume and self._reserve_in_store:  # every option built: the ticket names them
                listed = list(options())
                result = self._acquire_reserving(
                    _specs(shared), listed, [shared_info, *option_info], env, now, pins
                )
            else:
                result = acquire(as_specs(shared), options(), now, consume=consume, **(pins or {}))
        except StoreUnavailableError as err:
            return self._store_down(err, on_store_error, now_s)
        if result[0] is None and len(option_buckets) > 1 and len(result[1]) > len(shared):
            result, option_info = self._first_to_fit(
                result, len(shared), option_info, option_buckets, now
            )
        return self._verdict(result, shared_info, option_info, env, now_s, record, consume)

    # ------------------------------------------------------------------ in-flight slots

    def _check_inflight(
        self,
        plan: _Plan,
        limits: tuple[CompiledLimit, ...],
        env: Mapping[str, Any],
        candidates: Iterable[tuple[str, str, float]],
        consume: bool,
        on_store_error: str,
        record: bool,
        pin: PinWrite | None = None,
    ) -> Verdict:
        """`check` with `concurrent` limits: a slot of every gauge that applies, taken before
        the buckets under the request id and given back when they deny, so a denial by any
        limit holds nothing. Shared gauges (global, user, named scopes) are taken once;
        with provider or model gauges, candidates are tried in ranked order: one whose gauge
        is full, or whose own buckets deny, gives way to the next. A dry run only looks."""
        slots = self._slots
        assert slots is not None
        now_s = self.clock()
        now = now_s * 1000.0
        lease = str(env["id"])
        shared: list[tuple[Applied, str]] = []
        per_parts: list[_Part] = []
        for part in plan.inflight:
            if part.scope in PER_CANDIDATE_SCOPES:
                per_parts.append(part)
                continue
            key = _part_key(part, env)
            if key is not None:
                shared += [(a, key) for a in applicable(part, key, None, env, now_s)]
        # with no provider or model gauge, one pass: the buckets get every candidate
        ranked = list(candidates) if per_parts else [("", "", 0.0)]
        denied: Verdict | None = None
        for index, candidate in enumerate(ranked):
            held = list(shared)
            for part in per_parts:
                key = candidate[0] if part.is_provider else candidate[1]
                held += [(a, key) for a in applicable(part, key, None, env, now_s)]
            folded: SlotTake | None = None
            if not held:
                taken = Slots((), None, None)
            elif self._slots_in_acquire:  # taken in the buckets' call (below)
                wanted = [Gauge(a.prefix + k, int(a.limit), now + a.window_ms) for a, k in held]
                folded = SlotTake(wanted, lease)
                taken = Slots((), None, None)
            else:
                wanted = [Gauge(a.prefix + k, int(a.limit), now + a.window_ms) for a, k in held]
                try:
                    taken = slots.take_slots(wanted, lease, now, consume=consume)
                except StoreUnavailableError as err:
                    return self._store_down(err, on_store_error, now_s)
            if taken.failed is not None:
                denied = self._slot_denial(held, taken, now, env, now_s, record)
                if taken.failed < len(shared):
                    return denied  # a shared gauge is full: every candidate would be
                continue
            # the buckets; a violation is recorded by the last attempt only (one per decision)
            last = not per_parts or index == len(ranked) - 1
            one = pin
            if pin is not None and per_parts:  # this candidate's model alone
                one = PinWrite(pin.key, pin.prefix, pin.keep_ms, pin.models[index : index + 1])
            verdict = self.check(
                limits, env, [candidate] if per_parts else candidates, consume=consume,
                on_store_error=on_store_error, record=record and last, gauges=False, shadow=False,
                pin=one, slot_take=folded,
            )  # fmt: skip
            if folded is not None:
                if folded.slots is None and folded.asked:
                    return verdict  # the store is down: `on_store_error` said, nothing taken
                if folded.slots is None:  # no bucket call ran (none applies): the gauges
                    try:  # alone, nothing consumed yet
                        folded.slots = slots.take_slots(folded.gauges, lease, now, consume=consume)
                    except StoreUnavailableError as err:
                        return self._store_down(err, on_store_error, now_s)
                    if folded.slots.failed is None and verdict.option is None and consume:
                        self._release(lease)
                taken = folded.slots
                if taken.failed is not None:
                    denied = self._slot_denial(held, taken, now, env, now_s, record)
                    if taken.failed < len(shared):
                        return denied
                    continue
            if one is not None and one.written:
                pin.written = True  # type: ignore[union-attr]
            allowed = verdict.option is not None
            gauge_statuses = [
                LimitStatus(
                    a.scope, k or None, CONCURRENT, allowed,
                    max(0, int(a.limit) - n - (1 if allowed else 0)), a.limit, None, None, None,
                )
                for (a, k), n in zip(held, taken.held, strict=True)
            ]  # fmt: skip
            if not allowed:
                if consume and held and folded is None:  # (a folding store released them)
                    self._release(lease)
                by = verdict.denied_by
                if (
                    not per_parts
                    or by is None
                    or (by.scope not in PER_CANDIDATE_SCOPES and by.unit != "spend")
                ):
                    return verdict  # a shared bucket: every candidate would be denied
                denied = verdict
                continue
            if record:  # the scopes the buckets' check did not count
                counted = {st.scope for st in verdict.statuses} if last else set()
                self._tally_scopes(
                    [st.scope for st in (*verdict.statuses, *gauge_statuses)
                     if st.scope not in counted],
                    now_s,
                )  # fmt: skip
            option = index if per_parts else verdict.option
            if consume and held and self.events is not None:
                self._took_slots(lease, held, now_s)
            return _new_verdict((option, verdict.statuses + gauge_statuses, None, ()))
        if denied is None:  # no candidate at all
            return self.check(
                limits, env, (), consume=consume, on_store_error=on_store_error,
                record=record, gauges=False, shadow=False,
            )  # fmt: skip
        return denied

    def _tally_scopes(self, scopes: list[str], now_s: float) -> None:
        """`_tally` for scopes named by their statuses (an in-flight decision's)."""
        if not scopes:
            return
        if int(now_s // 86_400) != self._day_number:
            self._day(now_s)
        self._pending.append((self._day_text, tuple(scopes)))
        if len(self._pending) >= _PENDING_MAX:
            with self._lock:
                self._count_pending()

    def _slot_denial(
        self,
        held: list[tuple[Applied, str]],
        taken: Slots,
        now: float,
        env: Mapping[str, Any],
        now_s: float,
        record: bool,
    ) -> Verdict:
        """A full gauge's denial: `concurrent`, its scope and key, and a retry estimate (its
        soonest lease expiry; None when unknown)."""
        assert taken.failed is not None
        applied, key = held[taken.failed]
        retry = None if taken.free_at is None else max(0, math.ceil(taken.free_at - now))
        statuses = [
            LimitStatus(
                a.scope, k or None, CONCURRENT, i != taken.failed,
                max(0, int(a.limit) - n), a.limit, None, retry if i == taken.failed else None,
                None,
            )
            for i, ((a, k), n) in enumerate(zip(held, taken.held, strict=False))
        ]  # fmt: skip
        denial = LimitDenial(applied.scope, key or None, CONCURRENT, retry)
        if record:
            day = self._day(now_s)
            with self._lock:
                self.violations.append(
                    Violation(now_s, applied.scope, key, CONCURRENT, 1.0, 0.0, env["id"])
                )
                self.denied_tallies[(day, applied.scope)] += 1
        return _new_verdict((None, statuses, denial, ()))

    def release(self, request_id: str | None) -> int:
        """The outcome of the decision `request_id` came: free the in-flight slots it holds
        (once: a second outcome frees nothing). How many were freed; 0 when the policy has
        no `concurrent` limit (no store call then)."""
        if not self._gauged or request_id is None:
            return 0
        released = self._release(str(request_id))
        if self._shadow_gauged:  # the shadow slots' own lease
            released += self._release(str(request_id) + SHADOW_LEASE)
        if self.events is not None:
            self._released(str(request_id), self.clock())
        return released

    def _release(self, lease: str) -> int:
        slots = self._slots
        if slots is None:
            return 0
        try:
            return slots.release_slots(lease)
        except StoreUnavailableError as err:  # the lease runs out instead
            log.warning("could not release in-flight slots of `%s`: %s", lease, err)
            return 0

    # ------------------------------------------------------------------ reserve, then settle

    def _reserve(
        self,
        env: Mapping[str, Any],
        buckets: Sequence[Bucket],
        info: list[tuple[Applied, str]],
        now_s: float,
    ) -> None:
        """An allowed decision consumed its estimates: keep what its token and spend buckets
        took under its request id, until its outcome settles them (`settle`) or
        `settle_within_s` passes. Merged with what the id already holds (its shadow limits'
        buckets, taken in a second store call). On a store that keeps reservations, its
        admission call wrote the record already (`_acquire_reserving`)."""
        request_id = env["id"]
        if request_id is None or self._shared is not None:
            return
        taken = [
            Reserved(b[0], b[1], b[2], b[3], a.unit == "spend")
            for (a, _), b in zip(info, buckets, strict=False)
            if a.unit in _RESERVED_UNITS
        ]
        if not taken:
            return
        rid = str(request_id)
        with self._reserve_lock:
            table = self._reservations
            found = table.get(rid)
            if found is not None and found.expires_at > now_s:
                found.buckets.extend(taken)
                return
            if found is not None:  # an expired one under a reused id
                del table[rid]
                self.reservations_expired += 1
                if self.events is not None:
                    self._expired(rid, found, now_s)
            table[rid] = Reservation(taken, env["input_tokens"], now_s + self.settle_within_s)
            self._sweep(now_s)

    def _acquire_reserving(
        self,
        shared: Sequence[Spec],
        options: Sequence[Sequence[Bucket]],
        infos: Sequence[list[tuple[Applied, str]]],
        env: Mapping[str, Any],
        now: float,
        pins: dict[str, Any] | None = None,
    ) -> AcquireResult:
        """The consuming store call on a store that keeps reservations: its record written
        in the same call when the decision is admitted (one round trip). `infos`: the
        owners of the buckets of `shared` and of every option, whose token and spend
        buckets the ticket names (a bucket's key is its limit's prefix and the key)."""
        store = self._shared
        assert store is not None
        specs = [_specs(option) for option in options]
        request_id = env["id"]
        units = {
            a.prefix + key: a.unit for info in infos for a, key in info if a.unit in _RESERVED_UNITS
        }
        if request_id is None or not units:
            return store.acquire(shared, specs, now, **(pins or {}))
        expires_at = now + self.settle_within_s * 1000.0
        ticket = Ticket(str(request_id), env["input_tokens"], expires_at, units)
        return store.acquire_reserving(shared, specs, now, ticket, **(pins or {}))

    def _sweep(self, now_s: float) -> None:
        """Forget expired reservations, and the oldest past `MAX_RESERVATIONS` (the caller
        holds `_reserve_lock`). Oldest first: they expire in the order they were made."""
        table = self._reservations
        while table:
            oldest = next(iter(table))
            if table[oldest].expires_at > now_s and len(table) <= MAX_RESERVATIONS:
                return
            gone = table.pop(oldest)
            self.reservations_expired += 1
            if self.events is not None:
                self._expired(oldest, gone, now_s)

    def settle(
        self,
        request_id: str | None,
        *,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        cost: float | None = None,
    ) -> list[tuple[str, float]]:
        """The outcome of decision `request_id` came: settle what its estimates took, once.
        Token buckets by the tokens used (`input_tokens`, default the request's, plus
        `output_tokens`; unsettled without `output_tokens`), spend buckets by `cost`
        (unsettled when None). (bucket key, delta applied: > 0 charged, < 0 refunded) per
        bucket adjusted; [] when nothing is reserved under the id (never reserved, settled
        already, or expired)."""
        if self._shared is not None:
            return self._settle_in_store(request_id, Usage(input_tokens, output_tokens, cost))
        if request_id is None or not self._reservations or self._settles is None:
            return []
        now_s = self.clock()
        with self._reserve_lock:
            found = self._reservations.pop(str(request_id), None)
            if found is not None and found.expires_at <= now_s:
                self.reservations_expired += 1
                if self.events is not None:
                    self._expired(str(request_id), found, now_s)
                found = None
        if found is None:
            return []
        tokens = None
        if output_tokens is not None:
            tokens = (found.input_tokens if input_tokens is None else input_tokens) + output_tokens
        adjustments: list[Adjustment] = []
        units: list[str] = []
        for bucket in found.buckets:
            actual = cost if bucket.spend else tokens
            if actual is not None and actual != bucket.estimate:
                adjustments.append(
                    Adjustment(bucket.key, bucket.capacity, bucket.rate, actual - bucket.estimate)
                )
                units.append("spend" if bucket.spend else "tokens")
        applied: list[float] = []
        if adjustments:
            try:
                applied = self._settles.settle(adjustments, now_s * 1000.0)
            except StoreUnavailableError as err:  # the estimate stands
                log.warning("could not settle the reservation of `%s`: %s", request_id, err)
                with self._lock:
                    self.store_errors += 1
                if self.events is not None:
                    self._settled(str(request_id), found, tokens, cost, None, now_s)
                return []
        with self._reserve_lock:
            self.reservations_settled += 1
            for unit, delta in zip(units, applied, strict=True):
                if delta < 0:
                    self.refunded[unit] += -delta
                elif delta > 0:
                    self.charged[unit] += delta
        if self.events is not None:
            self._settled(str(request_id), found, tokens, cost, applied, now_s)
        return [(a[0], d) for a, d in zip(adjustments, applied, strict=True)]

    def _settle_in_store(self, request_id: str | None, usage: Usage) -> list[tuple[str, float]]:
        """`settle` on a store that keeps reservations: whichever instance made it, one
        store call takes the record out and applies it (the same rules, in the store).
        Asked for every outcome with a request id, unless this instance's policy is known
        to reserve nothing (an instance that only receives outcomes still settles)."""
        store = self._shared
        assert store is not None
        if request_id is None or (self._plan[1] is not None and not self._reserving):
            return []
        try:
            found = store.settle_reservation(str(request_id), usage, self.clock() * 1000.0)
        except StoreUnavailableError as err:  # the estimate stands
            log.warning("could not settle the reservation of `%s`: %s", request_id, err)
            with self._lock:
                self.store_errors += 1
            return []
        if found.state != "settled":  # absent, or expired (counted by the instance that made it)
            if found.state == "expired" and self.events is not None:
                self._store_rows(str(request_id), found, self.clock())
            return []
        with self._reserve_lock:
            self.reservations_settled += 1
            for bucket in found.applied:
                if bucket.delta < 0:
                    self.refunded[bucket.unit] += -bucket.delta
                elif bucket.delta > 0:
                    self.charged[bucket.unit] += bucket.delta
        if self.events is not None:
            self._store_rows(str(request_id), found, self.clock())
        return [(bucket.key, bucket.delta) for bucket in found.applied]

    # ------------------------------------------------------------------ analytics events

    def _settled(
        self,
        request_id: str,
        found: Reservation,
        tokens: float | None,
        cost: float | None,
        applied: list[float] | None,
        now_s: float,
    ) -> None:
        """A settled reservation's rows, one per bucket (`applied`: the deltas the store
        applied to the buckets adjusted, in order; None: the store was unavailable)."""
        events = self.events
        assert events is not None
        deltas = iter(applied or ())
        for bucket in found.buckets:
            actual = cost if bucket.spend else tokens
            delta = 0.0
            if applied is None:
                result = "store_error"
            elif actual is None:
                result = "unreported"
            else:
                result = "settled"
                if actual != bucket.estimate:
                    delta = next(deltas, 0.0)
            events.submit_event(
                SettlementRow(
                    now_s, request_id, bucket.key, event_scope(bucket.key),
                    "spend" if bucket.spend else "tokens", bucket.estimate, actual, delta, result,
                )
            )  # fmt: skip

    def _store_rows(self, request_id: str, found: Settlement, now_s: float) -> None:
        """A reservation kept in the store (Redis), settled or found expired by this
        instance's outcome: the same rows `_settled` and `_expired` write, one per bucket."""
        events = self.events
        assert events is not None
        expired = found.state == "expired"
        at = now_s
        if expired and found.expires_at is not None:
            at = min(found.expires_at / 1000.0, now_s)
        for bucket in found.buckets:
            result = (
                "expired" if expired else "settled" if bucket.actual is not None else "unreported"
            )
            events.submit_event(
                SettlementRow(
                    at, request_id, bucket.key, event_scope(bucket.key), bucket.unit,
                    bucket.estimate, bucket.actual, bucket.delta, result,
                )
            )  # fmt: skip

    def _expired(self, request_id: str, found: Reservation, now_s: float) -> None:
        """An expired reservation's rows, one per bucket: the estimate stands."""
        events = self.events
        assert events is not None
        at = min(found.expires_at, now_s)
        for bucket in found.buckets:
            events.submit_event(
                SettlementRow(
                    at, request_id, bucket.key, event_scope(bucket.key),
                    "spend" if bucket.spend else "tokens", bucket.estimate, None, 0.0, "expired",
                )
            )  # fmt: skip

    def _took_slots(self, lease: str, held: list[tuple[Applied, str]], now_s: float) -> None:
        """An allowed decision took these slots: kept until its outcome or its lease."""
        gauges = [(a.prefix + k, now_s + a.window_ms / 1000.0) for a, k in held]
        with self._reserve_lock:
            table = self._leases
            found = table.get(lease)
            if found is not None:
                found[1].extend(gauges)
                return
            if len(table) >= MAX_RESERVATIONS:
                self._sweep_leases(now_s)
                while len(table) >= MAX_RESERVATIONS:
                    del table[next(iter(table))]
                    self.untracked_leases += 1
            table[lease] = (now_s, gauges)

    def _released(self, lease: str, now_s: float) -> None:
        """The outcome of the decision `lease` came: one row per slot it took (a slot whose
        lease ran out before is a `lease` release, at its lease's end)."""
        with self._reserve_lock:
            found = self._leases.pop(lease, None)
        if found is not None:
            self._slot_rows(lease, found[0], found[1], now_s)

    def _slot_rows(
        self, lease: str, taken_s: float, gauges: list[tuple[str, float]], now_s: float
    ) -> None:
        events = self.events
        assert events is not None
        for key, ends_s in gauges:
            if ends_s > now_s:
                row = InFlightRow(
                    now_s, key, event_scope(key), lease, (now_s - taken_s) * 1000.0, "outcome"
                )
            else:
                row = InFlightRow(
                    ends_s, key, event_scope(key), lease, (ends_s - taken_s) * 1000.0, "lease"
                )
            events.submit_event(row)

    def _sweep_leases(self, now_s: float) -> None:
        """The slots whose lease ran out with no outcome: their rows (the caller holds
        `_reserve_lock`)."""
        table = self._leases
        for lease in [k for k, (_, g) in table.items() if any(e <= now_s for _, e in g)]:
            taken_s, gauges = table[lease]
            ended = [g for g in gauges if g[1] <= now_s]
            self._slot_rows(lease, taken_s, ended, now_s)
            left = [g for g in gauges if g[1] > now_s]
            if left:
                table[lease] = (taken_s, left)
            else:
                del table[lease]

    def sweep_events(self) -> None:
        """Expired reservations and leases that ran out, into the analytics events now
        (the engine's flush calls this before its writer writes; off the hot path)."""
        if self.events is None:
            return
        now_s = self.clock()
        with self._reserve_lock:
            self._sweep(now_s)
            self._sweep_leases(now_s)

    def settlement_counts(self) -> SettlementCounts:
        """The reservations' counters since the start (`/metrics`); expired ones forgotten
        first. On a store that keeps reservations: `settled` and the amounts are the
        outcomes this instance settled (whoever made them), `expired` and `outstanding` the
        reservations this instance made (one store call; its last answer when the store
        cannot be asked)."""
        if self._shared is not None:
            try:
                found = self._shared.reservation_counts(self.clock() * 1000.0)
            except StoreUnavailableError:
                found = ReservationCounts(self._last_outstanding, 0)
            with self._reserve_lock:
                self.reservations_expired += found.expired
                self._last_outstanding = found.outstanding
                return SettlementCounts(
                    self.reservations_settled, self.reservations_expired, found.outstanding,
                    dict(self.refunded), dict(self.charged),
                )  # fmt: skip
        with self._reserve_lock:
            self._sweep(self.clock())
            return SettlementCounts(
                self.reservations_settled, self.reservations_expired, len(self._reservations),
                dict(self.refunded), dict(self.charged),
            )  # fmt: skip

    def inflight(self, prefix: str = "") -> list[tuple[str, int]]:
        """(gauge key, slots held now) of every gauge holding any (whose key starts with
        `prefix`)."""
        if self._slots is None:
            return []
        return self._slots.inflight(self.clock() * 1000.0, prefix)

    def _with_shadow(
        self,
        plan: _Plan,
        limits: tuple[CompiledLimit, ...],
        env: Mapping[str, Any],
        ranked: list[tuple[str, str, float]],
        consume: bool,
        on_store_error: str,
        record: bool,
        pin: PinWrite | None = None,
    ) -> Verdict:
        """The enforced limits' verdict; when it allows, the shadow limits (`plan`) checked
        and consumed for the candidate it chose, in one more store call, all-or-nothing as
        if they were enforced: one without room consumes nothing, and its denial is
        reported and recorded, never applied. A store error there is ignored (counted)."""
        verdict = self.check(
            limits, env, ranked, consume=consume, on_store_error=on_store_error,
            record=record, shadow=False, pin=pin,
        )  # fmt: skip
        option = verdict.option
        if option is None:
            return verdict  # denied: enforcement would not have reached the shadow limits
        now_s = self.clock()
        now = now_s * 1000.0
        max_tokens = env["max_tokens"]
        tokens = env["input_tokens"] + (
            max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        )
        buckets: list[Bucket] = []
        info: list[tuple[Applied, str]] = []
        spend: list[tuple[Applied, str]] = []
        for part in plan.shared:  # runtime quotas replace enforced limits only
            key = _part_key(part, env)
            if key is None:
                continue
            applied = applicable(part, key, None, env, now_s)
            if part.spend:
                spend += [(a, key) for a in applied]
                continue
            cost = 1.0 if part.requests else tokens
            for a in applied:
                buckets.append((a.prefix + key, a.capacity, a.rate, cost))
                info.append((a, key))
        chosen = ranked[option] if option < len(ranked) else None
        if chosen is not None:
            more, more_info = self._option(plan, spend, chosen, tokens, env, now_s, {})
            buckets += more
            info += more_info
        # `shadow limit … concurrent N`: a slot of each shadow gauge, under a lease of its own
        # (given back alone when a shadow bucket has no room; with the enforced ones by the
        # outcome, `release`)
        gauges: list[tuple[Applied, str]] = []
        if self._slots is not None:
            for part in plan.inflight:
                if part.scope in PER_CANDIDATE_SCOPES:
                    if chosen is None:
                        continue
                    key = chosen[0] if part.is_provider else chosen[1]
                else:
                    key = _part_key(part, env)
                    if key is None:
                        continue
                gauges += [(a, key) for a in applicable(part, key, None, env, now_s)]
        if not buckets and not gauges:
            return verdict
        lease = str(env["id"])
        if gauges:
            assert self._slots is not None
            wanted = [Gauge(a.prefix + k, int(a.limit), now + a.window_ms) for a, k in gauges]
            try:
                taken = self._slots.take_slots(wanted, lease + SHADOW_LEASE, now, consume=consume)
            except StoreUnavailableError:
                with self._lock:
                    self.store_errors += 1
                return verdict
            if taken.failed is not None:
                applied, key = gauges[taken.failed]
                free_at = taken.free_at
                retry = None if free_at is None else max(0, math.ceil(free_at - now))
                return self._shadow_denied(
                    verdict, LimitDenial(applied.scope, key or None, CONCURRENT, retry),
                    1.0, 0.0, env, now_s, record,
                )  # fmt: skip
        if not buckets:
            return self._shadow_allowed(verdict, gauges, lease, env, now_s, consume, record)
        try:
            if consume and self._reserve_in_store:
                result = self._acquire_reserving(_specs(buckets), [], [info], env, now)
            else:
                result = self.store.acquire(_specs(buckets), (), now, consume=consume)
        except StoreUnavailableError:
            with self._lock:
                self.store_errors += 1
            if consume and gauges:
                self._release(lease + SHADOW_LEASE)
            return verdict
        allowed, outcomes, failed = result
        if allowed is not None:
            if consume and self._reserving:  # settled with the enforced limits' buckets
                self._reserve(env, buckets, info, now_s)
            return self._shadow_allowed(verdict, info + gauges, lease, env, now_s, consume, record)
        if consume and gauges:  # all-or-nothing: the shadow slots go back
            self._release(lease + SHADOW_LEASE)
        index = next((i for i, o in enumerate(outcomes) if o is failed), -1)
        if failed is None or index < 0:
            return verdict  # nothing to blame: cannot happen with a real store
        applied, key = info[index]
        status = _status(applied, key, failed)
        denial = LimitDenial(applied.scope, key or None, applied.unit, status.retry_after_ms)
        requested, have = failed[0][3], max(0.0, failed.available)
        return self._shadow_denied(verdict, denial, requested, have, env, now_s, record)

    def _shadow_allowed(
        self,
        verdict: Verdict,
        taken: list[tuple[Applied, str]],
        lease: str,
        env: Mapping[str, Any],
        now_s: float,
        consume: bool,
        record: bool,
    ) -> Verdict:
        """The shadow limits had room: counted as allowed by each shadow scope (as `_tally`
        counts), and the shadow slots taken kept for the analytics rows."""
        if record:
            self._pending.append(
                (self._day(now_s), tuple([SHADOW_MARK + a.scope for a, _ in taken]))
            )
        if consume and self.events is not None:
            slots = [(a, k) for a, k in taken if a.unit == CONCURRENT]
            if slots:
                self._took_slots(lease, slots, now_s)
        return verdict

    def _shadow_denied(
        self,
        verdict: Verdict,
        denial: LimitDenial,
        requested: float,
        have: float,
        env: Mapping[str, Any],
        now_s: float,
        record: bool,
    ) -> Verdict:
        """A shadow limit would have denied the allowed `verdict`: listed in it, and recorded
        (a `shadow:SCOPE` violation, the daily stats, the counter), never applied."""
        if record:
            day = self._day(now_s)
            scope = SHADOW_MARK + denial.scope
            with self._lock:
                self.violations.append(
                    Violation(
                        now_s,
                        scope,
                        denial.key or "",
                        denial.unit or "",
                        requested,
                        have,
                        env["id"],
                    )
                )
                self.denied_tallies[(day, scope)] += 1
                self.shadow_denied[denial.scope] += 1
        return _new_verdict((verdict.option, verdict.statuses, verdict.denied_by, (denial,)))

    def peek_shared(
        self, limits: tuple[CompiledLimit, ...], env: Mapping[str, Any]
    ) -> list[LimitStatus]:
        """Every shared limit that applies to the request (not `provider`, `model` or
        `spend`: those depend on the candidate), as `check` would report it, read from the
        store without consuming or counting anything. A refused check stops at the limit
        that refused; the service's RateLimit fields of a refused request read the others
        here (one store read per bucket: never on the hot path). Raises
        `StoreUnavailableError`."""
        known, plan = self._plan
        if known is not limits or plan is None:
            plan = self._plan_for(limits)
        now_s = self.clock()
        now = now_s * 1000.0
        max_tokens = env["max_tokens"]
        tokens = env["input_tokens"] + (
            max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        )
        quotas = self._quotas(now_s)
        statuses: list[LimitStatus] = []
        for part in plan.shared:
            key = _part_key(part, env)
            if key is None or part.spend:
                continue
            quota = quotas.get((part.scope, key)) if part.requests else None
            cost = 1.0 if part.requests else tokens
            for a in applicable(part, key, quota, env, now_s):
                spec = Spec(a.prefix + key, a.capacity, a.rate, cost)
                full_at = self.store.peek(spec.key)
                have = available(full_at, a.capacity, a.rate, now)
                fits = have + EPSILON + a.rate * TIME_SLACK_MS >= cost
                after = consumed(full_at, a.rate, cost, now) if fits else (full_at or now)
                statuses.append(_status(a, key, Outcome(spec, have, fits, after)))
        return statuses

    def _first_to_fit(
        self,
        result: AcquireResult,
        shared: int,
        option_info: list[list[tuple[Applied, str]]],
        option_buckets: list[list[Bucket]],
        now: float,
    ) -> tuple[AcquireResult, list[list[tuple[Applied, str]]]]:
        """Every candidate was denied by its own buckets (the shared ones had room): report
        the candidate that fits first (the first ranked of those that fit as soon), else,
        when none ever fits (a bucket smaller than the cost), the first ranked. The store
        reports the last candidate it tried, whose cost (under a spend limit, its price) may
        never fit while a cheaper candidate's fits in a moment. A denial path only: reads
        each bucket's level once (`peek`), and keeps the store's answer if that fails."""
        levels: dict[str, float | None] = {}
        best: tuple[int, list[Outcome], Outcome] | None = None
        best_retry = math.inf
        try:
            for index, buckets in enumerate(option_buckets):
                outcomes: list[Outcome] = []
                blamed: Outcome | None = None
                retry = 0.0  # the option fits when its slowest bucket does
                for bucket in buckets:
                    key, capacity, rate, cost = bucket
                    if key not in levels:
                        levels[key] = self.store.peek(key)
                    full_at = levels[key]
                    have = available(full_at, capacity, rate, now)
                    fits = have + EPSILON + rate * TIME_SLACK_MS >= cost
                    outcome = Outcome(
                        Spec(*bucket),
                        have,
                        fits,
                        now if full_at is None or full_at < now else full_at,
                    )
                    outcomes.append(outcome)
                    if fits or retry == math.inf:
                        continue
                    wait = math.inf if cost > capacity else math.ceil((cost - have) / rate - 1e-9)
                    if blamed is None or wait > retry:
                        blamed, retry = outcome, wait
                if blamed is None:  # it fits now (the state moved since the store's answer)
                    return result, option_info
                if best is None or retry < best_retry:
                    best, best_retry = (index, outcomes, blamed), retry
        except StoreUnavailableError:
            return result, option_info
        assert best is not None
        index, outcomes, blamed = best
        store_failed = result[2]
        if index == len(option_buckets) - 1 and store_failed and store_failed[0][0] == blamed[0][0]:
            return result, option_info  # the store's own answer (its statuses as it gave them)
        chosen = AcquireResult(None, (*result[1][:shared], *outcomes), blamed)
        return chosen, option_info[: index + 1]  # `_verdict` reports the last option given

    def _option(
        self,
        plan: _Plan,
        spend: list[tuple[Applied, str]],
        candidate: tuple[str, str, float],
        tokens: float,
        env: Mapping[str, Any],
        now_s: float,
        quotas: dict[tuple[str, str], Quota] | None,
    ) -> tuple[list[Bucket], list[tuple[Applied, str]]]:
        """One candidate's buckets (its provider and model limits, and the spend limits)."""
        provider, model_key, cost = candidate
        buckets: list[Bucket] = []
        info: list[tuple[Applied, str]] = []
        if quotas is None and plan.per_candidate:
            quotas = self._quotas(now_s)  # cached for a second
        for part in plan.per_candidate:
            key = provider if part.is_provider else model_key
            if part.static and not (quotas and (part.scope, key) in quotas):
                found = part.cache.get(key)
                if found is None:
                    found = part.static_buckets(key)
                buckets += found[0]
                info += found[1]
                continue
            unit = part.unit
            unit_cost = 1.0 if unit == "requests" else tokens if unit == "tokens" else cost
            quota = quotas.get((part.scope, key)) if quotas else None
            for a in applicable(part, key, quota, env, now_s):
                buckets.append((a.prefix + key, a.capacity, a.rate, unit_cost))
                info.append((a, key))
        for a, key in spend:
            buckets.append((a.prefix + key, a.capacity, a.rate, cost))
            info.append((a, key))
        return buckets, info

    def _store_down(self, err: Exception, mode: str, now_s: float) -> Verdict:
        """The store is down or slow: count it, log it (at most every 10 s), apply the mode."""
        with self._lock:
            self.store_errors += 1
            if now_s - self._last_store_log >= 10.0:
                self._last_store_log = now_s
                log.warning(
                    "rate-limit store unavailable (%d so far), failing %s: %s",
                    self.store_errors, mode, err,
                )  # fmt: skip
        if mode == "closed":
            return Verdict(None, [], STORE_DOWN)
        return Verdict(0, [], None)

    def _allowed(
        self,
        buckets: Sequence[Bucket],
        info: list[tuple[Applied, str]],
        taken: tuple[list[float], list[float]],
        now_s: float,
        env: Mapping[str, Any],
        scopes: tuple[str, ...] | None = None,
    ) -> Verdict:
        """The verdict when the first option (or the shared buckets alone) had room:
        what `_verdict` makes of an all-allowed result, without the outcomes. `scopes`: the
        tally's, when the caller knows them (`check_plain`: its plan's); else read here."""
        haves, fulls = taken
        statuses: list[LimitStatus] = []
        append = statuses.append
        floor = math.floor
        i = 0
        for applied, key in info:
            remaining = haves[i] - buckets[i][3]
            if applied.whole:
                remaining = floor(remaining + 1e-9)
            append(
                LimitStatus(
                    applied.scope, key or None, applied.unit, True,
                    remaining if remaining > 0 else 0, applied.limit, fulls[i] / 1000.0, None,
                    applied.window_ms,
                )
            )  # fmt: skip
            i += 1  # noqa: SIM113
        # `_tally`, with the scopes given or read here
        if scopes is None:
            scopes = tuple([applied.scope for applied, _ in info])
        if int(now_s // 86_400) != self._day_number:
            self._day(now_s)
        pending = self._pending
        pending.append((self._day_text, scopes))
        if len(pending) >= _PENDING_MAX:
            with self._lock:
                self._count_pending()
        if self._reserving:
            self._reserve(env, buckets, info, now_s)
        return _new_verdict((0, statuses, None, ()))

    def _tally(self, info: list[tuple[Applied, str]], now_s: float) -> None:
        """Count an allowed decision for every scope that applied to it: one append to the
        pending list, no lock (a list's append is atomic); counted into `allowed_tallies`
        under the lock by whoever reads them, or here every `_PENDING_MAX` decisions."""
        if int(now_s // 86_400) != self._day_number:
            self._day(now_s)
        pending = self._pending
        pending.append((self._day_text, tuple([applied.scope for applied, _ in info])))
        if len(pending) >= _PENDING_MAX:
            with self._lock:
                self._count_pending()

    def _count_pending(self) -> None:
        """The pending tallies into `allowed_tallies` (the caller holds the lock). A prefix
        is taken and deleted in two single steps, so appends racing with this stay pending."""
        pending = self._pending
        n = len(pending)
        if not n:
            return
        taken = pending[:n]
        del pending[:n]
        tallies, sets = self.allowed_tallies, self._scope_sets
        # (most entries repeat a few (day, scopes): counted alike first, in C, by `Counter`)
        for (day, seen), count in Counter(taken).items():
            scopes = sets.get(seen)
            if scopes is None:
                scopes = tuple(dict.fromkeys(seen))
                if len(sets) >= _CACHE_MAX:
                    sets.clear()
                sets[seen] = scopes
            tallies[day, scopes] += count

    def _verdict(
        self,
        result: AcquireResult,
        shared_info: list[tuple[Applied, str]],
        option_info: list[list[tuple[Applied, str]]] | None,
        env: Mapping[str, Any],
        now_s: float,
        record: bool = True,
        consume: bool = True,
    ) -> Verdict:
        option, outcomes, failed = result
        if option_info:
            if option is not None:
                info = shared_info + option_info[option]
            elif len(outcomes) > len(shared_info):
                info = shared_info + option_info[-1]
            else:
                info = shared_info
        else:
            info = shared_info
        statuses = [
            _status(applied, key, outcome)
            for (applied, key), outcome in zip(info, outcomes, strict=False)
        ]
        if option is not None:
            if record:
                self._tally(info, now_s)
            if consume and self._reserving:
                self._reserve(env, [o[0] for o in outcomes], info, now_s)
            return _new_verdict((option, statuses, None, ()))
        day = self._day(now_s)
        index = next((i for i, o in enumerate(outcomes) if o is failed), len(info) - 1)
        if index < 0 or failed is None:  # nothing to blame: cannot happen with a real store
            return Verdict(None, statuses, UNATTRIBUTED)
        applied, key = info[index]
        denied_by = LimitDenial(
            applied.scope, key or None, applied.unit, statuses[index].retry_after_ms
        )
        if not record:
            return _new_verdict((None, statuses, denied_by, ()))
        with self._lock:
            self.violations.append(
                Violation(
                    now_s, applied.scope, key, applied.unit, failed[0][3],
                    max(0.0, failed.available), env["id"],
                )
            )  # fmt: skip
            self.denied_tallies[(day, applied.scope)] += 1
        return _new_verdict((None, statuses, denied_by, ()))

    def daily_stats(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(day, scope) -> (allowed, denied): what `rate_limit_stats` holds."""
        with self._lock:
            self._count_pending()
            return _daily_stats(self.allowed_tallies, self.denied_tallies)

    def shadow_denials(self) -> dict[str, int]:
        """scope -> the decisions a shadow limit of it would have denied, since the start
        (`policyctl_shadow_denials_total`)."""
        with self._lock:
            return dict(self.shadow_denied)

    def take_logs(self) -> tuple[list[Violation], dict[tuple[str, str], tuple[int, int]]]:
        """The violations and daily stats kept so far, emptied in one step (for a flush on
        another thread: nothing added meanwhile is lost)."""
        with self._lock:
            self._count_pending()
            violations = list(self.violations)
            stats = _daily_stats(self.allowed_tallies, self.denied_tallies)
            self.violations.clear()
            self.allowed_tallies.clear()
            self.denied_tallies.clear()
        return violations, stats

    def _day(self, now_s: float) -> str:
        number = int(now_s // 86_400)
        if number != self._day_number:
            self._day_number = number
            self._day_text = time.strftime("%Y-%m-%d", time.gmtime(now_s))
        return self._day_text


def _daily_stats(
    allowed: Counter[tuple[str, tuple[str, ...]]], denied: Counter[tuple[str, str]]
) -> dict[tuple[str, str], tuple[int, int]]:
    out: dict[tuple[str, str], list[int]] = {}
    for (day, scopes), count in allowed.items():
        for scope in scopes:
            out.setdefault((day, scope), [0, 0])[0] += count
    for (day, scope), count in denied.items():
        out.setdefault((day, scope), [0, 0])[1] += count
    return {k: (v[0], v[1]) for k, v in out.items()}


def _status(applied: Applied, key: str, outcome: Outcome) -> LimitStatus:
    # the spec by position: a memory store's outcomes may hold plain tuples
    spec, available, allowed, full_at = outcome
    cost = spec[3]
    if allowed:
        remaining = available - cost
        retry = None
    else:
        remaining = available
        retry = None if cost > spec[1] else math.ceil((cost - available) / spec[2] - 1e-9)
    if applied.whole:
        remaining = math.floor(remaining + 1e-9)
    return LimitStatus(
        applied.scope,
        key or None,
        applied.unit,
        allowed,
        remaining if remaining > 0 else 0,
        applied.limit,
        full_at / 1000.0,
        retry,
        applied.window_ms,
    )
