"""Prompt features (`request.text.*`) and `request.complexity`: each feature on a body that
has it and one that has not, in every accepted format (the wire bodies as the real SDKs send
them); the score on a hand-labelled set (tests/data/complexity); a policy that reads no
feature derives none; the checker's errors for the weights; the decision log keeps no text."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from _sdk_bodies import anthropic_messages, gemini_generate, openai_chat, openai_responses

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.loader import compile_sources
from engine.language.schema import PROMPT_FEATURES
from engine.routing.evaluator import evaluate
from engine.routing.request import env_of
from engine.tokens import estimate_text_tokens
from engine.wire import features
from engine.wire.features import (
    COMPLEXITY_TERMS,
    DEFAULT_WEIGHTS,
    DERIVE,
    Conversation,
    complexity_parts,
    derivations,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data" / "complexity" / "prompts.jsonl"

SYSTEM_YES = "You are a careful assistant. Think step by step and answer in JSON."
SYSTEM_NO = "You are a friendly assistant."
# the last turn of the positive bodies: a code fence, math, multi-step wording, Chinese
QUESTION_YES = (
    "请证明下面的函数总是返回非负数，并实现一个更快的版本：\n"
    "```python\ndef f(x):\n    return x**2\n```\n"
    "然后求方程 $x^2 + 1 = 0$ 在复数范围内的所有解，写出完整的推导过程。"
)
QUESTION_NO = "What is the capital of France?"
TOOL_OUTPUT = "sunny, 21 degrees"
MODEL = "gpt-4o-mini"


def _chat(yes: bool) -> dict[str, Any]:
    if not yes:
        return openai_chat(
            model=MODEL,
            messages=[
                {"role": "system", "content": SYSTEM_NO},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": QUESTION_NO},
            ],
        )
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}}
    return openai_chat(
        model=MODEL,
        messages=[
            {"role": "system", "content": SYSTEM_YES},
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": TOOL_OUTPUT},
            {"role": "user", "content": [{"type": "text", "text": QUESTION_YES}]},
        ],
    )


def _responses(yes: bool) -> dict[str, Any]:
    if not yes:
        return openai_responses(
            model=MODEL,
            instructions=SYSTEM_NO,
            input=[
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": [{"type": "input_text", "text": QUESTION_NO}]},
            ],
        )
    return openai_responses(
        model=MODEL,
        instructions=SYSTEM_YES,
        input=[
            {"role": "user", "content": "What is the weather?"},
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": TOOL_OUTPUT},
            {"role": "user", "content": [{"type": "input_text", "text": QUESTION_YES}]},
        ],
    )


def _anthropic(yes: bool) -> dict[str, Any]:
    if not yes:
        return anthropic_messages(
            model="claude-3-5-haiku-latest",
            max_tokens=100,
            system=SYSTEM_NO,
            messages=[
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": QUESTION_NO},
            ],
        )
    use = {"type": "tool_use", "id": "t1", "name": "weather", "input": {}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": TOOL_OUTPUT}
    return anthropic_messages(
        model="claude-3-5-haiku-latest",
        max_tokens=100,
        system=[{"type": "text", "text": SYSTEM_YES}],
        messages=[
            {"role": "user", "content": "What is the weather?"},
            {"role": "assistant", "content": [use]},
            {"role": "user", "content": [result]},
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": [{"type": "text", "text": QUESTION_YES}]},
        ],
    )


def _gemini(yes: bool) -> dict[str, Any]:
    from google.genai import types

    def text(role: str, value: str) -> types.Content:
        return types.Content(role=role, parts=[types.Part.from_text(text=value)])

    if not yes:
        contents = [text("user", "Hello"), text("model", "Hi! How can I help?")]
        contents.append(text("user", QUESTION_NO))
        config = types.GenerateContentConfig(system_instruction=SYSTEM_NO)
    else:
        call = types.Part.from_function_call(name="weather", args={})
        answer = types.Part.from_function_response(name="weather", response={"r": TOOL_OUTPUT})
        contents = [
            text("user", "What is the weather?"),
            types.Content(role="model", parts=[call]),
            types.Content(role="user", parts=[answer]),
            text("model", "It is sunny."),
            text("user", QUESTION_YES),
        ]
        config = types.GenerateContentConfig(system_instruction=SYSTEM_YES)
    return gemini_generate("gemini-2.5-flash", contents, config).body


def _native(yes: bool) -> dict[str, Any]:
    if not yes:
        return {
            "id": "n0",
            "messages": [
                {"role": "system", "content": SYSTEM_NO},
                {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi! How can I help?"},
                {"role": "user", "content": QUESTION_NO},
            ],
        }
    return {
        "id": "n1",
        "messages": [
            {"role": "system", "content": SYSTEM_YES},
            {"role": "user", "content": "What is the weather?"},
            {"role": "tool", "content": TOOL_OUTPUT},
            {"role": "user", "content": [{"type": "text", "text": QUESTION_YES}]},
        ],
    }


BUILDERS = {
    "native": _native,
    "openai-chat": _chat,
    "openai-responses": _responses,
    "anthropic": _anthropic,
    "gemini": _gemini,
}
# turns other than system prompts in the positive / negative body of each format
TURNS = {
    "native": (3, 3),
    "openai-chat": (4, 3),
    "openai-responses": (4, 3),
    "anthropic": (5, 3),
    "gemini": (5, 3),
}


@cache
def _body(fmt: str, yes: bool) -> str:
    return json.dumps(BUILDERS[fmt](yes))


def _conversation(fmt: str, yes: bool) -> Conversation:
    env = env_of(json.loads(_body(fmt, yes)))
    assert env["format"] == fmt
    return env["conversation"]


def test_the_registry_and_the_checker_know_the_same_features() -> None:
    assert set(DERIVE) == set(PROMPT_FEATURES)
    assert {t.reads for t in COMPLEXITY_TERMS.values()} <= set(PROMPT_FEATURES)
    assert [t for t, _ in DEFAULT_WEIGHTS] == list(COMPLEXITY_TERMS)


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_every_feature_on_a_body_that_has_it(fmt: str) -> None:
    conv = _conversation(fmt, True)
    assert conv.feature("code") is True
    assert conv.feature("math") is True
    assert conv.feature("multi_step") is True
    assert conv.feature("tool_results") is True
    assert conv.feature("script") == "cjk"
    assert conv.feature("system_reasoning") is True
    assert conv.feature("system_json") is True
    assert conv.feature("turns") == TURNS[fmt][0]
    assert conv.feature("last_tokens") == estimate_text_tokens(QUESTION_YES)
    assert conv.feature("tokens") > conv.feature("last_tokens") + estimate_text_tokens(SYSTEM_YES)
    assert conv.complexity(DEFAULT_WEIGHTS) == 1.0


@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_every_feature_on_a_body_that_has_it_not(fmt: str) -> None:
    conv = _conversation(fmt, False)
    assert conv.feature("code") is False
    assert conv.feature("math") is False
    assert conv.feature("multi_step") is False
    assert conv.feature("tool_results") is False
    assert conv.feature("script") == "latin"
    assert conv.feature("system_reasoning") is False
    assert conv.feature("system_json") is False
    assert conv.feature("turns") == TURNS[fmt][1]
    assert conv.feature("last_tokens") == estimate_text_tokens(QUESTION_NO)
    expected = sum(
        estimate_text_tokens(t) for t in (SYSTEM_NO, "Hello", "Hi! How can I help?", QUESTION_NO)
    )
    assert conv.feature("tokens") == expected
    assert conv.complexity(DEFAULT_WEIGHTS) < 0.1


@pytest.mark.parametrize(
    ("text", "feature", "expected"),
    [
        ("def area(r):\n    return 3.14 * r * r", "code", True),
        ("int main() {\n  return 0;\n}", "code", True),
        ("SELECT name FROM users WHERE id = 3", "code", True),
        ("I defined my goals; then I went home.", "code", False),
        ("Use {curly braces} in prose", "code", False),
        ("What is \\frac{1}{2} of 10?", "math", True),
        ("Is 7 × 8 = 56?", "math", True),
        ("I paid $5 and then $10 more", "math", False),
        ("Explain the Pythagorean theorem", "math", True),
        ("Write a haiku about spring", "multi_step", False),
        ("Write a function that reverses a list", "multi_step", True),
        ("Здравствуйте, как дела?", "script", "cyrillic"),
        ("مرحبا كيف حالك", "script", "arabic"),
        ("안녕하세요 반갑습니다", "script", "hangul"),
        ("สวัสดีครับ", "script", "thai"),
        ("नमस्ते आप कैसे हैं", "script", "indic"),
        ("Καλημέρα σας", "script", "greek"),
        ("שלום עולם", "script", "hebrew"),
        ("こんにちは、元気ですか", "script", "cjk"),
        ("Café au lait, s'il vous plaît", "script", "latin"),
        ("1234 + 5678", "script", "none"),
    ],
)
def test_a_feature_on_one_prompt(text: str, feature: str, expected: object) -> None:
    assert Conversation("native", {"prompt": text}).feature(feature) == expected


def test_the_content_checks_read_the_ends_of_a_long_last_turn() -> None:
    middle = "word " * 10_000
    assert (
        Conversation("native", {"prompt": middle + "\\frac{1}{2}" + middle}).feature("math")
        is False
    )  # beyond the first and last SCAN characters: not read
    assert Conversation("native", {"prompt": middle + "\\frac{1}{2}"}).feature("math") is True


def test_the_fence_check_reads_the_last_turns() -> None:
    fenced = {"role": "user", "content": "```\nx = 1\n```"}
    plain = [{"role": r, "content": "ok"} for r in ("assistant", "user") * 2]
    assert Conversation("native", {"messages": [fenced, *plain[1:]]}).feature("code") is True
    assert Conversation("native", {"messages": [fenced, *plain]}).feature("code") is False


def test_the_native_fast_path_and_pydantic_read_the_same_conversation() -> None:
    from engine.routing.request import fast_env, to_env, validate

    body = _native(True)
    body["messages"][-1]["content"] = QUESTION_YES  # a string: the fast path takes it
    fast = fast_env(body)
    assert fast is not None
    assert fast["conversation"] == to_env(validate(body))["conversation"]
    assert fast["conversation"].feature("code") is True


@pytest.mark.parametrize("yes", [True, False])
def test_an_openai_chat_body_has_the_shape_its_turns_have(yes: bool) -> None:
    body = json.loads(_body("openai-chat", yes))
    walked = features._shape_of(Conversation("openai-chat", body).turns())
    assert features._chat_shape(body) == walked
    assert walked.turns == TURNS["openai-chat"][0 if yes else 1]
    body["messages"].append({"role": "system", "content": "Answer in JSON."})  # a system last
    assert features._chat_shape(body) == features._shape_of(
        Conversation("openai-chat", body).turns()
    )


def test_the_score_derives_its_features_in_one_pass_without_walking_turns() -> None:
    conv = _conversation("openai-chat", True)
    before = derivations()
    assert conv.complexity(DEFAULT_WEIGHTS) == 1.0
    assert conv.feature("code") is True  # derived with the score: not again
    assert derivations() - before == len(features.reads_of(DEFAULT_WEIGHTS)) + 1  # + the score
    assert conv._turns is None  # the shape came from the messages' roles: no turn was made


# ------------------------------------------------------------------ the hand-labelled set


def _labelled() -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line]
    return [(row["prompt"], row["label"]) for row in rows]


def test_the_score_separates_the_hand_labelled_prompts() -> None:
    """Accuracy and Cohen's kappa of `complexity >= 0.5` against the labels (README.md
    beside the data: how they were made). Floors set below what was measured (42/42, the
    weights were set with this set in view): a broken scorer falls through them."""
    rows = _labelled()
    assert 30 <= len(rows) <= 60
    hard = [
        Conversation("native", {"prompt": p}).complexity(DEFAULT_WEIGHTS) >= 0.5 for p, _ in rows
    ]
    truth = [label == "hard" for _, label in rows]
    n = len(rows)
    agree = sum(h == t for h, t in zip(hard, truth, strict=True)) / n
    p_hard = (sum(hard) / n) * (sum(truth) / n) + (1 - sum(hard) / n) * (1 - sum(truth) / n)
    kappa = (agree - p_hard) / (1 - p_hard)
    print(f"complexity on {n} labelled prompts: accuracy {agree:.2f}, Cohen's kappa {kappa:.2f}")
    assert agree >= 0.9
    assert kappa >= 0.8


# ------------------------------------------------------------------ policies


POLICY = """
defaults {
    strategy cost
    complexity(code: 0.6, turns: 0)
}
route big when request.complexity >= 0.5 {
    prefer openai/gpt-4o
}
route cjk when request.text.script == "cjk" {
    prefer openai/gpt-4o
}
route small {
    prefer openai/gpt-4o-mini
}
"""
TURNS_POLICY = """
route long when request.text.turns >= 2 {
    prefer openai/gpt-4o
}
route small {
    prefer openai/gpt-4o-mini
}
"""
CODE_POLICY = """
route big when request.complexity >= 0.5 or request.text.code {
    prefer openai/gpt-4o
}
route small {
    prefer openai/gpt-4o-mini
}
"""
PLAIN = """
route eu when request.region == "eu" {
    prefer openai/gpt-4o
}
route small {
    prefer openai/gpt-4o-mini
}
"""


def test_a_policy_that_reads_no_feature_derives_none() -> None:
    program = compile_sources([("plain.policy", PLAIN)]).program
    assert program.prompt_features == frozenset()
    before = derivations()
    for fmt in BUILDERS:
        for yes in (True, False):
            evaluate(program, env_of(json.loads(_body(fmt, yes))), explain=True)
    assert derivations() == before


def test_a_policy_derives_only_what_it_reads_once_per_request() -> None:
    program = compile_sources([("p.policy", POLICY)]).program
    assert program.reads_complexity
    assert "turns" not in program.prompt_features  # weight 0: not read
    assert {"code", "math", "script"} <= program.prompt_features
    env = env_of(json.loads(_body("openai-chat", False)))
    before = features.derivations_of("code")
    decision = evaluate(program, env)
    evaluate(program, env)
    assert decision.route == "small"
    assert features.derivations_of("code") == before + 1  # memoised in the request's env
    assert "turns" not in env["conversation"].values  # its weight is 0
    hard = evaluate(program, env_of(json.loads(_body("anthropic", True))))
    assert hard.route == "big"


def test_a_policy_reading_only_the_turns_reads_no_text() -> None:
    """One pass, over the messages' roles: no text is read (no token estimate, no content
    check, no script), no turn is made, and the second decision derives nothing."""
    program = compile_sources([("t.policy", TURNS_POLICY)]).program
    assert program.prompt_features == {"turns"}
    env = env_of(json.loads(_body("openai-chat", True)))
    before = ({n: features.derivations_of(n) for n in DERIVE}, features.passes())
    assert evaluate(program, env).route == "long"
    evaluate(program, env)
    after = ({n: features.derivations_of(n) for n in DERIVE}, features.passes())
    assert {n: after[0][n] - before[0][n] for n in DERIVE} == {n: int(n == "turns") for n in DERIVE}
    assert after[1] == before[1] + 1
    conv = env["conversation"]
    assert conv.values == {"turns": TURNS["openai-chat"][0]}
    assert conv._last is None and conv._system is None and conv._turns is None


def test_the_score_and_code_are_one_pass() -> None:
    """A typical policy (the score and `request.text.code`): one pass derives the score's
    seven features, `code` among them; a second decision on the request makes none."""
    program = compile_sources([("c.policy", CODE_POLICY)]).program
    env = env_of(json.loads(_body("openai-chat", False)))
    before = (features.passes(), derivations())
    assert evaluate(program, env).route == "small"
    evaluate(program, env)
    assert features.passes() == before[0] + 1
    assert derivations() == before[1] + len(features.reads_of(DEFAULT_WEIGHTS)) + 1
    assert "script" not in env["conversation"].values and "tokens" not in env["conversation"].values


def test_explain_shows_how_the_score_was_made() -> None:
    program = compile_sources([("p.policy", POLICY)]).program
    decision = evaluate(program, env_of(json.loads(_body("native", False))), explain=True)
    assert decision.trace is not None
    step = next(s for s in decision.trace if s["step"] == "features")
    assert step["values"]["script"] == "latin"
    made = step["complexity"]
    assert [p["term"] for p in made["parts"]] == [t for t, w in program.complexity_weights if w]
    assert made["score"] == pytest.approx(
        min(1.0, sum(p["value"] * p["weight"] for p in made["parts"])), abs=1e-4
    )
    weights = dict(program.complexity_weights)
    assert weights["code"] == 0.6 and weights["turns"] == 0.0 and weights["math"] == 0.5


def test_complexity_parts_are_value_times_weight() -> None:
    conv = Conversation("native", {"prompt": "Prove that 2 + 2 = 4 step by step"})
    parts = {p.term: p for p in complexity_parts(conv, DEFAULT_WEIGHTS)}
    assert parts["math"].value == 1.0 and parts["multi_step"].value == 1.0
    assert parts["code"].value == 0.0
    assert conv.complexity(DEFAULT_WEIGHTS) == 1.0


def test_eval_explain_prints_the_features_and_the_score(tmp_path: Path) -> None:
    (tmp_path / "p.policy").write_text(POLICY, encoding="utf-8")
    (tmp_path / "r.json").write_text(_body("openai-chat", True), encoding="utf-8")
    out = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--policy", str(tmp_path / "p.policy"),
         str(tmp_path / "r.json"), "--explain", "--format", "table"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    assert "request.text.code = yes" in out
    assert "complexity      1.00 = code 1 × 0.6 + math 1 × 0.5" in out


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("complexity(cod: 0.5)", "E0291"),
        ("complexity(code: 0.5, code: 0.2)", "E0291"),
        ("complexity(code: 50%)", "E0292"),
        ("complexity(code: 2)", "E0292"),
    ],
)
def test_the_checker_refuses_bad_weights(line: str, code: str) -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p.policy", f"defaults {{\n    {line}\n}}\n")])
    assert [d.code for d in err.value.diagnostics] == [code]


def test_weights_belong_in_defaults() -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p.policy", "route r {\n    complexity(code: 0.5)\n}\n")])
    assert [d.code for d in err.value.diagnostics] == ["E0290"]


def test_a_typo_in_a_feature_gets_a_did_you_mean() -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p.policy", 'route r when request.text.scirpt == "cjk" {\n}\n')])
    assert "did you mean `request.text.script`?" in str(err.value)


def test_the_decision_log_keeps_no_prompt_text(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text(POLICY, encoding="utf-8")
    state = tmp_path / "state.duckdb"
    engine = PolicyEngine(policy, state=str(state), log_requests="features")
    try:
        for fmt in BUILDERS:
            engine.evaluate(json.loads(_body(fmt, True)))
    finally:
        engine.close()
    import duckdb

    with duckdb.connect(str(state), read_only=True) as db:
        logged = [row[0] for row in db.execute("select request from decisions").fetchall()]
    assert len(logged) == len(BUILDERS)
    for text in logged:
        assert "证明" not in text and "python" not in text and TOOL_OUTPUT not in text
        assert "step by step" not in text


# ------------------------------------------------------------------ the fast paths agree


def _reference_score(values: dict[str, Any], weights: Any) -> float:
    """The score as docs/features.md states it: Σ weight × term, rounded to 6 places, ≤ 1."""
    total = 0.0
    for term, weight in weights:
        if weight:
            total += weight * COMPLEXITY_TERMS[term].of(values[COMPLEXITY_TERMS[term].reads])
    return min(1.0, round(total, 6))


def test_round6_is_round_to_six_places() -> None:
    rng = random.Random(21)
    cases = [0.0, 1.0, 0.0245, 0.1 + 0.2, 7.0, 0.0000005, 0.0000015, 0.0000025, 2.5e-7, 1e6, -0.1]
    cases += [rng.random() * rng.choice((1.0, 3.0, 1e-3)) for _ in range(20_000)]
    # at (and one ulp either side of) ties: the fast path must step aside for `round`
    for _ in range(2_000):
        tie = (rng.randrange(0, 3_000_000) + 0.5) / 1e6
        cases += [tie, math.nextafter(tie, 0.0), math.nextafter(tie, 9.0)]
    slow = 0
    for total in cases:
        assert features._round6(total) == round(total, 6), total
        scaled = total * 1e6
        slow += not (-0.4999 < scaled - int(scaled + 0.5) < 0.4999 and 0.0 <= total < 1e6)
    assert 0 < slow < len(cases) // 2  # both paths were taken


def test_the_made_scorer_is_the_documented_sum() -> None:
    rng = random.Random(7)
    flags = ("code", "math", "multi_step", "system_reasoning", "tool_results")
    for _ in range(3_000):
        weights = features.weights_with(
            {t: rng.choice((0.0, 0.05, 0.1, 0.3, 1 / 3, 0.5, 1.0)) for t in COMPLEXITY_TERMS}
        )
        values: dict[str, Any] = {f: rng.random() < 0.3 for f in flags}
        values["last_tokens"] = rng.choice((0, 1, 7, 999, 1000, 5000, rng.randrange(2000)))
        values["turns"] = rng.choice((0, 1, 2, 11, 40, rng.randrange(20)))
        score = features._scorer(weights)(values)
        assert score == _reference_score(values, weights), (weights, values)


@pytest.mark.parametrize(
    "text",
    ["plain prose.", "x = 1", "f(x)", "$a^2$", "a\\b", "{", "<b>", "# hi", "é = ∑", "", "^"],
)
def test_the_hint_kinds_are_the_hint_characters(text: str) -> None:
    raw = text.lower().encode()
    kinds = raw.translate(features._HINT_KINDS)
    code_hints = {c for c in raw if c in b"{}();#<="}
    math_hints = {c for c in raw if c in b"$\\^="}
    assert (features._H_CODE in kinds or features._H_BOTH in kinds) == bool(code_hints)
    assert (features._H_MATH in kinds or features._H_BOTH in kinds) == bool(math_hints)


def test_the_reasoning_check_alone_agrees_with_the_full_read() -> None:
    """`system_reasoning` read alone skips the word split when no needle is there: on
    prompts with and without each phrase and word, in any case, it says what the read says
    (the read made with `system_json`, which always splits)."""
    rng = random.Random(5)
    asks = [*features._REASONING_PHRASES, "reason", "reasoning", "Reasoning:", "REASON"]
    near = ["treason", "stepping", "thinking", "chains", "showcase", "let", "a", "json", ""]
    said = {True: 0, False: 0}
    for _ in range(2_000):
        words = [rng.choice(near) for _ in range(rng.randrange(0, 6))]
        if rng.random() < 0.5:
            words.insert(rng.randrange(len(words) + 1), rng.choice(asks))
        text = rng.choice((" ", ", ", "\n")).join(words)
        text = "".join(c.upper() if rng.random() < 0.2 else c for c in text)
        body = {
            "messages": [{"role": "system", "content": text}, {"role": "user", "content": "hi"}]
        }
        alone, both = Conversation("openai-chat", body), Conversation("openai-chat", body)
        features._derive(both, frozenset({"system_reasoning", "system_json"}))
        expected = both.values["system_reasoning"]
        features._SYSTEM_REASONING.clear()  # (else `alone` takes the answer `both` kept)
        assert alone.feature("system_reasoning") is expected, text
        said[expected] += 1
    assert said[True] > 100 and said[False] > 100


@pytest.mark.parametrize("fmt", list(BUILDERS))
@pytest.mark.parametrize("yes", [True, False])
def test_the_first_read_pass_scores_as_the_feature_by_feature_path(fmt: str, yes: bool) -> None:
    """The score's first read (one pass that derives and scores) and a score made after each
    feature was read alone (the scorer over stored values) agree, value for value, on every
    format, on the hand-labelled prompts and under other weights."""
    weights = features.weights_with({"length": 1.0, "turns": 0.05, "math": 0.0})
    bodies = [json.loads(_body(fmt, yes))] + [{"prompt": p} for p, _ in _labelled()]
    for body in bodies:
        kind = fmt if body is bodies[0] else "native"
        for w in (DEFAULT_WEIGHTS, weights):
            first, alone = Conversation(kind, body), Conversation(kind, body)
            for name in sorted(features.reads_of(w)):
                alone.feature(name)
            assert first.complexity(w) == alone.complexity(w)
            assert first.values == alone.values


def _with_roles(value: Any, role: Any) -> Any:
    """`value` with every `role` it holds, at any depth, replaced by `role`."""
    if isinstance(value, dict):
        return {k: role if k == "role" else _with_roles(v, role) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_roles(v, role) for v in value]
    return value


@pytest.mark.parametrize("role", [["user"], {"name": "user"}, 7, True])
@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_a_role_that_is_not_a_string_is_a_field_error_or_a_user_turn(fmt: str, role: Any) -> None:
    """A hostile `role` is never an exception while deriving features: the readers that
    check it say which field; the others read the turn as a user's."""
    from engine.errors import PolicyctlError

    body = _with_roles(json.loads(_body(fmt, True)), role)
    try:
        env = env_of(body)
    except PolicyctlError as err:
        assert "role" in str(err), err
        if fmt == "openai-chat":
            assert "field `messages[0].role`: expected a string" in str(err)
        return
    assert fmt != "openai-chat"  # its reader checks every message's role
    conversation = env["conversation"]
    for name in sorted(DERIVE):
        conversation.feature(name)
    assert 0.0 <= conversation.complexity(DEFAULT_WEIGHTS) <= 1.0


def _system_body(system: str, question: str = "hi") -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]
    }


def test_a_kept_system_prompt_answer_is_a_fresh_derivation() -> None:
    """The system-prompt checks' answers kept across requests (by the prompt's text) are the
    answers a derivation from nothing makes: on prompts with and without each phrase, seen
    again in new bodies (new strings, as a service parses them), every feature and the score
    are those derived with the tables emptied; and a request whose system prompt was seen
    reads no system prompt text."""
    rng = random.Random(11)
    asks = [*features._REASONING_PHRASES, "reason", "JSON", "json", "Reasoning:"]
    near = ["treason", "jsonl", "thinking", "a", "answer", "step", "by", ""]
    prompts = []
    for _ in range(300):
        words = [rng.choice(near) for _ in range(rng.randrange(0, 6))]
        for _ in range(rng.randrange(0, 3)):
            words.insert(rng.randrange(len(words) + 1), rng.choice(asks))
        prompts.append(rng.choice((" ", ", ", "\n")).join(words))
    names = frozenset({"system_reasoning", "system_json"})
    kept = {True: 0, False: 0}
    for weights in (DEFAULT_WEIGHTS, features.weights_with({"reasoning": 1.0})):
        for system in prompts * 2:
            body = json.dumps(_system_body(system))
            features._SYSTEM_REASONING.clear()
            features._SYSTEM_JSON.clear()
            fresh = [Conversation("openai-chat", json.loads(body)) for _ in range(3)]
            fresh[0].complexity(weights)
            features._derive(fresh[1], names)
            fresh[2].feature("system_json")
            seen = [Conversation("openai-chat", json.loads(body)) for _ in range(3)]
            seen[0].complexity(weights)
            features._derive(seen[1], names)
            seen[2].feature("system_json")
            for new, old in zip(seen, fresh, strict=True):
                assert new.values == old.values, system
                assert new._system is None or not system  # (kept answers: no text read)
            kept[fresh[1].values["system_reasoning"] or fresh[1].values["system_json"]] += 1
    assert kept[True] > 100 and kept[False] > 100


def test_the_kept_answers_are_bounded() -> None:
    """At most `_KEPT` system prompts are kept, and none longer than `_KEPT_CHARS`
    characters (nor a conversation with two system prompts): those are read every time."""
    features._SYSTEM_REASONING.clear()
    for i in range(features._KEPT * 2 + 5):
        Conversation("openai-chat", _system_body(f"prompt {i}")).feature("system_reasoning")
        assert len(features._SYSTEM_REASONING) <= features._KEPT
    features._SYSTEM_REASONING.clear()
    long = "Reason it out. " + "x" * features._KEPT_CHARS
    two = {"messages": [{"role": "system", "content": "a"}, *_system_body("b")["messages"]]}
    for body in (_system_body(long), two, _system_body(long), two):
        conv = Conversation("openai-chat", body)
        assert conv.feature("system_reasoning") is (body is not two)
        assert conv._system is not None or body is two  # (read again: not kept)
    assert not features._SYSTEM_REASONING


def test_the_chat_shape_is_the_walked_shape_on_any_roles_and_contents() -> None:
    """The chat shape (one loop over the messages' roles) is the shape of the walked turns:
    random conversations of every role (system prompts anywhere, tools, unknown and missing
    roles) and content (strings, empty, parts, refusals, none), up to twice RECENT long."""
    rng = random.Random(21)
    roles = ["system", "developer", "user", "assistant", "tool", "function", "model", "x", None]
    contents: list[Any] = [
        "hi",
        "",
        None,
        "```\nx = 1\n```",
        [{"type": "text", "text": "part"}, {"type": "image_url", "image_url": {"url": "u"}}],
        [{"type": "refusal", "refusal": "no"}],
        [],
    ]
    for _ in range(3_000):
        messages = []
        for _ in range(rng.randrange(0, 2 * features.RECENT + 2)):
            message: dict[str, Any] = {"content": rng.choice(contents)}
            role = rng.choice(roles)
            if role is not None:
                message["role"] = role
            messages.append(message)
        body = {"messages": messages}
        shape = features._chat_shape(body)
        assert shape == features._shape_of(Conversation("openai-chat", body).turns()), messages
