"""Run the HTTP app under uvicorn: `serve(app, sock=listening(host, port), …)`. The one module that
imports uvicorn; `policyctl serve` imports it only when it serves.

A client cannot hold a connection open for nothing: each request must arrive whole (its
headers and body) within `read_timeout_s` of its first byte (or of the connection, for the
first one), an idle kept-alive connection is closed after `keep_alive_s`, and past
`limit_concurrency` open connections or requests in progress a new request is answered
503 at once. `backlog` bounds the connections the kernel queues before they are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import socket
import sys
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import FrameType

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class Limits:
    """How long and how many: `policyctl serve --read-timeout … --keep-alive …
    --limit-concurrency … --backlog …` (the defaults are the command's)."""

    read_timeout_s: float
    keep_alive_s: float
    limit_concurrency: int
    backlog: int


READ_DONE = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED, h11.ERROR)
# The GIL's switch interval while serving (CPython's default: 5 ms). The event loop gives
# the GIL up on every socket call; with a writer thread busy (the DuckDB flush, the
# decision log), each time it took up to a whole interval to get it back, a request at a
# time: the p99 of the DuckDB state was 17 ms against the bare app's 4.
SWITCH_INTERVAL_S = 0.0005


class GatheredWrites:
    """A connection's transport whose writes within one step of the event loop go out as
    one: uvicorn writes a response's head and its body apart (two `send` calls, two TCP
    segments with `TCP_NODELAY`); gathered, a response is one call. The first write of a
    step is held and a flush is scheduled for the end of the step (`call_soon`); a second
    write in the same step (the body, right after the head) sends both at once. `close`
    sends what is held first; everything else is the transport's own."""

    __slots__ = ("_held", "_loop", "_transport", "writes")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self.writes = 0  # calls of the transport's `write`: what gathering saves, counted

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if held is None:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self._held = None
            self.writes += 1
            self._transport.write(held + data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.writes += 1
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def __getattr__(self, name: str) -> object:  # the rest: the transport's own
        return getattr(self._transport, name)


class _ReadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on reading each request, and its writes
    gathered (`GatheredWrites`).

    One timer per connection at most: a request's deadline is a number set when its first
    byte arrives (cleared when it is in), and the timer, when it fires, closes the
    connection only if the deadline it finds has passed, else re-arms itself for it. A
    kept-alive connection's requests create no timer each."""

    read_timeout_s = 10.0  # set by `_protocol`
    _deadline: float | None = None  # loop time by which the request being read must be in
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = GatheredWrites(transport, self.loop)  # type: ignore[assignment]
        self._deadline = self.loop.time() + self.read_timeout_s
        self._arm(self._deadline)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state in READ_DONE:  # the request is in: the handler takes over
            self._deadline = None
        elif self._deadline is None:  # the first bytes of the next request
            self._deadline = self.loop.time() + self.read_timeout_s
            if self._timer is None:
                self._arm(self._deadline)

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        transport = self.transport
        if isinstance(transport, GatheredWrites):  # the WebSocket protocol takes the transport
            transport.flush()
            self.transport = transport._transport
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def _arm(self, at: float) -> None:
        self._timer = self.loop.call_at(at, self._check)

    def _check(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None:  # no request being read: the next one re-arms
            return
        if self.loop.time() < deadline:  # a later request's deadline
            self._arm(deadline)
        elif not self.transport.is_closing():
            self.transport.close()  # a handler waiting for the body sees a disconnect


def _protocol(read_timeout_s: float) -> type[H11Protocol]:
    return type("ReadTimeoutProtocol", (_ReadTimeoutProtocol,), {"read_timeout_s": read_timeout_s})


class _Server(uvicorn.Server):
    """uvicorn, but SIGTERM ends `run()` normally (uvicorn re-raises the signal, which
    would skip flushing the logs), SIGHUP stops as SIGTERM does, and `on_stop` hears of
    the stop when it begins, on the event loop."""

    on_stop: Callable[[], None] | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stopped = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.on_stop is None or self._stopped:
            return
        self._stopped = True
        # a signal handler runs between any two bytecodes of the loop's thread, maybe inside
        # a lock `on_stop` takes (the wait queues'): it runs as the loop's next callback
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self.on_stop)
        else:
            self.on_stop()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # SIGHUP too (a closed terminal, an ssh session gone, a `kill -HUP`): its default
        # ends the process on the spot, losing the acknowledged outcomes not yet written
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self.handle_exit)
        yield


def listening(host: str, port: int) -> socket.socket:
    """A TCP socket bound to `host`:`port` (port 0: a free one), made before the server
    starts, so that a host that does not resolve or an address in use is the caller's error
    to report (`OSError`), and the address served is known (`getsockname()`)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn binds)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def serve(
    app: ASGIApp,
    *,
    sock: socket.socket,
    limits: Limits,
    on_stop: Callable[[], None] | None = None,
) -> None:
    """Serve `app` on `sock` (`listening`) until SIGINT, SIGTERM or SIGHUP, then finish
    in-flight requests and return. `on_stop()` runs on the event loop when the stop begins,
    before the in-flight requests are waited for (`policyctl serve`: the dashboard ends its
    event streams, and the requests waiting for a limit's tokens are answered,
    `WaitQueues.release`). Logging is `engine.service.logconfig`'s: uvicorn's own
    configuration is not applied."""
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=None,
        access_log=False,
        lifespan="off",
        http=_protocol(limits.read_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,  # type: ignore[arg-type]
        limit_concurrency=limits.limit_concurrency,
        backlog=limits.backlog,
    )
    server = _Server(config)
    server.on_stop = on_stop
    # what start-up built (the engine, its policy and catalog, the app) lives as long as
    # the process: out of the collector's sight, so a full collection under load walks
    # only what requests left behind, not all of it (gc.freeze)
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    server.run(sockets=[sock])
