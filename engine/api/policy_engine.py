"""PolicyEngine: load and compile a policy set, then turn requests into decisions.

    from engine import PolicyEngine
    engine = PolicyEngine()                       # the packaged default policy set
    decision = engine.evaluate({"id": "r1", "user": "alice", "prompt": "hi"})
    decision.provider, decision.model, decision.reason

The compiled Program is immutable; evaluations read `self._program` once, so a future
reload can swap it with one reference assignment.
"""

from __future__ import annotations

import logging
import operator
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.alerts.monitor import AlertMonitor
from engine.alerts.records import AlertStatus
from engine.analytics.records import bad_value, cached_problem, new_outcome_row, unknown_model
from engine.analytics.salvage import StateWriteError
from engine.analytics.schema import key_salt, recent_outcomes
from engine.analytics.writer import OutcomeWriter
from engine.api.files import file_state
from engine.api.logs import AnalyticsLogs, EngineLogs, limit_config_rows
from engine.api.waiting import Waiter, WaitQueues, has_waits
from engine.catalog.model import CatalogError
from engine.diagnostics import Diagnostic, PolicyError
from engine.errors import EXIT_ERROR, PolicyctlError
from engine.language.loader import Loaded, compile_sources, load_policy
from engine.language.program import Program
from engine.limits.limiter import DEFAULT_SETTLE_WITHIN_S, Limiter
from engine.limits.stores import (
    DEFAULT_LOCK_WAIT_S,
    ConfigurationError,
    Store,
    open_analytics,
    open_store,
)
from engine.limits.stores.base import Persistence
from engine.resources import default_policy_dir
from engine.routing.decision import Decision
from engine.routing.evaluator import (
    DEFAULT_MAX_PINS,
    EvalState,
    Lean,
    PinTable,
    evaluate,
    evaluate_lean,
    lean_of,
)
from engine.routing.metrics import (
    DEFAULT_REFRESH_MS,
    ClosableMetrics,
    LiveMetrics,
    MetricsView,
    RecordingMetrics,
)
from engine.routing.request import env_of
from engine.routing.request_log import RequestLog
from engine.routing.shared_pins import SharedPins, shared_pins
from engine.vocabulary import LOG_REQUESTS, SHARED_HEALTH_URL_PREFIXES
from engine.wire.features import Conversation
from engine.wire.plugins import rediscover

if TYPE_CHECKING:
    from engine.api.watch import PolicyWatcher
    from engine.routing.request_model import Request

log = logging.getLogger("policyctl")
DEFAULT_FLUSH_INTERVAL_S = 1.0  # state, violations and stats reach the file this often
DEFAULT_OUTCOME_QUEUE = 100_000  # outcomes waiting to be written, at most
DEFAULT_QUIET_MS = 100.0  # a changed policy file must keep still this long before a reload
REDIS_SCHEMES = SHARED_HEALTH_URL_PREFIXES  # health shared through Redis


class EngineClosedError(PolicyctlError, RuntimeError, exit_code=EXIT_ERROR):
    """A decision or an outcome asked of a closed `PolicyEngine`: its logs and state store
    are shut, so what it decided or was told could not be kept (as a closed file refuses a
    write)."""

    def __init__(self, action: str) -> None:
        super().__init__(
            f"cannot {action}: this PolicyEngine is closed (its logs and state are written"
            " and shut); make a new one"
        )


class PolicyEngine:
    def __init__(
        self,
        policy: str | os.PathLike[str] | None = None,
        *,
        state: str | Store = "memory://",
        clock: Callable[[], float] = time.time,
        metrics: MetricsView | None = None,
        outcomes: str | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        outcome_queue: int = DEFAULT_OUTCOME_QUEUE,
        analytics: str | None = None,
        metrics_refresh_ms: float = DEFAULT_REFRESH_MS,
        log_requests: str = "features",
        hash_keys: bool = False,
        warm_progress: Callable[[int, int | None], None] | None = None,
        affinity_pins: int = DEFAULT_MAX_PINS,
        settle_within_s: float = DEFAULT_SETTLE_WITHIN_S,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    ) -> None:
        """`policy`: a `.policy` file or a directory of them; None for the packaged defaults.
        `state`: where rate-limit buckets live (`memory://`, a DuckDB file, or a Store).
        `clock`: epoch seconds; tests pass a fake one.
        `outcomes`: a DuckDB file for the outcome log (default: the state file, if it is one);
        the live metrics window is warmed from it at start.
        `flush_interval_s`: with a DuckDB state file, a timer thread writes the buckets,
        violations and daily stats this often (a killed process loses at most this much);
        queued outcomes and decisions reach the file within about the same time.
        `outcome_queue`: outcomes waiting to be written, at most; past it `record()` returns
        False and `POST /v1/outcomes` answers 503.
        `analytics`: a DuckDB file for the rate-limit violations and daily stats when
        `state` keeps no logs (memory, Redis); a DuckDB state file keeps its own.
        `metrics_refresh_ms`: a decision routes on live measurements at most this old (the
        in-memory window's snapshot; 0: every outcome recorded before it, docs/metrics.md).
        `log_requests`: what the decision log (a DuckDB state file) keeps of each request:
        `off`, `features` (what routing read, never the prompt text) or `full` (the body too);
        `hash_keys`: user and IP keys in it hashed with the state file's salt.
        `warm_progress`: called as `(outcomes read, outcomes to read)` while the live window
        is warmed from the outcome log (the CLI's progress bar; the engine prints nothing).
        `affinity_pins`: the `affinity` pins kept in memory, at most (the least recently
        used are dropped first). On Redis state the pins are shared by every instance on
        it, and those kept in memory are this instance's fallback while Redis fails.
        `settle_within_s`: a token or spend reservation whose outcome has not come by then
        (on `clock`) expires, and its estimate stands (docs/ratelimits.md, Reserve, then
        settle).
        `lock_wait_s`: how long opening a DuckDB file (the state, `outcomes`, `analytics`)
        that another process holds waits for it before `StoreBusyError`.

        Raises `PolicyError` (every diagnostic, rendered in `str(err)`) if it does not check.
        """
        settle_within_s = _settle_within(settle_within_s)  # before anything is opened
        self._policy_path = None if policy is None else Path(policy)
        self._setup(
            load_policy(policy, clock()), state, clock, metrics, outcomes, flush_interval_s,
            outcome_queue, analytics, metrics_refresh_ms, log_requests, hash_keys, warm_progress,
            lock_wait_s,
        )  # fmt: skip
        self._state.pins = shared_pins(self.store, PinTable(affinity_pins))
        self.limiter.settle_within_s = settle_within_s

    @classmethod
    def from_text(
        cls,
        text: str,
        name: str = "<policy>",
        *,
        state: str | Store = "memory://",
        clock: Callable[[], float] = time.time,
        metrics: MetricsView | None = None,
        outcomes: str | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        outcome_queue: int = DEFAULT_OUTCOME_QUEUE,
        analytics: str | None = None,
        metrics_refresh_ms: float = DEFAULT_REFRESH_MS,
        log_requests: str = "features",
        hash_keys: bool = False,
        warm_progress: Callable[[int, int | None], None] | None = None,
        affinity_pins: int = DEFAULT_MAX_PINS,
        settle_within_s: float = DEFAULT_SETTLE_WITHIN_S,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    ) -> PolicyEngine:
        """An engine from policy text (a `catalog` path is relative to the working directory)."""
        settle_within_s = _settle_within(settle_within_s)  # before anything is opened
        engine = cls.__new__(cls)
        engine._policy_path = None
        engine._from_text = True
        engine._setup(
            compile_sources([(name, text)], now=clock()),
            state, clock, metrics, outcomes, flush_interval_s, outcome_queue, analytics,
            metrics_refresh_ms, log_requests, hash_keys, warm_progress, lock_wait_s,
        )  # fmt: skip
        engine._state.pins = shared_pins(engine.store, PinTable(affinity_pins))
        engine.limiter.settle_within_s = settle_within_s
        return engine

    def _setup(
        self,
        loaded: Loaded,
        state: str | Store,
        clock: Callable[[], float],
        metrics: MetricsView | None,
        outcomes: str | None = None,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        outcome_queue: int = DEFAULT_OUTCOME_QUEUE,
        analytics: str | None = None,
        metrics_refresh_ms: float = DEFAULT_REFRESH_MS,
        log_requests: str = "features",
        hash_keys: bool = False,
        warm_progress: Callable[[int, int | None], None] | None = None,
        lock_wait_s: float = DEFAULT_LOCK_WAIT_S,
    ) -> None:
        if log_requests not in LOG_REQUESTS:
            raise ValueError(f"log_requests must be one of {', '.join(LOG_REQUESTS)}")
        if not (isinstance(flush_interval_s, int | float) and 0 < flush_interval_s < INF):
            raise ValueError(f"flush_interval_s must be positive, got {flush_interval_s!r}")
        self._program = loaded.program
        self.warnings: tuple[Diagnostic, ...] = loaded.warnings
        self.loaded_at = clock()
        self.last_reload_error: str | None = None
        self.closed = False  # `close()` sets it: no decision or outcome is taken after
        self.reloads = 0
        self.reload_errors = 0
        self._reload_lock = threading.Lock()
        self._watcher: PolicyWatcher | None = None
        if not hasattr(self, "_from_text"):
            self._from_text = False
        window_s = self._program.default_route.settings.window_ms / 1000.0
        if metrics is None and isinstance(state, str) and state.startswith(REDIS_SCHEMES):
            from engine.routing.shared_health import SharedMetrics  # health shared through Redis

            metrics = SharedMetrics(
                state,
                [m.key for m in self._program.catalog.models],
                window_s=window_s,
                clock=clock,
            )
        self.metrics: MetricsView = metrics or LiveMetrics(window_s, clock, metrics_refresh_ms)
        self._record_metric = (
            self.metrics.record if isinstance(self.metrics, RecordingMetrics) else None
        )
        self._state = EvalState()
        # the `alert` statements, evaluated by `alert_monitor.tick` (off the hot path)
        self.alert_monitor = AlertMonitor(self._program.alerts, self._program.version)
        self.store: Store = (
            open_store(state, lock_timeout_s=lock_wait_s) if isinstance(state, str) else state
        )
        self.clock = clock
        self.limiter = Limiter(self.store, clock)
        self.limiter.prepare(self._program.limits)
        self._logs = EngineLogs(self.store, self.limiter) if self.store.persistent else None
        self.analytics: AnalyticsLogs | None = None  # where violations and stats go instead
        if analytics is not None and self.store.persistent:
            self._close_state()
            raise ConfigurationError(
                f"an analytics file (`{analytics}`) is for a memory or Redis state store;"
                f" the DuckDB state file `{self.store.url}` keeps its own logs"
            )
        if isinstance(self.store, Persistence):
            self.store.write_configs(limit_config_rows(self._program))
        self._own_connection: Any = None
        self.outcome_log: OutcomeWriter | None = None
        connection = self.store.connection if isinstance(self.store, Persistence) else None
        label = f"the state file `{self.store.url}`"
        if outcomes is not None:
            self._own_connection = connection = open_analytics(outcomes, lock_timeout_s=lock_wait_s)
            label = f"the outcome log `{outcomes}`"
        self._analytics_connection: Any = None
        if analytics is not None:
            if analytics != outcomes:
                try:
                    self._analytics_connection = open_analytics(
                        analytics, lock_timeout_s=lock_wait_s
                    )
                except BaseException:  # busy or unreadable: nothing stays open
                    self._close_state()
                    if self._own_connection is not None:
                        self._own_connection.close()
                    raise
            log_connection = self._analytics_connection or connection  # one file: shared
            self._logs = self.analytics = AnalyticsLogs(self.store, self.limiter, log_connection)
        # what the decision log keeps of each request: only where decisions are logged
        self._request_log: RequestLog | None = None
        if log_requests != "off" and isinstance(self._logs, EngineLogs) and self.analytics is None:
            salt = key_salt(self.store.connection) if hash_keys else None  # type: ignore[attr-defined]
            self._request_log = _request_log(log_requests, self._program, salt)
        if connection is not None:
            self._warm_start(connection, window_s, warm_progress)
            self.outcome_log = OutcomeWriter(
                connection, max_queue=outcome_queue, interval_s=flush_interval_s / 2, label=label
            )
            if self._logs is not None:
                self._logs.writer = self.outcome_log
        # the rate-limit events (settlements, waits, in-flight releases) go where the
        # violations go: the state file, else the analytics file (none: no events made)
        self._event_log: OutcomeWriter | None = None  # a writer of their own, if needed
        events_at = self.store.connection if isinstance(self.store, Persistence) else None
        label = f"the state file `{self.store.url}`"
        if self.analytics is not None:
            events_at = self._analytics_connection or connection
            label = f"the analytics file `{analytics}`"
        if events_at is not None:
            if self.outcome_log is not None and events_at is connection:
                self.limiter.events = self.outcome_log
            else:
                self.limiter.events = self._event_log = OutcomeWriter(
                    events_at, max_queue=outcome_queue, interval_s=flush_interval_s / 2,
                    label=label,
                )  # fmt: skip
        if self._logs is not None:
            self._logs.start(flush_interval_s)

    def _warm_start(
        self,
        connection: Any,
        window_s: float,
        progress: Callable[[int, int | None], None] | None = None,
    ) -> None:
        """Fill the live window from the outcome log (what happened in the last window).
        `progress(done, total)`: told once the rows are read, then every 65,536 rows."""
        if not isinstance(self.metrics, RecordingMetrics):
            return
        record = self.metrics.record
        catalog = self._program.catalog
        rows = recent_outcomes(connection, self.clock() - window_s)
        total = len(rows)
        for n, (at, provider, model, latency, success, cost) in enumerate(rows):
            if progress is not None and not n & 0xFFFF:
                progress(n, total)
            found = catalog.find(provider, model)
            if found is not None:
                record(found.key, latency, bool(success), cost, at)
        if progress is not None:
            progress(total, total)

    # ------------------------------------------------------------------ reload

    def reload(self) -> bool:
        """Compile the policy set again, aside; swap it in only if it checks. The installed
        classifier plugins are listed again first (`engine.wire.plugins.rediscover`).

        A broken edit keeps the last good policy serving: the error (file:line:col and
        message) is kept in `last_reload_error`, logged, and counted. Returns True on a swap.
        """
        if self._from_text:
            raise RuntimeError("an engine built from text has no files to reload")
        with self._reload_lock:
            directories = self._policy_directories()
            before = file_state(directories)
            added = rediscover()  # classifier plugins installed since: no restart needed
            if added:
                log.info("classifier plugins found: %s", ", ".join(added))
            try:
                loaded = load_policy(self._policy_path, self.clock())
            except (PolicyError, CatalogError) as err:
                if file_state(directories) != before:
                    return self._changed_while_reading()
                self.last_reload_error = str(err)  # before the count: a poller that sees
                self.reload_errors += 1  # the count move reads this error
                log.warning("policy reload failed; keeping version %s:\n%s", self.version, err)
                return False
            if file_state(directories) != before:  # read mid-write: not a version to serve
                return self._changed_while_reading()
            changed = loaded.program.version != self._program.version
            window_ms = loaded.program.default_route.settings.window_ms
            if window_ms != self._program.default_route.settings.window_ms:
                log.warning(
                    "the metrics window changed to %s ms; the running window is kept until"
                    " a restart",
                    f"{window_ms:.0f}",
                )
            self._program = loaded.program  # one reference: evaluations read one snapshot
            self.limiter.prepare(loaded.program.limits)
            self.alert_monitor.load(loaded.program.alerts, loaded.program.version)
            kept = self._request_log
            if kept is not None:  # the metadata keys and prompt features the new policy reads
                self._request_log = _request_log(kept.mode, loaded.program, kept.salt)
            self.warnings = loaded.warnings
            self.last_reload_error = None
            self.loaded_at = self.clock()
            self.reloads += 1
            if changed:
                if isinstance(self.store, Persistence):
                    self.store.write_configs(limit_config_rows(loaded.program))
                log.info("policy reloaded: version %s", loaded.program.version)
            return True

    def _changed_while_reading(self) -> bool:
        log.info("policy files changed while being read; keeping version %s", self.version)
        return False  # the watcher sees the change and reloads once the files are quiet

    def _policy_directories(self) -> list[Path]:
        """The directories whose `.policy`/`.yaml` files make the policy set: the policy's,
        the catalog's, and the directory outside the policy's that a file really is in (a
        symlink to a file elsewhere: it changes there, where a watch on the policy directory
        sees nothing; a link within it, as a Kubernetes ConfigMap's `..data`, is seen)."""
        policy = self._policy_path if self._policy_path is not None else default_policy_dir()
        home = policy if policy.is_dir() else policy.parent
        inside = home.resolve()
        directories = {inside: home}  # each directory once, by where it really is
        directories.setdefault(Path(self._program.catalog.source).resolve().parent, None)
        for name in self._program.files:
            real = Path(name).resolve().parent
            if not real.is_relative_to(inside):
                directories.setdefault(real, None)
        return sorted(given or real for real, given in directories.items())

    def policy_status(self) -> dict[str, Any]:
        """What `GET /v1/policy` shows: the serving version, its files, the last error."""
        program = self._program
        return {
            "version": program.version,
            "files": list(program.files),
            "catalog": program.catalog.source,
            "loaded_at": self.loaded_at,
            "reloads": self.reloads,
            "reload_errors": self.reload_errors,
            "last_error": self.last_reload_error,
            "watching": self._watcher is not None,
        }

    def watch(self, *, quiet_ms: float = DEFAULT_QUIET_MS) -> None:
        """Reload on changes to the policy files or the catalog (a watchdog observer), once
        every changed file has kept its size and modification time for `quiet_ms`
        milliseconds. Save by renaming a complete file over the old one (what most editors
        and `mv` do) to be fully safe: a writer that pauses longer than `quiet_ms` in the
        middle of a file can still show a prefix that parses."""
        if self._from_text:
            raise RuntimeError("an engine built from text has no files to watch")
        if not (isinstance(quiet_ms, int | float) and 0 <= quiet_ms < INF):
            raise ValueError(f"quiet_ms must be a number >= 0, got {quiet_ms!r}")
        if self._watcher is not None:
            return
        from engine.api.watch import PolicyWatcher  # the only path that imports watchdog

        self._watcher = PolicyWatcher(
            self._policy_directories(), self.reload, quiet_s=quiet_ms / 1000.0
        )
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching (the observer thread ends cleanly)."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    def flush(self) -> None:
        """Write the batched logs (decisions, outcomes, violations, daily stats) and the
        buckets to a persistent store; returns when they are committed."""
        self.limiter.sweep_events()  # expired reservations and leases: their rows first
        if self.outcome_log is not None:
            self.outcome_log.flush()
        if self._event_log is not None:
            self._event_log.flush()
        if self._logs is not None:
            self._logs.flush()

    def alerts(self) -> tuple[AlertStatus, ...]:
        """The state of every `alert` of the policy (per key for one split by a key), as of
        the last `alert_monitor.tick`: what the dashboard and `/metrics` show."""
        return self.alert_monitor.statuses()

    def start_alerts(self, webhook: str | None = None, interval_s: float = 1.0) -> None:
        """Evaluate the alerts every `interval_s` seconds in a background thread, on this
        engine's clock; `webhook`: where alerts without `to "URL"` are posted (None: the
        log only). `close()` stops it. Tests call `alert_monitor.tick(now)` instead."""
        self.alert_monitor.configure(webhook)
        self.alert_monitor.start(self.clock, interval_s)

    def close(self) -> None:
        """Stop watching, flush the logs (outcomes included) and close the state store.
        Everything is closed even when a write fails; then the first `StateWriteError`
        is raised (what could not be written is lost). A closed engine takes no decision
        or outcome (`EngineClosedError`): they could no longer be logged. The requests
        waiting for a limit's tokens are answered first (`WaitQueues.release`: the denial
        they would get had their wait run out), so none waits on a closed engine. Closing
        twice does nothing more."""
        waiters: WaitQueues | None = self.__dict__.get("_waiters")
        if waiters is not None and not self.closed:  # their decisions, while it still decides
            waiters.release()
        self.closed = True
        self.stop()
        self.alert_monitor.close()
        if self._logs is not None:
            self._logs.stop()
        writes: list[Callable[[], None]] = []
        self.limiter.sweep_events()  # expired reservations and leases: their rows first
        self.limiter.events = None  # ... and no more rows: the writers close below
        if self.outcome_log is not None:
            writes.append(self.outcome_log.close)
        if self._event_log is not None:
            writes.append(self._event_log.close)
        if self._logs is not None:
            writes.append(self._logs.flush)
        failed: list[StateWriteError] = []
        try:
            for write in writes:
                try:
                    write()
                except StateWriteError as err:
                    failed.append(err)
        finally:
            try:
                self._close_state()
            except StateWriteError as err:
                failed.append(err)
            finally:
                for owned in (self._own_connection, self._analytics_connection):
                    if owned is not None:
                        owned.close()
                self._own_connection = self._analytics_connection = None
        if failed:
            raise failed[0]

    def _close_state(self) -> None:
        if isinstance(self.metrics, ClosableMetrics):
            self.metrics.close()
        self.store.close()

    def __enter__(self) -> PolicyEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def program(self) -> Program:
        return self._program

    @property
    def version(self) -> str:
        return self._program.version

    @property
    def pin_errors(self) -> int:
        """Store calls for a shared affinity pin that failed (Redis state), each decision
        then routed on this instance's own pins (docs/redis.md)."""
        pins = self._state.pins
        return pins.errors if isinstance(pins, SharedPins) else 0

    @property
    def events_dropped(self) -> int:
        """Rate-limit analytics events (settlements, waits, in-flight releases) the full
        writer queue dropped (0 without analytics)."""
        writers = {id(w): w for w in (self.outcome_log, self._event_log) if w is not None}
        return sum(w.dropped_events for w in writers.values())

    def evaluate(
        self,
        request: Mapping[str, Any] | Request,
        *,
        explain: bool = False,
        dry_run: bool = False,
        input_format: str | None = None,
        request_id: str | None = None,
        model: str | None = None,
        stream: bool | None = None,
        only: frozenset[str] | None = None,
        conversation: Conversation | None = None,
    ) -> Decision:
        """Route one request and consume its rate limits (none with `dry_run`).

        `request` is a native request or the body of a wire format (OpenAI Chat Completions
        or Responses, Anthropic Messages, Gemini generateContent), detected from its shape
        unless `input_format` names it. `request_id`, `model` and `stream` are what a wire
        format keeps outside its body (a header, Gemini's URL). `only`: the catalog entries
        (`provider/id` keys) the caller can send the request to, such as a gateway's own
        deployments; the others are dropped as "not offered by the caller" (None: every
        model of the route). `conversation`: what its prompt features are read from instead
        of the request's own (a replay's logged values, `engine.routing.request_log`).
        Raises `RequestError` naming the fields of a bad request.
        """
        env = env_of(
            request, input_format=input_format, request_id=request_id, model=model, stream=stream
        )
        if conversation is not None:
            env["conversation"] = conversation
        waiters: WaitQueues | None = self.__dict__.get("_waiters")
        if not dry_run and waiters is not None and waiters.busy:  # never without `wait`
            refused = waiters.check(env, only, explain)  # no jumping the queue
            if refused is not None:
                return refused
        return self._decide(env, dry_run, only, explain, request)

    def _decide(
        self,
        env: dict[str, Any],
        dry_run: bool,
        only: frozenset[str] | None,
        explain: bool,
        request: Mapping[str, Any] | Request | None = None,
    ) -> Decision:
        """One decision on an evaluation environment (`evaluate`, and the waiters)."""
        if self.closed:
            raise EngineClosedError("decide")
        program = self._program  # one snapshot per evaluation
        decision = evaluate(
            program,
            env,
            metrics=self.metrics,
            state=self._state,
            explain=explain,
            limiter=self.limiter,
            consume=not dry_run,
            now=self.clock(),
            only=only,
        )
        if not decision.allowed and not dry_run and self.alert_monitor.takes_denials:
            self.alert_monitor.denied(decision, self.clock())
        if self._logs is not None and not dry_run:
            kept = self._request_log
            request_text = None if kept is None or request is None else kept.encode(env, request)
            self._logs.decision(decision, self.clock(), request_text)
        return decision

    @property
    def decides_lean(self) -> bool:
        """Whether `evaluate_lean` skips the full path: no decision log, no alert on
        denials, no waiters (what the full path would keep of a decision)."""
        return (
            self._logs is None
            and not self.alert_monitor.takes_denials
            and self.__dict__.get("_waiters") is None
        )

    def evaluate_lean(
        self,
        request: Mapping[str, Any] | Request,
        *,
        request_id: str | None = None,
        conversation: Conversation | None = None,
    ) -> Lean:
        """`evaluate` as far as a replay compares it (`engine.replay`): the same choice and
        the same state changes (limits consumed), returned as a small `Lean` record, without
        alternatives, fallbacks, confidence or a shadow route's decision. An engine that
        logs its decisions (a DuckDB state file), with an alert on denials, or with requests
        waiting for a limit takes the full path (`evaluate`), so nothing it keeps is skipped."""
        if self.closed:
            raise EngineClosedError("decide")
        if not self.decides_lean:
            return lean_of(self.evaluate(request, request_id=request_id, conversation=conversation))
        env = env_of(request, request_id=request_id)
        if conversation is not None:
            env["conversation"] = conversation
        return evaluate_lean(
            self._program,
            env,
            metrics=self.metrics,
            state=self._state,
            limiter=self.limiter,
            now=self.clock(),
        )

    @property
    def waiters(self) -> WaitQueues:
        """The requests waiting for a limit's tokens (`wait up to D`; engine.api.waiting)."""
        queues: WaitQueues | None = getattr(self, "_waiters", None)
        if queues is None:
            queues = self._waiters = WaitQueues(
                lambda env, dry, only, explain: self._decide(dict(env), dry, only, explain),
                lambda: self._program,
                self.clock,
                denied=self._queue_denied,
            )
            queues.events = self.limiter.events  # `rate_limit_waits` (None: no analytics)
        return queues

    def _queue_denied(self, decision: Decision) -> None:
        """A denial the wait queues made (the tokens were the waiters'): logged and
        alerted on as `_decide` does a real one."""
        if self.alert_monitor.takes_denials:
            self.alert_monitor.denied(decision, self.clock())
        if self._logs is not None:
            self._logs.decision(decision, self.clock(), None)

    def _enter(
        self,
        request: Mapping[str, Any] | Request,
        timeout_s: float | None,
        priority: int | None,
        notify: Callable[[], None],
        options: dict[str, Any],
    ) -> Decision | Waiter:
        only = options.pop("only", None)
        explain = options.pop("explain", False)
        env = env_of(request, **options)
        if priority is not None:
            env["priority"] = float(priority)
        if not has_waits(self._program) or (timeout_s is not None and timeout_s <= 0):
            waiters: WaitQueues | None = self.__dict__.get("_waiters")
            if waiters is not None and waiters.busy:  # no jumping the queue
                refused = waiters.check(env, only, explain)
                if refused is not None:
                    return refused
            return self._decide(env, False, only, explain, request)  # nothing waits
        return self.waiters.enter(env, timeout_s, only, explain, notify)

    async def acquire(
        self,
        request: Mapping[str, Any] | Request,
        *,
        timeout_s: float | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Decision:
        """`evaluate`, but a request denied only by limits with `wait up to D` waits (on the
        running loop, no thread) for its tokens, up to D and `timeout_s`, in `priority`
        order (higher first; None: the request's own), and is then admitted or denied as
        usual. `options`: `evaluate`'s keywords (`explain`, `input_format`, `request_id`,
        `model`, `stream`, `only`; never `dry_run`)."""
        import asyncio  # only for the callers that wait on a loop

        event = asyncio.Event()
        loop = asyncio.get_running_loop()
        entered = self._enter(
            request, timeout_s, priority, lambda: loop.call_soon_threadsafe(event.set), options
        )
        if isinstance(entered, Decision):
            return entered
        return await self.waiters.wait_async(entered, event)

    def acquire_blocking(
        self,
        request: Mapping[str, Any] | Request,
        *,
        timeout_s: float | None = None,
        priority: int | None = None,
        **options: Any,
    ) -> Decision:
        """`acquire`, blocking the calling thread while the request waits."""
        event = threading.Event()
        entered = self._enter(request, timeout_s, priority, event.set, options)
        if isinstance(entered, Decision):
            return entered
        return self.waiters.wait_blocking(entered, event)

    def record(
        self,
        decision: Decision,
        *,
        latency_ms: float,
        success: bool,
        output_tokens: int | None = None,
        input_tokens: int | None = None,
        cost: float | None = None,
        at: float | None = None,
        cached_tokens: int | None = None,
    ) -> bool:
        """Feed an outcome back: what happened when `decision` was carried out.

        Cost is `cost` if given, else computed from the tokens when `output_tokens` is given
        (the catalog's `Model.cost`: price tiers, and `cached_tokens` of the `input_tokens`
        at the cached-input price), else the decision's estimate. `at` is epoch seconds
        (default: now). O(1) in memory.

        Returns True when the outcome is recorded (and, with an outcome log, queued: it
        will be on disk). False when the outcome log's queue is full: nothing is recorded,
        the outcome is counted in `policyctl_outcomes_dropped_total`, and the caller may
        retry it later.
        """
        if not decision.allowed or decision.provider is None or decision.model is None:
            raise ValueError("only an allowed decision has an outcome to record")
        return self._record(
            decision.provider, decision.model, latency_ms, success, output_tokens, input_tokens,
            cost if cost is not None or output_tokens is not None else decision.estimated_cost,
            at, decision.request_id, decision.route, None, cached_tokens,
        )  # fmt: skip

    def record_outcome(
        self,
        provider: str,
        model: str,
        *,
        latency_ms: float,
        success: bool,
        output_tokens: int | None = None,
        input_tokens: int | None = None,
        cost: float | None = None,
        at: float | None = None,
        request_id: str | None = None,
        route: str | None = None,
        user: str | None = None,
        cached_tokens: int | None = None,
    ) -> bool:
        """Record an outcome for `provider`/`model` (an id or an alias in the catalog).
        Without `cost`, the cost is the catalog's `Model.cost` of the tokens given (tiers,
        and `cached_tokens` of the `input_tokens` at the cached-input price).
        Returns what `record` returns: False when the outcome log's queue is full."""
        return self._record(
            provider, model, latency_ms, success, output_tokens, input_tokens, cost, at,
            request_id, route, user, cached_tokens,
        )  # fmt: skip

    def _record(
        self,
        provider: str,
        model: str,
        latency_ms: float,
        success: bool,
        output_tokens: int | None,
        input_tokens: int | None,
        cost: float | None,
        at: float | None,
        request_id: str | None,
        route: str | None,
        user: str | None,
        cached_tokens: int | None = None,
    ) -> bool:
        """`record_outcome` with positional arguments: the hot path (no I/O, no lock but the
        window's)."""
        if self.closed:
            raise EngineClosedError("record an outcome")
        catalog = self._program.catalog
        found = catalog.find(provider, model)
        if found is None:
            raise ValueError(unknown_model(catalog, provider, model))
        if latency_ms.__class__ is not float or not 0.0 <= latency_ms < INF:  # (NaN: False)
            latency_ms = _latency(latency_ms)
        if success is not True and success is not False:
            raise ValueError(bad_value("success", success))
        if input_tokens is not None and (
            input_tokens.__class__ is not int or not 0 <= input_tokens < _MAX_COUNT
        ):
            input_tokens = _count("input_tokens", input_tokens)
        if output_tokens is not None and (
            output_tokens.__class__ is not int or not 0 <= output_tokens < _MAX_COUNT
        ):
            output_tokens = _count("output_tokens", output_tokens)
        if cost is not None and (cost.__class__ is not float or not 0.0 <= cost < INF):
            cost = _cost(cost)
        if cached_tokens is not None:
            cached_tokens = _count("cached_tokens", cached_tokens)
            problem = cached_problem(input_tokens, cached_tokens)
            if problem is not None:
                raise ValueError(problem)
        given = cost
        if cost is None:
            cost = found.cost(input_tokens or 0, output_tokens or 0, cached_tokens or 0)
        record = self._record_metric
        if record is None:
            raise TypeError("this engine's metrics source does not take outcomes")
        if cost.__class__ is not float:
            cost = float(cost)
        if self.outcome_log is not None and not self.outcome_log.submit(
            new_outcome_row((
                self.clock() if at is None else at, found.provider, found.id,
                latency_ms, success, input_tokens, output_tokens, cost,
                request_id, route, user, cached_tokens,
            ))
        ):  # fmt: skip
            return False  # the queue is full: counted, and nothing recorded
        limiter = self.limiter
        if request_id is not None and limiter.takes_outcomes:
            limiter.release(request_id)  # the decision's in-flight slots, if it holds any
            # ... and its token and spend reservations: refund or charge the difference
            # (spend settles by a cost given, or by one computed from both counts)
            limiter.settle(
                request_id, input_tokens=input_tokens, output_tokens=output_tokens,
                cost=cost
                if given is not None or (input_tokens is not None and output_tokens is not None)
                else None,
            )  # fmt: skip
        record(found.key, latency_ms, success, cost, at)
        monitor = self.alert_monitor
        if monitor.takes_outcomes:
            monitor.outcome(found.provider, found.key, latency_ms, success, cost,
                            self.clock() if at is None else at)  # fmt: skip
        return True

    def outcome_room(self, count: int) -> bool:
        """Whether `count` outcomes would all be recorded now (the outcome log's queue has
        room); when not, they are counted as dropped. `POST /v1/outcomes` asks first, so a
        request is recorded whole or answered 503."""
        return self.outcome_log is None or self.outcome_log.reserve(count)


INF = float("inf")


def _latency(value: object) -> float:
    """An outcome's `latency_ms` that is not a float from 0 up (excluded: infinity, NaN):
    an int or a float subclass as a float, else the error."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(bad_value("latency_ms", value))
    latency_ms = float(value)
    if latency_ms == INF:
        raise ValueError(bad_value("latency_ms", latency_ms))
    return latency_ms


_MAX_COUNT = 2**62  # an outcome's token counts are below this (as the HTTP body's are)


def _count(name: str, value: object) -> int:
    """An outcome's token count given to `record`: an int from 0 up, not a bool (an integer
    type such as numpy's as an int), else the error `POST /v1/outcomes` gives."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(bad_value(name, value))
    count = operator.index(value)  # type: ignore[arg-type]
    if not 0 <= count < _MAX_COUNT:
        raise ValueError(bad_value(name, value))
    return count


def _cost(value: object) -> float:
    """An outcome's `cost` given to `record`: a finite number from 0 up, as a float, else
    the error `POST /v1/outcomes` gives (a NaN or a negative cost would skew every cost
    figure the live metrics keep)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(bad_value("cost", value))
    cost = float(value)
    if not 0.0 <= cost < INF:
        raise ValueError(bad_value("cost", value))
    return cost


def _settle_within(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < INF:
        raise ValueError(f"settle_within_s must be positive seconds, got {value!r}")
    return float(value)


def _request_log(mode: str, program: Program, salt: bytes | None) -> RequestLog:
    """What the decision log keeps of a request under `program` (`--log-requests`): the
    metadata keys, prompt features and plugins it reads."""
    return RequestLog(
        mode,
        program.request_paths,
        salt,
        program.prompt_features,
        tuple(p.name for p in program.plugins),
    )
