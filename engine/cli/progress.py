"""Progress on long commands: a rich bar on stderr when it is a terminal, nothing when not.

    with task("importing outcomes", unit="%") as bar:
        bar(37, 100)  # (done, total), from any thread; total None: not known (a pulsing bar)
        bar.summary = f"imported {n:,} outcome rows"
    # on a terminal, at the end: `imported 1,000,000 outcome rows in 5.1 s` on stderr

When stderr is not a terminal (a pipe, a file, a CI log) a bar does nothing at all: no
bar and no summary line, so a script sees exactly what the command printed before. On a
terminal the bar starts at the first call whose total is unknown or at least `min_total`
(a warm start on a few outcomes stays silent); it is cleared when the work ends, and the
summary, with the elapsed time, is printed only if the bar was shown.

The libraries never import this module: they take a plain callback,
`Callable[[int, int | None], None]` (`PolicyEngine(warm_progress=…)`, `simulate(…,
progress=…)`) or `Callable[[int], None]` (`replay(…, progress=…)`), and a `Bar` is one.
Nothing here is on the evaluation path.
"""

from __future__ import annotations

import atexit
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed
        return False


class Bar:
    """What `task` yields: call it with `(done, total)`; set `summary` for the last line."""

    def __init__(self, description: str, unit: str, min_total: int, live: bool) -> None:
        self.description = description
        self.unit = unit
        self.min_total = min_total
        self.live = live  # stderr is a terminal: calls draw
        self.summary: str | None = None
        self.shown = False
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._progress: Any = None  # rich.progress.Progress, once shown
        self._task: Any = None

    def __call__(self, done: int, total: int | None = None) -> None:
        if not self.live:
            return
        with self._lock:
            if self._progress is None:
                if total is not None and total < self.min_total:
                    return
                self._start(total)
            # drawn at once: callers report in coarse steps (every few thousand requests, a
            # tenth of a second), and a fast run would end before the timer drew the first
            self._progress.update(self._task, completed=done, total=total, refresh=True)

    def _start(self, total: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Column

        self._progress = Progress(
            SpinnerColumn(),
            TextColumn(
                "{task.description}",
                table_column=Column(no_wrap=True, overflow="ellipsis", max_width=DESCRIPTION),
            ),
            BarColumn(bar_width=30),
            _count_column(self.unit),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=True,  # cleared at the end: the summary line stays
        )
        self._progress.start()
        atexit.register(self.cancel)  # an error mid-way: the cursor is shown again
        self._task = self._progress.add_task(self.description, total=total)
        self.shown = True

    def finish(self) -> None:
        """Clear the bar; print the summary with the time since the bar was made (or last
        finished) if the bar was shown. The bar can be used again."""
        with self._lock:
            if self._progress is not None:
                self._progress.stop()
                self._progress = None
            if self.shown and self.summary:
                elapsed = time.monotonic() - self.started
                print(f"{self.summary} in {elapsed:.1f} s", file=sys.stderr, flush=True)
            self.shown = False
            self.summary = None
            self.started = time.monotonic()

    def cancel(self) -> None:
        """Clear the bar, print nothing (the work failed: its error says why)."""
        self.summary = None
        self.finish()


class WarmStart(Bar):
    """`PolicyEngine(warm_progress=…)` for `serve` and `eval --state`: shown from
    `WARM_SHOWN` outcomes, and finished by its last call (all outcomes read), so a command
    passes it in one line, with no block around the engine's construction."""

    def __init__(self) -> None:
        super().__init__("warm start, outcomes", "outcomes", WARM_SHOWN, stderr_is_terminal())

    def __call__(self, done: int, total: int | None = None) -> None:
        super().__call__(done, total)
        if total is not None and done >= total:
            self.summary = f"warmed the live metrics from {total:,} outcomes"
            self.finish()


DESCRIPTION = 32  # characters of a bar's description, at most (then `…`)
WARM_SHOWN = 50_000  # a warm start on fewer outcomes takes well under a second: no bar


def _count_column(unit: str) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Count(ProgressColumn):
        """`37%`, or `12,288/60,000`, or `12,288 requests` with no total."""

        def render(self, task: Any) -> Text:
            done = int(task.completed)
            if unit == "%":
                text = f"{done}%" if task.total is not None else ""
            elif task.total is None:
                text = f"{done:,} {unit}"
            else:
                text = f"{done:,}/{int(task.total):,}"  # the unit: in the description
            return Text(text, no_wrap=True, overflow="ellipsis")

    return Count()


@contextmanager
def task(description: str, *, unit: str = "", min_total: int = 0) -> Iterator[Bar]:
    """A progress bar for one piece of long work (see the module's docstring)."""
    bar = Bar(description, unit, min_total, stderr_is_terminal())
    try:
        yield bar
    except BaseException:
        bar.cancel()
        raise
    bar.finish()


@contextmanager
def duckdb_query(con: Any, bar: Bar, interval_s: float = 0.1) -> Iterator[None]:
    """Feed `bar` the percentage of the query `con` is running (DuckDB's own measure,
    polled from a thread) until the block ends; nothing when the bar does not draw.
    DuckDB's own printed bar stays off."""
    if not bar.live:
        yield
        return
    con.execute("SET enable_progress_bar = true")
    con.execute("SET enable_progress_bar_print = false")
    bar(0, 100)
    stop = threading.Event()

    def poll() -> None:
        best = 0
        while not stop.wait(interval_s):
            try:
                found = con.query_progress()
            except Exception:  # the connection is between queries or closing
                continue
            if found >= 0:
                best = max(best, min(int(found), 100))
                bar(best, 100)

    thread = threading.Thread(target=poll, name="policyctl-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    bar(100, 100)
