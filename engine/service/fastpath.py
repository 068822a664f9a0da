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

A fast route's answer is sent on the event loop's next turn, not as soon as it is made
(`await sleep(0)` between the handler and the send): the requests whose bodies arrived
in the same turn are decided one after the other, then answered one after the other.
Between two decisions the CPU otherwise runs the first one's answer (uvicorn and h11
framing it, the socket write): a decision measured 35–37 µs in a loop of decisions and
45–51 µs with one h11 request and response between them (its code and data out of the
caches); under `wrk` the server's CPU per request fell by about 10 µs, the extra turn
(3–4 µs for a request alone) included. The bytes, the status and the counters are the
same.

What it skips per request: four middleware layers and the send wrappers they add to each
message, the router's match over the route list, Starlette's per-route request and
exception wrappers, and (for `/v1/eval`'s decisions) the `Request` and `Response` objects:
a fast route's handler is raw (`FastRoute`: the scope and the receive channel in, an
`Answer` out), the body read from the ASGI messages and parsed once, the query parsed only
when there is one.
"""

from __future__ import annotations

from asyncio import sleep
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from time import perf_counter
from typing import Protocol

from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from engine.service.body import problem
from engine.service.telemetry import Telemetry, log_request

FAST_PATHS = ("/v1/eval", "/v1/enforce")  # POST only
JSON_TYPE = (b"content-type", b"application/json")


class Answer(Protocol):
    """What a raw handler answers: a `Response` with a body (no background task, no
    stream), or a `JsonAnswer`."""

    @property
    def status_code(self) -> int: ...
    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]: ...
    @property
    def body(self) -> bytes | memoryview: ...


@dataclass(frozen=True, slots=True)
class JsonAnswer:
    """A JSON body answered 200, with the headers `Response(body, media_type=
    "application/json")` would send, without building the `Response`."""

    body: bytes
    status_code: int = 200

    @property
    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"content-length", b"%d" % len(self.body)), JSON_TYPE]

    def response(self) -> Response:
        return Response(self.body, status_code=self.status_code, media_type="application/json")


RawHandler = Callable[[Scope, Receive], Awaitable[Answer | bytes]]  # bytes: a JSON 200


class FastRoute(Route):
    """A POST route whose handler is raw (the request's scope and receive, no Starlette
    `Request`): the router calls it through a `Request`, the fast path directly. A raw
    handler answers an `Answer`, or the bytes of a JSON body answered 200 (`JsonAnswer`'s)."""

    def __init__(self, path: str, raw: RawHandler) -> None:
        async def endpoint(request: HttpRequest) -> Response:
            answer = await raw(request.scope, request.receive)
            if isinstance(answer, bytes):
                return JsonAnswer(answer).response()
            return answer.response() if isinstance(answer, JsonAnswer) else answer  # type: ignore[return-value]

        super().__init__(path, endpoint, methods=["POST"])
        self.raw = raw


class ServiceApp(Starlette):
    """A Starlette app whose `fast` handlers (path -> the route's own raw handler, POST
    only) are called without the middleware stack; set by `serve_fast`."""

    fast: Mapping[str, RawHandler] = {}
    telemetry: Telemetry | None = None
    log_access: bool = False
    own_middleware = 0  # the app's own middleware (`RequestTimer`): with more, no fast path

    def serve_fast(self, handlers: Mapping[str, RawHandler], telemetry: Telemetry, *,
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

    async def _fast(self, handler: RawHandler, scope: Scope, receive: Receive, send: Send) -> None:
        start = perf_counter()
        scope["app"] = self
        status = 500  # unless an answer starts, as `RequestTimer` counts an error
        try:
            try:
                answer = await handler(scope, receive)
            except Exception:  # as ServerErrorMiddleware: a 500, then the server logs it
                await _send(problem(500, "internal error"), send)
                raise
            # the answer goes out on the loop's next turn: the requests that are ready now
            # are decided first, back to back, then answered (the module's docstring)
            await sleep(0)
            if answer.__class__ is bytes:  # a JSON 200, as `JsonAnswer` sends it
                status = 200
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-length", b"%d" % len(answer)), JSON_TYPE],  # type: ignore[arg-type]
                    }
                )
                await send({"type": "http.response.body", "body": answer})
            else:
                status = answer.status_code  # type: ignore[union-attr]
                await _send(answer, send)  # type: ignore[arg-type]
        finally:
            s = perf_counter() - start
            telemetry = self.telemetry
            if telemetry is not None:
                telemetry.observe_request(scope["path"], "POST", status, s)
            if self.log_access:
                log_request(scope, status, s)


async def _send(answer: Answer, send: Send) -> None:
    """An answer, as `Response.__call__` sends it."""
    await send(
        {"type": "http.response.start", "status": answer.status_code, "headers": answer.raw_headers}
    )
    await send({"type": "http.response.body", "body": answer.body})
