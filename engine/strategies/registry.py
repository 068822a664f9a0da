"""The six routing strategies, registered by name.

Each is a small pure function of the eligible candidates (a `Pool`: parallel columns, one
slot per model) returning the slots ranked best first, the unrounded score in 0–1 of a
ranked slot (computed only for the few a decision shows), and a sentence saying why the
first won.
Ties are broken by catalog order, so a ranking is always deterministic.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RouteView:
    """What the strategies read about a route, per candidate position, built at compile time."""

    factors: tuple[tuple[str, float], ...]  # weighted: normalised weights, in policy order
    factor_weights: tuple[float, float, float]  # weighted: (latency, cost, success)
    keys: tuple[str, ...]  # provider/model
    indexes: tuple[int, ...]  # catalog positions, for ties
    index_sorted: bool  # positions are already in catalog order
    weights: tuple[float, ...]  # model-specific: prefer weight (0 for others, 1 if none)
    weights_nonnegative: bool
    weights_uniform: bool  # all the same: the weight order is catalog order
    failover_order: tuple[int, ...]  # failover: positions, explicit models then providers
    latency_priors: tuple[float, ...]  # the catalog p95 priors, by position
    # weighted: the latency term of every position's score when the priors stand for all,
    # w_latency * (1 - prior / max prior), as the strategy would compute it
    latency_terms: tuple[float, ...]


def latency_terms(priors: tuple[float, ...], w_latency: float) -> tuple[float, ...]:
    max_latency = max(priors, default=0.0)
    return tuple(w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0) for x in priors)


class Pool:
    """The eligible models of one request as parallel columns, one slot per model, in route
    order: `pos[s]` is the route position of slot s, `cost[s]` its estimated USD, `lat[s]` its
    estimated p95 (measured with enough samples, else the prior), `succ[s]` its measured
    success rate (None: 1.0 for every slot)."""

    __slots__ = ("cost", "draw", "lat", "pos", "succ", "turn", "view")

    def __init__(
        self,
        view: RouteView,
        pos: Sequence[int],
        cost: Sequence[float],
        lat: Sequence[float],
        succ: Sequence[float] | None,
        draw: float = 0.0,
        turn: int = 0,
    ) -> None:
        self.view = view
        self.pos = pos
        self.cost = cost
        self.lat = lat
        self.succ = succ
        self.draw = draw  # model-specific: in [0, 1), deterministic per request id
        self.turn = turn  # round-robin: how many decisions this route has made


# (slots best first, score of (rank, slot) in 0-1 unrounded, why the first won)
Ranking = tuple[list[int], Callable[[int, int], float], str]
Strategy = Callable[[Pool], Ranking]

STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str) -> Callable[[Strategy], Strategy]:
    def register(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return register


def exact_money(value: float) -> str:
    """USD as given (a limit someone wrote), without rounding it into something else."""
    return "$0" if value <= 0 else "$" + f"{value:.12f}".rstrip("0").rstrip(".")


def money(value: float) -> str:
    """USD for people: 4 decimals from a cent up, else two significant digits."""
    if value <= 0:
        return "$0"
    if value >= 0.01:
        return f"${value:.4f}".rstrip("0").rstrip(".")
    digits = max(7, 1 - math.floor(math.log10(value)))
    return f"${value:.{digits}f}".rstrip("0").rstrip(".")


def _by_index(pool: Pool) -> Sequence[int]:
    """The slots in catalog order: sorts keyed by a measure alone then break ties by catalog
    order (Python's sort is stable, also with reverse=True)."""
    n = len(pool.cost)
    view = pool.view
    if view.index_sorted:
        return range(n)
    indexes, pos = view.indexes, pool.pos
    return sorted(range(n), key=lambda s: indexes[pos[s]])


def _by(first: Sequence[float], second: Sequence[float], pool: Pool) -> list[int]:
    """Slots by (first, second, catalog order): two stable sorts, the minor key first."""
    order = sorted(_by_index(pool), key=second.__getitem__)
    order.sort(key=first.__getitem__)
    return order


def _relative(values: Sequence[float], best: float) -> Callable[[int, int], float]:
    """Scores best/x in 0–1, 1 for the best."""

    def score(rank: int, slot: int) -> float:
        value = values[slot]
        return best / value if value > 0 else 1.0

    return score


@strategy("latency")
def latency(pool: Pool) -> Ranking:
    lat = pool.lat
    order = _by(lat, pool.cost, pool)
    best = lat[order[0]]
    return order, _relative(lat, best), f"Lowest P95 latency: {best:.0f}ms"


@strategy("cost")
def cost(pool: Pool) -> Ranking:
    costs = pool.cost
    order = _by(costs, pool.lat, pool)
    best = costs[order[0]]
    return order, _relative(costs, best), f"Lowest estimated cost: {money(best)}"


@strategy("weighted")
def weighted(pool: Pool) -> Ranking:
    lat, costs, succ = pool.lat, pool.cost, pool.succ
    view = pool.view
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
    else:
        rates = succ if succ is not None else [1.0] * len(costs)
        totals = [
            w_latency * (1.0 - x / max_latency if max_latency > 0 else 1.0)
            + w_cost * (1.0 - c / max_cost if max_cost > 0 else 1.0)
            + w_success * r
            for x, c, r in zip(lat, costs, rates, strict=True)
        ]
    order = sorted(_by_index(pool), key=totals.__getitem__, reverse=True)
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


@strategy("model-specific")
def model_specific(pool: Pool) -> Ranking:
    view = pool.view
    n = len(pool.cost)
    static = view.weights
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
    by_index = _by_index(pool)
    if type(by_index) is range:
        rest = [*range(chosen), *range(chosen + 1, n)]
    else:
        rest = [s for s in by_index if s != chosen]
    if not uniform:  # (equal weights leave catalog order)
        rest.sort(key=weights.__getitem__, reverse=True)
    share = weights[chosen] / total
    return (
        [chosen, *rest],
        lambda rank, slot: weights[slot] / total,
        f"Preferred model drawn by weight: {share * 100:.0f}% share among {n} eligible",
    )


@strategy("round-robin")
def round_robin(pool: Pool) -> Ranking:
    n = len(pool.cost)
    start = pool.turn % n
    order = [*range(start, n), *range(start)]
    return order, lambda rank, slot: 1.0 - rank / n, f"Round-robin: candidate {start + 1} of {n}"


@strategy("failover")
def failover(pool: Pool) -> Ranking:
    view = pool.view
    pos = pool.pos
    n = len(pos)
    if n == len(view.keys):  # every candidate is eligible: slots are positions
        order = list(view.failover_order)
    else:
        slot_of = {p: s for s, p in enumerate(pos)}
        order = [slot_of[p] for p in view.failover_order if p in slot_of]
    first = view.keys[pos[order[0]]]
    return (
        order,
        lambda rank, slot: 1.0 - rank / n,
        f"First healthy in failover order: {first}",
    )
