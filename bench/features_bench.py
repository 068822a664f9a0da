"""What prompt features cost a decision (issue 21's targets: deriving the features a typical
policy reads costs ≤ 5 µs on a 4-message chat body and ≤ 50 µs on a 100 KB conversation).

    python bench/features_bench.py [--quick] [--pairs N] [--against DIR]

Each row interleaves A/B pairs (bench/_pairs.py, at least 15): A decides a body on a
policy that reads no prompt feature, B on the same routes reading `request.complexity`
(which reads seven of the features) and `request.text.code`. Both read the body (`env_of`)
and decide (`evaluate`, no limits) inside the timed call, each on its own copy of the body
parsed from JSON (new strings, as the service has them), so a feature is derived once per
decision as in the service. The extra cost is B − A per pair, in wall-clock time and in the
thread's CPU time (on a shared machine the wall clock also counts the time other processes
run: the CPU time is the steadier figure, and the one held to the target): median and
min–max over the pairs. The last two rows time the derivation alone (CPU), on requests
already read: A takes each request's conversation, B derives the same features from it.
Two rows say where the rest of the extra in a decision goes, beside the derivation (CPU, A/B
on requests already read): the conditions' evaluation once the features are derived (A
decides the A policy, B the B policy, on requests whose features B already derived), and
freeing what a derivation made (A drops requests that derived nothing, B requests that
derived the B policy's features). Four rows split a decision on the plain policy, request by
request, into reading the body (`env_of`), deriving (A: nothing, B: the B policy's features),
deciding and freeing the request, each timed on the thread's CPU clock (B − A per pair: what
a derivation costs there, and what it makes the rest of the decision cost beside it). A last
line counts the features derived by the A policy: 0 (it pays nothing for them). With
`--against DIR` (another checkout, say main's), two more rows time the derivation alone with
that checkout's `engine/wire/features.py` and `engine/tokens.py` (A) against this one's (B),
both loaded in this process and alternating block by block on the same read bodies: B / A per
pair, median and min–max. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _machine import machine_line  # noqa: E402
from _pairs import pairs_option, ratio_cell, ratios, rounds  # noqa: E402

from engine.language.loader import compile_sources  # noqa: E402
from engine.routing.evaluator import evaluate  # noqa: E402
from engine.routing.request import env_of  # noqa: E402
from engine.wire import features  # noqa: E402
from engine.wire.features import conversation_of, derivations  # noqa: E402

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


def fresh(body: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """`count` copies of `body`, each parsed from JSON (its own strings)."""
    text = json.dumps(body)
    return [json.loads(text) for _ in range(count)]


def timed(op: Callable[[Any], Any], cpu: list[float]) -> Callable[[list[Any]], float]:
    """A side of a round: ns per `op(item)` by the wall clock (returned) and by the thread's
    CPU clock (appended to `cpu`)."""

    def side(items: list[Any]) -> float:
        wall, thread = time.perf_counter_ns, time.thread_time_ns
        start, start_cpu = wall(), thread()
        for item in items:
            op(item)
        cpu.append((thread() - start_cpu) / len(items))
        return (wall() - start) / len(items)

    return side


def spread(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """B − A per pair, µs: median, min, max."""
    extra = [(y - x) / 1000 for x, y in zip(a, b, strict=True)]
    return statistics.median(extra), min(extra), max(extra)


def show(figures: tuple[float, float, float]) -> str:
    median, low, high = figures
    return f"{median:.2f} ({low:.2f}–{high:.2f})"


def row(label: str, body: dict[str, Any], target_us: float, pairs: int, block: int) -> str:
    """The extra cost of the features in a decision (wall and CPU)."""
    plain = compile_sources([("plain.policy", PLAIN)]).program
    reading = compile_sources([("features.policy", FEATURES)]).program
    for item in fresh(body, 20):  # warm
        evaluate(plain, env_of(item))
        evaluate(reading, env_of(item))
    cpu: dict[str, list[float]] = {"plain": [], "features": []}
    sides = {
        name: timed(lambda b, p=program: evaluate(p, env_of(b)), cpu[name])
        for name, program in (("plain", plain), ("features", reading))
    }
    walls = rounds(pairs, sides, lambda i: fresh(body, block))
    base = statistics.median(cpu["plain"]) / 1000
    on_cpu = spread(cpu["plain"], cpu["features"])
    met = "yes" if on_cpu[0] <= target_us else "NO"
    return (
        f"{label:34} {base:>9.2f} {show(spread(walls['plain'], walls['features'])):>24}"
        f" {show(on_cpu):>24} {'≤ ' + format(target_us, 'g') + ' µs':>9}  {met}"
    )


def alone(label: str, body: dict[str, Any], target_us: float, pairs: int, block: int) -> str:
    """The derivation alone (CPU): A takes each read request's conversation, B derives
    what the B policy of `row` reads from it (the score and `code`)."""
    weights = compile_sources([("features.policy", FEATURES)]).program.complexity_weights
    cpu: dict[str, list[float]] = {"take": [], "derive": []}

    def derive(env: dict[str, Any]) -> None:
        conv = conversation_of(env)
        conv.complexity(weights)
        conv.feature("code")

    sides = {"take": timed(conversation_of, cpu["take"]), "derive": timed(derive, cpu["derive"])}
    rounds(pairs, sides, lambda i: [env_of(b) for b in fresh(body, block)])
    on_cpu = spread(cpu["take"], cpu["derive"])
    met = "yes" if on_cpu[0] <= target_us else "NO"
    return (
        f"{label:34} {'':>9} {'':>24} {show(on_cpu):>24}"
        f" {'≤ ' + format(target_us, 'g') + ' µs':>9}  {met}"
    )


def rest_of_extra(body: dict[str, Any], pairs: int, block: int) -> list[str]:
    """Where the extra of a decision goes beside the derivation (CPU, µs, B − A per pair):
    the conditions' evaluation once the features are derived, and freeing what a
    derivation made."""
    plain = compile_sources([("plain.policy", PLAIN)]).program
    reading = compile_sources([("features.policy", FEATURES)]).program
    weights = reading.complexity_weights

    def read(count: int, derive: bool) -> list[dict[str, Any]]:
        envs = [env_of(b) for b in fresh(body, count)]
        for env in envs if derive else ():
            conversation_of(env).complexity(weights)
            conversation_of(env).feature("code")
        return envs

    def freeing(name: str, cpu: list[float]) -> Callable[[dict[str, list[Any]]], float]:
        def side(envs: dict[str, list[Any]]) -> float:  # (this side's requests, freed)
            count, start = len(envs[name]), time.thread_time_ns()
            envs[name].clear()
            cpu.append((time.thread_time_ns() - start) / count)
            return cpu[-1]

        return side

    cond: dict[str, list[float]] = {"plain": [], "features": []}
    sides = {
        "plain": timed(lambda env: evaluate(plain, env), cond["plain"]),
        "features": timed(lambda env: evaluate(reading, env), cond["features"]),
    }
    rounds(pairs, sides, lambda i: read(block, True))
    free: dict[str, list[float]] = {"plain": [], "features": []}
    frees = {name: freeing(name, cpu) for name, cpu in free.items()}
    rounds(pairs, frees, lambda i: {"plain": read(block, False), "features": read(block, True)})
    return [
        f"{label:34} {'':>9} {'':>24} {show(spread(cpu['plain'], cpu['features'])):>24}"
        for label, cpu in (
            ("  conditions, features derived", cond),
            ("  freeing what a derivation made", free),
        )
    ]


def around(body: dict[str, Any], pairs: int, block: int) -> list[str]:
    """A decision on the plain policy in four timed parts (CPU, µs, B − A per pair): reading
    the body, deriving (A: taking the conversation, B: the B policy's features), deciding,
    freeing the request. The clock calls cost both sides alike."""
    plain = compile_sources([("plain.policy", PLAIN)]).program
    weights = compile_sources([("features.policy", FEATURES)]).program.complexity_weights
    parts = ("reading the body", "deriving", "deciding", "freeing the request")

    def derive(env: dict[str, Any]) -> None:
        conv = conversation_of(env)
        conv.complexity(weights)
        conv.feature("code")

    def split(op: Callable[[dict[str, Any]], Any], cpu: list[list[float]]) -> Callable[..., float]:
        def side(items: list[dict[str, Any]]) -> float:
            clock = time.thread_time_ns
            spent = [0, 0, 0, 0]
            for item in items:
                t0 = clock()
                env = env_of(item)
                t1 = clock()
                op(env)
                t2 = clock()
                evaluate(plain, env)
                t3 = clock()
                del env
                t4 = clock()
                spent[0] += t1 - t0
                spent[1] += t2 - t1
                spent[2] += t3 - t2
                spent[3] += t4 - t3
            for i, total in enumerate(spent):
                cpu[i].append(total / len(items))
            return sum(spent) / len(items)

        return side

    cpu: dict[str, list[list[float]]] = {"take": [[], [], [], []], "derive": [[], [], [], []]}
    sides = {"take": split(conversation_of, cpu["take"]), "derive": split(derive, cpu["derive"])}
    rounds(pairs, sides, lambda i: fresh(body, block))
    return [
        f"{'  in a decision: ' + part:34} {'':>9} {'':>24}"
        f" {show(spread(cpu['take'][i], cpu['derive'][i])):>24}"
        for i, part in enumerate(parts)
    ]


def load_features(checkout: Path) -> Any:
    """`checkout`'s `engine/wire/features.py` as a module of its own, reading `checkout`'s
    `engine/tokens.py` (the rest of the engine is this one's)."""

    def load(name: str, path: Path) -> Any:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    ours = sys.modules["engine.tokens"]
    sys.modules["engine.tokens"] = load("other_tokens", checkout / "engine" / "tokens.py")
    try:
        return load("other_features", checkout / "engine" / "wire" / "features.py")
    finally:
        sys.modules["engine.tokens"] = ours


def against(checkout: Path, pairs: int, small: int, large: int) -> list[str]:
    """The derivation alone (CPU), `checkout`'s engine (A) against this one's (B): B / A."""
    other = load_features(checkout)
    weights = compile_sources([("features.policy", FEATURES)]).program.complexity_weights
    lines = []
    for label, body, block in (
        ("4-message chat", CHAT, small),
        ("100 KB", long_conversation(), large),
    ):
        cpu: dict[str, list[float]] = {"theirs": [], "ours": []}

        def side(module: Any, spent: list[float]) -> Callable[[list[dict[str, Any]]], float]:
            def run(envs: list[dict[str, Any]]) -> float:
                convs = [
                    module.Conversation(env["format"], env["conversation"].body) for env in envs
                ]
                start = time.thread_time_ns()
                for conv in convs:
                    conv.complexity(weights)
                    conv.feature("code")
                spent.append((time.thread_time_ns() - start) / len(convs))
                return spent[-1]

            return run

        sides = {"theirs": side(other, cpu["theirs"]), "ours": side(features, cpu["ours"])}
        rounds(pairs, sides, lambda i, b=body, n=block: [env_of(x) for x in fresh(b, n)])
        lines.append(
            f"{'  derivation alone, ' + label:34} {statistics.median(cpu['theirs']) / 1000:>9.2f}"
            f" {statistics.median(cpu['ours']) / 1000:>9.2f}"
            f"  {ratio_cell(ratios(cpu['ours'], cpu['theirs']), 3)}"
        )
    return [f"{'against ' + str(checkout) + ':':34} {'A cpu µs':>9} {'B cpu µs':>9}  B / A", *lines]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller blocks")
    pairs_option(parser)
    parser.add_argument("--against", type=Path, help="another checkout: its derivation as A")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    small, large = (50, 5) if args.quick else (400, 40)
    print(
        f"{'features a typical policy reads':34} {'cpu µs':>9} {'extra wall µs (min–max)':>24}"
        f" {'extra cpu µs (min–max)':>24} {'target':>9}  met (cpu)"
    )
    print(row("4-message chat (openai-chat)", CHAT, 5.0, args.pairs, small))
    print(row("100 KB conversation (openai-chat)", long_conversation(), 50.0, args.pairs, large))
    print(alone("  derivation alone, 4-message chat", CHAT, 5.0, args.pairs, small))
    print(alone("  derivation alone, 100 KB", long_conversation(), 50.0, args.pairs, large))
    for line in rest_of_extra(CHAT, args.pairs, small):
        print(line)
    for line in around(CHAT, args.pairs, small):
        print(line)
    plain = compile_sources([("plain.policy", PLAIN)]).program
    before = derivations()
    for body in fresh(CHAT, 1) + fresh(long_conversation(), 1):
        evaluate(plain, env_of(body), explain=True)
    print(f"features derived for a policy that reads none: {derivations() - before}")
    if args.against is not None:
        for line in against(args.against, args.pairs, small, large):
            print(line)


if __name__ == "__main__":
    main()
