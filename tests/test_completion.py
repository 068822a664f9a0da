"""`policyctl completion bash|zsh|fish`: scripts generated from the parser, run in real shells.

bash: the script is sourced in a real `bash` and its completion function driven as
readline would (`COMP_WORDS`, `COMP_CWORD`), and `COMPREPLY` read back. fish: the script
is sourced in a real `fish` and `complete -C 'LINE'` asks fish itself what it completes.
zsh: `zsh -n` parses the script, and a real interactive zsh in a pseudo-terminal, with
the script in its $fpath and `compinit` run, is sent `policyctl ch` and a TAB, and must
show `policyctl check`. `.ci/run` installs zsh and fish.
"""

from __future__ import annotations

import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import COMMANDS, build_parser
from engine.cli.completion import command_tree

ROOT = Path(__file__).resolve().parent.parent


def _script(shell: str, tmp_path: Path) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "engine", "completion", shell],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    path = tmp_path / f"policyctl.{shell}"
    path.write_text(out.stdout)
    return path


def _shell(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"`{name}` is not installed (.ci/run installs it)"
    return found


def _bash_complete(script: Path, *words: str) -> list[str]:
    line = " ".join(f"'{w}'" for w in words)
    program = (
        f"source '{script}'\n"
        f"COMP_WORDS=({line}); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n"
        "_policyctl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(
        [_shell("bash"), "--norc", "-c", program],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [w for w in out.stdout.splitlines() if w]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _script("bash", tmp_path_factory.mktemp("bash"))


def test_bash_completes_a_command(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "policyctl", "ch") == ["check"]


def test_bash_offers_every_registered_command(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "policyctl", "") == [name for name, _ in COMMANDS]


def test_bash_completes_options_their_choices_and_subcommands(bash_script: Path) -> None:
    assert _bash_complete(bash_script, "policyctl", "check", "--fo") == ["--format"]
    assert _bash_complete(bash_script, "policyctl", "check", "--format", "") == ["json", "table"]
    assert _bash_complete(bash_script, "policyctl", "schema", "") == ["request", "decision"]
    catalog = command_tree(build_parser()).subcommands
    subs = next(c for c in catalog if c.path == ("catalog",)).subcommands
    assert _bash_complete(bash_script, "policyctl", "catalog", "") == [s.path[-1] for s in subs]
    assert _bash_complete(bash_script, "policyctl", "catalog", "show", "--for") == ["--format"]
    # an option's value is not taken for a command: `--policy check` is a path
    assert _bash_complete(bash_script, "policyctl", "eval", "--policy", "ch") == []


def test_bash_completes_file_names_for_a_path(bash_script: Path) -> None:
    (bash_script.parent / "rules.policy").write_text("")
    assert _bash_complete(bash_script, "policyctl", "check", "rul") == ["rules.policy"]
    assert _bash_complete(bash_script, "policyctl", "eval", "--policy", "rul") == ["rules.policy"]


def _fish_complete(script: Path, line: str) -> list[str]:
    out = subprocess.run(
        [_shell("fish"), "--no-config", "-c", f"source '{script}'; complete -C '{line}'"],
        cwd=script.parent,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [entry.split("\t")[0] for entry in out.stdout.splitlines()]


def test_fish_parses_and_completes(tmp_path: Path) -> None:
    script = _script("fish", tmp_path)
    subprocess.run([_shell("fish"), "--no-config", "-n", str(script)], check=True, timeout=30)
    assert _fish_complete(script, "policyctl ch") == ["check"]
    assert _fish_complete(script, "policyctl check --fo") == ["--format"]
    assert _fish_complete(script, "policyctl check --format ") == ["json", "table"]
    assert sorted(_fish_complete(script, "policyctl schema ")) == ["decision", "request"]
    assert "completion" in _fish_complete(script, "policyctl ")


def _zsh_complete(script: Path, typed: str, expect: str) -> str:
    """Type `typed` and a TAB into a real interactive zsh (in a pseudo-terminal) whose
    completion system loads the script from $fpath; what the terminal shows once `expect`
    appears (or after 20 s)."""
    home = script.parent / "zdotdir"
    functions = script.parent / "functions"
    home.mkdir(exist_ok=True)
    functions.mkdir(exist_ok=True)
    shutil.copy(script, functions / "_policyctl")
    (home / ".zshrc").write_text(
        f"fpath=({functions} $fpath)\n"
        f"autoload -U compinit && compinit -u -d {home}/.zcompdump\n"
        "PS1='ready> '\n"
    )
    pid, fd = pty.fork()
    if pid == 0:  # the child: an interactive zsh reading the .zshrc above
        os.environ.update({"ZDOTDIR": str(home), "TERM": "dumb", "HOME": str(home)})
        os.execv(_shell("zsh"), ["zsh", "-i"])
    shown = b""

    def read_until(text: bytes) -> None:
        nonlocal shown
        deadline = time.monotonic() + 20
        while text not in shown and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    shown += os.read(fd, 4096)
                except OSError:
                    return

    try:
        read_until(b"ready> ")
        start = len(shown)
        os.write(fd, typed.encode() + b"\t")
        read_until(expect.encode())
        return shown[start:].decode(errors="replace")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def test_zsh_parses_and_completes(tmp_path: Path) -> None:
    script = _script("zsh", tmp_path)
    subprocess.run([_shell("zsh"), "-n", str(script)], check=True, timeout=30)
    assert script.read_text().startswith("#compdef policyctl\n")
    assert "policyctl check " in _zsh_complete(script, "policyctl ch", "policyctl check ")
    shown = _zsh_complete(script, "policyctl check --format ", "table")
    assert "json" in shown and "table" in shown
    shown = _zsh_complete(script, "policyctl sch", "policyctl schema ")
    assert "policyctl schema " in shown


def test_an_unknown_shell_exits_2(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "completion", "tcsh"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "invalid choice: 'tcsh'" in out.stderr
