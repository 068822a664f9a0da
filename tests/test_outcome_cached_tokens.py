"""Outcomes that report cached tokens: `record()`/`record_outcome()`, `POST /v1/outcomes`'s
checks and `metrics import` price them as the catalog's `Model.cost` does (price tiers, the
cached-input price), store `cached_tokens`, and refuse cached tokens the input cannot hold.
An outcome log written before the column existed is still read and written.

The importer's cost is compared with `Model.cost` of the same catalog entry, exactly: both
compute the same operations in the same order on doubles."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine import PolicyEngine
from engine.analytics.importer import import_outcomes
from engine.analytics.records import outcome_problems
from engine.analytics.schema import ensure_schema
from engine.catalog.load import load_catalog
from engine.catalog.model import Catalog

CATALOG = """
version: 2
models:
  - id: tiered
    provider: acme
    aliases: [tiered-latest]
    context_window: 2000000
    max_tokens: 65536
    supports: [streaming]
    pricing:
      input: 1.25
      output: 10.0
      cached_input: 0.125
      tiers:
        - {above: 200000, input: 2.5, output: 15.0, cached_input: 0.25}
        - {above: 1000000, input: 5.0, output: 20.0}
    latency_prior_ms: {p50: 900, p95: 2500}
  - id: uncached
    provider: acme
    context_window: 128000
    max_tokens: 8192
    supports: [streaming]
    pricing: {input: 0.3, output: 0.7}
    latency_prior_ms: {p50: 500, p95: 1500}
  - id: family
    provider: acme
    context_window: 200000
    max_tokens: 64000
    supports: [streaming]
    pricing: {input: 3.0, output: 15.0, cached_input: 0.3}
    latency_prior_ms: {p50: 1100, p95: 2400}
    deployments:
      - {provider: acme, id: family-direct}
      - provider: "cloud:eu"
        id: "family-v1:0"
        pricing: {input: 3.3, output: 16.5, tiers: [{above: 100000, input: 6.6, output: 20.0}]}
"""

# (provider, model, input, output, cached): below, at and above every tier, cached or not
CASES = [
    ("acme", name, i, o, c)
    for name in ("tiered", "tiered-latest")
    for i, o, c in [
        (1000, 100, 0),
        (1000, 100, 800),
        (200_000, 500, 150_000),
        (200_001, 500, 150_000),
        (200_001, 0, 200_001),
        (999_999, 7, 3),
        (1_000_000, 7, 500_000),
        (1_000_001, 7, 500_000),
        (1_500_000, 65536, 1_499_999),
    ]
] + [
    ("acme", "uncached", 5000, 300, 4000),  # no cache price: cached tokens at the input price
    ("acme", "uncached", 5000, 300, 0),
    ("acme", "family-direct", 10_000, 10, 9000),
    ("cloud:eu", "family-v1:0", 100_000, 10, 50_000),
    ("cloud:eu", "family-v1:0", 100_001, 10, 50_000),
]


@pytest.fixture
def catalog_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.yaml").write_text(CATALOG, encoding="utf-8")
    (tmp_path / "p.policy").write_text(
        'catalog "models.yaml"\nroute r { prefer acme/tiered }\n', encoding="utf-8"
    )
    return tmp_path


@pytest.fixture
def catalog(catalog_dir: Path) -> Catalog:
    return load_catalog(catalog_dir / "models.yaml")


def expected_cost(catalog: Catalog, provider: str, model: str, i: int, o: int, c: int) -> float:
    found = catalog.find(provider, model)
    assert found is not None
    return found.cost(i, o, c)


def test_the_cases_cover_tiers_and_cache_prices(catalog: Catalog) -> None:
    # the oracle differs from a flat input price: the cases exercise what is under test
    tiered = catalog.find("acme", "tiered")
    assert tiered is not None
    flat = [(i * 1.25 + o * 10.0) / 1e6 for _, n, i, o, _ in CASES if n == "tiered"]
    priced = [tiered.cost(i, o, c) for _, n, i, o, c in CASES if n == "tiered"]
    assert sum(a != b for a, b in zip(flat, priced, strict=True)) >= 7
    assert tiered.cost(1000, 100, 800) == pytest.approx((200 * 1.25 + 800 * 0.125 + 1000) / 1e6)
    # the second tier names no cache price: the first tier's applies
    assert tiered.cost(1_000_001, 7, 500_000) == pytest.approx(
        (500_001 * 5.0 + 500_000 * 0.25 + 7 * 20.0) / 1e6
    )


def test_the_importer_prices_as_model_cost(tmp_path: Path, catalog: Catalog) -> None:
    lines = [
        json.dumps(
            {
                "provider": p,
                "model": m,
                "latency_ms": 100,
                "success": True,
                "input_tokens": i,
                "output_tokens": o,
                **({"cached_tokens": c} if c else {}),
                "request_id": f"r{k}",
            }
        )
        for k, (p, m, i, o, c) in enumerate(CASES)
    ]
    path = tmp_path / "outcomes.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    con = duckdb.connect(str(tmp_path / "state.duckdb"))
    report = import_outcomes(con, str(path), catalog, now_s=1.8e9)
    assert (report.imported, report.rejected) == (len(CASES), 0)
    rows = dict(
        con.execute("SELECT request_id, (cost, cached_tokens, model) FROM outcomes").fetchall()
    )
    con.close()
    for k, (p, m, i, o, c) in enumerate(CASES):
        cost, cached, model = rows[f"r{k}"]
        assert cost == expected_cost(catalog, p, m, i, o, c), (p, m, i, o, c)
        assert cached == (c or None)
        assert model == m.removesuffix("-latest")


def test_the_importer_reads_cached_tokens_from_csv(tmp_path: Path, catalog: Catalog) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text(
        "provider,model,latency_ms,success,input_tokens,output_tokens,cached_tokens,cost\n"
        "acme,tiered,10,true,300000,10,250000,\n"
        "acme,tiered,10,true,300000,10,250000,0.5\n",  # a given cost is kept
        encoding="utf-8",
    )
    con = duckdb.connect()
    report = import_outcomes(con, str(path), catalog, now_s=1.8e9)
    assert report.imported == 2
    costs = [r[0] for r in con.execute("SELECT cost FROM outcomes ORDER BY cost").fetchall()]
    assert costs == sorted([expected_cost(catalog, "acme", "tiered", 300_000, 10, 250_000), 0.5])


def test_the_importer_refuses_cached_tokens_the_input_cannot_hold(
    tmp_path: Path, catalog: Catalog
) -> None:
    base = {"provider": "acme", "model": "tiered", "latency_ms": 1, "success": True}
    rows: list[dict[str, Any]] = [
        {**base, "input_tokens": 50, "cached_tokens": 1000},
        {**base, "cached_tokens": 10},
        {**base, "input_tokens": 50, "cached_tokens": -1},
        {**base, "input_tokens": 50, "cached_tokens": 2.5},
        {**base, "input_tokens": "x", "cached_tokens": 10},
        {**base, "input_tokens": 50, "cached_tokens": 50},  # all of it: fine
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    con = duckdb.connect()
    report = import_outcomes(con, str(path), catalog, now_s=1.8e9)
    assert report.imported == 1
    assert report.reasons == [
        (1, "cached_tokens (`1000`) must be at most input_tokens (`50`): cached tokens are part"
            " of the input"),
        (2, "cached_tokens needs input_tokens (cached tokens are part of the input)"),
        (3, "cached_tokens must be a whole number >= 0, got `-1`"),
        (4, "cached_tokens must be a whole number >= 0, got `2.5`"),
        (5, "input_tokens must be a whole number >= 0, got `x`"),
    ]  # fmt: skip
    # the same words over HTTP and from Python
    assert outcome_problems(rows[0]) == [
        ("cached_tokens", report.reasons[0][1]),
    ]
    assert outcome_problems(rows[1]) == [("cached_tokens", report.reasons[1][1])]
    assert outcome_problems(rows[2]) == [("cached_tokens", report.reasons[2][1])]
    assert outcome_problems(rows[5]) == []


def test_record_outcome_prices_cached_tokens(tmp_path: Path, catalog_dir: Path) -> None:
    state = tmp_path / "state.duckdb"
    catalog = load_catalog(catalog_dir / "models.yaml")
    with PolicyEngine(catalog_dir / "p.policy", state=str(state)) as engine:
        for k, (p, m, i, o, c) in enumerate(CASES):
            assert engine.record_outcome(
                p, m, latency_ms=10, success=True, input_tokens=i, output_tokens=o,
                cached_tokens=c or None, request_id=f"r{k}",
            )  # fmt: skip
        decision = engine.evaluate({"id": "d", "input_tokens": 300_000, "max_tokens": 10})
        assert decision.model == "tiered"
        engine.record(
            decision, latency_ms=10, success=True, input_tokens=300_000, output_tokens=10,
            cached_tokens=250_000,
        )  # fmt: skip
        with pytest.raises(ValueError, match="must be at most input_tokens"):
            engine.record(decision, latency_ms=1, success=True, input_tokens=5, cached_tokens=6)
        with pytest.raises(ValueError, match="cached_tokens needs input_tokens"):
            engine.record_outcome("acme", "tiered", latency_ms=1, success=True, cached_tokens=6)
        for bad in (-1, 1.5, True, "7"):
            with pytest.raises(ValueError, match="cached_tokens must be a whole number >= 0"):
                engine.record_outcome(
                    "acme", "tiered", latency_ms=1, success=True, input_tokens=10,
                    cached_tokens=bad,  # type: ignore[arg-type]
                )  # fmt: skip
    con = duckdb.connect(str(state))
    rows = dict(con.execute("SELECT request_id, (cost, cached_tokens) FROM outcomes").fetchall())
    con.close()
    assert len(rows) == len(CASES) + 1  # the refused ones are not recorded
    for k, (p, m, i, o, c) in enumerate(CASES):
        assert tuple(rows[f"r{k}"]) == (
            expected_cost(catalog, p, m, i, o, c),
            c or None,
        )
    assert tuple(rows["d"]) == (
        expected_cost(catalog, "acme", "tiered", 300_000, 10, 250_000),
        250_000,
    )


OLD_OUTCOMES = """
CREATE TABLE outcomes (
    recorded_at TIMESTAMP NOT NULL, provider VARCHAR NOT NULL, model VARCHAR NOT NULL,
    latency_ms DOUBLE NOT NULL, success BOOLEAN NOT NULL, input_tokens BIGINT,
    output_tokens BIGINT, cost DOUBLE, request_id VARCHAR, route VARCHAR, user_id VARCHAR
);
INSERT INTO outcomes VALUES
    ('2026-11-01 12:00:00', 'acme', 'tiered', 250.0, true, 10, 20, 0.5, 'old', 'r', 'u');
"""


def test_an_outcome_log_without_the_column_is_read_and_written(
    tmp_path: Path, catalog_dir: Path
) -> None:
    state = tmp_path / "old.duckdb"
    con = duckdb.connect(str(state))
    con.execute(OLD_OUTCOMES)
    con.close()
    with PolicyEngine(catalog_dir / "p.policy", state=str(state)) as engine:
        assert engine.record_outcome(
            "acme", "tiered", latency_ms=5, success=True, input_tokens=100, output_tokens=1,
            cached_tokens=60, request_id="new",
        )  # fmt: skip
    con = duckdb.connect(str(state))
    columns = [r[0] for r in con.execute("DESCRIBE outcomes").fetchall()]
    rows = con.execute(
        "SELECT request_id, cost, cached_tokens FROM outcomes ORDER BY recorded_at"
    ).fetchall()
    ensure_schema(con)  # again: nothing to add
    con.close()
    assert columns[-1] == "cached_tokens" and columns.count("cached_tokens") == 1
    tiered = load_catalog(catalog_dir / "models.yaml").find("acme", "tiered")
    assert tiered is not None
    assert rows == [("old", 0.5, None), ("new", tiered.cost(100, 1, 60), 60)]
