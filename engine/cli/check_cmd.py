"""`policyctl check [PATH]`: parse, type-check and lint a policy set."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from engine.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    add_format,
    cli_clock,
    default_policy_path,
    dump_json,
)
from engine.diagnostics import Diagnostic, PolicyError, render_all
from engine.language.loader import load_policy

EXAMPLE = """\
examples:
  policyctl check                      # ./policies, or the packaged default set
  policyctl check policies/default.policy
  policyctl check --format json my-policies/
  policyctl check --strict policies/   # warnings fail the check too (CI)

Prints nothing and exits 0 when the policy is clean; warnings are printed and exit 0
(with --strict they are errors and exit 2); errors are printed as file:line:col:
error[CODE]: message, the line, a caret and a hint, and exit 2.

The analysis warns of shadowed routes (W0500), contradictory conditions (W0503), routes
no catalog model can serve (W0504), requests a route takes but cannot serve (W0505),
limits that never apply or never bind (W0506, W0507), excluded fallbacks (W0508), and
quality read over a catalog with no scores (W0509) or ranking unscored models (W0512).
Where a request shows the problem, the help ends with it, as JSON for `policyctl eval`:

  w.policy:5:7: warning[W0500]: route `fast` is unreachable
    = help: route `all` at w.policy:1:1 matches every request first; this request goes
      to route `all`: {"max_latency_ms": 2000.0}

and `--format json` gives it as the diagnostic's `counterexample`. See docs/analysis.md.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "check",
        help="parse, type-check and lint a policy file or directory",
        description="Check a policy set against the request schema and the catalog.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="a .policy file or a directory")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 2 if any)")
    add_format(p, default="table")
    p.set_defaults(run=run)


def _as_json(d: Diagnostic) -> dict[str, object]:
    out: dict[str, object] = {
        "severity": d.severity,
        "code": d.code,
        "message": d.message,
        "help": d.help,
        "file": d.span.source.name if d.span is not None else d.file,
        "line": d.span.line if d.span is not None else None,
        "col": d.span.col if d.span is not None else None,
    }
    if d.counterexample is not None:
        out["counterexample"] = json.loads(d.counterexample)
    return out


def run(args: argparse.Namespace) -> int:
    path = args.path if args.path is not None else default_policy_path()
    try:
        loaded = load_policy(path, now=cli_clock()())
    except PolicyError as err:
        diagnostics = list(err.diagnostics)
        code = EXIT_BAD_INPUT
    else:
        diagnostics = list(loaded.warnings)
        code = EXIT_OK
        if args.strict and diagnostics:
            diagnostics = [dataclasses.replace(d, severity="error") for d in diagnostics]
            code = EXIT_BAD_INPUT
    if args.format == "json":
        if diagnostics or code != EXIT_OK:
            dump_json([_as_json(d) for d in diagnostics])
    elif diagnostics:
        print(render_all(diagnostics), file=sys.stderr)
    return code
