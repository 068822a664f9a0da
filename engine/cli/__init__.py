"""`policyctl`: the command line, thin over the library API. Nothing imports this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine import __version__
from engine.cli import (
    catalog_cmd,
    check_cmd,
    eval_cmd,
    metrics_cmd,
    migrate_cmd,
    ratelimit_cmd,
    schema_cmd,
    serve_cmd,
    simulate_cmd,
)
from engine.errors import EXIT_BAD_INPUT, EXIT_ERROR, PolicyctlError

EXAMPLE = """\
examples:
  policyctl eval examples/requests/chat.json
  policyctl check policies/
  policyctl schema request

Run `policyctl COMMAND --help` for a command's flags and examples.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="policyctl",
        description="A declarative policy engine for LLM traffic.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"policyctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for module in (
        eval_cmd,
        check_cmd,
        schema_cmd,
        serve_cmd,
        simulate_cmd,
        metrics_cmd,
        ratelimit_cmd,
        catalog_cmd,
        migrate_cmd,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except PolicyctlError as err:
        print(err.cli_text(), file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130


def run() -> None:
    sys.exit(main())
