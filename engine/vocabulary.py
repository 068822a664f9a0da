"""The words of policyctl declared once: value types (units), limit scopes and units, the
default output-token estimate, and the state-store URL schemes.

Standard library only. Everything else imports these names instead of spelling the facts
again. Strategy names are not here: they are the keys of the strategy registry
(`engine.strategies.STRATEGIES`), so that adding a strategy is one registration.
"""

from __future__ import annotations

from enum import Enum


class Unit(Enum):
    """The type of a literal or a field. Units are types: a duration is not money."""

    DURATION = "duration"  # value in milliseconds
    MONEY = "money"  # value in USD
    PERCENT = "percentage"  # value as a fraction (80% -> 0.8)
    COUNT = "number"  # a plain number (200k -> 200000)
    STRING = "string"
    BOOL = "boolean"
    DATE = "date"  # value as epoch seconds (UTC)
    NULL = "null"
    LIST = "list"
    ANY = "any"  # metadata values: known only at evaluation time


# ---------------------------------------------------------------- limits

# the scopes every policy has (a `limit team = request.metadata.team …` names a new one)
STANDARD_SCOPES = ("global", "user", "ip", "provider", "model")
# which request field keys each standard scope (provider/model come from the decision)
SCOPE_KEY_FIELD = {"user": "user", "ip": "ip"}
# what a limit counts: `limit user 100 per 1m`, `… tokens …`, `… spend $5 per 1d`
LIMIT_UNITS = ("requests", "tokens", "spend", "concurrent")
# `limit model "x" concurrent 8 [lease D]`: an in-flight cap; a slot not released by the
# decision's outcome within its lease is released anyway (docs/ratelimits.md, In-flight)
CONCURRENT = "concurrent"
DEFAULT_LEASE_MS = 600_000.0  # 10m
# what the decision log keeps of each request (`--log-requests`): nothing, the routing
# features (never the prompt text), or the features and the body as received
LOG_REQUESTS = ("off", "features", "full")

# the output tokens a request is estimated to produce when it gives no `max_tokens`, in
# routing's cost estimate, the token limits and the simulator's templates
DEFAULT_OUTPUT_TOKENS = 256

# ---------------------------------------------------------------- state stores

# URL scheme -> the store that serves it; anything without `://` is a DuckDB file path
STORE_SCHEMES: dict[str, str] = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",  # a Redis unix socket: `unix:///path.sock`
    "redis+cluster": "redis",  # a Redis Cluster: `redis+cluster://host:port[,host:port…]`
}
STORE_URL_PREFIXES = tuple(f"{scheme}://" for scheme in STORE_SCHEMES)
# the spellings of the per-process store
MEMORY_URLS = ("memory://", "memory:", "memory")
REDIS_URL_PREFIXES = tuple(f"{s}://" for s, store in STORE_SCHEMES.items() if store == "redis")
# Redis over TCP also shares model health between processes (not over a unix socket)
SHARED_HEALTH_URL_PREFIXES = ("redis://", "rediss://", "redis+cluster://")
# ... and over a Redis Cluster: state sharded by key (engine/limits/stores/redis_cluster_store.py)
REDIS_CLUSTER_URL_PREFIX = "redis+cluster://"


def unknown_store_message(url: str) -> str:
    """The words for a URL whose scheme no store serves."""
    scheme = url.split("://", 1)[0]
    return (
        f"unknown state store `{url}` (scheme `{scheme}`): use `memory://`, a file path,"
        " or `redis://host:port`"
    )
