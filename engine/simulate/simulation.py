"""Replay synthetic traffic against the engine: `policyctl simulate SCENARIO.yaml`.

A scenario (YAML, validated with pydantic) gives a synthetic provider per catalog model
(latency lognormal from a mean and a p95 or a sigma, a failure rate, and optionally a
`drift` or an `outage` starting at a request number), a traffic mix (request templates
with weights), an arrival rate, a seed, and the strategies to compare. For each strategy a
fresh engine runs with `defaults { strategy X … }` plus the scenario's `policy` settings and
`limits`, on a fake clock that the arrivals advance (nothing sleeps). Each allowed request
draws its outcome from the chosen model's provider, and the outcome is fed back with
`engine.record` when the call completes in simulated time (calls overlap, as they do in
production: a failing provider keeps receiving requests until its failures come back).

Two baselines run on the same traffic and providers without the engine: uniform random
over the models that can serve each request, and always Claude 3.5 Sonnet.

Reproducible: the traffic (templates and arrival times) comes from one seeded generator,
and every run draws its outcomes from its own generator seeded the same way, one latency
and one failure draw per request whatever the route — so runs are independent of each
other (a subset of strategies gives the same rows) and compare on common random numbers.

    from engine.simulate.simulation import load_scenario, simulate
    report = simulate(load_scenario("examples/simulations/design.yaml"))
    report.to_dict()["rows"]
"""

from __future__ import annotations

import bisect
import heapq
import json
import math
import os
import random
import re
import typing
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.api.policy_engine import PolicyEngine
from engine.catalog.model import Catalog, Model, load_catalog
from engine.diagnostics import PolicyError, did_you_mean
from engine.resources import default_policy_dir
from engine.routing.request import Request, RequestError, env_of
from engine.strategies import STRATEGIES
from engine.vocabulary import DEFAULT_OUTPUT_TOKENS

Z95 = 1.6448536269514722  # the standard normal's 95th percentile
SONNET = "claude/claude-3-5-sonnet-20241022"
RANDOM_ROW = "random"
SONNET_ROW = "always sonnet"
DEFAULT_STRATEGIES = (
    "latency",
    "cost",
    "weighted(latency: 60%, cost: 40%)",
    "model-specific",
    "round-robin",
    "failover",
)
MAX_REQUESTS = 1_000_000
MAX_SCENARIO_BYTES = 1 << 20
START = 1_750_000_000.0  # the fake clock's epoch: fixed, so runs never depend on today
_STRATEGY_TEXT = re.compile(r"^[A-Za-z][A-Za-z-]*(\s*\([^(){}\n#]*\))?$")
_STRATEGY_LINE = re.compile(r"^\s*strategy\b")
_HEALTH_DROPS = ("in cooldown", "success rate")  # the evaluator's health reasons

try:  # the C loader when PyYAML was built with libyaml
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class ScenarioError(Exception):
    """A scenario that cannot be run; `messages` holds one complete line per problem."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class PlotUnavailable(Exception):
    """`--plot` without matplotlib installed."""


# ---------------------------------------------------------------- the YAML schema

_Rate = Annotated[float, Field(ge=0, le=1)]


class _Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_request: Annotated[int, Field(ge=0)]
    latency_factor: Annotated[float, Field(gt=0)] = 1.0
    failure_rate: _Rate | None = None


class _Outage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_request: Annotated[int, Field(ge=0)]
    to_request: Annotated[int, Field(ge=0)]
    latency_ms: Annotated[float, Field(ge=0)] | None = None  # default: the usual draw

    @model_validator(mode="after")
    def _ordered(self) -> _Outage:
        if self.to_request <= self.from_request:
            raise ValueError(
                f"to_request ({self.to_request}) must be greater than from_request"
                f" ({self.from_request})"
            )
        return self


class _ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean_ms: Annotated[float, Field(gt=0)]
    p95_ms: Annotated[float, Field(gt=0)] | None = None
    sigma: Annotated[float, Field(ge=0, le=5)] | None = None
    failure_rate: _Rate = 0.0
    drift: _Drift | None = None
    outage: _Outage | None = None

    @model_validator(mode="after")
    def _shape(self) -> _ProviderSpec:
        if (self.p95_ms is None) == (self.sigma is None):
            raise ValueError("give the latency spread as `p95_ms` or as `sigma`, not both")
        if self.p95_ms is not None:
            ratio = self.p95_ms / self.mean_ms
            if ratio <= 1:
                raise ValueError(
                    f"p95_ms ({self.p95_ms:g}) must be greater than mean_ms ({self.mean_ms:g})"
                )
            if ratio >= math.exp(Z95 * Z95 / 2):
                raise ValueError(
                    f"p95_ms ({self.p95_ms:g}) is too far above mean_ms ({self.mean_ms:g}) for a"
                    f" lognormal: keep it under {math.exp(Z95 * Z95 / 2):.2f}× the mean"
                )
        return self


class _TrafficSpec(BaseModel):
    """Simulator fields; every other field is a request field, validated as a request."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    output_tokens: Annotated[int, Field(ge=0)] | None = None  # what the model writes


class _ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    seed: int = 0
    requests: Annotated[int, Field(ge=1, le=MAX_REQUESTS)]
    rate_per_s: Annotated[float, Field(gt=0, le=1_000_000)]
    traffic: Annotated[list[Any], Field(min_length=1)]  # each checked as a _TrafficSpec
    providers: dict[str, Any] = {}  # each checked as a _ProviderSpec
    strategies: list[Any] | None = None
    policy: str = ""
    limits: str = ""


# ---------------------------------------------------------------- the validated scenario


@dataclass(frozen=True, slots=True)
class Provider:
    """A synthetic provider: lognormal latency (mu, sigma of the log), failures, events."""

    key: str
    mu: float
    sigma: float
    failure_rate: float
    drift: _Drift | None = None
    outage: _Outage | None = None

    @classmethod
    def from_mean(cls, key: str, spec: _ProviderSpec) -> Provider:
        if spec.sigma is not None:
            sigma = spec.sigma
        else:  # mean = e^(mu + s²/2) and p95 = e^(mu + z·s): the smaller root for s
            assert spec.p95_ms is not None
            sigma = Z95 - math.sqrt(Z95 * Z95 - 2 * math.log(spec.p95_ms / spec.mean_ms))
        mu = math.log(spec.mean_ms) - sigma * sigma / 2
        return cls(key, mu, sigma, spec.failure_rate, spec.drift, spec.outage)

    @classmethod
    def from_prior(cls, model: Model) -> Provider:
        """The catalog's latency prior as the distribution (median p50), no failures."""
        sigma = math.log(model.latency_p95_ms / model.latency_p50_ms) / Z95
        return cls(model.key, math.log(model.latency_p50_ms), sigma, 0.0)

    @property
    def mean_ms(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2)

    def outcome(self, request: int, z: float, u: float) -> tuple[float, bool]:
        """Latency (ms) and success of request number `request`, given its draws."""
        latency = math.exp(self.mu + self.sigma * z)
        failure_rate = self.failure_rate
        drift = self.drift
        if drift is not None and request >= drift.at_request:
            latency *= drift.latency_factor
            if drift.failure_rate is not None:
                failure_rate = drift.failure_rate
        outage = self.outage
        if outage is not None and outage.from_request <= request < outage.to_request:
            return (latency if outage.latency_ms is None else outage.latency_ms), False
        return latency, u >= failure_rate


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity
class Template:
    name: str
    weight: float
    fields: Mapping[str, Any]  # request fields (no id)
    input_tokens: int
    output_tokens: int  # what the model writes (at most max_tokens)
    needs: frozenset[str]
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class _Embedded:
    """Where the scenario's policy text sits in its file, to build policy text whose
    diagnostics point at the scenario's own lines."""

    lines: tuple[str, ...]  # the scenario file's lines
    policy: tuple[int, int] | None  # 0-based [key line, end line) of a `policy: |` block
    limits: tuple[int, int] | None


@dataclass(frozen=True)
class Scenario:
    path: str
    name: str
    seed: int
    requests: int
    rate_per_s: float
    traffic: tuple[Template, ...]
    providers: Mapping[str, Provider]  # every catalog model, by provider/model key
    strategies: tuple[str, ...]
    policy: str
    limits: str
    catalog: Catalog
    catalog_path: Path
    embedded: _Embedded | None = field(default=None, repr=False)

    def policy_text(self, strategy: str) -> tuple[str, str]:
        """(source name, policy text) for one strategy's run."""
        catalog = f"catalog {json.dumps(self.catalog_path.as_posix())}"
        emb = self.embedded
        if (
            emb is not None
            and (emb.policy is not None or not self.policy.strip())
            and (emb.limits is not None or not self.limits.strip())
        ):
            n = len(emb.lines)
            lines = [""] * (n + 3)
            used: set[int] = set()

            def put(i: int, line: str) -> None:
                lines[i] = line
                used.add(i)

            if emb.policy is not None:
                key, end = emb.policy
                put(key, "defaults {")
                for i in range(key + 1, end):
                    put(i, emb.lines[i])
                put(end, f"strategy {strategy} }}")
            if emb.limits is not None:
                key, end = emb.limits
                for i in range(key + 1, end):
                    put(i, emb.lines[i])
            free = (i for i in range(n + 3) if i not in used)
            if emb.policy is None:
                put(next(free), f"defaults {{ strategy {strategy} }}")
            put(next(free), catalog)
            return self.path, "\n".join(lines) + "\n"
        text = f"{catalog}\ndefaults {{\n{self.policy}\nstrategy {strategy}\n}}\n{self.limits}\n"
        return f"{self.path} (policy)", text


def _field(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: Mapping[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg[:1].lower() + msg[1:]


def _fields_at(model: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The field names of the (nested) model that `loc` (without its last part) points into."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return []
        nested = [
            t
            for t in (info.annotation, *typing.get_args(info.annotation))
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def _pydantic_errors(
    source: str, err: ValidationError, model: type[BaseModel], prefix: tuple[Any, ...] = ()
) -> list[str]:
    out: list[str] = []
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        message = _message(e)
        if e["type"] == "extra_forbidden" and loc:
            guess = did_you_mean(str(loc[-1]), _fields_at(model, loc))
            if guess:
                message += f" (did you mean `{guess}`?)"
        elif e["type"] == "missing":
            message = "missing"
        elif e["type"] == "model_type":
            message = "expected a mapping of fields"
        loc = prefix + loc
        out.append(f"{source}: field `{_field(loc)}`: {message}" if loc else f"{source}: {message}")
    return out


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > MAX_SCENARIO_BYTES:
            raise ScenarioError([f"{path}: scenario is too large (the limit is 1 MiB)"])
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ScenarioError([f"{path}: cannot read scenario: not UTF-8 text"]) from None
    except OSError as err:
        raise ScenarioError([f"{path}: cannot read scenario: {err.strerror}"]) from None


def _embedded(text: str) -> _Embedded | None:
    """The line ranges of top-level `policy: |` and `limits: |` blocks, if that is how they
    are written (any other style: None, and the policy text is generated apart)."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:  # pragma: no cover - the data load reported it
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    found: dict[str, tuple[int, int] | None] = {"policy": None, "limits": None}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value in found:
            if not isinstance(value, yaml.ScalarNode) or value.style != "|":
                if isinstance(value, yaml.ScalarNode) and not value.value.strip():
                    continue
                return None
            found[key.value] = (value.start_mark.line, value.end_mark.line)
    return _Embedded(tuple(text.splitlines()), found["policy"], found["limits"])


def _parse_strategies(
    items: Sequence[Any], catalog_path: Path, where: Callable[[int], str]
) -> tuple[list[str], list[str]]:
    """Validated strategy strings, and error lines (`where(i)` names entry i)."""
    out: list[str] = []
    errors: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, dict):
            errors.append(
                f"{where(i)}: a strategy is a string; quote one with factors:"
                ' "weighted(latency: 60%, cost: 40%)"'
            )
            continue
        if not isinstance(item, str) or not _STRATEGY_TEXT.match(item.strip()):
            errors.append(f"{where(i)}: not a strategy: {item!r}")
            continue
        text = item.strip()
        name = text.split("(", 1)[0].strip()
        if name not in STRATEGIES:
            guess = did_you_mean(name, STRATEGIES)
            hint = (
                f"did you mean `{guess}`?"
                if guess
                else "strategies: " + ", ".join(f"`{s}`" for s in STRATEGIES)
            )
            errors.append(f"{where(i)}: unknown strategy `{name}` ({hint})")
            continue
        policy = f"defaults {{ strategy {text} }}\ncatalog {json.dumps(catalog_path.as_posix())}"
        try:
            PolicyEngine.from_text(policy, "<strategy>").close()
        except PolicyError as err:
            first = err.diagnostics[0]
            hint = f" ({first.help})" if first.help else ""
            errors.append(f"{where(i)}: {first.message}{hint}")
            continue
        if text in out:
            errors.append(f"{where(i)}: `{text}` is listed twice")
            continue
        out.append(text)
    return out, errors


def split_strategies(text: str) -> list[str]:
    """`latency,weighted(latency: 60%, cost: 40%)` → two entries (commas in parentheses stay)."""
    items: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [item for item in items if item]


def _unknown_model(key: str, catalog: Catalog) -> str:
    provider, _, name = key.partition("/")
    guess = did_you_mean(key, [m.key for m in catalog.models])
    if guess:
        return f"unknown model (did you mean `{guess}`?)"
    if not name:
        return "unknown model: write `provider/model`, e.g. `gemini/gemini-1.5-flash-latest`"
    models = catalog.by_provider(provider)
    if not models:
        return "unknown provider; providers: " + ", ".join(f"`{p}`" for p in catalog.providers)
    return f"unknown model; {provider} models: " + ", ".join(f"`{m.id}`" for m in models)


def _capable(model: Model, needs: frozenset[str], tokens: int, max_tokens: int | None) -> bool:
    """What a capability filter checks: features, context window and max_tokens."""
    if not needs <= model.supports:
        return False
    if max_tokens is not None and max_tokens > model.max_tokens:
        return False
    return tokens + (max_tokens or 0) <= model.context_window


def _template(source: str, i: int, item: Any) -> tuple[Template | None, list[str]]:
    """A traffic entry: the simulator's fields, and request fields checked as a request."""
    where = f"{source}: field `traffic[{i}]"
    if not isinstance(item, dict):
        return None, [f"{where}`: expected a mapping of fields"]
    own = {k: v for k, v in item.items() if k in _TrafficSpec.model_fields}
    fields = {str(k): v for k, v in item.items() if k not in _TrafficSpec.model_fields}
    errors: list[str] = []
    try:
        spec = _TrafficSpec.model_validate(own)
    except ValidationError as err:
        errors += _pydantic_errors(source, err, _TrafficSpec, ("traffic", i))
    if "id" in fields:
        errors.append(f"{where}.id`: ids are given per simulated request; remove it")
        return None, errors
    try:
        env = env_of({**fields, "id": "template"})
    except RequestError as err:
        for name, message in err.problems:
            found = re.fullmatch(r"field `(.+)`", name)
            if found:
                errors.append(f"{where}.{found.group(1)}`: {message}")
            else:
                unknown = re.fullmatch(r"unknown field `([^`]+)`(.*)", message)
                if unknown:  # the closest of the request's fields and the simulator's own
                    alt = did_you_mean(
                        unknown.group(1), [*Request.model_fields, *_TrafficSpec.model_fields]
                    )
                    guess = f" (did you mean `{alt}`?)" if alt else ""
                    errors.append(f"{where}.{unknown.group(1)}`: unknown field{guess}")
                else:
                    errors.append(f"{where}`: {message}")
        return None, errors
    if errors:
        return None, errors
    needs = {
        name
        for name, flag in (
            ("vision", "requires_vision"),
            ("tools", "requires_tools"),
            ("json", "requires_json"),
            ("streaming", "stream"),
        )
        if env[flag]
    }
    max_tokens = None if env["max_tokens"] is None else int(env["max_tokens"])
    output = spec.output_tokens
    if output is None:
        output = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    if max_tokens is not None:
        output = min(output, max_tokens)
    return (
        Template(
            name=spec.name or f"traffic[{i}]",
            weight=spec.weight,
            fields=fields,
            input_tokens=int(env["input_tokens"]),
            output_tokens=output,
            needs=frozenset(needs),
            max_tokens=max_tokens,
        ),
        [],
    )


def load_scenario(
    path: str | os.PathLike[str],
    *,
    strategies: Sequence[str] | None = None,
    seed: int | None = None,
    requests: int | None = None,
) -> Scenario:
    """Read and validate a scenario file; keyword arguments override its fields.

    Raises ScenarioError (every problem, each naming the file and the field), or PolicyError
    when the scenario's `policy`/`limits` text does not check.
    """
    p = Path(path)
    source = str(path)
    text = _read(p)
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        if mark is not None:
            raise ScenarioError(
                [f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"]
            ) from None
        raise ScenarioError([f"{source}: invalid YAML: {problem}"]) from None
    if not isinstance(raw, dict):
        raise ScenarioError([f"{source}: not a scenario: expected a mapping of fields"])
    raw = {str(k): v for k, v in raw.items()}
    if seed is not None:
        raw["seed"] = seed
    if requests is not None:
        raw["requests"] = requests
    errors: list[str] = []
    spec: _ScenarioSpec | None = None
    try:
        spec = _ScenarioSpec.model_validate(raw)
    except ValidationError as err:
        errors += _pydantic_errors(source, err, _ScenarioSpec)

    catalog_path = default_policy_dir() / "models.yaml"
    catalog = load_catalog(catalog_path)
    # each section is checked on its own, so one pass reports every problem
    templates: list[Template] = []
    raw_traffic = raw.get("traffic")
    for i, item in enumerate(raw_traffic if isinstance(raw_traffic, list) else ()):
        template, problems = _template(source, i, item)
        errors += problems
        if template is not None:
            templates.append(template)

    providers: dict[str, Provider] = {}
    raw_providers = raw.get("providers")
    for key, item in (raw_providers if isinstance(raw_providers, dict) else {}).items():
        key = str(key)
        provider_name, _, model_name = key.partition("/")
        model = catalog.find(provider_name, model_name) if model_name else None
        if model is None:
            errors.append(f"{source}: field `providers.{key}`: {_unknown_model(key, catalog)}")
            continue
        if model.key in providers:
            errors.append(f"{source}: field `providers.{key}`: `{model.key}` is given twice")
            continue
        try:
            pspec = _ProviderSpec.model_validate(item)
        except ValidationError as err:
            errors += _pydantic_errors(source, err, _ProviderSpec, ("providers", key))
            continue
        providers[model.key] = Provider.from_mean(model.key, pspec)
    for model in catalog.models:
        providers.setdefault(model.key, Provider.from_prior(model))
    providers = {m.key: providers[m.key] for m in catalog.models}  # catalog order

    raw_strategies = raw.get("strategies")
    if strategies is not None:
        chosen, problems = _parse_strategies(strategies, catalog_path, lambda i: "--strategies")
    elif isinstance(raw_strategies, list) or raw_strategies is None:
        chosen, problems = _parse_strategies(
            raw_strategies if raw_strategies is not None else DEFAULT_STRATEGIES,
            catalog_path,
            lambda i: f"{source}: field `strategies[{i}]`",
        )
        if not chosen and not problems:
            problems = [f"{source}: field `strategies`: list at least one strategy"]
    else:
        chosen, problems = [], []  # the top-level check reported it
    errors += problems
    raw_policy = raw.get("policy")
    for number, line in enumerate(str(raw_policy or "").splitlines(), start=1):
        if _STRATEGY_LINE.match(line):
            errors.append(
                f"{source}: field `policy` (line {number}): `strategy` is set per run from"
                " `strategies`; remove it here"
            )
    if errors or spec is None:
        raise ScenarioError(errors)

    scenario = Scenario(
        path=source,
        name=spec.name or p.stem,
        seed=spec.seed,
        requests=spec.requests,
        rate_per_s=spec.rate_per_s,
        traffic=tuple(templates),
        providers=providers,
        strategies=tuple(chosen),
        policy=spec.policy,
        limits=spec.limits,
        catalog=catalog,
        catalog_path=catalog_path,
        embedded=_embedded(text),
    )
    name, policy = scenario.policy_text(chosen[0])
    PolicyEngine.from_text(policy, name).close()  # a policy that does not check fails here
    return scenario


# ---------------------------------------------------------------- running


class _Clock:
    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class _Arrival:
    index: int
    at: float  # epoch seconds on the fake clock
    template: Template


def _traffic(scenario: Scenario) -> list[_Arrival]:
    """The same arrivals for every run: templates by weight, Poisson arrival times."""
    rng = random.Random(f"{scenario.seed}:traffic")
    cumulative: list[float] = []
    total = 0.0
    for t in scenario.traffic:
        total += t.weight
        cumulative.append(total)
    out = []
    now = START
    last = len(cumulative) - 1
    for i in range(scenario.requests):
        now += rng.expovariate(scenario.rate_per_s)
        pick = min(bisect.bisect_right(cumulative, rng.random() * total), last)
        out.append(_Arrival(i, now, scenario.traffic[pick]))
    return out


@dataclass
class Run:
    """One row's per-request record (index -1: denied)."""

    name: str
    kind: str  # "baseline" | "strategy"
    keys: tuple[str, ...]  # model index -> provider/model
    chosen: array[int]
    latency_ms: array[float]  # nan when denied
    cost: array[float]
    ok: bytearray
    health_drops: dict[str, list[int]] = field(default_factory=dict)  # key -> request numbers

    def summary(self) -> dict[str, Any]:
        served = [lat for lat in self.latency_ms if lat == lat]
        n = len(served)
        denials = len(self.chosen) - n
        failures = sum(1 for c, ok in zip(self.chosen, self.ok, strict=True) if c >= 0 and not ok)
        total_cost = math.fsum(self.cost)
        picks = Counter(self.keys[c] for c in self.chosen if c >= 0)
        ordered = sorted(served)
        top = picks.most_common(1)
        return {
            "name": self.name,
            "kind": self.kind,
            "served": n,
            "mean_ms": round(math.fsum(served) / n, 3) if n else None,
            "p95_ms": round(ordered[max(1, math.ceil(0.95 * n)) - 1], 3) if n else None,
            "cost_per_request": round(total_cost / n, 12) if n else None,
            "total_cost": round(total_cost, 10),
            "failures": failures,
            "denials": denials,
            "top_model": top[0][0] if top else None,
            "top_share": round(top[0][1] / n, 4) if top else None,
            "models": dict(sorted(picks.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _new_run(name: str, kind: str, scenario: Scenario) -> Run:
    n = scenario.requests
    return Run(
        name=name,
        kind=kind,
        keys=tuple(scenario.providers),
        chosen=array("i", [-1]) * n,
        latency_ms=array("d", [math.nan]) * n,
        cost=array("d", [0.0]) * n,
        ok=bytearray(n),
    )


def _outcome_rng(scenario: Scenario) -> random.Random:
    return random.Random(f"{scenario.seed}:outcomes")


def _run_baseline(
    scenario: Scenario, arrivals: list[_Arrival], name: str, pick: Callable[[_Arrival], int]
) -> Run:
    run = _new_run(name, "baseline", scenario)
    rng = _outcome_rng(scenario)
    providers = list(scenario.providers.values())
    models = scenario.catalog.models
    for a in arrivals:
        z, u = rng.gauss(0.0, 1.0), rng.random()
        index = pick(a)
        if index < 0:
            continue
        latency, ok = providers[index].outcome(a.index, z, u)
        t = a.template
        run.chosen[a.index] = index
        run.latency_ms[a.index] = latency
        run.ok[a.index] = ok
        run.cost[a.index] = models[index].cost(t.input_tokens, t.output_tokens) if ok else 0.0
    return run


def _capable_sets(scenario: Scenario) -> dict[Template, list[int]]:
    return {
        t: [
            i
            for i, m in enumerate(scenario.catalog.models)
            if _capable(m, t.needs, t.input_tokens, t.max_tokens)
        ]
        for t in scenario.traffic
    }


def run_random(scenario: Scenario, arrivals: list[_Arrival]) -> Run:
    """Uniform random over the models that can serve each request."""
    capable = _capable_sets(scenario)
    rng = random.Random(f"{scenario.seed}:random")

    def pick(a: _Arrival) -> int:
        options = capable[a.template]
        return options[int(rng.random() * len(options))] if options else -1

    return _run_baseline(scenario, arrivals, RANDOM_ROW, pick)


def run_always(scenario: Scenario, arrivals: list[_Arrival], key: str = SONNET) -> Run:
    """Always one model (a denial when it cannot serve the request)."""
    index = list(scenario.providers).index(key)
    capable = _capable_sets(scenario)

    def pick(a: _Arrival) -> int:
        return index if index in capable[a.template] else -1

    return _run_baseline(scenario, arrivals, SONNET_ROW, pick)


def run_strategy(scenario: Scenario, arrivals: list[_Arrival], strategy: str) -> Run:
    """A fresh engine on a fake clock; outcomes are recorded when each call completes."""
    run = _new_run(strategy, "strategy", scenario)
    clock = _Clock(START)
    name, text = scenario.policy_text(strategy)
    engine = PolicyEngine.from_text(text, name, clock=clock, state="memory://")
    index_of = {key: i for i, key in enumerate(scenario.providers)}
    providers = list(scenario.providers.values())
    models = scenario.catalog.models
    watched = {p.key for p in providers if p.outage is not None}
    explain = bool(watched)
    rng = _outcome_rng(scenario)
    pending: list[tuple[float, int, Any, float, bool, float, int, int]] = []
    record = engine.record
    evaluate = engine.evaluate
    seed = scenario.seed
    try:
        for a in arrivals:
            while pending and pending[0][0] <= a.at:
                done, _, decision, latency, ok, cost, tokens_in, tokens_out = heapq.heappop(pending)
                clock.now = done
                record(
                    decision,
                    latency_ms=latency,
                    success=ok,
                    input_tokens=tokens_in,
                    output_tokens=tokens_out,
                    cost=cost,
                )
            clock.now = a.at
            z, u = rng.gauss(0.0, 1.0), rng.random()
            t = a.template
            request = dict(t.fields)
            request["id"] = f"sim-{seed}-{a.index}"
            decision = evaluate(request, explain=explain)
            if explain and decision.trace:
                for step in decision.trace:
                    if (
                        step["step"] == "drop"
                        and step["because"].startswith(_HEALTH_DROPS)
                        and f"{step['provider']}/{step['model']}" in watched
                    ):
                        key = f"{step['provider']}/{step['model']}"
                        run.health_drops.setdefault(key, []).append(a.index)
            if not decision.allowed:
                continue
            index = index_of[f"{decision.provider}/{decision.model}"]
            latency, ok = providers[index].outcome(a.index, z, u)
            out_tokens = t.output_tokens if ok else 0
            cost = models[index].cost(t.input_tokens, out_tokens) if ok else 0.0
            run.chosen[a.index] = index
            run.latency_ms[a.index] = latency
            run.ok[a.index] = ok
            run.cost[a.index] = cost
            done = a.at + latency / 1000.0
            heapq.heappush(
                pending, (done, a.index, decision, latency, ok, cost, t.input_tokens, out_tokens)
            )
    finally:
        engine.close()
    return run


# ---------------------------------------------------------------- the report


@dataclass
class Report:
    scenario: Scenario
    arrivals: list[_Arrival]
    runs: list[Run]

    def to_dict(self) -> dict[str, Any]:
        s = self.scenario
        rows = [run.summary() for run in self.runs]
        by_name = {row["name"]: row for row in rows}
        base_latency = by_name[RANDOM_ROW]["mean_ms"]
        base_cost = by_name[SONNET_ROW]["cost_per_request"]
        for row in rows:
            row["latency_vs_random"] = _ratio(row["mean_ms"], base_latency)
            row["cost_vs_sonnet"] = _ratio(row["cost_per_request"], base_cost)
        duration = self.arrivals[-1].at - START if self.arrivals else 0.0
        n = max(len(self.arrivals), 1)
        mix = Counter(a.template.name for a in self.arrivals)
        return {
            "scenario": s.path,
            "name": s.name,
            "seed": s.seed,
            "requests": s.requests,
            "rate_per_s": s.rate_per_s,
            "duration_s": round(duration, 3),
            "strategies": list(s.strategies),
            "traffic": {
                "templates": {t.name: mix.get(t.name, 0) for t in s.traffic},
                "mean_input_tokens": round(
                    math.fsum(a.template.input_tokens for a in self.arrivals) / n, 3
                ),
                "mean_output_tokens": round(
                    math.fsum(a.template.output_tokens for a in self.arrivals) / n, 3
                ),
            },
            "rows": rows,
            "outages": self.outages(),
        }

    def outages(self) -> list[dict[str, Any]]:
        out = []
        at = [a.at for a in self.arrivals]
        for key, provider in self.scenario.providers.items():
            outage = provider.outage
            if outage is None:
                continue
            start, end = outage.from_request, outage.to_request
            rows = []
            for run in self.runs:
                rows.append(_outage_row(run, key, start, end, at))
            out.append({"provider": key, "from_request": start, "to_request": end, "rows": rows})
        return out


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base - 1.0, 4)


def _outage_row(run: Run, key: str, start: int, end: int, at: list[float]) -> dict[str, Any]:
    """How a run met an outage of `key` over requests [start, end)."""
    n = len(run.chosen)
    index = run.keys.index(key)
    chosen = run.chosen
    calls = sum(1 for i in range(start, min(end, n)) if chosen[i] == index)
    row: dict[str, Any] = {
        "name": run.name,
        "kind": run.kind,
        "calls_during_outage": calls,
        "routed_away_after": None,
        "routed_away_after_s": None,
        "calls_before_away": None,
        "back_after": None,
        "back_after_s": None,
    }
    drops = [i for i in run.health_drops.get(key, ()) if i >= start]
    if not drops or start >= n:
        return row
    away = drops[0]
    row["routed_away_after"] = away - start
    row["routed_away_after_s"] = round(at[away] - at[start], 3)
    row["calls_before_away"] = sum(1 for i in range(start, away) if chosen[i] == index)
    for i in range(max(end, away), n):
        if chosen[i] == index:
            row["back_after"] = i - end
            row["back_after_s"] = round(at[i] - at[end], 3) if end < n else None
            break
    return row


def simulate(scenario: Scenario) -> Report:
    """Run the baselines and every strategy of the scenario on the same traffic."""
    arrivals = _traffic(scenario)
    runs = [run_random(scenario, arrivals), run_always(scenario, arrivals)]
    runs += [run_strategy(scenario, arrivals, s) for s in scenario.strategies]
    return Report(scenario, arrivals, runs)


# ---------------------------------------------------------------- rendering


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'policyctl[plot]'"
        ) from None


def plot(report: Report, path: str | os.PathLike[str]) -> None:
    """Latency and cost per request over simulated time, one line per row (rolling means)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = [a.at - START for a in report.arrivals]
    n = len(at)
    window = max(1, n // 60)
    fig, (ax_latency, ax_cost) = plt.subplots(2, 1, sharex=True, figsize=(12, 7))
    for run in report.runs:
        xs, lat, cost = _rolling(at, run, window)
        style = "--" if run.kind == "baseline" else "-"
        label = f"{run.name} (baseline)" if run.kind == "baseline" else run.name
        ax_latency.plot(xs, lat, style, label=label, linewidth=1.2)
        ax_cost.plot(xs, cost, style, label=label, linewidth=1.2)
    for key, provider in report.scenario.providers.items():
        if provider.outage is not None and provider.outage.from_request < n:
            lo = at[provider.outage.from_request]
            hi = at[min(provider.outage.to_request, n) - 1]
            for ax in (ax_latency, ax_cost):
                ax.axvspan(lo, hi, color="red", alpha=0.08)
            ax_latency.annotate(f"outage {key}", (lo, 0.97), xycoords=("data", "axes fraction"),
                                fontsize=8, va="top")  # fmt: skip
        if provider.drift is not None and provider.drift.at_request < n:
            x = at[provider.drift.at_request]
            for ax in (ax_latency, ax_cost):
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    ax_latency.set_ylabel(f"latency, ms (mean of {window})")
    ax_cost.set_ylabel(f"cost per request, USD (mean of {window})")
    ax_cost.set_xlabel("simulated time, s")
    ax_cost.set_yscale("log")
    ax_latency.set_title(f"{report.scenario.name}: {n:,} requests, seed {report.scenario.seed}")
    ax_latency.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def _rolling(
    at: list[float], run: Run, window: int
) -> tuple[list[float], list[float], list[float]]:
    """Means over consecutive blocks of `window` requests (served ones only)."""
    xs: list[float] = []
    lat: list[float] = []
    cost: list[float] = []
    for lo in range(0, len(at), window):
        hi = min(lo + window, len(at))
        served = [i for i in range(lo, hi) if run.chosen[i] >= 0]
        if not served:
            continue
        xs.append(at[(lo + hi - 1) // 2])
        lat.append(math.fsum(run.latency_ms[i] for i in served) / len(served))
        cost.append(max(math.fsum(run.cost[i] for i in served) / len(served), 1e-9))
    return xs, lat, cost
