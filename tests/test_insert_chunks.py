"""Rows go into DuckDB a chunk at a time (`insert_rows`): a writer thread binding thousands
of rows in one statement held the GIL for tens of milliseconds, stalling the event loop.
Counted on a real DuckDB connection: statements run, rows stored."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine.analytics.schema import INSERT_CELLS, insert_rows
from engine.limits.stores.base import Spec
from engine.limits.stores.duckdb_store import DuckDBStore

TYPES = ["VARCHAR", "DOUBLE", "BIGINT"]


class Counting:
    """A real connection whose `execute` calls are counted (the statements pass through)."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self.inserts = 0

    def execute(self, sql: str, params: Any = None) -> Any:
        if sql.startswith("INSERT"):
            self.inserts += 1
        return self.con.execute(sql, params)


@pytest.mark.parametrize("n", [1, 682, 683, 2000])
def test_rows_go_in_chunks_of_insert_cells_values_and_all_arrive(n: int) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (k VARCHAR PRIMARY KEY, x DOUBLE, y BIGINT)")
    counting = Counting(con)
    rows = [(f"k{i}", i / 2, i) for i in range(n)]
    insert_rows(counting, "INSERT INTO t", TYPES, rows, "c0, c1, c2")
    per = INSERT_CELLS // len(TYPES)  # 682 rows of 3 columns
    assert counting.inserts == math.ceil(n / per)
    assert con.execute("SELECT count(*), sum(y), max(k) FROM t").fetchone() == (
        n,
        sum(range(n)),
        max(f"k{i}" for i in range(n)),
    )


def test_a_row_of_the_wrong_width_is_refused_before_any_statement() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (k VARCHAR, x DOUBLE, y BIGINT)")
    counting = Counting(con)
    with pytest.raises(ValueError, match="expected 3"):
        insert_rows(counting, "INSERT INTO t", TYPES, [("a", 1.0)], "c0, c1, c2")
    assert counting.inserts == 0


def test_a_store_flush_of_many_buckets_writes_them_all(tmp_path: Path) -> None:
    path = tmp_path / "state.duckdb"
    store = DuckDBStore(str(path))
    n = 1500  # more than one chunk of 8-column bucket rows
    for i in range(n):
        store.acquire([Spec(f"user/requests/60000/u{i}", 10.0, 10 / 60000, 1.0)], (), 100_000.0)
    store.flush()
    store.close()
    con = duckdb.connect(str(path))
    assert con.execute("SELECT count(*) FROM rate_limit_buckets").fetchone() == (n,)
