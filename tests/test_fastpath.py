"""The fast path (engine/service/fastpath.py) answers exactly as Starlette's router and
middleware do: two apps over two engines in the same state (the packaged policy, a fixed
clock), one with the fast path and one without (`create_app(fast=False)`), are sent the
same requests as raw ASGI calls (bodies in one message or several, a client that goes
away, the hostile corpus's bodies), and must send byte-identical messages (status,
headers, body) and count the same things on /metrics. Counts only, no clock.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from test_hostile import CASES, _expanded

from engine.api.policy_engine import PolicyEngine
from engine.resources import default_policy_dir
from engine.service.app import create_app
from engine.service.body import MAX_BODY_BYTES

NOW = 1_800_000_000.0
PROMPT = "Summarise the attached meeting notes in two sentences."


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    chunks: tuple[bytes, ...] = (b"",)  # the body's http.request messages
    disconnect: bool = False  # the client goes away after the chunks (more_body stays on)
    root_path: str = ""


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _calls() -> Iterator[Call]:
    native = _json({"id": "n1", "user": "alice", "ip": "10.0.0.1", "prompt": PROMPT})
    chat = _json(
        {"model": "gpt-4o", "user": "bob", "messages": [{"role": "user", "content": PROMPT}]}
    )
    for path in ("/v1/eval", "/v1/enforce"):
        yield Call("POST", path, chunks=(native,))
        yield Call("POST", path, chunks=(chat,), headers=((b"x-request-id", b"chat-1"),))
        yield Call("POST", path, chunks=(chat[:7], chat[7:20], chat[20:]))  # three messages
        yield Call("POST", path, b"explain=true&dry_run=1", chunks=(native,))
        yield Call("POST", path, b"format=openai-chat&request_id=q1", chunks=(chat,))
        yield Call("POST", path, b"format=bogus", chunks=(native,))
        yield Call("POST", path, b"model=gemini-2.5-flash&stream=true", chunks=(native,))
        yield Call("POST", path, headers=((b"x-input-format", b"anthropic"),), chunks=(chat,))
        yield Call("POST", path, chunks=(b"\xef\xbb\xbf" + native,))  # a UTF-8 BOM
        yield Call("POST", path, chunks=(b"",))
        yield Call("POST", path, chunks=(b"[1, 2]",))
        yield Call("POST", path, chunks=(b"null",))
        yield Call("POST", path, chunks=(b'{"id": "x", "user": 5}',))
        yield Call("POST", path, chunks=(b'{"id": "x",',))
        yield Call("POST", path, chunks=(native[:10],), disconnect=True)
        big = b" " * (MAX_BODY_BYTES // 2)
        yield Call("POST", path, chunks=(big, big, b"{}"))  # past 1 MiB, counted
        yield Call("POST", path, headers=((b"content-length", b"%d" % (MAX_BODY_BYTES + 1)),))
        for name in sorted(CASES):
            if name.startswith("http/eval-"):
                yield Call("POST", path, chunks=(_expanded(name),))
        for n in range(60):  # past the default policy's user limit (110): denials, 429s
            body = _json({"id": f"d{n}", "user": "carol", "prompt": PROMPT})
            yield Call("POST", path, chunks=(body,))
        # not the fast path, in both apps: another method, a trailing slash, a root path
        yield Call("GET", path)
        yield Call("POST", path + "/", chunks=(native,))
        yield Call("POST", path, chunks=(native,), root_path="/api")
    yield Call("POST", "/v1/evaluate", chunks=(native,))
    yield Call("POST", "/v1/eval/batch", chunks=(b"[" + native + b"]",))


async def _call(app: Starlette, call: Call) -> tuple[list[dict[str, Any]], str | None]:
    """The messages `app` sent for `call`, and the exception it raised, by type name."""
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(call.chunks) - 1}
        for i, chunk in enumerate(call.chunks)
    ]
    if call.disconnect:
        messages[-1]["more_body"] = True
        messages.append({"type": "http.disconnect"})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": call.method, "scheme": "http", "path": call.root_path + call.path,
        "raw_path": (call.root_path + call.path).encode(), "root_path": call.root_path,
        "query_string": call.query, "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8181),
        "headers": [(b"host", b"127.0.0.1:8181"), (b"content-type", b"application/json"),
                    *call.headers],
    }  # fmt: skip
    try:
        await app(scope, receive, send)
    except Exception as err:  # compared between the two apps
        return sent, type(err).__name__
    return sent, None


def _engine() -> PolicyEngine:
    return PolicyEngine(default_policy_dir(), state="memory://", clock=lambda: NOW)


def _counts(app: Starlette) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the app's own families but the timed ones (sums and buckets)."""
    text = app.state.telemetry.exposition("")[0].decode()
    out = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("policyctl_"):
            continue
        for sample in family.samples:
            if sample.name.endswith(("_sum", "_bucket")) and "seconds" in sample.name:
                continue
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _pair(**options: Any) -> tuple[Starlette, Starlette]:
    return create_app(_engine(), **options), create_app(_engine(), fast=False, **options)


def test_the_fast_path_answers_and_counts_as_the_router_does() -> None:
    fast, slow = _pair()
    calls = list(_calls())
    for call in calls:
        got = asyncio.run(_call(fast, call))
        want = asyncio.run(_call(slow, call))
        assert got == want, call
    counts = _counts(fast)
    assert counts == _counts(slow)
    requests = {
        labels: n
        for (name, labels), n in counts.items()
        if name == "policyctl_http_request_duration_seconds_count"
    }
    answered = {dict(labels)["status"] for labels in requests}
    assert {"200", "400", "413", "422", "429"} <= answered  # the paths were all taken
    evals = sum(
        n
        for labels, n in requests.items()
        if {("path", "/v1/eval"), ("method", "POST")} <= set(labels)
    )
    assert evals == sum(1 for c in calls if c.path == "/v1/eval" and c.method == "POST")


def test_an_error_no_handler_answers_is_a_counted_500_then_raised() -> None:
    fast, slow = _pair()
    for app in (fast, slow):  # an engine that fails: what a bug would look like

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug")

        app.state.engine.evaluate = broken
    call = Call("POST", "/v1/eval", chunks=(b'{"id": "x", "user": "u", "prompt": "hi"}',))
    got = asyncio.run(_call(fast, call))
    assert got == asyncio.run(_call(slow, call))
    sent, raised = got
    assert raised == "RuntimeError" and sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": "internal error"}
    assert _counts(fast) == _counts(slow)
    key = (
        "policyctl_http_request_duration_seconds_count",
        (("method", "POST"), ("path", "/v1/eval"), ("status", "500")),
    )
    assert _counts(fast)[key] == 1


def test_the_fast_path_writes_the_same_access_lines(caplog: pytest.LogCaptureFixture) -> None:
    fast, slow = _pair(access_log=True)
    call = Call("POST", "/v1/enforce", b"dry_run=1", chunks=(b'{"id": "a", "user": "u"}',))
    lines = []
    for app in (fast, slow):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="policyctl.access"):
            asyncio.run(_call(app, call))
        (record,) = [r for r in caplog.records if r.name == "policyctl.access"]
        fields = dict(record.access)  # type: ignore[attr-defined]
        assert fields.pop("duration_ms") >= 0
        lines.append(fields)
    assert lines[0] == lines[1] == {
        "method": "POST", "path": "/v1/enforce", "status": 200, "client": "127.0.0.1:5000"
    }  # fmt: skip


def test_middleware_an_embedder_adds_is_not_skipped() -> None:
    app = create_app(_engine())

    class Tag:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def tagged(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message["headers"], (b"x-embedder", b"1")]
                await send(message)

            await self.inner(scope, receive, tagged)

    app.add_middleware(Tag)
    call = Call("POST", "/v1/eval", chunks=(b'{"id": "x", "user": "u", "prompt": "hi"}',))
    sent, raised = asyncio.run(_call(app, call))
    assert raised is None and sent[0]["status"] == 200
    assert (b"x-embedder", b"1") in sent[0]["headers"]
