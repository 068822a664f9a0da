"""Run the HTTP app under uvicorn: `serve(app, host=…, port=…)`. The one module that
imports uvicorn; `policyctl serve` imports it only when it serves.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM ends `run()` normally (uvicorn re-raises the signal, which
    would skip flushing the logs)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self.handle_exit)
        yield


def serve(app: ASGIApp, *, host: str, port: int) -> None:
    """Serve `app` until SIGINT or SIGTERM, then finish in-flight requests and return."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    _Server(config).run()
