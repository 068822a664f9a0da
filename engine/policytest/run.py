"""Running policy tests: find the test files, load each policy once, run every test on
fresh in-memory state with its own clock, compare each decision with the expectations.

A test never touches a state file or an analytics log: its rate limits live in a new
memory store, its round-robin turns in a new `EvalState`, and no outcome is recorded (the
catalog's priors stand). Its clock starts at the test's `start` (else the run's `now`) and
moves to each step's `at`; the limiter reads that clock, so refills are exact.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.diagnostics import Diagnostic, PolicyError, render_all
from engine.errors import PolicyctlError
from engine.language.loader import load_policy, policy_files, read_policy_file
from engine.language.parser import parse
from engine.language.program import Program
from engine.limits.limiter import Limiter
from engine.limits.records import LimitDenial
from engine.limits.stores import open_store
from engine.policytest.coverage import Coverage, FileCoverage
from engine.policytest.spec import (
    DENY_RULE,
    NO_ELIGIBLE_MODEL,
    POLICY_REQUIRE,
    TEST_SUFFIX,
    Case,
    Expect,
    TestFile,
    TestFileError,
    names_problems,
    read_test_file,
)
from engine.routing.decision import (
    Decision,
    DeniedByPolicyRequire,
    DeniedByRule,
    NoEligibleModel,
)
from engine.routing.evaluator import EvalState, evaluate
from engine.units import format_exact_money, format_money


class TestInputError(PolicyctlError, located=True):
    """Test files or policies that cannot be run: every diagnostic (exit 2)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__(render_all(diagnostics))


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One expectation a decision did not meet."""

    field: str
    expected: str
    actual: str
    place: str | None  # file:line:col of the expectation


@dataclass(frozen=True, slots=True)
class Failure:
    step: int  # 1-based
    steps: int
    repetition: int  # 1-based
    repeat: int
    at_ms: float
    mismatches: tuple[Mismatch, ...]
    decision: Decision


@dataclass(frozen=True, slots=True)
class Result:
    file: str
    case: Case
    failure: Failure | None

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass(frozen=True, slots=True)
class Outcome:
    results: tuple[Result, ...]
    coverage: tuple[FileCoverage, ...] | None

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return len(self.results) - self.passed


class _Clock:
    """The test's clock: epoch seconds, moved by the runner from step to step."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- finding the files


def find_test_files(paths: Iterable[Path]) -> list[Path]:
    """Test files: a `*.tests.yaml` file as given; a `.policy` file's sibling
    `NAME.tests.yaml`; a directory's `*.tests.yaml` files, at any depth (hidden
    directories skipped), in name order. Raises TestInputError when a path gives none."""
    found: list[Path] = []
    problems: list[Diagnostic] = []
    for path in paths:
        if path.is_dir():
            files = sorted(
                p
                for p in path.rglob(f"*{TEST_SUFFIX}")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts[:-1])
            )
            if not files:
                problems.append(
                    Diagnostic("E0905", f"no `*{TEST_SUFFIX}` files in this directory", None,
                               file=str(path), help="see docs/testing.md for the format")
                )  # fmt: skip
            found.extend(files)
        elif path.suffix == ".policy":
            sibling = path.with_name(path.name.removesuffix(".policy") + TEST_SUFFIX)
            if sibling.is_file():
                found.append(sibling)
            else:
                problems.append(
                    Diagnostic("E0905", f"no test file `{sibling.name}` beside this policy",
                               None, file=str(path))
                )  # fmt: skip
        elif path.exists():
            found.append(path)
        else:
            problems.append(Diagnostic("E0905", "no such file or directory", None, file=str(path)))
    if problems:
        raise TestInputError(problems)
    unique: list[Path] = []
    seen: set[Path] = set()
    for path in found:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


# ---------------------------------------------------------------- expectations


def _money(value: float | None) -> str:
    return "none" if value is None else format_money(value)


def _denial(decision: Decision) -> str:
    denied = decision.denied_by
    if denied is None:
        return "not denied"
    if isinstance(denied, NoEligibleModel):
        return NO_ELIGIBLE_MODEL
    if isinstance(denied, DeniedByRule):
        return DENY_RULE
    if isinstance(denied, DeniedByPolicyRequire):
        return POLICY_REQUIRE
    if isinstance(denied, LimitDenial):
        return " ".join(p for p in (denied.scope, denied.key, denied.unit) if p is not None)
    return "denied"


def _one_of(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else "one of " + ", ".join(names)


def check_expect(expect: Expect, decision: Decision, program: Program) -> list[Mismatch]:
    """The expectations of `expect` that `decision` does not meet."""
    out: list[Mismatch] = []
    places = expect.places or {}

    def miss(field: str, expected: str, actual: str) -> None:
        span = places.get(field)
        out.append(Mismatch(field, expected, actual, None if span is None else span.location()))

    chosen = (
        f"{decision.provider}/{decision.model}"
        if decision.provider is not None and decision.model is not None
        else None
    )
    if expect.allowed is not None and decision.allowed != expect.allowed:
        miss("allowed", str(expect.allowed).lower(), str(decision.allowed).lower())
    if expect.route is not None and decision.route not in expect.route:
        miss("route", _one_of(expect.route), str(decision.route))
    if expect.arm is not None and decision.arm not in expect.arm:
        miss("arm", _one_of(expect.arm), decision.arm or "none (not in an experiment)")
    if expect.provider is not None and decision.provider not in expect.provider:
        miss("provider", _one_of(expect.provider), decision.provider or "none (denied)")
    if expect.model is not None:
        catalog = program.catalog
        keys = set()
        for name in expect.model:
            provider, _, model = name.partition("/")
            keys.update(m.key for m in catalog.resolve(provider, model))
        if chosen not in keys:
            miss("model", _one_of(expect.model), chosen or "none (denied)")
    if expect.strategy is not None and decision.strategy != expect.strategy:
        miss("strategy", expect.strategy, decision.strategy)
    wanted = expect.denied_by
    if wanted is not None:
        denied = decision.denied_by
        if wanted.scope == NO_ELIGIBLE_MODEL:
            ok = isinstance(denied, NoEligibleModel)
        elif wanted.scope == DENY_RULE:
            ok = isinstance(denied, DeniedByRule)
        elif wanted.scope == POLICY_REQUIRE:
            ok = isinstance(denied, DeniedByPolicyRequire)
        else:
            ok = (
                isinstance(denied, LimitDenial)
                and (wanted.scope is None or denied.scope == wanted.scope)
                and (wanted.key is None or denied.key == wanted.key)
                and (wanted.unit is None or denied.unit == wanted.unit)
            )
        if not ok:
            miss("denied_by", wanted.text(), _denial(decision))
    cost = decision.estimated_cost
    if expect.cost_at_most is not None and (cost is None or cost > expect.cost_at_most):
        miss("cost_at_most", f"<= {format_exact_money(expect.cost_at_most)}", _money(cost))
    if expect.cost_at_least is not None and (cost is None or cost < expect.cost_at_least):
        miss("cost_at_least", f">= {format_exact_money(expect.cost_at_least)}", _money(cost))
    return out


# ---------------------------------------------------------------- running


def run_case(
    program: Program, case: Case, now: float, coverage: Coverage | None = None
) -> Failure | None:
    """One test on fresh state; its first failing request, or None when all pass."""
    # whole milliseconds from the epoch: `at` offsets then add up exactly (a refill due
    # after 600 ms is there at 600 ms, not 600 ms and a rounding error later)
    start_ms = round((case.start if case.start is not None else now) * 1000.0)
    clock = _Clock(start_ms / 1000.0)
    store = open_store("memory://")
    limiter = Limiter(store, clock)
    state = EvalState()
    try:
        steps = len(case.steps)
        for number, step in enumerate(case.steps, 1):
            clock.now = at = (start_ms + step.at_ms) / 1000.0
            env, expect = step.env, step.expect
            for repetition in range(1, step.repeat + 1):
                decision = evaluate(program, env, state=state, limiter=limiter, now=at)
                if coverage is not None:
                    coverage.observe(env, decision, at)
                mismatches = check_expect(expect, decision, program)
                if mismatches:
                    return Failure(
                        number, steps, repetition, step.repeat, step.at_ms, tuple(mismatches),
                        decision,
                    )  # fmt: skip
        return None
    finally:
        store.close()


@dataclass
class _Policy:
    program: Program
    coverage: Coverage | None


def _coverage_of(target: Path, program: Program) -> Coverage:
    """The coverage items of a loaded policy: its files parsed again for their spans."""
    paths = policy_files(target)
    files = []
    for path, name in zip(paths, program.files, strict=True):
        files.append(parse(read_policy_file(path)[1], name))
    return Coverage.of(program, files)


def run_tests(paths: Iterable[Path], now: float, *, coverage: bool = False) -> Outcome:
    """Every test of the test files at `paths`. Raises TestInputError (every problem of
    every file) when a test file or a policy cannot be used."""
    test_files = find_test_files(paths)
    problems: list[Diagnostic] = []
    loaded: list[tuple[TestFile, _Policy]] = []
    policies: dict[Path, _Policy | None] = {}
    for path in test_files:
        try:
            tests = read_test_file(path)
        except TestFileError as err:
            problems.extend(err.diagnostics)
            continue
        key = tests.policy.resolve()
        if key not in policies:
            if not tests.policy.exists():
                problems.append(
                    Diagnostic("E0904", f"policy `{tests.policy}` not found", tests.policy_span,
                               "the path is relative to the test file",
                               file=str(tests.path))
                )  # fmt: skip
                policies[key] = None
                continue
            try:
                program = load_policy(tests.policy, now).program
            except PolicyError as err:
                problems.extend(err.diagnostics)
                policies[key] = None
                continue
            traced = _coverage_of(tests.policy, program) if coverage else None
            policies[key] = _Policy(program, traced)
        policy = policies[key]
        if policy is None:
            continue
        bad_names = names_problems(tests, policy.program)
        if bad_names:
            problems.extend(bad_names)
            continue
        loaded.append((tests, policy))
    if problems:
        raise TestInputError(problems)
    results: list[Result] = []
    for tests, policy in loaded:
        program = policy.coverage.program if policy.coverage is not None else policy.program
        name = tests.source.name
        for case in tests.cases:
            results.append(Result(name, case, run_case(program, case, now, policy.coverage)))
    covered: tuple[FileCoverage, ...] | None = None
    if coverage:
        seen: set[int] = set()
        files: list[FileCoverage] = []
        for _, policy in loaded:
            if policy.coverage is not None and id(policy.coverage) not in seen:
                seen.add(id(policy.coverage))
                files.extend(policy.coverage.files())
        covered = tuple(sorted(files, key=lambda f: f.file))
    return Outcome(tuple(results), covered)
