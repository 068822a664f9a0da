"""evaluate(program, request_env, …) -> Decision. No parsing, no I/O, no concrete store.

Order of work for one request:
0. the `deny` rules, in file order: the first whose `when` holds denies the request;
1. the first route whose `when` holds (file order), else `defaults` over the catalog;
2. the route's candidates (prefer/exclude/require were resolved at compile time, and so
   were the policy-wide `require`s with no `when` that read no request or measurement);
   the policy-wide `require`s whose `when` holds drop the models failing them (from the
   candidates, so from the choice, the alternatives and the fallback chain alike): a
   static one through the route's variant compiled without them (`CompiledRoute.variants`),
   one on measurements through the snapshot's columns, one reading the request model by
   model;
3. capability filtering, always: vision/tools/json/streaming, context window, max_tokens,
   the request's `min_quality` (the route's own floor dropped its models at compile time),
   the request's max_cost and max_latency as hard limits on the estimate, and health
   (success rate under the threshold or `degraded when` with enough samples, or cooldown);
4. the route's strategy ranks what is left; the first wins;
5. alternatives, the fallback chain, confidence, and (with `explain`) a trace.

Steps 3 and 4 work on the route's flat per-model columns (`RouteTable`, built at compile
time) and on parallel lists, one slot per eligible model; only the models a decision shows
become objects. When no `require` reads the request and no trace is asked for, step 3 takes
a shortcut (`_eligible_fast`) that builds no drop reasons; a request nothing can serve then
goes through the general path to say why. With measurements, the shortcut reads the
route's measured columns (`Measured`: latency, success rate, samples per position, the
few models a health rule may drop, and those a `require` on measurements drops), built
once per metrics snapshot, not per decision.
"""

from __future__ import annotations

import hashlib
import math
import operator
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from engine.catalog.model import Model
from engine.language.program import (
    CAPABILITY_BITS,
    Affinity,
    CompiledRoute,
    DenyRule,
    Exploration,
    HealthRule,
    ModelRow,
    PolicyRequire,
    Program,
    RouteTable,
    quality_problem,
    stable_fraction,
)
from engine.limits.limiter import Limiter, Verdict
from engine.limits.records import UNATTRIBUTED, LimitDenial, PinWrite
from engine.routing.decision import (
    AffinityOutcome,
    Alternative,
    Decision,
    DeniedByPolicyRequire,
    DeniedByRule,
    DroppedCandidate,
    LimitStatus,
    NoEligibleModel,
)
from engine.routing.metrics import MetricsSnapshot, MetricsView, ModelStats, NoMetrics
from engine.strategies import Pool, Vectors
from engine.strategies.base import KeptOrder, RankedSlots
from engine.units import format_day, format_duration, format_exact_money, format_money
from engine.vocabulary import DEFAULT_OUTPUT_TOKENS
from engine.wire import NATIVE
from engine.wire.features import complexity_parts, conversation_of
from engine.wire.plugins import Outcome

MAX_ALTERNATIVES = 3
NOT_OFFERED = "not offered by the caller"  # outside `only`: the caller cannot send it there
PRIOR_CONFIDENCE = 0.25  # confidence while only catalog priors stand
_PRIOR_SHOWN = round(PRIOR_CONFIDENCE, 4)  # as a `Decision` shows it
HEALTH_PROBE_MS = 60_000.0  # an unhealthy model with no outcome for this long is probed
_NO_METRICS = NoMetrics()
MAX_CACHED_ROUTES = 256  # measured columns kept per snapshot (routes of reloaded programs)

# A route with at least this many candidates filters and ranks on numpy arrays on the
# shortcut (`_eligible_vectors`; measured crossover: below it numpy's per-call overhead costs
# more than the Python loops it replaces). The decisions are the same either way.
VECTOR_MIN_CANDIDATES = 128

# Calls of the general path (`_eligible`) and of the vectorised shortcut
# (`_eligible_vectors`), counted so tests can check which path ran.
general_path_calls = 0
vector_path_calls = 0

# The cost column of a request every candidate of a route can serve depends on the route's
# prices and the request's (input tokens, max_tokens) only: it is kept per route table for
# up to MAX_COST_COLUMNS pairs (`CostColumn`; a pair seen once is only noted, its column is
# kept from its second request on), and so is the strategy's ranking on it
# (`CostColumn.ranked`) while the latency and success columns it was ranked on are the same
# objects (the priors, or one metrics snapshot's: a refresh ranks again). Counted so tests
# can check what was reused and what was rebuilt.
MAX_COST_COLUMNS = 256  # pairs noted or kept per route
MAX_KEPT_COLUMNS = 1024  # columns kept over all routes (a few MB at most), then all dropped
cost_column_builds = 0  # cost columns kept
ranking_builds = 0  # rankings kept on a cost column (its first, or on new columns)
ranking_hits = 0  # rankings reused
# measured columns a health update made anew (`Measured.patched`; one left as it was: none)
columns_patched = 0
# id(table) -> (table, (input tokens, max_tokens) -> its cost column, None: seen once)
_COST_COLUMNS: dict[
    int, tuple[RouteTable, dict[tuple[float, float | None], CostColumn | None]]
] = {}


# `CostColumn.ranked` of a column with no ranking kept yet
_USED_ONCE: tuple[Any, Any, Any] = (None, None, None)
_UNSEEN: Any = object()  # a (input, max) tokens pair not seen yet
_kept_since = [0]  # `cost_column_builds` when every kept column was last dropped


class CostColumn(list[float]):
    """A route's cost column for one (input tokens, max_tokens), every candidate eligible
    (kept: never mutated), with the last ranking made on it: (latencies, success rates, its
    `Ranking` with the order as a `KeptOrder`); `_USED_ONCE` until the first ranking is
    kept on it (set on creation)."""

    __slots__ = ("ranked",)
    ranked: tuple[Any, Any, Any] | None


@dataclass(slots=True)
class ExploreWindow:
    """What a route's exploration spent in one of its budget's fixed windows."""

    start: float  # epoch seconds: the window's start (a multiple of its length)
    spent: float  # USD: the estimated cost of the decisions explored in it


DEFAULT_MAX_PINS = 100_000  # affinity pins kept per engine, least recently used dropped


@dataclass(frozen=True, slots=True)
class Pin:
    """Where the last request of an affinity key went, and when."""

    model: str  # the model's key (`provider/id`)
    at: float  # epoch seconds: the key's last request
    expires: float  # epoch seconds: `at` plus the route's affinity duration
    input_tokens: float  # that request's input tokens: what the provider may have cached


@dataclass(frozen=True, slots=True)
class PinAsk:
    """One decision's question to the pins: the key's live pin, and (with `write`) the key
    pinned at `now` to that pin's model when it is still eligible, else to `default` (where
    the strategy sends the request)."""

    route: str
    value: Hashable  # the key's value: a local table's key, never sent anywhere
    key_hash: str  # what a shared store keys the pin by (and the decision shows)
    now: float  # epoch seconds, the engine's clock
    ttl_ms: float  # the route's affinity duration: a pin is live within it of its `at`
    input_tokens: float
    default: str  # the model's key (`provider/id`) the request goes to unpinned
    table: RouteTable
    pos: Sequence[int]  # the eligible positions
    write: bool  # false: a dry run (or a shadow) reads only

    @property
    def key(self) -> tuple[str, Hashable]:
        return (self.route, self.value)

    def eligible(self, model: str) -> bool:
        p = self.table.position_of.get(model)
        return p is not None and p in self.pos

    def eligible_keys(self) -> list[str]:
        keys = self.table.keys
        return [keys[p] for p in self.pos]

    def live(self, pin: Pin | None) -> Pin | None:
        """`pin` if it is live at `now` (the same test a shared store's script makes)."""
        if pin is None or (self.now - pin.at) * 1000.0 > self.ttl_ms:
            return None
        return pin

    def pin(self, model: str) -> Pin:
        """The pin this decision leaves for `model`."""
        return Pin(model, self.now, self.now + self.ttl_ms / 1000.0, self.input_tokens)


class Pins(Protocol):
    """Where the affinity pins live: this process (`PinTable`) or a store every instance
    shares (`engine.routing.shared_pins`)."""

    def swap(self, ask: PinAsk) -> Pin | None:
        """The key's live pin (None: none, or expired at `ask.now`). A shared store also
        pins the key as `PinAsk` says, in the same call, when `ask.write`."""
        ...

    def fold(self, ask: PinAsk, models: Callable[[], Sequence[str]]) -> PinWrite | None:
        """The pin for the limits' store call to write for the candidate it admits (None:
        this store does not; `models()`: the candidates' keys in ranking order)."""
        ...

    def settle(self, ask: PinAsk, pin: Pin | None, model: str | None, written: bool) -> None:
        """The decision is made (with `ask.write`): it went to `model` (None: denied), and
        `pin` is what `swap` read. The key is pinned to `model`, unless `written` (the
        limits' store call did it) or `swap` already did."""
        ...

    def __len__(self) -> int: ...


class PinTable:
    """The affinity pins of one engine, by (route, key value): bounded (the least recently
    used go first past `max_entries`, and expired ones at the front as new pins come), in
    this process's memory only (two service processes each keep their own)."""

    __slots__ = ("_lock", "_pins", "max_entries")

    def __init__(self, max_entries: int = DEFAULT_MAX_PINS) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries!r}")
        self.max_entries = max_entries
        self._pins: OrderedDict[tuple[str, Hashable], Pin] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, key: tuple[str, Hashable]) -> Pin | None:
        """The pin of a key, expired or not (a read: a dry run changes nothing)."""
        return self._pins.get(key)

    def put(self, key: tuple[str, Hashable], pin: Pin) -> None:
        pins = self._pins
        with self._lock:
            pins[key] = pin
            pins.move_to_end(key)
            while len(pins) > self.max_entries:
                pins.popitem(last=False)
            while pins:  # the least recently used first: drop those that have expired
                oldest = next(iter(pins.values()))
                if oldest.expires >= pin.at:
                    break
                pins.popitem(last=False)

    def swap(self, ask: PinAsk) -> Pin | None:
        return ask.live(self._pins.get(ask.key))

    def fold(self, ask: PinAsk, models: Callable[[], Sequence[str]]) -> PinWrite | None:
        return None

    def settle(self, ask: PinAsk, pin: Pin | None, model: str | None, written: bool) -> None:
        if model is not None:  # a denied request leaves the pins as they were
            self.put(ask.key, ask.pin(model))


@dataclass
class EvalState:
    """The little mutable state routing keeps between decisions, in this process: the
    round-robin turns, what exploration spent per route in its current window (an
    instance's own: two engines, or two service processes, each spend their budget), and
    the affinity pins."""

    turns: dict[str, int] = field(default_factory=dict)
    explored: dict[str, ExploreWindow] = field(default_factory=dict)
    pins: Pins = field(default_factory=PinTable)


@dataclass(frozen=True, slots=True)
class _Explored:
    """An exploring decision: the slot it sends the request to, and the budget it reads."""

    slot: int
    samples: int  # the explored model's samples in the metrics window
    cost: float  # its estimated cost, what exploring it spends
    window: ExploreWindow  # the budget's window as it stands before this decision


def _explore(
    route: CompiledRoute,
    explore: Exploration,
    first: int,
    costs: Sequence[float],
    samples: Sequence[int] | None,
    state: EvalState | None,
    now: float,
) -> _Explored | None:
    """Where an exploring request goes: of the eligible candidates (slots of the pool) but
    the strategy's own choice (`first`, which the other requests measure), the one with the
    fewest samples, fewer than `min_samples` (ties: the earlier route position, so the
    `prefer` order, then the catalog's), unless its estimated cost would take the window's
    spending past the budget. None: the request routes normally. Nothing is spent here
    (`_spend`, once the decision stands)."""
    fewest = route.settings.min_samples
    slot = -1
    for s in range(len(costs)):
        n = samples[s] if samples is not None else 0
        if n < fewest and s != first:
            fewest, slot = n, s
    if slot < 0:
        return None
    length = explore.window_ms
    start = (now * 1000.0 // length) * length / 1000.0
    window = state.explored.get(route.name) if state is not None else None
    if window is None or window.start != start:
        window = ExploreWindow(start, 0.0)
    cost = costs[slot]
    if window.spent + cost > explore.budget:
        return None
    return _Explored(slot, fewest, cost, window)


def _spend(route: CompiledRoute, explored: _Explored, state: EvalState) -> None:
    """Add the decision's cost to its window, as the window stands now (another thread may
    have spent in it since `_explore` read it)."""
    start = explored.window.start
    now = state.explored.get(route.name)
    spent = now.spent if now is not None and now.start == start else 0.0
    state.explored[route.name] = ExploreWindow(start, spent + explored.cost)


def _explore_reason(route: CompiledRoute, explore: Exploration, model: Model, e: _Explored) -> str:
    """`explore: gpt-5-nano has 3 of 20 samples (5% of requests explore; $0.41 of $2 budget
    left this 1h)`."""
    left = explore.budget - e.window.spent - e.cost
    return (
        f"explore: {model.id} has {e.samples} of {route.settings.min_samples} samples"
        f" ({explore.share * 100:g}% of requests explore; {format_money(left)} of"
        f" {format_money(explore.budget)} budget left this {format_duration(explore.window_ms)})"
    )


@dataclass(slots=True)
class _Pinning:
    """A decision of a route with `affinity`: its key, the pin it read, and what came of it."""

    ask: PinAsk | None  # None: the request has no key
    key_hash: str | None
    pin: Pin | None  # the key's live pin (None: a new or expired session)
    slot: int = -1  # the pinned model's slot in the pool, when it is eligible
    broken: str | None = None  # "health", "ineligible" or "limit"
    cached: float = 0.0  # the input tokens estimated to be read from the prompt cache


def _pinning(
    route: CompiledRoute,
    affinity: Affinity,
    env: Mapping[str, Any],
    state: EvalState | None,
    pos: Sequence[int],
    first: int,
    write: bool,
    stats_of: Any,
    measuring: bool,
    now: float,
) -> _Pinning:
    """The request's affinity key and its pin: the slot of the pinned model when it is
    still eligible, else why it is not (`health`: a cooldown, an unhealthy success rate or
    `degraded when`; `ineligible`: anything else that dropped it for this request).
    `first`: the slot the request goes to unpinned."""
    value = affinity.key(env, None)
    if value is None:
        return _Pinning(None, None, None)
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).hexdigest()
    if state is None:
        return _Pinning(None, digest, None)
    table = route.table
    ask = PinAsk(
        route.name, value, digest, now, affinity.ttl_ms, env["input_tokens"],
        table.keys[pos[first]], table, pos, write,
    )  # fmt: skip
    pin = state.pins.swap(ask)
    if pin is None:
        return _Pinning(ask, digest, None)
    p = table.position_of.get(pin.model)
    if p is not None and p in pos:
        return _Pinning(ask, digest, pin, pos.index(p))
    stats = stats_of(pin.model) if measuring and p is not None else None
    unhealthy = stats is not None and _unhealthy(route, p, stats, now)  # type: ignore[arg-type]
    return _Pinning(ask, digest, pin, broken="health" if unhealthy else "ineligible")


def _unhealthy(route: CompiledRoute, position: int, stats: ModelStats, now: float) -> bool:
    """Whether a health rule drops the model at `now` (the tests of `_eligible`)."""
    settings = route.settings
    if (
        settings.cooldown_failures
        and stats.consecutive_failures >= settings.cooldown_failures
        and (now - stats.last_failure_at) * 1000.0 < settings.cooldown_ms
    ):
        return True
    if stats.samples < settings.min_samples:
        return False
    if (now - stats.last_outcome_at) * 1000.0 >= (settings.cooldown_ms or HEALTH_PROBE_MS):
        return False
    rule = settings.degraded
    return stats.success_rate < settings.min_success_rate or (
        rule is not None and _degraded(rule, route, position, stats)
    )


def _cached_cost(
    route: CompiledRoute, position: int, env: Mapping[str, Any], previous: float
) -> tuple[float, float] | None:
    """(cached tokens, cost) of a pinned request whose model has a cache-read price and
    which states no `cached_tokens` of its own: the part of its prompt the session's
    previous request sent, at most, is taken as read from the provider's cache (an
    estimate: the prompt is assumed to extend the previous one). None: no such price."""
    row = route.rows[position]
    model = row.model
    if model.cached_input_price is None and not any(
        t.cached_input is not None for t in model.tiers
    ):
        return None
    input_tokens = env["input_tokens"]
    cached = min(previous, input_tokens)
    if cached <= 0:
        return None
    max_tokens = env["max_tokens"]
    output = max_tokens if max_tokens is not None else min(DEFAULT_OUTPUT_TOKENS, row.max_tokens)
    return cached, model.cost(input_tokens, output, cached, 0.0, env["images"])


_BROKEN = {
    "health": "is unhealthy",
    "ineligible": "cannot serve this request",
    "limit": "is at a rate limit",
}


def draw(key: str) -> float:
    """A number in [0, 1) fixed by the request key: random picks are reproducible."""
    return stable_fraction(key)


def _needs_mask(env: Mapping[str, Any]) -> int:
    mask = 0
    if env["requires_vision"]:
        mask |= 1
    if env["requires_tools"]:
        mask |= 2
    if env["requires_json"]:
        mask |= 4
    if env["stream"]:
        mask |= 8
    if env["requires_json_schema"]:
        mask |= 16
    if env["requires_pdf"]:
        mask |= 32
    if env["requires_audio"]:
        mask |= 64
    if env["requires_reasoning"]:
        mask |= 128
    return mask


def _capability_problem(row: ModelRow, needs: int, env: Mapping[str, Any]) -> str | None:
    if needs & ~row.supports_mask:
        for capability, bit in CAPABILITY_BITS.items():
            if needs & bit and not row.supports_mask & bit:
                return f"does not support {capability}"
    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    if max_tokens is not None and max_tokens > row.max_tokens:
        return f"max_tokens {max_tokens:.0f} exceeds the model's limit of {row.max_tokens}"
    needed = input_tokens + (max_tokens or 0)
    if needed > row.context_window:
        return (
            f"needs {needed:.0f} tokens of context (input {input_tokens:.0f} + max_tokens "
            f"{max_tokens or 0:.0f}), the model has {row.context_window}"
        )
    return None


def measured_attrs(
    attrs: Mapping[str, Any], stats: ModelStats | None, min_samples: int
) -> Mapping[str, Any]:
    """A model's `model.<attr>` table with its measurements: `samples` counted, and `p50`,
    `p95` and `success_rate` measured once it has `min_samples` (the priors stand before)."""
    if stats is None:
        return attrs
    out = dict(attrs)
    out["samples"] = float(stats.samples)
    if stats.samples >= min_samples:
        out["p50"] = stats.p50_ms
        out["p95"] = stats.p95_ms
        out["success_rate"] = stats.success_rate
    return out


_NO_REQUEST: Mapping[str, Any] = {}  # what a health rule's condition sees of the request


def _degraded(rule: HealthRule, route: CompiledRoute, position: int, stats: ModelStats) -> bool:
    """Whether `degraded when` holds for a measured model (the rule reads no request)."""
    attrs = measured_attrs(route.attrs[position], stats, route.settings.min_samples)
    return rule.holds(_NO_REQUEST, attrs)


def _failing(route: CompiledRoute, stats: Mapping[str, ModelStats]) -> frozenset[int]:
    """The positions a `require` on measurements (and not the request) drops: the tests of
    `_eligible`, once per snapshot."""
    checks = route.measured_requires
    if not checks:
        return frozenset()
    min_samples = route.settings.min_samples
    return frozenset(
        p
        for p, key in enumerate(route.table.keys)
        if not all(
            pred(_NO_REQUEST, measured_attrs(route.attrs[p], stats.get(key), min_samples))
            for pred, _ in checks
        )
    )


def _policy_failing(
    route: CompiledRoute, stats: Mapping[str, ModelStats]
) -> tuple[frozenset[int], ...]:
    """By policy-wide `require`: the positions it drops in this snapshot (a measured one on
    the measurements, the others as compiled)."""
    requires = route.policy_requires
    if not any(r.measured and not r.reads_request for r in requires):
        return route.policy_failing
    min_samples = route.settings.min_samples
    keys = route.table.keys
    out = []
    for require, compiled in zip(requires, route.policy_failing, strict=True):
        if not require.measured or require.reads_request:
            out.append(compiled)
            continue
        holds = require.holds
        out.append(
            frozenset(
                p
                for p, key in enumerate(keys)
                if not holds(
                    _NO_REQUEST, measured_attrs(route.attrs[p], stats.get(key), min_samples)
                )
            )
        )
    return tuple(out)


def _confidence(taken: float, min_samples: int) -> float:
    """A decision's confidence in a model with `taken` samples, rounded as shown."""
    if taken <= 0:  # catalog priors only
        confidence = PRIOR_CONFIDENCE
    elif min_samples <= 0:
        confidence = 1.0
    else:
        confidence = PRIOR_CONFIDENCE + (1 - PRIOR_CONFIDENCE) * min(1.0, taken / min_samples)
    return round(confidence, 4)


def _degraded_reason(rule: HealthRule, stats: ModelStats) -> str:
    figures = {
        "p50": f"p50 {stats.p50_ms:,.0f} ms",
        "p95": f"p95 {stats.p95_ms:,.0f} ms",
        "success_rate": f"success rate {stats.success_rate:.0%}",
    }
    shown = [figures[a] for a in rule.reads if a in figures]
    return f"degraded: `{rule.text}` holds ({', '.join([*shown, f'{stats.samples} samples'])})"


class Measured:
    """A route's view of one metrics snapshot, by route position: the latency estimate
    (measured p95 with `min_samples`, else the prior), the success rate (measured, else 1.0;
    None when all are 1.0), the samples (None when none), and the positions a health rule
    may drop, with their stats and whether `degraded when` holds for them (whether a rule
    drops them depends on the decision's time)."""

    __slots__ = (
        "_arrays",
        "_confidences",
        "failing",
        "lats",
        "policy_failing",
        "rates",
        "route",
        "samples",
        "watch",
    )

    def __init__(self, route: CompiledRoute, stats: Mapping[str, ModelStats]) -> None:
        settings = route.settings
        table = route.table
        min_samples = settings.min_samples
        failures = settings.cooldown_failures
        min_rate = settings.min_success_rate
        priors = table.latency_priors
        lats = list(priors)
        rates = [1.0] * len(priors)
        samples = [0] * len(priors)
        rule = settings.degraded
        watch: list[tuple[int, ModelStats, bool, bool]] = []
        keys, position_of = table.keys, table.position_of
        if len(stats) < len(keys) and len(position_of) == len(keys):  # (keys distinct)
            # the measured models of the route, by position: fewer than its models
            found_at = sorted(
                (p, found)
                for key, found in stats.items()
                if (p := position_of.get(key)) is not None
            )
        else:
            found_at = [
                (p, found) for p, key in enumerate(keys) if (found := stats.get(key)) is not None
            ]
        for p, found in found_at:
            samples[p] = found.samples
            measured = found.samples >= min_samples
            if measured:
                lats[p] = found.p95_ms
                rates[p] = found.success_rate
            degraded = measured and rule is not None and _degraded(rule, route, p, found)
            if (
                (failures and found.consecutive_failures >= failures)
                or (measured and found.success_rate < min_rate)
                or degraded
            ):
                watch.append((p, found, measured, degraded))
        self.route = route
        # the priors' own tuple when none is measured: strategies spot it (weighted)
        self.lats: Sequence[float] = priors if lats == list(priors) else tuple(lats)
        self.rates: tuple[float, ...] | None = (
            None if rates.count(1.0) == len(rates) else tuple(rates)
        )
        self.samples: tuple[int, ...] | None = tuple(samples) if any(samples) else None
        self.watch = tuple(watch)
        self.failing = _failing(route, stats)
        self.policy_failing = _policy_failing(route, stats)
        self._arrays: tuple[Any, Any] | None = None
        self._confidences: tuple[float, ...] | None = None

    def arrays(self) -> tuple[Any, Any]:
        """(latencies, success rates or None) as numpy arrays, for a big route: built once
        per snapshot (the table's priors array when none is measured)."""
        if self._arrays is None:
            import numpy as np

            table = self.route.table
            lats = table.vectors().latency_priors if self.lats is table.latency_priors else None
            self._arrays = (
                np.array(self.lats, dtype=np.float64) if lats is None else lats,
                None if self.rates is None else np.array(self.rates, dtype=np.float64),
            )
        return self._arrays

    def confidences(self) -> tuple[float, ...]:
        """A decision's confidence by route position, rounded as a `Decision` shows it (the
        priors' `PRIOR_CONFIDENCE` without samples, then up to 1.0 at `min_samples`): built
        on first use, kept for the snapshot (and by `patched`: the samples do not move)."""
        found = self._confidences
        if found is None:
            min_samples = self.route.settings.min_samples
            found = self._confidences = tuple(
                _confidence(taken, min_samples) for taken in self.samples or ()
            )
        return found

    def patched(self, stats: Mapping[str, ModelStats], keys: frozenset[str]) -> Measured:
        """These columns for a snapshot whose only changes are the failure counts and times
        of `keys` (`MetricsSnapshot.health_keys`): the same columns, the watch list redone
        for those models; these very columns when none of them is watched, before or after
        (the usual failure: a count still under every threshold)."""
        route = self.route
        settings = route.settings
        failures = settings.cooldown_failures
        min_samples, min_rate = settings.min_samples, settings.min_success_rate
        position_of = route.table.position_of
        watch = self.watch
        if watch:  # those of them that were watched leave it, to be checked again
            table_keys = route.table.keys
            watch = [w for w in watch if table_keys[w[0]] not in keys]
        same = len(watch) == len(self.watch)  # none of them was watched
        rule = settings.degraded
        for key in keys:
            p = position_of.get(key)
            found = stats.get(key)
            if p is None or found is None:
                continue
            measured = found.samples >= min_samples
            degraded = measured and rule is not None and _degraded(rule, route, p, found)
            if (
                (failures and found.consecutive_failures >= failures)
                or (measured and found.success_rate < min_rate)
                or degraded
            ):
                watch = [*watch, (p, found, measured, degraded)]
                same = False
        global columns_patched
        if same:  # nothing a health rule reads moved for this route
            return self
        columns_patched += 1
        new = Measured.__new__(Measured)
        new.route, new.lats, new.rates, new.samples = route, self.lats, self.rates, self.samples
        new.failing = self.failing  # the measurements a `require` reads did not change
        new.policy_failing = self.policy_failing
        new._arrays = self._arrays
        new._confidences = self._confidences
        new.watch = tuple(watch)
        return new

    def dropped(self, now: float) -> set[int]:
        """The positions a health rule drops at `now`: the tests of `_eligible`."""
        settings = self.route.settings
        failures = settings.cooldown_failures
        out = set()
        for p, stats, measured, degraded in self.watch:
            if (
                failures
                and stats.consecutive_failures >= failures
                and (now - stats.last_failure_at) * 1000.0 < settings.cooldown_ms
            ) or (
                (degraded or (measured and stats.success_rate < settings.min_success_rate))
                and (now - stats.last_outcome_at) * 1000.0
                < (settings.cooldown_ms or HEALTH_PROBE_MS)
            ):
                out.add(p)
        return out


def measured_columns(snapshot: MetricsSnapshot, route: CompiledRoute) -> Measured:
    """The route's columns for this snapshot, built on its first decision."""
    routes = snapshot.routes
    found = routes.get(id(route))
    if found is None or found.route is not route:
        if len(routes) >= MAX_CACHED_ROUTES:
            routes.clear()
        parent = snapshot.parent
        before = parent.routes.get(id(route)) if parent is not None else None
        if before is not None and before.route is route:
            found = before.patched(snapshot.stats, snapshot.health_keys)
        else:
            found = Measured(route, snapshot.stats)
        routes[id(route)] = found
    return found


def _route_for(program: Program, env: Mapping[str, Any], trace: list[dict[str, Any]] | None):
    for route in program.dispatch:
        matched = route.when is None or route.when(env, None)
        if trace is not None:
            trace.append(
                {"step": "route", "route": route.name, "when": route.when_text, "matched": matched}
            )
        if matched:
            return route
    if trace is not None:
        trace.append({"step": "route", "route": "default", "when": None, "matched": True})
    return program.default_route


def _eligible(
    program: Program,
    route: CompiledRoute,
    env: Mapping[str, Any],
    stats_of: Any,  # model key -> ModelStats | None (a snapshot's, or the view's `stats`)
    measuring: bool,
    now: float,
    trace: list[dict[str, Any]] | None,
    only: frozenset[str] | None = None,
    policy: Sequence[PolicyRequire] = (),
) -> tuple[list[int], list[float], list[float], list[float] | None, list[int] | None, list[Any]]:
    """Every model of the route checked one by one, with the reason each dropped one was
    dropped: (positions, costs, latencies, success rates, samples, dropped). The general
    path: `require` clauses, explain traces, metrics without snapshots and empty results
    come here. `policy`: the policy-wide `require`s that apply to this request and were not
    folded into the route at compile time."""
    global general_path_calls
    general_path_calls += 1
    settings = route.settings
    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    max_cost = env["max_cost"]
    max_latency = env["max_latency"]
    needs = _needs_mask(env)
    cached, images = env["cached_tokens"], env["images"]
    table = route.table
    priced_simply = not images and not input_tokens > table.min_tier_above
    retiring = now >= table.next_retirement
    min_samples = settings.min_samples
    min_quality = env["min_quality"]
    qualities = table.qualities
    pos: list[int] = []
    costs: list[float] = []
    lats: list[float] = []
    rates: list[float] = []
    samples: list[int] = []
    dropped: list[tuple[Model, str]] = []
    context_needed = input_tokens + (max_tokens or 0)
    for position, row in enumerate(route.rows):
        if only is not None and row.key not in only:
            problem: str | None = NOT_OFFERED
        elif (
            needs & ~row.supports_mask
            or context_needed > row.context_window
            or (max_tokens is not None and max_tokens > row.max_tokens)
        ):
            problem = _capability_problem(row, needs, env)
        else:
            problem = None
        if problem is None and retiring and row.model.retired(now):
            problem = f"retired on {format_day(row.model.retires_at)}"  # type: ignore[arg-type]
        if problem is None and min_quality is not None and qualities[position] < min_quality:
            problem = quality_problem(row.quality, min_quality, "the request's")
        if problem is None and route.requires:
            attrs = program.model_attrs[row.key]
            if route.measured and measuring:
                attrs = measured_attrs(attrs, stats_of(row.key), min_samples)
            for pred, text in route.requires:
                if not pred(env, attrs):
                    problem = f"fails `require {text}`"
                    break
        if problem is None and route.measured_requires:
            attrs = program.model_attrs[row.key]
            if measuring:
                attrs = measured_attrs(attrs, stats_of(row.key), min_samples)
            for pred, text in route.measured_requires:
                if not pred(_NO_REQUEST, attrs):
                    problem = f"fails `require {text}`"
                    break
        if problem is None and policy:
            attrs = program.model_attrs[row.key]
            if measuring:
                attrs = measured_attrs(attrs, stats_of(row.key), min_samples)
            for require in policy:
                if not require.holds(env, attrs):
                    problem = require.drop_reason
                    break
        stats = stats_of(row.key) if measuring and problem is None else None
        measured = stats is not None and stats.samples >= min_samples
        if stats is not None and problem is None:
            if (
                settings.cooldown_failures
                and stats.consecutive_failures >= settings.cooldown_failures
                and (now - stats.last_failure_at) * 1000.0 < settings.cooldown_ms
            ):
                left = settings.cooldown_ms - (now - stats.last_failure_at) * 1000.0
                problem = (
                    f"in cooldown after {stats.consecutive_failures} consecutive failures"
                    f" ({left / 1000:.1f}s left)"
                )
            elif (
                measured
                and stats.success_rate < settings.min_success_rate
                and (now - stats.last_outcome_at) * 1000.0
                < (settings.cooldown_ms or HEALTH_PROBE_MS)
            ):  # unhealthy; once quiet for a probe interval it gets one request again
                problem = (
                    f"success rate {stats.success_rate:.0%} is under "
                    f"{settings.min_success_rate:.0%} over {stats.samples} samples"
                )
            elif (
                measured
                and settings.degraded is not None
                and (now - stats.last_outcome_at) * 1000.0
                < (settings.cooldown_ms or HEALTH_PROBE_MS)
                and _degraded(settings.degraded, route, position, stats)
            ):  # as the unhealthy: probed once quiet for the cooldown or a probe interval
                problem = _degraded_reason(settings.degraded, stats)
        if problem is None:
            if max_tokens is not None:
                output = max_tokens
            else:
                output = min(DEFAULT_OUTPUT_TOKENS, row.max_tokens)
            if not cached and (priced_simply or not (row.model.tiers or row.model.image_price)):
                cost = (input_tokens * row.input_price + output * row.output_price) / 1e6
            else:
                cost = row.model.cost(input_tokens, output, cached, 0.0, images)
            latency = stats.p95_ms if measured else row.latency_prior_ms  # type: ignore[union-attr]
            if max_cost is not None and cost > max_cost:
                problem = (
                    f"estimated cost {format_money(cost)} exceeds max_cost"
                    f" {format_exact_money(max_cost)}"
                )
            elif max_latency is not None and latency > max_latency:
                problem = f"estimated latency {latency:.0f}ms exceeds max_latency {max_latency:g}ms"
            else:
                pos.append(position)
                costs.append(cost)
                lats.append(latency)
                rates.append(stats.success_rate if measured else 1.0)  # type: ignore[union-attr]
                samples.append(stats.samples if stats is not None else 0)
                continue
        dropped.append((row.model, problem))
        if trace is not None:
            trace.append(_drop(row.model, problem))
    return pos, costs, lats, rates, samples, dropped


def _eligible_fast(
    table: RouteTable,
    env: Mapping[str, Any],
    now: float,
    latencies: Sequence[float] | None = None,
    unhealthy: AbstractSet[int] | None = None,
) -> tuple[Sequence[int], Sequence[float], Sequence[float]]:
    """(positions, costs, latencies) of the models that can serve the request, when no
    `require` reads the request: no reasons, no per-model objects. The same tests as
    `_eligible`, on the route's flat columns; `latencies` by position (measured, else the
    priors: `Measured.lats`), `unhealthy` the positions a health rule or a `require` on
    measurements drops now; the retired are dropped the same way, and the models under the
    request's `min_quality` (`RouteTable.lowest_quality`: none when every model reaches it)."""
    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    if env["cached_tokens"] or env["images"] or input_tokens > table.min_tier_above:
        return (), (), ()  # cache, image or tier prices: the general path
    if now >= table.next_retirement:  # the retired go as the unhealthy go
        retired = table.retired(now)
        unhealthy = retired if not unhealthy else unhealthy | retired
    needs = _needs_mask(env)
    context_needed = input_tokens + (max_tokens or 0)
    pos: Sequence[int]
    if (
        not needs & ~table.common_mask
        and not context_needed > table.min_context_window
        and (max_tokens is None or not max_tokens > table.min_max_tokens)
    ):  # every candidate can serve it
        pos = range(len(table.keys))
        costs = _cost_column(table, input_tokens, max_tokens)
        lats: Sequence[float] = table.latency_priors if latencies is None else latencies
    else:
        masks, windows = table.masks, table.context_windows
        if max_tokens is None:
            pos = [
                i
                for i, (m, w) in enumerate(zip(masks, windows, strict=True))
                if not needs & ~m and not context_needed > w
            ]
            defaults = table.default_output_costs
            prices = table.input_prices
            costs = [(input_tokens * prices[i] + defaults[i]) / 1e6 for i in pos]
        else:
            limits = table.max_tokens
            pos = [
                i
                for i, (m, w, t) in enumerate(zip(masks, windows, limits, strict=True))
                if not needs & ~m and not context_needed > w and not max_tokens > t
            ]
            prices, outputs = table.input_prices, table.output_prices
            costs = [(input_tokens * prices[i] + max_tokens * outputs[i]) / 1e6 for i in pos]
        priors = table.latency_priors if latencies is None else latencies
        lats = [priors[i] for i in pos]
    if unhealthy:
        keep = [s for s, p in enumerate(pos) if p not in unhealthy]
        pos = [pos[s] for s in keep]
        costs = [costs[s] for s in keep]
        lats = [lats[s] for s in keep]
    min_quality = env["min_quality"]
    if min_quality is not None and min_quality > table.lowest_quality:
        qualities = table.qualities
        keep = [s for s, p in enumerate(pos) if not qualities[p] < min_quality]
        pos = [pos[s] for s in keep]
        costs = [costs[s] for s in keep]
        lats = [lats[s] for s in keep]
    max_cost = env["max_cost"]
    max_latency = env["max_latency"]
    if max_cost is not None or max_latency is not None:
        if max_latency is None:
            keep = [s for s, c in enumerate(costs) if not c > max_cost]
        elif max_cost is None:
            keep = [s for s, x in enumerate(lats) if not x > max_latency]
        else:
            keep = [
                s
                for s, (c, x) in enumerate(zip(costs, lats, strict=True))
                if not c > max_cost and not x > max_latency
            ]
        if len(keep) < len(costs):
            pos = [pos[s] for s in keep]
            costs = [costs[s] for s in keep]
            lats = [lats[s] for s in keep]
    return pos, costs, lats


def _cost_column(table: RouteTable, input_tokens: float, max_tokens: float | None) -> list[float]:
    """Every candidate's estimated cost (simple prices). The column of a pair of (input,
    max) tokens seen before is kept (`CostColumn`); a pair seen for the first time is only
    noted, its column a plain list: a token count no other request has keeps no memory."""
    global cost_column_builds
    found = _COST_COLUMNS.get(id(table))
    if found is None or found[0] is not table:
        if len(_COST_COLUMNS) >= MAX_CACHED_ROUTES:
            _COST_COLUMNS.clear()
        found = _COST_COLUMNS[id(table)] = (table, {})
    kept = found[1]
    key = (input_tokens, max_tokens)
    costs = kept.get(key, _UNSEEN)
    if costs is not None and costs is not _UNSEEN:
        return costs
    prices = table.input_prices
    if max_tokens is None:
        column = [
            (input_tokens * a + b) / 1e6
            for a, b in zip(prices, table.default_output_costs, strict=True)
        ]
    else:
        column = [
            (input_tokens * a + max_tokens * b) / 1e6
            for a, b in zip(prices, table.output_prices, strict=True)
        ]
    if len(kept) >= MAX_COST_COLUMNS:
        kept.clear()
    if costs is _UNSEEN:  # the first time: noted only
        kept[key] = None
        return column
    cost_column_builds += 1  # the second time: kept, and its ranking from now on
    if cost_column_builds - _kept_since[0] >= MAX_KEPT_COLUMNS:
        _kept_since[0] = cost_column_builds
        for _, other in _COST_COLUMNS.values():
            other.clear()
    costs = CostColumn(column)
    costs.ranked = _USED_ONCE
    kept[key] = costs
    return costs


def _eligible_vectors(
    table: RouteTable,
    env: Mapping[str, Any],
    now: float,
    columns: Measured | None,
    unhealthy: AbstractSet[int] | None,
) -> tuple[Sequence[int], list[float], Sequence[float], Vectors | None] | None:
    """`_eligible_fast` for a big route, on the table's numpy columns (`RouteTable.vectors`):
    the same tests, the same costs (the same IEEE operations in the same order), and the
    columns also as arrays for the strategy (`Pool.vectors`). `columns`: the snapshot's
    measured columns (None: the priors stand). None when a cost could overflow to inf
    (absurd prices: the strategies' scores could be NaN, which Python's sort and numpy's
    order differently): `_eligible_fast` decides."""
    global vector_path_calls
    input_tokens = env["input_tokens"]
    max_tokens = env["max_tokens"]
    if env["cached_tokens"] or env["images"] or input_tokens > table.min_tier_above:
        return (), [], (), None  # cache, image or tier prices: the general path
    vec = table.vectors()
    most = input_tokens * vec.max_input_price + (
        vec.max_default_output_cost if max_tokens is None else max_tokens * vec.max_output_price
    )
    if not most < math.inf:  # (the costs are no higher, each rounded as it is)
        return None
    vector_path_calls += 1
    if now >= table.next_retirement:  # the retired go as the unhealthy go
        retired = table.retired(now)
        unhealthy = retired if not unhealthy else unhealthy | retired
    import numpy as np

    if max_tokens is None:
        cost = (input_tokens * vec.input_prices + vec.default_output_costs) / 1e6
    else:
        cost = (input_tokens * vec.input_prices + max_tokens * vec.output_prices) / 1e6
    if columns is None:
        lats: Sequence[float] = table.latency_priors
        lat, succ = vec.latency_priors, None
    else:
        lats = columns.lats
        lat, succ = columns.arrays()
    keep: Any = None  # the eligible positions as a boolean mask; None: all of them
    needs = _needs_mask(env)
    context_needed = input_tokens + (max_tokens or 0)
    if (
        needs & ~table.common_mask
        or context_needed > table.min_context_window
        or (max_tokens is not None and max_tokens > table.min_max_tokens)
    ):  # some candidate cannot serve it
        keep = (vec.masks & needs) == needs
        keep &= ~(context_needed > vec.context_windows)
        if max_tokens is not None:
            keep &= ~(max_tokens > vec.max_tokens)
    if unhealthy:
        if keep is None:
            keep = np.ones(len(lats), dtype=bool)
        keep[np.fromiter(unhealthy, dtype=np.int64, count=len(unhealthy))] = False
    min_quality = env["min_quality"]
    if min_quality is not None and min_quality > table.lowest_quality:
        fails = vec.qualities < min_quality
        keep = ~fails if keep is None else keep & ~fails
    max_cost = env["max_cost"]
    if max_cost is not None:
        fails = cost > max_cost
        keep = ~fails if keep is None else keep & ~fails
    max_latency = env["max_latency"]
    if max_latency is not None:
        fails = lat > max_latency
        keep = ~fails if keep is None else keep & ~fails
    if keep is None or keep.all():
        return range(len(lats)), cost.tolist(), lats, Vectors(cost, lat, succ, None, vec.indexes)
    at = np.flatnonzero(keep)
    if not len(at):
        return (), [], (), None
    cost, lat = cost[at], lat[at]
    vectors = Vectors(cost, lat, None if succ is None else succ[at], at, vec.indexes)
    return at.tolist(), cost.tolist(), lat.tolist(), vectors


def _picked(column: Sequence[Any], pos: Sequence[int]) -> list[Any]:
    """`[column[p] for p in pos]`, in C (a big pool's columns)."""
    return [column[pos[0]]] if len(pos) == 1 else list(operator.itemgetter(*pos)(column))


def evaluate(
    program: Program,
    env: Mapping[str, Any],
    *,
    metrics: MetricsView | None = None,
    state: EvalState | None = None,
    explain: bool = False,
    limiter: Limiter | None = None,
    consume: bool = True,
    now: float = 0.0,
    only: frozenset[str] | None = None,
) -> Decision:
    """`only`: the keys (`provider/id`) of the catalog entries the caller can send this
    request to (a gateway's own deployments); every other model is dropped as not offered.
    None: the whole route.

    `consume` false (a dry run) changes no state: no bucket, no daily tally, no violation,
    no round-robin turn; the decision is the one a real request would get now.

    A served route with a `shadow route b` has b decide the request too, on the same
    metrics, its limits checked dry (nothing consumed, nothing tallied), no round-robin turn
    taken: that decision is `decision.shadow`, logged beside the served one, never served
    (with `explain`, it has its own trace)."""
    decision: Decision = _evaluate(  # type: ignore[assignment]  # not lean: a Decision
        program, env, metrics, state, explain, limiter, consume, now, only, record=consume
    )
    served = program.by_name.get(decision.route)
    shadow = served.shadow if served is not None else None
    if shadow is not None:
        decision.shadow = _evaluate(  # type: ignore[assignment]
            program, env, metrics, None, explain, limiter, False, now, only,
            forced=program.by_name[shadow], record=False,
        )  # fmt: skip
    return decision


class Lean(NamedTuple):
    """A served or denied decision as far as a replay compares it (`evaluate_lean`): the
    `Decision`'s fields of the same names, with `denied` the limit's scope or the denial's
    reason."""

    allowed: bool
    route: str
    provider: str | None
    model: str | None
    denied: str | None
    estimated_cost: float | None
    estimated_latency_ms: float | None


def lean_of(decision: Decision) -> Lean:
    denied = decision.denied_by
    return Lean(
        decision.allowed, decision.route, decision.provider, decision.model,
        None if denied is None else denied.scope if isinstance(denied, LimitDenial)
        else denied.reason, decision.estimated_cost, decision.estimated_latency_ms,
    )  # fmt: skip


def evaluate_lean(
    program: Program,
    env: Mapping[str, Any],
    *,
    metrics: MetricsView | None = None,
    state: EvalState | None = None,
    limiter: Limiter | None = None,
    now: float = 0.0,
) -> Lean:
    """`evaluate` (consuming, no trace) as far as a replay compares it: the same choice, the
    same state changes (buckets, round-robin turns, pins, exploration budgets), without the
    alternatives, fallbacks, confidence or `Decision`. A `shadow route`'s decision is not
    made: it is never served and changes no state."""
    out = _evaluate(program, env, metrics, state, False, limiter, True, now, None, lean=True)
    return out if type(out) is Lean else lean_of(out)  # type: ignore[arg-type]


def _evaluate(
    program: Program,
    env: Mapping[str, Any],
    metrics: MetricsView | None,
    state: EvalState | None,
    explain: bool,
    limiter: Limiter | None,
    consume: bool,
    now: float,
    only: frozenset[str] | None,
    *,
    forced: CompiledRoute | None = None,
    record: bool = True,
    lean: bool = False,
) -> Decision | Lean:
    global ranking_builds, ranking_hits
    metrics = metrics or _NO_METRICS
    trace: list[dict[str, Any]] | None = [] if explain else None
    if trace is not None and env.get("wire") is not None:
        trace.append(
            {
                "step": "request",
                "format": env["format"],
                "derived": [d.to_dict() for d in env["wire"].derivations()],
            }
        )
    if trace is not None and (program.prompt_features or program.plugins):
        trace.append(_features_step(program, env))
    if program.denies:
        for rule in program.denies:  # before routing: no route, no limit is consumed
            if rule.when(env, None):
                return _denied_by_rule(program, env, rule, trace)
    route = _route_for(program, env, trace) if forced is None else forced
    experiment: str | None = None
    split = route.split
    if split is not None:  # an experiment: one hash picks the arm route
        experiment = route.name
        route = program.arm_routes[experiment][split.arm_index(env)]
        if trace is not None:
            trace.append(
                {"step": "split", "experiment": experiment, "by": split.key_text, "arm": route.name}
            )
    # the policy-wide `require`s this request meets and the route has not folded in (a
    # static one with a `when` is folded into one of the route's variants), and their
    # indexes in `program.requires`
    policy: list[PolicyRequire] | tuple[()] = ()
    applied: list[int] | tuple[()] = ()
    per_model = False  # one of them reads the request: checked model by model
    if program.live_requires:
        route, policy, applied, per_model = _policy_requires(program, route, env, trace)
    settings = route.settings
    if trace is not None:
        for model, because in route.dropped:
            trace.append(_drop(model, because))

    table = route.table
    pos: Sequence[int] = ()
    rates: Sequence[float] | None = None
    samples: Sequence[int] | None = None
    measuring = metrics.has_data
    stats_of = metrics.stats
    columns: Measured | None = None
    confidences: tuple[float, ...] = ()  # by position (`Measured.confidences`)
    vectors: Vectors | None = None  # a big pool's columns as arrays, for its strategy
    if measuring:
        take = getattr(metrics, "snapshot", None)
        if take is not None:
            snapshot: MetricsSnapshot = take()
            if snapshot.stats:
                stats_of = snapshot.stats.get
                if trace is None and not route.requires:
                    columns = snapshot.routes.get(id(route))
                    if columns is None or columns.route is not route:
                        columns = measured_columns(snapshot, route)
            else:
                measuring = False  # nothing in this snapshot yet: the priors stand
    if (
        trace is None
        and not route.requires
        and not per_model
        and (columns is not None or not measuring)
    ):
        if columns is None:
            out = route.prior_failing
            if applied:  # and the positions the policy-wide `require`s that apply drop
                out = _policy_drops(out, route.policy_failing, applied)
        else:
            out = columns.dropped(now) if columns.watch else None
            if columns.failing:  # a `require` on measurements drops them in this snapshot
                out = columns.failing if not out else out | columns.failing
            if applied:
                out = _policy_drops(out, columns.policy_failing, applied)
        if (
            len(table.keys) < VECTOR_MIN_CANDIDATES
            or (found := _eligible_vectors(table, env, now, columns, out)) is None
        ):
            pos, costs, lats = _eligible_fast(
                table, env, now, None if columns is None else columns.lats, out
            )
        else:
            pos, costs, lats, vectors = found
        if only is not None and pos:
            if type(pos) is range:  # every model eligible: slots are positions
                position_of = table.position_of
                keep = sorted(p for k in only if (p := position_of.get(k)) is not None)
            else:
                keys = table.keys
                keep = [s for s, p in enumerate(pos) if keys[p] in only]
            if len(keep) < len(pos):
                pos = [pos[s] for s in keep]
                costs = [costs[s] for s in keep]
                lats = [lats[s] for s in keep]
                if vectors is not None:
                    vectors = vectors.take(keep) if keep else None
        if pos and columns is not None:
            column = columns.rates
            if column is not None:
                if type(pos) is range:
                    rates = column
                elif vectors is not None:
                    rates = vectors.succ.tolist()
                else:
                    rates = [column[p] for p in pos]
            if columns.samples is not None:
                confidences = columns._confidences or columns.confidences()  # by position
                if settings.explore is not None:  # only exploring reads the pool's samples
                    if type(pos) is range:
                        samples = columns.samples
                    elif vectors is not None:
                        samples = _picked(columns.samples, pos)
                    else:
                        samples = [columns.samples[p] for p in pos]
    if not pos:  # the general path, also to say why each model was dropped
        pos, costs, lats, rates, samples, dropped = _eligible(
            program, route, env, stats_of, measuring, now, trace, only, policy
        )
        if not pos:
            return _armed(_no_eligible_model(program, env, route, dropped, trace), experiment)

    turn = 0
    strategy = settings.strategy
    if table.takes_turns:
        turn = state.turns.get(route.name, 0) if state is not None else 0
        if state is not None and record:  # a dry run peeks at the turn
            state.turns[route.name] = turn + 1
    kept = costs.ranked if type(costs) is CostColumn else None
    if kept is not None and not table.draws and not table.takes_turns:
        # a cost column used before: its ranking is kept (a column used once keeps none)
        if kept[0] is not lats or kept[1] is not rates:
            ranking_builds += 1
            order, score, reason = table.rank(
                Pool(table.view, pos, costs, lats, rates, 0.0, 0, vectors)
            )
            kept_order = KeptOrder(order)
            kept_order.parts = None
            kept = costs.ranked = (lats, rates, (kept_order, score, reason))
        else:
            ranking_hits += 1
        order, score, reason = kept[2]
    else:
        pool = Pool(
            table.view,
            pos,
            costs,
            lats,
            rates,
            draw(env["key"]) if table.draws else 0.0,
            turn,
            vectors,
        )
        order, score, reason = table.rank(pool)  # the route's strategy
    models, keys, providers = table.models, table.keys, table.providers
    explored: _Explored | None = None
    explore = settings.explore
    ranked = order  # the strategy's ranking, as the trace shows it
    if explore is not None and len(pos) > 1 and explore.selects(env["key"]):
        explored = _explore(route, explore, order[0], costs, samples, state, now)
        if explored is not None:  # first, the strategy's ranking after it
            order = [explored.slot, *(s for s in ranked if s != explored.slot)]
            reason = _explore_reason(route, explore, models[pos[explored.slot]], explored)
    pinning: _Pinning | None = None
    affinity = settings.affinity
    if affinity is not None:
        write = consume and record  # a dry run or a shadow neither creates nor moves pins
        pinning = _pinning(
            route, affinity, env, state, pos, order[0], write, stats_of, measuring, now
        )
        slot = pinning.slot
        if slot >= 0:  # the session's model, first; exploring would cool its cache
            explored = None
            order = [slot, *(s for s in ranked if s != slot)]
            pin = pinning.pin
            reason = (
                f"Pinned by affinity on {affinity.key_text}: the key's last request went"
                f" here {format_duration((now - pin.at) * 1000.0)} ago"  # type: ignore[union-attr]
            )
            if not env["cached_tokens"]:
                found = _cached_cost(route, pos[slot], env, pin.input_tokens)  # type: ignore[union-attr]
                if found is not None:
                    pinning.cached, cost = found
                    costs = list(costs)
                    costs[slot] = cost
    model_keys = table.model_keys
    statuses: list[LimitStatus] = []
    limited: set[str] = set()  # providers skipped at a rate limit: not fallbacks either
    skip = 0
    shadow_denials: tuple[LimitDenial, ...] = ()  # `shadow limit …`s that would have denied
    fold: PinWrite | None = None
    if limiter is not None and program.limits:
        if pinning is not None and pinning.ask is not None and pinning.ask.write:
            fold = state.pins.fold(  # type: ignore[union-attr]
                pinning.ask, lambda: [keys[pos[s]] for s in order]
            )
        plain = None
        if consume and record and fold is None and order:  # the common case, in one call
            top = pos[order[0]]
            plain = limiter.check_plain(program.limits, env, providers[top], model_keys[top])
        verdict = (
            plain
            if plain is not None
            else limiter.check(
                program.limits,
                env,
                ((providers[p], model_keys[p], costs[s]) for s in order for p in (pos[s],)),
                consume=consume,
                on_store_error=settings.on_store_error,
                record=record,
                pin=fold,
            )
        )
        statuses = verdict.statuses
        shadow_denials = verdict.shadow_denials
        if verdict.option is None:
            if pinning is not None and pinning.ask is not None and pinning.ask.write:
                state.pins.settle(pinning.ask, pinning.pin, None, False)  # type: ignore[union-attr]
            return _armed(_rate_limited(program, env, route, verdict, trace), experiment)
        if verdict.option:
            explored = None  # the explored model is at a rate limit: routed normally
            skip = verdict.option
            skipped = [pos[s] for s in order[:skip]]
            limited = {providers[p] for p in skipped}
            n = len(skipped)
            reason = (
                f"Ranked #{n + 1} by {strategy}: the {n} ranked above"
                f" {'it is' if n == 1 else 'it are'} at a provider or model rate limit"
                f" ({', '.join(keys[p] for p in skipped[:3])}{', …' if n > 3 else ''})"
            )
            if trace is not None:
                for p in skipped:
                    trace.append(_drop(models[p], "at a provider or model rate limit"))
            order = order[skip:]  # the skipped are neither alternatives nor fallbacks
    best = order[0]
    chosen = models[pos[best]]
    if pinning is not None:
        if pinning.slot >= 0 and skip:  # the pinned model is at a limit: the pin moves
            pinning.broken, pinning.slot, pinning.cached = "limit", -1, 0.0
        if pinning.ask is not None and pinning.ask.write:
            written = fold is not None and fold.written
            state.pins.settle(pinning.ask, pinning.pin, keys[pos[best]], written)  # type: ignore[union-attr]
        if pinning.broken is not None:
            reason += (
                f" (affinity on {affinity.key_text} broken: {pinning.pin.model}"  # type: ignore[union-attr]
                f" {_BROKEN[pinning.broken]})"
            )
        if trace is not None:
            trace.append(
                {
                    "step": "affinity",
                    "by": affinity.key_text,  # type: ignore[union-attr]
                    "key_hash": pinning.key_hash,
                    "pinned": pinning.slot >= 0,
                    "broken": pinning.broken,
                    "pin": None if pinning.pin is None else pinning.pin.model,
                    "cached_tokens": pinning.cached,
                }
            )
    if explored is not None:
        if state is not None and consume and record:  # a dry run or a shadow spends nothing
            _spend(route, explored, state)
        if trace is not None:
            left = explore.budget - explored.window.spent - explored.cost  # type: ignore[union-attr]
            trace.append(
                {
                    "step": "explore",
                    "provider": chosen.provider,
                    "model": chosen.id,
                    "samples": explored.samples,
                    "min_samples": settings.min_samples,
                    "share": explore.share,  # type: ignore[union-attr]
                    "cost": round(explored.cost, 10),
                    "budget_left": round(left, 10),
                }
            )
    if trace is not None:
        trace.append(
            {
                "step": "choose",
                "strategy": strategy,
                "ranking": [
                    {
                        "provider": models[pos[s]].provider,
                        "model": models[pos[s]].id,
                        "score": round(score(skip + i, s), 4),
                    }
                    for i, s in enumerate(order if explored is None else ranked)
                ],
            }
        )
    if lean:  # what a replay compares: no alternatives, fallbacks or confidence
        return Lean(
            True, route.name, chosen.provider, chosen.id, None,
            round(costs[best], 10), round(lats[best], 3),
        )  # fmt: skip
    if confidences:  # the shortcut on measured columns: kept per snapshot, by position
        confidence = confidences[pos[best]]
    elif samples is None:  # catalog priors only
        confidence = _PRIOR_SHOWN
    else:
        confidence = _confidence(samples[best], settings.min_samples)
    if type(order) is KeptOrder and not limited:  # a kept ranking, as it stands
        parts = order.parts  # (route, alternatives, fallbacks) as kept with it
        if parts is None or parts[0] is not route:
            parts = order.parts = (
                route,
                [
                    ((model := models[pos[s]]).provider, model.id, round(score(i, s), 4))
                    for i, s in enumerate(order[1 : 1 + MAX_ALTERNATIVES], 1)
                ],
                [(f["provider"], f["model"]) for f in _fallbacks(route, order, pos, limited)],
            )
        alternatives = [Alternative(*a) for a in parts[1]]
        fallbacks = [{"provider": p, "model": m} for p, m in parts[2]]
    else:
        alternatives = [
            Alternative((model := models[pos[s]]).provider, model.id, round(score(skip + i, s), 4))
            for i, s in enumerate(order[1 : 1 + MAX_ALTERNATIVES], 1)
        ]
        fallbacks = _fallbacks(route, order, pos, limited)
    decision = Decision(
        request_id=env["id"],
        allowed=True,
        provider=chosen.provider,
        model=chosen.id,
        deployment_of=chosen.family,
        route=route.name,
        strategy=strategy,
        reason=reason,
        estimated_cost=round(costs[best], 10),
        estimated_latency_ms=round(lats[best], 3),
        confidence=confidence,
        alternatives=alternatives,
        fallbacks=fallbacks,
        rate_limits=statuses,
        policy_version=program.version,
        trace=trace,
        input_format=env.get("format", NATIVE),
    )
    if experiment is not None:
        decision.experiment = experiment
        decision.arm = route.name
    if explored is not None:
        decision.explored = True
    if pinning is not None:
        decision.affinity = AffinityOutcome(
            pinning.key_hash, pinning.slot >= 0, pinning.broken, pinning.cached
        )
    if shadow_denials:
        decision.shadow_denials = shadow_denials
    return decision


def _features_step(program: Program, env: Mapping[str, Any]) -> dict[str, Any]:
    """The prompt features the policy reads, and how `request.complexity` was made (each
    term's value × weight) when it reads the score: `--explain` only."""
    conv = conversation_of(env)
    step: dict[str, Any] = {
        "step": "features",
        "values": {name: conv.feature(name) for name in sorted(program.prompt_features)},
        "complexity": None,
        "plugins": [_plugin_entry(p.name, p.outcome(env)) for p in program.plugins],
    }
    if program.reads_complexity:
        weights = program.complexity_weights
        step["complexity"] = {
            "score": conv.complexity(weights),
            "parts": [p.to_dict() for p in complexity_parts(conv, weights)],
        }
    return step


def _plugin_entry(name: str, outcome: Outcome) -> dict[str, Any]:
    """One classifier plugin's call in the features step: its value, µs, and why its
    fallback was used (null: its own value)."""
    return {
        "name": name,
        "value": outcome.value,
        "us": outcome.us,
        "error": outcome.error,
        "detail": outcome.detail or None,
    }


def _armed(decision: Decision, experiment: str | None) -> Decision:
    """A denial inside an experiment still names its arm (the route it was decided on)."""
    if experiment is not None:
        decision.experiment = experiment
        decision.arm = decision.route
    return decision


def _fallbacks(
    route: CompiledRoute, order: list[int], pos: Sequence[int], limited: set[str]
) -> list[dict[str, str]]:
    """Explicit `fallback provider/model` entries first, then for each other provider in
    fallback order its best-ranked eligible model; none from a provider skipped at a limit."""
    table = route.table
    models, providers = table.models, table.providers
    chosen = models[pos[order[0]]]
    chain: list[Model] = []
    if route.settings.fallback_models:
        eligible = {pos[s] for s in order}
        for key in route.settings.fallback_models:
            p = table.position_of.get(key)
            if p is None or p not in eligible:
                continue
            model = models[p]
            if model is not chosen and model not in chain:
                chain.append(model)
        chain = [m for m in chain if m.provider not in limited]
    wanted = None if chain or limited else table.fallback_providers.get(chosen.provider)
    if wanted is None:
        covered = {m.provider for m in chain} | limited
        covered.add(chosen.provider)
        wanted = tuple(p for p in route.provider_order if p not in covered)
    if wanted:
        best: dict[str, Model] = {}
        if len(order) <= 32:
            left = set(wanted)
            for s in order:  # the best-ranked model of each wanted provider
                p = pos[s]
                provider = providers[p]
                if provider in left:
                    left.discard(provider)
                    best[provider] = models[p]
                    if not left:
                        break
        elif type(order) is RankedSlots:  # ranked on arrays: look providers up on them
            positions = order.positions
            vectors = table.vectors()
            ranked_providers = vectors.providers[positions]
            codes = vectors.provider_codes
            for provider in wanted:
                code = codes.get(provider)
                if code is None:
                    continue
                hits = ranked_providers == code
                at = int(hits.argmax())
                if hits[at]:  # else no eligible model of that provider
                    best[provider] = models[int(positions[at])]
        else:  # a long ranking: look each provider up in C rather than walk it
            ranked = order if type(pos) is range else operator.itemgetter(*order)(pos)
            in_order = operator.itemgetter(*ranked)(providers)
            for provider in wanted:
                if provider in in_order:  # else no eligible model of that provider
                    best[provider] = models[ranked[in_order.index(provider)]]
        chain += [best[p] for p in wanted if p in best]
    return [{"provider": m.provider, "model": m.id} for m in chain]


def _drop(model: Model, because: str) -> dict[str, Any]:
    return {"step": "drop", "provider": model.provider, "model": model.id, "because": because}


def _rate_limited(
    program: Program,
    env: Mapping[str, Any],
    route: CompiledRoute,
    verdict: Verdict,
    trace: list[dict[str, Any]] | None,
) -> Decision:
    denied = verdict.denied_by
    if denied is None:  # cannot happen: a verdict without an option names its denial
        denied = UNATTRIBUTED
    key, retry = denied.key, denied.retry_after_ms
    who = f"{denied.scope} `{key}`" if key else denied.scope
    when = (
        f"retry after {retry} ms" if retry is not None else "the request is larger than the limit"
    )
    if trace is not None:
        trace.append({"step": "limit", "denied_by": denied.to_dict()})
    return Decision(
        request_id=env["id"],
        allowed=False,
        provider=None,
        model=None,
        route=route.name,
        strategy=route.settings.strategy,
        reason=f"Rate limited by {who} ({denied.unit}): {when}",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        rate_limits=verdict.statuses,
        denied_by=denied,
        policy_version=program.version,
        trace=trace,
        input_format=env.get("format", NATIVE),
    )


def _policy_requires(
    program: Program,
    route: CompiledRoute,
    env: Mapping[str, Any],
    trace: list[dict[str, Any]] | None,
) -> tuple[CompiledRoute, list[PolicyRequire], list[int], bool]:
    """The policy-wide `require`s checked per request: the route to use (its variant
    without the models the static ones whose `when` holds drop), the others that apply and
    their indexes in `program.requires`, and whether one of those reads the request."""
    requires, bits = program.requires, program.variant_bits
    policy: list[PolicyRequire] = []
    applied: list[int] = []
    per_model = False
    mask = 0
    for i in program.live_requires:
        require = requires[i]
        if require.when is None or require.when(env, None):
            if trace is not None:
                trace.append(_policy_step(require))
            bit = bits.get(i)
            if bit is not None and route.variants:
                mask |= bit
                continue
            policy.append(require)
            applied.append(i)
            per_model = per_model or require.reads_request
    if mask:  # the route's candidates less what those `require`s drop, compiled
        route = route.variants[mask]
    return route, policy, applied, per_model


def _policy_drops(
    out: AbstractSet[int] | None, failing: Sequence[frozenset[int]], applied: Sequence[int]
) -> AbstractSet[int] | None:
    """`out` with the positions the policy-wide `require`s `applied` drop (`failing`: by
    `require`, the route's on the priors or a snapshot's columns)."""
    for i in applied:
        found = failing[i]
        if found:
            out = found if not out else out | found
    return out


def _policy_step(require: PolicyRequire) -> dict[str, Any]:
    return {
        "step": "policy-require",
        "location": require.location,
        "require": require.text,
        "when": require.when_text,
    }


def _denied_by_rule(
    program: Program, env: Mapping[str, Any], rule: DenyRule, trace: list[dict[str, Any]] | None
) -> Decision:
    if trace is not None:
        trace.append(
            {"step": "deny", "location": rule.location, "when": rule.when_text, "matched": True}
        )
    return Decision(
        request_id=env["id"],
        allowed=False,
        provider=None,
        model=None,
        route="",
        strategy="",
        reason=f"Denied by the rule at {rule.location}: {rule.reason}",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        denied_by=DeniedByRule(rule.location, rule.reason, rule.when_text),
        policy_version=program.version,
        trace=trace,
        input_format=env.get("format", NATIVE),
    )


def _no_eligible_model(
    program: Program,
    env: Mapping[str, Any],
    route: CompiledRoute,
    dropped: list[tuple[Model, str]],
    trace: list[dict[str, Any]] | None,
) -> Decision:
    candidates = tuple(
        [DroppedCandidate(m.provider, m.id, because) for m, because in (*route.dropped, *dropped)]
    )
    reasons = {c.dropped_because for c in candidates}
    blamed = next((r for r in route.policy_requires if r.drop_reason in reasons), None)
    if blamed is not None:  # a policy-wide `require` left no candidate: denied, not elsewhere
        return Decision(
            request_id=env["id"],
            allowed=False,
            provider=None,
            model=None,
            route=route.name,
            strategy=route.settings.strategy,
            reason=f"Denied by {blamed.label}",
            estimated_cost=None,
            estimated_latency_ms=None,
            confidence=1.0,
            denied_by=DeniedByPolicyRequire(
                blamed.location, blamed.text, blamed.when_text, candidates
            ),
            policy_version=program.version,
            trace=trace,
            input_format=env.get("format", NATIVE),
        )
    n = len(candidates)
    return Decision(
        request_id=env["id"],
        allowed=False,
        provider=None,
        model=None,
        route=route.name,
        strategy=route.settings.strategy,
        reason=f"No eligible model: all {n} candidates of route `{route.name}` were dropped",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        denied_by=NoEligibleModel(candidates),
        policy_version=program.version,
        trace=trace,
        input_format=env.get("format", NATIVE),
    )
