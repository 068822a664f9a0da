"""The decision endpoints ahead of Starlette's middleware and router.

`POST /v1/eval` and `POST /v1/enforce` are most of a service's traffic. `ServiceApp` (the
Starlette app `create_app` builds) hands them straight to their handlers — the same
functions the routes hold, so the answers, errors and counters are the routes' — and
does itself what the middleware stack would do for them: the request's timing and access
log line (`RequestTimer`'s, through `Telemetry.observe_request` and `log_request`), and a
500 problem for an error no handler answered, re-raised for the server's log
(`ServerErrorMiddleware`'s). Every other request, and these paths under another method
or a `root_path` (the app mounted inside another), goes through Starlette as before; so
does everything once middleware is added to the app after `create_app` (an embedding
application's own, which the fast path would skip).

What it skips per request: four middleware layers and the send wrappers they add to each
message, the router's match over the route list, and Starlette's per-route request and
exception wrappers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from time import perf_counter
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engine.service.body import problem
from engine.service.telemetry import Telemetry, log_request

Handler = Callable[[HttpRequest], Awaitable[Response]]
FAST_PATHS = ("/v1/eval", "/v1/enforce")  # POST only


class ServiceApp(Starlette):
    """A Starlette app whose `fast` handlers (path -> the route's own handler, POST only)
    are called without the middleware stack; set by `serve_fast`."""

    fast: Mapping[str, Handler] = {}
    telemetry: Telemetry | None = None
    log_access: bool = False
    own_middleware = 0  # the app's own middleware (`RequestTimer`): with more, no fast path

    def serve_fast(self, handlers: Mapping[str, Handler], telemetry: Telemetry, *,
                   log_access: bool) -> None:  # fmt: skip
        self.fast = dict(handlers)
        self.telemetry = telemetry
        self.log_access = log_access
        self.own_middleware = len(self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            handler = self.fast.get(scope["path"])
            if handler is not None and len(self.user_middleware) == self.own_middleware:
                await self._fast(handler, scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def _fast(self, handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        scope["app"] = self
        status = 500  # unless an answer starts, as `RequestTimer` counts an error
        try:
            try:
                response = await handler(HttpRequest(scope, receive))
            except Exception:  # as ServerErrorMiddleware: a 500, then the server logs it
                await _send(problem(500, "internal error"), send)
                raise
            status = response.status_code
            await _send(response, send)
        finally:
            s = perf_counter() - start
            telemetry = self.telemetry
            if telemetry is not None:
                telemetry.observe_request(scope["path"], "POST", status, s)
            if self.log_access:
                log_request(scope, status, s)


async def _send(response: Response, send: Send) -> None:
    """A response with a body and no background task, as `Response.__call__` sends it."""
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": response.status_code,
        "headers": response.raw_headers,
    }
    await send(start)
    await send({"type": "http.response.body", "body": response.body})
