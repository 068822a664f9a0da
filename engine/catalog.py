"""The model catalog: capabilities, prices and latency priors (YAML -> pydantic -> frozen objects).

Pydantic validates once at the edge; routing reads plain frozen `Model` objects.
Errors name the file, the model and the field:

    policies/models.yaml: model `gpt-4` (models[6]): field `pricing.input`: input should be
    greater than or equal to 0
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MAX_CATALOG_BYTES = 8 << 20
CAPABILITIES = ("streaming", "tools", "vision", "json")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"

try:  # the C loader when PyYAML was built with libyaml
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class CatalogError(Exception):
    """A catalog that cannot be used; `messages` holds one complete line per problem."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    provider: str
    aliases: tuple[str, ...]
    context_window: int
    max_tokens: int
    supports: frozenset[str]
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    latency_p50_ms: float
    latency_p95_ms: float
    regions: tuple[str, ...]
    index: int  # position in the catalog, for stable tie-breaking

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.id}"

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Model, ...]
    source: str
    digest: str
    _by_name: dict[tuple[str, str], Model] = field(default_factory=dict, repr=False, compare=False)
    _by_provider: dict[str, tuple[Model, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_provider: dict[str, list[Model]] = {}
        for m in self.models:
            by_provider.setdefault(m.provider, []).append(m)
            self._by_name[(m.provider, m.id)] = m
        for m in self.models:
            for alias in m.aliases:
                self._by_name.setdefault((m.provider, alias), m)
        self._by_provider.update({p: tuple(ms) for p, ms in by_provider.items()})

    @property
    def providers(self) -> tuple[str, ...]:
        return tuple(self._by_provider)

    def by_provider(self, provider: str) -> tuple[Model, ...]:
        return self._by_provider.get(provider, ())

    def find(self, provider: str, name: str) -> Model | None:
        return self._by_name.get((provider, name))

    def names(self, provider: str | None = None) -> list[str]:
        return [n for (p, n) in self._by_name if provider is None or p == provider]


# ---------------------------------------------------------------- the YAML schema

Capability = Literal["streaming", "tools", "vision", "json"]


class _Pricing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: Annotated[float, Field(ge=0)]
    output: Annotated[float, Field(ge=0)]


class _LatencyPrior(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p50: Annotated[float, Field(gt=0)]
    p95: Annotated[float, Field(gt=0)]

    @model_validator(mode="after")
    def _ordered(self) -> _LatencyPrior:
        if self.p50 > self.p95:
            raise ValueError(f"p50 ({self.p50:g}) is greater than p95 ({self.p95:g})")
        return self


class _ModelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(pattern=_NAME)]
    provider: Annotated[str, Field(pattern=_NAME)]
    aliases: list[Annotated[str, Field(pattern=_NAME)]] = []
    context_window: Annotated[int, Field(gt=0)]
    max_tokens: Annotated[int, Field(gt=0)]
    supports: list[Capability] = []
    pricing: _Pricing
    latency_prior_ms: _LatencyPrior
    regions: list[str] = []


def _where(path: str, index: int, raw: Any) -> str:
    if isinstance(raw, dict) and isinstance(raw.get("id"), str):
        return f"{path}: model `{raw['id']}` (models[{index}])"
    return f"{path}: models[{index}]"


def _field(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(err: dict[str, Any]) -> str:
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "literal_error":
        msg = "unknown capability; use " + ", ".join(f"`{c}`" for c in CAPABILITIES)
    elif err["type"] == "string_pattern_mismatch":
        msg = (
            "a name starts with a letter or digit and holds only letters, digits,"
            " `.`, `_`, `:` and `-`"
        )
    elif err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg[:1].lower() + msg[1:]


def parse_catalog(text: str, source: str) -> Catalog:
    """Validate catalog YAML text. Raises CatalogError with every problem found."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CATALOG_BYTES:
        raise CatalogError([f"{source}: catalog is too large (the limit is 8 MiB)"])
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err)
        if mark is not None:
            raise CatalogError(
                [f"{source}:{mark.line + 1}:{mark.column + 1}: invalid YAML: {problem}"]
            ) from None
        raise CatalogError([f"{source}: invalid YAML: {problem}"]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise CatalogError([f"{source}: not a catalog: expected a mapping with a `models:` list"])
    extra = sorted(str(k) for k in doc if k != "models")
    errors: list[str] = [f"{source}: unknown top-level field `{k}`" for k in extra]
    raw_models: list[Any] = doc["models"]
    if not raw_models:
        errors.append(f"{source}: the catalog has no models")
    models: list[Model] = []
    seen: dict[tuple[str, str], int] = {}
    for i, raw in enumerate(raw_models):
        where = _where(source, i, raw)
        if not isinstance(raw, dict):
            errors.append(f"{where}: expected a mapping of fields")
            continue
        try:
            spec = _ModelSpec.model_validate(raw)
        except ValidationError as err:
            for e in err.errors(include_url=False):
                name = _field(tuple(e["loc"]))
                prefix = f"{where}: field `{name}`: " if name else f"{where}: "
                errors.append(prefix + _message(dict(e)))
            continue
        for name in (spec.id, *spec.aliases):
            first = seen.get((spec.provider, name))
            if first is not None and first != i:
                errors.append(
                    f"{where}: `{spec.provider}/{name}` is already defined by models[{first}]"
                )
            seen.setdefault((spec.provider, name), i)
        models.append(
            Model(
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
                index=len(models),
            )
        )
    if errors:
        raise CatalogError(errors)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return Catalog(models=tuple(models), source=source, digest=digest)


def load_catalog(path: str | os.PathLike[str], name: str | None = None) -> Catalog:
    """Read and validate a catalog file; `name` is how messages show its path."""
    p = Path(path)
    shown = name if name is not None else str(p)
    try:
        size = p.stat().st_size
        if size > MAX_CATALOG_BYTES:
            raise CatalogError([f"{shown}: catalog is too large (the limit is 8 MiB)"])
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CatalogError([f"{shown}: cannot read catalog: not UTF-8 text"]) from None
    except OSError as err:
        raise CatalogError([f"{shown}: cannot read catalog: {err.strerror}"]) from None
    return parse_catalog(text, shown)
