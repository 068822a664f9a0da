"""`policyctl completion bash|zsh|fish`: print a shell completion script."""

from __future__ import annotations

import argparse

from engine.cli.common import EXIT_OK
from engine.cli.completion import SHELLS, command_tree, script

EXAMPLE = """\
examples:
  source <(policyctl completion bash)          # in ~/.bashrc
  policyctl completion zsh > "${fpath[1]}/_policyctl"
  policyctl completion fish > ~/.config/fish/completions/policyctl.fish

The script is generated from policyctl's own parser: every command, option and choice.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="Print a completion script for a shell, generated from the command's parser.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=SHELLS, help="the shell: " + ", ".join(SHELLS))
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from engine.cli import build_parser  # the whole parser: every command, not this one alone

    print(script(args.shell, command_tree(build_parser())), end="")
    return EXIT_OK
