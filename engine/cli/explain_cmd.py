"""`policyctl explain [CODE]`: what a diagnostic code means, with a wrong and a right example."""

from __future__ import annotations

import argparse

from engine.cli.common import EXIT_OK
from engine.language.explain import codes, explanation

EXAMPLE = """\
examples:
  policyctl explain E0333              # unit mismatch: what it means, a wrong and a right example
  policyctl explain                    # every code with its title

Every `error[CODE]` and `warning[CODE]` that `policyctl check` prints has an explanation.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "explain",
        help="explain a diagnostic code (E0333), or list them all",
        description="Print the explanation of a diagnostic code, with a wrong and a right"
        " example; with no code, list every code and its title.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("code", nargs="?", metavar="CODE", help="a code such as E0333 or W0500")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.code is None:
        for code in codes():
            print(f"{code}  {explanation(code).title}")
        return EXIT_OK
    found = explanation(args.code)  # UnknownCode: exit 2, with the nearest code
    print(found.text, end="" if found.text.endswith("\n") else "\n")
    return EXIT_OK
