"""The replay's batch path (`replay(batch=True)`, the default) against the per-request path
(`--no-batch`): the same JSON report, parsed, on the replay tests' logs and on a log whose
traffic the simulator draws (users, templates, Poisson arrivals, agent sessions) and whose
outcomes its providers draw, written by a real engine on a DuckDB state file under a
policy with limits that deny, metrics-driven routing, round-robin and affinity."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.analytics.decision_log import read_decision_log, read_requests_jsonl
from engine.replay.report import as_json
from engine.replay.run import Shard, replay
from engine.routing.evaluator import Lean, lean_of
from engine.simulate.scenario import load_scenario
from engine.simulate.world import draw_arrivals

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_replay import OLD, _write_log  # noqa: E402

SIM_OLD = """
route code when request.requires_tools {
    strategy latency
    min_samples 5
    window 10m
}
route summary when request.max_tokens <= 512 {
    strategy round-robin
}
route chat when request.stream {
    strategy cost
    affinity by request.user for 10m
}
limit user 6 per 1m
limit global 40 per 10s
"""
# moves the code route to cost and the chat route's affinity off
SIM_NEW = SIM_OLD.replace("strategy latency", "strategy cost").replace(
    "    affinity by request.user for 10m\n", ""
)


def _both(log_source: str, policy: Path, baseline: Path | None = None, **kw: object) -> dict:
    """The JSON report of both paths, checked equal; the batch one returned."""
    reports = []
    for batch in (True, False):
        with read_decision_log(log_source) as log:
            report = replay(log, policy, baseline, batch=batch, **kw)  # type: ignore[arg-type]
        reports.append(json.loads(json.dumps(as_json(report))))
    assert reports[0] == reports[1]
    return reports[0]


def test_the_replay_tests_logs_give_the_same_report_on_both_paths(tmp_path: Path) -> None:
    state = _write_log(tmp_path)
    new, old = tmp_path / "new.policy", tmp_path / "old.policy"
    same = _both(str(state), old)
    assert same["replayed"] == 400 and same["changed"] == 0
    assert same["denials_added"] == {} and same["before"]["denied"] > 0  # limits denied
    moved = _both(str(state), new)
    assert moved["changed"] > 0
    against = _both(str(state), new, old)
    assert against["changed"] == moved["changed"]
    for k in (1, 2):
        _both(str(state), new, shard=Shard(k, 2))


def test_a_simulated_log_with_limits_metrics_round_robin_and_affinity(tmp_path: Path) -> None:
    scenario = load_scenario(ROOT / "examples" / "simulations" / "ab.yaml", requests=1500)
    arrivals = draw_arrivals(scenario.seed, scenario.requests, 20.0, scenario.traffic)
    (tmp_path / "old.policy").write_text(SIM_OLD)
    (tmp_path / "new.policy").write_text(SIM_NEW)
    state = tmp_path / "sim.duckdb"
    clock = _SimClock(arrivals[0].at)
    rng = random.Random(7)
    routes: set[str] = set()
    with PolicyEngine(tmp_path / "old.policy", state=str(state), clock=clock) as engine:
        for a in arrivals:
            clock.now = a.at
            request = dict(a.template.fields)
            request["id"] = f"sim-{a.index}"
            if a.user is not None:
                request["user"] = a.user
            decision = engine.evaluate(request)
            routes.add(decision.route)
            if not decision.allowed:
                continue
            provider = scenario.providers.get(f"{decision.provider}/{decision.model}")
            if provider is not None:
                latency, ok = provider.outcome(a.index, rng.gauss(0.0, 1.0), rng.random())
            else:
                latency, ok = rng.uniform(300, 3000), rng.random() > 0.02
            clock.now = a.at + latency / 1000.0 / 50  # before the next arrivals, mostly
            engine.record(decision, latency_ms=latency, success=ok,
                          output_tokens=a.template.output_tokens if ok else 0)  # fmt: skip
    assert {"code", "summary", "chat"} <= routes
    old, new = tmp_path / "old.policy", tmp_path / "new.policy"
    same = _both(str(state), old)
    assert same["replayed"] == 1500 and same["changed"] == 0
    assert same["before"]["denied"] > 0  # the limits deny some
    moved = _both(str(state), new)
    assert moved["changed"] > 0
    assert set(moved["by_route"]) <= {"code", "chat", "(denied before routing)"}
    _both(str(state), new, old)


class _SimClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def test_a_jsonl_source_gives_the_same_report_on_both_paths(tmp_path: Path) -> None:
    source = ROOT / "examples" / "requests" / "replay.jsonl"
    after, before = ROOT / "examples" / "diff" / "after", ROOT / "examples" / "diff" / "before"
    reports = []
    for batch in (True, False):
        with read_requests_jsonl(str(source)) as log:
            reports.append(json.loads(json.dumps(as_json(replay(log, after, before, batch=batch)))))
    assert reports[0] == reports[1] and reports[0]["changed"] == 2


def test_a_lean_decision_is_the_decision_it_stands_for(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text(OLD.replace("limit user 5 per 1m", "limit user 2 per 1m"))
    clock = _SimClock(1_800_000_000.0)
    full = PolicyEngine(tmp_path / "p.policy", clock=clock)
    lean = PolicyEngine(tmp_path / "p.policy", clock=clock)
    requests = [
        {"id": "a", "user": "u1", "prompt": "hi"},
        {"id": "b", "user": "u1", "prompt": "hi", "requires_tools": True},
        {"id": "c", "user": "u1", "prompt": "hi", "region": "eu"},  # the limit denies it
        {"id": "d", "user": "u2", "prompt": "hi", "max_tokens": 10**9},  # no eligible model
    ]
    kinds = set()
    for request in requests:
        clock.now += 1
        got = lean.evaluate_lean(request)
        want = lean_of(full.evaluate(request))
        assert isinstance(got, Lean) and got == want
        kinds.add(got.denied)
    assert kinds == {None, "user", "no_eligible_model"}


@pytest.mark.parametrize("flag", [[], ["--no-batch"]])
def test_the_cli_replays_on_either_path(tmp_path: Path, flag: list[str]) -> None:
    state = _write_log(tmp_path, 120)
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--format", "json", "--policy",
         str(tmp_path / "new.policy"), "--from", str(state), *flag],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    with read_decision_log(str(state)) as log:
        direct = json.loads(json.dumps(as_json(replay(log, tmp_path / "new.policy", batch=False))))
    assert report == direct and report["replayed"] == 120
