"""What a decision keeps between requests (docs/metrics.md §2, "What a decision reuses
between requests"), counted, and never stale.

A route's cost column for one (input tokens, max_tokens) is kept, and so is the strategy's
ranking on it while the latency and success columns are the same objects (the priors, or
one metrics snapshot's); `model-specific` keeps the ranking of each drawn model when every
candidate is eligible. Each test counts builds and hits, and checks every decision against
the one the general path (`explain`, which keeps nothing) makes at the same moment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _design import DESIGN_CATALOG, from_design

from engine import PolicyEngine
from engine.routing import evaluator as evaluator_module
from engine.strategies import model_specific as model_specific_module

START = 1_800_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def counts() -> tuple[int, int, int]:
    m = evaluator_module
    return m.cost_column_builds, m.ranking_builds, m.ranking_hits


def general(engine: PolicyEngine, request: dict[str, Any]) -> dict[str, Any]:
    """The decision the general path makes now (a dry run with a trace), as the shortcut's."""
    out = engine.evaluate(request, explain=True, dry_run=True).to_dict()
    out.pop("trace", None)
    return out


def decided(engine: PolicyEngine, request: dict[str, Any]) -> dict[str, Any]:
    """The shortcut's decision, checked against the general path's (same state before)."""
    expected = general(engine, request)
    out = engine.evaluate(request, dry_run=True).to_dict()
    out.pop("trace", None)
    assert out == expected
    return out


POLICY = """
defaults {
    strategy weighted(latency: 50%, cost: 30%, success: 20%)
    min_samples 5
    min_success_rate 10%
}
"""


def test_one_cost_column_and_one_ranking_per_token_pair_then_hits() -> None:
    engine = from_design(POLICY)
    request = {"id": "a", "prompt": "x" * 400, "max_tokens": 300}
    before = counts()
    first = decided(engine, request)
    columns, rankings, hits = (a - b for a, b in zip(counts(), before, strict=True))
    assert (columns, rankings, hits) == (0, 0, 0)  # a pair seen once is only noted
    for i in range(20):
        assert decided(engine, {**request, "id": f"r{i}"})["model"] == first["model"]
    columns, rankings, hits = (a - b for a, b in zip(counts(), before, strict=True))
    assert (columns, rankings, hits) == (1, 1, 19)  # kept on its second request
    # another token count, once: noted only; the first is still kept
    decided(engine, {**request, "id": "b", "max_tokens": 301})
    decided(engine, {**request, "id": "c"})
    columns, rankings, hits = (a - b for a, b in zip(counts(), before, strict=True))
    assert (columns, rankings, hits) == (1, 1, 20)
    decided(engine, {**request, "id": "d", "max_tokens": 301})
    assert counts()[0] - before[0] == 2


def test_a_metrics_refresh_ranks_again_and_the_decision_follows_it() -> None:
    clock = FakeClock()
    engine = from_design(POLICY, clock=clock, metrics_refresh_ms=250.0)
    request = {"id": "warm", "prompt": "hello " * 40}
    cold = decided(engine, request)
    winner = f"{cold['provider']}/{cold['model']}"
    rankings = counts()[1]
    # the cold winner turns slow: once a snapshot measures it, it must lose
    for _ in range(50):
        engine.record_outcome(*winner.split("/", 1), latency_ms=60_000.0, success=True)
    clock.now += 1.0  # past the refresh interval
    after = decided(engine, {**request, "id": "after"})
    assert f"{after['provider']}/{after['model']}" != winner
    assert counts()[1] > rankings  # the snapshot's columns: ranked again
    rankings, hits = counts()[1:]
    for i in range(5):  # nothing new: the snapshot and its ranking stand
        clock.now += 0.01
        out = decided(engine, {**request, "id": f"again{i}"})
        assert out == {**after, "request_id": f"again{i}"}
    assert counts()[1:] == (rankings, hits + 5)
    # the slow model recovers: the next snapshot ranks again and it wins again
    for _ in range(2000):
        engine.record_outcome(*winner.split("/", 1), latency_ms=1.0, success=True)
    clock.now += 1.0
    back = decided(engine, {**request, "id": "back"})
    assert f"{back['provider']}/{back['model']}" == winner
    assert counts()[1] == rankings + 1


def test_a_reload_builds_from_the_new_policy(tmp_path: Path) -> None:
    directory = tmp_path / "policies"
    directory.mkdir()
    text = f'catalog "{DESIGN_CATALOG.as_posix()}"\ndefaults {{ strategy latency }}\n'
    (directory / "p.policy").write_text(text, encoding="utf-8")
    engine = PolicyEngine(directory)
    request = {"id": "a", "prompt": "hello"}
    fast = decided(engine, request)
    assert fast["strategy"] == "latency"
    builds = counts()[0]
    route = "route r {\n    prefer openai/gpt-4o\n    prefer openai/gpt-4\n}\n"
    (directory / "p.policy").write_text(text + route, encoding="utf-8")
    assert engine.reload()
    decided(engine, {**request, "id": "b0"})
    after = decided(engine, {**request, "id": "b"})
    assert (after["route"], after["provider"]) == ("r", "openai")
    assert counts()[0] == builds + 1  # the new route's table has columns of its own
    assert after["model"] != fast["model"]


def test_the_kept_columns_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(evaluator_module, "MAX_COST_COLUMNS", 4)
    engine = from_design(POLICY)
    table = engine.program.default_route.table
    before = counts()[0]
    for i in range(10):
        for twice in range(2):
            decided(engine, {"id": f"r{i}-{twice}", "prompt": "x" * (4 * (i + 1))})
    assert counts()[0] == before + 10
    kept = evaluator_module._COST_COLUMNS[id(table)][1]
    assert 1 <= len(kept) <= 4


def test_model_specific_keeps_one_ranking_per_drawn_model() -> None:
    engine = from_design(
        """
route r {
    strategy model-specific
    prefer openai/gpt-4o weight 3
    prefer claude/claude-3-5-sonnet-20241022 weight 2
    prefer gemini/gemini-1.5-pro-latest weight 1
}
"""
    )
    before = model_specific_module.kept_builds
    picked = set()
    for i in range(200):
        out = decided(engine, {"id": f"r{i}", "prompt": "hello"})
        picked.add(out["model"])
    # one build per drawn model (the preferred three), then every draw is a lookup
    assert model_specific_module.kept_builds - before == len(picked) == 3
    # a request not every model can serve ranks its own pool, keeping nothing
    decided(engine, {"id": "big", "prompt": "hello", "max_tokens": 16_000})
    assert model_specific_module.kept_builds - before == 3


def test_the_columns_kept_over_all_routes_are_bounded(monkeypatch: Any) -> None:
    monkeypatch.setattr(evaluator_module, "MAX_KEPT_COLUMNS", 3)
    # count from here: other tests in this process have kept columns before
    monkeypatch.setattr(evaluator_module, "_kept_since", [evaluator_module.cost_column_builds])
    engines = [from_design(POLICY), from_design(POLICY.replace("50%", "60%").replace("30%", "20%"))]
    tables = [e.program.default_route.table for e in engines]
    for i in range(4):  # two pairs kept per engine: the fourth drops everything kept
        for engine in engines[: 1 + i % 2]:
            for twice in range(2):
                decided(engine, {"id": f"r{i}-{twice}", "prompt": "x" * (4 * (i // 2 + 1))})
    kept = [
        sum(c is not None for c in evaluator_module._COST_COLUMNS[id(t)][1].values())
        for t in tables
    ]
    assert sum(kept) <= 3
    assert sum(kept) == 2  # without the bound: 4
    # what was dropped decides as the general path again (`decided` compares)
    decided(engines[0], {"id": "again", "prompt": "x" * 4})
