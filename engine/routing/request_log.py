"""What the decision log keeps of a request (`--log-requests`): its routing features.

`features` keeps a native request that decides as the original did, without its text:
the user and IP keys (hashed with the installation's salt when asked), the requested
model, the token counts (the estimate made from the prompt, so a replay needs no
prompt), the derived requirements, the limits the client set, region, tags, and of the
metadata only the keys the policy reads; and the wire format it came in (`format`).
`full` adds the body as received (`body`): prompts included. `off` keeps nothing.
One JSON text per decision, built and encoded (msgspec) on the hot path: a logged decision
with features costs 1.12–1.17× one without (`bench/replay_bench.py`, docs/performance.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

import msgspec

from engine.vocabulary import LOG_REQUESTS

_NUMBERS = ("input_tokens", "max_tokens", "cached_tokens", "images")
_FLAGS = (
    "requires_vision", "requires_tools", "requires_json", "requires_json_schema",
    "requires_pdf", "requires_audio", "stream",
)  # fmt: skip
_OPTIONAL = ("model", "max_cost", "max_latency_ms", "min_quality", "region")
HASHED_PREFIX = "h:"  # a hashed key: `h:` and 16 hex digits
HASHES_KEPT = 65_536  # hashed keys remembered (about 10 MB at most)

_encode = msgspec.json.Encoder().encode


class RequestLog:
    """Turns an evaluation environment into the decision log's `request` text."""

    def __init__(self, mode: str, request_paths: frozenset[str], salt: bytes | None = None) -> None:
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
