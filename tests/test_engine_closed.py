"""A closed `PolicyEngine` takes no decision and no outcome: its logs and state store are
shut, so what it decided or was told after `close()` could not be kept. It used to decide
and record anyway, and the decisions and outcomes were lost without a word (a real DuckDB
state file, read back after)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from engine import EngineClosedError, PolicyctlError, PolicyEngine
from engine.errors import EXIT_ERROR

REQUEST = {"id": "before", "prompt": "hello"}


def test_a_closed_engine_refuses_decisions_and_outcomes(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    engine = PolicyEngine(state=str(state))
    decision = engine.evaluate(REQUEST)
    assert engine.record(decision, latency_ms=120.0, success=True)
    engine.close()
    assert engine.closed
    calls = {
        "decide": [
            lambda: engine.evaluate({"id": "after", "prompt": "hello"}),
            lambda: engine.evaluate({"id": "after", "prompt": "hello"}, dry_run=True),
            lambda: engine.evaluate_lean({"id": "after", "prompt": "hello"}),
            lambda: engine.acquire_blocking({"id": "after", "prompt": "hello"}),
        ],
        "record an outcome": [
            lambda: engine.record(decision, latency_ms=80.0, success=True),
            lambda: engine.record_outcome(
                str(decision.provider), str(decision.model), latency_ms=80.0, success=False
            ),
        ],
    }
    for action, made in calls.items():
        for call in made:
            with pytest.raises(EngineClosedError) as caught:
                call()
            assert str(caught.value) == (
                f"cannot {action}: this PolicyEngine is closed (its logs and state are"
                " written and shut); make a new one"
            )
    engine.close()  # closing twice does nothing more
    error = EngineClosedError("decide")
    assert isinstance(error, PolicyctlError) and isinstance(error, RuntimeError)
    assert error.exit_code == EXIT_ERROR
    con = duckdb.connect(str(state), read_only=True)
    try:
        assert con.execute("SELECT request_id FROM decisions").fetchall() == [("before",)]
        assert con.execute("SELECT count(*), min(latency_ms) FROM outcomes").fetchone() == (
            1,
            120.0,
        )
    finally:
        con.close()


def test_an_engine_used_as_a_context_manager_is_closed_after(tmp_path: Path) -> None:
    with PolicyEngine() as engine:
        assert not engine.closed
        assert engine.evaluate(REQUEST).allowed
    with pytest.raises(EngineClosedError):
        engine.evaluate(REQUEST)
