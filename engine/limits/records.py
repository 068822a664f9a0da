"""What the limiter reports, as typed records; standard library only.

`LimitStatus` is one bucket's state after a decision (`Decision.rate_limits`), with its
limit's window (`window_ms`, not in its JSON: the service's RateLimit headers read it). The
denial records say why a request was denied (`Decision.denied_by`): `LimitDenial` is made
here, by the limiter; the routing denial (`NoEligibleModel`) lives in
`engine.routing.decision` on the same base. Read a record's attributes; `to_dict()` is its
JSON, as `Decision.to_dict()` shows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class DenialRecord(Mapping[str, Any]):
    """The base of the denial records: a frozen record whose `to_dict()` is its JSON.

    For code written against the dict that `denied_by` used to be, a record also reads as
    the mapping of its JSON (`denied_by["scope"]`, `.get`, `==` a dict); new code reads the
    attributes.
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, name: str) -> Any:
        return self.to_dict()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())


@dataclass(frozen=True, slots=True, eq=False)
class LimitDenial(DenialRecord):
    """A rate limit (or the state store, failing closed) denied the request."""

    scope: str  # user, ip, team…, or `store` when the store is down and fails closed
    key: str | None
    unit: str | None  # requests | tokens | spend (None: the store)
    retry_after_ms: int | None  # None: the request is larger than the limit, or the store

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "key": self.key,
            "unit": self.unit,
            "retry_after_ms": self.retry_after_ms,
        }


@dataclass(frozen=True, slots=True, eq=False)
class UnattributedDenial(LimitDenial):
    """The store denied without naming a bucket (cannot happen with a real store). Its JSON
    has no `unit`; its `unit` is what the decision's reason names (`requests`)."""

    def to_dict(self) -> dict[str, Any]:
        return {"scope": self.scope, "key": self.key, "retry_after_ms": self.retry_after_ms}


STORE_DOWN = LimitDenial("store", None, None, None)  # the store failed and fails closed
UNATTRIBUTED = UnattributedDenial("unknown", None, "requests", None)


class LimitStatus:
    """One bucket's state after a decision (a plain slotted class: made on the hot path)."""

    __slots__ = (
        "allowed", "key", "limit", "remaining", "reset_at", "retry_after_ms", "scope", "unit",
        "window_ms",
    )  # fmt: skip

    def __init__(
        self,
        scope: str,
        key: str | None,
        unit: str,
        allowed: bool,
        remaining: float,
        limit: float,
        reset_at: float | None,  # epoch seconds when the bucket is full again
        retry_after_ms: float | None,
        window_ms: float | None = None,  # the limit's window (not in the JSON: for headers)
    ) -> None:
        self.scope = scope
        self.key = key
        self.unit = unit  # requests | tokens | spend
        self.allowed = allowed
        self.remaining = remaining
        self.limit = limit
        self.reset_at = reset_at
        self.retry_after_ms = retry_after_ms
        self.window_ms = window_ms

    def __repr__(self) -> str:
        return f"LimitStatus({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LimitStatus) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "key": self.key,
            "unit": self.unit,
            "allowed": self.allowed,
            "remaining": self.remaining,
            "limit": self.limit,
            "reset_at": None if self.reset_at is None else round(self.reset_at, 3),
            "retry_after_ms": self.retry_after_ms,
        }


@dataclass(slots=True)
class PinWrite:
    """An affinity pin for the limits' store call to write: the key pinned to the model of
    the candidate the call admits (`written` then set), as a store that shares pins does
    (`AffinityPins.acquire` in engine.limits.stores.base)."""

    key: str  # as `swap_pin` takes it
    prefix: str  # the stored value up to its model: `at|input_tokens|`
    keep_ms: float
    models: Sequence[str]  # each candidate's model key (`provider/id`), in ranking order
    written: bool = False
