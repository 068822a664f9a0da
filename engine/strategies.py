"""The six routing strategies, registered by name.

Each is a small pure function of the eligible candidates and a context, returning the
candidates ranked best first with a score in 0–1, and a sentence saying why the first won.
Ties are broken by catalog order, so a ranking is always deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from engine.catalog import Model


@dataclass(slots=True)
class Candidate:
    model: Model
    cost: float  # estimated USD for this request
    latency_ms: float  # estimated p95: measured once there are enough samples, else the prior
    success_rate: float  # measured, else 1.0
    samples: int


@dataclass(frozen=True, slots=True)
class Context:
    factors: tuple[tuple[str, float], ...]  # weighted: normalised weights
    weights: Mapping[str, float]  # model-specific: prefer weights by model key
    draw: float  # in [0, 1): deterministic per request id
    turn: int  # round-robin: how many decisions this route has made
    provider_rank: Mapping[str, int]  # failover: provider order


Ranked = list[tuple[Candidate, float]]
Strategy = Callable[[list[Candidate], Context], tuple[Ranked, str]]

STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


def _relative(best: float, value: float) -> float:
    """best/value in 0–1 (1 for the best); 1 when both are zero."""
    if value <= 0:
        return 1.0
    return best / value


def money(value: float) -> str:
    if value == 0:
        return "$0"
    if value >= 0.01:
        return f"${value:.4f}".rstrip("0").rstrip(".")
    return f"${value:.6f}".rstrip("0")


@strategy("latency")
def latency(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    ordered = sorted(cands, key=lambda c: (c.latency_ms, c.cost, c.model.index))
    best = ordered[0].latency_ms
    ranked = [(c, round(_relative(best, c.latency_ms), 4)) for c in ordered]
    return ranked, f"Lowest P95 latency: {best:.0f}ms"


@strategy("cost")
def cost(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    ordered = sorted(cands, key=lambda c: (c.cost, c.latency_ms, c.model.index))
    best = ordered[0].cost
    ranked = [(c, round(_relative(best, c.cost), 4)) for c in ordered]
    return ranked, f"Lowest estimated cost: {money(best)}"


@strategy("weighted")
def weighted(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    max_latency = max(c.latency_ms for c in cands)
    max_cost = max(c.cost for c in cands)
    scored: list[tuple[float, int, Candidate, dict[str, float]]] = []
    for c in cands:
        parts = {
            "latency": 1.0 - c.latency_ms / max_latency if max_latency > 0 else 1.0,
            "cost": 1.0 - c.cost / max_cost if max_cost > 0 else 1.0,
            "success": c.success_rate,
        }
        total = sum(w * parts[name] for name, w in ctx.factors)
        scored.append((-total, c.model.index, c, parts))
    scored.sort(key=lambda s: (s[0], s[1]))
    ranked = [(c, round(-neg, 4)) for neg, _, c, _ in scored]
    neg, _, _, parts = scored[0]
    detail = ", ".join(f"{name} {parts[name]:.2f}" for name, _ in ctx.factors)
    return ranked, f"Best weighted score: {-neg:.2f} ({detail})"


@strategy("model-specific")
def model_specific(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    weights = [(c, ctx.weights.get(c.model.key, 0.0 if ctx.weights else 1.0)) for c in cands]
    if not any(w > 0 for _, w in weights):  # none of the preferred models is eligible
        weights = [(c, 1.0) for c in cands]
    total = sum(w for _, w in weights)
    point = ctx.draw * total
    chosen = weights[-1][0]
    acc = 0.0
    for c, w in weights:
        acc += w
        if w > 0 and point < acc:
            chosen = c
            break
    rest = sorted(
        ((c, w) for c, w in weights if c is not chosen), key=lambda cw: (-cw[1], cw[0].model.index)
    )
    share = dict((c.model.key, w / total) for c, w in weights)
    ranked = [(chosen, round(share[chosen.model.key], 4))]
    ranked += [(c, round(w / total, 4)) for c, w in rest]
    return ranked, (
        f"Preferred model drawn by weight: {share[chosen.model.key] * 100:.0f}% share "
        f"among {len(cands)} eligible"
    )


@strategy("round-robin")
def round_robin(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    n = len(cands)
    start = ctx.turn % n
    ordered = cands[start:] + cands[:start]
    ranked = [(c, round(1.0 - i / n, 4)) for i, c in enumerate(ordered)]
    return ranked, f"Round-robin: candidate {start + 1} of {n}"


@strategy("failover")
def failover(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    far = len(ctx.provider_rank)
    ordered = sorted(
        enumerate(cands), key=lambda ic: (ctx.provider_rank.get(ic[1].model.provider, far), ic[0])
    )
    n = len(ordered)
    ranked = [(c, round(1.0 - i / n, 4)) for i, (_, c) in enumerate(ordered)]
    first = ranked[0][0].model
    return ranked, f"First healthy in failover order: {first.key}"
