"""One benchmark command: every SPEC §8 target, side by side with its peer, in one run.

    pip install -e '.[bench]'          # LiteLLM, limits, redis (the peers)
    python bench/run.py [--quick]      # --quick: about a minute or two
    python bench/run.py --cli-only     # only the command-line rows, printed

It runs each bench script in this folder (a fresh process each), adds the command-line
rows (cold `policyctl eval` against `import litellm`; a JSONL batch's requests per second),
prints everything, and writes docs/performance.md with the date, the machine and the
tables. Figures are only comparable as ratios within one run: these machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

from _machine import calibration_us, machine  # noqa: E402
from _pairs import MIN_PAIRS, ratio_cell, ratios, rounds  # noqa: E402

SCRIPTS = (
    ("Decisions and conditions (vs LiteLLM Router)", "eval_bench.py"),
    ("Decisions under live outcomes (vs no metrics, vs LiteLLM Router)", "live_bench.py"),
    ("Measured signals in the policy (vs none)", "measured_bench.py"),
    ("Quality in weighted routing (vs none)", "quality_bench.py"),
    ("Policy-wide constraints (vs the same require in every route)", "policy_wide_bench.py"),
    ("A decision against its floor (plain Python), and its profile", "floor_bench.py"),
    ("Conditions (vs CEL and Cedar)", "conditions_bench.py"),
    ("Rate limits (vs limits)", "limits_bench.py"),
    ("Scaling", "scaling_bench.py"),
    ("Redis store", "redis_bench.py"),
    ("Metrics", "metrics_bench.py"),
    ("HTTP service and hot reload", "service_bench.py"),
    ("Encoding and JSONL batches", "encode_bench.py"),
    ("Policy tests (a thousand tests in under a second)", "policytest_bench.py"),
    ("Static analysis (`policyctl check`)", "analysis_bench.py"),
    ("Request features in the decision log, and replay", "replay_bench.py"),
    ("Prompt features and complexity (vs a policy that reads none)", "features_bench.py"),
)


def run_script(name: str, quick: bool) -> tuple[str, float, int]:
    path = BENCH / name
    if not path.exists():
        return f"({name} is not in this checkout)", 0.0, 0
    command = [sys.executable, str(path), *(["--quick"] if quick else [])]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    seconds = time.perf_counter() - start
    output = done.stdout.rstrip()
    if done.returncode != 0:
        output += f"\n(exit {done.returncode})\n{done.stderr.strip()[-2000:]}"
    return output, seconds, done.returncode


def median_seconds(command: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False, env=env, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


FLOOR_IMPORTS = "import engine.cli, engine.cli.eval_cmd, engine.api.policy_engine"


def cli_rows(quick: bool) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    runs = 3 if quick else 7
    request = str(ROOT / "examples" / "requests" / "chat.json")
    eval_command = [sys.executable, "-m", "engine", "eval", "--state", "memory://", request]
    litellm = subprocess.run(
        [sys.executable, "-c", "import litellm"], capture_output=True, env=env, check=False
    )
    if litellm.returncode == 0:
        # A/B pairs of fresh processes, the order alternating; the ratio per pair
        sides = {
            "eval": lambda _: median_seconds(eval_command, 1, env),
            "litellm": lambda _: median_seconds([sys.executable, "-c", "import litellm"], 1, env),
        }
        figures = rounds(MIN_PAIRS, sides, int)
        eval_cold = statistics.median(figures["eval"])
        per_pair = ratios(figures["litellm"], figures["eval"])
        verdict = "met" if statistics.median(per_pair) >= 3 else "NOT met"
        lines = [f"cold `policyctl eval` (one request, memory state): {eval_cold * 1000:.0f} ms"]
        lines.append(
            f"`import litellm`: {statistics.median(figures['litellm']) * 1000:.0f} ms — eval is"
            f" {ratio_cell(per_pair, 1)} faster (target ≥ 3×: {verdict}; {MIN_PAIRS} A/B pairs"
            " of fresh processes, the order alternating, the ratio per pair)"
        )
    else:
        eval_cold = median_seconds(eval_command, runs, env)
        lines = [f"cold `policyctl eval` (one request, memory state): {eval_cold * 1000:.0f} ms"]
        lines.append("`import litellm`: not installed (pip install '.[bench]')")
    count = 5_000 if quick else 20_000
    with tempfile.TemporaryDirectory() as tmp:
        batch = Path(tmp) / "batch.jsonl"
        with batch.open("w") as f:
            for i in range(count):
                f.write(json.dumps({"id": f"b{i}", "user": f"u{i % 500}", "prompt": "hi"}) + "\n")
        command = [
            sys.executable, "-m", "engine", "eval", "--state", "memory://", "--policy",
            str(ROOT / "bench" / "unlimited.policy"), str(batch),
        ]  # fmt: skip
        (Path(tmp) / "out").write_text("")
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, env=env, cwd=ROOT, check=True)
        seconds = time.perf_counter() - start
    rate = count / seconds
    verdict = "met" if rate >= 20_000 else "NOT met"
    lines.append(
        f"JSONL batch of {count:,} through `policyctl eval` (process start included):"
        f" {rate:,.0f} requests/s (target ≥ 20k/s: {verdict})"
    )
    steady = count / max(seconds - eval_cold, 1e-9)
    lines.append(
        f"  the same less one cold single-request run ({eval_cold * 1000:.0f} ms of start-up):"
        f" {steady:,.0f} requests/s"
    )
    # the floor: the interpreter started and the modules `policyctl eval` runs imported,
    # nothing loaded, parsed or decided
    floor = median_seconds([sys.executable, "-c", FLOOR_IMPORTS], runs, env)
    reachable = count / (floor + count / steady)
    lines.append(
        f"  floor (interpreter start + imports, no policy loaded): {floor * 1000:.0f} ms;"
        f" start-up above it {max(eval_cold - floor, 0) * 1000:.0f} ms; with that floor and"
        f" this per-request rate the batch's best is {reachable:,.0f} requests/s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short pass (smoke test)")
    parser.add_argument(
        "--output", default=str(ROOT / "docs" / "performance.md"), help="the report to write"
    )
    parser.add_argument(
        "--cli-only",
        action="store_true",
        help="only the command-line rows, printed (docs/performance.md is not written)",
    )
    args = parser.parse_args()
    if args.cli_only:
        print(cli_rows(args.quick))
        return
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    sections = []
    failed = 0
    for title, script in SCRIPTS:
        print(f"== {title} ({script})", flush=True)
        output, seconds, code = run_script(script, args.quick)
        failed += code != 0
        print(output, flush=True)
        sections.append((f"{title} — `bench/{script}` ({seconds:.0f} s)", output))
    print("== Command line", flush=True)
    cli = cli_rows(args.quick)
    print(cli)
    sections.append(("Command line — `bench/run.py`", cli))
    mode = "quick pass (`--quick`)" if args.quick else "full run"
    body = [
        "# Performance",
        "",
        f"Measured {started} on {machine()}, {mode}, with `python bench/run.py"
        f"{' --quick' if args.quick else ''}`; plain Python there: `sum(range(1000))` took"
        f" {calibration_us():.1f} µs (bench/_machine.py: compare it to compare machines).",
        "",
        "How to read this: every target in SPEC §8 is a ratio to a peer measured in the same"
        " run (LiteLLM's Router, the `limits` library, DuckDB's bare query, plain Python), so"
        " compare the ratio columns, not the absolute microseconds, across machines. Rows say"
        " `met` or `NOT met` against their target; nothing here is asserted by the test"
        " suite. Re-run the command above to reproduce.",
        "",
    ]
    for title, output in sections:
        body += [f"## {title}", "", "```", output, "```", ""]
    Path(args.output).write_text("\n".join(body))
    print(f"\nwrote {args.output}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
