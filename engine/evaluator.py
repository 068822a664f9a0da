"""evaluate(program, request_env, …) -> Decision. No parsing, no I/O, no concrete store.

Order of work for one request:
1. the first route whose `when` holds (file order), else `defaults` over the catalog;
2. the route's candidates (prefer/exclude/require were resolved at compile time);
3. capability filtering, always: vision/tools/json/streaming, context window, max_tokens,
   the request's max_cost and max_latency as hard limits on the estimate, and health
   (success rate under the threshold with enough samples, or cooldown);
4. the route's strategy ranks what is left; the first wins;
5. alternatives, the fallback chain, confidence, and (with `explain`) a trace.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.catalog import Model
from engine.compiler import CAPABILITY_BITS, CompiledRoute, ModelRow, Program
from engine.decision import Alternative, Decision, LimitStatus
from engine.limits import Limiter, Verdict
from engine.metrics import MetricsView, NoMetrics
from engine.strategies import STRATEGIES, Candidate, Context, exact_money, money

DEFAULT_OUTPUT_TOKENS = 256  # output estimate when a request gives no max_tokens
MAX_ALTERNATIVES = 3
PRIOR_CONFIDENCE = 0.25  # confidence while only catalog priors stand
HEALTH_PROBE_MS = 60_000.0  # an unhealthy model with no outcome for this long is probed


@dataclass
class EvalState:
    """The little mutable state routing keeps between decisions (round-robin turns)."""

    turns: dict[str, int] = field(default_factory=dict)


def draw(key: str) -> float:
    """A number in [0, 1) fixed by the request key: random picks are reproducible."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _needs_mask(env: Mapping[str, Any]) -> int:
    mask = 0
    if env["requires_vision"]:
        mask |= 1
    if env["requires_tools"]:
        mask |= 2
    if env["requires_json"]:
        mask |= 4
    if env["stream"]:
        mask |= 8
    return mask


def _capability_problem(row: ModelRow, needs: int, env: Mapping[str, Any]) -> str | None:
    if needs & ~row.supports_mask:
        for capability, bit in CAPABILITY_BITS.items():
            if needs & bit and not row.supports_mask & bit:
                return f"does not support {capability}"
    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    if max_tokens is not None and max_tokens > row.max_tokens:
        return f"max_tokens {max_tokens:.0f} exceeds the model's limit of {row.max_tokens}"
    needed = input_tokens + (max_tokens or 0)
    if needed > row.context_window:
        return (
            f"needs {needed:.0f} tokens of context (input {input_tokens:.0f} + max_tokens "
            f"{max_tokens or 0:.0f}), the model has {row.context_window}"
        )
    return None


def _route_for(program: Program, env: Mapping[str, Any], trace: list[dict[str, Any]] | None):
    for route in program.routes:
        matched = route.when is None or route.when(env, None)
        if trace is not None:
            trace.append(
                {"step": "route", "route": route.name, "when": route.when_text, "matched": matched}
            )
        if matched:
            return route
    if trace is not None:
        trace.append({"step": "route", "route": "default", "when": None, "matched": True})
    return program.default_route


def evaluate(
    program: Program,
    env: Mapping[str, Any],
    *,
    metrics: MetricsView | None = None,
    state: EvalState | None = None,
    explain: bool = False,
    limiter: Limiter | None = None,
    consume: bool = True,
    now: float = 0.0,
) -> Decision:
    metrics = metrics or NoMetrics()
    trace: list[dict[str, Any]] | None = [] if explain else None
    route = _route_for(program, env, trace)
    settings = route.settings
    if trace is not None:
        for model, because in route.dropped:
            trace.append(_drop(model, because))

    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    max_cost = env["max_cost"]
    max_latency = env["max_latency"]
    needs = _needs_mask(env)
    measuring = metrics.has_data
    min_samples = settings.min_samples
    survivors: list[Candidate] = []
    dropped: list[tuple[Model, str]] = []
    context_needed = input_tokens + (max_tokens or 0)
    for row in route.rows:
        if (
            needs & ~row.supports_mask
            or context_needed > row.context_window
            or (max_tokens is not None and max_tokens > row.max_tokens)
        ):
            problem = _capability_problem(row, needs, env)
        else:
            problem = None
        if problem is None and route.requires:
            attrs = program.model_attrs[row.key]
            for pred, text in route.requires:
                if not pred(env, attrs):
                    problem = f"fails `require {text}`"
                    break
        stats = metrics.stats(row.key) if measuring and problem is None else None
        measured = stats is not None and stats.samples >= min_samples
        if stats is not None and problem is None:
            if (
                settings.cooldown_failures
                and stats.consecutive_failures >= settings.cooldown_failures
                and (now - stats.last_failure_at) * 1000.0 < settings.cooldown_ms
            ):
                left = settings.cooldown_ms - (now - stats.last_failure_at) * 1000.0
                problem = (
                    f"in cooldown after {stats.consecutive_failures} consecutive failures"
                    f" ({left / 1000:.1f}s left)"
                )
            elif (
                measured
                and stats.success_rate < settings.min_success_rate
                and (now - stats.last_outcome_at) * 1000.0
                < (settings.cooldown_ms or HEALTH_PROBE_MS)
            ):  # unhealthy; once quiet for a probe interval it gets one request again
                problem = (
                    f"success rate {stats.success_rate:.0%} is under "
                    f"{settings.min_success_rate:.0%} over {stats.samples} samples"
                )
        if problem is None:
            if max_tokens is not None:
                output = max_tokens
            else:
                output = min(DEFAULT_OUTPUT_TOKENS, row.max_tokens)
            cost = (input_tokens * row.input_price + output * row.output_price) / 1e6
            latency = stats.p95_ms if measured else row.latency_prior_ms  # type: ignore[union-attr]
            if max_cost is not None and cost > max_cost:
                problem = f"estimated cost {money(cost)} exceeds max_cost {exact_money(max_cost)}"
            elif max_latency is not None and latency > max_latency:
                problem = f"estimated latency {latency:.0f}ms exceeds max_latency {max_latency:g}ms"
            else:
                survivors.append(
                    Candidate(
                        row.model,
                        row.key,
                        row.index,
                        cost,
                        latency,
                        stats.success_rate if measured else 1.0,  # type: ignore[union-attr]
                        stats.samples if stats is not None else 0,
                    )
                )
                continue
        dropped.append((row.model, problem))
        if trace is not None:
            trace.append(_drop(row.model, problem))

    if not survivors:
        return _no_eligible_model(program, env, route, dropped, trace)

    turn = 0
    if settings.strategy == "round-robin":
        turn = state.turns.get(route.name, 0) if state is not None else 0
        if state is not None:
            state.turns[route.name] = turn + 1
    ctx = Context(
        factors=settings.factors,
        factor_weights=route.factor_weights,
        weights=route.weights,
        draw=draw(env["key"]) if settings.strategy == "model-specific" else 0.0,
        turn=turn,
        provider_rank=route.provider_rank,
        fallback_models=route.fallback_order,
    )
    ranked, reason = STRATEGIES[settings.strategy](survivors, ctx)
    statuses: list[LimitStatus] = []
    limited: set[str] = set()  # providers skipped at a rate limit: not fallbacks either
    if limiter is not None and program.limits:
        verdict = limiter.check(
            program.limits,
            env,
            ((c.model.provider, c.key, c.cost) for c, _ in ranked),
            consume=consume,
            on_store_error=settings.on_store_error,
        )
        statuses = verdict.statuses
        if verdict.option is None:
            return _rate_limited(program, env, route, verdict, trace)
        if verdict.option:
            skipped = ranked[: verdict.option]
            ranked = ranked[verdict.option :]  # the skipped are neither alternatives nor fallbacks
            limited = {c.model.provider for c, _ in skipped}
            n = len(skipped)
            reason = (
                f"Ranked #{n + 1} by {settings.strategy}: the {n} ranked above"
                f" {'it is' if n == 1 else 'it are'} at a provider or model rate limit"
                f" ({', '.join(c.key for c, _ in skipped[:3])}{', …' if n > 3 else ''})"
            )
            if trace is not None:
                for c, _ in skipped:
                    trace.append(_drop(c.model, "at a provider or model rate limit"))
    chosen = ranked[0][0]
    if trace is not None:
        trace.append(
            {
                "step": "choose",
                "strategy": settings.strategy,
                "ranking": [
                    {"provider": c.model.provider, "model": c.model.id, "score": round(s, 4)}
                    for c, s in ranked
                ],
            }
        )
    samples = chosen.samples
    if samples <= 0:  # catalog priors only
        confidence = PRIOR_CONFIDENCE
    elif min_samples <= 0:
        confidence = 1.0
    else:
        confidence = PRIOR_CONFIDENCE + (1 - PRIOR_CONFIDENCE) * min(1.0, samples / min_samples)
    return Decision(
        request_id=env["id"],
        allowed=True,
        provider=chosen.model.provider,
        model=chosen.model.id,
        route=route.name,
        strategy=settings.strategy,
        reason=reason,
        estimated_cost=round(chosen.cost, 10),
        estimated_latency_ms=round(chosen.latency_ms, 3),
        confidence=round(confidence, 4),
        alternatives=[
            Alternative(c.model.provider, c.model.id, round(s, 4))
            for c, s in ranked[1 : 1 + MAX_ALTERNATIVES]
        ],
        fallbacks=_fallbacks(route, ranked, limited),
        rate_limits=statuses,
        policy_version=program.version,
        trace=trace,
    )


def _fallbacks(
    route: CompiledRoute, ranked: list[tuple[Candidate, float]], limited: set[str]
) -> list[dict[str, str]]:
    """Explicit `fallback provider/model` entries first, then for each other provider in
    fallback order its best-ranked eligible model; none from a provider skipped at a limit."""
    chosen = ranked[0][0].model
    chain: list[Model] = []
    if route.settings.fallback_models:
        eligible = {c.key: c.model for c, _ in ranked}
        for key in route.settings.fallback_models:
            model = eligible.get(key)
            if model is not None and model is not chosen and model not in chain:
                chain.append(model)
    best_by_provider: dict[str, Model] = {}
    for c, _ in ranked:
        if c.model.provider not in best_by_provider:
            best_by_provider[c.model.provider] = c.model
    chain = [m for m in chain if m.provider not in limited]
    covered = {m.provider for m in chain} | limited
    covered.add(chosen.provider)
    for provider in route.provider_order:
        if provider not in covered and provider in best_by_provider:
            chain.append(best_by_provider[provider])
    return [{"provider": m.provider, "model": m.id} for m in chain]


def _drop(model: Model, because: str) -> dict[str, Any]:
    return {"step": "drop", "provider": model.provider, "model": model.id, "because": because}


def _rate_limited(
    program: Program,
    env: Mapping[str, Any],
    route: CompiledRoute,
    verdict: Verdict,
    trace: list[dict[str, Any]] | None,
) -> Decision:
    denied = verdict.denied_by or {}
    scope, key = denied.get("scope", "?"), denied.get("key", "")
    retry = denied.get("retry_after_ms")
    who = f"{scope} `{key}`" if key else scope
    when = (
        f"retry after {retry} ms" if retry is not None else "the request is larger than the limit"
    )
    if trace is not None:
        trace.append({"step": "limit", "denied_by": denied})
    return Decision(
        request_id=env["id"],
        allowed=False,
        provider=None,
        model=None,
        route=route.name,
        strategy=route.settings.strategy,
        reason=f"Rate limited by {who} ({denied.get('unit', 'requests')}): {when}",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        rate_limits=verdict.statuses,
        denied_by=denied,
        policy_version=program.version,
        trace=trace,
    )


def _no_eligible_model(
    program: Program,
    env: Mapping[str, Any],
    route: CompiledRoute,
    dropped: list[tuple[Model, str]],
    trace: list[dict[str, Any]] | None,
) -> Decision:
    candidates = [
        {"provider": m.provider, "model": m.id, "dropped_because": because}
        for m, because in (*route.dropped, *dropped)
    ]
    n = len(candidates)
    return Decision(
        request_id=env["id"],
        allowed=False,
        provider=None,
        model=None,
        route=route.name,
        strategy=route.settings.strategy,
        reason=f"No eligible model: all {n} candidates of route `{route.name}` were dropped",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        denied_by={"reason": "no_eligible_model", "candidates": candidates},
        policy_version=program.version,
        trace=trace,
    )
