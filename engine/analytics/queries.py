"""The queries behind what `policyctl ratelimit` and `policyctl metrics` show.

Each function takes a DuckDB connection (with the analytics schema) and typed parameters,
and returns rows; the commands and the rate-limit admin format them. `duckdb` is imported
lazily, only where a database is made here, so importing this module stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.analytics import schema as analytics
from engine.errors import PolicyctlError

# (provider, model, samples, [p50, p95, p99] ms, success rate, average cost or None)
ModelSummary = tuple[str, str, int, list[float], float, float | None]
# (day as `YYYY-MM-DD`, scope, allowed, denied)
DailyStats = tuple[str, str, int, int]
# (violated_at in epoch µs, scope, key, unit, requested, available, request id)
ViolationRow = tuple[int, str, str, str, float, float, str | None]


class ExportError(PolicyctlError):
    """DuckDB could not write an export; the message is its first line."""


def empty_log() -> Any:
    """An in-memory database with the analytics schema: what a state file that does not
    exist yet would hold."""
    import duckdb

    con = duckdb.connect()
    analytics.ensure_schema(con)
    return con


def quiet(con: Any) -> None:
    """No progress bar on long queries: the CLI's output stays what it prints."""
    con.execute("SET enable_progress_bar = false")


# ----------------------------------------------------------------------------- outcomes


def _where(
    since_us: int | None, provider: str | None, *, inline: bool = False
) -> tuple[str, list[Any]]:
    """The WHERE clause and its parameters (`inline`: as quoted literals, for COPY)."""
    clauses, params = [], []
    if since_us is not None:
        clauses.append(f"recorded_at >= make_timestamp({int(since_us) if inline else '?'}::BIGINT)")
        params.append(since_us)
    if provider is not None:
        clauses.append(f"provider = {_literal(provider) if inline else '?'}")
        params.append(provider)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), [] if inline else params


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


SUMMARY_SQL = """
    SELECT provider, model, count(*) AS samples,
           quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS q,
           avg(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
           avg(cost) AS avg_cost
    FROM outcomes{where}
    GROUP BY provider, model
    ORDER BY provider, model
"""


def model_summary(con: Any, since_us: int | None, provider: str | None) -> list[ModelSummary]:
    """Per provider/model since `since_us` (epoch µs; None: all): samples, exact
    p50/p95/p99 (quantile_cont), success rate and average cost (`metrics show`)."""
    where, params = _where(since_us, provider)
    return list(con.execute(SUMMARY_SQL.format(where=where), params).fetchall())


# (experiment, arm, decisions, allowed, outcomes, [p50, p95, p99] ms or None, success rate
# or None, total outcome cost or None, average estimated cost or None)
ArmSummary = tuple[
    str, str, int, int, int, list[float] | None, float | None, float | None, float | None
]

ARM_SQL = """
    WITH d AS (
        SELECT experiment, arm, request_id, allowed, estimated_cost FROM decisions
        WHERE arm IS NOT NULL AND shadow IS NOT TRUE{since}
    ),
    counts AS (
        SELECT experiment, arm, count(*) AS decisions,
               count(*) FILTER (WHERE allowed) AS allowed,
               avg(estimated_cost) AS avg_estimated_cost
        FROM d GROUP BY experiment, arm
    ),
    requests AS (
        SELECT DISTINCT experiment, arm, request_id FROM d WHERE request_id IS NOT NULL
    ),
    measured AS (
        SELECT r.experiment, r.arm, count(*) AS outcomes,
               quantile_cont(o.latency_ms, [0.5, 0.95, 0.99]) AS q,
               avg(CASE WHEN o.success THEN 1.0 ELSE 0.0 END) AS success_rate,
               sum(o.cost) AS cost
        FROM requests r JOIN outcomes o ON o.request_id = r.request_id
        GROUP BY r.experiment, r.arm
    )
    SELECT c.experiment, c.arm, c.decisions, c.allowed, coalesce(m.outcomes, 0), m.q,
           m.success_rate, m.cost, c.avg_estimated_cost
    FROM counts c LEFT JOIN measured m ON m.experiment = c.experiment AND m.arm = c.arm
    ORDER BY c.experiment, c.arm
"""


def arm_summary(con: Any, since_us: int | None) -> list[ArmSummary]:
    """Per experiment arm, from the decision log since `since_us` (epoch µs; None: all):
    decisions and allowed ones, and from the outcomes of those requests (joined by request
    id) their count, exact p50/p95/p99, success rate and total cost (`metrics show --by
    arm`). A decision without a request id has no outcome to join."""
    since = "" if since_us is None else " AND decided_at >= make_timestamp(?::BIGINT)"
    params = [] if since_us is None else [since_us]
    return list(con.execute(ARM_SQL.format(since=since), params).fetchall())


def export_outcomes(
    con: Any, out: Path, fmt: str, since_us: int | None, provider: str | None
) -> int:
    """Write the outcomes (oldest first) to `out` as `parquet` or `csv` (`metrics export`);
    how many. A file DuckDB cannot write raises ExportError."""
    where, _ = _where(since_us, provider, inline=True)
    return _copy(con, f"SELECT * FROM outcomes{where} ORDER BY recorded_at", out, fmt)


def _copy(con: Any, query: str, out: Path, fmt: str) -> int:
    """`COPY (query) TO out` as `parquet` or `csv`; how many rows. A file DuckDB cannot
    write raises ExportError."""
    import duckdb

    options = "FORMAT parquet" if fmt == "parquet" else "FORMAT csv, HEADER true"
    try:
        result = con.execute(f"COPY ({query}) TO {_literal(str(out))} ({options})").fetchone()
    except duckdb.Error as err:
        raise ExportError(str(err).splitlines()[0]) from None
    return int(result[0]) if result else 0


DECISION_LOG_SQL = """
    SELECT d.*,
           o.recorded_at AS outcome_at, o.latency_ms AS outcome_latency_ms,
           o.success AS outcome_success, o.input_tokens AS outcome_input_tokens,
           o.output_tokens AS outcome_output_tokens, o.cached_tokens AS outcome_cached_tokens,
           o.cost AS outcome_cost
    FROM decisions d
    LEFT JOIN (
        SELECT * FROM outcomes WHERE request_id IS NOT NULL
        QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY recorded_at DESC) = 1
    ) o ON o.request_id = d.request_id AND d.shadow IS NULL
    {where}
    ORDER BY d.decided_at
"""


def export_decisions(con: Any, out: Path, fmt: str, since_us: int | None) -> int:
    """Write the decision log (oldest first), each served decision with the last outcome
    recorded for its request id, to `out` as `parquet` or `csv` (`log export`); how many.
    A file DuckDB cannot write raises ExportError."""
    where = "" if since_us is None else f"WHERE d.decided_at >= make_timestamp({int(since_us)})"
    return _copy(con, DECISION_LOG_SQL.format(where=where), out, fmt)


# ----------------------------------------------------------------------------- rate limits


def limit_stats(con: Any) -> list[DailyStats]:
    """Every written day's allowed/denied counts per scope (`ratelimit stats`)."""
    return list(
        con.execute(
            "SELECT CAST(day AS VARCHAR), scope, allowed_requests, denied_requests"
            " FROM rate_limit_stats"
        ).fetchall()
    )


def violations(con: Any, key: str | None, scope: str | None, count: int) -> list[ViolationRow]:
    """The `count` newest written violations, of one key and/or scope if given
    (`ratelimit violations`)."""
    where: list[str] = []
    params: list[Any] = []
    if key is not None:
        where.append("key = ?")
        params.append(key)
    if scope is not None:
        where.append("scope = ?")
        params.append(scope)
    sql = (
        "SELECT epoch_us(violated_at), scope, key, unit, tokens_requested,"
        " tokens_available, request_id FROM rate_limit_violations"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY violated_at DESC, rowid DESC LIMIT ?"
    )
    return list(con.execute(sql, [*params, count]).fetchall())
