"""Watch policy directories with watchdog and reload once the files are quiet. Imported only
by `PolicyEngine.watch`.

Editors save in different ways — write in place, write a temp file and rename it over,
delete and re-create — often several times in a burst, and a slow writer (a `cp` over a
slow disk) writes one file in many pieces. Every event on a `.policy` or `.yaml` file
notes the files' sizes and modification times and (re)starts a `quiet_s` timer. When it
expires, the callback runs only if no file has changed since the last event; otherwise the
timer starts again. So a reload begins `quiet_s` after the last change, never while a
writer that pauses for less than `quiet_s` is still writing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from engine.api.files import WATCHED_SUFFIXES, FileState, file_state

log = logging.getLogger("policyctl.watch")

# watchdog's inotify emitter logs an ERROR when the observer is stopped while its thread is
# reading an event (`queue_events() called when the thread is inactive`): a race inside a
# normal stop, after which it returns without losing anything. Without a logging setup
# Python prints it on stderr, so an app that closes its engine would show an error that is
# none. This filter drops that one message and nothing else.
_STOP_RACE = "called when the thread is inactive"


def _not_the_stop_race(record: logging.LogRecord) -> bool:
    return _STOP_RACE not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_the_stop_race)

DEFAULT_QUIET_S = 0.1


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
        quiet_s: float = DEFAULT_QUIET_S,
    ) -> None:
        self._directories = list(directories)
        self._on_change = on_change
        self._quiet_s = quiet_s
        self._timer: threading.Timer | None = None
        self._seen: FileState | None = None  # the files at the last event
        self._lock = threading.Lock()
        self._observer = Observer()
        self.events = 0  # changes seen (for tests and /metrics)
        self.waits = 0  # quiet windows restarted because a file was still changing

    def start(self) -> None:
        handler = _Handler(self._poke)
        for directory in self._directories:
            self._observer.schedule(handler, str(directory), recursive=False)
        self._observer.daemon = True
        self._observer.start()

    def _poke(self) -> None:
        seen = file_state(self._directories)
        with self._lock:
            self.events += 1
            self._seen = seen
            self._arm()

    def _arm(self) -> None:
        """(Re)start the quiet window (under the lock)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self._quiet_s, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        now = file_state(self._directories)
        with self._lock:
            if threading.current_thread() is not self._timer:  # stopped, or a newer window
                return
            if now != self._seen:  # still changing: wait for a whole quiet window
                self._seen = now
                self.waits += 1
                self._arm()
                return
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
