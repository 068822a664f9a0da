"""What `policyctl catalog show` and `catalog diff` compute: a catalog's entries filtered by
provider and capability, and what changed between two catalogs (added, removed, repriced
or re-dated models), as typed records the command line prints."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.catalog.model import CAPABILITIES, Catalog, Model, PriceTier

# the fields `diff` compares (keys of `describe`), in the order it reports them
_PRICE_FIELDS = ("input", "output", "cached_input", "cache_write", "image", "tiers")
_OTHER_FIELDS = ("context_window", "max_tokens", "retires")


def day(epoch_s: float | None) -> str | None:
    """A lifecycle date (epoch seconds at UTC midnight) as `YYYY-MM-DD`."""
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).date().isoformat()


def select(
    catalog: Catalog, provider: str | None = None, supports: Collection[str] = ()
) -> list[Model]:
    """The catalog's entries (models and deployments) in catalog order, of `provider` when
    given, that support every capability in `supports`."""
    rows = catalog.by_provider(provider) if provider is not None else catalog.models
    need = frozenset(supports)
    return [m for m in rows if need <= m.supports]


def _tiers(tiers: Iterable[PriceTier]) -> list[dict[str, Any]]:
    out = []
    for t in tiers:
        tier: dict[str, Any] = {"above": t.above, "input": t.input, "output": t.output}
        if t.cached_input is not None:
            tier["cached_input"] = t.cached_input
        if t.cache_write is not None:
            tier["cache_write"] = t.cache_write
        out.append(tier)
    return out


def describe(model: Model) -> dict[str, Any]:
    """One entry as plain data (what `catalog show --format json` prints for it)."""
    return {
        "provider": model.provider,
        "id": model.id,
        "context_window": model.context_window,
        "max_tokens": model.max_tokens,
        "input": model.input_price,
        "output": model.output_price,
        "cached_input": model.cached_input_price,
        "cache_write": model.cache_write_price,
        "image": model.image_price,
        "tiers": _tiers(model.tiers),
        "supports": [c for c in CAPABILITIES if c in model.supports],
        "retires": day(model.retires_at),
    }


@dataclass(frozen=True, slots=True)
class Change:
    field: str  # a key of `describe` (input, output, cached_input, ..., retires)
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class Changed:
    key: str  # provider/id
    changes: tuple[Change, ...]

    @property
    def repriced(self) -> bool:
        return any(c.field in _PRICE_FIELDS for c in self.changes)


@dataclass(frozen=True, slots=True)
class CatalogDiff:
    added: tuple[Model, ...]  # in NEW's order
    removed: tuple[Model, ...]  # in OLD's order
    changed: tuple[Changed, ...]  # in NEW's order

    @property
    def same(self) -> bool:
        return not (self.added or self.removed or self.changed)


def diff(old: Catalog, new: Catalog) -> CatalogDiff:
    """Models (and deployments) added and removed, by provider/id, and for the models in
    both: changed prices (input, output, cache read and write, per image, tiers), limits
    (context window, max tokens) and retirement date."""
    before = {m.key: m for m in old.models}
    after = {m.key: m for m in new.models}
    changed: list[Changed] = []
    for key, m in after.items():
        if key not in before:
            continue
        a, b = describe(before[key]), describe(m)
        changes = tuple(
            Change(name, a[name], b[name])
            for name in (*_PRICE_FIELDS, *_OTHER_FIELDS)
            if a[name] != b[name]
        )
        if changes:
            changed.append(Changed(key, changes))
    return CatalogDiff(
        added=tuple(m for k, m in after.items() if k not in before),
        removed=tuple(m for k, m in before.items() if k not in after),
        changed=tuple(changed),
    )
