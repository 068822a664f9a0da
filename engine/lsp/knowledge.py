"""What the language server knows at a place in a policy text: completions, hover, the
routes it can jump to and the outline. Offsets are code-point offsets into the text.

Every vocabulary is read from its one home: keywords and the shape of a name from the
grammar (`grammar/policy.lark`), request fields and model attributes from
`engine.language.schema`, models from the catalog in use, strategies from their registry,
capabilities from `engine.catalog.model`. No pygls here: plain records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engine.catalog.model import CAPABILITIES, Catalog, Model
from engine.catalog.views import day
from engine.diagnostics import PolicyError, Span
from engine.language import ast
from engine.language.checker import CLOSED_VALUES
from engine.language.parser import parse, unquote, written
from engine.language.schema import (
    COMPLEXITY_FIELD,
    FEATURES_FIELD,
    METADATA_FIELD,
    MODEL_ATTRS,
    PLUGIN_TYPES,
    PROMPT_FEATURE_DOCS,
    PROMPT_FEATURES,
    QUALITY,
    REQUEST_FIELDS,
    TEXT_FIELD,
    FieldType,
)
from engine.language.signals import SIGNALS, subject_words
from engine.resources import grammar_path
from engine.strategies import STRATEGIES
from engine.units import format_duration, format_money
from engine.vocabulary import STANDARD_SCOPES
from engine.wire.features import COMPLEXITY_TERMS
from engine.wire.plugins import Broken, active


@dataclass(frozen=True, slots=True)
class Completion:
    label: str
    kind: str  # keyword, field, model, provider, strategy, capability, scope, route, signal
    detail: str
    insert: str  # the text inserted (a model id that is not a name is quoted)


@dataclass(frozen=True, slots=True)
class Completions:
    """What may be written at a place, replacing the text from `start` up to it (what has
    been typed of the word: a name with `-` or `.` is one word here, unlike in most
    editors)."""

    start: int
    items: tuple[Completion, ...]


@dataclass(frozen=True, slots=True)
class Hover:
    markdown: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Place:
    path: Path
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Symbol:
    name: str
    kind: str  # route, limit, defaults, catalog, require (policy-wide), deny, alert
    start: int  # the whole statement
    end: int
    name_start: int  # its name (a route's, a limit's scope)
    name_end: int


# ---------------------------------------------------------------- the grammar's words


@cache
def _grammar() -> str:
    return grammar_path().read_text(encoding="utf-8")


@cache
def keywords() -> tuple[str, ...]:
    """Every keyword the grammar spells out (`route`, `prefer`, `per`, `contains`, …)."""
    return tuple(sorted(set(re.findall(r'"([a-z_]+)"', _grammar()))))


def _type(field: FieldType) -> str:
    unit, item = field
    return f"list of {item.value}" if item is not None else unit.value


# ---------------------------------------------------------------- completion

_PART = r'(?:"(?:[^"\\\n]|\\.)*"|[A-Za-z0-9_][\w.\-]*)'
_PATH_AT = re.compile(r"\b(request|model)\.((?:\w+\.)*)(\w*)$")
_MODEL_AT = re.compile(rf"\b(prefer|exclude|fallback)\s+(?:{_PART}(?:/{_PART})?\s*,\s*)*(\S*)$")
_STRATEGY_AT = re.compile(r"\bstrategy\s+([\w-]*)$")
# a factor's name: after `strategy NAME(` or a `,` inside its parentheses
_FACTOR_AT = re.compile(r"\bstrategy\s+([\w-]+)\s*\(([^()]*,)?\s*(\w*)$")
# a complexity term: after `complexity(` or a `,` inside its parentheses (in `defaults`)
_TERM_AT = re.compile(r"\bcomplexity\s*\(([^()]*,)?\s*(\w*)$")
_CAPABILITY_AT = re.compile(r'\bcontains\s+"(\w*)$')
# a closed field's value being typed: `request.text.script == "cy`, `request.format in ["an`,
# `"openai-chat", "an` (the field, then the value typed so far)
_VALUE_AT = re.compile(
    r'\b(request\.[\w.]+)\s*(?:==|!=|(?:not\s+)?in\s*\[(?:\s*"[\w-]*"\s*,)*)\s*"([\w-]*)$'
)
_LIMIT_AT = re.compile(r"\blimit\s+(\w*)$")
_ALERT_HEAD = r'\balert\s+"(?:[^"\\\n]|\\.)*"\s+when\s+'
_SIGNAL_AT = re.compile(_ALERT_HEAD + r"(\w*)$")  # `alert "x" when p9…`
_SUBJECT_AT = re.compile(_ALERT_HEAD + r"(\w+)\(\s*([\w.-]*)$")  # `… when p95(prov…`
_ARM_AT = re.compile(r"[0-9][\w.]*%?\s*:\s*route\s+([\w.\-]*)$")  # `10%: route cand…`
# a limit's head typed so far: `[shadow] limit SCOPE [= request.PATH] ["KEY"]`
_LIMIT_HEAD = r'^\s*(shadow\s+)?limit\s+\w+(?:\s*=\s*request\.[\w.]+)?(?:\s+"(?:[^"\\\n]|\\.)*")?'
_UNIT_AT = re.compile(_LIMIT_HEAD + r"\s+([A-Za-z_]*)$")  # `limit user tok…`
# after a rate limit's window (`per 1m [burst 10] `) and an in-flight cap's count
_LIMIT_TAIL_AT = re.compile(_LIMIT_HEAD + r"\s+(?:\w+\s+)?\S+\s+per\s+\S+(.*?)\s+([A-Za-z_]*)$")
_INFLIGHT_TAIL_AT = re.compile(_LIMIT_HEAD + r"\s+concurrent\s+\S+(.*?)\s+([A-Za-z_]*)$")
_PER_AT = re.compile(_LIMIT_HEAD + r"\s+(?:\w+\s+)?[0-9$]\S*\s+([A-Za-z_]*)$")  # `… 100 p`
_WAIT_AT = re.compile(r"\bwait\s+([A-Za-z_]*)$")  # `wait up to D`, a limit's or a route's
_SHADOW_AT = re.compile(r"^(\s*)shadow\s+([A-Za-z_]*)$")
_AFFINITY_AT = re.compile(r"^\s*affinity\s+(?:(by)\s+(?:(request\.[\w.]+)\s+)?)?([A-Za-z_]*)$")

# the words of a limit (docs/language.md), for completion
_UNITS = (
    Completion("requests", "keyword", "limit unit: one per request (the default)", "requests"),
    Completion("tokens", "keyword", "limit unit: the request's token estimate", "tokens"),
    Completion("spend", "keyword", "limit unit: the estimated cost, in `$`", "spend"),
    Completion("concurrent", "keyword", "in-flight cap: `concurrent N [lease D]`", "concurrent"),
)
_WAIT_UP_TO = Completion(
    "wait up to", "keyword", "a denied request waits up to D for its tokens", "wait up to "
)
_UP_TO = Completion("up to", "keyword", "`wait up to D`", "up to ")
_BURST = Completion("burst", "keyword", "tokens beyond the limit, at once", "burst ")
_PER = Completion("per", "keyword", "the window: `per 1m`, `per 1h`, `per 1d`", "per ")
_LEASE = Completion("lease", "keyword", "a slot's longest hold (default 10m)", "lease ")
_WHEN = Completion("when", "keyword", "the limit applies when the condition holds", "when ")
_UNTIL = Completion("until", "keyword", "the limit ends at this date", "until ")


def _line_before(text: str, offset: int) -> str:
    return text[text.rfind("\n", 0, offset) + 1 : offset]


def completions(text: str, offset: int, catalog: Catalog | None) -> Completions:
    """What may be written at `offset`, by what comes before it on its line."""
    before = _line_before(text, offset)
    line_start = offset - len(before)
    if "#" in _outside_strings(before):
        return Completions(offset, ())
    if found := _PATH_AT.search(before):
        items = _path_completions(found.group(1), found.group(2), catalog)
        return Completions(line_start + found.start(3), tuple(items))
    if found := _MODEL_AT.search(before):
        typed = found.group(2)
        provider, slash, _ = typed.partition("/")
        start = line_start + found.start(2) + (len(provider) + 1 if slash else 0)
        items = _model_completions(typed, catalog, found.group(1) != "prefer")
        return Completions(start, tuple(items))
    if found := _FACTOR_AT.search(before):
        spec = STRATEGIES.get(found.group(1))
        given = set(re.findall(r"(\w+)\s*:", found.group(2) or ""))
        items = [
            Completion(f, "factor", f"factor of `{spec.name}`", f"{f}: ")
            for f in (spec.factors if spec is not None else ())
            if f not in given
        ]
        return Completions(line_start + found.start(3), tuple(items))
    if found := _TERM_AT.search(before):
        given = set(re.findall(r"(\w+)\s*:", found.group(1) or ""))
        items = [
            Completion(t, "factor", f"complexity term: {term.doc}", f"{t}: ")
            for t, term in COMPLEXITY_TERMS.items()
            if t not in given
        ]
        return Completions(line_start + found.start(2), tuple(items))
    if found := _STRATEGY_AT.search(before):
        items = [Completion(n, "strategy", _strategy_detail(n), n) for n in STRATEGIES]
        return Completions(line_start + found.start(1), tuple(items))
    if (found := _VALUE_AT.search(before)) and found.group(1) in CLOSED_VALUES:
        items = [
            Completion(v, "value", f"a `{found.group(1)}`", v)
            for v in CLOSED_VALUES[found.group(1)]
        ]
        return Completions(line_start + found.start(2), tuple(items))
    if found := _CAPABILITY_AT.search(before):
        items = [Completion(c, "capability", "capability", c) for c in CAPABILITIES]
        return Completions(line_start + found.start(1), tuple(items))
    if found := _LIMIT_AT.search(before):
        items = [Completion(s, "scope", "limit scope", s) for s in STANDARD_SCOPES]
        return Completions(line_start + found.start(1), tuple(items))
    if found := _limit_words(before):
        return Completions(line_start + found[0], found[1])
    if found := _SHADOW_AT.search(before):  # in a block `shadow route`, outside `shadow limit`
        word = "route" if found.group(1) else "limit"
        detail = (
            "a route that decides too, never served"
            if found.group(1)
            else ("a limit in report-only mode: counted, never denying")
        )
        items = (Completion(word, "keyword", detail, f"{word} "),)
        return Completions(line_start + found.start(2), items)
    if found := _AFFINITY_AT.search(before):
        if found.group(1) is None:
            item = Completion(
                "by request.", "keyword", "`affinity by request.FIELD for D`", "by request."
            )
        elif found.group(2) is None:
            item = Completion(
                "request.", "keyword", "the request field that keys a pin", "request."
            )
        else:
            item = Completion("for", "keyword", "how long a pin lasts: `for 30m`", "for ")
        return Completions(line_start + found.start(3), (item,))
    if found := _SIGNAL_AT.search(before):
        items = [Completion(n, "signal", _signal_detail(n), n) for n in SIGNALS]
        return Completions(line_start + found.start(1), tuple(items))
    if found := _SUBJECT_AT.search(before):
        spec = SIGNALS.get(found.group(1))
        words = subject_words(spec) if spec is not None else ()
        items = [Completion(w, "scope", f"one `{found.group(1)}` per {w}", w) for w in words]
        if spec is not None and spec.catalog:
            items += _model_completions(found.group(2), catalog, True)
        return Completions(line_start + found.start(2), tuple(items))
    if found := _ARM_AT.search(before):  # an experiment's arm: the routes of the file
        names = sorted({m.group(1) for m in _ROUTE_LINE.finditer(text)})
        items = [Completion(n, "route", "arm route", n) for n in names]
        return Completions(line_start + found.start(1), tuple(items))
    word = re.search(r"[A-Za-z_]*$", before)
    start = line_start + (word.start() if word is not None else len(before))
    return Completions(start, tuple(Completion(k, "keyword", "keyword", k) for k in keywords()))


def _limit_words(before: str) -> tuple[int, tuple[Completion, ...]] | None:
    """In a limit (and after `wait`): what may follow what is written, and where the word
    being typed starts on the line; None elsewhere."""
    if found := _WAIT_AT.search(before):
        return found.start(1), (_UP_TO,)
    if found := _INFLIGHT_TAIL_AT.search(before):
        rest = found.group(2)
        if re.search(r"\b(when|until)\b", rest):
            return None  # a condition or a date: not a word of the limit's
        items = ([] if re.search(r"\blease\b", rest) else [_LEASE]) + [_WHEN, _UNTIL]
        return found.start(3), tuple(items)
    if found := _LIMIT_TAIL_AT.search(before):
        rest = found.group(2)
        if re.search(r"\b(when|until)\b", rest):
            return None
        items = [] if re.search(r"\b(burst|wait)\b", rest) else [_BURST]
        if found.group(1) is None and not re.search(r"\bwait\b", rest):
            items.append(_WAIT_UP_TO)  # not on a shadow limit (E0422)
        return found.start(3), (*items, _WHEN, _UNTIL)
    if found := _PER_AT.search(before):
        return found.start(2), (_PER,)
    if found := _UNIT_AT.search(before):
        return found.start(2), _UNITS
    return None


def _outside_strings(line: str) -> str:
    """The line with its strings blanked, same length (hover offsets stay right)."""
    return re.sub(r'"(?:[^"\\\n]|\\.)*"?', lambda m: " " * len(m.group()), line)


def _path_completions(root: str, middle: str, catalog: Catalog | None) -> list[Completion]:
    if root == "request":
        if middle == f"{TEXT_FIELD}.":
            return [
                Completion(n, "field", f"{_type(t)}: {PROMPT_FEATURE_DOCS[n]}", n)
                for n, t in PROMPT_FEATURES.items()
            ]
        if middle == f"{FEATURES_FIELD}.":
            return [Completion(n, "field", _plugin_detail(n), n) for n in active().names()]
        if middle:
            return []  # `request.metadata.<key>`: any key
        fields = [Completion(name, "field", _type(t), name) for name, t in REQUEST_FIELDS.items()]
        metadata = Completion(METADATA_FIELD, "field", "request.metadata.<key>", "metadata.")
        derived = [
            Completion(TEXT_FIELD, "field", "request.text.<feature>: a prompt feature", "text."),
            Completion(COMPLEXITY_FIELD, "field", _COMPLEXITY_DOC, COMPLEXITY_FIELD),
            Completion(
                FEATURES_FIELD, "field", "request.features.<name>: a classifier plugin", "features."
            ),
        ]
        return [*fields, metadata, *derived]
    if middle == f"{QUALITY}.":
        tasks = catalog.quality_tasks() if catalog is not None else ()
        return [Completion(t, "field", "number (0-1)", t) for t in tasks]
    if middle == "pricing.":
        attrs = {k.partition(".")[2]: t for k, t in MODEL_ATTRS.items() if k.startswith(middle)}
    elif middle:
        return []
    else:
        attrs = {k: t for k, t in MODEL_ATTRS.items() if "." not in k}
        pricing = [k.partition(".")[2] for k in MODEL_ATTRS if k.startswith("pricing.")]
        group = Completion("pricing", "field", f"pricing.{'|'.join(pricing)}", "pricing.")
        items = [Completion(name, "field", _type(t), name) for name, t in attrs.items()]
        return [*items, group]
    return [Completion(name, "field", _type(t), name) for name, t in attrs.items()]


_COMPLEXITY_DOC = "number (0-1): how hard the request looks, a weighted sum of prompt features"


def _plugin_detail(name: str) -> str:
    """A registered plugin's type and meaning (its registration's), or why it is unusable."""
    found = active().get(name)
    if found is None:
        return "not registered"
    if isinstance(found, Broken):
        return f"cannot be used: {found.error}"
    doc = f": {found.spec.doc}" if found.spec.doc else ""
    return f"{_type(PLUGIN_TYPES[found.spec.type])}{doc} (plugin `{found.entry}`)"


def _model_completions(typed: str, catalog: Catalog | None, bare: bool) -> list[Completion]:
    """`provider/model` refs; after `provider/`, that provider's models; with `bare`
    (exclude, fallback), providers alone too."""
    if catalog is None:
        return []
    provider, slash, _ = typed.partition("/")
    if slash:
        name = provider.strip('"')
        return [
            Completion(m.id, "model", _model_detail(m), written(m.id))
            for m in catalog.by_provider(name)
        ]
    refs = [
        Completion(m.key, "model", _model_detail(m), f"{written(m.provider)}/{written(m.id)}")
        for m in catalog.models
    ]
    providers = [
        Completion(p, "provider", f"provider ({len(catalog.by_provider(p))} models)", written(p))
        for p in catalog.providers
    ]
    return [*providers, *refs] if bare else [*refs, *providers]


def _model_detail(m: Model) -> str:
    return f"{format_money(m.input_price)} in / {format_money(m.output_price)} out per 1M tokens"


def _signal_detail(name: str) -> str:
    spec = SIGNALS[name]
    return f"alert signal, {spec.unit.value}, `{spec.window_word} D`"


def _strategy_detail(name: str) -> str:
    spec = STRATEGIES[name]
    return f"strategy, factors: {', '.join(spec.factors)}" if spec.factors else "strategy"


# ---------------------------------------------------------------- hover

_REF = re.compile(rf"(?<![\w\"./-]){_PART}/{_PART}")
_FIELD = re.compile(r"\b(request|model)\.(\w+(?:\.\w+)*)")


# what the policy-wide words and `explore` mean (docs/language.md)
_KEYWORD_HOVER = {
    "affinity": (
        "`affinity by request.FIELD for DURATION`: in `defaults` or a route, a request goes"
        " to the model the previous request with the same value of the field went to, if"
        " that was less than DURATION ago and the model is still eligible, healthy and"
        " within its limits (else the strategy chooses and the pin moves), so the"
        " provider's prompt cache stays warm; the estimated cost then prices the part of the"
        " prompt the session already sent at the cache-read price. Pins are kept in this"
        " instance's memory"
    ),
    "explore": (
        "`explore N% budget $X per DURATION`: in `defaults` or a route, N% of requests (by a"
        " hash of their id) go to the eligible model with the fewest samples, while it has"
        " fewer than `min_samples`, so a model the strategy never picks gets measured;"
        " once those requests are estimated to cost $X in the current window (fixed"
        " windows of DURATION, counted by this instance), requests route normally"
    ),
    "deny": (
        '`deny "reason" when CONDITION`: outside any block, a request for which the'
        " condition holds is denied with this reason, before routing (no limit is"
        " consumed); the `when` reads the request only"
    ),
    "require": (
        "`require CONDITION`: in a route, its models must meet the condition; outside any"
        " block (`require CONDITION [when REQUEST-CONDITION]`), every route, `defaults`"
        " and the whole fallback chain must, and a request it leaves no model for is denied"
    ),
    "split": (
        "`split by request.FIELD { SHARE%: route NAME … }`: a sticky experiment; a stable"
        " hash of the route's name and the field's value (the request id when it has none)"
        " sends each request to one arm route, the same user always to the same arm; the"
        " decision and the decision log name the experiment and the arm"
    ),
    "alert": (
        '`alert "NAME" when SIGNAL OP THRESHOLD [per|over D] [for D] [to "URL"]`: outside'
        " any block, watches a signal (`p95(provider)`, `error_rate(openai)`,"
        " `violations(user)`, `spend`, `denials`); once the comparison has held for `for D`"
        " it fires (one notification, a log line and a POST to the webhook), and it resolves"
        " (one more) when it stops holding. Split by a key, each key is its own alert and"
        " `{key}` in the name names it"
    ),
    "concurrent": (
        "`limit SCOPE concurrent N [lease D]`: an in-flight cap; an allowed decision takes a"
        " slot of it, which the decision's outcome (by its request id) gives back, or the"
        " lease (default 10m) when no outcome comes; past N requests in flight it denies (a"
        " full provider or model cap makes routing take the next candidate)"
    ),
    "lease": (
        "`concurrent N lease D`: how long an in-flight slot is held at most when the"
        " decision's outcome never comes (default 10m)"
    ),
    "wait": (
        "`limit … per D wait up to W` (or `wait up to W` in a route or `defaults`, for its"
        " limits): a request the limit denies waits up to W for its tokens instead of an"
        " immediate denial (`engine.acquire`, the service's /v1/eval and /v1/enforce;"
        " `evaluate` and `policyctl eval` never wait); waiters are admitted by request"
        " `priority` (higher first), then arrival, from a bounded queue per bucket key. The"
        " queue is fair: a newcomer waits behind the waiters of its priority or higher, and a"
        " request whose turn (the tokens the waiters ahead need, at the bucket's rate) comes"
        " after W is denied at once, its `retry_after_ms` counting them. Not on a `shadow`"
        " limit (E0422) nor a `concurrent` one (E0423)"
    ),
    "shadow": (
        "`shadow route NAME`: that route decides every request this route serves too, for"
        " comparison; its decision is logged (and shown by `--explain`), never served, and"
        " consumes no limit"
    ),
}
# `shadow limit …` (the same word before `limit`, outside any block)
_SHADOW_LIMIT_HOVER = (
    "`shadow limit SCOPE … per D` (or `… concurrent N`): a limit in report-only mode; its"
    " buckets (or in-flight gauge) are checked and consumed as if it were enforced (for"
    " the requests the enforced limits allow), but it"
    " never denies: a request it would have denied is allowed, listed in the decision's"
    " `shadow_denials`, logged as a violation of scope `shadow:SCOPE` and counted in"
    " `policyctl_shadow_denials_total`. Drop the word `shadow` to enforce it"
)
_KEYWORD = re.compile(rf"\b({'|'.join(_KEYWORD_HOVER)})\b")
# the other words of a phrase, shown as its first word's hover: `wait up to`, `affinity by
# request.FIELD for D`
_PHRASES = (
    (re.compile(r"\bwait\s+up\s+to\b"), "wait"),
    (re.compile(r"\baffinity\s+by\s+request\.[\w.]+\s+for\b"), "affinity"),
)
# what some request fields do beyond conditions
_FIELD_NOTES = {
    "priority": (
        "the order of the waiters for a limit's tokens (`wait up to D`): higher first, then"
        " arrival; a whole number from -1000 to 1000, default 0; the service's `X-Priority`"
        " header sets it"
    ),
}


def hover(text: str, offset: int, catalog: Catalog | None) -> Hover | None:
    """A model reference's prices and capabilities; a field's type; what `deny`,
    `require`, `split`, `shadow`, `explore` and `affinity` mean."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    at = offset - line_start
    for found in _KEYWORD.finditer(_outside_strings(line)):
        if found.start() <= at <= found.end():
            shown = _KEYWORD_HOVER[found.group(1)]
            if found.group(1) == "shadow" and re.match(r"\s+limit\b", line[found.end() :]):
                shown = _SHADOW_LIMIT_HOVER
            return Hover(shown, line_start + found.start(), line_start + found.end())
    for pattern, word in _PHRASES:
        for found in pattern.finditer(_outside_strings(line)):
            if found.start() <= at <= found.end():
                shown = _KEYWORD_HOVER[word]
                return Hover(shown, line_start + found.start(), line_start + found.end())
    if re.match(r"\s*alert\b", line):
        blanked = re.sub(r'"(?:[^"\\\n]|\\.)*"?', lambda m: " " * len(m.group()), line)
        for found in re.finditer(r"\b(\w+)\s*(?=\(|[<>])", blanked):
            spec = SIGNALS.get(found.group(1))
            if spec is not None and found.start(1) <= at <= found.end(1):
                shown = (
                    f"`{spec.name}`: {spec.doc}; {spec.unit.value}, written `{spec.window_word}"
                    f" D`. Split by: {', '.join(f'`{w}`' for w in spec.keys)}"
                    + (", or a limit's named scope" if spec.named_scopes else "")
                    + ("; or one provider or model of the catalog" if spec.catalog else "")
                )
                return Hover(shown, line_start + found.start(1), line_start + found.end(1))
    for found in _FIELD.finditer(line):
        if found.start() <= at <= found.end():
            shown = _field_hover(found.group(1), found.group(2), catalog)
            if shown is not None:
                return Hover(shown, line_start + found.start(), line_start + found.end())
    if catalog is None:
        return None
    for found in _REF.finditer(line):
        if found.start() <= at <= found.end():
            provider, _, name = found.group().partition("/")
            models = catalog.resolve(unquote(provider), unquote(name))
            if models:
                shown = "\n\n---\n\n".join(describe(m) for m in models)
                return Hover(shown, line_start + found.start(), line_start + found.end())
    return None


def _field_hover(root: str, name: str, catalog: Catalog | None) -> str | None:
    if root == "request":
        if name.startswith(METADATA_FIELD + "."):
            return f"`request.{name}`: any scalar, from the request's metadata"
        head, _, rest = name.partition(".")
        if head == TEXT_FIELD and rest in PROMPT_FEATURES:
            return (
                f"`request.{name}`: {_type(PROMPT_FEATURES[rest])}, a prompt feature:"
                f" {PROMPT_FEATURE_DOCS[rest]}"
            )
        if head == FEATURES_FIELD and rest and "." not in rest:
            return f"`request.{name}`: {_plugin_detail(rest)}"
        if name == COMPLEXITY_FIELD:
            weights = "`defaults { complexity(…) }` sets the weights"
            return f"`request.{name}`: {_COMPLEXITY_DOC}; {weights}"
        field = REQUEST_FIELDS.get(name)
        if field is None:
            return None
        note = _FIELD_NOTES.get(name)
        return f"`request.{name}`: {_type(field)}" + ("" if note is None else f"; {note}")
    attr = MODEL_ATTRS.get(name)
    if attr is not None:
        return f"`model.{name}`: {_type(attr)}"
    task = name.removeprefix(QUALITY + ".")
    if task != name and catalog is not None and task in catalog.quality_tasks():
        return f"`model.{name}`: number (0-1) or null, the catalog's `{task}` score"
    return None


def describe(m: Model) -> str:
    """A catalog entry for a person: prices, limits and capabilities (Markdown)."""
    lines = [f"**{m.key}**" + (f" (a deployment of `{m.family}`)" if m.family else "")]
    if m.aliases:
        lines.append("aliases: " + ", ".join(f"`{a}`" for a in m.aliases))
    prices = [f"input {format_money(m.input_price)}", f"output {format_money(m.output_price)}"]
    if m.cached_input_price is not None:
        prices.append(f"cached input {format_money(m.cached_input_price)}")
    lines.append("price per 1M tokens: " + ", ".join(prices))
    for t in m.tiers:
        lines.append(
            f"above {t.above:,} input tokens: input {format_money(t.input)},"
            f" output {format_money(t.output)}"
        )
    if m.image_price:
        lines.append(f"per image: {format_money(m.image_price)}")
    lines.append(f"context window {m.context_window:,} tokens, output up to {m.max_tokens:,}")
    lines.append(
        f"latency p50 {format_duration(m.latency_p50_ms)}, p95 {format_duration(m.latency_p95_ms)}"
    )
    supports = [c for c in CAPABILITIES if c in m.supports]
    lines.append("supports: " + (", ".join(supports) if supports else "none"))
    if m.regions:
        lines.append("regions: " + ", ".join(m.regions))
    if m.quality is not None and m.quality.overall is not None:
        lines.append(f"quality: {m.quality.overall:g}")
    if m.deprecated_at is not None:
        lines.append(f"deprecated: {day(m.deprecated_at)}")
    if m.retires_at is not None:
        lines.append(f"retires: {day(m.retires_at)}")
    return "  \n".join(lines)


# ---------------------------------------------------------------- routes and outline

_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_ROUTE_LINE = re.compile(r"^[ \t]*route[ \t]+([A-Za-z_][\w.\-]*)", re.MULTILINE)


def word_at(text: str, offset: int) -> tuple[int, int, str] | None:
    """The name (the grammar's WORD characters) under or just before `offset`."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    for found in _NAME_CHARS.finditer(line):
        if found.start() <= offset - line_start <= found.end():
            return line_start + found.start(), line_start + found.end(), found.group()
    return None


def _parsed(path: Path, text: str) -> ast.PolicyFile | None:
    try:
        return parse(text, str(path))
    except PolicyError:
        return None


def route_places(path: Path, text: str) -> dict[str, Place]:
    """Where each route of a file is named; a file that does not parse (mid-edit) is read
    line by line for `route NAME`."""
    policy = _parsed(path, text)
    if policy is None:
        return {m.group(1): Place(path, m.start(1), m.end(1)) for m in _ROUTE_LINE.finditer(text)}
    return {
        s.name.text: Place(path, s.name.span.start, s.name.span.end)
        for s in policy.statements
        if isinstance(s, ast.Route)
    }


def definition(text: str, offset: int, texts: Mapping[Path, str]) -> list[Place]:
    """The route declaration a name at `offset` refers to, in any file of the set: route
    names are not referenced inside a policy, so any occurrence of one (in a comment, a
    test, the declaration itself) leads to it."""
    found = word_at(text, offset)
    if found is None:
        return []
    name = found[2]
    return [places[name] for path, t in texts.items() if name in (places := route_places(path, t))]


def symbols(path: Path, text: str) -> list[Symbol]:
    """The outline: the catalog statement, `defaults`, each route, each limit, each
    policy-wide `require` and each `deny` rule."""
    policy = _parsed(path, text)
    if policy is None:
        return []
    out: list[Symbol] = []
    for s in policy.statements:
        if isinstance(s, ast.Route):
            name = s.name
            out.append(Symbol(name.text, "route", s.span.start, s.span.end, *_ends(name.span)))
        elif isinstance(s, ast.Limit):
            label = s.scope.text + (f" {s.key.text}" if s.key is not None else "")
            label = f"shadow {label}" if s.shadow else label
            out.append(Symbol(label, "limit", s.span.start, s.span.end, *_ends(s.scope.span)))
        elif isinstance(s, ast.PolicyRequire):
            label = f"require {' '.join(s.condition.span.text().split())}"
            out.append(Symbol(label, "require", s.span.start, s.span.end, *_ends(s.span)))
        elif isinstance(s, ast.Deny):
            label = f"deny {s.reason.text}"
            out.append(Symbol(label, "deny", s.span.start, s.span.end, *_ends(s.reason.span)))
        elif isinstance(s, ast.Alert):
            label = f"alert {s.name.text}"
            out.append(Symbol(label, "alert", s.span.start, s.span.end, *_ends(s.name.span)))
        elif isinstance(s, ast.Defaults):
            out.append(Symbol("defaults", "defaults", s.span.start, s.span.end, *_ends(s.span)))
        elif isinstance(s, ast.CatalogStmt):
            out.append(
                Symbol(str(s.path.value), "catalog", s.span.start, s.span.end, *_ends(s.path.span))
            )
    return out


def _ends(span: Span) -> tuple[int, int]:
    return span.start, span.end
