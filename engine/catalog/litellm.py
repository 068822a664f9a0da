"""Converting LiteLLM's price table (`model_prices_and_context_window*.json`) into a
version-2 catalog document, with a report of what was imported, skipped and left out.

`convert(table)` takes the table as a dict and returns the document (a dict ready to dump
as YAML or JSON, models ordered by provider then id) and an `ImportReport`. Nothing here
imports litellm unless the bundled table cannot be found as a file (`bundled_table`), and
then only with `LITELLM_LOCAL_MODEL_COST_MAP=True`, so litellm never fetches its table.

The mapping (docs/catalog.md has it as a table):

- id: the key minus a leading `<litellm_provider>/`; provider: `litellm_provider`.
- prices: `input_cost_per_token`, `output_cost_per_token`, `cache_read_input_token_cost`,
  `cache_creation_input_token_cost` (USD per token) become USD per 1M tokens;
  `input_cost_per_image` stays USD per image. A Fireworks model without a cache read price
  gets half its input price, as LiteLLM's cost calculator charges.
- tiers: `<price>_above_<N>k_tokens` (any of the four prices) is a tier `above: N*1000`. A
  tier that names only some prices keeps the others from the tier below, as LiteLLM does.
  xAI's thresholds are inclusive (LiteLLM charges the tier from N tokens on), so its tiers
  are `above: N*1000 - 1`, which is the same rule for whole token counts. A `tiered_pricing`
  list (Dashscope's `range: [start, end]`, all-or-nothing) becomes the base price (the range
  from 0) and one tier per further range (`above: start`); ranges that do not follow one
  another from 0 cannot be expressed, and the entry is skipped.
- limits: `context_window` is `max_input_tokens`, `max_tokens` is `max_output_tokens` (else
  LiteLLM's older `max_tokens`). The catalog checks input + max_tokens against
  context_window; `max_input_tokens` is what the model accepts as input, so it is the bound
  that never admits a request the model refuses.
- capabilities: `supports_function_calling` -> tools, `supports_vision` -> vision,
  `supports_response_schema` -> json_schema and json (the table has no JSON-mode flag; a
  model that honours a response schema returns JSON when asked), `supports_pdf_input` ->
  pdf, `supports_audio_input` -> audio, `supports_reasoning` -> reasoning,
  `supports_prompt_caching` -> prompt_caching; streaming for every chat model (LiteLLM
  streams them all) unless `supports_native_streaming` is false.
- `deprecation_date` -> `retires`; `supported_regions` -> `regions`.
- latency priors: `LATENCY_PRIORS` by provider (else `DEFAULT_LATENCY_PRIOR`), which a
  user's file can override (`read_latency_priors`); measured outcomes replace priors.

Skipped (never priced at $0 or approximately): entries whose mode is not chat or
responses, wildcard keys, models priced per second, per request or per character, entries
without per-token prices or without input and output limits, provider names or ids the
catalog cannot hold, and duplicates (two keys that name the same provider and id: the key
spelled `<provider>/<id>` is kept). Every other LiteLLM field of an imported entry (batch,
priority, flex and off-peak prices, per-audio-token prices, web-search fees, ...) is
reported as unmapped, with the number of imported entries that carry it.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import itertools
import json
import math
import os
import re
import textwrap
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.catalog.load import MODEL_ID_PATTERN, NAME_PATTERN
from engine.catalog.model import CAPABILITIES, CatalogError
from engine.diagnostics import did_you_mean
from engine.errors import PolicyctlError
from engine.units import MAX_TOKENS

TABLE_FILE = "model_prices_and_context_window_backup.json"  # inside the litellm package
MODES = ("chat", "responses")
PER_MILLION = 1_000_000
FIREWORKS_CACHE_READ_RATIO = 0.5  # litellm.constants.FIREWORKS_AI_DEFAULT_CACHE_READ_RATE_RATIO
INCLUSIVE_THRESHOLD_PROVIDERS = frozenset({"xai"})  # litellm: _uses_inclusive_token_thresholds

# the catalog's name and id patterns
_NAME = re.compile(NAME_PATTERN)
_MODEL_ID = re.compile(MODEL_ID_PATTERN)
_PRICES = (
    "input_cost_per_token",
    "output_cost_per_token",
    "cache_read_input_token_cost",
    "cache_creation_input_token_cost",
)
_TIER_KEY = re.compile(rf"({'|'.join(_PRICES)})_above_(\d+(?:\.\d+)?)(k?)_tokens")
_PER_SECOND = ("cost_per_second", "input_cost_per_second", "output_cost_per_second")
_PER_REQUEST = ("input_cost_per_request", "output_cost_per_request")
_PER_CHARACTER = ("input_cost_per_character", "output_cost_per_character")

# supports_* flag -> the catalog capabilities it grants
CAPABILITY_FLAGS: dict[str, tuple[str, ...]] = {
    "supports_function_calling": ("tools",),
    "supports_vision": ("vision",),
    "supports_response_schema": ("json", "json_schema"),
    "supports_pdf_input": ("pdf",),
    "supports_audio_input": ("audio",),
    "supports_reasoning": ("reasoning",),
    "supports_prompt_caching": ("prompt_caching",),
}
# fields an imported entry's values are taken from (or that only say what `convert` reads)
_MAPPED = frozenset(
    {
        "litellm_provider",
        "mode",
        *_PRICES,
        "input_cost_per_image",
        "max_input_tokens",
        "max_output_tokens",
        "max_tokens",
        *CAPABILITY_FLAGS,
        "supports_native_streaming",
        "deprecation_date",
        "supported_regions",
        "tiered_pricing",
        "aliases",
    }
)
# every field of an entry `convert` reads: the mapped ones and the prices it skips an entry for
READ_FIELDS = _MAPPED | frozenset((*_PER_SECOND, *_PER_REQUEST, *_PER_CHARACTER))


def is_tier_field(key: str) -> bool:
    """A tiered price field (`input_cost_per_token_above_200k_tokens`, …)."""
    return _TIER_KEY.fullmatch(key) is not None


# Latency priors (p50, p95 in ms) by LiteLLM provider: rough figures for a short chat
# completion (a few hundred tokens out), used only until enough outcomes are measured.
# They are order-of-magnitude guesses from providers' typical behaviour, not measurements;
# override them with `--latency-priors FILE`.
DEFAULT_LATENCY_PRIOR = (1200.0, 3500.0)
LATENCY_PRIORS: dict[str, tuple[float, float]] = {
    "anthropic": (1100.0, 3000.0),
    "azure": (1000.0, 3000.0),
    "azure_ai": (1100.0, 3200.0),
    "bedrock": (1200.0, 3500.0),
    "bedrock_converse": (1200.0, 3500.0),
    "cerebras": (300.0, 900.0),
    "cohere_chat": (900.0, 2800.0),
    "deepseek": (1500.0, 5000.0),
    "fireworks_ai": (700.0, 2200.0),
    "gemini": (900.0, 2800.0),
    "groq": (350.0, 1000.0),
    "mistral": (800.0, 2500.0),
    "ollama": (800.0, 4000.0),
    "openai": (900.0, 2800.0),
    "perplexity": (1500.0, 4500.0),
    "sambanova": (400.0, 1200.0),
    "together_ai": (700.0, 2200.0),
    "vertex_ai": (1000.0, 3000.0),
    "vertex_ai-anthropic_models": (1100.0, 3200.0),
    "vertex_ai-language-models": (900.0, 2800.0),
    "xai": (1100.0, 3500.0),
}

# Why an entry is skipped: (reason, what the report says), in the order the report lists them.
SKIP_REASONS: dict[str, str] = {
    "mode": "not a chat or responses model",
    "wildcard": "a wildcard key (`*`), not one model",
    "per-second": "priced per second (not per token)",
    "per-request": "priced per request as well as per token",
    "per-character": "priced per character",
    "no-price": "no per-token input or output price",
    "free": "priced $0 per input and output token (a free preview, or not billed by the"
    " token): cost routing would always pick it; add it by hand to route to it",
    "no-limits": "no max_input_tokens or no output limit",
    "tiers": "price tiers the catalog cannot express",
    "alias": "an alias (`alias_of`) of an entry that is not imported",
    "bad-value": "a price, limit or flag that is not a valid number or boolean",
    "bad-provider": "litellm_provider is not a valid catalog provider name",
    "bad-id": "the id is not a valid catalog model id",
    "duplicate": "names the same provider and id as another entry",
    "retired": "its deprecation_date has passed (`--current`)",
}

# the reasons that mean an entry is broken (a value of the wrong kind, a name the catalog
# cannot hold), not left out by design: the report names the first BROKEN_SHOWN of each
BROKEN_REASONS = frozenset({"bad-value", "bad-provider", "bad-id"})
BROKEN_SHOWN = 3


@dataclass(frozen=True, slots=True)
class Skipped:
    """A table entry that was not imported, why (a key of `SKIP_REASONS`) and the detail."""

    key: str
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Imported:
    """Where one catalog model came from: its provider and id, and the LiteLLM key."""

    provider: str
    id: str
    key: str


@dataclass(frozen=True, slots=True)
class ImportReport:
    entries: int  # entries in the table
    selected: int  # entries of the selected providers (all, without `--providers`)
    imported: tuple[Imported, ...]  # in the document's order
    aliases: tuple[Imported, ...]  # LiteLLM's aliases, now aliases of an imported model
    skipped: tuple[Skipped, ...]  # in the table's key order
    unmapped: tuple[tuple[str, int], ...]  # (LiteLLM field, imported entries with it)

    def by_reason(self) -> list[tuple[str, int]]:
        """(reason, count) for every reason with at least one entry, in `SKIP_REASONS` order."""
        counts = Counter(s.reason for s in self.skipped)
        return [(reason, counts[reason]) for reason in SKIP_REASONS if counts[reason]]

    def lines(self) -> list[str]:
        """The report as people read it (what `policyctl catalog import` prints)."""
        aliases = f" (and {len(self.aliases):,} aliases of them)" if self.aliases else ""
        out = [f"imported {len(self.imported):,} models{aliases} from {self.entries:,} entries"]
        if self.selected != self.entries:
            out[0] += f" ({self.entries - self.selected:,} of other providers left out)"
        if self.skipped:
            out.append(f"skipped {len(self.skipped):,}:")
            width = len(f"{max(n for _, n in self.by_reason()):,}")
            for reason, count in self.by_reason():
                line = f"  {count:>{width},}  {reason}: {SKIP_REASONS[reason]}"
                if reason == "mode":
                    modes = Counter(s.detail for s in self.skipped if s.reason == "mode")
                    shown = [f"{m} {n:,}" for m, n in sorted(modes.items(), key=_by_count)]
                    line += " (" + ", ".join(shown) + ")"
                out.append(line)
                if reason in BROKEN_REASONS:  # a broken entry: say which, and what is wrong
                    broken = [s for s in self.skipped if s.reason == reason]
                    out.extend(f"      {s.key}: {s.detail}" for s in broken[:BROKEN_SHOWN])
                    if len(broken) > BROKEN_SHOWN:
                        out.append(f"      … and {len(broken) - BROKEN_SHOWN:,} more")
        if self.unmapped:
            out.append(f"unmapped fields ({len(self.unmapped):,}; imported entries carrying each):")
            # a no-break space holds each name to its count; wrapped, it is a space again
            items = ", ".join(f"{name}\xa0{count:,}" for name, count in self.unmapped)
            wrapped = textwrap.wrap(items, 96, initial_indent="  ", subsequent_indent="  ",
                                    break_long_words=False, break_on_hyphens=False)  # fmt: skip
            out.extend(line.replace("\xa0", " ") for line in wrapped)
        return out


@dataclass(frozen=True, slots=True)
class ImportResult:
    document: dict[str, Any]  # {"version": 2, "models": [...]}
    report: ImportReport


def _by_count(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


# ---------------------------------------------------------------- numbers


def _bad(detail: str) -> ValueError:
    """An entry with a value of the wrong kind: skipped as `bad-value`."""
    return ValueError("bad-value", detail)


def _tiers_error(detail: str) -> ValueError:
    """Price tiers the catalog cannot express: skipped as `tiers`."""
    return ValueError("tiers", detail)


def _price(raw: Mapping[str, Any], field: str) -> float | None:
    """USD per 1M tokens from LiteLLM's USD per token (None when absent)."""
    value = raw.get(field)
    if value is None:
        return None
    return _per_million(value, field)


def _per_million(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"`{field}` is {value!r}")
    if not math.isfinite(value) or value < 0:
        raise _bad(f"`{field}` is {value!r}")
    # 12 significant digits: 2.5e-06 is 2.5, not 2.4999999999999996 (the error is < 1e-11)
    return float(f"{value * PER_MILLION:.12g}")


def _per_image(value: Any) -> float | None:
    """USD per input image, as LiteLLM gives it."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"`input_cost_per_image` is {value!r}")
    if not math.isfinite(value) or value < 0:
        raise _bad(f"`input_cost_per_image` is {value!r}")
    return float(value)


def _count(raw: Mapping[str, Any], field: str) -> int | None:
    value = raw.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(f"`{field}` is {value!r}")
    if not (math.isfinite(value) and value == int(value) and 0 < value <= MAX_TOKENS):
        raise _bad(f"`{field}` is {value!r}")
    return int(value)


def _threshold(number: str, k: str) -> int:
    value = float(number) * (1000 if k else 1)
    if value != int(value) or value <= 1:
        raise _bad(f"price tier threshold {number}{k}")
    return int(value)


# ---------------------------------------------------------------- one entry


@dataclass(frozen=True, slots=True)
class _Prices:
    input: float
    output: float
    cached_input: float | None
    cache_write: float | None


def _above_tiers(raw: Mapping[str, Any], base: _Prices, inclusive: bool) -> list[dict[str, Any]]:
    """Tiers from `<price>_above_<N>k_tokens` keys, each with every price it sets or keeps."""
    found: dict[int, dict[str, float]] = {}
    for field, value in raw.items():
        match = _TIER_KEY.fullmatch(field)
        if match is None or value is None:
            continue
        at = _threshold(match.group(2), match.group(3))
        found.setdefault(at, {})[match.group(1)] = _per_million(value, field)
    tiers: list[dict[str, Any]] = []
    current = base
    for at in sorted(found):
        given = found[at]
        current = _Prices(
            input=given.get("input_cost_per_token", current.input),
            output=given.get("output_cost_per_token", current.output),
            cached_input=given.get("cache_read_input_token_cost", current.cached_input),
            cache_write=given.get("cache_creation_input_token_cost", current.cache_write),
        )
        tier: dict[str, Any] = {"above": at - 1 if inclusive else at}
        tier.update(_price_fields(current))
        tiers.append(tier)
    return tiers


def _price_fields(prices: _Prices) -> dict[str, float]:
    out = {"input": prices.input, "output": prices.output}
    if prices.cached_input is not None:
        out["cached_input"] = prices.cached_input
    if prices.cache_write is not None:
        out["cache_write"] = prices.cache_write
    return out


def _ranged_tiers(raw: Mapping[str, Any]) -> tuple[_Prices, list[dict[str, Any]]]:
    """Base prices and tiers from a `tiered_pricing` list (LiteLLM: the range
    `start < input <= end` sets every price; above the last range, the last one). A tier's
    missing cache prices are its input price; a missing output price is the entry's."""
    ranges: list[tuple[float, float, Mapping[str, Any]]] = []
    for item in raw["tiered_pricing"]:
        bounds = item.get("range") if isinstance(item, Mapping) else None
        if (
            not isinstance(bounds, list | tuple)
            or len(bounds) != 2
            or not all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        ):
            raise _tiers_error("a `tiered_pricing` item without a `range: [start, end]`")
        ranges.append((float(bounds[0]), float(bounds[1]), item))
    ranges.sort(key=lambda r: r[0])
    if not ranges or ranges[0][0] != 0:
        raise _tiers_error("`tiered_pricing` does not start at 0 tokens")
    for (_, end, _), (start, _, _) in itertools.pairwise(ranges):
        if start != end:
            raise _tiers_error(f"`tiered_pricing` ranges leave a gap or overlap at {end:g} tokens")
    fallback_output = _price(raw, "output_cost_per_token")
    levels: list[tuple[int, _Prices]] = []
    for start, _, item in ranges:
        if start != int(start):
            raise _tiers_error(f"`tiered_pricing` range starts at {start:g} tokens")
        inp = _price(item, "input_cost_per_token")
        out = _price(item, "output_cost_per_token")
        if out is None:
            out = fallback_output
        if inp is None or out is None:
            raise _tiers_error("a `tiered_pricing` range without input or output prices")
        read = _price(item, "cache_read_input_token_cost")
        write = _price(item, "cache_creation_input_token_cost")
        levels.append((int(start), _Prices(inp, out, inp if read is None else read,
                                            inp if write is None else write)))  # fmt: skip
    tiers = [{"above": at, **_price_fields(p)} for at, p in levels[1:]]
    return levels[0][1], tiers


def _ignored_fields(raw: Mapping[str, Any]) -> Iterable[str]:
    for field in raw:
        if field in _MAPPED or _TIER_KEY.fullmatch(field):
            continue
        yield field


def _model(
    key: str, raw: Mapping[str, Any], priors: Callable[[str, str], tuple[float, float]]
) -> dict[str, Any] | Skipped:
    """One table entry as a catalog model, or why it is skipped."""
    mode = raw.get("mode")
    if mode not in MODES:
        return Skipped(key, "mode", mode if isinstance(mode, str) and len(mode) < 40 else "none")
    if "*" in key:
        return Skipped(key, "wildcard", "")
    for reason, fields in (
        ("per-second", _PER_SECOND),
        ("per-request", _PER_REQUEST),
        ("per-character", _PER_CHARACTER),
    ):
        present = [f for f in fields if raw.get(f) is not None]
        if present:
            return Skipped(key, reason, ", ".join(present))
    provider = raw.get("litellm_provider")
    if not isinstance(provider, str) or not _NAME.fullmatch(provider):
        return Skipped(key, "bad-provider", repr(provider))
    model_id = key.removeprefix(f"{provider}/")
    if not _MODEL_ID.fullmatch(model_id):
        return Skipped(key, "bad-id", model_id)
    try:
        if raw.get("tiered_pricing") is not None:
            if not isinstance(raw["tiered_pricing"], list):
                raise _tiers_error("`tiered_pricing` is not a list")
            base, tiers = _ranged_tiers(raw)
        else:
            inp, out = _price(raw, "input_cost_per_token"), _price(raw, "output_cost_per_token")
            if inp is None or out is None:
                missing = [f for f in _PRICES[:2] if raw.get(f) is None]
                return Skipped(key, "no-price", "no " + " and no ".join(missing))
            read = _price(raw, "cache_read_input_token_cost")
            if read is None and provider == "fireworks_ai":
                read = float(f"{inp * FIREWORKS_CACHE_READ_RATIO:.12g}")
            base = _Prices(inp, out, read, _price(raw, "cache_creation_input_token_cost"))
            tiers = _above_tiers(raw, base, provider in INCLUSIVE_THRESHOLD_PROVIDERS)
        context = _count(raw, "max_input_tokens")
        output = _count(raw, "max_output_tokens")
        if output is None:
            output = _count(raw, "max_tokens")
        image = _per_image(raw.get("input_cost_per_image"))
        flags = {f: raw.get(f) for f in (*CAPABILITY_FLAGS, "supports_native_streaming")}
        bad = [f for f, v in flags.items() if v is not None and not isinstance(v, bool)]
        if bad:
            raise _bad(f"`{bad[0]}` is {flags[bad[0]]!r}")
    except ValueError as err:  # from `_bad` or `_tiers_error`: (reason, detail)
        reason, detail = err.args
        return Skipped(key, reason, detail)
    if context is None or output is None:
        missing = "max_input_tokens" if context is None else "max_output_tokens or max_tokens"
        return Skipped(key, "no-limits", f"no {missing}")

    supports = set() if flags["supports_native_streaming"] is False else {"streaming"}
    for flag, capabilities in CAPABILITY_FLAGS.items():
        if flags[flag] is True:
            supports.update(capabilities)
    pricing: dict[str, Any] = _price_fields(base)
    if image:
        pricing["image"] = image
    if tiers:
        pricing["tiers"] = tiers
    p50, p95 = priors(provider, model_id)
    model: dict[str, Any] = {
        "id": model_id,
        "provider": provider,
        "context_window": context,
        "max_tokens": output,
        "supports": [c for c in CAPABILITIES if c in supports],
        "pricing": pricing,
        "latency_prior_ms": {"p50": p50, "p95": p95},
    }
    regions = raw.get("supported_regions")
    if (
        isinstance(regions, list)
        and regions
        and all(isinstance(r, str) and _NAME.fullmatch(r) for r in regions)
    ):
        model["regions"] = list(regions)
    retires = _day(raw.get("deprecation_date"))
    if retires is not None:
        model["retires"] = retires
    return model


def _day(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value).isoformat() if len(value) == 10 else None
    except ValueError:
        return None


def _unmapped(raw: Mapping[str, Any]) -> list[str]:
    names = list(_ignored_fields(raw))
    regions = raw.get("supported_regions")
    if regions is not None and not (
        isinstance(regions, list)
        and regions
        and all(isinstance(r, str) and _NAME.fullmatch(r) for r in regions)
    ):
        names.append("supported_regions (not a list of region names)")
    if raw.get("deprecation_date") is not None and _day(raw["deprecation_date"]) is None:
        names.append("deprecation_date (not a YYYY-MM-DD date)")
    return names


# ---------------------------------------------------------------- the table


def _add_aliases(
    table: Mapping[str, Any],
    chosen: dict[tuple[str, str], tuple[str, dict[str, Any]]],
    pointers: list[tuple[str, str]],
    skipped: list[Skipped],
) -> list[Imported]:
    """LiteLLM's other names of an entry (`alias_of` rows, `aliases` lists) as `aliases` of
    the imported model, spelled as ids are (minus a leading `<provider>/`). An alias of an
    entry that is not imported is skipped (`alias`), one that is already a name of the
    provider is a `duplicate`. Returns the aliases added, in key order."""
    by_key = {key: name for name, (key, _) in chosen.items()}
    why = {s.key: s for s in skipped}
    taken = set(chosen)
    added: list[Imported] = []
    for alias_key, target in sorted(pointers):
        name = by_key.get(target)
        if name is None:
            if target in why:
                detail = f"alias of {target}, which is skipped ({why[target].reason})"
            else:
                detail = f"alias of {target}, which is not a model entry"
            skipped.append(Skipped(alias_key, "alias", detail))
            continue
        provider, model = name[0], chosen[name][1]
        alias = alias_key.removeprefix(f"{provider}/")
        if not _MODEL_ID.fullmatch(alias):
            skipped.append(Skipped(alias_key, "bad-id", alias))
            continue
        if (provider, alias) in taken:
            detail = f"alias of {target}: `{provider}/{alias}` already names a model"
            skipped.append(Skipped(alias_key, "duplicate", detail))
            continue
        taken.add((provider, alias))
        model.setdefault("aliases", []).append(alias)
        added.append(Imported(provider, alias, alias_key))
    for _, model in chosen.values():  # `aliases` after `provider`, as a catalog writes it
        if "aliases" in model:
            names = model.pop("aliases")
            rest = {k: model.pop(k) for k in list(model) if k not in ("id", "provider")}
            model.update({"aliases": names, **rest})
    return added


def convert(
    table: Mapping[str, Any],
    providers: Collection[str] | None = None,
    latency_priors: Mapping[str, tuple[float, float]] | None = None,
    default_prior: tuple[float, float] | None = None,
    current_on: date | None = None,
    keep_free: bool = False,
) -> ImportResult:
    """A LiteLLM price table as a version-2 catalog document and the import report.

    `current_on`: leave out the models retired by that day (`deprecation_date` on or
    before it). `keep_free`: import models priced $0 per token too (a self-hosted model
    that a LiteLLM config names, `policyctl migrate`), rather than skipping them as `free`.

    `providers`: only entries whose `litellm_provider` is one of these (a name no entry has
    raises CatalogError, with did-you-mean). `latency_priors`/`default_prior` replace
    entries of `LATENCY_PRIORS`/`DEFAULT_LATENCY_PRIOR`."""
    keys = sorted(table)
    if providers is not None:
        known = {
            p for v in table.values() if isinstance(v, Mapping)
            if isinstance(p := v.get("litellm_provider"), str)
        }  # fmt: skip
        unknown = sorted(set(providers) - known)
        if unknown:
            messages = []
            for name in unknown:
                guess = did_you_mean(name, sorted(known))
                hint = f"; did you mean `{guess}`?" if guess else ""
                messages.append(f"--providers: no entry has litellm_provider `{name}`{hint}")
            raise CatalogError(messages)
        wanted = set(providers)
        keys = [
            k for k in keys
            if isinstance(table[k], Mapping) and table[k].get("litellm_provider") in wanted
        ]  # fmt: skip
    table_priors = {**LATENCY_PRIORS, **(latency_priors or {})}
    fallback = default_prior or DEFAULT_LATENCY_PRIOR

    def prior(provider: str, model_id: str) -> tuple[float, float]:
        found = table_priors.get(f"{provider}/{model_id}")  # a model's own, from a file
        return found if found is not None else table_priors.get(provider, fallback)

    skipped: list[Skipped] = []
    chosen: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
    pointers: list[tuple[str, str]] = []  # (alias key, the key it is an alias of)
    for key in keys:
        raw = table[key]
        if not isinstance(raw, Mapping):
            skipped.append(Skipped(key, "mode", "none"))
            continue
        if isinstance(raw.get("alias_of"), str):  # another name of another entry
            pointers.append((key, raw["alias_of"]))
            continue
        found = _model(key, raw, prior)
        if isinstance(found, Skipped):
            skipped.append(found)
            continue
        retires = found.get("retires")
        if current_on is not None and retires is not None and retires <= current_on.isoformat():
            skipped.append(Skipped(key, "retired", retires))
            continue
        name = (found["provider"], found["id"])
        if name not in chosen:
            chosen[name] = (key, found)
            continue
        # the key spelled `<provider>/<id>` wins; between others, the first in key order
        kept_key, kept = chosen[name]
        if key == f"{name[0]}/{name[1]}" and kept_key != key:
            chosen[name] = (key, found)
            kept_key, kept, key, found = key, found, kept_key, kept
        same = "same prices and limits" if kept == found else "different prices or limits"
        skipped.append(Skipped(key, "duplicate", f"{kept_key} is kept ({same})"))
    for name, (key, found) in list(chosen.items()):  # after duplicates: the key kept decides
        if keep_free:
            break
        pricing = found["pricing"]
        tiers = pricing.get("tiers", [])
        if not any(t["input"] or t["output"] for t in [pricing, *tiers]):
            del chosen[name]
            skipped.append(Skipped(key, "free", "$0 per token"))
    for key in keys:  # an `aliases` list on an entry names it too, as `alias_of` does
        names = table[key].get("aliases") if isinstance(table[key], Mapping) else None
        if isinstance(names, list):
            pointers.extend((alias, key) for alias in names if isinstance(alias, str))
    aliased = _add_aliases(table, chosen, pointers, skipped)
    skipped.sort(key=lambda s: s.key)

    models: list[dict[str, Any]] = []
    imported: list[Imported] = []
    unmapped: Counter[str] = Counter()
    for name in sorted(chosen):
        key, model = chosen[name]
        models.append(model)
        imported.append(Imported(name[0], name[1], key))
        unmapped.update(_unmapped(table[key]))
    report = ImportReport(
        entries=len(table),
        selected=len(keys),
        imported=tuple(imported),
        aliases=tuple(aliased),
        skipped=tuple(skipped),
        unmapped=tuple(sorted(unmapped.items(), key=_by_count)),
    )
    return ImportResult({"version": 2, "models": models}, report)


# ---------------------------------------------------------------- files


@dataclass(frozen=True, slots=True)
class Table:
    """A LiteLLM price table and where it came from."""

    data: dict[str, Any]
    source: str  # a path, or `litellm X.Y.Z` for the installed package's table
    litellm_version: str | None


class LiteLLMMissing(PolicyctlError):
    """No table given and no litellm installed."""


def read_table(path: str | os.PathLike[str]) -> Table:
    """A LiteLLM price table from a JSON file (CatalogError when it is not one)."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CatalogError([f"{shown}: cannot read the LiteLLM table: {reason}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise CatalogError([f"{shown}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}"]) from None
    except (RecursionError, ValueError):
        raise CatalogError([f"{shown}: invalid JSON: nested too deeply"]) from None
    if not isinstance(data, dict):
        raise CatalogError(
            [f"{shown}: not a LiteLLM price table: expected an object of model entries"]
        )
    return Table(data, shown, None)


def installed_litellm_version() -> str | None:
    try:
        return importlib.metadata.version("litellm")
    except importlib.metadata.PackageNotFoundError:
        return None


def bundled_table() -> Table:
    """The price table bundled with the installed litellm: read as a file when the package
    is on disk (litellm is not imported), else through `litellm.model_cost`, imported with
    `LITELLM_LOCAL_MODEL_COST_MAP=True` so that it does not fetch the table."""
    try:
        spec = importlib.util.find_spec("litellm")
    except (ImportError, ValueError):  # a broken install, or an import blocked on purpose
        spec = None
    version = installed_litellm_version()
    if spec is None:
        raise LiteLLMMissing(
            "litellm is not installed: give its price table as FILE (a"
            " model_prices_and_context_window.json) or `pip install litellm`"
        )
    for folder in spec.submodule_search_locations or ():
        candidate = Path(folder) / TABLE_FILE
        if candidate.is_file():
            table = read_table(candidate)
            return Table(table.data, f"litellm {version or '(unknown version)'}", version)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # before the import: no network
    import litellm  # type: ignore[import-not-found,unused-ignore]

    return Table(dict(litellm.model_cost), f"litellm {version}", version)


# ---------------------------------------------------------------- latency priors


_Ms = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Prior(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    p50: _Ms
    p95: _Ms

    @model_validator(mode="after")
    def _ordered(self) -> _Prior:
        if self.p50 > self.p95:
            raise ValueError(f"p50 ({self.p50:g}) is greater than p95 ({self.p95:g})")
        return self


class _Priors(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    default: _Prior | None = None
    providers: dict[Annotated[str, Field(pattern=_NAME.pattern)], _Prior] = {}
    models: dict[str, _Prior] = {}  # by `provider/id`


def read_latency_priors(
    path: str | os.PathLike[str],
) -> tuple[dict[str, tuple[float, float]], tuple[float, float] | None]:
    """A user's latency priors (YAML or JSON): `default: {p50, p95}`,
    `providers: {NAME: {p50, p95}}` and `models: {PROVIDER/ID: {p50, p95}}`, all optional.
    Returns (by provider, and by `provider/id` for models, default)."""
    shown = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        doc = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise CatalogError([f"{shown}: cannot read latency priors: {reason}"]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark is not None else shown
        problem = getattr(err, "problem", None) or str(err)
        raise CatalogError([f"{where}: invalid YAML: {problem}"]) from None
    try:
        priors = _Priors.model_validate(doc)
    except ValidationError as err:
        lines = []
        for e in err.errors(include_url=False):
            loc = [str(p) for p in e["loc"] if p != "[key]"]
            path_text = ".".join(loc)
            message = str(e["msg"]).removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            if e["type"] == "string_pattern_mismatch":  # a provider name (a key)
                path_text = ".".join(loc[:-1])
                message = (
                    f"`{e['input']}` is not a valid provider name: a name starts with a letter"
                    " or digit and holds only letters, digits, `.`, `_`, `:` and `-`"
                )
            lines.append(f"{shown}: field `{path_text}`: {message}" if path_text else
                         f"{shown}: {message}")  # fmt: skip
        raise CatalogError(lines) from None
    by_provider = {name: (p.p50, p.p95) for name, p in priors.providers.items()}
    for key, p in priors.models.items():  # a model's own prior, by `provider/id`
        provider, _, model_id = key.partition("/")
        if not (_NAME.fullmatch(provider) and _MODEL_ID.fullmatch(model_id)):
            raise CatalogError([f"{shown}: field `models`: `{key}` is not a `provider/id`"])
        by_provider[key] = (p.p50, p.p95)
    default = (priors.default.p50, priors.default.p95) if priors.default is not None else None
    return by_provider, default


# ---------------------------------------------------------------- writing


def render_yaml(document: Mapping[str, Any], header: Iterable[str] = ()) -> str:
    """The document as YAML (flow lists and flow mappings for the small parts, a blank line
    between models), with `header` lines as `#` comments on top."""
    top = [f"# {line}".rstrip() for line in header]
    top += [f"version: {document['version']}", "models:"]
    models = []
    for model in document["models"]:
        shown = {k: (date.fromisoformat(v) if k == "retires" else v) for k, v in model.items()}
        models.append(
            yaml.dump(
                [shown],
                Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                default_flow_style=None,
                sort_keys=False,
                width=100,
                allow_unicode=True,
            )
        )
    return "\n".join(top) + "\n" + "\n".join(models)


def render_json(document: Mapping[str, Any], header: Iterable[str] = ()) -> str:
    """The document as JSON, one model per line (what a `.json` catalog holds), with
    `header` lines as its `generated` text."""
    models = ",\n".join("    " + json.dumps(m, ensure_ascii=False) for m in document["models"])
    generated = json.dumps("\n".join(header), ensure_ascii=False)
    return (
        f'{{\n  "version": {document["version"]},\n  "generated": {generated},\n'
        f'  "models": [\n{models}\n  ]\n}}\n'
    )
