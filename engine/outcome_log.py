"""The durable outcome log: a bounded queue and a background thread that writes batches.

`submit` never blocks the caller: when the queue is full the outcome is dropped and
counted (`dropped`). The writer commits a batch every `interval_s` or `batch` rows, each
batch one transaction, so a process killed mid-stream leaves every committed batch intact.
`close` drains the queue and joins the thread.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Sequence
from typing import Any

from engine import analytics

log = logging.getLogger("policyctl.outcomes")

_STOP = object()
_FLUSH = object()


class OutcomeWriter:
    def __init__(
        self,
        connection: Any,
        *,
        max_queue: int = 100_000,
        batch: int = 5_000,
        interval_s: float = 0.5,
    ) -> None:
        self._cursor = connection.cursor()  # its own connection to the same database
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._batch = batch
        self._interval_s = interval_s
        self.dropped = 0
        self.written = 0
        self.failed_batches = 0
        self._thread = threading.Thread(target=self._run, name="policyctl-outcomes", daemon=True)
        self._thread.start()

    def submit(self, row: Sequence[Any]) -> None:
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self.dropped += 1

    def flush(self) -> None:
        """Block until everything submitted so far is written."""
        done = threading.Event()
        self._queue.put((_FLUSH, done))
        done.wait()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._cursor.close()

    def _run(self) -> None:
        pending: list[Sequence[Any]] = []
        while True:
            try:
                item = self._queue.get(timeout=self._interval_s)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write(pending)
                return
            if isinstance(item, tuple) and len(item) == 2 and item[0] is _FLUSH:
                self._write(pending)
                pending = []
                item[1].set()
                continue
            if item is not None:
                pending.append(item)
                if len(pending) < self._batch:
                    continue
            self._write(pending)
            pending = []

    def _write(self, rows: list[Sequence[Any]]) -> None:
        if not rows:
            return
        cursor = self._cursor
        try:
            cursor.execute("BEGIN")
            analytics.write_outcomes(cursor, rows)
            cursor.execute("COMMIT")
            self.written += len(rows)
        except Exception as err:  # a failed batch is counted and logged, never raised here
            self.failed_batches += 1
            log.warning("could not write %d outcomes: %s", len(rows), err)
            with contextlib.suppress(Exception):
                cursor.execute("ROLLBACK")
