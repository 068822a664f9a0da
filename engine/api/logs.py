"""What an engine logs to a persistent state store, batched: one job.

`EngineLogs` exists only for a persistent store. Each decision becomes a `DecisionRow`,
handed to the background writer when there is one (it writes decisions with the outcomes)
or kept here until the next flush. `flush` hands the violations, the daily allowed/denied
tallies, the kept decisions and the buckets to the store in one transaction.

The engine starts a flush timer (`start(interval_s)`, a thread of its own): every
`interval_s` it flushes, so a killed process loses at most that much state, and a decision
never waits for the disk. When the limiter holds `VIOLATIONS_FLUSH_AT` violations (before
its bounded queue drops any), a decision wakes the timer early. Without a running timer
(before `start`, after `stop`), a decision flushes inline every `LOG_FLUSH_EVERY`
decisions or at `VIOLATIONS_FLUSH_AT` violations.

A flush the disk refuses (`StateWriteError`) keeps what it held — violations (the newest
`MAX_VIOLATIONS_KEPT`), daily stats, decisions — and the next flush writes it with what
came since; the store keeps its buckets dirty likewise. The timer logs the failure (at
most every 10 s) and goes on; `flush` raises it.

`AnalyticsLogs` does the same for a store that keeps no logs (memory, Redis): violations
and daily stats go to a DuckDB analytics file instead, where `policyctl ratelimit stats`
and `violations` read them (no decision rows: that would add to every decision's work).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from engine.analytics import schema as analytics
from engine.analytics.records import ConfigRow, DecisionRow, ViolationRow, new_decision_row
from engine.analytics.salvage import StateWriteError
from engine.analytics.writer import OutcomeWriter
from engine.language.program import Program
from engine.limits.limiter import MAX_VIOLATIONS_KEPT, Limiter
from engine.limits.records import LimitDenial
from engine.limits.stores import Store
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.routing.decision import Decision
from engine.vocabulary import CONCURRENT

LOG_FLUSH_EVERY = 10_000  # persistent decisions between writes of stats, violations, buckets
VIOLATIONS_FLUSH_AT = MAX_VIOLATIONS_KEPT // 2
LOG_FAILURES_EVERY_S = 10.0
log = logging.getLogger("policyctl")
T = TypeVar("T")


class EngineLogs:
    def __init__(self, store: Store, limiter: Limiter) -> None:
        self.store = store
        self.limiter = limiter
        self.writer: OutcomeWriter | None = None  # set when the engine has an outcome log
        self._decisions: list[DecisionRow] = []  # kept here when there is no writer
        self._unflushed = 0  # decisions since the last flush
        self._timer: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self.timer_flushes = 0  # flushes the timer ran
        self._flushing = threading.Lock()  # the timer's flush and a caller's, one at a time
        # what a flush the disk refused held, for the next one
        self._held: tuple[list[ViolationRow], dict[tuple[str, str], tuple[int, int]]] = ([], {})
        self._held_decisions: list[DecisionRow] = []
        self._failure_logged = -LOG_FAILURES_EVERY_S

    def decision(self, decision: Decision, at: float, request: str | None = None) -> None:
        """Log one decision (the hot path: one row, no I/O but a flush every so often);
        `request`: what the log keeps of the request (`RequestLog`), on both rows."""
        shadow = decision.shadow
        if shadow is not None:  # logged first, marked, with the served decision's id
            self._row(shadow, at, True, decision.request_id, request)
        self._row(decision, at, None, None, request)

    def _row(
        self,
        decision: Decision,
        at: float,
        shadow: bool | None,
        shadow_of: str | None,
        request: str | None,
    ) -> None:
        denied = decision.denied_by
        if denied is None:
            denied_scope = denied_key = None
        elif isinstance(denied, LimitDenial):
            denied_scope, denied_key = denied.scope, denied.key
        else:
            denied_scope, denied_key = denied.reason, None
        row = new_decision_row((
            at, decision.request_id, decision.allowed, decision.route,
            decision.strategy, decision.provider, decision.model,
            decision.estimated_cost, decision.estimated_latency_ms,
            denied_scope, denied_key, decision.policy_version,
            decision.experiment, decision.arm,
            shadow, shadow_of, request, decision.explored or None,
        ))  # fmt: skip
        if self.writer is not None:  # written in the background, in batches
            self.writer.submit_decision(row)
        else:
            self._decisions.append(row)
        if self._timer is not None:  # the timer writes; wake it before violations drop
            if len(self.limiter.violations) >= VIOLATIONS_FLUSH_AT:
                self._wake.set()
            return
        self._unflushed += 1
        if (
            self._unflushed >= LOG_FLUSH_EVERY
            or len(self.limiter.violations) >= VIOLATIONS_FLUSH_AT
        ):  # daily stats, violations and buckets: before the bounded queue drops any
            self.flush()

    def flush(self) -> None:
        """Hand violations, daily stats (and decisions kept here) to the store; when the
        disk refuses them (`StateWriteError`, raised), keep them for the next flush."""
        with self._flushing:
            self.limiter.sweep_events()  # expired reservations and leases: their rows
            taken, stats = self.limiter.take_logs()
            held_violations, held_stats = self._held
            violations = held_violations + [
                ViolationRow(v.at, v.scope, v.key, v.unit, v.requested, v.available, v.request_id)
                for v in taken
            ]
            for day_scope, (allowed, denied) in held_stats.items():
                more_allowed, more_denied = stats.get(day_scope, (0, 0))
                stats[day_scope] = (allowed + more_allowed, denied + more_denied)
            fresh, self._decisions = self._decisions, []
            decisions = self._held_decisions + fresh
            self._unflushed = 0
            try:
                self._write(violations, stats, decisions)
            except StateWriteError:
                self._held = (violations[-MAX_VIOLATIONS_KEPT:], stats)
                self._held_decisions = decisions[-LOG_FLUSH_EVERY:]
                raise
            self._held, self._held_decisions = ([], {}), []

    def _write(
        self,
        violations: list[ViolationRow],
        stats: dict[tuple[str, str], tuple[int, int]],
        decisions: list[DecisionRow],
    ) -> None:
        self.store.flush(violations=violations, stats=stats, decisions=decisions)

    # ------------------------------------------------------------------ the flush timer

    def start(self, interval_s: float) -> None:
        """Flush every `interval_s` seconds on a thread of its own, until `stop`."""
        if self._timer is not None:
            return
        self._stopping = False
        self._timer = threading.Thread(
            target=self._every, args=(interval_s,), name="policyctl-flush", daemon=True
        )
        self._timer.start()
        if isinstance(self.store, DuckDBStore):  # its FLUSH_EVERY acquires wake this timer
            self.store.flush_due = self._wake.set

    def _every(self, interval_s: float) -> None:
        while True:
            self._wake.wait(interval_s)
            self._wake.clear()
            if self._stopping:
                return
            try:
                self.flush()
                self.timer_flushes += 1
            except StateWriteError as err:  # kept: the next flush writes it
                now = time.monotonic()
                if now - self._failure_logged >= LOG_FAILURES_EVERY_S:
                    self._failure_logged = now
                    log.warning("%s; kept for the next flush", err)
            except Exception:  # a failed flush must never end the timer
                log.exception("could not write the rate-limit state")

    def stop(self) -> None:
        """End the timer (a flush in progress finishes first)."""
        timer, self._timer = self._timer, None
        if isinstance(self.store, DuckDBStore):
            self.store.flush_due = None
        if timer is not None:
            self._stopping = True
            self._wake.set()
            timer.join()


class AnalyticsLogs(EngineLogs):
    """Violations and daily stats into a DuckDB analytics file, for a store without logs."""

    def __init__(self, store: Store, limiter: Limiter, connection: Any) -> None:
        super().__init__(store, limiter)
        self._cursor = connection.cursor()  # its own connection to the analytics database
        self._lock = threading.Lock()

    def decision(self, decision: Decision, at: float, request: str | None = None) -> None:
        """Count one decision (no row): a flush every so often, as `EngineLogs` does."""
        if self._timer is not None:  # the timer writes; wake it before violations drop
            if len(self.limiter.violations) >= VIOLATIONS_FLUSH_AT:
                self._wake.set()
            return
        self._unflushed += 1
        if (
            self._unflushed >= LOG_FLUSH_EVERY
            or len(self.limiter.violations) >= VIOLATIONS_FLUSH_AT
        ):
            self.flush()

    def _write(
        self,
        violations: list[ViolationRow],
        stats: dict[tuple[str, str], tuple[int, int]],
        decisions: list[DecisionRow],
    ) -> None:
        if not violations and not stats and not decisions:
            return
        with self._lock:
            cursor = self._cursor
            cursor.execute("BEGIN")
            try:
                analytics.write_batch(
                    cursor, violations=violations, stats=stats, decisions=decisions
                )
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
            cursor.execute("COMMIT")

    def read(self, fn: Callable[[Any], T]) -> T:
        """`fn(connection)` on the analytics file (what the `ratelimit` queries call)."""
        with self._lock:
            return fn(self._cursor)


def limit_config_rows(program: Program) -> list[ConfigRow]:
    """The policy's limits as `rate_limit_configs` rows (one per id)."""
    rows = [
        ConfigRow(
            id=f"{limit.scope}/{limit.unit}/{limit.window_ms:.0f}/{limit.key or '*'}"
            f"@{limit.location}",
            scope=limit.scope,
            key=limit.key,
            unit=limit.unit,
            max_requests=limit.amount,
            window_ms=limit.window_ms,
            burst=limit.burst,
            until=limit.until,
            source=limit.location,
            shadow=limit.shadow,
            lease_ms=limit.window_ms if limit.unit == CONCURRENT else None,
        )
        for limit in program.limits
    ]
    return list({r.id: r for r in rows}.values())
