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
from itertools import pairwise
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
    import gc

    state = _write_log(tmp_path)
    new, old = tmp_path / "new.policy", tmp_path / "old.policy"
    thresholds = gc.get_threshold()
    same = _both(str(state), old)
    assert gc.get_threshold() == thresholds  # the replay's own, restored
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


MATRIX_POLICY = """
route cheap when request.metadata.tier == "cheap" {
    strategy cost
}
route fast when request.metadata.tier == "fast" {
    strategy latency
    prefer anthropic
}
route balanced when request.metadata.tier == "balanced" {
    strategy weighted(latency: 10%, cost: 10%, success: 70%, quality: 10%)
    min_samples 10
}
"""


ranked_routes: set[str] = set()  # the routes `_rows_ranked` ranked on the matrix


def _rows_ranked(engine: PolicyEngine, clock: _SimClock, requests: list[dict]) -> list[tuple]:
    """Each request's ranking (positions, costs, latencies, or the no-model reason) on the
    matrix and one by one, as pairs."""
    from engine.replay.batch import Asked, BatchSide, _ranked

    side = BatchSide(engine, lambda at: setattr(clock, "now", at))
    rows = []
    for i, request in enumerate(requests):
        row = side._read(Asked(clock.now, request, None), i)
        if row is not None:  # not a request the fast path prices (tier prices)
            assert row.matrix
            rows.append(row)
    assert len(rows) > len(requests) * 0.6
    by_route: dict[str, list] = {}
    for row in rows:
        by_route.setdefault(row.route.name, []).append(row)
    ranked_routes.update(by_route)
    pairs = []
    for group in by_route.values():
        assert _ranked(group)
        for row in group:
            if row.rest is not None:  # the whole ranking, as the limiter would read it
                list(row.options(row.route.table))
            if row.ranked is None:
                side._rank_one(row)
                pairs.append((row.lean, row.lean))
                continue
            got = (list(row.ranked), list(row.costs), list(row.lats))
            row.ranked = row.costs = row.lats = None
            side._rank_one(row)
            pairs.append((got, (row.ranked, row.costs, row.lats)))
    return pairs


def test_the_matrix_ranks_as_the_evaluator_ranks(tmp_path: Path) -> None:
    (tmp_path / "m.policy").write_text(MATRIX_POLICY)
    clock = _SimClock(1_800_000_000.0)
    engine = PolicyEngine(tmp_path / "m.policy", clock=clock)
    rng = random.Random(3)
    routes = {r.name: r for r in engine.program.routes}
    assert len(routes["cheap"].table.keys) > 50

    def requests(n: int) -> list[dict]:
        out = []
        for i in range(n):
            request: dict = {
                "id": f"m{i}",
                "prompt": "word " * rng.choice((1, 10, 400)),
                "metadata": {"tier": rng.choice(("cheap", "fast", "balanced", "default"))},
            }
            if rng.random() < 0.3:
                request["input_tokens"] = rng.choice((10, 150_000, 900_000, 3_000_000))
            for name, values in (
                ("max_tokens", (None, 50, 5000, 60_000, 200_000)),
                ("requires_tools", (None, True)),
                ("requires_vision", (None, True)),
                ("min_quality", (None, 0.5, 0.8, 0.95)),
                ("max_cost", (None, 0.0001, 0.01)),
                ("max_latency_ms", (None, 800, 2000)),
            ):
                value = rng.choice(values)
                if value is not None:
                    request[name] = value
            out.append(request)
        return out

    pairs = _rows_ranked(engine, clock, requests(400))  # on the catalog's priors
    for n, model in enumerate(list(routes["fast"].table.keys)[::3]):  # measured
        provider, _, name = model.partition("/")
        failures = (0, 2, 4, 8)[n % 4]  # success rates 1, 0.95, 0.9 and 0.8 (the failures
        for i in range(40):  # first: no model ends in a cooldown)
            engine.record_outcome(provider, name, latency_ms=rng.uniform(100, 3000),
                                  success=i >= failures)  # fmt: skip
    clock.now += 5
    pairs += _rows_ranked(engine, clock, requests(400))
    assert all(got == want for got, want in pairs)
    kinds = {type(got) for got, _ in pairs}
    assert tuple in kinds  # ranked rows, and rows with no eligible model
    assert any(got is not None and type(got) is not tuple for got, _ in pairs)
    assert any(type(got) is tuple and len(got[0]) > 4 for got, _ in pairs)  # past the head
    assert len({row_route for row_route in ranked_routes}) == 4


BLOCK_POLICY = """
route fast when request.metadata.tier == "fast" {
    strategy latency
    min_samples 5
}
"""


def test_a_latency_route_ranked_by_blocks_ranks_as_the_evaluator_ranks(tmp_path: Path) -> None:
    """Templated requests of a few shapes (their `max_tokens`, requirements, quality floor,
    latency cap) with their own token counts, on the catalog's priors (ties of latency at
    the HEAD-th: each row's costs break them) and on measured latencies: `_by_blocks` ranks
    them all, in blocks of many rows, each row as `_rank_one` ranks it (the whole order too,
    as the limiter reads it past the head)."""
    from engine.replay.batch import HEAD, Asked, BatchSide, _by_blocks

    (tmp_path / "b.policy").write_text(BLOCK_POLICY)
    clock = _SimClock(1_800_000_000.0)
    engine = PolicyEngine(tmp_path / "b.policy", clock=clock)
    rng = random.Random(7)
    shapes = [
        {},
        {"max_tokens": 50},
        {"max_tokens": 5000, "requires_tools": True},
        {"min_quality": 0.8},
        {"max_latency_ms": 1500, "max_tokens": 300},
        {"requires_vision": True},
    ]

    def rows_of(n: int) -> list:
        side = BatchSide(engine, lambda at: setattr(clock, "now", at))
        rows = []
        for i in range(n):
            request = {
                "id": f"b{i}",
                "input_tokens": rng.choice((1, 7, 120, 999, 4000, 33_333)),
                "metadata": {"tier": "fast"},
                **rng.choice(shapes),
            }
            row = side._read(Asked(clock.now, request, None), i)
            assert row is not None and row.own is not None  # a template's row
            rows.append(row)
        return rows

    def check(rows: list) -> tuple[int, int, int]:
        side = BatchSide(engine, lambda at: setattr(clock, "now", at))
        window = rows[0].route.table.min_context_window
        big = [r for r in rows if r.tokens + (r.env["max_tokens"] or 0) > window]
        assert big and _by_blocks(rows) == big  # left to the matrix: some window is short
        assert all(r.ranked is None for r in big)
        rows = [r for r in rows if r not in big]
        blocks = len({(id(r.env), id(r.columns)) for r in rows})
        ties = past = 0
        for row in rows:
            if row.ranked is None:
                side._rank_one(row)
                assert row.lean is not None
                continue
            if row.rest is not None:  # the whole ranking, as the limiter would read it
                list(row.options(row.route.table))
                past += 1
            got = (list(row.ranked), list(row.costs), list(row.lats))
            lats = got[2][: HEAD + 1]  # a tie of latency in the head or at its edge
            ties += any(a == b for a, b in pairwise(lats))
            row.ranked = row.costs = row.lats = None
            side._rank_one(row)
            assert got == (row.ranked, row.costs, row.lats)
        return blocks, ties, past

    rows = rows_of(300)  # on the catalog's priors
    blocks, ties, past = check(rows)
    assert blocks < len(rows) / 10 and ties > 0 and past > 0
    table = engine.program.routes[0].table
    # measured: eight models tied at the fastest latency, in an order of cost that is not
    # their route order (the dearest first), the rest slower
    dearest = sorted(range(len(table.keys)), key=lambda p: -table.input_prices[p])[:8]
    assert dearest != sorted(dearest)
    for p, model in enumerate(table.keys):
        provider, _, name = model.partition("/")
        latency = 300 if p in dearest else (900, 1200)[p % 2]
        for _ in range(10):
            engine.record_outcome(provider, name, latency_ms=latency, success=True)
    clock.now += 5
    rows = rows_of(300)
    assert all(row.columns is not None for row in rows)
    blocks, ties, past = check(rows)
    assert blocks < len(rows) / 10 and ties > 0 and past > 0


def test_a_shadow_route_changes_nothing_the_lean_paths_skip(tmp_path: Path) -> None:
    """The full path decides a served route's shadow (a dry limit check, no round-robin
    turn); the lean paths do not: the same report."""
    state = _write_log(tmp_path)
    shadowed = tmp_path / "shadow.policy"
    shadowed.write_text(
        OLD.replace("prefer openai\n}", "prefer anthropic\n    shadow route rr\n}")
        + 'route rr when request.region == "never" {\n    strategy round-robin\n}\n'
    )
    report = _both(str(state), shadowed)
    assert report["changed"] > 0 and report["before"]["denied"] > 0


MEMO_POLICY = """
deny "blocked region" when request.region == "blocked"
route flagged when request.metadata.flag == true { strategy latency }
route numbered when request.metadata.flag == 1 { strategy cost }
route tools when request.requires_tools { strategy cost }
"""


def _memo_requests(n: int) -> list[dict]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        request: dict = {
            "id": f"q{i}",
            "user": f"u{i}",
            "prompt": "word " * rng.randrange(1, 50),
            "metadata": {"flag": rng.choice((True, 1, 1.0, "1", False))},
        }
        if rng.random() < 0.3:
            request["requires_tools"] = True
        if rng.random() < 0.1:
            request["region"] = "blocked"
        out.append(request)
    return out


def _signatures(requests: list[dict]) -> set[tuple]:
    return {
        (type(r["metadata"]["flag"]), r["metadata"]["flag"], r.get("region"),
         r.get("requires_tools", False))
        for r in requests
    }  # fmt: skip


def _decided(policy: Path, requests: list[dict]) -> tuple[list[Lean], list[Lean], object]:
    """The batch side's lean decisions and `evaluate_lean`'s one by one, and the side."""
    from engine.replay.batch import Asked, BatchSide

    clock = _SimClock(1_800_000_000.0)
    batch = PolicyEngine(policy, clock=clock)
    single = PolicyEngine(policy, clock=clock)
    side = BatchSide(batch, lambda at: setattr(clock, "now", at))
    got = side.decide([Asked(clock.now, dict(r), None) for r in requests], lambda e, o: None)
    want = [single.evaluate_lean(dict(r)) for r in requests]
    return got, want, side


def test_route_conditions_are_evaluated_once_per_distinct_signature(tmp_path: Path) -> None:
    """The deny rules and route conditions run once per distinct tuple of the request
    fields the policy reads (typed: `true`, `1`, `1.0` and `"1"` are four), with the same
    decisions as one by one."""
    policy = tmp_path / "memo.policy"
    policy.write_text(MEMO_POLICY)
    requests = _memo_requests(600)
    got, want, side = _decided(policy, requests)
    assert got == want
    assert {lean.route for lean in got} >= {"flagged", "numbered", "tools", "default"}
    assert any(not lean.allowed for lean in got)  # the deny rule fired
    distinct = _signatures(requests)
    assert side.conditions == len(distinct) < len(requests)  # type: ignore[attr-defined]


def test_conditions_on_prompt_features_are_evaluated_per_request(tmp_path: Path) -> None:
    """A policy whose conditions read a prompt feature memoises nothing: the conditions run
    for every request."""
    policy = tmp_path / "text.policy"
    policy.write_text(MEMO_POLICY + "route long when request.text.tokens > 30 { strategy cost }\n")
    requests = _memo_requests(200)
    got, want, side = _decided(policy, requests)
    assert got == want
    assert side.reads is None and side.conditions == len(requests)  # type: ignore[attr-defined]


def _features(n: int, rng: random.Random) -> list[dict]:
    """Logged request features (as a replay reads them back): a few shapes, each request
    its own id, user, IP and token estimate."""
    out = []
    for i in range(n):
        request: dict = {
            "user": f"user-{rng.randrange(50)}",
            "ip": f"10.0.{rng.randrange(4)}.{rng.randrange(256)}",
            "input_tokens": rng.randrange(1, 5000),
            "metadata": {"flag": rng.choice((True, 1, 1.0, "1"))},
            "id": f"f{i}",
        }
        if rng.random() < 0.5:
            request["max_tokens"] = 256
        if rng.random() < 0.3:
            request["requires_tools"] = True
        out.append(request)
    return out


def _shape(request: dict) -> tuple:
    rest = {k: v for k, v in request.items() if k not in ("id", "user", "ip", "input_tokens")}
    return tuple((k, type(v), json.dumps(v)) for k, v in rest.items())


def test_an_environment_is_built_once_per_distinct_shape() -> None:
    """`fast_env` runs once per distinct shape of a logged request (its fields but the id,
    user, IP and token estimate, each value with its type); every environment equals
    `env_of`'s of the request; a request whose own fields fail a check, or with a null
    field, goes through `env_of` whole."""
    from engine.replay.batch import _Envs
    from engine.routing.request import RequestError, env_of

    requests = _features(800, random.Random(8))
    envs = _Envs()
    for request in requests:
        got, want = envs.env(dict(request), None), env_of(dict(request))
        assert got.pop("conversation").body == want.pop("conversation").body == request
        assert got == want
    distinct = {_shape(r) for r in requests}
    assert 8 <= len(distinct) < 30
    assert envs.built == len(distinct) and envs.whole == 0
    odd = [
        {"id": "a", "ip": "010.1.1.1", "input_tokens": 3},  # an IP fast_env does not take
        {"id": "b", "ip": "10.1.1.1", "input_tokens": 3},  # a new shape: a template
        {"id": "c", "user": "\ud800", "input_tokens": 3},  # a lone surrogate
        {"id": "d", "input_tokens": -1},
        {"id": "e", "input_tokens": 3, "metadata": {"flag": None}},
        {"id": "f", "input_tokens": 3.0},
        {"id": "g", "prompt": "no estimate"},
    ]
    for request in odd:
        try:
            want = env_of(dict(request))
        except RequestError as err:
            with pytest.raises(RequestError) as raised:
                envs.env(dict(request), None)
            assert str(raised.value) == str(err)
            continue
        got = envs.env(dict(request), None)
        assert got.pop("conversation").body == want.pop("conversation").body
        assert got == want
    assert envs.whole == len(odd) - 1  # all but `b`


@pytest.mark.parametrize(
    ("limits", "fast"),
    [
        ("limit user 20 per 1m\nlimit global 60 per 10s\n", True),
        ("limit user tokens 20000 per 1m\n", False),  # tokens: the limiter, every time
    ],
)
def test_request_limits_admitted_by_the_store_alone(
    tmp_path: Path, limits: str, fast: bool
) -> None:
    """Plain request-count limits: a request whose buckets all have room is admitted by the
    memory store's `consume_all` without the limiter's verdict (`fast_limits` of them, all
    the allowed); a denied one is asked of the limiter; the decisions, in time order, are
    `evaluate_lean`'s one by one. Other limits are the limiter's alone."""
    from engine.replay.batch import Asked, BatchSide

    policy = tmp_path / "limits.policy"
    policy.write_text(MEMO_POLICY + limits)
    rng = random.Random(4)
    requests = _memo_requests(500)
    times = [1_800_000_000.0 + i * 0.05 for i in range(len(requests))]
    for request in requests:
        request["user"] = f"u{rng.randrange(12)}"
    clock = _SimClock(times[0])
    side = BatchSide(PolicyEngine(policy, clock=clock), lambda at: setattr(clock, "now", at))
    got = side.decide(
        [Asked(at, dict(r), None) for at, r in zip(times, requests, strict=True)],
        lambda e, o: None,
    )
    single = PolicyEngine(policy, clock=clock)
    want = []
    for at, request in zip(times, requests, strict=True):
        clock.now = at
        want.append(single.evaluate_lean(dict(request)))
    assert got == want
    allowed = sum(lean.allowed for lean in got)
    limited = sum(lean.denied not in (None, "blocked region") for lean in got)
    assert limited > 10 and allowed > 100
    assert side.fast_limits == (allowed if fast else 0)


def test_a_chunk_is_counted_as_its_decisions_one_by_one() -> None:
    """`_count_all` (a chunk's verdicts folded) makes the report `_count` makes of them one
    by one: the same sums to the last bit (added in the same order), hours, model counts,
    changes and examples; in time order and out of it."""
    from engine.analytics.decision_log import LoggedDecision
    from engine.replay.run import ReplayReport, Verdict, _count, _count_all

    rng = random.Random(6)
    verdicts = [
        Verdict(True, "r", f"p/m{i}", None, rng.random() / 7, rng.uniform(100, 900), i % 3 > 0)
        for i in range(4)
    ] + [Verdict(False, "r", None, "user", None, None, False)]
    for shuffled in (False, True):
        ats = sorted(1_800_000_000.0 + rng.uniform(0, 4 * 3600) for _ in range(3000))
        if shuffled:
            rng.shuffle(ats)
        decisions = [
            LoggedDecision(at, f"d{i}", True, "r", None, None, None, None, None, None)
            for i, at in enumerate(ats)
        ]
        befores = [rng.choice(verdicts) for _ in ats]
        afters = [rng.choice((b, *verdicts)) for b in befores]
        one, folded = ReplayReport(), ReplayReport()
        for d, before, after in zip(decisions, befores, afters, strict=True):
            _count(one, d.at, d.request_id, before, after)
        for start in range(0, len(ats), 700):  # chunks
            end = start + 700
            _count_all(folded, decisions[start:end], befores[start:end], afters[start:end])
        assert len(one.hours) >= 4 and one.changed > 100
        assert folded == one
        assert list(folded.hours) == list(one.hours)


@pytest.mark.parametrize(
    "extra", ["", 'route vip when request.user == "user-3" { strategy cost }\n']
)
def test_a_shapes_route_is_chosen_once(tmp_path: Path, extra: str) -> None:
    """Logged requests whose conditions read only fields of their shape take the route
    chosen for the shape's first request (a route per shape, no signature built per
    request); a policy that reads the user chooses per signature. The decisions are
    `evaluate_lean`'s one by one."""
    from engine.replay.batch import Asked, BatchSide

    policy = tmp_path / "shapes.policy"
    policy.write_text(MEMO_POLICY + extra)
    requests = _features(600, random.Random(9))
    clock = _SimClock(1_800_000_000.0)
    side = BatchSide(PolicyEngine(policy, clock=clock), lambda at: setattr(clock, "now", at))
    got = side.decide([Asked(clock.now, dict(r), None) for r in requests], lambda e, o: None)
    single = PolicyEngine(policy, clock=clock)
    assert got == [single.evaluate_lean(dict(r)) for r in requests]
    shapes = {_shape(r) for r in requests}
    assert side.envs.built == len(shapes) and side.envs.whole == 0
    if extra:
        assert side.shape_routes is None
        assert {lean.route for lean in got} >= {"vip", "flagged", "numbered"}
    else:
        assert side.shape_routes is not None and len(side.shape_routes) == len(shapes)
        assert side.conditions < len(shapes)  # shapes of one signature share its route


def test_an_environment_is_made_only_when_asked(tmp_path: Path) -> None:
    """A logged request of a known shape is ranked and admitted on its template and its own
    fields: its environment (and its logged conversation) is made only when something asks
    for it whole: the limiter's check of a request the store's fast check did not admit, a
    denial. The decisions are `evaluate_lean`'s one by one, on the conversation
    `logged_conversation` makes; `logged_conversation` takes out `LOGGED_PROMPT` alone."""
    from engine.replay.batch import LOGGED_PROMPT, Asked, BatchSide
    from engine.routing.request_log import logged_conversation

    fields = {name: {} for name in LOGGED_PROMPT} | {"format": "native", "other": 1}
    logged_conversation(fields)
    assert fields == {"other": 1}
    policy = tmp_path / "made.policy"
    policy.write_text(MEMO_POLICY + "limit user 8 per 1m\n")
    requests = _features(600, random.Random(12))
    for request in requests:
        request["format"] = "native"
        request["text"] = {"chars": len(request["id"])}
    times = [1_800_000_000.0 + i * 0.05 for i in range(len(requests))]
    clock = _SimClock(times[0])
    side = BatchSide(PolicyEngine(policy, clock=clock), lambda at: setattr(clock, "now", at))
    got = side.decide(
        [Asked(at, dict(r), None, logged=True) for at, r in zip(times, requests, strict=True)],
        lambda e, o: None,
    )
    single = PolicyEngine(policy, clock=clock)
    want = []
    for at, request in zip(times, requests, strict=True):
        clock.now = at
        one = dict(request)
        conversation = logged_conversation(one)
        want.append(single.evaluate_lean(one, conversation=conversation))
    assert got == want
    envs = side.envs
    limited = sum(lean.denied == "user" for lean in got)
    assert limited > 50 and side.fast_limits > 300
    assert side.single == 0 and envs.whole == 0
    # the rows the fast check did not admit (the limiter asked: the denials) and nothing else
    assert envs.made == envs.conversations == len(requests) - side.fast_limits


def test_measured_columns_read_by_position_equal_the_walk_of_every_model(tmp_path: Path) -> None:
    """`Measured` reads a snapshot with fewer models than the route by position, and one
    with as many or more model by model: the same columns either way (a snapshot's models
    outside the route change nothing)."""
    from engine.routing.evaluator import Measured
    from engine.routing.metrics import ModelStats

    (tmp_path / "m.policy").write_text(
        "route r {\n    strategy weighted\n    min_samples 5\n"
        "    degraded when model.p95 > 1500ms\n}\n"
    )
    route = PolicyEngine(tmp_path / "m.policy").program.routes[0]
    keys = route.table.keys
    assert len(keys) > 20
    rng = random.Random(11)
    watched = 0
    for _ in range(20):
        stats = {}
        for key in rng.sample(keys, 8):  # in no particular order
            samples = rng.choice((0, 3, 5, 40))
            stats[key] = ModelStats(
                samples, 400.0, rng.uniform(200, 3000), 3100.0, rng.choice((1.0, 0.99, 0.3)),
                0.001, rng.choice((0, 1, 5)), 1_800_000_000.0, 1_800_000_000.0,
            )  # fmt: skip
        any_stats = next(iter(stats.values()))
        padded = {f"elsewhere/{i}": any_stats for i in range(len(keys))} | stats
        assert len(stats) < len(keys) <= len(padded)
        by_position, walked = Measured(route, stats), Measured(route, padded)
        for name in ("lats", "rates", "samples", "watch", "failing", "policy_failing"):
            assert getattr(by_position, name) == getattr(walked, name), name
        watched += bool(by_position.watch)
    assert watched  # models watched (degraded, failing or past their failures) were compared


def test_a_weighted_route_with_models_in_cooldown_ranks_as_the_evaluator_ranks(
    tmp_path: Path,
) -> None:
    """A `weighted` route's bases are computed per block (one snapshot, one set of models
    dropped): with the slowest measured models in cooldown (dropped, so the latency spread
    is the eligible models' alone) and rows with a latency cap of their own (ranked apart
    from the blocks), each row ranks as `_rank_one` ranks it."""
    (tmp_path / "w.policy").write_text(
        "route balanced {\n    strategy weighted(latency: 50%, cost: 20%, success: 30%)\n"
        "    min_samples 2\n    cooldown after 2 failures for 1m\n}\n"
    )
    clock = _SimClock(1_800_000_000.0)
    engine = PolicyEngine(tmp_path / "w.policy", clock=clock)
    rng = random.Random(5)
    keys = list(engine.program.routes[0].table.keys)
    for n, model in enumerate(keys[::4]):
        provider, _, name = model.partition("/")
        slow = n % 3 == 0  # the slowest, ending in two failures: in cooldown
        for i in range(6):
            latency = 9000.0 + i if slow else rng.uniform(100, 3000)
            engine.record_outcome(provider, name, latency_ms=latency, success=not slow or i < 4)
    clock.now += 5

    def requests(n: int) -> list[dict]:
        out = []
        for i in range(n):
            request: dict = {"id": f"w{i}", "prompt": "word " * rng.choice((1, 10, 400))}
            if rng.random() < 0.3:  # its own eligibility: not its block's
                request["max_latency_ms"] = rng.choice((1500, 2500))
            out.append(request)
        return out

    pairs = _rows_ranked(engine, clock, requests(300))
    assert all(got == want for got, want in pairs)
    assert sum(type(got) is tuple for got, _ in pairs) > 200
