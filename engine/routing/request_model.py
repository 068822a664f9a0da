"""The pydantic models of a request (`Request`, `Message`) and the messages of a body they
refuse. Imported on first need only (`engine.routing.request`): a request the fast path
takes (`fast_env`) never loads pydantic."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from engine.routing.request import (
    FIELDS,
    MAX_PRIORITY,
    RequestError,
    Scalar,
    _normal_ip,
    _short,
)
from engine.units import MAX_TOKENS


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    role: str = "user"
    content: str | list[dict[str, Any]] = ""


class Request(BaseModel):
    """A request to route. Unknown fields are an error that names them."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        json_schema_extra={"title": "policyctl request"},
    )

    id: str | None = Field(None, description="request id; random picks are deterministic by id")
    user: str | None = Field(None, description="the end user, for per-user limits")
    ip: str | None = Field(None, description="client IP address (IPv4 or IPv6)")
    model: str | None = Field(None, description="the model the client asked for (a hint)")
    prompt: str | None = Field(None, description="prompt text, used to estimate input tokens")
    messages: list[Message] | None = Field(None, description="chat messages, for the estimate")
    input_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] | None = Field(
        None, description="input tokens; estimated from prompt/messages (4 chars/token) if absent"
    )
    max_tokens: Annotated[int, Field(ge=1, le=MAX_TOKENS)] | None = Field(
        None, description="maximum output tokens"
    )
    cached_tokens: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = Field(
        0,
        description="input tokens expected from the provider's prompt cache (part of the"
        " input; priced at the model's cached-input price)",
    )
    images: Annotated[int, Field(ge=0, le=MAX_TOKENS)] = Field(
        0, description="input images (priced at the model's per-image price)"
    )
    requires_vision: bool = False
    requires_tools: bool = False
    requires_json: bool = Field(False, description="JSON mode (any JSON object)")
    requires_json_schema: bool = Field(
        False, description="structured output: JSON that follows a given schema"
    )
    requires_pdf: bool = Field(False, description="PDF or other document input")
    requires_audio: bool = Field(False, description="audio input or output")
    requires_reasoning: bool = Field(
        False,
        description="a reasoning model: the request sets a reasoning effort, thinking or a"
        " thinking budget, which a model without reasoning refuses",
    )
    stream: bool = False
    max_cost: Annotated[float, Field(ge=0)] | None = Field(
        None, description="hard limit on the estimated cost, USD"
    )
    max_latency_ms: Annotated[float, Field(gt=0)] | None = Field(
        None, description="hard limit on the estimated (p95) latency, milliseconds"
    )
    min_quality: Annotated[float, Field(ge=0, le=1)] | None = Field(
        None,
        description="quality floor: only models whose catalog quality score (0-1) is at"
        " least this are eligible (a model without a score is not)",
    )
    region: str | None = None
    priority: Annotated[int, Field(ge=-MAX_PRIORITY, le=MAX_PRIORITY)] = Field(
        0,
        description="the order of requests waiting for a limit's tokens (`wait up to D`):"
        " higher first, then arrival; also the X-Priority header",
    )
    tags: list[str] = Field(default_factory=list)
    metadata: dict[str, Scalar] = Field(default_factory=dict)

    @field_validator("ip")
    @classmethod
    def _valid_ip(cls, value: str | None) -> str | None:
        if value is None:
            return None
        normal = _normal_ip(value)
        if normal is None:
            raise ValueError(f"`{value}` is not an IPv4 or IPv6 address")
        return normal


if tuple(Request.model_fields) != FIELDS:  # pragma: no cover - one home per fact
    raise AssertionError("engine.routing.request.FIELDS lists Request's fields, in order")


def validated(data: Any) -> Request:
    """The request `data` (a mapping of storable strings) as a `Request`; RequestError
    naming each problem pydantic found."""
    try:
        return Request.model_validate(data)
    except ValidationError as err:
        raise RequestError(_explain(err)) from None


def _field_name(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts)


def _explain(err: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    reported: set[str] = set()
    for e in err.errors(include_url=False):
        loc = tuple(e["loc"])
        if len(loc) >= 3 and loc[0] == "metadata":  # one problem per key, not per type tried
            name = _field_name(loc[:2])
            if name not in reported:
                reported.add(name)
                problems.append(
                    (f"field `{name}`", "metadata values are strings, numbers or booleans")
                )
            continue
        if len(loc) >= 4 and loc[0] == "messages" and loc[2] == "content":
            name = _field_name(loc[:3])
            if name not in reported:
                reported.add(name)
                problems.append((f"field `{name}`", "content is a string or a list of parts"))
            continue
        name = _field_name(loc)
        if e["type"] == "extra_forbidden":
            message = f"unknown field `{_short(name)}`"
            from engine.diagnostics import did_you_mean  # stdlib-only module

            guess = did_you_mean(name, Request.model_fields)
            if guess:
                message += f" (did you mean `{guess}`?)"
            problems.append(("", message))
            continue
        msg = str(e["msg"])
        msg = msg.removeprefix("Value error, ")
        msg = msg[:1].lower() + msg[1:]
        problems.append((f"field `{name}`", msg))
    return problems
