"""Weighted decisions with a `quality` factor against without, and a request floor against none.

    python bench/quality_bench.py             # 15 A/B pairs per row, blocks of 3,000
    python bench/quality_bench.py --quick     # 15 pairs of blocks a fifth of the size

The packaged catalog with an overall quality score on every model (0.5 to 0.95), no
metrics, no limits: the routing work alone (`evaluate` on prepared environments). Rows:

- "every model eligible": side A ranks by `weighted(latency: 40%, cost: 30%, quality:
  30%)`, side B by `weighted(latency: 60%, cost: 40%)`; both take the strategy's
  per-route bases, where the quality term is added at compile time;
- "a subset eligible" (`max_tokens` 20,000 leaves the models that can write that much):
  the same two strategies, where the bases are computed per decision over the subset and
  the quality factor adds one term per candidate;
- "request floor below every score": side A's requests carry `min_quality: 0.4`, side B's
  none, both under `weighted(latency: 60%, cost: 40%)`: the cost of the floor's test when
  it drops nothing (`RouteTable.lowest_quality`).

Each row is the median ratio A/B over the pairs (bench/_pairs.py: the order rotated from
pair to pair) and its min–max; the target is ≤ 1.1×.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _pairs import pairs_option, per_op_ns, ratio_cell, ratios, rounds, us  # noqa: E402

from engine import PolicyEngine  # noqa: E402
from engine.resources import default_catalog_path  # noqa: E402
from engine.routing.evaluator import evaluate  # noqa: E402
from engine.routing.request import env_of  # noqa: E402

BLOCK = 3000
WITH_QUALITY = "weighted(latency: 40%, cost: 30%, quality: 30%)"
WITHOUT = "weighted(latency: 60%, cost: 40%)"


def scored_catalog(directory: Path) -> Path:
    """The packaged catalog with an overall quality score on every model."""
    doc = json.loads(default_catalog_path().read_text(encoding="utf-8"))
    for i, model in enumerate(doc["models"]):
        model["quality"] = {"overall": round(0.5 + (i % 10) / 20, 2), "source": "bench"}
    path = directory / "scored.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def deciding(catalog: Path, strategy: str) -> Callable[[list[Any]], float]:
    engine = PolicyEngine.from_text(
        f"catalog {json.dumps(catalog.as_posix())}\ndefaults {{ strategy {strategy} }}\n",
        "<bench>",
    )
    program = engine.program
    return lambda envs: per_op_ns(lambda env: evaluate(program, env), envs)


def requests(size: int, extra: dict[str, Any]) -> Callable[[int], list[Any]]:
    def build(pair: int) -> list[Any]:
        return [
            env_of({"id": f"q{pair}-{n}", "input_tokens": 100 + n % 500, **extra})
            for n in range(size)
        ]

    return build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    pairs_option(parser)
    args = parser.parse_args()
    size = BLOCK // (5 if args.quick else 1)
    with tempfile.TemporaryDirectory() as directory:
        catalog = scored_catalog(Path(directory))
        with_quality, without = deciding(catalog, WITH_QUALITY), deciding(catalog, WITHOUT)
        rows: dict[str, tuple[dict[str, Callable[[list[Any]], float]], Any]] = {
            "quality factor, every model eligible": (
                {"A": with_quality, "B": without},
                requests(size, {"max_tokens": 256}),
            ),
            "quality factor, a subset eligible": (
                {"A": with_quality, "B": without},
                requests(size, {"max_tokens": 20_000}),
            ),
        }
        print("| row | ratio A/B (median, min–max) | A µs/decision | B µs/decision |")
        print("|---|---|---|---|")
        for name, (sides, inputs) in rows.items():
            found = rounds(args.pairs, sides, inputs)
            print(
                f"| {name} | {ratio_cell(ratios(found['A'], found['B']))}"
                f" | {us(found['A']):.1f} | {us(found['B']):.1f} |"
            )
        floor, none = requests(size, {"min_quality": 0.4}), requests(size, {})
        found = rounds(
            args.pairs,
            {"A": lambda envs: without(envs[0]), "B": lambda envs: without(envs[1])},
            lambda pair: (floor(pair), none(pair)),
        )
        print(
            f"| request floor below every score | {ratio_cell(ratios(found['A'], found['B']))}"
            f" | {us(found['A']):.1f} | {us(found['B']):.1f} |"
        )


if __name__ == "__main__":
    main()
