"""`policyctl log export`: the decision log (with request features and outcomes) as a file."""

from __future__ import annotations

import argparse

from engine.cli.metrics_cmd import _add_state, _add_window, export_rows

EXAMPLE = """\
examples:
  policyctl log export --output decisions.parquet
  policyctl log export --output last-week.parquet --window 7d --state ./state.duckdb
  policyctl log export --output decisions.csv

One row per logged decision, oldest first: the decision's columns (the `decisions` table,
with `request`, the request's features as JSON: docs/metrics.md), and for a served
decision the last outcome recorded for its request id (`outcome_at`, `outcome_latency_ms`,
`outcome_success`, `outcome_input_tokens`, `outcome_output_tokens`,
`outcome_cached_tokens`, `outcome_cost`; NULL when none came). Parquet files from many
instances can be read together by DuckDB, pandas or Spark.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "log",
        help="export the decision log, with request features and outcomes",
        description="The decision log of a DuckDB state file.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    export = actions.add_parser(
        "export",
        help="write the decision log, each decision with its outcome, to Parquet or CSV",
        description="Write the decision log (or a window of it) to a Parquet or CSV file.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--output", "-o", metavar="FILE", required=True, help="the file to write")
    export.add_argument(
        "--format",
        choices=("parquet", "csv"),
        help="the file format (default: from the --output extension)",
    )
    _add_window(export, None)
    _add_state(export)
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> int:
    from engine.analytics import queries

    return export_rows(args, queries.export_decisions, "decisions")
