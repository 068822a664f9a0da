"""The policy language's reserved words, read from the grammar (`grammar/policy.lark`),
and the token patterns the editors' highlighters share.

Every quoted word of the grammar is a word of the language; the grammar is their one
home, so a keyword added there is highlighted by the Pygments lexer without a change here,
and the TextMate grammar's test compares its lists with these. Standard library only.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from engine.resources import grammar_path

STATEMENTS = frozenset({"catalog", "defaults", "route", "limit", "deny", "alert"})
OPERATORS = frozenset({"and", "or", "not", "in", "contains"})
CONSTANTS = frozenset({"true", "false", "null"})
ROOTS = ("request", "model")  # the records a condition reads: `request.region`

# The token patterns both highlighters use (the grammar's terminals, as editors match them)
END = r"(?![A-Za-z0-9_.-])"  # a whole word: not the start of `window-x` or `route.x`
DATE = (
    r"\b[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
)
MONEY = r"\$[0-9][0-9_]*(?:\.[0-9]+)?"
NUMBER = r"\b[0-9][0-9_]*(?:\.[0-9]+)?[A-Za-z%]*"  # with its unit: 2s 80% 200k
STRING = r'"(?:[^"\\\n]|\\.)*"'
# names: routes, scopes, strategies, providers and models (`gemini-2.5-flash`)
NAME = r"\b[A-Za-z_][A-Za-z0-9_]*(?:[.-]+[A-Za-z0-9_]+)*"
MEMBER = r"(\.)([A-Za-z_][A-Za-z0-9_]*)"  # `.region` after `request`
COMPARISON = "==|!=|<=|>=|<|>|="


@dataclass(frozen=True, slots=True)
class Words:
    statements: frozenset[str]  # `route`, `limit`, …
    operators: frozenset[str]  # `and`, `in`, `contains`, …
    constants: frozenset[str]  # `true`, `false`, `null`
    keywords: frozenset[str]  # every other word: settings, route items, `per`, `burst`, …

    def all(self) -> frozenset[str]:
        return self.statements | self.operators | self.constants | self.keywords


@functools.cache
def words() -> Words:
    text = grammar_path().read_text(encoding="utf-8")
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    found = frozenset(re.findall(r'"([a-z_]+)"', code))
    missing = (STATEMENTS | OPERATORS | CONSTANTS) - found
    if missing:  # the grammar changed: the lists above must follow
        raise RuntimeError(f"the grammar no longer has {sorted(missing)}")
    return Words(STATEMENTS, OPERATORS, CONSTANTS, found - STATEMENTS - OPERATORS - CONSTANTS)
