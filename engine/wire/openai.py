"""OpenAI Chat Completions and Responses request bodies, read for routing.

Only the fields routing uses are read (and checked); every other field is ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.wire import images
from engine.wire.common import (
    data_url,
    fail,
    flag,
    image,
    is_map,
    items,
    mapping,
    media,
    output_budget,
    string,
    structure,
    text,
    thinking,
)
from engine.wire.record import OPENAI_CHAT, OPENAI_RESPONSES, WireRequest

RULE = images.openai_tokens


def _common(request: WireRequest, body: Mapping[str, Any]) -> None:
    """model, user, stream, metadata, tools: the same in both APIs."""
    request.model = string(body, "model")
    for key in ("user", "safety_identifier"):
        user = string(body, key)
        if user:
            request.user = user
            request.note("user", user, key)
            break
    metadata = body.get("metadata")
    if metadata and is_map(metadata):
        for key, value in metadata.items():
            if type(key) is str and type(value) in (str, int, float, bool):
                request.metadata[key] = value
        user = metadata.get("user_id")
        if request.user is None and type(user) is str and user:
            request.user = user
            request.note("user", user, "metadata.user_id")
    request.stream = flag(body, "stream")
    for key in ("tools", "functions"):
        tools = body.get(key)
        if tools:
            items(tools, key, "tools")
            request.need("tools", key)
            structure(request, tools)
    modalities = body.get("modalities")
    if (type(modalities) is list and "audio" in modalities) or body.get("audio"):
        request.need("audio", "modalities" if body.get("modalities") else "audio")


# ------------------------------------------------------------------ Chat Completions


def read_chat(body: Mapping[str, Any], request: WireRequest) -> None:
    request.format = OPENAI_CHAT
    _common(request, body)
    output_budget(request, body, ("max_completion_tokens", "max_tokens"))
    if body.get("reasoning_effort") is not None:  # any effort: only reasoning models take it
        request.need("reasoning", "reasoning_effort")
    thinking(request, body)
    response_format = body.get("response_format")
    if is_map(response_format):
        kind = response_format.get("type")
        if kind == "json_object":
            request.need("json", "response_format.type")
        elif kind == "json_schema":
            request.need("json_schema", "response_format.type")
            structure(request, response_format.get("json_schema"))
    messages = items(body.get("messages"), "messages", "messages")
    request.messages += len(messages)
    for i, message in enumerate(messages):
        if type(message) is not dict:
            message = mapping(message, f"messages[{i}]")
        content = message.get("content")
        if type(content) is str:
            text(request, content)
        elif type(content) is list:
            for j, part in enumerate(content):
                _chat_part(request, part, f"messages[{i}].content[{j}]")
        elif content is not None:
            raise fail(f"messages[{i}].content", "content is a string or a list of parts")
        role = message.get("role")
        if role is not None and type(role) is not str:
            role = string(message, "role", f"messages[{i}].")  # raises: not a string
        if role == "tool" or role == "function":
            request.need("tools", f"messages[{i}].role ({role})")
        if "tool_calls" in message or "function_call" in message:
            calls = message.get("tool_calls")
            if calls:
                request.need("tools", f"messages[{i}].tool_calls")
                structure(request, calls)
            if message.get("function_call"):
                request.need("tools", f"messages[{i}].function_call")
                structure(request, message["function_call"])


def _chat_part(request: WireRequest, part: Any, where: str) -> None:
    part = mapping(part, where)
    kind = part.get("type")
    if kind == "text":
        text(request, string(part, "text", where + ".") or "")
    elif kind == "image_url":
        ref = part.get("image_url")
        url, detail = (ref, None) if type(ref) is str else _url_detail(ref, where)
        _image_url(request, url, detail, f"{where}.image_url")
    elif kind == "input_audio":
        request.need("audio", f"{where}.input_audio")
    elif kind == "file":
        ref = part.get("file")
        ref = ref if is_map(ref) else {}
        _file(request, ref.get("file_data"), ref.get("filename"), f"{where}.file")
    elif kind == "refusal":
        text(request, string(part, "refusal", where + ".") or "")


def _url_detail(ref: Any, where: str) -> tuple[str | None, str | None]:
    ref = mapping(ref, f"{where}.image_url")
    return string(ref, "url", f"{where}.image_url."), ref.get("detail")


def _image_url(request: WireRequest, url: str | None, detail: Any, source: str) -> None:
    if detail == "low":
        image(request, RULE, source, tokens=RULE(None, "low"))
        return
    _, start = data_url(url or "")
    if start:
        image(request, RULE, source, payload=url, start=start)
    else:
        image(request, RULE, source)


def _file(request: WireRequest, file_data: Any, filename: Any, source: str) -> None:
    """A file part: a PDF unless its data URL or name says it is an image, audio or video."""
    mime, start = None, 0
    if type(file_data) is str:
        mime, start = data_url(file_data)
    if mime is None and type(filename) is str:
        mime = _mime_of_name(filename)
    if mime is not None and not mime.startswith("application/pdf"):
        if mime.startswith("image/") and type(file_data) is str:
            media(request, RULE, mime, source, payload=file_data, start=start)
        else:
            media(request, RULE, mime, source)
        if mime.startswith(("image/", "audio/", "video/")):
            return
    request.need("pdf", source)


_EXTENSIONS = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "mp4": "video/mp4",
    "pdf": "application/pdf",
}


def _mime_of_name(name: str) -> str | None:
    return _EXTENSIONS.get(name.rsplit(".", 1)[-1].lower()) if "." in name else None


# ------------------------------------------------------------------ Responses


def read_responses(body: Mapping[str, Any], request: WireRequest) -> None:
    request.format = OPENAI_RESPONSES
    _common(request, body)
    output_budget(request, body, ("max_output_tokens",))
    reasoning = body.get("reasoning")
    if is_map(reasoning):  # only reasoning models take it: any effort or summary
        for key in ("effort", "summary", "generate_summary"):
            if reasoning.get(key) is not None:
                request.need("reasoning", "reasoning." + key)
                break
    thinking(request, body)
    text_config = body.get("text")
    if is_map(text_config):
        fmt = text_config.get("format")
        kind = fmt.get("type") if is_map(fmt) else None
        if kind == "json_object":
            request.need("json", "text.format.type")
        elif kind == "json_schema":
            request.need("json_schema", "text.format.type")
            structure(request, fmt.get("schema"))
    instructions = body.get("instructions")
    if type(instructions) is str:
        request.messages += 1
        text(request, instructions)
    given = body.get("input")
    if type(given) is str:
        request.messages += 1
        text(request, given)
        return
    if given is None:
        return
    for i, item in enumerate(items(given, "input", "input items")):
        _responses_item(request, mapping(item, f"input[{i}]"), f"input[{i}]")


def _responses_item(request: WireRequest, item: Mapping[str, Any], where: str) -> None:
    kind = item.get("type")
    if kind in (None, "message") and "role" in item:
        request.messages += 1
        content = item.get("content")
        if type(content) is str:
            text(request, content)
        elif type(content) is list:
            for j, part in enumerate(content):
                at = f"{where}.content[{j}]"
                _responses_part(request, mapping(part, at), at)
        elif content is not None:
            raise fail(f"{where}.content", "content is a string or a list of parts")
    elif kind in ("function_call", "custom_tool_call"):
        request.need("tools", f"{where}.type ({kind})")
        structure(request, item.get("arguments") or item.get("input"))
    elif kind in ("function_call_output", "custom_tool_call_output"):
        request.need("tools", f"{where}.type ({kind})")
        output = item.get("output")
        if type(output) is list:  # content parts: a screenshot is an image, not base64 text
            for j, part in enumerate(output):
                at = f"{where}.output[{j}]"
                _responses_part(request, mapping(part, at), at)
        else:
            structure(request, output)
    elif kind == "computer_call":
        request.need("tools", f"{where}.type ({kind})")
        structure(request, item.get("action"))
    elif kind == "computer_call_output":  # the screenshot of a computer-use step
        request.need("tools", f"{where}.type ({kind})")
        shot = item.get("output")
        if is_map(shot) and shot.get("type") == "computer_screenshot":
            at = f"{where}.output"
            _image_url(request, string(shot, "image_url", at + "."), shot.get("detail"), at)
    elif kind == "reasoning":
        for part in item.get("summary") or ():
            if is_map(part) and type(part.get("text")) is str:
                text(request, part["text"])


def _responses_part(request: WireRequest, part: Mapping[str, Any], where: str) -> None:
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text"):
        text(request, string(part, "text", where + ".") or "")
    elif kind == "input_image":
        _image_url(request, string(part, "image_url", where + "."), part.get("detail"), where)
    elif kind == "input_file":
        _file(request, part.get("file_data"), part.get("filename"), where)
    elif kind == "input_audio":
        request.need("audio", where)
    elif kind == "refusal":
        text(request, string(part, "refusal", where + ".") or "")
