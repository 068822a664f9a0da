"""The policy set an open document belongs to, checked as `policyctl check` checks it.

A document in a directory is checked with the other `.policy` files of that directory (as
`policyctl check DIR` and the engine load them); the text of an open, unsaved buffer
replaces its file's content. Diagnostics come back per file, so each file's list can be
published (an empty list clears what was shown). No pygls here: plain records.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from engine.catalog.model import Catalog
from engine.diagnostics import Diagnostic, PolicyError
from engine.language import ast
from engine.language.loader import (
    catalog_in_use,
    compile_sources,
    policy_files,
    read_policy_file,
)
from engine.language.parser import parse


@dataclass(frozen=True, slots=True)
class Checked:
    """What checking a document's policy set found."""

    files: tuple[Path, ...]  # the set's files, the document among them
    diagnostics: Mapping[Path, tuple[Diagnostic, ...]]  # every file of `files` has an entry
    catalog: Catalog | None  # the catalog the set uses; None when it cannot be loaded
    texts: Mapping[Path, str]  # each file's text as checked (open buffers as they are)


def set_of(document: Path) -> tuple[Path, ...]:
    """The files checked together with `document`: its directory's `.policy` files (the
    document itself even when it is not saved yet, or has another suffix)."""
    try:
        siblings = policy_files(document.parent) if document.parent.is_dir() else []
    except PolicyError:
        siblings = []
    files = {p.resolve() for p in siblings}
    files.add(document.resolve())
    return tuple(sorted(files))


def _text(path: Path, buffers: Mapping[Path, str]) -> str | None:
    if path in buffers:
        return buffers[path]
    try:
        return read_policy_file(path)[1]
    except PolicyError:
        return None  # left out; `policyctl check` reports it when run on the directory


def texts_of(document: Path, buffers: Mapping[Path, str]) -> dict[Path, str]:
    """The text of each file of `document`'s set: an open buffer's, else the file's."""
    return {p: t for p in set_of(document) if (t := _text(p, buffers)) is not None}


def check_document(document: Path, buffers: Mapping[Path, str]) -> Checked:
    """Check `document` with its siblings; `buffers` maps resolved paths to unsaved text."""
    document = document.resolve()
    texts = texts_of(document, buffers)
    files = tuple(texts)
    names = {str(p): p for p in files}
    try:
        loaded = compile_sources([(str(p), texts[p]) for p in files], list(files))
    except PolicyError as err:
        found: tuple[Diagnostic, ...] = err.diagnostics
        catalog = _catalog(files, texts)
    else:
        found = loaded.warnings
        catalog = loaded.program.catalog
    diagnostics: dict[Path, list[Diagnostic]] = {p: [] for p in files}
    for d in found:
        where = names.get(d.span.source.name if d.span is not None else d.file or "")
        diagnostics.setdefault(where if where is not None else document, []).append(d)
    return Checked(files, {p: tuple(ds) for p, ds in diagnostics.items()}, catalog, texts)


def _catalog(files: tuple[Path, ...], texts: Mapping[Path, str]) -> Catalog | None:
    """The catalog of a set that does not compile, from the files that parse; of a file
    that does not (a buffer mid-edit), its `catalog` lines alone."""
    parsed: list[ast.PolicyFile] = []
    paths: list[Path | None] = []
    for p in files:
        for text in (texts[p], _catalog_lines(texts[p])):
            try:
                parsed.append(parse(text, str(p)))
            except PolicyError:
                continue
            paths.append(p)
            break
    return catalog_in_use(parsed, paths)


_CATALOG_LINE = re.compile(r"^[ \t]*catalog[ \t]")


def _catalog_lines(text: str) -> str:
    """`text` with every line but its `catalog "…"` statements blanked (lines keep their
    numbers, so a diagnostic about the path would still point at it)."""
    return "\n".join(line if _CATALOG_LINE.match(line) else "" for line in text.split("\n"))
