"""`policyctl simulate`: prompt content per template (bodies with the features they claim),
the logistic bad-answer model, whole policies as rows, and examples/simulations/content.yaml
(content-aware routing against cost-only, quality-only and the oracle). Seeded."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.routing.request import env_of
from engine.simulate import ScenarioError, load_scenario, simulate
from engine.simulate.content import ContentSpec, bodies
from engine.simulate.world import bad_chance

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "examples" / "simulations"
CONTENT = SIMULATIONS / "content.yaml"
MODELS = SIMULATIONS / "calibrated-models.yaml"
NANO = "openai/gpt-5-nano"
LITE = "gemini/gemini-2.5-flash-lite"
SONNET = "anthropic/claude-sonnet-4-6"
FEATURES = ("turns", "script", "code", "math", "multi_step", "system_reasoning",
            "system_json", "tool_results")  # fmt: skip


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    body = textwrap.dedent(text).rstrip("\n")
    path.write_text(f"{body}\ncatalog: {json.dumps(str(MODELS))}\n", encoding="utf-8")
    return path


def rows(data: dict) -> dict[str, dict]:
    return {row["name"]: row for row in data["rows"]}


def features_of(body: tuple[dict[str, str], ...]) -> dict[str, object]:
    """What the request pipeline derives from a body: its environment's conversation."""
    conv = env_of({"id": "t", "messages": list(body)})["conversation"]
    return {name: conv.feature(name) for name in (*FEATURES, "last_tokens")}


# ---------------------------------------------------------------- the bodies


SPECS = [
    ContentSpec(),
    ContentSpec(tokens=200, code=True, system="reasoning"),
    ContentSpec(tokens=80, math=True, multi_step=True),
    ContentSpec(tokens=60, turns=5, tool_results=True, system="json"),
    ContentSpec(tokens=40, script="cjk"),
    ContentSpec(tokens=30, script="cjk", code=True, math=True, multi_step=True),
    ContentSpec(tokens=50, script="cyrillic", multi_step=True, turns=2),
    ContentSpec(tokens=1500, turns=4),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.model_dump_json(exclude_defaults=True))
def test_bodies_have_the_features_they_claim(spec: ContentSpec) -> None:
    written = bodies(spec, "test")
    assert len(written) == 16
    assert len({json.dumps(b) for b in written}) > 1  # the variants differ
    for body in written:
        found = features_of(body)
        assert {n: found[n] for n in FEATURES} == spec.claims()
        # at least the length asked for, and at most one neutral sentence (or, when the
        # claimed snippets alone are longer, those) more
        assert spec.tokens <= found["last_tokens"]
        assert found["last_tokens"] <= max(spec.tokens, 60) + 40


def test_bodies_are_seeded() -> None:
    spec = ContentSpec(tokens=100, code=True)
    assert bodies(spec, "a") == bodies(spec, "a")
    assert bodies(spec, "a") != bodies(spec, "b")


def test_content_yaml_bodies_match_their_templates() -> None:
    scenario = load_scenario(CONTENT, requests=200)
    for t in scenario.traffic:
        assert t.bodies, t.name
        for body, tokens in zip(t.bodies, t.body_tokens, strict=True):
            env = env_of({"id": "t", "messages": list(body)})
            assert env["input_tokens"] == tokens
            found = features_of(body)
            assert found["last_tokens"] >= 30
            assert found["code"] is (t.name == "code")
            assert found["math"] is (t.name == "math")
            assert found["multi_step"] is (t.name == "math")
            assert found["tool_results"] is (t.name == "support")
            assert found["script"] == ("cjk" if t.name == "chinese" else "latin")
    # every arrival sends one of its template's bodies, and its size is that body's
    report = simulate(scenario)
    for a in report.arrivals:
        assert 0 <= a.variant < len(a.template.bodies)
        assert a.input_tokens == a.template.body_tokens[a.variant]
    assert len({a.variant for a in report.arrivals}) == 16


# ---------------------------------------------------------------- bad answers, by hand


def test_bad_chance_is_the_documented_logistic() -> None:
    assert bad_chance(0.7, 0.6, 0.05) == 0.0  # meets the need: never bad
    assert bad_chance(0.6, 0.6, 0.05) == 0.0
    assert bad_chance(0.5, 0.6, 0.0) == 1.0  # no spread: every answer under it is bad
    assert bad_chance(0.5, 0.6, 0.05) == pytest.approx(math.tanh(1.0))  # 0.7616
    assert bad_chance(0.55, 0.6, 0.05) == pytest.approx(2 / (1 + math.exp(-1)) - 1)  # 0.4621
    assert bad_chance(None, 0.6, 0.05) == bad_chance(0.5, None, 0.05) == 0.0


TINY = """\
seed: 3
requests: 40
rate_per_s: 5
quality_spread: 0.05
traffic:
  - {name: chat, content: {tokens: 20}, output_tokens: 100, min_quality: 0.6}
providers:
  openai/gpt-5-nano:            {mean_ms: 1000, sigma: 0, quality: 0.5}
  gemini/gemini-2.5-flash-lite: {mean_ms: 500, sigma: 0, quality: 0.7}
strategies: [cost]
default_quality: 0.9
"""


def test_bad_answers_and_regret_by_hand(tmp_path: Path) -> None:
    report = simulate(load_scenario(write(tmp_path, TINY)))
    by = rows(report.to_dict())
    cost, oracle = by["cost"], by["oracle"]
    # cost: GPT-5 nano ($0.05/$0.40) every time, no failures; its true quality 0.5 is 0.1
    # under the 0.6 needed: each answer is bad with chance 2/(1+e^-2) - 1 = 0.7616, drawn
    # with one uniform per request from the `3:answers` generator
    assert cost["models"] == {NANO: 40}
    draws = random.Random("3:answers")
    expected = sum(1 for _ in range(40) if draws.random() < math.tanh(1.0))
    assert 20 <= expected <= 40  # about 30 of 40
    assert cost["bad_answers"] == expected
    assert cost["bad_answer_rate"] == round(expected / 40, 4)
    # the oracle: the cheapest model good enough (Flash-Lite, $0.10/$0.40, 0.7 >= 0.6)
    assert oracle["models"] == {LITE: 40} and oracle["bad_answers"] == 0
    # regret: the same output price, so nano saves $0.05 per 1M input tokens
    tokens = [a.input_tokens for a in report.arrivals]
    saved = sum(t * (0.05 - 0.10) for t in tokens) / 1e6 / 40
    assert cost["regret"]["cost_per_request"] == pytest.approx(saved, abs=1e-11)
    assert cost["regret"]["bad_answers"] == expected
    assert cost["regret"]["bad_answer_rate"] == pytest.approx(expected / 40, abs=1e-4)
    # the same run without a spread: every answer of nano is bad
    step = write(tmp_path, TINY.replace("quality_spread: 0.05\n", ""), "step.yaml")
    assert rows(simulate(load_scenario(step)).to_dict())["cost"]["bad_answers"] == 40


# ---------------------------------------------------------------- the example


def test_content_aware_policy_against_cost_quality_and_oracle() -> None:
    data = simulate(load_scenario(CONTENT)).to_dict()
    by = rows(data)
    assert data["policies"] == {
        "complexity": str(ROOT / "examples" / "policies" / "complexity.policy"),
        "content-aware": str(ROOT / "examples" / "simulations" / "content.policy"),
    }
    cost, best = by["cost"], by["weighted(quality: 100%)"]
    aware, complexity, oracle = by["content-aware"], by["complexity"], by["oracle"]
    assert (aware["kind"], complexity["kind"], cost["kind"]) == ("policy", "policy", "strategy")
    assert best["models"] == {SONNET: best["served"]}  # quality-only: the best model
    assert cost["top_model"] == NANO and cost["top_share"] == 1.0
    # the content-aware policy: far fewer bad answers than cost-only …
    assert aware["bad_answer_rate"] < 0.1 < 0.3 < cost["bad_answer_rate"]
    # … and far cheaper than quality-only: a cost cut of more than 80% for under 10%
    assert aware["cost_per_request"] < 0.2 * best["cost_per_request"]
    # within a few percent of the oracle's cost, which has no bad answers
    assert oracle["bad_answers"] == 0
    assert abs(aware["regret"]["cost_per_request"]) < 0.1 * oracle["cost_per_request"]
    # complexity.policy (Sonnet for hard prompts): no bad answers, at a higher cost
    assert complexity["bad_answers"] == 0
    assert aware["cost_per_request"] < complexity["cost_per_request"] < best["cost_per_request"]


def test_the_policy_reads_the_prompt_features() -> None:
    """complexity.policy sends code and math (complexity >= 0.5) to Sonnet, the rest to
    GPT-4o mini: the engine derived the features from the generated text."""
    report = simulate(load_scenario(CONTENT, requests=600))
    [run] = [r for r in report.runs if r.name == "complexity"]
    keys = run.keys
    for a in report.arrivals:
        if run.chosen[a.index] < 0:
            continue
        hard = a.template.name in ("code", "math")
        assert keys[run.chosen[a.index]] == (SONNET if hard else "openai/gpt-4o-mini"), a


# ---------------------------------------------------------------- errors


def scenario_errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ScenarioError) as err:
        load_scenario(write(tmp_path, text))
    return err.value.messages


BASE = """\
requests: 10
rate_per_s: 5
default_quality: catalog
strategies: [cost]
"""


def test_content_errors(tmp_path: Path) -> None:
    messages = scenario_errors(
        tmp_path,
        BASE + "traffic:\n"
        "  - {name: a, content: {tokens: 20}, messages: [{role: user, content: hi}]}\n"
        "  - {name: b, content: {tool_results: true}}\n"
        "  - {name: c, content: {script: klingon}}\n",
    )
    text = "\n".join(messages)
    assert "field `traffic[0].messages`: `content` writes the prompt" in text
    assert "field `traffic[1].content`" in text and "`tool_results` needs `turns`" in text
    assert "field `traffic[2].content.script`" in text


def test_policy_errors(tmp_path: Path) -> None:
    own = tmp_path / "own.policy"
    own.write_text('defaults { strategy cost }\ncatalog "x.yaml"\n', encoding="utf-8")
    messages = scenario_errors(
        tmp_path,
        BASE + "traffic: [{name: a, content: {tokens: 20}}]\n"
        "policies:\n  own: own.policy\n  missing: nowhere.policy\n  cost: own.policy\n",
    )
    text = "\n".join(messages)
    assert "field `policies.own`: " in text and "names its own `catalog` (line 2)" in text
    assert "field `policies.missing`: cannot read" in text
    assert "field `policies.cost`: `cost` is already a row of the report" in text


def test_catalog_quality_needs_a_score(tmp_path: Path) -> None:
    catalog = tmp_path / "models.yaml"
    text = MODELS.read_text(encoding="utf-8")
    catalog.write_text(text.replace("    quality: {overall: 0.6, tasks: {chat: 0.6, "
                                    "code: 0.5, summary: 0.7}, source: \"illustrative\"}\n",
                                    ""), encoding="utf-8")  # fmt: skip
    path = tmp_path / "s.yaml"
    path.write_text(
        BASE + "catalog: models.yaml\ntraffic: [{name: a, input_tokens: 5, min_quality: 0.5}]\n",
        encoding="utf-8",
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert "no catalog `quality` and no `quality` for it (`openai/gpt-5-nano`)" in str(err.value)


# ---------------------------------------------------------------- the CLI


def test_cli_json_and_table() -> None:
    args = [sys.executable, "-m", "engine", "simulate", "examples/simulations/content.yaml"]
    out = subprocess.run(
        [*args, "--requests", "300", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    aware = rows(data)["content-aware"]
    assert aware["kind"] == "policy"
    assert set(aware["regret"]) == {"cost_per_request", "mean_ms", "bad_answers", "bad_answer_rate"}
    table = subprocess.run(
        [*args, "--requests", "300"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert table.returncode == 0, table.stderr
    assert "content-aware (policy)" in table.stdout
