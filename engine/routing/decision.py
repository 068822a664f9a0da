"""What the engine answers: a Decision (plain slotted dataclasses on the hot path).

`DecisionSchema` is the pydantic mirror used only for `policyctl schema decision` and
for tests that check every emitted decision against the published schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from engine.limits.records import DenialRecord, LimitDenial, LimitStatus


@dataclass(slots=True)
class Alternative:
    provider: str
    model: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"provider": self.provider, "model": self.model, "score": self.score}


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
    denied_by: LimitDenial | NoEligibleModel | None = None
    policy_version: str = ""
    trace: list[dict[str, Any]] | None = None
    deployment_of: str | None = None  # the catalog model, when `model` is one of its deployments
    input_format: str = "native"  # the request's format (engine.wire.FORMATS)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "allowed": self.allowed,
            "provider": self.provider,
            "model": self.model,
            "route": self.route,
            "strategy": self.strategy,
            "reason": self.reason,
            "estimated_cost": self.estimated_cost,
            "estimated_latency_ms": self.estimated_latency_ms,
            "confidence": self.confidence,
            "alternatives": [a.to_dict() for a in self.alternatives],
            "fallbacks": list(self.fallbacks),
            "rate_limits": [r.to_dict() for r in self.rate_limits],
            "denied_by": None if self.denied_by is None else self.denied_by.to_dict(),
            "policy_version": self.policy_version,
        }
        if self.deployment_of is not None:
            out["deployment_of"] = self.deployment_of
        if self.input_format != "native":
            out["input_format"] = self.input_format
        if self.trace is not None:
            out["trace"] = self.trace
        return out


# ---------------------------------------------------------------- JSON schema mirror


class _AlternativeSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model: str
    score: float


class _FallbackSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model: str


class _LimitSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scope: str
    key: str | None
    unit: str
    allowed: bool
    remaining: float
    limit: float
    reset_at: float | None
    retry_after_ms: float | None


class DecisionSchema(BaseModel):
    """A routing decision, as `policyctl eval` prints it."""

    model_config = ConfigDict(extra="forbid", title="policyctl decision")
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
    alternatives: list[_AlternativeSchema]
    fallbacks: list[_FallbackSchema]
    rate_limits: list[_LimitSchema]
    deployment_of: str | None = None
    input_format: str | None = Field(
        None, description="the request's wire format, when it was not a native request"
    )
    denied_by: dict[str, Any] | None
    policy_version: str
    trace: list[dict[str, Any]] | None = None
