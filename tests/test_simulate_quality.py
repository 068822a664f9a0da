"""`policyctl simulate`: true quality and bad answers, the oracle and regret, latency
degradation, residency under a regional outage, and the new scenarios (seeded; counts and
ratios only)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.diagnostics import PolicyError
from engine.simulate import ScenarioError, load_scenario, simulate

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "examples" / "simulations"
CALIBRATED = SIMULATIONS / "calibrated.yaml"
DEGRADATION = SIMULATIONS / "degradation.yaml"
RESIDENCY = SIMULATIONS / "residency.yaml"
MODELS = SIMULATIONS / "calibrated-models.yaml"
WEIGHTED = "weighted(latency: 60%, cost: 40%)"
NANO = "openai/gpt-5-nano"
LITE = "gemini/gemini-2.5-flash-lite"
MINI = "openai/gpt-5-mini"
SONNET = "anthropic/claude-sonnet-4-6"


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    """A scenario on calibrated-models.yaml (six of today's models), named last so that no
    line of the text moves."""
    path = tmp_path / name
    body = textwrap.dedent(text).rstrip("\n")
    path.write_text(f"{body}\ncatalog: {json.dumps(str(MODELS))}\n", encoding="utf-8")
    return path


def rows(data: dict) -> dict[str, dict]:
    return {row["name"]: row for row in data["rows"]}


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", "simulate", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


# ---------------------------------------------------------------- bad answers, by hand

TINY = """\
seed: 2
requests: 20
rate_per_s: 5
traffic:
  - {name: chat, input_tokens: 100, output_tokens: 100, max_tokens: 256, min_quality: 0.7}
providers:
  openai/gpt-5-nano:            {mean_ms: 2000, sigma: 0, quality: 0.5}
  gemini/gemini-2.5-flash-lite: {mean_ms: 500, sigma: 0, quality: {chat: 0.7}}
  anthropic/claude-sonnet-4-6:  {mean_ms: 1500, sigma: 0, failure_rate: 1, quality: 0.6}
strategies: [cost]
default_quality: 0.9
"""


def test_bad_answers_by_hand(tmp_path: Path) -> None:
    report = simulate(load_scenario(write(tmp_path, TINY)))
    by = rows(report.to_dict())
    # cost: GPT-5 nano every time ($0.05/$0.40: 100 and 100 tokens cost $0.000045), whose
    # true quality 0.5 is under the 0.7 needed: 20 bad answers
    cost = by["cost"]
    assert cost["models"] == {NANO: 20}
    assert (cost["answers"], cost["bad_answers"], cost["bad_answer_rate"]) == (20, 20, 1.0)
    assert cost["cost_per_request"] == pytest.approx(0.000045)
    # the oracle: the cheapest model whose quality is at least 0.7: Flash-Lite (exactly
    # 0.7 is good enough; $0.10/$0.40: $0.00005), at 500 ms
    oracle = by["oracle"]
    assert oracle["models"] == {LITE: 20}
    assert (oracle["bad_answers"], oracle["mean_ms"]) == (0, 500.0)
    assert oracle["cost_per_request"] == pytest.approx(0.00005)
    assert oracle["regret"] == {
        "cost_per_request": 0.0,
        "mean_ms": 0.0,
        "bad_answers": 0,
        "bad_answer_rate": 0.0,
    }
    # regret: cost is $0.000005 cheaper than the oracle, 1,500 ms slower, 20 bad answers more
    assert cost["regret"]["cost_per_request"] == pytest.approx(-0.000005)
    assert cost["regret"]["mean_ms"] == 1500.0
    assert cost["regret"]["bad_answers"] == 20
    # always Sonnet: every call fails, and a failed call is no answer, good or bad
    sonnet = by["always sonnet"]
    assert (sonnet["failures"], sonnet["answers"], sonnet["bad_answers"]) == (20, 0, 0)
    assert sonnet["bad_answer_rate"] is None
    # random: a bad answer is a successful call to a model under 0.7 (nano 0.5, Sonnet
    # fails; the other three models have the default 0.9)
    run = report.runs[0]
    keys = run.keys
    bad = sum(
        1 for c, ok in zip(run.chosen, run.ok, strict=True) if ok and keys[c] in (NANO, SONNET)
    )
    assert by["random"]["bad_answers"] == bad == sum(run.bad)
    assert by["random"]["bad_answers"] > 0


def test_templates_without_min_quality_have_no_bad_answers(tmp_path: Path) -> None:
    text = TINY.replace(", min_quality: 0.7", "")
    by = rows(simulate(load_scenario(write(tmp_path, text))).to_dict())
    assert all(row["bad_answers"] == 0 for row in by.values())
    # the oracle is then the cheapest model that is up: GPT-5 nano, as cost routing; the
    # same model on the same draws gives the same numbers (common random numbers)
    assert by["oracle"]["models"] == by["cost"]["models"] == {NANO: 20}
    same = ("served", "mean_ms", "p95_ms", "cost_per_request", "failures")
    assert [by["oracle"][k] for k in same] == [by["cost"][k] for k in same]
    assert by["cost"]["regret"] == {
        "cost_per_request": 0.0,
        "mean_ms": 0.0,
        "bad_answers": 0,
        "bad_answer_rate": 0.0,
    }


# ---------------------------------------------------------------- the oracle


@pytest.fixture(scope="module")
def calibrated() -> dict:
    return simulate(load_scenario(CALIBRATED)).to_dict()


def test_oracle_has_no_regret_against_itself(calibrated: dict) -> None:
    oracle = rows(calibrated)["oracle"]
    assert oracle["kind"] == "baseline"
    assert oracle["regret"] == {
        "cost_per_request": 0.0,
        "mean_ms": 0.0,
        "bad_answers": 0,
        "bad_answer_rate": 0.0,
    }
    assert oracle["bad_answers"] == 0


def test_oracle_picks_the_cheapest_good_enough_model_per_template() -> None:
    report = simulate(load_scenario(CALIBRATED, requests=600))
    oracle = next(run for run in report.runs if run.name == "oracle")
    picked: dict[str, set[str]] = {}
    for a in report.arrivals:
        picked.setdefault(a.template.name, set()).add(oracle.keys[oracle.chosen[a.index]])
    # chat needs 0.65 (nano has 0.55): Flash-Lite; code needs 0.8: GPT-5 mini (cheaper
    # than Haiku); summaries need 0.6: GPT-5 nano, the cheapest
    assert picked == {"chat": {LITE}, "code": {MINI}, "summary": {NANO}}


def test_oracle_avoids_a_model_in_an_outage(tmp_path: Path) -> None:
    text = TINY.replace(
        "quality: {chat: 0.7}}",
        "quality: {chat: 0.7}, outage: {from_request: 5, to_request: 10}}",
    ).replace("requests: 20", "requests: 15")
    report = simulate(load_scenario(write(tmp_path, text)))
    oracle = next(run for run in report.runs if run.name == "oracle")
    chosen = [oracle.keys[c] for c in oracle.chosen]
    assert chosen[:5] == [LITE] * 5 and chosen[10:] == [LITE] * 5
    # while Flash-Lite is down: the next cheapest good enough (the default 0.9): GPT-4o mini
    assert chosen[5:10] == ["openai/gpt-4o-mini"] * 5
    assert rows(report.to_dict())["oracle"]["failures"] == 0


def test_oracle_honours_the_request_limits_on_true_figures(tmp_path: Path) -> None:
    # Flash-Lite's true p95 is 500 ms (sigma 0); a cap of 400 ms leaves GPT-4o mini's prior
    # (sigma from its catalog priors: p95 1,700 ms) out too, and Haiku (1,800 ms); nano is
    # 2,000 ms; nobody serves: the oracle denies
    text = TINY.replace("max_tokens: 256,", "max_tokens: 256, max_latency_ms: 400,")
    by = rows(simulate(load_scenario(write(tmp_path, text))).to_dict())
    assert by["oracle"]["denials"] == 20
    text = TINY.replace("max_tokens: 256,", "max_tokens: 256, max_latency_ms: 600,")
    by = rows(simulate(load_scenario(write(tmp_path, text))).to_dict())
    assert by["oracle"]["models"] == {LITE: 20}


# ---------------------------------------------------------------- the calibrated scenario


def test_calibrated_trade_off_is_real(calibrated: dict) -> None:
    by = rows(calibrated)
    assert calibrated["requests"] == 3000 and calibrated["seed"] == 5
    assert calibrated["traffic"]["templates"] == {"chat": 1841, "code": 750, "summary": 409}
    # the cheapest model is not the fastest: cost and latency part ways
    assert by["cost"]["models"] == {NANO: 3000}
    assert by["latency"]["models"] == {LITE: 3000}
    assert by["cost"]["mean_ms"] > 4 * by["latency"]["mean_ms"]
    # ... and neither is the best: both give bad answers, Sonnet none
    assert by["cost"]["bad_answers"] == 2560  # chat and code on nano
    assert by["latency"]["bad_answers"] == 744  # code on Flash-Lite
    assert by["always sonnet"]["bad_answers"] == 0
    assert by["random"]["bad_answers"] == 654


def test_calibrated_design_reductions(calibrated: dict) -> None:
    by = rows(calibrated)
    # the design's four reductions, on this scenario (docs/simulate.md)
    assert by["latency"]["latency_vs_random"] == -0.6394
    assert by["cost"]["cost_vs_sonnet"] == -0.9768
    assert by[WEIGHTED]["latency_vs_random"] == -0.6394
    assert by[WEIGHTED]["cost_vs_sonnet"] == -0.9712
    # against the oracle: cost and latency routing are cheaper than it, by bad answers
    assert by["cost"]["regret"]["cost_per_request"] < 0
    assert by["cost"]["regret"]["bad_answers"] == 2560
    assert by["always sonnet"]["regret"]["cost_per_request"] > 0


# ---------------------------------------------------------------- degradation

DEGRADED = """\
seed: 1
requests: 1200
rate_per_s: 10
traffic:
  - {name: chat, input_tokens: 400, output_tokens: 250, max_tokens: 1024}
providers:
  gemini/gemini-2.5-flash-lite:
    mean_ms: 480
    p95_ms: 950
    degradation: {from_request: 100, to_request: 250, latency_factor: 5}
  openai/gpt-4o-mini: {mean_ms: 750, p95_ms: 1500}
  anthropic/claude-haiku-4-5: {mean_ms: 800, p95_ms: 1500}
strategies: [cost, latency]
policy: |
  min_samples 20
  window 1m
  degraded when model.p95 > 3s
routes: |
  route chat {
    prefer gemini/gemini-2.5-flash-lite
    prefer openai/gpt-4o-mini
    prefer anthropic/claude-haiku-4-5
  }
"""


def test_degradation_multiplies_latency_over_its_window() -> None:
    from engine.simulate.world import Degradation, Provider, ProviderSpec

    spec = ProviderSpec(
        mean_ms=1000,
        sigma=0.0,
        degradation=Degradation(from_request=5, to_request=8, latency_factor=5),
    )
    p = Provider.from_mean("x/y", spec)
    assert [round(p.outcome(i, 0.0, 0.5)[0], 6) for i in (4, 5, 7, 8)] == [1000, 5000, 5000, 1000]
    assert all(p.outcome(i, 0.0, 0.5)[1] for i in range(10))  # slower, never failing
    assert round(p.mean_ms_at(6)) == 5000 and round(p.p95_ms_at(6)) == 5000


def test_degradation_report_finds_the_move_away_and_the_come_back(tmp_path: Path) -> None:
    data = simulate(load_scenario(write(tmp_path, DEGRADED))).to_dict()
    [found] = data["degradations"]
    assert (found["provider"], found["from_request"], found["to_request"]) == (LITE, 100, 250)
    assert found["latency_factor"] == 5.0
    by = {row["name"]: row for row in found["rows"]}
    # cost ranks Flash-Lite first whatever its latency: only the health rule moves it; every
    # request until then went to it (the slow outcomes land seconds later)
    cost = by["cost"]
    assert (cost["calls_during"], cost["routed_away_after"], cost["calls_before_away"]) == (
        59,
        59,
        59,
    )
    assert cost["back_after"] == 525  # the window forgot the slow calls; probed back
    # latency ranks on the measured p95: it stops choosing Flash-Lite after 22 calls, before
    # the rule takes it out at the same request as for cost
    latency = by["latency"]
    assert (latency["calls_during"], latency["calls_before_away"]) == (22, 22)
    assert latency["routed_away_after"] == 59
    assert latency["back_after"] == 464
    # no error anywhere: a degradation is not an outage
    assert data["outages"] == []
    assert all(row["failures"] == 0 for row in data["rows"])
    assert by["random"]["routed_away_after"] is None and by["random"]["calls_during"] == 22


def test_shipped_degradation_scenario() -> None:
    done = cli(str(DEGRADATION), "--requests", "2000", "--strategies", "cost", "--format", "json")
    assert done.returncode == 0, done.stderr
    [found] = json.loads(done.stdout)["degradations"]
    assert (found["from_request"], found["to_request"], found["latency_factor"]) == (1200, 7200, 5)
    cost = {row["name"]: row for row in found["rows"]}["cost"]
    assert cost["routed_away_after"] == 274 and cost["calls_before_away"] == 274
    assert cost["back_after"] is None  # the degradation lasts past request 2,000
    table = cli(str(DEGRADATION), "--requests", "2000", "--strategies", "cost")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    at = lines.index(
        "degradation gemini/gemini-2.5-flash-lite: 5× slower, requests 1,200–7,200 (117s–the end)"
    )
    assert lines[at + 1].split() == [
        "STRATEGY", "SLOW", "CALLS", "ROUTED", "AWAY", "AFTER", "BACK", "AFTER", "RECOVERY",
    ]  # fmt: skip
    assert lines[at + 5].split() == [
        "cost", "274", "274", "requests", "(27.1s,", "274", "calls)", "(run", "ended", "first)",
    ]  # fmt: skip


# ---------------------------------------------------------------- residency


def test_residency_under_a_regional_outage() -> None:
    done = cli(str(RESIDENCY), "--requests", "1500", "--format", "json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    residency = data["residency"]
    assert residency["requests"] == 1500
    by = {row["name"]: row for row in residency["rows"]}
    for name in ("latency", "cost", WEIGHTED, "round-robin", "failover", "oracle"):
        assert by[name]["outside"] == 0, name
        assert by[name]["denied"] == 0, name
    for name in ("latency", "cost", WEIGHTED, "round-robin", "failover"):
        assert by[name]["fallbacks_outside"] == 0, name
    # the baselines that know nothing of regions serve EU requests in the US and back
    assert by["random"]["outside"] > 0 and by["always sonnet"]["outside"] > 0
    assert by["random"]["fallbacks_outside"] is None
    # the outage hit both EU Azure deployments, and the strategies routed away
    outages = {o["provider"]: o for o in data["outages"]}
    assert set(outages) == {
        "azure/gpt-4o-mini-swedencentral",
        "azure/gpt-4.1-mini-swedencentral",
    }
    for outage in outages.values():
        cost = {row["name"]: row for row in outage["rows"]}["cost"]
        assert cost["routed_away_after"] is not None
    # EU traffic went to the EU's other model while Azure's were down
    models = rows(data)["cost"]["models"]
    assert models["mistral/mistral-medium-latest"] > 0


def test_no_residency_section_without_regions(tmp_path: Path) -> None:
    data = simulate(load_scenario(write(tmp_path, TINY))).to_dict()
    assert data["residency"] is None and data["degradations"] == []


# ---------------------------------------------------------------- bad scenarios


def test_bad_quality_and_degradation_fields(tmp_path: Path) -> None:
    write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic:
          - {name: chat, input_tokens: 10, min_quality: 1.5}
          - {name: code, input_tokens: 10}
        providers:
          openai/gpt-5-nano: {quality: {chat: 0.5, cod: 0.3}}
          openai/gpt-4o-mini: {quality: 1.2}
          openai/gpt-5-mini: {quality: {chat: high}}
          gemini/gemini-2.5-flash-lite: {degradation: {from_request: 5, to_request: 9}}
          anthropic/claude-haiku-4-5: {p95_ms: 900}
          anthropic/claude-sonnet-4-6:
            degradation: {from_request: 5, to_request: 2, latency_factor: 5}
        routes: |
          route x {
            strategy cost
          }
        """,
        "bad.yaml",
    )
    done = cli("bad.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "policyctl: error: bad.yaml:4:36: field `traffic[0].min_quality`: input should be less than"
        " or equal to 1",
        "policyctl: error: bad.yaml:7:44: field `providers.openai/gpt-5-nano.quality.cod`: unknown"
        " template (did you mean `code`?)",
        "policyctl: error: bad.yaml:8:24: field `providers.openai/gpt-4o-mini.quality`: expected a"
        " score from 0 to 1, or a mapping of template names to scores (`{chat: 0.8, code:"
        " 0.6}`)",
        "policyctl: error: bad.yaml:9:23: field `providers.openai/gpt-5-mini.quality`: `chat`:"
        " 'high' is not a score from 0 to 1",
        "policyctl: error: bad.yaml:10:34: field"
        " `providers.gemini/gemini-2.5-flash-lite.degradation.latency_factor`: missing",
        "policyctl: error: bad.yaml:11:3: field `providers.anthropic/claude-haiku-4-5`: give"
        " `mean_ms` with `p95_ms` or `sigma`",
        "policyctl: error: bad.yaml:13:5: field"
        " `providers.anthropic/claude-sonnet-4-6.degradation`: to_request (2) must be greater than"
        " from_request (5)",
        "policyctl: error: bad.yaml: field `routes` (line 2): `strategy` is set per run from"
        " `strategies`; remove it here",
    ]


def test_min_quality_needs_every_model_s_quality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic:
          - {name: chat, input_tokens: 10, min_quality: 0.5}
          - {name: other, input_tokens: 10}
        providers:
          openai/gpt-5-nano: {quality: {chat: 0.5}}
          openai/gpt-4o-mini: {quality: 0.9}
        """,
        "bad.yaml",
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScenarioError) as err:
        load_scenario("bad.yaml")
    assert err.value.messages == [
        "bad.yaml: field `default_quality`: missing: template `chat` sets `min_quality` and 4"
        " models that can serve it have no `quality` for it (`gemini/gemini-2.5-flash-lite`,"
        " `openai/gpt-5-mini`, `anthropic/claude-haiku-4-5` and 1 more); give them one under"
        " `providers`, or set `default_quality`"
    ]


def test_routes_errors_point_at_the_scenario_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        traffic: [{input_tokens: 1}]
        policy: |
          min_samples 20
        routes: |
          route eu when request.region == "eu" {
            require model.regons contains "eu"
          }
        """,
        "bad.yaml",
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError) as err:
        load_scenario("bad.yaml")
    first = str(err.value).splitlines()
    assert first[0].startswith("bad.yaml:8:13: error[E0324]: ")
    assert first[2] == '8 |     require model.regons contains "eu"'


def test_oracle_takes_the_best_quality_when_nobody_is_good_enough(tmp_path: Path) -> None:
    # 0.95 is more than any model has; the best that is up is 0.9 (the default; Sonnet
    # fails every call), and the cheapest of those is GPT-4o mini
    text = TINY.replace("min_quality: 0.7", "min_quality: 0.95")
    by = rows(simulate(load_scenario(write(tmp_path, text))).to_dict())
    oracle = by["oracle"]
    assert oracle["models"] == {"openai/gpt-4o-mini": 20}
    assert oracle["bad_answers"] == 20  # unavoidable: regret counts bad answers beyond these
    assert by["cost"]["regret"]["bad_answers"] == 0
