"""Prompt features: what a request asks, derived from its text when a policy reads them.

A request's evaluation environment carries its conversation (`Conversation`: the format and
a reference to the body as received, never a copy of its text). A policy reads a feature as
`request.text.NAME` (the names and types: `engine.language.schema.PROMPT_FEATURES`); the
compiled condition asks the conversation, which derives that one feature on first use and
keeps it for the rest of the decision. A policy that reads no feature derives none:
`derivations()` counts every feature derived, for the test that holds that to 0, and
`passes()` the passes that derived them.

`request.complexity` (0-1) is a weighted sum over terms made from the features, clamped to
1 (`COMPLEXITY_TERMS`, `DEFAULT_WEIGHTS`; a policy's `defaults { complexity(…) }` overrides
weights), and `complexity_parts` says how a score was made (`--explain`). The weights' plan
(`_plan`, made once per program's weights) names the features the score reads: they are
derived together, in one pass.

A pass is a function made once per set of features derived together (`_work`, from the
steps `_STEPS`, the one home of every heuristic), like a compiled condition: it holds only
the steps its features need, keeps the values in locals and stores them in one update. The
score's plan has one more: the pass over its features that also makes the score from those
locals (`_score_lines`: the terms with a weight inlined), taken on a conversation's first
read (its values still empty: the pass makes them one dict, score included); later reads
take the stored values (`_scorer`).

How the text is read: the conversation is walked once into its `Shape` (the turns that are
not system prompts, whether a tool answered, the system prompts' texts, the last RECENT
turns' texts; an OpenAI chat body from its messages' roles, without making a turn of
each); every check is a C-level pass (`in`, `re.search`, `bytes.translate`, set
intersections), never a join of the conversation; the cheap ones first (a translate table
and one-byte `in` for the code and math characters; a few `in` tests before the system
prompts are split into words for `system_reasoning` alone). The content checks read one turn (the
last; the system prompts), at most the first and last `SCAN` characters of each of its
texts, lower-cased and split into words once (`_read`); the fence check reads the last
RECENT turns. The system-prompt checks' answers are kept across requests by the prompt's
text (a bounded table, `_keep`: apps send the same system prompt with every request), so a
system prompt seen before is not read again. Heuristics only, no model: docs/requests.md
says, feature by feature, what is looked for. What it costs: bench/features_bench.py.

Standard library only (and `engine.tokens`): the router calls this per request.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from engine.tokens import estimate_text_tokens  # noqa: F401 (the passes `_work` makes call it)
from engine.wire.record import ANTHROPIC, GEMINI, NATIVE, OPENAI_CHAT, OPENAI_RESPONSES

SYSTEM, USER, ASSISTANT, TOOL = "system", "user", "assistant", "tool"
SCAN = 8192  # characters read at each end of a last-turn text by the content checks

FeatureValue = int | bool | str


# One message of a conversation: who speaks (SYSTEM, USER, ASSISTANT or TOOL), its texts
# (references into the body), and whether it carries a tool's result. A plain tuple: a
# request makes one per message, and a tuple is the cheapest record Python builds.
Turn = tuple[str, tuple[str, ...], bool]


# ------------------------------------------------------------------ derivation counter

# per set of features derived together: what `_derive` does for it (`Work`, decided once
# per set: a frozenset keeps its hash) and how many times it was derived (one list item
# update per derivation, whatever it derives); and how many scores were made
_derived: dict[frozenset[str], tuple[Work, list[int]]] = {}
_scores = [0]
_MISSING = object()


def derivations() -> int:
    """How many feature values were derived in this process (every request, every feature)."""
    found = list(_derived.items())
    return sum(len(names) * count[0] for names, (_, count) in found) + _scores[0]


def derivations_of(name: str) -> int:
    if name == "complexity":
        return _scores[0]
    return sum(count[0] for names, (_, count) in list(_derived.items()) if name in names)


def passes() -> int:
    """How many derivation passes were made (`_derive` calls: one per set derived together)."""
    return sum(count[0] for _, count in list(_derived.values()))


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
        self._last: Read | None = None  # the last turn, read once by the content checks
        self._system: Read | None = None  # the system prompts, likewise
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
            _derive(self, _ONE[name])
            value = self.values[name]
        return value  # type: ignore[no-any-return]

    def complexity(self, weights: Weights) -> float:
        """`request.complexity` under `weights` (derived once per weights object: a
        program's). The weights' plan (`_plan`) names every feature a term with a weight
        reads: those not yet derived are derived together, in one pass."""
        values = self.values
        key = id(weights)
        if values:  # (empty: nothing derived yet, the usual first read)
            found = values.get(key)
            if found is not None and found[0] is weights:
                return found[1]  # type: ignore[no-any-return]
        plan = _PLANS.get(key)
        reads, score_of, first, passes = (
            plan[1] if plan is not None and plan[0] is weights else _plan(weights)
        )
        if not values and reads:  # the first read: one pass derives them and makes the score
            passes[0] += 1
            _scores[0] += 1
            return first(self, values, self._shape or self.shape(), weights)  # type: ignore[no-any-return]
        missing = reads.difference(values)
        if missing:
            _derive(self, missing)
        score = score_of(values)
        values[key] = (weights, score)
        _scores[0] += 1
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
            yield (TOOL, _part_texts(item.get("output"), _RESPONSES_PARTS), True)


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
    of each (one loop over the messages, a dict lookup each, keeping the content of each that
    is not a system prompt): only the system prompts' and the last RECENT turns' texts are
    taken. None when the messages are not a list of dicts: then the turns are walked."""
    if type(body) is not dict:
        return None
    messages = body.get("messages")
    if type(messages) is not list:
        return None if messages else Shape(0, False, (), ())
    get = _ROLES.get
    system: tuple[str, ...] = ()
    tool = False
    contents = []  # of the messages that are not system prompts
    for message in messages:
        if type(message) is not dict:
            return None
        role = get(message.get("role"))  # (None: a user's)
        if role is SYSTEM:
            content = message.get("content")
            system += (content,) if type(content) is str and content else _chat_texts(content)
            continue
        contents.append(message.get("content"))
        if role is TOOL:
            tool = True
    recent = []
    for content in contents[-RECENT:]:
        recent.append((content,) if type(content) is str and content else _chat_texts(content))
    return Shape(len(contents), tool, system, tuple(recent))


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
# the words that start a code line without a hint character (`_HINT_KINDS`)
_CODE_WORDS = frozenset({b"import", b"package", b"select"})
# math: symbols, LaTeX and equations (only read when one of their characters is there)
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


# every word a check looks for (the word lists, the phrases' first words, json), and the
# lists each is in, as bits: a text's listed words make one mask, each check tests its bits
_KINDS = (
    _CODE_WORDS, _MATH_WORDS, _MATH_GATE, _MULTI_WORDS, _MULTI_GATE, _REASONING_WORDS,
    _REASONING_GATE, frozenset({_WRITE}), frozenset({b"json"}),
)  # fmt: skip
(
    _K_CODE, _K_MATH, _K_MATH_GATE, _K_MULTI, _K_MULTI_GATE, _K_REASONING, _K_REASONING_GATE,
    _K_WRITE, _K_JSON,
) = (1 << k for k in range(len(_KINDS)))  # fmt: skip
_LISTED: dict[bytes, int] = {
    word: sum(1 << k for k, words in enumerate(_KINDS) if word in words)
    for word in frozenset().union(*_KINDS)
}
_LISTED_WORDS = frozenset(_LISTED)
# the ASCII characters the code lines and the math patterns need one of (the code check's
# `{}();#<=`, the math check's `$\\^=`): a text's bytes map to their kind (a `bytes.translate`
# by table, then a one-byte `in`, a memchr): 1 a code hint only, 2 a math hint only, 3 both
# ("="), 0 any other byte
_H_CODE, _H_MATH, _H_BOTH = 1, 2, 3
_HINT_KINDS = bytes(
    _H_CODE if b in b"{}();#<" else _H_MATH if b in b"$\\^" else _H_BOTH if b == 61 else 0
    for b in range(256)
)
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


Read = tuple[str, int, bytes]  # (lower-cased text, its listed words' lists, its UTF-8)


def _read(texts: tuple[str, ...]) -> Read:
    """A turn's texts (each bounded) as the content checks read them: lower-cased once,
    the lists (`_KINDS`, as bits) its listed words are in (ASCII punctuation and whitespace
    split words; as UTF-8 bytes, which is what the word lists are), and its UTF-8 bytes."""
    if len(texts) == 1 and len(texts[0]) <= 2 * SCAN:
        lower = texts[0].lower()
    else:
        lower = "\n".join(_pieces(texts)).lower()
    raw = lower.encode() if lower.isascii() else lower.encode("utf-8", "surrogatepass")
    kinds = 0
    for word in _LISTED_WORDS.intersection(raw.translate(_SPACES).split()):  # (mostly none)
        kinds |= _LISTED[word]
    return lower, kinds, raw


# what every way the reasoning check says yes has in it: "reason" (the words) or a
# phrase's first word (each phrase has it)
_REASON_NEEDLES = ("reason", *sorted({g.decode() for g in _REASONING_GATE}))


def _may_reason(texts: tuple[str, ...]) -> bool:
    """False when the system prompts cannot ask for reasoning: none of their bounded pieces
    (what `_read` reads) has a `_REASON_NEEDLES` string, lower-cased. A few `in` tests, no
    split into words: most system prompts are told apart without being read."""
    for text in texts:  # (each bounded as `_pieces` bounds it)
        lower = (text if len(text) <= 2 * SCAN else _bounded(text)).lower()
        for needle in _REASON_NEEDLES:
            if needle in lower:
                return True
    return False


# What the system-prompt checks said, kept across requests by the system prompt's text
# (apps send the same one with every request: a hit costs its hash and one compare, no
# read). Only a conversation with one system prompt text of at most _KEPT_CHARS characters
# is kept (no long text is hashed); a table that reaches _KEPT entries is emptied (a
# system prompt made per request, with a date or a name in it, only ever misses).
_KEPT = 256
_KEPT_CHARS = 2 * SCAN
_SYSTEM_REASONING: dict[str | None, bool] = {}
_SYSTEM_JSON: dict[str | None, bool] = {}


def _keep(table: dict[str | None, bool], key: str, value: bool) -> None:
    if len(table) >= _KEPT:
        table.clear()
    table[key] = value


def _derive(conv: Conversation, names: AbstractSet[str]) -> None:
    """Derive the features `names` into `conv.values`, in one pass: the conversation's
    shape is walked once, each text is read once (the last turn's and the system prompts'
    reads are kept on the conversation for a later call), and each check runs only for a
    feature asked for: the pass is a function made once per set of features (`_work`)."""
    found = _derived.get(names)  # type: ignore[call-overload]
    if found is None:
        found = _derived[frozenset(names)] = (_work(names), [0])
    found[1][0] += 1
    found[0](conv, conv.values, conv._shape or conv.shape())


_LAST_CHECKS = frozenset({"code", "math", "multi_step"})  # they read the last turn's text

# what a pass does for a set of features: a function `(conv, values, shape) -> None`
Work = Callable[["Conversation", dict[Any, Any], Shape], None]

# The one home of every heuristic (docs/requests.md says them): each step of a pass, in
# order, as the source of the function `_work` makes for a set of features, with the
# features that need it; a step sets `v_NAME` for each feature NAME it derives, and the pass
# stores them all in one update at its end. A pass holds only the steps its features need,
# so a set pays for no check it does not ask for and no test of whether to make one (like a
# compiled condition).
_STEPS: tuple[tuple[AbstractSet[str], str], ...] = (
    ({"last_tokens", *_LAST_CHECKS}, "recent = shape.recent\nlast = recent[-1] if recent else ()"),
    ({"turns"}, "v_turns = shape.turns"),
    ({"tool_results"}, "v_tool_results = shape.tool"),
    (
        {"last_tokens"},
        """
        v_last_tokens = (
            estimate_text_tokens(last[0])
            if len(last) == 1
            else sum(map(estimate_text_tokens, last))
        )""",
    ),
    (
        {"tokens"},
        """
        v_tokens = sum(
            estimate_text_tokens(t) for _, texts, _ in conv.turns() for t in texts
        )""",
    ),
    (
        _LAST_CHECKS,
        """
        read = conv._last
        if read is None:
            read = conv._last = _read(last)
        lower, kinds, raw = read""",
    ),
    ({"code", "math"}, "hints = raw.translate(_HINT_KINDS)  # (mostly all 0: prose has none)"),
    (
        {"code"},
        """
        code = False
        for texts in recent:  # (a one-character `in` is a memchr: most have no ` or ~)
            for text in texts:
                if ('`' in text and '```' in text) or ('~' in text and '~~~' in text):
                    code = True
                    break
        if not code and (_H_CODE in hints or _H_BOTH in hints or kinds & _K_CODE):
            code = _CODE_LINE.search(lower) is not None
        v_code = code""",
    ),
    (
        {"math"},
        """
        math = kinds & _K_MATH != 0 or (
            kinds & _K_MATH_GATE != 0 and any(p in lower for p in _MATH_PHRASES)
        )
        if not math and (
            _H_MATH in hints
            or _H_BOTH in hints
            or (len(raw) != len(lower) and _MATH_SYMBOL.search(lower) is not None)
        ):
            math = _MATH.search(lower) is not None
        v_math = math""",
    ),
    (
        {"multi_step"},
        """
        v_multi_step = (
            kinds & _K_MULTI != 0
            or (kinds & _K_MULTI_GATE != 0 and any(p in lower for p in _MULTI_PHRASES))
            or (kinds & _K_WRITE != 0 and _WRITE_CODE.search(lower) is not None)
            or (len(raw) != len(lower) and any(w in lower for w in _MULTI_NON_ASCII))
        )""",
    ),
    (
        {"system_json", "system_reasoning"},
        """
        system = shape.system  # (its checks' answers are kept by its text: `_keep`)
        key = system[0] if len(system) == 1 and len(system[0]) <= _KEPT_CHARS else None""",
    ),
    (
        {"system_json"},  # (with or without system_reasoning: the system prompts are read)
        """
        v_system_json = _SYSTEM_JSON.get(key)  # (the usual system prompt: seen before)
        if v_system_json is None:
            read = conv._system
            if read is None:
                read = conv._system = _read(system)
            v_system_json = bool(read[1] & _K_JSON)
            if key is not None:
                _keep(_SYSTEM_JSON, key, v_system_json)""",
    ),
    (
        {"system_reasoning"},
        """
        v_system_reasoning = _SYSTEM_REASONING.get(key)  # (the usual system prompt: seen before)
        if v_system_reasoning is None:
            read = conv._system
            if read is None and not _may_reason(system):  # (most system prompts)
                v_system_reasoning = False
            else:
                if read is None:
                    read = conv._system = _read(system)
                lower, kinds, _ = read
                v_system_reasoning = bool(
                    kinds & _K_REASONING
                    or (kinds & _K_REASONING_GATE and any(p in lower for p in _REASONING_PHRASES))
                )
            if key is not None:
                _keep(_SYSTEM_REASONING, key, v_system_reasoning)""",
    ),
    ({"script"}, "v_script = _script(shape)"),
)


def _work(names: AbstractSet[str], weights: Weights | None = None) -> Work:
    """The pass that derives `names`: the steps they need, as one function. With `weights`
    (their features are `names`: `_plan`), the pass also makes the score under them from
    the values it derived (`_score_lines`), keeps it with them and returns it."""
    body = [
        textwrap.indent(textwrap.dedent(code).strip(), "    ")
        for needed, code in _STEPS
        if not names.isdisjoint(needed)
    ]
    kept = [f"{name!r}: v_{name}" for name in sorted(names)]
    if weights is not None:
        body += _score_lines(weights, "v_{}".format)
        kept.append(f"{id(weights)!r}: (weights, score)")
    if weights is None:
        body.append(f"    values.update({{{', '.join(kept)}}})")  # (one presized dict)
    else:  # (a conversation's first read, its values empty: they become the one dict made)
        body.append(f"    conv.values = {{{', '.join(kept)}}}")
        body.append("    return score")
    source = "def work(conv, values, shape, weights=None):\n" + "\n".join(body) + "\n"
    made: dict[str, Any] = {}  # (the function reads this module's names as they are then)
    exec(compile(source, f"<features pass {','.join(sorted(names))}>", "exec"), globals(), made)
    return made["work"]  # type: ignore[no-any-return]


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


def _script(shape: Shape) -> str:
    texts = _pieces(shape.recent[-1]) if shape.recent else ()
    if not texts:  # no user text: the system prompt's script
        texts = _pieces(shape.system)
    counts = _script_counts(texts)
    best = max(SCRIPTS, key=lambda s: counts[s])  # ties: the first in SCRIPTS
    return best if counts[best] > 0 else NO_SCRIPT


# ------------------------------------------------------------------ the registry

# the features `_derive` derives (the names and types the checker knows are
# `engine.language.schema.PROMPT_FEATURES`; a test holds the two to the same names)
DERIVE: frozenset[str] = frozenset({
    "tokens", "last_tokens", "turns", "code", "math", "multi_step", "tool_results", "script",
    "system_reasoning", "system_json",
})  # fmt: skip
_ONE = {name: frozenset((name,)) for name in DERIVE}  # what a single read derives

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


# a score's plan: the features its terms with a weight read, the function that makes the
# score from their values (`_scorer`), the pass that derives them all and makes the score
# (`_work` with the weights: a conversation's first read), and the count of passes over
# those features (`_derived`'s); made once per weights object (a program's) and kept by
# its id, with the weights
Plan = tuple[frozenset[str], Callable[[Mapping[Any, Any]], float], Callable[..., float], list[int]]
_PLANS: dict[int, tuple[Weights, Plan]] = {}


def _round6(total: float) -> float:
    """`round(total, 6)`, fast: `round` with digits converts through a decimal string (about
    0.5 µs); away from a tie, the nearest integer to total × 10⁶ (its error, at most half a
    unit in the last place of a number under 10⁶, is far below the 10⁻⁴ kept from a tie)
    divided by 10⁶ (a correctly rounded division of two exact numbers) is the double nearest
    the decimal `round` makes, which is what `round` returns. Near a tie, or out of range,
    `round` itself. The scorer `_scorer` makes inlines these lines."""
    scaled = total * 1e6
    whole = int(scaled + 0.5)
    if -0.4999 < scaled - whole < 0.4999 and 0.0 <= total < 1e6:
        return whole / 1e6
    return round(total, 6)


def _score_lines(weights: Weights, feature: Callable[[str], str]) -> list[str]:
    """The lines (in a function's body) that set `score`, the score under `weights`, from
    the features' values (`feature(name)`: the expression that reads one): each term with a
    weight inlined, its weight, scale and offset as constants; the sum of weight × term in
    `weights`' order (a flag: weight when it is true; a count: weight × min(1, max(0, value
    - offset) / scale)), rounded to 6 places (`_round6`), at most 1."""
    lines = ["    total = 0.0"]
    for term, weight in weights:
        if not weight:
            continue
        made = COMPLEXITY_TERMS[term]
        lines.append(f"    value = {feature(made.reads)}")
        if made.scale:  # (without min/max calls; a value at most the offset adds 0.0)
            if made.offset:
                lines.append(f"    value -= {made.offset!r}")
            lines.append("    if value > 0:")
            lines.append(
                f"        total += {weight!r} * (value / {made.scale!r}"
                f" if value < {made.scale!r} else 1.0)"
            )
        else:  # (× 1.0; a false flag adds 0.0)
            lines[-1] = f"    if {feature(made.reads)} is True:\n        total += {weight!r}"
    return [
        *lines,
        "    scaled = total * 1e6",  # (`_round6`, inline)
        "    whole = int(scaled + 0.5)",
        "    if -0.4999 < scaled - whole < 0.4999 and 0.0 <= total < 1e6:",
        "        score = whole / 1e6",
        "    else:",
        "        score = round(total, 6)",
        "    if score > 1.0:",
        "        score = 1.0",
    ]


def _scorer(weights: Weights) -> Callable[[Mapping[Any, Any]], float]:
    """The score under `weights` from derived values, as one function made for them."""
    lines = [
        "def score(values):",
        *_score_lines(weights, "values[{!r}]".format),
        "    return score",
    ]
    space: dict[str, Any] = {}
    exec(compile("\n".join(lines) + "\n", "<complexity score>", "exec"), space)
    return space["score"]  # type: ignore[no-any-return]


def _plan(weights: Weights) -> Plan:
    found = _PLANS.get(id(weights))
    if found is not None and found[0] is weights:
        return found[1]
    reads = reads_of(weights)
    derived = _derived.get(reads)
    if derived is None:
        derived = _derived[reads] = (_work(reads), [0])
    plan = (reads, _scorer(weights), _work(reads, weights), derived[1])
    if len(_PLANS) >= 64:  # weights made per call (a test, a tool): keep the table small
        _PLANS.clear()
    _PLANS[id(weights)] = (weights, plan)
    return plan
