"""The simulated world: synthetic providers, their latency and failure draws, and the traffic.

A provider's latency is lognormal (from a mean and a p95 or a sigma), it fails at a rate,
and it may `drift` or have an `outage` from a request number on. The traffic is a list of
request templates drawn by weight, arriving as a Poisson process on a fake clock that
starts at `START`. Every draw comes from a generator seeded from the scenario's seed, so a
run is reproducible and runs compare on common random numbers.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.catalog.model import Model

Z95 = 1.6448536269514722  # the standard normal's 95th percentile
START = 1_750_000_000.0  # the fake clock's epoch: fixed, so runs never depend on today

# ---------------------------------------------------------------- a provider's YAML shape

Rate = Annotated[float, Field(ge=0, le=1)]


class Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at_request: Annotated[int, Field(ge=0)]
    latency_factor: Annotated[float, Field(gt=0)] = 1.0
    failure_rate: Rate | None = None


class Outage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    from_request: Annotated[int, Field(ge=0)]
    to_request: Annotated[int, Field(ge=0)]
    latency_ms: Annotated[float, Field(ge=0)] | None = None  # default: the usual draw

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.to_request <= self.from_request:
            raise ValueError(
                f"to_request ({self.to_request}) must be greater than from_request"
                f" ({self.from_request})"
            )
        return self


class ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mean_ms: Annotated[float, Field(gt=0)]
    p95_ms: Annotated[float, Field(gt=0)] | None = None
    sigma: Annotated[float, Field(ge=0, le=5)] | None = None
    failure_rate: Rate = 0.0
    drift: Drift | None = None
    outage: Outage | None = None

    @model_validator(mode="after")
    def _shape(self) -> ProviderSpec:
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
    """A synthetic provider: lognormal latency (mu, sigma of the log), failures, events."""

    key: str
    mu: float
    sigma: float
    failure_rate: float
    drift: Drift | None = None
    outage: Outage | None = None

    @classmethod
    def from_mean(cls, key: str, spec: ProviderSpec) -> Provider:
        if spec.sigma is not None:
            sigma = spec.sigma
        else:  # mean = e^(mu + s²/2) and p95 = e^(mu + z·s): the smaller root for s
            assert spec.p95_ms is not None
            sigma = Z95 - math.sqrt(Z95 * Z95 - 2 * math.log(spec.p95_ms / spec.mean_ms))
        mu = math.log(spec.mean_ms) - sigma * sigma / 2
        return cls(key, mu, sigma, spec.failure_rate, spec.drift, spec.outage)

    @classmethod
    def from_prior(cls, model: Model) -> Provider:
        """The catalog's latency prior as the distribution (median p50), no failures."""
        sigma = math.log(model.latency_p95_ms / model.latency_p50_ms) / Z95
        return cls(model.key, math.log(model.latency_p50_ms), sigma, 0.0)

    @property
    def mean_ms(self) -> float:
        return math.exp(self.mu + self.sigma * self.sigma / 2)

    def outcome(self, request: int, z: float, u: float) -> tuple[float, bool]:
        """Latency (ms) and success of request number `request`, given its draws."""
        latency = math.exp(self.mu + self.sigma * z)
        failure_rate = self.failure_rate
        drift = self.drift
        if drift is not None and request >= drift.at_request:
            latency *= drift.latency_factor
            if drift.failure_rate is not None:
                failure_rate = drift.failure_rate
        outage = self.outage
        if outage is not None and outage.from_request <= request < outage.to_request:
            return (latency if outage.latency_ms is None else outage.latency_ms), False
        return latency, u >= failure_rate


@dataclass(frozen=True, slots=True, eq=False)  # hashed by identity
class Template:
    name: str
    weight: float
    fields: Mapping[str, Any]  # request fields (no id)
    input_tokens: int
    output_tokens: int  # what the model writes (at most max_tokens)
    needs: frozenset[str]
    max_tokens: int | None


@dataclass(frozen=True, slots=True)
class Arrival:
    index: int
    at: float  # epoch seconds on the fake clock
    template: Template


def draw_arrivals(
    seed: int, requests: int, rate_per_s: float, traffic: Sequence[Template]
) -> list[Arrival]:
    """The same arrivals for every run: templates by weight, Poisson arrival times."""
    rng = random.Random(f"{seed}:traffic")
    cumulative: list[float] = []
    total = 0.0
    for t in traffic:
        total += t.weight
        cumulative.append(total)
    out = []
    now = START
    last = len(cumulative) - 1
    for i in range(requests):
        now += rng.expovariate(rate_per_s)
        pick = min(bisect.bisect_right(cumulative, rng.random() * total), last)
        out.append(Arrival(i, now, traffic[pick]))
    return out


def outcome_rng(seed: int) -> random.Random:
    """A run's own generator for outcome draws: one latency and one failure draw per request
    whatever the route, seeded alike for every run (common random numbers)."""
    return random.Random(f"{seed}:outcomes")
