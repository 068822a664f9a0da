"""Enforcement and batches over HTTP: `POST /v1/enforce` and `POST /v1/eval/batch`.

`POST /v1/enforce` decides exactly as `POST /v1/eval` does (the same body and query
options) and answers in HTTP's own terms, for a gateway that acts on the status alone:

    200  allowed
    429  denied by a rate limit; `Retry-After` in whole seconds (rounded up) when a retry
         can fit (none when the request is larger than the limit)
    403  denied by the policy: a `deny` rule, a policy-wide `require`, no eligible model
    503  the rate-limit store is down and the policy fails closed; `Retry-After: 1`

The body is the decision JSON in every case. The 200s and 429s carry the `RateLimit-Policy`
and `RateLimit` fields of draft-ietf-httpapi-ratelimit-headers-10, one list item per limit
that applied to the request (`quota_policies`, `ratelimit_fields`): a 200's are the
decision's `rate_limits`; a refused check stops at the limit that refused, so a 429 adds
the other shared limits that apply, read from the store without consuming
(`Limiter.peek_shared`; the per-candidate ones, provider, model and spend, are not known
for a request no candidate took). A separate path rather
than a flag of `/v1/eval`: an ext_authz-style gateway is configured with a URL and acts on
the status, and `/v1/eval` keeps its contract (a decision is always a 200).

`POST /v1/eval/batch` takes a JSON array of requests, or JSON Lines (`Content-Type:
application/x-ndjson` or `application/jsonl`), evaluates them in order as so many calls of
`/v1/eval` would, and answers their decisions in the same order and form (an array, or one
line each). An item that cannot be decided gets an error object in its place, with its
`index` (and `line`, for JSON Lines), without failing the others. At most
`MAX_BATCH_ITEMS` items (413 past it); the body limit is `/v1/eval`'s.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from engine.api.policy_engine import PolicyEngine
from engine.limits.records import LimitDenial, LimitStatus
from engine.limits.stores.base import StoreUnavailableError
from engine.routing.decision import Decision
from engine.routing.request import RequestError, env_of
from engine.service.body import (
    BodyError,
    WireOptions,
    flag,
    parse_json,
    raw_body,
    read_and_decide,
    wire_options,
)
from engine.service.fastpath import Answer, FastRoute, RawHandler
from engine.units import format_duration

MAX_BATCH_ITEMS = 1000
STORE_DOWN_RETRY_AFTER_S = "1"  # the store is checked again on the next request
SF_INTEGER_MAX = 999_999_999_999_999  # RFC 9651 §3.3.1: at most 15 digits
MICROS = 1_000_000  # a spend limit's quota is told in millionths of a dollar
# The quota unit (`qu`) of each limit unit; None: the draft's default, "requests". Tokens
# and spend have no registered unit (the draft's registry holds requests, content-bytes
# and concurrent-requests): they are named here and in docs/service.md.
QUOTA_UNITS: dict[str, str | None] = {"requests": None, "tokens": "tokens", "spend": "usd-micros"}
JSONL_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)

Handler = Callable[[HttpRequest], Awaitable[Response]]


# --------------------------------------------------------------------------- headers


@dataclass(frozen=True, slots=True)
class QuotaPolicy:
    """One limit that applied to a request: its `RateLimit-Policy` item and its `RateLimit`
    item (draft-ietf-httpapi-ratelimit-headers-10 §3.1 and §4.1)."""

    name: str  # the item: the limit's scope, with its unit and window when needed
    quota: int  # q: the limit per window (without the burst: `remaining` may exceed it)
    unit: str | None  # qu; None: requests
    window_s: int | None  # w: whole seconds, at least 1
    remaining: int  # r
    reset_s: int | None  # t


def quota_policies(statuses: Sequence[LimitStatus], now_s: float) -> list[QuotaPolicy]:
    """The decision's rate-limit statuses as quota policies.

    `t` (seconds until more quota is available, rounded up): for a limit that refused the
    request, when the request fits again (its `retry_after_ms`, so `Retry-After` is never
    earlier than it, as the draft's §6 asks); for the others, when the bucket is full again.
    """
    names = _names(statuses)
    out = []
    for name, status in zip(names, statuses, strict=True):
        scale = MICROS if status.unit == "spend" else 1
        if not status.allowed and status.retry_after_ms is not None:
            reset: int | None = math.ceil(status.retry_after_ms / 1000.0 - 1e-9)
        elif status.reset_at is not None:
            reset = max(0, math.ceil(status.reset_at - now_s - 1e-9))
        else:
            reset = None
        window = status.window_ms
        out.append(
            QuotaPolicy(
                name=name,
                quota=_integer(round(status.limit * scale)),
                unit=QUOTA_UNITS.get(status.unit, status.unit),
                window_s=None if window is None else max(1, math.ceil(window / 1000.0 - 1e-9)),
                remaining=_integer(math.floor(status.remaining * scale + 1e-6)),
                reset_s=reset,
            )
        )
    return out


def _integer(value: int) -> int:
    return min(max(value, 0), SF_INTEGER_MAX)


def _names(statuses: Sequence[LimitStatus]) -> list[str]:
    """`user`; `user-tokens` for a tokens limit (`user-spend`); with two limits of one
    scope and unit, each also names its window (`user-1m`, `user-1h`), then a number."""
    bases = [s.scope if s.unit == "requests" else f"{s.scope}-{s.unit}" for s in statuses]
    shared = Counter(bases)
    names = [
        base if shared[base] == 1 else f"{base}-{_window_name(s.window_ms)}"
        for base, s in zip(bases, statuses, strict=True)
    ]
    seen: Counter[str] = Counter()
    out = []
    for name in names:
        seen[name] += 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def _window_name(window_ms: float | None) -> str:
    return "window" if window_ms is None else format_duration(window_ms)


def sf_string(text: str) -> str:
    """An RFC 9651 sf-string: printable ASCII in quotes, `"` and `\\` escaped; any other
    character (a scope is an identifier: there should be none) as `?`."""
    chars = []
    for char in text:
        if char in '"\\':
            chars.append("\\" + char)
        elif " " <= char <= "~":
            chars.append(char)
        else:
            chars.append("?")
    return '"' + "".join(chars) + '"'


def ratelimit_fields(policies: Sequence[QuotaPolicy]) -> tuple[str, str]:
    """The `RateLimit-Policy` and `RateLimit` field values (RFC 9651 lists of items with
    parameters, serialised as §4.1.1 says: `, ` between members)."""
    policy_items = []
    limit_items = []
    for p in policies:
        name = sf_string(p.name)
        item = f"{name};q={p.quota}"
        if p.unit is not None:
            item += f";qu={sf_string(p.unit)}"
        if p.window_s is not None:
            item += f";w={p.window_s}"
        policy_items.append(item)
        limit = f"{name};r={p.remaining}"
        if p.reset_s is not None:
            limit += f";t={p.reset_s}"
        limit_items.append(limit)
    return ", ".join(policy_items), ", ".join(limit_items)


def retry_after_s(decision: Decision) -> int | None:
    """Whole seconds (rounded up, at least 1) until a denied request fits every limit that
    refused it; None when it never can (it is larger than the limit) or nothing says."""
    denied = decision.denied_by
    if not isinstance(denied, LimitDenial) or denied.retry_after_ms is None:
        return None
    waits = [denied.retry_after_ms]
    waits += [
        s.retry_after_ms
        for s in decision.rate_limits
        if not s.allowed and s.retry_after_ms is not None
    ]
    return max(1, math.ceil(max(waits) / 1000.0 - 1e-9))


def enforce_status(decision: Decision) -> int:
    """200 allowed, 429 rate-limited, 503 the store is down (failing closed), 403 else."""
    if decision.allowed:
        return 200
    denied = decision.denied_by
    if isinstance(denied, LimitDenial):
        return 503 if denied.scope == "store" and denied.unit is None else 429
    return 403


def enforce_response(
    decision: Decision, now_s: float, statuses: Sequence[LimitStatus] | None = None
) -> Response:
    """The decision as `/v1/enforce` answers it; `statuses` (default: the decision's) are
    the limits its RateLimit fields tell."""
    status = enforce_status(decision)
    statuses = decision.rate_limits if statuses is None else statuses
    headers: dict[str, str] = {}
    if status in (200, 429) and statuses:
        policy, limits = ratelimit_fields(quota_policies(statuses, now_s))
        headers["RateLimit-Policy"] = policy
        headers["RateLimit"] = limits
    if status == 429:
        retry = retry_after_s(decision)
        if retry is not None:
            headers["Retry-After"] = str(retry)
    elif status == 503:
        headers["Retry-After"] = STORE_DOWN_RETRY_AFTER_S
    return Response(
        decision.to_json(), status_code=status, headers=headers, media_type="application/json"
    )


# --------------------------------------------------------------------------- handlers


@dataclass(frozen=True, slots=True)
class _Unparsed:
    """A JSON Lines item that is not JSON: answered as an error in its place."""

    error: str
    detail: Any


def _item_error(index: int, error: str, detail: Any, line: int | None) -> bytes:
    body: dict[str, Any] = {"index": index}
    if line is not None:
        body["line"] = line
    body["error"] = error
    if detail is not None:
        body["detail"] = detail
    return json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def _too_many(count: int, most: int) -> None:
    if count > most:
        raise BodyError(
            413,
            f"the batch has {count} items; at most {most} are taken in one call",
            {"items": count, "max_items": most},
        )


def _media_type(request: HttpRequest) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _every_limit(
    engine: PolicyEngine, body: Any, options: WireOptions, decision: Decision
) -> list[LimitStatus]:
    """A refused request's statuses: the decision's (the limits checked, up to the one that
    refused), then the other shared limits that apply, read without consuming."""
    statuses = list(decision.rate_limits)
    try:
        env = env_of(
            body,
            input_format=options.input_format,
            request_id=options.request_id,
            model=options.model,
            stream=options.stream,
        )
        peeked = engine.limiter.peek_shared(engine.program.limits, env)
    except (RequestError, StoreUnavailableError):  # cannot happen: it was just decided
        return statuses
    seen = {(s.scope, s.key, s.unit, s.window_ms, s.limit) for s in statuses}
    statuses += [s for s in peeked if (s.scope, s.key, s.unit, s.window_ms, s.limit) not in seen]
    return statuses


def enforce_routes(
    engine: PolicyEngine,
    *,
    guard: Callable[[Handler], Handler],
    guard_raw: Callable[[RawHandler], RawHandler],
    observe: Callable[[Decision, float], None],
    max_batch: int = MAX_BATCH_ITEMS,
) -> list[Route]:
    """The two routes. `guard` turns the handlers' client errors into problems (the app's
    own, so they are counted as `/v1/eval`'s are); `observe` counts a decision and how long
    it took."""

    async def enforce(scope: Scope, receive: Receive) -> Answer:
        # parsed once; the request validator checks the strings
        body, options, decision, seconds = await read_and_decide(engine, scope, receive)
        observe(decision, seconds)
        statuses = decision.rate_limits
        if enforce_status(decision) == 429:
            statuses = _every_limit(engine, body, options, decision)
        return enforce_response(decision, engine.clock(), statuses)

    async def batch(request: HttpRequest) -> Response:
        options = wire_options(request)  # ?request_id= and X-Request-Id are not read here
        explain, dry_run = flag(request, "explain"), flag(request, "dry_run")
        media_type = _media_type(request)
        jsonl = media_type in JSONL_TYPES
        raw = await raw_body(request)
        lines: list[int] | None = None
        items: list[Any]
        if jsonl:
            numbered = [(n, text) for n, text in enumerate(raw.split(b"\n"), 1) if text.strip()]
            _too_many(len(numbered), max_batch)
            lines = [n for n, _ in numbered]
            items = []
            for _, text in numbered:
                try:
                    items.append(parse_json(text))
                except BodyError as err:
                    items.append(_Unparsed(err.error, err.detail))
        else:
            body = parse_json(raw)
            if not isinstance(body, list):
                raise BodyError(
                    422,
                    "a batch is a JSON array of requests (or JSON Lines, sent with"
                    " Content-Type: application/x-ndjson)",
                    {"type": type(body).__name__ if body is not None else "null"},
                )
            _too_many(len(body), max_batch)
            items = body
        parts: list[bytes] = []
        for index, item in enumerate(items):
            line = None if lines is None else lines[index]
            if isinstance(item, _Unparsed):
                parts.append(_item_error(index, item.error, item.detail, line))
                continue
            start = time.perf_counter()
            try:
                decision = engine.evaluate(
                    item,
                    explain=explain,
                    dry_run=dry_run,
                    input_format=options.input_format,
                    model=options.model,
                    stream=options.stream,
                )
            except RequestError as err:
                detail = [{"field": f.strip("`").removeprefix("field `"), "message": m}
                          for f, m in err.problems]  # fmt: skip
                parts.append(_item_error(index, "invalid request", detail, line))
                continue
            except RecursionError:
                parts.append(_item_error(index, "malformed JSON: nested too deeply", None, line))
                continue
            observe(decision, time.perf_counter() - start)
            parts.append(decision.to_json())
        if jsonl:
            return Response(b"".join(p + b"\n" for p in parts), media_type=media_type)
        return Response(b"[" + b",".join(parts) + b"]", media_type="application/json")

    return [
        FastRoute("/v1/enforce", guard_raw(enforce)),
        Route("/v1/eval/batch", guard(batch), methods=["POST"]),
    ]


# --------------------------------------------------------------------------- OpenAPI

_HEADERS = {
    "RateLimit-Policy": {
        "description": "draft-ietf-httpapi-ratelimit-headers-10 §3: one item per limit that"
        ' applied, e.g. `"user";q=100;w=60, "global";q=10000;w=60`; q the limit per window'
        " (without its burst), w the window in seconds, qu for a tokens limit"
        ' (`"tokens"`) or a spend limit (`"usd-micros"`: q and r in millionths of a dollar)',
        "schema": {"type": "string"},
    },
    "RateLimit": {
        "description": "draft-ietf-httpapi-ratelimit-headers-10 §4: one item per limit, e.g."
        ' `"user";r=0;t=12`; r what remains (the burst included), t seconds until more is'
        " available (for a limit that refused the request, until it fits; else until full)",
        "schema": {"type": "string"},
    },
}
_RETRY_AFTER = {
    "description": "seconds (rounded up) until the request fits every limit that refused"
    " it; absent when it never can (larger than the limit)",
    "schema": {"type": "integer", "minimum": 1},
}


def enforce_openapi_paths(eval_operation: dict[str, Any]) -> dict[str, Any]:
    """The two paths, for `openapi_document`; `eval_operation` is `/v1/eval`'s POST (its
    parameters and body are these endpoints' too)."""

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }

    decision = {"application/json": {"schema": {"$ref": "#/components/schemas/Decision"}}}
    item_error = {
        "type": "object",
        "properties": {
            "index": {"type": "integer", "description": "the item's position, from 0"},
            "line": {"type": "integer", "description": "JSON Lines: its line, from 1"},
            "error": {"type": "string"},
            "detail": {},
        },
        "required": ["index", "error"],
    }
    batch_parameters = [
        p for p in eval_operation["parameters"] if p["name"] not in ("request_id", "X-Request-Id")
    ]
    lines_body = {
        "schema": {"type": "string"},
        "description": "one request (JSON object) a line; blank lines are skipped",
    }
    return {
        "/v1/enforce": {
            "post": {
                "summary": "Route one request and answer a denial with its HTTP status",
                "description": "Decides as POST /v1/eval does; the status says the outcome"
                " (200, 429, 403, 503) and the body is the decision.",
                "parameters": eval_operation["parameters"],
                "requestBody": eval_operation["requestBody"],
                "responses": {
                    "200": {
                        "description": "allowed",
                        "headers": dict(_HEADERS),
                        "content": decision,
                    },
                    "429": {
                        "description": "denied by a rate limit",
                        "headers": {**_HEADERS, "Retry-After": _RETRY_AFTER},
                        "content": decision,
                    },
                    "403": {
                        "description": "denied by the policy (a deny rule, a policy-wide"
                        " require, no eligible model): no RateLimit fields",
                        "content": decision,
                    },
                    "503": {
                        "description": "the rate-limit store is down and the policy fails closed",
                        "headers": {"Retry-After": {"schema": {"type": "integer", "enum": [1]}}},
                        "content": decision,
                    },
                    "400": error("malformed JSON"),
                    "413": error("body over 1 MiB"),
                    "422": error("invalid fields, named"),
                },
            }
        },
        "/v1/eval/batch": {
            "post": {
                "summary": "Route many requests, in order",
                "description": f"At most {MAX_BATCH_ITEMS} items. Each is decided as POST"
                " /v1/eval decides it (rate limits consumed in order); an item that cannot"
                " be decided gets an error object in its place. `request_id` and"
                " `X-Request-Id` are not read: each item carries its own `id`.",
                "parameters": batch_parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "array",
                                "maxItems": MAX_BATCH_ITEMS,
                                "items": {"$ref": "#/components/schemas/Request"},
                            }
                        },
                        "application/x-ndjson": lines_body,
                        "application/jsonl": lines_body,
                    },
                },
                "responses": {
                    "200": {
                        "description": "the decisions in the items' order: an array for an"
                        " array, one JSON object a line (the request's media type) for"
                        " JSON Lines",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Decision"},
                                            item_error,
                                        ]
                                    },
                                }
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                            "application/jsonl": {"schema": {"type": "string"}},
                        },
                    },
                    "400": error("malformed JSON (the whole array)"),
                    "413": error(f"body over 1 MiB, or more than {MAX_BATCH_ITEMS} items"),
                    "422": error("the body is not an array"),
                },
            }
        },
    }
