"""A Pygments lexer for `.policy` files, registered as the `pygments.lexers` entry point
`policy` (pyproject.toml): `pygmentize -l policy`, and Markdown renderers that use
Pygments colour the docs' ```policy blocks. The only module that imports pygments.

Its reserved words come from the grammar (`engine.editors.words`); a text the parser
accepts yields no `Error` token (tests/test_editors.py tokenises every shipped policy).
"""

from __future__ import annotations

from typing import ClassVar

from pygments.lexer import RegexLexer, bygroups, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

from engine.editors.words import ROOTS
from engine.editors.words import words as language_words

_WORDS = language_words()
_END = r"(?![A-Za-z0-9_.-])"  # a whole word: not the start of `window-x` or `route.x`


class PolicyLexer(RegexLexer):
    name = "policyctl policy"
    url = "https://github.com/policyctl/policyctl"
    aliases: ClassVar[list[str]] = ["policy", "policyctl"]
    filenames: ClassVar[list[str]] = ["*.policy"]
    mimetypes: ClassVar[list[str]] = ["text/x-policyctl-policy"]

    tokens: ClassVar[dict[str, list[tuple[object, ...]]]] = {
        "root": [
            (r"[ \t\f\r\n]+", Whitespace),
            (r"#[^\n]*", Comment.Single),
            (r'"(?:[^"\\\n]|\\.)*"', String.Double),
            (r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?"
             r"(?:Z|[+-][0-9]{2}:[0-9]{2})?)?", Number.Other),  # a date
            (r"\$[0-9][0-9_]*(?:\.[0-9]+)?", Number.Float),  # money
            (r"[0-9][0-9_]*(?:\.[0-9]+)?[A-Za-z%]*", Number),  # with its unit: 2s 80% 200k
            (words(sorted(_WORDS.statements), suffix=_END), Keyword.Declaration),
            (words(sorted(_WORDS.constants), suffix=_END), Keyword.Constant),
            (words(sorted(_WORDS.operators), suffix=_END), Operator.Word),
            (words(sorted(_WORDS.keywords), suffix=_END), Keyword),
            (words(ROOTS, suffix=r"(?=\.)"), Name.Builtin),
            (r"(\.)([A-Za-z_][A-Za-z0-9_]*)", bygroups(Punctuation, Name.Attribute)),
            # names: routes, scopes, strategies, providers and models (`gemini-2.5-flash`)
            (r"[A-Za-z_][A-Za-z0-9_]*(?:[.-]+[A-Za-z0-9_]+)*", Name),
            (r"==|!=|<=|>=|<|>|=", Operator),
            (r"[{}()\[\],:/]", Punctuation),
        ],
    }  # fmt: skip
