"""Replay of a log written with `--log-requests features` by a policy that routes on the
prompt (`request.complexity`, `request.text.*`, a classifier plugin): the replayed decision
reads the prompt features the log kept, and a field it did not keep is counted and flagged
(issue 18's rule), never read as an empty conversation.

A real engine on a DuckDB state file logs chat bodies (code, math, plain questions, long
ones), and `policyctl replay` decides them again in a subprocess (batch and `--no-batch`).
The expected changes are counted independently: each logged body decided afresh, on its
real text, by an engine on the other policy.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine import PolicyEngine
from engine.routing.request import env_of
from engine.routing.request_log import (
    LoggedConversation,
    RequestLog,
    Unlogged,
    logged_conversation,
)
from engine.wire.plugins import GROUP, Outcome

START = 1_780_000_000.0  # (2026-05-28: before the catalog retires these models)
CONTENT = """
defaults {
    strategy cost
    complexity(code: 0.6)
}

route hard when request.complexity >= 0.5 {
    prefer openai/gpt-4o
}

route easy {
    prefer openai/gpt-4o-mini
}
"""
# the same routes on another threshold: the requests scored in [0.3, 0.5) move
LOWER = CONTENT.replace("request.complexity >= 0.5", "request.complexity >= 0.3")
# a feature the content policy never read (not one of the score's inputs either)
SCRIPT = 'route cjk when request.text.script == "cjk" {\n    prefer openai/gpt-4o\n}\n' + CONTENT
PLAIN = "route all {\n    prefer openai/gpt-4o-mini\n}\n"  # reads no prompt feature

PROMPTS = [
    "What is the capital of France?",
    "Fix this:\n```python\ndef f(x):\n    return x +\n```",
    "Solve for x: 3x + 5 = 20, then explain each step.",
    "First summarise the report, then list the risks, and finally draft an email.",
    "Prove that there are infinitely many prime numbers.",
    "Tell me a joke.",
    "word " * 700,
    "Compare the three options step by step and justify your final choice.",
]


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _bodies(n: int) -> list[dict[str, Any]]:
    rng = random.Random(21)
    bodies = []
    for _ in range(n):
        messages = [{"role": "user", "content": rng.choice(PROMPTS)}]
        if rng.random() < 0.3:
            messages.insert(0, {"role": "system", "content": "Think step by step."})
        bodies.append({"model": "gpt-4o-mini", "messages": messages})
    return bodies


def _write_log(tmp_path: Path, policy: str, n: int = 80) -> tuple[Path, list[dict[str, Any]]]:
    (tmp_path / "logged.policy").write_text(policy)
    state = tmp_path / "log.duckdb"
    clock = _Clock()
    bodies = _bodies(n)
    with PolicyEngine(tmp_path / "logged.policy", state=str(state), clock=clock,
                      log_requests="features") as engine:  # fmt: skip
        for i, body in enumerate(bodies):
            clock.now += 0.5
            engine.evaluate(body, request_id=f"r{i}")
    return state, bodies


def _replay(tmp_path: Path, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--format", "json", *args], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _models(policy: Path, bodies: list[dict[str, Any]]) -> list[str]:
    """Each body decided on its real text (the ground truth a replay should reach)."""
    with PolicyEngine(policy, state="memory://") as engine:
        return [
            f"{d.provider}/{d.model}"
            for d in (engine.evaluate(b, dry_run=True, request_id=f"r{i}")
                      for i, b in enumerate(bodies))
        ]  # fmt: skip


@pytest.mark.parametrize("batch", [[], ["--no-batch"]], ids=["batch", "one-by-one"])
def test_a_content_policy_replays_on_its_logged_features(tmp_path: Path, batch: list[str]) -> None:
    state, bodies = _write_log(tmp_path, CONTENT)
    logged = (
        duckdb.connect(str(state), read_only=True)
        .execute("SELECT request FROM decisions ORDER BY decided_at")
        .fetchall()
    )
    first = json.loads(logged[0][0])
    assert "messages" not in first and "body" not in first  # never the text
    assert set(first["text"]) == {"code", "math", "multi_step", "system_reasoning",
                                  "tool_results", "last_tokens", "turns"}  # fmt: skip
    # against itself: nothing changes, every request decided
    same = _replay(tmp_path, "--policy", "logged.policy", "--from", str(state), *batch)
    assert (same["requests"], same["replayed"], same["changed"]) == (80, 80, 0)
    assert (same["unlogged"], same["unlogged_fields"]) == (0, {})
    assert same["before"]["served"] == same["after"]["served"] == 80
    # another threshold: exactly the requests its decision on the real text moves
    (tmp_path / "lower.policy").write_text(LOWER)
    before = _models(tmp_path / "logged.policy", bodies)
    after = _models(tmp_path / "lower.policy", bodies)
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0 < moved < 80  # the log has requests on both sides of the change
    lower = _replay(tmp_path, "--policy", "lower.policy", "--from", str(state), *batch)
    assert (lower["replayed"], lower["changed"]) == (80, moved)
    assert lower["by_model"][0]["before"] == "openai/gpt-4o-mini"
    assert lower["by_model"][0]["after"] == "openai/gpt-4o"


def test_a_feature_the_log_never_kept_is_flagged_not_read_as_empty(tmp_path: Path) -> None:
    state, _ = _write_log(tmp_path, CONTENT, n=40)
    (tmp_path / "script.policy").write_text(SCRIPT)
    report = _replay(tmp_path, "--policy", "script.policy", "--from", str(state))
    assert (report["requests"], report["replayed"], report["changed"]) == (40, 0, 0)
    assert report["unlogged"] == 40
    assert report["unlogged_fields"] == {"request.text.script": 40}
    table = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--policy", "script.policy", "--from",
         str(state)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert "40 not replayable: they read a field the log never kept:" in table.stdout
    assert "request.text.script 40" in table.stdout


def test_a_log_of_a_policy_that_read_no_feature_flags_every_content_decision(
    tmp_path: Path,
) -> None:
    state, _ = _write_log(tmp_path, PLAIN, n=30)
    (tmp_path / "content.policy").write_text(CONTENT)
    for batch in ([], ["--no-batch"]):
        report = _replay(tmp_path, "--policy", "content.policy", "--from", str(state), *batch)
        assert (report["replayed"], report["unlogged"]) == (0, 30), report
        (field,) = report["unlogged_fields"]
        assert field.endswith("(of request.complexity)")


# ------------------------------------------------------------------ in process


def test_the_log_keeps_the_plugins_the_decision_ran_and_reads_them_back() -> None:
    env = env_of({"messages": [{"role": "user", "content": "```\nx = 1\n```"}]})
    conv = env["conversation"]
    conv.values[(GROUP, "topic")] = Outcome("code", 1200)  # as `Plugin.outcome` keeps it
    log = RequestLog("features", frozenset(), None, frozenset({"code"}), ("topic", "legal"))
    kept = json.loads(log.encode(env, None) or "")
    assert kept["text"] == {"code": True}
    assert kept["features"] == {"topic": "code"}  # `legal` did not run: not run for the log
    back = LoggedConversation("openai-chat", kept["text"], kept["features"])
    assert back.feature("code") is True
    assert back.values.get((GROUP, "topic")).value == "code"
    with pytest.raises(Unlogged) as err:
        back.values.get((GROUP, "legal"))
    assert err.value.field == "request.features.legal"
    with pytest.raises(Unlogged) as err:
        back.feature("math")
    assert err.value.field == "request.text.math"


PLUGIN = """
from engine.features import RequestView, feature

CALLS = []


@feature(type=bool, inline=True)
def legal(request: RequestView) -> bool:
    CALLS.append(1)
    return "contract" in request.last_text


@feature(type=str, fallback="none", inline=True)
def topic(request: RequestView) -> str:
    return "other"
"""
ON_LEGAL = """
route law when request.features.legal {
    prefer openai/gpt-4o
}

route rest {
    prefer openai/gpt-4o-mini
}
"""


def test_a_plugin_value_is_replayed_from_the_log_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process (the plugin registered through `using`): the logged value decides, the
    plugin is not called by the replay, and a plugin the log has no value for is flagged."""
    from importlib.metadata import EntryPoint

    from engine.analytics.decision_log import read_decision_log
    from engine.replay.run import replay
    from engine.wire.plugins import Registry, using

    name = f"replay_plugins_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry([EntryPoint(n, f"{name}:{n}", GROUP) for n in ("legal", "topic")])
    (tmp_path / "legal.policy").write_text(ON_LEGAL)
    (tmp_path / "topic.policy").write_text(
        ON_LEGAL.replace("request.features.legal", 'request.features.topic == "law"')
    )
    state = tmp_path / "log.duckdb"
    clock = _Clock()
    questions = ["Review this contract, please.", "What is 2 + 2?"] * 10
    with using(registry):
        with PolicyEngine(tmp_path / "legal.policy", state=str(state), clock=clock) as engine:
            for i, question in enumerate(questions):
                clock.now += 0.5
                body = {"messages": [{"role": "user", "content": question}]}
                assert engine.evaluate(body, request_id=f"r{i}").allowed
        calls = sys.modules[name].CALLS
        assert len(calls) == 20
        for batch in (True, False):
            with read_decision_log(str(state)) as log:
                same = replay(log, tmp_path / "legal.policy", batch=batch)
            assert (same.replayed, same.changed, sum(same.unlogged.values())) == (20, 0, 0)
            assert same.models_after["openai/gpt-4o"] == 10
            with read_decision_log(str(state)) as log:
                other = replay(log, tmp_path / "topic.policy", batch=batch)
            assert (other.replayed, dict(other.unlogged)) == (0, {"request.features.topic": 20})
        assert len(calls) == 20  # the replays read the logged values: not one call
    sys.modules.pop(name, None)


def test_a_full_log_derives_what_it_did_not_keep_from_the_body() -> None:
    body = {"messages": [{"role": "user", "content": "Solve for x: 2x = 6"}]}
    env = env_of(body)
    log = RequestLog("full", frozenset(), None, frozenset({"code"}), ())
    kept = json.loads(log.encode(env, body) or "")
    assert kept["text"] == {"code": False} and kept["body"] == body
    conv = logged_conversation(kept)
    assert not isinstance(conv, LoggedConversation)
    assert (conv.feature("code"), conv.feature("math")) == (False, True)  # math: the body's
    assert not {"text", "features", "body", "format"} & set(kept)  # taken out: a native request
