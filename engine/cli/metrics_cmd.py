"""`policyctl metrics import|show|export`: the outcome log in the DuckDB state file."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.analytics.summary import BY, SUMMARY_PATH, SummaryQuery, since_us, summary
from engine.cli import progress
from engine.cli.common import (
    ASK_THE_SERVER,
    EXIT_BAD_INPUT,
    EXIT_OK,
    WAIT_LONGER,
    UsageError,
    add_format,
    add_lock_wait,
    add_policy,
    check_state_url,
    cli_clock,
    default_policy_path,
    dump_json,
    lock_help,
    lock_wait_s,
    render_table,
)
from engine.cli.server_client import add_server, server_client
from engine.limits.stores import default_state_url
from engine.units import format_money as money
from engine.units import parse_duration_s
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
  policyctl metrics show --server http://127.0.0.1:8080   (a running `policyctl serve`)

Per provider and model over the window: exact p50/p95/p99 latency (DuckDB quantile_cont,
linear interpolation), success rate, average cost and the number of outcomes.
While `policyctl serve` holds the state file, ask it with --server URL (or
$POLICYCTL_SERVER; the token from $POLICYCTL_ADMIN_TOKEN): the same output, the server's
numbers.
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
        choices=BY,
        default="model",
        help="model: per provider and model (the default); arm: per experiment arm (`split`),"
        " its decisions and the outcomes of its requests",
    )
    _add_state(show)
    add_server(show)
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
    add_lock_wait(parser)


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


def _open(state: str, args: argparse.Namespace, *, create: bool, server: bool = False) -> Any:
    """The state file's connection (waiting `--lock-wait` for its lock); for a file that does
    not exist yet and `create` false, an empty in-memory database with the same schema.
    `server`: the command takes --server, which a locked file's error suggests."""
    from engine.analytics import queries
    from engine.limits.stores import open_analytics

    path = Path(state).expanduser()
    if path.is_dir():
        raise UsageError(f"the state file `{state}` is a directory")
    wait_s = lock_wait_s(args)
    if not (create or path.exists()):
        # (not an error: a fresh install has recorded nothing yet; but a mistyped --state
        # would look just like it, so say which file was not there)
        print(
            f"policyctl: note: no state file at `{state}` yet: nothing recorded there"
            " (check --state or $POLICYCTL_STATE)",
            file=sys.stderr,
        )
        con: Any = queries.empty_log()
    else:
        with lock_help(*((ASK_THE_SERVER,) if server else ()), WAIT_LONGER):
            con = open_analytics(state, lock_timeout_s=wait_s)
    queries.quiet(con)
    return con


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
    con = _open(state, args, create=True)
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


def run_show(args: argparse.Namespace) -> int:
    """`metrics show`: the summary of the state file's log, or of a running server's."""
    if args.by == "arm" and args.provider is not None:
        raise UsageError("--provider is for `--by model`; an arm spans providers")
    client = server_client(args)
    state = _state_path(args.state) if client is None else None
    window_s = parse_duration_s(args.window, error=UsageError)
    if client is not None:
        params = {"window": args.window.strip(), "by": args.by}
        if args.provider is not None:
            params["provider"] = args.provider
        report: dict[str, Any] = client.get(SUMMARY_PATH, params)
    else:
        assert state is not None
        query = SummaryQuery(args.window.strip(), window_s, cli_clock()(), args.provider, args.by)
        con = _open(state, args, create=False, server=True)
        try:
            report = summary(con, state, query)
        finally:
            con.close()
    if args.format == "json":
        dump_json(report)
    elif args.by == "arm":
        print(_arms_table(report))
    else:
        print(_models_table(report))
    return EXIT_OK


def _arms_table(report: dict[str, Any]) -> str:
    """`metrics show --by arm` for people."""
    rows, window, since = report["arms"], report["window"], report["since"]
    if not rows:
        return f"no experiment decisions in the last {window} (state: {report['state']})"
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
    return (
        render_table(headers, table)
        + f"\n(last {window}, since {since}; outcomes joined to decisions by request id)"
    )


def _models_table(report: dict[str, Any]) -> str:
    """`metrics show` for people."""
    rows, window, provider = report["models"], report["window"], report["provider"]
    if not rows:
        who = f" for provider `{provider}`" if provider else ""
        return f"no outcomes{who} in the last {window} (state: {report['state']})"
    table = [
        (
            r["provider"], r["model"], r["samples"], _ms(r["p50_ms"]), _ms(r["p95_ms"]),
            _ms(r["p99_ms"]), f"{100 * r['success_rate']:.1f}%",
            None if r["avg_cost"] is None else money(r["avg_cost"]),
        )
        for r in rows
    ]  # fmt: skip
    headers = ("provider", "model", "samples", "p50", "p95", "p99", "success", "avg cost")
    return render_table(headers, table) + f"\n(last {window}, since {report['since']})"


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
    if args.output == "-":  # (import reads `-` as stdin; export would make a file named `-`)
        raise UsageError("`--output -`: the export is written to a file, not to standard output")
    fmt = export_format(args.output, args.format)
    window_s = None if args.window is None else parse_duration_s(args.window, error=UsageError)
    out = Path(args.output).expanduser()
    if out.is_dir():
        raise UsageError(f"cannot write `{args.output}`: it is a directory")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write `{args.output}`: no such directory `{out.parent}`")
    since = since_us(window_s, cli_clock()())
    con = _open(state, args, create=False)
    try:
        count = write(con, out, fmt, since)
    except queries.ExportError as err:
        raise UsageError(f"cannot write `{args.output}`: {err}") from None
    finally:
        con.close()
    print(f"exported {count} {noun} to {args.output} ({fmt})")
    return EXIT_OK
