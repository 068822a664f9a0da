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


def test_the_fast_path_builds_no_starlette_request_and_parses_each_body_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted: on the fast path a decision builds no Starlette `Request` (nor `Response`)
    and decodes its body once; through the router (`fast=False`) the same calls build
    them."""
    import starlette.requests
    import starlette.responses

    import engine.service.body as body_module

    counts = {"request": 0, "response": 0, "decode": 0}
    request_init = starlette.requests.Request.__init__
    response_init = starlette.responses.Response.__init__
    decode = body_module._decode

    def counted_request(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["request"] += 1
        request_init(self, *args, **kwargs)

    def counted_response(self: Any, *args: Any, **kwargs: Any) -> None:
        counts["response"] += 1
        response_init(self, *args, **kwargs)

    def counted_decode(raw: bytes) -> Any:
        counts["decode"] += 1
        return decode(raw)

    monkeypatch.setattr(starlette.requests.Request, "__init__", counted_request)
    monkeypatch.setattr(starlette.responses.Response, "__init__", counted_response)
    monkeypatch.setattr(body_module, "_decode", counted_decode)
    fast, slow = _pair()
    native = _json({"id": "n1", "user": "alice", "ip": "10.0.0.1", "prompt": PROMPT})
    chat = _json(
        {"model": "gpt-4o", "user": "bob", "messages": [{"role": "user", "content": PROMPT}]}
    )
    calls = [
        Call("POST", "/v1/eval", chunks=(native,)),
        Call("POST", "/v1/eval", chunks=(chat[:9], chat[9:])),
        Call("POST", "/v1/eval", b"explain=true", chunks=(native,)),
        Call("POST", "/v1/eval", chunks=(chat,), headers=((b"x-request-id", b"c1"),)),
    ]
    for call in calls:
        sent, raised = asyncio.run(_call(fast, call))
        assert raised is None and sent[0]["status"] == 200
    assert counts == {"request": 0, "response": 0, "decode": len(calls)}
    for call in calls:
        asyncio.run(_call(slow, call))
    assert counts["request"] >= len(calls) and counts["response"] == len(calls)
    assert counts["decode"] == 2 * len(calls)  # once per body there too


def test_a_served_response_is_one_write() -> None:
    """uvicorn writes a response's head and body apart; the server's protocol gathers
    them (`GatheredWrites`): one `write` per response on the connection's transport, over
    a real socket on 127.0.0.1, keep-alive requests in a row."""
    import uvicorn
    from uvicorn.server import ServerState

    from engine.service.server import GatheredWrites, _protocol

    app = create_app(_engine())
    config = uvicorn.Config(app, http=_protocol(10.0), lifespan="off", log_config=None)
    config.load()
    state = ServerState()
    protocols: list[Any] = []

    def protocol() -> Any:
        made = config.http_protocol_class(config=config, server_state=state, app_state={})
        protocols.append(made)
        return made

    async def exchange(n: int) -> list[bytes]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        bodies = []
        try:
            for i in range(n):
                body = _json({"id": f"w{i}", "user": "dave", "prompt": PROMPT})
                writer.write(
                    b"POST /v1/eval HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                head = await reader.readuntil(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                bodies.append(await reader.readexactly(length))
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
        return bodies

    bodies = asyncio.run(exchange(3))
    assert [json.loads(b)["request_id"] for b in bodies] == ["w0", "w1", "w2"]
    (served,) = protocols
    assert isinstance(served.transport, GatheredWrites)
    assert served.transport.writes == 3


def test_requests_ready_together_are_decided_before_any_is_answered() -> None:
    """Requests ready in the same turn of the event loop are decided one after the other,
    then answered (the fast path sends an answer on the loop's next turn), and each is
    answered as when they come one at a time: the order of the decisions and the answers,
    logged, for four requests at once on /v1/eval and four on /v1/enforce."""
    log: list[str] = []

    def logging_app() -> Starlette:
        engine = _engine()
        evaluate = engine.evaluate

        def logged(request: Any, **options: Any) -> Any:  # the engine's, logged
            log.append(f"decide {request['id']}")
            return evaluate(request, **options)

        engine.evaluate = logged  # type: ignore[method-assign]
        return create_app(engine)

    for path in ("/v1/eval", "/v1/enforce"):
        app = logging_app()
        calls = [
            Call("POST", path, chunks=(_json({"id": f"t{i}", "user": f"u{i}", "prompt": PROMPT}),))
            for i in range(4)
        ]

        async def answered(call: Call, app: Starlette = app) -> list[dict[str, Any]]:
            sent, raised = await _call(app, call)
            assert raised is None
            log.append(f"answer {json.loads(sent[1]['body'])['request_id']}")
            return sent

        async def together(calls: list[Call] = calls) -> list[list[dict[str, Any]]]:
            return list(await asyncio.gather(*(answered(call) for call in calls)))

        log.clear()
        sent = asyncio.run(together())
        assert log == [f"decide t{i}" for i in range(4)] + [f"answer t{i}" for i in range(4)]
        assert [s[0]["status"] for s in sent] == [200] * 4
        alone = create_app(_engine())  # the same requests, one at a time
        assert [asyncio.run(_call(alone, call)) for call in calls] == [(s, None) for s in sent]


class _TimerCountingLoop(asyncio.SelectorEventLoop):
    """An event loop that counts the timers armed on it (`call_later` arms through
    `call_at`)."""

    timers = 0

    def call_at(self, when: float, callback: Any, *args: Any, context: Any = None) -> Any:
        self.timers += 1
        return super().call_at(when, callback, *args, context=context)


class _CountedHeaders(list):  # type: ignore[type-arg]
    """A request's header list that counts the passes over it."""

    passes = 0

    def __iter__(self) -> Iterator[Any]:
        _CountedHeaders.passes += 1
        return super().__iter__()


def test_a_decision_reads_the_headers_in_one_pass() -> None:
    """Counted: `/v1/eval` reads the body's length and both wire headers in one pass over
    the request's headers (they were two), with and without a query; the answers still
    carry the request id and the decision's length."""
    fast, _ = _pair()
    chat = _json(
        {"model": "gpt-4o", "user": "bob", "messages": [{"role": "user", "content": PROMPT}]}
    )
    queries = (b"", b"explain=true", b"format=openai-chat&request_id=q1")
    for n, query in enumerate(queries):
        headers = _CountedHeaders(
            [(b"host", b"127.0.0.1:8181"), (b"content-length", b"%d" % len(chat)),
             (b"x-request-id", b"r%d" % n)]
        )  # fmt: skip
        sent: list[dict[str, Any]] = []
        messages = [{"type": "http.request", "body": chat, "more_body": False}]

        async def receive(messages: list[dict[str, Any]] = messages) -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: dict[str, Any], sent: list[dict[str, Any]] = sent) -> None:
            sent.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/eval", "raw_path": b"/v1/eval",
            "root_path": "", "query_string": query, "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8181), "headers": headers,
        }  # fmt: skip
        _CountedHeaders.passes = 0
        asyncio.run(fast(scope, receive, send))
        assert _CountedHeaders.passes == 1, query
        assert sent[0]["status"] == 200
        assert dict(sent[0]["headers"])[b"content-length"] == b"%d" % len(sent[1]["body"])
        request_id = "q1" if b"request_id" in query else f"r{n}"
        assert json.loads(sent[1]["body"])["request_id"] == request_id
