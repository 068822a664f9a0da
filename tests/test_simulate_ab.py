"""`policyctl simulate` with a `split`: the statistics (against hand-computed and published
values), the scenario's `users`, and the seeded A/B scenario's arms, directions and
intervals (counts and signs only)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

from engine.simulate import ScenarioError, load_scenario, simulate
from engine.simulate.ab import NO_DIFFERENCE, TOO_FEW, summarize
from engine.simulate.report import Report
from engine.simulate.stats import (
    Interval,
    mean_difference,
    mean_interval,
    percentile_difference,
    percentile_interval,
    proportion_difference,
    wilson,
)
from engine.simulate.world import draw_arrivals

ROOT = Path(__file__).resolve().parent.parent
SIMULATIONS = ROOT / "examples" / "simulations"
AB = SIMULATIONS / "ab.yaml"
MODELS = SIMULATIONS / "calibrated-models.yaml"
Z = 1.959963984540054  # the standard normal's 97.5th percentile


def write(tmp_path: Path, text: str, name: str = "scenario.yaml") -> Path:
    path = tmp_path / name
    body = textwrap.dedent(text).rstrip("\n")
    path.write_text(f"{body}\ncatalog: {json.dumps(str(MODELS))}\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- the statistics


def _close(got: Interval | None, value: float, low: float, high: float, abs: float) -> None:
    assert got is not None
    assert (got.value, got.low, got.high) == pytest.approx((value, low, high), abs=abs)


def test_wilson_against_the_formula_and_the_textbook_value() -> None:
    # 10 of 100: the textbook interval [0.0552, 0.1744]
    _close(wilson(10, 100), 0.1, 0.0552, 0.1744, abs=5e-5)
    # the score interval by hand: (p + z²/2n ± z√(p(1−p)/n + z²/4n²)) / (1 + z²/n)
    p, n = 0.1, 100
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    _close(wilson(10, 100), 0.1, centre - half, centre + half, abs=1e-12)
    # none of 50: from 0 to z²/(n + z²); all of 50: from n/(n + z²) to 1
    _close(wilson(0, 50), 0.0, 0.0, Z * Z / (50 + Z * Z), abs=1e-12)
    _close(wilson(50, 50), 1.0, 50 / (50 + Z * Z), 1.0, abs=1e-12)
    assert wilson(0, 0) is None
    with pytest.raises(ValueError, match="11 successes out of 10"):
        wilson(11, 10)


def test_newcombe_difference_matches_the_published_example() -> None:
    # Newcombe (1998), example (a): 56/70 − 48/80 = 0.2, hybrid score interval
    # 0.0524 to 0.3339 (here B − A with A = 48/80, B = 56/70)
    _close(proportion_difference(48, 80, 56, 70), 0.2, 0.0524, 0.3339, abs=5e-5)
    # by hand from the two Wilson intervals
    a, b = wilson(48, 80), wilson(56, 70)
    assert a is not None and b is not None
    low = 0.2 - math.sqrt((b.value - b.low) ** 2 + (a.high - a.value) ** 2)
    high = 0.2 + math.sqrt((b.high - b.value) ** 2 + (a.value - a.low) ** 2)
    _close(proportion_difference(48, 80, 56, 70), 0.2, low, high, abs=1e-12)
    assert proportion_difference(1, 10, 0, 0) is None


def test_mean_and_welch_difference_by_hand() -> None:
    # 1…5: mean 3, s = √2.5, standard error √0.5, half-width 1.95996 × 0.70711 = 1.38590
    _close(mean_interval([1, 2, 3, 4, 5]), 3.0, 1.61410, 4.38590, abs=5e-5)
    # 2, 4 … 10 against 1 … 5: 6 − 3 = 3; standard errors √0.5 and √2, together √2.5
    diff = mean_difference([1, 2, 3, 4, 5], [2, 4, 6, 8, 10])
    half = Z * math.sqrt(2.5)
    _close(diff, 3.0, 3.0 - half, 3.0 + half, abs=1e-12)
    _close(diff, 3.0, -0.0990, 6.0990, abs=5e-5)
    # constant samples: no spread, a zero-width interval
    _close(mean_interval([7.0, 7.0, 7.0]), 7.0, 7.0, 7.0, abs=1e-12)
    assert mean_interval([1.0]) is None
    assert mean_difference([1.0, 2.0], [3.0]) is None


def test_percentile_interval_by_order_statistics() -> None:
    # 1 … 100, p95: rank 95; z√(100 × 0.95 × 0.05) = 4.272, ranks floor(90.73) = 90 and
    # ceil(99.27) + 1 = 101, kept to 100
    _close(percentile_interval(list(range(1, 101)), 0.95), 95, 90, 100, abs=0)
    # 1 … 1000: z√47.5 = 13.508, ranks floor(936.49) = 936 and ceil(963.51) + 1 = 965
    values = list(range(1000, 0, -1))  # the order of the samples does not matter
    _close(percentile_interval(values, 0.95), 950, 936, 965, abs=0)
    _close(percentile_interval([5.0], 0.95), 5.0, 5.0, 5.0, abs=0)
    assert percentile_interval([], 0.95) is None
    # shifted by 10: a difference of 10, each standard error 10/2z, half-width √200/2
    diff = percentile_difference(list(range(1, 101)), list(range(11, 111)), 0.95)
    _close(diff, 10, 10 - math.sqrt(200) / 2, 10 + math.sqrt(200) / 2, abs=1e-12)


def test_interval_sign() -> None:
    assert Interval(1.0, 0.5, 1.5).sign() == 1
    assert Interval(-1.0, -1.5, -0.5).sign() == -1
    assert Interval(0.1, -0.2, 0.4).sign() == 0
    assert not Interval(0.1, -0.2, 0.4).excludes_zero()
    assert Interval(-1.0, -1.5, -0.5).excludes_zero()


# ---------------------------------------------------------------- the seeded A/B scenario


@pytest.fixture(scope="module")
def report() -> Report:
    return simulate(load_scenario(AB))


def test_users_are_drawn_from_the_pool(report: Report) -> None:
    users = [a.user for a in report.arrivals]
    assert all(u is not None and len(u) == 4 and u.startswith("u") for u in users)
    distinct = set(users)
    assert len(distinct) <= 1000
    assert len(distinct) > 950  # 4,000 uniform draws from 1,000 miss about 18 of them
    assert {"u000", "u999"} <= distinct


def test_each_user_stays_in_one_arm_and_the_shares_are_even(report: Report) -> None:
    strategies = [run for run in report.runs if run.kind == "strategy"]
    assert [run.name for run in strategies] == ["latency", "cost"]
    for run in strategies:
        [experiment] = run.experiments
        assert (experiment.name, experiment.key, experiment.arms) == (
            "chat",
            "request.user",
            ("cheap", "quality"),
        )
        arms_of: dict[str, set[int]] = defaultdict(set)
        for a in report.arrivals:
            arms_of[str(a.user)].add(run.arm[a.index])
        assert all(len(arms) == 1 for arms in arms_of.values())
        assert -1 not in {arm for arms in arms_of.values() for arm in arms}
        counts = [sum(1 for k in run.arm if k == i) for i in (0, 1)]
        assert sum(counts) == 4000
        assert all(abs(c / 4000 - 0.5) <= 0.03 for c in counts), counts
        # the users split as the requests do, each arm about half of them
        users = [sum(1 for arms in arms_of.values() if arms == {i}) for i in (0, 1)]
        assert all(abs(u / sum(users) - 0.5) <= 0.04 for u in users), users
    # both runs put every user in the same arm: the hash reads the user, not the run
    assert list(strategies[0].arm) == list(strategies[1].arm)


def test_the_arm_figures_are_those_of_the_requests(report: Report) -> None:
    run = next(run for run in report.runs if run.name == "latency")
    [summary] = summarize(run)
    for k, arm in enumerate(summary.arms):
        mine = [i for i in range(len(run.arm)) if run.arm[i] == k]
        calls = [i for i in mine if run.chosen[i] >= 0]
        assert (arm.requests, arm.calls, arm.denials) == (len(mine), len(calls), 0)
        failures = sum(1 for i in calls if not run.ok[i])
        bad = sum(run.bad[i] for i in calls)
        assert (arm.failures, arm.bad_answers, arm.answers) == (
            failures,
            bad,
            len(calls) - failures,
        )
        cost = arm.figures["cost_per_request"]
        assert cost is not None
        assert cost.value == pytest.approx(math.fsum(run.cost[i] for i in calls) / len(calls))
        rate = arm.figures["bad_answer_rate"]
        assert rate is not None and rate.value == pytest.approx(bad / (len(calls) - failures))


def test_quality_costs_more_with_fewer_bad_answers(report: Report) -> None:
    for summary in report.experiments():
        cheap, quality = summary.arms
        assert cheap.bad_answers > 0 and quality.bad_answers == 0
        by = {d.metric: d for d in summary.differences}
        assert all((d.arm, d.against) == ("quality", "cheap") for d in by.values())
        cost, bad, failures = by["cost_per_request"], by["bad_answer_rate"], by["failure_rate"]
        assert cost.interval is not None and cost.interval.low > 0
        assert cost.verdict == "quality dearer"
        assert bad.interval is not None and bad.interval.high < 0
        assert bad.verdict == "quality fewer bad answers"
        # 0.5–1% failures on every model: no difference the run can tell
        assert failures.interval is not None
        assert failures.interval.low < 0 < failures.interval.high
        assert failures.verdict == NO_DIFFERENCE
    latency = {e.run: {d.metric: d.verdict for d in e.differences} for e in report.experiments()}
    # latency: the cheap arm is Flash-Lite (fast), the quality arm Haiku; cost: the cheap arm
    # is GPT-5 nano (slow), the quality arm GPT-5 mini
    assert latency["latency"]["mean_ms"] == "quality slower"
    assert latency["cost"]["mean_ms"] == "quality faster"
    assert latency["cost"]["p95_ms"] == "quality faster at p95"


def test_every_interval_is_well_formed(report: Report) -> None:
    summaries = report.experiments()
    assert len(summaries) == 2
    for summary in summaries:
        for arm in summary.arms:
            for name, found in arm.figures.items():
                assert found is not None, name
                assert found.low <= found.value <= found.high, (arm.arm, name)
                assert found.low < found.high, (arm.arm, name)
            for name in ("failure_rate", "bad_answer_rate"):
                rate = arm.figures[name]
                assert rate is not None and 0 <= rate.low <= rate.high <= 1
        for d in summary.differences:
            assert d.interval is not None
            assert d.interval.low <= d.interval.value <= d.interval.high, d.metric
            # a verdict names a direction exactly when the interval excludes zero
            assert (d.verdict == NO_DIFFERENCE) == (not d.interval.excludes_zero())


def test_json_has_experiments_only_with_a_split(report: Report, tmp_path: Path) -> None:
    data = report.to_dict()
    [first, second] = data["experiments"]
    assert (first["name"], first["experiment"], first["key"]) == ("latency", "chat", "request.user")
    assert [a["arm"] for a in first["arms"]] == ["cheap", "quality"]
    cost = first["arms"][1]["cost_per_request"]
    assert cost["low"] <= cost["value"] <= cost["high"]
    assert [d["metric"] for d in second["differences"]] == [
        "cost_per_request",
        "mean_ms",
        "p95_ms",
        "failure_rate",
        "bad_answer_rate",
    ]
    plain = write(
        tmp_path,
        """\
        seed: 1
        requests: 50
        rate_per_s: 5
        users: 10
        traffic: [{name: chat, input_tokens: 100, output_tokens: 50}]
        strategies: [cost]
        """,
    )
    without = simulate(load_scenario(plain))
    assert "experiments" not in without.to_dict()
    assert without.experiments() == []
    assert all(len(run.arm) == 0 for run in without.runs)


# ---------------------------------------------------------------- users and the split key

# indented as the scenarios it is added to, which `write` dedents
SPLIT = """\
routes: |
  route chat {
      split by request.user {
          50%: route a
          50%: route b
      }
  }
  route a {
      prefer openai
  }
  route b {
      prefer anthropic
  }
""".replace("\n", "\n        ")


def test_a_request_without_a_user_is_split_by_its_id(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        seed: 3
        requests: 400
        rate_per_s: 5
        traffic:
          - {name: pooled, input_tokens: 100, output_tokens: 50, users: 4}
          - {name: anonymous, input_tokens: 100, output_tokens: 50}
        strategies: [cost]
        """
        + SPLIT,
    )
    report = simulate(load_scenario(path))
    run = report.runs[-1]
    pooled = [a for a in report.arrivals if a.template.name == "pooled"]
    anonymous = [a for a in report.arrivals if a.template.name == "anonymous"]
    assert {a.user for a in pooled} <= {"u000", "u001", "u002", "u003"}
    assert all(a.user is None for a in anonymous)
    # four users: each in one arm; the anonymous requests, by id, land in both
    for user in {a.user for a in pooled}:
        assert len({run.arm[a.index] for a in pooled if a.user == user}) == 1
    assert {run.arm[a.index] for a in anonymous} == {0, 1}
    [summary] = summarize(run)
    assert sum(arm.requests for arm in summary.arms) == 400


def test_a_pool_changes_neither_the_templates_nor_the_times(tmp_path: Path) -> None:
    body = """\
        seed: 9
        requests: 300
        rate_per_s: 5
        {users}
        traffic:
          - {{name: chat, weight: 3, input_tokens: 100, output_tokens: 50}}
          - {{name: fixed, input_tokens: 100, output_tokens: 50, user: alice}}
          - {{name: small, input_tokens: 100, output_tokens: 50, users: 2}}
        strategies: [cost]
        """
    with_pool = load_scenario(write(tmp_path, body.format(users="users: 50"), "a.yaml"))
    without = load_scenario(write(tmp_path, body.format(users=""), "b.yaml"))
    a = draw_arrivals(9, 300, 5, with_pool.traffic)
    b = draw_arrivals(9, 300, 5, without.traffic)
    assert [(x.at, x.template.name) for x in a] == [(x.at, x.template.name) for x in b]
    by_template = defaultdict(set)
    for x in a:
        by_template[x.template.name].add(x.user)
    assert len(by_template["chat"]) > 30 and by_template["chat"] <= {f"u{i:03d}" for i in range(50)}
    assert by_template["fixed"] == {None}  # the template's own user is sent as it is
    assert by_template["small"] == {"u000", "u001"}
    assert {x.user for x in b if x.template.name == "chat"} == {None}
    # the same seed, the same users
    again = draw_arrivals(9, 300, 5, with_pool.traffic)
    assert [x.user for x in again] == [x.user for x in a]


def test_a_template_with_its_own_user_sends_it(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        seed: 3
        requests: 40
        rate_per_s: 5
        users: 100
        traffic:
          - {name: alice, input_tokens: 100, output_tokens: 50, user: alice}
        strategies: [cost]
        """
        + SPLIT,
    )
    report = simulate(load_scenario(path))
    run = report.runs[-1]
    # every request is alice's: one arm for all of them
    assert len(set(run.arm)) == 1


def test_users_validation(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        users: 0
        traffic:
          - {name: a, input_tokens: 10, users: true}
          - {name: b, input_tokens: 10, users: "many"}
          - {name: c, input_tokens: 10, users: 1.5}
          - {name: d, input_tokens: 10, users: 2000000}
          - {name: e, input_tokens: 10, user: alice, users: 5}
        strategies: [cost]
        """,
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    source = str(path)
    assert err.value.messages == [
        f"{source}:3:1: field `users`: input should be greater than or equal to 1",
        f"{source}:5:33: field `traffic[0].users`: input should be a valid integer",
        f"{source}:6:33: field `traffic[1].users`: input should be a valid integer",
        f"{source}:7:33: field `traffic[2].users`: input should be a valid integer",
        f"{source}:8:33: field `traffic[3].users`: input should be less than or equal to 1000000",
        f"{source}:9:46: field `traffic[4].users`: the template gives one `user`; remove `user`"
        " to draw users from a pool, or `users` to keep that one",
    ]
    top = write(
        tmp_path,
        """\
        requests: 10
        rate_per_s: 1
        users: [1, 2]
        traffic: [{name: a, input_tokens: 10}]
        strategies: [cost]
        """,
        "top.yaml",
    )
    with pytest.raises(ScenarioError) as err:
        load_scenario(top)
    assert err.value.messages == [f"{top}:3:1: field `users`: input should be a valid integer"]


def test_too_few_samples_gives_no_interval(tmp_path: Path) -> None:
    # one request: one arm has it (no spread: no interval for a mean), the other none
    path = write(
        tmp_path,
        """\
        seed: 3
        requests: 1
        rate_per_s: 5
        users: 10
        traffic: [{name: chat, input_tokens: 100, output_tokens: 50}]
        strategies: [cost]
        """
        + SPLIT,
    )
    [summary] = simulate(load_scenario(path)).experiments()
    assert sorted(arm.requests for arm in summary.arms) == [0, 1]
    for arm in summary.arms:
        assert arm.figures["cost_per_request"] is None
    assert {d.verdict for d in summary.differences} == {TOO_FEW}
    [found] = simulate(load_scenario(path)).to_dict()["experiments"]
    assert [a["cost_per_request"] for a in found["arms"]] == [None, None]
    assert {(d["value"], d["low"], d["high"]) for d in found["differences"]} == {(None, None, None)}


def test_cli_table_and_json(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "simulate",
            str(AB),
            "--strategies",
            "latency",
            "--requests",
            "1000",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    title = lines.index(
        "experiment chat (split by request.user), strategy latency: per arm, with 95%"
        " confidence intervals"
    )
    table = lines[title + 1 :]
    assert table[0].split() == ["METRIC", "CHEAP", "QUALITY", "QUALITY", "−", "CHEAP", "VERDICT"]
    assert [row.split("  ")[0] for row in table[1:]] == [
        "requests",
        "cost/request",
        "mean latency",
        "p95 latency",
        "failure rate",
        "bad-answer rate",
    ]
    assert table[1].endswith("%)")
    assert table[2].endswith("quality dearer")
    assert table[6].endswith("quality fewer bad answers")
