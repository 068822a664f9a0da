"""Provider health shared by every instance through Redis.

Each instance records outcomes into its queue; a background thread writes them in one
pipeline per batch — per model and time slice, a Redis hash of counts (`n`, `ok`, `cost`
and one field per latency bucket of the same log histogram as the in-process window) —
and reads every model's slices back, so every instance routes on the same view. A
decision reads the last snapshot from memory: no round trip on the hot path. The
snapshot is as fresh as `refresh_s` (default 1 s); `refresh()` does one cycle now.

Consecutive failures (for cooldown) are shared too: `cf` counts them, `lf` holds the time
of the last one; a success resets `cf`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from engine.routing.metrics import MetricsSnapshot, ModelStats, bucket_of, quantiles
from engine.vocabulary import REDIS_CLUSTER_URL_PREFIX

log = logging.getLogger("policyctl.shared_metrics")

PREFIX = "{policyctl}:m:"
SLICES = 24
OUTAGE_LOG_EVERY_S = 60.0  # while Redis is down, one "unavailable" log line per minute


def _client(url: str) -> Any:
    """A client for the state URL: `redis://`, `rediss://`, or a Redis Cluster
    (`redis+cluster://host:port,…`: every key here carries the tag `{policyctl}`, so the
    pipelines go to the one master that owns that slot). The cluster client reads the slot
    map lazily, at the first cycle: a cluster down at start is an error of that cycle."""
    import redis

    if url.startswith(REDIS_CLUSTER_URL_PREFIX):
        from redis.cluster import ClusterNode, RedisCluster

        from engine.limits.stores.redis_cluster_store import parse_cluster_url

        nodes, _ = parse_cluster_url(url)
        return _LazyCluster(
            lambda: RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                socket_timeout=1.0,
                socket_connect_timeout=1.0,
            )
        )
    return redis.Redis.from_url(
        url.split("?", 1)[0], socket_timeout=1.0, socket_connect_timeout=1.0
    )


class _LazyCluster:
    """A `RedisCluster` made on first use (its constructor connects)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make = make
        self._client: Any = None

    def pipeline(self, transaction: bool = False) -> Any:
        if self._client is None:
            self._client = self._make()
        return self._client.pipeline(transaction=transaction)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


class SharedMetrics:
    def __init__(
        self,
        url: str,
        models: Iterable[str],
        *,
        window_s: float = 86_400.0,
        clock: Callable[[], float] = time.time,
        refresh_s: float = 1.0,
        background: bool = True,
    ) -> None:
        import redis

        self.url = url
        self._redis = _client(url)
        self._errors = (
            redis.ConnectionError,
            redis.TimeoutError,
            redis.exceptions.ClusterError,  # a Redis Cluster that is down or failing over
            redis.exceptions.RedisClusterException,
            OSError,
        )
        self.models = list(models)
        self.window_s = window_s
        self.slice_s = max(1, round(window_s / SLICES))  # whole seconds: keys line up
        self.clock = clock
        self._queue: queue.Queue[tuple[str, float, bool, float, float]] = queue.Queue(100_000)
        self._snapshot = MetricsSnapshot({}, 0.0)
        self.dropped = 0
        self.errors = 0
        self._outage_errors = 0  # failed refreshes since the outage began
        self._outage_logged_at: float | None = None  # monotonic time of its last log line
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if background:
            self._refresh_s = refresh_s
            self._thread = threading.Thread(
                target=self._run, name="policyctl-shared-metrics", daemon=True
            )
            self._thread.start()

    # ------------------------------------------------------------------ the view

    @property
    def has_data(self) -> bool:
        return bool(self._snapshot.stats)

    def stats(self, model_key: str) -> ModelStats | None:
        return self._snapshot.stats.get(model_key)

    def snapshot(self) -> MetricsSnapshot:
        """The last snapshot read from Redis (a decision reads it whole)."""
        return self._snapshot

    def record(
        self,
        model_key: str,
        latency_ms: float,
        success: bool,
        cost: float = 0.0,
        at: float | None = None,
    ) -> None:
        """O(1) for the caller: the outcome is queued for the next write."""
        try:
            self._queue.put_nowait(
                (model_key, latency_ms, success, cost, self.clock() if at is None else at)
            )
        except queue.Full:
            self.dropped += 1

    # ------------------------------------------------------------------ the cycle

    def refresh(self) -> None:
        """Write what is queued, then read every model's window (one pipeline each way).

        An outage is logged once when it starts, then at most once per
        `OUTAGE_LOG_EVERY_S` with the count so far, and once when Redis answers again:
        a refresh every second against a Redis that is down must not flood the log.
        """
        with self._lock:
            try:
                self._write()
                self._read()
            except self._errors as err:
                self.errors += 1
                self._outage_errors += 1
                now = time.monotonic()
                if self._outage_logged_at is None or (
                    now - self._outage_logged_at >= OUTAGE_LOG_EVERY_S
                ):
                    self._outage_logged_at = now
                    log.warning(
                        "shared metrics unavailable (%d failed refreshes in this outage, "
                        "%d in all): %s",
                        self._outage_errors,
                        self.errors,
                        err,
                    )
                return
            if self._outage_logged_at is not None:
                log.warning(
                    "shared metrics available again after %d failed refreshes",
                    self._outage_errors,
                )
                self._outage_logged_at = None
                self._outage_errors = 0

    def _write(self) -> None:
        items: list[tuple[str, float, bool, float, float]] = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if not items:
            return
        pipe = self._redis.pipeline(transaction=False)
        ttl = int(self.window_s + self.slice_s) + 1
        for key, latency, success, cost, at in items:
            start = int(at - at % self.slice_s)
            slice_key = f"{PREFIX}{key}:{start}"
            pipe.hincrby(slice_key, "n", 1)
            pipe.hincrby(slice_key, f"b{bucket_of(latency)}", 1)
            if cost:
                pipe.hincrbyfloat(slice_key, "cost", cost)
            health = f"{PREFIX}{key}:health"
            pipe.hset(health, "la", repr(at))
            if success:
                pipe.hincrby(slice_key, "ok", 1)
                pipe.hset(health, "cf", 0)
            else:
                pipe.hincrby(health, "cf", 1)
                pipe.hset(health, "lf", repr(at))
            pipe.expire(slice_key, ttl)
            pipe.expire(health, ttl)
        pipe.execute()

    def _read(self) -> None:
        now = self.clock()
        first = now - self.window_s
        starts = []
        start = int(now - now % self.slice_s)
        while start + self.slice_s > first:
            starts.append(start)
            start -= self.slice_s
        pipe = self._redis.pipeline(transaction=False)
        for key in self.models:
            for start in starts:
                pipe.hgetall(f"{PREFIX}{key}:{start}")
            pipe.hgetall(f"{PREFIX}{key}:health")
        replies = pipe.execute()
        snapshot: dict[str, ModelStats] = {}
        per_model = len(starts) + 1
        for index, key in enumerate(self.models):
            chunk = replies[index * per_model : (index + 1) * per_model]
            counts: dict[int, int] = {}
            n = ok = 0
            cost = 0.0
            for fields in chunk[:-1]:
                for name, value in fields.items():
                    field = name.decode() if isinstance(name, bytes) else name
                    if field == "n":
                        n += int(value)
                    elif field == "ok":
                        ok += int(value)
                    elif field == "cost":
                        cost += float(value)
                    elif field.startswith("b"):
                        bucket = int(field[1:])
                        counts[bucket] = counts.get(bucket, 0) + int(value)
            health = {(k.decode() if isinstance(k, bytes) else k): v for k, v in chunk[-1].items()}
            failures = int(health.get("cf", 0))
            last_failure = float(health.get("lf", 0.0))
            last_outcome = float(health.get("la", 0.0))
            if n == 0 and failures == 0:
                continue
            p50, p95, p99 = quantiles(counts, n) if n else (0.0, 0.0, 0.0)
            snapshot[key] = ModelStats(
                samples=n,
                p50_ms=p50,
                p95_ms=p95,
                p99_ms=p99,
                success_rate=ok / n if n else 1.0,
                avg_cost=cost / n if n else 0.0,
                consecutive_failures=failures,
                last_failure_at=last_failure,
                last_outcome_at=last_outcome,
            )
        self._snapshot = MetricsSnapshot(snapshot, now)

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self.refresh()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(*self._errors):
            self.refresh()  # what was queued last is not lost
        self._redis.close()
