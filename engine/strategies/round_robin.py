"""`strategy round-robin`: each decision of a route starts one candidate further on."""

from __future__ import annotations

from engine.strategies.base import Pool, Ranking, strategy


@strategy("round-robin", takes_turns=True)
def round_robin(pool: Pool) -> Ranking:
    n = len(pool.cost)
    start = pool.turn % n
    order = [*range(start, n), *range(start)]
    return order, lambda rank, slot: 1.0 - rank / n, f"Round-robin: candidate {start + 1} of {n}"
