"""The parse of a policy file kept in the cache directory, read back without Lark.

`parsed(text, name, build)` returns the cached AST of this very text (keyed by its name,
its text and the parser's code), else `build(text, name)`'s, which it then keeps. The
loader passes a `build` that imports `engine.language.parser` (and so Lark) only on a
miss: a `policyctl eval` on an unchanged policy never imports the parser.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.language import ast
from engine.resources import cache_file, code_digest, read_cached, write_cached

MAX_SOURCE_BYTES = 1 << 20  # 1 MiB per policy file

# The modules whose code decides what `parse` returns (with the grammar): a parse cached
# by another version of any of them is not read back.
_PARSE_CODE = ("language/parser.py", "language/ast.py", "diagnostics.py", "units.py",
               "vocabulary.py")  # fmt: skip


def describe_size(size: int) -> str:
    mib = size / (1 << 20)
    return f"{mib:.1f} MiB" if mib >= 1.05 else f"{size:,} bytes"


def _read_parsed(text: str, name: str, path: object) -> ast.PolicyFile | None:
    """The cached parse of this very text, or None (missing, damaged, or not this file's)."""
    policy = read_cached(path)  # type: ignore[arg-type]
    if (
        not isinstance(policy, ast.PolicyFile)
        or policy.span.source.text != text
        or policy.span.source.name != name
    ):
        return None
    return policy


def parsed(text: str, name: str, build: Callable[[str, str], ast.PolicyFile]) -> ast.PolicyFile:
    """The cached parse of `text` named `name`, else `build(text, name)` (kept when it
    parsed without errors: `build` raises PolicyError otherwise). `MAX_CACHED` are kept."""
    path = cache_file(
        "parsed",
        code_digest(*_PARSE_CODE),
        name.encode("utf-8", "surrogatepass"),
        text.encode("utf-8", "surrogatepass"),
    )
    if path is not None:
        cached = _read_parsed(text, name, path)
        if cached is not None:
            return cached
    policy = build(text, name)
    if path is not None:
        write_cached(path, policy)
    return policy
