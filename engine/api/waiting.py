"""Waiting instead of refusing: the queues of requests waiting for a limit's tokens.

A request denied only by limits written with `wait up to D`, whose `retry_after_ms` fits
in what is left of its wait, waits in a bounded queue per bucket key (the denying limit's
scope, unit and key) instead of being denied. Waiters are ordered by `priority` (higher
first), then arrival. When the key's retry time comes, the waiter at the head tries again
first (a dry run, then the real decision when it fits); a waiter whose wait runs out gets
the usual decision, a denial with `retry_after_ms` unless the tokens came just then.

Time comes only from the engine's clock: `wake(now)` does what is due at `now`, and
`next_due()` says when the next thing is due. The waiters drive it themselves (an asyncio
waiter `await`s an `asyncio.Event` with a timeout until `next_due`, a blocking one a
`threading.Event`), so no thread is started per waiter and tests drive time with a fake
clock and `wake(now)`. `PolicyEngine.evaluate` never comes here.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from engine.analytics.records import WaitRow
from engine.language.program import Program
from engine.limits.limiter import LimitEvents
from engine.limits.records import LimitDenial
from engine.routing.decision import Decision

if TYPE_CHECKING:  # asyncio is imported by the waiters that use it
    import asyncio

DEFAULT_MAX_WAITERS = 100  # per bucket key; past it a clear denial (`the wait queue is full`)

# decide(env, dry_run, only, explain): one decision on an evaluation environment
Decide = Callable[[dict[str, Any], bool, frozenset[str] | None, bool], Decision]


@dataclass(slots=True)
class Waiter:
    """One request waiting for its tokens."""

    env: dict[str, Any]
    priority: float
    seq: int
    key: str  # the bucket key it waits on: `user/requests/alice`
    since_s: float
    deadline_s: float
    only: frozenset[str] | None
    explain: bool
    notify: Callable[[], None]
    result: Decision | None = None

    def order(self) -> tuple[float, int]:
        return (-self.priority, self.seq)


@dataclass(frozen=True, slots=True)
class WaitStats:
    """The waiting counters (for `/metrics`): since the engine started, but `waiting`."""

    waiting: int  # requests waiting now, over every key
    keys: int  # bucket keys with a waiter
    waited: int  # requests that waited, finished
    admitted: int  # … admitted after waiting
    timed_out: int  # … whose wait ran out (denied, the usual denial)
    queue_full: int  # requests denied at once because their key's queue was full
    wait_seconds: float  # total time the finished waiters waited (engine clock)


@dataclass(slots=True)
class _Queue:
    heap: list[tuple[tuple[float, int], Waiter]] = field(default_factory=list)
    ready_s: float = 0.0  # when the head may try again (the bucket's retry time)


def wait_budget(program: Program, decision: Decision) -> tuple[str, float] | None:
    """(bucket key, wait ms) when `decision` is a denial by limits that all allow waiting
    (`wait up to D`; the shortest wait of them), else None."""
    denied = decision.denied_by
    if (
        decision.allowed
        or not isinstance(denied, LimitDenial)
        or denied.retry_after_ms is None
        or not program.limits
    ):
        return None
    route = program.by_name.get(decision.route or "", program.default_route)
    default = None if route is None else route.settings.wait_ms  # the route's `wait up to D`
    waits = [
        default if lim.wait_ms is None else lim.wait_ms
        for s in decision.rate_limits
        if not s.allowed
        for lim in program.limits
        if lim.scope == s.scope and lim.unit == s.unit and lim.window_ms == s.window_ms
        and (lim.key is None or lim.key == s.key) and not lim.shadow
    ]  # fmt: skip
    if not waits or any(w is None for w in waits):
        return None
    return f"{denied.scope}/{denied.unit}/{denied.key or ''}", min(w for w in waits if w)


def has_waits(program: Program) -> bool:
    """Whether any limit or route of the program lets a request wait (`wait up to D`)."""
    return program.limits != () and (
        any(lim.wait_ms for lim in program.limits)
        or program.default_route.settings.wait_ms is not None
        or any(route.settings.wait_ms for route in program.by_name.values())
    )


class WaitQueues:
    """The waiting requests of one engine, a bounded priority queue per bucket key."""

    def __init__(
        self,
        decide: Decide,
        program: Callable[[], Program],
        clock: Callable[[], float],
        max_waiters: int = DEFAULT_MAX_WAITERS,
    ) -> None:
        self._decide = decide
        self._program = program
        self._clock = clock
        self.max_waiters = max_waiters
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._waited = self._admitted = self._timed_out = self._queue_full = 0
        self._wait_seconds = 0.0
        self.events: LimitEvents | None = None  # the analytics tables' (`rate_limit_waits`)

    # entering -----------------------------------------------------------------

    def enter(
        self,
        env: dict[str, Any],
        timeout_s: float | None,
        only: frozenset[str] | None,
        explain: bool,
        notify: Callable[[], None],
    ) -> Decision | Waiter:
        """The decision now, or the waiter queued for it (`notify` is called once it has
        its `result`)."""
        now = self._clock()
        program = self._program()
        probe = self._decide(env, True, only, explain)
        budget = None if probe.allowed else wait_budget(program, probe)
        if budget is None:
            return self._decide(env, False, only, explain)
        key, wait_ms = budget
        wait_s = wait_ms / 1000.0 if timeout_s is None else min(wait_ms / 1000.0, timeout_s)
        retry_ms = probe.denied_by.retry_after_ms  # type: ignore[union-attr]
        if retry_ms is None or retry_ms / 1000.0 > wait_s:
            return self._decide(env, False, only, explain)  # the usual denial
        with self._lock:
            queue = self._queues.get(key)
            if queue is not None and len(queue.heap) >= self.max_waiters:
                self._queue_full += 1
                denial = self._decide(env, False, only, explain)
                if denial.allowed:  # the tokens came just now
                    return denial
                if self.events is not None:
                    self.events.submit_event(
                        WaitRow(now, env.get("id"), key, float(env.get("priority") or 0.0),
                                0.0, "queue_full")
                    )  # fmt: skip
                return replace(
                    denial,
                    reason=f"{denial.reason}; the wait queue of `{key}` is full"
                    f" ({self.max_waiters} waiting)",
                )
            if queue is None:
                queue = self._queues[key] = _Queue(ready_s=now + retry_ms / 1000.0)
            waiter = Waiter(
                env, float(env.get("priority") or 0.0), next(self._seq), key, now,
                now + wait_s, only, explain, notify,
            )  # fmt: skip
            heapq.heappush(queue.heap, (waiter.order(), waiter))
            self._changed.notify_all()
        return waiter

    # time ---------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When `wake` has something to do next (engine clock, epoch seconds), or None."""
        with self._lock:
            times = [q.ready_s for q in self._queues.values()]
            times += [w.deadline_s for q in self._queues.values() for _, w in q.heap]
        return min(times) if times else None

    def wake(self, now: float) -> int:
        """Do what is due at `now`: the heads whose key's retry time has come try again, in
        priority order; the waiters whose wait has run out get their decision. Returns how
        many waiters finished."""
        done = 0
        with self._lock:
            for key in list(self._queues):
                queue = self._queues[key]
                while queue.heap and queue.ready_s <= now:
                    waiter = queue.heap[0][1]
                    decision = self._decide(waiter.env, True, waiter.only, waiter.explain)
                    if decision.allowed:
                        decision = self._decide(waiter.env, False, waiter.only, waiter.explain)
                        if decision.allowed:
                            heapq.heappop(queue.heap)
                            done += self._finish(waiter, decision, now)
                            continue
                    budget = wait_budget(self._program(), decision)
                    retry = decision.denied_by.retry_after_ms  # type: ignore[union-attr]
                    if budget is None or retry is None:  # no longer a wait (a reload)
                        heapq.heappop(queue.heap)
                        real = self._decide(waiter.env, False, waiter.only, waiter.explain)
                        done += self._finish(waiter, real, now)
                        continue
                    queue.ready_s = now + max(retry, 1) / 1000.0
                    break
                late = [entry for entry in queue.heap if entry[1].deadline_s <= now]
                if late:
                    queue.heap = [entry for entry in queue.heap if entry[1].deadline_s > now]
                    heapq.heapify(queue.heap)
                    for _, waiter in sorted(late, key=lambda e: e[0]):
                        real = self._decide(waiter.env, False, waiter.only, waiter.explain)
                        done += self._finish(waiter, real, now)
                if not queue.heap:
                    del self._queues[key]
            if done:
                self._changed.notify_all()
        return done

    def _finish(self, waiter: Waiter, decision: Decision, now: float) -> int:
        waiter.result = decision
        self._waited += 1
        self._wait_seconds += max(0.0, now - waiter.since_s)
        if decision.allowed:
            self._admitted += 1
        else:
            self._timed_out += 1
        if self.events is not None:
            self.events.submit_event(
                WaitRow(
                    now, waiter.env.get("id"), waiter.key, waiter.priority,
                    max(0.0, now - waiter.since_s) * 1000.0,
                    "admitted" if decision.allowed else "timed_out",
                )
            )  # fmt: skip
        waiter.notify()
        return 1

    # waiting ------------------------------------------------------------------

    async def wait_async(self, waiter: Waiter, event: asyncio.Event) -> Decision:
        """Wait for `waiter`'s decision on the running loop (no thread)."""
        import asyncio

        while waiter.result is None:
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            if timeout is not None and timeout <= 0:
                self.wake(self._clock())
                if waiter.result is not None:
                    break
                await asyncio.sleep(0)  # let other waiters run; the clock decides
                continue
            try:
                await asyncio.wait_for(event.wait(), timeout)
            except TimeoutError:
                self.wake(self._clock())
        return waiter.result

    def wait_blocking(self, waiter: Waiter, event: threading.Event) -> Decision:
        """Wait for `waiter`'s decision, blocking this thread."""
        while waiter.result is None:
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self._clock())
            if (timeout is None or timeout > 0) and event.wait(timeout):
                break
            self.wake(self._clock())
        assert waiter.result is not None
        return waiter.result

    # what is waiting ----------------------------------------------------------

    def depth(self, key: str | None = None) -> int:
        """Requests waiting on `key` (every key: None)."""
        with self._lock:
            if key is not None:
                queue = self._queues.get(key)
                return 0 if queue is None else len(queue.heap)
            return sum(len(q.heap) for q in self._queues.values())

    def until_depth(self, count: int, timeout_s: float) -> bool:
        """Block until `count` requests wait (True), or `timeout_s` passes (False): for a
        caller that must know a blocking waiter is queued (tests, the admin)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.depth() >= count, timeout_s)

    def stats(self) -> WaitStats:
        with self._lock:
            return WaitStats(
                self.depth(), len(self._queues), self._waited, self._admitted,
                self._timed_out, self._queue_full, self._wait_seconds,
            )  # fmt: skip
