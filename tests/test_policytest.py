"""`policyctl test`: the real command line in subprocesses, on the shipped tests, on
passing, failing and malformed test files (golden text in tests/golden/policytest/), and
coverage figures worked out by hand for a small policy (`cov.policy`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from _golden import update_requested

from engine.diagnostics import PolicyError
from engine.language.loader import load_policy

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "policytest"
CODES = ROOT / "engine" / "language" / "codes"
EXAMPLES = ROOT / "examples" / "policies"
NOW = "2026-11-28T17:46:05Z"


@dataclass
class Run:
    code: int
    out: str
    err: str


def policyctl(*args: str, cwd: Path = ROOT) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    env["POLICYCTL_NOW"] = NOW
    env["XDG_STATE_HOME"] = str(cwd / ".xdg-state") if cwd != ROOT else env["XDG_STATE_HOME"]
    done = subprocess.run(
        [sys.executable, "-m", "engine", "test", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr)


def _count(*files: Path) -> int:
    return sum(len(yaml.safe_load(f.read_text())["tests"]) for f in files)


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if update_requested():
        path.write_text(actual)
    assert actual == path.read_text()


# ---------------------------------------------------------------- the shipped tests


def test_no_argument_runs_the_tests_in_policies() -> None:
    run = policyctl()
    assert run.code == 0, run.out + run.err
    n = _count(ROOT / "policies" / "default.tests.yaml")
    assert run.out.splitlines()[-1] == f"{n} passed, 0 failed"
    assert run.err == ""


def test_outside_a_checkout_the_packaged_set_and_its_tests_run(tmp_path: Path) -> None:
    run = policyctl(cwd=tmp_path)
    assert run.code == 0, run.out + run.err
    n = _count(ROOT / "policies" / "default.tests.yaml")
    assert run.out.splitlines()[-1] == f"{n} passed, 0 failed"
    assert not list(tmp_path.glob("**/*.duckdb"))  # fresh memory state: no file written


def test_every_valid_example_policy_has_passing_tests() -> None:
    valid = []
    for policy in sorted(EXAMPLES.glob("*.policy")):
        try:
            load_policy(policy)
        except PolicyError:
            continue
        valid.append(policy)
    assert len(valid) >= 8
    missing = [p.name for p in valid if not p.with_name(p.stem + ".tests.yaml").is_file()]
    assert missing == []
    run = policyctl("examples/policies")
    assert run.code == 0, run.out + run.err
    n = _count(*sorted(EXAMPLES.glob("*.tests.yaml")))
    assert run.out.splitlines()[-1] == f"{n} passed, 0 failed"


def test_the_shipped_policy_is_fully_covered() -> None:
    run = policyctl("--coverage", "--format", "json")
    assert run.code == 0, run.err
    report = json.loads(run.out)
    (policy,) = report["coverage"]["files"]
    assert policy["file"] == "policies/default.policy"
    assert policy["uncovered_lines"] == []
    assert policy["covered"] == policy["total"] > 10


# ---------------------------------------------------------------- failing and malformed


def test_a_failure_shows_expected_and_actual_side_by_side() -> None:
    run = policyctl("tests/golden/policytest/failing.tests.yaml")
    assert run.code == 1
    assert run.err == ""
    _golden("failing.expected", run.out)
    assert run.out.splitlines()[-1] == "1 passed, 3 failed"


def test_a_failure_in_json_names_the_step_the_request_and_the_decision() -> None:
    run = policyctl("tests/golden/policytest/failing.tests.yaml", "--format", "json")
    assert run.code == 1
    report = json.loads(run.out)
    assert (report["passed"], report["failed"]) == (1, 3)
    last = report["tests"][-1]
    assert (last["name"], last["line"], last["col"]) == ("half a second short of the refill", 22, 5)
    failure = last["failure"]
    assert (failure["step"], failure["steps"], failure["at_ms"]) == (2, 2, 29500.0)
    assert failure["mismatches"] == [
        {
            "field": "allowed",
            "expected": "true",
            "actual": "false",
            "at": "tests/golden/policytest/failing.tests.yaml:27:18",
        }
    ]
    assert failure["decision"]["denied_by"]["retry_after_ms"] == 500


@pytest.mark.parametrize("name", ["malformed", "names", "bad_yaml", "missing_policy"])
def test_a_bad_test_file_is_every_problem_at_its_place_and_exit_2(name: str) -> None:
    run = policyctl(f"tests/golden/policytest/{name}.tests.yaml")
    assert run.code == 2
    assert run.out == ""
    _golden(f"{name}.expected", run.err)


def test_a_bad_policy_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text("route a when request.max_cost <= 2s {\n}\n")
    (tmp_path / "p.tests.yaml").write_text(
        "tests:\n  - name: x\n    request: {prompt: hi}\n    expect: {route: a}\n"
    )
    run = policyctl(".", cwd=tmp_path)
    assert run.code == 2
    assert "p.policy:1:34: error[E0333]" in run.err


def test_a_duplicate_key_is_reported(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text("route a when request.stream {\n}\n")
    (tmp_path / "p.tests.yaml").write_text(
        "tests:\n  - name: x\n    request: {prompt: hi}\n    expect: {route: a, route: b}\n"
    )
    run = policyctl("p.tests.yaml", cwd=tmp_path)
    assert run.code == 2
    assert "p.tests.yaml:4:24: error[E0901]: duplicate key `tests[0].expect.route`" in run.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nowhere"], "nowhere: error[E0905]: no such file or directory"),
        (["empty"], "empty: error[E0905]: no `*.tests.yaml` files in this directory"),
        (["lonely.policy"], "error[E0905]: no test file `lonely.tests.yaml` beside this policy"),
    ],
)
def test_paths_that_give_no_tests(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "lonely.policy").write_text("route a when request.stream {\n}\n")
    run = policyctl(*args, cwd=tmp_path)
    assert run.code == 2
    assert message in run.err


def test_a_policy_path_runs_its_sibling_tests() -> None:
    run = policyctl("examples/policies/limits.policy")
    assert run.code == 0
    n = _count(EXAMPLES / "limits.tests.yaml")
    assert run.out.splitlines()[-1] == f"{n} passed, 0 failed"


# ---------------------------------------------------------------- state and time


def test_each_test_has_fresh_state_and_its_own_clock(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text("limit user 2 per 1m\n")
    steps = (
        "    steps:\n"
        "      - request: {user: bob, prompt: hi}\n"
        "        repeat: 2\n"
        "        expect: {allowed: true}\n"
        "      - expect: {allowed: false, denied_by: user}\n"
        "      - at: 30s\n"
        "        expect: {allowed: true}\n"
    )
    (tmp_path / "p.tests.yaml").write_text(
        "tests:\n" + "".join(f"  - name: run {i}\n{steps}" for i in range(3))
    )
    run = policyctl("p.tests.yaml", cwd=tmp_path)
    assert run.code == 0, run.out
    assert run.out.splitlines()[-1] == "3 passed, 0 failed"


# ---------------------------------------------------------------- coverage

# cov.policy's items, worked out by hand from cov.tests.yaml's three requests:
#   a (vision), b (team red, max_cost $0.005), c (user bob, no route: defaults).
# (line, col, kind, covered, total)
HAND_COVERAGE = [
    (3, 1, "defaults", 1, 1),  # c
    (7, 1, "route", 1, 1),  # a
    (7, 19, "condition", 2, 2),  # requires_vision: true for a, false for b and c
    (9, 5, "require", 1, 1),  # the vision route was taken
    (12, 1, "route", 1, 1),  # b
    (13, 10, "condition", 2, 2),  # the whole `when`: true for b, false for c (a never asks)
    (13, 10, "condition", 2, 2),  # team == "red": true for b, false for c
    (14, 10, "condition", 1, 2),  # (max_cost or not stream): only b gets here: true
    (14, 10, "condition", 1, 2),  # max_cost <= $0.01: true for b
    (14, 39, "condition", 0, 2),  # not stream: `or` stopped at max_cost
    (14, 43, "condition", 0, 2),  # stream: never evaluated
    (19, 1, "limit", 1, 1),  # user: c has a user
    (20, 1, "limit", 0, 1),  # team: only b has a team, and it is not free
    (20, 51, "condition", 1, 2),  # tier == "free": false for b, never true
]


def test_coverage_figures_match_the_hand_count() -> None:
    run = policyctl("tests/golden/policytest/cov.tests.yaml", "--coverage", "--format", "json")
    assert run.code == 0, run.err
    coverage = json.loads(run.out)["coverage"]
    (policy,) = coverage["files"]
    got = [(i["line"], i["col"], i["kind"], i["covered"], i["total"]) for i in policy["items"]]
    assert got == HAND_COVERAGE
    covered = sum(c for *_, c, _ in HAND_COVERAGE)
    total = sum(t for *_, t in HAND_COVERAGE)
    assert (policy["covered"], policy["total"]) == (covered, total) == (14, 22)
    assert policy["percent"] == round(100 * 14 / 22, 1)
    assert policy["uncovered_lines"] == [14, 20]
    assert (coverage["covered"], coverage["total"]) == (14, 22)


def test_coverage_text() -> None:
    run = policyctl("tests/golden/policytest/cov.tests.yaml", "--coverage")
    assert run.code == 0
    _golden("cov.expected", run.out)


def test_coverage_changes_no_decision() -> None:
    plain = policyctl("tests/golden/policytest/failing.tests.yaml", "--format", "json")
    traced = policyctl(
        "tests/golden/policytest/failing.tests.yaml", "--format", "json", "--coverage"
    )
    assert json.loads(plain.out)["tests"] == json.loads(traced.out)["tests"]


# ---------------------------------------------------------------- codes


@pytest.mark.parametrize("code", [f"E090{i}" for i in range(6)])
def test_every_test_file_code_is_explained(code: str) -> None:
    text = (CODES / f"{code}.md").read_text()
    assert text.startswith(f"# {code}: ")
    assert "## Wrong" in text and "## Right" in text
    used = "".join(p.read_text() for p in (ROOT / "engine" / "policytest").glob("*.py"))
    assert f'"{code}"' in used


def test_a_bad_request_is_reported_at_its_field(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text("route a when request.stream {\n}\n")
    (tmp_path / "p.tests.yaml").write_text(
        "tests:\n"
        "  - name: negative tokens\n"
        "    request: {prompt: hi, max_tokens: -5}\n"
        "    expect: {route: a}\n"
        "  - name: a native body read as gemini\n"
        "    format: gemini\n"
        "    request: {prompt: hi}\n"
        "    expect: {route: a}\n"
    )
    run = policyctl("p.tests.yaml", cwd=tmp_path)
    assert run.code == 2
    assert "p.tests.yaml:3:39: error[E0902]: invalid request: field `max_tokens`" in run.err
    assert "p.tests.yaml:7:5: error[E0902]: invalid request: field `contents`" in run.err
    assert run.err.rstrip().endswith("2 errors occurred")


def test_verbose_lists_the_passing_tests() -> None:
    run = policyctl("-v", "examples/policies/weights.policy")
    assert run.code == 0
    names = [
        t["name"] for t in yaml.safe_load((EXAMPLES / "weights.tests.yaml").read_text())["tests"]
    ]
    passed = [line.split(": ", 1)[1] for line in run.out.splitlines() if line.startswith("PASS ")]
    assert passed == names


def test_a_policy_saved_with_a_byte_order_mark_is_tested_with_coverage(tmp_path: Path) -> None:
    """Windows editors may start a UTF-8 file with a byte order mark: the policy loads (it
    was `unexpected character '\\ufeff'`) and coverage reads the same text."""
    policy = tmp_path / "bom.policy"
    policy.write_bytes(b"\xef\xbb\xbfroute a when request.stream {\n    strategy cost\n}\n")
    (tmp_path / "bom.tests.yaml").write_text(
        "tests:\n  - name: a stream\n    request: {stream: true}\n    expect: {route: a}\n"
    )
    run = policyctl("--coverage", str(policy), cwd=tmp_path)
    assert run.code == 0, run.err
    assert run.out.endswith("1 passed, 0 failed\n")
    assert "1:14  condition  `request.stream`  never false" in run.out


def test_a_test_file_that_is_not_utf8_says_where(tmp_path: Path) -> None:
    (tmp_path / "x.policy").write_text("route a when request.stream {\n    strategy cost\n}\n")
    (tmp_path / "x.tests.yaml").write_bytes(b"tests:\n  - name: caf\xe9\n")
    run = policyctl(str(tmp_path / "x.policy"), cwd=tmp_path)
    assert run.code == 2
    assert f"{tmp_path / 'x.tests.yaml'}:2:14: error[E0900]: not UTF-8 text (byte 20)" in run.err
    assert "2 |   - name: caf\ufffd\n  |              ^\n" in run.err
