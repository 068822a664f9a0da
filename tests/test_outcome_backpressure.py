"""An acknowledged outcome is never dropped silently: when the outcome log's queue is full,
`record()` returns False (and records nothing) and `POST /v1/outcomes` answers 503 with
`Retry-After`, recording none of the request; both are counted in
`policyctl_outcomes_dropped_total`. Real DuckDB files and a real `policyctl serve`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
from test_service import FLASH, serving

from engine import PolicyEngine


def test_record_says_when_the_queue_is_full(tmp_path: Path) -> None:
    log = str(tmp_path / "outcomes.duckdb")
    with PolicyEngine(outcomes=log, outcome_queue=1) as engine:
        decision = engine.evaluate({"id": "a"})
        answers = [engine.record(decision, latency_ms=100.0, success=True) for _ in range(1000)]
        assert engine.outcome_log is not None
        taken, refused = answers.count(True), answers.count(False)
        assert refused >= 1  # a queue of one cannot take 1,000 rows in one writer poll
        assert engine.outcome_log.dropped == refused
        stats = engine.metrics.stats(f"{decision.provider}/{decision.model}")
        assert stats is not None and stats.samples == taken  # a refused one is not recorded
    con = duckdb.connect(log, read_only=True)
    (count,) = con.execute("SELECT count(*) FROM outcomes").fetchone()
    con.close()
    assert count == taken  # every True is on disk


def test_post_outcomes_answers_503_and_records_none_of_it(tmp_path: Path) -> None:
    item = {**FLASH, "latency_ms": 120.0, "success": True}
    with serving(tmp_path, "--outcome-queue", "5") as server, server.client() as client:
        full = client.post("/v1/outcomes", json=[{**item, "request_id": f"x{i}"} for i in range(6)])
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert full.json() == {"error": "the outcome log is full; retry later"}
        fits = client.post("/v1/outcomes", json=[{**item, "request_id": f"y{i}"} for i in range(5)])
        assert (fits.status_code, fits.json()) == (202, {"recorded": 5})
        metrics = client.get("/metrics").text
        assert "policyctl_outcomes_dropped_total 6.0\n" in metrics
        openapi = client.get("/openapi.json").json()
        assert "503" in openapi["paths"]["/v1/outcomes"]["post"]["responses"]
    con = duckdb.connect(str(server.state), read_only=True)
    ids = sorted(r for (r,) in con.execute("SELECT request_id FROM outcomes").fetchall())
    con.close()
    assert ids == [f"y{i}" for i in range(5)]
