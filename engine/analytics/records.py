"""The records that cross modules: the rows the engine logs, and the outcome record as it
comes in (one home for their fields and their error messages; standard library only).

A row is a `typing.NamedTuple`: named and typed, and a tuple underneath, so it is cheap to
make on the hot path (one per decision, one per `record()` call) and goes into DuckDB's
columnar INSERT as it is. Its `_fields` are the table's column names, in order, and its
annotations give the columns' SQL types (`sql_types`); the INSERT statements in
`engine.analytics.schema` are derived from them, so a column is named once, here.

A field named `…_at` holds epoch seconds and lands in a TIMESTAMP column.

On the hot path, build a row with `tuple.__new__(Row, (…))` (see `new_decision_row`): the
generated `Row(…)` constructor is a Python-level call, several times slower.
"""

import difflib
import functools
import math
import types
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from engine.units import iso_timestamp_s


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
    experiment: str | None = None  # the route whose `split` chose the arm (added later)
    arm: str | None = None  # the arm route (added later: `schema.ADDED_COLUMNS`)
    shadow: bool | None = None  # a shadow route's decision: logged, never served
    shadow_of: str | None = None  # for a shadow decision: the served decision's request id
    request: str | None = None  # the request's features as JSON (`--log-requests`), else None
    explored: bool | None = None  # `explore` sent it to a model with few samples (else NULL)


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
    cached_tokens: int | None = None  # of input_tokens, read from the prompt cache


class ViolationRow(NamedTuple):
    """One request denied by a limit, as `rate_limit_violations` holds it."""

    violated_at: float  # epoch seconds
    scope: str
    key: str
    unit: str
    tokens_requested: float
    tokens_available: float
    request_id: str | None


class ConfigRow(NamedTuple):
    """One limit of the serving policy, as `rate_limit_configs` holds it (not on the hot
    path: written at start and on each reload that changes the policy)."""

    id: str  # scope/unit/window_ms/key@location
    scope: str
    key: str | None  # None: the scope's default
    unit: str
    max_requests: float  # the limit per window
    window_ms: float
    burst: float
    until: float | None  # epoch seconds; a TIMESTAMP column
    source: str  # policy file:line:col
    shadow: bool = False  # `shadow limit …`: counted, never denying (added later)
    lease_ms: float | None = None  # an in-flight limit's lease (unit `concurrent`), else None


class SettlementRow(NamedTuple):
    """One bucket of a reservation, settled by its decision's outcome or expired unsettled,
    as `rate_limit_settlements` holds it (written off the hot path, in batches)."""

    settled_at: float  # epoch seconds: the outcome's time, or when the reservation expired
    request_id: str
    bucket_key: str  # e.g. `user/tokens/60000/alice`
    scope: str
    unit: str  # tokens | spend
    estimate: float  # what the decision's estimate took (tokens, or dollars)
    actual: float | None  # what the outcome says was used; None: not reported, or expired
    delta: float  # applied to the bucket: > 0 charged, < 0 refunded (a refund stops at full)
    result: str  # settled | unreported | expired | store_error (`SETTLEMENT_RESULTS`)


class WaitRow(NamedTuple):
    """One request that waited for a limit's tokens (or found the wait queue full), as
    `rate_limit_waits` holds it."""

    finished_at: float  # epoch seconds
    request_id: str | None
    bucket_key: str  # the queue's key, `scope/unit/key`: `user/requests/alice`
    priority: float
    waited_ms: float  # 0 for `queue_full`
    outcome: str  # admitted | timed_out | shutdown | queue_full (`WAIT_OUTCOMES`)


class InFlightRow(NamedTuple):
    """One in-flight slot given back, by its decision's outcome or by its lease running
    out, as `rate_limit_inflight` holds it."""

    released_at: float  # epoch seconds (a lease: when it ran out)
    gauge_key: str  # e.g. `model/concurrent/600000/openai/gpt-4o`
    scope: str
    request_id: str
    held_ms: float  # from the decision that took it to its release
    released_by: str  # outcome | lease (`RELEASED_BY`)


SETTLEMENT_RESULTS = ("settled", "unreported", "expired", "store_error")
WAIT_OUTCOMES = ("admitted", "timed_out", "shutdown", "queue_full")
RELEASED_BY = ("outcome", "lease")
LimitEventRow = SettlementRow | WaitRow | InFlightRow


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


# ---------------------------------------------------------------- the outcome record, coming in
#
# One outcome model for every entry point: the HTTP service (`POST /v1/outcomes`, JSON),
# `PolicyEngine.record()`/`record_outcome()` (Python values) and the importer (JSONL/CSV
# text, checked inside DuckDB). Each takes its field names and its error messages from here,
# so the same mistake gets the same words everywhere.

OUTCOME_REQUIRED = ("provider", "model", "latency_ms", "success")
OUTCOME_OPTIONAL = (
    "input_tokens", "output_tokens", "cached_tokens", "cost", "timestamp", "request_id",
    "route", "user",
)  # fmt: skip
OUTCOME_FIELDS = OUTCOME_REQUIRED + OUTCOME_OPTIONAL
OUTCOME_ALIASES = {"recorded_at": "timestamp", "user_id": "user"}  # as `metrics export` writes

# The JSON types a field takes (bool is never a number); the importer reads text and casts.
OUTCOME_TYPES: dict[str, tuple[type, ...]] = {
    "provider": (str,),
    "model": (str,),
    "latency_ms": (int, float),
    "success": (bool,),
    "input_tokens": (int,),
    "output_tokens": (int,),
    "cached_tokens": (int,),
    "cost": (int, float),
    "timestamp": (int, float, str),
    "request_id": (str,),
    "route": (str,),
    "user": (str,),
}
TEXT_FIELDS = ("provider", "model", "request_id", "route", "user")

# What a field must be: its error reads "<field> <must>, got `<value>`".
MUST = {
    "provider": "must be text",
    "model": "must be text",
    "latency_ms": "must be a number >= 0",
    "success": "must be true or false",
    "input_tokens": "must be a whole number >= 0",
    "output_tokens": "must be a whole number >= 0",
    "cached_tokens": "must be a whole number >= 0",
    "cost": "must be a number >= 0",
    "timestamp": "must be ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds",
    "request_id": "must be text",
    "route": "must be text",
    "user": "must be text",
}
SHOWN = 40  # characters of a bad value quoted in a message
MISSING = "missing field"  # "missing field `x`", "missing fields `x`, `y`"
NOT_AN_OBJECT = "expected a JSON object"


def shown(value: object) -> str:
    """A bad value as a message shows it: its text (JSON spelling for true/false/null), in
    backticks, cut at `SHOWN` characters."""
    if isinstance(value, str):
        text = value
    elif value is True or value is False:
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    else:
        text = repr(value)
    return "`" + (text[:SHOWN] + "…" if len(text) > SHOWN else text) + "`"


def must_prefix(name: str) -> str:
    """`<field> <must>, got `: the importer appends the quoted text in SQL."""
    return f"{name} {MUST[name]}, got "


def bad_value(name: str, value: object) -> str:
    """The error for a bad value of an outcome field (e.g. `latency_ms must be a number >= 0,
    got `-1``)."""
    return must_prefix(name) + shown(value)


def missing(names: Sequence[str]) -> str:
    listed = ", ".join(f"`{name}`" for name in names)
    return f"{MISSING}{'s' if len(names) > 1 else ''} {listed}"


CACHED_WITHOUT_INPUT = "cached_tokens needs input_tokens (cached tokens are part of the input)"
CACHED_OVER_INPUT = ": cached tokens are part of the input"  # after "cached_tokens (`c`) …"


def cached_over_input(cached: object, input_tokens: object) -> str:
    """`cached_tokens (`1000`) must be at most input_tokens (`50`): cached tokens are part
    of the input`."""
    return (
        f"cached_tokens ({shown(cached)}) must be at most input_tokens ({shown(input_tokens)})"
        + CACHED_OVER_INPUT
    )


def cached_problem(input_tokens: int | None, cached_tokens: int | None) -> str | None:
    """What is wrong with an outcome's cached tokens given its input tokens (numbers already
    checked), or None: cached tokens are counted inside the input tokens (as OpenAI's
    `prompt_tokens` counts them), so they need input tokens and are at most as many."""
    if cached_tokens is None:
        return None
    if input_tokens is None:
        return CACHED_WITHOUT_INPUT
    if cached_tokens > input_tokens:
        return cached_over_input(cached_tokens, input_tokens)
    return None


def unknown_field(name: str) -> str:
    close = difflib.get_close_matches(name, OUTCOME_FIELDS, n=1)
    return f"unknown field `{name}`" + (f" (did you mean `{close[0]}`?)" if close else "")


class _Catalog(Protocol):
    """What the messages need of `engine.catalog.model.Catalog`."""

    @property
    def providers(self) -> Sequence[str]: ...

    def names(self, provider: str) -> Sequence[str]: ...

    def find(self, provider: str, model: str) -> object | None: ...


def unknown_model(catalog: _Catalog, provider: str, model: str) -> str:
    """`unknown model `p/m` (did you mean `p/x`?)`, or `unknown provider `p``."""
    if provider not in catalog.providers:
        close = difflib.get_close_matches(provider, catalog.providers, n=1)
        hint = f" (did you mean `{close[0]}`?)" if close else ""
        return f"unknown provider `{provider}`{hint}"
    close = difflib.get_close_matches(model, catalog.names(provider), n=1, cutoff=0.6)
    hint = f" (did you mean `{provider}/{close[0]}`?)" if close else ""
    return f"unknown model `{provider}/{model}`{hint}"


def parse_timestamp(value: object) -> float | None:
    """Epoch seconds from epoch seconds or ISO 8601 text (UTC when it names no zone); None
    for None. Raises ValueError (or OverflowError) when it is neither."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    return iso_timestamp_s(str(value))


def outcome_problems(item: object) -> list[tuple[str, str]]:
    """What is wrong with one outcome as JSON gives it: (field, message) pairs ("" when no
    one field is to blame). The timestamp's value and the model are checked by the caller
    (`check_outcome`) once these pass."""
    if not isinstance(item, dict):
        return [("", NOT_AN_OBJECT)]
    problems = [(name, unknown_field(name)) for name in item if name not in OUTCOME_TYPES]
    for name in OUTCOME_REQUIRED:
        if item.get(name) is None:
            problems.append((name, missing([name])))
    bad: set[str] = set()
    for name, kinds in OUTCOME_TYPES.items():
        value = item.get(name)
        if value is None:
            continue
        if (isinstance(value, bool) and kinds != (bool,)) or not isinstance(value, kinds):
            problems.append((name, bad_value(name, value)))
            bad.add(name)
    for name in ("latency_ms", "cost", "input_tokens", "output_tokens", "cached_tokens"):
        value = item.get(name)
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if numeric and name not in bad and not (0 <= value < 2**62 and math.isfinite(value)):
            problems.append((name, bad_value(name, value)))
    if not {field for field, _ in problems} & {"input_tokens", "cached_tokens"}:
        input_tokens, cached_tokens = item.get("input_tokens"), item.get("cached_tokens")
        if isinstance(cached_tokens, int) and isinstance(input_tokens, int | None):
            cached = cached_problem(input_tokens, cached_tokens)
            if cached is not None:
                problems.append(("cached_tokens", cached))
    for name in TEXT_FIELDS:
        value = item.get(name)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                problems.append((name, f"{name} is not valid UTF-8 text"))
    for name in item:
        if isinstance(name, str):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                problems.append(("", "a field name is not valid UTF-8"))
    return problems


CLOCK_SKEW_S = 300  # how far ahead of the server's clock an outcome's timestamp may be
FUTURE = "timestamp is in the future, got "  # then the value, then `ahead_of(clock)`
BEFORE_1970 = "timestamp is before 1970, got "  # then the value


def ahead_of(clock: str) -> str:
    """The end of a future timestamp's reason: how far ahead of `clock` one may be."""
    return f" (at most {CLOCK_SKEW_S // 60} minutes ahead of {clock})"


def check_outcome(
    item: dict[str, object], catalog: _Catalog, now_s: float
) -> list[tuple[str, str]]:
    """The checks after `outcome_problems` passed: a timestamp that parses, is not before
    1970 and is not in the future (`CLOCK_SKEW_S` of clock skew allowed), and a model the
    catalog knows."""
    problems = []
    value = item.get("timestamp")
    try:
        at = parse_timestamp(value)
        if at is not None and at != at:  # NaN
            raise ValueError("not a number")
    except (ValueError, OverflowError):
        problems.append(("timestamp", bad_value("timestamp", value)))
    else:
        if at is not None and at > now_s + CLOCK_SKEW_S:
            problems.append(("timestamp", FUTURE + shown(value) + ahead_of("the server's clock")))
        elif at is not None and at < 0:
            problems.append(("timestamp", BEFORE_1970 + shown(value)))
    provider, model = str(item["provider"]), str(item["model"])
    if catalog.find(provider, model) is None:
        problems.append(("model", unknown_model(catalog, provider, model)))
    return problems
