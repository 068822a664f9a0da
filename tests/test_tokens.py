"""engine.tokens: the text token estimate's properties, and its accuracy against litellm's
own counts (tiktoken with the encoding files litellm ships) over bench/token_corpus.jsonl."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine import tokens
from engine.tokens import (
    ASCII_FEATURES,
    FEATURES,
    WEIGHTS,
    estimate_message_overhead,
    estimate_text_tokens,
    features,
)

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "bench" / "token_corpus.jsonl"
ROWS: list[dict[str, str]] = [
    json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line
]

# what bench/token_accuracy.py measured on the corpus (gpt-4o): overall 8.4%, the worst
# language emoji at 18.8%, then shell 13.9%, javascript 13.6%, sql 12.8%, Polish 12.7%
OVERALL_MAPE = 0.10
LANGUAGE_MAPE = 0.20


def test_empty_is_zero_and_any_text_at_least_one() -> None:
    assert estimate_text_tokens("") == 0
    for text in (" ", "a", "\n", "🎉", "你", "\x00"):
        assert estimate_text_tokens(text) >= 1


def test_the_weights_are_one_per_feature_and_none_is_negative_but_the_constant() -> None:
    assert len(WEIGHTS) == len(FEATURES) == len(set(FEATURES))
    assert FEATURES[: len(ASCII_FEATURES)] == ASCII_FEATURES
    assert [name for name, w in zip(FEATURES, WEIGHTS, strict=True) if w < 0] in ([], ["one"])


def test_the_ascii_path_reads_ascii_as_the_general_path_does() -> None:
    """ASCII text takes a shortcut table straight from its bytes; the general path maps a
    class string. Both must give every ASCII byte the same bits."""
    for byte in range(128):
        assert tokens._ASCII_BITS[byte] == tokens._CLASS_BITS[tokens._CLASSES[byte]], byte


@pytest.mark.parametrize("row", ROWS[::7], ids=lambda row: row["lang"])
def test_the_estimate_is_the_weighted_features(row: dict[str, str]) -> None:
    text = row["text"]
    total = sum(w * f for w, f in zip(WEIGHTS, features(text), strict=True))
    assert estimate_text_tokens(text) == max(1, int(total + 0.5))


def test_the_inline_ascii_estimate_may_leave_out_punct_tail() -> None:
    """The inline estimate leaves out `punct_tail`'s term (it adds 0.0): a fit that weighs
    it must put the term back (`estimate_text_tokens`)."""
    assert WEIGHTS[FEATURES.index("punct_tail")] == 0.0


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=127), max_size=400))
@example("---------- ###### x!!!!!!!y ...... end")  # (deep punctuation: `punct_tail`)
@example("a  b   c\n\n\n\td \t \n e")  # (space runs of every length)
def test_the_inline_ascii_estimate_is_the_weighted_features(text: str) -> None:
    """ASCII text up to a chunk is estimated inline (no features' tuple): the same sum,
    `punct_tail`'s term left out while its weight is 0.0."""
    total = sum(w * f for w, f in zip(WEIGHTS, features(text), strict=True))
    assert estimate_text_tokens(text) == (max(1, int(total + 0.5)) if text else 0)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300), st.text(min_size=1, max_size=60))
def test_appending_text_never_lowers_the_estimate(text: str, more: str) -> None:
    assert estimate_text_tokens(text + more) >= estimate_text_tokens(text)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(ROWS),
    st.integers(min_value=0, max_value=10_000),
    st.text(alphabet=" \n\t#=-_.,;:(){}[]aZ09éЖ你🎉", min_size=1, max_size=40),
)
def test_appending_to_real_prompts_never_lowers_the_estimate(
    row: dict[str, str], cut: int, more: str
) -> None:
    text = row["text"][: cut % (len(row["text"]) + 1)]
    assert estimate_text_tokens(text + more) >= estimate_text_tokens(text)
    assert estimate_text_tokens(text + row["text"]) >= estimate_text_tokens(row["text"])


@pytest.mark.parametrize("row", [r for r in ROWS if len(r["text"]) >= 300][::9])
def test_repeating_a_text_scales_the_estimate(row: dict[str, str]) -> None:
    one = estimate_text_tokens(row["text"])
    ten = estimate_text_tokens(row["text"] * 10)
    assert 9 * one <= ten <= 11 * one


def test_texts_longer_than_a_chunk_are_counted_whole() -> None:
    """Bit strings past 64 KiB are read in chunks: 192,000 characters count as 1,000 times
    192 characters do (whole lines, so the pieces join as they start), give or take the runs
    cut at the three chunk edges."""
    piece = "The cache is warm; the queue holds 42 jobs.\n    retry(job_id=7)\n" * 3

    def total(text: str) -> float:
        return sum(w * f for w, f in zip(WEIGHTS, features(text), strict=True)) - WEIGHTS[0]

    assert len(piece * 1000) > 2 * tokens._CHUNK
    assert abs(total(piece * 1000) - 1000 * total(piece)) <= 10


@pytest.mark.parametrize(
    "text",
    [" " * 1_000_000, "#" * 1_000_000, "a" * 1_000_000, "9" * 1_000_000, "你" * 1_000_000],
    ids=["spaces", "hashes", "letters", "digits", "han"],
)
def test_a_megabyte_of_one_character_gives_a_bounded_estimate(text: str) -> None:
    assert 1 <= estimate_text_tokens(text) <= 2 * len(text)


SAMPLES = {
    # 100 characters each, no spaces: the four-characters rule says 25 for every one
    "han": ("数据库连接失败请检查网络设置后重试" * 6)[:100],
    "kana": ("これはテストですのでご安心ください" * 6)[:100],
    "hangul": ("데이터베이스연결에실패했습니다다시시도하세요" * 6)[:100],
    "devanagari": ("नमस्तेदुनियायहएकपरीक्षणहै" * 6)[:100],
    "thai": ("สวัสดีชาวโลกนี่คือการทดสอบ" * 6)[:100],
}


@pytest.mark.parametrize("script", sorted(SAMPLES))
def test_each_script_is_counted_denser_than_four_characters_a_token(script: str) -> None:
    text = SAMPLES[script]
    assert len(text) == 100
    assert estimate_text_tokens(text) >= 40


def test_emoji_count_at_least_one_token_each() -> None:
    assert estimate_text_tokens("🎉" * 10) >= 10
    assert estimate_text_tokens("🔥🚀🙌👏😂❤🐶🍕🌅🏖") >= 10


def test_english_words_count_about_one_token_each() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 20  # 180 words, 880 chars
    assert 150 <= estimate_text_tokens(text) <= 220


def test_message_overhead() -> None:
    assert estimate_message_overhead(0) == 0
    assert estimate_message_overhead(1) == 7
    assert estimate_message_overhead(3, names=1) == 16


# ------------------------------------------------------------------ against litellm


@pytest.fixture(scope="module")
def litellm():  # type: ignore[no-untyped-def]
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    return pytest.importorskip("litellm")


def test_corpus_has_500_prompts_of_12_languages_and_code() -> None:
    assert len(ROWS) >= 500
    kinds = {row["kind"] for row in ROWS}
    assert kinds == {"prose", "code", "chat", "mixed"}
    prose_languages = {row["lang"] for row in ROWS if row["kind"] == "prose"}
    code_languages = {row["lang"] for row in ROWS if row["kind"] == "code"}
    assert len(prose_languages) >= 12 and len(code_languages) >= 5
    lengths = [len(row["text"]) for row in ROWS]
    assert min(lengths) <= 20 and max(lengths) >= 3500


def test_accuracy_against_litellm_gpt_4o(litellm) -> None:  # type: ignore[no-untyped-def]
    by_language: dict[str, list[float]] = defaultdict(list)
    rule: list[float] = []
    for row in ROWS:
        exact = litellm.token_counter(model="gpt-4o", text=row["text"])
        assert exact >= 1
        estimate = estimate_text_tokens(row["text"])
        by_language[row["lang"]].append(abs(estimate - exact) / exact)
        rule.append(abs(max(1, round(len(row["text"]) / 4)) - exact) / exact)
    overall = statistics.fmean(e for errors in by_language.values() for e in errors)
    worst = {lang: statistics.fmean(e) for lang, e in by_language.items()}
    assert overall <= OVERALL_MAPE, overall
    assert {lang: m for lang, m in worst.items() if m > LANGUAGE_MAPE} == {}
    assert overall <= statistics.fmean(rule) / 2  # the 4-characters rule is 27.6% off


def test_message_overhead_is_litellms(litellm) -> None:  # type: ignore[no-untyped-def]
    chats = [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
        ],
        [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "hello there", "name": "bob"},
        ],
    ]
    for chat in chats:
        texts = sum(
            litellm.token_counter(model="gpt-4o", text=part)
            for message in chat
            for key, part in message.items()
            if key in ("content", "name")
        )
        names = sum("name" in message for message in chat)
        expected = litellm.token_counter(model="gpt-4o", messages=chat)
        assert texts + estimate_message_overhead(len(chat), names) == expected, chat


@pytest.mark.slow
def test_bench_token_accuracy_quick_runs(litellm) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "token_accuracy.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "counts with o200k_base" in lines[0]
    overall = next(line for line in lines if line.startswith("overall"))
    assert int(overall.split("|")[1]) == len(ROWS[::5])
    assert "estimate_text_tokens" in done.stdout and "tiktoken encode" in done.stdout
