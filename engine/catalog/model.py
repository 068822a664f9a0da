"""The model catalog: capabilities, prices and latency priors (YAML -> pydantic -> frozen objects).

Pydantic validates once at the edge; routing reads plain frozen `Model` objects.
Every problem is reported (not just the first), one complete line each, naming the file,
the model and the field:

    policies/models.yaml: model `gpt-4` (models[8]): field `pricing.input`: input should be
    greater than or equal to 0

YAML is read with the safe loader only (libyaml's when available). Before it builds
anything, one pass over the parse events refuses nesting deeper than `MAX_NESTING` (libyaml
composes recursively and would crash the process) and reports duplicate keys (YAML would
silently keep the last one).
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.diagnostics import did_you_mean
from engine.errors import PolicyctlError
from engine.units import MAX_TOKENS

MAX_CATALOG_BYTES = 8 << 20  # 8 MiB
MAX_NESTING = 64  # a catalog needs 4 levels
CAPABILITIES = ("streaming", "tools", "vision", "json")
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
_MERGE_TAG = "tag:yaml.org,2002:merge"

try:  # the C loader when PyYAML was built with libyaml
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


class CatalogError(PolicyctlError, located=True):
    """A catalog that cannot be used; `messages` holds one complete line per problem."""

    messages: list[str]

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
    supports: frozenset[str]  # a subset of CAPABILITIES
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    latency_p50_ms: float
    latency_p95_ms: float
    regions: tuple[str, ...]
    index: int  # position in the catalog (0-based), for stable tie-breaking

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.id}"

    def cost(self, input_tokens: float, output_tokens: float) -> float:
        """Estimated USD for a request of this size."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1e6


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Model, ...]
    source: str  # the path (or name) it was loaded from
    digest: str  # sha256 hex of the text (of the file's bytes, for `load_catalog`)
    # lookups, computed once from `models`
    _by_name: dict[tuple[str, str], Model] = field(init=False, repr=False, compare=False)
    _by_provider: dict[str, tuple[Model, ...]] = field(init=False, repr=False, compare=False)
    _names: dict[str | None, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[tuple[str, str], Model] = {}
        by_provider: dict[str, list[Model]] = {}
        names: dict[str | None, list[str]] = {None: []}
        for m in self.models:  # ids first, so an id always wins over another model's alias
            by_name.setdefault((m.provider, m.id), m)
        for m in self.models:
            by_provider.setdefault(m.provider, []).append(m)
            for name in (m.id, *m.aliases):
                by_name.setdefault((m.provider, name), m)
                for group in (names.setdefault(m.provider, []), names[None]):
                    if name not in group:
                        group.append(name)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_provider", {p: tuple(ms) for p, ms in by_provider.items()})
        object.__setattr__(self, "_names", names)

    @property
    def providers(self) -> tuple[str, ...]:
        """Provider names in order of first appearance."""
        return tuple(self._by_provider)

    def by_provider(self, provider: str) -> tuple[Model, ...]:
        return self._by_provider.get(provider, ())

    def find(self, provider: str, name: str) -> Model | None:
        """The model of `provider` whose id or alias is `name`."""
        return self._by_name.get((provider, name))

    def names(self, provider: str | None = None) -> list[str]:
        """Ids and aliases (of one provider, or of all), in catalog order, for did-you-mean."""
        return list(self._names.get(provider, ()))


# ---------------------------------------------------------------- the YAML schema

Capability = Literal["streaming", "tools", "vision", "json"]
Name = Annotated[str, Field(pattern=_NAME)]
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Pricing(BaseModel):
    model_config = _STRICT
    input: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    output: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _LatencyPrior(BaseModel):
    model_config = _STRICT
    p50: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    p95: Annotated[float, Field(gt=0, allow_inf_nan=False)]

    @model_validator(mode="after")
    def _ordered(self) -> _LatencyPrior:
        if self.p50 > self.p95:
            raise ValueError(f"p50 ({self.p50:g}) is greater than p95 ({self.p95:g})")
        return self


class _ModelSpec(BaseModel):
    model_config = _STRICT
    id: Name
    provider: Name
    aliases: list[Name] = []
    context_window: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    max_tokens: Annotated[int, Field(gt=0, le=MAX_TOKENS)]
    supports: list[Capability] = []
    pricing: _Pricing
    latency_prior_ms: _LatencyPrior
    regions: list[Name] = []


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
        info = cls.model_fields.get(part) if isinstance(part, str) else None
        nested = info.annotation if info is not None else None
        if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
            return None
        cls = nested
    return cls


def _fields_of(cls: type[BaseModel]) -> str:
    names = [f"`{n}`" for n in cls.model_fields]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def _problem(err: dict[str, Any]) -> tuple[str, str]:
    """(dotted field path, message) for one pydantic error."""
    loc, kind = tuple(err["loc"]), err["type"]
    if kind == "invalid_key":  # a key that is not a string: the key is the last part
        return _dotted((*loc[:-1], str(loc[-1]))), "field names are strings"
    path = _dotted(loc)
    if kind == "literal_error":
        return path, "unknown capability; use " + ", ".join(f"`{c}`" for c in CAPABILITIES)
    if kind == "string_pattern_mismatch":
        value = err.get("input")
        if value == "":
            return path, "must not be empty"
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


def _names_of(spec: _ModelSpec | None, raw: dict[Any, Any]) -> tuple[str, list[str]]:
    """(provider, [id, *aliases]) of a model, valid or not (then whatever names are strings)."""
    if spec is not None:
        return spec.provider, [spec.id, *spec.aliases]
    provider, model_id, aliases = raw.get("provider"), raw.get("id"), raw.get("aliases")
    if not isinstance(provider, str):
        return "", []
    names = [model_id] if isinstance(model_id, str) else []
    if isinstance(aliases, list):
        names.extend(a for a in aliases if isinstance(a, str))
    return provider, names


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
    """Validate catalog YAML text. Raises CatalogError with every problem found."""
    raw_text = text.encode("utf-8", "surrogatepass")
    if len(raw_text) > MAX_CATALOG_BYTES:
        raise _too_large(source, len(raw_text))
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
    for key in sorted(str(k) for k in doc if k != "models"):
        guess = did_you_mean(key, ["models"])
        hint = f"; did you mean `{guess}`?" if guess else ""
        errors.append(f"{source}: unknown top-level field {_code(key)}{hint}")
    raw_models: list[Any] = doc["models"]
    if not raw_models:
        errors.append(f"{source}: the catalog has no models")

    models: list[Model] = []
    seen: dict[tuple[str, str], int] = {}  # (provider, id or alias) -> index of its model
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
        provider, names = _names_of(spec, raw)
        for name in names:
            first = seen.setdefault((provider, name), i)
            if first == i:  # an alias repeating the model's own id or alias: harmless
                continue
            errors.append(
                f"{where}: {_code(f'{provider}/{name}')} is already defined by models[{first}]"
            )
        if spec is None:
            continue
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
                index=i,
            )
        )
    if errors:
        raise CatalogError(errors)
    return Catalog(models=tuple(models), source=source, digest=hashlib.sha256(raw_text).hexdigest())


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
