# ruff: noqa: E501  (the tables of SDK calls read best one call per row)
"""Wire formats: bodies built by the OpenAI, Anthropic and Google GenAI SDKs themselves
(captured on 127.0.0.1, tests/_sdk_bodies.py) are read as-is, and what routing needs is
derived from them (docs/requests.md)."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _design import from_design
from _sdk_bodies import anthropic_messages, gemini_generate, openai_chat, openai_responses

from engine import PolicyEngine, RequestError
from engine.routing.request import env_of
from engine.wire import images

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


def png(width: int, height: int) -> bytes:
    return picture(width, height, "PNG")


def picture(width: int, height: int, kind: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(out, format=kind)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{b64(data)}"


PDF = b"%PDF-1.4\n1 0 obj <<>> endobj\ntrailer <<>>\n%%EOF\n"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt "


def derived(env: dict[str, Any]) -> dict[str, Any]:
    """field -> (value, source) of the first derivation of each field."""
    out: dict[str, Any] = {}
    for d in env["wire"].derivations():
        out.setdefault(d.field, (d.value, d.source))
    return out


# ------------------------------------------------------------------ bodies as SDKs send them


def test_sampling_parameters_and_sdk_fields_are_accepted_and_ignored() -> None:
    body = openai_chat(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        temperature=0.2,
        top_p=0.9,
        seed=7,
        n=1,
        store=False,
        stream_options={"include_usage": True},
        stream=True,
        logprobs=False,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        stop=["\n\n"],
        parallel_tool_calls=False,
        service_tier="auto",
        reasoning_effort="low",
    )
    assert {"temperature", "seed", "n", "store", "stream_options"} <= body.keys()
    env = env_of(body)
    assert env["format"] == "openai-chat"
    assert env["stream"] is True
    assert env["model"] == "gpt-4o"
    for flag in ("vision", "tools", "json", "json_schema", "pdf", "audio"):
        assert env["requires_" + flag] is False
    assert env["requires_reasoning"] is True  # reasoning_effort: a reasoning model's parameter


def test_assistant_tool_call_turn_with_null_content() -> None:
    body = openai_chat(
        model="gpt-4o",
        messages=[
            {"role": "user", "content": "weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        ],
    )
    assert body["messages"][1]["content"] is None
    env = env_of(body)
    assert env["requires_tools"] is True
    assert derived(env)["requires_tools"][1] == "messages[1].tool_calls"


@pytest.mark.parametrize(
    ("make", "fmt"),
    [
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]),
         "openai-chat"),
        (lambda: openai_responses(model="gpt-5", input="hi"), "openai-responses"),
        (lambda: openai_responses(model="gpt-5", instructions="be brief", input=[
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]),
         "openai-responses"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=10,
                                    messages=[{"role": "user", "content": "hi"}]),
         "openai-chat"),  # nothing Anthropic-only in it: the same body OpenAI would take
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=10, system="brief",
                                    messages=[{"role": "user", "content": "hi"}]),
         "anthropic"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=10, stop_sequences=["END"],
                                    messages=[{"role": "user", "content": "hi"}]),
         "anthropic"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi").body, "gemini"),
        # `thinking` and `top_k` are Anthropic's, but OpenAI-compatible gateways take them
        # (LiteLLM, vLLM): with an OpenAI-only sign the body is OpenAI's (its image was lost)
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=2048,
                                    thinking={"type": "enabled", "budget_tokens": 1024},
                                    messages=[{"role": "user", "content": "hi"}]),
         "anthropic"),
        (lambda: openai_chat(model="anthropic/claude-sonnet-4-6", messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}],
            extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}}),
         "openai-chat"),
        (lambda: openai_chat(model="llama", messages=[{"role": "system", "content": "brief"},
                                                      {"role": "user", "content": "hi"}],
                             extra_body={"top_k": 40}),
         "openai-chat"),
        (lambda: openai_chat(model="llama", messages=[{"role": "user", "content": "hi"}],
                             tools=[{"type": "function", "function": {"name": "f"}}],
                             extra_body={"top_k": 40}),
         "openai-chat"),
    ],
)  # fmt: skip
def test_format_detected_from_the_shape(make: Any, fmt: str) -> None:
    env = env_of(make())
    assert env["format"] == fmt


def test_an_ambiguous_body_can_be_named() -> None:
    body = anthropic_messages(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert env_of(body)["format"] == "openai-chat"
    assert env_of(body, input_format="anthropic")["format"] == "anthropic"


def test_native_stays_strict() -> None:
    # one native-only field makes the body native, and an unknown field is an error
    with pytest.raises(RequestError) as err:
        env_of({"model": "gpt-4o", "max_cost": 1.0, "temprature": 0.2})
    assert err.value.problems == [("", "unknown field `temprature`")]
    with pytest.raises(RequestError) as err:
        env_of({"requires_vision": True, "max_tokns": 5})
    assert "did you mean `max_tokens`" in str(err.value)
    # and a body with none of them and no wire shape is native too
    with pytest.raises(RequestError):
        env_of({"usr": "bob"})


def test_unknown_format_is_named() -> None:
    with pytest.raises(RequestError) as err:
        env_of({"messages": []}, input_format="openai")
    assert "unknown input format `openai`" in str(err.value)
    assert "openai-chat" in str(err.value)


def test_named_format_that_does_not_fit_says_where() -> None:
    with pytest.raises(RequestError) as err:
        env_of({"prompt": "hi"}, input_format="openai-chat")
    assert err.value.problems == [("field `messages`", "expected a list of messages, got null")]
    with pytest.raises(RequestError) as err:
        env_of({"messages": [{"role": "user", "content": 5}]})
    assert err.value.problems == [
        ("field `messages[0].content`", "content is a string or a list of parts")
    ]
    with pytest.raises(RequestError) as err:
        env_of({"contents": [{"parts": "x"}]})
    assert err.value.problems[0][0] == "field `contents[0].parts`"
    with pytest.raises(RequestError) as err:
        env_of({"model": 5, "messages": []})
    assert err.value.problems == [("field `model`", "expected a string, got a number")]
    with pytest.raises(RequestError) as err:
        env_of({"messages": [], "max_completion_tokens": 0})
    assert err.value.problems[0][0] == "field `max_completion_tokens`"


# ------------------------------------------------------------------ requirements, + and -


def chat_parts(*parts: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    return openai_chat(model="gpt-4o", messages=[{"role": "user", "content": list(parts)}],
                       **kwargs)  # fmt: skip


TEXT = {"type": "text", "text": "what is this?"}


@pytest.mark.parametrize(
    ("make", "requirement", "source"),
    [
        # vision
        (lambda: chat_parts(TEXT, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}),
         "vision", "messages[0].content[1].image_url"),
        (lambda: chat_parts({"type": "image_url", "image_url": {"url": data_url(png(64, 64))}}),
         "vision", "messages[0].content[0].image_url"),
        (lambda: openai_responses(model="gpt-5", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": data_url(png(64, 64)), "detail": "auto"}]}]),
         "vision", "input[0].content[0]"),
        (lambda: openai_responses(model="gpt-5", input=[{"role": "user", "content": [
            {"type": "input_image", "file_id": "file-abc", "detail": "auto"}]}]),
         "vision", "input[0].content[0]"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, messages=[
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": b64(png(64, 64))}}]}]),
         "vision", "messages[0].content[0]"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, messages=[
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "url", "url": "https://x.test/a.png"}}]}]),
         "vision", "messages[0].content[0]"),
        (lambda: gemini_body([gemini_part(png(64, 64), "image/png"), "what is this?"]),
         "vision", "contents[0].parts[0].inlineData"),
        # documents
        (lambda: chat_parts(TEXT, {"type": "file", "file": {
            "file_data": data_url(PDF, "application/pdf"), "filename": "a.pdf"}}),
         "pdf", "messages[0].content[1].file"),
        (lambda: chat_parts(TEXT, {"type": "file", "file": {"file_id": "file-abc"}}),
         "pdf", "messages[0].content[1].file"),
        (lambda: openai_responses(model="gpt-5", input=[{"role": "user", "content": [
            {"type": "input_file", "filename": "a.pdf", "file_data": data_url(PDF, "application/pdf")}]}]),
         "pdf", "input[0].content[0]"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, messages=[
            {"role": "user", "content": [{"type": "document", "source": {
                "type": "base64", "media_type": "application/pdf", "data": b64(PDF)}}]}]),
         "pdf", "messages[0].content[0]"),
        (lambda: gemini_body([gemini_part(PDF, "application/pdf"), "summarise"]),
         "pdf", "contents[0].parts[0].inlineData"),
        # audio
        (lambda: chat_parts({"type": "input_audio", "input_audio": {"data": b64(WAV), "format": "wav"}}),
         "audio", "messages[0].content[0].input_audio"),
        (lambda: gemini_body([gemini_part(WAV, "audio/wav"), "transcribe"]),
         "audio", "contents[0].parts[0].inlineData"),
        # tools
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             tools=[WEATHER_TOOL], tool_choice="auto"),
         "tools", "tools"),
        (lambda: openai_responses(model="gpt-5", input="hi", tools=[{
            "type": "function", "name": "weather", "parameters": {"type": "object"}, "strict": False}]),
         "tools", "tools"),
        (lambda: openai_responses(model="gpt-5", input=[
            {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "21C"}]),
         "tools", "input[0].type (function_call)"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, tools=[{
            "name": "weather", "input_schema": {"type": "object"}}],
            messages=[{"role": "user", "content": "hi"}]),
         "tools", "tools"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "weather", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "21C"}]}]),
         "tools", "messages[1].content[0].type (tool_use)"),
        (lambda: gemini_generate("gemini-2.5-flash", "weather?", gemini_config(tools=[
            {"function_declarations": [{"name": "weather", "description": "w"}]}])).body,
         "tools", "tools"),
        # JSON mode and structured output
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             response_format={"type": "json_object"}),
         "json", "response_format.type"),
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             response_format=SCHEMA_FORMAT),
         "json_schema", "response_format.type"),
        (lambda: openai_responses(model="gpt-5", input="hi", text={"format": {
            "type": "json_schema", "name": "r", "schema": {"type": "object"}}}),
         "json_schema", "text.format.type"),
        (lambda: openai_responses(model="gpt-5", input="hi", text={"format": {"type": "json_object"}}),
         "json", "text.format.type"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            response_mime_type="application/json")).body,
         "json", "generationConfig.responseMimeType"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            response_mime_type="application/json",
            response_schema={"type": "OBJECT", "properties": {"a": {"type": "STRING"}}})).body,
         "json_schema", "generationConfig.responseSchema"),
        # reasoning: any reasoning effort, thinking not disabled, a thinking budget but 0
        (lambda: openai_chat(model="o4-mini", messages=[{"role": "user", "content": "hi"}],
                             reasoning_effort="high"),
         "reasoning", "reasoning_effort"),
        (lambda: openai_chat(model="gpt-5", messages=[{"role": "user", "content": "hi"}],
                             reasoning_effort="minimal"),
         "reasoning", "reasoning_effort"),
        (lambda: openai_chat(model="claude", messages=[  # LiteLLM passes `thinking` on
            {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}}),
         "reasoning", "thinking.type"),
        (lambda: openai_responses(model="gpt-5", input="hi", reasoning={"effort": "high"}),
         "reasoning", "reasoning.effort"),
        (lambda: openai_responses(model="gpt-5", input="hi", reasoning={"summary": "auto"}),
         "reasoning", "reasoning.summary"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=2048, messages=[
            {"role": "user", "content": "hi"}], thinking={"type": "enabled", "budget_tokens": 1024}),
         "reasoning", "thinking.type"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            thinking_config={"thinking_budget": 1024})).body,
         "reasoning", "generationConfig.thinkingConfig.thinkingBudget"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            thinking_config={"thinking_budget": -1})).body,
         "reasoning", "generationConfig.thinkingConfig.thinkingBudget"),
        (lambda: gemini_generate("gemini-3-pro", "hi", gemini_config(
            thinking_config={"thinking_level": "high"})).body,
         "reasoning", "generationConfig.thinkingConfig.thinkingLevel"),
        (lambda: {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],  # snake_case
                  "generation_config": {"thinking_config": {"thinking_budget": 512}}},
         "reasoning", "generationConfig.thinkingConfig.thinkingBudget"),
    ],
)  # fmt: skip
def test_requirement_derived(make: Any, requirement: str, source: str) -> None:
    env = env_of(make())
    assert env["requires_" + requirement] is True
    assert derived(env)["requires_" + requirement] == (True, source)
    others = {"vision", "tools", "json", "json_schema", "pdf", "audio", "reasoning"} - {requirement}
    assert [o for o in others if env["requires_" + o]] == []


@pytest.mark.parametrize(
    "make",
    [
        lambda: chat_parts(TEXT),
        lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                            response_format={"type": "text"}, tools=[]),
        lambda: openai_responses(model="gpt-5", input="hi", text={"format": {"type": "text"}}),
        lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, system="s",
                                   messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
        lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, system="s", messages=[
            {"role": "user", "content": [{"type": "document", "source": {
                "type": "text", "media_type": "text/plain", "data": "plain text"}}]}]),
        lambda: gemini_body(["just text"]),
        lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            response_mime_type="text/plain", max_output_tokens=20)).body,
    ],
)  # fmt: skip
def test_no_requirement_from_plain_bodies(make: Any) -> None:
    env = env_of(make())
    for flag in ("vision", "tools", "json", "json_schema", "pdf", "audio", "reasoning"):
        assert env["requires_" + flag] is False, flag
    assert env["images"] == 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                            reasoning_effort=None),
        lambda: openai_chat(model="claude", messages=[{"role": "user", "content": "hi"}],
                            extra_body={"thinking": {"type": "disabled"}}),
        lambda: openai_responses(model="gpt-4o", input="hi", reasoning=None),
        lambda: openai_responses(model="gpt-4o", input="hi", reasoning={}),
        lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=50, messages=[
            {"role": "user", "content": "hi"}], thinking={"type": "disabled"}),
        lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            thinking_config={"thinking_budget": 0})).body,
        lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(
            thinking_config={"include_thoughts": False})).body,
        lambda: {"contents": [{"parts": [{"text": "hi"}]}],
                 "generation_config": {"thinking_config": {"thinking_budget": 0}}},
    ],
)  # fmt: skip
def test_no_reasoning_requirement(make: Any) -> None:
    """Thinking turned off (a `disabled` type, a budget of 0) or a reasoning setting left
    unset asks for no reasoning model."""
    env = env_of(make())
    assert env["requires_reasoning"] is False
    assert "requires_reasoning" not in derived(env)


def test_a_thinking_budget_that_is_not_a_number_is_an_error() -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}],
            "generationConfig": {"thinkingConfig": {"thinkingBudget": "lots"}}}  # fmt: skip
    with pytest.raises(RequestError) as caught:
        env_of(body)
    assert caught.value.problems == [
        ("field `generationConfig.thinkingConfig.thinkingBudget`", "expected a number of tokens")
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}},
}
SCHEMA_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "r", "schema": {"type": "object"}, "strict": True},
}


def gemini_config(**kwargs: Any) -> Any:
    from google.genai import types

    return types.GenerateContentConfig(**kwargs)


def gemini_part(data: bytes, mime: str) -> Any:
    from google.genai import types

    return types.Part.from_bytes(data=data, mime_type=mime)


def gemini_body(contents: list[Any]) -> dict[str, Any]:
    return gemini_generate("gemini-2.5-flash", contents).body


# ------------------------------------------------------------------ the other derived fields


@pytest.mark.parametrize(
    ("make", "max_tokens", "source"),
    [
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             max_completion_tokens=321), 321, "max_completion_tokens"),
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             max_tokens=123), 123, "max_tokens"),
        (lambda: openai_responses(model="gpt-5", input="hi", max_output_tokens=77), 77,
         "max_output_tokens"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=55, system="s",
                                    messages=[{"role": "user", "content": "hi"}]), 55, "max_tokens"),
        (lambda: gemini_generate("gemini-2.5-flash", "hi", gemini_config(max_output_tokens=44)).body,
         44, "generationConfig.maxOutputTokens"),
    ],
)  # fmt: skip
def test_output_budget(make: Any, max_tokens: int, source: str) -> None:
    env = env_of(make())
    assert env["max_tokens"] == max_tokens
    assert derived(env)["max_tokens"] == (max_tokens, source)


def test_no_output_budget_when_none_is_given() -> None:
    env = env_of(openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]))
    assert env["max_tokens"] is None


@pytest.mark.parametrize(
    ("make", "user", "source"),
    [
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             user="alice"), "alice", "user"),
        (lambda: openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                             safety_identifier="hash-9"), "hash-9", "safety_identifier"),
        (lambda: openai_responses(model="gpt-5", input="hi", safety_identifier="hash-8"),
         "hash-8", "safety_identifier"),
        (lambda: anthropic_messages(model="claude-sonnet-4-6", max_tokens=5, system="s",
                                    metadata={"user_id": "carol"},
                                    messages=[{"role": "user", "content": "hi"}]),
         "carol", "metadata.user_id"),
    ],
)  # fmt: skip
def test_user(make: Any, user: str, source: str) -> None:
    env = env_of(make())
    assert env["user"] == user
    assert derived(env)["user"] == (user, source)


def test_gemini_model_in_the_body_is_read() -> None:
    """A `GenerateContentRequest` may carry the model (`models/…`, a batch's requests): it
    was dropped, and a policy on `request.model` saw none. The option still wins."""
    body = {**gemini_body(["hi"]), "model": "models/gemini-2.5-pro"}
    assert env_of(body)["model"] == "gemini-2.5-pro"
    assert derived(env_of(body))["model"] == ("gemini-2.5-pro", "model")
    assert env_of(body, model="gemini-3.1-pro-preview")["model"] == "gemini-3.1-pro-preview"
    assert env_of({**body, "model": "gemini-2.5-flash"})["model"] == "gemini-2.5-flash"
    with pytest.raises(RequestError) as err:
        env_of({**body, "model": 5})
    assert err.value.problems == [("field `model`", "expected a string, got a number")]


def test_gemini_model_and_stream_come_as_options() -> None:
    captured = gemini_generate("gemini-2.5-flash", "hi")
    assert "model" not in captured.body
    model = captured.path.rsplit("/", 1)[1].split(":")[0]
    env = env_of(captured.body, model=model, stream=True)
    assert (env["model"], env["stream"]) == ("gemini-2.5-flash", True)
    assert derived(env)["model"] == ("gemini-2.5-flash", "option")
    assert env_of(captured.body)["model"] is None


# ------------------------------------------------------------------ image tokens


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("size", [(2048, 1024), (300, 200), (4000, 3000)])
def test_image_size_read_from_the_header(kind: str, size: tuple[int, int]) -> None:
    payload = b64(picture(*size, kind))
    assert images.base64_size(payload) == size


def test_only_the_header_is_decoded() -> None:
    # everything after the first HEADER_BYTES is not base64 at all: it is never decoded
    payload = b64(png(640, 480))[:64] + "!" * 500_000
    assert images.base64_size(payload) == (640, 480)
    assert images.base64_size("not base64 at all") is None


def test_provider_image_rules() -> None:
    # OpenAI: 2048x1024 -> shorter side to 768: 1536x768 -> 3x2 tiles: 85 + 6 * 170
    assert images.openai_tokens((2048, 1024)) == 85 + 6 * 170
    assert images.openai_tokens((2048, 1024), "low") == 85
    assert images.openai_tokens((512, 512)) == 85 + 170
    assert images.openai_tokens(None) == 85 + 4 * 170  # 1024x1024 -> 768x768 -> 2x2
    # Anthropic: long edge to 1568: 1568x784 -> 1568 * 784 / 750 = 1639.1
    assert images.anthropic_tokens((2048, 1024)) == 1640
    assert images.anthropic_tokens((750, 100)) == 100
    # Gemini: 258 within 384x384, else 258 per 768x768 tile
    assert images.gemini_tokens((384, 384)) == 258
    assert images.gemini_tokens((2048, 1024)) == 3 * 2 * 258


def test_image_tokens_per_format() -> None:
    picture_bytes = png(2048, 1024)
    chat = env_of(chat_parts({"type": "image_url", "image_url": {"url": data_url(picture_bytes)}}))
    low = env_of(chat_parts({"type": "image_url", "image_url": {
        "url": data_url(picture_bytes), "detail": "low"}}))  # fmt: skip
    claude = env_of(anthropic_messages(model="claude-sonnet-4-6", max_tokens=5, messages=[
        {"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": b64(picture_bytes)}}]}]))  # fmt: skip
    gemini = env_of(gemini_body([gemini_part(picture_bytes, "image/png")]))
    text_only = env_of(chat_parts())
    assert chat["input_tokens"] - text_only["input_tokens"] == 85 + 6 * 170
    assert low["input_tokens"] - text_only["input_tokens"] == 85
    assert derived(claude)["image_tokens"][0] == 1640
    assert derived(gemini)["image_tokens"][0] == 6 * 258
    assert chat["images"] == claude["images"] == gemini["images"] == 1


def test_an_image_a_tool_returns_is_an_image() -> None:
    """A screenshot a tool returns (a Responses `function_call_output` with content parts, a
    Gemini multimodal `functionResponse`) is an image: vision, its tokens by size. Its base64
    was counted as text (a 100 KB screenshot: about 60,000 tokens) and no vision asked."""
    shot = png(800, 600) + bytes(range(256)) * 400  # a 100 KB payload behind the header
    call = {"type": "function_call", "call_id": "c1", "name": "screenshot", "arguments": "{}"}
    responses = env_of(openai_responses(model="gpt-5.4", input=[
        {"role": "user", "content": "take a screenshot"}, call,
        {"type": "function_call_output", "call_id": "c1", "output": [
            {"type": "input_text", "text": "done"},
            {"type": "input_image", "image_url": data_url(shot)}]}]))  # fmt: skip
    from google.genai import types

    response = types.Part.from_function_response(
        name="screenshot", response={"ok": True},
        parts=[types.FunctionResponsePart.from_bytes(data=shot, mime_type="image/png")],
    )  # fmt: skip
    gemini = env_of(gemini_body([
        types.Content(role="user", parts=[types.Part.from_text(text="take a screenshot")]),
        types.Content(role="model", parts=[types.Part.from_function_call(name="screenshot", args={})]),
        types.Content(role="user", parts=[response])]), model="gemini-3.1-pro-preview")  # fmt: skip
    assert derived(responses)["requires_vision"][1] == "input[2].output[1]"
    assert derived(responses)["image_tokens"][0] == 765
    assert responses["input_tokens"] < 800 and responses["images"] == 1
    where = "contents[2].parts[0].functionResponse.parts[0].inlineData"
    assert derived(gemini)["requires_vision"][1] == where
    assert derived(gemini)["image_tokens"][0] == 2 * 258
    assert gemini["input_tokens"] < 600 and gemini["images"] == 1
    assert responses["requires_tools"] and gemini["requires_tools"]
    # the prompt features read the text parts of the tool's output as its turn's text
    assert ("tool", ("done",), True) in responses["conversation"].turns()
    # a computer-use step's screenshot: it was not read at all (no vision, no tokens)
    computer = env_of(openai_responses(model="computer-use-preview", truncation="auto", input=[
        {"role": "user", "content": "open the settings"},
        {"type": "computer_call", "call_id": "c1", "id": "cu_1", "status": "completed",
         "action": {"type": "click", "button": "left", "x": 10, "y": 20}, "pending_safety_checks": []},
        {"type": "computer_call_output", "call_id": "c1",
         "output": {"type": "computer_screenshot", "image_url": data_url(shot)}}]))  # fmt: skip
    assert derived(computer)["requires_tools"][1] == "input[1].type (computer_call)"
    assert derived(computer)["requires_vision"][1] == "input[2].output"
    assert derived(computer)["image_tokens"][0] == 765


# ------------------------------------------------------------------ routing on derived values


def test_an_image_is_not_sent_to_a_model_without_vision() -> None:
    engine = from_design("route r {\n    prefer openai\n    strategy cost\n}\n", clock=clock)
    image_body = chat_parts(
        TEXT, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    )
    text_body = chat_parts(TEXT)
    assert engine.evaluate(text_body).model == "gpt-3.5-turbo"  # the cheapest, no vision
    decision = engine.evaluate(image_body)
    assert decision.model != "gpt-3.5-turbo"
    catalog = engine.program.catalog
    found = catalog.find(decision.provider, decision.model)
    assert found is not None and "vision" in found.supports
    assert decision.input_format == "openai-chat"
    assert decision.to_dict()["input_format"] == "openai-chat"


@pytest.mark.parametrize("requirement", ["json_schema", "pdf", "audio", "reasoning"])
def test_new_requirements_filter_models(requirement: str) -> None:
    engine = PolicyEngine(clock=clock)  # today's catalog has the capabilities
    native = {"id": "n", f"requires_{requirement}": True, "prompt": "hi"}
    decision = engine.evaluate(native, dry_run=True)
    assert decision.allowed
    supports = engine.program.catalog.find(decision.provider, decision.model).supports
    assert requirement in supports
    lacking = [m for m in engine.program.catalog.models if requirement not in m.supports]
    assert lacking, "some model must lack it, or the test proves nothing"
    explained = engine.evaluate(native, dry_run=True, explain=True)
    drops = [s for s in explained.trace if s["step"] == "drop"]
    assert any(f"does not support {requirement}" in s["because"] for s in drops)


REASONING_ROUTES = """\
route deep when request.requires_reasoning {
    prefer openai/gpt-4o-mini
    prefer openai/gpt-5-mini
    strategy cost
}
route rest {
    prefer openai/gpt-4o-mini
    strategy cost
}
"""


@pytest.mark.parametrize(
    "make",
    [
        lambda: openai_chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                            reasoning_effort="high"),
        lambda: openai_responses(model="gpt-4o-mini", input="hi", reasoning={"effort": "low"}),
        lambda: {"id": "n", "prompt": "hi", "requires_reasoning": True},
    ],
)  # fmt: skip
def test_reasoning_traffic_never_reaches_a_model_without_reasoning(make: Any) -> None:
    """gpt-4o-mini (no `reasoning` in the catalog) refuses `reasoning_effort` at the
    provider: the request drops it, and a policy routes on the requirement."""
    engine = PolicyEngine.from_text(REASONING_ROUTES, clock=lambda: 1_780_000_000.0)
    plain = openai_chat(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert (engine.evaluate(plain).route, engine.evaluate(plain).model) == ("rest", "gpt-4o-mini")
    decision = engine.evaluate(make(), explain=True)
    assert (decision.route, decision.model) == ("deep", "gpt-5-mini")
    drops = [(s["model"], s["because"]) for s in decision.trace if s["step"] == "drop"]
    assert drops == [("gpt-4o-mini", "does not support reasoning")]


def test_requested_model_in_conditions() -> None:
    engine = from_design(
        'route group when request.model == "smart" {\n    prefer claude/claude-3-opus-20240229\n'
        "    strategy cost\n}\nroute rest {\n    prefer gemini\n    strategy cost\n}\n",
        clock=clock,
    )
    smart = openai_chat(model="smart", messages=[{"role": "user", "content": "hi"}])
    other = openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert (engine.evaluate(smart).route, engine.evaluate(smart).model) == (
        "group", "claude-3-opus-20240229")  # fmt: skip
    assert engine.evaluate(other).route == "rest"


def test_request_format_in_conditions() -> None:
    engine = from_design(
        'route claude_shaped when request.format == "anthropic" {\n    prefer claude\n'
        "    strategy cost\n}\n",
        clock=clock,
    )
    body = anthropic_messages(model="x", max_tokens=5, system="s",
                              messages=[{"role": "user", "content": "hi"}])  # fmt: skip
    assert engine.evaluate(body).route == "claude_shaped"
    assert engine.evaluate({"id": "n", "prompt": "hi"}).route != "claude_shaped"


def test_per_user_limits_apply_to_anthropic_traffic() -> None:
    engine = from_design("limit user 1 per 1m burst 1\n", clock=clock)

    def body(user: str) -> dict[str, Any]:
        return anthropic_messages(model="claude", max_tokens=5, system="s",
                                  metadata={"user_id": user},
                                  messages=[{"role": "user", "content": "hi"}])  # fmt: skip

    decisions = [engine.evaluate(body("dave")) for _ in range(3)]  # 1 per minute + burst 1
    assert [d.allowed for d in decisions] == [True, True, False]
    assert "user `dave`" in decisions[-1].reason
    assert engine.evaluate(body("erin")).allowed


def test_request_id_from_option_else_the_body_hash() -> None:
    body = openai_chat(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    first, again = env_of(body), env_of(json.loads(json.dumps(body)))
    assert first["id"] == again["id"] and first["id"].startswith("sha256:")
    other = env_of({**body, "messages": [{"role": "user", "content": "hello"}]})
    assert other["id"] != first["id"]
    assert env_of(body, request_id="req-42")["id"] == "req-42"
    # a native request takes the option when it has no id of its own
    assert env_of({"prompt": "x"}, request_id="req-7")["id"] == "req-7"
    assert env_of({"id": "mine", "prompt": "x"}, request_id="req-7")["id"] == "mine"


def test_explain_shows_each_derived_value_and_its_field() -> None:
    engine = PolicyEngine(clock=clock)
    body = chat_parts(TEXT, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                      user="alice", max_completion_tokens=100)  # fmt: skip
    decision = engine.evaluate(body, explain=True, dry_run=True)
    step = decision.trace[0]
    assert step["step"] == "request" and step["format"] == "openai-chat"
    shown = {(d["field"], d["from"]) for d in step["derived"]}
    assert ("requires_vision", "messages[0].content[1].image_url") in shown
    assert ("user", "user") in shown
    assert ("max_tokens", "max_completion_tokens") in shown
    # a native request's trace has no such step
    native = engine.evaluate({"id": "n", "prompt": "hi"}, explain=True, dry_run=True)
    assert all(s["step"] != "request" for s in native.trace)


def test_prompts_are_not_in_the_decision() -> None:
    secret = "my password is hunter2"
    engine = PolicyEngine(clock=clock)
    body = openai_chat(model="gpt-4o", messages=[{"role": "user", "content": secret}])
    decision = engine.evaluate(body, explain=True, dry_run=True)
    assert "hunter2" not in json.dumps(decision.to_dict())


# ------------------------------------------------------------------ the CLI, for real


def test_cli_reads_a_wire_body_and_explains(tmp_path: Path) -> None:
    body = anthropic_messages(model="claude-sonnet-4-6", max_tokens=200, system="be brief",
                              metadata={"user_id": "u-1"}, messages=[{"role": "user", "content": [
                                  {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                               "data": b64(png(800, 600))}},
                                  {"type": "text", "text": "what is this?"}]}])  # fmt: skip
    path = tmp_path / "anthropic.json"
    path.write_text(json.dumps(body))
    out = cli("eval", "--format", "table", "--explain", "--dry-run", str(path))
    assert out.returncode == 0, out.stderr
    assert "format          anthropic" in out.stdout
    assert "derived         requires_vision = yes ← messages[0].content[0]" in out.stdout
    assert "derived         image_tokens = 640 ← messages[0].content[0] (800×600)" in out.stdout
    assert "derived         user = u-1 ← metadata.user_id" in out.stdout
    gem = tmp_path / "gemini.json"
    gem.write_text(json.dumps(gemini_body(["hi"])))
    out = cli("eval", "--dry-run", "--input", "gemini", "--model", "gemini-2.5-flash",
              "--stream", "--request-id", "g-1", str(gem))  # fmt: skip
    assert out.returncode == 0, out.stderr
    decision = json.loads(out.stdout)
    assert (decision["request_id"], decision["input_format"]) == ("g-1", "gemini")
    out = cli("eval", "--input", "openai", str(gem))
    assert out.returncode == 2 and "invalid choice: 'openai'" in out.stderr


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POLICYCTL_NOW": "2026-12-01T00:00:00Z"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args, "--state", "memory://"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip


# ------------------------------------------------------------------ the HTTP service, for real


def test_http_service_reads_wire_bodies(tmp_path: Path) -> None:
    from test_service import serving

    chat = chat_parts(TEXT, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}})
    gemini = gemini_body(["hi"])
    with serving(tmp_path) as server, server.client() as client:
        answer = client.post("/v1/eval?dry_run=true", json=chat, headers={"X-Request-Id": "h-1"})
        assert answer.status_code == 200, answer.text
        decision = answer.json()
        assert (decision["request_id"], decision["input_format"]) == ("h-1", "openai-chat")
        catalog = PolicyEngine(server.policy_dir, state="memory://").program.catalog
        assert "vision" in catalog.find(decision["provider"], decision["model"]).supports
        answer = client.post(
            "/v1/eval?dry_run=true&model=gemini-1.5-flash-latest&stream=true&explain=true",
            json=gemini,
        )
        assert answer.status_code == 200, answer.text
        step = answer.json()["trace"][0]
        assert step["format"] == "gemini"
        assert {"field": "model", "value": "gemini-1.5-flash-latest", "from": "option"} in step[
            "derived"
        ]
        # the format named explicitly, by query or header; an unknown one is a 422
        native = client.post("/v1/eval?dry_run=true&format=native", json=chat)
        assert native.status_code == 200 and "input_format" not in native.json()
        named = client.post(
            "/v1/eval?dry_run=true", json=chat, headers={"X-Input-Format": "openai-chat"}
        )
        assert named.status_code == 200
        bad = client.post("/v1/eval?format=openai", json=chat)
        assert bad.status_code == 422 and "unknown input format" in bad.text
        broken = client.post("/v1/eval", json={"contents": [{"parts": 5}]})
        assert broken.status_code == 422
        assert broken.json()["detail"][0]["field"] == "contents[0].parts"


def test_lone_surrogates_in_read_text_are_refused_and_ignored_fields_are_not_read() -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi \ud800"}]}
    with pytest.raises(RequestError) as err:
        env_of(body)
    assert err.value.problems[0][0] == "field `messages[0].content`"
    ignored = {**body, "messages": [{"role": "user", "content": "hi"}], "stop": ["\ud800"]}
    assert env_of(ignored)["format"] == "openai-chat"
