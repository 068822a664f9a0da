"""`policyctl replay`: logged traffic decided again under a new policy set."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from engine.cli import progress
from engine.cli.common import EXIT_OK, UsageError, dump_json
from engine.limits.stores import default_state_url
from engine.units import parse_timestamp_s

if TYPE_CHECKING:
    from engine.replay.run import ReplayReport

EXAMPLE = """\
examples:
  policyctl replay --policy new-policies/                       # the default state file's log
  policyctl replay --policy new.policy --baseline old.policy --from state.duckdb
  policyctl replay --policy new.policy --from 'logs/*.parquet' --since 2026-11-24 --format json
  policyctl replay --policy new.policy --format html > report.html    # one file, opens offline
  policyctl replay --policy new.policy --from 'logs/*.parquet' --shard 2/8 --format json > 2.json
  policyctl replay merge 1.json 2.json 3.json 4.json 5.json 6.json 7.json 8.json

Every logged request (its features: --log-requests on eval and serve) is decided again
under --policy, in time order, on fresh memory buckets and the live measurements rebuilt
from the log's outcomes; with --baseline, under that set too, else compared with the
logged decision. Nothing is written and no real limit is consumed. A decision changed
when allowed/denied, the provider or the model differ. Cost and latency are projected
from each model's measured mean over the log's outcomes (a model never measured: its
estimate, marked *). --shard K/N decides only the requests of one user-keyed shard
(every per-user bucket whole in one shard; other limits approximate), and `replay merge`
adds the shards' JSON reports up. See docs/replay.md.
"""

MERGE_EXAMPLE = """\
examples:
  policyctl replay --policy new.policy --from 'logs/*.parquet' --shard 1/2 --format json > 1.json
  policyctl replay --policy new.policy --from 'logs/*.parquet' --shard 2/2 --format json > 2.json
  policyctl replay merge 1.json 2.json --format html > report.html

The reports must be one split: the same N, each K once, the same policy and baseline.
Counts and totals are summed, means recomputed from the totals, and each model pair keeps
its earliest examples. Limits not kept per user are approximate in a sharded replay (the
report names them). See docs/replay.md.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "replay",
        help="decide logged traffic again under a new policy: what would change",
        description="Replay the decision log under a new policy set and report what changes.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--policy", metavar="PATH", help="the new policy set (required)")
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
    p.add_argument(
        "--shard",
        metavar="K/N",
        help="replay shard K of N only (split by user key); merge the JSON reports with"
        " `policyctl replay merge`",
    )
    p.add_argument(
        "--no-batch",
        action="store_true",
        help="decide every request through the full per-request path (`evaluate`), not the"
        " lean batch path: the same report, slower (docs/replay.md)",
    )
    p.set_defaults(run=run)
    actions = p.add_subparsers(dest="replay_action", metavar="{merge}")
    m = actions.add_parser(
        "merge",
        help="add up the JSON reports of a sharded replay into one report",
        description="Merge the JSON reports of `policyctl replay --shard K/N` (every K of"
        " one N) into the report of the whole log.",
        epilog=MERGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m.add_argument("reports", nargs="+", metavar="REPORT.json", help="one report per shard")
    m.add_argument("--format", choices=("table", "json", "html"), default="table")
    m.set_defaults(run=run_merge)


def _show(report: ReplayReport, fmt: str) -> None:
    from engine.replay.report import as_json, text

    if fmt == "json":
        dump_json(as_json(report))
    elif fmt == "html":
        from engine.replay.html import render

        sys.stdout.flush()
        sys.stdout.buffer.write(render(as_json(report)).encode("utf-8"))
    else:
        print(text(report))


def run_merge(args: argparse.Namespace) -> int:
    import json

    from engine.replay.merge import merge

    reports = []
    for name in args.reports:
        try:
            reports.append(json.loads(Path(name).read_text(encoding="utf-8")))
        except OSError as err:
            raise UsageError(f"`{name}`: {err.strerror or err}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise UsageError(f"`{name}`: not a JSON report ({err})") from None
    _show(merge(reports, args.reports), args.format)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    from engine.analytics.decision_log import read_decision_log, read_requests_jsonl
    from engine.replay.run import ReplayError, Shard, replay

    if args.policy is None:
        raise UsageError("`--policy` is required: the policy set to replay the log under")
    try:
        shard = None if args.shard is None else Shard.parse(args.shard)
    except ReplayError as err:
        raise UsageError(str(err)) from None
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
    with log, progress.task("replaying", unit="requests") as bar:
        report = replay(
            log,
            Path(args.policy),
            Path(args.baseline) if args.baseline is not None else None,
            shard,
            lambda done: bar(done, None),
            batch=not args.no_batch,
        )
        bar.summary = f"replayed {report.replayed:,} requests"
    _show(report, args.format)
    return EXIT_OK
