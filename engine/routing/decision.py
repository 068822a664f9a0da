"""What the engine answers: a Decision (plain slotted dataclasses on the hot path).

`Decision.to_json()` is its JSON, as the CLI prints it and the service answers it: the
fields of `to_dict()` encoded by msgspec (compact, UTF-8), numbers with no fraction
written as integers (`109`, not `109.0`); what repeats from decision to decision (an
alternative's object) is encoded once and spliced in.

`DecisionSchema` (`decision_schema`, built on first use) is the pydantic mirror used only
for `policyctl schema decision`, the service's OpenAPI document and for tests that check
every emitted decision against the published schema.
"""

from __future__ import annotations

import json
import re
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
        """`to_dict()` as compact UTF-8 JSON, the same bytes, in one pass: the fields go to
        msgspec as a `_DecisionJSON` struct (fields in order, the optional ones left unset
        when absent), not as dicts built first; each alternative is a fragment encoded
        once (`_ALTERNATIVES`), each limit a `_StatusJSON` whose `reset_at` rounding the
        decision's other limits mostly share (`_last_reset`). A string msgspec cannot
        encode (a lone surrogate has no UTF-8 form: request validation refuses one, but an
        embedding app builds decisions too) sends the decision through the standard
        library instead, non-ASCII escaped, so encoding never fails on a string."""
        try:
            return _encode(self._wire())
        except (ValueError, TypeError):  # UnicodeEncodeError: a lone surrogate
            fields = self.to_dict()
            return json.dumps(fields, ensure_ascii=True, separators=(",", ":")).encode("ascii")

    def _wire(self) -> _DecisionJSON:
        """`to_dict()`'s fields as the struct msgspec encodes (integral numbers as ints)."""
        cost, latency, confidence = self.estimated_cost, self.estimated_latency_ms, self.confidence
        out = _DecisionJSON(
            self.request_id,
            self.allowed,
            self.provider,
            self.model,
            self.route,
            self.strategy,
            self.reason,
            int(cost) if cost.__class__ is float and cost.is_integer() else cost,  # type: ignore[union-attr]
            int(latency) if latency.__class__ is float and latency.is_integer() else latency,  # type: ignore[union-attr]
            (
                int(confidence)
                if confidence.__class__ is float and confidence.is_integer()
                else confidence
            ),
            _alternatives_json(self.alternatives),
            self.fallbacks,  # dicts of strings: encoded as they are
            _statuses_json(self.rate_limits),
            None if self.denied_by is None else self.denied_by.to_dict(),
            self.policy_version,
        )
        if self.deployment_of is not None:
            out.deployment_of = self.deployment_of
        if self.experiment is not None:
            out.experiment = self.experiment
            out.arm = self.arm
        if self.explored:
            out.explored = True
        if self.affinity is not None:
            out.affinity = self.affinity.to_dict()
        if self.shadow_denials:
            out.shadow_denials = [d.to_dict() for d in self.shadow_denials]
        if self.input_format != "native":
            out.input_format = self.input_format
        if self.trace is not None:
            out.trace = _trace_json(self.trace)
            if self.shadow is not None:
                out.shadow = self.shadow._wire()
        return out


class _DecisionJSON(msgspec.Struct, omit_defaults=True, gc=False):
    """A decision's JSON as msgspec encodes it: `Decision.to_dict()`'s keys in its order
    (tests/test_encoding.py holds the two to the same bytes); an optional field left
    `UNSET` is not written. `gc=False` (here and on the structs it holds): made and
    dropped within `to_json`, never in a cycle, so the collector need not track them."""

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
    alternatives: list[msgspec.Raw]  # each `_ALTERNATIVES`' encoded object
    fallbacks: list[dict[str, str]]
    rate_limits: list[_StatusJSON]
    denied_by: dict[str, Any] | None
    policy_version: str
    deployment_of: str | msgspec.UnsetType = msgspec.UNSET
    experiment: str | msgspec.UnsetType = msgspec.UNSET
    arm: str | msgspec.UnsetType | None = msgspec.UNSET
    explored: bool | msgspec.UnsetType = msgspec.UNSET
    affinity: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    shadow_denials: list[dict[str, Any]] | msgspec.UnsetType = msgspec.UNSET
    input_format: str | msgspec.UnsetType = msgspec.UNSET
    trace: Any = msgspec.UNSET
    shadow: _DecisionJSON | msgspec.UnsetType = msgspec.UNSET


class _AlternativeJSON(msgspec.Struct, gc=False):
    """`Alternative.to_dict()`, as msgspec encodes it."""

    provider: str
    model: str
    score: float


class _StatusJSON(msgspec.Struct, gc=False):
    """`LimitStatus.to_dict()` with integral numbers as ints, as msgspec encodes it."""

    scope: str
    key: str | None
    unit: str
    allowed: bool
    remaining: float
    limit: float
    reset_at: float | None
    retry_after_ms: float | None


class _Fragments:
    """The encoded alternatives `Decision.to_json()` splices in: an alternative (provider,
    model, score) repeats from decision to decision of a route (its ranking is kept while
    the catalog and the measurements stand), so it is encoded once, kept by what it shows
    (a new catalog or score is a new key: nothing to invalidate on a reload) and bounded
    (emptied at `_CACHED` entries). `made` counts the encodings: after a route's first
    decisions it stops growing, whatever the number of requests (tests/test_encoding.py)."""

    __slots__ = ("made", "table")

    def __init__(self) -> None:
        self.table: dict[tuple[Any, ...], msgspec.Raw] = {}
        self.made = 0

    def alternative(self, key: tuple[Any, ...]) -> msgspec.Raw:
        provider, model, _, score = key
        if score.__class__ is float and score.is_integer():
            score = int(score)
        raw = msgspec.Raw(_encode_fragment(_AlternativeJSON(provider, model, score)))
        if len(self.table) >= _CACHED:
            self.table.clear()
        self.table[key] = raw
        self.made += 1
        return raw


_CACHED = 4096


def _alternatives_json(alternatives: list[Alternative]) -> list[msgspec.Raw]:
    """Each alternative's encoded object, from `_ALTERNATIVES` (the score's type is in the
    key: `1` and `1.0` show alike, but `True` would not)."""
    get, miss = _ALTERNATIVES.table.get, _ALTERNATIVES.alternative
    keys = [(a.provider, a.model, a.score.__class__, a.score) for a in alternatives]
    return [get(key) or miss(key) for key in keys]  # a fragment is never empty


def _statuses_json(statuses: list[LimitStatus]) -> list[_StatusJSON]:
    """`LimitStatus.to_dict()` of each, integral numbers as ints, as `_StatusJSON`s. A
    decision's limits are checked within microseconds, so their `reset_at`s mostly round
    to the same ms: `_last_reset` keeps the last two ranges (those within 0.49 ms of a
    rounded value, where `_round3` is exact) and their shown values (two: a drained
    bucket's reset is later than the others', decision after decision)."""
    out = []
    lo, hi, shown, lo2, hi2, shown2 = _last_reset
    for r in statuses:
        remaining, limit, reset_at, retry = r.remaining, r.limit, r.reset_at, r.retry_after_ms
        if reset_at.__class__ is float:
            if lo < reset_at < hi:  # type: ignore[operator]
                reset_at = shown
            elif lo2 < reset_at < hi2:  # type: ignore[operator]
                reset_at = shown2
            else:
                reset_at = _reset_shown(reset_at)  # type: ignore[arg-type]
                lo, hi, shown, lo2, hi2, shown2 = _last_reset
        elif reset_at is not None:
            reset_at = round(reset_at, 3)
        if remaining.__class__ is float and remaining.is_integer():
            remaining = int(remaining)
        if limit.__class__ is float and limit.is_integer():
            limit = int(limit)
        if retry.__class__ is float and retry.is_integer():  # type: ignore[union-attr]
            retry = int(retry)  # type: ignore[arg-type]
        out.append(
            _StatusJSON(r.scope, r.key, r.unit, r.allowed, remaining, limit, reset_at, retry)
        )
    return out


def _reset_shown(reset_at: float) -> float | int:
    """`round(reset_at, 3)`, an int when integral (`_round3`'s fast path, inline: the ms
    nearest `reset_at * 1000`, over 1000); kept first in `_last_reset` with the range of
    values that round to it surely: within 0.49 ms of it (the product's float error below
    2**42 ms is under a µs). A tie or a near one, or a value out of that range, takes
    `_round3` and is not kept."""
    global _last_reset
    ms = reset_at * 1000.0
    if 1.0 < ms < 4398046511104.0:  # 2**42, as `_round3` (and a whole ms above 0)
        whole = round(ms)
        if -0.49 < ms - whole < 0.49:
            value = whole // 1000 if whole % 1000 == 0 else whole / 1000.0
            last = _last_reset  # kept second
            _last_reset = ((whole - 0.49) / 1000.0, (whole + 0.49) / 1000.0, value, *last[:3])
            return value
    rounded = _round3(reset_at)
    return int(rounded) if rounded.__class__ is float and rounded.is_integer() else rounded


# (above, below, shown) of the last `reset_at` kept, then of the one before
_last_reset: tuple[float, float, float | int, float, float, float | int] = (
    0.0,
    0.0,
    0,
    0.0,
    0.0,
    0,
)


_encode = msgspec.json.Encoder().encode
# a fragment's own encoder: once per fragment, not per decision (`_encode` is, and is counted)
_encode_fragment = msgspec.json.Encoder().encode
_ALTERNATIVES = _Fragments()


def _round3(x: float) -> float:
    """`round(x, 3)`, the same float, without its decimal conversion (a third of a status's
    encoding): `x * 1000` rounded to an integer is the correctly rounded decimal whenever
    the product is not within its rounding error of a half (below 2**42 its error is under
    0.001; a tie or a near one, a larger or non-positive value takes `round`), and that
    integer over 1000 is the nearest float to the decimal, as `round` returns it."""
    y = x * 1000.0
    if 0.0 < y < 4398046511104.0 and x.__class__ is float:  # 2**42
        r = round(y)
        if -0.498 < y - r < 0.498:
            return r / 1000.0
    return round(x, 3)


_STATUS_NUMBERS = ("remaining", "limit", "reset_at", "retry_after_ms")


def _integral_numbers(status: dict[str, Any]) -> dict[str, Any]:
    """A rate-limit status's numbers with no fraction as ints (`109`, not `109.0`)."""
    for name in _STATUS_NUMBERS:
        value = status[name]
        if value.__class__ is float and value.is_integer():
            status[name] = int(value)
    return status


def _trace_json(trace: list[dict[str, Any]]) -> Any:
    """The explain trace for `_DecisionJSON`: encoded as it is when msgspec wrote no
    integral float in it (then `_integral_tree` would change nothing that shows: the bytes
    are the same), else `_integral_tree`'s copy. A look for `.0` in the bytes costs far
    less than walking a trace of hundreds of rankings; a string that happens to hold `.0`
    only sends the trace the slow way."""
    try:
        raw = _encode(trace)
    except (ValueError, TypeError):  # a lone surrogate: `to_json`'s fallback takes it
        return _integral_tree(trace)
    if _integral_float_in(raw):
        return _integral_tree(trace)
    return msgspec.Raw(raw)


def _integral_float_in(raw: bytes) -> bool:
    """Whether msgspec's `raw` may hold an integral float: `109.0` (a `.0` no digit
    follows) or, from 1e16 up, an exponent (`1e16`, `2.5e20`, `1e40`: an `e` then a digit).
    Strings included: a `.0` or `e1` in one is a false alarm, never a miss. Two regex
    searches, each led by a literal (`.0`, `e`): a character class first scans ten times
    slower, and a loop of `bytes.find` six times."""
    return _DOT_ZERO.search(raw) is not None or _EXPONENT.search(raw) is not None


_DOT_ZERO = re.compile(rb"\.0(?![0-9])")  # `109.0`, also at the very end
_EXPONENT = re.compile(rb"e[1-9]")  # a positive exponent (`1e-7` is not integral)


def _integral_tree(value: Any) -> Any:
    """The explain trace with integral floats as ints, at any depth (a copy: `--explain`
    only, off the hot path). A trace is mostly flat dicts of strings and numbers (a
    ranking of every candidate): their leaves are converted in the loop, not by a call
    each."""
    cls = value.__class__
    if cls is dict:
        return _integral_dict(value)
    if cls is list or cls is tuple:
        return [_integral_tree(v) for v in value]
    if cls is float:
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return _integral_dict(value)
    if isinstance(value, list | tuple):
        return [_integral_tree(v) for v in value]
    return value


_LEAVES = frozenset((str, int, bool, type(None)))  # kept as they are


def _integral_dict(value: dict[Any, Any]) -> dict[Any, Any]:
    out = {}
    for k, v in value.items():
        cls = v.__class__
        if cls in _LEAVES:
            out[k] = v
        elif cls is float:
            out[k] = int(v) if v.is_integer() else v
        else:
            out[k] = _integral_tree(v)
    return out


def __getattr__(name: str) -> Any:
    """`DecisionSchema`, the pydantic mirror, built on first use (`decision_schema`): a
    `policyctl eval` or a service that never prints the schema does not pay for it."""
    if name == "DecisionSchema":
        from engine.routing.decision_schema import DecisionSchema

        return DecisionSchema
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
