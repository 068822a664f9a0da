"""`strategy weighted(latency: 60%, cost: 40%)`: the best weighted score of latency, cost and
success rate, each in 0-1 (1 for the fastest, the cheapest, always successful)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.strategies.base import (
    Pool,
    Ranking,
    RouteFacts,
    RouteView,
    by_index,
    strategy,
    view_fields,
)

FACTORS = ("latency", "cost", "success")
DEFAULT_FACTORS = (("latency", 0.6), ("cost", 0.4))

# id(view) -> (view, latencies, success rates, latency terms, success terms): the terms of
# a route's measured columns (the evaluator's, one pair of objects per metrics snapshot),
# computed on the snapshot's first decision that has every candidate eligible
_MEASURED: dict[int, tuple[Any, Any, Any, tuple[float, ...], tuple[float, ...]]] = {}


def factor_weights(factors: tuple[tuple[str, float], ...]) -> tuple[float, float, float]:
    """(latency, cost, success) weights of normalised factors; 0 for a factor not given."""
    w = dict(factors)
    return (w.get("latency", 0.0), w.get("cost", 0.0), w.get("success", 0.0))


def latency_terms(priors: tuple[float, ...], w_latency: float) -> tuple[float, ...]:
    max_latency = max(priors, default=0.0)
    return tuple(w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0) for x in priors)


@dataclass(frozen=True, slots=True)
class WeightedView(RouteView):
    factors: tuple[tuple[str, float], ...]  # normalised weights, in policy order
    factor_weights: tuple[float, float, float]  # (latency, cost, success)
    # the latency term of every position's score when the priors stand for all,
    # w_latency * (1 - prior / max prior), as the strategy would compute it
    latency_terms: tuple[float, ...]


def weighted_view(facts: RouteFacts) -> WeightedView:
    weights = factor_weights(facts.factors)
    return WeightedView(
        **view_fields(facts),
        factors=facts.factors,
        factor_weights=weights,
        latency_terms=latency_terms(facts.latency_priors, weights[0]),
    )


@strategy(
    "weighted",
    view=weighted_view,
    factors=FACTORS,
    default_factors=DEFAULT_FACTORS,
    example="weighted(latency: 60%, cost: 40%)",
)
def weighted(pool: Pool) -> Ranking:
    lat, costs, succ = pool.lat, pool.cost, pool.succ
    view: WeightedView = pool.view
    max_latency = max(lat)
    max_cost = max(costs)
    w_latency, w_cost, w_success = view.factor_weights
    if max_cost > 0 and succ is None:
        success = w_success * 1.0
        if lat is view.latency_priors:  # every candidate, on priors: latency terms are static
            terms = view.latency_terms
            totals = [
                t + w_cost * (1.0 - c / max_cost) + success
                for t, c in zip(terms, costs, strict=True)
            ]
        elif max_latency > 0:
            totals = [
                w_latency * (1.0 - x / max_latency) + w_cost * (1.0 - c / max_cost) + success
                for x, c in zip(lat, costs, strict=True)
            ]
        else:
            totals = [w_latency * 1.0 + w_cost * (1.0 - c / max_cost) + success for c in costs]
    elif (
        max_cost > 0
        and max_latency > 0
        and succ is not None
        and len(lat) == len(view.keys)
        and type(pool.pos) is range
    ):  # every candidate, on measured columns: the latency and success terms are per snapshot
        found = _MEASURED.get(id(view))
        if found is None or found[0] is not view or found[1] is not lat or found[2] is not succ:
            if len(_MEASURED) >= 256:
                _MEASURED.clear()
            found = _MEASURED[id(view)] = (
                view,
                lat,
                succ,
                tuple(w_latency * (1.0 - x / max_latency) for x in lat),
                tuple(w_success * r for r in succ),
            )
        totals = [  # the same terms, added in the same order, as the general formula
            t + w_cost * (1.0 - c / max_cost) + r
            for t, c, r in zip(found[3], costs, found[4], strict=True)
        ]
    else:
        rates = succ if succ is not None else [1.0] * len(costs)
        totals = [
            w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0)
            + w_cost * (1.0 - c / max_cost if max_cost > 0 else 1.0)
            + w_success * r
            for x, c, r in zip(lat, costs, rates, strict=True)
        ]
    order = sorted(by_index(pool), key=totals.__getitem__, reverse=True)
    best = order[0]
    parts = {
        "latency": 1.0 - lat[best] / max_latency if max_latency > 0 else 1.0,
        "cost": 1.0 - costs[best] / max_cost if max_cost > 0 else 1.0,
        "success": succ[best] if succ is not None else 1.0,
    }
    detail = ", ".join(f"{name} {parts[name]:.2f}" for name, _ in view.factors)
    return (
        order,
        lambda rank, slot: totals[slot],
        f"Best weighted score: {totals[best]:.2f} ({detail})",
    )
