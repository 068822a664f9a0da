"""Watch policy directories with watchdog and call back, debounced. Imported only by
`PolicyEngine.watch`.

Editors save in different ways — write in place, write a temp file and rename it over,
delete and re-create — and often several times in a burst; every such event on a
`.policy` or `.yaml` file (re)starts a short timer, and the callback runs once it expires.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger("policyctl.watch")

WATCHED_SUFFIXES = (".policy", ".yaml", ".yml")


class _Handler(FileSystemEventHandler):
    def __init__(self, poke: Callable[[], None]) -> None:
        self._poke = poke

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(str(p).endswith(WATCHED_SUFFIXES) for p in paths if p):
            self._poke()


class PolicyWatcher:
    def __init__(
        self,
        directories: Sequence[Path],
        on_change: Callable[[], object],
        *,
        debounce_s: float = 0.05,
    ) -> None:
        self._directories = list(directories)
        self._on_change = on_change
        self._debounce_s = debounce_s
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()
        self._observer = Observer()
        self.events = 0  # changes seen (for tests and /metrics)

    def start(self) -> None:
        handler = _Handler(self._poke)
        for directory in self._directories:
            self._observer.schedule(handler, str(directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _poke(self) -> None:
        with self._lock:
            self.events += 1
            if self._timer is not None:
                self._timer.cancel()
            self._timer = threading.Timer(self._debounce_s, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def _fire(self) -> None:
        try:
            self._on_change()
        except Exception:  # a reload must never kill the watcher
            log.exception("policy reload raised")

    def stop(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._observer.stop()
        self._observer.join(timeout=5)
