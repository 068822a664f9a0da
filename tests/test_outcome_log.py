"""The durable outcome log: batched background writes, warm start, and a SIGKILL mid-stream."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pytest

from engine import PolicyEngine
from engine.analytics import ensure_schema
from engine.outcome_log import OutcomeWriter

ROOT = Path(__file__).resolve().parent.parent


def test_outcomes_are_written_and_warm_the_next_engine(tmp_path: Path) -> None:
    state = str(tmp_path / "state.duckdb")
    with PolicyEngine(state=state) as engine:
        decision = engine.evaluate({"id": "a"})
        for i in range(200):
            engine.record(decision, latency_ms=100.0 + i, success=i % 4 != 0)
    con = duckdb.connect(state)
    (count,) = con.execute("SELECT count(*) FROM outcomes").fetchone()
    assert count == 200
    row = con.execute(
        "SELECT provider, model, samples, success_rate FROM provider_metrics"
    ).fetchone()
    assert row == (decision.provider, decision.model, 200, 0.75)
    con.close()
    with PolicyEngine(state=state) as engine:  # a new process would see the same
        stats = engine.metrics.stats(f"{decision.provider}/{decision.model}")
        assert stats is not None
        assert stats.samples == 200
        assert stats.success_rate == pytest.approx(0.75)
        exact_p95 = 100.0 + 189  # rank ceil(0.95 * 200) = 190 of 100..299
        assert stats.p95_ms == pytest.approx(exact_p95, rel=0.01)


def test_a_separate_outcome_log_beside_memory_state(tmp_path: Path) -> None:
    log = str(tmp_path / "outcomes.duckdb")
    with PolicyEngine(outcomes=log) as engine:
        decision = engine.evaluate({"id": "b"})
        engine.record(decision, latency_ms=321.0, success=True)
    con = duckdb.connect(log)
    assert con.execute("SELECT latency_ms, request_id FROM outcomes").fetchall() == [(321.0, "b")]


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "q.duckdb"))
    ensure_schema(con)
    writer = OutcomeWriter(con, max_queue=10, batch=1_000_000, interval_s=3600)
    row = (1_800_000_000.0, "p", "m", 1.0, True, None, None, 0.0, None, None, None)
    for _ in range(25):
        writer.submit(row)
    assert writer.dropped >= 15 - 1  # the writer thread may already hold one row
    writer.close()
    (count,) = con.execute("SELECT count(*) FROM outcomes").fetchone()
    assert count + writer.dropped == 25


def test_sigkill_mid_stream_keeps_every_committed_batch(tmp_path: Path) -> None:
    path = tmp_path / "killed.duckdb"
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        import duckdb
        from engine.analytics import ensure_schema
        from engine.outcome_log import OutcomeWriter
        con = duckdb.connect({str(path)!r})
        ensure_schema(con)
        writer = OutcomeWriter(con, batch=500, interval_s=0.05)
        i = 0
        while True:
            writer.submit((1_800_000_000.0 + i, "p", "m", float(i), True, None, None, 0.0,
                           str(i), None, None))
            i += 1
            if i % 500 == 0:
                writer.flush()
                print(i, flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert proc.stdout is not None
    committed = 0
    for line in proc.stdout:
        committed = int(line)
        if committed >= 5000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    con = duckdb.connect(str(path))
    (count,) = con.execute("SELECT count(*) FROM outcomes").fetchone()
    assert count >= committed  # every batch flushed before the kill is there
    # batches commit in order and whole: what is there is a gapless prefix of the stream
    ids = [int(r[0]) for r in con.execute("SELECT request_id FROM outcomes").fetchall()]
    assert sorted(ids) == list(range(count))
