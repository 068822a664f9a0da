"""Anthropic Messages request bodies, read for routing.

Only the fields routing uses are read (and checked); every other field is ignored."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.wire import images
from engine.wire.common import (
    fail,
    flag,
    image,
    is_map,
    items,
    mapping,
    output_budget,
    string,
    structure,
    text,
    thinking,
)
from engine.wire.record import ANTHROPIC, WireRequest

RULE = images.anthropic_tokens


def read_messages(body: Mapping[str, Any], request: WireRequest) -> None:
    request.format = ANTHROPIC
    request.model = string(body, "model")
    request.stream = flag(body, "stream")
    output_budget(request, body, ("max_tokens",))
    thinking(request, body)
    metadata = body.get("metadata")
    if is_map(metadata):
        user = metadata.get("user_id")
        if type(user) is str and user:
            request.user = user
            request.note("user", user, "metadata.user_id")
    tools = body.get("tools")
    if tools:
        items(tools, "tools", "tools")
        request.need("tools", "tools")
        structure(request, tools)
    for key in ("output_format", "output_config"):
        config = body.get(key)
        fmt = config.get("format", config) if is_map(config) else None
        if is_map(fmt) and fmt.get("type") == "json_schema":
            request.need("json_schema", f"{key}.type" if fmt is config else f"{key}.format.type")
            structure(request, fmt.get("schema"))
    system = body.get("system")
    if type(system) is str:
        text(request, system)
    elif type(system) is list:
        for i, block in enumerate(system):
            _block(request, mapping(block, f"system[{i}]"), f"system[{i}]")
    elif system is not None:
        raise fail("system", "expected a string or a list of text blocks")
    messages = items(body.get("messages"), "messages", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        message = mapping(message, where)
        request.messages += 1
        content = message.get("content")
        if type(content) is str:
            text(request, content)
        elif type(content) is list:
            for j, block in enumerate(content):
                _block(request, mapping(block, f"{where}.content[{j}]"), f"{where}.content[{j}]")
        elif content is not None:
            raise fail(f"{where}.content", "content is a string or a list of content blocks")


def _block(request: WireRequest, block: Mapping[str, Any], where: str) -> None:
    kind = block.get("type")
    if kind == "text":
        text(request, string(block, "text", where + ".") or "")
    elif kind == "image":
        source = block.get("source")
        source = source if is_map(source) else {}
        data = source.get("data")
        if source.get("type") == "base64" and type(data) is str:
            image(request, RULE, where, payload=data)
        else:
            image(request, RULE, where)
    elif kind == "document":
        source = block.get("source")
        source = source if is_map(source) else {}
        if source.get("type") == "text" and type(source.get("data")) is str:
            text(request, source["data"])
        elif source.get("type") == "content":
            for j, inner in enumerate(source.get("content") or ()):
                if is_map(inner):
                    _block(request, inner, f"{where}.source.content[{j}]")
        else:
            request.need("pdf", where)
    elif kind in ("tool_use", "server_tool_use"):
        request.need("tools", f"{where}.type ({kind})")
        structure(request, block.get("input"))
    elif kind == "tool_result":
        request.need("tools", f"{where}.type ({kind})")
        content = block.get("content")
        if type(content) is str:
            text(request, content)
        elif type(content) is list:
            for j, inner in enumerate(content):
                if is_map(inner):
                    _block(request, inner, f"{where}.content[{j}]")
    elif kind == "thinking":
        text(request, string(block, "thinking", where + ".") or "")
    elif kind == "search_result":
        for j, inner in enumerate(block.get("content") or ()):
            if is_map(inner):
                _block(request, inner, f"{where}.content[{j}]")
