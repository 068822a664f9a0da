"""Webhook delivery: notifications POSTed as JSON by one background thread from a bounded
queue, each with a timeout and a few retries; a failure is logged and counted, never
raised, and nothing here is ever waited for by a decision. Standard library only
(`urllib`, with no proxy: a webhook is called directly)."""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.alerts.records import DeliveryStats

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger("policyctl.alerts")

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_RETRIES = 2  # attempts after the first
DEFAULT_BACKOFF_S = 1.0  # before the first retry; doubled for each next one
DEFAULT_QUEUE = 1000
USER_AGENT = "policyctl-alerts"


@dataclass(frozen=True, slots=True)
class _Post:
    url: str
    body: bytes
    what: str  # for the log: `firing: slow openai`


class WebhookSender:
    """Posts queued JSON bodies in order from one daemon thread, started on first use."""

    def __init__(
        self,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retries: int = DEFAULT_RETRIES,
        backoff_s: float = DEFAULT_BACKOFF_S,
        max_queue: int = DEFAULT_QUEUE,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._queue: queue.Queue[_Post | None] = queue.Queue(max_queue)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._opener: urllib.request.OpenerDirector | None = None  # built by the thread
        self.sent = self.failed = self.dropped = self.retried = 0

    def submit(self, url: str, payload: dict[str, object], what: str) -> bool:
        """Queue one POST; False (and counted as dropped) when the queue is full or the
        sender is closed."""
        body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
        with self._lock:
            if self._stop.is_set():
                self.dropped += 1
                return False
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="policyctl-alert-webhook", daemon=True
                )
                self._thread.start()
        try:
            self._queue.put_nowait(_Post(url, body, what))
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook queue is full; dropped %s", what)
            return False
        return True

    def _run(self) -> None:
        while True:
            post = self._queue.get()
            try:
                if post is None:
                    return
                self._deliver(post)
            finally:
                self._queue.task_done()

    def _deliver(self, post: _Post) -> None:
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                if self._stop.wait(delay):  # closing: one last try, no more waiting
                    delay = 0.0
                delay *= 2
            error = self._post(post)
            if error is None:
                self.sent += 1
                return
        self.failed += 1
        log.warning("alert webhook %s failed for %s: %s", _shown(post.url), post.what, error)

    def _post(self, post: _Post) -> str | None:
        """One attempt: None on a 2xx answer, else what went wrong. `urllib.request` is
        imported here, by the sending thread: a run that sends nothing never loads it."""
        import urllib.error
        import urllib.request

        if self._opener is None:
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            post.url,
            data=post.body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT},
        )
        try:
            with self._opener.open(request, timeout=self.timeout_s) as answer:
                answer.read(65536)
                status = answer.status
        except urllib.error.HTTPError as err:
            return f"HTTP {err.code}"
        except (OSError, ValueError) as err:  # refused, timed out, unresolvable, bad URL
            return str(getattr(err, "reason", None) or err)
        return None if 200 <= status < 300 else f"HTTP {status}"

    def flush(self) -> None:
        """Wait until every queued notification is delivered or given up (tests; close)."""
        if self._thread is not None:
            self._queue.join()

    def close(self) -> None:
        """Deliver what is queued (no more backoff waits), then stop the thread."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=self.timeout_s * (self.retries + 2))

    def stats(self) -> DeliveryStats:
        return DeliveryStats(self.sent, self.failed, self.dropped, self.retried,
                             self._queue.qsize())  # fmt: skip


def _shown(url: str) -> str:
    """A URL for the log without its query (a token may be there)."""
    return url.split("?", 1)[0]
