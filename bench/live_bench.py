"""Decisions while outcomes arrive (live metrics), against decisions with none and LiteLLM.

    python bench/live_bench.py             # 15 pairs per row, a few minutes
    python bench/live_bench.py --quick     # 15 pairs of smaller blocks
    python bench/live_bench.py --pairs 31

The normal state of a running service is a live metrics window that outcomes keep
updating. Each strategy's engine here is warmed with 30,000 outcomes over every model of
the packaged catalog (log-normal latencies around each model's prior, 2% failures), then
every timed decision is followed by one `PolicyEngine.record()` of an outcome for the model
it chose, on the real clock (the window's snapshot refreshes every `DEFAULT_REFRESH_MS`).

Rows, each of A/B pairs run back to back in alternating order (≥ 15 pairs), one block
of fresh requests per side per pair, the collector off inside a block:

- "live / no metrics": a decision with live outcomes against the same decision on an
  engine that has measured nothing (target ≤ 1.1×). Decisions are timed one by one (the
  `record()` after each is outside the timer; its own cost is the `+ record` row), on both
  sides, so the timer's overhead is the same; both sides draw an outcome for the model
  chosen after each decision (untimed), the no-metrics side without recording it, so the
  bench's own work between decisions (which slows the next decision by a few percent:
  caches) weighs on both and the ratio is what the live metrics cost;
- "live vs LiteLLM": LiteLLM's async pick (`Router.async_get_available_deployment`, no
  network, `LITELLM_LOCAL_MODEL_COST_MAP`) over the same catalog, as in
  bench/eval_bench.py, against our live decision: latency vs latency-based-routing, cost vs
  cost-based-routing, every other strategy vs simple-shuffle (target ≥ 10×).

Each row reports the median ratio over the pairs and its min–max, and the medians of the
per-operation times.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import math
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval_bench  # noqa: E402  (sets LITELLM_LOCAL_MODEL_COST_MAP before litellm loads)
from _pairs import settle  # noqa: E402

from engine import PolicyEngine  # noqa: E402
from engine.routing.metrics import DEFAULT_REFRESH_MS  # noqa: E402

# health settings a production policy has, so the live side reads them (both sides run the
# same text; without measurements they change nothing)
HEALTH = "min_success_rate 50%\n    cooldown after 5 failures for 30s"
FAILURE_RATE = 0.02
WARM_OUTCOMES = 30_000  # about 256 per model of the packaged catalog: all measured
PEERS = {"latency": "latency-based-routing", "cost": "cost-based-routing"}
OURS_BLOCK = 1_500  # decisions per side per pair
PEER_BLOCK = 150  # LiteLLM picks per pair


def engine_for(strategy_value: str) -> PolicyEngine:
    return PolicyEngine.from_text(
        f"defaults {{\n    strategy {strategy_value}\n    {HEALTH}\n}}\n{eval_bench.LIMITS}"
    )


class Outcomes:
    """Outcomes of a world where each model's latency is log-normal around its prior."""

    def __init__(self, engine: PolicyEngine, seed: int) -> None:
        self.rng = random.Random(seed)
        self.prior = {m.key: m.latency_p95_ms for m in engine.program.catalog.models}

    def latency(self, key: str) -> float:
        # p95 of lognormal(mu, 0.5) is e^(mu + 1.645·0.5): put it at the prior
        mu = math.log(self.prior[key]) - 0.8225
        return self.rng.lognormvariate(mu, 0.5)

    def success(self) -> bool:
        return self.rng.random() >= FAILURE_RATE


def warmed(strategy_value: str, seed: int) -> tuple[PolicyEngine, Outcomes]:
    engine = engine_for(strategy_value)
    world = Outcomes(engine, seed)
    keys = list(world.prior)
    for i in range(WARM_OUTCOMES):
        key = keys[i % len(keys)]
        provider, model = key.split("/", 1)
        engine.record_outcome(
            provider, model, latency_ms=world.latency(key), success=world.success()
        )
    return engine, world


def time_cold(engine: PolicyEngine, world: Outcomes, requests: list[dict[str, Any]]) -> float:
    """ns per decision, each timed alone, and followed (untimed) by the same outcome draws
    the live side makes between its decisions, but no `record()`: the bench's own work
    between decisions is on both sides, so the ratio is what the live metrics cost."""
    clock = time.perf_counter_ns
    evaluate = engine.evaluate
    latency, success = world.latency, world.success
    total = 0
    for request in requests:
        start = clock()
        decision = evaluate(request)
        total += clock() - start
        latency(f"{decision.provider}/{decision.model}"), success()
    return total / len(requests)


def time_live(
    engine: PolicyEngine, world: Outcomes, requests: list[dict[str, Any]]
) -> tuple[float, float]:
    """(ns per decision, ns per decision + its record()), each decision timed alone and
    followed by one outcome for the model it chose."""
    clock = time.perf_counter_ns
    evaluate, record = engine.evaluate, engine.record
    latency, success = world.latency, world.success
    decided = recorded = 0
    for request in requests:
        start = clock()
        decision = evaluate(request)
        middle = clock()
        ms, ok = latency(f"{decision.provider}/{decision.model}"), success()
        middle2 = clock()
        record(decision, latency_ms=ms, success=ok)
        end = clock()
        decided += middle - start
        recorded += end - middle2
    n = len(requests)
    return decided / n, (decided + recorded) / n


def gc_off(run: Callable[[], Any]) -> Any:
    gc.collect()
    gc.disable()
    try:
        return run()
    finally:
        gc.enable()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def litellm_router(routing_strategy: str) -> Any:
    warnings.simplefilter("ignore")
    logging.getLogger("LiteLLM").setLevel(logging.ERROR)
    logging.getLogger("LiteLLM Router").setLevel(logging.ERROR)
    from litellm import Router

    model_list = []
    for m in PolicyEngine().program.catalog.models:
        params = {
            "model": f"{eval_bench.LITELLM_PREFIX.get(m.provider, m.provider)}/{m.id}",
            "api_key": "sk-fake",
            "input_cost_per_token": m.input_price / 1e6,
            "output_cost_per_token": m.output_price / 1e6,
        }
        model_list.append({"model_name": "llm", "litellm_params": params})
    return Router(model_list=model_list, routing_strategy=routing_strategy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pairs", type=int, default=15, help="A/B pairs per row (≥ 15)")
    parser.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM rows")
    parser.add_argument("--quick", action="store_true", help="blocks a fifth of the size")
    args = parser.parse_args(argv)
    pairs = max(args.pairs, 1)
    global OURS_BLOCK, PEER_BLOCK
    if args.quick:
        OURS_BLOCK, PEER_BLOCK = OURS_BLOCK // 5, PEER_BLOCK // 5
    started = time.perf_counter()
    print(f"policyctl live bench — {pairs} A/B pairs per row, alternating order")
    for line in eval_bench.environment(eval_bench.litellm_version()):
        print(line)
    print(
        f"live: {WARM_OUTCOMES:,} warm outcomes, then one record() per decision, "
        f"{FAILURE_RATE:.0%} failures; snapshot refresh {DEFAULT_REFRESH_MS:g} ms; "
        f"policy: {HEALTH.replace(chr(10) + '    ', '; ')}; 4 limits"
    )
    print()

    loop = asyncio.new_event_loop()
    routers: dict[str, Any] = {}
    if not args.no_litellm:
        for peer in {*PEERS.values(), "simple-shuffle"}:
            routers[peer] = litellm_router(peer)

    def peer_block(router: Any, tag: int) -> float:
        messages = eval_bench.make_messages(tag, PEER_BLOCK)

        async def many() -> int:
            clock = time.perf_counter_ns
            start = clock()
            for m in messages:
                await router.async_get_available_deployment(
                    model="llm", messages=m, request_kwargs={}
                )
            return clock() - start

        return gc_off(lambda: loop.run_until_complete(many())) / PEER_BLOCK

    header = (
        f"{'strategy':15} | {'no metrics µs':>13} | {'live µs':>8} | {'live/none':>20} | "
        f"{'+ record µs':>11} | {'peer (async pick)':27} | {'peer µs':>8} | "
        f"{'peer/live':>22} | met"
    )
    print(header)
    print("-" * len(header))
    failures = 0
    for name, (value, _) in eval_bench.STRATEGIES.items():
        cold = engine_for(value)
        live, world = warmed(value, seed=hash(name) & 0xFFFF)
        cold_world = Outcomes(cold, seed=hash(name) & 0xFFFF)  # its draws, never recorded
        for warm in (cold, live):  # first-call costs out of the pairs
            for r in eval_bench.make_requests(-1, 300):
                warm.evaluate(r)
        settle()  # litellm, the routers, the warmed engines out of each block's collect
        cold_ns: list[float] = []
        live_ns: list[float] = []
        with_record_ns: list[float] = []
        ratios: list[float] = []
        for i in range(pairs):
            a = eval_bench.make_requests(2 * i, OURS_BLOCK)
            b = eval_bench.make_requests(2 * i + 1, OURS_BLOCK)
            run_cold = functools.partial(time_cold, cold, cold_world, a)
            run_live = functools.partial(time_live, live, world, b)
            if i % 2:
                x, y = gc_off(run_live)
                c = gc_off(run_cold)
            else:
                c = gc_off(run_cold)
                x, y = gc_off(run_live)
            cold_ns.append(c)
            live_ns.append(x)
            with_record_ns.append(y)
            ratios.append(x / c)
        peer_name = PEERS.get(name, "simple-shuffle")
        peer_cell, peer_us, peer_ratio, met = "—", "", "", ""
        if peer_name in routers:
            router = routers[peer_name]
            peer_block(router, -1)
            ours_ns: list[float] = []
            peer_ns: list[float] = []
            peer_ratios: list[float] = []
            for i in range(pairs):
                run_live = functools.partial(
                    time_live, live, world, eval_bench.make_requests(1000 + i, OURS_BLOCK)
                )
                if i % 2:
                    p = peer_block(router, i)
                    x, _ = gc_off(run_live)
                else:
                    x, _ = gc_off(run_live)
                    p = peer_block(router, i)
                ours_ns.append(x)
                peer_ns.append(p)
                peer_ratios.append(p / x)
            peer_cell = f"litellm {peer_name}"
            peer_us = f"{statistics.median(peer_ns) / 1000:.1f}"
            peer_ratio = summary(peer_ratios)
            ok = statistics.median(peer_ratios) >= 10.0
            met = "yes" if ok else "NO"
            failures += not ok
        ratio_ok = statistics.median(ratios) <= 1.1
        failures += not ratio_ok
        print(
            f"{name:15} | {statistics.median(cold_ns) / 1000:13.2f} | "
            f"{statistics.median(live_ns) / 1000:8.2f} | {summary(ratios):>20} | "
            f"{statistics.median(with_record_ns) / 1000:11.2f} | {peer_cell:27} | "
            f"{peer_us:>8} | {peer_ratio:>22} | "
            f"{'yes' if ratio_ok else 'NO'}{'/' + met if met else ''}"
        )
        stats = live.metrics
        print(
            f"{'':15}   live engine: {getattr(stats, 'rebuilds', 0)} snapshot rebuilds, "
            f"{getattr(stats, 'health_updates', 0)} failure-count updates; "
            f"first pick {live.evaluate(eval_bench.make_requests(5, 1)[0]).model}"
        )
        cold.close()
        live.close()
    loop.close()
    print()
    print("live/none: ns per live decision / ns per decision with nothing measured, per pair")
    print("(target ≤ 1.1×); peer/live: LiteLLM's async pick / our live decision (target ≥ 10×).")
    print("Medians over the pairs, min–max in parentheses; `met`: live/none, then the peer.")
    print(f"bench time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
