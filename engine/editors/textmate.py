"""The TextMate grammar of grammar/vscode/ (`syntaxes/policy.tmLanguage.json`), built from
the language's words, so that the committed JSON can be checked against the grammar.

`tests/test_editors.py` compares the committed file with `tmlanguage()`; after a keyword
is added to `grammar/policy.lark`, `UPDATE_GOLDEN=1 pytest tests/test_editors.py` rewrites
it. The patterns mirror the Pygments lexer's; the last rule marks any character no other
rule takes as `invalid.illegal.policy`. Standard library only.
"""

from __future__ import annotations

import json

from engine.editors.words import (
    COMPARISON,
    DATE,
    END,
    MEMBER,
    MONEY,
    NAME,
    NUMBER,
    ROOTS,
    words,
)


def _alternatives(names: frozenset[str]) -> str:
    return r"\b(?:" + "|".join(sorted(names)) + ")" + END


def tmlanguage() -> dict[str, object]:
    w = words()
    order = [
        "comment", "string", "date", "money", "number", "statements", "constants",
        "operators", "keywords", "path", "name", "comparison", "punctuation", "illegal",
    ]  # fmt: skip
    return {
        "$schema": "https://raw.githubusercontent.com/martinring/tmlanguage/master/tmlanguage.json",
        "name": "policyctl policy",
        "scopeName": "source.policy",
        "fileTypes": ["policy"],
        "patterns": [{"include": f"#{key}"} for key in order],
        "repository": {
            "comment": {"name": "comment.line.number-sign.policy", "match": "#.*$"},
            "string": {
                "name": "string.quoted.double.policy",
                "begin": '"',
                "end": '"|(?=$)',
                "patterns": [{"name": "constant.character.escape.policy", "match": r"\\."}],
            },
            "date": {"name": "constant.numeric.date.policy", "match": DATE},
            "money": {
                "name": "constant.numeric.money.policy",
                "match": MONEY,
            },
            "number": {
                "name": "constant.numeric.policy",
                "match": NUMBER,
            },
            "statements": {
                "name": "keyword.declaration.policy",
                "match": _alternatives(w.statements),
            },
            "constants": {"name": "constant.language.policy", "match": _alternatives(w.constants)},
            "operators": {
                "name": "keyword.operator.word.policy",
                "match": _alternatives(w.operators),
            },
            "keywords": {"name": "keyword.other.policy", "match": _alternatives(w.keywords)},
            "path": {
                "name": "variable.language.policy",
                "match": r"\b(?:" + "|".join(ROOTS) + r")(?=\.)",
            },
            "name": {
                "patterns": [
                    {
                        "match": MEMBER,
                        "captures": {
                            "1": {"name": "punctuation.accessor.policy"},
                            "2": {"name": "variable.other.member.policy"},
                        },
                    },
                    {
                        "name": "entity.name.policy",
                        "match": NAME,
                    },
                ]
            },
            "comparison": {
                "name": "keyword.operator.comparison.policy",
                "match": COMPARISON,
            },
            "punctuation": {
                "patterns": [
                    {"name": "punctuation.section.block.begin.policy", "match": r"\{"},
                    {"name": "punctuation.section.block.end.policy", "match": r"\}"},
                    {"name": "punctuation.section.parens.policy", "match": r"[()]"},
                    {"name": "punctuation.section.brackets.policy", "match": r"[\[\]]"},
                    {"name": "punctuation.separator.policy", "match": "[,:/]"},
                ]
            },
            "illegal": {"name": "invalid.illegal.policy", "match": r"\S"},
        },
    }


def render() -> str:
    """The file's text, as committed."""
    return json.dumps(tmlanguage(), indent=2) + "\n"
