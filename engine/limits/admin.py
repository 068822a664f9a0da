"""Rate-limit administration over a PolicyEngine: what `policyctl ratelimit …` and the HTTP
service's `/v1/ratelimit/…` calls both use.

Thin on purpose: it reads the engine's policy limits, its store's buckets and quotas, and
the DuckDB log tables, and returns plain dicts and lists (JSON-ready). Times are epoch
seconds from the engine's clock. Bad input raises `AdminError`, whose message names the
CLI flag (`--limit`, `--window`, …) and quotes the value.

The `parse_*` and `check_*` helpers validate without an engine, so the CLI can check every
flag before it opens (and so writes) the state.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from engine.analytics import queries
from engine.errors import PolicyctlError
from engine.language.program import CompiledLimit, Program
from engine.limits.limiter import (
    SHADOW_MARK,
    Applied,
    applicable,
    group_limits,
    quota_applied,
)
from engine.limits.stores.base import BucketInspection, Quota, Spec, SQLQueries, available
from engine.units import (
    format_duration,
    parse_count,
    parse_day,
    parse_timestamp_s,
    parse_window_ms,
)
from engine.vocabulary import CONCURRENT, STANDARD_SCOPES

DAY_MS = 86_400_000.0
DEFAULT_IDLE_MS = DAY_MS  # `cleanup`: full buckets unused for 24 h
DEFAULT_VIOLATIONS = 50


class AdminError(PolicyctlError, ValueError):
    """Bad admin input; the message names the flag and quotes the value."""


# ----------------------------------------------------------------------------- parsing


def check_key(scope: str, key: str | None, flag: str | None = None) -> str:
    """A scope key: not empty; an IP is normalised as requests normalise theirs."""
    flag = flag or f"--{scope}"
    if key is None or not str(key).strip():
        raise AdminError(f"`{flag}` must not be empty")
    key = str(key)
    if scope == "ip":
        try:
            return str(ipaddress.ip_address(key.strip()))
        except ValueError:
            raise AdminError(f"`{flag}` must be an IPv4 or IPv6 address, got `{key}`") from None
    return key


def scopes_of(program: Program) -> list[str]:
    """Every scope the policy can have buckets for: the standard five, then named ones."""
    found = list(STANDARD_SCOPES)
    for limit in program.limits:
        if limit.scope not in found:
            found.append(limit.scope)
    return found


def check_scope(program: Program, scope: str | None, flag: str = "--type") -> str | None:
    if scope is None:
        return None
    known = scopes_of(program)
    if scope not in known:
        raise AdminError(f"unknown scope `{scope}` for `{flag}`: use one of {', '.join(known)}")
    return scope


def check_quota(
    program: Program,
    *,
    scope: str,
    key: str,
    limit: str | float,
    window_ms: str | float,
    burst: str | float = 0.0,
    expires_at: str | float | dt.date | None = None,
    now_s: float,
) -> Quota:
    """Validate a quota completely (nothing is written); the Quota to store."""
    check_scope(program, scope, "--scope")
    key = check_key(scope, key)
    amount = parse_count(limit, "--limit", error=AdminError)
    window = parse_window_ms(window_ms, error=AdminError)
    extra = parse_count(burst, "--burst", allow_zero=True, error=AdminError)
    expires = (
        None if expires_at is None else parse_timestamp_s(expires_at, "--expires", error=AdminError)
    )
    if expires is not None and expires <= now_s:
        raise AdminError(f"`--expires` must be in the future, got `{expires_at}`")
    if not any(
        lim.scope == scope and lim.unit == "requests" and not lim.shadow for lim in program.limits
    ):
        raise AdminError(
            f"the policy has no `limit {scope} …` on requests, so a quota for"
            f" `--{scope}` would never apply"
        )
    return Quota(scope, key, amount, window, extra, expires)


# ----------------------------------------------------------------------------- helpers


def _num(value: float | None) -> float | int | None:
    """Whole floats as ints (JSON `1000`, not `1000.0`); others rounded to 6 places."""
    if value is None:
        return None
    if float(value).is_integer():
        return int(value)
    return round(float(value), 6)


def _sig(value: float) -> float | int | None:
    """A rate to 6 significant digits (a slow one is not rounded to zero)."""
    rounded = float(f"{value:.6g}")
    return int(rounded) if rounded.is_integer() else rounded


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else round(ms / 1000.0, 3)


def split_bucket(bucket: str) -> tuple[str, str, str, str]:
    """`scope/unit/window_ms[#n]/key` -> its four parts (a model key keeps its `/`)."""
    parts = [*bucket.split("/", 3), "", "", ""]
    return parts[0], parts[1], parts[2], parts[3]


def own_name(source: str) -> str:
    """A limit's source as the policy file's own name and place (`default.policy:48:1`),
    not the directory it was loaded from (site-packages for the packaged set); `quota`
    stays `quota`. File names are unique within a policy set."""
    return os.path.basename(source)


def _statement(location: str) -> str | None:
    """The source line of a `file:line:col` location, if the file can be read."""
    path, _, _col = location.rpartition(":")
    path, _, line = path.rpartition(":")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        return lines[int(line) - 1].strip()
    except (OSError, ValueError, IndexError):
        return None


T = TypeVar("T")


class LogTables(Protocol):
    """Where the log queries read: a DuckDB state store, or the analytics file an engine on
    memory or Redis state writes its violations and daily stats to."""

    def read(self, fn: Callable[[Any], T]) -> T: ...


class RateLimitAdmin:
    """The rate-limit admin calls over one engine (its policy, store, limiter and clock)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    # ------------------------------------------------------------------ basics

    @property
    def program(self) -> Program:
        program: Program = self.engine.program
        return program

    def now_s(self) -> float:
        return float(self.engine.clock())

    def scopes(self) -> list[str]:
        return scopes_of(self.program)

    def _check_scope(self, scope: str | None, flag: str = "--type") -> str | None:
        return check_scope(self.program, scope, flag)

    def _quotas(self) -> dict[tuple[str, str], Quota]:
        return {(q.scope, q.key): q for q in self.engine.store.quotas()}

    def _details(self) -> dict[str, tuple[float, float, float, float | None]] | None:
        """bucket -> (full_at_ms, capacity, rate_per_ms, last_used_ms) when the store
        keeps them (DuckDB), else None."""
        store = self.engine.store
        if not isinstance(store, BucketInspection):
            return None
        return {k: (f, c, r, u) for k, f, c, r, u in store.bucket_details()}

    def applied(self, scope: str, key: str, now_s: float | None = None) -> list[Applied]:
        """The limits that apply to one scope key, as the limiter picks them: a live quota
        (requests), else the key's live keyed limits, else the scope's live defaults. A
        `when` condition needs a request, so conditional limits are listed (see `when`)."""
        now_s = self.now_s() if now_s is None else now_s
        quotas = self._quotas()
        out: list[Applied] = []
        for group in group_limits(self.program.limits):
            if group.scope == scope:
                out.extend(applicable(group, key, quotas.get((scope, key)), None, now_s))
        return out

    def _all_applied(self) -> list[tuple[Applied, str | None]]:
        """Every limit that can own a bucket: (applied, its key or None for any key)."""
        out: list[tuple[Applied, str | None]] = []
        for group in group_limits(self.program.limits):
            out.extend((a, None) for a in group.defaults)
            for key, keyed in group.keyed.items():
                out.extend((a, key) for a in keyed)
        out.extend((quota_applied(q), q.key) for q in self._quotas().values())
        return out

    def _params(
        self,
        bucket: str,
        details: Mapping[str, tuple[float, float, float, float | None]] | None,
        owners: list[tuple[Applied, str | None]],
    ) -> tuple[float, float] | None:
        """A bucket's (capacity, rate per ms): stored with it, else from the policy."""
        if details is not None and bucket in details:
            _, capacity, rate, _ = details[bucket]
            if capacity > 0 and rate > 0:
                return capacity, rate
        key = split_bucket(bucket)[3]
        quota = next((a for a, k in owners if a.source == "quota" and k == key
                      and bucket.startswith(a.prefix)), None)  # fmt: skip
        if quota is not None:
            return quota.capacity, quota.rate
        match = next((a for a, k in owners if k == key and bucket.startswith(a.prefix)), None)
        if match is None:
            match = next((a for a, k in owners if k is None and bucket.startswith(a.prefix)), None)
        return None if match is None else (match.capacity, match.rate)

    # ------------------------------------------------------------------ status

    def status(
        self, scope: str | None = None, key: str | None = None, verbose: bool = False
    ) -> list[dict[str, Any]]:
        """Each limit that applies to `scope`/`key`, with its bucket's tokens right now.

        No key: every key that has a bucket, a keyed limit or a quota (and the global
        bucket). A missing bucket is full.
        """
        self._check_scope(scope, "--scope")
        if scope == "global":
            key = ""
        elif key is not None:
            key = check_key(scope or "key", key, f"--{scope}" if scope else "--key")
        if key is not None and scope is None:
            raise AdminError("a key needs its scope (`--user`, `--provider`, `--ip`)")
        now_s = self.now_s()
        now = now_s * 1000.0
        details = self._details() if verbose else None
        pairs: list[tuple[str, str]] = []
        if scope is not None and key is not None:
            pairs.append((scope, key))
        else:
            for name in self.scopes():
                if scope is not None and name != scope:
                    continue
                pairs.extend((name, k) for k in self._keys(name))
        rows = []
        for name, k in pairs:
            for applied in self.applied(name, k, now_s):
                rows.append(self._status_row(applied, k, now, verbose, details))
        return rows

    def _keys(self, scope: str) -> list[str]:
        """Keys of a scope worth showing: bucket owners, keyed limits and quotas."""
        groups = [g for g in group_limits(self.program.limits) if g.scope == scope]
        if not groups:
            return []
        if scope == "global":
            return [""]
        keys = {split_bucket(b)[3] for b, _ in self.engine.store.buckets(f"{scope}/")}
        keys.update(split_bucket(g)[3] for g, _ in self.engine.limiter.inflight(f"{scope}/"))
        for group in groups:
            keys.update(group.keyed)
        keys.update(k for s, k in self._quotas() if s == scope)
        return sorted(keys)

    def _status_row(
        self,
        applied: Applied,
        key: str,
        now: float,
        verbose: bool,
        details: Mapping[str, tuple[float, float, float, float | None]] | None,
    ) -> dict[str, Any]:
        bucket = applied.prefix + key
        full_at = self.engine.store.peek(bucket)
        tokens = max(0.0, available(full_at, applied.capacity, applied.rate, now))
        row: dict[str, Any] = {
            "scope": applied.scope,
            "key": key or None,
            "unit": applied.unit,
            "limit": _num(applied.limit),
            "window": format_duration(applied.window_ms),
            "window_ms": _num(applied.window_ms),
            "burst": _num(applied.burst),
            "capacity": _num(applied.capacity),
            "tokens": _num(round(tokens, 3)),
            "reset_at": _seconds(full_at) if full_at is not None and full_at > now else None,
            "source": own_name(applied.source),
        }
        if applied.shadow:  # `shadow limit …`: counted, never denying (absent otherwise)
            row["shadow"] = True
        if applied.unit == CONCURRENT:  # a gauge: slots free now, its lease as the window
            held = sum(n for k, n in self.engine.limiter.inflight(bucket) if k == bucket)
            row.update(
                tokens=_num(max(0, int(applied.limit) - held)),
                in_flight=held,
                window=f"lease {format_duration(applied.window_ms)}",
                reset_at=None,
            )
            if verbose:
                free = max(0, int(applied.limit) - held)
                row.update(
                    bucket=bucket, rate_per_s=None, retry_after_ms=None,
                    fill_percent=round(100.0 * free / applied.limit, 1),
                    when=applied.when is not None, until=applied.until, last_used=None,
                )  # fmt: skip
            return row
        if verbose:
            cost = 1.0 if applied.unit == "requests" else None
            retry = None
            if cost is not None:
                retry = 0 if tokens >= cost else math.ceil((cost - tokens) / applied.rate - 1e-9)
            last_used = None
            if details is not None and bucket in details:
                last_used = _seconds(details[bucket][3])
            row.update(
                {
                    "bucket": bucket,
                    "rate_per_s": _sig(applied.rate * 1000.0),
                    "fill_percent": round(100.0 * tokens / applied.capacity, 1),
                    "retry_after_ms": retry,
                    "when": applied.when is not None,
                    "until": applied.until,
                    "last_used": last_used,
                }
            )
        return row

    # ------------------------------------------------------------------ quotas

    def set_quota(
        self,
        scope: str = "user",
        key: str = "",
        limit: str | float = 0,
        window_ms: str | float = 0,
        burst: str | float = 0,
        expires_at: str | float | dt.date | None = None,
    ) -> dict[str, Any]:
        """Store a runtime quota for one key (it overrides the policy until it expires)."""
        quota = check_quota(
            self.program, scope=scope, key=key, limit=limit, window_ms=window_ms,
            burst=burst, expires_at=expires_at, now_s=self.now_s(),
        )  # fmt: skip
        self.engine.store.set_quota(quota)
        self.engine.limiter.refresh_quotas()
        return quota_row(quota, self.now_s())

    def remove_quota(self, scope: str, key: str) -> bool:
        self._check_scope(scope, "--scope")
        key = check_key(scope, key)
        removed = bool(self.engine.store.remove_quota(scope, key))
        self.engine.limiter.refresh_quotas()
        return removed

    # ------------------------------------------------------------------ reset

    def reset(self, scope: str, key: str | None = None) -> int:
        """Refill every bucket of `scope` (all its keys, or one key): how many were reset.

        A store resets by key prefix, so resetting `10.0.0.1` would also refill `10.0.0.12`;
        such longer keys are put back exactly as they were.
        """
        self._check_scope(scope, "--scope")
        if scope == "global":
            key = None
        elif key is not None:
            key = check_key(scope, key)
        store = self.engine.store
        if key is None:
            return int(store.reset(f"{scope}/"))
        targets = [b for b, _ in store.buckets(f"{scope}/") if split_bucket(b)[3] == key]
        if not targets:
            return 0
        now = self.now_s() * 1000.0
        details = self._details()
        count = 0
        for bucket in targets:
            others = [(b, f) for b, f in store.buckets(bucket) if b != bucket and f > now]
            removed = int(store.reset(bucket))
            count += min(removed, 1)
            for other, full_at in others:
                self._restore(other, full_at, now, details)
        return count

    def _restore(
        self,
        bucket: str,
        full_at: float,
        now: float,
        details: Mapping[str, tuple[float, float, float, float | None]] | None,
    ) -> None:
        """Put back a bucket a prefix reset refilled: consume exactly its old deficit."""
        if details is not None and bucket in details and details[bucket][2] > 0:
            _, capacity, rate, _ = details[bucket]
        else:  # the deficit in milliseconds, at one token per millisecond
            capacity, rate = full_at - now, 1.0
        cost = (full_at - now) * rate
        self.engine.store.acquire([Spec(bucket, max(capacity, cost), rate, cost)], (), now)

    # ------------------------------------------------------------------ config

    def config(self, verbose: bool = False) -> dict[str, Any]:
        """The policy's limits (in file order) and the runtime quotas."""
        now_s = self.now_s()
        limits = [self._limit_row(limit, now_s, verbose) for limit in self.program.limits]
        quotas = [quota_row(q, now_s) for q in self.engine.store.quotas()]
        return {"limits": limits, "quotas": quotas}

    @staticmethod
    def _limit_row(limit: CompiledLimit, now_s: float, verbose: bool) -> dict[str, Any]:
        row: dict[str, Any] = {
            "scope": limit.scope,
            "key": limit.key,
            "unit": limit.unit,
            "limit": _num(limit.amount),
            "window": format_duration(limit.window_ms),
            "window_ms": _num(limit.window_ms),
            "burst": _num(limit.burst),
            "capacity": _num(limit.amount + limit.burst),
            "when": limit.when is not None,
            "until": limit.until,
            "expired": limit.until is not None and limit.until <= now_s,
            "source": own_name(limit.location),
        }
        if limit.shadow:  # `shadow limit …`: counted, never denying (absent otherwise)
            row["shadow"] = True
        if limit.unit == CONCURRENT:  # a gauge: its lease as the window (as `status`)
            row["window"] = f"lease {format_duration(limit.window_ms)}"
        if verbose:
            row["rate_per_s"] = (
                None if limit.unit == CONCURRENT else _sig(limit.amount / limit.window_ms * 1000.0)
            )  # a gauge has no refill rate
            row["keyed_by"] = limit.key_field or (
                "expression" if limit.key_fn is not None else None
            )
            row["statement"] = _statement(limit.location)
        return row

    # ------------------------------------------------------------------ logs

    def _logs(self) -> LogTables | None:
        """Where the log tables are: the DuckDB state store, else the engine's analytics
        file (memory or Redis state), else None."""
        store = self.engine.store
        if isinstance(store, SQLQueries):
            return store
        tables: LogTables | None = self.engine.analytics
        return tables

    def stats(
        self,
        start: str | dt.date | None = None,
        end: str | dt.date | None = None,
        scope: str | None = None,
    ) -> list[dict[str, Any]]:
        """Daily allowed/denied counts per scope (`rate_limit_stats`, plus what this process
        has not written yet), oldest day first, with the approval rate in percent."""
        first = parse_day(start, "--start", error=AdminError)
        last = parse_day(end, "--end", error=AdminError)
        if first is not None and last is not None and first > last:
            raise AdminError(f"`--start` {first} is after `--end` {last}")
        self._check_scope(scope)
        totals: dict[tuple[str, str], list[int]] = {}
        logs = self._logs()
        if logs is not None:
            for day, name, allowed, denied in logs.read(queries.limit_stats):
                entry = totals.setdefault((day, name), [0, 0])
                entry[0] += int(allowed)
                entry[1] += int(denied)
        for (day, name), (allowed, denied) in self.engine.limiter.daily_stats().items():
            entry = totals.setdefault((day, name), [0, 0])
            entry[0] += allowed
            entry[1] += denied
        rows = []
        for (day, name), (allowed, denied) in sorted(totals.items()):
            when = dt.date.fromisoformat(day)
            if (first is not None and when < first) or (last is not None and when > last):
                continue
            if scope is not None and name != scope:
                continue
            total = allowed + denied
            rows.append(
                {
                    "day": day,
                    "scope": name,
                    "total": total,
                    "allowed": allowed,
                    "denied": denied,
                    "approval_rate": round(100.0 * allowed / total, 2) if total else None,
                }
            )
        return rows

    def violations(
        self, key: str | None = None, limit: int = DEFAULT_VIOLATIONS, scope: str | None = None
    ) -> list[dict[str, Any]]:
        """Denials by a limit, newest first (`rate_limit_violations`, plus unwritten ones)."""
        count = int(parse_count(limit, "--limit", integer=True, error=AdminError))
        if key is not None and not str(key).strip():
            raise AdminError("`--key` must not be empty")
        self._check_scope(scope.removeprefix(SHADOW_MARK) if scope else scope)  # `shadow:user`
        found: list[tuple[float, int, dict[str, Any]]] = []
        logs = self._logs()
        if logs is not None:
            rows = logs.read(lambda con: queries.violations(con, key, scope, count))
            for order, (at_us, name, k, unit, requested, left, request_id) in enumerate(rows):
                found.append(
                    (at_us / 1e6, -order, _violation(at_us / 1e6, name, k, unit, requested,
                                                     left, request_id))
                )  # fmt: skip
        pending = list(self.engine.limiter.violations)
        for order, v in enumerate(pending):
            if (key is not None and v.key != key) or (scope is not None and v.scope != scope):
                continue
            found.append(
                (v.at, len(found) + order + 1,
                 _violation(v.at, v.scope, v.key, v.unit, v.requested, v.available,
                            v.request_id))
            )  # fmt: skip
        found.sort(key=lambda item: (item[0], item[1]), reverse=True)
        return [row for _, _, row in found[:count]]

    # ------------------------------------------------------------------ buckets

    def buckets(self, scope: str | None = None) -> list[dict[str, Any]]:
        """Buckets that are not full right now, with their tokens and fill percentage."""
        self._check_scope(scope)
        now = self.now_s() * 1000.0
        details = self._details()
        owners = self._all_applied()
        rows = []
        for bucket, full_at in self.engine.store.buckets(f"{scope}/" if scope else ""):
            if full_at <= now:
                continue
            name, unit, _, key = split_bucket(bucket)
            params = self._params(bucket, details, owners)
            tokens = capacity = fill = None
            if params is not None:
                capacity, rate = params
                tokens = round(max(0.0, available(full_at, capacity, rate, now)), 3)
                fill = round(100.0 * tokens / capacity, 1)
            last_used = None
            if details is not None and bucket in details:
                last_used = _seconds(details[bucket][3])
            rows.append(
                {
                    "bucket": bucket,
                    "scope": name,
                    "unit": unit,
                    "key": key or None,
                    "capacity": _num(capacity),
                    "tokens": _num(tokens),
                    "fill_percent": fill,
                    "reset_at": _seconds(full_at),
                    "last_used": last_used,
                }
            )
        return rows

    def cleanup(self, idle_ms: str | float = DEFAULT_IDLE_MS) -> int:
        """Delete buckets that are full and unused for `idle_ms` (default 24 h): how many.
        A store without usage times (memory) deletes every full bucket; Redis expires
        buckets itself (0)."""
        idle = parse_window_ms(idle_ms, "--idle", allow_zero=True, error=AdminError)
        now = self.now_s() * 1000.0
        store = self.engine.store
        if isinstance(store, BucketInspection):
            return int(store.cleanup(now, idle))
        return int(store.evict(now))


def quota_row(quota: Quota, now_s: float) -> dict[str, Any]:
    return {
        "scope": quota.scope,
        "key": quota.key,
        "unit": "requests",
        "limit": _num(quota.limit),
        "window": format_duration(quota.window_ms),
        "window_ms": _num(quota.window_ms),
        "burst": _num(quota.burst),
        "capacity": _num(quota.limit + quota.burst),
        "expires_at": quota.expires_at,
        "expired": quota.expires_at is not None and quota.expires_at <= now_s,
        "source": "quota",
    }


def _violation(
    at: float,
    scope: str,
    key: str,
    unit: str,
    requested: float,
    left: float,
    request_id: str | None,
) -> dict[str, Any]:
    return {
        "at": round(at, 3),
        "scope": scope,
        "key": key or None,
        "unit": unit,
        "requested": _num(requested),
        "available": _num(round(left, 3)),
        "request_id": request_id,
    }
