"""Dataclass methods compiled once per install, not once per process.

`@dataclass` writes each class's `__init__`, `__repr__`, `__eq__`, `__hash__`,
`__setattr__`… as source text and compiles it when the class is made: `import engine`
makes about 120 dataclasses, and that compiling was a quarter of a `policyctl eval`'s
start-up. While `import engine` runs (`compiled_dataclasses()`), `dataclasses` compiles
through a table of code objects read from the byte-code cache (`__pycache__` beside
`engine/__init__.py`, or under `sys.pycache_prefix`), keyed by the exact source text; a
text not in it is compiled as `dataclasses` would and the table is written back, best
effort, holding what this import used. The classes are the same: `compile` of the same
text gives the same code, and marshal keeps code exactly as `.pyc` files do (the table is
trusted as the `.pyc` files beside it are). `PYTHONDONTWRITEBYTECODE` (`-B`) writes none.
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import marshal
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import CodeType
from typing import Any

_PACKAGE_INIT = Path(__file__).resolve().parent / "__init__.py"
_exec = builtins.exec


def table_path() -> Path | None:
    """Where the table lives for this interpreter (its cache tag and optimization level
    in the name, as a `.pyc` file's)."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    pyc = Path(importlib.util.cache_from_source(str(_PACKAGE_INIT)))
    level = f".opt-{sys.flags.optimize}" if sys.flags.optimize else ""  # as `.pyc` names
    return pyc.with_name(f"dataclasses.{tag}{level}.marshal")


class _Table:
    """The code objects by source text: those read, and those this import used."""

    def __init__(self, codes: dict[str, CodeType]) -> None:
        self.codes = codes
        self.used: dict[str, CodeType] = {}
        self.calls = 0
        self.compiled = 0  # texts not in the table: compiled here

    def exec(self, source: Any, globals: Any = None, locals: Any = None) -> None:
        """`exec` as `dataclasses` calls it (a source text, its globals and locals)."""
        if type(source) is not str:
            _exec(source, globals, locals)
            return
        self.calls += 1
        code = self.codes.get(source)
        if code is None:
            # as `exec` compiles a text for `dataclasses` (whose module has no `__future__`
            # imports): nothing inherited from this module's
            code = compile(source, "<string>", "exec", dont_inherit=True)
            self.compiled += 1
            self.codes[source] = code
        self.used[source] = code
        _exec(code, globals, locals)


def _read(path: Path) -> dict[str, CodeType]:
    try:
        with open(path, "rb") as f:
            table = marshal.loads(f.read())  # (`marshal.load(f)` reads in small pieces: 6× slower)
    except (OSError, EOFError, ValueError, TypeError):  # missing, damaged: compiled again
        return {}
    if type(table) is not dict:
        return {}
    return {k: v for k, v in table.items() if type(k) is str and type(v) is CodeType}


def _write(path: Path, codes: dict[str, CodeType]) -> None:
    """Best effort and atomic (a temporary file renamed), as the `.pyc` beside it."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as f:
            marshal.dump(codes, f)
        os.replace(temporary, path)
    except (OSError, ValueError):
        with suppress(OSError):
            temporary.unlink(missing_ok=True)


# what the last `compiled_dataclasses()` did: (texts run from the table, texts compiled)
last_run: tuple[int, int] = (0, 0)


@contextmanager
def compiled_dataclasses() -> Iterator[None]:
    """Within it, `dataclasses` compiles a method's text only the first time any process
    on this install does (see the module's docstring)."""
    global last_run
    path = table_path()
    if path is None or getattr(dataclasses, "exec", None) is not None:
        yield  # no cache tag, or already inside one
        return
    table = _Table(_read(path))
    dataclasses.exec = table.exec  # type: ignore[attr-defined]  # shadows the builtin there
    try:
        yield
    finally:
        del dataclasses.exec  # type: ignore[attr-defined]
        last_run = (table.calls - table.compiled, table.compiled)
        stale = table.compiled or len(table.used) != len(table.codes)
        if stale and table.used and not sys.dont_write_bytecode:
            _write(path, table.used)
