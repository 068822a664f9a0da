"""A scenario file, read and validated: `load_scenario(path) -> Scenario`, or ScenarioError.

A scenario (YAML, validated with pydantic) gives a synthetic provider per catalog model,
a traffic mix (request templates with weights, each checked as a request), an arrival
rate, a seed, the strategies to compare, and the `policy` settings and `limits` every run
shares. Every problem is reported at once, each naming the file and the field; the policy
text is checked by compiling it, with diagnostics that point at the scenario's own lines
when it is written as `policy: |` and `limits: |` blocks.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.api.policy_engine import PolicyEngine
from engine.catalog.load import load_catalog
from engine.catalog.model import Catalog, CatalogError
from engine.diagnostics import PolicyError, did_you_mean
from engine.errors import PolicyctlError
from engine.resources import default_catalog_path
from engine.routing.request import Request, RequestError, env_of
from engine.simulate.content import ContentError, ContentSpec, bodies
from engine.simulate.world import Provider, ProviderSpec, SessionSpec, Template, capable
from engine.strategies import STRATEGIES
from engine.vocabulary import DEFAULT_OUTPUT_TOKENS
from engine.yaml_positions import YamlSyntaxError, load_positioned

DEFAULT_STRATEGIES = (
    "latency",
    "cost",
    "weighted(latency: 60%, cost: 40%)",
    "model-specific",
    "round-robin",
    "failover",
)
# the baselines' rows (run.py runs them; a policy row may not take their names)
RANDOM_ROW = "random"
SONNET_ROW = "always sonnet"
ORACLE_ROW = "oracle"
MAX_REQUESTS = 1_000_000
MAX_USERS = 1_000_000
# a pool of users: a whole number (`users: true` is not one, so no lax conversion)
Users = Annotated[int, Field(ge=1, le=MAX_USERS, strict=True)]
MAX_SCENARIO_BYTES = 1 << 20
_STRATEGY_TEXT = re.compile(r"^[A-Za-z][A-Za-z-]*(\s*\([^(){}\n#]*\))?$")
_STRATEGY_LINE = re.compile(r"^\s*strategy\b")

try:  # the C loader when PyYAML was built with libyaml
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class ScenarioError(PolicyctlError):
    """A scenario that cannot be run; `messages` holds one complete line per problem."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))

    def cli_text(self) -> str:
        return "\n".join(f"policyctl: error: {message}" for message in self.messages)


# ---------------------------------------------------------------- the YAML schema


class _TrafficSpec(BaseModel):
    """Simulator fields; every other field is a request field, validated as a request."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    output_tokens: Annotated[int, Field(ge=0)] | None = None  # what the model writes
    min_quality: Annotated[float, Field(ge=0, le=1)] | None = None  # a good answer's quality
    users: Users | None = None  # this template's pool of users (instead of the scenario's)
    session: SessionSpec | None = None  # an agent: each draw starts a session of turns
    content: ContentSpec | None = None  # prompt content: bodies with these features


class _ScenarioSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    description: str | None = None
    seed: int = 0
    requests: Annotated[int, Field(ge=1, le=MAX_REQUESTS)]
    rate_per_s: Annotated[float, Field(gt=0, le=1_000_000)]
    traffic: Annotated[list[Any], Field(min_length=1)]  # each checked as a _TrafficSpec
    providers: dict[str, Any] = {}  # each checked as a ProviderSpec
    strategies: list[Any] | None = None
    policy: str = ""
    routes: str = ""  # routes (any top-level statements), after `defaults`
    limits: str = ""
    catalog: str | None = None  # relative to the scenario file; default: the packaged one
    # the true quality of models without one: a score, or `catalog` (their catalog score)
    default_quality: Annotated[float, Field(ge=0, le=1)] | Literal["catalog"] | None = None
    # the logistic scale of bad answers under the need (0: every one under it is bad)
    quality_spread: Annotated[float, Field(ge=0, le=1)] = 0.0
    # whole policies to run as rows, by name: a policy file, relative to the scenario
    policies: dict[str, str] = {}
    users: Users | None = None  # each request's `user` drawn from u000 … u(N-1)
    # `5% budget $0.50 per 1h`: each strategy runs twice, as written and with `explore …`
    explore: str | None = None
    # `by request.metadata.session_id for 30m`: each run also runs with `affinity …`
    affinity: str | None = None
    # each run also runs with outcomes that carry no request id (nothing settles)
    compare_settlement: Annotated[bool, Field(strict=True)] = False


# ---------------------------------------------------------------- the validated scenario


@dataclass(frozen=True, slots=True)
class _Embedded:
    """Where the scenario's policy text sits in its file, to build policy text whose
    diagnostics point at the scenario's own lines."""

    lines: tuple[str, ...]  # the scenario file's lines
    # 0-based [key line, end line) of each `policy: |`, `routes: |` and `limits: |` block
    blocks: Mapping[str, tuple[int, int]]


_BLOCKS = ("policy", "routes", "limits")


def run_specs(
    strategies: Sequence[str], explore: str | None, affinity: str | None, settlement: bool
) -> tuple[RunSpec, ...]:
    """The engine runs, in order: each strategy as written, then with `explore` (when
    given), each of those without and then with `affinity` (when given), and each of those
    settled and then unsettled (`settlement`: compare_settlement)."""
    explores = (None,) if explore is None else (None, explore)
    affinities = (None,) if affinity is None else (None, affinity)
    settles = (True, False) if settlement else (True,)
    return tuple(
        RunSpec(s, e, a, settle)
        for s in strategies
        for e in explores
        for a in affinities
        for settle in settles
    )


@dataclass(frozen=True, slots=True)
class PolicyRun:
    """A whole policy run as a row: its name in the report, its file, and its text with
    the scenario's `catalog` added (on a line of its own after the file's last)."""

    name: str
    path: str  # as the scenario names it, relative to the scenario file
    text: str


def true_quality(
    provider: Provider, model: Any, template: str, default: float | str | None
) -> float | None:
    """A model's true quality for `template`: its provider's `quality`, else the default
    (`catalog`: its catalog score for a task named as the template, else its overall)."""
    if default != "catalog":
        return provider.quality_for(template, default if isinstance(default, float) else None)
    found = provider.quality_for(template, None)
    if found is not None or model is None or model.quality is None:
        return found
    task = model.quality.score(template)
    return task if task is not None else model.quality.overall


class RunSpec(NamedTuple):
    """One engine run of a scenario: the strategy, and what the run adds to it."""

    strategy: str
    explore: str | None = None  # the `explore` setting it adds to its defaults
    affinity: str | None = None  # the `affinity` setting it adds to its defaults
    settle: bool = True  # False: its outcomes carry no request id, so nothing settles

    @property
    def name(self) -> str:
        """The row's name: `latency`, `latency + explore`, `latency + affinity`,
        `latency (unsettled)`."""
        out = self.strategy
        if self.explore is not None:
            out += " + explore"
        if self.affinity is not None:
            out += " + affinity"
        return out if self.settle else f"{out} (unsettled)"


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
    routes: str = ""
    # the true quality of a model without one: a score, or "catalog" (its catalog score)
    default_quality: float | str | None = None
    explore: str | None = None  # `5% budget $0.50 per 1h`: each strategy also runs with it
    affinity: str | None = None  # `by request.KEY for D`: each run also runs with it
    compare_settlement: bool = False  # each run also runs unsettled
    quality_spread: float = 0.0  # the logistic scale of bad answers (world.bad_chance)
    policies: tuple[PolicyRun, ...] = ()  # whole policies run as rows, after the strategies

    def runs(self) -> tuple[RunSpec, ...]:
        """The engine runs, in order: each strategy as written, then with `explore` (when
        the scenario gives it), each of those without and then with `affinity` (when
        given), and each of those settled and then unsettled (`compare_settlement`)."""
        return run_specs(self.strategies, self.explore, self.affinity, self.compare_settlement)

    def quality(self, key: str, template: Template) -> float | None:
        """The true quality of model `key`'s answers to `template` (None: not known)."""
        provider, _, name = key.partition("/")
        model = self.catalog.find(provider, name)
        return true_quality(self.providers[key], model, template.name, self.default_quality)

    def policy_text(
        self, strategy: str, explore: str | None = None, affinity: str | None = None
    ) -> tuple[str, str]:
        """(source name, policy text) for one strategy's run, with `explore EXPLORE` and
        `affinity AFFINITY` in its defaults when given."""
        if explore is not None:
            strategy = f"{strategy} explore {explore}"  # on the same line: `defaults` closes it
        if affinity is not None:
            strategy = f"{strategy} affinity {affinity}"
        catalog = f"catalog {json.dumps(self.catalog_path.as_posix())}"
        emb = self.embedded
        texts = {"policy": self.policy, "routes": self.routes, "limits": self.limits}
        if emb is not None and all(
            name in emb.blocks or not text.strip() for name, text in texts.items()
        ):
            n = len(emb.lines)
            lines = [""] * (n + 3)
            used: set[int] = set()

            def put(i: int, line: str) -> None:
                lines[i] = line
                used.add(i)

            if "policy" in emb.blocks:
                key, end = emb.blocks["policy"]
                put(key, "defaults {")
                for i in range(key + 1, end):
                    put(i, emb.lines[i])
                put(end, f"strategy {strategy} }}")
            for name in ("routes", "limits"):
                if name in emb.blocks:
                    key, end = emb.blocks[name]
                    for i in range(key + 1, end):
                        put(i, emb.lines[i])
            free = (i for i in range(n + 3) if i not in used)
            if "policy" not in emb.blocks:
                put(next(free), f"defaults {{ strategy {strategy} }}")
            put(next(free), catalog)
            return self.path, "\n".join(lines) + "\n"
        text = (
            f"{catalog}\ndefaults {{\n{self.policy}\nstrategy {strategy}\n}}\n"
            f"{self.routes}\n{self.limits}\n"
        )
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
    """The line ranges of top-level `policy: |`, `routes: |` and `limits: |` blocks, if that
    is how they are written (any other style: None, and the policy text is generated apart)."""
    try:
        root = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError:  # pragma: no cover - the data load reported it
        return None
    if not isinstance(root, yaml.MappingNode):
        return None
    found: dict[str, tuple[int, int]] = {}
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value in _BLOCKS:
            if not isinstance(value, yaml.ScalarNode) or value.style != "|":
                if isinstance(value, yaml.ScalarNode) and not value.value.strip():
                    continue
                return None
            found[key.value] = (value.start_mark.line, value.end_mark.line)
    return _Embedded(tuple(text.splitlines()), found)


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


def _explore_errors(source: str, explore: str, policy: str, catalog_path: Path) -> list[str]:
    """The `explore` field: what follows `explore` in a policy (`5% budget $0.50 per 1h`),
    checked as the setting is; not also set in `policy`."""
    where = f"{source}: field `explore`"
    if any(line.split("#", 1)[0].split()[:1] == ["explore"] for line in policy.splitlines()):
        return [f"{where}: `policy` sets `explore` already; keep one of them"]
    if "\n" in explore or "#" in explore or "}" in explore:
        return [f"{where}: write the setting on one line, e.g. `5% budget $0.50 per 1h`"]
    text = f"defaults {{ explore {explore} }}\ncatalog {json.dumps(catalog_path.as_posix())}"
    try:
        PolicyEngine.from_text(text, "<explore>").close()
    except PolicyError as err:
        first = err.diagnostics[0]
        hint = f" ({first.help})" if first.help else ""
        return [f"{where}: {first.message}{hint}"]
    return []


def _affinity_errors(source: str, affinity: str, policy: str, catalog_path: Path) -> list[str]:
    """The `affinity` field: what follows `affinity` in a policy (`by
    request.metadata.session_id for 30m`), checked as the setting is; not also in `policy`."""
    where = f"{source}: field `affinity`"
    if any(line.split("#", 1)[0].split()[:1] == ["affinity"] for line in policy.splitlines()):
        return [f"{where}: `policy` sets `affinity` already; keep one of them"]
    if "\n" in affinity or "#" in affinity or "}" in affinity:
        return [
            f"{where}: write the setting on one line, e.g. `by request.metadata.session_id for 30m`"
        ]
    text = f"defaults {{ affinity {affinity} }}\ncatalog {json.dumps(catalog_path.as_posix())}"
    try:
        PolicyEngine.from_text(text, "<affinity>").close()
    except PolicyError as err:
        first = err.diagnostics[0]
        hint = f" ({first.help})" if first.help else ""
        return [f"{where}: {first.message}{hint}"]
    return []


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
        return f"unknown model: write `provider/model`, e.g. `{catalog.models[0].key}`"
    models = catalog.by_provider(provider)
    if not models:
        return "unknown provider; providers: " + ", ".join(f"`{p}`" for p in catalog.providers)
    return f"unknown model; {provider} models: " + ", ".join(f"`{m.id}`" for m in models)


def _template(source: str, i: int, item: Any, seed: Any = 0) -> tuple[Template | None, list[str]]:
    """A traffic entry: the simulator's fields, and request fields checked as a request.
    With `content`, its bodies are written (seeded by the scenario's `seed`)."""
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
    metadata = fields.get("metadata")
    if "session" in own and isinstance(metadata, dict) and "session_id" in metadata:
        errors.append(
            f"{where}.metadata.session_id`: given per session by the simulator; remove it"
        )
    if "content" in own:
        for name in ("messages", "prompt", "input_tokens"):
            if name in fields:
                errors.append(
                    f"{where}.{name}`: `content` writes the prompt and its size; remove one"
                )
        if "session" in own:
            errors.append(f"{where}.content`: a template with a `session` has no `content`")
    if "user" in fields and "users" in own:
        errors.append(
            f"{where}.users`: the template gives one `user`; remove `user` to draw users"
            " from a pool, or `users` to keep that one"
        )
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
    written: tuple[Any, ...] = ()
    tokens: tuple[int, ...] = ()
    if spec.content is not None:
        try:
            written = bodies(spec.content, f"{seed}:{spec.name or i}")
        except ContentError as err:
            return None, [f"{where}.content`: cannot write prompts with these features: {err}"]
        tokens = tuple(
            int(env_of({**fields, "id": "template", "messages": list(b)})["input_tokens"])
            for b in written
        )
        env = {**env, "input_tokens": max(tokens)}
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
            min_quality=spec.min_quality,
            region=env["region"],
            max_cost=env["max_cost"],
            max_latency_ms=env["max_latency_ms"],
            users=spec.users,
            session=spec.session,
            bodies=written,
            body_tokens=tokens,
        ),
        [],
    )


def _template_names(raw_traffic: Any) -> list[str]:
    """The templates' names as the file gives them (`traffic[i]` for one without a name)."""
    names = []
    for i, item in enumerate(raw_traffic if isinstance(raw_traffic, list) else ()):
        name = item.get("name") if isinstance(item, dict) else None
        names.append(name if isinstance(name, str) and name else f"traffic[{i}]")
    return names


def _quality_errors(
    source: str, key: str, quality: float | Mapping[str, float] | None, names: list[str]
) -> list[str]:
    """A per-template `quality` must name the scenario's templates."""
    if not isinstance(quality, Mapping):
        return []
    out = []
    for name in quality:
        if name not in names:
            guess = did_you_mean(name, names)
            hint = (
                f"did you mean `{guess}`?"
                if guess
                else "templates: " + ", ".join(f"`{n}`" for n in names)
            )
            out.append(
                f"{source}: field `providers.{key}.quality.{name}`: unknown template ({hint})"
            )
    return out


def _unknown_quality(
    source: str,
    templates: Sequence[Template],
    catalog: Catalog,
    providers: Mapping[str, Provider],
    default: str | None = None,
) -> list[str]:
    """A template with `min_quality` needs the true quality of every model that can serve
    it: from the model's `quality`, else the scenario's `default_quality` (`catalog`: the
    model's catalog score)."""
    out = []
    for t in templates:
        if t.min_quality is None:
            continue
        unknown = [
            m.key
            for m in catalog.models
            if capable(m, t) and true_quality(providers[m.key], m, t.name, default) is None
        ]
        if unknown:
            shown = ", ".join(f"`{k}`" for k in unknown[:3])
            more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
            models = (
                "1 model that can serve it has"
                if len(unknown) == 1
                else (f"{len(unknown)} models that can serve it have")
            )
            if default == "catalog":
                out.append(
                    f"{source}: field `default_quality`: template `{t.name}` sets"
                    f" `min_quality` and {models} no catalog `quality` and no `quality` for"
                    f" it ({shown}{more}); give them one under `providers`, or a score in"
                    " the catalog"
                )
                continue
            out.append(
                f"{source}: field `default_quality`: missing: template `{t.name}` sets"
                f" `min_quality` and {models} no `quality` for it ({shown}{more}); give"
                " them one under `providers`, or set `default_quality`"
            )
    return out


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
        return _load_scenario(p, source, text, strategies, seed, requests)
    except ScenarioError as err:
        raise ScenarioError(_placed(err.messages, source, text)) from None


_FIELD_MESSAGE = re.compile(r"field `([^`]+)`")


def _placed(messages: list[str], source: str, text: str) -> list[str]:
    """The messages that name a field of the file (`SOURCE: field `PATH`: …`) with the line
    and column it was written at (`SOURCE:LINE:COL: field …`, as every file error reads): of
    the field, or of the nearest enclosing one written (a missing field: its mapping's). A
    top-level field that is missing has no place, and a message that gives a line already
    (a policy block's) keeps its own."""
    head = f"{source}: field `"
    if not any(m.startswith(head) for m in messages):
        return messages
    try:
        _, positions = load_positioned(text, source, fast=True)
    except YamlSyntaxError:  # pragma: no cover - the data load reported it
        return messages
    out = []
    for message in messages:
        found = _FIELD_MESSAGE.match(message, len(source) + 2)
        if message.startswith(head) and found is not None and "(line " not in message:
            path = found.group(1)
            while path and path not in positions.at:
                path = path[: max(path.rfind("."), path.rfind("["), 0)]
            if path:
                line, col = positions.at[path]
                message = f"{source}:{line}:{col}: {message[len(source) + 2 :]}"
        out.append(message)
    return out


def _load_scenario(
    p: Path,
    source: str,
    text: str,
    strategies: Sequence[str] | None,
    seed: int | None,
    requests: int | None,
) -> Scenario:
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

    named = raw.get("catalog")
    if isinstance(named, str) and named:
        catalog_path = (p.parent / named).resolve()
        try:
            catalog = load_catalog(catalog_path, name=named)
        except CatalogError as err:
            raise ScenarioError(
                [f"{source}: field `catalog`: {line}" for line in err.messages]
            ) from None
    else:
        catalog_path = default_catalog_path()
        catalog = load_catalog(catalog_path)
    # each section is checked on its own, so one pass reports every problem
    templates: list[Template] = []
    raw_traffic = raw.get("traffic")
    for i, item in enumerate(raw_traffic if isinstance(raw_traffic, list) else ()):
        template, problems = _template(source, i, item, raw.get("seed", 0))
        errors += problems
        if template is not None:
            templates.append(template)

    names = _template_names(raw_traffic)
    before_providers = len(errors)
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
            pspec = ProviderSpec.model_validate(item)
        except ValidationError as err:
            errors += _pydantic_errors(source, err, ProviderSpec, ("providers", key))
            continue
        errors += _quality_errors(source, key, pspec.quality, names)
        providers[model.key] = Provider.from_spec(model, pspec)
    for model in catalog.models:
        providers.setdefault(model.key, Provider.from_prior(model))
    providers = {m.key: providers[m.key] for m in catalog.models}  # catalog order
    if (
        spec is not None
        and spec.default_quality in (None, "catalog")
        and len(errors) == before_providers
    ):
        default = spec.default_quality if isinstance(spec.default_quality, str) else None
        errors += _unknown_quality(source, templates, catalog, providers, default)

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
    for block in ("policy", "routes"):
        for number, line in enumerate(str(raw.get(block) or "").splitlines(), start=1):
            if _STRATEGY_LINE.match(line):
                errors.append(
                    f"{source}: field `{block}` (line {number}): `strategy` is set per run"
                    " from `strategies`; remove it here"
                )
    if spec is not None and spec.explore is not None:
        errors += _explore_errors(source, spec.explore, spec.policy, catalog_path)
    if spec is not None and spec.affinity is not None:
        errors += _affinity_errors(source, spec.affinity, spec.policy, catalog_path)
    policies: list[PolicyRun] = []
    if spec is not None:
        specs = run_specs(chosen, spec.explore, spec.affinity, spec.compare_settlement)
        taken = {*(r.name for r in specs), RANDOM_ROW, SONNET_ROW, ORACLE_ROW}
        for name, named_path in spec.policies.items():
            found, problems = _policy_run(source, p, name, named_path, catalog_path, taken)
            errors += problems
            if found is not None:
                policies.append(found)
                taken.add(name)
    if errors or spec is None:
        raise ScenarioError(errors)
    if spec.users is not None:  # the scenario's pool, for templates without a user or pool
        templates = [
            t if t.users is not None or "user" in t.fields else replace(t, users=spec.users)
            for t in templates
        ]

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
        routes=spec.routes,
        default_quality=spec.default_quality,
        explore=spec.explore,
        affinity=spec.affinity,
        compare_settlement=spec.compare_settlement,
        quality_spread=spec.quality_spread,
        policies=tuple(policies),
    )
    name, policy = scenario.policy_text(chosen[0], spec.explore, spec.affinity)
    PolicyEngine.from_text(policy, name).close()  # a policy that does not check fails here
    for run in policies:
        PolicyEngine.from_text(run.text, run.path).close()
    return scenario


_CATALOG_LINE = re.compile(r"^[ \t]*catalog\b", re.MULTILINE)


def _policy_run(
    source: str,
    scenario_path: Path,
    name: str,
    named_path: str,
    catalog_path: Path,
    taken: set[str],
) -> tuple[PolicyRun | None, list[str]]:
    """`policies.NAME: FILE`: a policy file run as a row over the scenario's catalog."""
    where = f"{source}: field `policies.{name}`"
    if not name.strip() or name != name.strip():
        return None, [f"{where}: a row name without spaces around it"]
    if name in taken:
        return None, [f"{where}: `{name}` is already a row of the report; name it otherwise"]
    path = Path(os.path.normpath(scenario_path.parent / named_path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None, [f"{where}: cannot read `{path}`: not UTF-8 text"]
    except OSError as err:
        return None, [f"{where}: cannot read `{path}`: {err.strerror}"]
    found = _CATALOG_LINE.search(text)
    if found is not None:
        line = text.count("\n", 0, found.start()) + 1
        return None, [
            f"{where}: `{path}` names its own `catalog` (line {line}); a policy runs over"
            " the scenario's catalog: remove the line, or give it as the scenario's `catalog`"
        ]
    body = text if text.endswith("\n") else text + "\n"
    body += f"catalog {json.dumps(catalog_path.as_posix())}\n"
    return PolicyRun(name, str(path), body), []
