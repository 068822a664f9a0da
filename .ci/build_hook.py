"""The hatchling build hook (`[tool.hatch.build.hooks.custom]` in pyproject.toml): records
the commit a wheel or sdist is built from in `engine/_data/commit`, which
`engine.build.commit()` reads at run time (`policyctl --version`, `/metrics`).

The file is written to a temporary directory and force-included, so the source tree is
never changed. Built outside git (no `.git` at the root, or git missing) the commit is
`unknown`, unless the root is an unpacked sdist that already carries the file (a wheel
built from our sdist keeps the sdist's commit). An editable install records nothing: it
reads the checkout's `HEAD` when it runs.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TARGET = "engine/_data/commit"
RECORDED = re.compile(r"[0-9a-f]{4,40}|unknown")


def _commit(root: Path) -> str:
    # engine.build's own reader, loaded by path: importing `engine` would import its
    # dependencies, which the build environment does not have
    spec = importlib.util.spec_from_file_location("_policyctl_build", root / "engine/build.py")
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    commit = str(build.git_commit(root))
    if commit == build.UNKNOWN and (root / TARGET).is_file():
        recorded = (root / TARGET).read_text(encoding="utf-8").strip()
        if RECORDED.fullmatch(recorded):
            return recorded
    return commit


class CommitHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version == "editable":
            return
        commit = _commit(Path(self.root))
        self._dir = tempfile.mkdtemp(prefix="policyctl-build-")
        generated = Path(self._dir) / "commit"
        generated.write_text(f"{commit}\n", encoding="utf-8")
        build_data["force_include"][str(generated)] = TARGET

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if getattr(self, "_dir", None):
            shutil.rmtree(self._dir, ignore_errors=True)
