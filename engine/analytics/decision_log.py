"""The decision log read back for a replay: logged decisions with what they kept of each
request, and the outcomes of the same period, from a DuckDB state file or from Parquet
files written by `policyctl log export` (a glob: the logs of many instances).

Shadow decisions are left out (they were never served). Rows come oldest first, streamed
in batches: DuckDB sorts a log larger than its memory limit on disk, in a temporary
directory removed on close.
"""

from __future__ import annotations

import functools
import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from engine.errors import EXIT_BAD_INPUT, PolicyctlError


class LogSourceError(PolicyctlError, exit_code=EXIT_BAD_INPUT):
    """A replay source that cannot be read as a decision log."""


class LoggedDecision(NamedTuple):
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


class LoggedOutcome(NamedTuple):
    at: float  # epoch seconds
    provider: str
    model: str
    latency_ms: float
    success: bool
    cost: float | None
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True, slots=True)
class ModelMeans:
    """A model's mean latency and cost over the log's outcomes (what a replay projects with)."""

    target: str  # provider/model
    latency_ms: float
    cost: float | None  # None: no outcome of it carried a cost


BATCH_ROWS = 10_000  # rows fetched from DuckDB at a time
MEMORY_LIMIT = "256MB"  # DuckDB's: a larger log's time-ordered sort spills to a temp directory


class DecisionLog:
    """A decision log read as streams, oldest first: the decisions (with what they kept of
    each request) and the outcomes of the same period, in batches, so a replay's memory
    stays flat in the log's size. Close it (or use it as a context manager)."""

    raw = False  # the decisions are requests as clients sent them (a JSONL file)
    since_s: float | None = None  # the window's start, when one was given

    def decisions(self) -> Iterator[LoggedDecision]:
        raise NotImplementedError

    def outcomes(self, warm_s: float = 0.0) -> Iterator[LoggedOutcome]:
        """The outcomes of the window, and of the `warm_s` seconds before its start (to
        warm live measurements: a window with no start has nothing before it)."""
        raise NotImplementedError

    def means(self) -> list[ModelMeans]:
        """Each model's mean latency and cost over the window's outcomes."""
        raise NotImplementedError

    def traffic_before(self, window_s: float) -> bool:
        """Whether the log holds decisions in the `window_s` before the window's start (none
        without a start: the log is all the traffic there was)."""
        return False

    def close(self) -> None:
        return None

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_DECISION_COLUMNS = (
    "epoch_us(decided_at) / 1e6, request_id, allowed, route, provider, model,"
    " estimated_cost, estimated_latency_ms, denied_scope, request, false"
)


@dataclass(frozen=True, slots=True)
class _Source:
    """The SQL of one source: the state file's tables, or the Parquet files' rows."""

    parquet: str | None  # the `read_parquet(…)` table; None: a state file
    since_s: float | None
    until_s: float | None

    def decisions(self) -> str:
        table = self.parquet or "decisions"
        return (
            f"SELECT {_DECISION_COLUMNS} FROM {table}"
            f" WHERE shadow IS NULL AND {_window('decided_at', self.since_s, self.until_s)}"
            " ORDER BY decided_at"
        )

    def _outcomes(self, since_s: float | None) -> tuple[str, str]:
        """(the FROM … WHERE of the outcomes since `since_s`, their time column)"""
        if self.parquet is None:
            where = _window("recorded_at", since_s, self.until_s)
            return f"FROM outcomes WHERE {where}", "recorded_at"
        where = _window("outcome_at", since_s, self.until_s)
        return (
            f"FROM {self.parquet} WHERE outcome_at IS NOT NULL AND shadow IS NULL AND {where}",
            "outcome_at",
        )

    def outcomes(self, warm_s: float) -> str:
        since = None if self.since_s is None else self.since_s - warm_s
        rows, at = self._outcomes(since)
        if self.parquet is None:
            columns = "provider, model, latency_ms, success, cost, input_tokens, output_tokens"
        else:
            columns = (
                "provider, model, outcome_latency_ms, outcome_success, outcome_cost,"
                " outcome_input_tokens, outcome_output_tokens"
            )
        return f"SELECT epoch_us({at}) / 1e6, {columns} {rows} ORDER BY {at}"

    def means(self) -> str:
        rows, _ = self._outcomes(self.since_s)
        prefix = "" if self.parquet is None else "outcome_"
        return (
            f"SELECT provider || '/' || model, avg({prefix}latency_ms), avg({prefix}cost)"
            f" {rows} GROUP BY ALL"
        )


# rows come from DuckDB in the records' field order (times already epoch seconds as
# DOUBLE): made as tuples, not through the generated constructors (several times slower)
_new_decision = functools.partial(tuple.__new__, LoggedDecision)
_new_outcome = functools.partial(tuple.__new__, LoggedOutcome)


class _DuckDBLog(DecisionLog):
    def __init__(self, source: str, con: Any, sql: _Source, spill: Any) -> None:
        self._source, self._con, self._sql, self._spill = source, con, sql, spill
        self.since_s = sql.since_s

    def _rows(self, sql: str) -> Iterator[tuple[Any, ...]]:
        import duckdb

        cursor = self._con.cursor()
        try:
            cursor.execute(sql)
            while batch := cursor.fetchmany(BATCH_ROWS):
                yield from batch
        except duckdb.Error as err:
            raise LogSourceError(f"`{self._source}`: {str(err).splitlines()[0]}") from None
        finally:
            cursor.close()

    def decisions(self) -> Iterator[LoggedDecision]:
        return map(_new_decision, self._rows(self._sql.decisions()))

    def outcomes(self, warm_s: float = 0.0) -> Iterator[LoggedOutcome]:
        return map(_new_outcome, self._rows(self._sql.outcomes(warm_s)))

    def means(self) -> list[ModelMeans]:
        return [ModelMeans(*row) for row in self._rows(self._sql.means())]

    def traffic_before(self, window_s: float) -> bool:
        since = self._sql.since_s
        if since is None or window_s <= 0:
            return False
        table = self._sql.parquet or "decisions"
        sql = (
            f"SELECT count(*) FROM {table}"
            f" WHERE shadow IS NULL AND {_window('decided_at', since - window_s, since)}"
        )
        return any(count for (count,) in self._rows(sql))

    def close(self) -> None:
        self._con.close()
        self._spill.cleanup()


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
    `since_s` and `until_s` (epoch seconds; decisions and outcomes alike, and outcomes
    from before `since_s` when asked to warm), streamed."""
    import tempfile

    import duckdb

    parquet = source.endswith(".parquet") or any(ch in source for ch in "*?[")
    if parquet:
        files = sorted(glob.glob(source))
        if not files:
            raise LogSourceError(f"`{source}`: no Parquet file matches")
        listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        sql = _Source(f"read_parquet([{listed}], union_by_name = true)", since_s, until_s)
    elif not Path(source).is_file():
        raise LogSourceError(f"`{source}`: no such state file")
    else:
        sql = _Source(None, since_s, until_s)
    spill = tempfile.TemporaryDirectory(prefix="policyctl-replay-")
    try:
        con = duckdb.connect() if parquet else duckdb.connect(source, read_only=True)
        con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
        con.execute("SET temp_directory = ?", [spill.name])
        con.execute(f"SELECT 1 FROM ({sql.decisions()}) LIMIT 0")  # the columns are there
    except duckdb.Error as err:
        spill.cleanup()
        raise LogSourceError(f"`{source}`: {str(err).splitlines()[0]}") from None
    return _DuckDBLog(source, con, sql, spill)


class _JsonlLog(DecisionLog):
    raw = True

    def __init__(self, path: Path) -> None:
        self._path = path

    def decisions(self) -> Iterator[LoggedDecision]:
        import json

        source = str(self._path)
        with self._path.open(encoding="utf-8") as lines:
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
                yield LoggedDecision(
                    float(number), rid, False, "", None, None, None, None, None, line.strip(),
                    True,
                )  # fmt: skip

    def outcomes(self, warm_s: float = 0.0) -> Iterator[LoggedOutcome]:
        return iter(())

    def means(self) -> list[ModelMeans]:
        return []


def read_requests_jsonl(source: str) -> DecisionLog:
    """A JSONL file of requests in any accepted format (native or a wire body), one a line,
    as a log without decisions or outcomes: the requests come one a second, in file order
    (a line's `id` is its request id when it has one). Blank lines are skipped; a line
    that is not a JSON object is an error naming it (raised when the stream reaches it)."""
    path = Path(source)
    if not path.is_file():
        raise LogSourceError(f"`{source}`: no such file")
    return _JsonlLog(path)
