"""What a decision's JSON costs, and a JSONL batch's requests per second with start-up.

    python bench/encode_bench.py            # 21 pairs, 5 batch runs of 20,000 lines
    python bench/encode_bench.py --quick    # 15 pairs, 5 runs of 5,000 lines
    python bench/encode_bench.py --cpu      # encoding rows on the thread's CPU clock
    python bench/encode_bench.py --no-jsonl # the encoding rows only

1. encoding: decisions of the packaged default policy (limits ×1,000,000, so four limits
   are checked and none binds: global, user, provider, ip) over realistic requests
   (distinct ids, 5,000 users, distinct IPs, a third with `messages`); each pair times a
   block of decisions, then `to_json()` of the same decisions — and the same for denied
   decisions and `--explain` ones. The ratio encode/decide per pair: median (min–max).
   `--cpu` times both sides on the thread's CPU clock (`time.thread_time`): on a shared
   machine a thread descheduled mid-block is not charged for the wait.
   For reference the same decisions by `json.dumps(to_dict())` (what the CLI and the
   service did before), and by orjson when it is installed (the encoder not chosen).
2. JSONL: `policyctl eval --state memory:// --policy bench/unlimited.policy FILE` over a
   file of realistic requests, the process's start included, against its floor: the same
   command on a one-line file (interpreter start, imports, policy load), and the
   interpreter with the imports alone. Runs alternate; median and min–max of each. Byte
   code and policyctl's cache directory are warm, as for an installed copy.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from engine import PolicyEngine  # noqa: E402
from engine.resources import default_policy_dir  # noqa: E402
from engine.routing.decision import Decision  # noqa: E402


def requests(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for i in range(count):
        ip = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        r: dict[str, Any] = {"id": f"req-{i}", "user": f"user-{rnd.randrange(5000)}", "ip": ip}
        if i % 3 == 0:
            r["messages"] = [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f"Question {i}: summarise the notes in two lines."},
            ]
        else:
            r["prompt"] = f"Summarise the attached meeting notes for ticket {i} in two sentences."
        if i % 7 == 0:
            r["max_tokens"] = 800
        out.append(r)
    return out


def raised_policy(directory: Path, factor: int) -> Path:
    shutil.copytree(default_policy_dir(), directory)
    path = directory / "default.policy"
    text = re.sub(
        r"^(limit\s+\w+\s+)(\d+)(\s+per)",
        lambda m: f"{m.group(1)}{int(m.group(2)) * factor}{m.group(3)}",
        path.read_text(encoding="utf-8"),
        flags=re.M,
    )
    path.write_text(text, encoding="utf-8")
    return directory


CLOCK = time.perf_counter_ns  # `--cpu`: time.thread_time_ns


def timed(fn: Callable[[], object]) -> float:
    gc.disable()
    try:
        start = CLOCK()
        fn()
        return (CLOCK() - start) / 1e3
    finally:
        gc.enable()


def spread(values: list[float], fmt: str) -> str:
    return (
        f"{format(statistics.median(values), fmt)}"
        f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    )


def one_pair(
    engine: PolicyEngine,
    batch: list[dict[str, Any]],
    explain: bool,
    std: Callable[[Any], str],
    other: Callable[[Any], bytes] | None,
) -> tuple[list[Decision], float, float, float, float | None]:
    """Decide a block, then encode it: µs for the block each way (and the references)."""
    made: list[Decision] = []
    d_us = timed(lambda: made.extend(engine.evaluate(r, explain=explain) for r in batch))
    e_us = timed(lambda: [d.to_json() for d in made])
    s_us = timed(lambda: [std(d.to_dict()) for d in made])
    o_us = None if other is None else timed(lambda: [other(d.to_dict()) for d in made])
    return made, d_us, e_us, s_us, o_us


def encoding_rows(pairs: int, block: int) -> list[str]:
    clock = "CPU" if CLOCK is time.thread_time_ns else "wall"
    lines = [
        f"encoding a decision vs deciding it: {pairs} pairs of {block} decisions each,"
        f" µs per decision ({clock} clock), median (min–max)",
        f"{'decisions':<38} {'decide µs':>20} {'to_json µs':>18} {'ratio':>20}"
        f" {'json.dumps µs':>15} {'orjson µs':>10}",
    ]
    try:
        import orjson

        other: Callable[[Any], bytes] | None = orjson.dumps
    except ImportError:
        other = None
    std = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode
    with tempfile.TemporaryDirectory() as tmp:
        allowed = PolicyEngine(raised_policy(Path(tmp) / "a", 1_000_000), state="memory://")
        denying = PolicyEngine(str(default_policy_dir()), state="memory://")
        cases = (
            ("allowed, 4 limits", allowed, False, 0),
            ("allowed, 4 limits, --explain", allowed, True, 0),
            ("denied by the user limit", denying, False, 1),
        )
        for label, engine, explain, kind in cases:
            feed = iter(range(10**9))
            ratios, decide, encode, dumps, alt = [], [], [], [], []
            for _ in range(pairs):
                batch = requests(block, seed=next(feed))
                if kind == 1:  # one user, so the user limit (100 per minute, burst 10) denies
                    batch = [dict(r, user="heavy") for r in batch]
                for i, r in enumerate(batch):
                    r["id"] = f"{label[:3]}-{next(feed)}-{i}"
                made, d_us, e_us, s_us, o_us = one_pair(engine, batch, explain, std, other)
                decide.append(d_us / block)
                encode.append(e_us / block)
                ratios.append(e_us / d_us)
                dumps.append(s_us / block)
                if o_us is not None:
                    alt.append(o_us / block)
            if kind == 1:
                assert not made[-1].allowed, "the denied case was not denied"
            verdict = "met" if statistics.median(ratios) <= 0.25 else "NOT met"
            lines.append(
                f"{label:<38} {spread(decide, '.1f'):>20} {spread(encode, '.2f'):>18}"
                f" {spread([r * 100 for r in ratios], '.0f') + '%':>20}"
                f" {statistics.median(dumps):>15.2f}"
                f" {(f'{statistics.median(alt):.2f}' if alt else 'n/a'):>10}"
            )
            lines.append(f"  encode ≤ 25% of the decision: {verdict}")
        allowed.close()
        denying.close()
    lines.append(
        "to_json = msgspec, alternatives from fragments encoded once, a struct per limit"
        " (integral numbers as ints); json.dumps = the stdlib encoder on to_dict() (before);"
        " orjson = orjson.dumps(to_dict()) for comparison."
    )
    return lines


def jsonl_rows(count: int, runs: int) -> list[str]:
    """As an installed copy runs: byte code compiled once (pip compiles at install; here
    into a temporary `PYTHONPYCACHEPREFIX`, whatever `PYTHONDONTWRITEBYTECODE` says) and
    policyctl's cache directory (a temporary one) warm, both by a first run not timed."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        env["POLICYCTL_CACHE_DIR"] = str(Path(tmp) / "cache")
        batch, one = Path(tmp) / "batch.jsonl", Path(tmp) / "one.jsonl"
        rows = requests(count)
        batch.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        one.write_text(json.dumps(rows[0]) + "\n", encoding="utf-8")
        base = [sys.executable, "-m", "engine", "eval", "--state", "memory://"]
        base += ["--policy", str(ROOT / "bench" / "unlimited.policy")]
        imports = [sys.executable, "-c", "import engine.cli.eval_cmd"]
        commands = {"full": [*base, str(batch)], "floor": [*base, str(one)], "imports": imports}
        times: dict[str, list[float]] = {name: [] for name in commands}
        subprocess.run(commands["floor"], stdout=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
        for i in range(runs):
            names = list(commands) if i % 2 == 0 else list(commands)[::-1]
            for name in names:
                start = time.perf_counter()
                done = subprocess.run(commands[name], stdout=subprocess.DEVNULL,
                                      env=env, cwd=ROOT, check=False)  # fmt: skip
                times[name].append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise RuntimeError(f"{name} exited {done.returncode}")
    full, floor, bare = times["full"], times["floor"], times["imports"]
    rates = [count / s for s in full]
    above = [count / max(s - f, 1e-9) for s, f in zip(full, floor, strict=True)]
    verdict = "met" if statistics.median(rates) >= 20_000 else "NOT met"
    return [
        f"JSONL: `policyctl eval` over {count:,} realistic lines (5,000 users, distinct IPs,"
        f" a third `messages`), start-up included; {runs} runs alternating with the floors;"
        " byte code and policyctl's cache warm (as installed)",
        f"  whole run           {spread([s * 1000 for s in full], ',.0f')} ms",
        f"  requests/s          {spread(rates, ',.0f')}  (target ≥ 20k/s: {verdict})",
        f"  floor (one line)    {spread([f * 1000 for f in floor], ',.0f')} ms"
        " (interpreter start, imports, policy load, one decision)",
        f"  imports alone       {spread([b * 1000 for b in bare], ',.0f')} ms"
        " (interpreter start, `import engine.cli.eval_cmd`)",
        f"  above the floor     {spread(above, ',.0f')} requests/s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pairs", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--lines", type=int)
    parser.add_argument("--cpu", action="store_true", help="encoding rows on the CPU clock")
    parser.add_argument("--no-jsonl", action="store_true", help="skip the JSONL rows")
    args = parser.parse_args()
    if args.cpu:
        global CLOCK
        CLOCK = time.thread_time_ns
    pairs = args.pairs or (15 if args.quick else 21)
    block = 200 if args.quick else 400
    print("\n".join(encoding_rows(pairs, block)), flush=True)
    if args.no_jsonl:
        return
    lines = args.lines or (5_000 if args.quick else 20_000)
    print("\n".join(jsonl_rows(lines, args.runs or 5)), flush=True)


if __name__ == "__main__":
    main()
