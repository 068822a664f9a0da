"""`policyctl metrics import|show|export`: the outcome log in the DuckDB state file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.cli import progress
from engine.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    UsageError,
    add_format,
    add_policy,
    check_state_url,
    cli_clock,
    default_policy_path,
    dump_json,
    render_table,
)
from engine.limits.stores import default_state_url
from engine.units import format_money as money
from engine.units import format_timestamp, parse_duration_s
from engine.vocabulary import MEMORY_URLS

MAX_SHOWN_REJECTS = 50
DEFAULT_WINDOW = "24h"
EXPORT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}

EXAMPLE = """\
examples:
  policyctl metrics import outcomes.jsonl
  policyctl metrics show --window 1h --provider claude
  policyctl metrics export --output outcomes.parquet --window 7d

Outcomes live in the DuckDB state file (--state; default $POLICYCTL_STATE, else
~/.local/state/policyctl/state.duckdb); `policyctl eval --state FILE` routes on them.
"""

IMPORT_EXAMPLE = """\
examples:
  policyctl metrics import outcomes.jsonl
  policyctl metrics import --state ./state.duckdb outcomes.csv
  gzip -dc outcomes.csv.gz | policyctl metrics import --input-format csv -

A record: provider, model, latency_ms, success (true/false, 1/0) and optionally
input_tokens, output_tokens, cost, timestamp (ISO 8601 or epoch seconds; default now),
request_id, route, user. A CSV file starts with a header naming its columns.

  {"provider": "anthropic", "model": "claude-haiku-4-5", "latency_ms": 840, "success": true}

Bad rows are reported as FILE:LINE: reason (the first 50) and skipped; the good rows are
imported in one transaction. exit codes: 0 all imported, 2 some rejected or bad input,
4 state file busy
"""

SHOW_EXAMPLE = """\
examples:
  policyctl metrics show
  policyctl metrics show --window 1h --provider gemini --format json

Per provider and model over the window: exact p50/p95/p99 latency (DuckDB quantile_cont,
linear interpolation), success rate, average cost and the number of outcomes.
"""

EXPORT_EXAMPLE = """\
examples:
  policyctl metrics export --output outcomes.parquet
  policyctl metrics export --output last-day.csv --window 24h --provider openai

The format comes from --format, else the extension (.parquet, .pq, .csv, .csv.gz).
Rows are written oldest first. A CSV export can be imported again with
`policyctl metrics import`.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "metrics",
        help="import, show and export outcomes (latency, success, cost)",
        description="The outcome log that routing measures: import records, show per-model "
        "percentiles, export for analysis.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    imp = actions.add_parser(
        "import",
        help="import outcomes from JSONL or CSV (or - for stdin)",
        description="Import outcome records into the state file's outcome log.",
        epilog=IMPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("input", metavar="FILE", help="a .jsonl or .csv file (.gz too), or -")
    imp.add_argument(
        "--input-format",
        choices=("jsonl", "csv"),
        help="the file's format (default: from its extension, else from its first line)",
    )
    _add_state(imp)
    add_policy(imp)
    add_format(imp, default="table")
    imp.set_defaults(run=run_import)

    show = actions.add_parser(
        "show",
        help="p50/p95/p99, success rate, average cost and count per provider and model",
        description="Per provider and model over a window: exact latency percentiles, success "
        "rate, average cost, count.",
        epilog=SHOW_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_window(show, DEFAULT_WINDOW)
    show.add_argument("--provider", help="only this provider")
    show.add_argument(
        "--by",
        choices=("model", "arm"),
        default="model",
        help="model: per provider and model (the default); arm: per experiment arm (`split`),"
        " its decisions and the outcomes of its requests",
    )
    _add_state(show)
    add_format(show, default="table")
    show.set_defaults(run=run_show)

    export = actions.add_parser(
        "export",
        help="write outcomes to a Parquet or CSV file",
        description="Write the outcome log (or a window of it) to a Parquet or CSV file.",
        epilog=EXPORT_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--output", "-o", metavar="FILE", required=True, help="the file to write")
    export.add_argument(
        "--format",
        choices=("parquet", "csv"),
        help="the file format (default: from the --output extension)",
    )
    _add_window(export, None)
    export.add_argument("--provider", help="only this provider")
    _add_state(export)
    export.set_defaults(run=run_export)


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state",
        metavar="URL",
        help="the DuckDB state file holding the outcome log (default: $POLICYCTL_STATE, else"
        " ~/.local/state/policyctl/state.duckdb)",
    )


def _add_window(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--window",
        metavar="DURATION",
        default=default,
        help="only outcomes recorded within this duration of now: 30m, 1h, 24h, 7d"
        + (f" (default: {default})" if default else " (default: all)"),
    )


# ---------------------------------------------------------------- helpers


def _state_path(url: str | None) -> str:
    state = url if url is not None else default_state_url()
    check_state_url(state)
    if state in MEMORY_URLS or "://" in state:
        raise UsageError(
            f"the outcome log lives in a DuckDB state file; `{state}` is not one"
            " (use --state PATH, e.g. --state ./state.duckdb)"
        )
    if not state.strip():
        raise UsageError("the state file path is empty")
    return state


def _open(state: str, *, create: bool) -> Any:
    """The state file's connection (waiting for its lock); for a file that does not exist yet
    and `create` false, an empty in-memory database with the same schema."""
    from engine.analytics import queries
    from engine.limits.stores import open_analytics

    path = Path(state).expanduser()
    if path.is_dir():
        raise UsageError(f"the state file `{state}` is a directory")
    con: Any = open_analytics(state) if create or path.exists() else queries.empty_log()
    queries.quiet(con)
    return con


def _since(window_s: float | None, now: float) -> int | None:
    """The window's start in epoch microseconds (None: everything)."""
    return None if window_s is None else round((now - window_s) * 1e6)


# ---------------------------------------------------------------- import


def run_import(args: argparse.Namespace) -> int:
    from engine.analytics.importer import import_outcomes
    from engine.language.loader import load_policy

    state = _state_path(args.state)
    name = "<stdin>" if args.input == "-" else args.input
    if args.input != "-" and not Path(args.input).exists():
        raise UsageError(f"cannot read `{args.input}`: no such file")
    policy = args.policy if args.policy is not None else default_policy_path()
    catalog = load_policy(policy).program.catalog
    con = _open(state, create=True)
    try:  # an OutcomeImportError is a PolicyctlError: `main` prints it, exit 2
        with progress.task(f"importing {Path(name).name}", unit="%") as bar:
            with progress.duckdb_query(con, bar):
                report = import_outcomes(
                    con, args.input, catalog, now_s=cli_clock()(), format=args.input_format,
                    name=name,
                )  # fmt: skip
            bar.summary = f"imported {report.imported:,} outcome rows"
    finally:
        con.close()
    more = report.rejected - MAX_SHOWN_REJECTS
    if args.format == "json":
        dump_json(
            {
                "file": name,
                "format": report.format,
                "state": state,
                "imported": report.imported,
                "rejected": report.rejected,
                "rejects": [
                    {"line": line, "reason": reason}
                    for line, reason in report.reasons[:MAX_SHOWN_REJECTS]
                ],
                "rejects_not_shown": max(0, more),
            }
        )
    else:
        print(f"imported {report.imported} outcomes, rejected {report.rejected}")
    sys.stdout.flush()  # the summary first, then what was wrong with which line
    for warning in report.warnings:
        print(warning, file=sys.stderr)
    for line, reason in report.reasons[:MAX_SHOWN_REJECTS]:
        print(f"{name}:{line}: {reason}", file=sys.stderr)
    if more > 0:
        print(f"… and {more} more", file=sys.stderr)
    return EXIT_BAD_INPUT if report.rejected else EXIT_OK


# ---------------------------------------------------------------- show


def show_rows(con: Any, since_us: int | None, provider: str | None) -> list[dict[str, Any]]:
    """Per provider/model: samples, exact p50/p95/p99 (quantile_cont), success rate, cost."""
    from engine.analytics import queries

    rows = []
    for prov, model, samples, q, success_rate, avg_cost in queries.model_summary(
        con, since_us, provider
    ):
        rows.append(
            {
                "provider": prov,
                "model": model,
                "samples": int(samples),
                "p50_ms": q[0],
                "p95_ms": q[1],
                "p99_ms": q[2],
                "success_rate": float(success_rate),
                "avg_cost": None if avg_cost is None else float(avg_cost),
            }
        )
    return rows


def arm_rows(con: Any, since_us: int | None) -> list[dict[str, Any]]:
    """Per experiment arm: decisions, allowed, and the outcomes of its requests."""
    from engine.analytics import queries

    rows = []
    for (
        experiment,
        arm,
        decisions,
        allowed,
        outcomes,
        q,
        rate,
        cost,
        estimated,
    ) in queries.arm_summary(con, since_us):
        rows.append(
            {
                "experiment": experiment,
                "arm": arm,
                "decisions": int(decisions),
                "allowed": int(allowed),
                "outcomes": int(outcomes),
                "p50_ms": None if q is None else q[0],
                "p95_ms": None if q is None else q[1],
                "p99_ms": None if q is None else q[2],
                "success_rate": None if rate is None else float(rate),
                "cost": None if cost is None else float(cost),
                "avg_estimated_cost": None if estimated is None else float(estimated),
            }
        )
    return rows


def run_show_arms(args: argparse.Namespace) -> int:
    """`metrics show --by arm`."""
    if args.provider is not None:
        raise UsageError("--provider is for `--by model`; an arm spans providers")
    state = _state_path(args.state)
    window_s = parse_duration_s(args.window, error=UsageError)
    now = cli_clock()()
    con = _open(state, create=False)
    try:
        rows = arm_rows(con, _since(window_s, now))
    finally:
        con.close()
    since = format_timestamp(now - window_s, timespec="seconds")
    window = args.window.strip()
    if args.format == "json":
        dump_json({"state": state, "window": window, "since": since, "arms": rows})
        return EXIT_OK
    if not rows:
        print(f"no experiment decisions in the last {window} (state: {state})")
        return EXIT_OK
    table = [
        (
            r["experiment"], r["arm"], r["decisions"], r["allowed"], r["outcomes"],
            *(None if r[k] is None else _ms(r[k]) for k in ("p50_ms", "p95_ms", "p99_ms")),
            None if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}%",
            None if r["cost"] is None else money(r["cost"]),
        )
        for r in rows
    ]  # fmt: skip
    headers = (
        "experiment", "arm", "decisions", "allowed", "outcomes", "p50", "p95", "p99",
        "success", "cost",
    )  # fmt: skip
    print(render_table(headers, table))
    print(f"(last {window}, since {since}; outcomes joined to decisions by request id)")
    return EXIT_OK


def run_show(args: argparse.Namespace) -> int:
    if getattr(args, "by", "model") == "arm":
        return run_show_arms(args)
    state = _state_path(args.state)
    window_s = parse_duration_s(args.window, error=UsageError)
    now = cli_clock()()
    con = _open(state, create=False)
    try:
        rows = show_rows(con, _since(window_s, now), args.provider)
    finally:
        con.close()
    since = format_timestamp(now - window_s, timespec="seconds")
    if args.format == "json":
        dump_json(
            {
                "state": state,
                "window": args.window.strip(),
                "since": since,
                "provider": args.provider,
                "models": rows,
            }
        )
        return EXIT_OK
    window = args.window.strip()
    if not rows:
        who = f" for provider `{args.provider}`" if args.provider else ""
        print(f"no outcomes{who} in the last {window} (state: {state})")
        return EXIT_OK
    table = [
        (
            r["provider"], r["model"], r["samples"], _ms(r["p50_ms"]), _ms(r["p95_ms"]),
            _ms(r["p99_ms"]), f"{100 * r['success_rate']:.1f}%",
            None if r["avg_cost"] is None else money(r["avg_cost"]),
        )
        for r in rows
    ]  # fmt: skip
    headers = ("provider", "model", "samples", "p50", "p95", "p99", "success", "avg cost")
    print(render_table(headers, table))
    print(f"(last {window}, since {since})")
    return EXIT_OK


def _ms(value: float) -> str:
    return f"{value:,.1f}ms"


# ---------------------------------------------------------------- export


def export_format(output: str, given: str | None) -> str:
    if given is not None:
        return given
    name = output.lower()
    for suffix in (".gz", ".zst"):
        name = name.removesuffix(suffix)
    fmt = EXPORT_FORMATS.get(Path(name).suffix)
    if fmt is None:
        raise UsageError(
            f"cannot tell the format of `{output}` from its extension: use --format parquet"
            " or --format csv (or name it .parquet or .csv)"
        )
    return fmt


def run_export(args: argparse.Namespace) -> int:
    from engine.analytics import queries

    def write(con: Any, out: Path, fmt: str, since: int | None) -> int:
        return queries.export_outcomes(con, out, fmt, since, args.provider)

    return export_rows(args, write, "outcomes")


def export_rows(
    args: argparse.Namespace,
    write: Callable[[Any, Path, str, int | None], int],
    noun: str,
) -> int:
    """`--output FILE [--format] [--window] [--state]`: checks the flags, opens the state
    file, has `write(con, out, fmt, since_us)` write the rows and says how many (`metrics
    export`, `log export`)."""
    from engine.analytics import queries

    state = _state_path(args.state)
    fmt = export_format(args.output, args.format)
    window_s = None if args.window is None else parse_duration_s(args.window, error=UsageError)
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise UsageError(f"cannot write `{args.output}`: it is a directory")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write `{args.output}`: no such directory `{out.parent}`")
    since = _since(window_s, cli_clock()())
    con = _open(state, create=False)
    try:
        count = write(con, out, fmt, since)
    except queries.ExportError as err:
        raise UsageError(f"cannot write `{args.output}`: {err}") from None
    finally:
        con.close()
    print(f"exported {count} {noun} to {args.output} ({fmt})")
    return EXIT_OK
