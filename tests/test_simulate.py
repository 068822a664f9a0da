"""`policyctl simulate`: synthetic providers, the engine in the loop, baselines, reports."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from _design import DESIGN_CATALOG

from engine.cli import main
from engine.diagnostics import PolicyError
from engine.simulate import (
    DEFAULT_STRATEGIES,
    SONNET,
    Provider,
    ScenarioError,
    load_scenario,
    plot,
    simulate,
    split_strategies,
)
from engine.simulate.world import Drift as _Drift
from engine.simulate.world import Outage as _Outage
from engine.simulate.world import ProviderSpec as _ProviderSpec

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "examples" / "simulations" / "design.yaml"
OUTAGE = ROOT / "examples" / "simulations" / "outage.yaml"
WEIGHTED = "weighted(latency: 60%, cost: 40%)"

SMALL = """\
seed: 3
requests: 400
rate_per_s: 20
traffic:
  - {input_tokens: 50, output_tokens: 50, max_tokens: 256}
providers:
  gemini/gemini-1.5-flash-latest: {mean_ms: 500, p95_ms: 900, failure_rate: 0.05}
strategies: [latency, cost]
"""


def on_design(text: str) -> str:
    """A scenario on the design's catalog (whose models these tests name), added last so
    that no line of it moves."""
    if "\ncatalog:" in text or text.startswith("catalog:"):
        return text
    try:
        if not isinstance(yaml.safe_load(text), dict):
            return text  # not a mapping: the test is about that
    except yaml.YAMLError:
        return text
    return text.rstrip("\n") + f"\ncatalog: {json.dumps(str(DESIGN_CATALOG))}\n"


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    path.write_text(on_design(textwrap.dedent(text)), encoding="utf-8")
    return path


def rows(data: dict) -> dict[str, dict]:
    return {row["name"]: row for row in data["rows"]}


@pytest.fixture(scope="module")
def design() -> dict:
    return simulate(load_scenario(DESIGN)).to_dict()


@pytest.fixture(scope="module")
def outage() -> dict:
    return simulate(load_scenario(OUTAGE)).to_dict()


# ---------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_report() -> None:
    first = simulate(load_scenario(DESIGN, requests=800)).to_dict()
    second = simulate(load_scenario(DESIGN, requests=800)).to_dict()
    assert first == second


def test_another_seed_gives_another_report() -> None:
    first = simulate(load_scenario(DESIGN, requests=800)).to_dict()
    other = simulate(load_scenario(DESIGN, requests=800, seed=8)).to_dict()
    assert other["seed"] == 8
    assert rows(first)["random"]["mean_ms"] != rows(other)["random"]["mean_ms"]
    assert rows(first)["latency"]["mean_ms"] != rows(other)["latency"]["mean_ms"]


def test_runs_are_independent_of_which_other_strategies_run() -> None:
    full = rows(simulate(load_scenario(DESIGN, requests=600)).to_dict())
    alone = rows(
        simulate(load_scenario(DESIGN, requests=600, strategies=["round-robin"])).to_dict()
    )
    assert list(alone) == ["random", "always sonnet", "oracle", "round-robin"]
    for name in alone:
        assert alone[name] == full[name]


# ---------------------------------------------------------------- the design's figures


def test_design_scenario_is_calibrated_to_the_design_baselines(design: dict) -> None:
    by = rows(design)
    assert design["requests"] == 3000 and design["seed"] == 7
    assert design["strategies"] == list(DEFAULT_STRATEGIES)
    assert 1400 <= by["random"]["mean_ms"] <= 1600  # the design: 1,500 ms under random
    assert 0.00085 <= by["always sonnet"]["cost_per_request"] <= 0.00095  # the design: $0.0009
    assert by["always sonnet"]["models"] == {SONNET: 3000}
    assert len(by["random"]["models"]) == 11
    traffic = design["traffic"]  # the design's Sonnet figure: 50 input and 50 output tokens
    assert traffic["templates"] == {"chat": 1818, "tool call": 915, "summary": 267}
    assert abs(traffic["mean_input_tokens"] - 50) < 1
    assert abs(traffic["mean_output_tokens"] - 50) < 1


def test_design_reductions_meet_the_design_claims(design: dict) -> None:
    by = rows(design)
    for row in by.values():
        assert (row["served"], row["denials"]) == (3000, 0)
    # the design: latency-based −43% latency vs random
    assert by["latency"]["latency_vs_random"] <= -0.43
    # the design: cost-based −78% cost vs always-Sonnet
    assert by["cost"]["cost_vs_sonnet"] <= -0.78
    # the design: weighted 60/40 −37% latency and −67% cost
    assert by[WEIGHTED]["latency_vs_random"] <= -0.37
    assert by[WEIGHTED]["cost_vs_sonnet"] <= -0.67
    # what the engine chose, for this seed
    assert by["latency"]["models"] == {
        "gemini/gemini-1.5-flash-latest": 2941,
        "claude/claude-3-haiku-20240307": 59,
    }
    assert by["cost"]["models"] == {"gemini/gemini-1.5-flash-latest": 3000}
    assert by[WEIGHTED]["models"] == {"gemini/gemini-1.5-flash-latest": 3000}
    assert by["failover"]["models"] == {SONNET: 3000}
    assert len(by["round-robin"]["models"]) == 11
    assert [by[n]["failures"] for n in by] == [17, 11, 25, 25, 25, 25, 17, 26, 11]
    # the oracle: the cheapest model that serves each request (no quality needs here)
    assert by["oracle"]["models"] == {"gemini/gemini-1.5-flash-latest": 3000}
    assert by["cost"]["regret"] == {
        "cost_per_request": 0.0,
        "mean_ms": 0.0,
        "bad_answers": 0,
        "bad_answer_rate": 0.0,
    }
    # the same model on the same traffic gives the same numbers: common random numbers
    same = ("served", "mean_ms", "p95_ms", "cost_per_request", "failures")
    assert [by["failover"][k] for k in same] == [by["always sonnet"][k] for k in same]


# ---------------------------------------------------------------- outages


def test_outage_routes_away_quickly_and_comes_back(outage: dict) -> None:
    assert [o["provider"] for o in outage["outages"]] == ["gemini/gemini-1.5-flash-latest"]
    found = outage["outages"][0]
    assert (found["from_request"], found["to_request"]) == (1000, 2000)
    by = {row["name"]: row for row in found["rows"]}
    latency = by["latency"]
    assert latency["calls_during_outage"] == 24
    assert latency["routed_away_after"] == 11  # requests after the outage began
    assert latency["calls_before_away"] == 11  # calls in flight fail before feedback lands
    assert latency["back_after"] == 258  # the next probe after the 30 s cooldown
    assert latency["back_after_s"] <= 30.0
    for name in ("cost", WEIGHTED):
        assert by[name]["routed_away_after"] == 11 and by[name]["back_after"] == 258
    spread = by["round-robin"]
    assert (spread["calls_before_away"], spread["routed_away_after"]) == (3, 34)
    assert spread["back_after"] == 282
    assert by["model-specific"]["calls_before_away"] == 3
    # the random baseline never routes away; Sonnet and failover never call Flash
    assert by["random"]["calls_during_outage"] == 87
    assert by["random"]["routed_away_after"] is None
    assert by["always sonnet"]["calls_during_outage"] == 0
    assert by["failover"]["calls_during_outage"] == 0


def test_outage_costs_failures_only_while_it_lasts(outage: dict) -> None:
    by = rows(outage)
    assert by["latency"]["failures"] < by["random"]["failures"]
    assert by["latency"]["models"]["gemini/gemini-1.5-flash-latest"] == 1766


def test_outage_report_without_routing_away(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SMALL.replace(
            "failure_rate: 0.05}",
            "failure_rate: 0.05, outage: {from_request: 100, to_request: 200}}",
        ),
    )  # no cooldown and no min_success_rate: nothing routes away
    found = simulate(load_scenario(path)).to_dict()["outages"][0]
    latency = {row["name"]: row for row in found["rows"]}["latency"]
    assert latency["calls_during_outage"] == 100
    assert latency["routed_away_after"] is None and latency["back_after"] is None


# ---------------------------------------------------------------- providers and traffic


def test_provider_from_mean_and_p95() -> None:
    spec = _ProviderSpec(mean_ms=1300, p95_ms=2550)
    p = Provider.from_mean("claude/x", spec)
    assert math.isclose(p.mean_ms, 1300)
    assert math.isclose(math.exp(p.mu + 1.6448536269514722 * p.sigma), 2550)
    q = Provider.from_mean("claude/x", _ProviderSpec(mean_ms=800, sigma=0.5))
    assert math.isclose(q.mean_ms, 800) and q.sigma == 0.5


def test_drift_and_outage_apply_from_their_request() -> None:
    spec = _ProviderSpec(
        mean_ms=1000,
        sigma=0.0,
        failure_rate=0.0,
        drift=_Drift(at_request=10, latency_factor=2.0, failure_rate=1.0),
        outage=_Outage(from_request=5, to_request=8, latency_ms=30),
    )
    p = Provider.from_mean("x/y", spec)

    def outcome(request: int) -> tuple[float, bool]:
        latency, ok = p.outcome(request, 0.0, 0.5)
        return round(latency, 6), ok

    assert outcome(0) == (1000.0, True)
    assert outcome(5) == (30, False)  # the outage's latency
    assert outcome(8) == (1000.0, True)  # the outage is over
    assert outcome(10) == (2000.0, False)  # the drift: twice as slow, and always failing


def test_drift_moves_the_latency_strategy(tmp_path: Path) -> None:
    text = SMALL.replace(
        "failure_rate: 0.05}",
        "failure_rate: 0.0, drift: {at_request: 100, latency_factor: 4}}",
    ).replace("strategies: [latency, cost]", "strategies: [latency]\npolicy: |\n  min_samples 20\n")
    report = simulate(load_scenario(write(tmp_path, text)))
    run = report.runs[3]
    assert run.name == "latency"
    flash = run.keys.index("gemini/gemini-1.5-flash-latest")
    before = sum(1 for i in range(100) if run.chosen[i] == flash)
    after = sum(1 for i in range(300, 400) if run.chosen[i] == flash)
    assert before == 100 and after == 0


def test_unlisted_models_use_the_catalog_priors(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, SMALL))
    assert len(scenario.providers) == 11
    haiku = scenario.providers["claude/claude-3-haiku-20240307"]
    assert math.isclose(math.exp(haiku.mu), 500) and haiku.failure_rate == 0.0


def test_requests_nobody_serves_are_denials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        requests: 50
        rate_per_s: 5
        traffic:
          - {input_tokens: 50, output_tokens: 50, max_tokens: 12000}
        strategies: [cost]
        """,
    )
    by = rows(simulate(load_scenario(path)).to_dict())
    assert by["always sonnet"]["denials"] == 50 and by["always sonnet"]["mean_ms"] is None
    assert by["random"]["models"] == {"openai/gpt-4o": 50}  # the only model with 16k output
    assert by["cost"]["models"] == {"openai/gpt-4o": 50}
    assert by["cost"]["cost_vs_sonnet"] is None


def test_rate_limits_deny_in_simulated_time(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        requests: 300
        rate_per_s: 2
        traffic:
          - {input_tokens: 50, output_tokens: 50, user: alice}
        strategies: [cost]
        limits: |
          limit user 60 per 1m
        """,
    )
    by = rows(simulate(load_scenario(path)).to_dict())
    # 2/s for 150 s against 60 + 1/s: about 60 + 150 allowed, on the fake clock (no waiting)
    assert by["cost"]["denials"] == 98
    assert by["cost"]["served"] == 202
    assert by["random"]["denials"] == 0


def test_split_strategies() -> None:
    assert split_strategies("latency, weighted(latency: 70%, cost: 30%),cost,") == [
        "latency",
        "weighted(latency: 70%, cost: 30%)",
        "cost",
    ]


# ---------------------------------------------------------------- bad scenarios


def errors_of(tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    write(tmp_path, text, "bad.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario("bad.yaml")
    return err.value.messages


def test_bad_fields_are_all_reported_with_file_and_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = errors_of(
        tmp_path,
        """\
        request: 10
        rate_per_s: 0
        traffic:
          - {input_tokens: -5, max_tokn: 20, weight: 0}
          - 7
        providers:
          gemini/gemini-1.5-flash: {mean_ms: 500, p95_ms: 900, failure_rate: 2}
          gemini/flash: {mean_ms: 500, sigma: 0.3}
          claude/claude-3-haiku: {mean_ms: 500, p95_ms: 400}
          claude/claude-3-opus: {mean_ms: 500, sigma: 0.3, p95_ms: 900, drift: {at: 3}}
          openai/gpt-4o: {mean_ms: 500, sigma: 0.3, outage: {from_request: 5, to_request: 3}}
          gpt-4o: {mean_ms: 500, sigma: 0.3}
        strategies: [fastest, "weighted(latency: 60%, cost: 50%)", "cost(x: 1)", cost]
        """,
        monkeypatch,
    )
    assert messages == [
        "bad.yaml: field `requests`: missing",
        "bad.yaml:2:1: field `rate_per_s`: input should be greater than 0",
        "bad.yaml:1:1: field `request`: unknown field (did you mean `requests`?)",
        "bad.yaml:4:38: field `traffic[0].weight`: input should be greater than 0",
        "bad.yaml:4:6: field `traffic[0].input_tokens`: input should be greater than or equal to 0",
        "bad.yaml:4:24: field `traffic[0].max_tokn`: unknown field (did you mean `max_tokens`?)",
        "bad.yaml:5:5: field `traffic[1]`: expected a mapping of fields",
        "bad.yaml:7:56: field `providers.gemini/gemini-1.5-flash.failure_rate`: input should be"
        " less than or equal to 1",
        "bad.yaml:8:3: field `providers.gemini/flash`: unknown model; gemini models:"
        " `gemini-1.5-pro-latest`, `gemini-1.5-flash-latest`, `gemini-1.0-pro`",
        "bad.yaml:9:3: field `providers.claude/claude-3-haiku`: p95_ms (400) must be greater than"
        " mean_ms (500)",
        "bad.yaml:10:65: field `providers.claude/claude-3-opus.drift.at_request`: missing",
        "bad.yaml:10:73: field `providers.claude/claude-3-opus.drift.at`: unknown field",
        "bad.yaml:11:45: field `providers.openai/gpt-4o.outage`: to_request (3) must be greater"
        " than from_request (5)",
        "bad.yaml:12:3: field `providers.gpt-4o`: unknown model: write `provider/model`, e.g."
        " `claude/claude-3-5-sonnet-20241022`",
        "bad.yaml:13:14: field `strategies[0]`: unknown strategy `fastest` (strategies: `latency`,"
        " `cost`, `weighted`, `model-specific`, `round-robin`, `failover`)",
        "bad.yaml:13:23: field `strategies[1]`: factor weights add up to 110%, not 100% (make the"
        " percentages add up to 100%)",
        "bad.yaml:13:60: field `strategies[2]`: strategy `cost` takes no factors (only"
        " `weighted(latency: 60%, cost: 40%)` takes factors)",
    ]


def test_unquoted_factors_and_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = errors_of(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic: [{input_tokens: 1}]
        strategies:
          - cost
          - weighted(latency: 60%)
          - cost
          - "latency } route x {"
        """,
        monkeypatch,
    )
    assert messages == [
        "bad.yaml:6:5: field `strategies[1]`: a strategy is a string; quote one with factors:"
        ' "weighted(latency: 60%, cost: 40%)"',
        "bad.yaml:7:5: field `strategies[2]`: `cost` is listed twice",
        "bad.yaml:8:5: field `strategies[3]`: not a strategy: 'latency } route x {'",
    ]


def test_outage_and_policy_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages = errors_of(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic: [{input_tokens: 1, id: r1}]
        providers:
          openai/gpt-4: {mean_ms: 500, p95_ms: 2000}
          openai/gpt-4o: {mean_ms: 500, p95_ms: 900, sigma: 0.3}
        policy: |
          min_samples 20
          strategy cost
        """,
        monkeypatch,
    )
    assert messages == [
        "bad.yaml:3:29: field `traffic[0].id`: ids are given per simulated request; remove it",
        "bad.yaml:5:3: field `providers.openai/gpt-4`: p95_ms (2000) is too far above mean_ms (500)"
        " for a lognormal: keep it under 3.87× the mean",
        "bad.yaml:6:3: field `providers.openai/gpt-4o`: give the latency spread as `p95_ms` or as"
        " `sigma`, not both",
        "bad.yaml: field `policy` (line 2): `strategy` is set per run from `strategies`;"
        " remove it here",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("requests: [\n", "bad.yaml:2:1: invalid YAML: did not find expected node content"),
        ("- 1\n", "bad.yaml: not a scenario: expected a mapping of fields"),
        (
            "requests: 5\nrate_per_s: 1\ntraffic: []\n",
            "bad.yaml:3:1: field `traffic`: list should have at least 1 item after validation,"
            " not 0",
        ),
        (
            "requests: 5\nrate_per_s: 1\ntraffic: [{}]\nstrategies: []\n",
            "bad.yaml:4:1: field `strategies`: list at least one strategy",
        ),
        (
            "requests: 5\nrate_per_s: 1\ntraffic: [{output_token: 3}]\n",
            "bad.yaml:3:12: field `traffic[0].output_token`: unknown field (did you mean"
            " `output_tokens`?)",
        ),
        (
            "requests: 5\nrate_per_s: 1\ntraffic: [{}]\nproviders: {nope/x: {mean_ms: 1,"
            " sigma: 0}}\n",
            "bad.yaml:4:13: field `providers.nope/x`: unknown provider; providers: `claude`,"
            " `gemini`, `openai`",
        ),
    ],
)
def test_one_bad_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    (tmp_path / "bad.yaml").write_text(on_design(text), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario("bad.yaml")
    assert err.value.messages == [message]


def test_policy_errors_point_at_the_scenario_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic: [{input_tokens: 1}]
        policy: |
          min_sucess_rate 80%
          cooldown after 3 failures for 30s
        limits: |
          limit user 10 per 1m
        """,
        "bad.yaml",
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as err:
        load_scenario("bad.yaml")
    assert str(err.value) == textwrap.dedent(
        """\
        bad.yaml:5:3: error[E0014]: unexpected `min_sucess_rate`
          |
        5 |   min_sucess_rate 80%
          |   ^^^^^^^^^^^^^^^
          = help: did you mean `min_success_rate`?"""
    )
    write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        limits: |
          limit user 10 per 1m burst
        traffic: [{input_tokens: 1}]
        """,
        "bad.yaml",
    )
    with pytest.raises(PolicyError) as err:
        load_scenario("bad.yaml")
    assert str(err.value).splitlines()[:3] == [
        "bad.yaml:4:29: error[E0013]: unexpected end of file",
        "  |",
        "4 |   limit user 10 per 1m burst",
    ]


def test_missing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario("nope.yaml")
    assert err.value.messages == ["nope.yaml: cannot read scenario: No such file or directory"]


# ---------------------------------------------------------------- the command line


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "engine", "simulate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_cli_prints_a_table() -> None:
    done = cli("examples/simulations/design.yaml", "--requests", "600")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "scenario examples/simulations/design.yaml: 600 requests at 10/s over 62s (seed 7)"
    )
    assert lines[1].startswith("traffic: chat ")
    assert lines[3].split()[:4] == ["STRATEGY", "MEAN", "P95", "COST/REQUEST"]
    assert lines[4].startswith("random (baseline) ")
    assert lines[5].startswith("always sonnet (baseline) ")
    assert lines[6].startswith("oracle (baseline) ")
    assert [line.split()[0] for line in lines[7:13]] == [
        "latency", "cost", "weighted(latency:", "model-specific", "round-robin", "failover",
    ]  # fmt: skip
    assert lines[13:15] == [
        "",
        "regret against the oracle (the cheapest model that is up and good enough)",
    ]
    assert lines[15].split()[:3] == ["STRATEGY", "BAD", "ANSWERS"]
    assert [line.split()[0] for line in lines[16:]] == [
        "random", "always", "oracle", "latency", "cost", "weighted(latency:", "model-specific",
        "round-robin", "failover",
    ]  # fmt: skip


def test_cli_json_and_overrides() -> None:
    done = cli(
        "examples/simulations/outage.yaml",
        "--format",
        "json",
        "--strategies",
        "latency,weighted(latency: 70%, cost: 30%)",
        "--seed",
        "11",
        "--requests",
        "1500",
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert [r["name"] for r in data["rows"]] == [
        "random",
        "always sonnet",
        "oracle",
        "latency",
        "weighted(latency: 70%, cost: 30%)",
    ]
    assert data["requests"] == 1500
    assert data["outages"][0]["rows"][3]["routed_away_after"] == 11


def test_cli_help_has_an_example() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "simulate", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0
    assert "policyctl simulate examples/simulations/design.yaml" in done.stdout


def test_cli_bad_scenario_exits_2(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("requests: 0\nrate_per_s: 1\ntraffic: [{}]\n")
    done = cli("bad.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        "policyctl: error: bad.yaml:1:1: field `requests`: input should be greater than or equal"
        " to 1\n"
    )
    assert done.stdout == ""


def test_cli_bad_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(DESIGN), "--strategies", "fast"]) == 2
    assert capsys.readouterr().err == (
        "policyctl: error: --strategies: unknown strategy `fast` (did you mean `cost`?)\n"
    )
    assert main(["simulate", str(DESIGN), "--requests", "0"]) == 2
    assert capsys.readouterr().err == (
        "policyctl: error: --requests must be between 1 and 1,000,000\n"
    )


def test_plot_without_matplotlib_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    out = tmp_path / "out.png"
    assert main(["simulate", str(DESIGN), "--requests", "50", "--plot", str(out)]) == 2
    assert capsys.readouterr().err == (
        "policyctl: error: --plot needs matplotlib, which is not installed:"
        " pip install 'policyctl[plot]'\n"
    )
    assert not out.exists()


def test_plot_draws_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "out.png"
    plot(simulate(load_scenario(OUTAGE, requests=1200)), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
