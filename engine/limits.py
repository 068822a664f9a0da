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

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.compiler import CompiledLimit
from engine.decision import LimitStatus
from engine.stores.base import AcquireResult, Outcome, Quota, Spec, Store

DEFAULT_OUTPUT_TOKENS = 256  # the same output estimate routing uses
PER_CANDIDATE_SCOPES = frozenset({"provider", "model"})
MAX_VIOLATIONS_KEPT = 10_000


def bucket_key(scope: str, unit: str, window_ms: float, key: str) -> str:
    return f"{scope}/{unit}/{window_ms:g}/{key}"


@dataclass(frozen=True, slots=True)
class Applied:
    """One limit as applied to one request: what to report about its bucket."""

    scope: str
    key: str
    unit: str
    limit: float
    window_ms: float
    burst: float
    source: str  # the policy location, or `quota`


@dataclass(frozen=True, slots=True)
class _Group:
    scope: str
    unit: str
    defaults: tuple[CompiledLimit, ...]
    keyed: Mapping[str, tuple[CompiledLimit, ...]]


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
    defaults: dict[tuple[str, str], list[CompiledLimit]] = {}
    keyed: dict[tuple[str, str], dict[str, list[CompiledLimit]]] = {}
    for limit in limits:
        ident = (limit.scope, limit.unit)
        if ident not in defaults:
            order.append(ident)
            defaults[ident] = []
            keyed[ident] = {}
        if limit.key is None:
            defaults[ident].append(limit)
        else:
            keyed[ident].setdefault(limit.key, []).append(limit)
    return tuple(
        _Group(
            scope,
            unit,
            tuple(defaults[(scope, unit)]),
            {k: tuple(v) for k, v in keyed[(scope, unit)].items()},
        )
        for scope, unit in order
    )


def _scope_key(limit: CompiledLimit, env: Mapping[str, Any]) -> str | None:
    if limit.scope == "global":
        return ""
    if limit.key_field is not None:
        value = env[limit.key_field]
    elif limit.key_fn is not None:
        value = limit.key_fn(env, None)
    else:
        return None
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _active(limit: CompiledLimit, env: Mapping[str, Any], now_s: float) -> bool:
    if limit.until is not None and limit.until <= now_s:
        return False
    return limit.when is None or bool(limit.when(env, None))


@dataclass
class Limiter:
    """Checks and consumes a decision's limits in one store call, and keeps the tallies."""

    store: Store
    clock: Callable[[], float] = time.time  # epoch seconds
    violations: deque[Violation] = field(default_factory=lambda: deque(maxlen=MAX_VIOLATIONS_KEPT))
    tallies: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (day, scope, verdict)
    _groups: dict[int, tuple[_Group, ...]] = field(default_factory=dict)
    _quota_cache: tuple[float, dict[tuple[str, str], Quota]] = (0.0, {})
    _lock: threading.Lock = field(default_factory=threading.Lock)

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
    ) -> list[tuple[Applied, float]]:
        """(what applies, tokens per ms) for one scope key."""
        quota = self._quotas(now_s).get((group.scope, key)) if group.unit == "requests" else None
        if quota is not None and (quota.expires_at is None or quota.expires_at > now_s):
            return [
                (
                    Applied(
                        group.scope, key, group.unit, quota.limit, quota.window_ms, quota.burst,
                        "quota",
                    ),
                    quota.limit / quota.window_ms,
                )
            ]  # fmt: skip
        keyed = [lim for lim in group.keyed.get(key, ()) if _active(lim, env, now_s)]
        chosen = keyed if keyed else [lim for lim in group.defaults if _active(lim, env, now_s)]
        return [
            (
                Applied(group.scope, key, lim.unit, lim.amount, lim.window_ms, lim.burst,
                        lim.location),
                lim.amount / lim.window_ms,
            )
            for lim in chosen
        ]  # fmt: skip

    def check(
        self,
        limits: tuple[CompiledLimit, ...],
        env: Mapping[str, Any],
        candidates: Iterable[tuple[str, str, float]],  # (provider, provider/model, cost), ranked
        *,
        consume: bool = True,
    ) -> Verdict:
        now_s = self.clock()
        now = now_s * 1000.0
        tokens = env["input_tokens"] + (
            env["max_tokens"] if env["max_tokens"] is not None else DEFAULT_OUTPUT_TOKENS
        )
        shared: list[Spec] = []
        shared_info: list[Applied] = []
        per_candidate: list[_Group] = []
        spend: list[tuple[Applied, float]] = []
        for group in self.groups(limits):
            if group.scope in PER_CANDIDATE_SCOPES:
                per_candidate.append(group)
                continue
            key = _scope_key((group.defaults or next(iter(group.keyed.values())))[0], env)
            if key is None:
                continue
            for applied, rate in self._applied(group, key, env, now_s):
                if group.unit == "spend":
                    spend.append((applied, rate))
                    continue
                cost = 1.0 if group.unit == "requests" else tokens
                shared.append(
                    Spec(
                        bucket_key(applied.scope, applied.unit, applied.window_ms, key),
                        applied.limit + applied.burst,
                        rate,
                        cost,
                    )
                )
                shared_info.append(applied)
        option_info: list[list[Applied]] = []

        def options() -> Any:
            for provider, model_key, cost in candidates:
                specs: list[Spec] = []
                info: list[Applied] = []
                for group in per_candidate:
                    key = provider if group.scope == "provider" else model_key
                    for applied, rate in self._applied(group, key, env, now_s):
                        unit_cost = (
                            1.0
                            if group.unit == "requests"
                            else tokens
                            if group.unit == "tokens"
                            else cost
                        )
                        specs.append(
                            Spec(
                                bucket_key(applied.scope, applied.unit, applied.window_ms, key),
                                applied.limit + applied.burst,
                                rate,
                                unit_cost,
                            )
                        )
                        info.append(applied)
                for applied, rate in spend:
                    specs.append(
                        Spec(
                            bucket_key(applied.scope, applied.unit, applied.window_ms, applied.key),
                            applied.limit + applied.burst,
                            rate,
                            cost,
                        )
                    )
                    info.append(applied)
                option_info.append(info)
                yield specs

        if not shared and not per_candidate and not spend:
            return Verdict(0, [], None)
        result = self.store.acquire(shared, options(), now, consume=consume)
        return self._verdict(result, shared_info, option_info, env, now_s)

    def _verdict(
        self,
        result: AcquireResult,
        shared_info: list[Applied],
        option_info: list[list[Applied]],
        env: Mapping[str, Any],
        now_s: float,
    ) -> Verdict:
        info = list(shared_info)
        if result.option is not None and option_info:
            info += option_info[result.option]
        elif len(result.outcomes) > len(shared_info) and option_info:
            info += option_info[-1]
        statuses = [
            _status(applied, outcome)
            for applied, outcome in zip(info, result.outcomes, strict=False)
        ]
        day = time.strftime("%Y-%m-%d", time.gmtime(now_s))
        denied_by = None
        with self._lock:
            if result.option is None:
                failed = result.failed
                index = next(
                    (i for i, o in enumerate(result.outcomes) if o is failed), len(statuses) - 1
                )
                applied = info[index] if info else None
                status = statuses[index] if statuses else None
                if applied is not None and failed is not None and status is not None:
                    denied_by = {
                        "scope": applied.scope,
                        "key": applied.key,
                        "unit": applied.unit,
                        "retry_after_ms": status.retry_after_ms,
                    }
                    self.violations.append(
                        Violation(
                            now_s, applied.scope, applied.key, applied.unit,
                            failed.spec.cost, max(0.0, failed.available), env["id"],
                        )
                    )  # fmt: skip
                    self.tallies[(day, applied.scope, "denied")] += 1
            else:
                for applied in info:
                    self.tallies[(day, applied.scope, "allowed")] += 1
        return Verdict(result.option, statuses, denied_by)


def _status(applied: Applied, outcome: Outcome) -> LimitStatus:
    spec = outcome.spec
    if outcome.allowed:
        remaining = outcome.available - spec.cost
        retry = None
    else:
        remaining = outcome.available
        retry = (
            None
            if spec.cost > spec.capacity
            else math.ceil((spec.cost - outcome.available) / spec.rate)
        )
    if applied.unit == "requests":
        remaining = math.floor(remaining + 1e-9)
    return LimitStatus(
        scope=applied.scope,
        key=applied.key or None,
        allowed=outcome.allowed,
        remaining=max(0.0, remaining),
        limit=applied.limit,
        reset_at=round(max(outcome.full_at, 0.0) / 1000.0, 3),
        retry_after_ms=retry,
    )
