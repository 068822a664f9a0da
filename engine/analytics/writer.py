"""The durable logs of a running engine: outcomes and decisions, written by a background
thread in batches.

`submit` (an outcome row) and `submit_decision` (a decision row) never block the caller and
take no lock: they append to a bounded deque, and when it is full the row is dropped and
counted (`dropped`, `dropped_decisions`). The writer thread wakes every `poll_s` (or at once
when a deque reaches `batch` rows, or on `flush`/`close`), and commits what it holds when it
has `batch` rows or has seen nothing new for `interval_s`: each batch is one transaction
and one columnar INSERT per table, so a process killed mid-stream leaves every committed
batch intact. `flush` blocks until everything submitted before it is written; `close`
drains everything and joins the thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import Any, TypeVar

from engine.analytics import schema as analytics
from engine.analytics.records import DecisionRow, OutcomeRow

log = logging.getLogger("policyctl.outcomes")
Row = TypeVar("Row", OutcomeRow, DecisionRow)


class OutcomeWriter:
    def __init__(
        self,
        connection: Any,
        *,
        max_queue: int = 100_000,
        batch: int = 5_000,
        interval_s: float = 0.5,
        poll_s: float = 0.05,
    ) -> None:
        self._cursor = connection.cursor()  # its own connection to the same database
        self._outcomes: deque[OutcomeRow] = deque()
        self._decisions: deque[DecisionRow] = deque()
        self._max = max_queue
        self._batch = batch
        self._interval_s = interval_s
        self._poll_s = min(poll_s, interval_s)
        self._wake = threading.Event()
        self._flushes: deque[threading.Event] = deque()
        self._stopping = False
        self.dropped = 0
        self.dropped_decisions = 0
        self.written = 0
        self.written_decisions = 0
        self.failed_batches = 0
        self._thread = threading.Thread(target=self._run, name="policyctl-logs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ callers

    def submit(self, row: OutcomeRow) -> None:
        """One outcome row."""
        queued = self._outcomes
        if len(queued) >= self._max:
            self.dropped += 1
            return
        queued.append(row)
        if len(queued) == self._batch:
            self._wake.set()

    def submit_decision(self, row: DecisionRow) -> None:
        """One decision row."""
        queued = self._decisions
        if len(queued) >= self._max:
            self.dropped_decisions += 1
            return
        queued.append(row)
        if len(queued) == self._batch:
            self._wake.set()

    @property
    def queued(self) -> int:
        """Rows submitted and not yet taken by the writer."""
        return len(self._outcomes) + len(self._decisions)

    def flush(self) -> None:
        """Block until everything submitted so far is written."""
        if not self._thread.is_alive():
            return
        done = threading.Event()
        self._flushes.append(done)
        self._wake.set()
        done.wait()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._stopping = True
        self._wake.set()
        self._thread.join()
        self._cursor.close()

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        outcomes: list[OutcomeRow] = []
        decisions: list[DecisionRow] = []
        last_new = time.monotonic()
        while True:
            self._wake.wait(self._poll_s)
            self._wake.clear()
            stopping = self._stopping
            flushes = []
            while self._flushes:  # taken before draining: their rows are already queued
                flushes.append(self._flushes.popleft())
            moved = _drain(self._outcomes, outcomes) + _drain(self._decisions, decisions)
            now = time.monotonic()
            if moved:
                last_new = now
            held = len(outcomes) + len(decisions)
            if (
                stopping
                or flushes
                or held >= self._batch
                or (held and now - last_new >= self._interval_s)
            ):
                self._write(outcomes, decisions)
                outcomes, decisions = [], []
            for done in flushes:
                done.set()
            if stopping:
                return

    def _write(self, outcomes: list[OutcomeRow], decisions: list[DecisionRow]) -> None:
        if not outcomes and not decisions:
            return
        cursor = self._cursor
        try:
            cursor.execute("BEGIN")
            analytics.write_outcomes(cursor, outcomes)
            analytics.write_decisions(cursor, decisions)
            cursor.execute("COMMIT")
            self.written += len(outcomes)
            self.written_decisions += len(decisions)
        except Exception as err:  # a failed batch is counted and logged, never raised here
            self.failed_batches += 1
            log.warning(
                "could not write %d outcomes and %d decisions: %s",
                len(outcomes), len(decisions), err,
            )  # fmt: skip
            with contextlib.suppress(Exception):
                cursor.execute("ROLLBACK")


def _drain(source: deque[Row], into: list[Row]) -> int:
    """Move what `source` holds now into `into`; how many rows."""
    count = len(source)
    popleft = source.popleft
    for _ in range(count):
        into.append(popleft())
    return count
