"""Reading a policy test file (`NAME.tests.yaml`): YAML with positions -> pydantic -> the
typed records the runner reads (`TestFile`, `Case`, `Step`, `Expect`).

Every problem is a `Diagnostic` with its place in the test file (`file:line:col`), all of
them reported, not just the first: the YAML (E0900), a field (E0901), a request (E0902).
Whether the names an expectation uses exist in the policy (E0903) is `names_problems`,
once the policy is loaded. docs/testing.md describes the format field by field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from engine.diagnostics import Diagnostic, Source, Span, did_you_mean, not_utf8, render_all
from engine.errors import PolicyctlError
from engine.language.parser import MAX_SOURCE_BYTES, describe_size
from engine.language.program import Program
from engine.routing.request import RequestError, env_of
from engine.units import parse_timestamp_s, parse_window_ms
from engine.wire import FORMATS
from engine.yaml_positions import Positions, YamlSyntaxError, load_positioned

TEST_SUFFIX = ".tests.yaml"
NO_ELIGIBLE_MODEL = "no-eligible-model"  # `denied_by`: no model of the route could serve it
DENY_RULE = "deny-rule"  # `denied_by`: a `deny "reason" when …` rule matched
POLICY_REQUIRE = "policy-require"  # `denied_by`: a policy-wide `require` left no model
MAX_REPEAT = 1_000_000

# ---------------------------------------------------------------- the schema


def _money(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected an amount such as `$0.01`")
    if isinstance(value, int | float):
        amount = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\$?(\d+(\.\d*)?|\.\d+)", value.strip()):
        amount = float(value.strip().lstrip("$"))
    else:
        raise ValueError(f"expected an amount such as `$0.01`, got `{value}`")
    if amount < 0:
        raise ValueError("an amount is zero or more")
    return amount


def _at(value: Any) -> float:
    return parse_window_ms(value, "at", allow_zero=True, error=ValueError)


def _start(value: Any) -> float:
    return parse_timestamp_s(value, "start", error=ValueError)


def _one_or_many(value: Any) -> tuple[str, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError("expected a name or a list of names")
    return tuple(items)


def _format(value: Any) -> str:
    if value not in FORMATS:
        guess = did_you_mean(str(value), FORMATS)
        hint = f" (did you mean `{guess}`?)" if guess else ""
        raise ValueError(f"unknown format `{value}`{hint}; the formats are " + ", ".join(FORMATS))
    return str(value)


Money = Annotated[float, BeforeValidator(_money)]
Names = Annotated[tuple[str, ...], BeforeValidator(_one_or_many)]
Format = Annotated[str, BeforeValidator(_format)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _DeniedBy(_Strict):
    scope: str | None = None
    key: str | None = None
    unit: str | None = None


def _denied_by(value: Any) -> Any:
    return {"scope": value} if isinstance(value, str) else value


class _Expect(_Strict):
    route: Names | None = None
    arm: Names | None = None  # the arm route an experiment (`split`) sent the request to
    provider: Names | None = None
    model: Names | None = None
    strategy: str | None = None
    allowed: bool | None = None
    denied_by: Annotated[_DeniedBy, BeforeValidator(_denied_by)] | None = None
    cost_at_most: Money | None = None
    cost_at_least: Money | None = None


class _Step(_Strict):
    at: Annotated[float, BeforeValidator(_at)] = 0.0
    repeat: int = Field(default=1, ge=1, le=MAX_REPEAT)
    request: dict[str, Any] | None = None
    format: Format | None = None
    expect: _Expect | None = None


class _Test(_Strict):
    name: str = Field(min_length=1)
    start: Annotated[float, BeforeValidator(_start)] | None = None
    request: dict[str, Any] | None = None
    format: Format | None = None
    expect: _Expect | None = None
    steps: list[_Step] | None = Field(default=None, min_length=1)


class _File(_Strict):
    policy: str | None = Field(default=None, min_length=1)
    start: Annotated[float, BeforeValidator(_start)] | None = None
    tests: list[Any] = Field(min_length=1)  # each validated alone: every test's problems


# ---------------------------------------------------------------- the records


@dataclass(frozen=True, slots=True)
class DeniedBy:
    """Which denial a test expects: a limit's scope (and key and unit, when given), or
    `no-eligible-model`."""

    scope: str | None
    key: str | None
    unit: str | None

    def text(self) -> str:
        parts = [p for p in (self.scope, self.key, self.unit) if p is not None]
        return " ".join(parts) if parts else "any"


@dataclass(frozen=True, slots=True)
class Expect:
    """What one request's decision must show; None: not checked. `places`: each field's
    key in the test file, for the failure report."""

    route: tuple[str, ...] | None = None
    provider: tuple[str, ...] | None = None
    model: tuple[str, ...] | None = None
    strategy: str | None = None
    allowed: bool | None = None
    denied_by: DeniedBy | None = None
    arm: tuple[str, ...] | None = None
    cost_at_most: float | None = None
    cost_at_least: float | None = None
    places: Mapping[str, Span] | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """`repeat` requests at `at_ms` after the test's start, each checked against `expect`."""

    at_ms: float
    repeat: int
    env: Mapping[str, Any]  # the request's evaluation environment
    expect: Expect
    span: Span


@dataclass(frozen=True, slots=True)
class Case:
    """One test: its steps run in order on fresh state, from `start` (None: the run's now)."""

    name: str
    span: Span
    start: float | None
    steps: tuple[Step, ...]


@dataclass(frozen=True, slots=True)
class TestFile:
    source: Source
    path: Path
    policy: Path  # the policy file or directory the tests run against
    policy_span: Span | None  # the `policy:` value, when the file names one
    cases: tuple[Case, ...]


class TestFileError(PolicyctlError, located=True):
    """A test file that cannot be run: every problem, as diagnostics (exit 2)."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__(render_all(diagnostics))


# ---------------------------------------------------------------- reading


def _span(source: Source, positions: Positions, path: str, value: bool = True) -> Span | None:
    """The span of the value (or the key) at `path`, else of the nearest parent."""
    while True:
        place = positions.value(path) if value else positions.key(path)
        if place is not None:
            start = source.offset(place.line, place.col)
            end = source.offset(place.end_line, place.end_col)
            if place.end_line != place.line:  # a block value: the caret on its first line
                end = source.offset(place.line, len(source.line_text(place.line)) + 1)
            return source.span(start, end)
        if not path:
            return None
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else ""
        value = False


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_problem(err: Mapping[str, Any]) -> tuple[str, str, bool]:
    """(path, message, point at the value) for one pydantic error."""
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    # a `Names` or `denied_by` union reports each branch: keep the path to the field
    loc = tuple(p for p in loc if p not in ("str", "_DeniedBy", "tuple[str, ...]"))
    path = _dotted(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        schema = _schema_at(loc[:-1])
        guess = did_you_mean(str(loc[-1]), schema.model_fields) if schema else None
        hint = f"; did you mean `{guess}`?" if guess else ""
        return path, f"unknown field `{loc[-1]}`{hint}", False
    if kind == "missing":
        return _dotted(loc[:-1]), f"missing field `{loc[-1]}`", False
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if loc and loc[-1] == "denied_by":
            return (
                path,
                f"field `{path}`: expected a limit scope or a mapping with `scope`,"
                " `key` and `unit`",
                True,
            )
        return path, f"field `{path}`: expected a mapping", True
    message = str(err["msg"]).removeprefix("Value error, ")
    message = message[:1].lower() + message[1:]
    return path, f"field `{path}`: {message}", True


def _schema_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    cls: type[BaseModel] = _File
    if loc[:1] == ("tests",) and len(loc) > 1:
        cls, loc = _Test, loc[2:]
    for part in loc:
        if isinstance(part, int):
            continue
        info = cls.model_fields.get(part)
        if info is None:
            return None
        nested = _model_in(info.annotation)
        if nested is None:
            return None
        cls = nested
    return cls


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or getattr(annotation, "__metadata__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_in(origin) if origin is not None and origin is not annotation else None


def _expect(spec: _Expect | None, source: Source, positions: Positions, path: str) -> Expect:
    if spec is None:
        return Expect()
    places = {}
    for name in spec.model_fields_set:
        span = _span(source, positions, f"{path}.{name}", value=False)
        if span is not None:
            places[name] = span
    denied = spec.denied_by
    return Expect(
        route=spec.route,
        arm=spec.arm,
        provider=spec.provider,
        model=spec.model,
        strategy=spec.strategy,
        allowed=spec.allowed,
        denied_by=None if denied is None else DeniedBy(denied.scope, denied.key, denied.unit),
        cost_at_most=spec.cost_at_most,
        cost_at_least=spec.cost_at_least,
        places=places,
    )


_FIELD = re.compile(r"field `([^`]*)`")


def _request_env(
    request: dict[str, Any], fmt: str | None, source: Source, positions: Positions, path: str
) -> tuple[Mapping[str, Any] | None, list[Diagnostic]]:
    try:
        return env_of(request, input_format=fmt), []
    except RequestError as err:
        out = []
        for field_text, message in err.problems:
            found = _FIELD.search(field_text)
            where = f"{path}.{found.group(1)}" if found else path
            shown = f"{field_text}: {message}" if field_text else message
            out.append(
                Diagnostic("E0902", f"invalid request: {shown}", _span(source, positions, where))
            )
        return None, out


def parse_test_file(text: str, path: Path, name: str | None = None) -> TestFile:
    """A test file's records; raises TestFileError with every problem found."""
    shown = name if name is not None else str(path)
    source = Source(shown, text)
    try:
        data, positions = load_positioned(text, shown, fast=True)
    except YamlSyntaxError as err:
        span = None
        if err.line is not None and err.col is not None:
            start = source.offset(err.line, err.col)
            span = source.span(start, start + 1)
        message = str(err).split("invalid YAML: ", 1)[-1]
        raise TestFileError(
            [Diagnostic("E0900", f"invalid YAML: {message}", span, file=shown)]
        ) from None
    problems: list[Diagnostic] = []
    for dup, place in positions.duplicates:
        start = source.offset(place.line, place.col)
        end = source.offset(place.end_line, place.end_col)
        problems.append(
            Diagnostic(
                "E0901", f"duplicate key `{dup}` (YAML would keep only the last one)",
                source.span(start, end),
            )
        )  # fmt: skip
    if not isinstance(data, dict):
        raise TestFileError(
            [Diagnostic("E0901", "a test file is a mapping with a `tests:` list", None, file=shown,
                        help="see docs/testing.md for the format")]
        )  # fmt: skip

    def schema_problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> None:
        for e in err.errors(include_url=False):
            where, message, at_value = _schema_problem({**e, "loc": (*prefix, *e["loc"])})
            problems.append(
                Diagnostic("E0901", message, _span(source, positions, where, value=at_value))
            )

    try:
        spec: _File | None = _File.model_validate(data)
    except ValidationError as err:  # the tests are still checked, for all problems at once
        schema_problems(err)
        spec = None
    raw_tests = data.get("tests") if isinstance(data.get("tests"), list) else []
    file_start = spec.start if spec is not None else None
    cases: list[Case] = []
    for i, raw in enumerate(raw_tests):
        here = f"tests[{i}]"
        try:
            test = _Test.model_validate(raw)
        except ValidationError as err:
            schema_problems(err, ("tests", i))
            continue
        case_span = _span(source, positions, f"{here}.name", value=False) or source.span(0, 0)
        if test.steps is not None and test.expect is not None:
            problems.append(
                Diagnostic("E0901", "a test has `expect` or `steps`, not both",
                           _span(source, positions, f"{here}.expect", value=False),
                           "put the expectations in a step")
            )  # fmt: skip
            continue
        if test.steps is None and test.expect is None:
            problems.append(
                Diagnostic("E0901", "a test needs `expect` (or `steps`)", case_span,
                           "e.g. `expect: {route: vision}`")
            )  # fmt: skip
            continue
        raw_steps = test.steps or [_Step(request=None, expect=test.expect)]
        steps: list[Step] = []
        last_at = 0.0
        request, fmt, rpath = test.request, test.format, f"{here}.request"
        env: Mapping[str, Any] | None = None
        for j, step in enumerate(raw_steps):
            spath = f"{here}.steps[{j}]" if test.steps else here
            if step.request is not None:  # else the step above's request (or the test's)
                request, rpath, env = step.request, f"{spath}.request", None
            if step.format is not None and step.format != fmt:
                fmt, env = step.format, None
            if request is None:
                problems.append(
                    Diagnostic("E0901", "missing field `request` (in the step or the test)",
                               _span(source, positions, spath, value=False))
                )  # fmt: skip
                continue
            if step.at < last_at:
                problems.append(
                    Diagnostic("E0901", "steps go forward in time: `at` is before the step above",
                               _span(source, positions, f"{spath}.at"))
                )  # fmt: skip
            last_at = step.at
            if env is None:
                env, bad = _request_env(request, fmt, source, positions, rpath)
                problems.extend(bad)
                if env is None:
                    continue
            step_span = _span(source, positions, spath, value=False) or case_span
            epath = f"{spath}.expect"
            steps.append(
                Step(step.at, step.repeat, env, _expect(step.expect, source, positions, epath),
                     step_span)
            )  # fmt: skip
        start = test.start if test.start is not None else file_start
        cases.append(Case(test.name, case_span, start, tuple(steps)))
    if problems or spec is None:
        raise TestFileError(problems)
    if spec.policy is not None:
        policy = path.parent / spec.policy
        policy_span = _span(source, positions, "policy")
    else:
        sibling = path.parent / (path.name.removesuffix(TEST_SUFFIX) + ".policy")
        policy = sibling if sibling.is_file() else path.parent
        policy_span = None
    return TestFile(source, path, policy, policy_span, tuple(cases))


def read_test_file(path: Path, name: str | None = None) -> TestFile:
    shown = name if name is not None else str(path)
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            message = f"test file is too large ({describe_size(size)}; the limit is 1 MiB)"
            raise TestFileError([Diagnostic("E0900", message, None, file=shown)])
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TestFileError([not_utf8(shown, err, "E0900")]) from None
    except OSError as err:
        raise TestFileError(
            [Diagnostic("E0900", f"cannot read: {err.strerror}", None, file=shown)]
        ) from None
    return parse_test_file(text, path, shown)


# ---------------------------------------------------------------- names against the policy


def names_problems(tests: TestFile, program: Program) -> list[Diagnostic]:
    """Expectations naming a route, provider, model or limit scope the policy does not
    have (E0903): such a test could never pass."""
    routes = [r.name for r in program.routes] + ["default"]
    arms = sorted({r.name for r in program.routes if r.arm_of})
    catalog = program.catalog
    providers = sorted({m.provider for m in catalog.models})
    keys = [m.key for m in catalog.models]
    scopes = sorted(
        {lim.scope for lim in program.limits} | {"store", NO_ELIGIBLE_MODEL}
        | ({DENY_RULE} if program.denies else set())
        | ({POLICY_REQUIRE} if program.requires else set())
    )  # fmt: skip
    out: list[Diagnostic] = []

    def bad(expect: Expect, field: str, word: str, known: list[str], what: str) -> None:
        guess = did_you_mean(word, known)
        hint = f"did you mean `{guess}`?" if guess else None
        span = (expect.places or {}).get(field)
        out.append(Diagnostic("E0903", f"`{word}` is not a {what}", span, hint))

    for case in tests.cases:
        for step in case.steps:
            e = step.expect
            for name in e.route or ():
                if name not in routes:
                    bad(e, "route", name, routes, "route of the policy")
            for name in e.arm or ():
                if name not in arms:
                    bad(e, "arm", name, arms, "arm route of an experiment of the policy")
            for name in e.provider or ():
                if name not in providers:
                    bad(e, "provider", name, providers, "provider of the catalog")
            for name in e.model or ():
                provider, _, model = name.partition("/")
                if not model or catalog.find(provider, model) is None:
                    bad(e, "model", name, keys, "model of the catalog (`provider/model`)")
            scope = e.denied_by.scope if e.denied_by is not None else None
            if scope is not None and scope not in scopes:
                bad(e, "denied_by", scope, scopes, "limit scope of the policy")
    return out
