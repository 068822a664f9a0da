"""Whole decisions of two checkouts, by process CPU time: an A/B of a change to the limiter.

    python bench/limits_ab.py /work/main .                     # 12 pairs of 2,000 decisions
    python bench/limits_ab.py /work/main . --pairs 20 --block 2000 --strategy cost
    python bench/limits_ab.py /work/main . --limiter            # the limiter alone

One child process per checkout (its own `engine`), each with the engine of
`bench/eval_bench.py` (the packaged catalog, one strategy, its four limits: global, user,
provider, ip; memory store; none binds), warmed with one block. Then pairs: each child
decides one block of fresh `make_requests` (built outside the timer, the same tags on both
sides), timed with `time.process_time_ns` (its own CPU time: time spent preempted by other
jobs on a shared machine is not counted), the collector collected before and off during
the block; the order within a pair alternates (A B, then B A). A pair's ratio is B's mean
over A's; the row shows the median ratio and its min–max.

`--first-limit`: the first limit's marginal cost in a decision, as `bench/limits_bench.py`
measures it (the design's 11-model catalog, model-specific, every request from its own user
and IP): each child times a block of decisions with one `limit user` and the same block with
no limit, back to back (the order alternating), and answers the difference per decision.

`--limiter`: the limiter's share alone. Each child records the `Limiter.check_plain` and
`Limiter.check` calls its engine makes for a block's requests (the engine's own arguments:
limits, request, first or ranked candidates), then times replaying them on a fresh
`Limiter` over a fresh memory store, per decision.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def first_limit_child(root: str) -> None:
    """Serve blocks on `root`: read `tag n`, answer the first limit's ns per decision."""
    sys.path[:0] = [root, str(Path(root) / "bench")]
    import limits_bench

    from engine import PolicyEngine

    catalog = Path(root) / "examples" / "policies" / "models.yaml"
    head = f'catalog "{catalog}"\ndefaults {{ strategy model-specific }}\n'
    plain = PolicyEngine.from_text(head).evaluate
    limited = PolicyEngine.from_text(head + limits_bench.LIMIT_LINES[0]).evaluate
    requests = limits_bench.distinct_requests()
    users = len(requests)
    clock = time.process_time_ns
    for line in sys.stdin:
        tag, n = (int(x) for x in line.split())
        start = (tag * n) % users
        block = [requests[(start + i) % users] for i in range(n)]
        spent = {}
        gc.collect()
        gc.disable()
        for side in (plain, limited) if tag % 2 else (limited, plain):
            began = clock()
            for request in block:
                side(request)
            spent[side] = clock() - began
        gc.enable()
        print((spent[limited] - spent[plain]) / n, flush=True)


def child(root: str, strategy: str, limiter: bool) -> None:
    """Serve blocks on `root`: read a line `tag n`, answer ns per decision."""
    sys.path[:0] = [root, str(Path(root) / "bench")]
    import eval_bench

    engine = eval_bench.engine_for(eval_bench.STRATEGIES[strategy][0])
    evaluate = engine.evaluate
    for line in sys.stdin:
        tag, n = (int(x) for x in line.split())
        requests = eval_bench.make_requests(tag, n, chat=True)
        if limiter:
            print(replay_checks(engine, requests), flush=True)
            continue
        gc.collect()
        gc.disable()
        clock = time.process_time_ns
        start = clock()
        for request in requests:
            evaluate(request)
        elapsed = clock() - start
        gc.enable()
        sample = evaluate(eval_bench.make_requests(tag, 1, chat=True)[0])
        assert sample.allowed and len(sample.rate_limits) == 4, "every limit reported, allowed"
        print(elapsed / n, flush=True)


def replay_checks(engine: Any, requests: list[dict[str, Any]]) -> float:
    """ns per decision in the limiter, replaying the `Limiter.check_plain` and
    `Limiter.check` calls `engine` makes for `requests` (a checkout without `check_plain`
    makes `check` calls alone)."""
    from engine.limits.limiter import Limiter
    from engine.limits.stores.memory import MemoryStore

    calls: list[tuple[bool, tuple[Any, ...], dict[str, Any]]] = []
    own = engine.limiter
    check = own.check
    plain = getattr(own, "check_plain", None)

    def record(limits: Any, env: Any, candidates: Any, **options: Any) -> Any:
        ranked = list(candidates)
        calls.append((False, (limits, env, ranked), options))
        return check(limits, env, iter(ranked), **options)

    def record_plain(*args: Any) -> Any:
        calls.append((True, args, {}))
        return plain(*args)  # type: ignore[misc]

    own.check = record  # this engine's instance only
    if plain is not None:
        own.check_plain = record_plain
    try:
        for request in requests:
            engine.evaluate(request)
    finally:
        del own.check
        if plain is not None:
            del own.check_plain
    fresh = Limiter(MemoryStore())
    fresh_check, fresh_plain = fresh.check, getattr(fresh, "check_plain", None)
    if calls and hasattr(fresh, "prepare"):
        fresh.prepare(calls[0][1][0])  # as the engine does when it loads the policy
    gc.collect()
    gc.disable()
    clock = time.process_time_ns
    start = clock()
    for is_plain, args, options in calls:
        if is_plain:
            fresh_plain(*args)  # type: ignore[misc]
        else:
            limits, env, ranked = args
            fresh_check(limits, env, iter(ranked), **options)
    elapsed = clock() - start
    gc.enable()
    return elapsed / len(requests)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="checkout A (the baseline)")
    parser.add_argument("b", help="checkout B")
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--block", type=int, default=2000)
    parser.add_argument("--strategy", default="model-specific")
    parser.add_argument("--limiter", action="store_true", help="time `Limiter.check` alone")
    parser.add_argument(
        "--first-limit", action="store_true", help="the first limit's marginal cost"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        if args.first_limit:
            first_limit_child(args.child)
        else:
            child(args.child, args.strategy, args.limiter)
        return
    roots = [str(Path(args.a).resolve()), str(Path(args.b).resolve())]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "-",
                "-",
                "--strategy",
                args.strategy,
                "--child",
                root,
                *(["--limiter"] if args.limiter else []),
                *(["--first-limit"] if args.first_limit else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"},
        )
        for root in roots
    ]

    def block(side: int, tag: int) -> float:
        proc = procs[side]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{tag} {args.block}\n")
        proc.stdin.flush()
        return float(proc.stdout.readline())

    for side in (0, 1):  # warm-up: first calls, caches
        block(side, -64)
    ratios: list[float] = []
    means: tuple[list[float], list[float]] = ([], [])
    for pair in range(args.pairs):
        tag = pair + 1
        order = (0, 1) if pair % 2 == 0 else (1, 0)
        got = {side: block(side, tag) for side in order}
        means[0].append(got[0])
        means[1].append(got[1])
        ratios.append(got[1] / got[0])
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    if args.first_limit:
        what = "decisions with `limit user` and without (the 11-model catalog, model-specific"
        each = "the first limit's marginal cost"
        print(f"{args.pairs} pairs of {args.block:,} {what}, memory), process CPU time")
    else:
        what = "decisions' limiter calls replayed" if args.limiter else "decisions"
        each = "each"
        print(
            f"{args.pairs} pairs of {args.block:,} {what} ({args.strategy}, 4 limits, memory),"
            " process CPU time"
        )
    for name, root, values in (("A", roots[0], means[0]), ("B", roots[1], means[1])):
        print(
            f"  {name} {root}: median {statistics.median(values) / 1000:.2f} µs {each}"
            f" (min {min(values) / 1000:.2f}, max {max(values) / 1000:.2f})"
        )
    print(
        f"  B/A: median {statistics.median(ratios):.3f} (min {min(ratios):.3f},"
        f" max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
