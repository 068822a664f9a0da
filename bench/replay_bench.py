"""The decision log's request features, and `policyctl replay`'s speed.

    python bench/replay_bench.py            # 15 A/B pairs of 2,000 decisions; a 20k log
    python bench/replay_bench.py --quick    # blocks and log a fifth of the size

Rows:
- **features in the decision log** (A/B pairs, bench/_pairs.py): `PolicyEngine.evaluate`
  on a DuckDB state file with `--log-requests features` against `off` (the same policy,
  requests from distinct users and IPs with metadata the policy reads), and with
  `--hash-keys`: what keeping each request's routing features costs a logged decision;
- **replay**: a log of N decisions with their outcomes, written by a real engine on a
  DuckDB file (a fake clock, before the timing), replayed under a policy that moves one
  route (`policyctl replay`'s `read_decision_log` + `replay`), in requests per second,
  against the issue's 50k/s target, beside the floor of the same decisions made by one
  `PolicyEngine.evaluate` each (a replay decides on two sides when given a baseline, one
  here: against the log).
Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _pairs import pairs_option, per_op_ns, ratio_cell, ratios, rounds  # noqa: E402

from engine import PolicyEngine  # noqa: E402
from engine.analytics.decision_log import read_decision_log  # noqa: E402
from engine.replay.run import replay  # noqa: E402

POLICY = """
route team when request.metadata.team == "research" { strategy latency }
route tools when request.requires_tools {
    strategy cost
    prefer openai
}
limit user 1000000 per 1m
"""
TARGET_RPS = 50_000


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _requests(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        request: dict = {
            "id": f"r{seed}-{i}",
            "user": f"user-{rng.randrange(10**6)}",
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "prompt": "Summarise the attached notes in two sentences. " * rng.randrange(1, 8),
            "max_tokens": 256,
            "metadata": {"team": rng.choice(("research", "support")), "email": "x@example.com"},
        }
        if rng.random() < 0.3:
            request["requires_tools"] = True
        out.append(request)
    return out


def feature_rows(pairs: int, block: int, directory: Path) -> list[str]:
    policy = directory / "bench.policy"
    policy.write_text(POLICY)
    engines = {
        "off": PolicyEngine(policy, state=str(directory / "off.duckdb"), log_requests="off"),
        "features": PolicyEngine(policy, state=str(directory / "features.duckdb")),
        "hashed": PolicyEngine(policy, state=str(directory / "hashed.duckdb"), hash_keys=True),
    }
    try:
        sides = {
            name: (lambda e: lambda items: per_op_ns(e.evaluate, items))(engine)
            for name, engine in engines.items()
        }
        for engine in engines.values():  # warm
            for r in _requests(200, 0):
                engine.evaluate(r)
        times = rounds(pairs, sides, lambda i: _requests(block, i + 1))
    finally:
        for engine in engines.values():
            engine.close()
    off = times["off"]
    rows = [
        f"{'logged decision (DuckDB state)':44} {'µs median (min–max)':>24} {'vs off':>24}",
        f"{'--log-requests off':44} {_spread(off):>24}",
    ]
    for name, label in (
        ("features", "--log-requests features"),
        ("hashed", "features --hash-keys"),
    ):
        rows.append(
            f"{label:44} {_spread(times[name]):>24} {ratio_cell(ratios(times[name], off)):>24}"
        )
    return rows


def _spread(values_ns: list[float]) -> str:
    us = [v / 1000 for v in values_ns]
    return f"{statistics.median(us):.2f} ({min(us):.2f}–{max(us):.2f})"


def replay_rows(n: int, directory: Path) -> list[str]:
    old, new = directory / "old.policy", directory / "new.policy"
    old.write_text(POLICY)
    new.write_text(POLICY.replace("prefer openai", "prefer anthropic"))
    state = directory / "log.duckdb"
    clock, rng = _Clock(), random.Random(5)
    requests = _requests(n, 99)
    with PolicyEngine(old, state=str(state), clock=clock) as engine:
        for request in requests:
            clock.now += 0.01
            decision = engine.evaluate(request)
            if decision.allowed:
                engine.record(decision, latency_ms=rng.uniform(200, 2000), success=True,
                              output_tokens=rng.randrange(10, 300))  # fmt: skip
    start = time.perf_counter()
    log = read_decision_log(str(state))
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    report = replay(log, new)
    replay_s = time.perf_counter() - start
    floor = PolicyEngine(new, state="memory://")
    start = time.perf_counter()
    for request in requests:
        floor.evaluate(request)
    floor_s = time.perf_counter() - start
    floor.close()
    total = read_s + replay_s
    rps = n / total
    return [
        f"replay of a {n:,}-decision log ({len(log.outcomes):,} outcomes), one side:",
        f"  read the log            {read_s:8.2f} s",
        f"  decide again            {replay_s:8.2f} s   ({report.changed:,} changed)",
        f"  requests per second     {rps:8,.0f}      target {TARGET_RPS:,}: "
        + ("met" if rps >= TARGET_RPS else f"NOT met ({rps / TARGET_RPS:.2f}× of it)"),
        f"  floor: evaluate alone   {n / floor_s:8,.0f} /s (the same requests, memory state)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks and log")
    pairs_option(parser)
    args = parser.parse_args()
    block = 400 if args.quick else 2_000
    n = 4_000 if args.quick else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        print("\n".join(feature_rows(args.pairs, block, directory)))
        print()
        print("\n".join(replay_rows(n, directory)))


if __name__ == "__main__":
    main()
