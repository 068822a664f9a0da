"""The runs: each strategy against a fresh engine, and the baselines, on the same traffic.

For each strategy a fresh engine runs with `defaults { strategy X … }` plus the scenario's
`policy` settings, `routes` and `limits`, on a fake clock that the arrivals advance
(nothing sleeps). Each allowed request draws its outcome from the chosen model's provider,
and the outcome is fed back with `engine.record` when the call completes in simulated time
(calls overlap, as they do in production: a failing provider keeps receiving requests until
its failures come back). Three baselines run on the same traffic and providers without the
engine: uniform random over the models that can serve each request, always Claude 3.5
Sonnet, and the oracle, which knows the world (true latency, quality, outages) and takes
the cheapest model that serves each request well (`run_oracle`). Every run marks its bad answers:
successful calls to a model whose true quality is under the template's `min_quality`.
Agent sessions read their earlier prompt from the providers' prompt caches (`PromptCache`):
every run's cost counts the cached tokens at the catalog's cached-input price. A run may add
`affinity` to its defaults, and may record its outcomes without the decision's request id
(`settle=False`): then no token or spend reservation settles and the estimates stand.
"""

from __future__ import annotations

import heapq
import math
import random
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine.api.policy_engine import PolicyEngine
from engine.language.program import CompiledLimit
from engine.limits.records import LimitDenial
from engine.simulate.scenario import (
    ORACLE_ROW,
    RANDOM_ROW,
    SONNET_ROW,
    PolicyRun,
    RunSpec,
    Scenario,
)
from engine.simulate.world import (
    START,
    Arrival,
    PromptCache,
    Template,
    answer_rng,
    bad_chance,
    capable,
    outcome_rng,
)

# the "always sonnet" baseline: the design's Claude 3.5 Sonnet, else today's Sonnet
SONNET = "claude/claude-3-5-sonnet-20241022"
SONNETS = (SONNET, "anthropic/claude-sonnet-4-6")
PROGRESS_EVERY = 1000  # a strategy run tells its `progress` callback this often (requests)
_HEALTH_DROPS = ("in cooldown", "success rate", "degraded")  # the evaluator's health reasons


class _Clock:
    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Run:
    """One row's per-request record (index -1: denied)."""

    name: str
    kind: str  # "baseline" | "strategy" | "policy" (a whole policy of the scenario's)
    keys: tuple[str, ...]  # model index -> provider/model
    chosen: array[int]
    latency_ms: array[float]  # nan when denied
    cost: array[float]
    ok: bytearray
    bad: bytearray  # 1: a successful call whose answer is under the template's min_quality
    health_drops: dict[str, list[int]] = field(default_factory=dict)  # key -> request numbers
    # request numbers whose decision's fallback chain held a model outside the request's
    # region (strategy runs only; baselines have no chain)
    fallbacks_outside: list[int] = field(default_factory=list)
    # the policy's experiments, in file order (strategy runs only; empty without a split)
    experiments: tuple[Experiment, ...] = ()
    # per request: the index of its (experiment, arm) in `arm_keys`, -1 outside every split
    arm: array[int] = field(default_factory=lambda: array("i"))
    explored: bytearray = field(default_factory=bytearray)  # 1: the decision explored
    cached: array[int] = field(default_factory=lambda: array("q"))  # tokens read from cache
    # strategy runs: the denials by a limit, request number -> (scope, bucket key, unit)
    denials: dict[int, tuple[str, str | None, str | None]] = field(default_factory=dict)
    limits: tuple[CompiledLimit, ...] = ()  # strategy runs: the policy's limits
    affinity: bool = False  # the run added the scenario's `affinity` to its defaults
    settled: bool = True  # False: its outcomes carried no request id (nothing settled)

    def summary(self) -> dict[str, Any]:
        served = [lat for lat in self.latency_ms if lat == lat]
        n = len(served)
        denials = len(self.chosen) - n
        failures = sum(1 for c, ok in zip(self.chosen, self.ok, strict=True) if c >= 0 and not ok)
        answers = n - failures
        bad = sum(self.bad)
        total_cost = math.fsum(self.cost)
        picks = Counter(self.keys[c] for c in self.chosen if c >= 0)
        ordered = sorted(served)
        top = picks.most_common(1)
        explored = [i for i, flag in enumerate(self.explored) if flag]
        return {
            "name": self.name,
            "kind": self.kind,
            "served": n,
            "mean_ms": round(math.fsum(served) / n, 3) if n else None,
            "p95_ms": round(ordered[max(1, math.ceil(0.95 * n)) - 1], 3) if n else None,
            "cost_per_request": round(total_cost / n, 12) if n else None,
            "total_cost": round(total_cost, 10),
            "failures": failures,
            "denials": denials,
            "answers": answers,
            "bad_answers": bad,
            "bad_answer_rate": round(bad / answers, 4) if answers else None,
            "top_model": top[0][0] if top else None,
            "top_share": round(top[0][1] / n, 4) if top else None,
            "models": dict(sorted(picks.items(), key=lambda kv: (-kv[1], kv[0]))),
            "explored": len(explored),
            "explored_cost": round(math.fsum(self.cost[i] for i in explored), 10),
            "cached_tokens": sum(self.cached),
        }


@dataclass(frozen=True, slots=True)
class Experiment:
    """A `split` of the run's policy: the splitting route, its key, its arm routes."""

    name: str
    key: str  # `request.user`
    arms: tuple[str, ...]  # in the split's order: the first is the control (A)


def arm_keys(experiments: tuple[Experiment, ...]) -> list[tuple[str, str]]:
    """(experiment, arm) for every arm of every experiment: what `Run.arm` indexes."""
    return [(e.name, arm) for e in experiments for arm in e.arms]


def _new_run(name: str, kind: str, scenario: Scenario) -> Run:
    n = scenario.requests
    return Run(
        name=name,
        kind=kind,
        keys=tuple(scenario.providers),
        chosen=array("i", [-1]) * n,
        latency_ms=array("d", [math.nan]) * n,
        cost=array("d", [0.0]) * n,
        ok=bytearray(n),
        bad=bytearray(n),
        explored=bytearray(n),
        cached=array("q", [0]) * n,
    )


def bad_answers(scenario: Scenario) -> dict[Template, list[float]]:
    """Per template, per model index: the chance that the model's answer is bad
    (`bad_chance`: 0 when its true quality meets the template's `min_quality`; under it,
    1, or with the scenario's `quality_spread` a logistic in the gap). A run draws one
    uniform u per request (`answer_rng`) and an answer is bad when u < the chance."""
    keys = list(scenario.providers)
    spread = scenario.quality_spread
    return {
        t: [bad_chance(scenario.quality(key, t), t.min_quality, spread) for key in keys]
        for t in scenario.traffic
    }


def _run_baseline(
    scenario: Scenario, arrivals: list[Arrival], name: str, pick: Callable[[Arrival], int]
) -> Run:
    run = _new_run(name, "baseline", scenario)
    rng = outcome_rng(scenario.seed)
    providers = list(scenario.providers.values())
    models = scenario.catalog.models
    bad = bad_answers(scenario)
    answers = answer_rng(scenario.seed)
    cache = PromptCache(providers, models)
    for a in arrivals:
        z, u = rng.gauss(0.0, 1.0), rng.random()
        v = answers.random()
        index = pick(a)
        if index < 0:
            continue
        latency, ok = providers[index].outcome(a.index, z, u)
        t = a.template
        run.chosen[a.index] = index
        run.latency_ms[a.index] = latency
        run.ok[a.index] = ok
        run.bad[a.index] = ok and v < bad[t][index]
        if ok:
            cached = cache.read(a, index)
            cache.write(a, index)
            run.cached[a.index] = cached
            run.cost[a.index] = models[index].cost(a.input_tokens, t.output_tokens, cached)
    return run


def _capable_sets(scenario: Scenario) -> dict[Template, list[int]]:
    return {
        t: [
            i
            for i, m in enumerate(scenario.catalog.models)
            if capable(m, t, t.largest_input)  # every turn of a session
        ]
        for t in scenario.traffic
    }


def run_random(scenario: Scenario, arrivals: list[Arrival]) -> Run:
    """Uniform random over the models that can serve each request."""
    capable = _capable_sets(scenario)
    rng = random.Random(f"{scenario.seed}:random")

    def pick(a: Arrival) -> int:
        options = capable[a.template]
        return options[int(rng.random() * len(options))] if options else -1

    return _run_baseline(scenario, arrivals, RANDOM_ROW, pick)


def baseline_key(scenario: Scenario) -> str:
    """The model of the `always sonnet` row: the first of `SONNETS` in the scenario's
    catalog, else its first model with `sonnet` in its id, else its first model."""
    keys = list(scenario.providers)
    found = [k for k in SONNETS if k in scenario.providers]
    found += [k for k in keys if "sonnet" in k.partition("/")[2]] + keys
    return found[0]


def run_always(scenario: Scenario, arrivals: list[Arrival], key: str | None = None) -> Run:
    """Always one model (a denial when it cannot serve the request); by default the
    `baseline_key`."""
    index = list(scenario.providers).index(key or baseline_key(scenario))
    capable = _capable_sets(scenario)

    def pick(a: Arrival) -> int:
        return index if index in capable[a.template] else -1

    return _run_baseline(scenario, arrivals, SONNET_ROW, pick)


def run_oracle(scenario: Scenario, arrivals: list[Arrival]) -> Run:
    """The oracle: for each request, the cheapest model that serves it and is good enough.

    It serves the request: it passes the capability filter, lists the request's `region`
    (when the request has one), is up (not failing every call) at this request, and meets
    the request's `max_cost` and `max_latency_ms` (its true p95 at this request). Good
    enough: its true quality for the template is at least `min_quality`; when no serving
    model is, those of the best quality among them. Cheapest by the template's tokens at
    catalog prices; ties by the lower true mean latency at this request, then catalog
    order. No model serves: a denial. No draw is made, so it is deterministic."""
    providers = list(scenario.providers.values())
    models = scenario.catalog.models
    bad = bad_answers(scenario)
    # per template, what does not change per request: the candidates (capable, in the
    # region, within max_cost) in order of cost, then catalog order
    ordered: dict[Template, list[tuple[float, int]]] = {}
    for t in scenario.traffic:
        found = []
        for i, m in enumerate(models):
            cost = m.cost(t.input_tokens, t.output_tokens)
            if not capable(m, t) or (t.region is not None and t.region not in m.regions):
                continue
            if t.max_cost is not None and cost > t.max_cost:
                continue
            found.append((cost, i))
        ordered[t] = sorted(found)
    keys = list(scenario.providers)

    def pick(a: Arrival) -> int:
        t = a.template
        request = a.index
        cap = t.max_latency_ms

        def serves(i: int) -> bool:
            p = providers[i]
            return p.failure_rate_at(request) < 1.0 and (cap is None or p.p95_ms_at(request) <= cap)

        is_bad = [chance > 0 for chance in bad[t]]  # not good enough
        for n, (cost, i) in enumerate(ordered[t]):
            if is_bad[i] or not serves(i):
                continue
            ties = [i] + [
                j for c, j in ordered[t][n + 1 :] if c == cost and not is_bad[j] and serves(j)
            ]
            return min(ties, key=lambda j: (providers[j].mean_ms_at(request), j))
        serving = [(cost, i) for cost, i in ordered[t] if serves(i)]
        if not serving:
            return -1
        # nobody is good enough: the best quality there is, cheapest first
        quality = {i: scenario.quality(keys[i], t) or 0.0 for _, i in serving}
        best = max(quality.values())
        tops = [(c, providers[i].mean_ms_at(request), i) for c, i in serving if quality[i] == best]
        return min(tops)[2]

    return _run_baseline(scenario, arrivals, ORACLE_ROW, pick)


def run_name(strategy: str, explore: str | None) -> str:
    """A strategy run's row name: the strategy, `+ explore` when the run adds it."""
    return RunSpec(strategy, explore).name


def run_strategy(
    scenario: Scenario,
    arrivals: list[Arrival],
    strategy: str,
    explore: str | None = None,
    progress: Callable[[int], None] | None = None,
    affinity: str | None = None,
    settle: bool = True,
    policy: PolicyRun | None = None,
) -> Run:
    """A fresh engine on a fake clock; outcomes are recorded when each call completes.
    `explore`, `affinity`: the settings the run adds to its defaults (the scenario's
    fields). `settle=False`: outcomes are recorded without the decision's request id, so
    no reservation settles (nor an in-flight slot is released but by its lease).
    `progress(requests done)`: told every `PROGRESS_EVERY` requests. `policy`: run that
    whole policy instead (a row of kind `policy`; `strategy` and the settings unused)."""
    if policy is None:
        run = _new_run(RunSpec(strategy, explore, affinity, settle).name, "strategy", scenario)
        name, text = scenario.policy_text(strategy, explore, affinity)
    else:
        run = _new_run(policy.name, "policy", scenario)
        name, text = policy.path, policy.text
    run.affinity = affinity is not None
    run.settled = settle
    clock = _Clock(START)
    # every outcome counts from the next decision on (no snapshot age): what a simulation
    # shows does not hang on how the simulated arrivals fall against the refresh interval
    engine = PolicyEngine.from_text(
        text, name, clock=clock, state="memory://", metrics_refresh_ms=0
    )
    run.limits = engine.program.limits
    run.experiments = tuple(
        Experiment(route.name, route.split.key_text, route.split.arms)
        for route in engine.program.routes
        if route.split is not None
    )
    arm_index = {key: i for i, key in enumerate(arm_keys(run.experiments))}
    if arm_index:
        run.arm = array("i", [-1]) * scenario.requests
    index_of = {key: i for i, key in enumerate(scenario.providers)}
    providers = list(scenario.providers.values())
    models = scenario.catalog.models
    watched = {p.key for p in providers if p.outage is not None or p.degradation is not None}
    explain = bool(watched)
    bad = bad_answers(scenario)
    regions = {m.key: m.regions for m in models}
    rng = outcome_rng(scenario.seed)
    answers = answer_rng(scenario.seed)
    cache = PromptCache(providers, models)
    pending: list[tuple[float, int, Any, float, bool, float, int, int, int]] = []
    record = engine.record
    record_outcome = engine.record_outcome
    evaluate = engine.evaluate
    seed = scenario.seed
    try:
        for a in arrivals:
            if progress is not None and not a.index % PROGRESS_EVERY:
                progress(a.index)
            while pending and pending[0][0] <= a.at:
                done, _, decision, latency, ok, cost, tokens_in, tokens_out, cached = heapq.heappop(
                    pending
                )
                clock.now = done
                if settle:
                    record(
                        decision,
                        latency_ms=latency,
                        success=ok,
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                        cost=cost,
                        cached_tokens=cached,
                    )
                else:  # the same outcome without the decision's request id: nothing settles
                    record_outcome(
                        decision.provider,
                        decision.model,
                        latency_ms=latency,
                        success=ok,
                        input_tokens=tokens_in,
                        output_tokens=tokens_out,
                        cost=cost,
                        cached_tokens=cached,
                        route=decision.route,
                    )
            clock.now = a.at
            z, u = rng.gauss(0.0, 1.0), rng.random()
            v = answers.random()
            t = a.template
            request = dict(t.fields)
            if a.variant >= 0:
                request["messages"] = list(t.bodies[a.variant])
            request["id"] = f"sim-{seed}-{a.index}"
            if a.user is not None:
                request["user"] = a.user
            if a.session is not None:
                request["input_tokens"] = a.input_tokens
                request["metadata"] = {**(request.get("metadata") or {}), "session_id": a.session}
            decision = evaluate(request, explain=explain)
            if decision.experiment is not None:
                run.arm[a.index] = arm_index[(decision.experiment, decision.arm)]
            if explain and decision.trace:
                for step in decision.trace:
                    if (
                        step["step"] == "drop"
                        and step["because"].startswith(_HEALTH_DROPS)
                        and f"{step['provider']}/{step['model']}" in watched
                    ):
                        key = f"{step['provider']}/{step['model']}"
                        run.health_drops.setdefault(key, []).append(a.index)
            if not decision.allowed:
                denial = decision.denied_by
                if isinstance(denial, LimitDenial):
                    run.denials[a.index] = (denial.scope, denial.key, denial.unit)
                continue
            index = index_of[f"{decision.provider}/{decision.model}"]
            latency, ok = providers[index].outcome(a.index, z, u)
            out_tokens = t.output_tokens if ok else 0
            tokens_in = a.input_tokens
            cached = 0
            if ok:
                cached = cache.read(a, index)
                cache.write(a, index)
            cost = models[index].cost(tokens_in, out_tokens, cached) if ok else 0.0
            if t.region is not None and any(
                t.region not in regions.get(f"{f['provider']}/{f['model']}", ())
                for f in decision.fallbacks
            ):
                run.fallbacks_outside.append(a.index)
            run.chosen[a.index] = index
            run.latency_ms[a.index] = latency
            run.ok[a.index] = ok
            run.bad[a.index] = ok and v < bad[t][index]
            run.cost[a.index] = cost
            run.cached[a.index] = cached
            run.explored[a.index] = decision.explored
            done = a.at + latency / 1000.0
            heapq.heappush(
                pending,
                (done, a.index, decision, latency, ok, cost, tokens_in, out_tokens, cached),
            )
    finally:
        engine.close()
    return run
