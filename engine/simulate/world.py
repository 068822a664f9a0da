"""The simulated world: synthetic providers, their latency and failure draws, and the traffic.

A provider's latency is lognormal (from a mean and a p95 or a sigma), it fails at a rate,
and it may `drift` from a request number on, or have an `outage` (every call fails) or a
`degradation` (latencies multiplied, no errors) over a window of request numbers. Its true
`quality` per request template says whether an answer is good enough for the template's
`min_quality` (the simulator's world, not the catalog's quality scores a policy reads).
The traffic is a list of request templates drawn by weight, arriving as a Poisson process
on a fake clock that starts at `START`. Every draw comes from a generator seeded from the
scenario's seed, so a run is reproducible and runs compare on common random numbers.

A template with a `session` is an agent: each draw starts a session of `turns` requests,
`gap_s` apart on average, each turn's prompt the previous one's plus `grows_by` tokens and
the same `metadata.session_id`. Providers model prompt caching (`PromptCache`): a turn sent
to a deployment that was sent the session's earlier prompt, within its `cache_ttl_s`, reads
that prefix at the catalog's cached-input price.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.catalog.model import Model

Z95 = 1.6448536269514722  # the standard normal's 95th percentile
DEFAULT_CACHE_TTL_S = 300.0  # a provider's prompt cache: 5 minutes (Anthropic's, OpenAI's least)
MAX_TURNS = 100_000
START = 1_750_000_000.0  # the fake clock's epoch: fixed, so runs never depend on today

# ---------------------------------------------------------------- a provider's YAML shape

Rate = Annotated[float, Field(ge=0, le=1)]


class Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_request: Annotated[int, Field(ge=0)]
    latency_factor: Annotated[float, Field(gt=0)] = 1.0
    failure_rate: Rate | None = None


class _Window(BaseModel):
    """Requests [from_request, to_request): arrival numbers, the same in every run."""

    model_config = ConfigDict(extra="forbid")
    from_request: Annotated[int, Field(ge=0)]
    to_request: Annotated[int, Field(ge=0)]

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.to_request <= self.from_request:
            raise ValueError(
                f"to_request ({self.to_request}) must be greater than from_request"
                f" ({self.from_request})"
            )
        return self

    def covers(self, request: int) -> bool:
        return self.from_request <= request < self.to_request


class Outage(_Window):
    latency_ms: Annotated[float, Field(ge=0)] | None = None  # default: the usual draw


class Degradation(_Window):
    """Slower without errors: latencies (so the mean and every percentile) times `factor`."""

    latency_factor: Annotated[float, Field(gt=0)]


class SessionSpec(BaseModel):
    """An agent session: `turns` requests, `gap_s` apart on average (exponential gaps),
    each prompt the previous one's plus `grows_by` tokens."""

    model_config = ConfigDict(extra="forbid")
    turns: Annotated[int, Field(ge=1, le=MAX_TURNS, strict=True)]
    grows_by: Annotated[int, Field(ge=0, strict=True)] = 0
    gap_s: Annotated[float, Field(gt=0)]


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean_ms: Annotated[float, Field(gt=0)] | None = None  # None: the catalog prior
    p95_ms: Annotated[float, Field(gt=0)] | None = None
    sigma: Annotated[float, Field(ge=0, le=5)] | None = None
    failure_rate: Rate = 0.0
    drift: Drift | None = None
    outage: Outage | None = None
    degradation: Degradation | None = None
    # true quality: one score for every template, or per template name (checked by the
    # scenario against its templates)
    quality: float | dict[str, float] | None = None
    # how long the provider keeps a prompt it was sent (a model with a cached-input price)
    cache_ttl_s: Annotated[float, Field(ge=0)] = DEFAULT_CACHE_TTL_S

    @field_validator("quality", mode="before")
    @classmethod
    def _quality(cls, value: Any) -> Any:
        def score(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1

        if value is None or score(value):
            return value
        if isinstance(value, dict) and value:
            for name, v in value.items():
                if not score(v):
                    raise ValueError(f"`{name}`: {v!r} is not a score from 0 to 1")
            return {str(k): v for k, v in value.items()}
        raise ValueError(
            "expected a score from 0 to 1, or a mapping of template names to scores"
            " (`{chat: 0.8, code: 0.6}`)"
        )

    @model_validator(mode="after")
    def _shape(self) -> ProviderSpec:
        if self.mean_ms is None:
            if self.p95_ms is not None or self.sigma is not None:
                raise ValueError("give `mean_ms` with `p95_ms` or `sigma`")
            return self  # the latency is the catalog prior's
        if (self.p95_ms is None) == (self.sigma is None):
            raise ValueError("give the latency spread as `p95_ms` or as `sigma`, not both")
        if self.p95_ms is not None:
            ratio = self.p95_ms / self.mean_ms
            if ratio <= 1:
                raise ValueError(
                    f"p95_ms ({self.p95_ms:g}) must be greater than mean_ms ({self.mean_ms:g})"
                )
            if ratio >= math.exp(Z95 * Z95 / 2):
                raise ValueError(
                    f"p95_ms ({self.p95_ms:g}) is too far above mean_ms ({self.mean_ms:g}) for a"
                    f" lognormal: keep it under {math.exp(Z95 * Z95 / 2):.2f}× the mean"
                )
        return self


# ---------------------------------------------------------------- providers and traffic


@dataclass(frozen=True, slots=True)
class Provider:
    """A synthetic provider: lognormal latency (mu, sigma of the log), failures, events,
    and its true quality (one score, or per template name; None: not given)."""

    key: str
    mu: float
    sigma: float
    failure_rate: float
    drift: Drift | None = None
    outage: Outage | None = None
    degradation: Degradation | None = None
    quality: float | Mapping[str, float] | None = None
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S

    @classmethod
    def from_spec(cls, model: Model, spec: ProviderSpec) -> Provider:
        """A provider from its YAML entry; without `mean_ms`, the catalog prior's latency."""
        if spec.mean_ms is not None:
            return cls.from_mean(model.key, spec)
        prior = cls.from_prior(model)
        return cls(
            model.key,
            prior.mu,
            prior.sigma,
            spec.failure_rate,
            spec.drift,
            spec.outage,
            spec.degradation,
            spec.quality,
            spec.cache_ttl_s,
        )

    @classmethod
    def from_mean(cls, key: str, spec: ProviderSpec) -> Provider:
        assert spec.mean_ms is not None
        if spec.sigma is not None:
            sigma = spec.sigma
        else:  # mean = e^(mu + s²/2) and p95 = e^(mu + z·s): the smaller root for s
            assert spec.p95_ms is not None
            sigma = Z95 - math.sqrt(Z95 * Z95 - 2 * math.log(spec.p95_ms / spec.mean_ms))
        mu = math.log(spec.mean_ms) - sigma * sigma / 2
        return cls(
            key,
            mu,
            sigma,
            spec.failure_rate,
            spec.drift,
            spec.outage,
            spec.degradation,
            spec.quality,
            spec.cache_ttl_s,
        )

    @classmethod
    def from_prior(cls, model: Model) -> Provider:
        """The catalog's latency prior as the distribution (median p50), no failures."""
        sigma = math.log(model.latency_p95_ms / model.latency_p50_ms) / Z95
        return cls(model.key, math.log(model.latency_p50_ms), sigma, 0.0)

    @property
    def mean_ms(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2)

    def factor_at(self, request: int) -> float:
        """What latencies are multiplied by at request number `request` (drift, degradation)."""
        factor = 1.0
        drift = self.drift
        if drift is not None and request >= drift.at_request:
            factor *= drift.latency_factor
        slow = self.degradation
        if slow is not None and slow.covers(request):
            factor *= slow.latency_factor
        return factor

    def failure_rate_at(self, request: int) -> float:
        """The chance a call fails at request number `request` (1 during an outage)."""
        if self.outage is not None and self.outage.covers(request):
            return 1.0
        drift = self.drift
        if drift is not None and request >= drift.at_request and drift.failure_rate is not None:
            return drift.failure_rate
        return self.failure_rate

    def mean_ms_at(self, request: int) -> float:
        return self.mean_ms * self.factor_at(request)

    def p95_ms_at(self, request: int) -> float:
        return math.exp(self.mu + Z95 * self.sigma) * self.factor_at(request)

    def quality_for(self, template: str, default: float | None) -> float | None:
        """The true quality of this model's answers to `template` (else `default`)."""
        q = self.quality
        if q is None:
            return default
        if isinstance(q, (int, float)):
            return float(q)
        return q.get(template, default)

    def outcome(self, request: int, z: float, u: float) -> tuple[float, bool]:
        """Latency (ms) and success of request number `request`, given its draws."""
        latency = math.exp(self.mu + self.sigma * z) * self.factor_at(request)
        outage = self.outage
        if outage is not None and outage.covers(request):
            return (latency if outage.latency_ms is None else outage.latency_ms), False
        return latency, u >= self.failure_rate_at(request)


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity
class Template:
    name: str
    weight: float
    fields: Mapping[str, Any]  # request fields (no id)
    input_tokens: int
    output_tokens: int  # what the model writes (at most max_tokens)
    needs: frozenset[str]
    max_tokens: int | None
    min_quality: float | None = None  # the true quality an answer needs (None: any)
    region: str | None = None  # the request's `region`
    max_cost: float | None = None  # the request's limits, which the oracle honours too
    max_latency_ms: float | None = None
    users: int | None = None  # draw each request's `user` from a pool of this many
    session: SessionSpec | None = None  # an agent: each draw starts a session of turns
    # prompt content: the native `messages` bodies each arrival draws one of, and the
    # input tokens the engine estimates for each (empty without `content`)
    bodies: tuple[tuple[dict[str, str], ...], ...] = ()
    body_tokens: tuple[int, ...] = ()

    @property
    def largest_input(self) -> int:
        """The input tokens of its largest request (a session's last turn)."""
        s = self.session
        return self.input_tokens if s is None else self.input_tokens + (s.turns - 1) * s.grows_by


def user_name(number: int, users: int) -> str:
    """User `number` of a pool of `users`: `u007` (zero-padded, at least three digits)."""
    return f"u{number:0{max(3, len(str(users - 1)))}d}"


def capable(model: Model, template: Template, input_tokens: int | None = None) -> bool:
    """What a capability filter checks: features, context window and max_tokens (for a
    request of `input_tokens`, by default the template's)."""
    if not template.needs <= model.supports:
        return False
    max_tokens = template.max_tokens
    if max_tokens is not None and max_tokens > model.max_tokens:
        return False
    size = template.input_tokens if input_tokens is None else input_tokens
    return size + (max_tokens or 0) <= model.context_window


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int
    at: float  # epoch seconds on the fake clock
    template: Template
    user: str | None = None  # drawn from the template's pool of `users` (None: no pool)
    session: str | None = None  # an agent session's id (`metadata.session_id`)
    turn: int = 0  # the turn of the session, from 0
    variant: int = -1  # the template's body it sends (`Template.bodies`; -1: none)

    @property
    def input_tokens(self) -> int:
        """The prompt's tokens: its body's, else the template's plus `grows_by` per
        earlier turn."""
        t = self.template
        if self.variant >= 0:
            return t.body_tokens[self.variant]
        return t.input_tokens + (self.turn * t.session.grows_by if t.session else 0)


def draw_arrivals(
    seed: int, requests: int, rate_per_s: float, traffic: Sequence[Template]
) -> list[Arrival]:
    """The same arrivals for every run: templates by weight, Poisson arrival times, and a
    user drawn uniformly from the template's pool when it has `users` (from a generator of
    its own, so a pool changes neither the templates nor the times).

    A template with prompt `content` sends one of its bodies, drawn uniformly from a
    generator of its own (again, nothing else changes).

    A draw of a template with a `session` starts a session (`s0`, `s1`, … in order of
    start) whose turns follow at exponential gaps of mean `gap_s` (from a generator of
    their own), with the session's user; every turn counts as a request. Without sessions
    the arrivals are exactly what they were before sessions existed."""
    rng = random.Random(f"{seed}:traffic")
    users_rng = random.Random(f"{seed}:users")
    bodies_rng = random.Random(f"{seed}:bodies")
    gaps_rng = random.Random(f"{seed}:sessions")
    cumulative: list[float] = []
    total = 0.0
    for t in traffic:
        total += t.weight
        cumulative.append(total)
    out: list[Arrival] = []
    now = START
    last = len(cumulative) - 1
    sessions = 0
    # turns due: (time, order, template, user, session, turn)
    due: list[tuple[float, int, Template, str | None, str | None, int]] = []
    order = 0
    next_draw: float | None = None
    while len(out) < requests:
        if next_draw is None:
            now += rng.expovariate(rate_per_s)
            next_draw = now
        if due and due[0][0] <= next_draw:
            at, _, template, user, session, turn = heapq.heappop(due)
            out.append(Arrival(len(out), at, template, user, session, turn))
            spec = template.session
            if spec is not None and turn + 1 < spec.turns:
                gap = gaps_rng.expovariate(1.0 / spec.gap_s)
                heapq.heappush(due, (at + gap, order, template, user, session, turn + 1))
                order += 1
            continue
        pick = min(bisect.bisect_right(cumulative, rng.random() * total), last)
        template = traffic[pick]
        pool = template.users
        user = None if pool is None else user_name(int(users_rng.random() * pool), pool)
        next_draw = None
        if template.session is None:
            variant = int(bodies_rng.random() * len(template.bodies)) if template.bodies else -1
            out.append(Arrival(len(out), now, template, user, variant=variant))
            continue
        heapq.heappush(due, (now, order, template, user, f"s{sessions}", 0))
        order += 1
        sessions += 1
    return out


class PromptCache:
    """The providers' prompt caches in one run: per (session, deployment), the prompt
    the deployment was last sent by the session, and when. A turn reads the earlier
    prompt from the cache (a prefix of its own) when its deployment has a cached-input
    price and saw the session's prompt at most its `cache_ttl_s` before; a successful
    call writes (refreshes) the entry. Deterministic: no draw is made."""

    __slots__ = ("_caches", "_entries", "_ttl")

    def __init__(self, providers: Sequence[Provider], models: Sequence[Model]) -> None:
        self._entries: dict[tuple[str, int], tuple[float, int]] = {}
        self._ttl = [p.cache_ttl_s for p in providers]
        self._caches = [m.cached_input_price is not None for m in models]

    def read(self, arrival: Arrival, index: int) -> int:
        """The tokens of `arrival`'s prompt read from model `index`'s cache (0: none)."""
        if arrival.session is None or not self._caches[index]:
            return 0
        found = self._entries.get((arrival.session, index))
        if found is None or arrival.at - found[0] > self._ttl[index]:
            return 0
        return min(found[1], arrival.input_tokens)

    def write(self, arrival: Arrival, index: int) -> None:
        """Model `index` served `arrival`: it now holds the session's prompt."""
        if arrival.session is not None and self._caches[index]:
            self._entries[(arrival.session, index)] = (arrival.at, arrival.input_tokens)


def outcome_rng(seed: int) -> random.Random:
    """A run's own generator for outcome draws: one latency and one failure draw per request
    whatever the route, seeded alike for every run (common random numbers)."""
    return random.Random(f"{seed}:outcomes")


def bad_chance(quality: float | None, needed: float | None, spread: float) -> float:
    """The chance that an answer of true quality `quality` to a request that needs `needed`
    is bad: 0 when it meets the need (or either is unknown); under it, with `spread` 0
    (the default), 1; with a `spread` s > 0, a logistic in the gap g = needed − quality,
    shifted and doubled so that it starts at 0 where the model meets the need:
    2 / (1 + e^(−g/s)) − 1 (= tanh(g / 2s)): 46% at g = s, 76% at 2s, 96% at 4s."""
    if quality is None or needed is None or quality >= needed:
        return 0.0
    if spread <= 0:
        return 1.0
    return 2.0 / (1.0 + math.exp(-(needed - quality) / spread)) - 1.0


def answer_rng(seed: int) -> random.Random:
    """A run's own generator for the bad-answer draws: one per request whatever the route,
    seeded alike for every run (two runs that send a request to the same model agree)."""
    return random.Random(f"{seed}:answers")
