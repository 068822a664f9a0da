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

from engine.editors.words import (
    COMPARISON,
    DATE,
    END,
    MEMBER,
    MONEY,
    NAME,
    NUMBER,
    ROOTS,
    STRING,
)
from engine.editors.words import words as language_words

_WORDS = language_words()


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
            (STRING, String.Double),
            (DATE, Number.Other),
            (MONEY, Number.Float),
            (NUMBER, Number),
            (words(sorted(_WORDS.statements), prefix=r"\b", suffix=END), Keyword.Declaration),
            (words(sorted(_WORDS.constants), prefix=r"\b", suffix=END), Keyword.Constant),
            (words(sorted(_WORDS.operators), prefix=r"\b", suffix=END), Operator.Word),
            (words(sorted(_WORDS.keywords), prefix=r"\b", suffix=END), Keyword),
            (words(ROOTS, prefix=r"\b", suffix=r"(?=\.)"), Name.Builtin),
            (MEMBER, bygroups(Punctuation, Name.Attribute)),
            (NAME, Name),
            (COMPARISON, Operator),
            (r"[{}()\[\],:/]", Punctuation),
        ],
    }  # fmt: skip
