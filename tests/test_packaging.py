"""The wheel, installed in a fresh virtual environment, works away from the source checkout.

Builds `policyctl-*.whl` from this repository, installs it (dependencies from the package
registries) into a new venv, and runs the installed `policyctl` and `engine` from an empty
directory with a clean environment: nothing may come from the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from engine import PolicyEngine, __version__
from engine.build import UNKNOWN, git_commit

ROOT = Path(__file__).resolve().parent.parent
PACKAGED_DATA = (
    "engine/_data/grammar/policy.lark",
    "engine/_data/policies/default.policy",
    "engine/_data/policies/models.json",
    "engine/_data/policies/latency-priors.yaml",
    "engine/language/codes/E0333.md",  # the catalogue `policyctl explain` reads
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
        # the build hook's record of the commit, and not the hook itself
        assert archive.read("engine/_data/commit").decode() == f"{_git_head()}\n"
        assert not any("build_hook" in n for n in names)
        assert not any(n.startswith(("tests/", "bench/", ".ci/")) for n in names)
        (entry_points,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "policyctl = engine.cli:run" in archive.read(entry_points).decode()
        assert (
            "policy = engine.editors.pygments_lexer:PolicyLexer"
            in archive.read(entry_points).decode()
        )

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
    version = _run([str(policyctl), "--version"], cwd=empty, env=env, timeout=120)
    assert (version.returncode, version.stderr) == (0, "")
    assert version.stdout == f"policyctl {__version__} (commit {_git_head()})\n"
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
    # `eval` is a query: no state file anywhere; the commands that keep state put the
    # default one in $XDG_STATE_HOME, not into the working directory
    assert not (tmp_path / "state" / "policyctl" / "state.duckdb").exists()
    assert list(empty.iterdir()) == [empty / "request.json"]
    status = _run([str(policyctl), "ratelimit", "status"], cwd=empty, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    assert (tmp_path / "state" / "policyctl" / "state.duckdb").is_file()

    checked = _run([str(policyctl), "check"], cwd=empty, env=env, timeout=120)
    assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")

    explained = _run([str(policyctl), "explain", "E0333"], cwd=empty, env=env, timeout=120)
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout == (ROOT / "engine/language/codes/E0333.md").read_text()
    # the packaged default set's tests ship with it and pass (no state file written)
    tested = _run([str(policyctl), "test"], cwd=empty, env=env, timeout=120)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert tested.stdout.endswith(" passed, 0 failed\n")

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

    _every_command_the_docs_show(policyctl, tmp_path, env)
    _a_build_outside_git_says_unknown(python, policyctl, tmp_path, env)


def _git_head() -> str:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    assert head.returncode == 0, f"the tests run from a git checkout: {head.stderr}"
    return head.stdout.strip()


def _a_build_outside_git_says_unknown(
    python: Path, policyctl: Path, tmp: Path, env: dict[str, str]
) -> None:
    """A wheel built from a copy of the sources without `.git` (as from a tarball),
    installed over the first one: `--version` says the commit is unknown."""
    copy = tmp / "copy"
    copy.mkdir()
    for name in ("pyproject.toml", "README.md", ".gitignore"):
        shutil.copy(ROOT / name, copy / name)
    skip = shutil.ignore_patterns("__pycache__", "node_modules", "*.pyc")
    for name in ("engine", "grammar", "policies", ".ci"):
        shutil.copytree(ROOT / name, copy / name, ignore=skip)
    wheels = tmp / "wheels-copy"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(wheels), str(copy)],
        cwd=tmp,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = wheels.glob("policyctl-*.whl")
    installed = _run(
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-deps",
         "--force-reinstall", str(wheel)],
        cwd=tmp,
        env=env,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    version = _run([str(policyctl), "--version"], cwd=tmp / "empty", env=env, timeout=120)
    assert version.stdout == f"policyctl {__version__} (commit unknown)\n", version.stderr


def test_the_commit_comes_from_the_checkouts_own_git(tmp_path: Path) -> None:
    """`engine.build.git_commit`, which the build hook and a checkout both use: git's
    answer for the checkout; `unknown` for a tree without `.git` (even one inside another
    repository) and when git cannot be run."""
    assert git_commit(ROOT) == _git_head()
    nested = ROOT / "tests"  # inside the checkout, but not its root
    assert git_commit(nested) == UNKNOWN
    assert git_commit(tmp_path) == UNKNOWN
    no_git = _run(
        [sys.executable, "-c", "import sys; from engine.build import git_commit;"
         " print(git_commit(__import__('pathlib').Path(sys.argv[1])))", str(ROOT)],
        cwd=tmp_path,
        env={**os.environ, "PATH": str(tmp_path), "PYTHONPATH": str(ROOT)},
        timeout=60,
    )  # fmt: skip
    assert (no_git.returncode, no_git.stdout) == (0, f"{UNKNOWN}\n"), no_git.stderr


def _every_command_the_docs_show(policyctl: Path, tmp: Path, env: dict[str, str]) -> None:
    """The user's install (the wheel, no extras) runs each command README.md and docs/
    show: check, fmt, eval, ratelimit, metrics import|show|export, catalog, simulate, serve."""
    work = tmp / "docs"
    shutil.copytree(ROOT / "examples", work / "examples", symlinks=False)
    env = {**env, "POLICYCTL_NOW": "2026-11-28T17:46:05Z", "POLICYCTL_STATE": str(tmp / "s.db")}

    def run(*args: str, code: int = 0) -> str:
        done = _run([str(policyctl), *args], cwd=work, env=env, timeout=300)
        assert (done.returncode, "Traceback" in done.stderr) == (code, False), (
            f"policyctl {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
        return done.stdout

    run("check", "examples/policies/tour.policy")
    run("check", "examples/policies/fast.policy", code=2)
    assert (
        run("fmt", "--check", "examples/policies/tour.policy", "examples/policies/lint.policy")
        == ""
    )
    table = run(
        "eval", "--state", "memory://", "--format", "table", "examples/requests/vision.json"
    )
    assert "provider/model  gemini/gemini-3.1-pro-preview" in table
    decisions = run("eval", "examples/requests/ip.jsonl", code=3).splitlines()
    assert sum(json.loads(line)["allowed"] for line in decisions) == 55
    policy_lines = (ROOT / "policies" / "default.policy").read_text().splitlines()
    (ip_line,) = [i for i, x in enumerate(policy_lines, 1) if x.startswith("limit ip ")]
    assert f"default.policy:{ip_line}:1" in run("ratelimit", "status", "--ip", "203.0.113.7")
    run("ratelimit", "set", "--user", "vip", "--limit", "1000", "--window", "1m",
        "--expires", "2026-12-31")  # fmt: skip
    assert "vip" in run("ratelimit", "config")
    run("ratelimit", "remove", "--user", "vip")
    assert "91.67%" in run("ratelimit", "stats")
    assert "r59" in run("ratelimit", "violations", "--limit", "1")
    run("ratelimit", "buckets")
    run("ratelimit", "reset", "--ip", "203.0.113.7")
    run("ratelimit", "cleanup")
    # metrics import runs DuckDB Python UDFs, which need numpy (a dependency, not an extra)
    imported = run("metrics", "import", "--state", "m.duckdb", "examples/outcomes.jsonl", code=2)
    assert imported.startswith("imported 600 outcomes, rejected 3"), imported
    assert "gemini-2.5-flash-lite  200" in run("metrics", "show", "--state", "m.duckdb")
    for out in ("o.parquet", "o.csv"):
        run("metrics", "export", "--state", "m.duckdb", "--output", out)
        assert (work / out).stat().st_size > 0
    run("catalog", "import", "litellm", "examples/litellm/prices.json", "--output", "c.yaml")
    assert "gemini-2.5-pro" in run("catalog", "show", "c.yaml", "--supports", "vision")
    assert run("catalog", "diff", "c.yaml", "c.yaml").startswith("0 added")
    report = run("simulate", "examples/simulations/outage.yaml", "--requests", "300")
    assert "STRATEGY" in report
    # the language server needs the `lsp` extra (pygls), and says so
    lsp = subprocess.run(
        [str(policyctl), "lsp"],
        cwd=work,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    missing = "the language server needs pygls, which is not installed"
    assert lsp.returncode == 2, lsp.stderr
    assert lsp.stderr == f"policyctl: error: {missing}: pip install 'policyctl[lsp]'\n"
    _serve_answers_one_request(policyctl, work, env)


def _serve_answers_one_request(policyctl: Path, work: Path, env: dict[str, str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [str(policyctl), "serve", "--host", "127.0.0.1", "--port", str(port),
            "--state", "memory://", "--no-watch"]  # fmt: skip
    server = subprocess.Popen(
        argv,
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/eval",
            data=(work / "examples" / "requests" / "chat.json").read_bytes(),
            method="POST",
        )
        for _ in range(600):  # bounded: up to 60 s for the server to listen
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    decision = json.loads(answer.read())
                break
            except OSError:
                assert server.poll() is None, server.stderr.read() if server.stderr else ""
                time.sleep(0.1)
        else:
            pytest.fail("`policyctl serve` did not answer within 60 s")
        assert (decision["request_id"], decision["allowed"]) == ("req-chat-001", True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if server.stderr is not None:
            server.stderr.close()
