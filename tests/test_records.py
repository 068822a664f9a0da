"""The typed records: one outcome model, so the same mistake gets the same words through
`POST /v1/outcomes` (a real `policyctl serve`), `record()`/`record_outcome()` and the
importer (a real DuckDB); the rows' columns; the denial records' JSON."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from _design import from_design

from engine import PolicyEngine
from engine.analytics import schema
from engine.analytics.importer import import_outcomes
from engine.analytics.records import (
    OUTCOME_FIELDS,
    OUTCOME_REQUIRED,
    DecisionRow,
    OutcomeRow,
    ViolationRow,
    sql_types,
)
from engine.language.loader import load_policy
from engine.limits.records import STORE_DOWN, LimitDenial
from engine.routing.decision import DroppedCandidate, NoEligibleModel

ROOT = Path(__file__).resolve().parent.parent
GOOD = {
    "provider": "gemini",
    "model": "gemini-2.5-flash-lite",
    "latency_ms": 420.5,
    "success": True,
}

# (what differs from a good outcome, the field to blame, the one message for it)
MISTAKES = [
    ({"latency_ms": -1}, "latency_ms", "latency_ms must be a number >= 0, got `-1`"),
    ({"success": "yes"}, "success", "success must be true or false, got `yes`"),
    (
        {"model": "gemini-2.5-flash-lte"},
        "model",
        "unknown model `gemini/gemini-2.5-flash-lte`"
        " (did you mean `gemini/gemini-2.5-flash-lite`?)",
    ),
    ({"provider": "acme", "model": "x"}, "model", "unknown provider `acme`"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("records")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(work / "serve.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--state", str(work / "state.duckdb")],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (work / "serve.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _http(url: str, item: dict[str, Any]) -> list[tuple[str, str]]:
    response = httpx.post(url + "/v1/outcomes", json=item, timeout=30)
    assert response.status_code == 422, response.text
    return [(p["field"], p["message"]) for p in response.json()["detail"]]


def _record(item: dict[str, Any]) -> str:
    engine = PolicyEngine()  # the packaged policy set, as the server and the importer use
    with pytest.raises(ValueError) as caught:
        engine.record_outcome(
            item["provider"], item["model"], latency_ms=item["latency_ms"], success=item["success"]
        )
    return str(caught.value)


def _imported(tmp_path: Path, item: dict[str, Any]) -> str:
    path = tmp_path / "outcomes.jsonl"
    path.write_text(json.dumps(item) + "\n", encoding="utf-8")
    con = duckdb.connect()
    try:
        report = import_outcomes(con, str(path), load_policy(None).program.catalog, now_s=1e9)
    finally:
        con.close()
    assert report.imported == 0
    ((line, reason),) = report.reasons
    assert line == 1
    return reason


@pytest.mark.parametrize(("change", "field", "message"), MISTAKES)
def test_the_same_mistake_gets_the_same_words_everywhere(
    server: str, tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    item = {**GOOD, **change}
    assert _http(server, item) == [(field, message)]
    assert _record(item) == message
    assert _imported(tmp_path, item) == message


def test_a_missing_field_has_the_same_words_over_http_and_in_the_importer(
    server: str, tmp_path: Path
) -> None:
    item = {k: v for k, v in GOOD.items() if k != "success"}
    assert _http(server, item) == [("success", "missing field `success`")]
    assert _imported(tmp_path, item) == "missing field `success`"


def test_not_an_object_has_the_same_words_over_http_and_in_the_importer(
    server: str, tmp_path: Path
) -> None:
    response = httpx.post(server + "/v1/outcomes", json=[[1, 2]], timeout=30)
    assert response.json()["detail"] == [
        {"index": 0, "field": "", "message": "expected a JSON object"}
    ]
    path = tmp_path / "outcomes.jsonl"
    path.write_text("[1, 2]\n", encoding="utf-8")
    con = duckdb.connect()
    report = import_outcomes(con, str(path), load_policy(None).program.catalog, now_s=1e9)
    con.close()
    assert report.reasons == [(1, "expected a JSON object")]


def test_the_outcome_fields_are_the_tables_columns() -> None:
    assert OUTCOME_REQUIRED == ("provider", "model", "latency_ms", "success")
    renamed = {"timestamp": "recorded_at", "user": "user_id"}
    columns = {renamed.get(name, name) for name in OUTCOME_FIELDS}
    assert columns == set(OutcomeRow._fields)


@pytest.mark.parametrize(
    ("row", "table"),
    [(DecisionRow, "decisions"), (OutcomeRow, "outcomes"), (ViolationRow, "rate_limit_violations")],
)
def test_a_rows_fields_and_types_are_its_tables_columns(row: type[Any], table: str) -> None:
    con = duckdb.connect()
    schema.ensure_schema(con)
    described = con.execute(f"DESCRIBE {table}").fetchall()
    con.close()
    assert tuple(r[0] for r in described) == row._fields
    types = tuple("DOUBLE" if r[1] == "TIMESTAMP" else r[1] for r in described)
    assert types == sql_types(row)


def test_denial_records_give_the_json_of_the_dict_they_replace() -> None:
    denial = LimitDenial("user", "alice", "requests", 600)
    assert denial.to_dict() == {
        "scope": "user",
        "key": "alice",
        "unit": "requests",
        "retry_after_ms": 600,
    }
    assert denial == denial.to_dict() and denial["scope"] == denial.scope == "user"
    assert STORE_DOWN.to_dict() == {"scope": "store", "key": None, "unit": None,
                                    "retry_after_ms": None}  # fmt: skip
    dropped = NoEligibleModel((DroppedCandidate("openai", "gpt-4o", "costs too much"),))
    assert dropped.to_dict() == {
        "reason": "no_eligible_model",
        "candidates": [
            {"provider": "openai", "model": "gpt-4o", "dropped_because": "costs too much"}
        ],
    }
    with pytest.raises(AttributeError):
        denial.scope = "ip"  # type: ignore[misc]


def test_a_decision_holds_a_typed_denial_and_its_json() -> None:
    engine = from_design("limit user 1 per 1d\n")
    assert engine.evaluate({"id": "a", "user": "u"}).allowed
    denied = engine.evaluate({"id": "b", "user": "u"})
    assert isinstance(denied.denied_by, LimitDenial)
    assert (denied.denied_by.scope, denied.denied_by.key) == ("user", "u")
    assert denied.to_dict()["denied_by"] == denied.denied_by.to_dict()
    json.dumps(denied.to_dict())
