"""Interleaved A/B rounds: the one method of every ratio row in bench/ (issue 15).

A round builds its inputs once (fresh for every round), then runs each side on them, one
block per side, the order rotated from round to round (for two sides: A then B, then B
then A); the garbage collector is collected before and off inside each block. A side
returns its own figure (ns per operation); the ratio is taken within each round, and a row
shows the median ratio over the rounds and its min–max. The machine's drift (other work,
frequency changes) hits both sides of a round alike, so per-round ratios are steadier than
a ratio of medians taken minutes apart.
"""

from __future__ import annotations

import argparse
import functools
import gc
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

MIN_PAIRS = 15  # issue 15: every ratio row over at least 15 pairs

T = TypeVar("T")
R = TypeVar("R")


def gc_off(run: Callable[[], R]) -> R:
    """`run()` with the collector collected before and disabled during it."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return run()
    finally:
        if was_enabled:
            gc.enable()


def settle() -> None:
    """Collect, then freeze what survives (modules, engines, routers) out of the collector's
    sight: each block's `gc.collect()` then scans only what the bench made since, not the
    hundreds of thousands of objects an import like litellm's leaves (a second each)."""
    gc.collect()
    gc.freeze()


def block_size(per_op_ns: float, block_ns: float, least: int, most: int) -> int:
    """Operations in a block of about `block_ns`, within [least, most]."""
    return int(min(most, max(least, block_ns / max(per_op_ns, 1.0))))


def rounds(
    count: int,
    sides: Mapping[str, Callable[[T], float]],
    inputs: Callable[[int], T],
) -> dict[str, list[float]]:
    """`count` rounds of every side; round i runs each side once on `inputs(i)` (built
    before the round, outside every block), in an order rotated by i. Returns each side's
    figures, one per round, in round order."""
    settle()
    names = list(sides)
    figures: dict[str, list[float]] = {name: [] for name in names}
    for i in range(count):
        items = inputs(i)
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            figures[name].append(gc_off(functools.partial(sides[name], items)))
    return figures


def per_op_ns(op: Callable[[Any], Any], items: list[Any]) -> float:
    """ns per call of `op(item)` over `items`."""
    clock = time.perf_counter_ns
    start = clock()
    for item in items:
        op(item)
    return (clock() - start) / len(items)


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """numerator / denominator within each round."""
    return [n / d if d > 0 else float("inf") for n, d in zip(numerator, denominator, strict=True)]


def ratio_cell(values: list[float], digits: int = 2) -> str:
    """'6.40× (5.10–7.90)': the median ratio and its min–max over the rounds."""
    return (
        f"{statistics.median(values):.{digits}f}× "
        f"({min(values):.{digits}f}–{max(values):.{digits}f})"
    )


def us(values_ns: list[float]) -> float:
    """The median of per-operation figures in ns, in µs."""
    return statistics.median(values_ns) / 1000


def pairs_option(parser: argparse.ArgumentParser) -> None:
    """--pairs N (at least MIN_PAIRS; the default)."""

    def at_least(text: str) -> int:
        value = int(text)
        if value < MIN_PAIRS:
            raise argparse.ArgumentTypeError(f"at least {MIN_PAIRS} pairs")
        return value

    parser.add_argument(
        "--pairs",
        type=at_least,
        default=MIN_PAIRS,
        help=f"A/B pairs per ratio row (at least {MIN_PAIRS}, the default)",
    )
