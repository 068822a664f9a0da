"""Reading a LiteLLM Router / proxy config (YAML) into typed records, each value with the
key path and the line and column it came from.

Only the structure is checked here (a mapping at the top, `model_list` a list); what each
value means, and whether policyctl can express it, is `translate`'s business. A problem
with the structure is a `ConfigError` whose lines read `file:line:col: message`. Every
key the records do not name is kept in `other`, so that the translation can say, key by
key, what it did not carry over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from engine.errors import PolicyctlError
from engine.yaml_positions import Positions, YamlSyntaxError, load_positioned

MAX_CONFIG_BYTES = 8 << 20  # 8 MiB: a config with thousands of deployments is far smaller
ENV_PREFIX = "os.environ/"  # LiteLLM reads such a value from the environment at start


class ConfigError(PolicyctlError, located=True):
    """A config that cannot be read as a LiteLLM config: one `file:line:col: message` line
    per problem."""

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True, slots=True)
class Where:
    """A key path in the config (`model_list[2].litellm_params.model`) and its position
    (1-based line and column; None when the value has none, e.g. a default)."""

    path: str
    line: int | None = None
    col: int | None = None

    def located(self, source: str) -> str:
        if self.line is None:
            return f"{source}: {self.path}"
        return f"{source}:{self.line}:{self.col}: {self.path}"


@dataclass(frozen=True, slots=True)
class Value:
    """A value from the config and where it is."""

    value: Any
    where: Where

    @property
    def from_environment(self) -> bool:
        """`os.environ/NAME`: LiteLLM reads it from the environment, policyctl never does."""
        return isinstance(self.value, str) and self.value.startswith(ENV_PREFIX)


@dataclass(frozen=True, slots=True)
class Deployment:
    """One `model_list` entry: the group clients name (`model_name`), the model LiteLLM
    calls (`litellm_params.model`), what the router reads of it, and every other key."""

    index: int
    where: Where  # model_list[i]
    group: Value | None  # model_name
    model: Value | None  # litellm_params.model
    provider: Value | None  # litellm_params.custom_llm_provider
    rpm: Value | None  # litellm_params.rpm, else the deployment's own rpm
    tpm: Value | None
    weight: Value | None  # litellm_params.weight
    region: Value | None  # litellm_params.region_name
    prices: tuple[Value, ...]  # litellm_params.*_cost_per_* (custom pricing)
    model_info: tuple[tuple[str, Value], ...]  # each model_info key and its value
    params: tuple[tuple[str, Value], ...]  # every other litellm_params key
    other: tuple[tuple[str, Value], ...]  # every other key of the entry

    def info(self, key: str) -> Value | None:
        return next((v for k, v in self.model_info if k == key), None)


@dataclass(frozen=True, slots=True)
class RouterSettings:
    """The settings the translation reads, from `router_settings` (else `litellm_settings`,
    where the proxy also accepts them)."""

    routing_strategy: Value | None = None
    routing_strategy_args: Value | None = None
    fallbacks: Value | None = None
    default_fallbacks: Value | None = None
    context_window_fallbacks: Value | None = None
    content_policy_fallbacks: Value | None = None
    model_group_alias: Value | None = None
    allowed_fails: Value | None = None
    cooldown_time: Value | None = None
    disable_cooldowns: Value | None = None
    enable_pre_call_checks: Value | None = None
    num_retries: Value | None = None


SETTINGS = tuple(f.name for f in fields(RouterSettings))
SECTIONS = ("router_settings", "litellm_settings")  # where settings are read, in this order


@dataclass(frozen=True, slots=True)
class LiteLLMConfig:
    source: str  # the file as the user named it
    deployments: tuple[Deployment, ...]
    settings: RouterSettings
    other: tuple[tuple[str, Value], ...]  # every key read by no record, with its path


# ---------------------------------------------------------------- YAML with positions


def _where(positions: Positions, path: str) -> Where:
    found = positions.at.get(path)
    return Where(path, *found) if found else Where(path)


def _load(text: str, source: str) -> tuple[Any, Positions]:
    try:
        return load_positioned(text, source)
    except YamlSyntaxError as err:
        raise ConfigError([str(err)]) from None


def read_text(path: str | os.PathLike[str]) -> str:
    shown = str(path)
    try:
        size = Path(path).stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise ConfigError(
                [
                    f"{shown}: the config is too large ({size:,} bytes; the limit is"
                    f" {MAX_CONFIG_BYTES >> 20} MiB)"
                ]
            )
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise ConfigError([f"{shown}: cannot read the config: {reason}"]) from None


def read_config(path: str | os.PathLike[str]) -> LiteLLMConfig:
    """The config file at `path` as records (ConfigError when it cannot be one)."""
    return parse_config(read_text(path), str(path))


def parse_config(text: str, source: str) -> LiteLLMConfig:
    data, positions = _load(text, source)
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: not a LiteLLM config: expected a mapping with a `model_list`"]
        )
    if "model_list" not in data:
        raise ConfigError([f"{source}: not a LiteLLM config: no `model_list`"])
    models = data["model_list"]
    if not isinstance(models, list):
        where = _where(positions, "model_list")
        raise ConfigError(
            [f"{where.located(source)}: expected a list of deployments (`- model_name: …`)"]
        )
    errors: list[str] = []
    for name in SECTIONS:
        if data.get(name) is not None and not isinstance(data[name], dict):
            where = _where(positions, name)
            errors.append(f"{where.located(source)}: expected a mapping of settings")
    if errors:
        raise ConfigError(errors)

    def value(path: str, raw: Any) -> Value:
        return Value(raw, _where(positions, path))

    deployments = tuple(_deployment(i, item, value, positions) for i, item in enumerate(models))
    other: list[tuple[str, Value]] = []
    found: dict[str, Value] = {}
    for section in SECTIONS:
        for key, raw in (data.get(section) or {}).items():
            path = f"{section}.{key}"
            if key in SETTINGS and key not in found:
                found[key] = value(path, raw)
            else:
                other.append((str(key), value(path, raw)))
    for key, raw in data.items():
        if key not in ("model_list", *SECTIONS):
            other.append((str(key), value(str(key), raw)))
    return LiteLLMConfig(source, deployments, RouterSettings(**found), tuple(other))


_DEPLOYMENT_KEYS = ("model_name", "litellm_params", "model_info", "rpm", "tpm")
_PARAM_KEYS = ("model", "custom_llm_provider", "rpm", "tpm", "weight", "region_name")


def _is_price(key: str) -> bool:
    return "_cost_per_" in key or key.startswith(
        ("cache_read_input_token_cost", "cache_creation_input_token_cost")
    )


def _deployment(index: int, item: Any, value: Any, positions: Positions) -> Deployment:
    base = f"model_list[{index}]"
    entry = item if isinstance(item, dict) else {}
    params = entry.get("litellm_params")
    params = params if isinstance(params, dict) else {}
    info = entry.get("model_info")
    info = info if isinstance(info, dict) else {}

    def get(mapping: dict[str, Any], path: str, key: str) -> Value | None:
        return value(f"{path}.{key}", mapping[key]) if key in mapping else None

    p = f"{base}.litellm_params"
    other = [
        (str(k), value(f"{base}.{k}", v)) for k, v in entry.items() if k not in _DEPLOYMENT_KEYS
    ]
    if not isinstance(item, dict):
        other.append(("", value(base, item)))
    for key in ("litellm_params", "model_info"):
        if key in entry and not isinstance(entry[key], dict):
            other.append((key, value(f"{base}.{key}", entry[key])))
    return Deployment(
        index=index,
        where=_where(positions, base),
        group=get(entry, base, "model_name"),
        model=get(params, p, "model"),
        provider=get(params, p, "custom_llm_provider"),
        rpm=get(params, p, "rpm") or get(entry, base, "rpm"),
        tpm=get(params, p, "tpm") or get(entry, base, "tpm"),
        weight=get(params, p, "weight"),
        region=get(params, p, "region_name"),
        prices=tuple(value(f"{p}.{k}", v) for k, v in params.items() if _is_price(str(k))),
        model_info=tuple((str(k), value(f"{base}.model_info.{k}", v)) for k, v in info.items()),
        params=tuple(
            (str(k), value(f"{p}.{k}", v))
            for k, v in params.items()
            if k not in _PARAM_KEYS and not _is_price(str(k))
        ),
        other=tuple(other),
    )
