"""`strategy cost`: the lowest estimated cost of the request."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, ascending_by, by, relative, strategy
from engine.units import format_money


@strategy("cost")
def cost(pool: Pool) -> Ranking:
    costs = pool.cost
    vectors = pool.vectors
    order = None if vectors is None else ascending_by(vectors.cost, vectors.lat, pool, vectors)
    if order is None:
        order = by(costs, pool.lat, pool)
    best = costs[order[0]]
    return order, relative(costs, best), f"Lowest estimated cost: {format_money(best)}"
