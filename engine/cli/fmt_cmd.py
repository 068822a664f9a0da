"""`policyctl fmt [PATH...] [--check | --diff | -w]`: the canonical layout of policy files."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.cli.common import EXIT_BAD_INPUT, EXIT_ERROR, EXIT_OK, UsageError, default_policy_path
from engine.diagnostics import Diagnostic, PolicyError, not_utf8, render_all
from engine.errors import PolicyctlError
from engine.language.formatter import format_text
from engine.language.loader import policy_files, read_policy_file
from engine.resources import default_policy_dir

EXIT_WOULD_CHANGE = 1  # --check, --diff: a file is not in the canonical layout
STDIN = "-"
STDIN_NAME = "<stdin>"

EXAMPLE = """\
examples:
  policyctl fmt policies/default.policy     # print the formatted file
  policyctl fmt --check                     # ./policies: list files that would change
  policyctl fmt --diff my-policies/         # what would change, as a unified diff
  policyctl fmt -w policies/                # rewrite in place
  policyctl fmt - < my.policy               # standard input to standard output

A directory means its *.policy files at any depth. Exit 0: done (or nothing would
change); 1: --check or --diff found a file to change; 2: a file does not parse (reported
as `check` reports it; nothing is written) or cannot be read.
"""


class WriteError(PolicyctlError, exit_code=EXIT_ERROR):
    """A formatted file could not be written back (-w)."""


@dataclass(frozen=True, slots=True)
class Formatted:
    name: str  # as a person typed it, or <stdin>
    path: Path | None  # None: standard input
    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fmt",
        help="format policy files in the canonical layout",
        description="Format policy files in the canonical layout (docs/fmt.md). With no flag"
        " the formatted text is printed; the files are left as they are.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="a .policy file, a directory, or - for standard input (default: ./policies if"
        " it exists, else the packaged default set)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="list the files that would change; exit 1 if any"
    )
    mode.add_argument(
        "--diff", action="store_true", help="print what would change as a unified diff"
    )
    mode.add_argument("-w", "--write", action="store_true", help="rewrite the files in place")
    p.set_defaults(run=run)


def _targets(paths: list[str], write: bool) -> list[Path | None]:
    """The files to format, in order (None: standard input), without repeats."""
    if not paths:
        local = default_policy_path()
        if local is None and write:
            raise UsageError("fmt -w needs a PATH (there is no ./policies directory)")
        paths = [str(local if local is not None else default_policy_dir())]
    if write and STDIN in paths:
        raise UsageError("fmt -w cannot write standard input; leave out -w to print the result")
    targets: list[Path | None] = []
    errors: list[Diagnostic] = []
    for path in paths:
        if path == STDIN:
            targets.append(None)
            continue
        try:
            targets.extend(policy_files(path, recursive=True))
        except PolicyError as err:
            errors.extend(err.diagnostics)
    if errors:
        raise PolicyError(errors)
    return list(dict.fromkeys(targets))


def _read_stdin() -> str:
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # as `check` reads a file
    except UnicodeDecodeError as err:
        raise PolicyError([not_utf8(STDIN_NAME, err)]) from None


def format_targets(targets: list[Path | None]) -> list[Formatted]:
    """Every target read and formatted; PolicyError with every problem found in any."""
    done: list[Formatted] = []
    errors: list[Diagnostic] = []
    for target in targets:
        try:
            if target is None:
                name, text = STDIN_NAME, _read_stdin()
            else:
                name, text = read_policy_file(target)
            done.append(Formatted(name, target, text, format_text(text, name)))
        except PolicyError as err:
            errors.extend(err.diagnostics)
    if errors:
        raise PolicyError(errors)
    return done


def unified_diff(item: Formatted) -> str:
    """`a/NAME` → `b/NAME`, as `git diff` writes it and `patch -p1` reads it (an absolute
    NAME as it is, twice)."""
    absolute = Path(item.name).is_absolute() or item.path is None
    lines = difflib.unified_diff(
        item.before.splitlines(keepends=True),
        item.after.splitlines(keepends=True),
        item.name if absolute else f"a/{item.name}",
        item.name if absolute else f"b/{item.name}",
    )
    return "".join(
        line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace the file (a symlink's target) in one step: a temporary file beside it, with
    its mode, renamed over it. A reader sees the old text or the new, never a part."""
    target = path.resolve()
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            out.write(text)
        os.chmod(temporary, stat.S_IMODE(target.stat().st_mode))
        os.replace(temporary, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise WriteError(f"cannot write {path}: {err.strerror or err}") from None


def run(args: argparse.Namespace) -> int:
    try:
        formatted = format_targets(_targets(args.paths, args.write))
    except PolicyError as err:
        print(render_all(err.diagnostics), file=sys.stderr)
        return EXIT_BAD_INPUT
    changed = [item for item in formatted if item.changed]
    if args.check:
        for item in changed:
            print(item.name)
        return EXIT_WOULD_CHANGE if changed else EXIT_OK
    if args.diff:
        sys.stdout.write("".join(unified_diff(item) for item in changed))
        return EXIT_WOULD_CHANGE if changed else EXIT_OK
    if args.write:
        for item in changed:
            assert item.path is not None  # -w refuses standard input
            write_atomically(item.path, item.after)
        return EXIT_OK
    sys.stdout.write("".join(item.after for item in formatted))
    return EXIT_OK
