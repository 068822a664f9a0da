"""Fit `engine.tokens.WEIGHTS` against litellm's gpt-4o token counts (needs numpy, litellm).

    python bench/token_fit.py            # prints the WEIGHTS tuple to paste into engine/tokens.py

The training prompts are drawn like `bench/token_corpus.jsonl` (`token_corpus_build.py`) but
with another seed, more per language and without the handwritten prompts, plus synthetic
emoji prompts; the checked-in corpus is not used, so `bench/token_accuracy.py` measures on
prompts the fit never saw. The fit minimises the mean absolute percentage error by
iteratively reweighted least squares, with every weight but the constant kept >= 0 (a
weight that goes negative is fixed at 0 and the rest refitted), so that appending text
never lowers the estimate.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import token_corpus_build  # noqa: E402

from engine.tokens import FEATURES, features  # noqa: E402

EMOJI_RANGES = ((0x1F300, 0x1F5FF), (0x1F600, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF))
SYMBOLS = "☀☁☂☃★☆☎☑☕☝☺♀♂♥♦♻⚠⚡⚽⛅⛔✅✈✉✊✋✌✏✔✖✨❄❌❓❗❤➡"


def synthetic_emoji(rng: random.Random, words: list[str], count: int) -> list[str]:
    """Prompts mixing English words with emoji, symbols, ZWJ sequences and flags."""
    out = []
    for _ in range(count):
        parts: list[str] = []
        for _ in range(rng.randint(2, 60)):
            roll = rng.random()
            if roll < 0.45:
                parts.append(rng.choice(words))
            elif roll < 0.8:
                lo, hi = rng.choice(EMOJI_RANGES)
                parts.append(chr(rng.randint(lo, hi)) * rng.choice((1, 1, 1, 2, 3)))
            elif roll < 0.9:
                parts.append(rng.choice(SYMBOLS) + ("\ufe0f" if rng.random() < 0.5 else ""))
            elif roll < 0.95:
                parts.append("\U0001f468\u200d\U0001f469\u200d\U0001f467")
            else:
                parts.append(chr(0x1F1E6 + rng.randrange(26)) + chr(0x1F1E6 + rng.randrange(26)))
        out.append(rng.choice(("", " ")).join(parts))
    return out


def fit(x: np.ndarray, y: np.ndarray, free: set[int], iterations: int = 40) -> np.ndarray:
    active = list(range(x.shape[1]))
    while True:
        weights = np.zeros(x.shape[1])
        xs = x[:, active]
        w = 1 / y
        for _ in range(iterations):
            root = np.sqrt(w)
            coef, *_ = np.linalg.lstsq(xs * root[:, None], y * root, rcond=None)
            residual = np.abs(xs @ coef - y) / y
            w = 1 / (y * y * np.maximum(residual, 0.005))
        negative = [(c, i) for c, i in zip(coef, active, strict=True) if c < 0 and i not in free]
        if not negative:
            weights[active] = coef
            return weights
        active.remove(min(negative)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--per-language", type=int, default=60)
    args = parser.parse_args()

    import litellm

    rows = token_corpus_build.build(args.seed, args.per_language, handwritten_rows=False)
    texts = [row["text"] for row in rows]
    words = [w for row in rows if row["lang"] == "en" for w in row["text"].split()][:5000]
    texts += synthetic_emoji(random.Random(args.seed), words, 120)
    y = np.array([litellm.token_counter(model="gpt-4o", text=t) for t in texts], float)
    x = np.array([features(t) for t in texts], float)
    weights = fit(x, y, free={FEATURES.index("one")})
    pred = np.maximum(np.floor(x @ weights + 0.5), 1)
    print(f"# {len(texts)} training prompts, training MAPE {100 * np.mean(abs(pred - y) / y):.2f}%")
    print("WEIGHTS: Final[tuple[float, ...]] = (")
    for name, value in zip(FEATURES, weights, strict=True):
        print(f"    {value:.4f},  # {name}")
    print(")")


if __name__ == "__main__":
    main()
