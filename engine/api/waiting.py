"""Waiting instead of refusing: the queues of requests waiting for a limit's tokens.

A request denied only by limits written with `wait up to D`, whose turn comes within what
is left of its wait, waits in a bounded queue per bucket key (the denying limit's scope,
unit and key) instead of being denied. Waiters are ordered by `priority` (higher first),
then arrival. When the key's retry time comes, the waiter at the head tries again first (a
dry run, then the real decision when it fits); a waiter whose wait runs out gets the usual
decision, a denial with `retry_after_ms` unless the tokens came just then.

The queues are fair. A request's turn counts the tokens the waiters ahead of it need, at
the bucket's rate: the head's retry time, then each waiter's tokens after it. A request
arriving while a key it draws on has waiters of its priority or higher queues behind them
even when the bucket has its tokens now (`PolicyEngine.evaluate`, which never waits, is
denied instead); only a request of a strictly higher priority than every waiter of the key
takes free tokens at once, since it would be at the head of the queue anyway. A request
whose turn cannot come within its wait is answered at once, with a denial whose
`retry_after_ms` is its turn, and so is a waiter pushed past its wait by a higher-priority
newcomer.

Time comes only from the engine's clock: `wake(now)` does what is due at `now`, and
`next_due()` says when the next thing is due. The waiters drive it themselves (an asyncio
waiter `await`s an `asyncio.Event` with a timeout until `next_due`, a blocking one a
`threading.Event`), so no thread is started per waiter and tests drive time with a fake
clock and `wake(now)`. `PolicyEngine.evaluate` comes here only while some key has a waiter
(`busy`), and a policy without `wait` never has one.

A stop does not wait out the waits: `release()` answers every waiter at once, as if its
wait ran out then, and lets nobody wait afterwards (`policyctl serve` on a signal,
`PolicyEngine.close()`).
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from engine.analytics.records import WaitRow
from engine.language.program import Program
from engine.limits.limiter import LimitEvents
from engine.limits.records import LimitDenial, LimitStatus
from engine.routing.decision import Decision
from engine.vocabulary import DEFAULT_OUTPUT_TOKENS

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
    need: float = 1.0  # what it takes from the key's bucket (requests, tokens or dollars)
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
    shutdown: int  # … denied because the engine stopped (`release`: the usual denial)
    queue_full: int  # requests denied at once because their key's queue was full
    wait_seconds: float  # total time the finished waiters waited (engine clock)


@dataclass(slots=True)
class _Queue:
    heap: list[tuple[tuple[float, int], Waiter]] = field(default_factory=list)
    ready_s: float = 0.0  # when the head may try again (the bucket's retry time)
    rate_per_s: float = 0.0  # the bucket's refill (tokens a second; 0: unknown)

    def ahead_of(self, priority: float) -> list[Waiter]:
        """The waiters a newcomer of `priority` queues behind (priority >= its), in order."""
        return sorted((w for _, w in self.heap if w.priority >= priority), key=Waiter.order)

    def turn_ms(self, ahead: Sequence[Waiter], need: float, retry_ms: float, now: float) -> float:
        """When a request needing `need` (its own retry `retry_ms`) behind `ahead` gets its
        tokens: the head's retry time, then the tokens of the others and its own at the
        bucket's rate; with nobody ahead, its own retry."""
        if not ahead:
            return retry_ms
        head = max(0.0, self.ready_s - now) * 1000.0
        if self.rate_per_s <= 0:
            return head
        tokens = sum(w.need for w in ahead[1:]) + need
        return head + tokens / self.rate_per_s * 1000.0


def bucket_of(status: LimitStatus) -> str:
    """The queue key of a bucket: `user/requests/alice` (`global/requests/`)."""
    return f"{status.scope}/{status.unit}/{status.key or ''}"


def _need(status: LimitStatus, env: dict[str, Any], decision: Decision) -> float:
    """What the request takes from the bucket of `status` (its estimate)."""
    if status.unit == "requests":
        return 1.0
    if status.unit == "tokens":
        max_tokens = env.get("max_tokens")
        out = DEFAULT_OUTPUT_TOKENS if max_tokens is None else max_tokens
        return float(env.get("input_tokens") or 0) + float(out)
    if not status.allowed and status.retry_after_ms is not None and status.window_ms:
        # spend: what the bucket lacked, plus what it had (`remaining` is not rounded)
        return status.remaining + status.retry_after_ms * status.limit / status.window_ms
    return float(decision.estimated_cost or 0.0)


def _rate_per_s(status: LimitStatus) -> float:
    return status.limit / status.window_ms * 1000.0 if status.window_ms else 0.0


def _waits(program: Program, decision: Decision, statuses: Sequence[LimitStatus]) -> float | None:
    """The shortest wait (ms) of the limits behind `statuses`, when they all allow waiting
    (`wait up to D`, theirs or the decision's route's), else None."""
    route = program.by_name.get(decision.route or "", program.default_route)
    default = None if route is None else route.settings.wait_ms  # the route's `wait up to D`
    waits = [
        default if lim.wait_ms is None else lim.wait_ms
        for s in statuses
        for lim in program.limits
        if lim.scope == s.scope and lim.unit == s.unit and lim.window_ms == s.window_ms
        and (lim.key is None or lim.key == s.key) and not lim.shadow
    ]  # fmt: skip
    if not waits or any(w is None for w in waits):
        return None
    return min(w for w in waits if w)


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
    wait_ms = _waits(program, decision, [s for s in decision.rate_limits if not s.allowed])
    if wait_ms is None:
        return None
    return f"{denied.scope}/{denied.unit}/{denied.key or ''}", wait_ms


def has_waits(program: Program) -> bool:
    """Whether any limit or route of the program lets a request wait (`wait up to D`)."""
    return program.limits != () and (
        any(lim.wait_ms for lim in program.limits)
        or program.default_route.settings.wait_ms is not None
        or any(route.settings.wait_ms for route in program.by_name.values())
    )


def queued_denial(
    decision: Decision, status: LimitStatus, key: str, turn_ms: float, ahead: int
) -> Decision:
    """`decision` (a dry run, or the real denial) as the denial of a request whose turn on
    `key` comes in `turn_ms`, behind `ahead` waiters: `retry_after_ms` is that turn."""
    retry = max(1, int(-(-turn_ms // 1)))  # whole ms, rounded up
    denied = LimitDenial(status.scope, status.key, status.unit, retry)
    who = f"{status.scope} `{status.key}`" if status.key else status.scope
    waiting = "request waits" if ahead == 1 else "requests wait"
    blocked = LimitStatus(
        status.scope, status.key, status.unit, False, status.remaining, status.limit,
        status.reset_at, retry, status.window_ms,
    )  # fmt: skip
    return replace(
        decision,
        allowed=False,
        provider=None,
        model=None,
        reason=f"Rate limited by {who} ({status.unit}): retry after {retry} ms"
        f" ({ahead} {waiting} ahead in the queue of `{key}`)",
        estimated_cost=None,
        estimated_latency_ms=None,
        confidence=1.0,
        alternatives=[],
        fallbacks=[],
        rate_limits=[blocked if s is status else s for s in decision.rate_limits],
        denied_by=denied,
        shadow_denials=(),
    )


class WaitQueues:
    """The waiting requests of one engine, a bounded priority queue per bucket key."""

    def __init__(
        self,
        decide: Decide,
        program: Callable[[], Program],
        clock: Callable[[], float],
        max_waiters: int = DEFAULT_MAX_WAITERS,
        denied: Callable[[Decision], None] | None = None,
    ) -> None:
        self._decide = decide
        # a denial made here (the tokens are the waiters'), for the decision log and alerts
        self._denied = denied
        self._program = program
        self._clock = clock
        self.max_waiters = max_waiters
        self._queues: dict[str, _Queue] = {}
        self._seq = itertools.count()
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._waited = self._admitted = self._timed_out = self._queue_full = self._shutdown = 0
        self._released = False  # `release()`: nobody waits from then on
        self._wait_seconds = 0.0
        self.events: LimitEvents | None = None  # the analytics tables' (`rate_limit_waits`)

    @property
    def busy(self) -> bool:
        """Whether some key has a waiter (a newcomer must then mind the queues)."""
        return bool(self._queues)

    # entering -----------------------------------------------------------------

    def _place(
        self, program: Program, probe: Decision, priority: float, now: float
    ) -> tuple[str, LimitStatus, float | None, float] | None:
        """Where `probe`'s request would wait: (bucket key, its status there, its wait in ms
        or None when it cannot wait, its own retry in ms), or None to decide it as usual.
        A request the buckets admit waits only behind waiters of its priority or higher
        (on the key where its turn comes last); a denied one on the key that denied it."""
        if probe.allowed:
            found: tuple[str, LimitStatus, float | None, float] | None = None
            latest = -1.0
            with self._lock:
                for status in probe.rate_limits:
                    key = bucket_of(status)
                    queue = self._queues.get(key)
                    ahead = [] if queue is None else queue.ahead_of(priority)
                    if queue is not None and ahead:
                        last = queue.turn_ms(ahead, 0.0, 0.0, now)
                        if last > latest:
                            found, latest = (key, status, None, 0.0), last
            if found is None:
                return None
            key, status, _, _ = found
            return key, status, _waits(program, probe, [status]), 0.0
        status = next((s for s in probe.rate_limits if not s.allowed), None)
        if status is None or status.retry_after_ms is None:
            return None  # denied by a rule, or larger than the limit: never fits
        budget = wait_budget(program, probe)
        own = float(status.retry_after_ms)
        return bucket_of(status), status, None if budget is None else budget[1], own

    def check(
        self, env: dict[str, Any], only: frozenset[str] | None, explain: bool
    ) -> Decision | None:
        """For a request that does not wait (`evaluate`, `timeout_s=0`): its denial when
        waiters of its priority or higher are queued on a key it draws on (its
        `retry_after_ms` counts them), else None (decide it as usual)."""
        if not self._queues:
            return None
        now = self._clock()
        probe = self._decide(env, True, only, explain)
        place = self._place(self._program(), probe, float(env.get("priority") or 0.0), now)
        if place is None:
            return None
        key, status, _, own_ms = place
        with self._lock:
            queue = self._queues.get(key)
            ahead = [] if queue is None else queue.ahead_of(float(env.get("priority") or 0.0))
            if queue is None or not ahead:
                return None
            turn = queue.turn_ms(ahead, _need(status, env, probe), own_ms, now)
        return self._refuse(env, only, explain, probe, status, key, turn, len(ahead))

    def _refuse(
        self,
        env: dict[str, Any],
        only: frozenset[str] | None,
        explain: bool,
        probe: Decision,
        status: LimitStatus,
        key: str,
        turn_ms: float,
        ahead: int,
    ) -> Decision:
        """The denial of a request whose turn on `key` comes too late: the real decision
        when the buckets deny it now (logged as usual; with waiters ahead, its
        `retry_after_ms` then counts them), else the dry run made a denial (the tokens it
        saw are the waiters')."""
        if probe.allowed:
            denial = queued_denial(probe, status, key, turn_ms, ahead)
            if self._denied is not None:
                self._denied(denial)
            return denial
        real = self._decide(env, False, only, explain)
        if real.allowed or not ahead:
            return real
        mine = next((s for s in real.rate_limits if bucket_of(s) == key and not s.allowed), None)
        if mine is None:  # denied by another bucket first: the usual denial
            return real
        return queued_denial(real, mine, key, turn_ms, ahead)

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
        priority = float(env.get("priority") or 0.0)
        probe = self._decide(env, True, only, explain)
        place = self._place(self._program(), probe, priority, now)
        if place is None:
            return self._decide(env, False, only, explain)
        key, status, wait_ms, own_ms = place
        wait_s = 0.0 if wait_ms is None else wait_ms / 1000.0
        if timeout_s is not None:
            wait_s = min(wait_s, timeout_s)
        need = _need(status, env, probe)
        with self._lock:
            queue = self._queues.get(key)
            ahead = [] if queue is None else queue.ahead_of(priority)
            turn_ms = own_ms if queue is None else queue.turn_ms(ahead, need, own_ms, now)
            full = queue is not None and len(queue.heap) >= self.max_waiters
            if wait_s > 0 and turn_ms / 1000.0 <= wait_s and not full and not self._released:
                if queue is None:
                    queue = self._queues[key] = _Queue()
                if not ahead:  # at the head: the bucket's retry time is its own
                    queue.ready_s = now + own_ms / 1000.0
                if queue.rate_per_s <= 0:
                    queue.rate_per_s = _rate_per_s(status)
                waiter = Waiter(
                    env, priority, next(self._seq), key, now, now + wait_s, only, explain,
                    notify, need,
                )  # fmt: skip
                heapq.heappush(queue.heap, (waiter.order(), waiter))
                self._pushed_past(queue, waiter, now)
                self._changed.notify_all()
                return waiter
            if full and turn_ms / 1000.0 <= wait_s:
                self._queue_full += 1
            else:
                full = False
        if not full:
            return self._refuse(env, only, explain, probe, status, key, turn_ms, len(ahead))
        denial = self._refuse(env, only, explain, probe, status, key, turn_ms, len(ahead))
        if denial.allowed:  # the tokens came just now
            return denial
        if self.events is not None:
            self.events.submit_event(WaitRow(now, env.get("id"), key, priority, 0.0, "queue_full"))
        return replace(
            denial,
            reason=f"{denial.reason}; the wait queue of `{key}` is full"
            f" ({self.max_waiters} waiting)",
        )

    def _pushed_past(self, queue: _Queue, newcomer: Waiter, now: float) -> None:
        """Answer at once the waiters behind `newcomer` whose turn now comes after their
        wait runs out (the caller holds the lock)."""
        line = sorted((w for _, w in queue.heap), key=Waiter.order)
        at = line.index(newcomer)
        if at == len(line) - 1:
            return
        late: list[tuple[Waiter, list[Waiter]]] = []
        kept = line[: at + 1]
        for waiter in line[at + 1 :]:
            turn = queue.turn_ms(kept, waiter.need, 0.0, now)
            if now + turn / 1000.0 > waiter.deadline_s:
                late.append((waiter, list(kept)))
            else:
                kept.append(waiter)
        if not late:
            return
        gone = {id(w) for w, _ in late}
        queue.heap = [entry for entry in queue.heap if id(entry[1]) not in gone]
        heapq.heapify(queue.heap)
        for waiter, ahead in late:
            self._finish(waiter, self._behind(queue, waiter, ahead, now), now)

    def _behind(self, queue: _Queue, waiter: Waiter, ahead: list[Waiter], now: float) -> Decision:
        """The denial of `waiter`, behind `ahead` in `queue`, whose turn comes too late."""
        probe = self._decide(waiter.env, True, waiter.only, waiter.explain)
        status = next((s for s in probe.rate_limits if bucket_of(s) == waiter.key), None)
        if status is None:  # the request no longer draws on the key (a reload)
            return self._decide(waiter.env, False, waiter.only, waiter.explain)
        own = 0.0 if status.allowed else float(status.retry_after_ms or 0)
        turn = queue.turn_ms(ahead, waiter.need, own, now)
        return self._refuse(
            waiter.env, waiter.only, waiter.explain, probe, status, waiter.key, turn, len(ahead)
        )

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
                        done += self._finish(waiter, self._ran_out(queue, waiter, now), now)
                if not queue.heap:
                    del self._queues[key]
            if done:
                self._changed.notify_all()
        return done

    def _ran_out(self, queue: _Queue, waiter: Waiter, now: float) -> Decision:
        """The answer to a waiter whose wait has run out: the usual decision at the head of
        its queue; behind others, a denial counting them (the tokens free now are theirs)."""
        ahead = sorted((w for _, w in queue.heap if w.order() < waiter.order()), key=Waiter.order)
        if not ahead:
            return self._decide(waiter.env, False, waiter.only, waiter.explain)
        return self._behind(queue, waiter, ahead, now)

    def release(self) -> int:
        """Answer every waiter at once, each with the decision it would get had its wait run
        out now (the usual denial with its `retry_after_ms`; admission if its tokens are
        there just then), in priority order, and let no request wait from now on (each is
        decided at once): for a stop, so that no request waits on a server or an engine
        about to close (`policyctl serve` calls it when a signal stops it, and
        `PolicyEngine.close()` before it closes). A waiter denied so counts as `shutdown`,
        not `timed_out`: its wait did not run out. Returns how many waiters were answered."""
        now = self._clock()
        done = 0
        with self._lock:
            self._released = True
            queues, self._queues = self._queues, {}
            line = sorted((w for q in queues.values() for _, w in q.heap), key=Waiter.order)
            for queue in queues.values():
                queue.heap = []
            for waiter in line:  # no one ahead now: the real decision, as when a wait runs out
                decision = self._decide(waiter.env, False, waiter.only, waiter.explain)
                done += self._finish(waiter, decision, now, "shutdown")
            self._changed.notify_all()
        return done

    @property
    def released(self) -> bool:
        """Whether `release()` was called (no request waits)."""
        return self._released

    def _finish(
        self, waiter: Waiter, decision: Decision, now: float, denied: str = "timed_out"
    ) -> int:
        """Give `waiter` its `decision`; counted as `admitted`, else as `denied` (`timed_out`,
        or `shutdown` for `release`)."""
        waiter.result = decision
        self._waited += 1
        self._wait_seconds += max(0.0, now - waiter.since_s)
        outcome = "admitted" if decision.allowed else denied
        if outcome == "admitted":
            self._admitted += 1
        elif outcome == "shutdown":
            self._shutdown += 1
        else:
            self._timed_out += 1
        if self.events is not None:
            self.events.submit_event(
                WaitRow(
                    now, waiter.env.get("id"), waiter.key, waiter.priority,
                    max(0.0, now - waiter.since_s) * 1000.0, outcome,
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
                self._timed_out, self._shutdown, self._queue_full, self._wait_seconds,
            )  # fmt: skip
