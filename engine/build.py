"""The version of policyctl (`engine.__version__`) and the commit this copy was built from
(`policyctl --version`, and `policyctl_build_info` in `GET /metrics`).

A wheel carries it in `engine/_data/commit`, which the build hook (`.ci/build_hook.py`)
writes at build time and which is never in the source tree. A source checkout (the
tests' `PYTHONPATH`, an editable install) asks git, so the answer follows `HEAD`.
Anything else, a build outside git or git missing, is `unknown`.
"""

from __future__ import annotations

import functools
from pathlib import Path

VERSION = "0.1.0"  # pyproject.toml's `version` (tests/test_cli.py checks they agree)
UNKNOWN = "unknown"
_PACKAGE = Path(__file__).resolve().parent
_ROOT = _PACKAGE.parent  # the checkout, when this is one
RECORD = "_data/commit"  # in the package: the commit a wheel was built from, one line
GIT_TIMEOUT_S = 5.0


def git_commit(root: Path) -> str:
    """`git rev-parse --short HEAD` of the checkout at `root`, or `unknown` when `root`
    holds no `.git` (a copy, an unpacked sdist), git is missing or fails. Only `root`'s
    own `.git` counts: a tree inside another repository is not that repository's commit."""
    if not (root / ".git").exists():
        return UNKNOWN
    import subprocess  # only when asked (`--version`, /metrics): not on every start

    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else UNKNOWN


@functools.cache
def commit() -> str:
    """The commit this copy was built from: the checkout's `HEAD` when running from a git
    checkout, else the wheel's build-time record, else `unknown`. Asked once per process."""
    if (_ROOT / "pyproject.toml").is_file() and (_ROOT / ".git").exists():
        return git_commit(_ROOT)
    try:
        recorded = (_PACKAGE / RECORD).read_text(encoding="utf-8").strip()
    except OSError:
        return UNKNOWN
    return recorded or UNKNOWN
