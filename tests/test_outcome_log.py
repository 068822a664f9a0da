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
from engine.analytics.records import OutcomeRow
from engine.analytics.schema import ensure_schema
from engine.analytics.writer import OutcomeWriter

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
    row = OutcomeRow(1_800_000_000.0, "p", "m", 1.0, True, None, None, 0.0, None, None, None)
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
        from engine.analytics.schema import ensure_schema
        from engine.analytics.records import OutcomeRow
        from engine.analytics.writer import OutcomeWriter
        con = duckdb.connect({str(path)!r})
        ensure_schema(con)
        writer = OutcomeWriter(con, batch=500, interval_s=0.05)
        i = 0
        while True:
            writer.submit(OutcomeRow(1_800_000_000.0 + i, "p", "m", float(i), True, None,
                                     None, 0.0, str(i), None, None))
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


def test_decisions_are_written_in_the_background_and_flush_waits_for_them(
    tmp_path: Path,
) -> None:
    state = str(tmp_path / "state.duckdb")
    with PolicyEngine(state=state) as engine:
        for i in range(300):
            engine.evaluate({"id": f"d{i}", "user": f"u{i % 7}"})
        engine.evaluate({"id": "dry"}, dry_run=True)  # consumes nothing, logs nothing
        engine.flush()  # committed now, with the engine still open
        reader = engine.store.connection.cursor()
        (count, first, last) = reader.execute(
            "SELECT count(*), min(request_id), max(request_id) FROM decisions"
        ).fetchone()
        reader.close()
        assert (count, first, last) == (300, "d0", "d99")  # text order of d0..d299
        assert engine.outcome_log is not None
        assert engine.outcome_log.written_decisions == 300
        assert engine.outcome_log.dropped_decisions == 0
    con = duckdb.connect(state, read_only=True)
    rows = con.execute("SELECT allowed, route, policy_version FROM decisions").fetchall()
    assert len(rows) == 300 and all(allowed for allowed, _, _ in rows)
    con.close()


def test_a_long_run_loses_no_violation_to_the_bounded_queue(tmp_path: Path) -> None:
    """Violations are kept in a bounded queue between writes; a long run writes them out
    before it fills, so 12,000 denials are 12,000 rows."""
    state = str(tmp_path / "state.duckdb")
    policy = (ROOT / "examples" / "policies" / "design.policy").read_text(encoding="utf-8")
    policy = policy.replace("limit user      100 per 1m burst 10", "limit user 1 per 1d")
    assert "limit user 1 per 1d" in policy
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    (policy_dir / "default.policy").write_text(policy, encoding="utf-8")
    (policy_dir / "models.yaml").write_text(
        (ROOT / "examples" / "policies" / "models.yaml").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    with PolicyEngine(policy_dir, state=state) as engine:
        decisions = [engine.evaluate({"id": f"v{i}", "user": "greedy"}) for i in range(12_001)]
    assert decisions[0].allowed and not any(d.allowed for d in decisions[1:])
    con = duckdb.connect(state, read_only=True)
    (violations,) = con.execute(
        "SELECT count(*) FROM rate_limit_violations WHERE key = 'greedy'"
    ).fetchone()
    (denied,) = con.execute(
        "SELECT sum(denied_requests) FROM rate_limit_stats WHERE scope = 'user'"
    ).fetchone()
    (logged,) = con.execute("SELECT count(*) FROM decisions").fetchone()
    con.close()
    assert (violations, denied, logged) == (12_000, 12_000, 12_001)
