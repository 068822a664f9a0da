"""`strategy weighted(latency: 60%, cost: 40%)`: the best weighted score of latency, cost,
success rate and quality, each in 0-1 (1 for the fastest, the cheapest, always successful,
a quality score of 1). Quality is the catalog's score as it is (`quality.overall`, 0-1; a
model without one scores 0 on it, and `check` says so, W0512)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from engine.strategies.base import (
    Pool,
    Ranking,
    RouteFacts,
    RouteView,
    Vectors,
    by_index,
    descending,
    strategy,
    view_fields,
)

FACTORS = ("latency", "cost", "success", "quality")
DEFAULT_FACTORS = (("latency", 0.6), ("cost", 0.4))

# id(view) -> (view, latencies, success rates, bases): the score bases of a route's
# measured columns (the evaluator's, one pair of objects per metrics snapshot), computed on
# the snapshot's first decision that has every candidate eligible
_MEASURED: dict[int, tuple[Any, Any, Any, list[float]]] = {}
# id(view) -> (view, latencies, success rates, bases): the same for a big pool's numpy
# columns (the route's priors, or a snapshot's measured columns), all candidates eligible
_VECTOR_BASES: dict[int, tuple[Any, Any, Any, Any]] = {}
# id(view) -> (view, its quality terms as an array)
_VECTOR_TERMS: dict[int, tuple[Any, Any]] = {}


def factor_weights(factors: tuple[tuple[str, float], ...]) -> tuple[float, float, float]:
    """(latency, cost, success) weights of normalised factors; 0 for a factor not given."""
    w = dict(factors)
    return (w.get("latency", 0.0), w.get("cost", 0.0), w.get("success", 0.0))


def quality_weight(factors: tuple[tuple[str, float], ...]) -> float:
    """The `quality` weight of normalised factors; 0 when it is not given."""
    return dict(factors).get("quality", 0.0)


def bases(
    lat: Sequence[float],
    succ: Sequence[float] | None,
    weights: tuple[float, float, float],
    quality: Sequence[float] | None = None,
) -> list[float]:
    """Each candidate's score before its cost: w_latency * (1 - latency / max latency) +
    w_cost + w_success * success rate (1 when nothing is measured) + its quality term
    (`quality[slot]`, already weighted; None when quality has no weight)."""
    w_latency, w_cost, w_success = weights
    max_latency = max(lat, default=0.0)
    rates = succ if succ is not None else [1.0] * len(lat)
    if quality is None:
        return [
            w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0) + w_cost + w_success * r
            for x, r in zip(lat, rates, strict=True)
        ]
    return [
        w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0) + w_cost + w_success * r + q
        for x, r, q in zip(lat, rates, quality, strict=True)
    ]


def vector_bases(
    lat: Any, succ: Any, weights: tuple[float, float, float], quality: Any = None
) -> Any:
    """`bases` on float64 arrays: the same operations in the same order, element by element."""
    import numpy as np

    w_latency, w_cost, w_success = weights
    max_latency = float(lat.max()) if len(lat) else 0.0
    if max_latency > 0:
        out = w_latency * (1.0 - lat / max_latency)
    else:
        out = np.full(len(lat), w_latency * 1.0)
    out = out + w_cost
    out = out + (w_success * succ if succ is not None else w_success * 1.0)
    return out if quality is None else out + quality


@dataclass(frozen=True, slots=True)
class WeightedView(RouteView):
    factors: tuple[tuple[str, float], ...]  # normalised weights, in policy order
    factor_weights: tuple[float, float, float]  # (latency, cost, success)
    qualities: tuple[float | None, ...]  # every position's quality score (None: none)
    # every position's weighted quality term, w_quality * score (0 without a score); None
    # when quality has no weight
    quality_terms: tuple[float, ...] | None
    # every position's score before its cost when the priors stand for all (`bases`)
    prior_bases: tuple[float, ...]


def weighted_view(facts: RouteFacts) -> WeightedView:
    weights = factor_weights(facts.factors)
    w_quality = quality_weight(facts.factors)
    terms = tuple(w_quality * (q or 0.0) for q in facts.qualities) if w_quality > 0 else None
    return WeightedView(
        **view_fields(facts),
        factors=facts.factors,
        factor_weights=weights,
        qualities=facts.qualities,
        quality_terms=terms,
        prior_bases=tuple(bases(facts.latency_priors, None, weights, terms)),
    )


@strategy(
    "weighted",
    view=weighted_view,
    factors=FACTORS,
    default_factors=DEFAULT_FACTORS,
    example="weighted(latency: 60%, cost: 40%)",
)
def weighted(pool: Pool) -> Ranking:
    if pool.vectors is not None and (ranked := _weighted_vectors(pool, pool.vectors)) is not None:
        return ranked
    lat, costs, succ = pool.lat, pool.cost, pool.succ
    view: WeightedView = pool.view
    max_latency = max(lat)
    max_cost = max(costs)
    w_cost = view.factor_weights[1]
    # every score is `base - k * cost`: base = the latency term + w_cost + the success term,
    # k = w_cost / max cost (the cost term w_cost * (1 - cost / max cost), expanded), so the
    # per-candidate work is one multiply and one subtract; the bases are per route (priors)
    # or per metrics snapshot (measured), and every branch uses this same arithmetic
    k = w_cost / max_cost if max_cost > 0 else 0.0  # all free: the cost term is w_cost
    if succ is None and lat is view.latency_priors:  # every candidate, on priors
        totals = [b - k * c for b, c in zip(view.prior_bases, costs, strict=True)]
    elif (
        max_latency > 0
        and succ is not None
        and len(lat) == len(view.keys)
        and type(pool.pos) is range
    ):  # every candidate, on measured columns: the bases are per snapshot
        found = _MEASURED.get(id(view))
        if found is None or found[0] is not view or found[1] is not lat or found[2] is not succ:
            if len(_MEASURED) >= 256:
                _MEASURED.clear()
            found = _MEASURED[id(view)] = (
                view,
                lat,
                succ,
                bases(lat, succ, view.factor_weights, view.quality_terms),
            )
        totals = [b - k * c for b, c in zip(found[3], costs, strict=True)]
    else:
        terms = view.quality_terms
        pos = pool.pos
        if terms is not None and type(pos) is not range:
            terms = [terms[pos[0]]] if len(pos) == 1 else itemgetter(*pos)(terms)
        totals = [
            b - k * c
            for b, c in zip(bases(lat, succ, view.factor_weights, terms), costs, strict=True)
        ]
    order = sorted(by_index(pool), key=totals.__getitem__, reverse=True)
    best = order[0]
    return (
        order,
        lambda rank, slot: totals[slot],
        _reason(pool, best, totals[best], max_latency, max_cost),
    )


def _reason(pool: Pool, best: int, total: float, max_latency: float, max_cost: float) -> str:
    """Why the slot `best` (score `total`) won."""
    lat, costs, succ = pool.lat, pool.cost, pool.succ
    view: WeightedView = pool.view
    parts = {
        "latency": 1.0 - lat[best] / max_latency if max_latency > 0 else 1.0,
        "cost": 1.0 - costs[best] / max_cost if max_cost > 0 else 1.0,
        "success": succ[best] if succ is not None else 1.0,
        "quality": view.qualities[pool.pos[best]] or 0.0,
    }
    detail = ", ".join(f"{name} {parts[name]:.2f}" for name, _ in view.factors)
    return f"Best weighted score: {total:.2f} ({detail})"


def _weighted_vectors(pool: Pool, vectors: Vectors) -> Ranking | None:
    """`weighted` on a big pool's numpy columns: the same arithmetic as the lists' path
    (every score `base - k * cost`), element by element. None when k overflows (a highest
    cost so tiny that w_cost / it is inf: scores could be NaN, which Python's sort and
    numpy's order differently; the lists decide)."""
    view: WeightedView = pool.view
    lat, costs, succ = vectors.lat, vectors.cost, vectors.succ
    max_latency = float(lat.max())
    max_cost = float(costs.max())
    w_cost = view.factor_weights[1]
    k = w_cost / max_cost if max_cost > 0 else 0.0
    if not k < math.inf:
        return None
    terms: Any = None
    if view.quality_terms is not None:
        known = _VECTOR_TERMS.get(id(view))
        if known is None or known[0] is not view:
            import numpy as np

            if len(_VECTOR_TERMS) >= 256:
                _VECTOR_TERMS.clear()
            known = _VECTOR_TERMS[id(view)] = (view, np.array(view.quality_terms))
        terms = known[1] if vectors.pos is None else known[1][vectors.pos]
    if vectors.pos is None:  # every candidate: the route's or the snapshot's own arrays
        found = _VECTOR_BASES.get(id(view))
        if found is None or found[0] is not view or found[1] is not lat or found[2] is not succ:
            if len(_VECTOR_BASES) >= 256:
                _VECTOR_BASES.clear()
            found = _VECTOR_BASES[id(view)] = (
                view,
                lat,
                succ,
                vector_bases(lat, succ, view.factor_weights, terms),
            )
        base = found[3]
    else:
        base = vector_bases(lat, succ, view.factor_weights, terms)
    totals = base - k * costs
    order = descending(totals, pool, vectors)
    best = order[0]
    return (
        order,
        lambda rank, slot: float(totals[slot]),
        _reason(pool, best, float(totals[best]), max_latency, max_cost),
    )
