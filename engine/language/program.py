"""The compiled program: the immutable, indexed types the compiler produces and the
evaluator, the limiter, the admin and the API read. Types only (and how each builds its
precomputed columns); the compile logic is `engine.language.compiler`.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.catalog.model import Catalog, Model
from engine.strategies import DEFAULT_STRATEGY, STRATEGIES, Rank, RouteFacts, RouteView
from engine.strategies.weighted import DEFAULT_FACTORS, factor_weights
from engine.vocabulary import DEFAULT_OUTPUT_TOKENS
from engine.wire.features import DEFAULT_WEIGHTS, Weights
from engine.wire.plugins import Plugin

Env = Mapping[str, Any]
Fn = Callable[[Env, Mapping[str, Any] | None], Any]
Pred = Callable[[Env, Mapping[str, Any] | None], bool]


@dataclass(frozen=True, slots=True)
class HealthRule:
    """`degraded when …`: a condition on a model (its measurements and catalog attributes)
    that takes a measured model out while it holds, as a failure cooldown does."""

    # (settings compare by what the rule reads; `fmt` checks the answers are the same)
    holds: Pred = field(compare=False)  # called with an empty request and measured attrs
    text: str = field(compare=False)  # the condition as written, on one line
    reads: tuple[str, ...] = ()  # the measured attributes it reads (`p95`, …), for the reason


@dataclass(frozen=True, slots=True)
class PolicyRequire:
    """A policy-wide `require … [when …]`: binds every route, `defaults` and the fallback
    chain (docs/language.md, Policy-wide constraints). `when` reads the request only."""

    holds: Pred = field(compare=False)  # (request env, model attrs) -> bool
    text: str  # the condition on one line
    when: Pred | None = field(compare=False)
    when_text: str | None
    location: str  # file:line
    reads_request: bool  # checked request by request, model by model (the general path)
    measured: bool  # reads a measurement (`model.p95`, …): decided per metrics snapshot

    @property
    def label(self) -> str:
        """`policy-wide require at eu.policy:3: … (when …)`, as reasons name it."""
        when = "" if self.when_text is None else f" (when {self.when_text})"
        return f"policy-wide require at {self.location}: {self.text}{when}"

    @property
    def drop_reason(self) -> str:
        return f"fails {self.label}"

    @property
    def static(self) -> bool:
        """Known per model at compile time (reads no request and no measurement)."""
        return not self.reads_request and not self.measured


@dataclass(frozen=True, slots=True)
class DenyRule:
    """`deny "reason" when …`, checked before routing (docs/language.md)."""

    reason: str
    when: Pred = field(compare=False)
    when_text: str
    location: str  # file:line


def stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by `text` (blake2b, the same in every process): the one
    hash behind a split's arm, exploration's share and a strategy's draw."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def bucket(salt: str, value: object) -> float:
    """A number in [0, 1) fixed by `salt` and `value`: two salts give independent
    numbers for the same value (a split's experiment name, `EXPLORE_SALT`)."""
    return stable_fraction(f"{salt}\x1f{value}")


# exploration's salt: no route name (a split's salt) starts with `#`, so a request's
# exploration and its arm in any split are independent draws
EXPLORE_SALT = "#explore"


@dataclass(frozen=True, slots=True)
class Exploration:
    """`explore 5% budget $2 per 1h`: the share of requests (by a hash of their id) sent to
    the candidate with the fewest samples under `min_samples`, while what those decisions
    are estimated to cost in the current fixed window stays within the budget."""

    share: float  # a fraction, above 0 and at most 0.5
    budget: float  # USD per window
    window_ms: float  # the budget's fixed windows

    def selects(self, key: str) -> bool:
        """Whether the request with this key (its id) is in the exploring share."""
        return bucket(EXPLORE_SALT, key) < self.share


@dataclass(frozen=True, slots=True)
class Affinity:
    """`affinity by request.KEY for D`: a request goes to the model the previous request
    with the same key went to, if that was less than D ago and the model is still eligible
    and within its limits (the evaluator's `PinTable` keeps the pins)."""

    # reads the field from the request (None: no key, no affinity); compared by its text
    key: Fn = field(compare=False)
    key_text: str  # `request.metadata.session_id`
    ttl_ms: float  # how long a quiet session keeps its model


@dataclass(frozen=True, slots=True)
class Settings:
    strategy: str = DEFAULT_STRATEGY
    factors: tuple[tuple[str, float], ...] = DEFAULT_FACTORS
    min_success_rate: float = 0.0
    min_samples: int = 100
    window_ms: float = 86_400_000.0
    fallback: tuple[str, ...] = ()  # provider order
    fallback_models: tuple[str, ...] = ()  # explicit provider/model entries, in order
    cooldown_failures: int = 0  # 0: no cooldown
    cooldown_ms: float = 0.0
    on_store_error: str = "open"  # open: allow while the limit store is down; closed: deny
    min_quality: float | None = None  # `min_quality 0.8`: the route's quality floor
    degraded: HealthRule | None = None  # `degraded when …`
    explore: Exploration | None = None  # `explore N% budget $X per D`
    affinity: Affinity | None = None  # `affinity by request.KEY for D`
    wait_ms: float | None = None  # `wait up to D`: its limits' denials may wait this long

    @property
    def factor_weights(self) -> tuple[float, float, float]:
        """`weighted`: the (latency, cost, success) weights."""
        return factor_weights(self.factors)


def quality_problem(score: float | None, floor: float, whose: str) -> str | None:
    """Why a model is not eligible under a quality floor (`min_quality`), or None when its
    overall score reaches it; `whose` names the floor ("the request's", "route `x`'s")."""
    if score is None:
        return f"has no quality score ({whose} min_quality {floor:g})"
    if score < floor:
        return f"quality {score:g} is under {whose} min_quality {floor:g}"
    return None


# what a request can require, and its bit in a model row's `supports_mask`
CAPABILITY_BITS = {
    "vision": 1,
    "tools": 2,
    "json": 4,
    "streaming": 8,
    "json_schema": 16,
    "pdf": 32,
    "audio": 64,
    "reasoning": 128,
}


@dataclass(frozen=True, slots=True)
class ModelRow:
    """What the hot loop reads about one model, precomputed once."""

    model: Model
    key: str
    provider: str
    supports_mask: int
    max_tokens: int
    context_window: int
    input_price: float  # USD per 1M tokens
    output_price: float  # USD per 1M tokens
    latency_prior_ms: float
    index: int
    quality: float | None = None  # the catalog's overall score (0-1), None without one


def model_row(model: Model) -> ModelRow:
    mask = 0
    for capability in model.supports:
        mask |= CAPABILITY_BITS.get(capability, 0)
    return ModelRow(
        model=model,
        key=model.key,
        provider=model.provider,
        supports_mask=mask,
        max_tokens=model.max_tokens,
        context_window=model.context_window,
        input_price=model.input_price,
        output_price=model.output_price,
        latency_prior_ms=model.latency_p95_ms,
        index=model.index,
        quality=None if model.quality is None else model.quality.overall,
    )


@dataclass(frozen=True, slots=True)
class RouteTable:
    """A route's candidates as flat tuples (position i is `rows[i]`) for the hot loop, with
    the aggregates that let a request skip the per-model capability checks entirely."""

    models: tuple[Model, ...]
    keys: tuple[str, ...]
    providers: tuple[str, ...]
    masks: tuple[int, ...]
    max_tokens: tuple[int, ...]
    context_windows: tuple[int, ...]
    input_prices: tuple[float, ...]  # USD per 1M tokens
    output_prices: tuple[float, ...]  # USD per 1M tokens
    default_output_costs: tuple[float, ...]  # min(DEFAULT_OUTPUT_TOKENS, max_tokens) * price
    latency_priors: tuple[float, ...]
    # the overall quality scores, a model without one as -inf (below every floor)
    qualities: tuple[float, ...]
    lowest_quality: float  # the smallest of `qualities` (inf when there are none)
    model_keys: tuple[str, ...]  # the catalog model each serves (a deployment's model)
    min_tier_above: float  # smallest price-tier threshold over the candidates (inf: none)
    next_retirement: float  # earliest `retires` over the candidates (inf: none)
    # the candidates with a `retires` date: the dates in order, and their positions
    retire_times: tuple[float, ...]
    retire_positions: tuple[int, ...]
    common_mask: int  # capabilities every candidate supports
    min_context_window: int  # smallest over the candidates (0 when there are none)
    min_max_tokens: int
    position_of: Mapping[str, int]  # model key -> position
    # chosen provider -> the other providers in fallback order (the chain when no explicit
    # `fallback provider/model` entry or rate limit takes a hand)
    fallback_providers: Mapping[str, tuple[str, ...]]
    view: RouteView  # what the route's strategy reads, built by the strategy
    rank: Rank  # the route's strategy
    draws: bool  # the strategy reads a number drawn from the request key
    takes_turns: bool  # the strategy reads the route's turn
    # how many have retired -> their positions (a handful of entries over a catalog's life)
    _retired: dict[int, frozenset[int]] = field(default_factory=dict, repr=False, compare=False)
    # the columns as numpy arrays (`vectors()`), built on a big route's first decision
    _vectors: list[TableVectors] = field(default_factory=list, repr=False, compare=False)

    def retired(self, now: float) -> frozenset[int]:
        """The positions of the candidates retired at `now` (epoch seconds)."""
        n = bisect.bisect_right(self.retire_times, now)
        found = self._retired.get(n)
        if found is None:
            found = self._retired[n] = frozenset(self.retire_positions[:n])
        return found

    def vectors(self) -> TableVectors:
        """The columns the eligibility and ranking of a big route read, as numpy arrays
        (built once, on first use: numpy is imported only by routes that use it)."""
        if not self._vectors:
            self._vectors.append(table_vectors(self))
        return self._vectors[0]


@dataclass(frozen=True, slots=True)
class TableVectors:
    """A `RouteTable`'s columns as numpy arrays, by position, the same values: float64 for
    prices, costs, latencies and qualities, int64 for masks, windows and catalog indexes."""

    masks: Any  # ndarray[int64]
    context_windows: Any  # ndarray[int64]
    max_tokens: Any  # ndarray[int64]
    input_prices: Any  # ndarray[float64]
    output_prices: Any
    default_output_costs: Any
    latency_priors: Any
    qualities: Any  # -inf for a model without a score
    indexes: Any  # ndarray[int64], catalog positions (the strategy's view), for ties
    providers: Any  # ndarray[int64], each position's provider as its code
    provider_codes: Mapping[str, int]  # provider -> code
    # the highest prices (a request whose cost could overflow to inf stays on the lists)
    max_input_price: float
    max_output_price: float
    max_default_output_cost: float


def table_vectors(table: RouteTable) -> TableVectors:
    import numpy as np  # only big routes pay its import

    codes: dict[str, int] = {}
    for provider in table.providers:
        codes.setdefault(provider, len(codes))

    def ints(values: tuple[int, ...]) -> Any:
        return np.array(values, dtype=np.int64)

    def floats(values: tuple[float, ...]) -> Any:
        return np.array(values, dtype=np.float64)

    return TableVectors(
        masks=ints(table.masks),
        context_windows=ints(table.context_windows),
        max_tokens=ints(table.max_tokens),
        input_prices=floats(table.input_prices),
        output_prices=floats(table.output_prices),
        default_output_costs=floats(table.default_output_costs),
        latency_priors=floats(table.latency_priors),
        qualities=floats(table.qualities),
        indexes=ints(table.view.indexes),
        providers=ints(tuple(codes[p] for p in table.providers)),
        provider_codes=codes,
        max_input_price=max(table.input_prices, default=0.0),
        max_output_price=max(table.output_prices, default=0.0),
        max_default_output_cost=max(table.default_output_costs, default=0.0),
    )


def route_table(route: CompiledRoute) -> RouteTable:
    rows = route.rows
    common = 15
    for row in rows:
        common &= row.supports_mask
    keys = tuple(row.key for row in rows)
    priors = tuple(row.latency_prior_ms for row in rows)
    chosen = STRATEGIES[route.settings.strategy]
    view = chosen.view(
        RouteFacts(
            keys=keys,
            providers=tuple(row.provider for row in rows),
            indexes=tuple(row.index for row in rows),
            latency_priors=priors,
            qualities=tuple(row.quality for row in rows),
            factors=route.settings.factors,
            preferred=route.weights,
            fallback_order=route.fallback_order,
            provider_rank=route.provider_rank,
        )
    )
    order = route.provider_order
    qualities = tuple(-math.inf if row.quality is None else row.quality for row in rows)
    retiring = sorted(
        (row.model.retires_at, p) for p, row in enumerate(rows) if row.model.retires_at is not None
    )
    return RouteTable(
        models=tuple(row.model for row in rows),
        keys=keys,
        providers=tuple(row.provider for row in rows),
        masks=tuple(row.supports_mask for row in rows),
        max_tokens=tuple(row.max_tokens for row in rows),
        context_windows=tuple(row.context_window for row in rows),
        input_prices=tuple(row.input_price for row in rows),
        output_prices=tuple(row.output_price for row in rows),
        default_output_costs=tuple(
            min(DEFAULT_OUTPUT_TOKENS, row.max_tokens) * row.output_price for row in rows
        ),
        latency_priors=priors,
        qualities=qualities,
        lowest_quality=min(qualities, default=math.inf),
        model_keys=tuple(row.model.model_key for row in rows),
        min_tier_above=min(
            (row.model.tiers[0].above for row in rows if row.model.tiers), default=math.inf
        ),
        next_retirement=min(
            (row.model.retires_at for row in rows if row.model.retires_at is not None),
            default=math.inf,
        ),
        retire_times=tuple(t for t, _ in retiring),
        retire_positions=tuple(p for _, p in retiring),
        common_mask=common,
        min_context_window=min((row.context_window for row in rows), default=0),
        min_max_tokens=min((row.max_tokens for row in rows), default=0),
        position_of={row.key: i for i, row in enumerate(rows)},
        fallback_providers={p: tuple(q for q in order if q != p) for p in order},
        view=view,
        rank=chosen.rank,
        draws=chosen.draws,
        takes_turns=chosen.takes_turns,
    )


@dataclass(frozen=True, slots=True)
class CompiledSplit:
    """`split by request.KEY { … }`: a sticky experiment. The arm of a request is fixed by
    a stable hash (blake2b) of the experiment's name and the key's value (the request's key
    when the field is missing), so the same value gets the same arm in every process."""

    experiment: str  # the splitting route's name
    key: Fn  # reads the field from the request
    key_text: str  # `request.user`
    bounds: tuple[float, ...]  # cumulative shares, the last 1.0
    arms: tuple[str, ...]  # the arm routes' names, in the split's order

    def bucket(self, value: object) -> float:
        """A number in [0, 1) fixed by the experiment and the key's value."""
        return bucket(self.experiment, value)

    def arm_index(self, env: Env) -> int:
        value = self.key(env, None)
        if value is None:
            value = env["key"]  # no such field: split by the request's id
        at = bisect.bisect_right(self.bounds, self.bucket(value))
        return at if at < len(self.arms) else len(self.arms) - 1


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    name: str
    location: str  # file:line:col of the route, or "defaults"
    when: Pred | None
    when_text: str | None
    candidates: tuple[Model, ...]  # after prefer, exclude and model-only `require`
    weights: Mapping[str, float]  # model key -> preference weight (prefer lists)
    dropped: tuple[tuple[Model, str], ...]  # statically dropped, for --explain
    requires: tuple[tuple[Pred, str], ...]  # `require` clauses that read the request
    # (or a measurement too: `measured` then, and they read the model's measured attributes)
    settings: Settings
    provider_rank: Mapping[str, int]
    rows: tuple[ModelRow, ...] = ()  # the candidates, precomputed for the hot loop
    provider_order: tuple[str, ...] = ()  # providers by rank
    factor_weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    fallback_order: Mapping[str, int] = field(default_factory=dict)  # model key -> position
    measured: bool = False  # some `require` reads a measured attribute (`model.p95`, …)
    # the `require`s that read a measurement and not the request: decided once per metrics
    # snapshot (the evaluator's `Measured.failing`), on the priors without measurements
    measured_requires: tuple[tuple[Pred, str], ...] = ()
    attrs: tuple[Mapping[str, Any], ...] = ()  # the candidates' `model.<attr>` tables
    # the policy-wide `require`s (the program's, in file order); those with no `when` that
    # are known per model are folded into `candidates` (their drops in `policy_dropped`)
    policy_requires: tuple[PolicyRequire, ...] = ()
    policy_dropped: tuple[tuple[Model, PolicyRequire], ...] = ()
    # by the bits (`Program.variant_bits`) of the policy-wide `require`s known per model
    # that have a `when`: this route with the models they drop folded out, for a request
    # that meets those `when`s (empty when there are none, or too many to compile)
    variants: Mapping[int, CompiledRoute] = field(default_factory=dict, repr=False, compare=False)
    split: CompiledSplit | None = None  # an experiment: the request goes to one arm route
    arm_of: tuple[str, ...] = ()  # the experiments this route is an arm of (not tried itself)
    shadow: str | None = None  # `shadow route b`: decided too, logged, never served
    prior_failing: frozenset[int] = field(init=False, repr=False, compare=False)
    # by policy-wide `require`: the positions it drops on the catalog (a measured one: on
    # the priors; the evaluator's `Measured` has them per snapshot); none for one that reads
    # the request (checked model by model)
    policy_failing: tuple[frozenset[int], ...] = field(init=False, repr=False, compare=False)
    table: RouteTable = field(init=False, repr=False, compare=False)  # rows as flat tuples

    def __post_init__(self) -> None:
        object.__setattr__(self, "rows", tuple(model_row(m) for m in self.candidates))
        order = tuple(sorted(self.provider_rank, key=self.provider_rank.__getitem__))
        object.__setattr__(self, "provider_order", order)
        object.__setattr__(self, "factor_weights", self.settings.factor_weights)
        order = {key: i for i, key in enumerate(self.settings.fallback_models)}
        object.__setattr__(self, "fallback_order", order)
        object.__setattr__(self, "table", route_table(self))
        failing = frozenset(
            p
            for p, attrs in enumerate(self.attrs)
            if any(not pred({}, attrs) for pred, _ in self.measured_requires)
        )  # the positions a measured `require` drops on the catalog's priors
        object.__setattr__(self, "prior_failing", failing)
        object.__setattr__(
            self,
            "policy_failing",
            tuple(policy_failing(r, self.attrs) for r in self.policy_requires),
        )


_NO_REQUEST: Mapping[str, Any] = {}


def policy_failing(require: PolicyRequire, attrs: tuple[Mapping[str, Any], ...]) -> frozenset[int]:
    """The positions (of `attrs`, a route's candidates) a policy-wide `require` that reads
    no request drops on these attributes; empty for one that reads the request."""
    if require.reads_request:
        return frozenset()
    holds = require.holds
    return frozenset(p for p, a in enumerate(attrs) if not holds(_NO_REQUEST, a))


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    name: str  # e.g. `user`, `user "vip-user"`, `team`
    scope: str
    key: str | None  # a keyed limit applies to this key only
    key_fn: Fn | None  # named scope: how to read the key from the request
    key_field: str | None  # standard scopes keyed by a request field (user, ip)
    unit: str  # requests | tokens | spend | concurrent
    amount: float
    window_ms: float  # `concurrent`: the lease (a slot's longest hold)
    burst: float
    when: Pred | None
    until: float | None  # epoch seconds
    location: str
    shadow: bool = False  # `shadow limit …`: counted and logged, never denying
    wait_ms: float | None = None  # `wait up to D`: a denied request may wait this long

    @property
    def capacity(self) -> float:
        return self.amount + self.burst


@dataclass(frozen=True, slots=True)
class AlertRule:
    """`alert "NAME" when SIGNAL OP THRESHOLD …` compiled: what the alert monitor
    (`engine.alerts`) evaluates every tick. Values in the units' base: ms, USD, fractions."""

    name: str  # as written; `{key}` in it is the key of a per-key alert
    signal: str  # a name of `engine.language.signals.SIGNALS`
    split_by: str | None  # `provider`, `model`, `user`, a limit scope…: one series per key
    subject: str | None  # `openai` or `openai/gpt-4o`, as written: that entry only
    models: frozenset[str]  # the catalog keys (`provider/id`) `subject` covers
    op: str  # > >= < <=
    threshold: float
    threshold_text: str  # as written: `3s`, `5%`, `$20`
    window_ms: float  # the sliding window it is measured over or counted per
    for_ms: float  # how long it must hold before it fires (0: at once)
    webhook: str | None  # `to "URL"`; None: the monitor's default
    location: str  # file:line
    text: str  # the statement on one line

    def holds(self, value: float) -> bool:
        if self.op == ">":
            return value > self.threshold
        if self.op == ">=":
            return value >= self.threshold
        if self.op == "<":
            return value < self.threshold
        return value <= self.threshold


@dataclass(frozen=True, slots=True)
class Program:
    catalog: Catalog
    routes: tuple[CompiledRoute, ...]
    default_route: CompiledRoute
    limits: tuple[CompiledLimit, ...]
    files: tuple[str, ...]
    version: str
    model_attrs: Mapping[str, Mapping[str, Any]] = field(repr=False)  # model key -> attrs
    requires: tuple[PolicyRequire, ...] = ()  # policy-wide `require`s, in file order
    denies: tuple[DenyRule, ...] = ()  # `deny` rules, in file order
    # the policy-wide `require`s the evaluator checks per request (the rest are folded into
    # every route's candidates at compile time): their indexes in `requires`
    live_requires: tuple[int, ...] = ()
    # the index of each policy-wide `require` a route has variants for -> its bit
    variant_bits: Mapping[int, int] = field(default_factory=dict)
    # every `request.…` path the policy set reads, dotted: what the decision log keeps of a
    # request's metadata (`--log-requests features`)
    request_paths: frozenset[str] = frozenset()
    alerts: tuple[AlertRule, ...] = ()  # `alert` statements, in file order
    # the prompt features (`request.text.*`) the policy set reads, those `request.complexity`
    # is made of included (when it reads the score); empty: no request derives any
    prompt_features: frozenset[str] = frozenset()
    # the weights `request.complexity` is compiled with, and whether the policy reads it
    complexity_weights: Weights = DEFAULT_WEIGHTS
    reads_complexity: bool = False
    # the classifier plugins (`request.features.*`) the policy set reads, by name
    plugins: tuple[Plugin, ...] = ()
    # the routes tried in file order: every route but the arms of a split
    dispatch: tuple[CompiledRoute, ...] = field(init=False, repr=False, compare=False)
    # an experiment's arm routes by name, in its split's order
    arm_routes: Mapping[str, tuple[CompiledRoute, ...]] = field(
        init=False, repr=False, compare=False
    )

    # every route by name (a shadow route's decision is made on it)
    by_name: Mapping[str, CompiledRoute] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name = {route.name: route for route in self.routes}
        object.__setattr__(self, "by_name", by_name)
        object.__setattr__(
            self, "dispatch", tuple(route for route in self.routes if not route.arm_of)
        )
        object.__setattr__(
            self,
            "arm_routes",
            {
                route.name: tuple(by_name[arm] for arm in route.split.arms)
                for route in self.routes
                if route.split is not None
            },
        )
