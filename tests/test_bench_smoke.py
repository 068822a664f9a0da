"""`python bench/run.py --quick` completes (a smoke test: no figure is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_run_quick_completes(tmp_path: Path) -> None:
    report = tmp_path / "performance.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--output", str(report)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Performance")
    assert "## Decisions and conditions" in text
    assert "## Command line" in text
