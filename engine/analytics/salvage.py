"""Write a batch of rows so that one row DuckDB refuses costs only that row.

`write_salvaging(con, write, rows)` runs `write(con, rows)` in one transaction; if DuckDB
refuses it (a string it cannot encode, a value out of range), the batch is split in halves
and each half tried again, down to single rows. Every row DuckDB accepts is written; the
rows it refuses are returned, for the caller to count and log. A batch with k bad rows
costs about k·log2(n) extra transactions; a clean batch costs one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Row = TypeVar("Row")


def in_transaction(con: Any, action: Callable[[Any], object]) -> Exception | None:
    """`action(con)` in one transaction: None when committed, else the error (rolled back)."""
    try:
        con.execute("BEGIN")
        action(con)
        con.execute("COMMIT")
    except Exception as err:  # the caller decides what a refused write costs
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        return err
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
        if len(chunk) == 1:
            refused.append(chunk[0])
        else:
            half = len(chunk) // 2
            pending += (chunk[half:], chunk[:half])  # the first half is tried first
    return refused, first
