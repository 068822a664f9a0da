"""The decision log's request features, and `policyctl replay`'s speed.

    python bench/replay_bench.py            # 15 A/B pairs of 2,000 decisions; a 20k log
    python bench/replay_bench.py --quick    # blocks and logs a fifth of the size
    python bench/replay_bench.py --replay-only [--log N]   # the replay rows alone
    python bench/replay_bench.py --replay-only --cpu       # timed by the process's CPU time
    python bench/replay_bench.py --replay-only --cpu --requests 200000   # and a 200k log

Rows:
- **features in the decision log** (A/B pairs, bench/_pairs.py): `PolicyEngine.evaluate`
  on a DuckDB state file with `--log-requests features` against `off` (the same policy,
  requests from distinct users and IPs with metadata the policy reads), and with
  `--hash-keys`: what keeping each request's routing features costs a logged decision;
- **replay**: a log of N decisions with their outcomes, written by a real engine on a
  DuckDB file (a fake clock, before the timing; prompts of log-normal lengths, so their
  token counts are as many as a real log's), replayed under a policy that moves one
  route (`policyctl replay`'s `read_decision_log` + `replay`, streamed), in requests per
  second, against the issue's 50k/s target: the per-request path (`--no-batch`: one
  `PolicyEngine.evaluate` per request) and the batch path (the default,
  engine/replay/batch.py), rotated in each round with the floor: the same requests (the
  log's features) decided by one `PolicyEngine.evaluate` each, with nothing read or
  counted (a replay decides on two sides when given a baseline, one here: against the
  log); both paths' changed counts must agree;
  With `--cpu` the replay rows are timed by the process's CPU time (`time.process_time_ns`:
  every thread's, DuckDB's too), not the wall clock: steadier on a shared machine;
  with `--requests N` the replay rows are run again on a log of N decisions (after the
  20k log's): the steady rate, where the fixed costs of each replay (opening the engine
  and the log) weigh 1/N as much; the issue's log is 1M requests;
- **memory**: the peak RSS of `policyctl replay` in a subprocess on logs of two sizes,
  10× apart: flat when the log is streamed.
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

from _machine import machine_line  # noqa: E402
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


_WORDS = (
    "summarise", "the", "attached", "notes", "in", "two", "sentences", "and", "keep", "every",
    "name", "date", "and", "figure", "exact", "then", "list", "what", "is", "still", "open",
    "for", "the", "team",
)  # fmt: skip


def _prompt_words(rng: random.Random) -> int:
    """A prompt's length in words, log-normal like real traffic's (median about 33, one in
    twenty over 200, at most 4,000): its token counts many, as a real log's are, not a few a
    cache of rankings by token count would find again and again."""
    return min(4000, 3 + int(rng.lognormvariate(3.5, 1.1)))


def _requests(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        request: dict = {
            "id": f"r{seed}-{i}",
            "user": f"user-{rng.randrange(10**6)}",
            "ip": f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}",
            "prompt": " ".join(rng.choices(_WORDS, k=_prompt_words(rng))),
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


def _write_log(n: int, directory: Path, name: str) -> Path:
    """A log of `n` decisions with their outcomes, written by a real engine on a DuckDB file
    (a fake clock, 10 ms apart)."""
    state = directory / name
    clock, rng = _Clock(), random.Random(5)
    with PolicyEngine(directory / "old.policy", state=str(state), clock=clock) as engine:
        for request in _requests(n, 99):
            clock.now += 0.01
            decision = engine.evaluate(request)
            if decision.allowed:
                engine.record(decision, latency_ms=rng.uniform(200, 2000), success=True,
                              output_tokens=rng.randrange(10, 300))  # fmt: skip
    return state


def _logged_requests(state: Path) -> list[dict]:
    """The requests the replay decides: the log's features, as the replay rebuilds them."""
    import json

    import duckdb

    con = duckdb.connect(str(state), read_only=True)
    rows = con.execute("SELECT request_id, request FROM decisions ORDER BY decided_at").fetchall()
    con.close()
    out = []
    for rid, text in rows:
        features = json.loads(text)
        request = {k: v for k, v in features.items() if k not in ("format", "body")}
        request["id"] = rid
        out.append(request)
    return out


def replay_rows(n: int, pairs: int, directory: Path, cpu: bool = False) -> list[str]:
    old, new = directory / "old.policy", directory / "new.policy"
    old.write_text(POLICY)
    new.write_text(POLICY.replace("prefer openai", "prefer anthropic"))
    written = time.perf_counter()
    state = _write_log(n, directory, f"log-{n}.duckdb")
    written = time.perf_counter() - written
    requests = _logged_requests(state)
    changed: dict[bool, list[int]] = {True: [], False: []}
    clock = time.process_time_ns if cpu else time.perf_counter_ns

    def replayed(batch: bool) -> float:
        start = clock()
        with read_decision_log(str(state)) as log:
            changed[batch].append(replay(log, new, batch=batch).changed)
        return (clock() - start) / n

    def floor(_: object) -> float:
        engine = PolicyEngine(new, state="memory://", clock=_Clock())
        start = clock()
        for request in requests:
            engine.evaluate(request)
        elapsed = clock() - start
        engine.close()
        return elapsed / n

    times = rounds(
        pairs,
        {
            "per-request": lambda _: replayed(False),
            "batch": lambda _: replayed(True),
            "floor": floor,
        },
        lambda i: None,
    )
    if changed[True] != changed[False]:
        raise SystemExit(f"the two paths disagree: {changed}")
    rps = {name: [1e9 / t for t in values] for name, values in times.items()}
    best = statistics.median(rps["batch"])
    floor_rps = statistics.median(rps["floor"])
    return [
        f"replay of a {n:,}-decision log with its outcomes, one side ({changed[True][0]:,}"
        f" changed), {pairs} rounds (the three rotated in each)"
        f"{', CPU time' if cpu else ''}; the log written in {written:.0f} s:",
        *(f"  {label:42} {_rate(rps[name]):>28} requests/s" for name, label in (
            ("per-request", "replay, per-request path (--no-batch)"),
            ("batch", "replay, batch path (the default)"),
            ("floor", "floor: PolicyEngine.evaluate alone"),
        )),
        f"  {'per-request / batch (time per request)':42} "
        f"{ratio_cell(ratios(times['per-request'], times['batch'])):>28}",
        f"  {'batch / floor (time per request)':42} "
        f"{ratio_cell(ratios(times['batch'], times['floor'])):>28}",
        f"  target {TARGET_RPS:,}/s per policy: "
        + ("met" if best >= TARGET_RPS else f"NOT met: the batch path is {best / TARGET_RPS:.2f}×"
           f" of it ({TARGET_RPS / best:.2f}× short; the floor alone is"
           f" {floor_rps / TARGET_RPS:.2f}× of it)"),
    ]  # fmt: skip


def _rate(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


_PEAK = """
import atexit, resource, sys
atexit.register(lambda: print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))
sys.argv = ["policyctl", *sys.argv[1:]]
from engine.cli import run
run()
"""


def memory_rows(sizes: tuple[int, ...], directory: Path) -> list[str]:
    """Peak resident memory of `policyctl replay` in a subprocess, for logs of each size:
    flat in the log's size when the log is streamed."""
    import subprocess

    rows = ["peak memory of `policyctl replay` (a subprocess, its max RSS):"]
    for n in sizes:
        state = _write_log(n, directory, f"mem-{n}.duckdb")
        done = subprocess.run(
            [sys.executable, "-c", _PEAK, "replay", "--policy", str(directory / "new.policy"),
             "--from", str(state), "--format", "json"], capture_output=True, text=True,
            cwd=ROOT, check=True,
        )  # fmt: skip
        peak_kb = int(done.stderr.strip().splitlines()[-1])
        rows.append(f"  {n:>9,} decisions   {peak_kb / 1024:8,.0f} MB")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks and log")
    pairs_option(parser)
    parser.add_argument("--replay-only", action="store_true", help="the replay rows alone")
    parser.add_argument("--log", type=int, metavar="N", help="the replayed log's decisions")
    parser.add_argument("--cpu", action="store_true", help="replay rows timed by CPU time")
    parser.add_argument(
        "--requests", type=int, metavar="N", help="the replay rows again on an N-decision log"
    )
    args = parser.parse_args()
    print(machine_line(), flush=True)
    block = 400 if args.quick else 2_000
    n = args.log or (4_000 if args.quick else 20_000)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        if not args.replay_only:
            print("\n".join(feature_rows(args.pairs, block, directory)))
            print()
        print("\n".join(replay_rows(n, max(3, args.pairs // 5), directory, args.cpu)))
        if args.requests:
            print()
            print("\n".join(replay_rows(args.requests, 3, directory, args.cpu)))
        if args.replay_only:
            return
        print()
        sizes = (1_000, 10_000) if args.quick else (20_000, 200_000)
        print("\n".join(memory_rows(sizes, directory)))


if __name__ == "__main__":
    main()
