"""The rows the engine logs, as typed records: one home for their fields (standard library only).

A row is a `typing.NamedTuple`: named and typed, and a tuple underneath, so it is cheap to
make on the hot path (one per decision, one per `record()` call) and goes into DuckDB's
columnar INSERT as it is. Its `_fields` are the table's column names, in order, and its
annotations give the columns' SQL types (`sql_types`); the INSERT statements in
`engine.analytics.schema` are derived from them, so a column is named once, here.

A field named `…_at` holds epoch seconds and lands in a TIMESTAMP column.

On the hot path, build a row with `tuple.__new__(Row, (…))` (see `new_decision_row`): the
generated `Row(…)` constructor is a Python-level call, several times slower.
"""

import functools
import types
from typing import NamedTuple


class DecisionRow(NamedTuple):
    """One decision, as the `decisions` table holds it."""

    decided_at: float  # epoch seconds
    request_id: str | None
    allowed: bool
    route: str
    strategy: str
    provider: str | None
    model: str | None
    estimated_cost: float | None
    estimated_latency_ms: float | None
    denied_scope: str | None  # the limit's scope, or the reason (`no_eligible_model`)
    denied_key: str | None
    policy_version: str


class OutcomeRow(NamedTuple):
    """One outcome (what happened when a decision was carried out), as `outcomes` holds it."""

    recorded_at: float  # epoch seconds
    provider: str
    model: str  # the catalog's model id (an alias resolved)
    latency_ms: float
    success: bool
    input_tokens: int | None
    output_tokens: int | None
    cost: float
    request_id: str | None
    route: str | None
    user_id: str | None


class ViolationRow(NamedTuple):
    """One request denied by a limit, as `rate_limit_violations` holds it."""

    violated_at: float  # epoch seconds
    scope: str
    key: str
    unit: str
    tokens_requested: float
    tokens_available: float
    request_id: str | None


# tuple.__new__ builds the named tuple without a Python-level __new__ call (hot path)
new_decision_row = functools.partial(tuple.__new__, DecisionRow)
new_outcome_row = functools.partial(tuple.__new__, OutcomeRow)

_SQL_TYPES: dict[object, str] = {float: "DOUBLE", str: "VARCHAR", bool: "BOOLEAN", int: "BIGINT"}


@functools.cache
def sql_types(row: type[tuple[object, ...]]) -> tuple[str, ...]:
    """The DuckDB type of each field of a row class, from its annotations (`X | None` is X).

    (This module does not use `from __future__ import annotations`: the annotations are the
    types themselves.)"""
    annotations: dict[str, object] = row.__annotations__
    fields: tuple[str, ...] = row._fields  # type: ignore[attr-defined]
    out = []
    for name in fields:
        kind = annotations[name]
        if isinstance(kind, types.UnionType):
            (kind,) = (arg for arg in kind.__args__ if arg is not type(None))
        out.append(_SQL_TYPES[kind])
    return tuple(out)
