"""The DuckDB schema (the design's table and view names) and the queries behind the CLI.

Tables: rate_limit_configs, rate_limit_buckets, rate_limit_violations, user_quotas,
rate_limit_stats, rate_limit_settlements, rate_limit_waits, rate_limit_inflight, decisions,
outcomes. Views: rate_limit_summary, active_buckets, recent_violations, settled_deltas,
wait_summary, inflight_summary, provider_metrics (exact `quantile_cont` percentiles over
24 h).
Writers batch: a process collects violations, daily tallies and decisions in memory and
writes them in one transaction (`write_batch`), never one row per decision.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Sequence
from typing import Any

from engine.analytics.records import (
    ConfigRow,
    DecisionRow,
    InFlightRow,
    LimitEventRow,
    OutcomeRow,
    SettlementRow,
    ViolationRow,
    WaitRow,
    sql_types,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS rate_limit_configs (
    id VARCHAR PRIMARY KEY,          -- scope/unit/window_ms/key
    scope VARCHAR NOT NULL,
    key VARCHAR,                     -- NULL: the scope's default
    unit VARCHAR NOT NULL,           -- requests | tokens | spend
    max_requests DOUBLE NOT NULL,    -- the limit per window
    window_ms DOUBLE NOT NULL,
    burst DOUBLE NOT NULL,
    until TIMESTAMP,
    source VARCHAR NOT NULL,         -- policy file:line:col
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    shadow BOOLEAN,                  -- `shadow limit`: never denies (added later: NULL in old rows)
    lease_ms DOUBLE                  -- unit `concurrent`: the slot's lease, else NULL
);
CREATE TABLE IF NOT EXISTS rate_limit_buckets (
    bucket_key VARCHAR PRIMARY KEY,  -- scope/unit/window_ms/key
    scope VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    capacity DOUBLE NOT NULL,
    rate_per_ms DOUBLE NOT NULL,
    full_at_ms DOUBLE NOT NULL,      -- GCRA: when the bucket is full again
    last_used_ms DOUBLE NOT NULL
);
CREATE TABLE IF NOT EXISTS rate_limit_violations (
    violated_at TIMESTAMP NOT NULL,
    scope VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    tokens_requested DOUBLE NOT NULL,
    tokens_available DOUBLE NOT NULL,
    request_id VARCHAR
);
CREATE TABLE IF NOT EXISTS user_quotas (
    scope VARCHAR NOT NULL,
    key VARCHAR NOT NULL,
    max_requests DOUBLE NOT NULL,
    window_ms DOUBLE NOT NULL,
    burst DOUBLE NOT NULL,
    expires_at DOUBLE,               -- epoch seconds, NULL: never
    created_at TIMESTAMP NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS rate_limit_stats (
    day DATE NOT NULL,
    scope VARCHAR NOT NULL,
    total_requests BIGINT NOT NULL,
    allowed_requests BIGINT NOT NULL,
    denied_requests BIGINT NOT NULL,
    PRIMARY KEY (day, scope)
);
CREATE TABLE IF NOT EXISTS decisions (
    decided_at TIMESTAMP NOT NULL,
    request_id VARCHAR,
    allowed BOOLEAN NOT NULL,
    route VARCHAR NOT NULL,
    strategy VARCHAR NOT NULL,
    provider VARCHAR,
    model VARCHAR,
    estimated_cost DOUBLE,
    estimated_latency_ms DOUBLE,
    denied_scope VARCHAR,
    denied_key VARCHAR,
    policy_version VARCHAR NOT NULL,
    experiment VARCHAR,              -- added later: `ADDED_COLUMNS`
    arm VARCHAR,                     -- the arm route of an experiment (`split`), else NULL
    shadow BOOLEAN,                  -- true: a shadow route's decision, never served
    shadow_of VARCHAR,               -- its served decision's request id
    request VARCHAR,                 -- the request's features as JSON (--log-requests)
    explored BOOLEAN                 -- true: `explore` sent it to a little-measured model
);
CREATE TABLE IF NOT EXISTS rate_limit_settlements (
    settled_at TIMESTAMP NOT NULL,   -- the outcome's time, or when the reservation expired
    request_id VARCHAR NOT NULL,
    bucket_key VARCHAR NOT NULL,     -- scope/unit/window_ms/key
    scope VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,           -- tokens | spend
    estimate DOUBLE NOT NULL,        -- what the estimate took
    actual DOUBLE,                   -- what the outcome reported; NULL: not reported, expired
    delta DOUBLE NOT NULL,           -- applied: > 0 charged, < 0 refunded
    result VARCHAR NOT NULL          -- settled | unreported | expired | store_error
);
CREATE TABLE IF NOT EXISTS rate_limit_waits (
    finished_at TIMESTAMP NOT NULL,
    request_id VARCHAR,
    bucket_key VARCHAR NOT NULL,     -- the wait queue: scope/unit/key
    priority DOUBLE NOT NULL,
    waited_ms DOUBLE NOT NULL,
    outcome VARCHAR NOT NULL         -- admitted | timed_out | shutdown | queue_full
);
CREATE TABLE IF NOT EXISTS rate_limit_inflight (
    released_at TIMESTAMP NOT NULL,
    gauge_key VARCHAR NOT NULL,      -- scope/concurrent/lease_ms/key
    scope VARCHAR NOT NULL,
    request_id VARCHAR NOT NULL,
    held_ms DOUBLE NOT NULL,
    released_by VARCHAR NOT NULL     -- outcome | lease
);
CREATE TABLE IF NOT EXISTS installation (
    name VARCHAR PRIMARY KEY,        -- `key_salt`: the salt of hashed user and IP keys
    value VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    recorded_at TIMESTAMP NOT NULL,
    provider VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    latency_ms DOUBLE NOT NULL,
    success BOOLEAN NOT NULL,
    input_tokens BIGINT,
    output_tokens BIGINT,
    cost DOUBLE,
    request_id VARCHAR,
    route VARCHAR,
    user_id VARCHAR,
    cached_tokens BIGINT             -- added after 0.x: `ADDED_COLUMNS`
);
CREATE OR REPLACE VIEW provider_metrics AS
    SELECT provider, model,
           quantile_cont(latency_ms, 0.50) AS p50_ms,
           quantile_cont(latency_ms, 0.95) AS p95_ms,
           quantile_cont(latency_ms, 0.99) AS p99_ms,
           avg(CASE WHEN success THEN 1.0 ELSE 0.0 END) AS success_rate,
           avg(cost) AS avg_cost,
           count(*) AS samples
    FROM outcomes
    WHERE recorded_at >= now()::TIMESTAMP - INTERVAL 24 HOUR
    GROUP BY provider, model;
CREATE OR REPLACE VIEW rate_limit_summary AS
    SELECT scope,
           sum(total_requests) AS total_requests,
           sum(allowed_requests) AS allowed_requests,
           sum(denied_requests) AS denied_requests,
           CASE WHEN sum(total_requests) = 0 THEN NULL
                ELSE round(100.0 * sum(allowed_requests) / sum(total_requests), 2) END
               AS approval_rate
    FROM rate_limit_stats GROUP BY scope;
CREATE OR REPLACE VIEW active_buckets AS
    SELECT bucket_key, scope, unit, key, capacity,
           greatest(0.0, capacity - greatest(0.0, full_at_ms - epoch_ms(now())) * rate_per_ms)
               AS tokens,
           round(100.0 * greatest(0.0, capacity - greatest(0.0, full_at_ms - epoch_ms(now()))
               * rate_per_ms) / capacity, 1) AS fill_percent,
           make_timestamp(CAST(last_used_ms * 1000 AS BIGINT)) AS last_used
    FROM rate_limit_buckets WHERE full_at_ms > epoch_ms(now());
CREATE OR REPLACE VIEW settled_deltas AS
    SELECT CAST(settled_at AS DATE) AS day, scope, unit,
           count(DISTINCT request_id) AS reservations,
           count(*) FILTER (WHERE result = 'settled') AS buckets_settled,
           count(*) FILTER (WHERE result = 'expired') AS buckets_expired,
           coalesce(sum(-delta) FILTER (WHERE delta < 0), 0) AS refunded,
           coalesce(sum(delta) FILTER (WHERE delta > 0), 0) AS charged,
           coalesce(sum(delta), 0) AS net_delta
    FROM rate_limit_settlements GROUP BY ALL;
CREATE OR REPLACE VIEW wait_summary AS
    SELECT CAST(finished_at AS DATE) AS day, bucket_key, outcome,
           count(*) AS requests,
           avg(waited_ms) AS avg_waited_ms,
           max(waited_ms) AS max_waited_ms
    FROM rate_limit_waits GROUP BY ALL;
CREATE OR REPLACE VIEW inflight_summary AS
    SELECT CAST(released_at AS DATE) AS day, gauge_key, released_by,
           count(*) AS releases,
           avg(held_ms) AS avg_held_ms,
           max(held_ms) AS max_held_ms
    FROM rate_limit_inflight GROUP BY ALL;
CREATE OR REPLACE VIEW recent_violations AS
    SELECT * FROM rate_limit_violations
    WHERE violated_at >= now()::TIMESTAMP - INTERVAL 24 HOUR ORDER BY violated_at DESC;
"""


# Columns added to a table after files were written without them: `ensure_schema` adds
# them to an older file (at the end, where a new file has them too), so old state and
# analytics files stay readable and writable. Their rows hold NULL there.
ADDED_COLUMNS = (
    ("outcomes", "cached_tokens", "BIGINT"),
    ("decisions", "experiment", "VARCHAR"),
    ("decisions", "arm", "VARCHAR"),
    ("decisions", "shadow", "BOOLEAN"),
    ("decisions", "shadow_of", "VARCHAR"),
    ("decisions", "request", "VARCHAR"),
    ("decisions", "explored", "BOOLEAN"),
    ("rate_limit_configs", "shadow", "BOOLEAN"),
    ("rate_limit_configs", "lease_ms", "DOUBLE"),
)


def ensure_schema(con: Any) -> None:
    """Create what is missing, and add the `ADDED_COLUMNS` an older file lacks. Timestamps
    are UTC (naive TIMESTAMP columns hold UTC)."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute(SCHEMA)
    for table, column, kind in ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")


def key_salt(con: Any) -> bytes:
    """This installation's salt for hashed user and IP keys: made once (16 random bytes),
    kept in the state file, so the same user hashes alike across restarts and processes
    that share the file, and differently in another installation."""
    con.execute(
        "INSERT INTO installation VALUES ('key_salt', ?) ON CONFLICT DO NOTHING",
        [secrets.token_hex(16)],
    )
    (value,) = con.execute("SELECT value FROM installation WHERE name = 'key_salt'").fetchone()
    return bytes.fromhex(value)


def write_limit_events(con: Any, rows: Sequence[LimitEventRow]) -> None:
    """Append rate-limit event rows (settlements, waits, in-flight releases), each to its
    table, in the order given within a table."""
    for row_type, table in LIMIT_EVENT_TABLES.items():
        found = [row for row in rows if type(row) is row_type]
        if found:
            insert_records(con, table, row_type, found)


LIMIT_EVENT_TABLES: dict[type[tuple[Any, ...]], str] = {
    SettlementRow: "rate_limit_settlements",
    WaitRow: "rate_limit_waits",
    InFlightRow: "rate_limit_inflight",
}


def write_configs(con: Any, rows: Iterable[ConfigRow]) -> None:
    """Replace the policy's limits with `rows` (one per id: the last wins), all enabled."""
    con.execute("DELETE FROM rate_limit_configs")
    unique = list({r.id: r for r in rows}.values())
    fields = ConfigRow._fields
    select = ", ".join(
        f"to_timestamp(c{i})::TIMESTAMP" if name == "until" else f"c{i}"
        for i, name in enumerate(fields)
    )
    insert_rows(
        con,
        f"INSERT INTO rate_limit_configs ({', '.join(fields)}, enabled)",
        sql_types(ConfigRow),
        unique,
        select + ", TRUE",
    )


def write_batch(
    con: Any,
    *,
    violations: Sequence[ViolationRow] = (),
    stats: dict[tuple[str, str], tuple[int, int]] | None = None,
    decisions: Sequence[DecisionRow] = (),
) -> None:
    """Append a batch of log rows (inside the caller's transaction).

    violations: `ViolationRow`s; decisions: `DecisionRow`s
    stats: (day, scope) -> (allowed, denied), added to the day's totals
    """
    if violations:
        insert_records(con, "rate_limit_violations", ViolationRow, violations)
    for (day, scope), (allowed, denied) in (stats or {}).items():
        con.execute(
            "INSERT INTO rate_limit_stats VALUES (?::DATE, ?, ?, ?, ?) "
            "ON CONFLICT (day, scope) DO UPDATE SET "
            "total_requests = total_requests + excluded.total_requests, "
            "allowed_requests = allowed_requests + excluded.allowed_requests, "
            "denied_requests = denied_requests + excluded.denied_requests",
            (day, scope, allowed + denied, allowed, denied),
        )
    if decisions:
        write_decisions(con, decisions)


DECISION_COLUMNS = DecisionRow._fields
DECISION_TYPES = sql_types(DecisionRow)
OUTCOME_COLUMNS = OutcomeRow._fields
OUTCOME_TYPES = sql_types(OutcomeRow)


def write_decisions(con: Any, rows: Sequence[DecisionRow]) -> None:
    """Append decision rows."""
    insert_records(con, "decisions", DecisionRow, rows)


def write_outcomes(con: Any, rows: Sequence[OutcomeRow]) -> None:
    """Append outcome rows."""
    insert_records(con, "outcomes", OutcomeRow, rows)


def insert_records(
    con: Any, table: str, row: type[tuple[Any, ...]], rows: Sequence[Sequence[Any]]
) -> None:
    """Append rows of a record class (`engine.analytics.records`) to `table`: its fields
    name the columns and give their types; a `…_at` field (epoch seconds) becomes a
    TIMESTAMP."""
    fields: tuple[str, ...] = row._fields  # type: ignore[attr-defined]
    select = ", ".join(
        f"to_timestamp(c{i})::TIMESTAMP" if name.endswith("_at") else f"c{i}"
        for i, name in enumerate(fields)
    )
    insert_rows(con, f"INSERT INTO {table} ({', '.join(fields)})", sql_types(row), rows, select)


INSERT_CELLS = 16384  # values bound per statement: rows x columns (2,048 rows of 8 columns)


def insert_rows(
    con: Any,
    insert: str,
    types: Sequence[str],
    rows: Sequence[Sequence[Any]],
    select: str,
) -> None:
    """`insert` (e.g. `INSERT INTO t`) the rows, a statement per `INSERT_CELLS` values: each
    column goes in as one typed list parameter and comes out through `unnest` as `c0`,
    `c1`, … for `select`. DuckDB's `executemany` runs one statement per row (about 100x
    slower). DuckDB binds the lists holding the GIL, and a writer thread runs this beside
    the event loop: one statement for thousands of rows stalled every request for tens of
    milliseconds, so the rows go in chunks and the GIL is offered between them (the caller's
    transaction holds them all)."""
    if not rows:
        return
    if len(rows[0]) != len(types):
        raise ValueError(f"{insert}: rows have {len(rows[0])} columns, expected {len(types)}")
    unnests = ", ".join(f"unnest(?::{t}[]) AS c{i}" for i, t in enumerate(types))
    statement = f"{insert} SELECT {select} FROM (SELECT {unnests})"
    step = max(1, INSERT_CELLS // len(types))
    for at in range(0, len(rows), step):
        if at:
            time.sleep(0)  # the GIL offered: a thread waiting for it runs now
        chunk = rows[at : at + step]
        columns = [list(column) for column in zip(*chunk, strict=True)]
        if len(columns) != len(types):
            raise ValueError(f"{insert}: rows have {len(columns)} columns, expected {len(types)}")
        con.execute(statement, columns)


def recent_outcomes(con: Any, since_epoch_s: float) -> list[tuple[Any, ...]]:
    """(epoch_s, provider, model, latency_ms, success, cost) since a time, oldest first."""
    return con.execute(
        "SELECT epoch(recorded_at), provider, model, latency_ms, success, coalesce(cost, 0)"
        " FROM outcomes WHERE recorded_at >= to_timestamp(?)::TIMESTAMP ORDER BY recorded_at",
        (since_epoch_s,),
    ).fetchall()
