"""The catalogue of diagnostic codes (`engine/language/codes/CODE.md`) and `policyctl explain`.

Every code the engine can emit (every `"E…"`/`"W…"` literal in `engine/`) has an entry, and
every entry's examples do what it says: its Wrong example produces that code and no other
error, and its Right example produces no error and not that code (a warning's Right example
no warning at all). Any `CODE.md` in the directory is picked up, whoever added it.

An example is its section's fenced blocks (engine/language/explain.py): `policy` blocks
are policy files (`policy.policy` unless the info string names the file), a block whose info
string names a file is written under that name, all in a fresh directory. Without an `sh`
block the directory is loaded in-process by the real loader (`load_policy`, with the
catalogue's fixed clock); an `sh` block is run by `bash -e` in that directory with
`policyctl` the real command line of this checkout, and its codes are read from what it
prints (`error[E0600]`, `warning[W0500]`); a Right example's commands must all exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _golden import update_requested

from engine.diagnostics import Diagnostic, PolicyError
from engine.language.explain import CODE, Block, codes, explanation, read
from engine.language.loader import load_policy
from engine.resources import codes_dir
from engine.units import iso_timestamp_s

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden" / "explain"
NOW = "2026-11-28T17:46:05Z"  # the clock the examples run at (retirement warnings read it)
EMITTED_CODE = re.compile(r"""["']([EW][0-9]{4})["']""")
PRINTED_CODE = re.compile(r"\b(?:error|warning)\[([EW][0-9]{4})\]")
ENTRIES = sorted(p.stem for p in codes_dir().glob("*.md"))


def emitted_codes() -> set[str]:
    """Every code literal in the engine's source."""
    found: set[str] = set()
    for path in (ROOT / "engine").rglob("*.py"):
        found.update(EMITTED_CODE.findall(path.read_text(encoding="utf-8")))
    return found


def test_every_code_the_engine_emits_has_an_entry() -> None:
    emitted = emitted_codes()
    assert len(emitted) > 70, "the scan found too few codes: has the literal style changed?"
    missing = sorted(emitted - set(ENTRIES))
    assert missing == [], f"codes without engine/language/codes/CODE.md: {missing}"


def test_every_entry_is_a_code_the_engine_emits() -> None:
    stale = sorted(set(ENTRIES) - emitted_codes())
    assert stale == [], f"entries for codes no module emits: {stale}"


def test_every_file_in_the_catalogue_is_named_for_a_code() -> None:
    others = sorted(p.name for p in codes_dir().iterdir() if not CODE.fullmatch(p.stem))
    assert others == []
    assert codes() == ENTRIES


def _shim(bin_dir: Path) -> None:
    """`policyctl` on PATH: this checkout's command line, run by the tests' interpreter."""
    bin_dir.mkdir()
    script = bin_dir / "policyctl"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m engine "$@"\n')
    script.chmod(0o755)


def run_example(blocks: tuple[Block, ...], where: Path) -> tuple[list[str], str]:
    """The codes an example produces (in order) and what it printed (for a failure)."""
    work = where / "work"
    work.mkdir(parents=True)
    scripts = [b.text for b in blocks if b.lang == "sh"]
    for block in blocks:
        if block.lang == "sh":
            continue
        name = block.name or ("policy.policy" if block.lang == "policy" else None)
        assert name is not None, f"a ```{block.lang} block must name its file"
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(block.text, encoding="utf-8")
    if not scripts:
        old = Path.cwd()
        os.chdir(work)
        try:
            loaded = load_policy(work, now=iso_timestamp_s(NOW))
            found: list[Diagnostic] = list(loaded.warnings)
        except PolicyError as err:
            found = list(err.diagnostics)
        finally:
            os.chdir(old)
        return [d.code for d in found], "\n".join(d.render() for d in found)
    _shim(where / "bin")
    env = {
        "PATH": f"{where / 'bin'}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HOME": str(where),
        "XDG_STATE_HOME": str(where / "state"),
        "POLICYCTL_NOW": NOW,
        "LC_ALL": "C.UTF-8",
    }
    out = subprocess.run(
        ["bash", "-e", "-c", "\n".join(scripts)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    printed = out.stdout + out.stderr + f"\n(exit status {out.returncode})"
    return PRINTED_CODE.findall(out.stdout + out.stderr), printed


def _errors(codes: list[str]) -> set[str]:
    return {c for c in codes if c.startswith("E")}


@pytest.mark.parametrize("code", ENTRIES)
def test_the_wrong_example_produces_exactly_its_code(code: str, tmp_path: Path) -> None:
    """Its code, and no other error (a lint's warning about the same text may come too)."""
    entry = read(codes_dir() / f"{code}.md")
    produced, printed = run_example(entry.wrong, tmp_path)
    assert code in produced, printed
    assert _errors(produced) <= {code}, printed


@pytest.mark.parametrize("code", ENTRIES)
def test_the_right_example_is_clean(code: str, tmp_path: Path) -> None:
    """No error and not its code: it checks (a warning's Right example is warning-free)."""
    entry = read(codes_dir() / f"{code}.md")
    produced, printed = run_example(entry.right, tmp_path)
    assert _errors(produced) == set() and code not in produced, printed
    if code.startswith("W"):
        assert produced == [], printed
    assert "(exit status 0)" in printed or not any(b.lang == "sh" for b in entry.right), printed


@pytest.mark.parametrize("code", ENTRIES)
def test_an_entry_explains_in_prose(code: str) -> None:
    entry = read(codes_dir() / f"{code}.md")
    prose = entry.text.split("## Wrong")[0].splitlines()[1:]
    assert len(" ".join(prose).split()) >= 15, "explain what it means and how to fix it"
    assert entry.title == entry.title.strip() and not entry.title.endswith(".")


# ----------------------------------------------------------------- the command line


def policyctl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOLDEN_CODES = ["E0014", "E0333", "E0600", "W0500"]


@pytest.mark.parametrize("code", GOLDEN_CODES)
def test_explain_prints_the_entry(code: str, tmp_path: Path) -> None:
    out = policyctl("explain", code.lower(), cwd=tmp_path)
    assert (out.returncode, out.stderr) == (0, "")
    golden = GOLDEN / f"{code}.txt"
    if update_requested():
        golden.write_text(out.stdout, encoding="utf-8")
    assert out.stdout == golden.read_text(encoding="utf-8")
    assert out.stdout == explanation(code).text


def test_explain_with_no_code_lists_every_code_and_its_title(tmp_path: Path) -> None:
    out = policyctl("explain", cwd=tmp_path)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [f"{c}  {explanation(c).title}" for c in ENTRIES]


def test_explain_of_an_unknown_code_exits_2_with_a_guess(tmp_path: Path) -> None:
    out = policyctl("explain", "E333", cwd=tmp_path)
    assert (out.returncode, out.stdout) == (2, "")
    assert out.stderr == (
        "policyctl: error: no explanation for `E333`; did you mean `E0333`?"
        " (`policyctl explain` lists every code)\n"
    )
    out = policyctl("explain", "nonsense-words", cwd=tmp_path)
    assert out.returncode == 2
    assert "did you mean" not in out.stderr and "`nonsense-words`" in out.stderr


@pytest.mark.parametrize("code", ["E0241", "E0333", "W0501"])
def test_the_cli_agrees_with_the_loader_on_an_example(code: str, tmp_path: Path) -> None:
    """A few Wrong examples through `policyctl check`: the same codes as in-process."""
    entry = read(codes_dir() / f"{code}.md")
    (tmp_path / "p").mkdir()
    for block in entry.wrong:
        (tmp_path / "p" / (block.name or "policy.policy")).write_text(block.text)
    out = policyctl("check", "p", cwd=tmp_path)
    assert PRINTED_CODE.findall(out.stderr) == run_example(entry.wrong, tmp_path / "x")[0]
    assert out.returncode == (0 if code.startswith("W") else 2)
