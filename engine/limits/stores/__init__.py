"""Rate-limit state stores, chosen by URL: `memory://`, a DuckDB file path, `redis://…`
(the schemes are declared in `engine.vocabulary.STORE_SCHEMES`).

Drivers are imported lazily: `duckdb` only for a file path, `redis` only for `redis://`.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.limits.stores.base import ConfigurationError, Store
from engine.vocabulary import MEMORY_URLS, REDIS_URL_PREFIXES, unknown_store_message

__all__ = [
    "ConfigurationError",
    "Store",
    "default_analytics",
    "default_state_file",
    "default_state_url",
    "open_analytics",
    "open_store",
]


def default_state_url() -> str:
    """`$POLICYCTL_STATE`, else `$XDG_STATE_HOME/policyctl/state.duckdb` (~/.local/state)."""
    env = os.environ.get("POLICYCTL_STATE")
    if env:
        return env
    return default_state_file()


def default_state_file() -> str:
    """`$XDG_STATE_HOME/policyctl/state.duckdb` (~/.local/state): the default DuckDB file,
    also where a server on memory or Redis state writes its violations and stats."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "policyctl" / "state.duckdb")


def open_store(url: str, *, lock_timeout_s: float = 10.0) -> Store:
    """A store for a URL. An unknown scheme is a ConfigurationError that quotes the URL."""
    if url in MEMORY_URLS:
        from engine.limits.stores.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith(REDIS_URL_PREFIXES):
        from engine.limits.stores.redis_store import RedisStore

        return RedisStore(url)
    if "://" in url:
        raise ConfigurationError(unknown_store_message(url))
    if not url.strip():
        raise ConfigurationError("the state store URL is empty")
    from engine.limits.stores.duckdb_store import DuckDBStore

    return DuckDBStore(url, lock_timeout_s=lock_timeout_s)


def default_analytics(state_url: str) -> str | None:
    """Where `serve` on Redis state records violations and daily stats, and `ratelimit
    stats|violations` read them, when no `--analytics` is given: the default state file.
    None for memory (which forgets at exit) and for a DuckDB file (which keeps its own)."""
    return default_state_file() if state_url.startswith(REDIS_URL_PREFIXES) else None


def open_analytics(path: str, *, lock_timeout_s: float = 10.0) -> object:
    """A DuckDB connection with the analytics schema (for an outcome log beside memory state)."""
    from engine.analytics import schema as analytics
    from engine.limits.stores.duckdb_store import _connect

    file = Path(path).expanduser()
    file.parent.mkdir(parents=True, exist_ok=True)
    con = _connect(str(file), lock_timeout_s)
    analytics.ensure_schema(con)
    return con
