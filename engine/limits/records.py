"""Why a request was denied, as typed records (`Decision.denied_by`); standard library only.

`LimitDenial` is made here, by the limiter; the routing denial (`NoEligibleModel`) lives in
`engine.routing.decision` on the same base. Read a record's attributes; `to_dict()` is its
JSON, as `Decision.to_dict()` shows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
