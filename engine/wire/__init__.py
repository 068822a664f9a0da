"""Wire formats: the request bodies of OpenAI Chat Completions, OpenAI Responses, Anthropic
Messages and Gemini generateContent, read into what routing needs (`WireRequest`).

Standard library only. `engine.routing.request` decides native or wire (a body with any
native-only field is native) and turns a `WireRequest` into an evaluation environment.
docs/requests.md lists, field by field, what is derived from each format.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from engine.tokens import estimate_message_overhead, estimate_text_tokens
from engine.wire.anthropic import read_messages
from engine.wire.detect import detect
from engine.wire.gemini import read_generate_content
from engine.wire.openai import read_chat, read_responses
from engine.wire.record import (
    ANTHROPIC,
    FORMATS,
    GEMINI,
    NATIVE,
    OPENAI_CHAT,
    OPENAI_RESPONSES,
    WIRE_FORMATS,
    Derivation,
    WireError,
    WireRequest,
)

__all__ = [
    "ANTHROPIC",
    "FORMATS",
    "GEMINI",
    "NATIVE",
    "OPENAI_CHAT",
    "OPENAI_RESPONSES",
    "WIRE_FORMATS",
    "Derivation",
    "WireError",
    "WireRequest",
    "detect",
    "read",
]

_READERS: dict[str, Callable[[Mapping[str, Any], WireRequest], None]] = {
    OPENAI_CHAT: read_chat,
    OPENAI_RESPONSES: read_responses,
    ANTHROPIC: read_messages,
    GEMINI: read_generate_content,
}


def read(
    body: Mapping[str, Any],
    fmt: str,
    *,
    model: str | None = None,
    stream: bool | None = None,
) -> WireRequest:
    """Read `body` as wire format `fmt` (one of WIRE_FORMATS). `model` and `stream` are the
    options for what a format keeps outside the body (Gemini's URL); given, they win."""
    request = WireRequest(format=fmt)
    _READERS[fmt](body, request)
    if model is not None:
        request.model = model
        request.note("model", model, "option")
    elif request.model is not None:
        request.note("model", request.model, "model")
    if stream is not None:
        request.stream = stream
        request.note("stream", stream, "option")
    elif request.stream:
        request.note("stream", True, "stream")
    # one estimate over all the text: the estimate's cost is mostly per call
    request.text = "\n".join(request.texts)
    request.text_tokens = estimate_text_tokens(request.text)
    if request.messages:
        request.text_tokens += estimate_message_overhead(request.messages)
    return request
