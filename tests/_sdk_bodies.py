"""Request bodies exactly as the providers' SDKs send them: each SDK is pointed at a server
on 127.0.0.1 that keeps the body it receives and answers 400 (so no SDK retries)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Captured:
    path: str
    body: dict[str, Any]


@contextmanager
def capture_server() -> Iterator[tuple[str, list[Captured]]]:
    seen: list[Captured] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            seen.append(Captured(self.path, json.loads(self.rfile.read(length))))
            payload = b'{"error": {"message": "captured", "type": "invalid_request_error"}}'
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def sent(call: Callable[[str], Any]) -> Captured:
    """The body (and path) an SDK call sends; `call(base_url)` makes the call."""
    with capture_server() as (base, seen):
        try:
            call(base)
        except Exception as err:  # the 400 answer: every SDK raises its own error type
            if not seen:
                raise AssertionError(f"the SDK sent nothing: {err!r}") from err
    assert len(seen) == 1, seen
    return seen[0]


def openai_chat(**kwargs: Any) -> dict[str, Any]:
    import openai

    def call(base: str) -> Any:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        return client.chat.completions.create(**kwargs)

    return sent(call).body


def openai_responses(**kwargs: Any) -> dict[str, Any]:
    import openai

    def call(base: str) -> Any:
        client = openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0)
        return client.responses.create(**kwargs)

    return sent(call).body


def anthropic_messages(**kwargs: Any) -> dict[str, Any]:
    import anthropic

    def call(base: str) -> Any:
        client = anthropic.Anthropic(base_url=base, api_key="sk-test", max_retries=0)
        return client.messages.create(**kwargs)

    return sent(call).body


def gemini_generate(model: str, contents: Any, config: Any = None) -> Captured:
    from google import genai
    from google.genai import types

    def call(base: str) -> Any:
        client = genai.Client(
            api_key="test-key",
            http_options=types.HttpOptions(base_url=base, retry_options=None),
        )
        return client.models.generate_content(model=model, contents=contents, config=config)

    return sent(call)
