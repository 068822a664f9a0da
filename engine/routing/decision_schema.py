"""The JSON Schema mirror of a decision (`Decision.to_dict()`), for `policyctl schema
decision`, the service's OpenAPI document and the tests that check decisions against it.
Imported on first use of `engine.routing.decision.DecisionSchema`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class _DroppedSchema(BaseModel):
    model_config = ConfigDict(extra="forbid")
    provider: str
    model: str
    dropped_because: str


class _LimitDenialSchema(BaseModel):
    """A rate limit (or the state store, failing closed) denied the request."""

    model_config = ConfigDict(extra="forbid")
    scope: str
    key: str | None
    unit: str | None = None
    retry_after_ms: int | None


class _NoEligibleModelSchema(BaseModel):
    """Every candidate of the route was dropped."""

    model_config = ConfigDict(extra="forbid")
    reason: Literal["no_eligible_model"]
    candidates: list[_DroppedSchema]


class _DenyRuleSchema(BaseModel):
    """A `deny "reason" when …` rule matched (before routing)."""

    model_config = ConfigDict(extra="forbid")
    reason: Literal["deny_rule"]
    rule: str = Field(description="`deny at FILE:LINE`")
    location: str
    message: str = Field(description="the rule's reason, as written")
    when: str


class _PolicyRequireSchema(BaseModel):
    """A policy-wide `require` left the route no candidate."""

    model_config = ConfigDict(extra="forbid")
    reason: Literal["policy_require"]
    rule: str = Field(description="`require at FILE:LINE`")
    location: str
    require: str
    when: str | None
    candidates: list[_DroppedSchema]


class _AffinitySchema(BaseModel):
    """What the route's `affinity by request.KEY for D` did."""

    model_config = ConfigDict(extra="forbid")
    key_hash: str | None = Field(
        description="a hash of the key's value; null when the request has no such field"
    )
    pinned: bool = Field(description="sent to the model the key's previous request went to")
    broken: Literal["health", "ineligible", "limit"] | None = Field(
        description="why a live pin was not followed: the model is unhealthy, cannot serve"
        " this request, or is at a rate limit (the pin then moves to the model chosen)"
    )
    cached_tokens: float = Field(
        description="input tokens the estimated cost prices at the cache-read price"
    )


class _DecisionFields(BaseModel):
    """The fields of a decision: the served one's and its shadow's."""

    model_config = ConfigDict(extra="forbid")
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
    experiment: str | None = Field(
        None, description="the route whose `split` chose the arm, when the request is in one"
    )
    arm: str | None = Field(None, description="the arm route the experiment sent the request to")
    explored: bool | None = Field(
        None,
        description="true when `explore` sent the request to a model with few samples"
        " instead of the strategy's choice (absent otherwise)",
    )
    affinity: _AffinitySchema | None = Field(
        None,
        description="present when the route has `affinity`: whether the request went to"
        " its key's pinned model, and why a live pin was broken",
    )
    shadow_denials: list[_LimitDenialSchema] | None = Field(
        None,
        description="the `shadow limit`s that would have denied this allowed decision"
        " (reported, never applied; absent when none would have)",
    )
    denied_by: (
        _LimitDenialSchema | _NoEligibleModelSchema | _DenyRuleSchema | _PolicyRequireSchema | None
    )
    policy_version: str
    trace: list[dict[str, Any]] | None = None


class _ShadowDecisionSchema(_DecisionFields):
    """A shadow route's decision of the same request: logged, never served."""


class DecisionSchema(_DecisionFields):
    """A routing decision, as `policyctl eval` prints it."""

    model_config = ConfigDict(extra="forbid", title="policyctl decision")
    shadow: _ShadowDecisionSchema | None = Field(
        None,
        description="with `--explain`, the decision of the served route's `shadow route`"
        " (logged, never served)",
    )
