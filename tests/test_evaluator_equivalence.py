"""The routing fast path against the general path and against a plain reference ranking.

`evaluate` takes a shortcut when nothing is measured, no `require` reads the request and no
trace is asked for: it filters and ranks over the route's flat columns and builds nothing
for the models a decision does not show. These properties keep it honest:

- the shortcut and the general path (the one `--explain` takes) give the same decision,
  field for field, with nothing measured and with live metrics (outcomes arriving between
  decisions: measured latencies and success rates, unhealthy models, cooldowns; the
  shortcut reads a snapshot's columns, patched when only failure counts moved);
- the explain trace's full ranking is what a plain, obviously correct implementation of
  each strategy gives (sort by the measure, then the other measure, then catalog order),
  also over a catalog of copies where nearly everything ties;
- quality: over a catalog of copies with quality scores (some models without one), a
  route's `min_quality` floor, the request's `min_quality` and a `quality` factor decide
  on the shortcut as on the general path, and rank as the plain reference does.
"""

from __future__ import annotations

import functools
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from _design import design_engine, from_design
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.catalog.load import MAX_PRICE, MIN_PRICE
from engine.errors import PolicyctlError
from engine.language.program import CompiledRoute, Program
from engine.routing import evaluator as evaluator_module
from engine.routing.evaluator import EvalState, draw, evaluate, measured_columns
from engine.routing.metrics import LiveMetrics, ModelStats
from engine.routing.request import env_of
from engine.strategies import Pool, Ranking, Strategy, register, unregister
from engine.strategies.base import by_index

REPO = Path(__file__).resolve().parent.parent
# docs/language.md: "output is the request's `max_tokens`, else min(256, the model's
# `max_tokens`)" — the reference computes costs from that text, not the engine's helpers
DOCS_DEFAULT_OUTPUT_TOKENS = 256
CATALOG = REPO / "examples" / "policies" / "models.yaml"
STRATEGY_VALUES = (
    "latency",
    "cost",
    "weighted(latency: 60%, cost: 40%)",
    "weighted(success: 50%, cost: 50%)",
    "weighted(latency: 40%, cost: 30%, quality: 30%)",
    "model-specific",
    "round-robin",
    "failover",
)
CAPABILITY_BITS = {"vision": 1, "tools": 2, "json": 4, "streaming": 8}


class MeasuredNothing:
    """Says it has data, then has none for any model: forces the general path with results
    that must equal the shortcut's."""

    has_data = True

    def stats(self, model_key: str) -> ModelStats | None:
        return None


def copies_catalog(directory: Path, size: int) -> Path:
    """The packaged catalog's models repeated under new ids: ties everywhere."""
    base = yaml.safe_load(CATALOG.read_text())["models"]
    models = []
    for i in range(size):
        model = dict(base[i % len(base)])
        model["id"] = f"{model['id']}-x{i}"
        model["aliases"] = []
        models.append(model)
    path = directory / f"copies{size}.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


QUALITY_SCORES = (0.9, 0.55, None, 0.72, 0.8, None, 0.65, 0.95, 0.72, 0.3, 0.85)


def quality_catalog(directory: Path, size: int) -> Path:
    """`copies_catalog`'s models with overall quality scores; every fourth has none."""
    path = copies_catalog(directory, size)
    models = yaml.safe_load(path.read_text())["models"]
    for i, model in enumerate(models):
        score = QUALITY_SCORES[i % len(QUALITY_SCORES)]
        if score is not None:
            model["quality"] = {"overall": score, "source": "equivalence test"}
    path = directory / f"quality{size}.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def quality_policy_text(catalog: Path, strategy: str) -> str:
    """`policy_text` with a quality floor in the `picky` route (the defaults have none)."""
    return policy_text(catalog, strategy).replace(
        "    exclude claude", "    min_quality 0.6\n    exclude claude", 1
    )


def policy_text(catalog: Path, strategy: str) -> str:
    return f"""
catalog "{catalog}"
defaults {{
    strategy {strategy}
    fallback gemini, openai, claude
}}
route picky when request.metadata.tier == "pro" {{
    strategy {strategy}
    prefer openai weight 30
    prefer claude weight 70
    exclude claude/claude-3-opus-20240229-x1
}}
"""


class Programs(list[Program]):
    def __repr__(self) -> str:  # hypothesis prints the arguments of a failing example
        return f"<{len(self)} programs>"


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    directory = tmp_path_factory.mktemp("catalogs")
    out = Programs([design_engine().program])
    for size in (11, 40):
        path = copies_catalog(directory, size)
        out += [from_design(policy_text(path, s)).program for s in STRATEGY_VALUES]
        path = quality_catalog(directory, size)
        out += [from_design(quality_policy_text(path, s)).program for s in STRATEGY_VALUES]
    return out


requests = st.fixed_dictionaries(
    {"id": st.text(alphabet="abcxyz0123456789", min_size=1, max_size=8)},
    optional={
        "input_tokens": st.sampled_from([0, 1, 100, 2000, 40_000, 150_000, 3_000_000]),
        "max_tokens": st.sampled_from([1, 256, 500, 4096, 8192, 9000, 20_000]),
        "requires_vision": st.booleans(),
        "requires_tools": st.booleans(),
        "requires_json": st.booleans(),
        "stream": st.booleans(),
        "max_cost": st.sampled_from([0.0, 1e-6, 0.0001, 0.0005, 0.001, 0.01, 1.0]),
        "max_latency_ms": st.sampled_from([500, 900, 1000, 1800, 2400, 5000]),
        "metadata": st.fixed_dictionaries({"tier": st.sampled_from(["pro", "free"])}),
        "min_quality": st.sampled_from([0, 0.3, 0.5, 0.6, 0.72, 0.8, 0.95, 1]),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, which=st.integers(min_value=0, max_value=100), turn=st.integers(0, 50))
def test_the_shortcut_and_the_general_path_decide_alike(
    programs: Programs, request: dict[str, Any], which: int, turn: int
) -> None:
    program = programs[which % len(programs)]
    env = env_of(request)
    decisions = []
    for explain, metrics in ((False, None), (True, None), (False, MeasuredNothing())):
        state = EvalState()
        state.turns = {r.name: turn for r in (*program.routes, program.default_route)}
        decision = evaluate(program, env, metrics=metrics, state=state, explain=explain)
        out = decision.to_dict()
        out.pop("trace", None)
        decisions.append(out)
    assert decisions[0] == decisions[1] == decisions[2]


# ------------------------------------------------------------------ live metrics


class SnapshotStats:
    """The stats of a `LiveMetrics`' current snapshot, without its `snapshot()`: the general
    path, reading exactly what the shortcut reads."""

    def __init__(self, live: LiveMetrics) -> None:
        self.live = live

    @property
    def has_data(self) -> bool:
        return self.live.has_data

    def stats(self, model_key: str) -> ModelStats | None:
        return self.live.snapshot().stats.get(model_key)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


HEALTH = """
    min_samples 3
    min_success_rate 60%
    cooldown after 2 failures for 5s"""
# the latency health rule (`degraded when`), probed back as the success-rate rule is
DEGRADED = """
    degraded when model.p95 > 1500ms or model.p50 > 800ms"""
# a `require` on measurements only: decided once per snapshot, on the shortcut too
MEASURED_REQUIRE = (
    "    require model.p95 < 2500ms and (model.samples < 4 or model.success_rate > 50%)"
)


@pytest.fixture(scope="module")
def live_programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    directory = tmp_path_factory.mktemp("live_catalogs")
    path = copies_catalog(directory, 11)
    out = Programs()
    for s in STRATEGY_VALUES:
        for health in (HEALTH, HEALTH + DEGRADED):
            text = policy_text(path, s).replace(f"strategy {s}\n", f"strategy {s}{health}\n", 1)
            assert health in text
            out.append(from_design(text).program)
        text = text.replace("    exclude ", f"{MEASURED_REQUIRE}\n    exclude ", 1)
        assert MEASURED_REQUIRE in text
        out.append(from_design(text).program)
    scored = quality_catalog(directory, 11)  # floors and the quality factor, measured
    for s in STRATEGY_VALUES:
        text = quality_policy_text(scored, s).replace(f"strategy {s}\n", f"strategy {s}{HEALTH}\n")
        out.append(from_design(text).program)
    return out


# one event: a decision (None) or an outcome (model slot, latency ms, success, seconds after)
events = st.lists(
    st.one_of(
        st.none(),
        st.tuples(
            st.integers(0, 10),
            st.sampled_from([80.0, 400.0, 900.0, 2000.0, 9000.0]),
            st.booleans(),
            st.sampled_from([0.0, 0.1, 0.3, 2.0, 6.0]),
        ),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=requests,
    which=st.integers(min_value=0, max_value=100),
    history=events,
    refresh_ms=st.sampled_from([0.0, 250.0, 1e9]),
)
def test_the_shortcut_and_the_general_path_decide_alike_with_live_metrics(
    live_programs: Programs,
    request: dict[str, Any],
    which: int,
    history: list[Any],
    refresh_ms: float,
) -> None:
    program = live_programs[which % len(live_programs)]
    keys = [m.key for m in program.catalog.models]
    clock = Clock()
    live = LiveMetrics(3600.0, clock, refresh_ms)
    env = env_of(request)
    compared = 0
    for event in [*history, None]:
        if event is not None:
            slot, latency, success, later = event
            live.record(keys[slot % len(keys)], latency, success)
            clock.now += later
            continue
        before = evaluator_module.general_path_calls
        fast = evaluate(program, env, metrics=live, state=EvalState(), now=clock.now)
        took_general = evaluator_module.general_path_calls - before
        general = evaluate(
            program, env, metrics=SnapshotStats(live), state=EvalState(), now=clock.now
        )
        traced = evaluate(
            program, env, metrics=live, state=EvalState(), explain=True, now=clock.now
        )
        out = [d.to_dict() for d in (fast, general, traced)]
        for d in out:
            d.pop("trace", None)
        assert out[0] == out[1] == out[2]
        if fast.allowed:  # a request some model can serve takes the shortcut
            assert took_general == 0
        compared += 1
    assert compared >= 1


# ------------------------------------------------------------------ the reference ranking


def reference_ranking(
    route: CompiledRoute, env: dict[str, Any], turn: int
) -> list[tuple[str, str, float]]:
    """Filter and rank the plain way: one tuple per model, sorts with whole keys."""
    needs = sum(
        bit
        for name, bit in CAPABILITY_BITS.items()
        if env[{"streaming": "stream"}.get(name, f"requires_{name}")]
    )
    max_tokens = env["max_tokens"]
    cands = []
    for row in route.rows:
        model = row.model
        supports = sum(CAPABILITY_BITS[c] for c in model.supports if c in CAPABILITY_BITS)
        if needs & ~supports:
            continue
        if max_tokens is not None and max_tokens > model.max_tokens:
            continue
        if env["input_tokens"] + (max_tokens or 0) > model.context_window:
            continue
        output = (
            max_tokens
            if max_tokens is not None
            else min(DOCS_DEFAULT_OUTPUT_TOKENS, model.max_tokens)
        )
        # USD: tokens × price per 1M tokens (the catalog's prices), written out
        cost = (env["input_tokens"] * model.input_price + output * model.output_price) / 1e6
        latency = model.latency_p95_ms
        if env["max_cost"] is not None and cost > env["max_cost"]:
            continue
        if env["max_latency"] is not None and latency > env["max_latency"]:
            continue
        # a floor drops a model under it or without a score; the route's is applied here too
        score = None if model.quality is None else model.quality.overall
        floors = [f for f in (env["min_quality"], route.settings.min_quality) if f is not None]
        if floors and (score is None or score < max(floors)):
            continue
        cands.append((model, cost, latency))
    strategy = route.settings.strategy
    n = len(cands)
    if not n:
        return []
    ranked: list[tuple[Any, float]]
    if strategy in ("latency", "cost"):
        which = 2 if strategy == "latency" else 1
        other = 3 - which
        ordered = sorted(cands, key=lambda c: (c[which], c[other], c[0].index))
        best = ordered[0][which]
        ranked = [(c, best / c[which] if c[which] > 0 else 1.0) for c in ordered]
    elif strategy == "weighted":
        w_lat, w_cost, w_succ = route.factor_weights
        w_quality = dict(route.settings.factors).get("quality", 0.0)
        top_lat = max([0.0] + [c[2] for c in cands])
        top_cost = max([0.0] + [c[1] for c in cands])
        totals = [
            (
                w_lat * (1.0 - c[2] / top_lat if top_lat > 0 else 1.0)
                + w_cost * (1.0 - c[1] / top_cost if top_cost > 0 else 1.0)
                + w_succ * 1.0
                # docs/language.md: the catalog's score as it is, 0 for a model without one
                + w_quality * (c[0].quality.overall or 0.0 if c[0].quality else 0.0),
                c,
            )
            for c in cands
        ]
        ranked = [(c, t) for t, c in sorted(totals, key=lambda tc: (-tc[0], tc[1][0].index))]
    elif strategy == "model-specific":
        default = 0.0 if route.weights else 1.0
        weights = [route.weights.get(c[0].key, default) for c in cands]
        total = sum(weights)
        if total <= 0:
            weights, total = [1.0] * n, float(n)
        point, acc, chosen = draw(env["key"]) * total, 0.0, n - 1
        for i, w in enumerate(weights):
            acc += w
            if w > 0 and point < acc:
                chosen = i
                break
        rest = sorted(
            (i for i in range(n) if i != chosen), key=lambda i: (-weights[i], cands[i][0].index)
        )
        ranked = [(cands[i], weights[i] / total) for i in [chosen, *rest]]
    elif strategy == "round-robin":
        start = turn % n
        ranked = [(c, 1.0 - i / n) for i, c in enumerate(cands[start:] + cands[:start])]
    else:
        explicit = route.fallback_order
        far = len(route.provider_rank)
        ordered = sorted(
            enumerate(cands),
            key=lambda ic: (
                explicit.get(ic[1][0].key, len(explicit)),
                route.provider_rank.get(ic[1][0].provider, far),
                ic[0],
            ),
        )
        ranked = [(c, 1.0 - i / n) for i, (_, c) in enumerate(ordered)]
    return [(c[0].provider, c[0].id, round(s, 4)) for c, s in ranked]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, which=st.integers(min_value=0, max_value=100), turn=st.integers(0, 50))
def test_the_ranking_is_the_plain_reference_ranking(
    programs: Programs, request: dict[str, Any], which: int, turn: int
) -> None:
    program = programs[which % len(programs)]
    env = env_of(request)
    state = EvalState()
    state.turns = {r.name: turn for r in (*program.routes, program.default_route)}
    decision = evaluate(program, env, state=state, explain=True)
    route = next(r for r in (*program.routes, program.default_route) if r.name == decision.route)
    expected = reference_ranking(route, dict(env), turn)
    assert decision.trace is not None
    chosen = [s for s in decision.trace if s["step"] == "choose"]
    if not expected:
        assert not decision.allowed and chosen == []
        return
    (step,) = chosen
    assert [(r["provider"], r["model"], r["score"]) for r in step["ranking"]] == expected
    assert (decision.provider, decision.model) == expected[0][:2]
    assert [(a.provider, a.model, a.score) for a in decision.alternatives] == expected[1:4]


def test_weighted_on_measured_columns_scores_as_the_general_path(live_programs: Programs) -> None:
    """Every candidate eligible, every model measured with its own success rate: the
    weighted strategy's per-snapshot terms give the general path's decisions."""
    from engine.strategies import weighted as weighted_module

    for program in live_programs:
        settings = program.default_route.settings
        if settings.strategy != "weighted" or settings.degraded is not None:
            continue  # (with `degraded when`, not every candidate stays eligible)
        keys = [m.key for m in program.catalog.models]
        clock = Clock()
        live = LiveMetrics(3600.0, clock, 1e9)
        for i, key in enumerate(keys):
            for j in range(8):  # 8 samples, 5 to 8 successes (failures first: no cooldown)
                live.record(key, 200.0 + 97.0 * i + j, j >= 3 - i % 4)
        view = program.default_route.table.view
        weighted_module._MEASURED.pop(id(view), None)
        for n in range(40):
            env = env_of({"id": f"w{n}", "input_tokens": 10 * n})
            fast = evaluate(program, env, metrics=live, now=clock.now).to_dict()
            general = evaluate(program, env, metrics=SnapshotStats(live), now=clock.now)
            assert fast == general.to_dict()
        assert weighted_module._MEASURED[id(view)][0] is view  # the per-snapshot terms ran


def test_a_require_on_measurements_is_decided_per_snapshot_as_the_general_path(
    live_programs: Programs,
) -> None:
    """Every model measured, every other one slow (the even slots, then the odd ones): the
    shortcut's per-snapshot `require` drops what the general path drops, and decides alike."""
    measured = [p for p in live_programs if p.routes[0].measured_requires]
    assert len(measured) == len(STRATEGY_VALUES)
    for program, slow in itertools.product(measured, (0, 1)):
        keys = [m.key for m in program.catalog.models]
        clock = Clock()
        live = LiveMetrics(3600.0, clock, 1e9)
        for i, key in enumerate(keys):
            for j in range(6):
                live.record(key, (4000.0 if i % 2 == slow else 300.0) + j, True)
        clock.now += 61.0  # past the probe interval: `degraded when` lets them be tried
        route = program.routes[0]
        dropped = {p for p, k in enumerate(route.table.keys) if keys.index(k) % 2 == slow}
        assert measured_columns(live.snapshot(), route).failing == dropped != set()
        for n in range(40):
            env = env_of({"id": f"m{n}", "input_tokens": 10 * n, "metadata": {"tier": "pro"}})
            before = evaluator_module.general_path_calls
            fast = evaluate(program, env, metrics=live, state=EvalState(), now=clock.now)
            assert evaluator_module.general_path_calls == before
            general = evaluate(
                program, env, metrics=SnapshotStats(live), state=EvalState(), now=clock.now
            )
            assert fast.to_dict() == general.to_dict()
            assert fast.route == "picky"
            assert keys.index(f"{fast.provider}/{fast.model}") % 2 != slow


# ------------------------------------------------------------------ retirements


@functools.cache
def _packaged() -> Program:
    """The packaged default set (not a fixture: hypothesis would print its repr)."""
    from engine import PolicyEngine

    return PolicyEngine(state="memory://").program


def _retirement_instants(program: Program) -> list[float]:
    """Every default-route retirement, and a second before and after it."""
    times = sorted(set(program.default_route.table.retire_times))
    assert len(times) >= 2, "the packaged catalog's default route retires models"
    return sorted({t + d for t in times for d in (-1.0, 0.0, 1.0)})


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, pick=st.integers(min_value=0, max_value=10_000))
def test_retired_models_leave_the_shortcut_and_it_decides_as_the_general_path(
    request: dict[str, Any], pick: int
) -> None:
    """After a model's `retires` date the shortcut drops it as the general path does (with
    the reason `retired on …`), rather than handing every decision to the general path."""
    packaged = _packaged()
    instants = _retirement_instants(packaged)
    now = instants[pick % len(instants)]
    env = env_of(request)
    before = evaluator_module.general_path_calls
    fast = evaluate(packaged, env, state=EvalState(), now=now)
    took_general = evaluator_module.general_path_calls - before
    traced = evaluate(packaged, env, state=EvalState(), explain=True, now=now)
    out = [d.to_dict() for d in (fast, traced)]
    out[1].pop("trace", None)
    assert out[0] == out[1]
    table = packaged.default_route.table
    priced_simply = not env["images"] and not env["input_tokens"] > table.min_tier_above
    if fast.allowed and fast.route == "default" and priced_simply:  # tiers: the general path
        assert took_general == 0
        assert table.position_of[f"{fast.provider}/{fast.model}"] not in table.retired(now)
        shown = [fast, *fast.alternatives]
        for model in shown:
            p = table.position_of[f"{model.provider}/{model.model}"]
            assert not table.models[p].retired(now)


# ------------------------------------------------------------------ policy-wide requires

# residency (known per model: folded into per-route columns), a static one with no `when`
# (folded into the candidates at compile time), one on measurements (per snapshot) and one
# that reads the request (model by model, on the general path)
POLICY_WIDE = (
    'require model.regions contains "eu" when request.metadata.region == "eu"',
    "require model.pricing.input <= $10",
    'require model.p95 < 2500ms when request.metadata.tier == "pro"',
    'require model.context_window >= request.input_tokens when request.metadata.region == "us"',
)


# more static `require`s with a `when` than routes get compiled variants for
# (compiler.MAX_VARIANT_REQUIRES): then they are looked up per request, position by position
MANY_WHENS = (
    'require model.regions contains "eu" when request.metadata.region == "eu"',
    'require model.pricing.input <= $5 when request.metadata.tier == "pro"',
    'require model.supports contains "vision" when request.metadata.region == "us"',
    'require model.context_window >= 100k when request.metadata.tier == "free"',
    'require model.provider != "openai" when request.metadata.region == "eu"',
)


def policy_wide_texts(path: Path, strategy: str) -> list[str]:
    base = policy_text(path, strategy)
    texts = [base + "\n".join(POLICY_WIDE[: n + 1]) + "\n" for n in range(len(POLICY_WIDE))]
    return [*texts, base + "\n".join(MANY_WHENS[:4]) + "\n", base + "\n".join(MANY_WHENS) + "\n"]


def _in_region(request: dict[str, Any], region: str | None) -> dict[str, Any]:
    if region is None:
        return request
    return {**request, "metadata": {**request.get("metadata", {}), "region": region}}


policy_wide_requests = st.builds(_in_region, requests, st.sampled_from([None, "eu", "us"]))


@pytest.fixture(scope="module")
def policy_wide_programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    directory = tmp_path_factory.mktemp("policy_wide_catalogs")
    path = copies_catalog(directory, 11)
    out = Programs()
    for s in STRATEGY_VALUES:
        for text in policy_wide_texts(path, s):
            out.append(
                from_design(text.replace(f"strategy {s}\n", f"strategy {s}{HEALTH}\n", 1)).program
            )
    return out


def test_static_requires_with_a_when_are_compiled_into_route_variants(
    policy_wide_programs: Programs,
) -> None:
    by_count = {len(p.requires): p for p in policy_wide_programs if p.requires}
    four, five = by_count[4], by_count[5]
    assert len(four.variant_bits) == 4 and len(four.routes[0].variants) == 15
    assert five.variant_bits == {} and five.routes[0].variants == {}  # too many: per request
    eu = env_of({"id": "x", "metadata": {"region": "eu"}})
    for program in (four, five):
        decision = evaluate(program, eu, state=EvalState())
        assert decision.allowed and decision.provider != "openai"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=policy_wide_requests, which=st.integers(min_value=0, max_value=100))
def test_policy_wide_requires_decide_alike_on_the_shortcut_and_the_general_path(
    policy_wide_programs: Programs, request: dict[str, Any], which: int
) -> None:
    program = policy_wide_programs[which % len(policy_wide_programs)]
    env = env_of(request)
    decisions = []
    for explain, metrics in ((False, None), (True, None), (False, MeasuredNothing())):
        decision = evaluate(program, env, metrics=metrics, state=EvalState(), explain=explain)
        out = decision.to_dict()
        out.pop("trace", None)
        decisions.append(out)
    assert decisions[0] == decisions[1] == decisions[2]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=policy_wide_requests,
    which=st.integers(min_value=0, max_value=100),
    history=events,
    refresh_ms=st.sampled_from([0.0, 250.0, 1e9]),
)
def test_policy_wide_requires_decide_alike_with_live_metrics(
    policy_wide_programs: Programs,
    request: dict[str, Any],
    which: int,
    history: list[Any],
    refresh_ms: float,
) -> None:
    program = policy_wide_programs[which % len(policy_wide_programs)]
    keys = [m.key for m in program.catalog.models]
    clock = Clock()
    live = LiveMetrics(3600.0, clock, refresh_ms)
    env = env_of(request)
    reads_request = any(
        program.requires[i].reads_request
        and (program.requires[i].when is None or program.requires[i].when(env, None))
        for i in program.live_requires
    )
    for event in [*history, None]:
        if event is not None:
            slot, latency, success, later = event
            live.record(keys[slot % len(keys)], latency, success)
            clock.now += later
            continue
        before = evaluator_module.general_path_calls
        fast = evaluate(program, env, metrics=live, state=EvalState(), now=clock.now)
        took_general = evaluator_module.general_path_calls - before
        general = evaluate(
            program, env, metrics=SnapshotStats(live), state=EvalState(), now=clock.now
        )
        traced = evaluate(
            program, env, metrics=live, state=EvalState(), explain=True, now=clock.now
        )
        out = [d.to_dict() for d in (fast, general, traced)]
        for d in out:
            d.pop("trace", None)
        assert out[0] == out[1] == out[2]
        if fast.allowed and not reads_request:  # the policy-wide sets keep the shortcut
            assert took_general == 0


# ------------------------------------------------------------------ big routes, on arrays

# A route of `VECTOR_MIN_CANDIDATES` models or more filters and ranks on numpy arrays on the
# shortcut. Over a 2,000-model catalog of copies (ties everywhere, quality scores with gaps,
# retirements) each decision is taken three ways and must be the same as parsed JSON: on
# the arrays, on the Python lists (the threshold out of reach), and on the general path.

BIG = 2000
BIG_RETIRES = "2030-01-01"  # every 13th model retires that day
BIG_BEFORE = 1_800_000_000.0  # 2027: before it
BIG_AFTER = 1_900_000_000.0  # 2030-03: after it


def big_catalog(directory: Path) -> Path:
    path = quality_catalog(directory, BIG)
    models = yaml.safe_load(path.read_text())["models"]
    for i, model in enumerate(models):
        if i % 13 == 5:
            model["retires"] = BIG_RETIRES
    path = directory / "big.json"  # (JSON: the fastest catalog to load)
    path.write_text(json.dumps({"models": models}))
    return path


class OnLists:
    """Inside: every route, however big, filters and ranks on the Python lists."""

    def __enter__(self) -> None:
        self.threshold = evaluator_module.VECTOR_MIN_CANDIDATES
        evaluator_module.VECTOR_MIN_CANDIDATES = 10**9

    def __exit__(self, *exc: object) -> None:
        evaluator_module.VECTOR_MIN_CANDIDATES = self.threshold


def success_first(pool: Pool) -> Ranking:
    """A registered toy strategy reading the lists only: success rate, then cost × latency,
    then catalog order."""
    succ = pool.succ if pool.succ is not None else [1.0] * len(pool.cost)
    order = sorted(by_index(pool), key=lambda s: pool.cost[s] * pool.lat[s])
    order.sort(key=succ.__getitem__, reverse=True)
    return order, lambda rank, slot: succ[slot], f"Most successful of {len(order)}"


TOY = "success-first"
BIG_STRATEGIES = (*STRATEGY_VALUES, TOY)


@pytest.fixture(scope="module")
def big_programs(tmp_path_factory: pytest.TempPathFactory) -> Programs:
    """Each strategy on the big catalog, with the health rules and without; the `picky`
    route's candidates are not in catalog order (its prefer lists)."""
    path = big_catalog(tmp_path_factory.mktemp("big_catalog"))
    register(Strategy(TOY, success_first))
    try:
        out = Programs()
        for s in BIG_STRATEGIES:
            for health in ("", HEALTH + DEGRADED):
                text = quality_policy_text(path, s)
                text = text.replace(f"strategy {s}\n", f"strategy {s}{health}\n")
                out.append(from_design(text).program)
    finally:
        unregister(TOY)
    for program in out:
        for route in (*program.routes, program.default_route):
            assert len(route.table.keys) >= evaluator_module.VECTOR_MIN_CANDIDATES
    picky = out[0].routes[0].table.view
    assert not picky.index_sorted
    return out


def offered(program: Program, every: int | None) -> frozenset[str] | None:
    """`only`: None, or every `every`-th model of the catalog."""
    if every is None:
        return None
    return frozenset(m.key for m in program.catalog.models[::every])


def three_ways(
    program: Program,
    env: Any,
    metrics: Any,
    general_metrics: Any,
    now: float,
    only: frozenset[str] | None,
    turn: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """The decision on the arrays, on the lists, on the general path (traced), as dicts
    without the trace; and how many times the arrays' shortcut ran."""

    def decide(explain: bool = False, with_metrics: Any = metrics) -> dict[str, Any]:
        state = EvalState()
        state.turns = {r.name: turn for r in (*program.routes, program.default_route)}
        decision = evaluate(
            program, env, metrics=with_metrics, state=state, explain=explain, now=now, only=only
        )
        out = decision.to_dict()
        out.pop("trace", None)
        return out

    before = evaluator_module.vector_path_calls
    on_arrays = decide()
    took = evaluator_module.vector_path_calls - before
    with OnLists():
        on_lists = decide()
    return [on_arrays, on_lists, decide(with_metrics=general_metrics), decide(True)], took


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=requests,
    which=st.integers(min_value=0, max_value=100),
    turn=st.integers(0, 5000),
    now=st.sampled_from([BIG_BEFORE, BIG_AFTER]),
    every=st.sampled_from([None, None, 3, 700]),
)
def test_a_big_route_decides_on_arrays_as_on_lists_and_the_general_path(
    big_programs: Programs,
    request: dict[str, Any],
    which: int,
    turn: int,
    now: float,
    every: int | None,
) -> None:
    program = big_programs[which % len(big_programs)]
    only = offered(program, every)
    env = env_of(request)
    out, took = three_ways(program, env, None, MeasuredNothing(), now, only, turn)
    assert out[0] == out[1] == out[2] == out[3]
    if out[0]["allowed"]:  # a request some model can serve: the arrays' shortcut, once
        assert took == 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=requests,
    which=st.integers(min_value=0, max_value=100),
    history=st.lists(
        st.one_of(
            st.none(),
            st.tuples(
                st.integers(0, BIG - 1) | st.integers(0, 30),  # a few models, many samples
                st.sampled_from([80.0, 400.0, 900.0, 2000.0, 9000.0]),
                st.booleans(),
                st.sampled_from([0.0, 0.1, 2.0, 6.0]),
            ),
        ),
        min_size=1,
        max_size=40,
    ),
    refresh_ms=st.sampled_from([0.0, 1e9]),
    every=st.sampled_from([None, None, 3]),
)
def test_a_big_route_decides_on_arrays_as_on_lists_with_live_metrics(
    big_programs: Programs,
    request: dict[str, Any],
    which: int,
    history: list[Any],
    refresh_ms: float,
    every: int | None,
) -> None:
    """Measured latencies and success rates, unhealthy models and cooldowns (the health
    programs), ties broken by measurements: the same decisions every way."""
    program = big_programs[which % len(big_programs)]
    only = offered(program, every)
    keys = [m.key for m in program.catalog.models]
    clock = Clock()
    live = LiveMetrics(3600.0, clock, refresh_ms)
    env = env_of(request)
    compared = 0
    for event in [*history, None]:
        if event is not None:
            slot, latency, success, later = event
            for _ in range(3):  # min_samples 3: measured
                live.record(keys[slot], latency, success)
            clock.now += later
            continue
        out, took = three_ways(program, env, live, SnapshotStats(live), clock.now, only)
        assert out[0] == out[1] == out[2] == out[3]
        if out[0]["allowed"]:
            assert took == 1
        compared += 1
    assert compared >= 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests, which=st.integers(min_value=0, max_value=100))
def test_a_big_route_on_arrays_picks_the_plain_reference_ranking(
    big_programs: Programs, request: dict[str, Any], which: int
) -> None:
    """The chosen model and the alternatives on the arrays are the plain reference's first
    four (before the retirements, on priors)."""
    program = big_programs[which % len(big_programs)]
    if program.default_route.settings.strategy == TOY:
        program = big_programs[0]
    env = env_of(request)
    before = evaluator_module.vector_path_calls
    decision = evaluate(program, env, state=EvalState(), now=BIG_BEFORE)
    if not decision.allowed:
        return
    assert evaluator_module.vector_path_calls == before + 1
    route = next(r for r in (*program.routes, program.default_route) if r.name == decision.route)
    expected = reference_ranking(route, dict(env), 0)
    assert (decision.provider, decision.model) == expected[0][:2]
    assert [(a.provider, a.model, a.score) for a in decision.alternatives] == expected[1:4]


def test_a_small_route_stays_on_the_lists(programs: Programs) -> None:
    """Under the threshold the shortcut never builds arrays (numpy's overhead is not paid)."""
    before = evaluator_module.vector_path_calls
    for program in programs:
        decision = evaluate(program, env_of({"id": "small"}), state=EvalState())
        assert decision.allowed
    assert evaluator_module.vector_path_calls == before


def absurd_catalog(directory: Path, name: str, price: float, every: int) -> Path:
    """`copies_catalog(300)` with the input price of every `every`-th model set to `price`
    (every other price 0 when `price` is below 1)."""
    models = yaml.safe_load(copies_catalog(directory, 300).read_text())["models"]
    for i, model in enumerate(models):
        if price < 1:
            model["pricing"] = {"input": 0.0, "output": 0.0}
        if i % every == 3:
            model["pricing"]["input"] = price
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"models": models}))
    return path


def test_prices_past_the_catalogs_bounds_are_refused(tmp_path: Path) -> None:
    """A price so high that a cost overflows to infinity, or so tiny (subnormal) that
    `weighted`'s cost factor (1 / the dearest cost) does, would make scores NaN, which
    Python's sort and numpy's order differently: the catalog refuses both."""
    for name, price in (("absurd", 1e306), ("tiny", 1e-318)):
        path = absurd_catalog(tmp_path, name, price, 7)
        with pytest.raises(PolicyctlError, match=r"pricing\.input"):
            from_design(policy_text(path, "weighted(latency: 60%, cost: 40%)"))


def test_prices_at_the_catalogs_bounds_decide_the_same_three_ways(tmp_path: Path) -> None:
    """At the bounds (the highest price with a huge prompt, the smallest price above 0
    beside free models) every score is a number and the arrays, the lists and the
    explaining path agree."""
    compared = 0
    for name, price, every in (("dear", MAX_PRICE, 7), ("cheap", MIN_PRICE, 5)):
        path = absurd_catalog(tmp_path, name, price, every)
        for s in ("weighted(latency: 60%, cost: 40%)", "latency", "cost"):
            program = from_design(policy_text(path, s)).program
            for n in range(6):
                tokens = (1000 * n + 1) if price < 1 else 100_000 * (n + 1)
                env = env_of({"id": f"b{n}", "input_tokens": tokens, "metadata": {"tier": "free"}})
                out, _ = three_ways(program, env, None, MeasuredNothing(), 0.0, None)
                texts = {json.dumps(d, sort_keys=True, allow_nan=False) for d in out}
                assert len(texts) == 1 and out[0]["allowed"]
                compared += 1
    assert compared == 36


def test_a_big_route_under_model_limits_and_exploring_decides_as_on_lists(
    tmp_path: Path,
) -> None:
    """`limit model 1 per 1m` (each decision skips one more model at its limit, so the
    fallback chain leaves out the skipped providers) and `explore` (an explored model goes
    first): engines on the arrays, on the lists and explaining, fed the same requests on a
    frozen clock, make the same decisions one by one."""
    path = copies_catalog(tmp_path, 600)
    compared = explored = skipped = 0
    for s in ("weighted(latency: 60%, cost: 40%)", "latency", "cost"):
        text = policy_text(path, s).replace(
            "    fallback gemini", "    explore 20% budget $1 per 1h\n    fallback gemini", 1
        )
        text += "\nlimit model 1 per 1m\n"
        engines = [from_design(text, clock=lambda: BIG_BEFORE) for _ in range(3)]
        for n in range(40):
            request = {"id": f"l{n}", "input_tokens": 100 * n, "metadata": {"tier": "free"}}
            before = evaluator_module.vector_path_calls
            on_arrays = engines[0].evaluate(request)
            assert evaluator_module.vector_path_calls == before + 1
            with OnLists():
                on_lists = engines[1].evaluate(request)
            explained = engines[2].evaluate(request, explain=True)
            out = [d.to_dict() for d in (on_arrays, on_lists, explained)]
            out[2].pop("trace")
            assert out[0] == out[1] == out[2]
            assert on_arrays.allowed
            compared += 1
            explored += bool(on_arrays.explored)
            skipped += on_arrays.reason.startswith("Ranked #")
    assert compared == 120
    assert explored > 0 and skipped > 0
