"""`policyctl lsp`: the language server, over standard input and output (needs the `lsp`
extra: pygls)."""

from __future__ import annotations

import argparse

from engine import __version__
from engine.cli.common import EXIT_OK
from engine.errors import PolicyctlError

EXTRA = "pip install 'policyctl[lsp]'"
DRIVERS = ("pygls", "lsprotocol")  # what the extra installs and the server imports

EXAMPLE = f"""\
examples:
  policyctl lsp                        # an editor starts it; it talks LSP on stdin/stdout

Diagnostics as `policyctl check` gives them (a file is checked with the other .policy files
of its directory), completion of keywords, request fields, models and strategies, hover on
a model (prices, capabilities) or a field (its type), go to a route's definition, and the
outline. docs/lsp.md shows how to wire it into VS Code, Neovim and Helix.

Needs the `lsp` extra (pygls): {EXTRA}. Without it, exits 2 naming the extra.
"""


class LspMissing(PolicyctlError):
    """pygls, which the language server runs on, is not installed (exit 2)."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "lsp",
        help="run the language server over stdio (needs the `lsp` extra)",
        description="Run the policy language server (LSP) over standard input and output.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--stdio",
        action="store_true",
        help="talk over standard input and output (the default and only transport; "
        "accepted because editors pass it)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from engine.lsp.server import serve
    except ModuleNotFoundError as err:
        if (err.name or "").partition(".")[0] not in DRIVERS:
            raise
        raise LspMissing(
            f"the language server needs pygls, which is not installed: {EXTRA}"
        ) from None
    serve(__version__)
    return EXIT_OK
