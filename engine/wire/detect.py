"""Which wire format a body is, from its shape (the native request is decided by the
caller, which knows the native fields: `engine.routing.request`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.wire.common import is_map
from engine.wire.record import ANTHROPIC, GEMINI, NATIVE, OPENAI_CHAT, OPENAI_RESPONSES

# top-level fields only Anthropic's Messages API has
ANTHROPIC_FIELDS = frozenset(
    {
        "system",
        "stop_sequences",
        "anthropic_version",
        "anthropic_beta",
        "container",
        "mcp_servers",
        "context_management",
        "output_format",
        "output_config",
    }
)
# content blocks only Anthropic has (OpenAI's parts are text, image_url, input_audio, file)
ANTHROPIC_BLOCKS = frozenset(
    {"image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
     "server_tool_use", "search_result", "container_upload"}
)  # fmt: skip
# Anthropic's fields that OpenAI-compatible gateways take in a Chat Completions body too
# (LiteLLM's `thinking`, vLLM's and OpenRouter's `top_k`): Anthropic only when nothing in
# the body is OpenAI-only (`_openai_only`)
SHARED_FIELDS = frozenset({"thinking", "top_k"})
# what only a Chat Completions body has: top-level fields, message roles, content parts
OPENAI_FIELDS = frozenset(
    {"response_format", "max_completion_tokens", "reasoning_effort", "functions",
     "function_call", "modalities", "audio", "stream_options", "parallel_tool_calls"}
)  # fmt: skip
OPENAI_ROLES = frozenset({"system", "developer", "tool", "function"})
OPENAI_PARTS = frozenset({"image_url", "input_audio", "file"})
# top-level fields of OpenAI's Responses API (a body with `input` or `instructions`)
RESPONSES_FIELDS = frozenset({"input", "instructions", "previous_response_id", "conversation"})


def detect(body: Mapping[str, Any]) -> str:
    """The wire format of `body` by its shape; NATIVE when it has none of theirs."""
    if "contents" in body:
        return GEMINI
    if "messages" in body:
        return ANTHROPIC if _anthropic(body) else OPENAI_CHAT
    if not RESPONSES_FIELDS.isdisjoint(body):
        return OPENAI_RESPONSES
    return NATIVE


def _anthropic(body: Mapping[str, Any]) -> bool:
    if not ANTHROPIC_FIELDS.isdisjoint(body):
        return True
    tools = body.get("tools")
    if type(tools) is list and tools and is_map(tools[0]):
        first = tools[0]
        if "input_schema" in first:
            return True
        kind = first.get("type")
        if kind not in (None, "function") and not {"function", "custom"} & first.keys():
            return True  # a server tool (web_search_…, bash_…): OpenAI's chat tools have none
    choice = body.get("tool_choice")
    if is_map(choice) and choice.get("type") in ("auto", "any", "tool"):
        return True
    messages = body.get("messages")
    if type(messages) is list:
        for message in messages:
            content = message.get("content") if is_map(message) else None
            if type(content) is list:
                for block in content:
                    kind = block.get("type") if is_map(block) else None
                    if type(kind) is str and kind in ANTHROPIC_BLOCKS:
                        return True
    return not SHARED_FIELDS.isdisjoint(body) and not _openai_only(body)


def _openai_only(body: Mapping[str, Any]) -> bool:
    """A sign that only a Chat Completions body has: a field, a `system`/`developer`/`tool`
    message, a tool call, an `image_url`/`input_audio`/`file` part, a `function` tool."""
    if not OPENAI_FIELDS.isdisjoint(body):
        return True
    tools = body.get("tools")
    if type(tools) is list and any(is_map(tool) and "function" in tool for tool in tools):
        return True
    messages = body.get("messages")
    for message in messages if type(messages) is list else ():
        if not is_map(message):
            continue
        role = message.get("role")
        if (type(role) is str and role in OPENAI_ROLES) or "tool_calls" in message:
            return True
        content = message.get("content")
        for part in content if type(content) is list else ():
            kind = part.get("type") if is_map(part) else None
            if type(kind) is str and kind in OPENAI_PARTS:
                return True
    return False
