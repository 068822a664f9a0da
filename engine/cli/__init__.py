"""`policyctl`: the command line, thin over the library API. Nothing imports this package."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from engine import __version__
from engine.errors import EXIT_BAD_INPUT, EXIT_ERROR, PolicyctlError

# (command, its module in engine/cli), in the order `policyctl --help` lists them. A run
# of one command imports that command's module only (`policyctl eval` starts faster
# without the simulator, the migration and the catalog importer).
COMMANDS = (
    ("eval", "eval_cmd"),
    ("check", "check_cmd"),
    ("fmt", "fmt_cmd"),
    ("test", "test_cmd"),
    ("diff", "diff_cmd"),
    ("replay", "replay_cmd"),
    ("schema", "schema_cmd"),
    ("serve", "serve_cmd"),
    ("simulate", "simulate_cmd"),
    ("metrics", "metrics_cmd"),
    ("log", "log_cmd"),
    ("ratelimit", "ratelimit_cmd"),
    ("catalog", "catalog_cmd"),
    ("migrate", "migrate_cmd"),
    ("lsp", "lsp_cmd"),
    ("explain", "explain_cmd"),
    ("completion", "completion_cmd"),
)

EXAMPLE = """\
examples:
  policyctl eval examples/requests/chat.json
  policyctl check policies/
  policyctl schema request

Run `policyctl COMMAND --help` for a command's flags and examples.
"""


class _Version(argparse.Action):
    """`--version`: `policyctl 0.1.0 (commit abc1234)`. The commit is looked up only when
    asked (from a checkout it runs git), not each time the parser is built."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from engine.build import commit

        print(f"policyctl {__version__} (commit {commit()})")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `policyctl` parser; with `only`, a command's name, that command alone."""
    parser = _Parser(
        prog="policyctl",
        description="A declarative policy engine for LLM traffic.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module in COMMANDS:
        if only is None or name == only:
            importlib.import_module(f"engine.cli.{module}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    command = words[0] if words and words[0] in dict(COMMANDS) else None
    args = build_parser(command).parse_args(words)
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
