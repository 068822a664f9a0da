"""The six routing strategies, registered by name.

Each is a small pure function of the eligible candidates and a context, returning the
candidates ranked best first with an unrounded score in 0–1, and a sentence saying why
the first won.
Ties are broken by catalog order, so a ranking is always deterministic.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from engine.catalog import Model


class Candidate:
    """One eligible model with its estimates for this request."""

    __slots__ = ("cost", "index", "key", "latency_ms", "model", "samples", "success_rate")

    def __init__(
        self,
        model: Model,
        key: str,
        index: int,
        cost: float,
        latency_ms: float,
        success_rate: float,
        samples: int,
    ) -> None:
        self.model = model
        self.key = key  # provider/model
        self.index = index  # catalog position, for ties
        self.cost = cost  # estimated USD for this request
        self.latency_ms = latency_ms  # estimated p95: measured with enough samples, else prior
        self.success_rate = success_rate  # measured, else 1.0
        self.samples = samples

    def __repr__(self) -> str:
        return f"Candidate({self.key}, cost={self.cost:g}, latency_ms={self.latency_ms:g})"


@dataclass(slots=True)  # not frozen: built once per decision, and frozen init is slower
class Context:
    factors: tuple[tuple[str, float], ...]  # weighted: normalised weights, in policy order
    factor_weights: tuple[float, float, float]  # weighted: (latency, cost, success)
    weights: Mapping[str, float]  # model-specific: prefer weights by model key
    draw: float  # in [0, 1): deterministic per request id
    turn: int  # round-robin: how many decisions this route has made
    provider_rank: Mapping[str, int]  # failover: provider order
    fallback_models: Mapping[str, int] = field(default_factory=dict)  # failover: explicit order


Ranked = list[tuple[Candidate, float]]
Strategy = Callable[[list[Candidate], Context], tuple[Ranked, str]]

STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


def exact_money(value: float) -> str:
    """USD as given (a limit someone wrote), without rounding it into something else."""
    return "$0" if value <= 0 else "$" + f"{value:.12f}".rstrip("0").rstrip(".")


# sort keys: the measure, then the other measure, then catalog order (relative scores are
# best/x in 0–1, 1 for the best)
_BY_LATENCY = operator.attrgetter("latency_ms", "cost", "index")
_BY_COST = operator.attrgetter("cost", "latency_ms", "index")


def money(value: float) -> str:
    """USD for people: 4 decimals from a cent up, else two significant digits."""
    if value <= 0:
        return "$0"
    if value >= 0.01:
        return f"${value:.4f}".rstrip("0").rstrip(".")
    digits = max(7, 1 - math.floor(math.log10(value)))
    return f"${value:.{digits}f}".rstrip("0").rstrip(".")


@strategy("latency")
def latency(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    ordered = sorted(cands, key=_BY_LATENCY)
    best = ordered[0].latency_ms
    ranked = [(c, best / c.latency_ms if c.latency_ms > 0 else 1.0) for c in ordered]
    return ranked, f"Lowest P95 latency: {best:.0f}ms"


@strategy("cost")
def cost(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    ordered = sorted(cands, key=_BY_COST)
    best = ordered[0].cost
    ranked = [(c, best / c.cost if c.cost > 0 else 1.0) for c in ordered]
    return ranked, f"Lowest estimated cost: {money(best)}"


@strategy("weighted")
def weighted(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    max_latency = max_cost = 0.0
    for c in cands:
        if c.latency_ms > max_latency:
            max_latency = c.latency_ms
        if c.cost > max_cost:
            max_cost = c.cost
    w_latency, w_cost, w_success = ctx.factor_weights
    scored = []
    for c in cands:
        s_latency = 1.0 - c.latency_ms / max_latency if max_latency > 0 else 1.0
        s_cost = 1.0 - c.cost / max_cost if max_cost > 0 else 1.0
        total = w_latency * s_latency + w_cost * s_cost + w_success * c.success_rate
        scored.append((-total, c.index, c))  # indexes are unique: candidates never compared
    scored.sort()
    ranked = [(c, -neg) for neg, _, c in scored]
    best, total = ranked[0]
    parts = {
        "latency": 1.0 - best.latency_ms / max_latency if max_latency > 0 else 1.0,
        "cost": 1.0 - best.cost / max_cost if max_cost > 0 else 1.0,
        "success": best.success_rate,
    }
    detail = ", ".join(f"{name} {parts[name]:.2f}" for name, _ in ctx.factors)
    return ranked, f"Best weighted score: {total:.2f} ({detail})"


@strategy("model-specific")
def model_specific(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    preferred = ctx.weights
    default = 0.0 if preferred else 1.0
    weights = [preferred.get(c.key, default) for c in cands]
    total = sum(weights)
    if total <= 0:  # none of the preferred models is eligible: an even draw
        weights = [1.0] * len(cands)
        total = float(len(cands))
    point = ctx.draw * total
    chosen = len(cands) - 1
    acc = 0.0
    for i, w in enumerate(weights):
        acc += w
        if w > 0 and point < acc:
            chosen = i
            break
    rest = sorted((-w, cands[i].index, cands[i]) for i, w in enumerate(weights) if i != chosen)
    share = weights[chosen] / total
    ranked = [(cands[chosen], share)]
    ranked += [(c, -neg / total) for neg, _, c in rest]
    return ranked, (
        f"Preferred model drawn by weight: {share * 100:.0f}% share among {len(cands)} eligible"
    )


@strategy("round-robin")
def round_robin(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    n = len(cands)
    start = ctx.turn % n
    ordered = cands[start:] + cands[:start]
    ranked = [(c, 1.0 - i / n) for i, c in enumerate(ordered)]
    return ranked, f"Round-robin: candidate {start + 1} of {n}"


@strategy("failover")
def failover(cands: list[Candidate], ctx: Context) -> tuple[Ranked, str]:
    far = len(ctx.provider_rank)
    explicit = ctx.fallback_models
    last = len(explicit)
    ordered = sorted(
        enumerate(cands),
        key=lambda ic: (
            explicit.get(ic[1].key, last),  # `fallback provider/model` entries come first
            ctx.provider_rank.get(ic[1].model.provider, far),
            ic[0],
        ),
    )
    n = len(ordered)
    ranked = [(c, 1.0 - i / n) for i, (_, c) in enumerate(ordered)]
    first = ranked[0][0].model
    return ranked, f"First healthy in failover order: {first.key}"
