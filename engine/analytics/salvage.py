"""Write a batch of rows so that one row DuckDB refuses costs only that row.

`write_salvaging(con, write, rows)` runs `write(con, rows)` in one transaction; if DuckDB
refuses it (a string it cannot encode, a value out of range), the batch is split in halves
and each half tried again, down to single rows. Every row DuckDB accepts is written; the
rows it refuses are returned, for the caller to count and log. A batch with k bad rows
costs about k·log2(n) extra transactions; a clean batch costs one.

A batch can also fail for no row's fault: the disk refuses the commit (the write-ahead log
cannot be created, the directory is gone, the disk is full). `in_transaction` returns that
as a `StateWriteError` (DuckDB's text); the callers keep such a batch whole and write it
again later (splitting it would only fail n more times), and raise a `StateWriteError`
that names the file; `write_salvaging` stops at one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from engine.errors import EXIT_ERROR, PolicyctlError

Row = TypeVar("Row")


class StateWriteError(PolicyctlError, RuntimeError, exit_code=EXIT_ERROR):
    """A DuckDB file could not be written (the disk refused the commit); no row was at
    fault. The writers keep what it held for their next write."""


def _storage_failure(err: Exception, committing: bool) -> Exception:
    import duckdb  # loaded already: `con` is a DuckDB connection

    if committing or isinstance(err, duckdb.IOException | duckdb.FatalException):
        failure = StateWriteError(str(err))
        failure.__cause__ = err
        return failure
    return err


def in_transaction(con: Any, action: Callable[[Any], object]) -> Exception | None:
    """`action(con)` in one transaction: None when committed, else the error (rolled
    back): a `StateWriteError` when the commit failed or DuckDB could not do I/O."""
    committing = False
    try:
        con.execute("BEGIN")
        action(con)
        committing = True
        con.execute("COMMIT")
    except Exception as err:  # the caller decides what a refused write costs
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        return _storage_failure(err, committing)
    return None


def write_salvaging(
    con: Any, write: Callable[[Any, Sequence[Row]], object], rows: Sequence[Row]
) -> tuple[list[Row], Exception | None]:
    """Write `rows` with `write`, isolating the ones DuckDB refuses: (refused rows, the
    first error seen)."""
    refused: list[Row] = []
    first: Exception | None = None
    pending: list[Sequence[Row]] = [rows] if rows else []
    while pending:  # bounded: every failed chunk of n > 1 rows splits into two smaller ones
        chunk = pending.pop()
        err = in_transaction(con, lambda c, chunk=chunk: write(c, chunk))  # type: ignore[misc]
        if err is None:
            continue
        first = first or err
        if isinstance(err, StateWriteError):  # no row's fault: the rest cannot be written
            refused += [row for part in (*pending, chunk) for row in part]
            break
        if len(chunk) == 1:
            refused.append(chunk[0])
        else:
            half = len(chunk) // 2
            pending += (chunk[half:], chunk[:half])  # the first half is tried first
    return refused, first
