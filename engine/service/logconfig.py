"""How `policyctl serve` logs: every logger it writes to (uvicorn's, policyctl's, the
access log's) on stderr, as text (uvicorn's layout) or one JSON object a line. The
standard library only, so `serve --help` loads no server: uvicorn's text formatter is
named by its dotted path and resolved when the configuration is applied.
"""

from __future__ import annotations

import json
import logging
import logging.config
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

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
            "policyctl.access": {"level": "INFO" if options.access_log else "CRITICAL"},
        },
        "root": {"handlers": ["stderr"], "level": level},
    }


def configure_logging(options: Logging) -> None:
    logging.config.dictConfig(log_config(options))
