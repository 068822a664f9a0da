"""How decision cost grows with the catalog and the policy, and bucket memory with keys.

    python bench/scaling_bench.py [--quick] [--strategies weighted,latency,cost,...]

Rows: one decision at 10, 100, 1,000 and 2,000 models (SPEC §8: 1,000 models at most 20×
the cost of 10; issue 13: 2,000 models too); at 10, 100 and 1,000 routes (the request
matches the last one, the worst case); bytes per idle bucket at 10k, 100k and 1M keys
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

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import PolicyEngine  # noqa: E402
from engine.limits.stores.base import Spec  # noqa: E402
from engine.limits.stores.memory import MemoryStore  # noqa: E402


def per_call_us(fn, n: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        times.append((time.perf_counter_ns() - start) / n / 1000)
        gc.enable()
    return statistics.median(times)


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
    n: int, repeats: int, directory: Path, strategies: tuple[str, ...]
) -> list[tuple[str, float]]:
    rows = []
    requests = [{"id": f"r{i}", "user": f"u{i % 100}", "input_tokens": 100} for i in range(1000)]
    for size in (10, 100, 1000, 2000):
        path = catalog_of(size, directory)
        for strategy in strategies:
            text = f'catalog "{path}"\ndefaults {{ strategy {strategy} }}'
            engine = PolicyEngine.from_text(text)
            us = per_call_us(lambda i, e=engine: e.evaluate(requests[i % 1000]), n, repeats)
            rows.append((f"{strategy}, {size} models", us))
    return rows


def routes_rows(n: int, repeats: int) -> list[tuple[str, float]]:
    rows = []
    for count in (10, 100, 1000):
        routes = "\n".join(
            f'route r{i} when request.metadata.tier == "t{i}" {{ strategy cost }}'
            for i in range(count)
        )
        engine = PolicyEngine.from_text(routes)
        request = {"id": "x", "metadata": {"tier": f"t{count - 1}"}, "input_tokens": 100}
        assert engine.evaluate(request).route == f"r{count - 1}"
        us = per_call_us(lambda i, e=engine, r=request: e.evaluate(r), n, repeats)
        rows.append((f"{count} routes (last matches)", us))
    return rows


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
    args = parser.parse_args()
    strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    n, repeats = (500, 3) if args.quick else (3000, 5)
    sizes = (10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)
    print(f"policyctl scaling bench — {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        model_rows = models_rows(n, repeats, Path(tmp), strategies)
    print(f"\n{'decision':34} {'µs':>9} {'vs 10':>7}")
    for strategy in strategies:
        mine = [(name, us) for name, us in model_rows if name.startswith(f"{strategy},")]
        base = mine[0][1]
        for name, us in mine:
            print(f"{name:34} {us:9.1f} {us / base:6.1f}×")
        for size in (1000, 2000):
            us = next(us for name, us in mine if name == f"{strategy}, {size} models")
            verdict = "met" if us / base <= 20 else "NOT met"
            print(f"  {size:,} vs 10 models: {us / base:.1f}× (target ≤ 20×: {verdict})")
    route_rows = routes_rows(n, repeats)
    base = route_rows[0][1]
    for name, us in route_rows:
        print(f"{name:34} {us:9.1f} {us / base:6.1f}×")
    print(f"\n{'memory':34} {'B/key':>9}")
    for name, per_key in memory_rows(sizes):
        print(
            f"{name:34} {per_key:9.0f}   (target ≤ 200 B: {'met' if per_key <= 200 else 'NOT met'})"
        )


if __name__ == "__main__":
    main()
