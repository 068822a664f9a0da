"""Sticky experiments: `split by request.KEY { N%: route a … }`.

The arm is a stable hash of the experiment's name and the key's value: the same value gets
the same arm in every process; the shares hold to a percentage point over 100k keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.language.loader import PolicyError, compile_sources
from engine.routing.decision import DecisionSchema
from engine.routing.evaluator import evaluate
from engine.routing.request import env_of

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "policies" / "experiment.policy"

POLICY = """
route chat when request.stream {
    split by request.user {
        70%: route a
        20%: route b
        10%: route c
    }
}
route a { strategy cost
    prefer openai }
route b { strategy cost
    prefer anthropic }
route c { strategy cost
    prefer gemini }
route a_fallthrough { strategy cost }
"""


def _program(text: str = POLICY):
    return compile_sources([("exp.policy", text)], [None]).program


def test_shares_hold_within_one_point_over_100k_keys() -> None:
    program = _program()
    split = program.routes[0].split
    assert split is not None
    counts = [0, 0, 0]
    n = 100_000
    for i in range(n):
        counts[split.arm_index({"user": f"user-{i}", "key": "unused"})] += 1
    shares = [c / n for c in counts]
    for got, want in zip(shares, (0.70, 0.20, 0.10), strict=True):
        assert abs(got - want) <= 0.01, shares


@settings(max_examples=200, deadline=None)
@given(user=st.text(min_size=1, max_size=40), ids=st.lists(st.text(max_size=10), min_size=2))
def test_the_same_user_gets_the_same_arm(user: str, ids: list[str]) -> None:
    program = _program()
    arms = set()
    for i, rid in enumerate(ids):
        request = {"id": f"{rid}-{i}", "user": user, "prompt": "hi", "stream": True}
        decision = evaluate(program, env_of(request))
        assert decision.experiment == "chat"
        assert decision.route == decision.arm
        arms.add(decision.arm)
    assert len(arms) == 1


def test_without_the_key_the_request_id_splits() -> None:
    program = _program()
    seen = {}
    for i in range(300):
        request = {"id": f"req-{i}", "prompt": "hi", "stream": True}
        first = evaluate(program, env_of(request)).arm
        assert evaluate(program, env_of(request)).arm == first  # fixed by the id
        seen[first] = seen.get(first, 0) + 1
    assert set(seen) == {"a", "b", "c"}


def test_arm_routes_are_not_tried_on_their_own() -> None:
    program = _program()
    # not streaming: `chat` does not match; `a`, `b`, `c` are arms, so the first route
    # tried after `chat` is `a_fallthrough`
    decision = evaluate(program, env_of({"id": "x", "user": "u", "prompt": "hi"}))
    assert decision.route == "a_fallthrough"
    assert decision.experiment is None and decision.arm is None
    assert "arm" not in decision.to_dict() and "experiment" not in decision.to_dict()


def test_the_arm_is_in_the_decision_json_and_schema() -> None:
    program = _program()
    decision = evaluate(program, env_of({"id": "x", "user": "u", "prompt": "hi", "stream": True}))
    fields = decision.to_dict()
    assert fields["experiment"] == "chat"
    assert fields["arm"] == fields["route"]
    DecisionSchema.model_validate(fields)


def test_explain_traces_the_split() -> None:
    program = _program()
    env = env_of({"id": "x", "user": "u", "prompt": "hi", "stream": True})
    decision = evaluate(program, env, explain=True)
    steps = [s for s in decision.trace or () if s["step"] == "split"]
    assert steps == [
        {"step": "split", "experiment": "chat", "by": "request.user", "arm": decision.arm}
    ]


def test_a_denial_in_an_arm_names_the_arm() -> None:
    text = POLICY.replace("prefer gemini }", 'prefer gemini\n require model.id == "none" }')
    program = _program(text)
    for i in range(200):
        decision = evaluate(program, env_of({"id": "x", "user": f"u{i}", "prompt": "hi",
                                              "stream": True}))  # fmt: skip
        if decision.arm == "c":
            assert not decision.allowed
            assert decision.to_dict()["arm"] == "c"
            return
    pytest.fail("no user landed in arm c")


@pytest.mark.parametrize(
    "text,code",
    [
        (POLICY.replace("10%: route c", "15%: route c"), "E0260"),
        (POLICY.replace("10%: route c", "10%: route d"), "E0261"),
        (POLICY.replace("10%: route c", "10%: route chat"), "E0261"),
        (POLICY.replace("20%: route b", "20%: route a"), "E0262"),
        (POLICY.replace("request.user", "request.nobody"), "E0324"),
        (POLICY.replace("request.user", "model.id"), "E0263"),
        (POLICY.replace("10%: route c", "10: route c"), "E0264"),
        (POLICY.replace("    split by", "    strategy cost\n    split by"), "E0265"),
        (POLICY.replace("route c {", "route c when request.stream {"), "E0266"),
    ],
)
def test_checker_errors(text: str, code: str) -> None:
    with pytest.raises(PolicyError) as err:
        _program(text)
    assert code in str(err.value)


def test_metadata_keys_split_too() -> None:
    program = _program(POLICY.replace("request.user", "request.metadata.team"))
    arms = {
        evaluate(
            program,
            env_of({"id": f"r{i}", "prompt": "hi", "stream": True, "metadata": {"team": "red"}}),
        ).arm
        for i in range(50)
    }
    assert len(arms) == 1


def _eval_in_subprocess(tmp_path: Path, user: str, rid: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    env["PYTHONHASHSEED"] = "random"  # a per-process salt must not move the arm
    request = json.dumps({"id": rid, "user": user, "prompt": "hi", "stream": True})
    done = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--policy", str(EXAMPLE), "--state",
         "memory://", "-"],
        cwd=tmp_path, env=env, input=request, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def test_the_same_user_gets_the_same_arm_across_processes(tmp_path: Path) -> None:
    for user in ("alice", "grace", "zoe"):
        first = _eval_in_subprocess(tmp_path, user, "one")
        second = _eval_in_subprocess(tmp_path, user, "two")
        assert first["experiment"] == second["experiment"] == "chat"
        assert first["arm"] == second["arm"]
    assert _eval_in_subprocess(tmp_path, "grace", "three")["arm"] == "candidate"
    assert _eval_in_subprocess(tmp_path, "alice", "four")["arm"] == "stable"


def _policyctl(tmp_path: Path, *args: str, stdin: str = "") -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=tmp_path, env=env, input=stdin,
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return done.stdout


def test_metrics_show_by_arm_joins_outcomes_by_request_id(tmp_path: Path) -> None:
    requests = "".join(
        json.dumps({"id": f"{u}-{i}", "user": u, "prompt": "hi", "stream": True}) + "\n"
        for u in ("alice", "grace", "bob")
        for i in (1, 2)
    )
    (tmp_path / "requests.jsonl").write_text(requests)
    state = str(tmp_path / "state.duckdb")
    _policyctl(tmp_path, "eval", "--policy", str(EXAMPLE), "--state", state, "requests.jsonl")
    outcomes = [
        ("alice-1", "openai", "gpt-5-nano", 1000, True, 0.001),
        ("alice-2", "openai", "gpt-5-nano", 3000, False, 0.003),
        ("grace-1", "anthropic", "claude-haiku-5-5", 500, True, 0.002),
    ]
    (tmp_path / "outcomes.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "request_id": r,
                    "provider": p,
                    "model": m,
                    "latency_ms": ms,
                    "success": ok,
                    "input_tokens": 10,
                    "output_tokens": 10,
                    "cost": c,
                }
            )
            + "\n"
            for r, p, m, ms, ok, c in outcomes
        )
    )
    _policyctl(tmp_path, "metrics", "import", "outcomes.jsonl", "--state", state,
               "--policy", str(EXAMPLE))  # fmt: skip
    shown = json.loads(
        _policyctl(tmp_path, "metrics", "show", "--by", "arm", "--state", state, "--format", "json")
    )
    arms = {row["arm"]: row for row in shown["arms"]}
    assert set(arms) == {"stable", "candidate"}
    assert arms["stable"]["decisions"] == 4 and arms["candidate"]["decisions"] == 2
    assert arms["stable"]["outcomes"] == 2 and arms["candidate"]["outcomes"] == 1
    assert arms["stable"]["success_rate"] == 0.5 and arms["candidate"]["success_rate"] == 1.0
    assert arms["stable"]["p50_ms"] == 2000.0
    assert arms["stable"]["cost"] == pytest.approx(0.004)
    table = _policyctl(tmp_path, "metrics", "show", "--by", "arm", "--state", state)
    assert table.splitlines()[0].split()[:5] == ["EXPERIMENT", "ARM", "DECISIONS", "ALLOWED",
                                                  "OUTCOMES"]  # fmt: skip


def test_an_older_state_file_gains_the_arm_columns(tmp_path: Path) -> None:
    import duckdb

    from engine.analytics import schema

    path = tmp_path / "old.duckdb"
    old = schema.SCHEMA.replace(
        "    policy_version VARCHAR NOT NULL,\n    experiment VARCHAR,",
        "    policy_version VARCHAR NOT NULL",
    )
    old = old[: old.index("    arm VARCHAR")] + old[old.index(");", old.index("    arm VARCHAR")) :]
    con = duckdb.connect(str(path))
    con.execute(old)
    columns = [r[0] for r in con.execute("DESCRIBE decisions").fetchall()]
    assert "arm" not in columns and "experiment" not in columns
    con.execute(
        "INSERT INTO decisions VALUES (now()::TIMESTAMP, 'r', true, 'default', 'cost', 'p',"
        " 'm', 0.1, 10, NULL, NULL, 'v')"
    )
    con.close()
    shown = json.loads(
        _policyctl(
            tmp_path, "metrics", "show", "--by", "arm", "--state", str(path), "--format", "json"
        )
    )
    assert shown["arms"] == []
    con = duckdb.connect(str(path))
    columns = [r[0] for r in con.execute("DESCRIBE decisions").fetchall()]
    assert columns[-6:] == ["experiment", "arm", "shadow", "shadow_of", "request", "explored"]
    con.close()


def test_the_language_server_completes_arm_routes() -> None:
    from engine.lsp.knowledge import completions, keywords

    assert {"split", "by"} <= set(keywords())
    text = POLICY.replace("10%: route c", "10%: route ")
    offset = text.index("10%: route ") + len("10%: route ")
    found = completions(text, offset, None)
    labels = [c.label for c in found.items]
    assert {"a", "b", "c", "chat"} <= set(labels)
    assert all(c.kind == "route" for c in found.items)
    assert found.start == offset


def test_arm_routes_after_a_catch_all_are_not_reported_unreachable() -> None:
    from engine.language.loader import load_policy

    assert load_policy(EXAMPLE).warnings == ()


def test_policytest_checks_the_arm_and_names_an_unknown_one(tmp_path: Path) -> None:
    (tmp_path / "exp.policy").write_text(EXAMPLE.read_text())
    (tmp_path / "exp.tests.yaml").write_text(
        "tests:\n"
        "  - name: grace is a candidate\n"
        "    request: {id: r, user: grace, prompt: hi, stream: true}\n"
        "    expect: {arm: stable}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    run = [sys.executable, "-m", "engine", "test", str(tmp_path)]
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "arm" in done.stdout + done.stderr and "candidate" in done.stdout + done.stderr
    (tmp_path / "exp.tests.yaml").write_text(
        (tmp_path / "exp.tests.yaml").read_text().replace("arm: stable", "arm: stabel")
    )
    done = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert "E0903" in done.stdout + done.stderr
    assert "did you mean `stable`?" in done.stdout + done.stderr


# ---------------------------------------------------------------- shadow routes

SHADOW = """
limit user 2 per 1m
limit provider "anthropic" 1 per 1h
route chat {
    strategy cost
    prefer openai
    shadow route candidate
}
route candidate {
    strategy cost
    prefer anthropic
}
"""


def _limited(text: str):
    from engine.limits.limiter import Limiter
    from engine.limits.stores.memory import MemoryStore

    return _program(text), Limiter(MemoryStore(), clock=lambda: 1_000_000.0)


def test_a_shadow_decision_is_made_but_never_served_nor_consumes_limits() -> None:
    program, limiter = _limited(SHADOW)
    plain, plain_limiter = _limited(SHADOW.replace("    shadow route candidate\n", ""))
    served = []
    for i in range(3):
        env = env_of({"id": f"r{i}", "user": "bob", "prompt": "hi"})
        decision = evaluate(program, env, limiter=limiter, now=1_000_000.0)
        same = evaluate(plain, env, limiter=plain_limiter, now=1_000_000.0)
        served.append(decision)
        assert decision.to_dict() | {"policy_version": ""} == same.to_dict() | {
            "policy_version": ""
        }
        assert "shadow" not in decision.to_dict()
        shadow = decision.shadow
        assert shadow is not None and shadow.route == "candidate"
        assert shadow.provider == "anthropic" or not shadow.allowed
    # the user limit: the shadow's dry runs took nothing (2 per minute: the third is denied
    # by the served decisions alone)
    assert [d.allowed for d in served] == [True, True, False]
    # the shadow is checked after the served decision took its share: the second request's
    # shadow finds bob's bucket empty; the first chose anthropic (1 per hour) without taking it
    first = served[0].shadow
    assert first is not None and first.allowed and first.provider == "anthropic"
    assert served[1].shadow is not None and not served[1].shadow.allowed
    # nothing tallied for the shadow either: the same violations and daily counts
    assert len(limiter.violations) == len(plain_limiter.violations) == 1
    assert limiter.allowed_tallies == plain_limiter.allowed_tallies
    assert limiter.denied_tallies == plain_limiter.denied_tallies
    # a real request on anthropic still has its whole hour
    direct = _program(SHADOW.replace("prefer openai", "prefer anthropic"))
    env = env_of({"id": "x", "user": "carol", "prompt": "hi"})
    decision = evaluate(direct, env, limiter=limiter, now=1_000_000.0)
    assert decision.allowed and decision.provider == "anthropic"


def test_shadow_rows_in_the_decision_log(tmp_path: Path) -> None:
    import duckdb

    policy = tmp_path / "shadow.policy"
    policy.write_text(SHADOW.replace("limit user 2 per 1m\n", ""))
    requests = "".join(
        json.dumps({"id": f"r{i}", "user": "bob", "prompt": "hi"}) + "\n" for i in range(2)
    )
    (tmp_path / "requests.jsonl").write_text(requests)
    state = str(tmp_path / "state.duckdb")
    out = _policyctl(tmp_path, "eval", "--policy", str(policy), "--state", state,
                     "requests.jsonl")  # fmt: skip
    assert all(json.loads(line)["route"] == "chat" for line in out.splitlines())
    con = duckdb.connect(state)
    rows = con.execute(
        "SELECT request_id, route, provider, shadow, shadow_of FROM decisions"
        " ORDER BY decided_at, shadow NULLS LAST"
    ).fetchall()
    con.close()
    served = [r for r in rows if r[3] is None]
    shadows = [r for r in rows if r[3]]
    assert [(r[0], r[1]) for r in served] == [("r0", "chat"), ("r1", "chat")]
    assert sorted((r[0], r[1], r[4]) for r in shadows) == [
        ("r0", "candidate", "r0"),
        ("r1", "candidate", "r1"),
    ]
    # the shadow's dry runs left anthropic's 1 per hour whole for a served request
    policy.write_text(SHADOW.replace("limit user 2 per 1m\n", "").replace(
        "prefer openai", "prefer anthropic"))  # fmt: skip
    out = _policyctl(tmp_path, "eval", "--policy", str(policy), "--state", state, "-",
                     stdin=json.dumps({"id": "d", "user": "x", "prompt": "hi"}))  # fmt: skip
    assert json.loads(out)["provider"] == "anthropic"


def test_explain_shows_the_shadow_decision(tmp_path: Path) -> None:
    """`--explain` adds the shadow's decision (JSON: `shadow`, with its own trace; table: a
    `shadow` row); without it the answer is the served decision alone."""
    policy = tmp_path / "shadow.policy"
    policy.write_text(SHADOW.replace("limit user 2 per 1m\n", ""))
    request = json.dumps({"id": "r", "user": "bob", "prompt": "hi"})
    args = ("eval", "--policy", str(policy), "--state", "memory://")
    plain = json.loads(_policyctl(tmp_path, *args, "-", stdin=request))
    assert "shadow" not in plain and "trace" not in plain
    explained = json.loads(_policyctl(tmp_path, *args, "--explain", "-", stdin=request))
    shadow = explained["shadow"]
    assert explained["route"] == "chat" and explained["provider"] == "openai"
    assert shadow["route"] == "candidate" and shadow["provider"] == "anthropic"
    assert shadow["request_id"] == "r" and "shadow" not in shadow
    assert [s["step"] for s in shadow["trace"]][-1] == "choose"
    DecisionSchema.model_validate(explained)
    table = _policyctl(tmp_path, *args, "--explain", "--format", "table", "-", stdin=request)
    row = next(line for line in table.splitlines() if line.startswith("shadow "))
    assert f"candidate → anthropic/{shadow['model']} (" in row
    assert row.endswith("; logged, not served)")
    table = _policyctl(tmp_path, *args, "--format", "table", "-", stdin=request)
    assert not any(line.startswith("shadow ") for line in table.splitlines())


@pytest.mark.parametrize(
    "text,code",
    [
        (SHADOW.replace("shadow route candidate", "shadow route candidat"), "E0267"),
        (SHADOW.replace("shadow route candidate", "shadow route chat"), "E0267"),
        (
            SHADOW.replace("shadow route candidate", "shadow route candidate\n shadow route chat"),
            "E0268",
        ),
        (SHADOW.replace("prefer anthropic", "shadow route chat"), "E0269"),
    ],
)
def test_shadow_checker_errors(text: str, code: str) -> None:
    with pytest.raises(PolicyError) as err:
        _program(text)
    assert code in str(err.value)


def test_the_language_server_explains_split_and_shadow() -> None:
    from engine.lsp import knowledge

    text = POLICY + "\nroute other {\n    shadow route candidate\n}\n"
    shown = knowledge.hover(text, text.index("split") + 2, None)
    assert shown is not None and "sticky experiment" in shown.markdown
    assert (shown.start, shown.end) == (text.index("split"), text.index("split") + 5)
    shown = knowledge.hover(text, text.index("shadow"), None)
    assert shown is not None and "never served" in shown.markdown
    # a word inside a string or another word is not the keyword
    assert knowledge.hover('deny "split" when request.user == "x"', 7, None) is None
