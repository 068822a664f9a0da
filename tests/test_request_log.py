"""What the decision log keeps of a request (`--log-requests`, `--hash-keys`), and
`policyctl log export`: real DuckDB state files, SDK-built wire bodies, the CLI in a
subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from _sdk_bodies import anthropic_messages, openai_chat

from engine import PolicyEngine
from engine.routing.evaluator import evaluate
from engine.routing.request import env_of

SECRET = "the launch code is 0000"
POLICY = """
route team when request.metadata.team == "research" {
    strategy latency
}
route tools when request.requires_tools {
    strategy cost
    prefer anthropic
}
"""


def _rows(state: Path) -> list[tuple[str | None, str | None]]:
    con = duckdb.connect(str(state))
    try:
        return con.execute(
            "SELECT request_id, request FROM decisions ORDER BY decided_at, request_id"
        ).fetchall()
    finally:
        con.close()


def _engine(tmp_path: Path, state: Path, **kwargs: object) -> PolicyEngine:
    policy = tmp_path / "p.policy"
    policy.write_text(POLICY)
    return PolicyEngine(policy, state=str(state), **kwargs)  # type: ignore[arg-type]


def _bodies() -> list[dict]:
    tool = {
        "type": "function",
        "function": {"name": "lookup", "description": SECRET, "parameters": {"type": "object"}},
    }
    return [
        {"id": "n1", "user": "alice", "ip": "10.0.0.7", "prompt": SECRET, "max_tokens": 300,
         "metadata": {"team": "research", "email": "alice@example.com"}, "tags": ["beta"]},
        openai_chat(model="gpt-4o-mini", messages=[{"role": "user", "content": SECRET}],
                    tools=[tool], max_tokens=200, stream=True),
        anthropic_messages(model="claude-haiku-4-5", max_tokens=100,
                           messages=[{"role": "user", "content": SECRET}]),
    ]  # fmt: skip


def test_features_keep_no_text_and_decide_as_the_original(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    bodies = _bodies()
    with _engine(tmp_path, state) as engine:
        formats = [None, "openai-chat", "anthropic"]  # a bare Messages body looks like Chat
        decisions = [
            engine.evaluate(b, request_id=f"w{i}", input_format=f)
            for i, (b, f) in enumerate(zip(bodies, formats, strict=True))
        ]
        program = engine.program
    rows = _rows(state)
    assert len(rows) == 3
    for _, text in rows:
        assert text is not None and SECRET not in text and "example.com" not in text
    features = {rid: json.loads(text) for rid, text in rows}
    native = features["n1"]
    assert native == {
        "user": "alice", "ip": "10.0.0.7", "input_tokens": native["input_tokens"],
        "max_tokens": 300, "tags": ["beta"], "metadata": {"team": "research"},
        "format": "native",
    }  # fmt: skip
    assert features["w1"]["format"] == "openai-chat"
    assert features["w1"]["requires_tools"] is True and features["w1"]["stream"] is True
    assert features["w2"]["format"] == "anthropic" and features["w2"]["model"] == "claude-haiku-4-5"
    # decided again from the features alone (no text), every request gets the same decision
    for decision, body in zip(decisions, bodies, strict=True):
        logged = features[decision.request_id]
        replay = {k: v for k, v in logged.items() if k != "format"}
        again = evaluate(program, env_of({**replay, "id": decision.request_id}))
        assert (again.route, again.provider, again.model) == (
            decision.route, decision.provider, decision.model,
        )  # fmt: skip
        fmt = None if logged["format"] == "native" else logged["format"]
        assert replay["input_tokens"] == env_of(body, input_format=fmt)["input_tokens"]


def test_the_reasoning_requirement_is_kept_and_replays(tmp_path: Path) -> None:
    """A body's `thinking` is logged as `requires_reasoning`: the logged request takes the
    route that reads it, and its models, without the body."""
    policy = tmp_path / "p.policy"
    policy.write_text(
        "route deep when request.requires_reasoning {\n    strategy cost\n    prefer openai\n}\n"
    )
    body = anthropic_messages(model="claude-haiku-4-5", max_tokens=2048, system="s",
                              thinking={"type": "enabled", "budget_tokens": 1024},
                              messages=[{"role": "user", "content": SECRET}])  # fmt: skip
    state = tmp_path / "state.duckdb"
    with PolicyEngine(policy, state=str(state)) as engine:
        decision = engine.evaluate(body, request_id="r1")
        program = engine.program
    assert decision.route == "deep"
    ((_, text),) = _rows(state)
    logged = json.loads(text)
    assert logged["requires_reasoning"] is True
    replay = {k: v for k, v in logged.items() if k != "format"}
    again = evaluate(program, env_of({**replay, "id": "r1"}))
    assert (again.route, again.provider, again.model) == ("deep", "openai", decision.model)


def test_off_full_and_dry_runs(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    request = {"id": "f1", "user": "bob", "prompt": SECRET}
    with _engine(tmp_path, state, log_requests="full") as engine:
        engine.evaluate(request)
        engine.evaluate({**request, "id": "dry"}, dry_run=True)  # logs nothing
    with _engine(tmp_path, state, log_requests="off") as engine:
        engine.evaluate({**request, "id": "o1"})
    rows = dict(_rows(state))
    assert set(rows) == {"f1", "o1"}
    full = json.loads(rows["f1"])
    assert full["body"] == request and full["user"] == "bob"
    assert rows["o1"] is None
    with pytest.raises(ValueError, match="log_requests must be one of off, features, full"):
        _engine(tmp_path, tmp_path / "other.duckdb", log_requests="everything")


def test_hashed_keys_are_stable_per_state_file(tmp_path: Path) -> None:
    one, two = tmp_path / "one.duckdb", tmp_path / "two.duckdb"
    request = {"user": "alice", "ip": "10.0.0.7", "prompt": "hi"}
    for state in (one, one, two):
        with _engine(tmp_path, state, hash_keys=True) as engine:
            engine.evaluate({**request, "id": f"{state.stem}-{len(_rows(state))}"})
    first, second = (json.loads(text) for _, text in _rows(one))
    (other,) = (json.loads(text) for _, text in _rows(two))
    assert re.fullmatch(r"h:[0-9a-f]{16}", first["user"])
    assert re.fullmatch(r"h:[0-9a-f]{16}", first["ip"])
    assert first["user"] != first["ip"]
    assert (first["user"], first["ip"]) == (second["user"], second["ip"])  # one salt per file
    assert other["user"] != first["user"]  # another installation, another salt
    assert "alice" not in json.dumps([first, second, other])


def test_remembered_hashes_equal_fresh_ones_and_stay_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.routing import request_log

    monkeypatch.setattr(request_log, "HASHES_KEPT", 8)
    salt = b"s" * 16
    kept = request_log.RequestLog("features", frozenset(), salt)
    keys = [f"user-{i}" for i in range(20)] * 2
    remembered = [kept.hashed(k) for k in keys]
    # a fresh log (nothing remembered) hashes every key alike
    assert remembered == [request_log.RequestLog("features", frozenset(), salt).hashed(k)
                          for k in keys]  # fmt: skip
    assert len(kept._hashes) <= 8
    assert kept.hashed("user-19") is kept.hashed("user-19")  # the second call: remembered


def _policyctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_log_export_joins_outcomes_and_leaves_shadows_without(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    policy = tmp_path / "p.policy"
    policy.write_text("route r { strategy cost\n shadow route s }\nroute s { strategy latency }\n")
    with PolicyEngine(policy, state=str(state)) as engine:
        first = engine.evaluate({"id": "a", "user": "u", "prompt": "hi"})
        engine.evaluate({"id": "b", "user": "u", "prompt": "hi"})
        engine.record(first, latency_ms=900.0, success=False, output_tokens=5)
        engine.record(first, latency_ms=420.0, success=True, output_tokens=30)  # the retry
    done = _policyctl(tmp_path, "log", "export", "--state", str(state), "-o", "log.parquet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "exported 4 decisions to log.parquet (parquet)\n"
    rows = (
        duckdb.connect()
        .execute(
            "SELECT request_id, route, shadow, outcome_latency_ms, outcome_success,"
            f" outcome_output_tokens, request FROM '{tmp_path / 'log.parquet'}'"
            " ORDER BY request_id, route"
        )
        .fetchall()
    )
    assert [r[:6] for r in rows] == [
        ("a", "r", None, 420.0, True, 30),  # the last outcome of its request
        ("a", "s", True, None, None, None),  # a shadow was never carried out
        ("b", "r", None, None, None, None),
        ("b", "s", True, None, None, None),
    ]
    assert all(json.loads(r[6])["user"] == "u" for r in rows)
    done = _policyctl(tmp_path, "log", "export", "--state", str(state), "-o", "log.csv")
    assert done.returncode == 0 and "4 decisions" in done.stdout
    assert (tmp_path / "log.csv").read_text().splitlines()[0].startswith("decided_at,request_id,")
    done = _policyctl(tmp_path, "log", "export", "--state", str(state), "-o", "no/such/x.parquet")
    assert done.returncode == 2
    assert "no such directory `no/such`" in done.stderr


def test_cli_flags_reach_the_log(tmp_path: Path) -> None:
    (tmp_path / "r.json").write_text(json.dumps({"id": "c1", "user": "carol", "prompt": SECRET}))
    state = str(tmp_path / "s.duckdb")
    done = _policyctl(tmp_path, "eval", "--state", state, "--hash-keys", "r.json")
    assert done.returncode == 0, done.stderr
    ((rid, text),) = _rows(Path(state))
    assert rid == "c1" and json.loads(text)["user"].startswith("h:")
    done = _policyctl(tmp_path, "eval", "--state", state, "--log-requests", "nope", "r.json")
    assert done.returncode == 2 and "invalid choice: 'nope'" in done.stderr
