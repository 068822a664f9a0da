"""The decision log read back for a replay: logged decisions with what they kept of each
request, and the outcomes of the same period, from a DuckDB state file or from Parquet
files written by `policyctl log export` (a glob: the logs of many instances).

Shadow decisions are left out (they were never served). Rows come oldest first.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import EXIT_BAD_INPUT, PolicyctlError


class LogSourceError(PolicyctlError, exit_code=EXIT_BAD_INPUT):
    """A replay source that cannot be read as a decision log."""


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    at: float  # epoch seconds
    request_id: str | None
    allowed: bool
    route: str
    provider: str | None
    model: str | None
    estimated_cost: float | None
    estimated_latency_ms: float | None
    denied_scope: str | None  # a limit's scope, or the reason (`no_eligible_model`, …)
    request: str | None  # the request's features as JSON (`--log-requests`), None if not kept
    raw: bool = False  # `request` is a request as a client sent it (a JSONL source): no
    # decision was logged for it


@dataclass(frozen=True, slots=True)
class LoggedOutcome:
    at: float  # epoch seconds
    provider: str
    model: str
    latency_ms: float
    success: bool
    cost: float | None
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class DecisionLog:
    decisions: tuple[LoggedDecision, ...]
    outcomes: tuple[LoggedOutcome, ...]


_DECISION_COLUMNS = (
    "epoch_us(decided_at) / 1e6, request_id, allowed, route, provider, model,"
    " estimated_cost, estimated_latency_ms, denied_scope, request"
)
_OUTCOME_COLUMNS = (
    "epoch_us(recorded_at) / 1e6, provider, model, latency_ms, success, cost,"
    " input_tokens, output_tokens"
)


def _window(column: str, since_s: float | None, until_s: float | None) -> str:
    clauses = []
    if since_s is not None:
        clauses.append(f"{column} >= make_timestamp({round(since_s * 1e6)})")
    if until_s is not None:
        clauses.append(f"{column} < make_timestamp({round(until_s * 1e6)})")
    return " AND ".join(clauses) or "TRUE"


def read_decision_log(
    source: str, since_s: float | None = None, until_s: float | None = None
) -> DecisionLog:
    """The log of a DuckDB state file, or of Parquet files (`*.parquet`, a glob), between
    `since_s` and `until_s` (epoch seconds; decisions and outcomes alike)."""
    import duckdb

    parquet = source.endswith(".parquet") or any(ch in source for ch in "*?[")
    try:
        if parquet:
            files = sorted(glob.glob(source))
            if not files:
                raise LogSourceError(f"`{source}`: no Parquet file matches")
            con = duckdb.connect()
            listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            table = f"read_parquet([{listed}], union_by_name = true)"
            decisions = con.execute(
                f"SELECT {_DECISION_COLUMNS} FROM {table}"
                f" WHERE shadow IS NULL AND {_window('decided_at', since_s, until_s)}"
                " ORDER BY decided_at"
            ).fetchall()
            outcomes = con.execute(
                "SELECT epoch_us(outcome_at) / 1e6, provider, model, outcome_latency_ms,"
                " outcome_success, outcome_cost, outcome_input_tokens, outcome_output_tokens"
                f" FROM {table} WHERE outcome_at IS NOT NULL AND shadow IS NULL"
                f" AND {_window('outcome_at', since_s, until_s)} ORDER BY outcome_at"
            ).fetchall()
        else:
            if not Path(source).is_file():
                raise LogSourceError(f"`{source}`: no such state file")
            con = duckdb.connect(source, read_only=True)
            decisions = con.execute(
                f"SELECT {_DECISION_COLUMNS} FROM decisions"
                f" WHERE shadow IS NULL AND {_window('decided_at', since_s, until_s)}"
                " ORDER BY decided_at"
            ).fetchall()
            outcomes = con.execute(
                f"SELECT {_OUTCOME_COLUMNS} FROM outcomes"
                f" WHERE {_window('recorded_at', since_s, until_s)} ORDER BY recorded_at"
            ).fetchall()
        con.close()
    except duckdb.Error as err:
        raise LogSourceError(f"`{source}`: {str(err).splitlines()[0]}") from None
    return DecisionLog(
        tuple(LoggedDecision(*_floats(row, 0)) for row in decisions),
        tuple(LoggedOutcome(*_floats(row, 0)) for row in outcomes),
    )


def _floats(row: tuple[Any, ...], index: int) -> tuple[Any, ...]:
    return (float(row[index]), *row[index + 1 :])


def read_requests_jsonl(source: str) -> DecisionLog:
    """A JSONL file of requests in any accepted format (native or a wire body), one a line,
    as a log without decisions or outcomes: the requests come one a second, in file order
    (a line's `id` is its request id when it has one). Blank lines are skipped; a line
    that is not a JSON object is an error naming it."""
    import json

    path = Path(source)
    if not path.is_file():
        raise LogSourceError(f"`{source}`: no such file")
    decisions: list[LoggedDecision] = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                body = json.loads(line)
            except json.JSONDecodeError as err:
                raise LogSourceError(f"{source}:{number}: not JSON: {err.msg}") from None
            if not isinstance(body, dict):
                raise LogSourceError(f"{source}:{number}: a request is a JSON object")
            rid = body.get("id") if isinstance(body.get("id"), str) else f"line-{number}"
            logged = LoggedDecision(
                float(number), rid, False, "", None, None, None, None, None, line.strip(), True
            )
            decisions.append(logged)
    return DecisionLog(tuple(decisions), ())
