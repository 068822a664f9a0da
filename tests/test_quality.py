"""Quality in routing: the `quality` factor of `weighted(…)`, the `min_quality` floor of a
route (or the defaults) and of a request, models without a score, and the warnings `check`
gives when a policy reads quality over a catalog that has none (W0509) or ranks unscored
models by it (W0512).

The figures are worked out by hand on a three-model catalog written to `tmp_path`:

| model | input/output $ per 1M | p95 | quality |
|---|---|---|---|
| acme/fast-cheap | 0.1 / 0.4 | 800 ms | 0.6 |
| acme/slow-good | 3 / 15 | 3000 ms | 0.95 |
| other/unscored | 0.2 / 0.8 | 900 ms | none |

A request of 1,000 input and 1,000 output tokens costs $0.0005, $0.018 and $0.001.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine import PolicyEngine
from engine.routing.request import RequestError, env_of, format_of

ROOT = Path(__file__).resolve().parent.parent
DESIGN_CATALOG = ROOT / "examples" / "policies" / "models.yaml"

CATALOG = """\
models:
  - id: fast-cheap
    provider: acme
    context_window: 128000
    max_tokens: 4096
    supports: [streaming, tools]
    pricing: {input: 0.1, output: 0.4}
    latency_prior_ms: {p50: 300, p95: 800}
    quality: {overall: 0.6, source: "test scores"}
  - id: slow-good
    provider: acme
    context_window: 128000
    max_tokens: 4096
    supports: [streaming, tools]
    pricing: {input: 3, output: 15}
    latency_prior_ms: {p50: 1500, p95: 3000}
    quality: {overall: 0.95, source: "test scores"}
  - id: unscored
    provider: other
    context_window: 128000
    max_tokens: 4096
    supports: [streaming]
    pricing: {input: 0.2, output: 0.8}
    latency_prior_ms: {p50: 400, p95: 900}
"""
REQUEST = {"id": "q-1", "input_tokens": 1000, "max_tokens": 1000}


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


def engine(catalog: Path, body: str) -> PolicyEngine:
    return PolicyEngine.from_text(f'catalog "{catalog.as_posix()}"\n{body}', "<quality>")


def decide(catalog: Path, body: str, explain: bool = False, **request: Any) -> Any:
    with engine(catalog, body) as e:
        return e.evaluate({**REQUEST, **request}, explain=explain, dry_run=True)


def drops(decision: Any) -> dict[str, str]:
    return {
        f"{s['provider']}/{s['model']}": s["because"] for s in decision.trace if s["step"] == "drop"
    }


# ---------------------------------------------------------------- the quality factor


def test_without_quality_the_weighted_choice_is_the_fast_cheap_model(catalog: Path) -> None:
    # fast-cheap: 0.6 × (1 − 800/3000) + 0.4 × (1 − 0.0005/0.018) = 0.44 + 0.3889 = 0.8289
    # unscored: 0.6 × 0.7 + 0.4 × (1 − 0.001/0.018) = 0.42 + 0.3778 = 0.7978; slow-good: 0
    d = decide(catalog, "defaults { strategy weighted(latency: 60%, cost: 40%) }")
    assert (d.provider, d.model) == ("acme", "fast-cheap")
    assert d.reason == "Best weighted score: 0.83 (latency 0.73, cost 0.97)"
    assert [(a.model, a.score) for a in d.alternatives] == [("unscored", 0.7978), ("slow-good", 0)]


def test_a_heavy_quality_factor_turns_the_choice_to_the_best_model(catalog: Path) -> None:
    # slow-good: 0 + 0 + 0.8 × 0.95 = 0.76
    # fast-cheap: 0.1 × 0.7333 + 0.1 × 0.9722 + 0.8 × 0.6 = 0.6506
    # unscored: 0.1 × 0.7 + 0.1 × 0.9444 + 0.8 × 0 (no score) = 0.1644
    d = decide(catalog, "defaults { strategy weighted(latency: 10%, cost: 10%, quality: 80%) }")
    assert (d.provider, d.model) == ("acme", "slow-good")
    assert d.reason == "Best weighted score: 0.76 (latency 0.00, cost 0.00, quality 0.95)"
    assert [(a.model, a.score) for a in d.alternatives] == [
        ("fast-cheap", 0.6506),
        ("unscored", 0.1644),
    ]


def test_a_model_without_a_score_scores_0_on_quality(catalog: Path) -> None:
    """Quality alone: the scores as they are, the unscored model last with 0."""
    d = decide(catalog, "defaults { strategy weighted(quality: 100%) }", explain=True)
    (step,) = [s for s in d.trace if s["step"] == "choose"]
    assert [(r["model"], r["score"]) for r in step["ranking"]] == [
        ("slow-good", 0.95),
        ("fast-cheap", 0.6),
        ("unscored", 0.0),
    ]
    assert d.reason == "Best weighted score: 0.95 (quality 0.95)"


def test_the_quality_factor_decides_alike_on_the_shortcut_and_with_explain(
    catalog: Path,
) -> None:
    body = "defaults { strategy weighted(latency: 40%, cost: 30%, quality: 30%) }"
    for request in ({}, {"min_quality": 0.5}, {"max_cost": 0.002}):
        fast = decide(catalog, body, **request).to_dict()
        traced = decide(catalog, body, explain=True, **request).to_dict()
        traced.pop("trace")
        assert fast == traced


# ---------------------------------------------------------------- floors


def test_a_route_floor_drops_the_models_under_it_and_those_without_a_score(
    catalog: Path,
) -> None:
    body = """
defaults { strategy cost }
route premium when request.metadata.tier == "pro" {
    min_quality 0.9
}
"""
    d = decide(catalog, body, explain=True, metadata={"tier": "pro"})
    assert (d.route, d.model) == ("premium", "slow-good")
    assert drops(d) == {
        "acme/fast-cheap": "quality 0.6 is under route `premium`'s min_quality 0.9",
        "other/unscored": "has no quality score (route `premium`'s min_quality 0.9)",
    }
    assert d.fallbacks == []
    d = decide(catalog, body, explain=True, metadata={"tier": "free"})  # the defaults: no floor
    assert (d.route, d.model) == ("default", "fast-cheap")


def test_a_floor_in_the_defaults_binds_every_route_that_does_not_set_its_own(
    catalog: Path,
) -> None:
    body = """
defaults {
    strategy cost
    min_quality 0.5
}
route loose when request.metadata.tier == "free" {
    min_quality 0
}
route other when request.metadata.tier == "pro" {
    strategy latency
}
"""
    assert decide(catalog, body, metadata={"tier": "pro"}).model == "fast-cheap"
    assert decide(catalog, body).model == "fast-cheap"
    d = decide(catalog, body, explain=True)
    assert drops(d) == {"other/unscored": "has no quality score (the defaults' min_quality 0.5)"}
    # `min_quality 0` still drops the model without a score: null is below every floor
    d = decide(catalog, body, explain=True, metadata={"tier": "free"})
    assert drops(d) == {"other/unscored": "has no quality score (route `loose`'s min_quality 0)"}


def test_a_request_floor_drops_models_as_a_route_floor_does(catalog: Path) -> None:
    d = decide(catalog, "defaults { strategy cost }", explain=True, min_quality=0.7)
    assert d.model == "slow-good"
    assert drops(d) == {
        "acme/fast-cheap": "quality 0.6 is under the request's min_quality 0.7",
        "other/unscored": "has no quality score (the request's min_quality 0.7)",
    }
    # a score equal to the floor reaches it
    assert decide(catalog, "defaults { strategy cost }", min_quality=0.6).model == "fast-cheap"
    assert decide(catalog, "defaults { strategy cost }", min_quality=0).model == "fast-cheap"


@pytest.mark.parametrize(
    ("route_floor", "request_floor", "eligible"),
    [
        ("0.5", 0.7, ["slow-good"]),  # the request's is higher
        ("0.7", 0.3, ["slow-good"]),  # the route's is higher
        ("0.5", 0.5, ["fast-cheap", "slow-good"]),
        ("0.5", None, ["fast-cheap", "slow-good"]),
    ],
)
def test_with_a_route_floor_and_a_request_floor_the_higher_applies(
    catalog: Path, route_floor: str, request_floor: float | None, eligible: list[str]
) -> None:
    body = f"route all {{\n    strategy cost\n    min_quality {route_floor}\n}}"
    extra = {} if request_floor is None else {"min_quality": request_floor}
    d = decide(catalog, body, explain=True, **extra)
    (step,) = [s for s in d.trace if s["step"] == "choose"]
    assert sorted(r["model"] for r in step["ranking"]) == eligible


def test_a_floor_no_model_reaches_denies_with_each_reason(catalog: Path) -> None:
    d = decide(catalog, "defaults { strategy cost }", min_quality=1)
    assert not d.allowed
    assert d.reason == "No eligible model: all 3 candidates of route `default` were dropped"
    reasons = {f"{c.provider}/{c.model}": c.dropped_because for c in d.denied_by.candidates}
    assert reasons == {
        "acme/fast-cheap": "quality 0.6 is under the request's min_quality 1",
        "acme/slow-good": "quality 0.95 is under the request's min_quality 1",
        "other/unscored": "has no quality score (the request's min_quality 1)",
    }


def test_a_policy_reads_the_request_floor(catalog: Path) -> None:
    body = """
route demanding when request.min_quality >= 0.9 {
    strategy latency
}
route rest {
    strategy cost
}
"""
    assert decide(catalog, body, min_quality=0.95).route == "demanding"
    assert decide(catalog, body, min_quality=0.5).route == "rest"
    assert decide(catalog, body).route == "rest"  # null compares false


# ---------------------------------------------------------------- the request field


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1.5, "field `min_quality`: input should be less than or equal to 1"),
        (-0.1, "field `min_quality`: input should be greater than or equal to 0"),
        ("0.8", "field `min_quality`: input should be a valid number"),
        (True, "field `min_quality`: input should be a valid number"),
    ],
)
def test_the_request_floor_is_a_number_from_0_to_1(value: object, message: str) -> None:
    with pytest.raises(RequestError) as err:
        env_of({"id": "x", "min_quality": value})
    assert str(err.value) == message


def test_min_quality_makes_a_body_native_and_a_wire_body_has_none() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    assert format_of({**body, "min_quality": 0.8}) == "native"
    assert env_of({**body, "min_quality": 0.8})["min_quality"] == 0.8
    assert env_of(body)["min_quality"] is None  # openai-chat: no such field
    assert env_of({"id": "a", "min_quality": 1})["min_quality"] == 1.0


# ---------------------------------------------------------------- the command line


def policyctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_warns_when_the_catalog_has_no_quality_scores(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_bytes(DESIGN_CATALOG.read_bytes())
    (tmp_path / "quality.policy").write_text(
        'catalog "models.yaml"\n\nroute careful {\n    require model.quality >= 0.8\n'
        "    min_quality 0.5\n}\n",
        encoding="utf-8",
    )
    out = policyctl("check", "quality.policy", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == ""
    assert out.stderr.splitlines()[6] == (
        "quality.policy:4:13: warning[W0509]: the catalog has no quality scores;"
        " `model.quality` is null for every model"
    )
    assert (
        "= help: every comparison with it is false but `== null`"
        " (and 1 more use of quality): give models `quality: {overall: …, source: …}`"
        " in the catalog (docs/catalog.md)"
    ) in out.stderr
    assert out.stderr.count("W0509") == 1
    assert "warning[W0504]: no catalog model can serve route `careful`" in out.stderr
    strict = policyctl("check", "--strict", "quality.policy", cwd=tmp_path)
    assert strict.returncode == 2 and "error[W0509]" in strict.stderr


def test_check_is_quiet_about_quality_over_a_catalog_with_scores(
    tmp_path: Path, catalog: Path
) -> None:
    (tmp_path / "quality.policy").write_text(
        'catalog "models.yaml"\n\ndefaults {\n    strategy weighted(latency: 50%, quality: 50%)\n'
        "    min_quality 0.5\n}\n",
        encoding="utf-8",
    )
    out = policyctl("check", "--strict", "quality.policy", cwd=tmp_path)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_check_warns_of_a_quality_factor_over_a_model_without_a_score(
    tmp_path: Path, catalog: Path
) -> None:
    (tmp_path / "quality.policy").write_text(
        'catalog "models.yaml"\n\ndefaults {\n'
        "    strategy weighted(latency: 50%, quality: 50%)\n}\n",
        encoding="utf-8",
    )
    out = policyctl("check", "quality.policy", cwd=tmp_path)
    assert out.returncode == 0
    assert out.stderr.splitlines()[0] == (
        "quality.policy:4:37: warning[W0512]: the `quality` factor ranks models without a"
        " quality score"
    )
    assert (
        "= help: `other/unscored` (1 of the 3 models of the defaults) scores 0 on it: give it"
        " a score in the catalog, or exclude it"
    ) in out.stderr


def test_eval_explains_a_model_excluded_for_quality(tmp_path: Path, catalog: Path) -> None:
    (tmp_path / "quality.policy").write_text(
        'catalog "models.yaml"\n\ndefaults {\n    strategy cost\n    min_quality 0.5\n}\n',
        encoding="utf-8",
    )
    (tmp_path / "request.json").write_text('{"id": "r", "prompt": "hi", "min_quality": 0.7}')
    out = policyctl(
        "eval", "--dry-run", "--explain", "--format", "table", "--policy", "quality.policy",
        "request.json", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("trace           drop")]
    assert lines == [
        "trace           drop other/unscored: has no quality score (the defaults' min_quality 0.5)",
        "trace           drop acme/fast-cheap: quality 0.6 is under the request's min_quality 0.7",
    ]


def test_simulate_compares_a_weighted_strategy_with_a_quality_factor(tmp_path: Path) -> None:
    strategy = "weighted(latency: 40%, cost: 30%, quality: 30%)"
    out = policyctl(
        "simulate", str(ROOT / "examples" / "simulations" / "design.yaml"), "--strategies",
        f"{strategy},weighted(latency: 60%, cost: 40%)", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {
        line.split("  ")[0]: line[len(line.split("  ")[0]) :].split()
        for line in out.stdout.splitlines()
    }
    assert strategy in rows
    # the design's catalog has no quality scores: every model scores 0 on quality, and the
    # ranking is latency 40 : cost 30, i.e. the same as latency 60 : cost 40
    assert rows[strategy] == rows["weighted(latency: 60%, cost: 40%)"]
