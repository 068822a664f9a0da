"""The static analysis of `policyctl check` (engine.language.analysis), end to end.

Every counterexample a warning shows is run through the real `policyctl eval` against the
same policy, and must do what the warning says: a shadowed route's request goes to the
earlier route, although it matches the shadowed one (shown by evaluating it against that
route alone); an unservable route denies it; and so on. The golden files
(tests/golden/check/w05xx_*) pin the wording; this file pins the meaning.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.diagnostics import PolicyError
from engine.language.conditions import admits, witness
from engine.language.domain import INF, Interval, NumSet, subtract
from engine.language.loader import compile_sources, load_policy
from engine.language.parser import parse

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "check"


def policyctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's engine, whatever the working directory
    env["XDG_STATE_HOME"] = str(cwd / "xdg-state")
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


def findings(tmp_path: Path, case: str) -> list[dict[str, Any]]:
    """`check --format json` on a golden case, copied into `tmp_path`."""
    (tmp_path / f"{case}.policy").write_text((GOLDEN / f"{case}.policy").read_text())
    done = policyctl(tmp_path, "check", "--format", "json", f"{case}.policy")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def decide(tmp_path: Path, policy: str, request: dict[str, Any]) -> dict[str, Any]:
    (tmp_path / "request.json").write_text(json.dumps(request))
    done = policyctl(tmp_path, "eval", "--policy", policy, "request.json")
    assert done.returncode in (0, 3), done.stderr
    return json.loads(done.stdout)


def block(policy: Path, line: int) -> str:
    """The route statement that starts on `line` (up to its closing brace)."""
    lines = policy.read_text().splitlines()[line - 1 :]
    return "\n".join(lines[: lines.index("}") + 1]) + "\n"


# ---------------------------------------------------------------- counterexamples


@pytest.mark.parametrize(
    ("case", "taker"),
    [
        ("w0500_shadowed_by_union", "short"),
        ("w0500_shadowed_by_regions", "elsewhere"),
        ("w0500_always_true", "all"),
        ("w0500_unreachable_route", "everything"),
    ],
)
def test_a_shadowed_routes_counterexample_goes_to_the_earlier_route(
    tmp_path: Path, case: str, taker: str
) -> None:
    (found,) = findings(tmp_path, case)
    assert found["code"] == "W0500"
    request = found["counterexample"]
    assert json.dumps(request) in found["help"]
    shadowed = found["message"].split("`")[1]
    assert decide(tmp_path, f"{case}.policy", request)["route"] == taker
    # the same request against the shadowed route alone: it matches its condition
    (tmp_path / "alone.policy").write_text(block(tmp_path / f"{case}.policy", found["line"]))
    assert decide(tmp_path, "alone.policy", request)["route"] == shadowed


def test_an_unservable_routes_counterexample_is_denied_by_it(tmp_path: Path) -> None:
    (found,) = findings(tmp_path, "w0504_no_model")
    assert found["code"] == "W0504"
    decision = decide(tmp_path, "w0504_no_model.policy", found["counterexample"])
    assert (decision["route"], decision["allowed"]) == ("eu", False)
    assert decision["denied_by"]["reason"] == "no_eligible_model"


def test_a_capability_gaps_counterexample_is_denied_though_a_later_route_serves_it(
    tmp_path: Path,
) -> None:
    (found,) = findings(tmp_path, "w0505_capability_gap")
    assert found["code"] == "W0505"
    request = found["counterexample"]
    assert request["requires_vision"] is True
    decision = decide(tmp_path, "w0505_capability_gap.policy", request)
    assert (decision["route"], decision["allowed"]) == ("audio", False)
    later = block(tmp_path / "w0505_capability_gap.policy", 6)
    (tmp_path / "later.policy").write_text(later)
    decision = decide(tmp_path, "later.policy", request)
    assert (decision["route"], decision["allowed"]) == ("vision", True)


def test_an_excluded_fallbacks_counterexample_never_falls_back_to_it(tmp_path: Path) -> None:
    (found,) = findings(tmp_path, "w0508_excluded_fallback")
    assert found["code"] == "W0508"
    decision = decide(tmp_path, "w0508_excluded_fallback.policy", found["counterexample"])
    assert decision["route"] == "private"
    chain = [decision["provider"], *(f["provider"] for f in decision["fallbacks"])]
    assert "openai" not in chain
    assert "anthropic" in chain


@pytest.mark.parametrize(
    "case",
    ["w0503_contradiction", "w0506_ip_key", "w0506_never_binds", "w0507_default_replaced"],
)
def test_findings_without_a_request_carry_no_counterexample(tmp_path: Path, case: str) -> None:
    found = findings(tmp_path, case)
    assert found and all("counterexample" not in f for f in found)
    assert {f["code"] for f in found} == {case[:5].upper()}


def test_strict_turns_warnings_into_errors(tmp_path: Path) -> None:
    (tmp_path / "w.policy").write_text((GOLDEN / "w0500_always_true.policy").read_text())
    plain = policyctl(tmp_path, "check", "w.policy")
    strict = policyctl(tmp_path, "check", "--strict", "w.policy")
    as_json = policyctl(tmp_path, "check", "--strict", "--format", "json", "w.policy")
    assert plain.returncode == 0 and "warning[W0500]" in plain.stderr
    assert strict.returncode == 2 and "error[W0500]" in strict.stderr
    assert as_json.returncode == 2
    (found,) = json.loads(as_json.stdout)
    assert (found["severity"], found["code"]) == ("error", "W0500")
    clean = policyctl(tmp_path, "check", "--strict", str(ROOT / "policies"))
    assert (clean.returncode, clean.stderr) == (0, "")


# ---------------------------------------------------------------- shipped policies


def _shipped() -> list[Path]:
    found = [ROOT / "policies"]
    for path in sorted((ROOT / "examples" / "policies").glob("*.policy")):
        try:
            load_policy(path)
        except PolicyError:
            continue  # the examples of errors
        found.append(path)
    return found


@pytest.mark.parametrize("path", _shipped(), ids=lambda p: p.name)
def test_shipped_policies_are_warning_free(path: Path) -> None:
    codes = [d.code for d in load_policy(path).warnings]
    if path.name == "lint.policy":  # the deliberately warning example
        assert codes == ["W0501", "W0500"]
    else:
        assert codes == []


# ---------------------------------------------------------------- soundness


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ('request.region contains "east"', 'request.region == "us-east"'),  # substring
        ("request.metadata.score > 10", "request.metadata.score > 20"),  # metadata order
        ('request.ip == "10.0.0.1"', 'request.ip == "10.0.0.1"'),  # ip: not modelled
        ("request.max_tokens < request.input_tokens", "request.max_tokens < 5"),  # two fields
        ("request.max_tokens > 1000", "request.max_tokens >= 1000"),  # 1000 is left
        ("request.max_cost < $0.01", "request.max_cost <= $0.01"),  # $0.01 is left
        ('request.region != "eu"', 'request.region == null or request.region == "us"'),
        ("request.stream", "not request.stream or request.stream"),
    ],
)
def test_what_the_domain_cannot_decide_never_shadows(earlier: str, later: str) -> None:
    text = f"route a when {earlier} {{\n}}\nroute b when {later} {{\n}}\n"
    loaded = compile_sources([("t.policy", text)])
    assert [d.code for d in loaded.warnings] == []


@pytest.mark.parametrize(
    ("earlier", "later"),
    [
        ("request.max_tokens >= 1000", "request.max_tokens > 999"),  # counts are whole
        ('request.region in ["eu", "us"]', 'request.region == "us" and request.stream'),
        ('"x" in request.tags or request.stream', 'request.tags contains "x"'),
        ("request.max_latency <= 2s", "request.max_latency_ms < 1s"),  # one field, two names
        ("request.max_cost != null", "request.max_cost >= $0"),
        ("request.min_quality >= 0.5", "request.min_quality > 0.7"),
        ("request.min_quality <= 1", "request.min_quality >= 0.3"),  # a floor is 0 to 1
    ],
)
def test_what_the_domain_decides_does_shadow(earlier: str, later: str) -> None:
    text = f"route a when {earlier} {{\n}}\nroute b when {later} {{\n}}\n"
    loaded = compile_sources([("t.policy", text)])
    assert [(d.code, d.span.text()) for d in loaded.warnings if d.span] == [("W0500", "b")]


def test_subtracting_intervals_leaves_the_gap() -> None:
    counts = NumSet((Interval(0, INF, False, True),), False, True)
    below = {"n": NumSet((Interval(-INF, 10, True, True),), False, True)}  # n < 10
    above = {"n": NumSet((Interval(10, INF, True, True),), False, True)}  # n > 10
    (left,) = subtract([{"n": counts}], [below, above], {"n": counts}, 100)
    assert left["n"].member() == (True, 10.0)


def test_a_witness_satisfies_its_condition() -> None:
    expr = (
        parse(
            'route r when request.region != "eu" and request.max_tokens >= 4k'
            ' and request.tags contains "beta" and not request.stream {\n}\n',
            "t.policy",
        )
        .statements[0]
        .when
    )
    (box,) = admits(expr, over=False)
    found = witness(box)
    assert found is not None
    assert found.request == {"max_tokens": 4000, "region": "other", "tags": ["beta"]}


# ---------------------------------------------------------------- capability names


@pytest.mark.parametrize(
    "require",
    [
        'model.supports contains "vison"',
        '"vison" in model.supports',
        '"vison" not in model.supports',
        'not (model.supports contains "vison")',
        'model.supports == ["vision", "vison"]',
        'request.stream and model.supports contains "vison"',
    ],
)
def test_every_place_a_capability_is_named_is_checked(require: str) -> None:
    text = f"route r when request.requires_vision {{\n    require {require}\n}}\n"
    with pytest.raises(PolicyError) as info:
        compile_sources([("t.policy", text)])
    (found,) = info.value.diagnostics
    assert (found.code, found.span.text(), found.help) == (
        "E0343",
        '"vison"',
        "did you mean `vision`?",
    )


def test_many_overlapping_routes_stay_within_the_budget_and_claim_nothing_false() -> None:
    """300 routes over four ranges: the analysis runs out of budget (it would need far more
    boxes), then says nothing more about shadowing; the one contradiction it finds is real
    (`request.max_cost < $0` with costs from $0, `request.input_tokens < 0` with counts from
    0: two tests their ranges decide, W0515, which W0503 does not repeat for the condition
    they are in)."""
    text = "".join(
        f"route r{i} when request.max_tokens > {i} and request.max_cost < ${i / 1000}"
        f" and request.input_tokens < {i * 3} and request.images > {i % 7} {{\n}}\n"
        for i in range(300)
    )
    loaded = compile_sources([("t.policy", text)])
    assert [(d.code, d.span.line) for d in loaded.warnings] == [("W0515", 1), ("W0515", 1)]


# ---------------------------------------------------------------- W0515 and E0344

# a numeric field: its range (low, high, integer, nullable), and tests just outside it
RANGES = {
    "request.complexity": ((0.0, 1.0, False, False), ["< 0", "> 1"]),
    "request.text.turns": ((0, None, True, False), ["< 0"]),
    "request.min_quality": ((0.0, 1.0, False, True), ["> 1"]),
    "request.max_tokens": ((1, None, True, True), ["< 1"]),
}
LITERALS = [0, 0.5, 1, 2, 50]


def _holds(value: float | None, op: str, literal: float) -> bool:
    """The evaluator's rule: a missing field compares false."""
    if value is None:
        return False
    return {
        "<": value < literal,
        "<=": value <= literal,
        ">": value > literal,
        ">=": value >= literal,
        "==": value == literal,
        "!=": value != literal,
    }[op]


def _samples(field: str) -> list[float | None]:
    """Values the field can take where a test against LITERALS changes its answer: the
    range's ends, each literal inside it and its neighbours, far beyond, null if it can be
    missing (a test's answer only changes at its literal)."""
    (low, high, integer, nullable), _ = RANGES[field]
    step = 1 if integer else 0.001
    near = [v + d for v in (*LITERALS, low) for d in (-step, 0, step)]
    found: list[float | None] = [
        v
        for v in sorted({*near, 10**6, *([] if high is None else [high])})
        if v >= low and (high is None or v <= high) and (not integer or float(v).is_integer())
    ]
    return [*found, None] if nullable else found


@pytest.mark.parametrize("field", sorted(RANGES))
@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!=", "flipped >"])
@pytest.mark.parametrize("literal", LITERALS)
def test_a_range_verdict_agrees_with_the_values_the_field_takes(
    field: str, op: str, literal: float
) -> None:
    """W0515 says "never true" exactly when no value the field takes passes the test, and
    "always true" exactly when every one does."""
    flipped = op.startswith("flipped")
    op = op.removeprefix("flipped ")
    test = f"{literal} {op} {field}" if flipped else f"{field} {op} {literal}"
    loaded = compile_sources([("t.policy", f"route r when {test} {{\n}}\nroute rest {{\n}}\n")])
    verdicts = [d.message for d in loaded.warnings if d.code == "W0515"]
    reverse = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}
    passes = [_holds(v, reverse[op] if flipped else op, literal) for v in _samples(field)]
    if not any(passes):
        assert len(verdicts) == 1 and verdicts[0].startswith(f"`{test}` is never true: ")
    elif all(passes):
        assert len(verdicts) == 1 and verdicts[0].startswith(f"`{test}` is always true: ")
    else:
        assert verdicts == []


@pytest.mark.parametrize("field", sorted(RANGES))
def test_a_field_never_leaves_the_range_w0515_gives_it(field: str) -> None:
    """The ranges are the engine's: a test just outside one is never true, on the example
    requests and on bodies made to push each derived field to its ends (every complexity
    term at weight 1)."""
    from engine.routing.evaluator import evaluate
    from engine.routing.request import env_of

    bodies = [
        json.loads(p.read_text()) for p in sorted((ROOT / "examples/requests").glob("*.json"))
    ]
    heavy = "```python\nprint(1)\n```\nprove that x^2 = 4 step by step " + "word " * 3000
    bodies += [
        {"messages": []},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": heavy}] * 30},
    ]
    for outside in RANGES[field][1]:
        text = (
            "defaults {\n    complexity(code: 1, math: 1, multi_step: 1, reasoning: 1,"
            " tool_results: 1, length: 1, turns: 1)\n}\n"
            f"route r when {field} {outside} {{\n}}\nroute rest {{\n}}\n"
        )
        loaded = compile_sources([("t.policy", text)])
        assert [d.code for d in loaded.warnings] == ["W0515"]
        for body in bodies:
            assert evaluate(loaded.program, env_of(body)).route == "rest", (field, body)


@pytest.mark.parametrize(
    "condition",
    [
        'request.text.script == "cyrilic"',
        '"cyrilic" == request.text.script',
        'request.text.script != "cyrilic"',
        'request.text.script in ["latin", "cyrilic"]',
        'request.text.script not in ["cyrilic"]',
        'not (request.text.script == "cyrilic") and request.stream',
    ],
)
def test_every_place_a_script_is_named_is_checked(condition: str) -> None:
    with pytest.raises(PolicyError) as info:
        compile_sources([("t.policy", f"route r when {condition} {{\n}}\n")])
    (found,) = info.value.diagnostics
    assert (found.code, found.span.text(), found.help) == (
        "E0344",
        '"cyrilic"',
        "did you mean `cyrillic`?",
    )


def test_a_substring_of_a_closed_field_is_not_a_value_to_check() -> None:
    """`"openai" in request.format` is true for two formats: a substring is not one of the
    values, and is not refused."""
    text = (
        'route r when "openai" in request.format or request.format contains "chat"'
        ' or request.text.script contains "l" {\n}\n'
    )
    loaded = compile_sources([("t.policy", text)])
    assert [d.code for d in loaded.warnings] == []


def test_every_format_and_script_the_engine_gives_is_accepted() -> None:
    """The closed sets are the engine's own: every wire format and script compiles, and a
    request of each format reads as that format."""
    from engine.wire.features import NO_SCRIPT, SCRIPTS
    from engine.wire.record import FORMATS

    tests = [f'request.format == "{f}"' for f in FORMATS]
    tests += [f'request.text.script == "{s}"' for s in (*SCRIPTS, NO_SCRIPT)]
    loaded = compile_sources([("t.policy", f"route r when {' or '.join(tests)} {{\n}}\n")])
    assert [d.code for d in loaded.warnings if d.code.startswith("E")] == []
