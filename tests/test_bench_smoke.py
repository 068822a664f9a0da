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


@pytest.mark.slow
def test_mutation_script_runs_a_tiny_sample(tmp_path: Path) -> None:
    """`bench/mutation.py` on two mutants of the strategies: mutmut generates, runs and the
    script classifies every sampled mutant and writes its report (no rate is asserted)."""
    report = tmp_path / "mutation.md"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "mutation.py"),
            "--modules",
            "strategies",
            "--max-per-module",
            "2",
            "--seed",
            "1",
            "--report",
            str(report),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {line.split("|")[0].strip(): line for line in done.stdout.splitlines() if "|" in line}
    cells = [c.strip() for c in rows["strategies"].split("|")]
    generated, sampled = int(cells[1]), int(cells[2])
    assert generated > 2 and sampled == 2
    assert sum(int(c) for c in cells[3:8]) == 2  # each sampled mutant got one status
    text = report.read_text()
    assert text.startswith("# Mutation testing")
    assert "## strategies:" in text


def test_wire_bench_quick_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "wire_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "read: 4-message chat (openai-chat)" in out.stdout
    assert "read: 200 KB base64 image (anthropic)" in out.stdout


def test_features_bench_quick_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "features_bench.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "4-message chat (openai-chat)" in out.stdout
    assert "100 KB conversation (openai-chat)" in out.stdout
    assert "features derived for a policy that reads none: 0" in out.stdout
    assert "in a decision: deriving" in out.stdout
    assert "in a decision: freeing the request" in out.stdout


def test_features_bench_against_another_checkout_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "features_bench.py"), "--quick", "--against",
         str(ROOT)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"against {ROOT}:" in out.stdout
    assert "derivation alone, 4-message chat" in out.stdout.split("against")[-1]


def test_plugins_bench_quick_runs() -> None:
    ran = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "plugins_bench.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr
    assert "handoff B - A" in ran.stdout


def test_cluster_bench_quick_runs() -> None:
    """`bench/cluster_bench.py --quick` starts its 3-master cluster, runs every design and
    both phases, and says for each target whether it is met (quick figures: not asserted)."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "cluster_bench.py"), "--quick", "--instances", "20"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    for row in ("| single slot (redis://) |", "| strict (lease=strict) |", "| leased (lease=auto"):
        assert row in out.stdout
    assert out.stdout.count("target ") >= 5
    assert "target per-user-only round trips = 1: met" in out.stdout
    assert "target strict within capacity + rate·W: met" in out.stdout
    assert "target leased within the bound: met" in out.stdout


def test_live_bench_quick_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "live_bench.py"), "--quick", "--pairs", "1",
         "--no-litellm"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    for strategy in ("model-specific", "latency", "cost", "weighted", "round-robin", "failover"):
        assert f"\n{strategy} " in out.stdout, out.stdout
    assert "failure-count updates" in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["", "--limiter", "--first-limit"])
def test_limits_ab_runs_against_its_own_checkout(mode: str) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "limits_ab.py"), str(ROOT), str(ROOT),
         "--pairs", "2", "--block", "50", *([mode] if mode else [])],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    what = {
        "": "decisions (",
        "--limiter": "decisions' limiter calls replayed",
        "--first-limit": "decisions with `limit user` and without",
    }[mode]
    assert f"2 pairs of 50 {what}" in out.stdout
    assert "B/A: median" in out.stdout
