"""HTTP plumbing the service's handlers share: bounded JSON bodies, error shapes, flags.

Every client error is a JSON object `{"error": sentence, "detail": …}`; a body over 1 MiB
is a 413 (by `Content-Length`, or counted while a chunked body streams), malformed JSON a
400 with the line and column.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from engine.errors import PolicyctlError

MAX_BODY_BYTES = 1 << 20


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


async def json_body(request: HttpRequest, *, allow_empty: bool = False) -> Any:
    """The body as JSON; with `allow_empty`, an empty body is `{}`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BodyError(413, "request body is larger than 1 MiB")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyError(413, "request body is larger than 1 MiB")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if allow_empty and not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BodyError(400, "request body is not UTF-8") from None
    except RecursionError:
        raise BodyError(400, "malformed JSON: nested too deeply") from None
    except ValueError as err:
        if not isinstance(err, json.JSONDecodeError):
            raise BodyError(400, f"malformed JSON: {err}") from None
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
    return request.query_params.get(name, "").lower() in ("1", "true", "yes")
