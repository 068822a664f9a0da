"""How decision cost grows with the catalog and the policy, and bucket memory with keys.

    python bench/scaling_bench.py [--quick] [--strategies weighted,latency,cost,...]

Rows: one decision at 10, 100, 1,000 and 2,000 models (SPEC §8: 1,000 models at most 20×
the cost of 10; issue 13: 2,000 models too); at 10, 100 and 1,000 routes (the request
matches the last one, the worst case); each group interleaved (rounds of every size, the
order rotated per round, ≥ 15 rounds) with the ratio to the smallest taken per round
(median, min–max); bytes per idle bucket at 10k, 100k and 1M keys
(target ≤ 200 B). Synthetic models are copies of the real catalog's with new ids;
nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))

from _pairs import block_size, pairs_option, per_op_ns, ratio_cell, ratios, rounds, us  # noqa: E402

from engine import PolicyEngine  # noqa: E402
from engine.limits.stores.base import Spec  # noqa: E402
from engine.limits.stores.memory import MemoryStore  # noqa: E402


def scaled_rows(
    engines: dict[str, PolicyEngine], pairs: int, block_ns: float, least: int, route: bool
) -> dict[str, list[float]]:
    """ns per decision of each engine, one figure per round: every engine in turn (the order
    rotated per round) on the same fresh requests, each block sized to about `block_ns`.
    `route`: the routes' request (the last route's tier), else distinct users."""

    def requests(tag: int, n: int) -> list[dict[str, Any]]:
        if route:
            return [{"id": f"x{tag}-{i}", "metadata": {"tier": TIER}, "input_tokens": 100}
                    for i in range(n)]  # fmt: skip
        return [{"id": f"r{tag}-{i}", "user": f"u{tag}-{i}", "input_tokens": 100}
                for i in range(n)]  # fmt: skip

    sizes = {}
    for name, engine in engines.items():  # warm, and size each block
        probe = requests(-1, least)
        for r in probe:
            engine.evaluate(r)
        sizes[name] = block_size(per_op_ns(engine.evaluate, probe), block_ns, least, 20_000)
    most = max(sizes.values())
    sides = {
        name: (lambda items, e=engine, n=sizes[name]: per_op_ns(e.evaluate, items[:n]))
        for name, engine in engines.items()
    }
    return rounds(pairs, sides, lambda i: requests(i, most))


MODEL_SIZES = (10, 100, 1000, 2000)
ROUTE_COUNTS = (10, 100, 1000)
TIER = "gold"  # the tier the last route matches


def catalog_of(size: int, directory: Path) -> Path:
    base = yaml.safe_load((ROOT / "examples" / "policies" / "models.yaml").read_text())["models"]
    models = []
    for i in range(size):
        model = dict(base[i % len(base)])
        model["id"] = f"{model['id']}-x{i}"
        model["aliases"] = []
        models.append(model)
    path = directory / f"catalog{size}.yaml"
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def models_rows(
    pairs: int, block_ns: float, directory: Path, strategy: str
) -> dict[int, list[float]]:
    """catalog size -> ns per decision per round, the sizes interleaved."""
    engines = {}
    for size in MODEL_SIZES:
        path = catalog_of(size, directory)
        engines[str(size)] = PolicyEngine.from_text(
            f'catalog "{path}"\ndefaults {{ strategy {strategy} }}'
        )
    figures = scaled_rows(engines, pairs, block_ns, 20, route=False)
    return {int(k): v for k, v in figures.items()}


def routes_rows(pairs: int, block_ns: float) -> dict[int, list[float]]:
    """route count -> ns per decision per round (the last route matches), interleaved."""
    engines = {}
    for count in ROUTE_COUNTS:
        routes = "\n".join(
            f'route r{i} when request.metadata.tier == "t{i}" {{ strategy cost }}'
            for i in range(count - 1)
        )
        routes += f'\nroute r{count - 1} when request.metadata.tier == "{TIER}" {{ strategy cost }}'
        engine = PolicyEngine.from_text(routes)
        request = {"id": "x", "metadata": {"tier": TIER}, "input_tokens": 100}
        assert engine.evaluate(request).route == f"r{count - 1}"
        engines[str(count)] = engine
    figures = scaled_rows(engines, pairs, block_ns, 20, route=True)
    return {int(k): v for k, v in figures.items()}


def memory_rows(sizes: tuple[int, ...]) -> list[tuple[str, float]]:
    rows = []
    for keys in sizes:
        gc.collect()
        tracemalloc.start()
        store = MemoryStore()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(keys):
            store.acquire([Spec(f"user/requests/60000/u{i}", 110.0, 100 / 60000, 1.0)], (), 0.0)
        per_key = (tracemalloc.get_traced_memory()[0] - base) / keys
        tracemalloc.stop()
        rows.append((f"idle bucket, {keys:,} keys", per_key))
        del store
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--strategies",
        default="weighted,latency",
        help="comma-separated strategies for the model-count rows (default: weighted,latency)",
    )
    pairs_option(parser)
    args = parser.parse_args()
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    block_ns = 20_000_000 if args.quick else 100_000_000
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    print(f"policyctl scaling bench — {time.strftime('%Y-%m-%d %H:%M')}")
    print(
        f"each group in {args.pairs} rounds: every engine in turn (the order rotated per round)"
        f" on the same fresh\nrequests, one block of ~{block_ns // 1_000_000} ms each, the"
        " collector off inside; `vs 10`: the median of the\nper-round ratios to the 10-model"
        " (10-route) engine, min–max; µs: the median over the rounds"
    )
    print(f"\n{'decision':34} {'µs':>9} {'vs 10':>20}")
    for strategy in strategies:
        with tempfile.TemporaryDirectory() as tmp:
            figures = models_rows(args.pairs, block_ns, Path(tmp), strategy)
        base = figures[MODEL_SIZES[0]]
        for size, values in figures.items():
            name = f"{strategy}, {size} models"
            print(f"{name:34} {us(values):9.1f} {ratio_cell(ratios(values, base), 1):>20}")
        for size in (1000, 2000):
            per_round = ratios(figures[size], base)
            verdict = "met" if statistics.median(per_round) <= 20 else "NOT met"
            print(f"  {size:,} vs 10 models: {ratio_cell(per_round, 1)} (target ≤ 20×: {verdict})")
    figures = routes_rows(args.pairs, block_ns)
    base = figures[ROUTE_COUNTS[0]]
    for count, values in figures.items():
        name = f"{count} routes (last matches)"
        print(f"{name:34} {us(values):9.1f} {ratio_cell(ratios(values, base), 1):>20}")
    print(f"\n{'memory':34} {'B/key':>9}")
    for name, per_key in memory_rows(sizes):
        print(
            f"{name:34} {per_key:9.0f}   (target ≤ 200 B: {'met' if per_key <= 200 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
