"""Progress on the long commands (engine/cli/progress.py): real commands in subprocesses,
their stderr attached to a pseudo-terminal (a rich bar and a summary line) and to a pipe
(nothing at all); and the libraries' progress callbacks, called by the real work."""

from __future__ import annotations

import os
import pty
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.analytics.decision_log import read_decision_log
from engine.replay.run import PROGRESS_EVERY as REPLAY_EVERY
from engine.replay.run import replay
from engine.simulate import load_scenario, simulate
from engine.simulate.run import PROGRESS_EVERY as SIMULATE_EVERY

ROOT = Path(__file__).resolve().parent.parent
NOW = time.time()
BAR = "━"  # rich's bar
IMPORT_ROWS = 50_000
WARM_ROWS = 60_000  # over WARM_SHOWN (50,000): the warm start shows its bar


def _env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("POLICYCTL_STATE", "NO_COLOR", "TERM", "COLUMNS", "LINES")
    }
    env["HOME"] = str(tmp_path / "home")
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg-state")
    env["POLICYCTL_NOW"] = repr(NOW)
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def on_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run `policyctl ARGS` with stderr on a pseudo-terminal: (exit code, stdout, what the
    terminal received)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
    )
    os.close(slave)
    received: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal has closed it
                return
            if not chunk:
                return
            received.append(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=300)
    reader.join(timeout=60)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(received).decode(errors="replace")


def piped(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _outcomes_csv(path: Path, n: int) -> Path:
    """`n` good outcome rows of a default-catalog model, stamped over the last minute."""
    lines = ["provider,model,latency_ms,success,timestamp"]
    for i in range(n):
        ok = "false" if i % 7 == 0 else "true"
        lines.append(f"anthropic,claude-haiku-4-5,{100 + i % 900},{ok},{NOW - 60 + i * 50 / n:.3f}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- metrics import


def test_metrics_import_shows_a_bar_and_a_summary_on_a_terminal(tmp_path: Path) -> None:
    csv = _outcomes_csv(tmp_path / "outcomes.csv", IMPORT_ROWS)
    env = _env(tmp_path)
    args = ["metrics", "import", "--state", str(tmp_path / "a.duckdb"), str(csv)]
    code, out, term = on_terminal(args, tmp_path, env)
    assert code == 0, term
    assert out == f"imported {IMPORT_ROWS} outcomes, rejected 0\n"
    assert "importing outcomes.csv" in term
    assert BAR in term and "%" in term
    assert f"imported {IMPORT_ROWS:,} outcome rows in " in term
    assert term.rstrip().endswith(" s"), term[-200:]  # the summary is the last line
    assert "Traceback" not in term

    # the same import with stderr on a pipe: the same stdout, and nothing on stderr
    done = piped(
        ["metrics", "import", "--state", str(tmp_path / "b.duckdb"), str(csv)], tmp_path, env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == out
    assert done.stderr == ""


def test_a_failed_import_prints_its_error_and_no_summary_on_a_terminal(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("provider,model\nanthropic,claude-haiku-4-5\n", encoding="utf-8")
    code, _, term = on_terminal(
        ["metrics", "import", "--state", str(tmp_path / "a.duckdb"), str(bad)],
        tmp_path,
        _env(tmp_path),
    )
    assert code == 2
    assert "latency_ms" in term  # the missing columns are named
    assert "outcome rows in" not in term


# ---------------------------------------------------------------- the warm start


def test_eval_warm_start_shows_a_bar_from_50_000_outcomes_only(tmp_path: Path) -> None:
    env = _env(tmp_path)
    state = tmp_path / "state.duckdb"
    csv = _outcomes_csv(tmp_path / "outcomes.csv", WARM_ROWS)
    assert (
        piped(["metrics", "import", "--state", str(state), str(csv)], tmp_path, env).returncode == 0
    )
    request = tmp_path / "request.json"
    request.write_text('{"model": "claude-haiku-4-5", "prompt": "hi"}', encoding="utf-8")
    args = ["eval", "--state", str(state), str(request), "--format", "json"]
    code, out, term = on_terminal(args, tmp_path, env)
    assert code == 0, term
    assert '"allowed":true' in out.replace(" ", "")
    assert "warm start, outcomes" in term and BAR in term
    assert f"warmed the live metrics from {WARM_ROWS:,} outcomes in " in term

    done = piped(args, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""

    # a few outcomes: the warm start is silent on a terminal too
    small = tmp_path / "small.duckdb"
    few = _outcomes_csv(tmp_path / "few.csv", 500)
    assert (
        piped(["metrics", "import", "--state", str(small), str(few)], tmp_path, env).returncode == 0
    )
    code, _, term = on_terminal(
        ["eval", "--state", str(small), str(request), "--format", "json"], tmp_path, env
    )
    assert code == 0, term
    assert "warm" not in term and BAR not in term


# ---------------------------------------------------------------- simulate


def test_simulate_shows_a_bar_and_a_summary_on_a_terminal(tmp_path: Path) -> None:
    env = _env(tmp_path)
    args = ["simulate", "examples/simulations/design.yaml", "--requests", "2000"]
    runs = 3 + len(load_scenario(str(ROOT / "examples/simulations/design.yaml")).runs())
    code, out, term = on_terminal(args, ROOT, env)
    assert code == 0, term
    assert out.startswith("scenario examples/simulations/design.yaml: 2,000 requests")
    assert f"simulating {runs} runs, requests" in term and BAR in term
    assert f"{2000 * runs:,}/{2000 * runs:,}" in term  # the bar reached the end
    assert f"simulated 2,000 requests × {runs} runs in " in term

    done = piped(args, ROOT, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == out
    assert done.stderr == ""


def test_simulate_progress_callback_counts_every_run_up_to_the_total() -> None:
    scenario = load_scenario(
        str(ROOT / "examples/simulations/design.yaml"), requests=2 * SIMULATE_EVERY + 10
    )
    calls: list[tuple[int, int | None]] = []
    simulate(scenario, lambda done, total: calls.append((done, total)))
    total = scenario.requests * (3 + len(scenario.runs()))
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert done[0] == 0 and done[-1] == total
    # each strategy run is told at its 0th, 1,000th and 2,000th request
    assert len(calls) == 3 + 3 * len(scenario.runs()) + 1


# ---------------------------------------------------------------- replay


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _decision_log(tmp_path: Path, n: int) -> Path:
    """A DuckDB state file whose decision log holds `n` requests with their features."""
    policy = tmp_path / "p.policy"
    policy.write_text("limit user 1000 per 1m\n", encoding="utf-8")
    state = tmp_path / "log.duckdb"
    clock, rng = _Clock(1_800_000_000.0), random.Random(5)
    with PolicyEngine(policy, state=str(state), clock=clock) as engine:
        for i in range(n):
            clock.now += 0.05
            engine.evaluate({"id": f"r{i}", "user": f"u{rng.randrange(50)}", "prompt": "hi"})
    return state


@pytest.fixture(scope="module")
def replay_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _decision_log(tmp_path_factory.mktemp("replay"), REPLAY_EVERY * 2 + 100)


def test_replay_progress_callback_is_told_every_4096_requests(replay_log: Path) -> None:
    calls: list[int] = []
    with read_decision_log(str(replay_log), None, None) as log:
        report = replay(log, replay_log.parent / "p.policy", progress=calls.append)
    assert report.replayed == REPLAY_EVERY * 2 + 100
    assert calls == [REPLAY_EVERY, 2 * REPLAY_EVERY]


def test_replay_shows_a_bar_and_a_summary_on_a_terminal(replay_log: Path, tmp_path: Path) -> None:
    env = _env(tmp_path)
    args = ["replay", "--policy", str(replay_log.parent / "p.policy"), "--from", str(replay_log)]
    code, out, term = on_terminal(args, tmp_path, env)
    assert code == 0, term
    assert "replaying" in term and "4,096 requests" in term
    assert f"replayed {REPLAY_EVERY * 2 + 100:,} requests in " in term

    done = piped(args, tmp_path, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == out
    assert done.stderr == ""


def test_warm_start_tells_its_callback_every_65536_outcomes(tmp_path: Path) -> None:
    env = _env(tmp_path)
    state = tmp_path / "state.duckdb"
    csv = _outcomes_csv(tmp_path / "outcomes.csv", 70_000)
    assert (
        piped(["metrics", "import", "--state", str(state), str(csv)], tmp_path, env).returncode == 0
    )
    calls: list[tuple[int, int | None]] = []
    engine = PolicyEngine(
        state=str(state), clock=lambda: NOW, warm_progress=lambda d, t: calls.append((d, t))
    )
    try:
        assert calls == [(0, 70_000), (65_536, 70_000), (70_000, 70_000)]
        stats = engine.metrics.stats("anthropic/claude-haiku-4-5")
        assert stats is not None and stats.samples > 0
    finally:
        engine.close()
