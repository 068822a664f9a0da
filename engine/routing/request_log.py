"""What the decision log keeps of a request (`--log-requests`): its routing features.

`features` keeps a native request that decides as the original did, without its text:
the user and IP keys (hashed with the installation's salt when asked), the requested
model, the token counts (the estimate made from the prompt, so a replay needs no
prompt), the derived requirements, the limits the client set, region, tags, and of the
metadata only the keys the policy reads; and the wire format it came in (`format`).
It also keeps, never as text, the prompt features the policy reads (`text`: each
`request.text.*` feature a condition reads and those `request.complexity` is made of,
derived for the log when the decision did not read them) and the values of the
classifier plugins the decision ran (`features`: the value the decision read, the
fallback included; a plugin the decision did not run is not run for the log).
`full` adds the body as received (`body`): prompts included. `off` keeps nothing.

A replay reads a logged request back (`logged_conversation`): the `text` and `features`
values are what its conditions read, and a prompt feature or plugin the log did not keep
raises `Unlogged` (the replay counts the request as reading a field the log never kept,
never as an empty conversation).
One JSON text per decision, built and encoded (msgspec) on the hot path: a logged decision
with features costs 1.12–1.17× one without (`bench/replay_bench.py`, docs/performance.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.errors import PolicyctlError
from engine.vocabulary import LOG_REQUESTS
from engine.wire.features import Conversation, FeatureValue, reads_of
from engine.wire.plugins import GROUP, Outcome

_NUMBERS = ("input_tokens", "max_tokens", "cached_tokens", "images")
_FLAGS = (
    "requires_vision", "requires_tools", "requires_json", "requires_json_schema",
    "requires_pdf", "requires_audio", "requires_reasoning", "stream",
)  # fmt: skip
_OPTIONAL = ("model", "max_cost", "max_latency_ms", "min_quality", "region")
HASHED_PREFIX = "h:"  # a hashed key: `h:` and 16 hex digits
HASHES_KEPT = 65_536  # hashed keys remembered (about 10 MB at most)

_encode = msgspec.json.Encoder().encode


class RequestLog:
    """Turns an evaluation environment into the decision log's `request` text."""

    def __init__(
        self,
        mode: str,
        request_paths: frozenset[str],
        salt: bytes | None = None,
        prompt_features: frozenset[str] = frozenset(),
        plugins: tuple[str, ...] = (),
    ) -> None:
        if mode not in LOG_REQUESTS:
            choices = ", ".join(LOG_REQUESTS)
            raise ValueError(f"log_requests must be one of {choices}, got {mode!r}")
        self.mode = mode
        self.salt = salt  # None: user and IP keys are kept as sent
        self._hashes: dict[str, str] = {}  # key -> hashed key, for the keys seen lately
        prefix = "request.metadata."
        self.metadata_keys = frozenset(
            p.removeprefix(prefix).split(".", 1)[0] for p in request_paths if p.startswith(prefix)
        )
        # the policy's `program.prompt_features` and `program.plugins` (names), in order
        self.prompt_features = tuple(sorted(prompt_features))
        self.plugin_keys = tuple((name, (GROUP, name)) for name in sorted(plugins))

    def hashed(self, key: str) -> str:
        """The key under this installation's salt: the same key, the same text (kept for
        the last HASHES_KEPT keys: a returning user costs a dict lookup, not an HMAC)."""
        found = self._hashes.get(key)
        if found is not None:
            return found
        assert self.salt is not None
        digest = hmac.new(self.salt, key.encode("utf-8", "surrogatepass"), hashlib.blake2b)
        text = HASHED_PREFIX + digest.hexdigest()[:16]
        if len(self._hashes) >= HASHES_KEPT:
            self._hashes.clear()  # a new generation: bounded, and no per-call bookkeeping
        self._hashes[key] = text
        return text

    def features(self, env: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in ("user", "ip"):
            value = env[name]
            if value is not None:
                out[name] = self.hashed(str(value)) if self.salt is not None else value
        for name in _OPTIONAL:
            value = env[name]
            if value is not None:
                out[name] = value
        for name in _NUMBERS:  # input_tokens always; the others when not 0
            value = env[name]
            if value is not None and (value or name == "input_tokens"):
                out[name] = int(value) if float(value).is_integer() else value
        for name in _FLAGS:
            if env[name]:
                out[name] = True
        if env["tags"]:
            out["tags"] = list(env["tags"])
        metadata = env["metadata"]
        if metadata and self.metadata_keys:
            kept = {k: v for k, v in metadata.items() if k in self.metadata_keys}
            if kept:
                out["metadata"] = kept
        out["format"] = env["format"]
        if self.prompt_features or self.plugin_keys:
            conv = env.get("conversation")
            if conv is not None:
                if self.prompt_features:
                    out["text"] = {n: conv.feature(n) for n in self.prompt_features}
                ran = {}
                for name, key in self.plugin_keys:
                    outcome = conv.values.get(key)
                    if outcome is not None:
                        ran[name] = outcome.value
                if ran:
                    out["features"] = ran
        return out

    def encode(self, env: Mapping[str, Any], body: object) -> str | None:
        """The `request` column's text for one decision (None when `off`)."""
        if self.mode == "off":
            return None
        fields = self.features(env)
        if self.mode == "full":
            fields["body"] = body
        try:
            return _encode(fields).decode("utf-8")
        except (TypeError, ValueError):  # a body msgspec cannot encode: its text instead
            fields["body"] = repr(body)
            return _encode(fields).decode("utf-8", "replace")


# ------------------------------------------------------------------ read back (replay)


class Unlogged(PolicyctlError, LookupError):
    """A replayed decision read a prompt feature or plugin the log did not keep (the
    replay catches it and counts the request: it never reaches a user)."""

    def __init__(self, field: str) -> None:
        super().__init__(f"`{field}` was not logged")
        self.field = field  # `request.text.code`, `request.features.topic`


class _LoggedValues(dict[Any, Any]):
    """A logged conversation's values: a plugin's value the log did not keep is `Unlogged`
    (a plugin reads its memoised outcome with `get`, keyed `(GROUP, name)`)."""

    def get(self, key: Any, default: Any = None) -> Any:
        found = super().get(key, default)
        if found is None and type(key) is tuple and key[0] == GROUP and key not in self:
            raise Unlogged(f"request.features.{key[1]}")
        return found


class LoggedConversation(Conversation):
    """The conversation of a request logged with `features`: only its logged values. A
    prompt feature, a complexity score's input or a plugin not among them raises
    `Unlogged`; the text itself is not there (a read of it raises too)."""

    __slots__ = ()

    def __init__(self, fmt: str, text: Mapping[str, Any], plugins: Mapping[str, Any]) -> None:
        super().__init__(fmt, {})
        values = _LoggedValues(text)
        for name, value in plugins.items():
            values[(GROUP, name)] = Outcome(value, 0)
        self.values = values

    def feature(self, name: str) -> FeatureValue:
        found = self.values.get(name, _NONE)
        if found is _NONE:
            raise Unlogged(f"request.text.{name}")
        return found  # type: ignore[no-any-return]

    def complexity(self, weights: Any) -> float:
        missing = reads_of(weights).difference(self.values)
        if missing:
            raise Unlogged(f"request.text.{min(missing)} (of request.complexity)")
        return super().complexity(weights)

    def turns(self) -> Any:
        raise Unlogged("the prompt's text")

    def shape(self) -> Any:
        raise Unlogged("the prompt's text")

    def __eq__(self, other: object) -> bool:
        return self is other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LoggedConversation({self.format}, {len(self.values)} value(s))"


_NONE = object()


def logged_conversation(fields: dict[str, Any]) -> Conversation:
    """The conversation a replay decides a logged request on, its logged values taken out
    of `fields` (`text`, `features`, `body`, `format`): the body's own when the log kept it
    (`full`: the logged values kept too), else only the logged values."""
    fmt = fields.pop("format", None) or "native"
    text = fields.pop("text", None) or {}
    plugins = fields.pop("features", None) or {}
    body = fields.pop("body", None)
    if isinstance(body, dict):
        conv = Conversation(fmt, body)
        conv.values.update(text)
        for name, value in plugins.items():
            conv.values[(GROUP, name)] = Outcome(value, 0)
        return conv
    return LoggedConversation(fmt, text, plugins)
