"""`policyctl replay`: a seeded log written by a real engine on a DuckDB state file (a fake
clock, per-user limits that deny, recorded outcomes), decided again through the CLI in a
subprocess, from the state file and from its Parquet export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import duckdb
import pytest

from engine import PolicyEngine
from engine.units import format_money

START = 1_800_000_000.0
OLD = """
route tools when request.requires_tools {
    strategy cost
    prefer openai
}
route eu when request.region == "eu" {
    strategy cost
    prefer gemini
}
limit user 5 per 1m
"""
NEW = OLD.replace("prefer openai", "prefer anthropic")  # moves the tools route only


class _Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _write_log(tmp_path: Path, n: int = 400, **engine_options: object) -> Path:
    """A log of `n` requests from 20 users, one every 0.5 s, with outcomes (seeded)."""
    (tmp_path / "old.policy").write_text(OLD)
    (tmp_path / "new.policy").write_text(NEW)
    state = tmp_path / "log.duckdb"
    clock, rng = _Clock(), random.Random(11)
    with PolicyEngine(tmp_path / "old.policy", state=str(state), clock=clock,
                      **engine_options) as engine:  # type: ignore[arg-type]  # fmt: skip
        for i in range(n):
            clock.now += 0.5
            request: dict = {"id": f"r{i}", "user": f"u{rng.randrange(20)}",
                             "prompt": "word " * rng.randrange(1, 80)}  # fmt: skip
            if rng.random() < 0.3:
                request["requires_tools"] = True
            if rng.random() < 0.3:
                request["region"] = "eu"
            decision = engine.evaluate(request)
            if decision.allowed:
                latency, success = rng.uniform(200, 2500), rng.random() > 0.03
                engine.record(decision, latency_ms=latency, success=success,
                              output_tokens=rng.randrange(5, 400))  # fmt: skip
    return state


def _replay(tmp_path: Path, *args: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--format", "json", *args], cwd=tmp_path,
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _logged(state: Path) -> tuple[list[tuple], dict[str, float]]:
    con = duckdb.connect(str(state), read_only=True)
    decisions = con.execute(
        "SELECT request_id, allowed, route, provider, model, denied_scope FROM decisions"
        " ORDER BY decided_at"
    ).fetchall()
    means = dict(
        con.execute(
            "SELECT provider || '/' || model, avg(cost) FROM outcomes GROUP BY ALL"
        ).fetchall()
    )
    con.close()
    return decisions, means


def test_the_same_policy_changes_nothing_and_reproduces_the_denials(tmp_path: Path) -> None:
    state = _write_log(tmp_path)
    decisions, means = _logged(state)
    denied = sum(not d[1] for d in decisions)
    assert denied > 20  # the user limit binds in this log
    report = _replay(tmp_path, "--policy", "old.policy", "--from", str(state))
    assert report["requests"] == report["replayed"] == 400
    assert report["changed"] == 0 and report["by_model"] == []
    assert report["limit_warmup"] == 0  # no --since: the log is all the traffic there was
    assert report["after"]["denied"] == report["before"]["denied"] == denied
    assert report["denials_added"] == report["denials_removed"] == {}
    # the projected cost: each served decision at its model's measured mean cost
    expected = sum(means[f"{d[3]}/{d[4]}"] for d in decisions if d[1])
    assert report["before"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert report["after"]["cost"] == pytest.approx(expected, rel=1e-9)
    assert report["after"]["from_priors"] == 0


def test_moving_one_route_changes_exactly_its_traffic(tmp_path: Path) -> None:
    state = _write_log(tmp_path)
    decisions, _ = _logged(state)
    tools = [d for d in decisions if d[2] == "tools" and d[1]]
    assert tools and all(d[3] == "openai" for d in tools)
    report = _replay(tmp_path, "--policy", "new.policy", "--from", str(state))
    assert report["changed"] == len(tools)
    assert report["changed_share"] == pytest.approx(len(tools) / 400)
    assert report["by_route"] == {"tools": len(tools)}
    (pair,) = report["by_model"]
    assert pair["before"].startswith("openai/") and pair["after"].startswith("anthropic/")
    assert pair["examples"] == [d[0] for d in tools[:3]]
    # anthropic was never measured in this log: those decisions are projected from estimates
    assert report["after"]["from_priors"] == len(tools)
    assert report["before"]["from_priors"] == 0
    # against the old set as a baseline, the same changes
    based = _replay(tmp_path, "--policy", "new.policy", "--baseline", "old.policy",
                    "--from", str(state))  # fmt: skip
    assert based["changed"] == len(tools) and based["baseline"] == "old.policy"
    # from the Parquet export, the same report
    export = subprocess.run(
        [sys.executable, "-m", "engine", "log", "export", "--state", str(state),
         "-o", str(tmp_path / "part-1.parquet")], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    parquet = _replay(
        tmp_path, "--policy", "new.policy", "--from", str(tmp_path / "part-*.parquet")
    )
    assert parquet == report


def test_the_table_gives_the_projected_cost_and_latency_change_of_the_json(
    tmp_path: Path,
) -> None:
    """The table's `change` line says how the projected cost and the mean latency move,
    with the figures of the JSON report of the same replay."""
    state = _write_log(tmp_path)
    report = _replay(tmp_path, "--policy", "new.policy", "--from", str(state))
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    table = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--policy", "new.policy", "--from",
         str(state)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    before, after = report["before"], report["after"]
    cost = after["cost"] - before["cost"]
    latency = after["mean_latency_ms"] - before["mean_latency_ms"]
    assert latency != 0  # anthropic's estimates are not openai's measured means
    sign = "+" if cost >= 0 else "-"
    assert table.stdout.splitlines()[-1] == (
        f"  change  cost {sign}{format_money(abs(cost))}, mean latency {latency:+,.0f} ms"
    )


def test_a_window_and_what_cannot_be_replayed(tmp_path: Path) -> None:
    state = _write_log(tmp_path, n=120, log_requests="off")
    report = _replay(tmp_path, "--policy", "new.policy", "--from", str(state))
    assert report["requests"] == report["not_replayable"] == 120
    assert report["replayed"] == 0 and report["changed"] == 0
    since = "2027-01-15T08:00:30Z"  # START + 30 s
    assert START + 30 == 1_800_000_030.0
    windowed = _replay(tmp_path, "--policy", "new.policy", "--from", str(state),
                       "--since", since)  # fmt: skip
    assert windowed["requests"] == 61  # request i is at START + 0.5 (i + 1): i = 59 … 119


def test_hashed_keys_are_flagged_where_literal_keys_matter(tmp_path: Path) -> None:
    state = _write_log(tmp_path, n=60, hash_keys=True)
    plain = _replay(tmp_path, "--policy", "old.policy", "--from", str(state))
    assert plain["hashed_keys"] == 0 and plain["changed"] == 0  # limits replay per key
    (tmp_path / "vip.policy").write_text(OLD + 'limit user "u3" 100 per 1m\n')
    flagged = _replay(tmp_path, "--policy", "vip.policy", "--from", str(state))
    assert flagged["hashed_keys"] == 60


def test_bad_sources_and_flags(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text(OLD)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", "replay", "--policy", "p.policy", *args],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = run("--from", "missing.duckdb")
    assert done.returncode == 2 and "`missing.duckdb`: no such state file" in done.stderr
    done = run("--from", "none-*.parquet")
    assert done.returncode == 2 and "no Parquet file matches" in done.stderr
    done = run("--from", "x.duckdb", "--since", "2026-12-02", "--until", "2026-12-01")
    assert done.returncode == 2 and "`--until` must come after `--since`" in done.stderr
    done = run("--since", "yesterday")
    assert done.returncode == 2 and "`--since` must be a date" in done.stderr
    (tmp_path / "other.duckdb").write_text("not a database")
    done = run("--from", "other.duckdb")
    assert done.returncode == 2 and "`other.duckdb`:" in done.stderr


def test_projection_uses_measured_means_per_model(tmp_path: Path) -> None:
    """Hand check of the projection on a tiny log: two requests to one model with outcomes
    costing 1 and 3 cents project at 2 cents each."""
    (tmp_path / "p.policy").write_text("defaults { strategy cost }\n")
    state = tmp_path / "tiny.duckdb"
    clock = _Clock()
    costs: dict[str, list[float]] = defaultdict(list)
    with PolicyEngine(tmp_path / "p.policy", state=str(state), clock=clock) as engine:
        for i, cost in enumerate((0.01, 0.03)):
            clock.now += 1
            d = engine.evaluate({"id": f"t{i}", "prompt": "hi"})
            engine.record(d, latency_ms=100.0 * (i + 1), success=True, cost=cost)
            costs[f"{d.provider}/{d.model}"].append(cost)
    report = _replay(tmp_path, "--policy", "p.policy", "--from", str(state))
    assert len(costs) == 1
    assert report["after"]["cost"] == pytest.approx(0.04)
    assert report["after"]["mean_latency_ms"] == pytest.approx(150.0)


def test_a_jsonl_of_requests_in_any_format_against_a_baseline(tmp_path: Path) -> None:
    from _sdk_bodies import openai_chat

    (tmp_path / "old.policy").write_text(OLD)
    (tmp_path / "new.policy").write_text(NEW)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    lines = [
        json.dumps({"id": "n1", "user": "a", "prompt": "hi"}),
        json.dumps(
            openai_chat(
                model="gpt-4o-mini", tools=[tool], messages=[{"role": "user", "content": "call f"}]
            )
        ),
        "",
        json.dumps({"id": "bad", "max_tokens": -5}),
        json.dumps({"id": "t2", "user": "b", "requires_tools": True}),
    ]
    (tmp_path / "requests.jsonl").write_text("\n".join(lines) + "\n")
    report = _replay(tmp_path, "--policy", "new.policy", "--baseline", "old.policy",
                     "--from", "requests.jsonl")  # fmt: skip
    assert report["requests"] == 4 and report["invalid"] == 1 and report["replayed"] == 3
    # the wire body with tools and the native one both take the moved route
    assert report["changed"] == 2 and report["by_route"] == {"tools": 2}
    (pair,) = report["by_model"]
    assert pair["examples"] == ["line-2", "t2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--policy", "new.policy",
         "--from", "requests.jsonl"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "give --baseline" in done.stderr
    (tmp_path / "broken.jsonl").write_text('{"id": "a"}\n[1, 2]\n')
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--policy", "new.policy", "--baseline",
         "old.policy", "--from", "broken.jsonl"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "broken.jsonl:2: a request is a JSON object" in done.stderr


def _without_floats(report: dict) -> dict:
    """A report with its float totals left out (compared with approx apart) and what only
    a shard or a merge carries."""
    out = {k: v for k, v in report.items() if k not in ("shard", "merged_from", "hours")}
    for side in ("before", "after"):
        out[side] = {k: v for k, v in report[side].items()
                     if k not in ("cost", "mean_latency_ms", "latency_ms_total")}  # fmt: skip
    return out


def test_shards_of_a_per_user_log_merge_to_the_unsharded_report(tmp_path: Path) -> None:
    state = _write_log(tmp_path)
    whole = _replay(tmp_path, "--policy", "new.policy", "--from", str(state))
    assert whole["changed"] > 0 and whole["after"]["denied"] > 0
    names = []
    for k in (1, 2, 3):
        part = _replay(tmp_path, "--policy", "new.policy", "--from", str(state),
                       "--shard", f"{k}/3")  # fmt: skip
        assert part["shard"] == {"index": k, "count": 3}
        assert part["approximate"] == []  # only a per-user limit: every bucket whole
        assert 0 < part["requests"] < whole["requests"]
        (tmp_path / f"{k}.json").write_text(json.dumps(part))
        names.append(f"{k}.json")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "merge", *reversed(names), "--format",
         "json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    merged = json.loads(done.stdout)
    assert merged["merged_from"] == 3
    assert _without_floats(merged) == _without_floats(whole)
    for side in ("before", "after"):
        for key in ("cost", "mean_latency_ms", "latency_ms_total"):
            assert merged[side][key] == pytest.approx(whole[side][key], rel=1e-9)
    assert [h["hour"] for h in merged["hours"]] == [h["hour"] for h in whole["hours"]]
    for got, want in zip(merged["hours"], whole["hours"], strict=True):
        assert got["after"]["served"] == want["after"]["served"]
        assert got["after"]["cost"] == pytest.approx(want["after"]["cost"], rel=1e-9)
    # the table of a merge says what it is
    table = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "merge", *names], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert table.returncode == 0 and "(merged from 3 shards)" in table.stdout


def test_shards_mark_limits_they_split_and_merge_refuses_a_partial_set(tmp_path: Path) -> None:
    state = _write_log(tmp_path, n=80)
    (tmp_path / "global.policy").write_text(NEW + "limit global 100 per 1m\n")
    part = _replay(tmp_path, "--policy", "global.policy", "--from", str(state),
                   "--shard", "1/2")  # fmt: skip
    assert part["approximate"] == ["global"]
    (tmp_path / "1.json").write_text(json.dumps(part))
    (tmp_path / "whole.json").write_text(
        json.dumps(_replay(tmp_path, "--policy", "global.policy", "--from", str(state)))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", "replay", *args], cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    done = run("merge", "1.json")
    assert done.returncode == 2 and "shards missing: 2/2" in done.stderr
    done = run("merge", "1.json", "1.json")
    assert done.returncode == 2 and "are both shard 1/2" in done.stderr
    done = run("merge", "whole.json")
    assert done.returncode == 2 and "not the JSON report of a sharded replay" in done.stderr
    done = run("merge", "absent.json")
    assert done.returncode == 2 and "`absent.json`:" in done.stderr
    done = run("--policy", "global.policy", "--from", str(state), "--shard", "3/2")
    assert done.returncode == 2 and "`--shard` is K/N with 1 ≤ K ≤ N" in done.stderr
    done = run("--from", str(state))
    assert done.returncode == 2 and "`--policy` is required" in done.stderr
    done = run("--policy", "global.policy", "--from", str(state), "--shard", "1/2")
    assert "approximate: these limits are not kept per user" in done.stdout


def test_a_window_is_warmed_by_the_outcomes_before_it(tmp_path: Path) -> None:
    """Every decision's model answers in 5 s, so the live measurements push the latency
    strategy from model to model as the log goes on. Replayed from the middle, the same
    policy decides as the original only because the outcomes before `--since` warm it."""
    (tmp_path / "latency.policy").write_text("defaults { strategy latency }\n")
    state = tmp_path / "moving.duckdb"
    clock = _Clock()
    with PolicyEngine(tmp_path / "latency.policy", state=str(state), clock=clock) as engine:
        for i in range(300):
            clock.now += 0.5
            d = engine.evaluate({"id": f"m{i}", "prompt": "hello there"})
            engine.record(d, latency_ms=5000.0, success=True)
    decisions, _ = _logged(state)
    since = "2027-01-15T08:01:15Z"  # START + 75 s
    assert len({(d[3], d[4]) for d in decisions[149:]}) > 1  # still moving after it
    assert (decisions[149][3], decisions[149][4]) != (decisions[0][3], decisions[0][4])
    report = _replay(tmp_path, "--policy", "latency.policy", "--from", str(state),
                     "--since", since)  # fmt: skip
    assert report["requests"] == 151  # request i is at START + 0.5 (i + 1): i = 149 … 299
    assert report["changed"] == 0
    assert report["limit_warmup"] == 0  # no limit: nothing starts cold


def test_limits_near_the_start_of_a_window_are_flagged(tmp_path: Path) -> None:
    state = _write_log(tmp_path, n=400)
    since_s = START + 100
    report = _replay(tmp_path, "--policy", "old.policy", "--from", str(state),
                     "--since", "2027-01-15T08:01:40Z")  # fmt: skip
    # `limit user 5 per 1m`: the requests of the first minute are flagged (0.5 s apart)
    assert report["limit_window_s"] == 60.0
    assert report["limit_warmup"] == 120
    # the same policy differs from the log there first: its buckets started full
    first = min(at for pair in report["by_model"] for at in pair["examples_at"])
    assert since_s <= first < since_s + 60
