"""Gemini `generateContent` request bodies, read for routing.

The REST API spells fields in camelCase and the Python SDK in snake_case; both are read.
The model and streaming are in the URL, not the body: they come as options. Only the fields
routing uses are read (and checked); every other field is ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.wire import images
from engine.wire.common import (
    image,
    is_map,
    items,
    mapping,
    media,
    output_budget,
    string,
    structure,
    text,
)
from engine.wire.record import GEMINI, WireError, WireRequest

RULE = images.gemini_tokens


def _get(body: Mapping[str, Any], snake: str, camel: str) -> Any:
    value = body.get(camel)
    return body.get(snake) if value is None else value


def read_generate_content(body: Mapping[str, Any], request: WireRequest) -> None:
    request.format = GEMINI
    # the URL's model, as a `GenerateContentRequest` may carry it too (a batch's requests):
    # `models/gemini-2.5-flash`, read as `gemini-2.5-flash`; the option wins
    model = string(body, "model")
    if model:
        request.model = model.rpartition("models/")[2] or model
    tools = body.get("tools")
    if tools:
        items(tools, "tools", "tools")
        request.need("tools", "tools")
        structure(request, tools)
    config = _get(body, "generation_config", "generationConfig")
    if is_map(config):
        _generation_config(request, config)
    system = _get(body, "system_instruction", "systemInstruction")
    if system is not None:
        if type(system) is str:
            text(request, system)
        else:
            _content(request, mapping(system, "systemInstruction"), "systemInstruction")
    contents = body.get("contents")
    if is_map(contents):  # one Content instead of a list
        contents = [contents]
    for i, content in enumerate(items(contents, "contents", "contents")):
        request.messages += 1
        if type(content) is str:
            text(request, content)
        else:
            _content(request, mapping(content, f"contents[{i}]"), f"contents[{i}]")


def _generation_config(request: WireRequest, config: Mapping[str, Any]) -> None:
    where = "generationConfig."
    # the same range as every other format's budget (a number past a float is refused here)
    key = "maxOutputTokens" if config.get("maxOutputTokens") is not None else "max_output_tokens"
    output_budget(request, config, (key,), where)
    schema = None
    for snake, camel in (
        ("response_schema", "responseSchema"),
        ("response_json_schema", "responseJsonSchema"),
    ):
        schema = _get(config, snake, camel)
        if schema is not None:
            request.need("json_schema", where + camel)
            structure(request, schema)
            break
    mime = _get(config, "response_mime_type", "responseMimeType")
    if schema is None and mime == "application/json":
        request.need("json", where + "responseMimeType")
    modalities = _get(config, "response_modalities", "responseModalities")
    if type(modalities) is list and any(str(m).upper() == "AUDIO" for m in modalities):
        request.need("audio", where + "responseModalities")
    thinking = _get(config, "thinking_config", "thinkingConfig")
    if is_map(thinking):
        _thinking_config(request, thinking, where + "thinkingConfig.")


def _thinking_config(request: WireRequest, config: Mapping[str, Any], where: str) -> None:
    """A thinking budget other than 0 (-1 is dynamic) or a thinking level: a reasoning model
    (a budget of 0 turns thinking off)."""
    budget = _get(config, "thinking_budget", "thinkingBudget")
    if budget is not None:
        if type(budget) is not int and type(budget) is not float:
            raise WireError([(f"field `{where}thinkingBudget`", "expected a number of tokens")])
        if budget != 0:
            request.need("reasoning", where + "thinkingBudget")
            return
    if _get(config, "thinking_level", "thinkingLevel") is not None:
        request.need("reasoning", where + "thinkingLevel")


def _content(request: WireRequest, content: Mapping[str, Any], where: str) -> None:
    parts = content.get("parts")
    if parts is None:
        return
    if is_map(parts):
        parts = [parts]
    for j, part in enumerate(items(parts, f"{where}.parts", "parts")):
        _part(request, part, f"{where}.parts[{j}]")


def _part(request: WireRequest, part: Any, where: str) -> None:
    if type(part) is str:
        text(request, part)
        return
    part = mapping(part, where)
    value = part.get("text")
    if type(value) is str:
        text(request, value)
    inline = _get(part, "inline_data", "inlineData")
    if is_map(inline):
        mime = _get(inline, "mime_type", "mimeType")
        data = inline.get("data")
        source = f"{where}.inlineData"
        if type(data) is str and str(mime or "").lower().startswith("image/"):
            image(request, RULE, source, payload=data)
        else:
            media(request, RULE, _mime(mime, source), source)
    file_data = _get(part, "file_data", "fileData")
    if is_map(file_data):
        source = f"{where}.fileData"
        media(request, RULE, _mime(_get(file_data, "mime_type", "mimeType"), source), source)
    for snake, camel in _CALLS:
        call = _get(part, snake, camel)
        if call is not None:
            request.need("tools", f"{where}.{camel}")
            inner = call.get("parts") if is_map(call) else None
            if inner is None:
                structure(request, call)
                continue
            # a multimodal function response: its parts (a screenshot) are read as parts
            structure(request, {key: value for key, value in call.items() if key != "parts"})
            _content(request, call, f"{where}.{camel}")


_CALLS = (("function_call", "functionCall"), ("function_response", "functionResponse"))


def _mime(value: Any, where: str) -> str | None:
    if value is None or type(value) is str:
        return value
    raise WireError([(f"field `{where}.mimeType`", "expected a string")])
