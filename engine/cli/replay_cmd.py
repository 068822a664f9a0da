"""`policyctl replay`: logged traffic decided again under a new policy set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.common import EXIT_OK, UsageError, dump_json
from engine.limits.stores import default_state_url
from engine.units import parse_timestamp_s

EXAMPLE = """\
examples:
  policyctl replay --policy new-policies/                       # the default state file's log
  policyctl replay --policy new.policy --baseline old.policy --from state.duckdb
  policyctl replay --policy new.policy --from 'logs/*.parquet' --since 2026-11-24 --format json
  policyctl replay --policy new.policy --format html > report.html    # one file, opens offline

Every logged request (its features: --log-requests on eval and serve) is decided again
under --policy, in time order, on fresh memory buckets and the live measurements rebuilt
from the log's outcomes; with --baseline, under that set too, else compared with the
logged decision. Nothing is written and no real limit is consumed. A decision changed
when allowed/denied, the provider or the model differ. Cost and latency are projected
from each model's measured mean over the log's outcomes (a model never measured: its
estimate, marked *). See docs/replay.md.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="decide logged traffic again under a new policy: what would change",
        description="Replay the decision log under a new policy set and report what changes.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", metavar="PATH", required=True, help="the new policy set")
    p.add_argument(
        "--baseline", metavar="PATH", help="the policy set to compare with (default: the log)"
    )
    p.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="a DuckDB state file, Parquet files from `policyctl log export` (a glob), or a"
        " .jsonl file of requests in any accepted format (needs --baseline); default:"
        " $POLICYCTL_STATE, else the default state file",
    )
    p.add_argument("--since", metavar="TIME", help="only traffic from this date or time (UTC)")
    p.add_argument("--until", metavar="TIME", help="only traffic before this date or time")
    p.add_argument(
        "--format",
        choices=("table", "json", "html"),
        default="table",
        help="the report (html: one self-contained page with charts)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.analytics.decision_log import read_decision_log, read_requests_jsonl
    from engine.replay.report import as_json, text
    from engine.replay.run import replay

    since = (
        None if args.since is None else parse_timestamp_s(args.since, "--since", error=UsageError)
    )
    until = (
        None if args.until is None else parse_timestamp_s(args.until, "--until", error=UsageError)
    )
    if since is not None and until is not None and until <= since:
        raise UsageError("`--until` must come after `--since`")
    source = args.source if args.source is not None else default_state_url()
    for flag, path in (("--policy", args.policy), ("--baseline", args.baseline)):
        if path is not None and not Path(path).exists():
            raise UsageError(f"`{flag}`: no such file or directory `{path}`")
    if source.endswith(".jsonl"):
        if since is not None or until is not None:
            raise UsageError("`--since` and `--until` read the log's times; a JSONL file has none")
        log = read_requests_jsonl(source)
    else:
        log = read_decision_log(source, since, until)
    report = replay(
        log, Path(args.policy), Path(args.baseline) if args.baseline is not None else None
    )
    if args.format == "json":
        dump_json(as_json(report))
    elif args.format == "html":
        from engine.replay.html import render

        sys.stdout.flush()
        sys.stdout.buffer.write(render(as_json(report)).encode("utf-8"))
    else:
        print(text(report))
    return EXIT_OK
