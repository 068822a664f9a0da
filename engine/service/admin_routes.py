"""The rate-limit admin calls over HTTP: `policyctl ratelimit …` under `/v1/ratelimit/…`.

    GET  /v1/ratelimit/status      ?user=|provider=|ip=|model=|global=true, &verbose=true
    GET  /v1/ratelimit/config      ?verbose=true
    GET  /v1/ratelimit/stats       ?start=2026-01-01&end=…&type=user
    GET  /v1/ratelimit/violations  ?key=alice&limit=50
    GET  /v1/ratelimit/buckets     ?type=user
    POST /v1/ratelimit/set         {"user", "limit", "window", "burst"?, "expires"?}
    POST /v1/ratelimit/reset       {"user"|"provider"|"ip"|"model": key} or {"global": true}
    POST /v1/ratelimit/remove      {"user"}
    POST /v1/ratelimit/cleanup     {"idle"?: "24h"}
    GET  /v1/metrics/summary       ?window=24h&provider=…&by=model|arm

Each answers the JSON `policyctl ratelimit ACTION --format json` (`metrics show --format
json`) prints, through the same `RateLimitAdmin` (`engine.analytics.summary`): the
commands' `--server URL` asks these. The POST calls change state: with a token configured they need
`Authorization: Bearer TOKEN` (else 401); with none they are refused (403) unless the
server was opened with `open_admin`. Bad parameters are a 422 naming the field; unknown
parameters are errors, not ignored.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from engine.analytics.summary import BY, SUMMARY_PATH, SummaryQuery, summary
from engine.errors import PolicyctlError
from engine.limits.admin import AdminError, RateLimitAdmin
from engine.limits.stores.base import SQLQueries, StoreUnavailableError
from engine.service.body import BodyError, SafeJSONResponse, json_body, problem
from engine.units import UnitError, parse_duration_s, parse_window_ms

Handler = Callable[[HttpRequest], Awaitable[Response]]
Guard = Callable[[Handler], Handler]

KEY_SCOPES = ("user", "provider", "ip", "model")
TRUE = ("1", "true", "yes")
FALSE = ("0", "false", "no", "")
_FLAG = re.compile(r"`--([a-z_]+)`")

NOT_OPEN = (
    "admin calls that change state are disabled: start the server with --admin-token TOKEN"
    " (or $POLICYCTL_ADMIN_TOKEN) and send `Authorization: Bearer TOKEN`, or with --open-admin"
)


class AdminCallError(PolicyctlError):
    """A parameter problem: 422 with the field it concerns (409 with `conflict`: the call
    does not apply to this server)."""

    def __init__(self, field: str, message: str, *, conflict: bool = False) -> None:
        self.field = field
        self.message = message
        self.conflict = conflict


def _admin_problem(err: AdminError) -> tuple[str, str]:
    """An `AdminError` names CLI flags (`--limit`); over HTTP they are fields (`limit`)."""
    text = str(err)
    match = _FLAG.search(text)
    field = match.group(1) if match else ""
    return field, _FLAG.sub(lambda m: f"`{m.group(1)}`", text)


# ----------------------------------------------------------------------------- parameters


def _query(request: HttpRequest, allowed: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        if name not in allowed:
            raise AdminCallError(name, f"unknown parameter `{name}` (expected: {_list(allowed)})")
        if name in params:
            raise AdminCallError(name, f"`{name}` is given more than once")
        params[name] = value
    return params


def _bool(params: dict[str, Any], name: str) -> bool:
    value = params.get(name, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    raise AdminCallError(name, f"`{name}` must be true or false, got `{value}`")


def _body_fields(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise AdminCallError("", "the body is a JSON object")
    for name in body:
        if name not in allowed:
            raise AdminCallError(name, f"unknown field `{name}` (expected: {_list(allowed)})")
    return body


def _text(fields: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise AdminCallError(name, f"`{name}` is required")
        return None
    if not isinstance(value, str):
        raise AdminCallError(name, f"`{name}` must be a string")
    return value


def _amount(fields: dict[str, Any], name: str, *, required: bool = False) -> Any:
    """A number or a string such as `1m`/`1.5k`, left for the admin's parsers to check."""
    value = fields.get(name)
    if value is None:
        if required:
            raise AdminCallError(name, f"`{name}` is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise AdminCallError(name, f"`{name}` must be a number or a string such as `1m`")
    return value


def _scope_key(fields: dict[str, Any], *, required: bool) -> tuple[str | None, str | None]:
    """(scope, key) from exactly one of user/provider/ip/model, or `global`."""
    chosen = [name for name in (*KEY_SCOPES, "global") if name in fields]
    if len(chosen) > 1:
        raise AdminCallError(chosen[1], f"give one of {_list((*KEY_SCOPES, 'global'))}")
    if not chosen:
        if required:
            raise AdminCallError("", f"give one of {_list((*KEY_SCOPES, 'global'))}")
        return None, None
    name = chosen[0]
    if name == "global":
        if not _bool(fields, "global"):
            raise AdminCallError("global", "`global` must be true when given")
        return "global", ""
    return name, _text(fields, name, required=True)


def _list(names: tuple[str, ...]) -> str:
    return ", ".join(f"`{n}`" for n in names)


# ----------------------------------------------------------------------------- routes


def admin_routes(
    admin: RateLimitAdmin,
    *,
    admin_token: str | None,
    open_admin: bool,
    count_error: Callable[[int], None],
) -> list[Route]:
    """The `/v1/ratelimit/…` routes over `admin`. `count_error(status)` sees every refusal
    (for the service's bad-request counter)."""
    token = admin_token.encode("utf-8") if admin_token else None

    def refuse(status: int, error: str, detail: Any = None, **headers: str) -> Response:
        count_error(status)
        response = problem(status, error, detail)
        response.headers.update(headers)
        return response

    def authorized(request: HttpRequest) -> Response | None:
        """None when the caller may change state, else the refusal."""
        if token is None:
            return None if open_admin else refuse(403, NOT_OPEN)
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not supplied.strip():
            return refuse(
                401, "this admin call needs `Authorization: Bearer TOKEN`",
                **{"WWW-Authenticate": 'Bearer realm="policyctl"'},
            )  # fmt: skip
        if not hmac.compare_digest(supplied.strip().encode("utf-8", "replace"), token):
            return refuse(
                401, "the bearer token is not the admin token",
                **{"WWW-Authenticate": 'Bearer realm="policyctl", error="invalid_token"'},
            )  # fmt: skip
        return None

    def call(handler: Callable[[HttpRequest], Awaitable[Any]], *, mutating: bool) -> Handler:
        async def run(request: HttpRequest) -> Response:
            if mutating:
                refusal = authorized(request)
                if refusal is not None:
                    return refusal
            try:
                return SafeJSONResponse(await handler(request))
            except BodyError as err:
                return refuse(err.status, err.error, err.detail)
            except RecursionError:
                return refuse(400, "malformed JSON: nested too deeply")
            except AdminCallError as err:
                if err.conflict:
                    return refuse(409, err.message)
                return refuse(422, "invalid admin call", [{"field": err.field,
                                                           "message": err.message}])  # fmt: skip
            except AdminError as err:
                field, message = _admin_problem(err)
                return refuse(422, "invalid admin call", [{"field": field, "message": message}])
            except StoreUnavailableError as err:  # Redis down: the server's, not the caller's
                response = problem(503, str(err))
                response.headers["Retry-After"] = "1"
                return response

        return run

    async def status(request: HttpRequest) -> Any:
        params = _query(request, (*KEY_SCOPES, "global", "verbose"))
        scope, key = _scope_key(params, required=False)
        return admin.status(scope, key, verbose=_bool(params, "verbose"))

    async def config(request: HttpRequest) -> Any:
        params = _query(request, ("verbose",))
        return admin.config(verbose=_bool(params, "verbose"))

    async def stats(request: HttpRequest) -> Any:
        params = _query(request, ("start", "end", "type"))
        return admin.stats(params.get("start"), params.get("end"), params.get("type"))

    async def violations(request: HttpRequest) -> Any:
        params = _query(request, ("key", "limit", "type"))
        return admin.violations(
            params.get("key"), params.get("limit", "50"), scope=params.get("type")
        )

    async def buckets(request: HttpRequest) -> Any:
        params = _query(request, ("type",))
        return admin.buckets(params.get("type"))

    async def set_quota(request: HttpRequest) -> Any:
        _query(request, ())
        fields = _body_fields(
            await json_body(request), ("user", "limit", "window", "burst", "expires")
        )
        user = _text(fields, "user", required=True)
        limit = _amount(fields, "limit", required=True)
        window = _amount(fields, "window", required=True)
        burst = _amount(fields, "burst")
        expires = _amount(fields, "expires")
        return admin.set_quota(
            scope="user", key=user or "", limit=limit, window_ms=window,
            burst=0 if burst is None else burst, expires_at=expires,
        )  # fmt: skip

    async def reset(request: HttpRequest) -> Any:
        _query(request, ())
        fields = _body_fields(await json_body(request), (*KEY_SCOPES, "global"))
        scope, key = _scope_key(fields, required=True)
        assert scope is not None
        count = admin.reset(scope, key or None)
        return {"scope": scope, "key": key or None, "reset": count}

    async def remove(request: HttpRequest) -> Any:
        _query(request, ())
        fields = _body_fields(await json_body(request), ("user",))
        user = _text(fields, "user", required=True) or ""
        removed = admin.remove_quota("user", user)
        return {"scope": "user", "key": user, "removed": removed}

    async def cleanup(request: HttpRequest) -> Any:
        _query(request, ())
        fields = _body_fields(await json_body(request, allow_empty=True), ("idle",))
        idle = _amount(fields, "idle")
        idle_ms = parse_window_ms(
            "24h" if idle is None else idle, "--idle", allow_zero=True, error=AdminError
        )
        deleted = admin.cleanup(idle_ms)
        return {"deleted": deleted, "idle_ms": int(idle_ms) if idle_ms.is_integer() else idle_ms}

    async def metrics_summary(request: HttpRequest) -> Any:
        params = _query(request, ("window", "provider", "by"))
        window = params.get("window", "24h").strip()
        try:
            window_s = parse_duration_s(window, error=UnitError)
        except UnitError as err:
            raise AdminCallError("window", str(err).replace("--window", "`window`")) from None
        by = params.get("by", "model")
        if by not in BY:
            raise AdminCallError("by", f"`by` must be one of {_list(BY)}, got `{by}`")
        provider = params.get("provider")
        if by == "arm" and provider is not None:
            raise AdminCallError("provider", "`provider` is for `by=model`; an arm spans providers")
        engine = admin.engine
        store = engine.store
        if not isinstance(store, SQLQueries):
            raise AdminCallError(
                "", f"this server keeps no outcome log: its state `{store.url}` is not a DuckDB"
                " file", conflict=True,
            )  # fmt: skip
        if engine.outcome_log is not None:
            engine.outcome_log.flush()  # what was recorded before the call is in the answer
        query = SummaryQuery(window, window_s, engine.clock(), provider, by)
        return store.read(lambda con: summary(con, store.url, query))

    base = "/v1/ratelimit"
    return [
        Route(f"{base}/status", call(status, mutating=False), methods=["GET"]),
        Route(f"{base}/config", call(config, mutating=False), methods=["GET"]),
        Route(f"{base}/stats", call(stats, mutating=False), methods=["GET"]),
        Route(f"{base}/violations", call(violations, mutating=False), methods=["GET"]),
        Route(f"{base}/buckets", call(buckets, mutating=False), methods=["GET"]),
        Route(f"{base}/set", call(set_quota, mutating=True), methods=["POST"]),
        Route(f"{base}/reset", call(reset, mutating=True), methods=["POST"]),
        Route(f"{base}/remove", call(remove, mutating=True), methods=["POST"]),
        Route(f"{base}/cleanup", call(cleanup, mutating=True), methods=["POST"]),
        Route(SUMMARY_PATH, call(metrics_summary, mutating=False), methods=["GET"]),
    ]


# ----------------------------------------------------------------------------- OpenAPI


def _query_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def admin_openapi_paths() -> dict[str, Any]:
    """The OpenAPI `paths` of the admin calls."""
    text = {"type": "string"}
    boolean = {"type": "boolean"}
    amount = {"oneOf": [{"type": "number"}, {"type": "string"}]}
    error = {"$ref": "#/components/schemas/Error"}

    def answers(mutating: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "200": {"description": "the same JSON as `policyctl ratelimit … --format json`"},
            "422": {"description": "a bad parameter, named",
                    "content": {"application/json": {"schema": error}}},
            "503": {"description": "the rate-limit store (Redis) cannot be reached",
                    "content": {"application/json": {"schema": error}}},
        }  # fmt: skip
        if mutating:
            for code, why in (
                ("400", "malformed JSON"),
                ("401", "missing or wrong bearer token"),
                ("403", "no admin token configured and the server is not opened"),
                ("413", "body over 1 MiB"),
            ):
                out[code] = {"description": why, "content": {"application/json": {"schema": error}}}
        return out

    def get(summary: str, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {"get": {"summary": summary, "parameters": params, "responses": answers(False)}}

    def post(summary: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
        schema = {
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }
        return {
            "post": {
                "summary": summary,
                "security": [{"adminToken": []}],
                "requestBody": {
                    "required": bool(required),
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": answers(True),
            }
        }

    scope_params = [_query_param(s, text, f"one {s}") for s in KEY_SCOPES]
    scope_params.append(_query_param("global", boolean, "the global limit"))
    verbose = _query_param("verbose", boolean, "bucket keys, refill rates, retry times")
    scope_type = _query_param("type", text, "one scope: global, user, ip, provider, model")
    keys = {s: text for s in KEY_SCOPES}
    return {
        "/v1/ratelimit/status": get("Limits that apply and tokens left", [*scope_params, verbose]),
        "/v1/ratelimit/config": get("The policy's limits and the runtime quotas", [verbose]),
        "/v1/ratelimit/stats": get(
            "Daily allowed and denied counts per scope",
            [
                _query_param("start", text, "first day (UTC)"),
                _query_param("end", text, "last day (UTC), inclusive"),
                scope_type,
            ],
        ),
        "/v1/ratelimit/violations": get(
            "Requests denied by a limit, newest first",
            [
                _query_param("key", text, "only this key"),
                _query_param("limit", {"type": "integer"}, "at most N rows (default 50)"),
                scope_type,
            ],
        ),
        "/v1/ratelimit/buckets": get("Buckets that are not full", [scope_type]),
        "/v1/ratelimit/set": post(
            "Set a runtime quota for a user",
            {"user": text, "limit": amount, "window": amount, "burst": amount, "expires": amount},
            ["user", "limit", "window"],
        ),
        "/v1/ratelimit/reset": post(
            "Refill the buckets of one key (or the global ones)",
            {**keys, "global": boolean},
            [],
        ),
        "/v1/ratelimit/remove": post("Remove a user's runtime quota", {"user": text}, ["user"]),
        "/v1/ratelimit/cleanup": post(
            "Delete full buckets idle for `idle` (default 24h)", {"idle": amount}, []
        ),
        SUMMARY_PATH: {
            "get": {
                "summary": "Per-model (or per-arm) latency percentiles, success rate and cost"
                " over a window: `policyctl metrics show`",
                "parameters": [
                    _query_param("window", text, "a duration such as 30m, 1h, 24h (default 24h)"),
                    _query_param("provider", text, "only this provider (by=model)"),
                    _query_param("by", {"type": "string", "enum": list(BY)}, "model or arm"),
                ],
                "responses": {
                    "200": {
                        "description": "the same JSON as `policyctl metrics show --format json`"
                    },
                    "409": {
                        "description": "the server's state is not a DuckDB file (no log)",
                        "content": {"application/json": {"schema": error}},
                    },
                    "422": answers(False)["422"],
                },
            }
        },
    }
