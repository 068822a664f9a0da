"""live/none of two checkouts, by thread CPU time: an A/B of a change to the live path.

    python bench/live_ab.py /work/main .                       # every strategy, 2 rounds
    python bench/live_ab.py /work/main . --rounds 3 --pairs 10 --strategies cost,weighted

Each run is one process on one checkout (its own `engine`), set up as
`bench/live_bench.py` sets up a row: the engine warmed with 30,000 outcomes, then pairs of
1,500-decision blocks, a decision on the engine with nothing measured against one with live
outcomes (one `record()` after each, outside the timer), in alternating order. A decision
is timed with `time.thread_time_ns`, so time the process spent preempted by other jobs is
not counted (for a shared machine); each pair gives the ratio of the two blocks' means, a
run the median over its pairs. Runs alternate between the checkouts, strategy by strategy
(A, B, A, B, …); the table shows each checkout's runs and their median.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(root: str, strategy: str, pairs: int) -> float:
    """One run on `root`: the median over `pairs` of live mean / none mean."""
    sys.path[:0] = [root, str(Path(root) / "bench")]
    import eval_bench
    import live_bench

    value = eval_bench.STRATEGIES[strategy][0]
    cold = live_bench.engine_for(value)
    live, world = live_bench.warmed(value, seed=hash(strategy) & 0xFFFF)
    for engine in (cold, live):
        for request in eval_bench.make_requests(-1, 300):
            engine.evaluate(request)
    cpu = time.thread_time_ns

    def block(engine: object, requests: list[dict[str, object]], record: bool) -> float:
        evaluate, recorded = engine.evaluate, engine.record  # type: ignore[attr-defined]
        total = 0
        for request in requests:
            start = cpu()
            decision = evaluate(request)
            total += cpu() - start
            # both sides draw the outcome (the bench's own work between decisions, as in
            # live_bench.time_cold); only the live side records it
            key = f"{decision.provider}/{decision.model}"
            ms, ok = world.latency(key), world.success()
            if record:
                recorded(decision, latency_ms=ms, success=ok)
        return total / len(requests)

    ratios = []
    for i in range(pairs):
        sides = [
            (cold, eval_bench.make_requests(2 * i, live_bench.OURS_BLOCK), False),
            (live, eval_bench.make_requests(2 * i + 1, live_bench.OURS_BLOCK), True),
        ]
        means = {}
        for engine, requests, record in sides if i % 2 == 0 else sides[::-1]:
            gc.collect()
            gc.disable()
            try:
                means[record] = block(engine, requests, record)
            finally:
                gc.enable()
        ratios.append(means[True] / means[False])
    return statistics.median(ratios)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("a", help="checkout A (e.g. /work/main)")
    parser.add_argument("b", help="checkout B")
    parser.add_argument("--rounds", type=int, default=2, help="runs per checkout and strategy")
    parser.add_argument("--pairs", type=int, default=10, help="A/B pairs of blocks per run")
    parser.add_argument("--strategies", default="", help="comma-separated (default: all)")
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "STRATEGY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(child(args.child[0], args.child[1], args.pairs))
        return 0
    roots = [str(Path(args.a).resolve()), str(Path(args.b).resolve())]
    strategies = args.strategies.split(",") if args.strategies else [
        "model-specific", "latency", "cost", "weighted", "round-robin", "failover",
    ]  # fmt: skip
    print(f"live/none by thread CPU time; A = {roots[0]}, B = {roots[1]}")
    print(f"{args.rounds} runs per side, alternating; {args.pairs} pairs of blocks per run")
    for strategy in strategies:
        runs: dict[str, list[float]] = {root: [] for root in roots}
        for _ in range(args.rounds):
            for root in roots:
                command = [sys.executable, __file__, "x", "x", "--pairs", str(args.pairs)]
                command += ["--child", root, strategy]
                out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=root)
                runs[root].append(float(out.stdout.split()[-1]))
        a, b = (runs[root] for root in roots)
        print(
            f"{strategy:15} A {statistics.median(a):.3f}× ({', '.join(f'{r:.3f}' for r in a)})"
            f"   B {statistics.median(b):.3f}× ({', '.join(f'{r:.3f}' for r in b)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
