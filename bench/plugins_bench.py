"""What enforcing a classifier plugin's timeout costs a call: the handoff to its worker.

    python bench/plugins_bench.py [--quick] [--pairs N]

Interleaved A/B pairs (at least 15; the order alternates from pair to pair): A calls a
trivial plugin declared `inline=True` through `Plugin.run` (on the deciding thread, as
every plugin ran before the timeout was enforced); B calls the same function declared
without it, which `Plugin.run` hands to the plugin's worker thread and waits for with the
timeout. A block is `--calls` calls of one side; the figure is µs per call, and the rows
show B − A (the handoff) and B / A, each as the median and min–max over the pairs.
Wall-clock time: a handoff is two thread switches, so it is waiting, not CPU, that it
costs the deciding thread. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.wire.features import EMPTY
from engine.wire.plugins import Plugin, RequestView, feature


@feature(type=bool, timeout_ms=50, fallback=False)
def trivial(request: RequestView) -> bool:
    """A plugin that costs nothing: what is measured is the way to it."""
    return True


@feature(type=bool, timeout_ms=50, fallback=False, inline=True)
def trivial_inline(request: RequestView) -> bool:
    """The same, declared `inline=True`."""
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 pairs of 200 calls (a smoke run)")
    parser.add_argument("--pairs", type=int, default=21)
    parser.add_argument("--calls", type=int, default=5000)
    args = parser.parse_args()
    pairs, calls = (3, 200) if args.quick else (max(15, args.pairs), args.calls)
    plugin = Plugin("trivial", "plugins_bench:trivial", trivial, trivial.__policyctl_feature__)
    view = RequestView({}, EMPTY)
    plugin.run(view)  # the worker is started outside the timed blocks
    spec = trivial_inline.__policyctl_feature__
    inline = Plugin("trivial_inline", "plugins_bench:trivial_inline", trivial_inline, spec)

    def side_a() -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            inline.run(view)
        return (time.perf_counter_ns() - start) / calls / 1000

    details: dict[str, int] = {}

    def side_b() -> float:
        start = time.perf_counter_ns()
        for _ in range(calls):
            outcome = plugin.run(view)
            if outcome.error is not None:
                details[outcome.detail] = details.get(outcome.detail, 0) + 1
        return (time.perf_counter_ns() - start) / calls / 1000

    diffs, ratios, a_all, b_all = [], [], [], []
    gc.collect()
    gc.disable()
    for i in range(pairs):
        if i % 2:
            b = side_b()
            a = side_a()
        else:
            a = side_a()
            b = side_b()
        a_all.append(a)
        b_all.append(b)
        diffs.append(b - a)
        ratios.append(b / a)
    gc.enable()

    def row(values: list[float], unit: str) -> str:
        return (
            f"{statistics.median(values):.2f}{unit} (min {min(values):.2f}, max {max(values):.2f})"
        )

    print(f"plugin call, {pairs} pairs of {calls} calls each side")
    print(f"  A inline               {row(a_all, 'µs')}")
    print(f"  B worker (enforced)    {row(b_all, 'µs')}")
    print(f"  handoff B - A          {row(diffs, 'µs')}")
    print(f"  ratio B / A            {row(ratios, '×')}")
    # a handoff that waited past the 50 ms budget (the worker not scheduled in time on a
    # loaded machine), and the calls that found it still running (`busy`)
    print(f"  fallbacks in B         {details or 'none'} of {pairs * calls} calls")


if __name__ == "__main__":
    main()
