"""`strategy cost`: the lowest estimated cost of the request."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, ascending_by, by, relative, strategy
from engine.units import format_money


@strategy("cost")
def cost(pool: Pool) -> Ranking:
    costs = pool.cost
    vectors = pool.vectors
    if vectors is None:
        order = by(costs, pool.lat, pool)
    else:
        order = ascending_by(vectors.cost, vectors.lat, pool, vectors)
    best = costs[order[0]]
    return order, relative(costs, best), f"Lowest estimated cost: {format_money(best)}"
