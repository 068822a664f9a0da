"""Suite-wide guards: no test may read or write the operator's own policyctl state; and the
fixtures several test files share (`browser`: headless chromium, tests/browser.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import browser as browser  # the headless chromium fixture, for every test
from hypothesis import settings

# Hypothesis' default 200 ms deadline per example is a wall-clock assertion: on a loaded
# 2-core machine a property test then fails for being slow, not wrong. No deadline.
settings.register_profile("policyctl", deadline=None)
settings.load_profile("policyctl")


@pytest.fixture(scope="session", autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the default state location (`$XDG_STATE_HOME/policyctl/state.duckdb`) and the
    cache directory at temporary directories and drop every `POLICYCTL_*` variable for the
    whole session, so a test (or a CLI it starts) that relies on the default state never
    touches the real one."""
    state_home = tmp_path_factory.mktemp("xdg-state")
    cache_home = tmp_path_factory.mktemp("xdg-cache")  # the parser cache (resources.cache_dir)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("POLICYCTL_")]:
            mp.delenv(name)
        mp.setenv("XDG_STATE_HOME", str(state_home))
        mp.setenv("XDG_CACHE_HOME", str(cache_home))
        yield state_home
