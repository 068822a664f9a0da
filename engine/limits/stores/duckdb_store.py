"""A DuckDB file: the CLI's state, shared by successive `policyctl` runs.

A process holds DuckDB's file lock for as long as it has the store open (DuckDB allows one
writing process per file), so other processes wait for it — up to `lock_timeout_s`, then a
clear error — and can never over-admit. While it holds the lock, the buckets live in memory
(the memory store's algorithm, so both agree decision by decision) and are written back in
one transaction with the batched logs on `flush`/`close`: nothing is half-written, and a
failed command leaves the file as it was. A running engine calls `flush` on a timer (its
`flush_interval_s`), so a killed process loses at most that much state; without a timer
(a long CLI run), the deciding thread flushes every `FLUSH_EVERY` acquires, and with one it
only wakes the timer then (`flush_due`): a service's event loop never writes.

`flush` copies the dirty buckets' values under the buckets' lock (one list comprehension:
deciding threads wait no longer than that), builds the rows outside it and writes them
under a separate I/O lock, so a decision never waits for the disk. If DuckDB refuses the
batch (a key it cannot encode), the rows are written again in halves
(`engine.analytics.salvage`): only the refused rows are lost, counted in `refused_rows`
and logged. If the disk refuses the commit (no row's fault),
`flush` raises `StateWriteError` (counted in `write_errors`) and the buckets it held are
dirty again: the next flush writes them. Decisions never wait for, nor depend on, a write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from engine.analytics import schema as analytics
from engine.analytics.records import ConfigRow, DecisionRow, ViolationRow
from engine.analytics.salvage import StateWriteError, in_transaction, write_salvaging
from engine.limits.stores.base import (
    Adjustment,
    BucketCounts,
    ConfigurationError,
    Outcome,
    Quota,
    StoreBusyError,
)
from engine.limits.stores.memory import MemoryStore

FLUSH_EVERY = 10_000  # acquires between write-backs in a long run
BUCKET_TYPES = ("VARCHAR",) * 4 + ("DOUBLE",) * 4
log = logging.getLogger("policyctl.state")

T = TypeVar("T")


def _connect(path: str, timeout_s: float) -> Any:
    import duckdb  # imported lazily: only file-backed state needs it

    deadline = time.monotonic() + timeout_s
    delay = 0.02
    while True:
        try:
            return duckdb.connect(path)
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():  # not a DuckDB file, cannot be created, …
                raise ConfigurationError(f"cannot open state file `{path}`: {err}") from None
            if time.monotonic() >= deadline:
                raise StoreBusyError(
                    f"state file `{path}` is in use by another process; waited {timeout_s:g} s",
                    locked=True,
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


class DuckDBStore(MemoryStore):
    persistent = True

    def __init__(self, path: str, *, lock_timeout_s: float = 10.0) -> None:
        super().__init__(path)
        file = Path(path).expanduser()
        file.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(file)
        self._con = _connect(self.path, lock_timeout_s)
        self._con.execute("BEGIN")
        try:
            analytics.ensure_schema(self._con)
            self._con.execute("COMMIT")
        except Exception:
            self._con.execute("ROLLBACK")
            raise
        self._meta: dict[str, tuple[float, float, float]] = {}  # key -> capacity, rate, used
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._acquires = 0
        # set by a flush timer (`EngineLogs.start`): called, instead of flushing on the
        # deciding thread, when FLUSH_EVERY acquires are due; once until the next flush
        self.flush_due: Callable[[], None] | None = None
        self._due_told = False
        self._io = threading.RLock()  # the connection: one transaction at a time
        self.refused_rows = 0  # rows DuckDB refused on a flush (logged)
        self.write_errors = 0  # flushes the disk refused (raised; their rows kept)
        self._load()

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        rows = self._con.execute(
            "SELECT bucket_key, capacity, rate_per_ms, full_at_ms, last_used_ms"
            " FROM rate_limit_buckets"
        ).fetchall()
        for key, capacity, rate, full_at, used in rows:
            self._full_at[key] = full_at
            self._meta[key] = (capacity, rate, used)
        for scope, key, limit, window, burst, expires in self._con.execute(
            "SELECT scope, key, max_requests, window_ms, burst, expires_at FROM user_quotas"
        ).fetchall():
            self._quotas[(scope, key)] = Quota(scope, key, limit, window, burst, expires)

    # ------------------------------------------------------------------ buckets

    def _take(self, outcome: Outcome, now: float) -> Outcome:
        taken = super()._take(outcome, now)
        spec = outcome.spec
        self._meta[spec.key] = (spec.capacity, spec.rate, now)
        self._dirty.add(spec.key)
        self._deleted.discard(spec.key)
        self._acquires += 1
        return taken

    def _settle(self, adjustment: Adjustment, now: float) -> float:
        applied = super()._settle(adjustment, now)
        key = adjustment[0]
        if key in self._full_at:  # written back with the next flush
            used = self._meta.get(key, (0.0, 0.0, now))[2]
            self._meta[key] = (adjustment[1], adjustment[2], used)
            self._dirty.add(key)
            self._deleted.discard(key)
        else:  # refunded to full: as if absent
            self._dirty.discard(key)
            self._deleted.add(key)
        return applied

    def _maybe_evict(self, now: float) -> None:
        if self._acquires < FLUSH_EVERY:
            return
        if self.flush_due is not None:  # a timer writes: woken, it flushes on its thread
            if not self._due_told:
                self._due_told = True
                self.flush_due()
            return
        # under the buckets' lock: flush only if no other thread is writing (never wait for
        # the I/O lock while holding the buckets' lock: the timer's flush takes them the
        # other way round)
        if self._io.acquire(blocking=False):
            try:
                self.flush()
            finally:
                self._io.release()

    def reset(self, prefix: str) -> int:
        with self._lock:
            keys = [k for k in self._full_at if k.startswith(prefix)]
            for k in keys:
                del self._full_at[k]
                self._dirty.discard(k)
                self._deleted.add(k)
            return len(keys)

    def evict(self, now: float) -> int:
        return self.cleanup(now, idle_ms=0.0)

    def cleanup(self, now: float, idle_ms: float) -> int:
        """Delete buckets that are full and unused for `idle_ms`."""
        with self._lock:
            keys = [
                k
                for k, full_at in self._full_at.items()
                if full_at <= now and now - self._meta.get(k, (0, 0, 0))[2] >= idle_ms
            ]
            for k in keys:
                del self._full_at[k]
                self._dirty.discard(k)
                self._deleted.add(k)
            return len(keys)

    def bucket_counts(self) -> BucketCounts:
        """Every bucket of the file is held (no bound: `cleanup` deletes idle ones)."""
        with self._lock:
            return BucketCounts(len(self._full_at), None, 0, 0, 0)

    def bucket_details(self) -> list[tuple[str, float, float, float, float]]:
        """(key, full_at_ms, capacity, rate_per_ms, last_used_ms) of every stored bucket."""
        with self._lock:
            return sorted(
                (k, v, *self._meta.get(k, (0.0, 0.0, 0.0))) for k, v in self._full_at.items()
            )

    # ------------------------------------------------------------------ quotas

    def set_quota(self, quota: Quota) -> None:
        super().set_quota(quota)
        self._write(
            lambda con: con.execute(
                "INSERT OR REPLACE INTO user_quotas VALUES (?, ?, ?, ?, ?, ?, now())",
                (
                    quota.scope,
                    quota.key,
                    quota.limit,
                    quota.window_ms,
                    quota.burst,
                    quota.expires_at,
                ),
            )
        )

    def remove_quota(self, scope: str, key: str) -> bool:
        removed = super().remove_quota(scope, key)
        self._write(
            lambda con: con.execute(
                "DELETE FROM user_quotas WHERE scope = ? AND key = ?", (scope, key)
            )
        )
        return removed

    # ------------------------------------------------------------------ writing

    @property
    def connection(self) -> Any:
        return self._con

    def _write(self, action: Any) -> None:
        """One transaction on the store's connection. Under the I/O lock: a reload on the
        watcher thread and a flush on the timer thread never share it at once."""
        with self._io:
            con = self._con
            con.execute("BEGIN")
            try:
                action(con)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise

    def read(self, fn: Callable[[Any], T]) -> T:
        """`fn(connection)` under the I/O lock: a read never meets a write-back."""
        with self._io:
            return fn(self._con)

    def write_configs(self, rows: Iterable[ConfigRow]) -> None:
        self._write(lambda con: analytics.write_configs(con, rows))

    def flush(
        self,
        *,
        violations: Sequence[ViolationRow] = (),
        stats: dict[tuple[str, str], tuple[int, int]] | None = None,
        decisions: Sequence[DecisionRow] = (),
    ) -> None:
        """Write dirty buckets and a batch of logs in one transaction (rows DuckDB refuses
        are isolated, counted and logged; the rest is written). `StateWriteError` when the
        disk refuses the commit: nothing of it is written, and the buckets stay dirty."""
        with self._io:
            if self._con is None:
                return
            with self._lock:  # a copy of what changed: decisions wait only for this
                full_at, meta = self._full_at, self._meta
                changed = [(key, full_at.get(key), meta.get(key)) for key in self._dirty]
                deleted = list(self._deleted)
                self._dirty = set()
                self._deleted = set()
                self._acquires = 0
                self._due_told = False
            rows = []  # built outside the lock: deciding threads do not wait for it
            for key, full, kept in changed:
                if full is None or kept is None:
                    continue
                capacity, rate, used = kept
                scope, unit, _window, name = [*key.split("/", 3), "", "", ""][:4]
                rows.append((key, scope, unit, name, capacity, rate, full, used))
            if rows or deleted or violations or stats or decisions:
                try:
                    self._write_back(rows, deleted, violations, stats or {}, decisions)
                except StateWriteError:
                    self._keep_dirty([row[0] for row in rows], deleted)
                    raise

    def _keep_dirty(self, written: list[str], deleted: list[str]) -> None:
        """A write that failed: its buckets are dirty again (as they are now, if a
        decision changed them meanwhile); a deleted one, unless it was taken again."""
        with self._lock:
            self._dirty.update(written)
            self._deleted.update(k for k in deleted if k not in self._full_at)

    def _write_back(
        self,
        buckets: list[tuple[Any, ...]],
        deleted: list[str],
        violations: Sequence[ViolationRow],
        stats: dict[tuple[str, str], tuple[int, int]],
        decisions: Sequence[DecisionRow],
    ) -> None:
        def all_of_it(con: Any) -> None:
            _delete_buckets(con, deleted)
            _write_buckets(con, buckets)
            analytics.write_batch(con, violations=violations, stats=stats, decisions=decisions)

        con = self._con
        failed = in_transaction(con, all_of_it)
        if failed is None:
            return
        if isinstance(failed, StateWriteError):
            self.write_errors += 1
            raise StateWriteError(f"could not write the state file `{self.path}`: {failed}")
        parts: list[tuple[str, Any, Sequence[Any]]] = [
            ("deleted buckets", _delete_buckets, deleted),
            ("buckets", _write_buckets, buckets),
            ("violations", lambda c, r: analytics.write_batch(c, violations=r), violations),
            ("daily stats", lambda c, r: analytics.write_batch(c, stats=dict(r)), [*stats.items()]),
            ("decisions", analytics.write_decisions, decisions),
        ]  # fmt: skip
        for what, write, rows in parts:
            refused, err = write_salvaging(con, write, rows)
            if refused:
                self.refused_rows += len(refused)
                log.warning("could not write %d of %d %s: %s", len(refused), len(rows), what, err)

    def close(self) -> None:
        with self._io:
            if self._con is None:
                return
            try:
                self.flush()  # a StateWriteError here is raised: what it held is lost
            finally:
                self._con.close()
                self._con = None


def _delete_buckets(con: Any, keys: Sequence[str]) -> None:
    if keys:
        con.execute(
            "DELETE FROM rate_limit_buckets WHERE bucket_key IN (SELECT unnest(?::VARCHAR[]))",
            [list(keys)],
        )


def _write_buckets(con: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    analytics.insert_rows(
        con,
        "INSERT OR REPLACE INTO rate_limit_buckets",
        BUCKET_TYPES,
        rows,
        "c0, c1, c2, c3, c4, c5, c6, c7",
    )
