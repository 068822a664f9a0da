"""A row DuckDB refuses costs that row only: the background writer and the DuckDB store's
flush write the rest of the batch, and count and log what they could not write.

Real DuckDB files; the refused row is a string with a lone surrogate (legal in Python and in
JSON, not encodable as UTF-8), which the edges refuse too but the writers must survive.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pytest

from engine.analytics.records import DecisionRow, OutcomeRow, ViolationRow
from engine.analytics.schema import ensure_schema
from engine.analytics.writer import OutcomeWriter
from engine.limits.stores.base import Spec
from engine.limits.stores.duckdb_store import DuckDBStore

BAD = "\ud800"  # a lone surrogate
T0 = 1_800_000_000.0


def outcome(i: int, request_id: str | None = None) -> OutcomeRow:
    return OutcomeRow(T0 + i, "p", "m", float(i), True, None, None, 0.0,
                      request_id or f"o{i}", None, None)  # fmt: skip


def decision(i: int, request_id: str | None = None) -> DecisionRow:
    return DecisionRow(T0 + i, request_id or f"d{i}", True, "default", "cost", "p", "m",
                       0.001, 10.0, None, None, "v1")  # fmt: skip


def test_the_writer_keeps_every_row_but_the_refused_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "log.duckdb")
    con = duckdb.connect(path)
    ensure_schema(con)
    writer = OutcomeWriter(con, batch=1_000_000, interval_s=3600)
    for i in range(100):
        assert writer.submit(outcome(i, BAD if i == 37 else None)) is True
        writer.submit_decision(decision(i, BAD if i in (5, 90) else None))
    with caplog.at_level(logging.WARNING, logger="policyctl.outcomes"):
        writer.flush()
    assert (writer.written, writer.refused) == (99, 1)
    assert (writer.written_decisions, writer.refused_decisions) == (98, 2)
    assert writer.failed_batches == 1
    assert "could not write 1 of 100 outcomes and 2 of 100 decisions" in caplog.text
    writer.submit(outcome(100))  # and the writer goes on writing
    writer.close()
    ids = {r for (r,) in con.execute("SELECT request_id FROM outcomes").fetchall()}
    assert ids == {f"o{i}" for i in range(101) if i != 37}
    (decisions,) = con.execute("SELECT count(*) FROM decisions").fetchone()
    assert decisions == 98
    con.close()


def test_the_store_flush_keeps_every_row_but_the_refused_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "state.duckdb")
    store = DuckDBStore(path)
    for user in ("alice", BAD, "bob"):
        store.acquire([Spec(f"user/requests/60000/{user}", 10.0, 10 / 60000, 1.0)], (), T0 * 1e3)
    violations = [
        ViolationRow(T0, "user", user, "requests", 1.0, 0.0, f"r-{user}")
        for user in ("alice", BAD, "bob")
    ]
    decisions = [decision(i, BAD if i == 1 else None) for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="policyctl.state"):
        store.flush(violations=violations, stats={("2027-01-15", "user"): (5, 3)},
                    decisions=decisions)  # fmt: skip
    assert store.refused_rows == 3  # one bucket, one violation, one decision
    assert "could not write 1 of 3 buckets" in caplog.text
    store.close()
    con = duckdb.connect(path, read_only=True)
    buckets = [k for (k,) in con.execute("SELECT bucket_key FROM rate_limit_buckets").fetchall()]
    assert sorted(buckets) == ["user/requests/60000/alice", "user/requests/60000/bob"]
    keys = sorted(k for (k,) in con.execute("SELECT key FROM rate_limit_violations").fetchall())
    assert keys == ["alice", "bob"]
    stats = con.execute(
        "SELECT scope, allowed_requests, denied_requests FROM rate_limit_stats"
    ).fetchall()
    assert stats == [("user", 5, 3)]
    (count,) = con.execute("SELECT count(*) FROM decisions").fetchone()
    assert count == 2
    con.close()
