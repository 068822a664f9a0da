"""examples/embed_app.py runs: decisions, simulated calls, outcomes, and a hot reload
halfway that the decisions after it reflect."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "examples" / "embed_app.py"


def run_app(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(APP), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_summary_shows_two_versions_and_no_errors(tmp_path: Path) -> None:
    done = run_app("--requests", "60", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    summary: dict[str, Any] = json.loads(done.stdout)
    assert summary["errors"] == []
    assert summary["requests"] == 60
    assert summary["allowed"] + summary["denied"] == 60
    assert sum(summary["decisions_by_model"].values()) == summary["allowed"]
    versions = summary["versions"]
    assert len(versions) == 2
    assert sum(versions.values()) == 60
    edit = summary["edit"]
    assert (edit["from"], edit["to"]) == ("weighted(latency: 60%, cost: 40%)", "cost")
    assert set(versions) == {edit["old_version"], edit["new_version"]}
    assert versions[edit["old_version"]] == 30 and versions[edit["new_version"]] == 30
    before = summary["routes_by_version"][edit["old_version"]]
    after = summary["routes_by_version"][edit["new_version"]]
    assert "default:cost" not in before and before.get("default:weighted", 0) > 0
    assert "default:weighted" not in after and after.get("default:cost", 0) > 0


def test_text_summary_and_a_given_policy_dir(tmp_path: Path) -> None:
    policy_dir = tmp_path / "mine"
    shutil.copytree(REPO / "policies", policy_dir)
    done = run_app("--requests", "40", "--policy", str(policy_dir), "--seed", "3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "policy versions seen: 2" in done.stdout
    assert "errors: 0" in done.stdout
    assert "decisions per model:" in done.stdout
    assert "default strategy weighted(latency: 60%, cost: 40%) -> cost" in done.stdout
    # the given directory was edited in place: the default strategy is now `cost`
    text = (policy_dir / "default.policy").read_text(encoding="utf-8")
    assert "    strategy cost\n" in text.split("defaults {", 1)[1].split("}", 1)[0]
