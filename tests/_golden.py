"""`UPDATE_GOLDEN=1` rewrites expected files instead of comparing them; never in CI.

A CI run that had the variable set would rewrite every golden file and pass, proving
nothing, so `update_requested` refuses it there with a message saying why.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pytest

REFUSED_IN_CI = (
    "UPDATE_GOLDEN=1 is refused when CI is set: it would rewrite the golden files "
    "instead of checking them; regenerate them locally and commit the reviewed files"
)


def update_requested(env: Mapping[str, str] = os.environ) -> bool:
    """True when the golden files should be rewritten; fails the test when CI is set."""
    if env.get("UPDATE_GOLDEN") != "1":
        return False
    if env.get("CI", "") not in ("", "0", "false"):
        pytest.fail(REFUSED_IN_CI, pytrace=False)
    return True
