"""A strategy is one registration: a toy strategy registered in-process is checked,
compiled and evaluated with no other module edited, and is gone once unregistered."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from engine.diagnostics import PolicyError
from engine.language.loader import compile_sources
from engine.routing.evaluator import EvalState, evaluate
from engine.routing.request import env_of
from engine.strategies import (
    STRATEGIES,
    Pool,
    Ranking,
    RouteFacts,
    RouteView,
    Strategy,
    register,
    unregister,
)
from engine.strategies.base import view_fields


@dataclass(frozen=True, slots=True)
class ReverseView(RouteView):
    reversed_order: tuple[int, ...]  # positions, last in the catalog first


def reverse_view(facts: RouteFacts) -> ReverseView:
    order = sorted(range(len(facts.keys)), key=lambda i: facts.indexes[i], reverse=True)
    return ReverseView(**view_fields(facts), reversed_order=tuple(order))


def reverse(pool: Pool) -> Ranking:
    view: ReverseView = pool.view
    slot_of = {p: s for s, p in enumerate(pool.pos)}
    order = [slot_of[p] for p in view.reversed_order if p in slot_of]
    n = len(order)
    return order, lambda rank, slot: 1.0 - rank / n, f"Last in the catalog: turn {pool.turn}"


@pytest.fixture
def toy() -> Iterator[Strategy]:
    spec = register(Strategy("reverse-catalog", reverse, view=reverse_view, takes_turns=True))
    try:
        yield spec
    finally:
        unregister("reverse-catalog")


POLICY = """
route r when request.user == "toy" {
    strategy reverse-catalog
    prefer openai
}
"""


def test_a_registered_strategy_checks_compiles_and_evaluates(toy: Strategy) -> None:
    program = compile_sources([("t.policy", POLICY)]).program
    route = program.routes[0]
    assert route.settings.strategy == "reverse-catalog"
    assert isinstance(route.table.view, ReverseView)
    assert route.table.rank is reverse and route.table.takes_turns and not route.table.draws
    state = EvalState()
    first = evaluate(program, env_of({"user": "toy"}), state=state, explain=True)
    second = evaluate(program, env_of({"user": "toy"}), state=state)
    openai = [m for m in program.catalog.models if m.provider == "openai"]
    assert first.allowed and first.strategy == "reverse-catalog"
    assert (first.provider, first.model) == ("openai", openai[-1].id)
    assert first.reason == "Last in the catalog: turn 0"
    assert second.reason == "Last in the catalog: turn 1"  # takes_turns: the route counts
    ranking = next(step for step in first.trace or [] if step["step"] == "choose")["ranking"]
    assert [r["model"] for r in ranking] == [m.id for m in reversed(openai)]


def test_a_strategy_that_declares_no_factors_refuses_them(toy: Strategy) -> None:
    text = "defaults {\n    strategy reverse-catalog(latency: 100%)\n}\n"
    with pytest.raises(PolicyError) as info:
        compile_sources([("t.policy", text)])
    (found,) = info.value.diagnostics
    assert found.code == "E0211"
    assert found.message == "strategy `reverse-catalog` takes no factors"
    assert found.help == "only `weighted(latency: 60%, cost: 40%)` takes factors"


def test_a_strategy_declares_its_own_factors() -> None:
    spec = register(
        Strategy(
            "toy-factors",
            STRATEGIES["latency"].rank,
            factors=("speed", "price"),
            default_factors=(("speed", 1.0),),
            example="toy-factors(speed: 100%)",
        )
    )
    try:
        bad = "defaults {\n    strategy toy-factors(latency: 100%)\n}\n"
        with pytest.raises(PolicyError) as info:
            compile_sources([("t.policy", bad)])
        (found,) = info.value.diagnostics
        assert (found.code, found.message) == ("E0212", "unknown factor `latency`")
        assert found.help == "factors: `speed`, `price`"
        bare = "defaults {\n    strategy toy-factors\n}\n"
        settings = compile_sources([("t.policy", bare)]).program.default_route.settings
        assert settings.factors == spec.default_factors  # a bare name ranks by its defaults
    finally:
        unregister("toy-factors")


def test_once_unregistered_the_name_is_unknown_again() -> None:
    register(Strategy("reverse-catalog", reverse, view=reverse_view))
    unregister("reverse-catalog")
    with pytest.raises(PolicyError) as info:
        compile_sources([("t.policy", POLICY)])
    assert [d.code for d in info.value.diagnostics] == ["E0210"]
    assert "reverse-catalog" not in STRATEGIES


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="`cost` is registered twice"):
        register(Strategy("cost", STRATEGIES["latency"].rank))
    assert STRATEGIES["cost"].rank.__name__ == "cost"


def test_the_built_in_strategies_in_listing_order() -> None:
    assert list(STRATEGIES)[:6] == [
        "latency",
        "cost",
        "weighted",
        "model-specific",
        "round-robin",
        "failover",
    ]
    assert [s.name for s in STRATEGIES.values() if s.factors] == ["weighted"]
    assert [s.name for s in STRATEGIES.values() if s.draws] == ["model-specific"]
    assert [s.name for s in STRATEGIES.values() if s.takes_turns] == ["round-robin"]
