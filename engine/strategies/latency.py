"""`strategy latency`: the lowest p95 latency (measured with enough samples, else the prior)."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, by, relative, strategy


@strategy("latency")
def latency(pool: Pool) -> Ranking:
    lat = pool.lat
    order = by(lat, pool.cost, pool)
    best = lat[order[0]]
    return order, relative(lat, best), f"Lowest P95 latency: {best:.0f}ms"
