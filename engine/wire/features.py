"""Prompt features: what a request asks, derived from its text when a policy reads them.

A request's evaluation environment carries its conversation (`Conversation`: the format and
a reference to the body as received, never a copy of its text). A policy reads a feature as
`request.text.NAME` (the names and types: `engine.language.schema.PROMPT_FEATURES`); the
compiled condition asks the conversation, which derives that one feature on first use and
keeps it for the rest of the decision. A policy that reads no feature derives none:
`derivations()` counts every feature derived, for the test that holds that to 0.

`request.complexity` (0-1) is a weighted sum over terms made from the features, clamped to
1 (`COMPLEXITY_TERMS`, `DEFAULT_WEIGHTS`; a policy's `defaults { complexity(…) }` overrides
weights), and `complexity_parts` says how a score was made (`--explain`).

How the text is read: the conversation is walked as turns (system, user, assistant, tool)
whose texts are references into the body; every check is a C-level pass (`in`, `re.search`,
`bytes.translate`, set intersections), never a join of the conversation. The content checks
read one turn (the last; the system prompts), at most the first and last `SCAN` characters
of each of its texts, lower-cased and split into words once (`_View`); the fence check reads
the last `RECENT` turns. Heuristics only, no model: docs/requests.md says, feature by
feature, what is looked for.

Standard library only (and `engine.tokens`): the router calls this per request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from engine.tokens import estimate_text_tokens
from engine.wire.record import ANTHROPIC, GEMINI, NATIVE, OPENAI_CHAT, OPENAI_RESPONSES

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"
SCAN = 8192  # characters read at each end of a last-turn text by the content checks

FeatureValue = int | bool | str


# One message of a conversation: who speaks (SYSTEM, USER, ASSISTANT or TOOL), its texts
# (references into the body), and whether it carries a tool's result. A plain tuple: a
# request makes one per message, and a tuple is the cheapest record Python builds.
Turn = tuple[str, tuple[str, ...], bool]


# ------------------------------------------------------------------ derivation counter

_derived: dict[str, int] = {}
_MISSING = object()


def derivations() -> int:
    """How many feature values were derived in this process (every request, every feature)."""
    return sum(_derived.values())


def derivations_of(name: str) -> int:
    return _derived.get(name, 0)


# ------------------------------------------------------------------ the conversation


class Conversation:
    """A request's conversation as received, read on demand. Two conversations are equal
    when their turns are (a native request read by the fast path or by pydantic)."""

    __slots__ = ("_turns", "body", "format", "values")

    def __init__(self, fmt: str, body: Any) -> None:
        self.format = fmt
        self.body = body  # a body dict, or a validated native `Request`
        self._turns: tuple[Turn, ...] | None = None
        self.values: dict[Any, Any] = {}  # feature name (or complexity key) -> value

    def turns(self) -> tuple[Turn, ...]:
        if self._turns is None:
            self._turns = tuple(_WALKERS.get(self.format, _native)(self.body))
        return self._turns

    def feature(self, name: str) -> FeatureValue:
        """The feature `name` (one of DERIVE), derived once."""
        value = self.values.get(name, _MISSING)
        if value is _MISSING:
            value = self.values[name] = DERIVE[name](self)
            _derived[name] = _derived.get(name, 0) + 1
        return value  # type: ignore[return-value]

    def complexity(self, weights: Weights) -> float:
        """`request.complexity` under `weights` (derived once per weights object: a
        program's)."""
        found = self.values.get(id(weights))
        if found is not None and found[0] is weights:
            return found[1]
        total = 0.0
        terms = COMPLEXITY_TERMS
        for term, weight in weights:
            if weight:
                total += weight * terms[term].value(self)
        score = min(1.0, round(total, 6))
        self.values[id(weights)] = (weights, score)
        _derived["complexity"] = _derived.get("complexity", 0) + 1
        return score

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Conversation) and self.turns() == other.turns()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # never the text: a log line or a test failure may show it
        return f"Conversation({self.format}, {len(self.turns())} turn(s))"


EMPTY = Conversation(NATIVE, {})


def conversation_of(env: Mapping[str, Any]) -> Conversation:
    """The conversation an evaluation environment carries (an empty one when it has none:
    an environment made for a witness or a test)."""
    found = env.get("conversation")
    return found if found is not None else EMPTY


# ------------------------------------------------------------------ walking each format


_ROLES = {
    "system": SYSTEM,
    "developer": SYSTEM,
    "assistant": ASSISTANT,
    "model": ASSISTANT,
    "tool": TOOL,
    "function": TOOL,
}


def _role(role: Any) -> str:
    return _ROLES.get(role, USER) if type(role) is str else USER


def _is_map(item: Any) -> bool:
    return type(item) is dict or isinstance(item, Mapping)  # (the ABC check is slow)


def _get(item: Any, key: str) -> Any:
    if type(item) is dict or isinstance(item, Mapping):
        return item.get(key)
    return getattr(item, key, None)


def _part_texts(content: Any, kinds: tuple[str, ...] = ("text",)) -> tuple[str, ...]:
    """The texts of a content given as a string or as a list of parts."""
    if type(content) is str:
        return (content,) if content else ()
    if type(content) is not list:
        return ()
    found: list[str] = []
    for part in content:
        if type(part) is str:
            found.append(part)
            continue
        text = _get(part, "text")
        if type(text) is str and text and (_get(part, "type") in kinds or "type" not in part):
            found.append(text)
    return tuple(found)


def _native(body: Any) -> Iterator[Turn]:
    prompt = _get(body, "prompt")
    for message in _get(body, "messages") or ():
        role = _role(_get(message, "role") or "user")
        yield (role, _part_texts(_get(message, "content")), role == TOOL)
    if type(prompt) is str and prompt:
        yield (USER, (prompt,), False)


_CHAT_PARTS = ("text", "refusal")


def _openai_chat(body: Mapping[str, Any]) -> Iterator[Turn]:
    roles = _ROLES
    for message in body.get("messages") or ():
        if type(message) is not dict and not isinstance(message, Mapping):
            continue
        role = roles.get(message.get("role"), USER)
        content = message.get("content")
        if type(content) is str:
            yield (role, (content,) if content else (), role == TOOL)
            continue
        texts = _part_texts(content, _CHAT_PARTS)
        if type(content) is list:
            refusals = tuple(
                p["refusal"]
                for p in content
                if _is_map(p) and type(p.get("refusal")) is str and p["refusal"]
            )
            texts += refusals
        yield (role, texts, role == TOOL)


_RESPONSES_PARTS = ("input_text", "output_text", "text")


def _openai_responses(body: Mapping[str, Any]) -> Iterator[Turn]:
    instructions = body.get("instructions")
    if type(instructions) is str and instructions:
        yield (SYSTEM, (instructions,), False)
    given = body.get("input")
    if type(given) is str:
        yield (USER, (given,) if given else (), False)
        return
    for item in given or ():
        if not _is_map(item):
            continue
        kind = item.get("type")
        if kind in (None, "message") and "role" in item:
            role = _role(item.get("role"))
            yield (role, _part_texts(item.get("content"), _RESPONSES_PARTS), False)
        elif kind in ("function_call", "custom_tool_call"):
            yield (ASSISTANT, (), False)  # the model's call: a turn without text
        elif kind in ("function_call_output", "custom_tool_call_output"):
            output = item.get("output")
            yield (TOOL, (output,) if type(output) is str and output else (), True)


_ANTHROPIC_TEXT = ("text",)


def _anthropic_blocks(content: Any) -> tuple[tuple[str, ...], bool]:
    """(texts, a tool result among the blocks) of a message's content."""
    if type(content) is str:
        return ((content,) if content else ()), False
    texts: list[str] = []
    tool = False
    for block in content if type(content) is list else ():
        if not _is_map(block):
            continue
        kind = block.get("type")
        if kind == "text":
            text = block.get("text")
            if type(text) is str and text:
                texts.append(text)
        elif kind == "tool_result":
            tool = True
            texts.extend(_part_texts(block.get("content"), _ANTHROPIC_TEXT))
        elif kind == "document":
            source = block.get("source")
            data = source.get("data") if isinstance(source, Mapping) else None
            if type(data) is str and data and source.get("type") == "text":
                texts.append(data)
    return tuple(texts), tool


def _anthropic(body: Mapping[str, Any]) -> Iterator[Turn]:
    system = body.get("system")
    if system:
        yield (SYSTEM, _part_texts(system, _ANTHROPIC_TEXT), False)
    for message in body.get("messages") or ():
        if not _is_map(message):
            continue
        texts, tool = _anthropic_blocks(message.get("content"))
        yield (_role(message.get("role")), texts, tool)


def _gemini_parts(content: Any) -> tuple[tuple[str, ...], bool]:
    if type(content) is str:
        return ((content,) if content else ()), False
    if not isinstance(content, Mapping):
        return (), False
    parts = content.get("parts")
    if isinstance(parts, Mapping):
        parts = [parts]
    texts: list[str] = []
    tool = False
    for part in parts if type(parts) is list else ():
        if type(part) is str:
            if part:
                texts.append(part)
            continue
        if not _is_map(part):
            continue
        text = part.get("text")
        if type(text) is str and text:
            texts.append(text)
        if part.get("functionResponse") is not None or part.get("function_response") is not None:
            tool = True
    return tuple(texts), tool


def _gemini(body: Mapping[str, Any]) -> Iterator[Turn]:
    system = body.get("systemInstruction")
    if system is None:
        system = body.get("system_instruction")
    if system is not None:
        yield (SYSTEM, _gemini_parts(system)[0], False)
    contents = body.get("contents")
    if isinstance(contents, Mapping):
        contents = [contents]
    for content in contents if type(contents) is list else ():
        texts, tool = _gemini_parts(content)
        role = _role(content.get("role") if isinstance(content, Mapping) else "user")
        yield (TOOL if tool and role == USER and not texts else role, texts, tool)


_WALKERS: dict[str, Callable[[Any], Iterator[Turn]]] = {
    NATIVE: _native,
    OPENAI_CHAT: _openai_chat,
    OPENAI_RESPONSES: _openai_responses,
    ANTHROPIC: _anthropic,
    GEMINI: _gemini,
}


# ------------------------------------------------------------------ the checks

RECENT = 4  # the turns (not system prompts) the fence check reads, from the last back
_CODE_LINE = re.compile(
    r"^[ \t]*(?:def \w+\s*\(|class \w+\s*[:(]|import \w|from [\w.]+ import |#include\s*[<\"]"
    r"|function\s*\w*\s*\(|(?:const|let|var)\s+\w+\s*=|public\s+(?:static\s+)?[\w<>\[\]]+\s+\w+"
    r"\s*\(|fn \w+\s*\(|func \w+\s*\(|package \w+|select\s.+\sfrom\s|<\?php|#!/)"
    r"|(?:[{}]|\);)[ \t]*$",
    re.MULTILINE,
)
# a character without which no code line matches, and the words that start one without it
_CODE_HINT = re.compile(r"[{}();#<=]")
_CODE_WORDS = frozenset({b"import", b"package", b"select"})
# math: symbols, LaTeX and equations (only read when one of their characters is there)
_MATH_HINT = re.compile(r"[$\\^=∫∑∏√∞≤≥≠≈∂∇]")
_MATH = re.compile(
    r"\$[^$\n]*[\\^_=][^$\n]*\$"
    r"|\\(?:frac|int|sum|prod|sqrt|lim|begin\{|cdot|times|alpha|beta|theta|pi|infty|partial)\b"
    r"|\\\(|\\\[|[∫∑∏√∞≤≥≠≈∂∇]"
    r"|\d\s*[-+*/×÷^]\s*\(?\d[\d.]*\)?\s*="
    r"|\b[a-z]\s*\^\s*\d|\b\d*[a-z]\s*[-+]\s*\d+\s*=\s*-?\d"
)
_MATH_WORDS = frozenset(w.encode() for w in (
    "integral", "integrate", "derivative", "differentiate", "equation", "equations", "theorem",
    "lemma", "eigenvalue", "eigenvalues", "eigenvector", "eigenvectors", "matrix", "matrices",
    "polynomial", "probability", "irrational", "logarithm", "calculus", "modulo", "factorial",
    "combinatorics",
))  # fmt: skip
_MATH_PHRASES = ("prime number", "solve for")
_MULTI_WORDS = frozenset(w.encode() for w in (
    "prove", "proof", "derive", "derivation", "design", "architecture", "architect",
    "implement", "refactor", "debug", "optimise", "optimize", "analyse", "analyze", "analysis",
    "justify", "algorithm", "evaluate", "critique", "investigate", "troubleshoot", "diagnose",
    "tradeoff", "tradeoffs",
))  # fmt: skip
_MULTI_PHRASES = (
    "step by step", "step-by-step", "compare and contrast", "trade-off", "explain why",
    "walk me through", "reason through", "pros and cons", "in depth", "detailed plan",
)  # fmt: skip
_WRITE_CODE = re.compile(
    r"\bwrite (?:an? |the )?(?:\w+ )?(?:function|script|program|query|class|regex|parser|tests?)\b"
)
# beyond ASCII: stems and words (no word boundaries in Chinese and Japanese)
_MULTI_NON_ASCII = (
    "доказ", "реализ", "алгоритм", "оптимиз", "проанализ",
    "証明", "実装", "設計", "最適化", "证明", "实现", "设计", "优化", "调试", "算法", "分析",
)  # fmt: skip
_REASONING_PHRASES = (
    "step by step", "step-by-step", "think carefully", "think hard", "think deeply",
    "think through", "think before", "chain of thought", "chain-of-thought", "show your work",
    "show your reasoning", "explain your reasoning", "let's think", "lets think",
)  # fmt: skip
_REASONING_WORDS = frozenset({b"reason", b"reasoning"})
# the words one of the phrases above starts with: without one, no phrase is looked for
_MULTI_GATE = frozenset(p.split(" ")[0].split("-")[0].encode() for p in _MULTI_PHRASES)
_MATH_GATE = frozenset(p.split(" ")[0].encode() for p in _MATH_PHRASES)
_REASONING_GATE = frozenset(p.split(" ")[0].split("-")[0].encode() for p in _REASONING_PHRASES)
_WRITE = b"write"


def _bounded(text: str) -> str:
    """`text`, or its first and last SCAN characters (a bounded copy) when it is longer."""
    if len(text) <= 2 * SCAN:
        return text
    return text[:SCAN] + "\n" + text[-SCAN:]


# ASCII punctuation -> space, for splitting words without a regular expression
_SPACES = bytes(
    32 if chr(b) in '!"#$%&()*+,-./:;<=>?@[\\]^`{|}~\t\n\r\x0b\x0c' else b for b in range(256)
)


class _View:
    """The texts of a turn (each bounded), lower-cased once, and their words (ASCII
    punctuation splits them; as UTF-8 bytes, which is what the word lists are)."""

    __slots__ = ("lower", "pieces", "words")

    def __init__(self, texts: tuple[str, ...]) -> None:
        if len(texts) == 1 and len(texts[0]) <= 2 * SCAN:
            self.pieces = texts
            self.lower = texts[0].lower()
        else:
            self.pieces = tuple(_bounded(t) for t in texts)
            self.lower = "\n".join(self.pieces).lower()
        self.words = frozenset(
            self.lower.encode("utf-8", "surrogatepass").translate(_SPACES).split()
        )


def _last(conv: Conversation) -> Turn | None:
    for turn in reversed(conv.turns()):
        if turn[0] != SYSTEM:
            return turn
    return None


def _view(conv: Conversation) -> _View:
    """The last turn, read once for every content check (memoised with the features)."""
    found = conv.values.get(_View)
    if found is None:
        last = _last(conv)
        found = conv.values[_View] = _View(last[1] if last is not None else ())
    return found


def _system_view(conv: Conversation) -> _View:
    found = conv.values.get(_system_view)
    if found is None:
        texts = tuple(t for role, texts, _ in conv.turns() if role == SYSTEM for t in texts)
        found = conv.values[_system_view] = _View(texts)
    return found


def _tokens(conv: Conversation) -> int:
    return sum(estimate_text_tokens(t) for _, texts, _ in conv.turns() for t in texts)


def _last_tokens(conv: Conversation) -> int:
    last = _last(conv)
    return 0 if last is None else sum(estimate_text_tokens(t) for t in last[1])


def _turns(conv: Conversation) -> int:
    return sum(1 for turn in conv.turns() if turn[0] != SYSTEM)


def _code(conv: Conversation) -> bool:
    seen = 0
    for role, texts, _ in reversed(conv.turns()):
        if role == SYSTEM:
            continue
        for text in texts:
            if "```" in text or "~~~" in text:
                return True
        seen += 1
        if seen == RECENT:
            break
    view = _view(conv)
    if _CODE_HINT.search(view.lower) is None and view.words.isdisjoint(_CODE_WORDS):
        return False
    return _CODE_LINE.search(view.lower) is not None


def _math(conv: Conversation) -> bool:
    view = _view(conv)
    lower = view.lower
    words = view.words
    if not words.isdisjoint(_MATH_WORDS):
        return True
    if not words.isdisjoint(_MATH_GATE) and any(p in lower for p in _MATH_PHRASES):
        return True
    return _MATH_HINT.search(lower) is not None and _MATH.search(lower) is not None


def _multi_step(conv: Conversation) -> bool:
    view = _view(conv)
    lower, words = view.lower, view.words
    if not words.isdisjoint(_MULTI_WORDS):
        return True
    if not words.isdisjoint(_MULTI_GATE) and any(p in lower for p in _MULTI_PHRASES):
        return True
    if _WRITE in words and _WRITE_CODE.search(lower) is not None:
        return True
    return not lower.isascii() and any(w in lower for w in _MULTI_NON_ASCII)


def _system_reasoning(conv: Conversation) -> bool:
    view = _system_view(conv)
    words = view.words
    if not words.isdisjoint(_REASONING_WORDS):
        return True
    return not words.isdisjoint(_REASONING_GATE) and any(
        p in view.lower for p in _REASONING_PHRASES
    )


def _system_json(conv: Conversation) -> bool:
    return b"json" in _system_view(conv).words


def _tool_results(conv: Conversation) -> bool:
    return any(turn[2] for turn in conv.turns())


# ------------------------------------------------------------------ the dominant script

SCRIPTS = (
    "latin", "greek", "cyrillic", "hebrew", "arabic", "indic", "thai", "cjk", "hangul", "other",
)  # fmt: skip
NO_SCRIPT = "none"  # no letter at all
# each script's class byte, and the UTF-8 lead bytes (a character's block) that are it
_SCRIPT_LEADS: dict[str, tuple[bytes, tuple[tuple[int, int], ...]]] = {
    "latin": (b"L", ((0xC3, 0xCB),)),  # Latin-1 letters, Latin Extended A/B, IPA
    "greek": (b"G", ((0xCE, 0xCF),)),
    "cyrillic": (b"C", ((0xD0, 0xD4),)),
    "hebrew": (b"H", ((0xD6, 0xD7),)),
    "arabic": (b"R", ((0xD8, 0xDB), (0xDD, 0xDD))),
    "indic": (b"I", ((0xE0, 0xE0),)),  # U+0800-0FFF: Devanagari … Tibetan (Thai below)
    "cjk": (b"J", ((0xE3, 0xE9),)),  # kana, CJK punctuation, ideographs
    "hangul": (b"K", ((0xEA, 0xED),)),
    "other": (b"O", ((0xD5, 0xD5), (0xDC, 0xDC), (0xDE, 0xDF), (0xE1, 0xE1))),
}
_LETTERS = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _script_table() -> tuple[bytes, bytes]:
    table = bytearray(range(256))
    keep = set(_LETTERS)
    for letter in _LETTERS:
        table[letter] = ord("L")
    for cls, ranges in _SCRIPT_LEADS.values():
        for first, last in ranges:
            for byte in range(first, last + 1):
                table[byte] = cls[0]
                keep.add(byte)
    return bytes(table), bytes(b for b in range(256) if b not in keep)


_SCRIPT_TABLE, _NOT_LETTER = _script_table()
_ASCII_NOT_LETTER = bytes(b for b in range(128) if b not in set(_LETTERS))


def _script_counts(texts: tuple[str, ...]) -> dict[str, int]:
    counts = dict.fromkeys(SCRIPTS, 0)
    for text in texts:
        piece = text  # (bounded: a view's piece)
        if piece.isascii():
            counts["latin"] += len(piece.encode().translate(None, _ASCII_NOT_LETTER))
            continue
        raw = piece.encode("utf-8", "surrogatepass")
        classes = raw.translate(_SCRIPT_TABLE, _NOT_LETTER)
        for script, (cls, _) in _SCRIPT_LEADS.items():
            counts[script] += classes.count(cls)
        thai = raw.count(b"\xe0\xb8") + raw.count(b"\xe0\xb9")  # U+0E00-0E7F
        counts["thai"] += thai
        counts["indic"] -= thai
    return counts


def _script(conv: Conversation) -> str:
    texts = _view(conv).pieces
    if not texts:  # no user text: the system prompt's script
        texts = _system_view(conv).pieces
    counts = _script_counts(texts)
    best = max(SCRIPTS, key=lambda s: counts[s])  # ties: the first in SCRIPTS
    return best if counts[best] > 0 else NO_SCRIPT


# ------------------------------------------------------------------ the registry

# feature name -> how it is derived (the names and types the checker knows are
# `engine.language.schema.PROMPT_FEATURES`; a test holds the two to the same names)
DERIVE: dict[str, Callable[[Conversation], FeatureValue]] = {
    "tokens": _tokens,
    "last_tokens": _last_tokens,
    "turns": _turns,
    "code": _code,
    "math": _math,
    "multi_step": _multi_step,
    "tool_results": _tool_results,
    "script": _script,
    "system_reasoning": _system_reasoning,
    "system_json": _system_json,
}


# ------------------------------------------------------------------ complexity


@dataclass(frozen=True, slots=True)
class Term:
    """One term of the complexity score: what it reads, and its value (0-1)."""

    reads: str  # the feature it is made from
    doc: str
    value: Callable[[Conversation], float]


def _flag(name: str) -> Callable[[Conversation], float]:
    return lambda conv: 1.0 if conv.feature(name) is True else 0.0


LENGTH_SCALE = 1000  # last-turn tokens at which `length` reaches 1
TURNS_SCALE = 10  # turns after the first at which `turns` reaches 1

COMPLEXITY_TERMS: dict[str, Term] = {
    "code": Term("code", "1 when the conversation has code", _flag("code")),
    "math": Term("math", "1 when the last turn has math", _flag("math")),
    "multi_step": Term(
        "multi_step", "1 when the last turn asks for multi-step work", _flag("multi_step")
    ),
    "reasoning": Term(
        "system_reasoning",
        "1 when the system prompt asks for reasoning",
        _flag("system_reasoning"),
    ),
    "tool_results": Term(
        "tool_results", "1 when a tool's result is in the conversation", _flag("tool_results")
    ),
    "length": Term(
        "last_tokens",
        f"the last turn's tokens / {LENGTH_SCALE:,}, at most 1",
        lambda conv: min(1.0, int(conv.feature("last_tokens")) / LENGTH_SCALE),
    ),
    "turns": Term(
        "turns",
        f"(turns - 1) / {TURNS_SCALE}, at most 1",
        lambda conv: min(1.0, max(0, int(conv.feature("turns")) - 1) / TURNS_SCALE),
    ),
}
Weights = tuple[tuple[str, float], ...]  # (term, weight), in COMPLEXITY_TERMS order
DEFAULT_WEIGHTS: Weights = (
    ("code", 0.5),
    ("math", 0.5),
    ("multi_step", 0.5),
    ("reasoning", 0.3),
    ("tool_results", 0.2),
    ("length", 0.3),
    ("turns", 0.1),
)
MAX_WEIGHT = 1.0  # one term at weight 1 makes a score of 1 on its own


def weights_with(overrides: Mapping[str, float]) -> Weights:
    """The default weights with some replaced (names already checked)."""
    return tuple((term, float(overrides.get(term, weight))) for term, weight in DEFAULT_WEIGHTS)


@dataclass(frozen=True, slots=True)
class Part:
    """One term of a score as `--explain` shows it."""

    term: str
    value: float
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return {"term": self.term, "value": self.value, "weight": self.weight}


def complexity_parts(conv: Conversation, weights: Weights) -> list[Part]:
    """Each term with a weight: its value and weight (the score is their products' sum,
    at most 1)."""
    return [
        Part(term, round(COMPLEXITY_TERMS[term].value(conv), 4), weight)
        for term, weight in weights
        if weight
    ]


def reads_of(weights: Weights) -> frozenset[str]:
    """The features a complexity score under `weights` derives."""
    return frozenset(COMPLEXITY_TERMS[term].reads for term, weight in weights if weight)
