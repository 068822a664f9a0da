"""The durable logs of a running engine: outcomes, decisions and rate-limit events
(settlements, waits, in-flight releases), written by a background thread in batches.

`submit` (an outcome row), `submit_decision` (a decision row) and `submit_event` (a
`SettlementRow`, `WaitRow` or `InFlightRow`) never block the caller and take no lock: they
append to a bounded deque. When it is full the row is not taken: `submit` returns False
(the caller says so: `record()` returns False, `POST /v1/outcomes` answers 503) and the row
is counted (`dropped`, `dropped_decisions`, `dropped_events`). The writer thread
wakes every `poll_s` (or at once when a deque reaches `batch` rows, or on `flush`/`close`),
and commits what it holds when it has `batch` rows or its oldest row has waited
`interval_s`: a row submitted at t is committed by about t + interval_s + poll_s, however
steady the traffic. Each batch is one transaction and one columnar INSERT per table, so a
process killed mid-stream leaves every committed batch intact. A batch DuckDB refuses is
retried in halves down to single rows (`engine.analytics.salvage`): only the rows it
refuses are lost, counted in `refused`, `refused_decisions` and `refused_events` and
logged. A batch the disk refuses (no row's fault: `salvage` says `StateWriteError`) goes
back to the front of the queue, whole, and is tried again an `interval_s` later (counted
in `failed_writes`, logged at most every 10 s): while it cannot be written the queue
fills, and `submit` refuses rows past `max_queue` as always. `flush` blocks until
everything submitted before it is written, and raises `StateWriteError` if the disk
refused it; `close` drains everything, joins the thread, and raises `StateWriteError` if
rows are left unwritten.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, TypeVar

from engine.analytics import schema as analytics
from engine.analytics.records import DecisionRow, LimitEventRow, OutcomeRow
from engine.analytics.salvage import StateWriteError, in_transaction, write_salvaging

log = logging.getLogger("policyctl.outcomes")
LOG_FAILURES_EVERY_S = 10.0
Row = TypeVar("Row")


class OutcomeWriter:
    def __init__(
        self,
        connection: Any,
        *,
        max_queue: int = 100_000,
        batch: int = 5_000,
        interval_s: float = 0.5,
        poll_s: float = 0.05,
        label: str = "the outcome log",
    ) -> None:
        self._cursor = connection.cursor()  # its own connection to the same database
        self._label = label  # the file, in errors: "the state file `…`"
        self._outcomes: deque[OutcomeRow] = deque()
        self._decisions: deque[DecisionRow] = deque()
        # rate-limit events: settlements, waits, in-flight releases (`submit_event`)
        self._events: deque[LimitEventRow] = deque()
        self._max = max_queue
        self._batch = batch
        self._interval_s = interval_s
        self._poll_s = min(poll_s, interval_s)
        self._wake = threading.Event()
        self._flushes: deque[threading.Event] = deque()
        self._stopping = False
        self.dropped = 0
        self.dropped_decisions = 0
        self.dropped_events = 0
        self.written = 0
        self.written_decisions = 0
        self.written_events = 0
        self.failed_batches = 0  # batches DuckDB refused whole (then salvaged row by row)
        self.refused = 0  # outcome rows DuckDB refused
        self.refused_decisions = 0
        self.refused_events = 0
        self.failed_writes = 0  # batches the disk refused (kept, tried again)
        self._failure: StateWriteError | None = None  # of the last write, if it failed
        self._failure_logged = -LOG_FAILURES_EVERY_S
        self._thread = threading.Thread(target=self._run, name="policyctl-logs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    def submit(self, row: OutcomeRow) -> bool:
        """One outcome row: True when queued, False when the queue is full (not taken)."""
        queued = self._outcomes
        if len(queued) >= self._max:
            self.dropped += 1
            return False
        queued.append(row)
        if len(queued) == self._batch:
            self._wake.set()
        return True

    def reserve(self, rows: int) -> bool:
        """Whether `rows` more outcome rows would be queued now (a caller that must take a
        whole batch or none of it asks first); when not, they count as dropped."""
        if len(self._outcomes) + rows <= self._max:
            return True
        self.dropped += rows
        return False

    def submit_decision(self, row: DecisionRow) -> None:
        """One decision row."""
        queued = self._decisions
        if len(queued) >= self._max:
            self.dropped_decisions += 1
            return
        queued.append(row)
        if len(queued) == self._batch:
            self._wake.set()

    def submit_event(self, row: LimitEventRow) -> None:
        """One rate-limit event row (`SettlementRow`, `WaitRow`, `InFlightRow`); past
        `max_queue` it is not taken, and counted (`dropped_events`)."""
        queued = self._events
        if len(queued) >= self._max:
            self.dropped_events += 1
            return
        queued.append(row)
        if len(queued) == self._batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Rows submitted and not yet taken by the writer."""
        return len(self._outcomes) + len(self._decisions) + len(self._events)

    def flush(self) -> None:
        """Block until everything submitted so far is written."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        done.wait()
        if self._failure is not None:
            raise self._error(self._failure)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._cursor.close()
        if self._failure is not None:  # the last write failed: what it held is lost
            raise self._error(self._failure)

    def _error(self, failure: StateWriteError) -> StateWriteError:
        return StateWriteError(f"could not write {self._label}: {failure}")

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        outcomes: list[OutcomeRow] = []
        decisions: list[DecisionRow] = []
        events: list[LimitEventRow] = []
        oldest = 0.0  # when the oldest row held now was taken
        retry_at = 0.0  # after a write the disk refused: not before (but for flush/close)
        while True:
            self._wake.wait(self._poll_s)
            self._wake.clear()
            stopping = self._stopping
            flushes = []
            while self._flushes:  # taken before draining: their rows are already queued
                flushes.append(self._flushes.popleft())
            moved = (
                _drain(self._outcomes, outcomes)
                + _drain(self._decisions, decisions)
                + _drain(self._events, events)
            )
            now = time.monotonic()
            held = len(outcomes) + len(decisions) + len(events)
            if moved and held == moved:
                oldest = now
            if (
                stopping
                or flushes
                or (now >= retry_at and held >= self._batch)
                or (held and now - oldest >= self._interval_s)
            ):
                self._write(outcomes, decisions, events)
                outcomes, decisions, events = [], [], []
                if self._failure is not None:
                    retry_at = now + self._interval_s
            for done in flushes:
                done.set()
            if stopping:
                return

    def _write(
        self,
        outcomes: list[OutcomeRow],
        decisions: list[DecisionRow],
        events: list[LimitEventRow] | None = None,
    ) -> None:
        events = events or []
        if not outcomes and not decisions and not events:
            return

        def both(cursor: Any) -> None:
            analytics.write_outcomes(cursor, outcomes)
            analytics.write_decisions(cursor, decisions)
            analytics.write_limit_events(cursor, events)

        failed = in_transaction(self._cursor, both)
        if isinstance(failed, StateWriteError):  # kept whole, at the front: tried again
            self._failure = failed
            self.failed_writes += 1
            self._outcomes.extendleft(reversed(outcomes))
            self._decisions.extendleft(reversed(decisions))
            self._events.extendleft(reversed(events))
            now = time.monotonic()
            if now - self._failure_logged >= LOG_FAILURES_EVERY_S:
                self._failure_logged = now
                log.warning(
                    "%s; %d outcomes and %d decisions kept to try again (%d failed writes)",
                    self._error(failed), len(outcomes), len(decisions), self.failed_writes,
                )  # fmt: skip
            return
        self._failure = None
        if failed is not None:  # salvage what DuckDB accepts
            self.failed_batches += 1
            bad_outcomes, err = write_salvaging(self._cursor, analytics.write_outcomes, outcomes)
            bad_decisions, err2 = write_salvaging(
                self._cursor, analytics.write_decisions, decisions
            )
            bad_events, err3 = write_salvaging(self._cursor, analytics.write_limit_events, events)
            self.refused += len(bad_outcomes)
            self.refused_decisions += len(bad_decisions)
            self.refused_events += len(bad_events)
            if bad_events:
                log.warning(
                    "could not write %d of %d rate-limit events: %s",
                    len(bad_events), len(events), err3,
                )  # fmt: skip
            if bad_outcomes or bad_decisions:  # a failed batch is counted, never raised here
                log.warning(
                    "could not write %d of %d outcomes and %d of %d decisions: %s",
                    len(bad_outcomes), len(outcomes), len(bad_decisions), len(decisions),
                    err or err2,
                )  # fmt: skip
            self.written += len(outcomes) - len(bad_outcomes)
            self.written_decisions += len(decisions) - len(bad_decisions)
            self.written_events += len(events) - len(bad_events)
            return
        self.written += len(outcomes)
        self.written_decisions += len(decisions)
        self.written_events += len(events)


def _drain(source: deque[Row], into: list[Row]) -> int:
    """Move what `source` holds now into `into`; how many rows."""
    count = len(source)
    popleft = source.popleft
    for _ in range(count):
        into.append(popleft())
    return count
