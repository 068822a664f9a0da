"""How `policyctl serve` logs: every logger it writes to (uvicorn's, policyctl's, the
access log's) on stderr, as text (uvicorn's layout) or one JSON object a line. The
standard library only, so `serve --help` loads no server: uvicorn's text formatter is
named by its dotted path and resolved when the configuration is applied.

The access log is written off the event loop: the loop only puts each line's record on a
bounded queue (`AccessWriter`, the standard library's `QueueHandler`); a writer thread (its
`QueueListener`), under load waking about every 10 ms, formats what queued up meanwhile and
writes it to stderr with one write and one flush. A full queue drops the line and counts
it (`access_lines_dropped()`, `policyctl_access_log_dropped_total`); the writer is stopped
at exit, after the server's last request, and writes every line queued before it returns.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.config
import queue
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Literal, TextIO

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")


@dataclass(frozen=True)
class Logging:
    """What the server logs and how: `policyctl serve --log-level … --log-format …
    --access-log`. `info` is uvicorn's default level; the access log, one line a request
    at INFO on `policyctl.access`, is written when asked whatever the level."""

    level: LogLevel = "info"
    format: LogFormat = "text"
    access_log: bool = False


class JsonFormatter(logging.Formatter):
    """One JSON object a line: `time` (UTC, ISO 8601, milliseconds), `level`, `logger`,
    `message`; an access line adds `method`, `path`, `status`, `duration_ms` and
    `client`; a logged exception adds `exception`, its traceback."""

    def format(self, record: logging.LogRecord) -> str:
        at = datetime.fromtimestamp(record.created, tz=UTC)
        entry: dict[str, Any] = {
            "time": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if isinstance(access, dict):
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def log_config(options: Logging) -> dict[str, Any]:
    """The `logging.config.dictConfig` of `options`: every record to stderr, uvicorn's own
    access log off (the app writes its own, with the duration; `RequestTimer`)."""
    level = options.level.upper()
    formatter: dict[str, Any] = (
        {"()": JsonFormatter}
        if options.format == "json"
        else {
            "()": "uvicorn.logging.DefaultFormatter",
            "fmt": "%(levelprefix)s %(message)s",
            "use_colors": None,  # colour on a terminal only
        }
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": formatter},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "line",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "propagate": False},
            "policyctl": {"handlers": ["stderr"], "level": level, "propagate": False},
            # written when asked, whatever the level (its records propagate to `policyctl`)
            "policyctl.access": {
                "level": "INFO" if options.access_log else "CRITICAL",
                "propagate": True,  # unless the access writer takes its records
            },
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


ACCESS_QUEUE = 10_000  # access lines waiting for the writer thread, at most
BATCH_S = 0.01  # a line is written at most about this late (under load: one write per batch)


@dataclass(frozen=True, slots=True)
class AccessLine:
    """An access line as the event loop hands it to the writer (`access_lane`): the
    record's time, message arguments and fields; the writer thread makes the record."""

    created: float
    args: tuple[object, ...]
    fields: dict[str, object]

    def record(self, logger: str) -> logging.LogRecord:
        record = logging.LogRecord(logger, logging.INFO, "", 0, ACCESS_FORMAT, self.args, None)
        created = self.created  # when the request ended, not when the writer got to it
        record.created = created
        record.msecs = int((created - int(created)) * 1000) + 0.0
        record.relativeCreated = (created - logging._startTime) * 1000  # type: ignore[attr-defined]
        record.access = self.fields
        return record


ACCESS_FORMAT = '%s - "%s %s HTTP/%s" %d %.3fms'


class _DroppingQueueHandler(QueueHandler):
    """Puts a record on the bounded queue as it is (formatted on the writer thread: an
    access record's arguments are strings and numbers); a full queue drops it, counted.
    The queue is a `SimpleQueue` bounded here (`size`): `queue.Queue`'s `put_nowait`, a
    lock and a condition in Python, cost the event loop about 3 µs a line, this about
    0.5."""

    def __init__(self, into: queue.SimpleQueue[logging.LogRecord | AccessLine | None],
                 size: int) -> None:  # fmt: skip
        super().__init__(into)  # type: ignore[arg-type]
        self.size = size
        self.dropped = 0

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord | AccessLine) -> None:  # type: ignore[override]
        into = self.queue
        if into.qsize() >= self.size:
            self.dropped += 1
        else:
            into.put(record)


class _BatchStream(logging.StreamHandler):  # type: ignore[type-arg]
    """The writer thread's handler: lines gathered, then written with one write and one
    flush when the queue is empty (`flush`)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.pending: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self.pending:
                text, self.pending = "".join(self.pending), []
                self.stream.write(text)
            self.stream.flush()


class _BatchListener(QueueListener):
    logger = "policyctl.access"  # the name of the records it makes of `AccessLine`s

    """A `QueueListener` that, finding the queue empty, flushes its handlers (one write),
    then sleeps `BATCH_S` before it waits for the next record: under load it wakes about
    every `BATCH_S` and takes all that queued meanwhile, rather than waking (and taking the
    interpreter from the event loop) for each line; idle, it waits without waking. Its
    stop's sentinel goes in even past the bound."""

    def dequeue(self, block: bool) -> logging.LogRecord | None:
        if block and self.queue.empty():
            for handler in self.handlers:
                handler.flush()
            time.sleep(BATCH_S)
        record: logging.LogRecord | AccessLine | None = self.queue.get(block)
        if isinstance(record, AccessLine):
            return record.record(self.logger)
        return record

    def enqueue_sentinel(self) -> None:
        self.queue.put(self._sentinel)  # past the bound: the handler's, not the queue's

    def stop(self) -> None:
        super().stop()
        for handler in self.handlers:
            handler.flush()


@dataclass
class AccessWriter:
    """The access log's queue and writer thread, once `configure_logging` started them."""

    handler: _DroppingQueueHandler
    listener: _BatchListener
    running: bool = True

    def stop(self) -> None:
        """Write every queued line, then stop the thread (at exit; idempotent)."""
        if self.running:
            self.running = False
            self.listener.stop()


_writer: AccessWriter | None = None


def access_lane(logger: logging.Logger) -> _DroppingQueueHandler | None:
    """The access writer's handler when it is all `logger` (`policyctl.access`) would hand
    an INFO record to (its one handler, no filter, not disabled): the event loop then puts
    an `AccessLine` on its queue, and the writer thread makes the record (`LogRecord`'s
    construction and the logger's dispatch, about half the cost of a line, leave the
    loop). None otherwise (a test's handler, an embedding application's): log as usual."""
    writer = _writer
    if writer is None or not writer.running:
        return None
    handlers = logger.handlers
    handler = writer.handler
    if (
        len(handlers) != 1
        or handlers[0] is not handler
        or logger.filters
        or handler.filters
        or logger.disabled
        or not logger.isEnabledFor(logging.INFO)
        or handler.level > logging.INFO
    ):
        return None
    return handler


def access_lines_dropped() -> int:
    """Access lines the full queue dropped since the writer started (0 without one)."""
    return 0 if _writer is None else _writer.handler.dropped


def configure_logging(options: Logging) -> None:
    global _writer
    if _writer is not None:  # configured again (tests): the previous writer's lines out
        _writer.stop()
        _writer = None
    logging.config.dictConfig(log_config(options))
    # no format here shows a record's thread or process: not looked up for each record
    # (about 2 µs of an access line's record, made on the event loop)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    if options.access_log:
        _writer = start_access_writer(logging.getLogger("policyctl").handlers[0].formatter)


def start_access_writer(
    formatter: logging.Formatter | None,
    *,
    logger: str = "policyctl.access",
    size: int = ACCESS_QUEUE,
    stream: TextIO | None = None,
) -> AccessWriter:
    """`logger`'s records onto a queue of `size`, written to `stream` (stderr) by a thread
    with `formatter`, stopped (its lines written) at exit."""
    lines: queue.SimpleQueue[logging.LogRecord | AccessLine | None] = queue.SimpleQueue()
    batch = _BatchStream(sys.stderr if stream is None else stream)
    batch.setFormatter(formatter)
    handler = _DroppingQueueHandler(lines, size)
    access = logging.getLogger(logger)
    access.handlers = [handler]
    access.propagate = False
    listener = _BatchListener(lines, batch)  # type: ignore[arg-type]
    listener.logger = logger
    listener.start()
    writer = AccessWriter(handler, listener)
    atexit.register(writer.stop)
    return writer
