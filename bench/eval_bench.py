"""Decision and condition costs of policyctl, side by side with LiteLLM's Router (SPEC §8).

    python bench/eval_bench.py            # full run, about a minute
    python bench/eval_bench.py --quick    # about 15 s
    python bench/eval_bench.py --profile model-specific   # also: top functions by tottime

Everything is measured in one process, one run, because only ratios are comparable across
these noisy machines. Nothing touches the network: LiteLLM is only asked to *choose* a
deployment (`Router.get_available_deployment` / `async_get_available_deployment`), never to
call a provider, and it reads its cost map from the copy in the package.

Method: every operation is calibrated to a fixed time per repeat, run for several repeats
with the garbage collector off inside each timing window (`time.perf_counter_ns`), and the
median of the repeats' per-operation times is reported. Decisions run over distinct request
dicts (a fresh id for every call, fresh for every repeat; users and IPs spread over 1000
values) so no cache keyed by request hides work. See bench/README.md for how to read it.
"""

from __future__ import annotations

import os

# Before anything can import litellm: use the cost map shipped in the package rather than
# fetching it over the network at import time.
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import argparse
import asyncio
import cProfile
import datetime
import functools
import gc
import importlib.metadata
import itertools
import logging
import platform
import pstats
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing

sys.path.insert(0, str(ROOT / "bench"))

from _pairs import (  # noqa: E402
    MIN_PAIRS,
    block_size,
    gc_off,
    pairs_option,
    per_op_ns,
    ratio_cell,
    ratios,
    rounds,
    settle,
    us,
)

from engine import PolicyEngine  # noqa: E402
from engine.language import ast as policy_ast  # noqa: E402
from engine.language.compiler import compile_condition  # noqa: E402
from engine.language.parser import parse  # noqa: E402
from engine.routing.evaluator import EvalState, evaluate  # noqa: E402
from engine.routing.request import to_env, validate  # noqa: E402

# The SPEC's reference figures (Python 3.11, 2 cores), printed beside ours for orientation.
SPEC_REFERENCE_US = {
    "simple-shuffle": 135.0,
    "latency-based-routing": 287.0,
    "cost-based-routing": 419.0,
    "plain-condition": 0.06,
}
DECISION_TARGET = 10.0  # whole decision: at least 10x faster than LiteLLM's Router
CONDITION_TARGET = 5.0  # compiled condition: at most 5x hand-written Python

# The four limit scopes of the packaged default policy (global, user, provider, ip), so a
# "whole decision" checks and consumes four buckets in the memory store. Their sizes are
# raised so the tens of thousands of decisions a run makes within seconds stay allowed: the
# default sizes would turn nearly every timed decision into a denial.
LIMITS = """
limit global    1000M per 1m
limit user      1M per 1m
limit provider  1000M per 1m
limit ip        1M per 1m
"""
# The default policy's real limit sizes, for the one row that times denials.
DEFAULT_LIMITS = """
limit global    10000 per 1m burst 1000
limit user      100 per 1m burst 10
limit provider  1000 per 1m burst 100
limit ip        50 per 1m burst 5
"""

# Our strategy name -> (policy `strategy` value, LiteLLM routing_strategy or None).
STRATEGIES: dict[str, tuple[str, str | None]] = {
    "model-specific": ("model-specific", "simple-shuffle"),
    "latency": ("latency", "latency-based-routing"),
    "cost": ("cost", "cost-based-routing"),
    "weighted": ("weighted(latency: 60%, cost: 40%)", None),
    "round-robin": ("round-robin", None),
    "failover": ("failover", None),
}

LITELLM_PREFIX = {"claude": "anthropic", "gemini": "gemini", "openai": "openai"}

PROMPTS = (
    "Summarise this paragraph in one sentence.",
    "Translate 'good morning' into French, German and Italian, and explain the differences.",
    "hi",
    "Write a haiku about rate limits. " * 4,
    "What is the capital of Australia? Answer with one word.",
    "Explain token buckets to an on-call engineer at 3 a.m. " * 8,
)


# ---------------------------------------------------------------- timing


@dataclass
class Mode:
    name: str
    target_ns: int  # wall time of one timed repeat (rows without a ratio)
    repeats: int
    max_ops: int  # cap on operations per repeat for the per-call (decision) loops
    block_ns: int  # wall time of one side's block in a pair (sizes calibrated to it)
    least: tuple[int, int]  # at least this many decisions, LiteLLM picks per block


QUICK = Mode("quick", 25_000_000, 5, 4_000, block_ns=20_000_000, least=(100, 10))
FULL = Mode("full", 120_000_000, 9, 20_000, block_ns=100_000_000, least=(500, 50))


@dataclass
class Timing:
    per_op_ns: list[float] = field(default_factory=list)  # one figure per repeat
    ops: int = 0  # operations per repeat
    error: str | None = None  # the operation could not run (e.g. unsupported)

    @property
    def median_us(self) -> float:
        return statistics.median(self.per_op_ns) / 1000

    @property
    def min_us(self) -> float:
        return min(self.per_op_ns) / 1000

    @property
    def max_us(self) -> float:
        return max(self.per_op_ns) / 1000


def _gc_off_window(run: Callable[[Any], int], items: Any) -> int:
    """Run one timed window with the collector off; `run` returns elapsed nanoseconds."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run(items)
    finally:
        if was_enabled:
            gc.enable()


def measure(
    run: Callable[[Any], int],
    make_items: Callable[[int, int], Any],
    ops_of: Callable[[Any], int],
    mode: Mode,
    *,
    probe_ops: int,
    max_ops: int,
) -> Timing:
    """Calibrate the number of operations to `mode.target_ns` per repeat, then time repeats.

    `make_items(repeat, n)` builds the inputs of one repeat outside the timing window,
    `run(items)` performs them and returns the elapsed nanoseconds, `ops_of(items)` counts
    the operations in `items`.
    """
    probe = make_items(-1, probe_ops)
    run(probe)  # warm-up: first-call costs, lazy imports, caches of code objects
    elapsed = max(_gc_off_window(run, probe), 1)
    per_op = elapsed / ops_of(probe)
    n = int(min(max_ops, max(probe_ops, mode.target_ns / per_op)))
    timing = Timing()
    for repeat in range(mode.repeats):
        items = make_items(repeat, n)
        elapsed = _gc_off_window(run, items)
        timing.ops = ops_of(items)
        timing.per_op_ns.append(elapsed / timing.ops)
    return timing


def call_each(op: Callable[[Any], Any]) -> Callable[[list[Any]], int]:
    """A timed loop calling `op` once per item."""

    def run(items: list[Any]) -> int:
        clock = time.perf_counter_ns
        start = clock()
        for item in items:
            op(item)
        return clock() - start

    return run


# ---------------------------------------------------------------- requests


def client(tag: int, i: int) -> tuple[str, str]:
    """(user, IPv4) of request i of batch `tag`: distinct for every (tag, i) with
    -64 <= tag < 65,472 and i < 65,536 (an odd multiplier is a bijection mod 2^32), so no
    cache keyed by user or IP hides work and every request opens its own buckets."""
    k = ((tag + 64) * 65_536 + i) * 2_654_435_761 % 2**32
    return f"user-{k:08x}", f"{k >> 24}.{(k >> 16) & 255}.{(k >> 8) & 255}.{k & 255}"


def chat_text(tag: int, i: int) -> str:
    return f"{PROMPTS[i % len(PROMPTS)]} [{tag}-{i}]"


def make_requests(tag: int, n: int, *, chat: bool = False) -> list[dict[str, Any]]:
    """`n` distinct request dicts: a fresh id, user and IP each (see `client`). `chat`: the
    text as a wire body's `messages` (one user message, the text LiteLLM's side gets from
    `make_messages`), else as `prompt`."""
    out = []
    for i in range(n):
        user, ip = client(tag, i)
        request: dict[str, Any] = {"id": f"req-{tag}-{i}", "user": user, "ip": ip}
        if chat:
            request["messages"] = [{"role": "user", "content": chat_text(tag, i)}]
        else:
            request["prompt"] = PROMPTS[i % len(PROMPTS)]
        if i % 3 == 0:
            request["max_tokens"] = 512
        out.append(request)
    return out


def make_messages(tag: int, n: int) -> list[list[dict[str, str]]]:
    """The LiteLLM side's inputs: the same texts as chat messages, one list per call."""
    return [[{"role": "user", "content": chat_text(tag, i)}] for i in range(n)]


# ---------------------------------------------------------------- our decisions


def engine_for(strategy_value: str, limits: str = LIMITS) -> PolicyEngine:
    """The packaged catalog (no `catalog` line), one strategy, four limits, memory store."""
    return PolicyEngine.from_text(f"defaults {{ strategy {strategy_value} }}\n{limits}")


def _check_allowed(engine: PolicyEngine, facts: dict[str, Any], name: str) -> None:
    """After timing: fresh decisions must still be allowed with every limit reported, or the
    rows timed something other than a whole allowed decision."""
    sample = [engine.evaluate(r) for r in make_requests(10_000, 50)]
    facts[f"denied:{name}"] = sum(not d.allowed for d in sample)
    facts[f"limits:{name}"] = min(len(d.rate_limits) for d in sample)


def bench_ours(
    mode: Mode, engines: Mapping[str, PolicyEngine], paired: set[str]
) -> tuple[dict[str, Timing], dict[str, Timing], dict[str, Any]]:
    """(whole decisions by strategy, partial rows by label, facts). Strategies in `paired`
    are timed in their pairs against LiteLLM instead (`bench_vs_litellm`)."""
    whole: dict[str, Timing] = {}
    parts: dict[str, Timing] = {}
    facts: dict[str, Any] = {}
    for name, engine in engines.items():
        first = engine.evaluate(make_requests(0, 1)[0])
        facts[f"pick:{name}"] = f"{first.provider}/{first.model}"
        if name in paired:
            continue
        whole[name] = measure(
            call_each(engine.evaluate),
            lambda tag, n: make_requests(tag, n, chat=True),
            len,
            mode,
            probe_ops=200,
            max_ops=mode.max_ops,
        )

    # Where a decision's time goes, for one strategy: routing alone, then routing + limits.
    engine = engine_for(STRATEGIES["model-specific"][0])
    program, state, limiter = engine.program, EvalState(), engine.limiter

    def route_only(env: Mapping[str, Any]) -> Any:
        return evaluate(program, env, state=state)

    def route_and_limit(env: Mapping[str, Any]) -> Any:
        return evaluate(program, env, state=state, limiter=limiter)

    def envs(tag: int, n: int) -> list[dict[str, Any]]:
        return [to_env(validate(r)) for r in make_requests(tag, n)]

    for label, fn in (
        ("model-specific: routing only (env prebuilt)", route_only),
        ("model-specific: routing + 4 limits (env prebuilt)", route_and_limit),
    ):
        parts[label] = measure(call_each(fn), envs, len, mode, probe_ops=200, max_ops=mode.max_ops)

    # A decision keeps the ranking it made per (input tokens, max_tokens) and reuses it for
    # the next request with the same pair (docs/metrics.md); the rows above repeat six
    # prompts, so nearly every decision reuses one. Here no pair ever repeats: the cost of
    # a decision that reuses nothing.
    fresh = itertools.count()

    def unseen_pairs(tag: int, n: int) -> list[dict[str, Any]]:
        requests = make_requests(tag, n, chat=True)
        for r in requests:
            k = next(fresh)
            r["max_tokens"] = 256 + k % 3840
            r["messages"][0]["content"] += " and" * (k // 3840 % 64)
        return requests

    for name in ("model-specific", "latency"):
        engine = engines[name]
        parts[f"{name}: every (tokens, max_tokens) new"] = measure(
            call_each(engine.evaluate), unseen_pairs, len, mode, probe_ops=200, max_ops=mode.max_ops
        )

    # Denials: one user over the default policy's `limit user 100 per 1m burst 10`.
    engine = engine_for(STRATEGIES["model-specific"][0], DEFAULT_LIMITS)

    def hammering(tag: int, n: int) -> list[dict[str, Any]]:
        requests = make_requests(tag, n)
        for r in requests:
            r["user"] = "hot-user"
        return requests

    for r in hammering(-2, 200):  # spend the user's 110 first
        engine.evaluate(r)
    parts["model-specific: denied by the user limit"] = measure(
        call_each(engine.evaluate), hammering, len, mode, probe_ops=200, max_ops=mode.max_ops
    )
    sample = [engine.evaluate(r) for r in hammering(10_000, 50)]
    facts["denied:hammer"] = sum(not d.allowed for d in sample)
    return whole, parts, facts


def bench_validation(mode: Mode) -> dict[str, Timing]:
    rows = {
        "validate + to_env (pydantic)": measure(
            call_each(lambda r: to_env(validate(r))),
            make_requests,
            len,
            mode,
            probe_ops=200,
            max_ops=mode.max_ops,
        )
    }
    try:
        from engine.routing.request import env_of
    except ImportError:  # older engine: no fast path
        return rows
    rows["env_of (fast path, as evaluate)"] = measure(
        call_each(env_of), make_requests, len, mode, probe_ops=200, max_ops=mode.max_ops
    )
    return rows


# ---------------------------------------------------------------- conditions

_TEAMS = frozenset(("a", "b", "c"))


def plain_eq(r: Mapping[str, Any], m: Any) -> bool:
    return r["region"] == "eu"


def plain_and_or(r: Mapping[str, Any], m: Any) -> bool:
    max_tokens = r["max_tokens"]
    max_cost = r["max_cost"]
    return (r["region"] == "eu" and max_tokens is not None and max_tokens <= 4096) or (
        max_cost is not None and max_cost <= 0.001
    )


def plain_membership(r: Mapping[str, Any], m: Any) -> bool:
    team = r["metadata"].get("team")
    return team is not None and team in _TEAMS and not r["requires_vision"]


CONDITIONS: list[tuple[str, str, Callable[[Mapping[str, Any], Any], bool]]] = [
    ("cond 1: equality", 'request.region == "eu"', plain_eq),
    (
        "cond 2: and/or, number, money",
        '(request.region == "eu" and request.max_tokens <= 4096) or request.max_cost <= $0.001',
        plain_and_or,
    ),
    (
        "cond 3: metadata in list, not",
        'request.metadata.team in ["a", "b", "c"] and not request.requires_vision',
        plain_membership,
    ),
]


def compiled(condition: str) -> Callable[[Mapping[str, Any], Any], bool]:
    policy = parse(f"route r when {condition} {{ }}")
    (route,) = [s for s in policy.statements if isinstance(s, policy_ast.Route)]
    assert route.when is not None
    return compile_condition(route.when)


def condition_envs(count: int = 1024) -> list[dict[str, Any]]:
    """Requests that make each condition true and false at different points."""
    rng = random.Random(8)
    envs = []
    for i in range(count):
        request: dict[str, Any] = {"id": f"c-{i}", "user": f"user-{i % 100}", "prompt": "hi"}
        region = rng.choice(["eu", "us", "ap", None])
        if region is not None:
            request["region"] = region
        max_tokens = rng.choice([None, 256, 4096, 8000])
        if max_tokens is not None:
            request["max_tokens"] = max_tokens
        max_cost = rng.choice([None, 0.0005, 0.001, 0.05])
        if max_cost is not None:
            request["max_cost"] = max_cost
        team = rng.choice(["a", "b", "c", "d", None])
        if team is not None:
            request["metadata"] = {"team": team, "tier": "free"}
        request["requires_vision"] = rng.random() < 0.3
        envs.append(to_env(validate(request)))
    return envs


def cycle_pool(pool: list[Any]) -> Callable[[int, int], tuple[list[Any], int]]:
    """Items for very cheap operations: the pool, `rounds` times (ops rounded up)."""

    def make(tag: int, n: int) -> tuple[list[Any], int]:
        return pool, max(1, -(-n // len(pool)))

    return make


def pool_ops(items: tuple[list[Any], int]) -> int:
    return len(items[0]) * items[1]


def call_pool(fn: Callable[[Any, Any], Any]) -> Callable[[tuple[list[Any], int]], int]:
    def run(items: tuple[list[Any], int]) -> int:
        pool, rounds = items
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(rounds):
            for env in pool:
                fn(env, None)
        return clock() - start

    return run


def empty_pool_loop(items: tuple[list[Any], int]) -> int:
    pool, rounds = items
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(rounds):
        for _env in pool:
            pass
    return clock() - start


def pool_side(
    fn: Callable[[Any], Any], pool: list[Any], passes: int, overhead_ns: float
) -> Callable[[Any], float]:
    """A side of a round: `passes` passes of `fn(item)` over `pool`, ns per call with the
    bare loop's `overhead_ns` taken out (the round's own inputs are not used: the pool is
    the same for every side)."""

    def side(_: Any) -> float:
        clock = time.perf_counter_ns
        start = clock()
        for _ in range(passes):
            for item in pool:
                fn(item)
        return max((clock() - start) / (passes * len(pool)) - overhead_ns, 0.001)

    return side


def bare_loop_ns(pool: list[Any], passes: int) -> float:
    """The empty loop's ns per iteration over `pool`: the median of MIN_PAIRS blocks."""
    figures = rounds(
        MIN_PAIRS, {"loop": lambda _: empty_pool_loop((pool, passes)) / (passes * len(pool))}, int
    )
    return statistics.median(figures["loop"])


def pool_passes(fn: Callable[[Any], Any], pool: list[Any], block_ns: float) -> int:
    """Passes over `pool` for a block of about `block_ns` (one warm pass measures it)."""
    one = gc_off(lambda: per_op_ns(fn, pool))
    return block_size(one * len(pool), block_ns, 1, 10_000)


def plain_eq_call(env: Mapping[str, Any]) -> bool:
    return plain_eq(env, None)


def bench_conditions(
    mode: Mode, pairs: int
) -> tuple[list[tuple[str, str, dict[str, list[float]]]], float]:
    """(label, text, {"ours": ns per pair, "plain": ns per pair}) per condition, and the
    bare loop's ns: compiled and hand-written sides in A/B pairs over the same pool."""
    envs = condition_envs()
    passes = pool_passes(plain_eq_call, envs, mode.block_ns)
    overhead = bare_loop_ns(envs, passes)
    rows = []
    for label, text, plain in CONDITIONS:
        fn = compiled(text)
        for env in envs:  # same semantics, or the comparison means nothing
            if fn(env, None) != plain(env, None):
                raise SystemExit(f"{label}: compiled and plain Python disagree on {env!r}")
        sides = {
            "ours": pool_side(lambda env, f=fn: f(env, None), envs, passes, overhead),
            "plain": pool_side(lambda env, f=plain: f(env, None), envs, passes, overhead),
        }
        for side in sides.values():  # warm-up
            side(None)
        rows.append((label, text, rounds(pairs, sides, int)))
    return rows, overhead


# ---------------------------------------------------------------- LiteLLM


def litellm_version() -> str | None:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None


def litellm_routers() -> tuple[dict[str, Any], dict[str, str]]:
    """(LiteLLM routing_strategy -> Router over the same 11 models and prices, facts).
    Raises ImportError without litellm."""
    warnings.simplefilter("ignore")  # async_get_available_deployment is deprecated in 1.110
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    logging.getLogger("LiteLLM Router").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    from litellm import Router

    facts = {"import_s": f"{time.perf_counter() - t0:.2f}"}
    model_list = []
    for m in PolicyEngine().program.catalog.models:  # the same 11 models, the same prices
        params = {
            "model": f"{LITELLM_PREFIX.get(m.provider, m.provider)}/{m.id}",
            "api_key": "sk-fake",
            "input_cost_per_token": m.input_price / 1e6,
            "output_cost_per_token": m.output_price / 1e6,
        }
        model_list.append({"model_name": "llm", "litellm_params": params})
    facts["deployments"] = str(len(model_list))
    routers = {
        peer: Router(model_list=model_list, routing_strategy=peer)
        for _, peer in STRATEGIES.values()
        if peer is not None
    }
    return routers, facts


@dataclass
class Paired:
    """One decision row against LiteLLM: ns per operation per pair, or why it was not run."""

    ours: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    error: str | None = None


def bench_vs_litellm(
    mode: Mode, pairs: int, engines: Mapping[str, PolicyEngine]
) -> tuple[dict[str, Paired], dict[str, str]]:
    """(`"<routing_strategy> async|sync"` -> Paired, facts): our whole decision on a chat
    body against LiteLLM's pick on the same text, A/B pairs with fresh inputs each."""
    routers, facts = litellm_routers()
    results: dict[str, Paired] = {}
    sizes: dict[str, tuple[int, int]] = {}
    loop = asyncio.new_event_loop()
    try:
        for base, (name, (_, peer)) in enumerate(STRATEGIES.items()):
            if peer is None:
                continue
            router, evaluate = routers[peer], engines[name].evaluate

            async def many(items: list[Any], router: Any = router) -> int:
                clock = time.perf_counter_ns
                start = clock()
                for messages in items:
                    await router.async_get_available_deployment(
                        model="llm", messages=messages, request_kwargs={}
                    )
                return clock() - start

            def run_async(items: list[Any], many: Any = many) -> float:
                return loop.run_until_complete(many(items)) / len(items)

            def run_sync(items: list[Any], router: Any = router) -> float:
                return per_op_ns(
                    lambda m: router.get_available_deployment(model="llm", messages=m), items
                )

            for offset, (kind, run_peer) in enumerate((("async", run_async), ("sync", run_sync))):
                key = f"{peer} {kind}"
                try:
                    if kind == "async":
                        chosen = loop.run_until_complete(
                            router.async_get_available_deployment(
                                model="llm", messages=make_messages(0, 1)[0], request_kwargs={}
                            )
                        )
                    else:
                        chosen = router.get_available_deployment(
                            model="llm", messages=make_messages(0, 1)[0]
                        )
                except Exception as err:  # an unsupported pick: report it, time nothing
                    first_sentence = str(err).split(",")[0].split(". ")[0]
                    results[key] = Paired(error=f"{type(err).__name__}: {first_sentence}")
                    continue
                facts[f"pick:{key}"] = str(chosen.get("litellm_params", {}).get("model"))
                tag0 = 1_000 * (2 * base + offset + 1)  # fresh users and IPs per engine
                sides = {
                    "ours": lambda items, e=evaluate: per_op_ns(e, items[0]),
                    "peer": lambda items, r=run_peer: r(items[1]),
                }
                # first-call costs out of the pairs, and each side's block sized to block_ns
                probe = (make_requests(tag0 + 999, 100, chat=True), make_messages(tag0, 5))
                ours_n, peer_n = (
                    block_size(gc_off(functools.partial(sides[side], probe)), mode.block_ns, *n)
                    for side, n in (
                        ("ours", (mode.least[0], 5_000)),
                        ("peer", (mode.least[1], 500)),
                    )
                )
                sizes[key] = (ours_n, peer_n)

                def inputs(i: int, tag0: int = tag0, n: tuple[int, int] = (ours_n, peer_n)) -> Any:
                    return (
                        make_requests(tag0 + i, n[0], chat=True),
                        make_messages(tag0 + i, n[1]),
                    )

                figures = rounds(pairs, sides, inputs)
                results[key] = Paired(ours=figures["ours"], peer=figures["peer"])
        facts["blocks"] = ", ".join(f"{k} {o}/{p}" for k, (o, p) in sizes.items())
    finally:
        loop.close()
    return results, facts


# ---------------------------------------------------------------- report


def fmt_us(us: float) -> str:
    if us < 1:
        return f"{us:.3f}"
    if us < 100:
        return f"{us:.2f}"
    return f"{us:.1f}"


def print_table(rows: list[tuple[str, ...]]) -> None:
    header = ("operation", "ours µs", "peer", "peer µs", "ratio", "target", "met?")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {1, 3, 4}

    def line(r: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return " | ".join(cells).rstrip()

    print(line(header))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(line(r) if r[0] else "")


def decision_row(
    name: str, ours: Timing | None, peer_key: str | None, peers: Mapping[str, Paired] | None
) -> tuple[str, ...]:
    """A whole-decision row: a paired one against LiteLLM (ours and the peer from the same
    pairs, the ratio per pair: median and min–max), or ours alone (`ours`, repeats)."""
    label = f"evaluate {name}"
    alone = fmt_us(ours.median_us) if ours is not None else "—"
    if peer_key is None:
        return (label, alone, "—", "", "", "", "")
    paired = None if peers is None else peers.get(peer_key)
    if paired is None:
        return (label, alone, f"litellm {peer_key}", "—", "", "≥10×", "skip")
    if paired.error:
        return (label, "—", f"litellm {peer_key}", "n/a", "", "≥10×", "n/a")
    per_pair = ratios(paired.peer, paired.ours)
    met = "yes" if statistics.median(per_pair) >= DECISION_TARGET else "NO"
    return (
        label,
        fmt_us(us(paired.ours)),
        f"litellm {peer_key}",
        fmt_us(us(paired.peer)),
        ratio_cell(per_pair, 1),
        "≥10×",
        met,
    )


def environment(litellm: str | None) -> list[str]:
    return [
        f"date      {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}",
        f"python    {platform.python_version()} ({platform.python_implementation()})",
        f"machine   {platform.platform()} {platform.machine()}, {os.cpu_count()} CPUs",
        f"litellm   {litellm or 'not installed'}",
    ]


def profile(strategy_name: str, count: int = 20_000) -> None:
    engine = engine_for(STRATEGIES[strategy_name][0])
    requests = make_requests(99, count)
    for r in requests[:200]:
        engine.evaluate(r)
    profiler = cProfile.Profile()
    profiler.enable()
    for r in requests:
        engine.evaluate(r)
    profiler.disable()
    print(f"\ncProfile: {count} × PolicyEngine.evaluate, strategy {strategy_name}, by tottime")
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks, fewer repeats")
    parser.add_argument(
        "--profile",
        metavar="STRATEGY",
        choices=sorted(STRATEGIES),
        help="after the table, cProfile PolicyEngine.evaluate for this strategy",
    )
    parser.add_argument("--spread", action="store_true", help="also print min/max per row")
    pairs_option(parser)
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    started = time.perf_counter()

    version = litellm_version()
    print(
        f"policyctl eval bench — {mode.name}: ratio rows over {args.pairs} A/B pairs"
        f" (each side's block ~{mode.block_ns // 1_000_000} ms), other rows the median of"
        f" {mode.repeats} repeats"
    )
    for line in environment(version):
        print(line)
    print()

    engines = {name: engine_for(value) for name, (value, _) in STRATEGIES.items()}
    peers: dict[str, Paired] | None = None
    peer_facts: dict[str, str] = {}
    if version is None:
        print("litellm not installed: pip install '.[bench]'\n")
    else:
        try:
            peers, peer_facts = bench_vs_litellm(mode, args.pairs, engines)
        except ImportError as err:
            print(f"litellm not importable ({err}): pip install '.[bench]'\n")
    paired = {n for n, (_, p) in STRATEGIES.items() if peers is not None and f"{p} async" in peers}
    settle()  # what exists now (litellm, routers, engines) out of each block's collect
    whole, parts, facts = bench_ours(mode, engines, paired)
    for name, engine in engines.items():
        _check_allowed(engine, facts, name)
    validation = bench_validation(mode)
    conditions, overhead = bench_conditions(mode, args.pairs)

    rows: list[tuple[str, ...]] = []
    for name, (_, peer) in STRATEGIES.items():
        if peer is None:
            rows.append(decision_row(name, whole[name], None, peers))
            continue
        for kind in ("async", "sync"):
            rows.append(decision_row(name, whole.get(name), f"{peer} {kind}", peers))
    rows.append(("",) * 7)
    for label, t in [*parts.items(), *validation.items()]:
        rows.append((label, fmt_us(t.median_us), "—", "", "", "", ""))
    rows.append(("",) * 7)
    for label, _, figures in conditions:
        per_pair = ratios(figures["ours"], figures["plain"])
        met = "yes" if statistics.median(per_pair) <= CONDITION_TARGET else "NO"
        rows.append(
            (
                label,
                fmt_us(us(figures["ours"])),
                "plain Python",
                fmt_us(us(figures["plain"])),
                ratio_cell(per_pair),
                "≤5×",
                met,
            )
        )
    print_table(rows)

    print()
    print(
        f"ratio: the median over {args.pairs} A/B pairs (order alternating, fresh inputs per"
        " pair, the\ncollector off inside a block) of the ratio within each pair, min–max in"
        " parentheses;\nthe µs columns are the sides' medians over the same pairs. Decisions:"
        " peer/ours\n(higher is better, target ≥10×), ours on chat bodies (`messages`, the"
        " text LiteLLM\ngets), every request from a distinct user and IP. Conditions:"
        " ours/plain (lower\nis better, target ≤5×), times without the bare loop, which was"
        f" {fmt_us(overhead / 1000)} µs\nper iteration on both sides. Rows without a peer:"
        f" the median of {mode.repeats} repeats."
    )
    print("SPEC §8 reference (LiteLLM 1.110, Python 3.11, 2 cores): simple-shuffle 135 µs")
    print("(async), latency-based 287 µs, cost-based 419 µs; plain condition 0.06 µs. The")
    print("simple-shuffle figure is the async pick, so the async rows are the like-for-like ones;")
    print("cost-based routing has only an async pick.")
    for key, p in (peers or {}).items():
        if p.error:
            print(f"litellm {key}: not timed, the pick raised {p.error}")
    limits_seen = min(facts[f"limits:{name}"] for name in STRATEGIES)
    denied = sum(facts[f"denied:{name}"] for name in STRATEGIES)
    print(f"whole decisions: PolicyEngine.evaluate on request dicts, {limits_seen} rate-limit")
    print("buckets checked and consumed per decision (memory store); after timing, ", end="")
    print(f"{denied} of {50 * len(STRATEGIES)} sampled decisions were denied", end="")
    print(" — the rows did not time allowed decisions!" if denied else ".")
    if facts["denied:hammer"] != 50:
        print(f"the denial row's sample had {50 - facts['denied:hammer']} allowed decisions!")
    for name in ("model-specific", "latency", "cost"):
        peer = STRATEGIES[name][1]
        print(
            f"first pick, {name}: ours {facts[f'pick:{name}']}; litellm {peer} "
            f"{peer_facts.get(f'pick:{peer} async', '—')}"
        )
    if "blocks" in peer_facts:
        print(f"decisions per block, ours/litellm: {peer_facts['blocks']}")
    if "import_s" in peer_facts:
        print(f"import litellm: {peer_facts['import_s']} s")

    if args.spread:
        print("\nspread (min .. median .. max µs per op; paired rows: over the pairs):")
        spread: list[tuple[str, list[float]]] = []
        spread += [("evaluate " + k, t.per_op_ns) for k, t in whole.items()]
        spread += [(k, t.per_op_ns) for k, t in [*parts.items(), *validation.items()]]
        for key, p in (peers or {}).items():
            if not p.error:
                spread += [(f"ours, paired with {key}", p.ours), (f"litellm {key}", p.peer)]
        for label, _, figures in conditions:
            spread += [(f"{label} compiled", figures["ours"]), (f"{label} plain", figures["plain"])]
        for label, values in spread:
            print(
                f"  {label:48} {fmt_us(min(values) / 1000):>8} .. {fmt_us(us(values)):>8} .. "
                f"{fmt_us(max(values) / 1000):>8}"
            )

    print(f"\nbench time: {time.perf_counter() - started:.1f} s")
    if args.profile:
        profile(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
