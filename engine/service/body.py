"""HTTP plumbing the service's handlers share: bounded JSON bodies, error shapes, flags.

Every client error is a JSON object `{"error": sentence, "detail": …}`; a body over 1 MiB
is a 413 (by `Content-Length`, or counted while a chunked body streams), malformed JSON a
400 with the line and column, a body that is not UTF-8 (UTF-16 included) a 400. A client
that disconnects mid-body is one warning line in the log.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse
from starlette.types import Message, Receive, Scope

from engine.api.waiting import has_waits
from engine.errors import PolicyctlError
from engine.routing.request import MAX_PRIORITY, json_limit, unstorable
from engine.wire import FORMATS

if TYPE_CHECKING:
    from engine.api.policy_engine import PolicyEngine
    from engine.language.program import Program
    from engine.routing.decision import Decision

MAX_BODY_BYTES = 1 << 20
_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte order mark is allowed, as json.loads(bytes) allows it

log = logging.getLogger("policyctl.service")


class BodyError(PolicyctlError):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        self.status = status
        self.error = error
        self.detail = detail


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate a client sent cannot break encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def problem(status: int, error: str, detail: Any = None) -> JSONResponse:
    body: dict[str, Any] = {"error": error}
    if detail is not None:
        body["detail"] = detail
    return SafeJSONResponse(body, status_code=status)


async def json_body(
    request: HttpRequest, *, allow_empty: bool = False, check_strings: bool = True
) -> Any:
    """The body as JSON; with `allow_empty`, an empty body is `{}`. A string that cannot be
    stored (a lone surrogate, `"\\ud800"`, is legal JSON) is a 422 naming its field, unless
    `check_strings` is off because the caller's validator runs the same check."""
    return checked_json(await _read(request), allow_empty=allow_empty, check_strings=check_strings)


def checked_json(raw: bytes, *, allow_empty: bool = False, check_strings: bool = True) -> Any:
    """`raw` parsed once, with `json_body`'s errors and checks."""
    body = _parse(raw, allow_empty)
    if check_strings:
        problems = unstorable(body)
        if problems:
            detail = [{"field": path, "message": message} for path, message in problems]
            raise BodyError(422, "a string in the body cannot be stored", detail)
    return body


async def raw_body(request: HttpRequest) -> bytes:
    """The body's bytes, bounded as `json_body` bounds them (413 past 1 MiB), unparsed: for
    a handler that parses the parts of a body itself (JSON Lines)."""
    return await _read(request)


def parse_json(raw: bytes) -> Any:
    """One JSON text, with `json_body`'s errors (`BodyError` 400: malformed, not UTF-8)."""
    return _parse(raw, False)


async def _read(request: HttpRequest) -> bytes:
    return await read_body(request.scope, request.receive)


async def read_body(scope: Scope, receive: Receive) -> bytes:
    """The body from the ASGI messages themselves (as `request.stream()` reads them, without
    its generator or a `Request`); a body that came in one message is returned as it came,
    uncopied."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyError(413, "request body is larger than 1 MiB")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "http.request":
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyError(413, "request body is larger than 1 MiB")
            more = message.get("more_body", False)
            if not more and not chunks:
                return chunk
            if chunk:
                chunks.append(chunk)
            if not more:
                return b"".join(chunks)
        elif kind == "http.disconnect":
            request = HttpRequest(scope)  # for the log line only: the client and the path
            log.warning(
                "client %s disconnected before sending the whole body of %s %s (%d bytes read)",
                request.client.host if request.client else "?",
                request.method,
                request.url.path,
                size,
            )
            raise BodyError(400, "the client disconnected before sending the whole body")


async def read_eval(scope: Scope, receive: Receive) -> tuple[Any, WireOptions, bool, bool]:
    """What `POST /v1/eval` and `/v1/enforce` read: the body parsed (as `checked_json(…,
    check_strings=False)`: the request validator checks the strings), the `WireOptions`,
    and the `?explain` and `?dry_run` flags; the headers read in one pass, and a body that
    came in one message taken as it came (`read_body`'s bounds and errors). Without a query
    string or a wire header the options are `NO_OPTIONS` (and both flags off)."""
    declared = fmt = request_id = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            if declared is None:
                declared = value
        elif name == b"x-input-format":
            if fmt is None:
                fmt = value.decode("latin-1")
        elif name == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyError(413, "request body is larger than 1 MiB")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        raw = message.get("body", b"")
        if len(raw) > MAX_BODY_BYTES:
            raise BodyError(413, "request body is larger than 1 MiB")
    else:
        raw = await _rest_of_body(scope, receive, message)
    try:
        body = _decode(raw)  # as `_parse`: the common case first
    except (msgspec.DecodeError, ValueError, RecursionError):
        body = _parse(raw, False)
    query_string = scope.get("query_string")
    if not query_string:
        if fmt is None and request_id is None:
            return body, NO_OPTIONS, False, False
        return body, _options(_NO_QUERY, fmt, request_id), False, False
    query = QueryParams(query_string)
    return (
        body,
        _options(query, fmt, request_id),
        query_flag(query, "explain"),
        query_flag(query, "dry_run"),
    )


async def _rest_of_body(scope: Scope, receive: Receive, first: Message) -> bytes:
    """`read_body` after its first message (`first`), already received."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return first
        return await receive()

    return await read_body(scope, again)


def header(scope: Scope, name: bytes) -> str | None:
    """The first `name` header (lower-case), Latin-1, as `request.headers.get` reads it."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


_decode = msgspec.json.Decoder().decode


def _first_bad_byte(raw: bytes) -> int:
    """The offset in the body (from its first byte, a byte order mark included) of the
    first byte that is not UTF-8."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start
    return 0  # (not reached: called after the body failed to decode)


def _parse(raw: bytes, allow_empty: bool) -> Any:
    if allow_empty and not raw.strip():
        return {}
    try:
        # msgspec reads a subset of what `json` reads (strict UTF-8, no BOM, no lone
        # surrogate, NaN or number past a float) to the same values; the rest, and every
        # error, is `json`'s below
        return _decode(raw)
    except (msgspec.DecodeError, ValueError, RecursionError):
        pass
    try:
        # decoded here, strictly: json.loads(bytes) would also take UTF-16 and UTF-32
        return json.loads(raw.decode("utf-8-sig" if raw.startswith(_BOM) else "utf-8"))
    except UnicodeDecodeError:
        raise BodyError(400, "request body is not UTF-8", {"byte": _first_bad_byte(raw)}) from None
    except RecursionError as err:
        raise BodyError(400, f"malformed JSON: {json_limit(err)}") from None
    except ValueError as err:
        if not isinstance(err, json.JSONDecodeError):
            raise BodyError(400, f"malformed JSON: {json_limit(err)}") from None
        raise BodyError(
            400,
            f"malformed JSON: {err.msg[:1].lower()}{err.msg[1:]}",
            {"line": err.lineno, "column": err.colno},
        ) from None
    except json.JSONDecodeError as err:
        raise BodyError(
            400,
            f"malformed JSON: {err.msg[:1].lower()}{err.msg[1:]}",
            {"line": err.lineno, "column": err.colno},
        ) from None


def flag(request: HttpRequest, name: str) -> bool:
    return flag_in(request.scope, name)


def flag_in(scope: Scope, name: str) -> bool:
    """`?name=1` (or `true`, `yes`) in the request's query (`query_flag`)."""
    if not scope.get("query_string"):  # most requests: no query to parse
        return False
    return query_flag(QueryParams(scope["query_string"]), name)


_YES = ("1", "true", "yes")
_NO = ("", "0", "false", "no")


def query_flag(query: Mapping[str, str], name: str) -> bool:
    """`?name=1` (`true`, `yes`, any case) is True; absent, empty, `0`, `false` or `no`
    False; any other value a 422 naming the parameter: a mistyped `?dry_run=ture` must not
    decide for real (and consume quota) as if no flag were given."""
    value = query.get(name)
    if value is None:
        return False
    lowered = value.lower()
    if lowered in _YES:
        return True
    if lowered in _NO:
        return False
    message = f"`{name}` must be true or false (1/0, yes/no), got `{value[:40]}`"
    raise BodyError(422, "invalid request", [{"field": name, "message": message}])


def _wire_headers(scope: Scope) -> tuple[str | None, str | None]:
    """`X-Input-Format` and `X-Request-Id` in one pass over the raw headers (the first of
    each, Latin-1, as `request.headers.get` reads them; the server lower-cases names)."""
    fmt = request_id = None
    for name, value in scope["headers"]:
        if name == b"x-input-format" and fmt is None:
            fmt = value.decode("latin-1")
        elif name == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
    return fmt, request_id


@dataclass(frozen=True, slots=True)
class WireOptions:
    """What `POST /v1/eval` takes beside the body: the format (`?format=` or the
    `X-Input-Format` header), the request id (`?request_id=` or `X-Request-Id`), and the
    model and streaming a format keeps in its URL (`?model=`, `?stream=`: Gemini)."""

    input_format: str | None
    request_id: str | None
    model: str | None
    stream: bool | None


_NO_QUERY: dict[str, str] = {}


def wire_options(request: HttpRequest) -> WireOptions:
    return wire_options_of(request.scope)


NO_OPTIONS = WireOptions(None, None, None, None)  # no query, no wire header


def wire_options_of(scope: Scope) -> WireOptions:
    """The request's `WireOptions`, from its query and headers."""
    query_string = scope.get("query_string")
    header_format, header_id = _wire_headers(scope)
    if not query_string and header_format is None and header_id is None:
        return NO_OPTIONS  # most requests: nothing to read
    return _options(QueryParams(query_string) if query_string else _NO_QUERY, header_format,
                    header_id)  # fmt: skip


def _options(
    query: Mapping[str, str], header_format: str | None, header_id: str | None
) -> WireOptions:
    fmt = query.get("format") or header_format
    if fmt is not None and fmt not in FORMATS:
        raise BodyError(
            422,
            "invalid request",
            [{"field": "format", "message": "unknown input format; the formats are "
              + ", ".join(FORMATS)}],
        )  # fmt: skip
    model, request_id = query.get("model"), query.get("request_id")
    for name, value, what in (("model", model, "a model name"),
                              ("request_id", request_id, "an id")):  # fmt: skip
        if value is not None and not value.strip():  # as the CLI's `--model ""` (exit 2)
            message = f"`{name}` is empty: give {what}, or leave the parameter out"
            raise BodyError(422, "invalid request", [{"field": name, "message": message}])
    return WireOptions(
        input_format=fmt,
        request_id=request_id or header_id,
        model=model,
        stream=None if query.get("stream") is None else query_flag(query, "stream"),
    )


async def decide(
    engine: PolicyEngine, body: Any, scope: Scope, options: WireOptions, explain: bool,
    dry_run: bool,
) -> Decision:  # fmt: skip
    """The decision on `body` (the request's `scope` gives its query and headers): with a
    policy that has `wait up to D` limits (and without `?dry_run` or `?wait=false`), a
    request those limits deny waits for its tokens (an `await`, no thread), in the order of
    its `priority` (the `X-Priority` header wins)."""
    if dry_run or not waits(engine.program):
        if options is NO_OPTIONS and not explain:  # most requests: no keywords to pass
            return engine.evaluate(body)
        return engine.evaluate(
            body, dry_run=dry_run, explain=explain, input_format=options.input_format,  # type: ignore[arg-type]
            request_id=options.request_id, model=options.model, stream=options.stream,
        )  # fmt: skip
    # `?wait=false`: at once, but in the place of its priority (no jumping the queue)
    request = HttpRequest(scope)
    timeout_s = 0.0 if _no_wait(request) else None
    return await engine.acquire(
        body, timeout_s=timeout_s, priority=priority_header(request), explain=explain,
        input_format=options.input_format, request_id=options.request_id,  # type: ignore[arg-type]
        model=options.model, stream=options.stream,
    )  # fmt: skip


async def read_and_decide(
    engine: PolicyEngine, scope: Scope, receive: Receive
) -> tuple[Any, WireOptions, Decision, float]:
    """`POST /v1/eval`'s and `/v1/enforce`'s common part: the body and options read
    (`read_eval`), the decision (`decide`; a plain request straight to `evaluate`), and the
    seconds it took (read excluded)."""
    body, options, explain, dry_run = await read_eval(scope, receive)
    start = time.perf_counter()
    if options is NO_OPTIONS and not waits(engine.program):  # most requests
        decision = engine.evaluate(body)
    else:  # waits for `wait up to D` limits' tokens (engine.acquire)
        decision = await decide(engine, body, scope, options, explain, dry_run)
    return body, options, decision, time.perf_counter() - start


class _WaitsOf:
    """`has_waits(program)`, worked out once per program (a reload brings a new one)."""

    def __init__(self) -> None:
        self.last: tuple[Program | None, bool] = (None, False)  # one assignment: no race

    def __call__(self, program: Program) -> bool:
        last = self.last
        if last[0] is not program:
            last = self.last = (program, has_waits(program))
        return last[1]


waits = _WaitsOf()  # `has_waits(program)`, cached per program


def _no_wait(request: HttpRequest) -> bool:
    if not request.scope.get("query_string"):
        return False
    wait = request.query_params.get("wait")
    return bool(wait) and not query_flag(request.query_params, "wait")


def priority_header(request: HttpRequest) -> int | None:
    """`X-Priority: 5`: the request's priority (a whole number in -1000..1000), or None."""
    text = request.headers.get("x-priority")
    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        value = MAX_PRIORITY + 1
    if not -MAX_PRIORITY <= value <= MAX_PRIORITY:
        raise BodyError(
            422,
            "invalid request",
            [{"field": "X-Priority", "message": f"`{text}` is not a whole number in"
              f" -{MAX_PRIORITY}..{MAX_PRIORITY}"}],
        )  # fmt: skip
    return value
