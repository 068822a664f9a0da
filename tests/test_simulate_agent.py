"""The simulator's agent sessions (prompt caching, with and without affinity) and its TPM
scenario (real usage per window with and without settlement).

Costs are computed by hand from the catalog's prices in the test; the shipped scenarios
(`examples/simulations/agent.yaml`, `tpm.yaml`, `tpm-under.yaml`) are run shortened."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.simulate import ScenarioError, load_scenario, simulate
from engine.simulate.world import draw_arrivals

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "simulations"

# two models alike but for their names: per 1M tokens, input $1, cached input $0.10, output $2
CATALOG = """\
version: 2
models:
  - id: left
    provider: acme
    context_window: 200000
    max_tokens: 8192
    supports: [streaming, tools]
    pricing: {input: 1.0, output: 2.0, cached_input: 0.1}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: right
    provider: acme
    context_window: 200000
    max_tokens: 8192
    supports: [streaming, tools]
    pricing: {input: 1.0, output: 2.0, cached_input: 0.1}
    latency_prior_ms: {p50: 500, p95: 1000}
"""


def scenario_file(tmp_path: Path, ttl_s: float = 1e6, extra: str = "") -> Path:
    (tmp_path / "models.yaml").write_text(CATALOG, encoding="utf-8")
    provider = f"{{mean_ms: 500, p95_ms: 900, cache_ttl_s: {ttl_s}}}"
    path = tmp_path / "agent.yaml"
    path.write_text(
        f"""\
catalog: models.yaml
seed: 1
requests: 4
rate_per_s: 0.001
traffic:
  - name: agent
    input_tokens: 1000
    output_tokens: 100
    max_tokens: 200
    session: {{turns: 4, grows_by: 500, gap_s: 10}}
providers:
  acme/left: {provider}
  acme/right: {provider}
strategies: [round-robin]
affinity: by request.metadata.session_id for 30m
{extra}""",
        encoding="utf-8",
    )
    return path


def rows_by_name(data: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    rows = data[section]["rows"] if section == "prompt_cache" else data[section]
    return {r["name"]: r for r in rows}


def test_one_session_by_hand(tmp_path: Path) -> None:
    report = simulate(load_scenario(scenario_file(tmp_path)))
    arrivals = report.arrivals
    # one session of four turns, each prompt 500 tokens longer, one session id
    assert [a.turn for a in arrivals] == [0, 1, 2, 3]
    assert [a.input_tokens for a in arrivals] == [1000, 1500, 2000, 2500]
    assert {a.session for a in arrivals} == {"s0"}
    assert all(b.at > a.at for a, b in itertools.pairwise(arrivals))
    runs = {run.name: run for run in report.runs}
    free, pinned = runs["round-robin"], runs["round-robin + affinity"]
    # round-robin alternates the two models; affinity keeps the session on its first one
    assert len({free.chosen[0], free.chosen[1]}) == 2
    assert free.chosen[0] == free.chosen[2] and free.chosen[1] == free.chosen[3]
    assert len(set(pinned.chosen)) == 1
    # without affinity: turn 2 reads turn 0's prompt from its model, turn 3 turn 1's
    assert list(free.cached) == [0, 0, 1000, 1500]
    # with it: every turn reads the one before it
    assert list(pinned.cached) == [0, 1000, 1500, 2000]
    # by hand, per 1M tokens: plain input $1, cached $0.10, output $2
    without = ((7000 - 2500) * 1.0 + 2500 * 0.1 + 4 * 100 * 2.0) / 1e6  # $0.00555
    with_affinity = ((7000 - 4500) * 1.0 + 4500 * 0.1 + 4 * 100 * 2.0) / 1e6  # $0.00375
    assert sum(free.cost) == pytest.approx(without, rel=1e-12)
    assert sum(pinned.cost) == pytest.approx(with_affinity, rel=1e-12)
    data = report.to_dict()
    cache = rows_by_name(data, "prompt_cache")
    assert data["prompt_cache"]["sessions"] == 1
    assert cache["round-robin"]["hit_rate"] == round(2500 / 7000, 4)
    assert cache["round-robin + affinity"]["hit_rate"] == round(4500 / 7000, 4)
    assert cache["round-robin"]["turns_moved"] == 3
    assert cache["round-robin + affinity"]["turns_moved"] == 0
    assert cache["round-robin + affinity"]["cost_vs_without_affinity"] == round(
        with_affinity / without - 1.0, 4
    )


def test_an_expired_cache_is_read_by_no_turn(tmp_path: Path) -> None:
    report = simulate(load_scenario(scenario_file(tmp_path, ttl_s=0)))
    full = (7000 * 1.0 + 400 * 2.0) / 1e6
    for run in report.runs:
        assert sum(run.cached) == 0, run.name
        assert sum(run.cost) == pytest.approx(full, rel=1e-12), run.name


def test_sessions_leave_other_traffic_as_it_was(tmp_path: Path) -> None:
    # a scenario without sessions draws exactly what it drew before sessions existed
    scenario = load_scenario(EXAMPLES / "design.yaml", requests=200)
    arrivals = draw_arrivals(7, 200, 10, scenario.traffic)
    assert all(a.session is None and a.turn == 0 for a in arrivals)
    assert [a.input_tokens for a in arrivals] == [a.template.input_tokens for a in arrivals]
    assert "prompt_cache" not in simulate(scenario).to_dict()


def test_the_agent_scenario_affinity_keeps_caches_warm() -> None:
    report = simulate(load_scenario(EXAMPLES / "agent.yaml", requests=600))
    data = report.to_dict()
    cache = rows_by_name(data, "prompt_cache")
    # the best hit rate there is: every turn after a session's first reads the one before
    arrivals = report.arrivals
    # (a failed call leaves its model's cache as it was: a little less after one)
    best = sum(a.input_tokens - 1200 for a in arrivals if a.turn > 0)
    runs = {run.name: run for run in report.runs}
    pinned = runs["round-robin + affinity"]
    answered = sum(a.input_tokens for a in arrivals if pinned.ok[a.index])
    assert cache["round-robin + affinity"]["input_tokens"] == answered
    assert 0.97 * best <= cache["round-robin + affinity"]["cached_tokens"] <= best
    assert cache["round-robin"]["cached_tokens"] < 0.8 * best
    # round-robin scatters the turns; affinity pins them, and the bill falls
    assert cache["round-robin"]["turns_moved"] > 0.6 * cache["round-robin"]["later_turns"]
    assert cache["round-robin + affinity"]["turns_moved"] == 0
    assert cache["round-robin"]["hit_rate"] < cache["round-robin + affinity"]["hit_rate"] - 0.15
    assert cache["round-robin + affinity"]["cost_vs_without_affinity"] < -0.3
    # a strategy that keeps to one model anyway gains nothing
    assert cache["cost + affinity"]["total_cost"] == cache["cost"]["total_cost"]


def tpm_rows(name: str, requests: int = 600) -> dict[str, dict[str, Any]]:
    data = simulate(load_scenario(EXAMPLES / name, requests=requests)).to_dict()
    [usage] = data["limit_usage"]
    assert usage["limit"] == "limit global tokens 100,000 per 1m"
    return {r["name"]: r for r in usage["rows"]}


def test_settlement_holds_a_tpm_limit_that_estimates_overstate() -> None:
    rows = tpm_rows("tpm.yaml")
    settled, unsettled = rows["cost"], rows["cost (unsettled)"]
    real, estimate, limit = 3000, 2000 + 16000, 100_000
    assert settled["windows"] == unsettled["windows"] >= 8
    # settled: the limit is used, within one request's real tokens
    assert limit - real <= settled["mean_per_window"] <= limit + real
    # unsettled: each admission holds 18,000 tokens for good, so a minute admits the
    # limit's worth of estimates, 100,000 / 18,000 requests: a sixth of the limit is used
    assert unsettled["mean_per_window"] <= limit / estimate * real + real
    # ... and most refusals would have fit
    assert unsettled["would_have_fit"] > 0.4 * unsettled["denials"]
    assert settled["would_have_fit"] < unsettled["would_have_fit"] / 4


def test_settlement_holds_a_tpm_limit_that_estimates_understate() -> None:
    rows = tpm_rows("tpm-under.yaml")
    settled, unsettled = rows["cost"], rows["cost (unsettled)"]
    real, limit = 1000 + 2500, 100_000
    assert settled["mean_per_window"] <= limit + real
    assert settled["denials"] > 0 and settled["would_have_fit"] == 0
    # unsettled: each request counts 1,256 tokens and uses 3,500: the limit is overshot
    assert unsettled["mean_per_window"] > 2 * limit
    assert unsettled["max_vs_limit"] > 1.0


def test_the_cli_reports_caches_and_limits(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "simulate", str(EXAMPLES / "tpm.yaml"),
         "--requests", "300"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    assert "limit global tokens 100,000 per 1m: real tokens admitted per window" in out
    assert "cost (unsettled)" in out
    out = subprocess.run(
        [sys.executable, "-m", "engine", "simulate", str(scenario_file(tmp_path)),
         "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout  # fmt: skip
    data = json.loads(out)
    assert [r["name"] for r in data["rows"]][3:] == ["round-robin", "round-robin + affinity"]
    assert data["prompt_cache"]["rows"][4]["cached_tokens"] == 4500


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("affinity: by model.id for 30m\n", "field `affinity`"),
        ("compare_settlement: yes please\n", "field `compare_settlement`"),
        ("policy: |\n  affinity by request.user for 1m\n", "`policy` sets `affinity` already"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, extra: str, message: str) -> None:
    path = scenario_file(tmp_path)
    text = path.read_text(encoding="utf-8")
    if extra.startswith("affinity"):
        text = text.replace("affinity: by request.metadata.session_id for 30m\n", "")
    path.write_text(text + extra, encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert any(message in line for line in err.value.messages), err.value.messages


def test_a_session_template_may_not_name_its_session(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    text = path.read_text(encoding="utf-8").replace(
        "    output_tokens: 100\n", "    output_tokens: 100\n    metadata: {session_id: x}\n"
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert any("traffic[0].metadata.session_id" in line for line in err.value.messages)
