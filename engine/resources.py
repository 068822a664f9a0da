"""Where the packaged grammar and default policy set live (wheel or source checkout)."""

from __future__ import annotations

import functools
import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """`grammar` or `policies`: inside the wheel (`engine/_data/…`) or at the repository root."""
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"policyctl is missing its `{kind}` directory (broken install?)")


def grammar_path() -> Path:
    return data_dir("grammar") / "policy.lark"


def default_policy_dir() -> Path:
    return data_dir("policies")


# the packaged catalog (generated from LiteLLM's table; see docs/catalog.md), which a policy
# set without a `catalog` statement uses
DEFAULT_CATALOG = "models.json"


def default_catalog_path() -> Path:
    return default_policy_dir() / DEFAULT_CATALOG


def cache_dir() -> Path | None:
    """Where policyctl keeps what it can rebuild (the policy parser's tables, parsed policy
    files and catalogs: `cache_file`):
    `$POLICYCTL_CACHE_DIR` (empty: no cache), else `$XDG_CACHE_HOME/policyctl`
    (~/.cache/policyctl)."""
    chosen = os.environ.get("POLICYCTL_CACHE_DIR")
    if chosen is not None:
        return Path(chosen) if chosen.strip() else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "policyctl"


def codes_dir() -> Path:
    """The catalogue of diagnostic codes, one `CODE.md` each (`policyctl explain`); it lives
    inside the package, so the wheel carries it with the code."""
    return _PACKAGE / "language" / "codes"


MAX_CACHED = 64  # files of one kind (`parsed`, `catalog`) kept in the cache directory


@functools.cache
def code_digest(*modules: str) -> str | None:
    """A hash of the package's `modules` (paths inside `engine/`), the grammar and Python's
    version: what a cached result depends on besides its input (another version of that
    code never reads it back). None when one cannot be read (then nothing is cached)."""
    digest = hashlib.sha256(repr(sys.version_info[:2]).encode("ascii"))
    try:
        digest.update(grammar_path().read_bytes())
        for relative in modules:
            digest.update((_PACKAGE / relative).read_bytes())
    except OSError:
        return None
    return digest.hexdigest()


def cache_file(kind: str, code: str | None, *key: bytes) -> Path | None:
    """`cache_dir()/KIND-<hash>.pickle`, the hash over `code` (a `code_digest`) and `key`;
    None when there is no cache directory or no digest."""
    directory = cache_dir()
    if code is None or directory is None:
        return None
    digest = hashlib.sha256(code.encode("ascii"))
    for part in key:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return directory / f"{kind}-{digest.hexdigest()[:32]}.pickle"


def read_cached(path: Path) -> Any:
    """What `write_cached` put in `path`, or None (missing, damaged, unreadable). The
    directory is its owner's alone (0700): a pickle is read only from there."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception:  # missing, truncated, written by other code: made again
        return None


def write_cached(path: Path, value: object) -> None:
    """Best effort, atomic (a temporary file renamed), in a 0700 cache directory; beyond
    `MAX_CACHED` files of its kind the least recently written go."""
    kind = path.name.split("-", 1)[0]
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as f:
            pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)
        kept = sorted(path.parent.glob(f"{kind}-*.pickle"), key=lambda p: p.stat().st_mtime)
        for old in kept[:-MAX_CACHED]:
            old.unlink(missing_ok=True)
    except (OSError, pickle.PicklingError, RecursionError):
        return
