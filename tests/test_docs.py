"""Every ```console example in README.md and docs/*.md runs, and prints what it shows.

A console block is a list of `$ COMMAND` lines, each followed by the output it shows. The
block runs in a fresh temporary directory holding copies of the repository's `examples/`
and `policies/`, with its own state (`POLICYCTL_STATE`, `XDG_STATE_HOME` and `HOME` point
into that directory) and a fixed clock (`POLICYCTL_NOW`, below), in one `bash` process:
`policyctl` is `python -m engine` of this checkout and `python`/`python3` the interpreter
running the tests. Each command's stdout and stderr (interleaved) are compared with the
lines the block shows after it; only hashes (a `policy_version`) are normalised.

A block that cannot run here says so in its info string, with the reason:
```` ```console skip-test: needs a running server ````. Blocks of one page with the same
`session=NAME` run one after the other in the same directory (a walkthrough: the state
the first leaves is what the next shows).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The instant every example runs at, unless the block exports another POLICYCTL_NOW.
DOCS_NOW = "2026-11-28T17:46:05Z"
HASH = re.compile(r"\b[0-9a-f]{16}\b")
FENCE = re.compile(r"^```(\S*)\s*(.*)$")


@dataclass
class Command:
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: str
    line: int
    options: str
    commands: list[Command]

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        if self.options.startswith("skip-test"):
            return self.options.removeprefix("skip-test").lstrip(":").strip() or "?"
        return None

    @property
    def session(self) -> str | None:
        found = re.search(r"\bsession=(\S+)", self.options)
        return found.group(1) if found else None


def parse_commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    pending = ""  # a command continued with a trailing backslash
    for line in lines:
        if pending:
            pending += "\n" + line
            if not line.endswith("\\"):
                commands.append(Command(pending))
                pending = ""
        elif line.startswith("$ "):
            if line.endswith("\\"):
                pending = line[2:]
            else:
                commands.append(Command(line[2:]))
        else:
            assert commands, f"output before the first `$ ` command: {line!r}"
            commands[-1].expected.append(line)
    return commands


def console_blocks(page: Path) -> list[Block]:
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    inside: tuple[int, str, bool] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if inside is None:
            if fence:
                inside = (number, fence.group(2), fence.group(1) == "console")
                body = []
        elif line.startswith("```"):
            start, options, is_console = inside
            if is_console:
                name = str(page.relative_to(ROOT))
                blocks.append(Block(name, start, options, parse_commands(body)))
            inside = None
        else:
            body.append(line)
    return blocks


def units() -> list[list[Block]]:
    """Standalone blocks, and each session's blocks together, in page order."""
    found: list[list[Block]] = []
    sessions: dict[tuple[str, str], list[Block]] = {}
    for page in PAGES:
        for block in console_blocks(page):
            if block.skip_reason is None and block.session is not None:
                key = (block.page, block.session)
                if key not in sessions:
                    sessions[key] = []
                    found.append(sessions[key])
                sessions[key].append(block)
            else:
                found.append([block])
    return found


UNITS = units()


def _shim(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def _workdir(tmp: Path) -> tuple[Path, dict[str, str]]:
    work = tmp / "work"
    work.mkdir()
    for name in ("examples", "policies"):
        shutil.copytree(ROOT / name, work / name, symlinks=True)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    _shim(bin_dir / "policyctl", f'#!/bin/sh\nexec "{sys.executable}" -m engine "$@"\n')
    for python in ("python", "python3"):
        _shim(bin_dir / python, f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POLICYCTL_", "PYTHON", "VIRTUAL_ENV", "COLUMNS", "LINES"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
        HOME=str(tmp / "home"),
        XDG_STATE_HOME=str(tmp / "home" / ".local" / "state"),
        POLICYCTL_NOW=DOCS_NOW,
        LC_ALL="C.UTF-8",
        TZ="UTC",
    )
    return work, env


def _script(commands: list[Command], outputs: Path) -> str:
    """One bash script: each command's stdout and stderr to its own numbered file."""
    parts = ["set +e"]
    for i, command in enumerate(commands):
        parts.append(f"{{\n{command.text}\n}} > {outputs / str(i)} 2>&1 < /dev/null")
    return "\n".join(parts) + "\n"


def _normal(lines: list[str]) -> list[str]:
    text = "\n".join(lines).strip("\n")
    text = HASH.sub("<hash>", text)
    return [line.rstrip() for line in text.split("\n")] if text else []


@pytest.mark.parametrize("unit", UNITS, ids=[u[0].where for u in UNITS])
def test_console_example(unit: list[Block], tmp_path: Path) -> None:
    reason = unit[0].skip_reason
    if reason is not None:
        pytest.skip(f"{unit[0].where}: {reason}")
    work, env = _workdir(tmp_path)
    outputs = tmp_path / "out"
    outputs.mkdir()
    commands = [(block, command) for block in unit for command in block.commands]
    ran = subprocess.run(
        ["bash", "-c", _script([c for _, c in commands], outputs)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert ran.stderr == "", ran.stderr
    failures = []
    for i, (block, command) in enumerate(commands):
        actual = (outputs / str(i)).read_text(encoding="utf-8", errors="replace").splitlines()
        want, got = _normal(command.expected), _normal(actual)
        if want != got:
            diff = difflib.unified_diff(want, got, "the docs", "the tool", lineterm="", n=2)
            failures.append(f"{block.where}: $ {command.text}\n" + "\n".join(diff))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def test_every_page_has_its_examples_found() -> None:
    """The parser sees the blocks (a renamed fence would silently test nothing)."""
    counted = sum(page.read_text(encoding="utf-8").count("```console") for page in PAGES)
    assert counted == sum(len(u) for u in UNITS)
    assert all(block.commands for u in UNITS for block in u)


def test_examples_named_by_the_docs_are_shipped() -> None:
    named = set()
    for page in PAGES:
        named |= set(re.findall(r"\bexamples/[\w./-]+\w", page.read_text(encoding="utf-8")))
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert missing == []


def test_the_readme_embedding_example_is_the_shipped_file() -> None:
    """README shows `python examples/embed.py` after the program: they are the same text."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = re.search(r"```python\n(from engine import PolicyEngine\n.*?)```", readme, re.S)
    assert shown is not None
    assert shown.group(1) == (ROOT / "examples" / "embed.py").read_text(encoding="utf-8")


def _policyctl(tmp: Path, now: str, *args: str) -> subprocess.CompletedProcess[str]:
    work, env = _workdir(tmp)
    env["POLICYCTL_NOW"] = now
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("now", ["2026-11-28T17:46:05Z", "1795887965", "1795887965.0"])
def test_policyctl_now_fixes_the_clock_of_a_command(now: str, tmp_path: Path) -> None:
    ran = _policyctl(tmp_path, now, "eval", "--state", "memory://", "examples/requests/chat.json")
    assert ran.returncode == 0, ran.stderr
    user = next(s for s in json.loads(ran.stdout)["rate_limits"] if s["scope"] == "user")
    # one request of `limit user 100 per 1m burst 10` at 17:46:05: full again 0.6 s later
    assert user["reset_at"] == 1795887965.6


@pytest.mark.parametrize("now", ["yesterday", "nan", "inf"])
def test_a_bad_policyctl_now_is_a_usage_error(now: str, tmp_path: Path) -> None:
    ran = _policyctl(tmp_path, now, "eval", "--state", "memory://", "examples/requests/chat.json")
    assert (ran.returncode, ran.stdout) == (2, "")
    assert ran.stderr.startswith("policyctl: error: `POLICYCTL_NOW` must be"), ran.stderr
