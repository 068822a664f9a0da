"""What every strategy is made of, and the registry they join by name.

A strategy is one registration (`@strategy(...)` in its own module): its name, the factors
it takes (`weighted(latency: 60%, cost: 40%)`) or none, what it reads about a route (a
`RouteView` built once at compile time from the route's `RouteFacts`), whether it reads
the request's draw or the route's turn, and its ranking: a small pure function of the
eligible candidates (a `Pool`: parallel columns, one slot per model) returning the slots
ranked best first, the unrounded score in 0-1 of a ranked slot (computed only for the few a
decision shows), and a sentence saying why the first won. The checker, the compiler, the
evaluator and the simulator read the registry; none of them names a strategy.

A big pool (a route of `engine.routing.evaluator.VECTOR_MIN_CANDIDATES` models or more, on
the evaluator's shortcut) also carries its columns as numpy arrays (`Pool.vectors`, finite
values only); a strategy may rank on them (`descending`, `ascending_by` below) with the
same IEEE operations in the same order and the same tie order, so that the ranking is the
one the lists give; one that does not reads the lists, as on any pool.

Ties are broken by catalog order, so a ranking is always deterministic.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class RouteFacts:
    """What the compiler knows about a route, per candidate position, for a strategy to
    build its view from (compile time only)."""

    keys: tuple[str, ...]  # provider/model
    providers: tuple[str, ...]
    indexes: tuple[int, ...]  # catalog positions, for ties
    latency_priors: tuple[float, ...]  # the catalog p95 priors
    qualities: tuple[float | None, ...]  # the catalog's overall quality scores (None: none)
    factors: tuple[tuple[str, float], ...]  # normalised factor weights, in policy order
    preferred: Mapping[str, float]  # model key -> `prefer … weight` (empty: no prefer list)
    fallback_order: Mapping[str, int]  # model key -> place among `fallback provider/model`
    provider_rank: Mapping[str, int]  # provider -> place in fallback order


@dataclass(frozen=True, slots=True)
class RouteView:
    """What every strategy reads about a route, per candidate position, built at compile
    time; a strategy that reads more declares a subclass and builds it from `RouteFacts`."""

    keys: tuple[str, ...]  # provider/model
    indexes: tuple[int, ...]  # catalog positions, for ties
    index_sorted: bool  # positions are already in catalog order
    latency_priors: tuple[float, ...]  # the catalog p95 priors, by position


def view_fields(facts: RouteFacts) -> dict[str, Any]:
    """The `RouteView` fields every view has, for a subclass's builder."""
    indexes = facts.indexes
    return {
        "keys": facts.keys,
        "indexes": indexes,
        "index_sorted": all(a < b for a, b in itertools.pairwise(indexes)),
        "latency_priors": facts.latency_priors,
    }


def route_view(facts: RouteFacts) -> RouteView:
    return RouteView(**view_fields(facts))


@dataclass(frozen=True, slots=True)
class Vectors:
    """A big pool's columns also as numpy arrays, slot for slot the values of its lists."""

    cost: Any  # ndarray[float64]
    lat: Any  # ndarray[float64]
    succ: Any  # ndarray[float64], None when the pool's `succ` is None
    pos: Any  # ndarray[int64] of route positions; None when slots are positions (all)
    indexes: Any  # ndarray[int64], the route's catalog indexes by position (for ties)

    def take(self, slots: Sequence[int]) -> Vectors:
        """These columns for the given slots only, in that order."""
        import numpy as np

        at = np.asarray(slots, dtype=np.int64)
        return Vectors(
            self.cost[at],
            self.lat[at],
            None if self.succ is None else self.succ[at],
            at if self.pos is None else self.pos[at],
            self.indexes,
        )


class Pool:
    """The eligible models of one request as parallel columns, one slot per model, in route
    order: `pos[s]` is the route position of slot s, `cost[s]` its estimated USD, `lat[s]` its
    estimated p95 (measured with enough samples, else the prior), `succ[s]` its measured
    success rate (None: 1.0 for every slot). `vectors`: the same columns as numpy arrays for
    a big pool (None otherwise)."""

    __slots__ = ("cost", "draw", "lat", "pos", "succ", "turn", "vectors", "view")

    def __init__(
        self,
        view: Any,  # the RouteView (subclass) its strategy built
        pos: Sequence[int],
        cost: Sequence[float],
        lat: Sequence[float],
        succ: Sequence[float] | None,
        draw: float = 0.0,
        turn: int = 0,
        vectors: Vectors | None = None,
    ) -> None:
        self.view = view
        self.pos = pos
        self.cost = cost
        self.lat = lat
        self.succ = succ
        self.draw = draw  # strategies that draw: in [0, 1), deterministic per request id
        self.turn = turn  # strategies that take turns: how many decisions this route made
        self.vectors = vectors


class KeptOrder(list[int]):
    """A ranking's slots, best first, that its strategy keeps and returns again for pools
    with the same columns (and the same scores): the evaluator keeps what follows from it
    on it (`parts`: the alternatives and fallbacks it shows). Never mutated."""

    __slots__ = ("parts",)
    parts: Any  # set on creation (None)


# (slots best first, score of (rank, slot) in 0-1 unrounded, why the first won)
Ranking = tuple[list[int], Callable[[int, int], float], str]
Rank = Callable[[Pool], Ranking]


@dataclass(frozen=True, slots=True)
class Strategy:
    """One strategy, as registered."""

    name: str
    rank: Rank
    view: Callable[[RouteFacts], RouteView] = route_view  # what it reads about a route
    factors: tuple[str, ...] = ()  # the factors it takes; () takes none
    default_factors: tuple[tuple[str, float], ...] = ()  # a bare `strategy NAME` ranks by
    example: str = ""  # how to write it with factors, for help texts
    draws: bool = False  # reads `Pool.draw`, a number fixed by the request key
    takes_turns: bool = False  # reads `Pool.turn`, the route's decision count


# name -> strategy, in registration order (the order help texts list them in)
STRATEGIES: dict[str, Strategy] = {}


def register(spec: Strategy) -> Strategy:
    if spec.name in STRATEGIES:
        raise ValueError(f"strategy `{spec.name}` is registered twice")
    STRATEGIES[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a strategy (tests register toy ones); compiled programs keep theirs."""
    del STRATEGIES[name]


def strategy(name: str, **declared: Any) -> Callable[[Rank], Rank]:
    """`@strategy("cost")` over a ranking function registers it; keyword arguments are the
    other `Strategy` fields."""

    def add(rank: Rank) -> Rank:
        register(Strategy(name, rank, **declared))
        return rank

    return add


# ---------------------------------------------------------------- ranking helpers


def by_index(pool: Pool) -> Sequence[int]:
    """The slots in catalog order: sorts keyed by a measure alone then break ties by catalog
    order (Python's sort is stable, also with reverse=True)."""
    n = len(pool.cost)
    view = pool.view
    if view.index_sorted:
        return range(n)
    indexes, pos = view.indexes, pool.pos
    return sorted(range(n), key=lambda s: indexes[pos[s]])


def by(first: Sequence[float], second: Sequence[float], pool: Pool) -> list[int]:
    """Slots by (first, second, catalog order): two stable sorts, the minor key first."""
    order = sorted(by_index(pool), key=second.__getitem__)
    order.sort(key=first.__getitem__)
    return order


def relative(values: Sequence[float], best: float) -> Callable[[int, int], float]:
    """Scores best/x in 0-1, 1 for the best."""

    def score(rank: int, slot: int) -> float:
        value = values[slot]
        return best / value if value > 0 else 1.0

    return score


# ---------------------------------------------------------------- on numpy columns


class RankedSlots(list[int]):
    """A ranking on a big pool's arrays: the slots best first (a list, as every ranking),
    and `positions`, the same ranking as route positions in a numpy array (the evaluator's
    fallback chain looks providers up in it)."""

    __slots__ = ("positions",)

    def __init__(self, order: Any, vectors: Vectors) -> None:
        super().__init__(order.tolist())
        self.positions = order if vectors.pos is None else vectors.pos[order]


def _slot_indexes(pool: Pool, vectors: Vectors) -> Any:
    """Each slot's catalog index (ties break by it), or None when slots are in that order."""
    if pool.view.index_sorted:
        return None  # positions in catalog order, and slots keep position order
    return vectors.indexes if vectors.pos is None else vectors.indexes[vectors.pos]


def descending(values: Any, pool: Pool, vectors: Vectors) -> RankedSlots:
    """`sorted(by_index(pool), key=values.__getitem__, reverse=True)` on a float64 array
    without NaN: highest first, ties in catalog order (Python's reverse sort keeps ties in
    input order)."""
    import numpy as np

    negated = -values  # exact; -0.0 and 0.0 tie, as they do in Python
    indexes = _slot_indexes(pool, vectors)
    if indexes is None:
        return RankedSlots(np.argsort(negated, kind="stable"), vectors)
    return RankedSlots(np.lexsort((indexes, negated)), vectors)


def ascending_by(first: Any, second: Any, pool: Pool, vectors: Vectors) -> RankedSlots:
    """`by(first, second, pool)` on float64 arrays without NaN: slots by (first, second,
    catalog order)."""
    import numpy as np

    indexes = _slot_indexes(pool, vectors)
    if indexes is None:  # lexsort is stable: ties keep slot order, which is catalog order
        return RankedSlots(np.lexsort((second, first)), vectors)
    return RankedSlots(np.lexsort((indexes, second, first)), vectors)
