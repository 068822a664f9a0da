"""Rate-limit state stores, chosen by URL: `memory://` (`memory://?max_keys=N` bounds the
buckets it holds), a DuckDB file path, `redis://…`, `redis+cluster://…` (the schemes are declared in
`engine.vocabulary.STORE_SCHEMES`).

Drivers are imported lazily: `duckdb` only for a file path, `redis` only for `redis://` and `redis+cluster://`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from engine.limits.stores.base import ConfigurationError, Store
from engine.vocabulary import (
    MEMORY_URLS,
    REDIS_CLUSTER_URL_PREFIX,
    REDIS_URL_PREFIXES,
    unknown_store_message,
)

__all__ = [
    "ConfigurationError",
    "Store",
    "default_analytics",
    "default_state_file",
    "default_state_url",
    "open_analytics",
    "open_store",
    "state_file",
]


STATE_ENV = "POLICYCTL_STATE"


def default_state_url(fallback: str | None = None) -> str:
    """`$POLICYCTL_STATE`, else `fallback` (`policyctl eval`: `memory://`), else
    `$XDG_STATE_HOME/policyctl/state.duckdb` (~/.local/state)."""
    env = os.environ.get(STATE_ENV)
    if env:
        return env
    return fallback if fallback is not None else default_state_file()


# how long opening a DuckDB file another process holds waits for it, then fails
# (`StoreBusyError`): `--lock-wait`, `PolicyEngine(lock_wait_s=…)`
DEFAULT_LOCK_WAIT_S = 10.0


def default_state_file() -> str:
    """`$XDG_STATE_HOME/policyctl/state.duckdb` (~/.local/state): the default DuckDB file,
    also where a server on memory or Redis state writes its violations and stats."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return str(Path(base) / "policyctl" / "state.duckdb")


def open_store(url: str, *, lock_timeout_s: float = DEFAULT_LOCK_WAIT_S) -> Store:
    """A store for a URL. An unknown scheme is a ConfigurationError that quotes the URL."""
    if url in MEMORY_URLS or url.startswith(MEMORY_URLS[0] + "?"):  # `memory://?max_keys=N`
        from engine.limits.stores.memory import MemoryStore

        return MemoryStore(url)
    if url.startswith(REDIS_CLUSTER_URL_PREFIX):
        from engine.limits.stores.redis_cluster_store import RedisClusterStore

        return RedisClusterStore(url)
    if url.startswith(REDIS_URL_PREFIXES):
        from engine.limits.stores.redis_store import RedisStore

        return RedisStore(url)
    if "://" in url:
        raise ConfigurationError(unknown_store_message(url))
    if not url.strip():
        raise ConfigurationError("the state store URL is empty")
    from engine.limits.stores.duckdb_store import DuckDBStore

    return DuckDBStore(str(state_file(url)), lock_timeout_s=lock_timeout_s)


def state_file(path: str) -> Path:
    """A DuckDB state file's path, checked before DuckDB opens it: a regular file or none
    yet (a FIFO would hang the open), in a directory that exists. Only the default state
    directory (`$XDG_STATE_HOME/policyctl`) is created; a path someone gave (`--state`,
    `$POLICYCTL_STATE`) whose directory is missing is a ConfigurationError naming it."""
    if "\0" in path:
        raise ConfigurationError("the state file path contains a NUL character")
    file = Path(path).expanduser()
    if not file.parent.is_dir():
        if file != Path(default_state_file()).expanduser():
            raise ConfigurationError(
                f"the state file's directory `{file.parent}` does not exist (create it, or"
                " leave --state out to use the default state directory)"
            )
        file.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = file.stat().st_mode
    except FileNotFoundError:
        return file
    except OSError as err:
        raise ConfigurationError(f"cannot use the state file `{file}`: {err.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigurationError(f"the state file `{file}` is not a regular file")
    return file


def default_analytics(state_url: str) -> str | None:
    """Where `serve` on Redis state records violations and daily stats, and `ratelimit
    stats|violations` read them, when no `--analytics` is given: the default state file.
    None for memory (which forgets at exit) and for a DuckDB file (which keeps its own)."""
    return default_state_file() if state_url.startswith(REDIS_URL_PREFIXES) else None


def open_analytics(path: str, *, lock_timeout_s: float = DEFAULT_LOCK_WAIT_S) -> object:
    """A DuckDB connection with the analytics schema (for an outcome log beside memory state)."""
    from engine.analytics import schema as analytics
    from engine.limits.stores.duckdb_store import _connect

    file = state_file(path)
    con = _connect(str(file), lock_timeout_s)
    analytics.ensure_schema(con)
    return con
