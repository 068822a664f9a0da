"""`policyctl diff OLD NEW`: what changed between two policy sets, without traffic."""

from __future__ import annotations

import argparse

from engine.cli.common import EXIT_OK, add_format, cli_clock, dump_json
from engine.language.loader import load_policy
from engine.policydiff import PolicySet, diff
from engine.policydiff.report import as_json, text

EXAMPLE = """\
examples:
  policyctl diff policies/ new-policies/
  policyctl diff examples/diff/before examples/diff/after
  policyctl diff old.policy new.policy --format json

Routes are matched by name, limits by what they limit (scope, key, unit), policy-wide
requires by their text and deny rules by their reason; the defaults and the catalogs are
compared too. Each change is printed with `+` (added), `-` (removed) or `~` (changed or
moved), and, where the static analysis finds one, a request it affects with what each
set decides for it (no limits, no measurements: the catalog's priors). Exit 0 whether or
not they differ (2: a policy set does not load, its errors printed as `check` prints
them). See docs/diff.md.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "diff",
        help="the semantic difference of two policy sets, with requests that show it",
        description="Compare two policy sets (files or directories) statement by statement.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("old", metavar="OLD", help="the policy file or directory before")
    p.add_argument("new", metavar="NEW", help="the policy file or directory after")
    p.add_argument(
        "--no-examples", action="store_true", help="compare statements only (no example requests)"
    )
    add_format(p, default="table")
    p.set_defaults(run=run)


def _load(path: str) -> PolicySet:
    loaded = load_policy(path, now=cli_clock()())
    return PolicySet(loaded.files, loaded.program)


def run(args: argparse.Namespace) -> int:
    old, new = _load(args.old), _load(args.new)
    changes = diff(old, new, examples=not args.no_examples)
    if args.format == "json":
        dump_json(as_json(changes))
    else:
        print(text(changes))
    return EXIT_OK
