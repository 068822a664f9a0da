"""The real `policyctl` command line, driven in subprocesses (`python -m engine …`).

Every run happens in a temporary working directory (so `./policies` of the checkout is not
picked up and the packaged default set is used) with no `POLICYCTL_*` variables and
`$XDG_STATE_HOME` pointing into the temporary directory. Expectations are derived from
`policies/default.policy` and `policies/models.yaml`, not copied from the output.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import engine
from engine import PolicyEngine
from engine.cli import build_parser
from engine.routing.decision import DecisionSchema
from engine.routing.request import Request

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "requests"
CATALOG = ROOT / "examples" / "policies" / "models.yaml"  # the design's, for custom policies
PACKAGED_CATALOG = ROOT / "policies" / "models.json"
EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".json", ".jsonl"))
USAGE = "usage: policyctl [-h] [--version] COMMAND ...\n"


def _prefer_lists(policy: Path) -> dict[str, list[tuple[str, str]]]:
    """Each route's `prefer provider/model` lines, read from the policy text with a regex
    (not with the engine's parser, which is under test)."""
    routes: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in policy.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if route := re.fullmatch(r"route (\S+) when .*\{", line):
            current = routes.setdefault(route[1], [])
        elif (prefer := re.match(r"prefer (\S+)/(\S+)", line)) and current is not None:
            current.append((prefer[1], prefer[2]))
        elif line == "}":
            current = None
    return routes


ROUTES = _prefer_lists(ROOT / "policies" / "default.policy")
VISION_PREFERS = set(ROUTES["vision"])
BUDGET_PREFERS = [model for _, model in ROUTES["budget"]]
FAST_PREFERS = [model for _, model in ROUTES["fast"]]

CUSTOM_POLICY = """\
catalog "models.yaml"

route pinned when request.user == "zed" {
    strategy failover
    prefer openai/gpt-3.5-turbo
}

limit user 5 per 1d
"""


@dataclass
class Run:
    code: int
    out: str
    err: str

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    def decision(self) -> dict[str, Any]:
        (only,) = self.lines()
        return only


def cli_env(workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(workdir / "xdg-state")
    return env


def policyctl(
    workdir: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=workdir,
        env=env if env is not None else cli_env(workdir),
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def policyctl_many(workdir: Path, commands: Sequence[Sequence[str]]) -> list[Run]:
    """Independent commands, run side by side (each its own process), results in order."""
    return parallel([functools.partial(policyctl, workdir, *args) for args in commands])


def parallel(thunks: Sequence[Callable[[], Run]]) -> list[Run]:
    with ThreadPoolExecutor(max_workers=max(2, min(8, os.cpu_count() or 2))) as pool:
        return list(pool.map(lambda thunk: thunk(), thunks))


def subcommands() -> list[tuple[str, ...]]:
    """Every command path the parser knows (`eval`, …, and nested ones like `ratelimit set`)."""

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> list[tuple[str, ...]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    found.append((*prefix, name))
                    found.extend(walk(child, (*prefix, name)))
        return found

    return walk(build_parser(), ())


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir()
    return work


def catalog() -> dict[str, dict[str, Any]]:
    """The packaged catalog, read as JSON (not with the engine's loader), by model id."""
    models = json.loads(PACKAGED_CATALOG.read_text())["models"]
    by_id = {m["id"]: m for m in models}
    assert len(by_id) == len(models)  # ids are unique across its providers
    return by_id


def estimated_cost(model: dict[str, Any], input_tokens: int, output_tokens: int) -> float:
    price = model["pricing"]
    return (input_tokens * price["input"] + output_tokens * price["output"]) / 1e6


def assert_schema(decision: dict[str, Any]) -> None:
    DecisionSchema.model_validate(decision)


def read_example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / name).read_text())
    return data


# ----------------------------------------------------------------------------- basics


def test_version_matches_the_package_and_pyproject(workdir: Path) -> None:
    run = policyctl(workdir, "--version")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"  # a checkout: git's
    assert run.code == 0
    assert run.out == f"policyctl {engine.__version__} (commit {commit})\n"
    assert engine.__version__ == project["version"]
    assert run.err == ""


COMMANDS = subcommands()


@pytest.fixture(scope="module")
def help_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Run]:
    """`policyctl [COMMAND] --help` for the program and every command, side by side."""
    work = tmp_path_factory.mktemp("help")
    paths = [(), *COMMANDS]
    return dict(zip(paths, policyctl_many(work, [(*c, "--help") for c in paths]), strict=True))


def test_the_parser_knows_the_spec_commands() -> None:
    assert {("eval",), ("check",), ("schema",), ("serve",)} <= set(COMMANDS)


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "policyctl")
def test_help_exits_zero_with_an_example(
    help_runs: dict[tuple[str, ...], Run], command: tuple[str, ...]
) -> None:
    run = help_runs[command]
    assert run.code == 0, run.err
    assert run.out.startswith(" ".join(("usage: policyctl", *command)))
    assert "example" in run.out.lower()
    assert run.err == ""


# ----------------------------------------------------------------------------- eval


def test_eval_each_example_request(workdir: Path) -> None:
    """Every example, routed by the packaged default policy (cwd has no ./policies)."""
    assert {"vision.json", "budget.json", "fast.json", "impossible.json"} <= set(EXAMPLE_FILES)
    runs = dict(
        zip(
            EXAMPLE_FILES,
            policyctl_many(
                workdir,
                [("eval", "--state", "memory://", str(EXAMPLES / n)) for n in EXAMPLE_FILES],
            ),
            strict=True,
        )
    )
    models = catalog()
    version = PolicyEngine().version
    for name, run in runs.items():
        assert run.err == "", (name, run.err)
        for d in run.lines():
            assert_schema(d)
            assert d["policy_version"] == version, name

    vision = runs["vision.json"]
    assert vision.code == 0
    d = vision.decision()
    assert (d["request_id"], d["allowed"], d["route"]) == ("req-vision-042", True, "vision")
    assert d["strategy"] == "model-specific"
    assert (d["provider"], d["model"]) in VISION_PREFERS
    assert "vision" in models[d["model"]]["supports"]
    assert d["denied_by"] is None

    # budget: max_cost $0.001 → route `budget`, strategy `cost`: the cheapest preferred model.
    request = read_example("budget.json")
    cheapest = min(
        BUDGET_PREFERS,
        key=lambda m: estimated_cost(models[m], request["input_tokens"], request["max_tokens"]),
    )
    assert cheapest == "gemini-2.5-flash-lite"
    budget = runs["budget.json"]
    assert budget.code == 0
    d = budget.decision()
    assert (d["route"], d["strategy"], d["allowed"]) == ("budget", "cost", True)
    assert (d["provider"], d["model"]) == ("gemini", cheapest)
    expected = estimated_cost(models[cheapest], request["input_tokens"], request["max_tokens"])
    assert d["estimated_cost"] == pytest.approx(expected)
    assert d["estimated_cost"] <= request["max_cost"]

    # fast: max_latency 1500ms <= 2s → route `fast`, strategy `latency`: the lowest p95 prior.
    quickest = min(FAST_PREFERS, key=lambda m: models[m]["latency_prior_ms"]["p95"])
    assert quickest == "gemini-2.5-flash-lite"
    fast = runs["fast.json"]
    assert fast.code == 0
    d = fast.decision()
    assert (d["route"], d["strategy"], d["allowed"]) == ("fast", "latency", True)
    assert (d["provider"], d["model"]) == ("gemini", quickest)
    assert d["estimated_latency_ms"] == models[quickest]["latency_prior_ms"]["p95"]

    # chat: no route matches → defaults, weighted(latency 60%, cost 40%) over the whole
    # catalog: 0.6·(1 − p95/max p95) + 0.4·(1 − cost/max cost) (docs/language.md §8.2), over
    # the models still serving today (with a tier above the request's size: none applies).
    request = read_example("chat.json")
    tokens = -(-len(request["prompt"]) // 4)
    today = time.time()
    serving = [
        m for m in models.values()
        if "retires" not in m
        or dt.datetime.fromisoformat(m["retires"]).replace(tzinfo=dt.UTC).timestamp() > today
    ]  # fmt: skip
    costs = {m["id"]: estimated_cost(m, tokens, request["max_tokens"]) for m in serving}
    p95s = {m["id"]: m["latency_prior_ms"]["p95"] for m in serving}
    top_cost, top_p95 = max(costs.values()), max(p95s.values())
    scores = {k: 0.6 * (1 - p95s[k] / top_p95) + 0.4 * (1 - costs[k] / top_cost) for k in costs}
    best = max(scores.values())
    chat = runs["chat.json"]
    assert chat.code == 0
    d = chat.decision()
    assert (d["route"], d["strategy"], d["allowed"]) == ("default", "weighted", True)
    assert scores[d["model"]] == pytest.approx(best)
    assert [k for k, v in scores.items() if v > best - 1e-9] == [d["model"]]  # no tie
    assert {r["scope"] for r in d["rate_limits"]} == {"global", "user", "ip", "provider"}

    # impossible: vision needed, but every vision candidate costs more than max_cost.
    impossible = runs["impossible.json"]
    assert impossible.code == 3
    d = impossible.decision()
    assert d["allowed"] is False
    assert d["provider"] is None and d["model"] is None
    assert d["route"] == "vision"
    assert d["denied_by"]["reason"] == "no_eligible_model"
    candidates = d["denied_by"]["candidates"]
    assert len(candidates) == 3
    assert {(c["provider"], c["model"]) for c in candidates} == VISION_PREFERS
    for c in candidates:
        assert isinstance(c["dropped_because"], str) and c["dropped_because"]
        assert "max_cost" in c["dropped_because"]


def test_eval_jsonl_gives_one_decision_per_line_in_order(workdir: Path) -> None:
    run = policyctl(workdir, "eval", "--state", "memory://", str(EXAMPLES / "batch.jsonl"))
    assert run.code == 0, run.err
    assert run.err == ""
    requests = [json.loads(line) for line in (EXAMPLES / "batch.jsonl").read_text().splitlines()]
    decisions = run.lines()
    assert [d["request_id"] for d in decisions] == [r["id"] for r in requests]
    # vision first, then max_cost, then max_latency, then long answers, else defaults
    assert [d["route"] for d in decisions] == ["default", "vision", "budget", "fast", "quality"]
    for d in decisions:
        assert_schema(d)


def test_eval_reads_stdin(workdir: Path) -> None:
    single, batch = parallel(
        [
            functools.partial(policyctl, workdir, "eval", "--state", "memory://", "-", stdin=text)
            for text in (
                (EXAMPLES / "chat.json").read_text(),
                (EXAMPLES / "batch.jsonl").read_text(),
            )
        ]
    )
    assert single.code == 0, single.err
    assert single.decision()["request_id"] == "req-chat-001"
    assert batch.code == 0, batch.err
    assert [d["request_id"] for d in batch.lines()] == ["b-1", "b-2", "b-3", "b-4", "b-5"]


def test_eval_table_format(workdir: Path) -> None:
    single, many = policyctl_many(
        workdir,
        [
            ("eval", "--state", "memory://", "--format", "table", str(EXAMPLES / "chat.json")),
            ("eval", "--state", "memory://", "--format", "table", str(EXAMPLES / "batch.jsonl")),
        ],
    )
    assert single.code == 0, single.err
    rows = {}
    for line in single.out.splitlines():
        label, _, value = line.partition("  ")
        rows.setdefault(label.strip(), []).append(value.strip())
    for label in ("request", "allowed", "route", "strategy", "provider/model", "reason",
                  "est cost", "est p95", "confidence", "alternatives", "fallbacks", "policy",
                  "limit"):  # fmt: skip
        assert label in rows, (label, single.out)
    assert rows["request"] == ["req-chat-001"]
    assert rows["allowed"] == ["yes"]
    assert rows["route"] == ["default"]
    assert rows["strategy"] == ["weighted"]
    assert rows["provider/model"] == ["gemini/gemini-2.5-flash-lite"]
    assert len(rows["limit"]) == 4
    assert not single.out.lstrip().startswith("{")

    assert many.code == 0, many.err
    header, *body = many.out.splitlines()
    assert header.split() == ["REQUEST", "ALLOWED", "ROUTE", "PROVIDER/MODEL", "STRATEGY",
                              "EST", "COST", "EST", "P95", "CONFIDENCE", "REASON"]  # fmt: skip
    assert [row.split()[0] for row in body] == ["b-1", "b-2", "b-3", "b-4", "b-5"]
    assert [row.split()[2] for row in body] == ["default", "vision", "budget", "fast", "quality"]


def test_eval_explain_adds_a_trace(workdir: Path) -> None:
    path = str(EXAMPLES / "fast.json")
    plain, explained, table = policyctl_many(
        workdir,
        [
            ("eval", "--state", "memory://", path),
            ("eval", "--state", "memory://", "--explain", path),
            ("eval", "--state", "memory://", "--explain", "--format", "table", path),
        ],
    )
    assert plain.code == explained.code == table.code == 0
    assert "trace" not in plain.decision()
    d = explained.decision()
    assert_schema(d)
    routes = [(s["route"], s["matched"]) for s in d["trace"] if s["step"] == "route"]
    # routes are tried in file order until one matches
    assert routes == [("vision", False), ("budget", False), ("fast", True)]
    # the same decision otherwise (rate limits aside: `reset_at` moves with the clock)
    ignored = {"trace", "rate_limits"}
    assert {k: v for k, v in d.items() if k not in ignored} == {
        k: v for k, v in plain.decision().items() if k not in ignored
    }
    traces = [line for line in table.out.splitlines() if line.startswith("trace")]
    assert traces[0].split(None, 1)[1] == "route vision when request.requires_vision: no match"
    assert any("route fast when request.max_latency <= 2s: matched" in t for t in traces)


def test_eval_with_a_policy_file(workdir: Path) -> None:
    (workdir / "custom.policy").write_text(CUSTOM_POLICY)
    (workdir / "models.yaml").write_text(CATALOG.read_text())
    (workdir / "zed.json").write_text('{"id": "z1", "user": "zed", "prompt": "hi"}')
    run = policyctl(
        workdir, "eval", "--state", "memory://", "--policy", "custom.policy", "zed.json"
    )
    assert run.code == 0, run.err
    d = run.decision()
    assert_schema(d)
    assert (d["route"], d["strategy"]) == ("pinned", "failover")
    assert (d["provider"], d["model"]) == ("openai", "gpt-3.5-turbo")
    assert [(r["scope"], r["key"], r["limit"]) for r in d["rate_limits"]] == [("user", "zed", 5)]
    assert d["policy_version"] != PolicyEngine().version


def test_eval_uses_policies_in_the_working_directory(workdir: Path) -> None:
    (workdir / "policies").mkdir()
    (workdir / "policies" / "custom.policy").write_text(CUSTOM_POLICY)
    (workdir / "policies" / "models.yaml").write_text(CATALOG.read_text())
    run = policyctl(workdir, "eval", "--state", "memory://", "-", stdin='{"user": "zed"}')
    assert run.code == 0, run.err
    assert run.decision()["route"] == "pinned"


def test_dry_run_consumes_nothing(workdir: Path) -> None:
    """A DuckDB state file shares buckets between runs; `limit user 5 per 1d` refills by
    about 0.00006 per second, so the remaining count only moves when a run consumes."""
    (workdir / "custom.policy").write_text(CUSTOM_POLICY)
    (workdir / "models.yaml").write_text(CATALOG.read_text())
    (workdir / "zed.json").write_text('{"id": "z1", "user": "zed"}')
    base = ("eval", "--policy", "custom.policy", "--state", "state.duckdb")
    remaining = []
    for extra in (("--dry-run",), ("--dry-run",), (), ("--dry-run",)):
        run = policyctl(workdir, *base, *extra, "zed.json")
        assert run.code == 0, run.err
        (status,) = run.decision()["rate_limits"]
        remaining.append(status["remaining"])
    # a dry run reports what would remain had it consumed; only the real run does
    assert remaining == [4, 4, 4, 3]
    assert (workdir / "state.duckdb").exists()


def test_state_memory_is_accepted_and_writes_no_file(workdir: Path) -> None:
    run = policyctl(
        workdir, "eval", "--dry-run", "--state", "memory://", str(EXAMPLES / "chat.json")
    )
    assert run.code == 0, run.err
    assert run.decision()["allowed"] is True
    assert list(workdir.iterdir()) == []


def test_default_state_lives_under_xdg_state_home(workdir: Path) -> None:
    """The persistent default (the admin commands', `serve`'s) is under $XDG_STATE_HOME;
    `eval` without --state or $POLICYCTL_STATE is a query on memory and writes nothing."""
    chat = str(EXAMPLES / "chat.json")
    env = cli_env(workdir) | {"POLICYCTL_STATE": str(workdir / "mine.duckdb")}
    default, from_env = parallel(
        [
            functools.partial(policyctl, workdir, "eval", chat),
            functools.partial(policyctl, workdir, "eval", chat, env=env),
        ]
    )
    assert default.code == 0, default.err
    assert from_env.code == 0, from_env.err
    assert not (workdir / "xdg-state").exists()
    assert (workdir / "mine.duckdb").is_file()
    admin = policyctl(workdir, "ratelimit", "status", "--user", "alice")
    assert admin.code == 0, admin.err
    assert (workdir / "xdg-state" / "policyctl" / "state.duckdb").is_file()


def test_unknown_state_scheme_quotes_the_url(workdir: Path) -> None:
    run = policyctl(workdir, "eval", "--state", "ftp://x", str(EXAMPLES / "chat.json"))
    assert run.code == 2
    assert run.out == ""
    assert run.err == (
        "policyctl: error: unknown state store `ftp://x` (scheme `ftp`): use `memory://`,"
        " a file path, or `redis://host:port`\n"
    )


# ----------------------------------------------------------------------------- bad input

# A request file's name, its content (None: the file does not exist), and the exact stderr.
BAD_INPUT: dict[str, tuple[str | None, str]] = {
    "malformed.json": (
        '{"id": "a",\n  "user": bob\n}\n',
        "malformed.json:2:11: error[E0600]: invalid JSON: expecting value\n"
        "  |\n"
        '2 |   "user": bob\n'
        "  |           ^\n",
    ),
    "unknown-field.json": (
        '{"id": "a", "max_token": 5}',
        "unknown-field.json: unknown field `max_token` (did you mean `max_tokens`?)\n",
    ),
    "unknown-field-far.json": (
        '{"id": "a", "colour": "red"}',
        "unknown-field-far.json: unknown field `colour`\n",
    ),
    "mistyped.json": (
        '{"id": "a", "max_tokens": "many"}',
        "mistyped.json: field `max_tokens`: input should be a valid integer\n",
    ),
    "bad-ip.json": (
        '{"id": "a", "ip": "999.1.2.3"}',
        "bad-ip.json: field `ip`: `999.1.2.3` is not an IPv4 or IPv6 address\n",
    ),
    "negative-tokens.json": (
        '{"id": "a", "input_tokens": -5}',
        "negative-tokens.json: field `input_tokens`: input should be greater than or equal to 0\n",
    ),
    "array.json": (
        '[{"id": "a"}]',
        "array.json: a request is a JSON object, not an array\n",
    ),
    "missing.json": (
        None,
        "policyctl: error: cannot read `missing.json`: No such file or directory\n",
    ),
}


@pytest.fixture(scope="module")
def bad_input_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """`policyctl eval FILE` for every bad request file, side by side."""
    work = tmp_path_factory.mktemp("bad-input")
    for name, (content, _) in BAD_INPUT.items():
        if content is not None:
            (work / name).write_text(content)
    names = list(BAD_INPUT)
    runs = policyctl_many(work, [("eval", "--state", "memory://", n) for n in names])
    return dict(zip(names, runs, strict=True))


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_request_file(bad_input_runs: dict[str, Run], name: str) -> None:
    run = bad_input_runs[name]
    assert run.code == 2
    assert run.out == ""
    assert run.err == BAD_INPUT[name][1]


def test_trailing_garbage_after_one_request_is_one_error(workdir: Path) -> None:
    """A pretty-printed request followed by junk is one JSON error at the junk, not a
    complaint about every line of the (valid) object before it."""
    (workdir / "trail.json").write_text('{\n  "id": "a"\n}\nxyz\n')
    run = policyctl(workdir, "eval", "--state", "memory://", "trail.json")
    assert run.code == 2
    headers = [line for line in run.err.splitlines() if line.startswith("trail.json:")]
    assert headers == ["trail.json:4:1: error[E0600]: invalid JSON: extra data"], run.err


def test_jsonl_with_one_bad_line(workdir: Path) -> None:
    (workdir / "mixed.jsonl").write_text(
        '{"id": "g1", "user": "a"}\n'
        '{"id": "g2", "max_token": 3}\n'
        '{"id": "g3", "user": "c"}\n'
        '{"id": \n'
    )
    run = policyctl(workdir, "eval", "--state", "memory://", "mixed.jsonl")
    assert run.code == 2
    first, second, third, fourth = run.lines()
    assert first["request_id"] == "g1" and first["allowed"] is True
    assert second == {"line": 2, "error": "unknown field `max_token` (did you mean `max_tokens`?)"}
    assert third["request_id"] == "g3" and third["allowed"] is True
    assert fourth == {
        "line": 4,
        "error": "mixed.jsonl:4:8: error[E0600]: invalid JSON: expecting value",
    }
    assert_schema(first)
    assert_schema(third)
    assert run.err == (
        "mixed.jsonl:2: unknown field `max_token` (did you mean `max_tokens`?)\n"
        "mixed.jsonl:4:8: error[E0600]: invalid JSON: expecting value\n"
        "  |\n"
        '4 | {"id": \n'
        "  |        ^\n"
    )


def test_bad_request_on_stdin_is_named_stdin(workdir: Path) -> None:
    run = policyctl(workdir, "eval", "--state", "memory://", "-", stdin='"hello"')
    assert run.code == 2
    assert run.err == "<stdin>: a request is a JSON object, not a string\n"


def test_unknown_subcommand_is_a_usage_error(workdir: Path) -> None:
    run = policyctl(workdir, "frobnicate")
    assert run.code == 2
    assert run.out == ""
    usage, error = run.err.splitlines()
    assert usage + "\n" == USAGE
    # the list of choices is worded differently across Python versions
    assert error.startswith("policyctl: error: argument COMMAND: invalid choice: 'frobnicate'")
    assert "eval" in error


def test_unknown_flag_is_a_usage_error(workdir: Path) -> None:
    run = policyctl(workdir, "eval", "--frob", "x.json")
    assert run.code == 2
    assert run.out == ""
    assert run.err == USAGE + "policyctl: error: unrecognized arguments: --frob\n"


def test_unknown_format_is_a_usage_error(workdir: Path) -> None:
    run = policyctl(workdir, "eval", "--format", "xml", str(EXAMPLES / "chat.json"))
    assert run.code == 2
    assert "argument --format: invalid choice: 'xml'" in run.err


# ----------------------------------------------------------------------------- check

BAD_POLICY = """\
catalog "models.yaml"

route budget when request.max_cost <= 2s {
    strategy cost
    prefer gemini/gemini-1.5-flash-lates
}

route x when request.max_tokenz > 5 {
    strategy cost
}
"""

BAD_POLICY_STDERR = """\
bad.policy:3:39: error[E0333]: unit mismatch: `request.max_cost` is money, `2s` is a duration
  |
3 | route budget when request.max_cost <= 2s {
  |                                       ^^
  = help: compare money with money, e.g. `$0.01`

bad.policy:5:19: error[E0241]: unknown model `gemini-1.5-flash-lates` for provider `gemini`
  |
5 |     prefer gemini/gemini-1.5-flash-lates
  |                   ^^^^^^^^^^^^^^^^^^^^^^
  = help: did you mean `gemini/gemini-1.5-flash-latest`?

bad.policy:8:14: error[E0324]: unknown field `request.max_tokenz`
  |
8 | route x when request.max_tokenz > 5 {
  |              ^^^^^^^^^^^^^^^^^^
  = help: did you mean `request.max_tokens`?

3 errors occurred
"""


def test_check_clean_default_policy_is_silent(workdir: Path) -> None:
    table, as_json, explicit = policyctl_many(
        workdir,
        [("check",), ("check", "--format", "json"), ("check", str(ROOT / "policies"))],
    )
    for run in (table, as_json, explicit):
        assert (run.code, run.out, run.err) == (0, "", "")


def test_check_reports_every_error(workdir: Path) -> None:
    (workdir / "bad.policy").write_text(BAD_POLICY)
    (workdir / "models.yaml").write_text(CATALOG.read_text())
    table, as_json = policyctl_many(
        workdir, [("check", "bad.policy"), ("check", "--format", "json", "bad.policy")]
    )
    assert table.code == 2
    assert table.out == ""
    assert table.err.startswith("bad.policy:3:39: ")
    assert table.err == BAD_POLICY_STDERR

    assert as_json.code == 2
    diagnostics = json.loads(as_json.out)
    assert [(d["severity"], d["file"], d["line"], d["col"]) for d in diagnostics] == [
        ("error", "bad.policy", 3, 39),
        ("error", "bad.policy", 5, 19),
        ("error", "bad.policy", 8, 14),
    ]
    assert (
        diagnostics[1]["message"] == "unknown model `gemini-1.5-flash-lates` for provider `gemini`"
    )
    assert diagnostics[2]["help"] == "did you mean `request.max_tokens`?"
    assert all(d["code"] for d in diagnostics)


def test_check_syntax_error(workdir: Path) -> None:
    (workdir / "syn.policy").write_text(
        'catalog "models.yaml"\n\nroute x when request.user == {\n}\n'
    )
    run = policyctl(workdir, "check", "syn.policy")
    assert run.code == 2
    assert run.err == (
        "syn.policy:3:30: error[E0014]: unexpected `{`\n"
        "  |\n"
        "3 | route x when request.user == {\n"
        "  |                              ^\n"
        "  = help: expected `(`, `[`, a name, a number, a string, an amount like `$0.01`\n"
    )


def test_check_warnings_exit_zero(workdir: Path) -> None:
    (workdir / "models.yaml").write_text(CATALOG.read_text())
    (workdir / "warn.policy").write_text(
        'catalog "models.yaml"\n\n'
        "route everything when true {\n    strategy cost\n}\n\n"
        'route never when request.user == "x" {\n    strategy latency\n}\n'
    )
    table, as_json = policyctl_many(
        workdir, [("check", "warn.policy"), ("check", "--format", "json", "warn.policy")]
    )
    assert table.code == 0
    assert table.err.startswith("warn.policy:7:7: warning[W0500]: route `never` is unreachable\n")
    assert as_json.code == 0
    (warning,) = json.loads(as_json.out)
    assert (warning["severity"], warning["line"], warning["col"]) == ("warning", 7, 7)


def test_check_defaults_to_policies_in_the_working_directory(workdir: Path) -> None:
    (workdir / "policies").mkdir()
    (workdir / "policies" / "models.yaml").write_text(CATALOG.read_text())
    (workdir / "policies" / "bad.policy").write_text(BAD_POLICY)
    run = policyctl(workdir, "check")
    assert run.code == 2
    assert run.err.startswith("policies/bad.policy:3:39: error[E0333]: unit mismatch")


# ----------------------------------------------------------------------------- schema


def test_schema_request_and_decision(workdir: Path) -> None:
    request_run, decision_run = policyctl_many(
        workdir, [("schema", "request"), ("schema", "decision")]
    )
    assert request_run.code == decision_run.code == 0
    request = json.loads(request_run.out)
    assert request["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert request["type"] == "object"
    assert request["additionalProperties"] is False
    spec_fields = {"id", "user", "ip", "model", "input_tokens", "max_tokens", "requires_vision",
                   "requires_tools", "requires_json", "stream", "max_cost", "max_latency_ms",
                   "region", "tags", "metadata"}  # fmt: skip
    assert spec_fields <= set(request["properties"])
    assert set(request["properties"]) == set(Request.model_fields)
    reasoning = request["properties"]["requires_reasoning"]
    assert (reasoning["type"], reasoning["default"]) == ("boolean", False)
    assert "reasoning" in reasoning["description"]

    decision = json.loads(decision_run.out)
    assert decision["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert decision["additionalProperties"] is False
    spec_fields = {"request_id", "allowed", "provider", "model", "route", "strategy", "reason",
                   "estimated_cost", "estimated_latency_ms", "confidence", "alternatives",
                   "fallbacks", "rate_limits", "denied_by", "policy_version", "trace",
                   "deployment_of", "input_format", "experiment", "arm", "shadow",
                   "explored", "affinity", "shadow_denials"}  # fmt: skip
    assert set(decision["properties"]) == spec_fields
    assert "shadow" not in decision["required"]  # with --explain, for a shadowed route only
    assert "trace" not in decision["required"]
    assert "deployment_of" not in decision["required"]  # present for a deployment only
    assert "input_format" not in decision["required"]  # present for a wire body only


def test_schema_needs_a_known_name(workdir: Path) -> None:
    run = policyctl(workdir, "schema", "policy")
    assert run.code == 2
    assert "invalid choice: 'policy'" in run.err


# ----------------------------------------------------------------------------- in process


def _example_requests() -> list[dict[str, Any]]:
    requests = []
    for name in EXAMPLE_FILES:
        text = (EXAMPLES / name).read_text()
        if name.endswith(".jsonl"):
            requests.extend(json.loads(line) for line in text.splitlines() if line.strip())
        else:
            requests.append(json.loads(text))
    return requests


def test_every_example_decision_matches_the_published_schema(tmp_path: Path) -> None:
    requests = _example_requests()
    assert len(requests) >= 10
    with PolicyEngine(state="memory://") as eng:
        for request in requests:
            for explain in (False, True):
                decision = eng.evaluate(request, explain=explain, dry_run=True)
                DecisionSchema.model_validate(decision.to_dict())
                DecisionSchema.model_validate(json.loads(json.dumps(decision.to_dict())))
                assert ("trace" in decision.to_dict()) is explain

    # a rate-limit denial has a different `denied_by`; it must fit the schema too
    (tmp_path / "models.yaml").write_text(CATALOG.read_text())
    (tmp_path / "one.policy").write_text('catalog "models.yaml"\nlimit user 1 per 1d\n')
    with PolicyEngine(tmp_path / "one.policy", state="memory://") as eng:
        first = eng.evaluate({"id": "a", "user": "u"})
        second = eng.evaluate({"id": "b", "user": "u"})
    assert first.allowed and not second.allowed
    assert second.denied_by is not None and second.denied_by["scope"] == "user"
    for decision in (first, second):
        DecisionSchema.model_validate(decision.to_dict())
