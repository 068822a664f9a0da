"""Policy text -> AST (and, for the formatter, its comments). The only module that imports lark.

The LALR parser is built once per process. Syntax errors become labelled diagnostics
(`unterminated string`, `unexpected end of file`, what was expected); unit typos in literals
and over-deep nesting are reported with their place, never as a traceback.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
import threading
import unicodedata
from decimal import Decimal
from pathlib import Path
from typing import Any

import lark
from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from engine.diagnostics import (
    BIDI_CONTROLS,
    Diagnostic,
    Note,
    PolicyError,
    Source,
    Span,
    did_you_mean,
)
from engine.language import ast
from engine.language.ast import Unit
from engine.language.parse_cache import MAX_SOURCE_BYTES as MAX_SOURCE_BYTES
from engine.language.parse_cache import describe_size as describe_size
from engine.language.parse_cache import parsed
from engine.resources import cache_dir, grammar_path
from engine.units import (
    UNIT_HELP,
    TooManyDigitsError,
    UnitError,
    read_date,
    read_money,
    read_number,
)

MAX_NESTING = 64  # nested `not`, lists, `and`/`or` groups and comparisons (parentheses alone
# build no nodes, so any depth of them is fine)

# What a person calls the grammar's terminals, for "expected …" messages.
_TERMINAL_NAMES = {
    "WORD": "a name",
    "IDENT": "a name",
    "NUMBER": "a number",
    "MONEY": "an amount like `$0.01`",
    "STRING": "a string",
    "DATE": "a date like `2026-12-31`",
    "COMP_OP": "a comparison",
    "SETTING_KEY": "a setting",
    "LIMIT_UNIT": "`requests`, `tokens` or `spend`",
    "LBRACE": "`{`",
    "RBRACE": "`}`",
    "LPAR": "`(`",
    "RPAR": "`)`",
    "LSQB": "`[`",
    "RSQB": "`]`",
    "COMMA": "`,`",
    "COLON": "`:`",
    "SLASH": "`/`",
    "DOT": "`.`",
    "EQUAL": "`=`",
    "IN": "`in`",
    "NOT_IN": "`not in`",
    "CONTAINS": "`contains`",
    "_NOT": "`not`",
    "_AND": "`and`",
    "_OR": "`or`",
    "_WHEN": "`when`",
    "TRUE": "`true`",
    "FALSE": "`false`",
    "NULL": "`null`",
    "$END": "the end of the file",
}
_STATEMENT_KEYWORDS = ("catalog", "defaults", "route", "limit", "require", "deny", "alert")
# settings, which `defaults` and routes take, and the items only a route takes
_SETTINGS = (
    "strategy", "min_success_rate", "min_samples", "window", "min_quality", "fallback",
    "cooldown", "on_store_error", "degraded", "explore", "affinity", "wait",
)  # fmt: skip
_ROUTE_ONLY = ("prefer", "exclude", "require", "split", "shadow")
# words a misspelling of which is most likely meant (statements, settings, route items)
_KEYWORDS = (
    *_STATEMENT_KEYWORDS, *_SETTINGS, "prefer", "exclude", "when", "burst", "until", "per",
    "weight", "budget", "over",
)  # fmt: skip


_LARK_OPTIONS = {
    "parser": "lalr",
    "lexer": "contextual",
    "propagate_positions": True,
    "maybe_placeholders": True,
}

# Where the lexer puts the comments it reads, while `parse_with_comments` runs on this
# thread (None: nobody is collecting, the usual case).
_comment_sink = threading.local()
_COMMENT_IN = re.compile(r"#[^\n]*")  # a comment inside a `not # …\n in` token


def _on_comment(tok: Token) -> Token:
    sink: list[Token] | None = getattr(_comment_sink, "tokens", None)
    if sink is not None:
        sink.append(tok)
    return tok


def _on_not_in(tok: Token) -> Token:
    sink: list[Token] | None = getattr(_comment_sink, "tokens", None)
    if sink is not None and "#" in tok:
        start = tok.start_pos or 0
        for found in _COMMENT_IN.finditer(str(tok)):
            sink.append(Token("COMMENT", found.group(), start_pos=start + found.start(),
                              end_pos=start + found.end()))  # fmt: skip
    return tok


@functools.cache
def _lark() -> Lark:
    """The parser; its LALR tables come from the cache directory when a run before this one
    built them (about 50 ms saved on every `policyctl` start)."""
    grammar = grammar_path().read_text(encoding="utf-8")
    cache = _parser_cache(grammar)
    return Lark(
        grammar,
        cache=str(cache) if cache else False,
        lexer_callbacks={"COMMENT": _on_comment, "NOT_IN": _on_not_in},
        **_LARK_OPTIONS,
    )


def _parser_cache(grammar: str) -> Path | None:
    """`cache_dir()/parser-<hash>.pickle`, the hash over the grammar, the options, Lark's
    and Python's versions (Lark checks its own hash on load and rebuilds on any mismatch
    or damage); None when there is no cache directory or it cannot be made (0700: the
    file is a pickle, so only its owner may write there)."""
    directory = cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    key = repr((grammar, sorted(_LARK_OPTIONS.items()), lark.__version__, sys.version_info[:2]))
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]
    return directory / f"parser-{digest}.pickle"


def _describe(terminal: str) -> str:
    if terminal in _TERMINAL_NAMES:
        return _TERMINAL_NAMES[terminal]
    try:
        pattern = _lark().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    if pattern.type == "str":
        return f"`{pattern.value}`"
    return terminal.lower()


def _expected(expected: set[str]) -> str:
    names = sorted({_describe(t) for t in expected if not t.startswith("__ANON")})
    if not names:
        return ""
    if len(names) > 10:
        names = [*names[:10], "…"]
    return "expected " + ", ".join(names)


class _Builder(Transformer[Token, Any]):
    """Lark tree -> AST nodes. Literal errors are collected, not raised."""

    def __init__(self, source: Source) -> None:
        super().__init__(visit_tokens=False)
        self.source = source
        self.errors: list[Diagnostic] = []

    # helpers ---------------------------------------------------------------

    def _span_tok(self, tok: Token) -> Span:
        assert tok.start_pos is not None and tok.end_pos is not None
        return Span(self.source, tok.start_pos, tok.end_pos)

    def _span_meta(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span(self.source, 0, 0)
        return Span(self.source, meta.start_pos, meta.end_pos)

    def _name(self, tok: Token) -> ast.Name:
        if tok.type == "STRING":  # a quoted model id: `bedrock/"…-v1:0"`
            return ast.Name(self._string(tok), self._span_tok(tok))
        return ast.Name(str(tok), self._span_tok(tok))

    def _string(self, tok: Token) -> str:
        """A STRING token's value; an escape the language has not (`\\u00e9`, `\\d`, a
        Windows path's `\\m`) is E0015, not the character after the backslash."""
        text = str(tok)
        for found in _ESCAPE.finditer(text, 1, len(text) - 1):
            if found.group(1) not in _ESCAPES:
                start = (tok.start_pos or 0) + found.start()
                self.errors.append(
                    Diagnostic(
                        "E0015",
                        f"unknown escape `{found.group()}` in a string",
                        Span(self.source, start, start + len(found.group())),
                        'a string knows `\\"`, `\\\\`, `\\n` and `\\t`: write a backslash'
                        " as `\\\\`",
                    )
                )
        return unquote(text)

    def _literal(self, tok: Token | ast.Literal) -> ast.Literal:
        if isinstance(tok, ast.Literal):
            return tok
        span = self._span_tok(tok)
        text = str(tok)
        kind = tok.type
        if kind == "NUMBER":
            try:
                value, unit = read_number(text)
            except UnitError as err:
                help_text = err.help if isinstance(err, TooManyDigitsError) else UNIT_HELP
                self.errors.append(Diagnostic("E0102", str(err), span, help_text))
                return ast.Literal(0.0, Unit.COUNT, span, text)
            return ast.Literal(value, unit, span, text)
        if kind == "MONEY":
            try:
                return ast.Literal(read_money(text), Unit.MONEY, span, text)
            except TooManyDigitsError as err:
                self.errors.append(Diagnostic("E0102", str(err), span, err.help))
                return ast.Literal(0.0, Unit.MONEY, span, text)
        if kind == "STRING":
            return ast.Literal(self._string(tok), Unit.STRING, span, text)
        if kind in ("TRUE", "FALSE"):
            return ast.Literal(kind == "TRUE", Unit.BOOL, span, text)
        if kind == "NULL":
            return ast.Literal(None, Unit.NULL, span, text)
        if kind == "DATE":
            try:
                return ast.Literal(read_date(text), Unit.DATE, span, text)
            except ValueError:
                self.errors.append(
                    Diagnostic(
                        "E0103",
                        f"`{text}` is not a valid date",
                        span,
                        "write a calendar date like `2026-12-31` or `2026-12-31T18:00Z`",
                    )
                )
                return ast.Literal(0.0, Unit.DATE, span, text)
        raise AssertionError(f"not a literal token: {kind}")  # pragma: no cover

    # statements ------------------------------------------------------------

    @v_args(meta=True)
    def start(self, meta: Any, children: list[Any]) -> tuple[Any, ...]:
        return tuple(children)

    @v_args(meta=True)
    def catalog_stmt(self, meta: Any, children: list[Any]) -> ast.CatalogStmt:
        return ast.CatalogStmt(self._literal(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def defaults_block(self, meta: Any, children: list[Any]) -> ast.Defaults:
        return ast.Defaults(tuple(children), self._span_meta(meta))

    @v_args(meta=True)
    def route_block(self, meta: Any, children: list[Any]) -> ast.Route:
        name, when, *items = children
        when = None if when is None else self._expr(when)
        return ast.Route(self._name(name), when, tuple(items), self._span_meta(meta))

    @v_args(meta=True)
    def strategy_setting(self, meta: Any, children: list[Any]) -> ast.StrategySetting:
        name, *factors = children
        factors = [f for f in factors if f is not None]
        return ast.StrategySetting(self._name(name), tuple(factors), self._span_meta(meta))

    @v_args(meta=True)
    def factor(self, meta: Any, children: list[Any]) -> ast.Factor:
        name, weight = children
        return ast.Factor(self._name(name), self._literal(weight), self._span_meta(meta))

    @v_args(meta=True)
    def value_setting(self, meta: Any, children: list[Any]) -> ast.ValueSetting:
        key, value = children
        return ast.ValueSetting(self._name(key), self._literal(value), self._span_meta(meta))

    @v_args(meta=True)
    def fallback_setting(self, meta: Any, children: list[Any]) -> ast.FallbackSetting:
        return ast.FallbackSetting(tuple(children), self._span_meta(meta))

    @v_args(meta=True)
    def cooldown_setting(self, meta: Any, children: list[Any]) -> ast.CooldownSetting:
        failures, _word, duration = children
        return ast.CooldownSetting(
            self._literal(failures), self._literal(duration), self._span_meta(meta)
        )

    @v_args(meta=True)
    def store_error_setting(self, meta: Any, children: list[Any]) -> ast.StoreErrorSetting:
        return ast.StoreErrorSetting(self._name(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def degraded_setting(self, meta: Any, children: list[Any]) -> ast.DegradedSetting:
        return ast.DegradedSetting(self._expr(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def explore_setting(self, meta: Any, children: list[Any]) -> ast.ExploreSetting:
        share, budget, window = children
        return ast.ExploreSetting(
            self._literal(share),
            None if budget is None else self._literal(budget),
            None if window is None else self._literal(window),
            self._span_meta(meta),
        )

    @v_args(meta=True)
    def wait_setting(self, meta: Any, children: list[Any]) -> ast.WaitSetting:
        return ast.WaitSetting(self._literal(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def complexity_setting(self, meta: Any, children: list[Any]) -> ast.ComplexitySetting:
        return ast.ComplexitySetting(tuple(children), self._span_meta(meta))

    @v_args(meta=True)
    def affinity_setting(self, meta: Any, children: list[Any]) -> ast.AffinitySetting:
        key, duration = children
        return ast.AffinitySetting(key, self._literal(duration), self._span_meta(meta))

    @v_args(meta=True)
    def prefer(self, meta: Any, children: list[Any]) -> ast.Prefer:
        ref, weight = children
        lit = None if weight is None else self._literal(weight)
        return ast.Prefer(ref, lit, self._span_meta(meta))

    @v_args(meta=True)
    def exclude(self, meta: Any, children: list[Any]) -> ast.Exclude:
        return ast.Exclude(tuple(children), self._span_meta(meta))

    @v_args(meta=True)
    def require(self, meta: Any, children: list[Any]) -> ast.Require:
        return ast.Require(self._expr(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def policy_require(self, meta: Any, children: list[Any]) -> ast.PolicyRequire:
        condition, when = children
        return ast.PolicyRequire(
            self._expr(condition),
            None if when is None else self._expr(when),
            self._span_meta(meta),
        )

    @v_args(meta=True)
    def deny_stmt(self, meta: Any, children: list[Any]) -> ast.Deny:
        reason, when = children
        return ast.Deny(
            self._literal(reason),
            None if when is None else self._expr(when),
            self._span_meta(meta),
        )

    @v_args(meta=True)
    def split(self, meta: Any, children: list[Any]) -> ast.Split:
        key, *arms = children
        return ast.Split(key, tuple(arms), self._span_meta(meta))

    @v_args(meta=True)
    def shadow(self, meta: Any, children: list[Any]) -> ast.Shadow:
        return ast.Shadow(self._name(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def arm(self, meta: Any, children: list[Any]) -> ast.Arm:
        share, route = children
        return ast.Arm(self._literal(share), self._name(route), self._span_meta(meta))

    @v_args(meta=True)
    def model_ref(self, meta: Any, children: list[Any]) -> ast.ModelRef:
        provider, model = children
        return ast.ModelRef(
            self._name(provider),
            None if model is None else self._name(model),
            self._span_meta(meta),
        )

    @v_args(meta=True)
    def limit_stmt(self, meta: Any, children: list[Any]) -> ast.Limit:
        shadow, scope, key_expr, key, unit, amount, window, burst, wait, when, until = children
        return ast.Limit(
            scope=self._name(scope),
            key_expr=key_expr,
            key=None if key is None else self._literal(key),
            unit=None if unit is None else self._name(unit),
            amount=self._literal(amount),
            window=self._literal(window),
            burst=None if burst is None else self._literal(burst),
            when=None if when is None else self._expr(when),
            until=None if until is None else self._literal(until),
            span=self._span_meta(meta),
            shadow=shadow is not None,
            wait=None if wait is None else self._literal(wait),
        )

    def wait_clause(self, children: list[Any]) -> Any:
        return children[0]  # the NUMBER token of `wait up to D`

    def shadow_mark(self, children: list[Any]) -> bool:
        return True

    @v_args(meta=True)
    def inflight_stmt(self, meta: Any, children: list[Any]) -> ast.Limit:
        shadow, scope, key_expr, key, unit, amount, lease, window, burst, wait, when, until = (
            children
        )
        return ast.Limit(
            scope=self._name(scope),
            key_expr=key_expr,
            key=None if key is None else self._literal(key),
            unit=self._name(unit),
            amount=self._literal(amount),
            window=None if window is None else self._literal(window),
            burst=None if burst is None else self._literal(burst),
            when=None if when is None else self._expr(when),
            until=None if until is None else self._literal(until),
            span=self._span_meta(meta),
            lease=None if lease is None else self._literal(lease),
            shadow=shadow is not None,
            wait=None if wait is None else self._literal(wait),
        )

    @v_args(meta=True)
    def alert_stmt(self, meta: Any, children: list[Any]) -> ast.Alert:
        name, signal, op, threshold, window, hold, webhook = children
        word, length = (None, None) if window is None else window
        return ast.Alert(
            name=self._literal(name),
            signal=signal,
            op=str(op),
            op_span=self._span_tok(op),
            threshold=self._literal(threshold),
            window_word=word,
            window=None if length is None else self._literal(length),
            hold=None if hold is None else self._literal(hold),
            webhook=None if webhook is None else self._literal(webhook),
            span=self._span_meta(meta),
        )

    @v_args(meta=True)
    def signal(self, meta: Any, children: list[Any]) -> ast.Signal:
        name, subject = children
        return ast.Signal(name, subject, self._span_meta(meta))

    def per_window(self, children: list[Any]) -> tuple[str, Token]:
        return ("per", children[0])

    def over_window(self, children: list[Any]) -> tuple[str, Token]:
        return ("over", children[0])

    def key_expr(self, children: list[Any]) -> ast.Path:
        return children[0]

    # expressions -----------------------------------------------------------

    @v_args(meta=True)
    def or_expr(self, meta: Any, children: list[Any]) -> ast.BoolOp:
        return ast.BoolOp("or", tuple(self._expr(c) for c in children), self._span_meta(meta))

    @v_args(meta=True)
    def and_expr(self, meta: Any, children: list[Any]) -> ast.BoolOp:
        return ast.BoolOp("and", tuple(self._expr(c) for c in children), self._span_meta(meta))

    @v_args(meta=True)
    def not_(self, meta: Any, children: list[Any]) -> ast.Not:
        return ast.Not(self._expr(children[0]), self._span_meta(meta))

    @v_args(meta=True)
    def compare(self, meta: Any, children: list[Any]) -> ast.Compare:
        left, op, right = children
        op_text = "not in" if op.type == "NOT_IN" else str(op)
        return ast.Compare(
            op_text, self._expr(left), self._expr(right), self._span_meta(meta), self._span_tok(op)
        )

    @v_args(meta=True)
    def path(self, meta: Any, children: list[Token]) -> ast.Path:
        return ast.Path(tuple(str(c) for c in children), self._span_meta(meta))

    @v_args(meta=True)
    def list(self, meta: Any, children: list[Any]) -> ast.ListLit:
        items = tuple(self._expr(c) for c in children if c is not None)
        return ast.ListLit(items, self._span_meta(meta))

    def _expr(self, node: Any) -> ast.Expr:
        if isinstance(node, Token):
            return self._literal(node)
        return node

    def __default__(self, data: Any, children: list[Any], meta: Any) -> Any:  # pragma: no cover
        raise AssertionError(f"unhandled grammar rule {data}")


_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}


_ESCAPE = re.compile(r"\\(.)")


def unquote(text: str) -> str:
    """A quoted string's value as the parser reads it (`\\"`, `\\\\`, `\\n`, `\\t`; an
    unknown escape, E0015 to the parser, gives the character after the backslash); a bare
    name (`gpt-4o`) is itself. The one reading of a string: the LSP's hover uses it too."""
    if len(text) < 2 or not text[0] == text[-1] == '"':
        return text
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), text[1:-1])


def _check_size(source: Source) -> Diagnostic | None:
    size = len(source.text.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        return Diagnostic(
            "E0001",
            f"policy file is too large ({describe_size(size)}; the limit is 1 MiB)",
            None,
            None,
            file=source.name,
        )
    return None


_BIDI = re.compile("[" + "".join(sorted(BIDI_CONTROLS)) + "]")
MAX_BIDI_REPORTED = 20  # E0016s for one file; the last says how many more it holds


def _check_direction(source: Source) -> list[Diagnostic]:
    """E0016 at each text direction control (`\\u202e`) anywhere in the file: a comment, a
    string or the code. The text an operator reads would differ from what the parser reads
    ("Trojan Source"), so the file is refused before it is parsed."""
    if not any(ch in source.text for ch in BIDI_CONTROLS):  # (none in ASCII text, at once)
        return []
    found = [m.start() for m in _BIDI.finditer(source.text)]
    errors: list[Diagnostic] = []
    for n, pos in enumerate(found[:MAX_BIDI_REPORTED], 1):
        ch = source.text[pos]
        hint = "remove it; write the text without direction overrides"
        if n == MAX_BIDI_REPORTED and len(found) > n:
            hint += f" (this file holds {len(found) - n:,} more)"
        errors.append(
            Diagnostic(
                "E0016",
                f"text direction control character `\\u{ord(ch):04x}` ({unicodedata.name(ch)})",
                Span(source, pos, pos + 1),
                hint,
            )
        )
    return errors


def _check_depth(tree: Tree[Token], source: Source) -> Diagnostic | None:
    """Iteratively find nesting deeper than MAX_NESTING (lark trees can be that deep)."""
    stack: list[tuple[Tree[Token], int]] = [(tree, 0)]
    nesting = {"not_", "list", "or_expr", "and_expr", "compare"}
    while stack:
        node, depth = stack.pop()
        if node.data in nesting:
            depth += 1
            if depth > MAX_NESTING:
                start = node.meta.start_pos if not node.meta.empty else 0
                return Diagnostic(
                    "E0002",
                    f"expression is nested too deeply (more than {MAX_NESTING} levels)",
                    Span(source, start, start + 1),
                    "split the condition into simpler parts",
                )
        for child in node.children:
            if isinstance(child, Tree):
                stack.append((child, depth))
    return None


_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
_QUOTE_NAME = (
    "a provider or model name with `:` or `@` is quoted, as the catalog spells it:"
    ' `"azure:eu"/gpt-4o`, `vertex_ai/"claude-sonnet-4-5@20250929"`'
)


@functools.cache
def _word() -> re.Pattern[str]:
    """The grammar's WORD: a provider or model name written bare in a model reference."""
    return re.compile(_lark().get_terminal("WORD").pattern.to_regexp())


def written(name: str) -> str:
    """A provider or model name as a policy writes it in a model reference: bare when it is
    a WORD, else quoted (`"azure:eu"`, `"us.anthropic.claude-3-haiku-20240307-v1:0"`)."""
    if _word().fullmatch(name):
        return name
    for raw, escaped in _QUOTED:
        name = name.replace(raw, escaped)
    return f'"{name}"'


# how `written` escapes a name it quotes (what `unquote` reads back); backslash first
_QUOTED = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\t", "\\t"))


def reference(provider: str, model: str | None = None) -> str:
    """`provider/model` as a policy writes it (each part bare or quoted)."""
    return written(provider) if model is None else f"{written(provider)}/{written(model)}"


# Characters other languages use where this one has a word (`&&` for `and`).
_FOREIGN = {"&": "and", "|": "or", "!": "not"}
_STRING_REST = re.compile(r'(?:[^"\\\n]|\\.)*"?')  # a string after its opening `"`


def _open_braces(text: str, end: int) -> list[int]:
    """The offsets of the `{` not yet closed at `end` (strings and comments skipped)."""
    opened: list[int] = []
    i = 0
    while i < end:
        ch = text[i]
        if ch == "#":
            i = text.find("\n", i)
            if i < 0:
                break
        elif ch == '"':
            i = _STRING_REST.match(text, i + 1).end() - 1  # type: ignore[union-attr]
        elif ch == "{":
            opened.append(i)
        elif ch == "}" and opened:
            opened.pop()
        i += 1
    return opened


def _enclosing(source: Source, at: int) -> str | None:
    """The block `at` is inside, `defaults` or `route`, or None outside any block."""
    braces = _open_braces(source.text, at)
    if not braces:
        return None
    return "defaults" if source.text[: braces[-1]].rstrip().endswith("defaults") else "route"


def _unclosed(source: Source, at: int, expected: set[str]) -> tuple[Note, ...]:
    """A note at the `{` that a block missing its `}` opened, when that is the error."""
    if "RBRACE" not in expected:
        return ()
    braces = _open_braces(source.text, at)
    if not braces:
        return ()
    brace = braces[-1]
    line, col = source.line_col(brace)
    return (Note(Span(source, brace, brace + 1), f"this `{{` at {line}:{col} is not closed"),)


def _misplaced(word: str, inside: str | None) -> str | None:
    """The help for a route item or a setting written where it does not belong."""
    if word == "require" and inside == "defaults":
        return (
            "`require` belongs in a route (`route NAME when … { require … }`) or outside any"
            " block, for the whole policy; `defaults` takes settings only"
        )
    if word in _ROUTE_ONLY and inside != "route":
        where = "in `defaults`" if inside == "defaults" else "outside a block"
        return (
            f"`{word}` belongs in a route, not {where}: `route NAME when … {{ {word} … }}`;"
            " `defaults` takes settings only"
        )
    if word in _SETTINGS and inside is None:
        return f"`{word}` is a setting: it goes inside `defaults {{ … }}` or a route's block"
    return None


_COMMENT = "comments start with `#` and run to the end of the line: `# …`, not `//` or `/*`"


def _character_hint(ch: str, source: Source, pos: int) -> str | None:
    """What a person who typed this character most likely meant, if it is a known habit."""
    after = source.text[pos + 1 : pos + 2]
    if ch in _FOREIGN and not (ch == "!" and after == "="):
        return f"write `{_FOREIGN[ch]}`: conditions join with `and`, `or` and `not`"
    if ch == "'":
        return 'strings take double quotes: `"eu"`'
    if ch == ";":
        return "a statement or setting ends at the line break: drop the `;`"
    if ch == "/" and after in ("/", "*"):
        return _COMMENT
    return None


def _equals_hint(source: Source, tok: Token) -> str:
    """`=` where a comparison was expected: `=>`, `=<` or `===` or a lone `=`."""
    pos = tok.start_pos or 0
    after = source.text[pos + 1 : pos + 2]
    if after in ("<", ">"):
        return f"did you mean `{after}=`?"
    return "use `==` to compare (`=` only names a limit's key: `limit team = request.…`)"


def _word_before(source: Source, at: int) -> str:
    found = re.search(r"([A-Za-z_]+)\s*$", source.text[:at])
    return found.group(1) if found else ""


# a number in exponent notation (`1e5`, `$1e-6`), which the lexer reads as `1e` and `5`
_EXPONENT = re.compile(r"(\$?)(\d[\d_]*(?:\.\d+)?)[eE]([+-]?\d+)")


def _exponent_hint(source: Source, pos: int) -> str | None:
    """The number in exponent notation around `pos`, if the error is in one, written out."""
    line_start = source.text.rfind("\n", 0, pos) + 1
    for found in _EXPONENT.finditer(source.text, line_start, pos + 32):
        if found.start() < pos < found.end():
            dollar, mantissa, exponent = found.groups()
            plain = ""
            if len(exponent.lstrip("+-")) <= 2:  # else past what a number may hold anyway
                plain = f"{Decimal(mantissa.replace('_', '')).scaleb(int(exponent)):f}"
                if "." in plain:
                    plain = plain.rstrip("0").rstrip(".")
            if not plain or len(plain) > 20:
                return "numbers have no exponent: write them out (`100000`, `100k`, `0.001`)"
            return f"numbers have no exponent: write `{found.group()}` as `{dollar}{plain}`"
    return None


def _syntax_error(err: UnexpectedInput, source: Source) -> Diagnostic:
    if isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream
        ch = source.text[pos] if pos < len(source.text) else ""
        span = Span(source, pos, pos + 1)
        if ch == '"':
            end = source.text.find("\n", pos)
            end = len(source.text) if end < 0 else end
            return Diagnostic(
                "E0010",
                "unterminated string",
                Span(source, pos, end),
                'close the string with `"` on the same line',
            )
        if ch == "$":
            return Diagnostic(
                "E0011", "expected an amount after `$`", span, "write money like `$0.001`"
            )
        shown = ch if ch.isprintable() else repr(ch)
        expected = _expected(set(err.allowed or ()))
        if ch == "@" and pos > 0 and _NAME_CHAR.match(source.text[pos - 1]):
            expected = _QUOTE_NAME
        expected = _character_hint(ch, source, pos) or _exponent_hint(source, pos) or expected
        return Diagnostic("E0012", f"unexpected character `{shown}`", span, expected or None)
    if isinstance(err, UnexpectedEOF) or (
        isinstance(err, UnexpectedToken) and err.token.type == "$END"
    ):
        return _end_of_file(source, set(err.expected))
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    span = Span(source, tok.start_pos or 0, tok.end_pos or (tok.start_pos or 0) + 1)
    expected = set(err.expected)
    hint = _expected(expected)
    message = f"unexpected `{tok}`"
    notes: tuple[Note, ...] = ()
    if (
        str(tok) in _STATEMENT_KEYWORDS
        and "RBRACE" in expected
        and not (str(tok) == "require" and _enclosing(source, span.start) == "defaults")
    ):
        notes = _unclosed(source, span.start, expected)
        hint = f"close the block with `}}` before this `{tok}`"
    elif (exponent := _exponent_hint(source, span.start)) is not None:
        hint = exponent
    elif (
        str(tok) == "when"
        and _enclosing(source, span.start) == "route"
        and re.search(r"(?:^|[\n{])[ \t]*require\b[^{}\n]*\Z", source.text[: span.start])
    ):
        hint = (
            "a route's `require` has no `when`: the route's own `when` picks its requests;"
            " a `require … when …` for every route goes outside any block"
        )
    elif str(tok) == "=" and ("COMP_OP" in expected or source.text[span.start - 1] == "="):
        hint = _equals_hint(source, tok)
    elif (misplaced := _misplaced(str(tok), inside := _enclosing(source, span.start))) is not None:
        hint = misplaced
        if inside == "defaults":
            message = f"unexpected `{tok}` in `defaults`"
    elif _word_before(source, span.start) == "shadow" and str(tok) in ("route", "limit"):
        hint = (
            "`shadow route NAME` goes inside a route; outside, `shadow` marks a limit:"
            " `shadow limit user 100 per 1m`"
            if str(tok) == "route"
            else "`shadow limit …` is a statement of its own, outside any block"
        )
    elif str(tok) == "/" and source.text[span.end : span.end + 1] in ("/", "*"):
        hint = _COMMENT
    elif str(tok) in ("if", "where") and "_WHEN" in expected:
        hint = f"a condition follows `when`, not `{tok}`: `route NAME when … {{`"
    elif "NUMBER" in expected and _word_before(source, span.start) == "per":
        hint = "a limit's window is a duration: `per 1m`, `per 1h` or `per 1d`"
    elif tok.type == "COLON" and (key := _word_before(source, span.start)) in _SETTINGS:
        rest = source.text[span.end :].split("\n", 1)[0].split("#", 1)[0].strip() or "…"
        hint = f"write `{key} {rest}`: a setting's value follows it with no `:`"
    elif tok.type == "NUMBER" and any(e in expected for e in ("IDENT", "WORD")):
        hint = "names start with a letter or `_`"
        if "STRING" in expected and "WORD" in expected:  # a model reference
            hint += '; quote a provider or model name that does not: `"01-ai"/yi-large`'
    elif tok.type == "COLON" and "COLON" not in expected:
        hint = _QUOTE_NAME
    elif tok.type in ("IDENT", "WORD") and (guess := did_you_mean(str(tok), _KEYWORDS)):
        hint = f"did you mean `{guess}`?"
    return Diagnostic("E0014", message, span, hint or None, notes=notes)


def _end_of_file(source: Source, expected: set[str]) -> Diagnostic:
    span = source.end_span()
    notes = _unclosed(source, len(source.text), expected)
    hint = "close the block with `}`" if notes else _expected(expected)
    return Diagnostic("E0013", "unexpected end of file", span, hint, notes=notes)


def parse(text: str, name: str = "<policy>", *, cache: bool = False) -> ast.PolicyFile:
    """Parse one policy file. Raises PolicyError with every diagnostic found.

    With `cache` (the loader, for files read from disk) a file parsed without errors is
    kept in the cache directory, keyed by its name, its text and the parser's code: the
    next process to load the same file reads its AST back instead of building the LALR
    parser and parsing (a `policyctl eval` starts faster). `MAX_CACHED` are kept."""
    if not cache or getattr(_comment_sink, "tokens", None) is not None:
        return _parse(text, name)  # (the formatter reads the tokens as they are lexed)
    return parsed(text, name, _parse)


def _parse(text: str, name: str) -> ast.PolicyFile:
    source = Source(name, text)
    too_big = _check_size(source)
    if too_big is not None:
        raise PolicyError([too_big])
    if misdirected := _check_direction(source):
        raise PolicyError(misdirected)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise PolicyError([_syntax_error(err, source)]) from None
    too_deep = _check_depth(tree, source)
    if too_deep is not None:
        raise PolicyError([too_deep])
    builder = _Builder(source)
    statements = builder.transform(tree)
    if builder.errors:
        raise PolicyError(builder.errors)
    return ast.PolicyFile(name, statements, Span(source, 0, len(text)))


def parse_with_comments(
    text: str, name: str = "<policy>"
) -> tuple[ast.PolicyFile, tuple[ast.Comment, ...]]:
    """`parse`, and the file's comments in source order (for the formatter)."""
    tokens: list[Token] = []
    _comment_sink.tokens = tokens
    try:
        policy = parse(text, name)
    finally:
        _comment_sink.tokens = None
    source = policy.span.source
    by_start = {t.start_pos or 0: t for t in tokens}  # each once, should a token be re-read
    return policy, tuple(
        ast.Comment(
            str(by_start[start]).rstrip(), Span(source, start, by_start[start].end_pos or start)
        )
        for start in sorted(by_start)
    )
