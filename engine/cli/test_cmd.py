"""`policyctl test [PATHS]`: run the tests beside policies (`NAME.tests.yaml`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_ERROR,
    EXIT_OK,
    cli_clock,
    default_policy_path,
    dump_json,
)
from engine.diagnostics import render_all
from engine.policytest import report
from engine.policytest.run import TestInputError, run_tests
from engine.resources import default_policy_dir

EXAMPLE = """\
examples:
  policyctl test                         # ./policies, or the packaged default set
  policyctl test examples/policies       # every *.tests.yaml under a directory
  policyctl test policies/default.tests.yaml --coverage
  policyctl test examples/policies/fast.policy   # its fast.tests.yaml
  policyctl test --coverage --format json > coverage.json

A test file NAME.tests.yaml tests NAME.policy beside it (else its directory, or the
`policy:` it names); docs/testing.md describes the format. Each test runs on fresh
in-memory state with its own clock. Failures show the expected and actual values side by
side with their file:line:col.

exit codes: 0 all passed, 1 some failed, 2 bad input (a test file or a policy)
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "test",
        help="run the tests beside policies (NAME.tests.yaml), optionally with coverage",
        description="Run policy tests: requests and the decisions they must get.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="test files, .policy files (their NAME.tests.yaml) or directories (searched"
        " for *.tests.yaml); default: ./policies if it exists, else the packaged set",
    )
    p.add_argument(
        "--coverage",
        action="store_true",
        help="report the routes, condition branches, requires and limits the tests exercised",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text for people, json for scripts (default: text)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="list passing tests too")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.paths:
        paths = [Path(p) for p in args.paths]
    else:
        paths = [default_policy_path() or default_policy_dir()]
    try:
        outcome = run_tests(paths, cli_clock()(), coverage=args.coverage)
    except TestInputError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.format == "json":
        dump_json(report.as_json(outcome))
    else:
        print(report.text(outcome, verbose=args.verbose))
    return EXIT_OK if outcome.failed == 0 else EXIT_ERROR
