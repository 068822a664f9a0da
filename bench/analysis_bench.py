"""The static analysis of `policyctl check` over every shipped policy: its cost, beside the
load it follows.

    python bench/analysis_bench.py [--runs 21] [--quick]

The shipped policies are `policies/` and every `examples/policies/*.policy` that checks
(the examples of errors do not reach the analysis). Each run times, interleaved, the whole
load of all of them (read, parse, check, compile, analyse: what `policyctl check` pays)
and the analysis alone (`engine.language.analysis.analyse` on the parsed files and the
compiled program). Median and min–max over the runs. The issue's target: the analysis of
the shipped policies costs at most 200 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.diagnostics import PolicyError  # noqa: E402
from engine.language.analysis import analyse  # noqa: E402
from engine.language.loader import load_policy, policy_files  # noqa: E402
from engine.language.parser import parse  # noqa: E402

TARGET_MS = 200.0


def shipped() -> list[Path]:
    found = [ROOT / "policies"]
    for path in sorted((ROOT / "examples" / "policies").glob("*.policy")):
        try:
            load_policy(path)
        except PolicyError:
            continue
        found.append(path)
    return found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--quick", action="store_true", help="5 runs")
    args = ap.parse_args()
    runs = 5 if args.quick else args.runs
    sets = shipped()
    prepared = []
    for path in sets:
        program = load_policy(path).program
        parsed = [parse(f.read_text(encoding="utf-8"), str(f)) for f in policy_files(path)]
        prepared.append((parsed, program))
    loads, analyses = [], []
    for _ in range(runs):
        start = time.perf_counter()
        for path in sets:
            load_policy(path)
        loads.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        for parsed, program in prepared:
            analyse(parsed, program)
        analyses.append((time.perf_counter() - start) * 1000)
    print(f"{len(sets)} shipped policy sets, {runs} runs (interleaved), milliseconds")
    print(f"{'what':<34} {'median':>8} {'min-max':>16}")
    for name, times in (
        ("load + check + analysis (all)", loads),
        ("analysis alone (all)", analyses),
    ):
        spread = f"{min(times):.2f}-{max(times):.2f}"
        print(f"{name:<34} {statistics.median(times):>8.2f} {spread:>16}")
    median = statistics.median(analyses)
    verdict = "meets" if median <= TARGET_MS else "MISSES"
    print(
        f"analysis of the shipped policies: {median:.2f} ms,"
        f" {verdict} the {TARGET_MS:.0f} ms target"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
