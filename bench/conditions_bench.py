"""Policy conditions: policyctl's compiled conditions next to CEL (cel-python) and Cedar
(cedarpy), the policy languages SPEC §8 names, and plain Python.

    python bench/conditions_bench.py [--quick]

The three conditions of `bench/eval_bench.py` are written in each language with the same
meaning (a field that is absent makes a comparison false) and checked to agree with plain
Python on every request before anything is timed. What is timed is one evaluation against
input already in the language's own form: policyctl's request env; a CEL activation built
with `celpy.json_to_cel`; a Cedar request whose context holds the fields (money as Cedar
`decimal`), against a `PolicySet` parsed once and empty `Entities` parsed once. Building
those inputs is not timed. The bare loop is taken out of every figure.

The SPEC §8 target is policyctl against plain Python (at most 5×); CEL and Cedar are for
scale (SPEC reference: cel-python 34 µs, cedarpy pre-parsed 35 µs). Peers that are not
installed (`pip install '.[bench]'`) are reported as such.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pairs import pairs_option, ratio_cell, ratios, rounds, us
from eval_bench import (
    CONDITIONS,
    FULL,
    QUICK,
    bare_loop_ns,
    compiled,
    condition_envs,
    pool_passes,
    pool_side,
)

TARGET = 5.0

CEL = (
    'has(request.region) && request.region == "eu"',
    '(has(request.region) && request.region == "eu" && has(request.max_tokens)'
    " && request.max_tokens <= 4096) || (has(request.max_cost) && request.max_cost <= 0.001)",
    'has(request.metadata.team) && request.metadata.team in ["a", "b", "c"]'
    " && !request.requires_vision",
)
CEDAR = (
    'context has region && context.region == "eu"',
    '(context has region && context.region == "eu" && context has max_tokens'
    " && context.max_tokens <= 4096) || (context has max_cost"
    ' && context.max_cost.lessThanOrEqual(decimal("0.001")))',
    'context has metadata && context.metadata has team && ["a", "b", "c"]'
    ".contains(context.metadata.team) && !context.requires_vision",
)


def _present(env: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the conditions read, absent ones left out (CEL and Cedar test `has`)."""
    out: dict[str, Any] = {"requires_vision": bool(env["requires_vision"])}
    for name in ("region", "max_tokens", "max_cost"):
        if env.get(name) is not None:
            out[name] = env[name]
    if "max_tokens" in out:  # a count: an integer in CEL and Cedar
        out["max_tokens"] = int(out["max_tokens"])
    metadata = env.get("metadata") or {}
    out["metadata"] = {k: v for k, v in metadata.items() if v is not None}
    return out


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cel_rows(envs: list[dict[str, Any]]) -> tuple[list[Callable[[Any], Any]], list[Any]]:
    import celpy

    environment = celpy.Environment()  # the interpreted runner: see the note printed
    programs = [environment.program(environment.compile(text)) for text in CEL]
    activations = [{"request": celpy.json_to_cel(_present(env))} for env in envs]
    return [p.evaluate for p in programs], activations


def _cedar_value(value: Any) -> Any:
    if isinstance(value, float):
        return {"__extn": {"fn": "decimal", "arg": f"{value:.4f}"}}
    if isinstance(value, dict):
        return {k: _cedar_value(v) for k, v in value.items()}
    return value


def cedar_rows(envs: list[dict[str, Any]]) -> tuple[list[Callable[[Any], Any]], list[Any]]:
    import cedarpy

    entities = cedarpy.Entities.from_json_str("[]")
    calls = []
    for text in CEDAR:
        policies = cedarpy.PolicySet.from_str(
            f"permit(principal, action, resource) when {{ {text} }};"
        )

        def call(request: Any, policies: Any = policies) -> bool:
            return bool(cedarpy.is_authorized(request, policies, entities).allowed)

        calls.append(call)
    requests = [
        {
            "principal": 'User::"u"',
            "action": 'Action::"route"',
            "resource": 'Route::"r"',
            "context": _cedar_value(_present(env)),
        }
        for env in envs
    ]
    return calls, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short pass")
    pairs_option(parser)
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    envs = condition_envs(256 if args.quick else 1024)

    peers: dict[str, tuple[list[Callable[[Any], Any]], list[Any]] | str] = {}
    for name, package, build in (
        ("cel-python", "cel-python", cel_rows),
        ("cedarpy", "cedarpy", cedar_rows),
    ):
        if version(package) is None:
            peers[name] = "not installed"
            continue
        try:
            peers[name] = build(envs)
        except Exception as err:  # a peer that cannot run is reported, not fatal
            peers[name] = f"failed: {type(err).__name__}: {err}"

    print(f"python    {sys.version.split()[0]}")
    for package in ("cel-python", "cedarpy"):
        print(f"{package:<9} {version(package) or 'not installed'}")
    print()
    header = (
        f"{'condition':<31} | {'policyctl µs':>12} | {'plain µs':>8} | {'ours/plain':>18} | "
        f"{'met ≤5×':>7} | {'cel-python µs':>13} | {'cedarpy µs':>10}"
    )
    print(header)
    print("-" * len(header))
    overhead = 0.0
    for index, (label, text, plain) in enumerate(CONDITIONS):
        ours_fn = compiled(text)
        for env in envs:
            if ours_fn(env, None) != plain(env, None):
                raise SystemExit(f"{label}: policyctl and plain Python disagree on {env!r}")
        calls: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
            "policyctl": (lambda env, f=ours_fn: f(env, None), envs),
            "plain": (lambda env, f=plain: f(env, None), envs),
        }
        for name, peer in peers.items():
            if isinstance(peer, str):
                continue
            fn, inputs = peer[0][index], peer[1]
            for env, item in zip(envs, inputs, strict=True):
                if bool(fn(item)) != plain(env, None):
                    raise SystemExit(f"{label}: {name} and plain Python disagree on {env!r}")
            calls[name] = (fn, inputs)
        passes = {name: pool_passes(fn, pool, mode.block_ns) for name, (fn, pool) in calls.items()}
        if index == 0:  # the bare loop, at policyctl's block size
            overhead = bare_loop_ns(envs, passes["policyctl"])
        sides = {
            name: pool_side(fn, pool, passes[name], overhead) for name, (fn, pool) in calls.items()
        }
        figures = rounds(args.pairs, sides, int)
        per_pair = ratios(figures["policyctl"], figures["plain"])
        ok = statistics.median(per_pair) <= TARGET
        cells = {
            name: f"{us(figures[name]):.2f}" if name in figures else "n/a"
            for name in ("cel-python", "cedarpy")
        }
        print(
            f"{label:<31} | {us(figures['policyctl']):>12.3f} | {us(figures['plain']):>8.3f} |"
            f" {ratio_cell(per_pair):>18} | {'yes' if ok else 'NO':>7} |"
            f" {cells['cel-python']:>13} | {cells['cedarpy']:>10}"
        )
    print()
    print(
        f"{args.pairs} rounds per condition: each runs policyctl, plain Python, cel-python and"
        "\ncedarpy in turn (the order rotated per round) on the same inputs, one block each of"
        f"\n~{mode.block_ns // 1_000_000} ms, the collector off inside; ours/plain is the median"
        " of the per-round ratios,\nmin–max in parentheses; µs columns are medians over the"
        " rounds. Every side is called\nthrough one Python function call per evaluation (the"
        " lambda around policyctl and plain\nPython is the same on both), the bare loop"
        f" ({overhead / 1000:.3f} µs) taken out."
    )
    print(
        "cel-python runs its interpreted runner: its CompiledRunner (0.5) raises on `has()`"
        "\nguards over absent fields, which these conditions need."
    )
    for name, peer in peers.items():
        if isinstance(peer, str):
            print(f"{name}: {peer}")


if __name__ == "__main__":
    main()
