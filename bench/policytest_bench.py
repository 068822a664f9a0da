"""A thousand policy tests in under a second: `policyctl test` over generated tests.

    python bench/policytest_bench.py [--runs 7] [--tests 1000] [--quick]

Writes a test file of `--tests` tests against policies/default.policy (single requests of
every route, native and wire bodies, denials, and one rate-limit sequence in every
twenty), then times whole `policyctl test FILE` processes (interpreter start, imports,
loading the policy and the test file, running, printing), with and without `--coverage`,
interleaved (A, B, A, B, …), and prints the median and the min–max of each. The target:
1,000 tests in under a second for the whole command. The part that is not the tests'
own (a `policyctl test` of a one-test file) is printed too. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 1000.0

SINGLE = (
    "{{id: img-{i}, prompt: describe this image, requires_vision: true}}",
    "{{id: cheap-{i}, prompt: hi, max_cost: 0.001}}",
    "{{id: fast-{i}, prompt: hi, max_latency_ms: 1500}}",
    "{{id: long-{i}, prompt: write an essay, max_tokens: 8000}}",
    "{{id: plain-{i}, prompt: hello there, max_tokens: 200}}",
    "{{model: gpt-4o, messages: [{{role: user, content: 'question {i}'}}]}}",
)
EXPECT = (
    "{route: vision, allowed: true}",
    "{route: budget, cost_at_most: $0.001}",
    "{route: fast, strategy: latency}",
    "{route: quality, cost_at_least: $0.01}",
    "{route: default, allowed: true}",
    "{route: default}",
)
SEQUENCE = """\
  - name: test {i}, a user's burst then a denial
    steps:
      - request: {{user: u{i}, prompt: hi}}
        repeat: 110
        expect: {{allowed: true}}
      - expect: {{allowed: false, denied_by: user}}
      - at: 0.6s
        expect: {{allowed: true}}
"""


def test_file(n: int, sequences: bool = True) -> str:
    """`n` tests: single requests of every route, and with `sequences` one test in twenty
    a user's burst of 110 requests, a denial and a refill."""
    lines = [f"policy: {ROOT / 'policies' / 'default.policy'}", "tests:"]
    for i in range(n):
        if sequences and i % 20 == 19:
            lines.append(SEQUENCE.format(i=i).rstrip("\n"))
            continue
        k = i % len(SINGLE)
        lines.append(f"  - name: test {i}")
        lines.append(f"    request: {SINGLE[k].format(i=i)}")
        lines.append(f"    expect: {EXPECT[k]}")
    return "\n".join(lines) + "\n"


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engine", "test", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"policyctl test failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return seconds * 1000.0


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ms ({min(values):,.0f}–{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tests", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="3 runs")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as folder:
        single = Path(folder) / "single.tests.yaml"
        single.write_text(test_file(args.tests, sequences=False), encoding="utf-8")
        mixed = Path(folder) / "mixed.tests.yaml"
        mixed.write_text(test_file(args.tests), encoding="utf-8")
        one = Path(folder) / "one.tests.yaml"
        one.write_text(test_file(1), encoding="utf-8")
        requests = sum(110 + 2 if i % 20 == 19 else 1 for i in range(args.tests))
        times: dict[str, list[float]] = {"single": [], "coverage": [], "mixed": [], "one": []}
        for _ in range(runs):  # interleaved: A, B, C, D, A, B, C, D, …
            times["single"].append(timed([str(single)], env))
            times["coverage"].append(timed([str(single), "--coverage"], env))
            times["mixed"].append(timed([str(mixed)], env))
            times["one"].append(timed([str(one)], env))
    median = statistics.median(times["single"])
    verdict = "met" if median < TARGET_MS else "NOT met"
    n = args.tests
    print(f"`policyctl test` (whole processes, {runs} runs each, interleaved)")
    print(
        f"  {n:,} one-request tests:            {spread(times['single'])}"
        f"  (target < 1,000 ms: {verdict})"
    )
    print(f"  the same with --coverage:          {spread(times['coverage'])}")
    print(
        f"  {n:,} tests, 1 in 20 a sequence of 112 ({requests:,} requests):"
        f" {spread(times['mixed'])}"
    )
    print(f"  one test (the command's fixed cost): {spread(times['one'])}")
    own = median - statistics.median(times["one"])
    print(f"  the {n:,} one-request tests themselves: {own:,.0f} ms ({own / n:.2f} ms a test)")


if __name__ == "__main__":
    main()
