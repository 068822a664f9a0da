"""`strategy cost`: the lowest estimated cost of the request."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, by, relative, strategy
from engine.units import format_money


@strategy("cost")
def cost(pool: Pool) -> Ranking:
    costs = pool.cost
    order = by(costs, pool.lat, pool)
    best = costs[order[0]]
    return order, relative(costs, best), f"Lowest estimated cost: {format_money(best)}"
