"""Decisions under live outcomes with measured signals in the policy, against without.

    python bench/measured_bench.py             # 15 A/B pairs per row, blocks of 1,500
    python bench/measured_bench.py --quick     # 15 pairs of blocks a fifth of the size

Both engines are warmed as in bench/live_bench.py (the packaged catalog, log-normal
latencies around each model's prior, 2% failures) and every timed decision is followed by
one outcome for the model it chose. Side A's policy is B's plus measured signals:

- "degraded when": `degraded when model.p95 > 60s` (no model is that slow: the rule's
  own cost, judged once per metrics snapshot in the route's measured columns) and
  `> 3s` (the models whose priors are slow are taken out: the cost of ranking a subset,
  which any health rule that drops models has, e.g. `min_success_rate`);
- "require on p95": `require model.p95 < 10s and model.success_rate > 50%` in a catch-all
  route (decided once per snapshot, for each model: the shortcut still runs).

Each row is the median ratio A/B over the pairs (alternating which side runs first) and
its min–max; the target is ≤ 1.1× where the rule drops nothing (a policy that reads
measurements costs about what one that does not costs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import live_bench  # noqa: E402

from engine import PolicyEngine  # noqa: E402

STRATEGY = "weighted(latency: 60%, cost: 40%)"
BASE = f"defaults {{\n    strategy {STRATEGY}\n    {live_bench.HEALTH}\n"
ROWS = {
    "degraded when, none degraded": (
        BASE + "    degraded when model.p95 > 60s\n}\n",
        BASE + "}\n",
    ),
    "degraded when, the slow degraded": (
        BASE + "    degraded when model.p95 > 3s\n}\n",
        BASE + "}\n",
    ),
    "require on p95": (
        BASE + "}\nroute all {\n    require model.p95 < 10s and model.success_rate > 50%\n}\n",
        BASE + "}\nroute all {\n}\n",
    ),
}


def warmed(text: str, seed: int) -> tuple[PolicyEngine, live_bench.Outcomes]:
    engine = PolicyEngine.from_text(text)
    world = live_bench.Outcomes(engine, seed)
    keys = list(world.prior)
    for i in range(live_bench.WARM_OUTCOMES):
        key = keys[i % len(keys)]
        provider, model = key.split("/", 1)
        engine.record_outcome(
            provider, model, latency_ms=world.latency(key), success=world.success()
        )
    return engine, world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int, default=15)
    args = parser.parse_args()
    block = live_bench.OURS_BLOCK // (5 if args.quick else 1)
    print("| policy reads | ratio A/B (median, min–max) | A ns/decision | B ns/decision |")
    print("|---|---|---|---|")
    for name, (with_signals, without) in ROWS.items():
        a_engine, a_world = warmed(with_signals, 1)
        b_engine, b_world = warmed(without, 1)
        ratios, a_times, b_times = [], [], []
        for pair in range(args.pairs):
            requests = [{"id": f"r{pair}-{i}", "prompt": "hello"} for i in range(block)]
            sides = [(a_engine, a_world, a_times), (b_engine, b_world, b_times)]
            for engine, world, times in sides if pair % 2 == 0 else sides[::-1]:
                ns, _ = live_bench.gc_off(
                    lambda e=engine, w=world, r=requests: live_bench.time_live(e, w, r)
                )
                times.append(ns)
            ratios.append(a_times[-1] / b_times[-1])
        print(
            f"| {name} | {live_bench.summary(ratios)} | {statistics.median(a_times):,.0f}"
            f" | {statistics.median(b_times):,.0f} |"
        )


if __name__ == "__main__":
    main()
