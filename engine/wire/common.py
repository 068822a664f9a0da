"""What every wire reader shares: reading a scalar field with a clear error, counting text,
and pricing an image given as a data URL, base64 payload or reference."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from engine.units import MAX_TOKENS
from engine.wire import images
from engine.wire.record import WireError, WireRequest

ImageRule = Callable[[tuple[int, int] | None], int]


def fail(field: str, message: str) -> WireError:
    return WireError([(f"field `{field}`", message)])


def text(request: WireRequest, value: str) -> None:
    """Keep a piece of text the model reads (estimated with the rest when reading ends)."""
    if value:
        request.texts.append(value)


def structure(request: WireRequest, value: Any) -> None:
    """Count a JSON structure the model reads (tool definitions, call arguments)."""
    if value:
        text(request, value if isinstance(value, str) else _compact(value))


def _compact(value: Any) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return str(value)


def string(body: Mapping[str, Any], key: str, where: str = "") -> str | None:
    value = body.get(key)
    if value is None or type(value) is str:
        return value
    raise fail(where + key, f"expected a string, got {_kind(value)}")


def flag(body: Mapping[str, Any], key: str, where: str = "") -> bool:
    value = body.get(key)
    if value is None:
        return False
    if type(value) is bool:
        return value
    raise fail(where + key, f"expected true or false, got {_kind(value)}")


def count(body: Mapping[str, Any], key: str, where: str = "") -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if type(value) is not int or not 1 <= value <= MAX_TOKENS:
        raise fail(where + key, f"expected a whole number from 1 to {MAX_TOKENS:,}")
    return value


def items(value: Any, where: str, what: str) -> list[Any]:
    if type(value) is list:
        return value
    raise fail(where, f"expected a list of {what}, got {_kind(value)}")


def is_map(value: Any) -> bool:
    """A JSON object (a dict, the common case, checked first: the ABC check is slow)."""
    return type(value) is dict or isinstance(value, Mapping)


def mapping(value: Any, where: str) -> Mapping[str, Any]:
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise fail(where, f"expected an object, got {_kind(value)}")


def output_budget(request: WireRequest, body: Mapping[str, Any], keys: tuple[str, ...], where=""):
    """The output budget from the first of `keys` the body sets."""
    for key in keys:
        value = count(body, key, where)
        if value is not None:
            request.max_tokens = value
            request.note("max_tokens", value, where + key)
            return


def thinking(request: WireRequest, body: Mapping[str, Any]) -> None:
    """Anthropic's `thinking` (also in an OpenAI-compatible body: LiteLLM passes it on): a
    reasoning model unless its `type` is `disabled` (`enabled` with a budget, `adaptive`)."""
    config = body.get("thinking")
    if is_map(config) and config.get("type", "enabled") != "disabled":
        request.need("reasoning", "thinking.type")


def image(
    request: WireRequest,
    rule: ImageRule,
    source: str,
    *,
    payload: str | None = None,
    start: int = 0,
    tokens: int | None = None,
) -> None:
    """An input image: vision, one more image, its tokens (from the size read from a base64
    `payload[start:]` when given, else the rule's default size, unless `tokens` is given)."""
    request.need("vision", source)
    request.images += 1
    if tokens is None:
        size = images.base64_size(payload, start) if payload else None
        tokens = rule(size)
        shown = f"{size[0]}×{size[1]}" if size else "size unknown, 1024×1024 assumed"
    else:
        shown = "detail: low"
    request.image_tokens += tokens
    request.note("image_tokens", tokens, f"{source} ({shown})")
    if payload:
        request.digest.append(f"img:{len(payload)}:{payload[start : start + 48]}:{payload[-48:]}")
    else:
        request.digest.append("img:ref")


def data_url(url: str) -> tuple[str | None, int]:
    """(MIME type, where the base64 payload starts) of a `data:` URL, else (None, 0)."""
    if not url.startswith("data:"):
        return None, 0
    comma = url.find(",", 5, 256)
    if comma < 0:
        return None, 0
    header = url[5:comma]
    mime = header.split(";", 1)[0].strip().lower() or None
    return mime, comma + 1 if header.endswith(";base64") else 0


def media(request: WireRequest, rule: ImageRule, mime: str | None, source: str, **image_args):
    """A part given by MIME type: images need vision, PDFs `pdf`, audio `audio`, video
    vision (and audio). Other types are read as text by the model and add no requirement."""
    kind = (mime or "").lower()
    if kind.startswith("image/"):
        image(request, rule, source, **image_args)
    elif kind == "application/pdf":
        request.need("pdf", source)
    elif kind.startswith("audio/"):
        request.need("audio", source)
    elif kind.startswith("video/"):
        request.need("vision", source)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__
