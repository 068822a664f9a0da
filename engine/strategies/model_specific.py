"""`strategy model-specific`: a preferred model drawn by its `prefer … weight`, with a number
fixed by the request key (so a request always gets the same pick); an even draw among the
eligible when no preferred model is."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field

from engine.strategies.base import (
    KeptOrder,
    Pool,
    Ranking,
    RouteFacts,
    RouteView,
    by_index,
    strategy,
    view_fields,
)

# Routes up to this many candidates keep the ranking of each possible draw when every
# candidate is eligible (it depends on the drawn model only): at most n lists of n slots.
MAX_KEPT_CANDIDATES = 256
kept_builds = 0  # rankings built and kept (counted for tests)


@dataclass(frozen=True, slots=True)
class PreferenceView(RouteView):
    weights: tuple[float, ...]  # prefer weight by position (0 for others, 1 if none)
    weights_nonnegative: bool
    weights_uniform: bool  # all the same: the weight order is catalog order
    # every candidate eligible: the running sums of `weights` and their sum (as a request
    # computes them), and the ranking of each drawn slot, built on first use
    running: tuple[float, ...]
    total: float
    kept: dict[int, Ranking] = field(default_factory=dict, compare=False, repr=False)


def preference_view(facts: RouteFacts) -> PreferenceView:
    default = 0.0 if facts.preferred else 1.0  # the weight of a model not preferred
    weights = tuple(facts.preferred.get(key, default) for key in facts.keys)
    return PreferenceView(
        **view_fields(facts),
        weights=weights,
        weights_nonnegative=all(w >= 0 for w in weights),
        weights_uniform=len(set(weights)) <= 1,
        running=tuple(itertools.accumulate(list(weights))),
        total=sum(list(weights)),
    )


@strategy("model-specific", view=preference_view, draws=True)
def model_specific(pool: Pool) -> Ranking:
    global kept_builds
    view: PreferenceView = pool.view
    n = len(pool.cost)
    static = view.weights
    total = view.total
    uniform = view.weights_uniform
    if (
        len(static) == n
        and total > 0
        and view.weights_nonnegative
        and n <= MAX_KEPT_CANDIDATES
        and type(pool.pos) is range
    ):  # every candidate eligible: the draw alone picks among the kept rankings
        found = bisect.bisect_right(view.running, pool.draw * total)
        chosen = found if found < n else n - 1
        ranking = view.kept.get(chosen)
        if ranking is None:
            kept_builds += 1
            order, score, reason = _rank(pool, chosen, list(static), total, uniform)
            kept_order = KeptOrder(order)
            kept_order.parts = None
            ranking = view.kept[chosen] = (kept_order, score, reason)
        return ranking
    weights = list(static) if len(static) == n else [static[p] for p in pool.pos]
    total = sum(weights)
    nonnegative = view.weights_nonnegative
    uniform = view.weights_uniform
    if total <= 0:  # none of the preferred models is eligible: an even draw
        weights = [1.0] * n
        total = float(n)
        nonnegative = uniform = True
    point = pool.draw * total
    chosen = n - 1
    if nonnegative:  # running sums never fall: the first sum past the point is the draw
        found = bisect.bisect_right(list(itertools.accumulate(weights)), point)
        if found < n:
            chosen = found
    else:
        acc = 0.0
        for i, w in enumerate(weights):
            acc += w
            if w > 0 and point < acc:
                chosen = i
                break
    return _rank(pool, chosen, weights, total, uniform)


def _rank(pool: Pool, chosen: int, weights: list[float], total: float, uniform: bool) -> Ranking:
    """The ranking once `chosen` is drawn: it first, the rest by weight (unless `uniform`),
    then catalog order."""
    n = len(weights)
    ordered = by_index(pool)
    if type(ordered) is range:
        rest = [*range(chosen), *range(chosen + 1, n)]
    else:
        rest = [s for s in ordered if s != chosen]
    if not uniform:  # (equal weights leave catalog order)
        rest.sort(key=weights.__getitem__, reverse=True)
    share = weights[chosen] / total
    return (
        [chosen, *rest],
        lambda rank, slot: weights[slot] / total,
        f"Preferred model drawn by weight: {share * 100:.0f}% share among {n} eligible",
    )
