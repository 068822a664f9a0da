"""`strategy failover`: the first healthy model in failover order: explicit `fallback
provider/model` entries first, then by provider in `fallback` order, then catalog order."""

from __future__ import annotations

from dataclasses import dataclass

from engine.strategies.base import Pool, Ranking, RouteFacts, RouteView, strategy, view_fields


@dataclass(frozen=True, slots=True)
class FailoverView(RouteView):
    failover_order: tuple[int, ...]  # positions, explicit models then providers


def failover_view(facts: RouteFacts) -> FailoverView:
    explicit, last = facts.fallback_order, len(facts.fallback_order)
    rank, far = facts.provider_rank, len(facts.provider_rank)
    keys, providers = facts.keys, facts.providers
    order = sorted(
        range(len(keys)),
        key=lambda i: (
            explicit.get(keys[i], last),  # `fallback provider/model` entries come first
            rank.get(providers[i], far),
            i,
        ),
    )
    return FailoverView(**view_fields(facts), failover_order=tuple(order))


@strategy("failover", view=failover_view)
def failover(pool: Pool) -> Ranking:
    view: FailoverView = pool.view
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
