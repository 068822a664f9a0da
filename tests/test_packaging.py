"""The wheel, installed in a fresh virtual environment, works away from the source checkout.

Builds `policyctl-*.whl` from this repository, installs it (dependencies from the package
registries) into a new venv, and runs the installed `policyctl` and `engine` from an empty
directory with a clean environment: nothing may come from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from engine import PolicyEngine

ROOT = Path(__file__).resolve().parent.parent
PACKAGED_DATA = (
    "engine/_data/grammar/policy.lark",
    "engine/_data/policies/default.policy",
    "engine/_data/policies/models.yaml",
)


def _run(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _clean_env(tmp: Path) -> dict[str, str]:
    """No PYTHONPATH or active venv pointing back at the checkout, no operator state."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp / "state")
    return env


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(ROOT)],
        cwd=tmp_path,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("policyctl-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for data in PACKAGED_DATA:
            assert data in names, f"{data} is missing from {wheel.name}"
            source = ROOT / data.removeprefix("engine/_data/")
            assert archive.read(data) == source.read_bytes(), data
        assert "engine/__init__.py" in names
        assert not any(n.startswith(("tests/", "bench/", ".ci/")) for n in names)
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "policyctl = engine.cli:run" in archive.read(entry_points).decode()

    venv = tmp_path / "venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    python, policyctl = venv / "bin" / "python", venv / "bin" / "policyctl"
    env = _clean_env(tmp_path)
    installed = _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", str(wheel)],
        cwd=tmp_path,
        env=env,
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]

    empty = tmp_path / "empty"
    empty.mkdir()
    request = ROOT / "examples" / "requests" / "chat.json"
    shutil.copy(request, empty / "request.json")

    ran = _run([str(policyctl), "eval", "request.json"], cwd=empty, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == ""
    decision = json.loads(ran.stdout)
    # the installed copy decides exactly as the checkout does, with the same policy set
    with PolicyEngine(state="memory://") as source:
        expected = source.evaluate(json.loads(request.read_text()), dry_run=True)
        expected_x = source.evaluate({"id": "x"}, dry_run=True)
    assert decision["allowed"] is True
    assert (decision["route"], decision["provider"], decision["model"]) == (
        expected.route,
        expected.provider,
        expected.model,
    )
    assert decision["policy_version"] == expected.policy_version
    # the default state went to $XDG_STATE_HOME, not into the working directory
    assert (tmp_path / "state" / "policyctl" / "state.duckdb").is_file()

    checked = _run([str(policyctl), "check"], cwd=empty, env=env, timeout=120)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    embedded = _run(
        [
            str(python),
            "-c",
            "from engine import PolicyEngine; print(PolicyEngine().evaluate({'id':'x'}).provider)",
        ],
        cwd=empty,
        env=env,
        timeout=120,
    )
    assert embedded.returncode == 0, embedded.stderr
    assert embedded.stdout == f"{expected_x.provider}\n"

    where = _run(
        [
            str(python),
            "-c",
            "import engine, engine.resources as r; print(engine.__file__);"
            " print(r.grammar_path()); print(r.default_policy_dir())",
        ],
        cwd=empty,
        env=env,
        timeout=120,
    )
    assert where.returncode == 0, where.stderr
    site = venv.resolve()
    for line in where.stdout.splitlines():
        path = Path(line).resolve()
        assert path.is_relative_to(site), f"{path} is not inside the venv {site}"
        assert not path.is_relative_to(ROOT.resolve())
    assert sorted(p.name for p in empty.iterdir()) == ["request.json"]
