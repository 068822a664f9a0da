"""Cold load + compile of a large catalog: each figure from fresh processes.

    python bench/catalog_load_bench.py [TABLE] [--pairs 15] [--models 2000] [--profile]

The catalog is imported from LiteLLM's price table (TABLE, default: the installed
litellm's, read as a file) with every provider, and `--models` of its models are taken at
even steps (sorted by provider and id), written as YAML and as JSON; a 10-model catalog is
taken the same way. For each form, `--pairs` A/B pairs (≥ 15) of fresh processes, the large
catalog's and the small one's, the order alternating, each import the engine, then
time `load_policy` of a one-file policy naming that catalog (read, parse, validate,
compile): the figure is that time, without the interpreter's start and the engine's
import, which are printed apart (`process`). YAML is timed with libyaml's C loader (what
the engine uses when PyYAML has it) and with the pure-Python loader. The issue's target:
2,000 models in at most 300 ms cold; its ratio to the 10-model load is taken per pair
(median, min–max). `cpu ms` is the load's CPU time (less
sensitive than wall time to other work on the machine); the 10-model rows are the policy
language's own fixed cost (the grammar), which every load pays. `--profile` prints the
top functions of one in-process load of each 2,000-model form. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from _pairs import pairs_option, ratio_cell, ratios, rounds  # noqa: E402

from engine.catalog.litellm import bundled_table, convert, read_table, render_json, render_yaml  # noqa: E402

TARGET_MS = 300.0
POLICY = 'catalog "{name}"\n\ndefaults {{ strategy weighted(latency: 60%, cost: 40%) }}\n'
CHILD = """\
import sys, time
sys.path.insert(0, {root!r})
import yaml
import engine.catalog.load as load
from engine.language.loader import load_policy
if {pure!r}:
    load._Loader = yaml.SafeLoader
t1, c1 = time.perf_counter(), time.process_time()
loaded = load_policy({policy!r})
t2, c2 = time.perf_counter(), time.process_time()
assert len(loaded.program.catalog.models) == {count}, len(loaded.program.catalog.models)
print((t2 - t1) * 1000, (c2 - c1) * 1000)
"""


def pick(models: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    if n >= len(models):
        return list(models)
    step = len(models) / n
    return [models[int(i * step)] for i in range(n)]


def write(folder: Path, stem: str, models: list[dict[str, Any]]) -> dict[str, Path]:
    doc = {"version": 2, "models": models}
    paths = {}
    for form, text in (("yaml", render_yaml(doc)), ("json", render_json(doc))):
        catalog = folder / f"{stem}.{form}"
        catalog.write_text(text, encoding="utf-8")
        policy = folder / f"{stem}-{form}.policy"
        policy.write_text(POLICY.format(name=catalog.name), encoding="utf-8")
        paths[form] = policy
    return paths


def cold_run(policy: Path, count: int, pure: bool) -> tuple[float, float, float]:
    """One fresh process: (load_policy wall ms, its CPU ms, the rest of the process's wall ms)"""
    code = CHILD.format(root=str(ROOT), policy=str(policy), count=count, pure=pure)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = (time.perf_counter() - start) * 1000
    load_ms, cpu_ms = (float(x) for x in done.stdout.split())
    return load_ms, cpu_ms, wall - load_ms


def profile(policy: Path) -> str:
    from engine.language.loader import load_policy

    prof = cProfile.Profile()
    prof.enable()
    load_policy(policy)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(15)
    return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("table", nargs="?", help="a LiteLLM price table (default: installed)")
    pairs_option(parser)
    parser.add_argument("--models", type=int, default=2000, help="the large catalog's size")
    parser.add_argument("--profile", action="store_true", help="cProfile one load of each")
    args = parser.parse_args()
    try:
        table = read_table(args.table) if args.table else bundled_table()
    except Exception as err:  # litellm not installed: say how to get a table
        print(f"{err}\n(pip install '.[bench]', or give a LiteLLM JSON file)", file=sys.stderr)
        return 2
    models = convert(table.data).document["models"]
    if len(models) < args.models:
        print(f"the table gives {len(models)} models, fewer than {args.models}", file=sys.stderr)
    print(f"catalog from {table.source}: {len(models):,} models imported; "
          f"{args.pairs} A/B pairs of fresh processes per form (large, then small, the order"
          " alternating); load_policy time (read, parse, validate, compile)")  # fmt: skip
    print(f"python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        big = pick(models, args.models)
        sizes = {
            len(big): write(folder, "large", big),
            10: write(folder, "small", pick(models, 10)),
        }
        summary: list[str] = []
        header = f"{'models':>7}  {'form':<18}  {'median ms':>9}  {'min-max ms':>15}  " + (
            f"{'cpu ms':>7}  {'bytes':>9}  {'process ms':>10}"
        )
        print(header)
        small_n = 10
        for form, pure in (("json", False), ("yaml", False), ("yaml", True)):
            label = {("json", False): "json", ("yaml", False): "yaml (libyaml C)",
                     ("yaml", True): "yaml (pure Python)"}[(form, pure)]  # fmt: skip
            runs: dict[int, list[tuple[float, float, float]]] = {n: [] for n in sizes}

            def side(n: int, form: str = form, pure: bool = pure, runs: Any = runs) -> Any:
                def run(_: int) -> float:
                    result = cold_run(sizes[n][form], n, pure)
                    runs[n].append(result)
                    return result[0]

                return run

            figures = rounds(args.pairs, {str(n): side(n) for n in sizes}, int)
            for n in sizes:
                loads = figures[str(n)]
                catalog = sizes[n][form].with_name(
                    ("large" if n == len(big) else "small") + f".{form}"
                )
                print(
                    f"{n:>7,}  {label:<18}  {statistics.median(loads):>9.1f}"
                    f"  {min(loads):>6.1f}-{max(loads):<8.1f}"
                    f"  {statistics.median(r[1] for r in runs[n]):>7.1f}"
                    f"  {catalog.stat().st_size:>9,}"
                    f"  {statistics.median(r[2] for r in runs[n]):>10.0f}"
                )
            if pure:
                continue
            n = len(big)
            med = statistics.median(figures[str(n)])
            verdict = "meets" if med <= TARGET_MS else "misses"
            per_pair = ratios(figures[str(n)], figures[str(small_n)])
            summary.append(
                f"{n:,} models, {label}: {med:.0f} ms median, {verdict} the {TARGET_MS:.0f} ms"
                f" target; {ratio_cell(per_pair, 1)} the 10-model load (per pair)"
            )
        print("\n".join(summary))
        n = len(big)
        if args.profile:
            for form in ("json", "yaml"):
                print(f"\n--- profile: {n:,} models, {form} (one in-process load) ---")
                print(profile(sizes[n][form]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
