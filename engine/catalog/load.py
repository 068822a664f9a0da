"""Reading a catalog file: YAML (or JSON) -> pydantic -> frozen `Model`s.

Pydantic validates once at the edge; routing reads plain frozen `Model` objects.
Every problem is reported (not just the first), one complete line each, naming the file,
the model and the field:

    policies/models.yaml: model `gpt-4` (models[8]): field `pricing.input`: input should be
    greater than or equal to 0

YAML is read with the safe loader only (libyaml's when available). Before it builds
anything, one pass over the parse events refuses nesting deeper than `MAX_NESTING` (libyaml
composes recursively and would crash the process) and reports duplicate keys (YAML would
silently keep the last one). A `.json` catalog is read as JSON (what `policyctl catalog
import --output FILE.json` writes): the fastest form to load.

Version 2 fields (all optional, so every version-1 catalog loads unchanged): ids as the
provider spells them (`/`, `:`, `@` and `+` allowed), cache and per-image prices, price
tiers by input size, `quality`, the lifecycle dates `deprecated` and `retires`, and
`deployments` (one model served by several providers, accounts or regions).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.catalog.model import (
    CAPABILITIES,
    MAX_CATALOG_BYTES,
    Catalog,
    CatalogError,
    Model,
    PriceTier,
    Quality,
)
from engine.diagnostics import did_you_mean
from engine.units import MAX_TOKENS

MAX_NESTING = 64  # a catalog needs 6 levels
VERSIONS = (1, 2)
# `generated`: free text saying where a catalog came from (what `catalog import` writes)
TOP_LEVEL = ("models", "version", "generated")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"  # a provider, alias-free name, region
# a model id as its provider spells it: `ft:gpt-4o:acme:1`, `claude-sonnet-4-5@20250929`,
# `us.anthropic.claude-3-haiku-20240307-v1:0`, `meta-llama/Llama-3.3-70B-Instruct-Turbo`
# `@cf/meta/llama-3.1-8b-instruct`
MODEL_ID_PATTERN = r"^[A-Za-z0-9@][A-Za-z0-9._:/@+-]*$"
_MERGE_TAG = "tag:yaml.org,2002:merge"

try:  # the C loader when PyYAML was built with libyaml
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

# ---------------------------------------------------------------- the schema

Capability = Literal[CAPABILITIES]  # the names in engine.catalog.model
Name = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelId = Annotated[str, Field(pattern=MODEL_ID_PATTERN)]
# USD per 1M tokens. Bounded so every cost and score stays a finite number: at most
# MAX_PRICE (no model costs a million dollars per million tokens; above ~1e302 a cost
# overflows to infinity), and a price above 0 at least MIN_PRICE (a smaller one makes the
# weighted strategy's cost factor, 1 / the dearest cost, overflow).
MAX_PRICE = 1_000_000.0
MIN_PRICE = 1e-9


def _price_in_range(value: float) -> float:
    if 0 < value < MIN_PRICE:
        raise ValueError(f"a price above 0 is at least {MIN_PRICE:g} USD per 1M tokens (or 0)")
    return value


Price = Annotated[
    float, Field(ge=0, le=MAX_PRICE, allow_inf_nan=False), AfterValidator(_price_in_range)
]
Score = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]
Day = Annotated[date, Field(strict=False)]  # a YAML date, or "YYYY-MM-DD" in JSON
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Tier(BaseModel):
    model_config = _STRICT
    above: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    input: Price
    output: Price
    cached_input: Price | None = None
    cache_write: Price | None = None


class _Pricing(BaseModel):
    model_config = _STRICT
    input: Price
    output: Price
    cached_input: Price | None = None  # USD per 1M tokens read from the prompt cache
    cache_write: Price | None = None  # USD per 1M tokens written to it
    image: Price = 0.0  # USD per input image
    tiers: list[_Tier] = Field(default_factory=list)

    @model_validator(mode="after")
    def _ascending(self) -> _Pricing:
        for a, b in zip(self.tiers, self.tiers[1:], strict=False):
            if b.above <= a.above:
                raise ValueError(
                    f"tiers must be in increasing order of `above` ({b.above} follows {a.above})"
                )
        return self


class _LatencyPrior(BaseModel):
    model_config = _STRICT
    p50: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    p95: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ordered(self) -> _LatencyPrior:
        if self.p50 > self.p95:
            raise ValueError(f"p50 ({self.p50:g}) is greater than p95 ({self.p95:g})")
        return self


class _Quality(BaseModel):
    model_config = _STRICT
    overall: Score | None = None
    tasks: dict[Name, Score] = Field(default_factory=dict)
    source: Annotated[str, Field(min_length=1)]

    @model_validator(mode="after")
    def _some(self) -> _Quality:
        if self.overall is None and not self.tasks:
            raise ValueError("give `overall`, `tasks` or both")
        if "overall" in self.tasks:
            raise ValueError("`overall` is not a task: give it as `quality.overall`")
        return self


def _check_dates(deprecated: date | None, retires: date | None) -> None:
    if deprecated is not None and retires is not None and retires < deprecated:
        raise ValueError(f"`retires` ({retires}) is before `deprecated` ({deprecated})")


class _Deployment(BaseModel):
    """Where a model is also served: a provider (or account, or region) with its own id."""

    model_config = _STRICT
    id: ModelId
    provider: Name
    aliases: list[ModelId] = Field(default_factory=list)
    context_window: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)] | None = None
    supports: list[Capability] | None = None
    pricing: _Pricing | None = None
    latency_prior_ms: _LatencyPrior | None = None
    regions: list[Name] | None = None
    deprecated: Day | None = None
    retires: Day | None = None

    @model_validator(mode="after")
    def _dates(self) -> _Deployment:
        _check_dates(self.deprecated, self.retires)
        return self


class _ModelSpec(BaseModel):
    model_config = _STRICT
    id: ModelId
    provider: Name
    aliases: list[ModelId] = Field(default_factory=list)
    context_window: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    supports: list[Capability] = Field(default_factory=list)
    pricing: _Pricing
    latency_prior_ms: _LatencyPrior
    regions: list[Name] = Field(default_factory=list)
    quality: _Quality | None = None
    deprecated: Day | None = None
    retires: Day | None = None
    deployments: list[_Deployment] = Field(default_factory=list)

    @model_validator(mode="after")
    def _dates(self) -> _ModelSpec:
        _check_dates(self.deprecated, self.retires)
        return self


# ---------------------------------------------------------------- messages


def _code(value: object, limit: int = 60) -> str:
    """User input in backticks, on one line and of bounded length."""
    text = value if isinstance(value, str) else repr(value)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"`{text}`"


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


def _where(source: str, index: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str) and raw["id"]:
        return f"{source}: model {_code(raw['id'])} (models[{index}])"
    return f"{source}: models[{index}]"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `loc`, if it is one of ours."""
    cls: type[BaseModel] = _ModelSpec
    for part in loc:
        if isinstance(part, int):  # an item of a list of mappings (tiers, deployments)
            continue
        info = cls.model_fields.get(part)
        nested = _mapping_type(info.annotation) if info is not None else None
        if nested is None:
            return None
        cls = nested
    return cls


def _mapping_type(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `X | None` or `list[X]`, if there is one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _mapping_type(arg)
        if found is not None:
            return found
    return None


def _fields_of(cls: type[BaseModel]) -> str:
    """The fields a mapping needs (all of them when none is required)."""
    needed = [n for n, f in cls.model_fields.items() if f.is_required()] or list(cls.model_fields)
    names = [f"`{n}`" for n in needed]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _problem(err: dict[str, Any]) -> tuple[str, str]:
    """(dotted field path, message) for one pydantic error."""
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "invalid_key":  # a key that is not a string: the key is the last part
        return _dotted((*loc[:-1], str(loc[-1]))), "field names are strings"
    path = _dotted(loc)
    if kind == "literal_error":
        guess = did_you_mean(str(err.get("input")), CAPABILITIES)
        hint = f"did you mean `{guess}`? " if guess else ""
        return path, f"unknown capability; {hint}use " + ", ".join(f"`{c}`" for c in CAPABILITIES)
    if kind == "string_pattern_mismatch":
        value = err.get("input")
        if value == "":
            return path, "must not be empty"
        last = next((p for p in reversed(loc) if isinstance(p, str)), "")
        if last in ("id", "aliases"):
            return path, (
                f"{_code(value)} is not a valid model id: an id starts with a letter, a digit"
                " or `@` and holds only letters, digits, `.`, `_`, `:`, `/`, `@`, `+` and `-`"
            )
        return path, (
            f"{_code(value)} is not a valid name: a name starts with a letter or digit and"
            " holds only letters, digits, `.`, `_`, `:` and `-`"
        )
    if kind == "extra_forbidden":
        schema = _schema_at(loc[:-1])
        guess = did_you_mean(str(loc[-1]), schema.model_fields) if schema else None
        return path, "unknown field" + (f"; did you mean `{guess}`?" if guess else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        schema = _schema_at(loc)
        if schema is not None:
            return path, f"expected a mapping with {_fields_of(schema)}"
        return path, "expected a mapping"
    return path, _lower(str(err["msg"]).removeprefix("Value error, "))


def _yaml_error(err: yaml.YAMLError, text: str, source: str) -> str:
    if isinstance(err, yaml.reader.ReaderError):  # a character YAML does not allow
        position = err.position
        if _Loader is not yaml.SafeLoader:  # libyaml counts UTF-8 bytes
            raw = text.encode("utf-8", "surrogatepass")[:position]
            position = len(raw.decode("utf-8", "replace"))
        before = text[:position]
        line, col = before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1
        char = err.character if isinstance(err.character, int) else ord(str(err.character)[:1])
        return f"{source}:{line}:{col}: invalid YAML: {err.reason} (#x{char:04x})"
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = _lower(str(problem or err).strip())
    if "maximum nesting depth" in problem:  # newer libyaml stops at 1000 levels itself
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        return f"{where}: nested too deeply (a catalog may nest at most {MAX_NESTING} levels)"
    if mark is not None:
        return f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"
    return f"{source}: invalid YAML: {problem}"


def _names_of(raw: dict[Any, Any]) -> list[tuple[str, str, str]]:
    """(provider, name, where) of every name a model entry defines (its id and aliases,
    and each deployment's), valid or not: whatever names are strings."""

    def of(entry: Any, where: str) -> list[tuple[str, str, str]]:
        if not isinstance(entry, dict) or not isinstance(entry.get("provider"), str):
            return []
        provider, names = entry["provider"], [entry.get("id")]
        if isinstance(entry.get("aliases"), list):
            names.extend(entry["aliases"])
        return [(provider, n, where) for n in names if isinstance(n, str)]

    found = of(raw, "")
    deployments = raw.get("deployments")
    if isinstance(deployments, list):
        for j, deployment in enumerate(deployments):
            found.extend(of(deployment, f"deployments[{j}]"))
    return found


def _epoch(day: date | None) -> float | None:
    return None if day is None else datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()


def _tiers(pricing: _Pricing) -> tuple[PriceTier, ...]:
    return tuple(
        PriceTier(t.above, t.input, t.output, t.cached_input, t.cache_write) for t in pricing.tiers
    )


def _entries(spec: _ModelSpec, first_index: int) -> list[Model]:
    """The routable entries of one catalog model: itself, or each of its deployments."""
    quality = None
    if spec.quality is not None:
        q = spec.quality
        quality = Quality(q.overall, tuple(q.tasks.items()), q.source)
    base = Model(
        id=spec.id,
        provider=spec.provider,
        aliases=tuple(spec.aliases),
        context_window=spec.context_window,
        max_tokens=spec.max_tokens,
        supports=frozenset(spec.supports),
        input_price=spec.pricing.input,
        output_price=spec.pricing.output,
        latency_p50_ms=spec.latency_prior_ms.p50,
        latency_p95_ms=spec.latency_prior_ms.p95,
        regions=tuple(spec.regions),
        index=first_index,
        cached_input_price=spec.pricing.cached_input,
        cache_write_price=spec.pricing.cache_write,
        image_price=spec.pricing.image,
        tiers=_tiers(spec.pricing),
        quality=quality,
        deprecated_at=_epoch(spec.deprecated),
        retires_at=_epoch(spec.retires),
    )
    if not spec.deployments:
        return [base]
    out: list[Model] = []
    for j, d in enumerate(spec.deployments):
        pricing, prior = d.pricing or spec.pricing, d.latency_prior_ms or spec.latency_prior_ms
        retires = base.retires_at if d.retires is None else _epoch(d.retires)
        out.append(
            Model(
                id=d.id,
                provider=d.provider,
                aliases=tuple(d.aliases),
                context_window=d.context_window or spec.context_window,
                max_tokens=d.max_tokens or spec.max_tokens,
                supports=frozenset(spec.supports if d.supports is None else d.supports),
                input_price=pricing.input,
                output_price=pricing.output,
                latency_p50_ms=prior.p50,
                latency_p95_ms=prior.p95,
                regions=tuple(spec.regions if d.regions is None else d.regions),
                index=first_index + j,
                cached_input_price=pricing.cached_input,
                cache_write_price=pricing.cache_write,
                image_price=pricing.image,
                tiers=_tiers(pricing),
                quality=quality,
                deprecated_at=base.deprecated_at if d.deprecated is None else _epoch(d.deprecated),
                retires_at=retires,
                family=base.key,
            )
        )
    return out


def _json_document(text: str, source: str) -> Any:
    """A JSON catalog, refusing duplicate keys (as the YAML scan does)."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(
                    f"{source}: duplicate key {_code(key)} (JSON would keep only the last one)"
                )
            out[key] = value
        return out

    try:
        doc = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as err:
        raise CatalogError(
            [f"{source}:{err.lineno}:{err.colno}: invalid JSON: {_lower(err.msg)}"]
        ) from None
    except (RecursionError, ValueError):  # nested too deeply; an integer over 4,300 digits
        raise CatalogError(
            [f"{source}: invalid JSON: nested too deeply or a number too long"]
        ) from None
    if duplicates:
        raise CatalogError(duplicates)
    return doc


# ---------------------------------------------------------------- loading


def _scan(text: str, source: str) -> list[str]:
    """One pass over the parse events: refuse deep nesting, report duplicate keys.

    Raises yaml.YAMLError for a syntax error (as loading would).
    """
    errors: list[str] = []
    loader = _Loader(text)
    # per open collection: None for a sequence, else [expecting a key?, keys seen]
    stack: list[list[Any] | None] = []
    try:
        while loader.check_event():
            event = loader.get_event()
            is_node = isinstance(event, yaml.NodeEvent)  # scalar, alias, collection start
            top = stack[-1] if stack else None
            if top is not None and is_node:
                if top[0] and isinstance(event, yaml.ScalarEvent):
                    tag = event.tag
                    if tag is None or tag == "!":
                        tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
                    if tag != _MERGE_TAG and (tag, event.value) in top[1]:
                        mark = event.start_mark
                        errors.append(
                            f"{source}:{mark.line + 1}:{mark.column + 1}: duplicate key "
                            f"{_code(event.value)} (YAML would keep only the last one)"
                        )
                    top[1].add((tag, event.value))
                top[0] = not top[0]
            if isinstance(event, yaml.CollectionStartEvent):
                if len(stack) >= MAX_NESTING:
                    mark = event.start_mark
                    return [
                        f"{source}:{mark.line + 1}:{mark.column + 1}: nested too deeply "
                        f"(a catalog may nest at most {MAX_NESTING} levels)"
                    ]
                stack.append([True, set()] if isinstance(event, yaml.MappingStartEvent) else None)
            elif isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
    finally:
        loader.dispose()
    return errors


def _too_large(source: str, size: int | None) -> CatalogError:
    amount = f"{size:,} bytes" if size is not None else "more than 8 MiB"
    return CatalogError([f"{source}: catalog is too large ({amount}; the limit is 8 MiB)"])


def parse_catalog(text: str, source: str) -> Catalog:
    """Validate catalog text (JSON when `source` ends in `.json`, else YAML, of which JSON is
    a subset). Raises CatalogError with every problem found."""
    raw_text = text.encode("utf-8", "surrogatepass")
    if len(raw_text) > MAX_CATALOG_BYTES:
        raise _too_large(source, len(raw_text))
    if source.endswith(".json"):
        doc = _json_document(text, source)
    else:
        try:
            problems = _scan(text, source)
            if problems:
                raise CatalogError(problems)
            doc = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as err:
            raise CatalogError([_yaml_error(err, text, source)]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        message = f"{source}: not a catalog: expected a mapping with a `models:` list"
        if isinstance(doc, dict) and "models" not in doc:
            guess = did_you_mean("models", [k for k in doc if isinstance(k, str)])
            if guess:
                message += f"; found {_code(guess + ':')}"
        raise CatalogError([message])

    errors: list[str] = []
    for key in sorted(str(k) for k in doc if k not in TOP_LEVEL):
        guess = did_you_mean(key, TOP_LEVEL)
        hint = f"; did you mean `{guess}`?" if guess else ""
        errors.append(f"{source}: unknown top-level field {_code(key)}{hint}")
    if "generated" in doc and not isinstance(doc["generated"], str):
        errors.append(f"{source}: field `generated`: expected text")
    version = doc.get("version", 1)
    if isinstance(version, bool) or version not in VERSIONS:
        errors.append(
            f"{source}: field `version`: {_code(version)} is not a catalog version; use 1 or 2"
        )
    raw_models: list[Any] = doc["models"]
    if not raw_models:
        errors.append(f"{source}: the catalog has no models")

    models: list[Model] = []
    families: list[tuple[str, str, tuple[str, ...]]] = []
    seen: dict[tuple[str, str], str] = {}  # (provider, id or alias) -> where it is defined
    for i, raw in enumerate(raw_models):
        where = _where(source, i, raw)
        if not isinstance(raw, dict):
            errors.append(f"{where}: expected a mapping with the model's fields")
            continue
        spec: _ModelSpec | None = None
        try:
            spec = _ModelSpec.model_validate(raw)
        except ValidationError as err:
            for e in err.errors(include_url=False):
                path, message = _problem(dict(e))
                errors.append(
                    f"{where}: field `{path}`: {message}" if path else f"{where}: {message}"
                )
        # names are checked even when a model has other errors, so all problems show at once
        for provider, name, part in _names_of(raw):
            here = f"models[{i}]" + (f".{part}" if part else "")
            first = seen.setdefault((provider, name), here)
            if first != here:  # (an alias repeating the entry's own id or alias is harmless)
                errors.append(
                    f"{where}: {_code(f'{provider}/{name}')} is already defined by {first}"
                )
        if spec is None:
            continue
        if spec.deployments:
            families.append((spec.provider, spec.id, tuple(spec.aliases)))
        models.extend(_entries(spec, len(models)))
    if errors:
        raise CatalogError(errors)
    return Catalog(
        models=tuple(models),
        source=source,
        digest=hashlib.sha256(raw_text).hexdigest(),
        families=tuple(families),
    )


def load_catalog(path: str | os.PathLike[str], name: str | None = None) -> Catalog:
    """Read and validate a catalog file; `name` (default: the path) is how messages show it."""
    p = Path(path)
    shown = name if name is not None else str(p)
    try:
        if "\0" in str(p):
            raise OSError(0, "the path contains a NUL character")
        mode = p.stat().st_mode  # a FIFO would hang the read, a device never end
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):  # (open says "Is a directory")
            raise OSError(0, "not a regular file")
        with p.open("rb") as f:  # read at most one byte over the limit
            data = f.read(MAX_CATALOG_BYTES + 1)
            if len(data) > MAX_CATALOG_BYTES:
                size = os.fstat(f.fileno()).st_size
                raise _too_large(shown, size if size > MAX_CATALOG_BYTES else None)
    except OSError as err:
        reason = err.strerror or str(err)
        raise CatalogError([f"{shown}: cannot read catalog: {reason}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CatalogError(
            [f"{shown}: cannot read catalog: not UTF-8 text (byte {err.start})"]
        ) from None
    return parse_catalog(text, shown)
