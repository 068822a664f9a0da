"""`strategy latency`: the lowest p95 latency (measured with enough samples, else the prior)."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, ascending_by, by, relative, strategy


@strategy("latency")
def latency(pool: Pool) -> Ranking:
    lat = pool.lat
    vectors = pool.vectors
    if vectors is None:
        order = by(lat, pool.cost, pool)
    else:
        order = ascending_by(vectors.lat, vectors.cost, pool, vectors)
    best = lat[order[0]]
    return order, relative(lat, best), f"Lowest P95 latency: {best:.0f}ms"
