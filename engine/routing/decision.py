"""What the engine answers: a Decision (plain slotted dataclasses on the hot path).

`Decision.to_json()` is its JSON, as the CLI prints it and the service answers it: the
fields of `to_dict()` encoded by msgspec (compact, UTF-8), numbers with no fraction
written as integers (`109`, not `109.0`).

`DecisionSchema` (`decision_schema`, built on first use) is the pydantic mirror used only
for `policyctl schema decision`, the service's OpenAPI document and for tests that check
every emitted decision against the published schema.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgspec

from engine.limits.records import DenialRecord, LimitDenial, LimitStatus


@dataclass(slots=True)
class Alternative:
    provider: str
    model: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        score = self.score
        if score.__class__ is float and score.is_integer():
            score = int(score)
        return {"provider": self.provider, "model": self.model, "score": score}


@dataclass(frozen=True, slots=True)
class DroppedCandidate:
    """A model of the route that the request could not use, and why."""

    provider: str
    model: str
    dropped_because: str

    def to_dict(self) -> dict[str, str]:
        return {
            "provider": self.provider,
            "model": self.model,
            "dropped_because": self.dropped_because,
        }


@dataclass(frozen=True, slots=True, eq=False)
class NoEligibleModel(DenialRecord):
    """Every candidate of the route was dropped (by `require`, a hard limit, health…)."""

    candidates: tuple[DroppedCandidate, ...]
    reason: ClassVar[str] = "no_eligible_model"

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "candidates": [c.to_dict() for c in self.candidates]}


@dataclass(frozen=True, slots=True, eq=False)
class DeniedByRule(DenialRecord):
    """A `deny "reason" when …` rule matched the request (checked before routing)."""

    location: str  # file:line of the rule
    message: str  # the rule's reason, as written
    when: str  # its condition, on one line
    reason: ClassVar[str] = "deny_rule"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "rule": f"deny at {self.location}",
            "location": self.location,
            "message": self.message,
            "when": self.when,
        }


@dataclass(frozen=True, slots=True, eq=False)
class DeniedByPolicyRequire(DenialRecord):
    """A policy-wide `require` left the route no candidate: the request is denied, never
    served by a model outside it."""

    location: str  # file:line of the `require`
    require: str  # its condition, on one line
    when: str | None  # its `when`, on one line
    candidates: tuple[DroppedCandidate, ...]  # every candidate of the route, and why dropped
    reason: ClassVar[str] = "policy_require"

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "rule": f"require at {self.location}",
            "location": self.location,
            "require": self.require,
            "when": self.when,
            "candidates": [c.to_dict() for c in self.candidates],
        }


Denial = LimitDenial | NoEligibleModel | DeniedByRule | DeniedByPolicyRequire


@dataclass(frozen=True, slots=True)
class AffinityOutcome:
    """What `affinity by request.KEY for D` did for a decision of its route."""

    key_hash: str | None  # a hash of the key's value (None: the request has no such field)
    pinned: bool  # sent to the model the key's previous request went to
    broken: str | None  # why a live pin was not followed: health, ineligible or limit
    cached_tokens: float = 0.0  # input tokens priced at the cache-read price (pinned only)

    def to_dict(self) -> dict[str, Any]:
        cached = self.cached_tokens
        return {
            "key_hash": self.key_hash,
            "pinned": self.pinned,
            "broken": self.broken,
            "cached_tokens": int(cached) if cached.is_integer() else cached,
        }


@dataclass(slots=True)
class Decision:
    request_id: str | None
    allowed: bool
    provider: str | None
    model: str | None
    route: str
    strategy: str
    reason: str
    estimated_cost: float | None
    estimated_latency_ms: float | None
    confidence: float
    alternatives: list[Alternative] = field(default_factory=list)
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    rate_limits: list[LimitStatus] = field(default_factory=list)
    denied_by: Denial | None = None
    policy_version: str = ""
    trace: list[dict[str, Any]] | None = None
    deployment_of: str | None = None  # the catalog model, when `model` is one of its deployments
    input_format: str = "native"  # the request's format (engine.wire.FORMATS)
    experiment: str | None = None  # the route whose `split` chose the arm
    arm: str | None = None  # the arm route the experiment sent the request to
    explored: bool = False  # `explore`: sent to a model with few samples, to measure it
    affinity: AffinityOutcome | None = None  # the route has `affinity`: what it did
    # `shadow route b`: b's decision of the same request, logged, never served (in JSON
    # only with the trace, `--explain`)
    shadow: Decision | None = None
    # `shadow limit …`s that would have denied this (allowed) decision: reported, not applied
    shadow_denials: tuple[LimitDenial, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The decision's JSON fields (what `to_json()` encodes), integral numbers as ints."""
        cost, latency, confidence = self.estimated_cost, self.estimated_latency_ms, self.confidence
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "allowed": self.allowed,
            "provider": self.provider,
            "model": self.model,
            "route": self.route,
            "strategy": self.strategy,
            "reason": self.reason,
            "estimated_cost": int(cost) if cost.__class__ is float and cost.is_integer() else cost,  # type: ignore[union-attr]
            "estimated_latency_ms": (
                int(latency) if latency.__class__ is float and latency.is_integer() else latency  # type: ignore[union-attr]
            ),
            "confidence": (
                int(confidence)
                if confidence.__class__ is float and confidence.is_integer()
                else confidence
            ),
            "alternatives": [a.to_dict() for a in self.alternatives],
            "fallbacks": list(self.fallbacks),
            "rate_limits": [_integral_numbers(r.to_dict()) for r in self.rate_limits],
            "denied_by": None if self.denied_by is None else self.denied_by.to_dict(),
            "policy_version": self.policy_version,
        }
        if self.deployment_of is not None:
            out["deployment_of"] = self.deployment_of
        if self.experiment is not None:
            out["experiment"] = self.experiment
            out["arm"] = self.arm
        if self.explored:
            out["explored"] = True
        if self.affinity is not None:
            out["affinity"] = self.affinity.to_dict()
        if self.shadow_denials:
            out["shadow_denials"] = [d.to_dict() for d in self.shadow_denials]
        if self.input_format != "native":
            out["input_format"] = self.input_format
        if self.trace is not None:
            out["trace"] = _integral_tree(self.trace)
            if self.shadow is not None:
                out["shadow"] = self.shadow.to_dict()
        return out

    def to_json(self) -> bytes:
        """`to_dict()` as compact UTF-8 JSON, in one pass. A string msgspec cannot encode
        (a lone surrogate has no UTF-8 form: request validation refuses one, but an
        embedding app builds decisions too) sends the decision through the standard
        library instead, non-ASCII escaped, so encoding never fails on a string."""
        fields = self.to_dict()
        try:
            return _encode(fields)
        except (ValueError, TypeError):  # UnicodeEncodeError: a lone surrogate
            return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")


_encode = msgspec.json.Encoder().encode


_STATUS_NUMBERS = ("remaining", "limit", "reset_at", "retry_after_ms")


def _integral_numbers(status: dict[str, Any]) -> dict[str, Any]:
    """A rate-limit status's numbers with no fraction as ints (`109`, not `109.0`)."""
    for name in _STATUS_NUMBERS:
        value = status[name]
        if value.__class__ is float and value.is_integer():
            status[name] = int(value)
    return status


def _integral_tree(value: Any) -> Any:
    """The explain trace with integral floats as ints, at any depth (a copy: `--explain`
    only, off the hot path)."""
    if value.__class__ is float:
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _integral_tree(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_integral_tree(v) for v in value]
    return value


def __getattr__(name: str) -> Any:
    """`DecisionSchema`, the pydantic mirror, built on first use (`decision_schema`): a
    `policyctl eval` or a service that never prints the schema does not pay for it."""
    if name == "DecisionSchema":
        from engine.routing.decision_schema import DecisionSchema

        return DecisionSchema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
