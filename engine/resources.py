"""Where the packaged grammar and default policy set live (wheel or source checkout)."""

from __future__ import annotations

import os
from pathlib import Path

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
    """Where policyctl keeps what it can rebuild (the policy parser's tables):
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
