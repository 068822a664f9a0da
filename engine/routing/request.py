"""Requests at the edge: pydantic validation once, then a plain dict for the evaluator.

The pydantic models (`Request`, `Message`) live in `engine.routing.request_model`, imported
the first time a request needs them (a body the fast path cannot take, a `Request` asked
for by name): `policyctl eval` on plain requests never imports pydantic.

`to_env` returns the evaluation environment: every key of `schema.REQUEST_FIELDS` plus
`metadata` (a dict) and `conversation` (the body, read for prompt features only when a
policy reads them: `engine.wire.features`), values normalised to the units the language
uses (milliseconds for durations, USD for money), and `input_tokens` estimated when the
request does not say.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import math
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from engine import wire
from engine.errors import PolicyctlError
from engine.units import MAX_TOKENS
from engine.wire import NATIVE
from engine.wire.features import Conversation

if TYPE_CHECKING:
    from engine.routing.request_model import Request

Scalar = str | int | float | bool
MAX_PRIORITY = 1000  # a request's `priority` is a whole number in -1000..1000 (0 by default)


class RequestError(PolicyctlError, ValueError):
    """A request that cannot be evaluated; `.problems` lists (field, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{f}: {m}" if f else m for f, m in problems))


def _short(name: str, limit: int = 80) -> str:
    """A field name a client made up, cut for a message (it may be 100,000 characters)."""
    return name if len(name) <= limit else f"{name[:limit]}… ({len(name):,} characters)"


def __getattr__(name: str) -> Any:
    """`Request` and `Message`, from `engine.routing.request_model` on first use."""
    if name in ("Request", "Message"):
        from engine.routing import request_model

        return getattr(request_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_model(data: Any) -> bool:
    """`data` is a `Request` (there is none before its module is imported)."""
    models = sys.modules.get("engine.routing.request_model")
    return models is not None and isinstance(data, models.Request)


def validate(data: Any) -> Request:
    if _is_model(data):
        return data  # type: ignore[no-any-return]
    if not isinstance(data, Mapping):
        raise RequestError([("", f"a request is a JSON object, not {_json_kind(data)}")])
    bad_strings = unstorable(data)
    if bad_strings:
        raise RequestError([(f"field `{path}`", message) for path, message in bad_strings])
    from engine.routing.request_model import validated

    return validated(data)


_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(text: str) -> bool:
    """False for a string with a lone surrogate (`"\\ud800"` is legal JSON, and what Python
    reads undecodable bytes as): it has no UTF-8 form, so no file, log or store can keep it."""
    return text.isascii() or _SURROGATE.search(text) is None


def shown(text: str) -> str:
    """A string for a message, its lone surrogates written as `\\udXXX`."""
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def unstorable(data: Any) -> list[tuple[str, str]]:
    """(field path, message) for each string, key or value at any depth, with a lone
    surrogate. The one check at the edge: requests here, every HTTP body in the service."""
    problems: list[tuple[str, str]] = []
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:  # iterative: an embedding app's dict may be nested deeper than the stack
        path, value = stack.pop()
        if isinstance(value, str):
            found = None if value.isascii() else _SURROGATE.search(value)
            if found is not None:
                where = f"character {found.start() + 1}"
                problems.append((path, _SURROGATE_MESSAGE.format(shown(found.group()), where)))
        elif isinstance(value, Mapping):
            for key, item in value.items():
                name = f"{path}.{shown(str(key))}" if path else shown(str(key))
                if isinstance(key, str) and not storable(key):
                    problems.append((name, _SURROGATE_KEY_MESSAGE))
                else:
                    stack.append((name, item))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
    return sorted(problems)


_SURROGATE_KEY_MESSAGE = (
    "a field name with a lone surrogate cannot be stored (it is not a character: it has no"
    " UTF-8 form)"
)
_SURROGATE_MESSAGE = (
    "a lone surrogate `{}` at {} cannot be stored (it is not a character: it has no UTF-8 form)"
)


def json_limit(err: ValueError | RecursionError) -> str:
    """What a JSON parser limit (not a syntax error) means: nesting past the stack, or an
    integer past Python's 4,300 digits. For the CLI's and the service's messages."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    if "digits" in str(err):
        return "a number has too many digits (the limit is 4,300)"
    return str(err)


def _json_kind(data: Any) -> str:
    if isinstance(data, list):
        return "an array"
    if isinstance(data, str):
        return "a string"
    if isinstance(data, bool):
        return "a boolean"
    if isinstance(data, int | float):
        return "a number"
    if data is None:
        return "null"
    return type(data).__name__


def estimate_tokens(request: Request) -> int:
    if request.input_tokens is not None:
        return request.input_tokens
    chars = 0
    if request.prompt:
        chars += len(request.prompt)
    extra = 0
    for message in request.messages or ():
        extra += 4  # role and separators
        content = message.content
        if isinstance(content, str):
            chars += len(content)
        else:
            for part in content:
                text = part.get("text")
                if isinstance(text, str):
                    chars += len(text)
    return math.ceil(chars / 4) + extra


def request_key(request: Request) -> str:
    """The id, or a content hash when there is none (so random picks stay reproducible)."""
    if request.id is not None:
        return request.id
    canonical = json.dumps(request.model_dump(mode="json"), sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


_STR_FIELDS = ("id", "user", "model", "prompt", "region")
_BOOL_FIELDS = (
    "requires_vision",
    "requires_tools",
    "requires_json",
    "requires_json_schema",
    "requires_pdf",
    "requires_audio",
    "requires_reasoning",
    "stream",
)
# `Request`'s fields, in its order (`request_model` checks it on import)
FIELDS = ("id", "user", "ip", "model", "prompt", "messages", "input_tokens", "max_tokens",
          "cached_tokens", "images", "requires_vision", "requires_tools", "requires_json",
          "requires_json_schema", "requires_pdf", "requires_audio", "requires_reasoning",
          "stream", "max_cost", "max_latency_ms", "min_quality", "region", "priority", "tags",
          "metadata")  # fmt: skip
_FIELDS = frozenset(FIELDS)


# a dotted quad already canonical: four ASCII decimal octets 0-255, no leading zeros
_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_CANONICAL_QUAD = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}").fullmatch


def _normal_ip(value: str) -> str | None:
    """The address in its canonical text, None when it is not one. A dotted quad already
    canonical (four ASCII decimal octets 0-255, no leading zeros) is returned as it is,
    without `ipaddress`: distinct client IPs would otherwise miss the cache every time."""
    if _CANONICAL_QUAD(value) is not None:
        return value
    return _parsed_ip(value)


@functools.lru_cache(maxsize=8192)
def _parsed_ip(value: str) -> str | None:
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _number(value: Any) -> bool:
    return (type(value) is int or type(value) is float) and value == value  # not NaN


def fast_env(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The evaluation environment of a plain request dict without pydantic, or None when the
    request needs the full validator (anything unusual, and every invalid request).

    For every input it accepts it returns exactly `to_env(validate(data))`; a property test
    holds it to that. It exists because pydantic costs more than the rest of a decision.
    """
    if type(data) is not dict or not _FIELDS.issuperset(data):
        return None
    if _RARE_FIELDS.isdisjoint(data):
        return _common_env(data)
    get = data.get
    for name in _STR_FIELDS:
        value = get(name)
        if value is not None and (
            type(value) is not str or (not value.isascii() and _SURROGATE.search(value))
        ):
            return None
    for name in _BOOL_FIELDS:
        value = get(name, False)
        if type(value) is not bool:
            return None
    ip = get("ip")
    if ip is not None:
        if type(ip) is not str:
            return None
        ip = _normal_ip(ip)
        if ip is None:
            return None
    input_tokens = get("input_tokens")
    if input_tokens is not None and (
        type(input_tokens) is not int or not 0 <= input_tokens <= MAX_TOKENS
    ):
        return None
    max_tokens = get("max_tokens")
    if max_tokens is not None and (
        type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS
    ):
        return None
    max_cost = get("max_cost")
    if max_cost is not None and (not _number(max_cost) or not max_cost >= 0):
        return None
    max_latency = get("max_latency_ms")
    if max_latency is not None and (not _number(max_latency) or not max_latency > 0):
        return None
    priority = get("priority", 0)
    if type(priority) is not int or not -MAX_PRIORITY <= priority <= MAX_PRIORITY:
        return None
    min_quality = get("min_quality")
    if min_quality is not None and (not _number(min_quality) or not 0 <= min_quality <= 1):
        return None
    tags = get("tags", ())
    if tags:
        if type(tags) is not list:
            return None
        for tag in tags:
            if type(tag) is not str or (not tag.isascii() and _SURROGATE.search(tag)):
                return None
    if type(tags) is not list and tags != ():
        return None
    metadata = get("metadata", _EMPTY)
    if type(metadata) is not dict:
        return None
    for key, value in metadata.items():
        if type(key) is not str or type(value) not in (str, int, float, bool):
            return None
        if not key.isascii() and _SURROGATE.search(key):
            return None
        if type(value) is str and not value.isascii() and _SURROGATE.search(value):
            return None
    if get("cached_tokens") is not None or get("images") is not None:
        return None  # rare: the full validator checks them
    prompt = get("prompt")
    request_id = get("id")
    if request_id is None:
        return None  # the content-hash key needs the canonical dump
    chars = len(prompt) if prompt else 0
    per_message = 0
    messages = get("messages")
    if messages is not None:
        counted = _messages_chars(messages)
        if counted is None:
            return None
        chars += counted
        per_message = 4 * len(messages)  # estimate_tokens: role and separators
    if input_tokens is None:
        input_tokens = math.ceil(chars / 4) + per_message
    return {
        "id": request_id,
        "key": request_id,
        "user": get("user"),
        "ip": ip,
        "model": get("model"),
        "prompt": prompt,
        "input_tokens": float(input_tokens),
        "max_tokens": None if max_tokens is None else float(max_tokens),
        "cached_tokens": 0.0,  # (none given: the check above)
        "images": 0.0,
        "requires_vision": get("requires_vision", False),
        "requires_tools": get("requires_tools", False),
        "requires_json": get("requires_json", False),
        "requires_json_schema": get("requires_json_schema", False),
        "requires_pdf": get("requires_pdf", False),
        "requires_audio": get("requires_audio", False),
        "requires_reasoning": get("requires_reasoning", False),
        "stream": get("stream", False),
        "max_cost": None if max_cost is None else float(max_cost),
        "max_latency": None if max_latency is None else float(max_latency),
        "max_latency_ms": None if max_latency is None else float(max_latency),
        "min_quality": None if min_quality is None else float(min_quality),
        "region": get("region"),
        "priority": float(priority),
        "tags": list(tags),
        "metadata": dict(metadata),
        "format": NATIVE,
        "conversation": Conversation(NATIVE, data),  # read only when a policy asks
    }


_EMPTY: dict[str, Any] = {}
_MESSAGE_KEYS = frozenset({"role", "content"})


def _messages_chars(messages: Any) -> int | None:
    """The characters of `messages`' contents when every message is a dict of a string
    `role` and `content` and nothing else (no lone surrogate); None otherwise (pydantic then
    validates the request)."""
    if type(messages) is not list:
        return None
    chars = 0
    for message in messages:
        if type(message) is not dict or not _MESSAGE_KEYS.issuperset(message):
            return None
        role = message.get("role", "user")
        content = message.get("content", "")
        if type(role) is not str or type(content) is not str:
            return None
        if not (role.isascii() and content.isascii()) and (
            _SURROGATE.search(role) or _SURROGATE.search(content)
        ):
            return None
        chars += len(content)
    return chars


# the fields most requests leave out: a request with none of them takes `_common_env`
_RARE_FIELDS = _FIELDS - {"id", "user", "ip", "model", "prompt", "max_tokens", "messages"}


def _common_env(data: dict[str, Any]) -> dict[str, Any] | None:
    """`fast_env` of a request with none of `_RARE_FIELDS`: the same checks on the fields
    it can have, every other field at its default."""
    get = data.get
    request_id = get("id")
    if type(request_id) is not str:
        return None  # (None: the content-hash key needs the canonical dump)
    user = get("user")
    model = get("model")
    prompt = get("prompt")
    for value in (request_id, user, model, prompt):
        if value is not None and (
            type(value) is not str or (not value.isascii() and _SURROGATE.search(value))
        ):
            return None
    ip = get("ip")
    if ip is not None:
        if type(ip) is not str:
            return None
        ip = _normal_ip(ip)
        if ip is None:
            return None
    max_tokens = get("max_tokens")
    if max_tokens is not None and (
        type(max_tokens) is not int or not 1 <= max_tokens <= MAX_TOKENS
    ):
        return None
    chars = len(prompt) if prompt else 0
    per_message = 0
    messages = get("messages")
    if messages is not None:
        counted = _messages_chars(messages)
        if counted is None:
            return None
        chars += counted
        per_message = 4 * len(messages)  # estimate_tokens: role and separators
    return {
        "id": request_id,
        "key": request_id,
        "user": user,
        "ip": ip,
        "model": model,
        "prompt": prompt,
        "input_tokens": float(math.ceil(chars / 4) + per_message),
        "max_tokens": None if max_tokens is None else float(max_tokens),
        "cached_tokens": 0.0,
        "images": 0.0,
        "requires_vision": False,
        "requires_tools": False,
        "requires_json": False,
        "requires_json_schema": False,
        "requires_pdf": False,
        "requires_audio": False,
        "requires_reasoning": False,
        "stream": False,
        "max_cost": None,
        "max_latency": None,
        "max_latency_ms": None,
        "min_quality": None,
        "region": None,
        "priority": 0.0,
        "tags": [],
        "metadata": {},
        "format": NATIVE,
        "conversation": Conversation(NATIVE, data),  # read only when a policy asks
    }


def env_of(
    data: Mapping[str, Any] | Request,
    *,
    input_format: str | None = None,
    request_id: str | None = None,
    model: str | None = None,
    stream: bool | None = None,
) -> dict[str, Any]:
    """Validate a request, native or wire, and return its evaluation environment (raises
    RequestError). `input_format` overrides detection (`format_of`); `request_id`, `model`
    and `stream` are what a wire format keeps outside its body (for a native request,
    they are its `id`, `model` and `stream` when it has none)."""
    if input_format is None and type(data) is dict:
        fmt = format_of(data)
    elif _is_model(data):
        fmt = NATIVE
    else:
        fmt = _chosen_format(data, input_format)
    if fmt != NATIVE:
        return _wire_env(data, fmt, request_id, model, stream)
    if (request_id, model, stream) != (None, None, None) and isinstance(data, Mapping):
        given = {"id": request_id, "model": model, "stream": stream}
        missing = {k: v for k, v in given.items() if v is not None and data.get(k) is None}
        if missing:  # the options fill what the native body leaves out
            data = {**data, **missing}
    if type(data) is dict:
        env = fast_env(data)
        if env is not None:
            return env
    return to_env(validate(data))


# the fields a native request shares with the wire formats; any other native field in a
# body makes it native (strict: an unknown field is an error)
SHARED_FIELDS = frozenset({"model", "messages", "user", "max_tokens", "stream", "metadata"})
NATIVE_ONLY = _FIELDS - SHARED_FIELDS


def format_of(data: Mapping[str, Any]) -> str:
    """The format of a body: native when it carries a native-only field (or a string
    `prompt`), else the wire format its shape says (`engine.wire.detect`), else native."""
    if not NATIVE_ONLY.isdisjoint(data):
        native = NATIVE_ONLY.intersection(data)
        if native != {"prompt"} or type(data["prompt"]) is str:
            return NATIVE  # (a Responses body's `prompt` is a template reference, an object)
    return wire.detect(data)


def _chosen_format(data: Any, input_format: str | None) -> str:
    if input_format is None:
        return format_of(data) if isinstance(data, Mapping) else NATIVE
    if input_format not in wire.FORMATS:
        from engine.diagnostics import did_you_mean  # stdlib-only module

        guess = did_you_mean(input_format, wire.FORMATS)
        hint = f" (did you mean `{guess}`?)" if guess else ""
        raise RequestError(
            [("", f"unknown input format `{_short(input_format)}`{hint}; the formats are "
              + ", ".join(wire.FORMATS))]
        )  # fmt: skip
    return input_format


def _wire_env(
    data: Any, fmt: str, request_id: str | None, model: str | None, stream: bool | None
) -> dict[str, Any]:
    if type(data) is not dict and not isinstance(data, Mapping):
        raise RequestError([("", f"a {fmt} request is a JSON object, not {_json_kind(data)}")])
    try:
        read = wire.read(data, fmt, model=model, stream=stream)
    except wire.WireError as err:
        raise RequestError(err.problems) from None
    except RecursionError:
        raise RequestError([("", "the body is nested too deeply")]) from None
    # every string read (text, model, user, metadata), once: what the id hashes, and the
    # check for lone surrogates (which no log or store can keep)
    read.digest.extend((read.text, fmt, read.model or "", read.user or ""))
    if read.metadata:
        read.digest.extend(f"{key}={value}" for key, value in read.metadata.items())
    joined = "\x1f".join(read.digest)
    if not joined.isascii() and _SURROGATE.search(joined):
        raise RequestError([(f"field `{path}`", message) for path, message in unstorable(data)])
    if request_id is None:
        key = "sha256:" + hashlib.sha256(joined.encode()).hexdigest()[:16]
    else:
        key = request_id
    return {
        "id": key,  # a wire body carries no id: the option's, else the body's hash
        "key": key,
        "user": read.user,
        "ip": None,
        "model": read.model,
        "prompt": None,
        "input_tokens": float(read.input_tokens),
        "max_tokens": None if read.max_tokens is None else float(read.max_tokens),
        "cached_tokens": 0.0,
        "images": float(read.images),
        "requires_vision": read.requires_vision,
        "requires_tools": read.requires_tools,
        "requires_json": read.requires_json,
        "requires_json_schema": read.requires_json_schema,
        "requires_pdf": read.requires_pdf,
        "requires_audio": read.requires_audio,
        "requires_reasoning": read.requires_reasoning,
        "stream": read.stream,
        "max_cost": None,
        "max_latency": None,
        "max_latency_ms": None,
        "min_quality": None,
        "region": None,
        "priority": 0.0,  # a wire body has none: the X-Priority header (`env_of`)
        "tags": [],
        "metadata": read.metadata,
        "format": fmt,
        "conversation": Conversation(fmt, data),  # the prompt features, read on demand
        "wire": read,  # what was read, for the explain trace (`WireRequest.derivations`)
    }


def to_env(request: Request) -> dict[str, Any]:
    tokens = estimate_tokens(request)
    return {
        "id": request.id,
        "key": request_key(request),
        "user": request.user,
        "ip": request.ip,
        "model": request.model,
        "prompt": request.prompt,
        "input_tokens": float(tokens),
        "max_tokens": None if request.max_tokens is None else float(request.max_tokens),
        # cached tokens are part of the input: never more than it
        "cached_tokens": float(min(request.cached_tokens, tokens)),
        "images": float(request.images),
        "requires_vision": request.requires_vision,
        "requires_tools": request.requires_tools,
        "requires_json": request.requires_json,
        "requires_json_schema": request.requires_json_schema,
        "requires_pdf": request.requires_pdf,
        "requires_audio": request.requires_audio,
        "requires_reasoning": request.requires_reasoning,
        "stream": request.stream,
        "max_cost": None if request.max_cost is None else float(request.max_cost),
        "max_latency": None if request.max_latency_ms is None else float(request.max_latency_ms),
        "max_latency_ms": None if request.max_latency_ms is None else float(request.max_latency_ms),
        "min_quality": None if request.min_quality is None else float(request.min_quality),
        "region": request.region,
        "priority": float(request.priority),
        "tags": list(request.tags),
        "metadata": dict(request.metadata),
        "format": NATIVE,
        "conversation": Conversation(NATIVE, request),
    }
