"""The HTTP decision service (Starlette), thin over `PolicyEngine`. Nothing imports this.

    POST /v1/eval          a request (native or a wire body) -> a decision (?explain=true,
                           ?dry_run=true, ?format=, ?request_id=, ?model=, ?stream=)
    POST /v1/enforce       as /v1/eval, a denial answered 429/403 with RateLimit headers
    POST /v1/eval/batch    a JSON array or JSON Lines of requests -> their decisions, in order
                           (see `engine.service.enforce`)
    POST /v1/outcomes      one outcome or a list -> {"recorded": n}
    GET  /v1/policy        serving version, files, last reload error
    GET  /healthz          liveness
    GET  /metrics          Prometheus text (or OpenMetrics, when asked): `telemetry`
    GET  /openapi.json     the OpenAPI document
    /v1/ratelimit/…        the `policyctl ratelimit` calls (see `engine.service.admin_routes`)

Bodies over 1 MiB get 413, malformed JSON 400, invalid fields 422 naming them; nothing a
client sends produces a 500.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope

from engine.analytics.records import (
    OUTCOME_REQUIRED,
    OUTCOME_TYPES,
    check_outcome,
    outcome_problems,
    parse_timestamp,
)
from engine.api.policy_engine import PolicyEngine
from engine.limits.admin import RateLimitAdmin
from engine.routing.decision import Decision
from engine.routing.decision_schema import DecisionSchema
from engine.routing.request import Request, RequestError
from engine.service.admin_routes import admin_openapi_paths, admin_routes
from engine.service.body import (
    BodyError,
    json_body,
    problem,
    read_and_decide,
)
from engine.service.dashboard import Dashboard
from engine.service.enforce import enforce_openapi_paths, enforce_routes
from engine.service.fastpath import (
    FAST_PATHS,
    Answer,
    FastRoute,
    RawHandler,
    ServiceApp,
)
from engine.service.telemetry import RequestTimer, Telemetry
from engine.wire import FORMATS

OUTCOMES_RETRY_AFTER_S = "1"  # seconds: the writer commits a full batch well within this
_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}
_OUTCOME_NOTES = {
    "latency_ms": "milliseconds",
    "input_tokens": "every input token, the cached ones included",
    "cached_tokens": (
        "of input_tokens, read from the provider's prompt cache (at most input_tokens; needs"
        " it): priced at the model's cached-input price"
    ),
    "cost": "USD; without it, the catalog's price of the tokens given (tiers and cache prices)",
    "timestamp": "ISO 8601 or epoch seconds; default: now",
}


def outcome_schema() -> dict[str, Any]:
    """The JSON Schema of one outcome, from the outcome record's fields (`records`)."""
    properties: dict[str, Any] = {}
    for name, kinds in OUTCOME_TYPES.items():
        names = sorted({_JSON_TYPES[k] for k in kinds} - ({"integer"} if float in kinds else set()))
        schema: dict[str, Any] = {"type": names[0] if len(names) == 1 else names}
        if int in kinds or float in kinds:
            schema["minimum"] = 0
        if name in _OUTCOME_NOTES:
            schema["description"] = _OUTCOME_NOTES[name]
        properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": list(OUTCOME_REQUIRED),
        "additionalProperties": False,
    }


def openapi_document() -> dict[str, Any]:
    request_schema = Request.model_json_schema(ref_template="#/components/schemas/{model}")
    decision_schema = DecisionSchema.model_json_schema(ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = {}
    for schema in (request_schema, decision_schema):
        components.update(schema.pop("$defs", {}))
    components["Request"] = request_schema
    components["Decision"] = decision_schema
    error = {
        "type": "object",
        "properties": {"error": {"type": "string"}, "detail": {}},
        "required": ["error"],
    }
    components["Error"] = error
    components["Outcome"] = outcome_schema()

    def errors(*codes: int) -> dict[str, Any]:
        return {
            str(c): {
                "description": "error",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
            for c in codes
        }

    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "policyctl", "version": "1"},
        "paths": {
            "/v1/eval": {
                "post": {
                    "summary": "Route one request",
                    "parameters": [
                        {"name": "explain", "in": "query", "schema": {"type": "boolean"}},
                        {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                        {
                            "name": "format",
                            "in": "query",
                            "description": "the body's format (default: detected from its"
                            " shape); also the X-Input-Format header",
                            "schema": {"type": "string", "enum": list(FORMATS)},
                        },
                        {
                            "name": "request_id",
                            "in": "query",
                            "description": "the request id for a body without one; also the"
                            " X-Request-Id header (empty or blank: a 422)",
                            "schema": {"type": "string", "minLength": 1, "pattern": r"\S"},
                        },
                        {
                            "name": "model",
                            "in": "query",
                            "description": "the requested model, for a format that keeps it"
                            " in the URL (Gemini; empty or blank: a 422)",
                            "schema": {"type": "string", "minLength": 1, "pattern": r"\S"},
                        },
                        {
                            "name": "stream",
                            "in": "query",
                            "description": "whether the request streams, for a format that"
                            " keeps it in the URL (Gemini)",
                            "schema": {"type": "boolean"},
                        },
                        {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"}},
                        {"name": "X-Input-Format", "in": "header", "schema": {"type": "string"}},
                    ],
                    "requestBody": {
                        "description": "a native request (this schema), or the body of an"
                        " OpenAI Chat Completions, OpenAI Responses, Anthropic Messages or Gemini"
                        " generateContent request as clients send it (docs/requests.md)",
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/Request"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "the decision (allowed or denied)",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Decision"}
                                }
                            },
                        },
                        **errors(400, 413, 422),
                    },
                }
            },
            "/v1/outcomes": {
                "post": {
                    "summary": "Record outcomes",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "oneOf": [
                                        {"$ref": "#/components/schemas/Outcome"},
                                        {
                                            "type": "array",
                                            "items": {"$ref": "#/components/schemas/Outcome"},
                                        },
                                    ]
                                }
                            }
                        },
                    },
                    "responses": {
                        "202": {"description": "recorded"},
                        **errors(400, 413, 422, 503),
                    },
                }
            },
            "/v1/policy": {
                "get": {
                    "summary": "Serving policy",
                    "responses": {"200": {"description": "status"}},
                }
            },
            "/healthz": {
                "get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text"}},
                }
            },
            **admin_openapi_paths(),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
    }
    paths = document["paths"]
    paths.update(enforce_openapi_paths(paths["/v1/eval"]["post"]))
    return document


Handler = Callable[[HttpRequest], Awaitable[Response]]


def create_app(
    engine: PolicyEngine,
    *,
    admin_token: str | None = None,
    open_admin: bool = False,
    extra_routes: list[Route] | None = None,
    access_log: bool = False,
    fast: bool = True,
) -> Starlette:
    """The app. Admin calls that change state need `Bearer admin_token`; with no token they
    are refused unless `open_admin`. With `access_log`, each request is a line of the
    `policyctl.access` logger. `fast`: POST /v1/eval and /v1/enforce skip Starlette's
    middleware and router (`engine.service.fastpath`); off, every request goes through
    them (the tests compare the two)."""
    telemetry = Telemetry(engine)
    dashboard = Dashboard(  # /dashboard (its module)
        engine,
        admin_token=admin_token,
        alerts=lambda: [status.to_dict() for status in engine.alerts()],
    )

    def client_error(err: BodyError | RecursionError | RequestError) -> Response:
        """A handler's client error as its problem, counted."""
        if isinstance(err, BodyError):
            telemetry.bad_requests[err.status] += 1
            return problem(err.status, err.error, err.detail)
        if isinstance(err, RecursionError):
            telemetry.bad_requests[400] += 1
            return problem(400, "malformed JSON: nested too deeply")
        telemetry.bad_requests[422] += 1
        detail = [{"field": f.strip("`").removeprefix("field `"), "message": m}
                  for f, m in err.problems]  # fmt: skip
        return problem(422, "invalid request", detail)

    def guarded(handler: Handler) -> Handler:
        async def run(request: HttpRequest) -> Response:
            try:
                return await handler(request)
            except (BodyError, RecursionError, RequestError) as err:
                return client_error(err)

        return run

    def guarded_raw(handler: RawHandler) -> RawHandler:
        async def run(scope: Scope, receive: Receive) -> Answer:
            try:
                return await handler(scope, receive)
            except (BodyError, RecursionError, RequestError) as err:
                return client_error(err)

        return run

    async def evaluate(scope: Scope, receive: Receive) -> Answer | bytes:
        try:
            _, _, decision, seconds = await read_and_decide(engine, scope, receive)
        except (BodyError, RecursionError, RequestError) as err:  # `guarded_raw`, inline
            return client_error(err)
        telemetry.observe(
            decision.route, decision.provider, decision.allowed, decision.denied_by, seconds
        )
        dashboard.count(decision)
        return decision.to_json()  # a JSON answer (fastpath.JsonAnswer)

    def observe(decision: Decision, seconds: float) -> None:  # /v1/enforce, /v1/eval/batch
        telemetry.observe(
            decision.route, decision.provider, decision.allowed, decision.denied_by, seconds
        )
        dashboard.count(decision)

    async def outcomes(request: HttpRequest) -> Response:
        body = await json_body(request)
        items = body if isinstance(body, list) else [body]
        problems = []
        for index, item in enumerate(items):
            found = outcome_problems(item)
            if not found and isinstance(item, dict):
                found = check_outcome(item, engine.program.catalog, engine.clock())
            problems += [{"index": index, "field": f, "message": m} for f, m in found]
        if problems:  # all or nothing: a batch with a bad item records none of it
            raise BodyError(422, "invalid outcome", problems)
        if not engine.outcome_room(len(items)):  # all or nothing: "recorded" means on disk
            response = problem(503, "the outcome log is full; retry later")
            response.headers["Retry-After"] = OUTCOMES_RETRY_AFTER_S
            return response
        for item in items:
            engine.record_outcome(
                item["provider"],
                item["model"],
                latency_ms=item["latency_ms"],
                success=item["success"],
                input_tokens=item.get("input_tokens"),
                output_tokens=item.get("output_tokens"),
                cached_tokens=item.get("cached_tokens"),
                cost=item.get("cost"),
                at=parse_timestamp(item.get("timestamp")),
                request_id=item.get("request_id"),
                route=item.get("route"),
                user=item.get("user"),
            )
        return JSONResponse({"recorded": len(items)}, status_code=202)

    async def policy(request: HttpRequest) -> Response:
        return JSONResponse(engine.policy_status())

    async def healthz(request: HttpRequest) -> Response:
        return JSONResponse({"status": "ok", "version": engine.version})

    async def metrics(request: HttpRequest) -> Response:
        body, content_type = telemetry.exposition(request.headers.get("accept", ""))
        return Response(body, headers={"Content-Type": content_type})

    document = openapi_document()

    def count_error(status: int) -> None:
        telemetry.bad_requests[status] += 1

    async def openapi(request: HttpRequest) -> Response:
        return JSONResponse(document)

    routes = [
        FastRoute("/v1/eval", evaluate),
        *enforce_routes(engine, guard=guarded, guard_raw=guarded_raw, observe=observe),
        Route("/v1/outcomes", guarded(outcomes), methods=["POST"]),
        Route("/v1/policy", policy, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *admin_routes(
            RateLimitAdmin(engine),
            admin_token=admin_token,
            open_admin=open_admin,
            count_error=count_error,
        ),
        *dashboard.routes(),
        *(extra_routes or []),
    ]

    async def internal_error(request: HttpRequest, exc: Exception) -> Response:
        return problem(500, "internal error")

    async def http_error(request: HttpRequest, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        telemetry.bad_requests[status] += 1
        if status == 404:
            return problem(404, f"no such path `{request.url.path}`", {"paths": known_paths})
        if status == 405:
            allowed = getattr(exc, "headers", None) or {}
            response = problem(
                405, f"`{request.method}` is not allowed on `{request.url.path}`",
                {"allow": allowed.get("Allow", "")},
            )  # fmt: skip
            response.headers.update(allowed)
            return response
        return problem(status, str(getattr(exc, "detail", "error")))

    known_paths = sorted({route.path for route in routes})
    app = ServiceApp(
        routes=routes,
        exception_handlers={Exception: internal_error, HTTPException: http_error},
        middleware=[Middleware(RequestTimer, telemetry=telemetry, log_access=access_log)],
    )
    if fast:
        app.serve_fast(
            {r.path: r.raw for r in routes if isinstance(r, FastRoute) and r.path in FAST_PATHS},
            telemetry,
            log_access=access_log,
        )
    app.state.engine = engine
    app.state.telemetry = telemetry
    app.state.dashboard = dashboard
    app.state.admin_token = admin_token
    app.state.open_admin = open_admin
    return app
