"""Every ```console example in README.md and docs/*.md runs, and prints what it shows;
every ```python example runs.

A console block is a list of `$ COMMAND` lines, each followed by the output it shows. The
block runs in a fresh temporary directory holding copies of the repository's `examples/`
and `policies/`, with its own state (`POLICYCTL_STATE`, `XDG_STATE_HOME` and `HOME` point
into that directory) and a fixed clock (`POLICYCTL_NOW`, below), in one `bash` process:
`policyctl` is `python -m engine` of this checkout and `python`/`python3` the interpreter
running the tests. Each command's stdout and stderr (interleaved) are compared with the
lines the block shows after it; hashes (a `policy_version`) are normalised, and the two
timings named below.

A block that cannot run here says so in its info string, with the reason:
```` ```console skip-test: why ````. Blocks of one page with the same `session=NAME` run one
after the other in the same directory (a walkthrough: the state the first leaves is what
the next shows).

A block that talks to a server says so in its info string (words split as a shell does):
- `serve` or `serve="ARGS"`: before the commands the test starts `python -m engine serve
  --host 127.0.0.1 --port PORT ARGS` in the block's directory, with the block's environment
  (the fixed clock, its own state), on a free port, and waits until it answers
  `GET /healthz`; after the commands it stops it with SIGTERM and requires exit status 0.
  Every block of a session names the same `serve` and shares one server.
- `port=N` (default 8181): the port the block's text uses. Every `localhost:N`,
  `127.0.0.1:N` and `--port N` in its commands is replaced by the free port, so the docs
  show the default port. A block with `port=N` but no `serve` starts its own server.
`curl` must be installed (`.ci/run` installs it); without it these blocks fail saying so.

Every ```python example runs too (`test_python_example`), in a directory made the same way,
and must exit 0; one that cannot run alone says why in its info string: ```` ```python
fragment: why ```` (it continues an earlier block, is a `>>>` session, or serves until
stopped), and is not collected.

Besides hashes, two timings are normalised (`TIMINGS`), and nothing else: the value of each
`policyctl_decision_seconds_bucket` and `policyctl_decision_seconds_sum` line of
`GET /metrics` (its `_count` line is compared), and the `live after N ms` reload time that
`examples/embed_app.py` prints.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_service import free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The instant every example runs at, unless the block exports another POLICYCTL_NOW.
DOCS_NOW = "2026-11-28T17:46:05Z"
HASH = re.compile(r"\b[0-9a-f]{16}\b")
FENCE = re.compile(r"^```(\S*)\s*(.*)$")
# The timings a block's output may show, normalised as hashes are: the decision-time
# histogram of `GET /metrics`, and the reload time `examples/embed_app.py` measures.
TIMINGS = [
    (re.compile(r"^(policyctl_decision_seconds_(?:bucket\{[^}]*\}|sum)) \S+$", re.M), r"\1 <s>"),
    (re.compile(r"\b(live after) \d+ ms\b"), r"\1 <n> ms"),
]
DOCS_PORT = 8181
STOP_TIMEOUT_S = 30.0
SCRIPT_TIMEOUT_S = 600.0


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

    def _option(self, name: str) -> str | None:
        """`name=VALUE` (shell words) in the info string; `name` alone is ``""``."""
        if self.skip_reason is not None:
            return None
        for word in shlex.split(self.options):
            key, _, value = word.partition("=")
            if key == name:
                return value
        return None

    @property
    def session(self) -> str | None:
        return self._option("session")

    @property
    def serve(self) -> list[str] | None:
        """The arguments the test gives `policyctl serve` for this block, if it serves."""
        args = self._option("serve")
        return None if args is None else shlex.split(args)

    @property
    def port(self) -> int | None:
        """The port the block's text uses, when it talks to a server."""
        text = self._option("port")
        if text is not None:
            return int(text)
        return DOCS_PORT if self.serve is not None else None


def _complete(command: str) -> bool:
    """Whether a command's text is whole: not continued by a trailing backslash, and no
    quote left open (a JSON body over several lines)."""
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def parse_commands(lines: list[str]) -> list[Command]:
    commands: list[Command] = []
    pending = ""  # a command continued on the next line
    for line in lines:
        if pending:
            pending += "\n" + line
            if _complete(pending):
                commands.append(Command(pending))
                pending = ""
        elif line.startswith("$ "):
            if _complete(line[2:]):
                commands.append(Command(line[2:]))
            else:
                pending = line[2:]
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
    for timing, shown in TIMINGS:
        text = timing.sub(shown, text)
    return [line.rstrip() for line in text.split("\n")] if text else []


def _on_port(text: str, shown: int, port: int) -> str:
    """The command with the port the docs show replaced by the one the test serves on."""
    text = re.sub(rf"\b(localhost|127\.0\.0\.1):{shown}\b", rf"\g<1>:{port}", text)
    return re.sub(rf"--port {shown}\b", f"--port {port}", text)


def _run_script(script: str, work: Path, env: dict[str, str]) -> str:
    """Run the block's script with bash, in a process group of its own: whatever it left
    running (a server it started in the background) is killed once it is done. Returns
    what bash itself wrote to stderr."""
    bash = subprocess.Popen(
        ["bash", "-c", script],
        cwd=work,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = bash.communicate(timeout=SCRIPT_TIMEOUT_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bash.pid, signal.SIGKILL)
        bash.wait()
    return stderr


@contextlib.contextmanager
def _serving(work: Path, env: dict[str, str], port: int, args: list[str]) -> Iterator[None]:
    """`policyctl serve ARGS` on `port` in `work`, until it answers; then SIGTERM, and it
    must stop cleanly (exit status 0) once the block's commands are done."""
    log = work.parent / "serve.log"
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1"]
    command += ["--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)

    def output() -> str:
        return log.read_text(encoding="utf-8", errors="replace")

    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}", output)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, f"`policyctl serve` exited with {proc.returncode}:\n{output()}"


def run_unit(unit: list[Block], tmp_path: Path) -> list[tuple[Block, Command, list[str]]]:
    """Run a unit's commands as the docs say; each command with the lines it printed."""
    first = unit[0]
    for block in unit[1:]:
        assert (block.serve, block.port) == (first.serve, first.port), (
            f"{block.where}: the blocks of session `{first.session}` serve differently"
        )
    work, env = _workdir(tmp_path)
    outputs = tmp_path / "out"
    outputs.mkdir()
    commands = [(block, command) for block in unit for command in block.commands]
    script = _script([c for _, c in commands], outputs)
    with contextlib.ExitStack() as stack:
        if first.port is not None:
            if shutil.which("curl") is None:
                pytest.fail(f"{first.where} talks to a server with `curl`: install curl")
            port = free_port()
            script = _on_port(script, first.port, port)
            if first.serve is not None:
                stack.enter_context(_serving(work, env, port, first.serve))
        stderr = _run_script(script, work, env)
    assert stderr == "", stderr
    return [
        (
            block,
            command,
            (outputs / str(i)).read_text(encoding="utf-8", errors="replace").splitlines(),
        )
        for i, (block, command) in enumerate(commands)
    ]


@pytest.mark.parametrize("unit", UNITS, ids=[u[0].where for u in UNITS])
def test_console_example(unit: list[Block], tmp_path: Path) -> None:
    reason = unit[0].skip_reason
    if reason is not None:
        pytest.skip(f"{unit[0].where}: {reason}")
    failures = []
    for block, command, actual in run_unit(unit, tmp_path):
        want, got = _normal(command.expected), _normal(actual)
        if want != got:
            diff = difflib.unified_diff(want, got, "the docs", "the tool", lineterm="", n=2)
            failures.append(f"{block.where}: $ {command.text}\n" + "\n".join(diff))
    if failures:
        pytest.fail("\n\n".join(failures), pytrace=False)


def update_pages(pages: list[Path]) -> None:
    """Rewrite the output lines of every console block of `pages` with what the tool prints
    now (`python tests/test_docs.py --update PAGE…`; refused when CI is set). Review the
    diff: the prose around an example is not rewritten."""
    import tempfile

    from _golden import update_requested

    os.environ.setdefault("UPDATE_GOLDEN", "1")
    update_requested()  # raises under CI
    for page in pages:
        name = str(page.resolve().relative_to(ROOT))
        runs: dict[int, list[tuple[Command, list[str]]]] = {}
        for unit in UNITS:
            if unit[0].page != name or unit[0].skip_reason is not None:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                for block, command, actual in run_unit(unit, Path(tmp)):
                    runs.setdefault(block.line, []).append((command, actual))
        lines = page.read_text(encoding="utf-8").split("\n")
        for start in sorted(runs, reverse=True):  # bottom up: earlier line numbers hold
            end = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
            body: list[str] = []
            for command, actual in runs[start]:
                body.append("$ " + command.text)
                body.extend(line.rstrip() for line in actual)
            lines[start:end] = body
        page.write_text("\n".join(lines), encoding="utf-8")
        print(f"{name}: {len(runs)} blocks rewritten")


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


@dataclass(frozen=True)
class PythonBlock:
    page: str
    line: int
    text: str
    fragment: str | None  # why it cannot run alone (```` ```python fragment: why ````)

    def __str__(self) -> str:
        return f"{self.page}:{self.line}"


def python_blocks(page: Path) -> list[PythonBlock]:
    """The page's ```python blocks."""
    found: list[PythonBlock] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    start: tuple[int, str] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if start is None:
            if fence:
                start, body = (number, fence.group(1) + " " + fence.group(2)), []
        elif line.startswith("```"):
            number_at, info = start
            lang, _, options = info.partition(" ")
            if lang == "python":
                fragment = (
                    options.removeprefix("fragment:").strip()
                    if options.startswith("fragment:")
                    else None
                )
                name = str(page.relative_to(ROOT))
                found.append(PythonBlock(name, number_at, "\n".join(body) + "\n", fragment))
            start = None
        else:
            body.append(line)
    return found


PYTHON_BLOCKS = [block for page in PAGES for block in python_blocks(page)]


@pytest.mark.parametrize("block", [b for b in PYTHON_BLOCKS if b.fragment is None], ids=str)
def test_python_example(block: PythonBlock, tmp_path: Path) -> None:
    """Every ```python example runs to the end (exit 0) in a fresh directory like a console
    block's (copies of `examples/` and `policies/`, its own state, the fixed clock for the
    commands it runs), unless its info string says why it is a fragment (not collected):
    it continues an earlier block, shows a session at the `>>>` prompt, or serves until it
    is stopped."""
    work, env = _workdir(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", block.text],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{block} failed:\n{done.stderr[-3000:]}"


def test_every_python_example_is_found_and_every_fragment_says_why() -> None:
    counted = sum(page.read_text(encoding="utf-8").count("```python") for page in PAGES)
    assert counted == len(PYTHON_BLOCKS)
    fragments = [b for b in PYTHON_BLOCKS if b.fragment is not None]
    assert all(b.fragment for b in fragments), "a fragment says why it cannot run alone"
    assert len(fragments) < len(PYTHON_BLOCKS) / 2  # (most examples run as they are)


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


if __name__ == "__main__":
    if sys.argv[1:2] != ["--update"]:
        sys.exit("usage: python tests/test_docs.py --update [PAGE…]  (rewrites doc outputs)")
    update_pages([Path(p) for p in sys.argv[2:]] or PAGES)
