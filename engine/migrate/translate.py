"""A LiteLLM config (records of `config`) -> a `.policy` text, a version-2 catalog document
and the report of what was approximated or left out. docs/migrate.md has the mapping.

- Each `model_list` deployment is one catalog model, `provider/id` as LiteLLM calls it
  (`bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0` is provider `bedrock`, id
  `us.anthropic.claude-3-5-sonnet-20240620-v1:0`; a bare `gpt-4o` takes its provider from
  LiteLLM's table). Its prices, limits and capabilities come from LiteLLM's table through
  the catalog importer (`engine.catalog.litellm.convert`), with the deployment's
  `model_info` and custom prices laid over them; a model the table lacks needs them in
  `model_info`. Two deployments of the same model (two API keys) get the provider names
  `openai`, `openai-2`, … so that each keeps its own limits and health.
- Each model group (`model_name`, what clients send as `model`) is a route
  `when request.model == "group"` (or `in [group, aliases…]`) preferring its deployments.
- `routing_strategy` is the strategy of `defaults`; `simple-shuffle` (LiteLLM's default)
  is `model-specific` with LiteLLM's shuffle weights (`weight`, else `rpm`, else `tpm`).
- A deployment's `rpm`/`tpm` are `limit model "provider/id"` per minute.
- `allowed_fails` and `cooldown_time` are `cooldown after N failures for D`.
- `context_window_fallbacks` are routes placed before the group's route, taking requests
  whose input exceeds the group's largest context window.

Credentials, endpoints and other connection settings are never read into the outputs,
and no value that LiteLLM would take from the environment (`os.environ/…`) is copied.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from engine.catalog.litellm import READ_FIELDS, SKIP_REASONS, convert, is_tier_field
from engine.catalog.load import MODEL_ID_PATTERN, NAME_PATTERN
from engine.migrate.config import SETTINGS, Deployment, LiteLLMConfig, Value, Where
from engine.migrate.report import Migration, Note, NoteKind, Report, Translated

# routing_strategy -> (policyctl strategy, how it differs or None)
STRATEGY_MAP: dict[str, tuple[str, str | None]] = {
    "simple-shuffle": ("model-specific", None),
    "latency-based-routing": (
        "latency",
        "`latency` ranks by p95 over the policy's `window` (catalog priors until `min_samples`"
        " outcomes), where LiteLLM averages recent latencies per deployment",
    ),
    "least-busy": (
        "latency",
        "policyctl does not count requests in flight; `latency` picks the fastest deployment"
        " by measured p95 instead of the least busy one",
    ),
    "usage-based-routing": (
        "round-robin",
        "policyctl has no usage-aware strategy: `round-robin` spreads requests evenly, and"
        " each deployment's rpm/tpm is a `limit model` that routing steps past when it is full",
    ),
    "usage-based-routing-v2": (
        "round-robin",
        "policyctl has no usage-aware strategy: `round-robin` spreads requests evenly, and"
        " each deployment's rpm/tpm is a `limit model` that routing steps past when it is full",
    ),
    "cost-based-routing": ("cost", None),
}
DEFAULT_STRATEGY = "simple-shuffle"  # LiteLLM's, when the config names none
DEFAULT_COOLDOWN_S = 5.0  # litellm.constants.DEFAULT_COOLDOWN_TIME_SECONDS
SHUFFLE_METRICS = ("weight", "rpm", "tpm")  # litellm simple_shuffle: the first that is set

# settings whose meaning stays with LiteLLM: (message, key for the counts)
SETTING_NOTES: dict[str, str] = {
    "routing_strategy_args": "strategy tuning has no policyctl equivalent; `window` and"
    " `min_samples` in `defaults` set how measurements count",
    "fallbacks": "policyctl's fallback chain lists only models among a route's own candidates,"
    " so another group's deployments cannot follow; the pairs are written as comments in the"
    " policy: keep these fallbacks in the Router, or add the deployments to the route by hand",
    "default_fallbacks": "policyctl's fallback chain lists only models among a route's own"
    " candidates; keep default_fallbacks in the Router",
    "content_policy_fallbacks": "policyctl does not see the provider's answer; keep"
    " content_policy_fallbacks in the Router",
    "num_retries": "retries are the caller's (LiteLLM's): a decision's `fallbacks` is the order"
    " to retry in",
}
# litellm_params keys that are routing facts policyctl cannot express
PARAM_NOTES: dict[str, str] = {
    "tags": 'tag-based routing: write a route `when "TAG" in request.tags` by hand',
    "adaptive_router_config": "LiteLLM's adaptive router has no policyctl equivalent",
    "order": "deployment priority: use `strategy failover` and the `prefer` order by hand",
}
PARALLEL = "max_parallel_requests"  # a deployment's in-flight cap: `concurrent N`
# model_info keys read here (the importer reads the LiteLLM price-table fields)
INFO_KEYS = ("id", "base_model")
_BEDROCK_ROUTES = ("converse/", "invoke/")
_BEDROCK_REGIONS = frozenset({"us", "eu", "apac", "global", "au", "jp", "us-gov", "ca"})
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:[.-]+[A-Za-z0-9_]+)*")
_NAME = re.compile(NAME_PATTERN)
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_RESERVED = frozenset(
    {
        "default",
        "when",
        "route",
        "limit",
        "defaults",
        "catalog",
        "and",
        "or",
        "not",
        "in",
        "contains",
        "true",
        "false",
        "null",
    }
)
# price-table fields a deployment's model_info may set: what the importer reads of an entry,
# but its identity (provider, aliases), which the deployment itself gives
_TABLE_FIELDS = READ_FIELDS - {"litellm_provider", "aliases"}


def _table_field(key: str) -> bool:
    return key in _TABLE_FIELDS or is_tier_field(key)


@dataclass
class _Group:
    name: str
    where: Where
    members: list[_Model] = field(default_factory=list)
    deployments: int = 0
    aliases: list[str] = field(default_factory=list)


@dataclass
class _Model:
    deployment: Deployment
    provider: str
    id: str
    document: dict[str, Any]
    table_key: str | None
    weight: float | None = None


class _Notes:
    def __init__(self) -> None:
        self.items: list[Note] = []
        self.left: Counter[str] = Counter()

    def add(self, kind: NoteKind, where: Where, message: str, key: str) -> None:
        self.items.append(Note(kind, where, message, key))

    def untranslated(self, value: Value, message: str, key: str) -> None:
        self.add("untranslated", value.where, message, key)

    def approximated(self, value: Value, message: str, key: str) -> None:
        self.add("approximated", value.where, message, key)


# ---------------------------------------------------------------- small helpers


def _code(value: Any, limit: int = 60) -> str:
    """A config value in backticks, on one line and short. A list or mapping is named, not
    printed (through YAML aliases it may stand for billions of values)."""
    if isinstance(value, list | dict):
        return "a list" if isinstance(value, list) else "a mapping"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return f"`{text}`"


def _string(text: str) -> str:
    """A policy string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n").replace("\t", "\\t") + '"'


def _number(value: float) -> str:
    if value == int(value):
        return str(int(value))
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text != "0" else "0.000001"


def _duration(seconds: float) -> str:
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def _comment(text: str) -> str:
    """Text for a `#` comment: on one line."""
    return text if text.isprintable() else repr(text)[1:-1]


def _ref(provider: str, model_id: str) -> str:
    shown = model_id if _WORD.fullmatch(model_id) else _string(model_id)
    return f"{provider}/{shown}"


def _route_name(group: str, taken: set[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", group).strip(".-")
    name = re.sub(r"([.-])[.-]+", r"\1", name)
    if not name or not (name[0].isalpha() or name[0] == "_"):
        name = f"g-{name}" if name else "group"
    if name.lower() in _RESERVED:
        name += "-group"
    base, n = name, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _positive(value: Value) -> float | None:
    raw = value.value
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not raw > 0:
        return None
    return float(raw) if raw < float("inf") else None


# ---------------------------------------------------------------- deployments


def _entry(table: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    raw = table.get(key)
    if isinstance(raw, Mapping) and isinstance(raw.get("alias_of"), str):
        raw = table.get(raw["alias_of"])
    return raw if isinstance(raw, Mapping) else None


def _locate(
    d: Deployment, model: str, table: Mapping[str, Any]
) -> tuple[str, str, str | None] | str:
    """(provider, id, the table key its prices come from), or why it cannot be placed."""
    if d.provider is not None and isinstance(d.provider.value, str) and d.provider.value:
        provider = d.provider.value
        model_id = model.removeprefix(f"{provider}/")
    elif (raw := _entry(table, model)) is not None and isinstance(
        raw.get("litellm_provider"), str
    ):  # a key of the table: `gpt-4o`, `claude-haiku-4-5`, `ollama/llama2`
        provider = raw["litellm_provider"]
        model_id = model.removeprefix(f"{provider}/")
    elif "/" in model:  # `provider/model`, as LiteLLM reads it
        provider, model_id = model.split("/", 1)
    else:
        return (
            f"cannot tell the provider of {_code(model)}: LiteLLM's table does not have it;"
            " write it as `provider/model` (or set custom_llm_provider) and give model_info"
            " max_input_tokens, max_output_tokens, input_cost_per_token and"
            " output_cost_per_token"
        )
    names: list[str] = []
    base = d.info("base_model")
    if base is not None and isinstance(base.value, str):
        names.append(base.value)
    names += [model, f"{provider}/{model_id}"]
    bare: list[str] = [model_id]
    if provider.startswith("bedrock"):  # `converse/…`, and cross-region `us.…`, priced as one
        plain = model_id
        for route in _BEDROCK_ROUTES:
            plain = plain.removeprefix(route)
        bare.append(plain)
        region, dot, rest = plain.partition(".")
        if dot and region in _BEDROCK_REGIONS:
            bare.append(rest)
    key = next((n for n in names if _entry(table, n) is not None), None)
    if key is None:  # the id alone names an entry only of the same provider (or family)
        family = provider.split("_", 1)[0]
        key = next(
            (
                n
                for n in bare
                if (e := _entry(table, n)) is not None
                and str(e.get("litellm_provider", "")).split("_", 1)[0] == family
            ),
            None,
        )
    return provider, model_id, key


def _deployment(
    d: Deployment,
    table: Mapping[str, Any],
    notes: _Notes,
    today: date | None,
) -> _Model | None:
    """The deployment as a catalog model, or None (with a note saying why)."""
    if d.model is None:
        notes.add(
            "untranslated",
            d.where,
            "no `litellm_params.model`: nothing to route to",
            "litellm_params.model",
        )
        return None
    model = d.model.value
    if d.model.from_environment:
        notes.untranslated(
            d.model,
            "the model is read from the environment when LiteLLM starts; write the model name",
            "litellm_params.model",
        )
        return None
    if not isinstance(model, str) or not model:
        notes.untranslated(d.model, "the model is not a name", "litellm_params.model")
        return None
    if "*" in model:
        notes.untranslated(
            d.model,
            f"wildcard {_code(model)} passes any model name through; policyctl routes among"
            " catalog models: import the provider's models (`policyctl catalog import litellm"
            " --providers P`) and write routes for them",
            "wildcard model",
        )
        return None
    found = _locate(d, model, table)
    if isinstance(found, str):
        notes.untranslated(d.model, found, "unknown model")
        return None
    provider, model_id, key = found
    if not _NAME.fullmatch(provider) or not _WORD.fullmatch(provider):
        notes.untranslated(
            d.model, f"provider {_code(provider)} cannot be named in a policy", "unknown model"
        )
        return None
    if not _MODEL_ID.fullmatch(model_id):
        notes.untranslated(
            d.model, f"{_code(model_id)} cannot be a catalog model id", "unknown model"
        )
        return None
    entry: dict[str, Any] = dict(_entry(table, key) or {}) if key is not None else {}
    for price in d.prices:  # custom pricing in litellm_params
        if price.from_environment:
            notes.untranslated(
                price, "read from the environment; write the number", "litellm_params price"
            )
        else:
            entry[price.where.path.rsplit(".", 1)[1]] = price.value
    for name, value in d.model_info:
        if _table_field(name):
            entry[name] = value.value
    entry["litellm_provider"] = provider
    entry.setdefault("mode", "chat")
    entry.pop("alias_of", None)
    entry.pop("aliases", None)
    result = convert({f"{provider}/{model_id}": entry}, keep_free=True)
    if not result.document["models"]:
        skipped = result.report.skipped[0]
        if key is None and skipped.reason in ("no-price", "no-limits"):
            message = (
                f"{_code(model)} is not in LiteLLM's price table: give model_info"
                " max_input_tokens, max_output_tokens, input_cost_per_token and"
                " output_cost_per_token"
            )
            if provider.startswith("azure") and d.info("base_model") is None:
                message += " (or, for an Azure deployment, `model_info.base_model: azure/MODEL`)"
            notes.untranslated(d.model, message, "unknown model")
        else:
            detail = f" ({skipped.detail})" if skipped.detail else ""
            notes.untranslated(
                d.model,
                f"{_code(model)}: {SKIP_REASONS[skipped.reason]}{detail}",
                f"model skipped: {skipped.reason}",
            )
        return None
    document = result.document["models"][0]
    retires = document.get("retires")
    if today is not None and retires is not None and retires <= today.isoformat():
        notes.approximated(
            d.model,
            f"{_code(model)} is retired on {retires} by LiteLLM's table: no decision picks it"
            " (LiteLLM would still call it); delete its `retires` in the catalog to route to it",
            "retired model",
        )
    if d.region is not None:
        region = d.region.value
        if isinstance(region, str) and _NAME.fullmatch(region):
            document["regions"] = [region]
        else:
            notes.untranslated(d.region, "not a region name", "litellm_params.region_name")
    return _Model(d, provider, model_id, document, key)


def _weights(group: _Group, notes: _Notes) -> None:
    """LiteLLM's simple-shuffle weights: the first of `weight`, `rpm`, `tpm` that some
    deployment of the group sets. A deployment without it is drawn only when the weighted
    ones are out: here, a weight a thousand times under the smallest."""
    for metric in SHUFFLE_METRICS:
        values: list[float | None] = []
        for m in group.members:
            v = getattr(m.deployment, metric)
            values.append(_positive(v) if v is not None else None)
        given = [v for v in values if v is not None]
        if not given:
            continue
        if len(given) == len(values) and len(set(given)) == 1:
            return  # all equal: an even draw
        tiny = float(_number(min(given) / 1000))
        for m, v in zip(group.members, values, strict=True):
            m.weight = v if v is not None else tiny
        missing = [m for m, v in zip(group.members, values, strict=True) if v is None]
        if missing:
            indexes = ", ".join(f"model_list[{m.deployment.index}]" for m in missing)
            notes.add(
                "approximated",
                missing[0].deployment.where,
                f"group {_code(group.name)}: {indexes} set no `{metric}`, so LiteLLM's shuffle"
                f" picks them only when the others are out; here weight {_number(tiny)}",
                "shuffle weight",
            )
        return


# ---------------------------------------------------------------- settings


def _group_pairs(value: Value, notes: _Notes) -> list[tuple[str, list[str]]]:
    """A LiteLLM fallbacks list (`[{group: [group, …]}, …]`) as pairs; problems noted."""
    pairs: list[tuple[str, list[str]]] = []
    items = value.value if isinstance(value.value, list) else None
    if items is None:
        notes.untranslated(value, "expected a list of `{group: [groups]}`", value.where.path)
        return pairs
    for item in items:
        if not isinstance(item, dict):
            notes.untranslated(value, "expected a list of `{group: [groups]}`", value.where.path)
            continue
        for source, targets in item.items():
            names = targets if isinstance(targets, list) else [targets]
            if not isinstance(source, str) or not all(isinstance(t, str) for t in names):
                notes.untranslated(value, "expected model group names", value.where.path)
                continue
            pairs.append((source, list(names)))
    return pairs


def _strategy(config: LiteLLMConfig, notes: _Notes) -> tuple[str, str]:
    """(policyctl strategy, the LiteLLM strategy it stands for)."""
    setting = config.settings.routing_strategy
    if setting is None:
        return STRATEGY_MAP[DEFAULT_STRATEGY][0], DEFAULT_STRATEGY
    name = setting.value
    if isinstance(name, str) and name in STRATEGY_MAP:
        strategy, differs = STRATEGY_MAP[name]
        if differs:
            notes.approximated(
                setting, f"`{name}` is `strategy {strategy}`: {differs}", "routing_strategy"
            )
        return strategy, name
    known = ", ".join(f"`{s}`" for s in STRATEGY_MAP)
    notes.untranslated(
        setting,
        f"unknown routing strategy {_code(name)} (known: {known}); LiteLLM's default"
        " simple-shuffle is used",
        "routing_strategy",
    )
    return STRATEGY_MAP[DEFAULT_STRATEGY][0], DEFAULT_STRATEGY


def _cooldown(config: LiteLLMConfig, notes: _Notes) -> str | None:
    s = config.settings
    if s.disable_cooldowns is not None and s.disable_cooldowns.value is True:
        return None
    if s.allowed_fails is None:
        if s.cooldown_time is not None:
            notes.untranslated(
                s.cooldown_time,
                "without `allowed_fails` LiteLLM cools a deployment down by its failure rate in"
                " the current minute, which policyctl does not; set `allowed_fails` to translate"
                " it, or use `min_success_rate`",
                "cooldown_time",
            )
        return None
    fails = s.allowed_fails.value
    if isinstance(fails, bool) or not isinstance(fails, int) or fails < 0:
        notes.untranslated(s.allowed_fails, "not a whole number", "allowed_fails")
        return None
    seconds = DEFAULT_COOLDOWN_S
    if s.cooldown_time is not None:
        t = _positive(s.cooldown_time)
        if t is None:
            notes.untranslated(s.cooldown_time, "not a positive number of seconds", "cooldown_time")
        else:
            seconds = t
    after = fails + 1
    notes.approximated(
        s.allowed_fails,
        f"`cooldown after {after} failures for {_duration(seconds)}`: LiteLLM counts the"
        f" failures of the current minute (more than {fails}), policyctl consecutive ones",
        "allowed_fails",
    )
    return f"cooldown after {after} failure{'s' if after != 1 else ''} for {_duration(seconds)}"


# ---------------------------------------------------------------- the whole config


def translate(
    config: LiteLLMConfig,
    table: Mapping[str, Any],
    catalog_name: str,
    today: date | None = None,
) -> Migration:
    """The policy (naming `catalog_name` as its catalog), the catalog and the report.
    `today` (the engine's clock): a deployment whose model LiteLLM's table retires by then
    is noted, since no decision picks it."""
    notes = _Notes()
    groups: dict[str, _Group] = {}
    models: list[_Model] = []
    for d in config.deployments:
        if d.group is None or not isinstance(d.group.value, str) or not d.group.value:
            where = d.group.where if d.group is not None else d.where
            what = "no `model_name`" if d.group is None else "`model_name` is not a name"
            notes.add(
                "untranslated", where, f"{what}: clients cannot name this deployment", "model_name"
            )
            _deployment_keys(d, notes)
            continue
        name = d.group.value
        group = groups.setdefault(name, _Group(name, d.group.where))
        group.deployments += 1
        model = _deployment(d, table, notes, today)
        _deployment_keys(d, notes)
        if model is None:
            continue
        group.members.append(model)
        models.append(model)
    _name_providers(models)
    for g in groups.values():
        if not g.members:
            notes.add(
                "untranslated",
                g.where,
                f"model group {_code(g.name)}: no deployment"
                " translated; requests for it take the default route",
                "model group",
            )
    strategy, litellm_strategy = _strategy(config, notes)
    if strategy == "model-specific":
        for g in groups.values():
            _weights(g, notes)
    _aliases(config, groups, notes)
    cooldown = _cooldown(config, notes)
    context = _context_fallbacks(config, groups, notes)
    fallback_comments = _fallback_comments(config, groups, notes)
    # enable_pre_call_checks: policyctl always checks context windows, nothing to say
    _settings_notes(config, notes)
    limits = _limits(models, notes)
    notes.items.sort(key=_config_order)
    routed = [g for g in groups.values() if g.members]
    report = Report(
        source=config.source,
        deployments=len(config.deployments),
        translated=tuple(
            Translated(
                m.deployment.index,
                str(m.deployment.group.value) if m.deployment.group is not None else "",
                m.provider,
                m.id,
                m.table_key,
                _info_id(m.deployment),
            )
            for m in models
        ),
        groups=tuple(groups),
        routes=tuple(g.name for g in routed),
        notes=tuple(notes.items),
        left=tuple(sorted(notes.left.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    if not models:
        return Migration(None, None, report)
    text = _policy_text(
        config,
        catalog_name,
        strategy,
        litellm_strategy,
        cooldown,
        routed,
        context,
        fallback_comments,
        limits,
        models,
    )
    document = {"version": 2, "models": [m.document for m in models]}
    return Migration(text, document, report)


def _info_id(d: Deployment) -> str | None:
    v = d.info("id")
    return str(v.value) if v is not None and isinstance(v.value, str | int) else None


def _config_order(note: Note) -> tuple[int, int, str]:
    w = note.where
    return (w.line if w.line is not None else 1 << 30, w.col or 0, w.path)


def _name_providers(models: list[_Model]) -> None:
    """Two deployments of one `provider/id` (two keys or endpoints): `openai`, `openai-2`…"""
    seen: set[tuple[str, str]] = {(m.provider, m.id) for m in models}
    counts: Counter[tuple[str, str]] = Counter()
    for m in models:
        counts[(m.provider, m.id)] += 1
        n = counts[(m.provider, m.id)]
        if n == 1:
            continue
        while (f"{m.provider}-{n}", m.id) in seen:
            n += 1
        m.provider = f"{m.provider}-{n}"
        seen.add((m.provider, m.id))
        m.document["provider"] = m.provider


def _deployment_keys(d: Deployment, notes: _Notes) -> None:
    """Notes for the deployment's keys that no record reads."""
    for name, value in d.other:
        if name == "":
            notes.untranslated(
                value,
                "not a deployment (expected a mapping with model_name and litellm_params)",
                "model_list item",
            )
        elif name in ("litellm_params", "model_info"):
            notes.untranslated(value, "expected a mapping", name)
        else:
            notes.untranslated(value, "no policyctl equivalent", name)
    for name, value in d.params:
        if name == PARALLEL:  # translated: `limit model … concurrent N` (`_limits`)
            continue
        if name in PARAM_NOTES:
            notes.untranslated(value, PARAM_NOTES[name], f"litellm_params.{name}")
        else:
            notes.left[name] += 1
    for name, value in d.model_info:
        if not _table_field(name) and name not in INFO_KEYS:
            notes.untranslated(value, "no policyctl equivalent", f"model_info.{name}")
    for metric in (d.rpm, d.tpm, d.weight):
        if metric is not None and metric.from_environment:
            notes.untranslated(
                metric,
                "read from the environment; write the number",
                metric.where.path.rsplit(".", 1)[1],
            )


def _aliases(config: LiteLLMConfig, groups: dict[str, _Group], notes: _Notes) -> None:
    setting = config.settings.model_group_alias
    if setting is None:
        return
    if not isinstance(setting.value, dict):
        notes.untranslated(
            setting, "expected a mapping of alias to model group", "model_group_alias"
        )
        return
    for alias, target in setting.value.items():
        name = target.get("model") if isinstance(target, dict) else target
        if not isinstance(name, str) or name not in groups or not groups[name].members:
            notes.untranslated(
                setting,
                f"alias {_code(alias)}: {_code(name)} is not a translated model group",
                "model_group_alias",
            )
            continue
        groups[name].aliases.append(str(alias))


@dataclass
class _ContextRoute:
    source: _Group
    targets: list[_Model]
    above: int


def _context_fallbacks(
    config: LiteLLMConfig, groups: dict[str, _Group], notes: _Notes
) -> list[_ContextRoute]:
    setting = config.settings.context_window_fallbacks
    if setting is None:
        return []
    routes: list[_ContextRoute] = []
    for source, targets in _group_pairs(setting, notes):
        g = groups.get(source)
        if g is None or not g.members:
            what = (
                "no model group of model_list"
                if g is None
                else "a group with no deployment translated"
            )
            notes.untranslated(setting, f"{_code(source)}: {what}", "context_window_fallbacks")
            continue
        chosen: list[_Model] = []
        for t in targets:
            tg = groups.get(t)
            if tg is None or not tg.members:
                what = (
                    "no model group of model_list"
                    if tg is None
                    else "a group with no deployment translated"
                )
                notes.untranslated(
                    setting, f"{_code(source)} -> {_code(t)}: {what}", "context_window_fallbacks"
                )
                continue
            chosen.extend(m for m in tg.members if m not in chosen)
        if not chosen:
            continue
        above = max(int(m.document["context_window"]) for m in g.members)
        routes.append(_ContextRoute(g, chosen, above))
        notes.approximated(
            setting,
            f"{_code(source)}: requests whose input exceeds {above:,} tokens (the group's largest"
            " context window) go to " + ", ".join(_code(t) for t in targets) + "; one whose input"
            " fits but whose input plus max_tokens does not is denied rather than passed on",
            "context_window_fallbacks",
        )
    return routes


def _fallback_comments(
    config: LiteLLMConfig, groups: dict[str, _Group], notes: _Notes
) -> list[str]:
    setting = config.settings.fallbacks
    if setting is None:
        return []
    pairs = _group_pairs(setting, notes)
    return [_comment(f"{source} -> {', '.join(targets)}") for source, targets in pairs]


def _settings_notes(config: LiteLLMConfig, notes: _Notes) -> None:
    s = config.settings
    for name in (
        "routing_strategy_args",
        "fallbacks",
        "default_fallbacks",
        "content_policy_fallbacks",
        "num_retries",
    ):
        value = getattr(s, name)
        if value is not None:
            notes.untranslated(value, SETTING_NOTES[name], name)
    for name, value in config.other:
        path = value.where.path
        if path.startswith("environment_variables") or name in (
            "redis_host",
            "redis_port",
            "redis_password",
            "redis_url",
        ):
            notes.left[name] += 1
        elif "." in path:
            section = path.split(".", 1)[0]
            if name in SETTINGS:  # given in both sections: the Router takes router_settings'
                message = f"also set in `router_settings.{name}`, which the Router uses"
            elif section == "litellm_settings":
                message = "not routing policy (LiteLLM's own settings)"
            else:
                message = "no policyctl equivalent"
            notes.untranslated(value, message, name)
        else:
            notes.untranslated(value, "a proxy section policyctl does not read", name)


def _limits(models: list[_Model], notes: _Notes) -> list[str]:
    lines: list[tuple[str, str]] = []
    for m in models:
        key = _string(f"{m.provider}/{m.id}")
        for metric, unit in ((m.deployment.rpm, ""), (m.deployment.tpm, "tokens ")):
            if metric is None or metric.from_environment:
                continue
            amount = _positive(metric)
            if amount is None:
                notes.untranslated(
                    metric, "not a positive number", metric.where.path.rsplit(".", 1)[1]
                )
                continue
            lines.append((f"limit model {key} {unit}{_number(amount)} per 1m", metric.where.path))
        parallel = next((v for k, v in m.deployment.params if k == PARALLEL), None)
        if parallel is not None:
            count = None if parallel.from_environment else _positive(parallel)
            if count is None or not float(count).is_integer():
                notes.untranslated(
                    parallel, "not a positive whole number", f"litellm_params.{PARALLEL}"
                )
            else:  # LiteLLM's cap per worker; a `concurrent` limit holds across instances
                lines.append((f"limit model {key} concurrent {int(count)}", parallel.where.path))
    width = max((len(text) for text, _ in lines), default=0)
    return [f"{text:<{width}}  # {path}" for text, path in lines]


def _policy_text(
    config: LiteLLMConfig,
    catalog_name: str,
    strategy: str,
    litellm_strategy: str,
    cooldown: str | None,
    routed: list[_Group],
    context: list[_ContextRoute],
    fallbacks: list[str],
    limits: list[str],
    models: list[_Model],
) -> str:
    out = [
        f"# Translated from the LiteLLM config {_comment(config.source)} by"
        " `policyctl migrate litellm`.",
        "# Clients name a model group as `model`; each group is a route over its deployments.",
        "# Deployments (catalog model = model_list entry):",
    ]
    for m in models:
        info = _info_id(m.deployment)
        shown = f" (model_info.id {_comment(info)})" if info else ""
        out.append(f"#   {m.provider}/{m.id} = model_list[{m.deployment.index}]{shown}")
    out += ["", f"catalog {_string(catalog_name)}", "", "defaults {"]
    out.append(f"    strategy {strategy:<24} # routing_strategy: {litellm_strategy}")
    if cooldown is not None:
        out.append(f"    {cooldown}")
    out.append("}")
    taken: set[str] = set()
    names_of = {g.name: _route_name(g.name, taken) for g in routed}
    context_by_group = {c.source.name: c for c in context}
    fallback_lines = fallbacks
    for g in routed:
        names = [g.name, *g.aliases]
        when = (
            f"request.model == {_string(g.name)}"
            if len(names) == 1
            else f"request.model in [{', '.join(_string(n) for n in names)}]"
        )
        c = context_by_group.get(g.name)
        if c is not None:
            route = _route_name(f"{g.name}-long", taken)
            out += [
                "",
                f"# context_window_fallbacks: input over {c.above} tokens",
                f"route {route} when {when} and request.input_tokens > {c.above} {{",
            ]
            out += _prefers(c.targets)
            out.append("}")
        out += ["", f"route {names_of[g.name]} when {when} {{"]
        out += _prefers(g.members)
        out.append("}")
    if fallback_lines:
        out += ["", "# fallbacks (LiteLLM, not translated: see docs/migrate.md):"]
        out += [f"#   {line}" for line in fallback_lines]
    if limits:
        out += ["", "# rpm and tpm of each deployment"]
        out += limits
    return "\n".join(out) + "\n"


def _prefers(members: Iterable[_Model]) -> list[str]:
    lines = []
    for m in members:
        weight = f" weight {_number(m.weight)}" if m.weight is not None else ""
        lines.append(f"    prefer {_ref(m.provider, m.id)}{weight}")
    return lines
