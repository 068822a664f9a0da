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

    __slots__ = ("_last", "_shape", "_system", "_turns", "body", "format", "values")

    def __init__(self, fmt: str, body: Any) -> None:
        self.format = fmt
        self.body = body  # a body dict, or a validated native `Request`
        self._turns: tuple[Turn, ...] | None = None
        self._shape: Shape | None = None  # one walk: what every structural feature reads
        self._last: _View | None = None  # the last turn, read once by the content checks
        self._system: _View | None = None  # the system prompts, likewise
        self.values: dict[Any, Any] = {}  # feature name (or complexity key) -> value

    def turns(self) -> tuple[Turn, ...]:
        if self._turns is None:
            self._turns = tuple(_WALKERS.get(self.format, _native)(self.body))
        return self._turns

    def shape(self) -> Shape:
        """The conversation's `Shape`, walked once (the first feature read walks it)."""
        shape = self._shape
        if shape is None:
            fast = _SHAPERS.get(self.format)
            shape = fast(self.body) if fast is not None else None
            if shape is None:
                shape = _shape_of(self.turns())
            self._shape = shape
        return shape

    def feature(self, name: str) -> FeatureValue:
        """The feature `name` (one of DERIVE), derived once."""
        value = self.values.get(name, _MISSING)
        if value is _MISSING:
            value = self.values[name] = DERIVE[name](self)
            _derived[name] += 1
        return value  # type: ignore[return-value]

    def complexity(self, weights: Weights) -> float:
        """`request.complexity` under `weights` (derived once per weights object: a
        program's). The terms are read from the weights' plan (`_plan`): each feature a
        term with a weight reads, derived here without a call per term."""
        values = self.values
        found = values.get(id(weights))
        if found is not None and found[0] is weights:
            return found[1]  # type: ignore[no-any-return]
        total = 0.0
        for name, weight, scale, offset in _plan(weights):
            value = values.get(name, _MISSING)
            if value is _MISSING:
                value = values[name] = DERIVE[name](self)
                _derived[name] += 1
            if scale:
                total += weight * min(1.0, max(0, value - offset) / scale)
            elif value is True:
                total += weight  # (× 1.0; a false flag adds 0.0)
        score = min(1.0, round(total, 6))
        values[id(weights)] = (weights, score)
        _derived["complexity"] += 1
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


def _chat_texts(content: Any) -> tuple[str, ...]:
    """The texts of an OpenAI chat message's content (a string, or text and refusal parts)."""
    if type(content) is str:
        return (content,) if content else ()
    texts = _part_texts(content, _CHAT_PARTS)
    if type(content) is list:
        refusals = tuple(
            p["refusal"]
            for p in content
            if _is_map(p) and type(p.get("refusal")) is str and p["refusal"]
        )
        texts += refusals
    return texts


def _openai_chat(body: Mapping[str, Any]) -> Iterator[Turn]:
    roles = _ROLES
    for message in body.get("messages") or ():
        if type(message) is not dict and not isinstance(message, Mapping):
            continue
        role = roles.get(message.get("role"), USER)
        yield (role, _chat_texts(message.get("content")), role == TOOL)


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


# ------------------------------------------------------------------ one walk: the shape

RECENT = 4  # the turns (not system prompts) the fence check reads, from the last back


class Shape:
    """What the structural features read, from one walk of the conversation: the turns that
    are not system prompts (`turns`), whether a tool's result is among them (`tool`), the
    system prompts' texts (`system`, in order), and the texts of the last RECENT turns that
    are not system prompts (`recent`, oldest first: the last turn is `recent[-1]`)."""

    __slots__ = ("recent", "system", "tool", "turns")

    def __init__(
        self, turns: int, tool: bool, system: tuple[str, ...], recent: tuple[tuple[str, ...], ...]
    ) -> None:
        self.turns = turns
        self.tool = tool
        self.system = system
        self.recent = recent

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Shape) and (
            (self.turns, self.tool, self.system, self.recent)
            == (other.turns, other.tool, other.system, other.recent)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # never the text
        return f"Shape({self.turns} turn(s), tool={self.tool})"


def _shape_of(turns: tuple[Turn, ...]) -> Shape:
    """The shape of a conversation walked as turns (every format)."""
    system: list[str] = []
    others: list[tuple[str, ...]] = []
    tool = False
    for role, texts, is_tool in turns:
        if is_tool:
            tool = True
        if role == SYSTEM:
            system += texts
        else:
            others.append(texts)
    return Shape(len(others), tool, tuple(system), tuple(others[-RECENT:]))


def _chat_shape(body: Any) -> Shape | None:
    """The shape of an OpenAI chat body, read from its messages' roles without making a turn
    of each (C-level passes: a list of the roles, counts, index): only the system prompts'
    and the last RECENT turns' texts are taken. None when the messages are not a list of
    dicts: then the turns are walked."""
    if type(body) is not dict:
        return None
    messages = body.get("messages")
    if type(messages) is not list:
        return None if messages else Shape(0, False, (), ())
    get = _ROLES.get
    roles = [get(m.get("role"), USER) if type(m) is dict else None for m in messages]
    if None in roles:
        return None
    count = len(roles)
    system: list[str] = []
    systems = roles.count(SYSTEM)
    at = -1
    for _ in range(systems):
        at = roles.index(SYSTEM, at + 1)
        system += _chat_texts(messages[at].get("content"))
    recent: list[tuple[str, ...]] = []
    at = count
    while at and len(recent) < RECENT:
        at -= 1
        if roles[at] != SYSTEM:
            content = messages[at].get("content")
            recent.append(
                ((content,) if content else ()) if type(content) is str else _chat_texts(content)
            )
    recent.reverse()
    return Shape(count - systems, TOOL in roles, tuple(system), tuple(recent))


# the formats whose shape is read without walking turns (the others: `_shape_of`)
_SHAPERS: dict[str, Callable[[Any], Shape | None]] = {OPENAI_CHAT: _chat_shape}


# ------------------------------------------------------------------ the checks

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


# every word a check looks for (the word lists, the phrases' first words, json): a view
# keeps only those of its words
_LISTED = frozenset().union(
    _CODE_WORDS, _MATH_WORDS, _MATH_GATE, _MULTI_WORDS, _MULTI_GATE, _REASONING_WORDS,
    _REASONING_GATE, {_WRITE, b"json"},
)  # fmt: skip
# the ASCII characters the code lines and the math patterns need one of (the code check's
# `{}();#<=`, the math check's `$\^=`): a view keeps those of its characters
_HINTS = b"{}();#<=$\\^"
_NOT_HINT = bytes(b for b in range(256) if b not in _HINTS)
_MATH_ONLY = b"$\\^"  # hints that are not code hints
_CODE_ONLY = b"{}();#<"  # hints that are not math hints ("=" is both)
_MATH_SYMBOL = re.compile(r"[∫∑∏√∞≤≥≠≈∂∇]")


def _bounded(text: str) -> str:
    """`text`, or its first and last SCAN characters (a bounded copy) when it is longer."""
    if len(text) <= 2 * SCAN:
        return text
    return text[:SCAN] + "\n" + text[-SCAN:]


def _pieces(texts: tuple[str, ...]) -> tuple[str, ...]:
    """The texts, each bounded (the same tuple when none is long)."""
    for text in texts:
        if len(text) > 2 * SCAN:
            return tuple(_bounded(t) for t in texts)
    return texts


# ASCII punctuation -> space, for splitting words without a regular expression
_SPACES = bytes(
    32 if chr(b) in '!"#$%&()*+,-./:;<=>?@[\\]^`{|}~\t\n\r\x0b\x0c' else b for b in range(256)
)


class _View:
    """The texts of a turn (each bounded), lower-cased once; which of the listed words
    (`_LISTED`) are among its words (ASCII punctuation and whitespace split them; as UTF-8
    bytes, which is what the word lists are); which hint characters (`_HINTS`) it has; and
    whether it is all ASCII. Three C-level passes over the bytes: translate and split, set
    intersection, translate."""

    __slots__ = ("ascii", "hints", "lower", "pieces", "words")

    def __init__(self, texts: tuple[str, ...]) -> None:
        self.pieces = pieces = _pieces(texts)
        self.lower = lower = pieces[0].lower() if len(pieces) == 1 else "\n".join(pieces).lower()
        raw = lower.encode("utf-8", "surrogatepass")
        self.ascii = len(raw) == len(lower)
        self.words = _LISTED.intersection(raw.translate(_SPACES).split())
        self.hints = raw.translate(None, _NOT_HINT)


def _view(conv: Conversation) -> _View:
    """The last turn that is not a system prompt, read once for every content check."""
    view = conv._last
    if view is None:
        recent = conv.shape().recent
        view = conv._last = _View(recent[-1] if recent else ())
    return view


def _system_view(conv: Conversation) -> _View:
    view = conv._system
    if view is None:
        view = conv._system = _View(conv.shape().system)
    return view


def _tokens(conv: Conversation) -> int:
    return sum(estimate_text_tokens(t) for _, texts, _ in conv.turns() for t in texts)


def _last_tokens(conv: Conversation) -> int:
    recent = conv.shape().recent
    if not recent:
        return 0
    texts = recent[-1]
    if len(texts) == 1:
        return estimate_text_tokens(texts[0])
    return sum(estimate_text_tokens(t) for t in texts)


def _turns(conv: Conversation) -> int:
    return conv.shape().turns


def _code(conv: Conversation) -> bool:
    for texts in conv.shape().recent:
        for text in texts:  # (a one-character `in` is a memchr: most have no ` or ~ at all)
            if ("`" in text and "```" in text) or ("~" in text and "~~~" in text):
                return True
    view = _view(conv)
    hinted = view.hints and view.hints.translate(None, _MATH_ONLY)
    if not hinted and view.words.isdisjoint(_CODE_WORDS):
        return False
    return _CODE_LINE.search(view.lower) is not None


def _math(conv: Conversation) -> bool:
    view = _view(conv)
    words = view.words
    if words:
        if not words.isdisjoint(_MATH_WORDS):
            return True
        if not words.isdisjoint(_MATH_GATE) and any(p in view.lower for p in _MATH_PHRASES):
            return True
    hinted = (view.hints and view.hints.translate(None, _CODE_ONLY)) or (
        not view.ascii and _MATH_SYMBOL.search(view.lower) is not None
    )
    return bool(hinted) and _MATH.search(view.lower) is not None


def _multi_step(conv: Conversation) -> bool:
    view = _view(conv)
    words = view.words
    if words:
        if not words.isdisjoint(_MULTI_WORDS):
            return True
        if not words.isdisjoint(_MULTI_GATE) and any(p in view.lower for p in _MULTI_PHRASES):
            return True
        if _WRITE in words and _WRITE_CODE.search(view.lower) is not None:
            return True
    return not view.ascii and any(w in view.lower for w in _MULTI_NON_ASCII)


def _system_reasoning(conv: Conversation) -> bool:
    view = _system_view(conv)
    words = view.words
    if not words:
        return False
    if not words.isdisjoint(_REASONING_WORDS):
        return True
    return not words.isdisjoint(_REASONING_GATE) and any(
        p in view.lower for p in _REASONING_PHRASES
    )


def _system_json(conv: Conversation) -> bool:
    return b"json" in _system_view(conv).words


def _tool_results(conv: Conversation) -> bool:
    return conv.shape().tool


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
    shape = conv.shape()
    texts = _pieces(shape.recent[-1]) if shape.recent else ()
    if not texts:  # no user text: the system prompt's script
        texts = _pieces(shape.system)
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


_derived.update(dict.fromkeys((*DERIVE, "complexity"), 0))

# ------------------------------------------------------------------ complexity


@dataclass(frozen=True, slots=True)
class Term:
    """One term of the complexity score: the feature it reads, and how that makes its value
    (0-1): a flag (`scale` 0) is 1 when the feature is true; a count is
    min(1, max(0, feature - offset) / scale)."""

    reads: str  # the feature it is made from
    doc: str
    scale: int = 0
    offset: int = 0

    def of(self, feature: FeatureValue) -> float:
        """The term's value when its feature is `feature`."""
        if not self.scale:
            return 1.0 if feature is True else 0.0
        return min(1.0, max(0, int(feature) - self.offset) / self.scale)

    def value(self, conv: Conversation) -> float:
        return self.of(conv.feature(self.reads))


LENGTH_SCALE = 1000  # last-turn tokens at which `length` reaches 1
TURNS_SCALE = 10  # turns after the first at which `turns` reaches 1

COMPLEXITY_TERMS: dict[str, Term] = {
    "code": Term("code", "1 when the conversation has code"),
    "math": Term("math", "1 when the last turn has math"),
    "multi_step": Term("multi_step", "1 when the last turn asks for multi-step work"),
    "reasoning": Term("system_reasoning", "1 when the system prompt asks for reasoning"),
    "tool_results": Term("tool_results", "1 when a tool's result is in the conversation"),
    "length": Term(
        "last_tokens", f"the last turn's tokens / {LENGTH_SCALE:,}, at most 1", LENGTH_SCALE
    ),
    "turns": Term("turns", f"(turns - 1) / {TURNS_SCALE}, at most 1", TURNS_SCALE, 1),
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


# a score's plan: per term with a weight, (the feature it reads, weight, scale, offset);
# made once per weights object (a program's) and kept by its id, with the weights
_PLANS: dict[int, tuple[Weights, tuple[tuple[str, float, int, int], ...]]] = {}


def _plan(weights: Weights) -> tuple[tuple[str, float, int, int], ...]:
    found = _PLANS.get(id(weights))
    if found is not None and found[0] is weights:
        return found[1]
    terms = COMPLEXITY_TERMS
    plan = tuple(
        (terms[term].reads, weight, terms[term].scale, terms[term].offset)
        for term, weight in weights
        if weight
    )
    if len(_PLANS) >= 64:  # weights made per call (a test, a tool): keep the table small
        _PLANS.clear()
    _PLANS[id(weights)] = (weights, plan)
    return plan
