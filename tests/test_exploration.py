"""Exploration: `explore N% budget $X per DURATION` (docs/language.md, Exploration).

A share of requests, fixed by a hash of the request id (the split's hash under its own
salt), goes to the eligible model with the fewest samples under `min_samples`, while what
those decisions are estimated to cost in the budget's current fixed window stays within
the budget. Everything here counts decisions; nothing reads a wall clock.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.language.program import EXPLORE_SALT, Exploration, bucket
from engine.routing.decision import DecisionSchema
from engine.routing.evaluator import EvalState, evaluate
from engine.routing.metrics import LiveMetrics
from engine.routing.request import env_of
from engine.simulate import ScenarioError, load_scenario, simulate

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "examples" / "simulations" / "calibrated-models.yaml"
CATALOG_LINE = f"catalog {json.dumps(CATALOG.as_posix())}\n"
START = 1_800_000_000.0  # a whole hour: the budget's windows start on it

# three fast models by their priors, and gpt-5-nano, slow by its prior (4,500 ms)
POLICY = (
    CATALOG_LINE
    + """
defaults {
    strategy latency
    min_samples 20
    explore 20% budget $1 per 1h
}
route chat {
    prefer gemini/gemini-2.5-flash-lite
    prefer openai/gpt-4o-mini
    prefer openai/gpt-5-nano
}
"""
)


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine(text: str = POLICY, clock: Clock | None = None) -> PolicyEngine:
    return PolicyEngine.from_text(
        text, "explore.policy", clock=clock or Clock(), metrics_refresh_ms=0
    )


def feed(e: PolicyEngine, key: str, n: int, latency_ms: float = 400.0, ok: bool = True) -> None:
    provider, _, model = key.partition("/")
    for _ in range(n):
        e.record_outcome(provider, model, latency_ms=latency_ms, success=ok)


def request(i: int | str, **fields: object) -> dict[str, object]:
    return {"id": f"req-{i}", "input_tokens": 400, **fields}


def exploring_ids(share: float, n: int, prefix: str = "req-") -> list[str]:
    found = Exploration(share, 1.0, 3_600_000.0)
    return [f"{prefix}{i}" for i in range(n) if found.selects(f"{prefix}{i}")]


# ---------------------------------------------------------------- the share


@pytest.mark.parametrize("share", [0.05, 0.20])
def test_the_share_holds_within_one_point_over_100k_ids(share: float) -> None:
    n = 100_000
    assert abs(len(exploring_ids(share, n)) / n - share) <= 0.01


def measured_engine() -> PolicyEngine:
    """The strategy's choice measured: every other model is worth exploring."""
    e = engine()
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    return e


def test_the_same_request_id_explores_alike_in_every_engine() -> None:
    first, second = measured_engine(), measured_engine()
    for i in range(200):
        a, b = first.evaluate(request(i)), second.evaluate(request(i))
        assert (a.explored, a.model) == (b.explored, b.model)
    # and whether an id explores is the hash alone: the ids the setting selects, exactly
    explored = {f"req-{i}" for i in range(200) if measured_engine().evaluate(request(i)).explored}
    assert explored == set(exploring_ids(0.20, 200))


def test_with_nothing_measured_the_strategys_choice_is_not_explored() -> None:
    """Every model at 0 samples: the strategy's own choice gets the other requests, so an
    exploring one goes to the next in `prefer` order with the fewest samples."""
    e = engine()
    decisions = [e.evaluate(request(i)) for i in range(200)]
    explored = [d for d in decisions if d.explored]
    assert {d.model for d in explored} == {"gpt-4o-mini"}  # no outcome is recorded here
    assert {d.model for d in decisions if not d.explored} == {"gemini-2.5-flash-lite"}
    assert len(explored) == len(exploring_ids(0.20, 200))


def test_exploration_is_independent_of_a_split_on_the_same_key() -> None:
    """A split by the request id and exploration draw apart (their salts differ): each arm
    explores its share, to a point, over 100k ids."""
    text = CATALOG_LINE + "route r { split by request.id { 50%: route a  50%: route b } }\n"
    text += "route a { strategy cost }\nroute b { strategy cost }\n"
    split = compile_sources([("s.policy", text)], [None]).program.routes[0].split
    assert split is not None
    table: Counter[tuple[int, bool]] = Counter()
    explore = Exploration(0.20, 1.0, 3_600_000.0)
    n = 100_000
    for i in range(n):
        key = f"req-{i}"
        table[(split.arm_index({"id": key, "key": key}), explore.selects(key))] += 1
    for arm in (0, 1):
        in_arm = table[(arm, True)] + table[(arm, False)]
        assert abs(in_arm / n - 0.5) <= 0.01
        assert abs(table[(arm, True)] / in_arm - 0.20) <= 0.01, table
    # not the same draw: a split on the experiment name `explore` (a valid route name)
    # still differs from exploration's salt
    assert bucket("explore", "req-1") != bucket(EXPLORE_SALT, "req-1")


# ---------------------------------------------------------------- where it goes


def test_an_exploring_request_goes_to_the_model_with_the_fewest_samples() -> None:
    e = engine()
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    feed(e, "openai/gpt-4o-mini", 5)  # gpt-5-nano has none: it goes first
    ids = exploring_ids(0.20, 400)
    decision = e.evaluate(request(ids[0].removeprefix("req-")))
    assert decision.explored
    assert (decision.provider, decision.model) == ("openai", "gpt-5-nano")
    assert decision.reason.startswith("explore: gpt-5-nano has 0 of 20 samples (20% of requests")
    assert decision.reason.endswith("budget left this 1h)")
    assert decision.to_dict()["explored"] is True
    DecisionSchema.model_validate(decision.to_dict())
    # the strategy's choice leads the alternatives
    assert decision.alternatives[0].model == "gemini-2.5-flash-lite"
    plain = e.evaluate(request(next(i for i in range(400) if f"req-{i}" not in ids)))
    assert not plain.explored and "explored" not in plain.to_dict()
    assert plain.model == "gemini-2.5-flash-lite"


def test_ties_go_to_the_prefer_order() -> None:
    text = POLICY.replace(
        "prefer openai/gpt-4o-mini\n    prefer openai/gpt-5-nano",
        "prefer openai/gpt-5-nano\n    prefer openai/gpt-4o-mini",
    )
    e = engine(text)
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    ids = exploring_ids(0.20, 400)
    assert e.evaluate(request(ids[0].removeprefix("req-"))).model == "gpt-5-nano"
    e = engine()
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    assert e.evaluate(request(ids[0].removeprefix("req-"))).model == "gpt-4o-mini"


def test_with_every_model_measured_nothing_explores() -> None:
    e = engine()
    for key in ("gemini/gemini-2.5-flash-lite", "openai/gpt-4o-mini", "openai/gpt-5-nano"):
        feed(e, key, 20)
    decisions = [e.evaluate(request(i)) for i in range(300)]
    assert not any(d.explored for d in decisions)
    assert {d.model for d in decisions} == {"gpt-5-nano"}  # all at 400 ms: the cheapest


def test_explain_shows_the_exploration_step() -> None:
    e = engine()
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    ids = exploring_ids(0.20, 100)
    decision = e.evaluate(request(ids[0].removeprefix("req-")), explain=True)
    steps = [s for s in decision.trace or [] if s["step"] == "explore"]
    assert len(steps) == 1
    step = steps[0]
    assert (step["model"], step["samples"], step["min_samples"]) == ("gpt-4o-mini", 0, 20)
    assert step["budget_left"] == pytest.approx(1.0 - step["cost"])


def test_a_route_setting_overrides_the_defaults() -> None:
    text = POLICY.replace("route chat {", "route chat {\n    explore 50% budget $1 per 1h")
    program = compile_sources([("p.policy", text)], [None]).program
    assert program.routes[0].settings.explore == Exploration(0.5, 1.0, 3_600_000.0)
    assert program.default_route.settings.explore == Exploration(0.2, 1.0, 3_600_000.0)
    plain = CATALOG_LINE + "route chat { prefer openai }\n"
    assert compile_sources([("p.policy", plain)], [None]).program.routes[0].settings.explore is None


# ---------------------------------------------------------------- the budget


def budget_policy(budget: str) -> str:
    return POLICY.replace("explore 20% budget $1 per 1h", f"explore 50% budget {budget} per 1h")


def test_the_budget_stops_exploration_and_the_next_window_restarts_it() -> None:
    clock = Clock()
    e = engine(budget_policy("$0.001"), clock)
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    ids = exploring_ids(0.50, 2_000)
    spent = 0.0
    explored = 0
    for rid in ids[:200]:  # no outcome recorded: the explored models stay under min_samples
        d = e.evaluate({"id": rid, "input_tokens": 400})
        if d.explored:
            explored += 1
            spent += d.estimated_cost or 0.0
        else:
            assert d.model == "gemini-2.5-flash-lite"
    # gpt-4o-mini's estimate is $0.0002136 a request (400 tokens in, 256 out by default):
    # four fit in $0.001, a fifth would pass it
    assert explored == 4
    assert spent == pytest.approx(4 * 0.0002136)
    assert e._state.explored["chat"].spent == pytest.approx(spent)
    clock.now += 1_800.0  # the same hour: still spent
    assert not e.evaluate({"id": ids[200], "input_tokens": 400}).explored
    clock.now = START + 3_600.0  # the next window
    again = [e.evaluate({"id": rid, "input_tokens": 400}).explored for rid in ids[201:260]]
    assert sum(again) == 4


def test_dry_runs_and_shadows_spend_nothing() -> None:
    e = engine(budget_policy("$0.001"))
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    ids = exploring_ids(0.50, 400)
    dry = [e.evaluate({"id": rid, "input_tokens": 400}, dry_run=True) for rid in ids[:50]]
    assert all(d.explored for d in dry)  # what it would do, every time: nothing was spent
    assert e._state.explored == {}
    shadowed = budget_policy("$0.001").replace(
        "route chat {", "route main {\n    prefer openai\n    shadow route chat\n}\nroute chat {"
    )
    e = engine(shadowed)
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    served = [e.evaluate({"id": rid, "input_tokens": 400}) for rid in ids[:50]]
    assert all(d.route == "main" for d in served)
    assert sum(d.shadow is not None and d.shadow.explored for d in served) == 50
    assert "chat" not in e._state.explored


def test_without_state_nothing_is_remembered() -> None:
    """`evaluate` with no `EvalState` reads an unspent budget each time and spends nothing
    (as it takes no round-robin turn)."""
    program = compile_sources([("p.policy", budget_policy("$0.001"))], [None]).program
    metrics = LiveMetrics(clock=Clock(), refresh_ms=0)
    for _ in range(30):
        metrics.record("gemini/gemini-2.5-flash-lite", 400.0, True)
    ids = exploring_ids(0.50, 400)
    state = EvalState()

    def explored(rid: str, state: EvalState | None) -> bool:
        env = env_of({"id": rid, "input_tokens": 400})
        return evaluate(program, env, metrics=metrics, state=state, now=START).explored

    assert sum(explored(r, state) for r in ids[:20]) == 4
    assert all(explored(r, None) for r in ids[:20])


# ---------------------------------------------------------------- constraints hold


GUARDED = (
    CATALOG_LINE
    + """
require model.pricing.input < $2 when request.metadata.tier == "free"
defaults {
    strategy cost
    min_samples 20
    cooldown after 3 failures for 30s
    explore 50% budget $100 per 1h
}
route chat when request.stream {
    require model.provider != "anthropic"
}
"""
)


@settings(max_examples=150, deadline=None)
@given(
    rid=st.text(min_size=1, max_size=12),
    stream=st.booleans(),
    vision=st.booleans(),
    tools=st.booleans(),
    tier=st.sampled_from(["free", "pro"]),
    max_cost=st.one_of(st.none(), st.floats(min_value=0.0001, max_value=0.01)),
    max_tokens=st.one_of(st.none(), st.integers(min_value=1, max_value=40_000)),
)
def test_exploration_never_picks_an_ineligible_model(
    rid: str,
    stream: bool,
    vision: bool,
    tools: bool,
    tier: str,
    max_cost: float | None,
    max_tokens: int | None,
) -> None:
    clock = Clock()
    e = engine(GUARDED, clock)
    feed(e, "gemini/gemini-2.5-flash-lite", 3, ok=False)  # in cooldown for 30 s
    feed(e, "openai/gpt-5-nano", 25)
    body: dict[str, object] = {"id": rid, "input_tokens": 400, "stream": stream,
                               "requires_vision": vision, "requires_tools": tools,
                               "metadata": {"tier": tier}}  # fmt: skip
    if max_cost is not None:
        body["max_cost"] = max_cost
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    decision = e.evaluate(body, explain=True)
    if not decision.allowed:
        return
    dropped = {(s["provider"], s["model"]) for s in decision.trace or [] if s["step"] == "drop"}
    assert (decision.provider, decision.model) not in dropped
    model = e.program.catalog.find(decision.provider or "", decision.model or "")
    assert model is not None
    assert model.key != "gemini/gemini-2.5-flash-lite"  # cooling down
    assert not (vision and "vision" not in model.supports)
    assert not (tools and "tools" not in model.supports)
    assert not (tier == "free" and model.input_price >= 2)
    assert not (stream and model.provider == "anthropic")
    assert max_cost is None or (decision.estimated_cost or 0.0) <= max_cost
    assert max_tokens is None or max_tokens <= model.max_tokens


# ---------------------------------------------------------------- after recovery


def test_a_model_back_from_a_cooldown_gets_explored() -> None:
    text = POLICY.replace("min_samples 20", "min_samples 20\n    cooldown after 3 failures for 30s")
    clock = Clock()
    e = engine(text, clock)
    feed(e, "gemini/gemini-2.5-flash-lite", 30)
    feed(e, "openai/gpt-4o-mini", 30)
    feed(e, "openai/gpt-5-nano", 3, ok=False)  # three samples, all failures: cooling down
    ids = exploring_ids(0.20, 1_000)
    during = [e.evaluate({"id": rid, "input_tokens": 400}) for rid in ids[:40]]
    assert not any(d.explored or d.model == "gpt-5-nano" for d in during)
    clock.now += 31.0
    after = e.evaluate({"id": ids[40], "input_tokens": 400})
    assert after.explored and after.model == "gpt-5-nano"
    assert after.reason.startswith("explore: gpt-5-nano has 3 of 20 samples")


def test_a_model_back_from_a_degradation_gets_explored() -> None:
    """Slow samples take a model out (`degraded when`) until they leave the window; back on
    its prior with few samples, the strategy would not pick it (its prior is slow) and
    exploration measures it again."""
    text = POLICY.replace(
        "min_samples 20", "min_samples 20\n    window 10m\n    degraded when model.p95 > 3s"
    )
    clock = Clock()
    e = engine(text, clock)
    feed(e, "gemini/gemini-2.5-flash-lite", 30, latency_ms=900.0)
    feed(e, "openai/gpt-4o-mini", 30, latency_ms=5_000.0)  # degraded
    feed(e, "openai/gpt-5-nano", 30, latency_ms=1_000.0)
    ids = exploring_ids(0.20, 2_000)
    during = [e.evaluate({"id": rid, "input_tokens": 400}, explain=True) for rid in ids[:20]]
    assert not any(d.explored for d in during)
    assert all(
        any(s["step"] == "drop" and s["because"].startswith("degraded") for s in d.trace or [])
        for d in during
    )
    clock.now += 11 * 60.0  # every sample has left the ten-minute window
    feed(e, "gemini/gemini-2.5-flash-lite", 30, latency_ms=900.0)
    feed(e, "openai/gpt-5-nano", 30, latency_ms=1_000.0)
    normal = e.evaluate({"id": "not-exploring", "input_tokens": 400})
    assert not Exploration(0.2, 1, 1).selects("not-exploring")
    assert normal.model == "gemini-2.5-flash-lite"  # gpt-4o-mini is back on its 1,700 ms prior
    after = [e.evaluate({"id": rid, "input_tokens": 400}) for rid in ids[20:30]]
    assert all(d.explored and d.model == "gpt-4o-mini" for d in after)
    assert after[0].reason.startswith("explore: gpt-4o-mini has 0 of 20 samples")


# ---------------------------------------------------------------- the language


@pytest.mark.parametrize(
    ("setting", "code"),
    [
        ("explore 5%", "E0270"),
        ("explore 51% budget $2 per 1h", "E0271"),
        ("explore 0% budget $2 per 1h", "E0271"),
        ("explore 5 budget $2 per 1h", "E0271"),
        ("explore 5% budget $0 per 1h", "E0272"),
        ("explore 5% budget 2 per 1h", "E0272"),
        ("explore 5% budget $2 per 0s", "E0273"),
        ("explore 5% budget $2 per 60", "E0273"),
    ],
)
def test_the_checker_refuses_what_explore_cannot_mean(setting: str, code: str) -> None:
    for text in (f"defaults {{ {setting} }}\n", f"route a {{ {setting} }}\n"):
        with pytest.raises(PolicyError) as err:
            compile_sources([("p.policy", CATALOG_LINE + text)], [None])
        assert [d.code for d in err.value.diagnostics] == [code]


def test_the_largest_share_is_half() -> None:
    text = CATALOG_LINE + "defaults { explore 50% budget $2 per 1d }\n"
    settings_ = compile_sources([("p.policy", text)], [None]).program.default_route.settings
    assert settings_.explore == Exploration(0.5, 2.0, 86_400_000.0)


def test_fmt_round_trips_the_setting() -> None:
    text = CATALOG_LINE + "defaults {\n  explore   5%  budget   $2\n per  1h\n}\n"
    formatted = format_text(text)
    assert "    explore 5% budget $2 per 1h\n" in formatted
    assert format_text(formatted) == formatted
    programs = [
        compile_sources([("p.policy", t)], [None]).program.default_route.settings
        for t in (text, formatted)
    ]
    assert programs[0] == programs[1]


# ---------------------------------------------------------------- the simulator

SCENARIO = ROOT / "examples" / "simulations" / "exploration.yaml"


@pytest.fixture(scope="module")
def simulated() -> dict[str, dict[str, object]]:
    report = simulate(load_scenario(SCENARIO)).to_dict()
    assert report["explore"] == "5% budget $0.05 per 1h"
    return {row["name"]: row for row in report["rows"]}


def test_without_exploration_latency_starves_the_truly_fastest_model(
    simulated: dict[str, dict[str, object]],
) -> None:
    plain = simulated["latency"]
    assert plain["explored"] == 0
    assert plain["models"] == {"gemini/gemini-2.5-flash-lite": 6_000}  # gpt-5-nano: never


def test_with_exploration_latency_finds_it_at_a_bounded_cost(
    simulated: dict[str, dict[str, object]],
) -> None:
    plain, explored = simulated["latency"], simulated["latency + explore"]
    models = explored["models"]
    assert isinstance(models, dict)
    # three models under min_samples 20 are measured, 20 explored requests each
    assert explored["explored"] == 60
    assert models["openai/gpt-5-nano"] / 6_000 > 0.75
    assert explored["top_model"] == "openai/gpt-5-nano"
    assert explored["mean_ms"] < 0.75 * plain["mean_ms"]  # type: ignore[operator]
    # what exploring cost: within the budget of its 20-minute run ($0.05 an hour)
    assert 0 < explored["explored_cost"] <= 0.05  # type: ignore[operator]
    # failover explores as much, and gains nothing: it ranks by order, not measurements
    failover = simulated["failover + explore"]
    assert failover["explored"] == 60
    assert failover["top_model"] == "gemini/gemini-2.5-flash-lite"


def test_the_scenario_field_is_checked_as_the_setting(tmp_path: Path) -> None:
    text = SCENARIO.read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        text.replace("calibrated-models.yaml", CATALOG.as_posix()).replace(
            "explore: 5% budget $0.05 per 1h", "explore: 5%"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    lines = bad.read_text(encoding="utf-8").splitlines()
    at = next(n for n, line in enumerate(lines, 1) if line.startswith("explore:"))
    assert err.value.messages == [
        f"{bad}:{at}:1: field `explore`: `explore` needs a budget: what exploring may cost per"
        " window (write `explore 5% budget $2 per 1h`: once the requests explored in the current"
        " hour are estimated to cost $2, requests route normally)"
    ]
    bad.write_text(
        text.replace("calibrated-models.yaml", CATALOG.as_posix()).replace(
            "min_samples 20", "min_samples 20\n  explore 5% budget $1 per 1h"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(bad)
    lines = bad.read_text(encoding="utf-8").splitlines()
    at = next(n for n, line in enumerate(lines, 1) if line.startswith("explore:"))
    assert err.value.messages == [
        f"{bad}:{at}:1: field `explore`: `policy` sets `explore` already; keep one of them"
    ]


def test_the_editors_and_the_language_server_know_explore() -> None:
    from engine.editors.words import words
    from engine.lsp import knowledge

    assert {"explore", "budget"} <= words().keywords
    assert {"explore", "budget"} <= set(knowledge.keywords())
    text = "defaults {\n    explore 5% budget $2 per 1h\n}\n"
    shown = knowledge.hover(text, text.index("explore") + 2, None)
    assert shown is not None and shown.markdown.startswith("`explore N% budget $X per DURATION`")
    assert "min_samples" in shown.markdown and "instance" in shown.markdown


def test_the_decision_log_marks_explored_decisions(tmp_path: Path) -> None:
    """A persistent engine logs `explored` true for exactly the decisions that explored
    (NULL for the others), so an operator can count and cost them in DuckDB."""
    import duckdb

    policy = tmp_path / "explore.policy"
    policy.write_text(POLICY)
    state = tmp_path / "state.duckdb"
    with PolicyEngine(policy, state=str(state), clock=Clock(), metrics_refresh_ms=0) as e:
        feed(e, "gemini/gemini-2.5-flash-lite", 30)
        explored = {f"req-{i}" for i in range(200) if e.evaluate(request(i)).explored}
    assert explored  # the setting explores some of these ids
    con = duckdb.connect(str(state), read_only=True)
    rows = con.execute("SELECT request_id, explored FROM decisions").fetchall()
    con.close()
    assert len(rows) == 200
    assert {rid for rid, flag in rows if flag} == explored
    assert all(flag is None for rid, flag in rows if rid not in explored)
