"""The model catalog's records: `Model` (one routable entry: a model or one of its
deployments), its prices (`PriceTier`), `Quality`, and the `Catalog` with its lookups.

Loading and validating a catalog file is `engine.catalog.load`; converting LiteLLM's
price table is `engine.catalog.litellm`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.errors import PolicyctlError

# what a model can do; the first four are also what a request can ask for
MAX_CATALOG_BYTES = 8 << 20  # 8 MiB: a larger catalog file is refused

CAPABILITIES = (
    "streaming",
    "tools",
    "vision",
    "json",
    "json_schema",
    "pdf",
    "audio",
    "reasoning",
    "prompt_caching",
)


class CatalogError(PolicyctlError, located=True):
    """A catalog that cannot be used; `messages` holds one complete line per problem."""

    messages: list[str]

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Prices for a request whose input is larger than `above` tokens (LiteLLM's
    `*_above_200k_tokens`): they apply to the whole request, input and output alike."""

    above: int  # input tokens
    input: float  # USD per 1M tokens
    output: float
    cached_input: float | None = None  # None: the model's own cache read price
    cache_write: float | None = None


@dataclass(frozen=True, slots=True)
class Quality:
    """User-supplied quality scores (0-1), overall and per task, with where they came from."""

    overall: float | None
    tasks: tuple[tuple[str, float], ...]  # (task, score), in the catalog's order
    source: str

    def score(self, task: str | None = None) -> float | None:
        if task is None:
            return self.overall
        return dict(self.tasks).get(task)


@dataclass(frozen=True, slots=True)
class Model:
    """One routable entry: a catalog model, or one deployment of a model (then `family`
    is the key of the catalog model it serves, and `provider`/`id` are the deployment's)."""

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
    cached_input_price: float | None = None  # USD per 1M cache-read tokens; None: input price
    cache_write_price: float | None = None  # USD per 1M cache-write tokens; None: input price
    image_price: float = 0.0  # USD per input image
    tiers: tuple[PriceTier, ...] = ()  # by `above`, ascending
    quality: Quality | None = None
    deprecated_at: float | None = None  # epoch seconds (UTC midnight of the date)
    retires_at: float | None = None  # epoch seconds: no decision picks it from then on
    family: str | None = None  # a deployment: the key of the catalog model it serves

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.id}"

    @property
    def model_key(self) -> str:
        """The catalog model this entry serves (its own key unless it is a deployment)."""
        return self.family or self.key

    def retired(self, now: float) -> bool:
        return self.retires_at is not None and now >= self.retires_at

    def cost(
        self,
        input_tokens: float,
        output_tokens: float,
        cached_tokens: float = 0.0,
        cache_write_tokens: float = 0.0,
        images: float = 0.0,
    ) -> float:
        """Estimated USD for a request of this size.

        `input_tokens` counts every input token, the cached ones included (as OpenAI's
        `prompt_tokens` does); `cached_tokens` of them are read from the provider's prompt
        cache and `cache_write_tokens` written to it, each at its own price (the input price
        when the model has none). The highest tier whose `above` the input exceeds sets
        every price."""
        inp, out = self.input_price, self.output_price
        read, write = self.cached_input_price, self.cache_write_price
        for tier in self.tiers:
            if input_tokens > tier.above:
                inp, out = tier.input, tier.output
                if tier.cached_input is not None:
                    read = tier.cached_input
                if tier.cache_write is not None:
                    write = tier.cache_write
        if read is None:
            read = inp
        if write is None:
            write = inp
        plain = input_tokens - cached_tokens - cache_write_tokens
        total = plain * inp + cached_tokens * read + cache_write_tokens * write
        return (total + output_tokens * out) / 1e6 + images * self.image_price


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Model, ...]  # every routable entry: models, and each deployment of a model
    source: str  # the path (or name) it was loaded from
    digest: str  # sha256 hex of the text (of the file's bytes, for `load_catalog`)
    # a model with deployments: its key -> (provider, id, aliases) as the catalog names it
    families: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    # lookups, computed once from `models`
    _by_name: dict[tuple[str, str], Model] = field(init=False, repr=False, compare=False)
    _by_family: dict[tuple[str, str], tuple[Model, ...]] = field(
        init=False, repr=False, compare=False
    )
    _by_provider: dict[str, tuple[Model, ...]] = field(init=False, repr=False, compare=False)
    _names: dict[str | None, list[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[tuple[str, str], Model] = {}
        by_family: dict[tuple[str, str], list[Model]] = {}
        by_provider: dict[str, list[Model]] = {}
        names: dict[str | None, list[str]] = {None: []}
        seen: set[tuple[str | None, str]] = set()

        def named(provider: str, name: str) -> None:
            for group in (provider, None):
                if (group, name) not in seen:
                    seen.add((group, name))
                    names.setdefault(group, []).append(name)

        for m in self.models:  # ids first, so an id always wins over another model's alias
            by_name.setdefault((m.provider, m.id), m)
        members: dict[str, list[Model]] = {}
        for m in self.models:
            by_provider.setdefault(m.provider, []).append(m)
            if m.family is not None:
                members.setdefault(m.family, []).append(m)
            for name in (m.id, *m.aliases):
                by_name.setdefault((m.provider, name), m)
                named(m.provider, name)
        for provider, model_id, aliases in self.families:
            rows = members.get(f"{provider}/{model_id}", [])
            for name in (model_id, *aliases):
                by_family.setdefault((provider, name), rows)
                named(provider, name)
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_family", {k: tuple(v) for k, v in by_family.items()})
        object.__setattr__(self, "_by_provider", {p: tuple(ms) for p, ms in by_provider.items()})
        object.__setattr__(self, "_names", names)

    @property
    def providers(self) -> tuple[str, ...]:
        """Provider names in order of first appearance."""
        return tuple(self._by_provider)

    def by_provider(self, provider: str) -> tuple[Model, ...]:
        return self._by_provider.get(provider, ())

    def find(self, provider: str, name: str) -> Model | None:
        """The entry (a model or a deployment) of `provider` whose id or alias is `name`."""
        return self._by_name.get((provider, name))

    def resolve(self, provider: str, name: str) -> tuple[Model, ...]:
        """What `provider/name` in a policy means: one entry, or every deployment of the
        catalog model of that name; empty when there is none."""
        found = self._by_name.get((provider, name))
        if found is not None:
            return (found,)
        return self._by_family.get((provider, name), ())

    def quality_tasks(self) -> tuple[str, ...]:
        """The tasks some entry has a `quality` score for, in catalog order: what
        `model.quality.<task>` may name in a policy."""
        tasks: dict[str, None] = {}
        for m in self.models:
            if m.quality is not None:
                tasks.update(dict.fromkeys(task for task, _ in m.quality.tasks))
        return tuple(tasks)

    def names(self, provider: str | None = None) -> list[str]:
        """Ids and aliases (of one provider, or of all), in catalog order, for did-you-mean."""
        return list(self._names.get(provider, ()))
