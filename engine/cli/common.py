"""What every command shares: exit codes (from engine.errors), the policy path default,
output formats."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from engine.errors import EXIT_BAD_INPUT as EXIT_BAD_INPUT
from engine.errors import EXIT_BUSY as EXIT_BUSY
from engine.errors import EXIT_DENIED as EXIT_DENIED
from engine.errors import EXIT_ERROR as EXIT_ERROR
from engine.errors import EXIT_OK as EXIT_OK
from engine.errors import PolicyctlError
from engine.limits.stores import DEFAULT_LOCK_WAIT_S
from engine.limits.stores.base import StoreBusyError
from engine.units import iso_timestamp_s
from engine.vocabulary import LOG_REQUESTS, STORE_URL_PREFIXES, unknown_store_message


class UsageError(PolicyctlError):
    """Bad flags or arguments: printed as `policyctl: error: …`, exit 2."""


def default_policy_path() -> Path | None:
    """`./policies` if it exists, else None (the packaged default set)."""
    local = Path("policies")
    return local if local.is_dir() else None


def add_format(parser: argparse.ArgumentParser, default: str = "json") -> None:
    parser.add_argument(
        "--format",
        choices=("json", "table"),
        default=default,
        help=f"json for scripts, table for people (default: {default})",
    )


def add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="PATH",
        help="a .policy file or a directory of them (default: ./policies if it exists,"
        " else the packaged default set)",
    )


def add_request_log(parser: argparse.ArgumentParser) -> None:
    """`--log-requests` and `--hash-keys`: what the decision log keeps of each request."""
    parser.add_argument(
        "--log-requests",
        choices=LOG_REQUESTS,
        default="features",
        help="what the decision log (a DuckDB state file) keeps of each request: nothing, the"
        " routing features (never the prompt text), or the body too (default %(default)s;"
        " docs/metrics.md)",
    )
    parser.add_argument(
        "--hash-keys",
        action="store_true",
        help="keep user and IP keys in the decision log hashed with the state file's salt",
    )


def check_state_url(url: str) -> str:
    """Accept `memory://`, a file path (DuckDB) or `redis://…`; quote anything else."""
    if "://" in url and not url.startswith(STORE_URL_PREFIXES):
        raise UsageError(unknown_store_message(url))
    return url


LOCK_WAIT_ENV = "POLICYCTL_LOCK_WAIT"
# what a locked state file's error suggests: the admin commands can ask the server instead
ASK_THE_SERVER = "ask the server that holds it: --server URL (or $POLICYCTL_SERVER)"
WAIT_LONGER = f"wait longer: --lock-wait SECONDS (or ${LOCK_WAIT_ENV})"


def add_lock_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-wait",
        metavar="SECONDS",
        help="how long to wait for a DuckDB state file another process (a running `policyctl"
        f" serve`) holds, then exit 4 (default: ${LOCK_WAIT_ENV}, else"
        f" {DEFAULT_LOCK_WAIT_S:g})",
    )


def lock_wait_s(args: argparse.Namespace) -> float:
    """`--lock-wait`, else `$POLICYCTL_LOCK_WAIT`, else 10 s: seconds, 0 or more."""
    given, where = args.lock_wait, "--lock-wait"
    if given is None:
        given, where = os.environ.get(LOCK_WAIT_ENV, "").strip() or None, f"${LOCK_WAIT_ENV}"
    if given is None:
        return DEFAULT_LOCK_WAIT_S
    try:
        seconds = float(given)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UsageError(f"`{where}` must be a number of seconds, 0 or more, got `{given}`")
    return seconds


@contextmanager
def lock_help(*suggestions: str) -> Iterator[None]:
    """A locked state file's error, with a `help:` line of what to do instead."""
    try:
        yield
    except StoreBusyError as err:
        if not err.locked:
            raise
        raise StoreBusyError(f"{err}\nhelp: {'; or '.join(suggestions)}", locked=True) from None


def dump_json(data: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(data, ensure_ascii=False, separators=(", ", ": ")))
    out.write("\n")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, v in enumerate(row):
            widths[i] = max(widths[i], len(v))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return printable(str(value))


def printable(text: str) -> str:
    """Text safe to print on a terminal: control characters (ESC, newline, C1), format
    characters (bidi overrides) and line separators written as `\\x1b`, `\\n`, `\\u202e`.
    A client chose the user and id a table shows: it must not move the cursor or recolour."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or unicodedata.category(ch) == "Zs" else _escape(ch) for ch in text
    )


def _escape(ch: str) -> str:
    code = ord(ch)
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
    if named is not None:
        return named
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def cli_clock() -> Callable[[], float]:
    """The clock every command gives its engine: epoch seconds from `$POLICYCTL_NOW`
    (epoch seconds or an ISO 8601 date or date-time, UTC unless an offset is given) when it
    is set, a fixed instant that makes runs reproducible (the docs' examples use it);
    else the system clock. The variable is read here only, once per command."""
    text = os.environ.get("POLICYCTL_NOW", "").strip()
    if not text:
        return time.time
    try:
        fixed = float(text)
    except ValueError:
        try:
            fixed = iso_timestamp_s(text)
        except ValueError:
            raise UsageError(
                "`POLICYCTL_NOW` must be epoch seconds or a date such as"
                f" `2026-11-28T17:46:05Z`, got `{text}`"
            ) from None
    if not math.isfinite(fixed):
        raise UsageError(f"`POLICYCTL_NOW` must be a finite number of seconds, got `{text}`")
    return lambda: fixed
