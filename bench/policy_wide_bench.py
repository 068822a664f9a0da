"""A policy-wide `require` against the same `require` repeated in every route.

    python bench/policy_wide_bench.py             # 15 A/B pairs per row, blocks of 4,000
    python bench/policy_wide_bench.py --quick     # 15 pairs of blocks a fifth of the size

The design catalog (examples/policies/models.yaml: 11 models, some served in the EU, some
in the US only), four routes keyed by `request.metadata.team` and a catch-all route (the
`defaults` cannot hold a `require`: without policy-wide constraints a catch-all is how the
rest is bound); requests half
from the EU (`request.region == "eu"`), spread over the routes. Each row times decisions
(`evaluate` on request envs built before the round) in interleaved A/B pairs
(bench/_pairs.py), the order rotated each round, and shows the median ratio A/B and its
min–max:

- "residency, per request": A `require model.regions contains "eu" when request.region
  == "eu"` once, policy-wide (every route compiled twice, with and without the models it
  drops; an EU request takes the variant without: the shortcut runs) against B the same
  constraint in every route, where a route's `require` has no `when`: `require
  request.region != "eu" or model.regions contains "eu"` (it reads the request, so each
  route checks it model by model);
- "EU only, no when": A `require model.regions contains "eu"` once against B the same line
  in every route (both folded into the candidates at compile time: target ≈ 1×);
- "residency, against none": A the policy-wide residency against B no residency at all
  (the cost of the constraint itself: its `when` per request, target ≤ 1.1×).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _pairs import pairs_option, per_op_ns, ratio_cell, ratios, rounds  # noqa: E402

from engine.language.loader import compile_sources  # noqa: E402
from engine.language.program import Program  # noqa: E402
from engine.routing.evaluator import EvalState, evaluate  # noqa: E402
from engine.routing.request import env_of  # noqa: E402

CATALOG = ROOT / "examples" / "policies" / "models.yaml"
TEAMS = ("search", "support", "legal", "batch")
RESIDENCY = 'require model.regions contains "eu" when request.region == "eu"'
PER_ROUTE_RESIDENCY = 'require request.region != "eu" or model.regions contains "eu"'
EU_ONLY = 'require model.regions contains "eu"'


def policy(top: str = "", in_routes: str = "") -> str:
    body = f"    {in_routes}\n" if in_routes else ""
    routes = "".join(
        f'route {team} when request.metadata.team == "{team}" {{\n'
        f"    strategy {strategy}\n{body}}}\n"
        for team, strategy in zip(
            TEAMS, ("latency", "cost", "weighted(latency: 60%, cost: 40%)", "cost"), strict=True
        )
    )  # and a catch-all, as a policy without policy-wide constraints needs to bind the rest
    routes += f"route rest {{\n    strategy weighted(latency: 60%, cost: 40%)\n{body}}}\n"
    return (
        f'catalog "{CATALOG.as_posix()}"\n{top}\n'
        "defaults {\n    strategy weighted(latency: 60%, cost: 40%)\n"
        "    fallback openai, claude, gemini\n}\n" + routes
    )


ROWS = {
    "residency, per request": (policy(top=RESIDENCY), policy(in_routes=PER_ROUTE_RESIDENCY)),
    "EU only, no when": (policy(top=EU_ONLY), policy(in_routes=EU_ONLY)),
    "residency, against none": (policy(top=RESIDENCY), policy()),
}


def compiled(text: str) -> Program:
    return compile_sources([("bench.policy", text)]).program


def requests(round_: int, size: int) -> list[Any]:
    out = []
    for i in range(size):
        request: dict[str, Any] = {
            "id": f"r{round_}-{i}",
            "prompt": "hello, summarise this",
            "region": "eu" if i % 2 == 0 else "us",
        }
        team = i % (len(TEAMS) + 1)
        if team < len(TEAMS):
            request["metadata"] = {"team": TEAMS[team]}
        out.append(env_of(request))
    return out


def agree(a: Program, b: Program, envs: list[Any]) -> None:
    """Both sides choose the same models (the reasons may name their own `require`)."""
    for env in envs:
        x = evaluate(a, env, state=EvalState())
        y = evaluate(b, env, state=EvalState())
        assert (x.allowed, x.provider, x.model, x.fallbacks) == (
            y.allowed,
            y.provider,
            y.model,
            y.fallbacks,
        ), env["id"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    pairs_option(parser)
    args = parser.parse_args()
    block = 4000 // (5 if args.quick else 1)
    print("| row | ratio A/B (median, min–max) | A µs/decision | B µs/decision |")
    print("|---|---|---|---|")
    for name, (a_text, b_text) in ROWS.items():
        a, b = compiled(a_text), compiled(b_text)
        if name != "residency, against none":
            agree(a, b, requests(-1, 200))

        def side(program: Program) -> Any:
            return lambda envs: per_op_ns(
                lambda env: evaluate(program, env, state=EvalState()), envs
            )

        figures = rounds(args.pairs, {"A": side(a), "B": side(b)}, lambda i: requests(i, block))
        print(
            f"| {name} | {ratio_cell(ratios(figures['A'], figures['B']))}"
            f" | {statistics.median(figures['A']) / 1000:.2f}"
            f" | {statistics.median(figures['B']) / 1000:.2f} |"
        )


if __name__ == "__main__":
    main()
