"""Rate limits: which `limit` statements apply to a request, and the check-and-consume.

The arithmetic (token buckets in GCRA form) lives with the store interface in
`engine.stores.base`; this module turns a request and its ranked routing candidates into
bucket specs, asks the store once (all-or-nothing), and reports per bucket.

Semantics (SPEC §2): capacity = limit + burst, refill = limit per window, continuous;
scopes global, user, ip, provider, model and named scopes with a key expression; units
requests (1 per request), tokens (the request's token estimate) and spend (the candidate's
estimated cost); `when` and `until`; a keyed limit replaces the scope's default limits for
that key, an expired one is ignored; a runtime quota replaces both for its key until it
expires. Provider and model limits, and spend limits (whose cost depends on the model), are
checked per candidate: an exhausted one makes routing take the next candidate.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.compiler import CompiledLimit
from engine.decision import LimitStatus
from engine.stores.base import AcquireResult, Outcome, Quota, Spec, Store, StoreUnavailableError

log = logging.getLogger("policyctl.limits")

# tuple.__new__ builds the named tuple without a Python-level __new__ call (hot path)
_spec = functools.partial(tuple.__new__, Spec)

DEFAULT_OUTPUT_TOKENS = 256  # the same output estimate routing uses
PER_CANDIDATE_SCOPES = frozenset({"provider", "model"})
MAX_VIOLATIONS_KEPT = 10_000


def window_text(window_ms: float) -> str:
    """Milliseconds, spelled out in full (never `8.64e+07`)."""
    return str(int(window_ms)) if float(window_ms).is_integer() else repr(float(window_ms))


def bucket_key(scope: str, unit: str, window_ms: float, key: str) -> str:
    return f"{scope}/{unit}/{window_text(window_ms)}/{key}"


class Applied:
    """One limit as it applies to requests: what to report about its buckets."""

    __slots__ = ("burst", "capacity", "limit", "prefix", "rate", "scope", "source", "unit",
                 "until", "when", "window_ms")  # fmt: skip

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
        self.limit = limit
        self.window_ms = window_ms
        self.burst = burst
        self.source = source  # the policy location, or `quota`
        self.when = when
        self.until = until
        self.capacity = limit + burst
        self.rate = limit / window_ms  # tokens per millisecond
        self.prefix = f"{scope}/{unit}/{window_text(window_ms)}/"

    def active(self, env: Mapping[str, Any], now_s: float) -> bool:
        if self.until is not None and self.until <= now_s:
            return False
        return self.when is None or bool(self.when(env, None))


def _applied_from(limit: CompiledLimit, ordinal: int) -> Applied:
    applied = Applied(
        limit.scope, limit.unit, limit.amount, limit.window_ms, limit.burst, limit.location,
        limit.when, limit.until,
    )  # fmt: skip
    if ordinal:  # a second limit with the same scope, unit and window gets its own bucket
        applied.prefix = f"{limit.scope}/{limit.unit}/{window_text(limit.window_ms)}#{ordinal + 1}/"
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


@dataclass(frozen=True, slots=True)
class Verdict:
    option: int | None  # the candidate consumed (index into the ranking), None if denied
    statuses: list[LimitStatus]
    denied_by: dict[str, Any] | None


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
    order: list[tuple[str, str]] = []
    members: dict[tuple[str, str], list[CompiledLimit]] = {}
    for limit in limits:
        ident = (limit.scope, limit.unit)
        if ident not in members:
            order.append(ident)
            members[ident] = []
        members[ident].append(limit)
    seen: Counter[tuple[str, str, float, str | None]] = Counter()
    ordinals: dict[int, int] = {}
    for limit in limits:
        ident4 = (limit.scope, limit.unit, limit.window_ms, limit.key)
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
            )
        )
    return tuple(groups)


def _scope_key(group: _Group, env: Mapping[str, Any]) -> str | None:
    if group.scope == "global":
        return ""
    if group.key_field is not None:
        value = env[group.key_field]
    elif group.key_fn is not None:
        value = group.key_fn(env, None)
    else:
        return None
    if value is None or value == "":
        return None
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@dataclass
class Limiter:
    """Checks and consumes a decision's limits in one store call, and keeps the tallies."""

    store: Store
    clock: Callable[[], float] = time.time  # epoch seconds
    violations: deque[Violation] = field(default_factory=lambda: deque(maxlen=MAX_VIOLATIONS_KEPT))
    # (day, scopes that applied) -> allowed decisions; (day, scope) -> denials by that scope
    allowed_tallies: Counter[tuple[str, tuple[str, ...]]] = field(default_factory=Counter)
    denied_tallies: Counter[tuple[str, str]] = field(default_factory=Counter)
    _groups: dict[int, tuple[_Group, ...]] = field(default_factory=dict)
    _quota_cache: tuple[float, dict[tuple[str, str], Quota]] = (0.0, {})
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _day_number: int = -1
    _day_text: str = ""
    store_errors: int = 0
    _last_store_log: float = float("-inf")

    def groups(self, limits: tuple[CompiledLimit, ...]) -> tuple[_Group, ...]:
        cached = self._groups.get(id(limits))
        if cached is None:
            cached = group_limits(limits)
            self._groups = {id(limits): cached}  # one policy at a time
        return cached

    def _quotas(self, now_s: float) -> dict[tuple[str, str], Quota]:
        loaded_at, quotas = self._quota_cache
        if now_s - loaded_at > 1.0 or loaded_at == 0.0:
            quotas = {(q.scope, q.key): q for q in self.store.quotas()}
            self._quota_cache = (now_s, quotas)
        return quotas

    def refresh_quotas(self) -> None:
        self._quota_cache = (0.0, {})

    def _applied(
        self, group: _Group, key: str, env: Mapping[str, Any], now_s: float
    ) -> tuple[Applied, ...] | list[Applied]:
        """The limits that apply to one scope key: a quota, else keyed limits, else defaults."""
        quotas = self._quota_cache[1] if now_s - self._quota_cache[0] <= 1.0 else None
        if quotas is None:
            quotas = self._quotas(now_s)
        if quotas and group.unit == "requests":
            quota = quotas.get((group.scope, key))
            if quota is not None and (quota.expires_at is None or quota.expires_at > now_s):
                return [
                    Applied(group.scope, "requests", quota.limit, quota.window_ms, quota.burst,
                            "quota")
                ]  # fmt: skip
        if group.keyed:
            keyed = [a for a in group.keyed.get(key, ()) if a.active(env, now_s)]
            if keyed:
                return keyed
        if group.conditional:
            return [a for a in group.defaults if a.active(env, now_s)]
        return group.defaults

    def check(
        self,
        limits: tuple[CompiledLimit, ...],
        env: Mapping[str, Any],
        candidates: Iterable[tuple[str, str, float]],  # (provider, provider/model, cost), ranked
        *,
        consume: bool = True,
        on_store_error: str = "open",
    ) -> Verdict:
        now_s = self.clock()
        now = now_s * 1000.0
        tokens = env["input_tokens"] + (
            env["max_tokens"] if env["max_tokens"] is not None else DEFAULT_OUTPUT_TOKENS
        )
        shared: list[Spec] = []
        shared_info: list[tuple[Applied, str]] = []
        per_candidate: list[_Group] = []
        spend: list[tuple[Applied, str]] = []
        for group in self.groups(limits):
            if group.scope in PER_CANDIDATE_SCOPES:
                per_candidate.append(group)
                continue
            key = _scope_key(group, env)
            if key is None:
                continue
            for applied in self._applied(group, key, env, now_s):
                if group.unit == "spend":
                    spend.append((applied, key))
                    continue
                cost = 1.0 if group.unit == "requests" else tokens
                shared.append(_spec((applied.prefix + key, applied.capacity, applied.rate, cost)))
                shared_info.append((applied, key))
        if not per_candidate and not spend:
            if not shared:
                return Verdict(0, [], None)
            try:
                result = self.store.acquire(shared, (), now, consume=consume)
            except StoreUnavailableError as err:
                return self._store_down(err, on_store_error, now_s)
            return self._verdict(result, shared_info, [], env, now_s)
        option_info: list[list[tuple[Applied, str]]] = []

        def options() -> Iterator[list[Spec]]:
            for provider, model_key, cost in candidates:
                specs: list[Spec] = []
                info: list[tuple[Applied, str]] = []
                for group in per_candidate:
                    key = provider if group.scope == "provider" else model_key
                    unit = group.unit
                    unit_cost = 1.0 if unit == "requests" else tokens if unit == "tokens" else cost
                    for applied in self._applied(group, key, env, now_s):
                        specs.append(
                            _spec((applied.prefix + key, applied.capacity, applied.rate, unit_cost))
                        )
                        info.append((applied, key))
                for applied, key in spend:
                    specs.append(
                        _spec((applied.prefix + key, applied.capacity, applied.rate, cost))
                    )
                    info.append((applied, key))
                option_info.append(info)
                yield specs

        try:
            result = self.store.acquire(shared, options(), now, consume=consume)
        except StoreUnavailableError as err:
            return self._store_down(err, on_store_error, now_s)
        return self._verdict(result, shared_info, option_info, env, now_s)

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
            return Verdict(
                None,
                [],
                {"scope": "store", "key": None, "unit": None, "retry_after_ms": None},
            )
        return Verdict(0, [], None)

    def _verdict(
        self,
        result: AcquireResult,
        shared_info: list[tuple[Applied, str]],
        option_info: list[list[tuple[Applied, str]]],
        env: Mapping[str, Any],
        now_s: float,
    ) -> Verdict:
        info = list(shared_info)
        if result.option is not None and option_info:
            info += option_info[result.option]
        elif len(result.outcomes) > len(shared_info) and option_info:
            info += option_info[-1]
        statuses = [
            _status(applied, key, outcome)
            for (applied, key), outcome in zip(info, result.outcomes, strict=False)
        ]
        day = self._day(now_s)
        if result.option is not None:
            scopes = tuple(dict.fromkeys(applied.scope for applied, _ in info))
            with self._lock:
                self.allowed_tallies[(day, scopes)] += 1
            return Verdict(result.option, statuses, None)
        failed = result.failed
        index = next((i for i, o in enumerate(result.outcomes) if o is failed), len(info) - 1)
        if index < 0 or failed is None:  # nothing to blame: cannot happen with a real store
            return Verdict(
                None, statuses, {"scope": "unknown", "key": None, "retry_after_ms": None}
            )
        applied, key = info[index]
        denied_by = {
            "scope": applied.scope,
            "key": key or None,
            "unit": applied.unit,
            "retry_after_ms": statuses[index].retry_after_ms,
        }
        with self._lock:
            self.violations.append(
                Violation(
                    now_s, applied.scope, key, applied.unit, failed.spec.cost,
                    max(0.0, failed.available), env["id"],
                )
            )  # fmt: skip
            self.denied_tallies[(day, applied.scope)] += 1
        return Verdict(None, statuses, denied_by)

    def daily_stats(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(day, scope) -> (allowed, denied): what `rate_limit_stats` holds."""
        out: dict[tuple[str, str], list[int]] = {}
        with self._lock:
            for (day, scopes), count in self.allowed_tallies.items():
                for scope in scopes:
                    out.setdefault((day, scope), [0, 0])[0] += count
            for (day, scope), count in self.denied_tallies.items():
                out.setdefault((day, scope), [0, 0])[1] += count
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _day(self, now_s: float) -> str:
        number = int(now_s // 86_400)
        if number != self._day_number:
            self._day_number = number
            self._day_text = time.strftime("%Y-%m-%d", time.gmtime(now_s))
        return self._day_text


def _status(applied: Applied, key: str, outcome: Outcome) -> LimitStatus:
    spec = outcome.spec
    if outcome.allowed:
        remaining = outcome.available - spec.cost
        retry = None
    else:
        remaining = outcome.available
        retry = (
            None
            if spec.cost > spec.capacity
            else math.ceil((spec.cost - outcome.available) / spec.rate - 1e-9)
        )
    if applied.unit == "requests":
        remaining = math.floor(remaining + 1e-9)
    return LimitStatus(
        applied.scope,
        key or None,
        applied.unit,
        outcome.allowed,
        remaining if remaining > 0 else 0,
        applied.limit,
        outcome.full_at / 1000.0,
        retry,
    )
