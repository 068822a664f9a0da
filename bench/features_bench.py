"""What prompt features cost a decision (issue 21's targets: deriving the features a typical
policy reads costs ≤ 5 µs on a 4-message chat body and ≤ 50 µs on a 100 KB conversation).

    python bench/features_bench.py [--quick] [--pairs N]

Each row interleaves A/B pairs (bench/_pairs.py): A decides a body on a policy that reads
no prompt feature, B on the same routes reading `request.complexity` (which reads seven of
the features) and `request.text.code`. Both read the body (`env_of`) and decide
(`evaluate`, no limits) inside the timed call, on a fresh copy of the body each time, so a
feature is derived once per decision as in the service. The extra cost is B − A per pair:
median and min–max over the pairs, and whether the median meets the target. A last line
counts the features derived by the A policy: 0 (it pays nothing for them). Nothing leaves
the machine.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _pairs import pairs_option, per_op_ns, rounds  # noqa: E402

from engine.language.loader import compile_sources  # noqa: E402
from engine.routing.evaluator import evaluate  # noqa: E402
from engine.routing.request import env_of  # noqa: E402
from engine.wire.features import derivations  # noqa: E402

ROUTES = """
route big when {condition} {{
    prefer anthropic/claude-sonnet-4-6
}}
route small {{
    prefer openai/gpt-4o-mini
}}
"""
PLAIN = ROUTES.format(condition="request.requires_pdf or request.max_tokens > 100000")
FEATURES = ROUTES.format(condition="request.complexity >= 0.5 or request.text.code")

CHAT: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer concisely."},
        {"role": "user", "content": "What's the difference between a list and a tuple in Python?"},
        {
            "role": "assistant",
            "content": "A list is mutable and a tuple is immutable; tuples can be dict keys.",
        },
        {"role": "user", "content": "And which one is faster to create? Show a tiny benchmark."},
    ],
    "temperature": 0.7,
}


def long_conversation(size: int = 100_000) -> dict[str, Any]:
    """An OpenAI chat body of about `size` characters of prose in 2 KB turns, no code (every
    check reads to the end), the last turn a short question."""
    sentence = (
        "The committee reviewed the quarterly figures and agreed that the regional offices"
        " should share one schedule for the spring audit, with notes kept in the usual place. "
    )
    turn = sentence * (2000 // len(sentence) + 1)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You summarise meetings."}]
    while sum(len(m["content"]) for m in messages) < size:
        role = "user" if len(messages) % 2 else "assistant"
        messages.append({"role": role, "content": turn})
    messages.append({"role": "user", "content": "Which office raised the budget question?"})
    return {"model": "gpt-4o", "messages": messages}


def row(label: str, body: dict[str, Any], target_us: float, pairs: int, block: int) -> str:
    plain = compile_sources([("plain.policy", PLAIN)]).program
    reading = compile_sources([("features.policy", FEATURES)]).program

    def side(program: Any) -> Any:
        return lambda items: per_op_ns(lambda b: evaluate(program, env_of(b)), items)

    for _ in range(20):  # warm
        evaluate(plain, env_of(copy.deepcopy(body)))
        evaluate(reading, env_of(copy.deepcopy(body)))
    times = rounds(
        pairs,
        {"plain": side(plain), "features": side(reading)},
        lambda i: [copy.deepcopy(body) for _ in range(block)],
    )
    extra = [(b - a) / 1000 for a, b in zip(times["plain"], times["features"], strict=True)]
    base = statistics.median(times["plain"]) / 1000
    median = statistics.median(extra)
    met = "yes" if median <= target_us else "NO"
    return (
        f"{label:34} {base:>12.2f} {median:>10.2f} ({min(extra):.2f}–{max(extra):.2f})"
        f" {'≤ ' + format(target_us, 'g') + ' µs':>9}  {met}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks")
    pairs_option(parser)
    args = parser.parse_args()
    small, large = (50, 5) if args.quick else (400, 40)
    print(
        f"{'features a typical policy reads':34} {'decision µs':>12}"
        f" {'extra µs median (min–max)':>26} {'target':>9}  met"
    )
    print(row("4-message chat (openai-chat)", CHAT, 5.0, args.pairs, small))
    print(row("100 KB conversation (openai-chat)", long_conversation(), 50.0, args.pairs, large))
    plain = compile_sources([("plain.policy", PLAIN)]).program
    before = derivations()
    for body in (CHAT, long_conversation()):
        evaluate(plain, env_of(copy.deepcopy(body)), explain=True)
    print(f"features derived for a policy that reads none: {derivations() - before}")


if __name__ == "__main__":
    main()
