"""`python bench/litellm_router_bench.py --quick` completes and prints its rows (a smoke
test: no figure is asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_litellm_router_bench_quick_completes() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    done = subprocess.run(
        [
            sys.executable,
            str(
                ROOT / "bench" / "litellm_router_bench.py",
            ),
            "--quick",
            "--calls",
            "3",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("litellm ") and "11 deployments, 15 A/B pairs of 3 calls" in lines[0]
    assert lines[1].startswith("simple-shuffle ")
    assert lines[2].startswith("policyctl (strategy+log) ")
    assert lines[3].startswith("ratio policyctl / simple-shuffle ")
    assert lines[4].startswith("policyctl pick alone ")
    # every policyctl call (warm-up 5, then 15 pairs of 3) was recorded by the callback
    assert lines[5] == "outcomes recorded by the callback: 50"
