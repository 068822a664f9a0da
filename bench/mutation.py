"""Mutation testing of the checker, limits, strategies, evaluator and request modules (mutmut).

    python bench/mutation.py [--modules checker,limits,...] [--max-per-module N] [--seed S]
                             [--jobs J] [--report FILE] [--keep]

For each module the script copies the repository into a temporary directory (the real files
are never edited), writes a `[tool.mutmut]` section into the copy's `pyproject.toml` that
mutates only that module's files and selects only its fast test files (MODULES below), and
runs mutmut 3 there in two steps:

1. generation and stats: mutmut writes every mutant of the module into `mutants/` and runs
   the selected tests once to learn which test calls which function; the script then reads
   the mutant names from mutmut's `.meta` files;
2. mutants: a sample of `--max-per-module` names (all of them when 0), drawn with
   `random.Random(seed)` from the sorted names, is passed to `mutmut run NAME...`; mutmut
   runs, for each mutant, the selected tests that call the mutated function, with `-x`.

It prints, per module and in total: mutants generated, sampled, killed, survived, timed out,
with no test calling the function, other (mutmut's "suspicious", "segfault"...), and the kill
rate: (killed + timed out) / sampled. Survivors and no-test mutants are written to the
report with file:line and the mutated line, before (`-`) and after (`+`).

Nothing here touches the network. Needs `pip install '.[bench]'` (mutmut).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Module:
    """One module under mutation: the files mutmut mutates and the tests that must kill them."""

    files: tuple[str, ...]
    tests: tuple[str, ...]


MODULES: dict[str, Module] = {
    "checker": Module(
        ("engine/language/checker.py",),
        ("tests/test_checker.py", "tests/test_golden.py"),
    ),
    "limits": Module(
        ("engine/limits/limiter.py", "engine/limits/records.py"),
        ("tests/test_limits.py", "tests/test_limits_fast_path.py", "tests/test_store_contracts.py"),
    ),
    "strategies": Module(
        ("engine/strategies/*.py",),
        ("tests/test_strategies.py",),
    ),
    "evaluator": Module(
        ("engine/routing/evaluator.py",),
        (
            "tests/test_evaluator.py",
            "tests/test_evaluator_equivalence.py",
            "tests/test_routing_settings.py",
        ),
    ),
    "request": Module(
        ("engine/routing/request.py",),
        ("tests/test_request.py", "tests/test_request_fastpath.py"),
    ),
}

# What the copy needs for the tests above to run (tests read policies, catalogs, goldens).
COPIED = ("engine", "grammar", "policies", "examples", "tests", "pyproject.toml", "README.md")
ALSO_COPY = ("grammar", "policies", "examples", "README.md")

# mutmut refuses a filter that matches nothing only after it has generated the mutants and
# collected its stats (both kept in mutants/): that is the generation step.
GENERATE_ONLY = "policyctl-bench-generate-only"

HUNK = re.compile(r"^@@ -(\d+)")

STATUSES = ("killed", "survived", "timeout", "no tests", "other")

NAME = re.compile(
    r"^(?P<module>[\w.]+)\.x(?:ǁ(?P<cls>\w+)ǁ(?P<method>\w+?)|_(?P<func>\w+?))__mutmut_\d+$"
)


@dataclass
class Outcome:
    """The results of one module's run."""

    name: str
    generated: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    survivors: list[tuple[str, str, str]] = field(default_factory=list)  # (where, status, diff)
    seconds: float = 0.0

    @property
    def sampled(self) -> int:
        return sum(self.counts.values())

    @property
    def kill_rate(self) -> float:
        caught = self.counts["killed"] + self.counts["timeout"]
        return caught / self.sampled if self.sampled else 0.0


def mutmut_command() -> list[str]:
    return [sys.executable, "-m", "mutmut"]


def status_of(exit_code: int | None) -> str:
    from mutmut.stats import status_by_exit_code

    status = status_by_exit_code[exit_code]
    if status in ("killed", "survived", "timeout", "no tests"):
        return status
    return "other"


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", "mutants", "*.duckdb")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)


def toml_list(items: tuple[str, ...] | list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def write_config(dest: Path, module: Module) -> None:
    config = (
        "\n[tool.mutmut]\n"
        'source_paths = ["engine"]\n'
        f"only_mutate = {toml_list(module.files)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(module.tests)}\n"
        # `-n 0`: in one process (the suite's addopts spread it over every core, and mutmut
        # sees only the tests of its own process)
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-x", "-n", "0"]\n'
        f"also_copy = {toml_list(ALSO_COPY)}\n"
    )
    with (dest / "pyproject.toml").open("a") as f:
        f.write(config)


def run_mutmut(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> int:
    with log.open("a") as out:
        out.write(f"\n$ mutmut {' '.join(args[:6])}{' ...' if len(args) > 6 else ''}\n")
        out.flush()
        done = subprocess.run(
            [*mutmut_command(), *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return done.returncode


def meta_files(work: Path, module: Module) -> list[Path]:
    found: list[Path] = []
    for pattern in module.files:
        found.extend(sorted((work / "mutants").glob(pattern + ".meta")))
    return found


def exit_codes(work: Path, module: Module) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for meta in meta_files(work, module):
        codes.update(json.loads(meta.read_text())["exit_code_by_key"])
    return codes


def source_line(mutant: str, diff: str) -> tuple[str, int]:
    """The original file and line of the first line the mutant changes."""
    match = NAME.match(mutant)
    if match is None:
        return mutant, 0
    path = match["module"].replace(".", "/") + ".py"
    text = (ROOT / path).read_text()
    lines = text.splitlines()
    func = match["func"] or match["method"]
    start, end = 1, len(lines)
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef) and match["cls"] and node.name == match["cls"]:
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == func:
                    start = min([item.lineno, *(d.lineno for d in item.decorator_list)])
                    end = item.end_lineno or item.lineno
        elif (
            not match["cls"]
            and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == func
            and node.col_offset == 0
        ):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            end = node.end_lineno or node.lineno
    # the diff is of the function's text alone: its first changed line, counted from the
    # function's first line, says which of several identical lines was mutated
    first: tuple[str, int] | None = None
    old_line = 0
    for ln in diff.splitlines():
        hunk = HUNK.match(ln)
        if hunk:
            old_line = int(hunk[1])
        elif ln[:3] in ("---", "+++"):
            continue
        elif ln[:1] == "-":
            first = (ln[1:].strip(), old_line)
            break
        elif ln[:1] == " ":
            old_line += 1
    if first is None:
        return path, start
    expected = start + first[1] - 1
    same = [n for n in range(start, end + 1) if lines[n - 1].strip() == first[0]]
    return path, min(same, key=lambda n: abs(n - expected)) if same else expected


def changed_lines(diff: str) -> str:
    keep = [
        ln
        for ln in diff.splitlines()
        if ln[:1] in "-+" and not ln.startswith("---") and not ln.startswith("+++")
    ]
    return "\n".join(keep)


def run_module(name: str, args: argparse.Namespace, log: Path) -> Outcome:
    module = MODULES[name]
    outcome = Outcome(name)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"mutation-{name}-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        write_config(work, module)
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
        # a test that starts `python -m engine` must import the mutated copy, not the install
        env["PYTHONPATH"] = str(work / "mutants")
        env.pop("MUTANT_UNDER_TEST", None)
        jobs = ["--max-children", str(args.jobs)]
        run_mutmut(["run", *jobs, GENERATE_ONLY], work, env, log)
        codes = exit_codes(work, module)
        if not codes:
            raise SystemExit(f"{name}: mutmut generated no mutant; see {log}")
        outcome.generated = len(codes)
        names = sorted(codes)
        if args.max_per_module and args.max_per_module < len(names):
            names = sorted(random.Random(args.seed).sample(names, args.max_per_module))
        if run_mutmut(["run", *jobs, *names], work, env, log) != 0:
            raise SystemExit(f"{name}: mutmut failed; see {log}")
        codes = exit_codes(work, module)
        for mutant in names:
            status = status_of(codes.get(mutant))
            outcome.counts[status] += 1
            if status in ("survived", "no tests", "other"):
                shown = subprocess.run(
                    [*mutmut_command(), "show", mutant],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                path, line = source_line(mutant, shown.stdout)
                outcome.survivors.append((f"{path}:{line}", status, changed_lines(shown.stdout)))
        if args.keep:
            kept = Path(tempfile.mkdtemp(prefix=f"mutation-{name}-kept-"))
            shutil.copytree(work, kept, dirs_exist_ok=True, symlinks=True)
            print(f"{name}: mutants kept in {kept} (cd there; mutmut show NAME)", flush=True)
    outcome.seconds = time.monotonic() - started
    return outcome


def table(outcomes: list[Outcome]) -> str:
    head = ("module", "generated", "sampled", "killed", "survived", "timeout", "no tests")
    head += ("other", "kill rate", "time")
    rows = [head]
    total = Outcome("total")
    for o in outcomes:
        total.generated += o.generated
        total.seconds += o.seconds
        for status in STATUSES:
            total.counts[status] += o.counts[status]
    for o in [*outcomes, total]:
        c = o.counts
        rows.append(
            (
                o.name,
                str(o.generated),
                str(o.sampled),
                str(c["killed"]),
                str(c["survived"]),
                str(c["timeout"]),
                str(c["no tests"]),
                str(c["other"]),
                f"{o.kill_rate:.1%}",
                f"{o.seconds:.0f} s",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    lines.insert(1, "-|-".join("-" * w for w in widths))
    return "\n".join(lines)


def report(outcomes: list[Outcome], args: argparse.Namespace, command: str) -> str:
    parts = [
        "# Mutation testing",
        "",
        f"Command: `{command}`",
        "",
        f"Seed {args.seed}, at most {args.max_per_module or 'all'} mutants per module.",
        "",
        "```",
        table(outcomes),
        "```",
        "",
    ]
    for o in outcomes:
        parts.append(f"## {o.name}: {len(o.survivors)} not killed")
        parts.append("")
        for where, status, diff in o.survivors:
            parts.append(f"- `{where}` ({status})")
            parts.append("")
            parts.append("  ```diff")
            parts.extend("  " + ln for ln in diff.splitlines())
            parts.append("  ```")
        parts.append("")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modules", default=",".join(MODULES), help="comma-separated")
    parser.add_argument("--max-per-module", type=int, default=0, help="sample size, 0 for all")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--jobs", type=int, default=2, help="mutmut's --max-children")
    parser.add_argument("--report", type=Path, default=Path("mutation-report.md"))
    parser.add_argument("--keep", action="store_true", help="keep each module's mutants/ copy")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.modules.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown[0]!r}; choose from {', '.join(MODULES)}")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        print("mutmut not installed: pip install '.[bench]'", file=sys.stderr)
        return 2
    log = args.report.with_suffix(".log")
    log.write_text("")
    command = "python bench/mutation.py " + " ".join(argv if argv is not None else sys.argv[1:])
    outcomes = []
    for name in names:
        print(f"{name}: running ({', '.join(MODULES[name].tests)})", flush=True)
        outcomes.append(run_module(name, args, log))
        args.report.write_text(report(outcomes, args, command.strip()))  # so far
    print(table(outcomes))
    print(f"survivors: {args.report}  (mutmut's output: {log})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
