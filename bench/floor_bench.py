"""One decision against its floor, and where its time goes.

    python bench/floor_bench.py            # 15 pairs of 2,000 decisions
    python bench/floor_bench.py --quick    # 15 pairs of 400

The floor is the same work hand-written in plain Python, as an app's own router would do
it with everything precomputed: the packaged catalog's columns as lists (prices, latency
priors, context windows, providers), and per request: read the fields, estimate the tokens
(4 characters a token), keep the models whose context fits, cost each, score each with the
same weighted formula (latency 60%, cost 40%), sort, take the best, three alternatives and
the best model of each other provider as fallbacks, take one token from four buckets
(global, user, provider, ip: dicts of [tokens, last refill]) and build a result dict. No
policy language, no validation, no explain, no metrics, no logs: what any decision costs
at least in this interpreter.

Ours is `PolicyEngine.evaluate` on the same requests (the packaged catalog, `strategy
weighted(latency: 60%, cost: 40%)`, the same four limits, memory state; distinct ids,
users and IPs over 1,000 values, as bench/eval_bench.py). The two sides run in interleaved
A/B pairs (the order alternating), the collector off inside a block; the ratio is per
pair, median and min–max. Then a cProfile of our decisions: the top functions by own time.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import eval_bench  # noqa: E402

STRATEGY = "weighted(latency: 60%, cost: 40%)"
W_LATENCY, W_COST = 0.6, 0.4
DEFAULT_OUTPUT_TOKENS = 256
# the four limits of eval_bench.LIMITS: (scope, capacity, tokens per ms)
BUCKETS = (
    ("global", 1e9, 1e9 / 60_000),
    ("user", 1e6, 1e6 / 60_000),
    ("provider", 1e9, 1e9 / 60_000),
    ("ip", 1e6, 1e6 / 60_000),
)


def floor_router(models: list[Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The hand-written decision over the catalog's columns."""
    ids = [m.id for m in models]
    providers = [m.provider for m in models]
    in_prices = [m.input_price for m in models]
    out_prices = [m.output_price for m in models]
    default_out = [
        min(DEFAULT_OUTPUT_TOKENS, m.max_tokens or DEFAULT_OUTPUT_TOKENS) for m in models
    ]
    windows = [m.context_window for m in models]
    lats = [m.latency_p95_ms for m in models]
    max_lat = max(lats)
    lat_terms = [W_LATENCY * (1.0 - x / max_lat) for x in lats]
    order_of_providers = list(dict.fromkeys(providers))
    buckets: dict[str, list[float]] = {}

    def take(key: str, capacity: float, rate: float, now: float) -> bool:
        b = buckets.get(key)
        if b is None:
            b = buckets[key] = [capacity, now]
        tokens = min(capacity, b[0] + (now - b[1]) * rate)
        if tokens < 1:
            return False
        b[0], b[1] = tokens - 1, now
        return True

    def decide(request: dict[str, Any]) -> dict[str, Any]:
        prompt = request.get("prompt") or ""
        tokens = math.ceil(len(prompt) / 4)
        max_tokens = request.get("max_tokens")
        need = tokens + (max_tokens or 0)
        pos = [i for i, w in enumerate(windows) if need <= w]
        if max_tokens is None:
            costs = [(tokens * in_prices[i] + default_out[i] * out_prices[i]) / 1e6 for i in pos]
        else:
            costs = [(tokens * in_prices[i] + max_tokens * out_prices[i]) / 1e6 for i in pos]
        top = max(costs)
        scores = [
            lat_terms[i] + W_COST * (1.0 - c / top) if top > 0 else lat_terms[i] + W_COST
            for i, c in zip(pos, costs, strict=True)
        ]
        ranked = sorted(range(len(pos)), key=scores.__getitem__, reverse=True)
        best = pos[ranked[0]]
        fallbacks = []
        wanted = [p for p in order_of_providers if p != providers[best]]
        for s in ranked:
            p = providers[pos[s]]
            if p in wanted:
                wanted.remove(p)
                fallbacks.append({"provider": p, "model": ids[pos[s]]})
                if not wanted:
                    break
        now = time.time() * 1000
        keys = ("", request.get("user") or "", providers[best], request.get("ip") or "")
        allowed = all(
            take(f"{scope}/{key}", capacity, rate, now)
            for (scope, capacity, rate), key in zip(BUCKETS, keys, strict=True)
        )
        return {
            "request_id": request.get("id"),
            "allowed": allowed,
            "provider": providers[best],
            "model": ids[best],
            "estimated_cost": costs[ranked[0]],
            "estimated_latency_ms": lats[best],
            "alternatives": [
                {"provider": providers[pos[s]], "model": ids[pos[s]], "score": scores[s]}
                for s in ranked[1:4]
            ],
            "fallbacks": fallbacks,
        }

    return decide


def block_us(decide: Callable[[dict[str, Any]], Any], requests: list[dict[str, Any]]) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for request in requests:
            decide(request)
        return (time.perf_counter_ns() - start) / len(requests) / 1000
    finally:
        gc.enable()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="blocks of 400 decisions")
    parser.add_argument("--pairs", type=int, default=15, help="A/B pairs (≥ 15)")
    args = parser.parse_args(argv)
    block = 400 if args.quick else 2_000
    engine = eval_bench.engine_for(STRATEGY)
    floor = floor_router(list(engine.program.catalog.models))
    ours = engine.evaluate
    for request in eval_bench.make_requests(-1, 500):  # warm both sides
        ours(dict(request))
        floor(dict(request))
    ratios, ours_us, floor_us = [], [], []
    for i in range(args.pairs):
        a = eval_bench.make_requests(2 * i, block)
        b = [dict(r) for r in a]
        if i % 2:
            f, o = block_us(floor, b), block_us(ours, a)
        else:
            o, f = block_us(ours, a), block_us(floor, b)
        ours_us.append(o)
        floor_us.append(f)
        ratios.append(o / f)
    sample = ours(eval_bench.make_requests(10_000, 1)[0])
    assert sample.allowed and len(sample.rate_limits) == 4, sample
    n = len(engine.program.catalog.models)
    print(f"a decision against its floor ({n} models, {STRATEGY}, 4 limits, memory state)")
    print(f"{'':34} {'µs per decision: median (min–max)':>36}")
    print(f"{'ours: PolicyEngine.evaluate':34} {_spread(ours_us):>36}")
    print(f"{'floor: the same in plain Python':34} {_spread(floor_us):>36}")
    print(
        f"ours / floor over {args.pairs} pairs: {statistics.median(ratios):.2f}×"
        f" ({min(ratios):.2f}–{max(ratios):.2f})"
    )
    requests = eval_bench.make_requests(99, 10 * block)
    profiler = cProfile.Profile()
    profiler.enable()
    for request in requests:
        ours(request)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(12)
    print(f"\ncProfile of {len(requests):,} decisions (ours), top functions by own time:")
    for line in out.getvalue().splitlines():
        if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced")):
            print(line.replace(str(ROOT) + "/", ""))
    return 0


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


if __name__ == "__main__":
    sys.exit(main())
