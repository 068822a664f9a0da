"""`engine.tokens.estimate_text_tokens` against litellm's token counts, per language.

    python bench/token_accuracy.py                  # gpt-4o (o200k_base), the whole corpus
    python bench/token_accuracy.py --model gpt-4.1
    python bench/token_accuracy.py --quick          # every 5th prompt, fewer timing rounds

For each prompt of `bench/token_corpus.jsonl`: the estimate, `litellm.token_counter(model=
MODEL, text=...)` and the four-characters-a-token rule; the absolute percentage error of
each against litellm's count, and per language (and overall) the count of prompts, the mean
(MAPE), median, 90th percentile and maximum of the estimate's error, and the rule's MAPE.
Then the estimator's speed: microseconds per call on a 500- and a 4,000-character English
message, the median of interleaved rounds, next to tiktoken's own `encode` of the same text.

No network: litellm is imported with LITELLM_LOCAL_MODEL_COST_MAP=True (its bundled cost
map) and counts with tiktoken reading the encoding files litellm ships (it points
TIKTOKEN_CACHE_DIR at them); o200k_base is among them. The script says which encoding
litellm used. Exit status 1 when the overall MAPE is over `--max-mape` (default 10).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from engine.tokens import estimate_text_tokens  # noqa: E402

CORPUS = HERE / "token_corpus.jsonl"


def load_corpus(path: Path = CORPUS) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def errors(rows: list[dict[str, str]], model: str) -> list[tuple[str, float, float]]:
    """(language, estimate's error, 4-chars rule's error) per prompt, errors as fractions."""
    import litellm

    out = []
    for row in rows:
        text = row["text"]
        exact = litellm.token_counter(model=model, text=text)
        estimate = estimate_text_tokens(text)
        rule = max(1, round(len(text) / 4))
        out.append((row["lang"], abs(estimate - exact) / exact, abs(rule - exact) / exact))
    return out


def table(per_prompt: list[tuple[str, float, float]]) -> tuple[list[str], float]:
    by_lang: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for lang, err, rule in per_prompt:
        by_lang[lang].append((err, rule))
    lines = [
        "language     | prompts | MAPE  | median | p90   | max    | 4-chars MAPE",
        "-------------|---------|-------|--------|-------|--------|-------------",
    ]

    def row(name: str, pairs: list[tuple[float, float]]) -> str:
        errs = [e for e, _ in pairs]
        mape = 100 * statistics.fmean(errs)
        rule = 100 * statistics.fmean(r for _, r in pairs)
        return (
            f"{name:<12} | {len(pairs):>7} | {mape:>4.1f}% | {100 * statistics.median(errs):>5.1f}%"
            f" | {100 * percentile(errs, 0.9):>4.1f}% | {100 * max(errs):>5.1f}% | {rule:>10.1f}%"
        )

    order = sorted(by_lang, key=lambda k: -statistics.fmean(e for e, _ in by_lang[k]))
    lines += [row(lang, by_lang[lang]) for lang in order]
    everything = [(e, r) for _, e, r in per_prompt]
    lines.append(row("overall", everything))
    return lines, 100 * statistics.fmean(e for e, _ in everything)


def english(length: int) -> str:
    sample = (
        "Please summarize the following support ticket and suggest a reply. The customer "
        "says their invoice for March (#48213, $1,249.99) was charged twice, once on the "
        "3rd and again on the 5th, and asks for a refund to the original card. "
    )
    return (sample * (length // len(sample) + 1))[:length]


def speed(rounds: int) -> list[str]:
    """µs per call, median of `rounds` interleaved rounds, ours and tiktoken's encode."""
    import tiktoken

    encoding = tiktoken.get_encoding("o200k_base")
    lines = []
    for length in (500, 4000):
        text = english(length)
        ours: list[float] = []
        theirs: list[float] = []
        loops = 2000 if length == 500 else 300
        gc.collect()
        gc.disable()
        try:
            for _ in range(rounds):
                start = time.perf_counter_ns()
                for _ in range(loops):
                    estimate_text_tokens(text)
                ours.append((time.perf_counter_ns() - start) / loops / 1000)
                start = time.perf_counter_ns()
                for _ in range(loops // 10):
                    encoding.encode(text)
                theirs.append((time.perf_counter_ns() - start) / (loops // 10) / 1000)
        finally:
            gc.enable()
        mine, tik = statistics.median(ours), statistics.median(theirs)
        lines.append(
            f"{length:>5} chars: estimate_text_tokens {mine:7.2f} µs | tiktoken encode "
            f"{tik:8.2f} µs | {tik / mine:5.1f}x faster"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt-4o", help="the model litellm counts for")
    parser.add_argument("--corpus", type=Path, default=CORPUS)
    parser.add_argument("--quick", action="store_true", help="every 5th prompt, 3 timing rounds")
    parser.add_argument("--max-mape", type=float, default=10.0, help="exit 1 above this (%%)")
    args = parser.parse_args()

    rows = load_corpus(args.corpus)
    if args.quick:
        rows = rows[::5]
    started = time.perf_counter()
    per_prompt = errors(rows, args.model)
    from litellm.litellm_core_utils.token_counter import openai_tokenizer_encoding_name

    print(
        f"{len(rows)} prompts of {args.corpus.name}; litellm.token_counter(model={args.model!r})"
        f" counts with {openai_tokenizer_encoding_name(args.model)}"
        f" from TIKTOKEN_CACHE_DIR={os.environ.get('TIKTOKEN_CACHE_DIR')}"
    )
    lines, overall = table(per_prompt)
    print("\n".join(lines))
    print(f"(counted in {time.perf_counter() - started:.1f} s)\n")
    print("speed, median of interleaved rounds:")
    print("\n".join(speed(3 if args.quick else 9)))
    if overall > args.max_mape:
        print(f"overall MAPE {overall:.1f}% is over {args.max_mape}%")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
