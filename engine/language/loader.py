"""Read a policy set from disk (or text), parse, check and compile it into a Program.

A policy set is one `.policy` file, or a directory whose `*.policy` files are taken in
name order. The catalog is the file named by a `catalog "…"` statement (relative to the
policy file), else the packaged default catalog.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engine.catalog.model import MAX_CATALOG_BYTES, Catalog, CatalogError
from engine.diagnostics import Diagnostic, PolicyError, not_utf8
from engine.language import ast
from engine.language.analysis import analyse
from engine.language.checker import check
from engine.language.compiler import compile_program
from engine.language.parse_cache import MAX_SOURCE_BYTES, describe_size, parsed
from engine.language.program import Program
from engine.resources import (
    cache_file,
    code_digest,
    default_catalog_path,
    default_policy_dir,
    read_cached,
    write_cached,
)


@dataclass(frozen=True, slots=True)
class Loaded:
    program: Program
    warnings: tuple[Diagnostic, ...]
    files: tuple[ast.PolicyFile, ...] = ()  # the parsed files, in load order


def policy_files(path: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """A file, or a directory's `*.policy` files in name order (`recursive`: at any depth)."""
    p = Path(path)
    if p.is_dir():
        found = p.rglob("*.policy") if recursive else p.iterdir()
        files = sorted(f for f in found if f.suffix == ".policy" and f.is_file())
        if not files:
            raise PolicyError(
                [Diagnostic("E0003", "no `.policy` files in this directory", None, file=str(p))]
            )
        return files
    if not p.exists():
        raise PolicyError([Diagnostic("E0004", "no such file or directory", None, file=str(p))])
    return [p]


def _read(path: Path) -> str:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would hang the read, a device never end
            raise OSError(0, "not a regular file")
        size = info.st_size
        if size > MAX_SOURCE_BYTES:
            raise PolicyError(
                [
                    Diagnostic(
                        "E0001",
                        f"policy file is too large ({describe_size(size)}; the limit is 1 MiB)",
                        None,
                        file=_display(path),
                    )
                ]
            )
        # a byte order mark (Windows editors write one) is no part of the text
        return path.read_text(encoding="utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise PolicyError([not_utf8(_display(path), err)]) from None
    except OSError as err:
        raise PolicyError(
            [Diagnostic("E0006", f"cannot read: {err.strerror}", None, file=_display(path))]
        ) from None


def _catalog_for(
    files: Sequence[ast.PolicyFile], paths: Sequence[Path | None], diagnostics: list[Diagnostic]
) -> Catalog | None:
    chosen: tuple[ast.CatalogStmt, Path] | None = None
    for policy, path in zip(files, paths, strict=True):
        for stmt in policy.statements:
            if not isinstance(stmt, ast.CatalogStmt):
                continue
            base = path.parent if path is not None else Path.cwd()
            if "\0" in str(stmt.path.value):
                diagnostics.append(
                    Diagnostic("E0207", "a catalog path cannot contain a NUL character",
                               stmt.path.span, None)
                )  # fmt: skip
                return None
            target = (base / str(stmt.path.value)).resolve()
            if chosen is None:
                chosen = (stmt, target)
            elif chosen[1] != target:
                diagnostics.append(
                    Diagnostic(
                        "E0204",
                        "a policy set uses one catalog",
                        stmt.path.span,
                        f"`catalog` is already set to `{chosen[0].path.value}` at "
                        f"{chosen[0].span.location()}",
                    )
                )
    if chosen is None:
        target = default_catalog_path()
        stmt_span = None
    else:
        target = chosen[1]
        stmt_span = chosen[0].path.span
    try:
        return _load_catalog(target, _display(target))
    except CatalogError as err:
        if stmt_span is not None and not target.exists():
            diagnostics.append(
                Diagnostic(
                    "E0205",
                    f"catalog file `{chosen[0].path.value}` not found",  # type: ignore[index]
                    stmt_span,
                    f"looked for {_display(target)}; the path is relative to the policy file",
                )
            )
        else:
            diagnostics.extend(_catalog_diagnostic(line, _display(target)) for line in err.messages)
        return None


# The modules whose code decides what `load_catalog` makes of a file: a catalog cached by
# another version of any of them is not read back.
_CATALOG_CODE = ("catalog/load.py", "catalog/model.py", "units.py", "vocabulary.py",
                 "diagnostics.py")  # fmt: skip


def _load_catalog(target: Path, shown: str) -> Catalog:
    """`load_catalog(target, shown)`, kept in the cache directory once it loaded without
    errors, keyed by the file's bytes, `shown` and the catalog code: a command that loads
    an unchanged catalog validates nothing and imports neither the validation models nor
    YAML (`engine.catalog.load` is imported on a miss only)."""
    path = None
    data = b""
    try:
        info = target.stat()
        if stat.S_ISREG(info.st_mode) and info.st_size <= MAX_CATALOG_BYTES:
            data = target.read_bytes()
            path = cache_file("catalog", code_digest(*_CATALOG_CODE), shown.encode(), data)
    except (OSError, UnicodeEncodeError):  # load_catalog says what is wrong
        path = None
    if path is not None:
        found = read_cached(path)
        if isinstance(found, Catalog) and found.source == shown:
            return found
    from engine.catalog.load import load_catalog

    catalog = load_catalog(target, shown)
    if path is not None and catalog.digest == hashlib.sha256(data).hexdigest():
        write_cached(path, catalog)  # (the bytes it read: the file did not change between)
    return catalog


def _catalog_diagnostic(line: str, name: str) -> Diagnostic:
    """A catalog problem as a diagnostic, its place (`models.yaml:3:5`) before the code."""
    if line.startswith(name):
        cut = line.find(": ", len(name))
        if cut > 0:
            return Diagnostic("E0206", line[cut + 2 :], None, file=line[:cut])
    return Diagnostic("E0206", line, None)


def compile_sources(
    sources: Sequence[tuple[str, str]],
    paths: Sequence[Path | None] | None = None,
    now: float | None = None,
    *,
    cache: bool = False,
) -> Loaded:
    """Parse, check and compile named policy texts. Raises PolicyError with every error.
    `now` (epoch seconds) also warns of routes that can only reach retired models; `cache`
    (texts just read from their files): their parses are cached (`parse_cache.parsed`)."""
    paths = list(paths) if paths is not None else [None] * len(sources)
    unreadable = [d for name, text in sources if (d := _surrogate(name, text)) is not None]
    if unreadable:
        raise PolicyError(unreadable)
    diagnostics: list[Diagnostic] = []
    parsed_files: list[ast.PolicyFile] = []
    parsed_paths: list[Path | None] = []
    for (name, text), path in zip(sources, paths, strict=True):
        try:
            parsed_files.append(parsed(text, name, _parse) if cache else _parse(text, name))
            parsed_paths.append(path)
        except PolicyError as err:
            diagnostics.extend(err.diagnostics)
    catalog = _catalog_for(parsed_files, parsed_paths, diagnostics)
    if catalog is not None:
        diagnostics.extend(check(parsed_files, catalog, now))
    errors = [d for d in diagnostics if d.severity == "error"]
    if errors or catalog is None:
        raise PolicyError(diagnostics)
    program = compile_program(parsed_files, catalog, list(sources))
    diagnostics.extend(analyse(parsed_files, program))
    warnings = sorted((d for d in diagnostics if d.severity != "error"), key=Diagnostic.sort_key)
    return Loaded(program, tuple(warnings), tuple(parsed_files))


def _parse(text: str, name: str) -> ast.PolicyFile:
    """`parser.parse`, imported when a text is not in the parse cache: a run on an
    unchanged policy does not import the parser (and Lark)."""
    from engine.language.parser import parse

    return parse(text, name)


def load_policy(path: str | os.PathLike[str] | None = None, now: float | None = None) -> Loaded:
    """Load a policy file or directory; None means the packaged default policy set. `now`:
    as `compile_sources` takes it."""
    target = Path(path) if path is not None else default_policy_dir()
    files = policy_files(target)
    sources: list[tuple[str, str]] = []
    errors: list[Diagnostic] = []
    for f in files:
        try:
            sources.append((_display(f), _read(f)))
        except PolicyError as err:
            errors.extend(err.diagnostics)
    if errors:
        raise PolicyError(errors)
    return compile_sources(sources, files, now, cache=True)


def read_policy_file(path: Path) -> tuple[str, str]:
    """A policy file's name as a person typed it, and its text; PolicyError if it cannot
    be read (too large, not UTF-8, not a regular file)."""
    return _display(path), _read(path)


_SURROGATE = re.compile("[\ud800-\udfff]")


def _surrogate(name: str, text: str) -> Diagnostic | None:
    """A policy text (from `from_text`) with a lone surrogate: no UTF-8 form, so no file."""
    found = None if text.isascii() else _SURROGATE.search(text)
    if found is None:
        return None
    line = text.count("\n", 0, found.start()) + 1
    col = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
    message = (
        f"not UTF-8 text: a lone surrogate `\\u{ord(found.group()):04x}` at line {line},"
        f" column {col}"
    )
    return Diagnostic("E0005", message, None, file=name)


def _display(path: Path) -> str:
    """A path as a person typed it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def catalog_in_use(files: Sequence[ast.PolicyFile], paths: Sequence[Path | None]) -> Catalog | None:
    """The catalog parsed policy files use, chosen as `compile_sources` chooses it (their
    `catalog` statement, else the packaged one); None when it cannot be loaded. For tools
    that need the catalog of a set that does not compile (the language server)."""
    return _catalog_for(files, paths, [])
