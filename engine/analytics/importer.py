"""Import outcome records (JSONL or CSV) into the `outcomes` table, inside DuckDB.

    report = import_outcomes(con, "outcomes.csv", catalog, now_s=time.time())
    report.imported, report.rejected, report.reasons  # [(line, message), ...]

An outcome record (docs/metrics.md) has `provider, model, latency_ms, success` and optionally
`input_tokens, output_tokens, cost, timestamp` (ISO 8601 or epoch seconds; default: now),
`request_id, route, user`. `recorded_at` and `user_id` (the table's column names, as
`policyctl metrics export` writes them) are accepted for `timestamp` and `user`.

How it works, and why it is fast (1M rows/s, docs/metrics.md) — no good row ever enters Python:
- DuckDB reads the file as raw lines (one VARCHAR per line; blank lines kept as NULL, so
  line numbers stay exact);
- a CSV line is split on the header's delimiter (a line with quotes goes through a quote-aware
  split); a JSONL line is checked with `json_valid` and its fields extracted in one call;
- every field is read as text and typed with TRY_CAST; the model is resolved without a join:
  the row's provider and model names are cast to ENUMs of the catalog's names, whose codes
  index a constant list of the catalog's (provider, id or alias) -> canonical model;
- pass 1, on every core and without `preserve_insertion_order`: `INSERT INTO outcomes
  SELECT … WHERE ok OR _oi_reject(t)`, where `_oi_reject` is a Python function that DuckDB
  calls only for the rows that are not ok: it keeps their text and returns false. A file with
  no bad row is read once, and no row enters Python;
- only when some line was kept, pass 2 judges those distinct lines again (a small table, not
  the file) to say why, and one numbered scan (WITH ORDINALITY, under
  `preserve_insertion_order`) finds their line numbers — a row's verdict depends on its text
  alone, so equal lines share it. All in one transaction: good rows are imported even when
  others are bad; a file that cannot be read imports nothing.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.analytics.records import (
    BEFORE_1970,
    CACHED_OVER_INPUT,
    CACHED_WITHOUT_INPUT,
    CLOCK_SKEW_S,
    FUTURE,
    MISSING,
    NOT_AN_OBJECT,
    OUTCOME_ALIASES,
    OUTCOME_FIELDS,
    OUTCOME_REQUIRED,
    SHOWN,
    OutcomeRow,
    ahead_of,
    must_prefix,
    unknown_model,
)
from engine.catalog.model import Catalog, Model
from engine.errors import PolicyctlError

REQUIRED = OUTCOME_REQUIRED  # the outcome record's fields: engine.analytics.records
FIELDS = OUTCOME_FIELDS
ALIASES = OUTCOME_ALIASES

IMPORT_CLOCK = "this machine's clock"  # what a timestamp in the future is ahead of
CSV_SUFFIXES = (".csv", ".tsv")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSED = (".gz", ".zst")
DELIMITERS = (",", "\t", ";", "|")

# Read each line whole: a delimiter no text file holds, no quoting.
_LINE_DELIM = "\x1f\x1e\x1d\x1c"


class OutcomeImportError(PolicyctlError):
    """The file cannot be imported at all (nothing was imported)."""


@dataclass
class ImportReport:
    imported: int
    rejected: int
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (line, message), by line
    warnings: list[str] = field(default_factory=list)
    format: str = ""


def _duckdb_version() -> tuple[int, ...]:
    import duckdb

    parts = []
    for piece in duckdb.__version__.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _lambda(params: str, body: str) -> str:
    """A DuckDB lambda in the syntax of the installed version (`lambda x:` from 1.3)."""
    if _duckdb_version() >= (1, 3):
        return f"lambda {params}: {body}"
    return f"({params}) -> {body}"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def detect_format(path: str) -> str | None:
    """`csv` or `jsonl` from the file name (a .gz/.zst suffix aside), else None."""
    name = path.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    suffix = Path(name).suffix
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSON_SUFFIXES:
        return "jsonl"
    return None


def _lines_source(path: str, *, skip: int = 0, numbered: bool = False) -> str:
    """A relation of `t`, every physical line of the file after `skip` lines (and `line`,
    its number in the file, when `numbered`).

    With one column and strict mode off, DuckDB keeps blank lines (as NULL) and never joins
    lines, so the ordinal is the line number. `\\r\\n` endings and a UTF-8 BOM are removed.
    Numbering serialises the scan (an ordinal is a running count), so only the pass that
    reports bad rows asks for it; the pass that imports runs on every core.
    """
    reader = (
        f"read_csv({_sql_text(path)}, columns={{'t': 'VARCHAR'}}, header=false,"
        f" delim={_sql_text(_LINE_DELIM)}, quote='', escape='', auto_detect=false,"
        f" strict_mode=false, skip={int(skip)})"
    )
    if not numbered:
        return f"(SELECT t FROM {reader})"
    if _duckdb_version() >= (1, 3):
        return f"(SELECT o + {int(skip)} AS line, t FROM {reader} WITH ORDINALITY AS _l(t, o))"
    return f"(SELECT row_number() OVER () + {int(skip)} AS line, t FROM {reader})"


_NOT_BLANK = "t IS NOT NULL AND (ascii(t) > 32 OR trim(t) <> '')"


def _read_error(name: str, err: Exception) -> OutcomeImportError:
    text = str(err)
    lower = text.lower()
    if "unicode" in lower or "utf-8" in lower or "utf8" in lower:
        return OutcomeImportError(f"cannot import `{name}`: not UTF-8 text")
    if "maximum line size" in lower:
        return OutcomeImportError(f"cannot import `{name}`: a line is longer than 2 MB")
    first = text.splitlines()[0] if text else type(err).__name__
    return OutcomeImportError(f"cannot import `{name}`: {first}")


# ---------------------------------------------------------------- per format: raw text fields


def _csv_header(header: str, name: str, line: int) -> tuple[str, dict[str, int], list[str]]:
    """The delimiter, {field: 1-based position} and warnings for a CSV header line."""
    delimiter = next((d for d in DELIMITERS if d in header), ",")
    names = next(csv.reader([header], delimiter=delimiter))
    positions: dict[str, int] = {}
    unknown: list[str] = []  # `name` (did you mean `x`?)
    for i, raw in enumerate(names, start=1):
        column = raw.strip().lower()
        column = ALIASES.get(column, column)
        if column in positions:
            raise OutcomeImportError(
                f"{name}:{line}: the header names `{column}` twice (columns {positions[column]}"
                f" and {i})"
            )
        positions[column] = i  # an unknown one too, so a duplicate is still caught
        if column not in FIELDS:
            hint = difflib.get_close_matches(column, FIELDS, n=1)
            unknown.append(f"`{raw.strip()}`" + (f" (did you mean `{hint[0]}`?)" if hint else ""))
    missing = [f for f in REQUIRED if f not in positions]
    if missing:
        listed = ", ".join(f"`{f}`" for f in missing)
        also = f"; unknown: {', '.join(unknown)}" if unknown else ""
        raise OutcomeImportError(
            f"{name}:{line}: the header lacks the required column{'s' if len(missing) > 1 else ''}"
            f" {listed}{also} (a CSV file starts with a header naming its columns, e.g."
            " `provider,model,latency_ms,success`)"
        )
    warnings = [f"{name}:{line}: ignoring unknown column {u}" for u in unknown]
    return delimiter, {k: v for k, v in positions.items() if k in FIELDS}, warnings


def _csv_fields(lines: str, delimiter: str, positions: dict[str, int], width: int) -> str:
    """SELECT t, structural problem, and the raw text of every field, from CSV lines.

    A line without quotes is split on the delimiter. A line with quotes is cut at `"`: the
    odd pieces are outside quotes (their delimiters become \\x1f), the even ones inside, and
    an empty outside piece between two inside ones is an escaped `""`. An odd number of
    quotes is a value left open (a quoted value cannot span lines here).
    """
    d = _sql_text(delimiter)
    rejoin = _lambda(
        "p, i",
        "CASE WHEN i % 2 = 0 THEN p"
        " WHEN p = '' AND i > 1 AND i < n THEN '\"'"
        f" ELSE replace(p, {d}, chr(31)) END",
    )
    quoted_split = f"string_split(array_to_string(list_transform(parts, {rejoin}), ''), chr(31))"
    cells = {name: f"nullif(f[{pos}], '')" for name, pos in positions.items()}
    columns = ", ".join(f"{cells.get(name, 'NULL::VARCHAR')} AS {_raw(name)}" for name in FIELDS)
    return f"""
        SELECT t,
               CASE WHEN unterminated THEN 'unterminated quoted value'
                    WHEN len(f) <> {width}
                    THEN 'expected {width} values (as in the header), found ' || len(f)
               END AS structural,
               {columns}
        FROM (
            SELECT t, unterminated,
                   CASE WHEN parts IS NULL THEN string_split(t, {d})
                        WHEN NOT unterminated THEN {quoted_split}
                   END AS f
            FROM (
                SELECT t, parts, len(parts) AS n, len(parts) % 2 = 0 AS unterminated
                FROM (
                    SELECT t, CASE WHEN contains(t, '"') THEN string_split(t, '"') END AS parts
                    FROM {lines}
                    WHERE {_NOT_BLANK}
                )
            )
        )
    """


def _json_fields(lines: str) -> str:
    """SELECT t, structural problem, and the raw text of every field, from JSONL lines."""
    paths: list[str] = []
    index: dict[str, list[int]] = {}
    for name in FIELDS:
        index[name] = [len(paths) + 1]
        paths.append(f"$.{name}")
    for alias, name in ALIASES.items():
        index[name].append(len(paths) + 1)
        paths.append(f"$.{alias}")
    path_list = "[" + ", ".join(_sql_text(p) for p in paths) + "]"

    def cell(name: str) -> str:
        values = [f"v[{i}]" for i in index[name]]
        value = values[0] if len(values) == 1 else f"coalesce({', '.join(values)})"
        return f"nullif({value}, '')"

    columns = ", ".join(f"{cell(name)} AS {_raw(name)}" for name in FIELDS)
    return f"""
        SELECT t,
               CASE WHEN NOT valid THEN 'invalid JSON'
                    WHEN NOT is_object THEN {_sql_text(NOT_AN_OBJECT)}
               END AS structural,
               {columns}
        FROM (
            SELECT t, valid, is_object,
                   CASE WHEN is_object THEN json_extract_string(t, {path_list}) END AS v
            FROM (
                SELECT t, valid, valid AND starts_with(ltrim(t), '{{') AS is_object
                FROM (SELECT t, json_valid(t) AS valid FROM {lines} WHERE {_NOT_BLANK})
            )
        )
    """


def _raw(name: str) -> str:
    return f"raw_{name}"


# ---------------------------------------------------------------- typing and validation


def _typed_sql(fields_sql: str, now_s: float, catalog: Catalog) -> str:
    """Every row typed (TRY_CAST), its model resolved, and `ok`: whether it can be imported.

    Only cheap predicates here: messages are built for the bad rows alone (`_problems_sql`).
    An epoch-seconds timestamp is told from an ISO 8601 one by its fifth character (`-` in
    `2024-…`), so good rows never pay for a failed cast.
    """
    now_us = round(now_s * 1e6)
    latest = f"make_timestamp({now_us + CLOCK_SKEW_S * 1_000_000}::BIGINT)"
    lookup = _CatalogLookup(_catalog_rows(catalog))
    tokens = ("input_tokens_d", "output_tokens_d", "cached_tokens_d")
    cost = lookup.cost(*(f"coalesce({column}, 0)" for column in tokens))
    return f"""
        SELECT s.*, {lookup.column("provider")} AS provider, {lookup.column("id")} AS model,
               structural IS NULL AND _k IS NOT NULL
               AND coalesce(isfinite(latency_d) AND latency_d >= 0, false)
               AND success_b IS NOT NULL
               AND (raw_input_tokens IS NULL OR {_whole_ok("input_tokens_d")})
               AND (raw_output_tokens IS NULL OR {_whole_ok("output_tokens_d")})
               AND (raw_cached_tokens IS NULL OR {_whole_ok("cached_tokens_d")}
                    AND input_tokens_d IS NOT NULL AND cached_tokens_d <= input_tokens_d)
               AND (raw_cost IS NULL OR coalesce(isfinite(cost_d) AND cost_d >= 0, false))
               AND recorded_at IS NOT NULL AND recorded_at <= {latest}
               AND recorded_at >= TIMESTAMP '1970-01-01' AS ok,
               coalesce(recorded_at > {latest}, false) AS ahead,
               coalesce(cost_d, CASE WHEN input_tokens_d IS NOT NULL
                                       OR output_tokens_d IS NOT NULL
                   THEN {cost} END) AS cost
        FROM (
            SELECT *, {lookup.index("raw_provider", "raw_model")} AS _k,
                   CASE WHEN raw_timestamp IS NULL THEN make_timestamp({now_us}::BIGINT)
                        WHEN iso THEN CASE WHEN isfinite(ts_tz)
                                           THEN make_timestamp(epoch_us(ts_tz)) END
                        WHEN isfinite(ts_d) AND ts_d >= -62135596800 AND ts_d < 253402300800
                        THEN make_timestamp(CAST(round(ts_d * 1e6) AS BIGINT))
                   END AS recorded_at
            FROM (
                SELECT *,
                       TRY_CAST(raw_latency_ms AS DOUBLE) AS latency_d,
                       CASE raw_success WHEN 'true' THEN true WHEN 'false' THEN false
                            WHEN '1' THEN true WHEN '0' THEN false
                            WHEN 'True' THEN true WHEN 'False' THEN false
                            WHEN 'TRUE' THEN true WHEN 'FALSE' THEN false END AS success_b,
                       TRY_CAST(raw_input_tokens AS DOUBLE) AS input_tokens_d,
                       TRY_CAST(raw_output_tokens AS DOUBLE) AS output_tokens_d,
                       TRY_CAST(raw_cached_tokens AS DOUBLE) AS cached_tokens_d,
                       TRY_CAST(raw_cost AS DOUBLE) AS cost_d,
                       substr(raw_timestamp, 5, 1) = '-' AS iso,
                       CASE WHEN substr(raw_timestamp, 5, 1) = '-'
                            THEN TRY_CAST(raw_timestamp AS TIMESTAMPTZ) END AS ts_tz,
                       CASE WHEN substr(raw_timestamp, 5, 1) <> '-'
                            THEN TRY_CAST(raw_timestamp AS DOUBLE) END AS ts_d
                FROM ({fields_sql})
            )
        ) AS s
    """


def _whole_ok(column: str) -> str:
    return f"coalesce({column} >= 0 AND {column} = floor({column}) AND {column} < 9.0e15, false)"


def _quoted(column: str) -> str:
    """A bad value as a message shows it (`records.shown`): in backticks, cut at 40
    characters."""
    return (
        f"'`' || CASE WHEN strlen({column}) > {SHOWN} THEN left({column}, {SHOWN}) || '…'"
        f" ELSE {column} END || '`'"
    )


def _problems_sql() -> str:
    """The reasons a typed row is bad, joined by `; ` (the model is named in Python)."""
    missing = ", ".join(f"CASE WHEN {_raw(f)} IS NULL THEN '`{f}`' END" for f in REQUIRED)
    n_missing = " + ".join(f"({_raw(f)} IS NULL)::INTEGER" for f in REQUIRED)

    def whole(column: str) -> str:
        return (
            f"CASE WHEN {_raw(column)} IS NOT NULL AND NOT {_whole_ok(column + '_d')}"
            f" THEN {_sql_text(must_prefix(column))} || {_quoted(_raw(column))} END"
        )

    checks = [
        f"CASE WHEN {n_missing} > 0 THEN {_sql_text(MISSING)} || CASE WHEN {n_missing} > 1"
        f" THEN 's' ELSE '' END || ' ' || concat_ws(', ', {missing}) END",
        "CASE WHEN raw_latency_ms IS NOT NULL AND NOT coalesce(isfinite(latency_d)"
        f" AND latency_d >= 0, false) THEN {_sql_text(must_prefix('latency_ms'))} || "
        + _quoted("raw_latency_ms")
        + " END",
        "CASE WHEN raw_success IS NOT NULL AND success_b IS NULL THEN"
        f" {_sql_text(must_prefix('success'))} || " + _quoted("raw_success") + " END",
        whole("input_tokens"),
        whole("output_tokens"),
        whole("cached_tokens"),
        f"CASE WHEN raw_cached_tokens IS NOT NULL AND {_whole_ok('cached_tokens_d')} THEN"
        f" CASE WHEN raw_input_tokens IS NULL THEN {_sql_text(CACHED_WITHOUT_INPUT)}"
        f" WHEN {_whole_ok('input_tokens_d')} AND cached_tokens_d > input_tokens_d THEN"
        f" 'cached_tokens (' || {_quoted('raw_cached_tokens')} || ') must be at most"
        f" input_tokens (' || {_quoted('raw_input_tokens')} || ')'"
        f" || {_sql_text(CACHED_OVER_INPUT)} END END",
        "CASE WHEN raw_cost IS NOT NULL AND NOT coalesce(isfinite(cost_d) AND cost_d >= 0,"
        f" false) THEN {_sql_text(must_prefix('cost'))} || " + _quoted("raw_cost") + " END",
        "CASE WHEN raw_timestamp IS NOT NULL AND recorded_at IS NULL THEN"
        f" {_sql_text(must_prefix('timestamp'))} || "
        + _quoted("raw_timestamp")
        + f" WHEN ahead THEN {_sql_text(FUTURE)} || "
        + _quoted("raw_timestamp")
        + f" || {_sql_text(ahead_of(IMPORT_CLOCK))}"
        " WHEN recorded_at < TIMESTAMP '1970-01-01' THEN"
        f" {_sql_text(BEFORE_1970)} || " + _quoted("raw_timestamp") + " END",
    ]
    return f"coalesce(structural, nullif(concat_ws('; ', {', '.join(checks)}), ''))"


def _catalog_rows(catalog: Catalog) -> list[tuple[str, str, Model]]:
    """(provider, name, the entry it names) for every id and alias of the catalog."""
    rows = []
    for m in catalog.models:
        for name in (m.id, *m.aliases):
            found = catalog.find(m.provider, name)
            if found is not None:
                rows.append((m.provider, name, found))
    return rows


def _price_levels(model: Model) -> list[tuple[float, float, float]]:
    """(input, output, cached input) USD per 1M tokens below the first tier, then above each
    tier's `above`: the prices `Model.cost` uses for an input of that size (a tier without
    a cache price keeps the lower one's; a model without one bills cached tokens as input)."""
    read = model.cached_input_price
    levels = [(model.input_price, model.output_price, read)]
    for tier in model.tiers:
        if tier.cached_input is not None:
            read = tier.cached_input
        levels.append((tier.input, tier.output, read))
    return [(inp, out, inp if cached is None else cached) for inp, out, cached in levels]


class _CatalogLookup:
    """The catalog as SQL expressions, for a join-free model lookup.

    A row's (provider, model) names are cast to two ENUMs of the catalog's provider names and
    model names (ids and aliases); their codes index a constant list that gives the catalog
    row, 1-based, or NULL when no model has that name under that provider. A join against a
    table would do the same, but DuckDB may build its hash table on the file's side (a
    pipeline breaker holding every row); a cast is a hash lookup per row, streamed.
    """

    def __init__(self, rows: list[tuple[str, str, Model]]) -> None:
        self.rows = rows
        self.providers = sorted({r[0] for r in rows})
        self.names = sorted({r[1] for r in rows})
        cells: list[int | None] = [None] * (len(self.names) * len(self.providers))
        for k, (given, name, _model) in enumerate(rows, start=1):
            cells[self.names.index(name) * len(self.providers) + self.providers.index(given)] = k
        self.cells = cells
        self.tiered = any(model.tiers for _, _, model in rows)

    @staticmethod
    def _list(values: list[Any]) -> str:
        def one(v: Any) -> str:
            if v is None:
                return "NULL"
            if isinstance(v, str):
                return _sql_text(v)
            if isinstance(v, int):
                return str(v)
            if isinstance(v, list):
                return _CatalogLookup._list(v)
            return f"{float(v)!r}::DOUBLE"

        return "[" + ", ".join(one(v) for v in values) + "]"

    def index(self, provider: str, model: str) -> str:
        """The catalog row (1-based) of the named model, else NULL."""
        if not self.rows:
            return "NULL::INTEGER"
        providers = "ENUM(" + ", ".join(_sql_text(p) for p in self.providers) + ")"
        names = "ENUM(" + ", ".join(_sql_text(n) for n in self.names) + ")"
        return (
            f"{self._list(self.cells)}[enum_code(TRY_CAST({model} AS {names}))::INTEGER"
            f" * {len(self.providers)} + enum_code(TRY_CAST({provider} AS {providers}))::INTEGER"
            " + 1]"
        )

    def column(self, what: str) -> str:
        """The catalog row's `provider` or `id`, by `_k`."""
        if not self.rows:
            return "NULL::VARCHAR"
        return f"{self._list([getattr(r[2], what) for r in self.rows])}[_k]"

    def cost(self, input_tokens: str, output_tokens: str, cached_tokens: str) -> str:
        """USD for these token counts on the catalog row `_k`, as `Model.cost` computes it
        (the same operations in the same order, so the same double): the prices of the
        highest tier the input exceeds, cached tokens (part of the input) at the cached-input
        price."""
        if not self.rows:
            return "NULL::DOUBLE"
        levels = [_price_levels(r[2]) for r in self.rows]

        def price(at: int, level: str) -> str:
            return f"{self._list([[lv[at] for lv in row] for row in levels])}[_k][{level}]"

        if self.tiered:
            thresholds = self._list([[float(t.above) for t in r[2].tiers] for r in self.rows])
            over = _lambda("a", f"{input_tokens} > a")
            level = f"(len(list_filter({thresholds}[_k], {over})) + 1)"
        else:
            level = "1"
        return (
            f"(({input_tokens} - {cached_tokens}) * {price(0, level)}"
            f" + {cached_tokens} * {price(2, level)}"
            f" + {output_tokens} * {price(1, level)}) / 1e6"
        )


def _model_hint(catalog: Catalog, provider: str | None, model: str | None) -> str:
    """`unknown model `p/m` (did you mean `p/x`?)`, or `unknown provider `p``."""
    if provider is None or model is None:
        return ""  # reported as a missing field
    return unknown_model(catalog, provider, model)


# ---------------------------------------------------------------- the import

# Each column of `outcomes` (an `OutcomeRow` field) and what a typed row puts in it.
_OUTCOME_SELECT = {
    "recorded_at": "recorded_at",
    "provider": "provider",
    "model": "model",
    "latency_ms": "latency_d",
    "success": "success_b",
    "input_tokens": "input_tokens_d::BIGINT",
    "output_tokens": "output_tokens_d::BIGINT",
    "cached_tokens": "cached_tokens_d::BIGINT",
    "cost": "cost",
    "request_id": "raw_request_id",
    "route": "raw_route",
    "user_id": "raw_user",
}

_IN_LIST_MAX = 1000  # distinct bad lines up to which the numbered scan filters by a list


class _Rejects:
    """The bad lines of pass 1, collected as it runs, by a Python scalar function in its
    filter: `WHERE ok OR _oi_reject(t)`. DuckDB evaluates the right side of an OR only for the
    rows the left side did not select, so the function sees the bad lines alone (few, as a
    rule) and returns false for them; good rows never leave DuckDB. The function has side
    effects, so DuckDB neither caches it nor pushes the filter's conjuncts down into the
    projections (which would compute the split and the casts many times over: 25x slower).
    Should DuckDB ever call it for a good row too, pass 2 judges every collected line again,
    so the report stays exact.
    """

    NAME = "_oi_reject"

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, text: str) -> bool:
        self.lines.append(text)
        return False

    def register(self, con: Any) -> None:
        with contextlib.suppress(Exception):
            con.remove_function(self.NAME)
        con.create_function(self.NAME, self, ["VARCHAR"], "BOOLEAN", side_effects=True)

    def unregister(self, con: Any) -> None:
        with contextlib.suppress(Exception):
            con.remove_function(self.NAME)


def _find_rejects(
    con: Any, path: str, skip: int, lines: list[str], typed_of: Any
) -> list[tuple[Any, ...]]:
    """(line, unknown model?, provider, model, problems) of every bad line, by line.

    Pass 2 judges the distinct collected lines (a small table, not the file) and builds their
    reasons; one numbered scan of the file (serial: a line number is a running count) finds
    where they are. When they are few it keeps only the lines whose hash is one of theirs;
    else a semi-join on the hash does; then the texts are joined.
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _oi_lines AS SELECT DISTINCT unnest(?::VARCHAR[]) AS t",
        [lines],
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _oi_bad AS SELECT t, hash(t) AS h,"
        " model IS NULL AND structural IS NULL AS unknown, raw_provider, raw_model,"
        f" {_problems_sql()} AS problems FROM ({typed_of('(SELECT t FROM _oi_lines)')})"
        " WHERE NOT ok"
    )
    hashes = [h for (h,) in con.execute("SELECT DISTINCT h FROM _oi_bad").fetchall()]
    if not hashes:
        return []
    numbered = _lines_source(path, skip=skip, numbered=True)
    if len(hashes) <= _IN_LIST_MAX:
        listed = ", ".join(f"{int(h)}::UBIGINT" for h in hashes)
        candidates = f"(SELECT line, t FROM {numbered} WHERE hash(t) IN ({listed}))"
    else:
        candidates = f"(SELECT line, t FROM {numbered} WHERE hash(t) IN (SELECT h FROM _oi_bad))"
    con.execute("SET preserve_insertion_order = true")
    return con.execute(
        "SELECT n.line, b.unknown, b.raw_provider, b.raw_model, b.problems"
        f" FROM {candidates} AS n JOIN _oi_bad AS b ON b.t = n.t ORDER BY n.line"
    ).fetchall()


def import_outcomes(
    con: Any,
    path: str,
    catalog: Catalog,
    *,
    now_s: float,
    format: str | None = None,
    name: str | None = None,
) -> ImportReport:
    """Import a JSONL or CSV file of outcomes into `outcomes` (one transaction of its own).

    `path` is a file (`.csv`, `.tsv`, `.jsonl`, `.ndjson`, `.json`, optionally `.gz`/`.zst`)
    or `-` for stdin; the format comes from `format`, else the name, else the first non-blank
    line (`{` means JSONL). `now_s` (epoch seconds) stamps rows without a timestamp. `name`
    is how messages show the file. Raises OutcomeImportError when the file cannot be
    imported at all; bad rows are reported in the result, never raised.
    """
    shown = name if name is not None else ("<stdin>" if path == "-" else path)
    if format is not None and format not in ("csv", "jsonl"):
        raise OutcomeImportError(f"unknown format `{format}`: use csv or jsonl")
    if path == "-":
        with tempfile.TemporaryDirectory(prefix="policyctl-import-") as tmp:
            spooled = os.path.join(tmp, "stdin")
            with open(spooled, "wb") as out:
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            return _import_file(con, spooled, catalog, now_s, format, shown)
    try:
        if Path(path).is_dir():
            raise OutcomeImportError(f"cannot import `{shown}`: it is a directory")
        with open(path, "rb"):
            pass
    except OSError as err:
        raise OutcomeImportError(f"cannot read `{shown}`: {err.strerror}") from None
    return _import_file(con, path, catalog, now_s, format or detect_format(path), shown)


def _import_file(
    con: Any, path: str, catalog: Catalog, now_s: float, fmt: str | None, shown: str
) -> ImportReport:
    """Pass 1 imports the good rows (on every core) and hands the bad lines' texts to Python;
    only when there are some, pass 2 finds their reasons and one numbered scan puts line
    numbers on them (a verdict depends on the text alone)."""
    import duckdb

    from engine.analytics import schema as analytics

    analytics.ensure_schema(con)  # outcomes exists; timestamps are UTC
    try:
        first = con.execute(
            f"SELECT line, t FROM {_lines_source(path, numbered=True)} WHERE {_NOT_BLANK} LIMIT 1"
        ).fetchone()
    except duckdb.Error as err:
        raise _read_error(shown, err) from None
    if first is None:
        return ImportReport(0, 0, format=fmt or "")
    first_line, first_text = int(first[0]), str(first[1]).lstrip("\ufeff")
    if fmt is None:
        fmt = "jsonl" if first_text.lstrip().startswith("{") else "csv"
    warnings: list[str] = []
    if fmt == "csv":
        skip = first_line  # the header and any blank lines before it
        delimiter, positions, warnings = _csv_header(first_text, shown, first_line)
        width = len(next(csv.reader([first_text], delimiter=delimiter)))

        def fields_of(lines: str) -> str:
            return _csv_fields(lines, delimiter, positions, width)

    else:
        skip = first_line - 1
        fields_of = _json_fields

    def typed_of(lines: str) -> str:
        return _typed_sql(fields_of(lines), float(now_s), catalog)

    collected = _Rejects()
    # Only the numbered scan needs rows in file order (`preserve_insertion_order`, a global
    # setting: put back afterwards); the import itself runs without it, on every core.
    (preserving,) = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()
    con.execute("SET preserve_insertion_order = false")
    con.execute("BEGIN")
    rejects: list[tuple[Any, ...]] = []
    try:
        collected.register(con)
        (imported,) = con.execute(
            f"INSERT INTO outcomes ({', '.join(OutcomeRow._fields)})"
            f" SELECT {', '.join(_OUTCOME_SELECT[name] for name in OutcomeRow._fields)}"
            f" FROM ({typed_of(_lines_source(path, skip=skip))})"
            f" WHERE ok OR {_Rejects.NAME}(t)"
        ).fetchone()
        if collected.lines:
            rejects = _find_rejects(con, path, skip, collected.lines, typed_of)
        con.execute("COMMIT")
    except duckdb.Error as err:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise _read_error(shown, err) from None
    except BaseException:
        with contextlib.suppress(Exception):
            con.execute("ROLLBACK")
        raise
    finally:
        collected.unregister(con)
        for table in ("_oi_bad", "_oi_lines"):
            with contextlib.suppress(Exception):
                con.execute(f"DROP TABLE IF EXISTS {table}")
        with contextlib.suppress(Exception):
            con.execute(f"SET preserve_insertion_order = {bool(preserving)}")
    hints: dict[tuple[str, str], str] = {}
    reasons: list[tuple[int, str]] = []
    for line, unknown, provider, model, problems in rejects:
        parts = []
        if unknown and provider is not None and model is not None:
            key = (provider, model)
            if key not in hints:
                hints[key] = _model_hint(catalog, provider, model)
            parts.append(hints[key])
        if problems:
            parts.append(problems)
        reasons.append((int(line), "; ".join(parts) or "invalid row"))
    return ImportReport(int(imported), len(reasons), reasons, warnings, fmt)
