"""The alert monitor: the engine hands it events (an outcome recorded, a request denied) on
the hot path, each one `deque.append`; `tick(now)`, called every second by a background
thread (`start`) or directly by a test with a fake clock, takes them into each alert's
sliding windows, computes every signal and moves each alert's state:

    inactive -> pending (the condition holds; waiting for `for D`) -> firing -> resolved

A pending alert whose condition stops holding goes back to inactive without a word. Each
episode sends one `firing` notification, when the condition has held for the alert's `for`
duration, and one `resolved` when it stops holding; an alert split by a key (`p95(provider)`,
`violations(user)`) does this for each key on its own. A notification is a log line
(WARNING when firing, INFO when resolved) and, when the alert has a webhook (its `to "URL"`,
else the monitor's default, `policyctl serve --alert-webhook`), a POST from the webhook
sender's thread. Nothing here blocks a decision.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.alerts.records import (
    FIRING,
    INACTIVE,
    PENDING,
    RESOLVED,
    AlertStatus,
    DeliveryStats,
    Notification,
)
from engine.alerts.webhook import WebhookSender
from engine.alerts.window import Window
from engine.language.program import AlertRule
from engine.language.signals import DECISIONS, KEY_PLACEHOLDER, OUTCOMES, SIGNALS
from engine.limits.records import LimitDenial
from engine.routing.decision import Decision

log = logging.getLogger("policyctl.alerts")

MAX_EVENTS = 200_000  # events waiting for the next tick; past it they are counted, not kept
MAX_KEYS = 1000  # series per split alert; a new key past it is counted, not tracked
DEFAULT_INTERVAL_S = 1.0
_PERCENTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}

# (at, provider, model key, latency ms, success, cost)
Outcome = tuple[float, str, str, float, bool, float]
# (at, route, limit scope or None, limit key or None)
Denied = tuple[float, str, str | None, str | None]


@dataclass(slots=True)
class _Track:
    """One alert's state for one key (None: an alert with one series)."""

    window: Window
    state: str = INACTIVE
    value: float | None = None
    since: float | None = None
    changed_at: float | None = None


@dataclass(slots=True)
class _Alert:
    rule: AlertRule
    tracks: dict[str | None, _Track] = field(default_factory=dict)

    @property
    def signal(self) -> str:
        rule = self.rule
        inside = rule.split_by or rule.subject
        return rule.signal if inside is None else f"{rule.signal}({inside})"


class AlertMonitor:
    """The alerts of one engine. `load` takes a program's alerts (on start and on every
    reload: an alert whose statement did not change keeps its state); `tick` evaluates."""

    def __init__(self, rules: tuple[AlertRule, ...] = (), version: str = "") -> None:
        self._lock = threading.Lock()
        self._outcomes: deque[Outcome] = deque()
        self._denied: deque[Denied] = deque()
        self._alerts: list[_Alert] = []
        self.takes_outcomes = False  # read on the hot path: any alert on outcomes
        self.takes_denials = False  # any alert on denied requests
        self.version = version
        self.webhook: str | None = None  # the default, for alerts with no `to "URL"`
        self.sender = WebhookSender()
        self.events_dropped = 0  # events past MAX_EVENTS between two ticks
        self.keys_dropped = 0  # events of a key past MAX_KEYS
        self.notifications = 0  # firing and resolved, logged (and posted when there is a URL)
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        self.load(rules, version)

    # ------------------------------------------------------------------ configuration

    def load(self, rules: tuple[AlertRule, ...], version: str = "") -> None:
        """Take a program's alerts; those unchanged (same statement, same place) keep their
        windows and states, the others start inactive. A firing alert that is gone is
        dropped without a resolve."""
        with self._lock:
            kept = {(a.rule.name, a.rule.text): a for a in self._alerts}
            alerts = []
            for rule in rules:
                found = kept.get((rule.name, rule.text))
                alerts.append(found if found is not None and found.rule == rule else _Alert(rule))
            self._alerts = alerts
            self.version = version
            sources = {SIGNALS[rule.signal].source for rule in rules}
            self.takes_outcomes = OUTCOMES in sources
            self.takes_denials = DECISIONS in sources

    def configure(
        self,
        webhook: str | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | None = None,
        backoff_s: float | None = None,
    ) -> None:
        """The default webhook (for alerts without `to`) and the delivery's timing."""
        self.webhook = webhook
        if timeout_s is not None:
            self.sender.timeout_s = timeout_s
        if retries is not None:
            self.sender.retries = retries
        if backoff_s is not None:
            self.sender.backoff_s = backoff_s

    # ------------------------------------------------------------------ events (hot path)

    def outcome(
        self, provider: str, model_key: str, latency_ms: float, success: bool, cost: float,
        at: float,
    ) -> None:  # fmt: skip
        """An outcome was recorded (`PolicyEngine.record`): O(1), no lock."""
        if len(self._outcomes) >= MAX_EVENTS:
            self.events_dropped += 1
            return
        self._outcomes.append((at, provider, model_key, latency_ms, success, cost))

    def denied(self, decision: Decision, at: float) -> None:
        """A request was denied: O(1), no lock."""
        if len(self._denied) >= MAX_EVENTS:
            self.events_dropped += 1
            return
        denial = decision.denied_by
        if isinstance(denial, LimitDenial):
            self._denied.append((at, decision.route, denial.scope, denial.key))
        else:
            self._denied.append((at, decision.route, None, None))

    # ------------------------------------------------------------------ evaluation

    def tick(self, now: float) -> list[Notification]:
        """Take the events in, compute every alert at `now` (epoch seconds, the engine's
        clock), move the states; log and send what fired or resolved, and return it."""
        with self._lock:
            outcomes = _drain(self._outcomes)
            denied = _drain(self._denied)
            sent: list[Notification] = []
            for alert in self._alerts:
                self._take(alert, outcomes, denied)
                self._step(alert, now, sent)
        for notification in sent:
            self._notify(notification)
        return sent

    def _take(self, alert: _Alert, outcomes: list[Outcome], denied: list[Denied]) -> None:
        rule = alert.rule
        spec = SIGNALS[rule.signal]
        if spec.source == OUTCOMES:
            models = rule.models
            for at, provider, model_key, latency_ms, success, cost in outcomes:
                if models and model_key not in models:
                    continue
                key = (
                    provider
                    if rule.split_by == "provider"
                    else model_key
                    if rule.split_by == "model"
                    else None
                )
                track = self._track(alert, key)
                if track is not None:
                    amount = cost if spec.name == "spend" else 1.0
                    track.window.add(at, amount, latency_ms, success)
            return
        for at, route, scope, limit_key in denied:
            if spec.name == "violations":
                if scope is None or (rule.split_by is not None and scope != rule.split_by):
                    continue
                key = limit_key if rule.split_by is not None else None
            else:  # denials
                key = route if rule.split_by == "route" else None
            track = self._track(alert, key)
            if track is not None:
                track.window.add(at, 1.0, None, False)

    def _track(self, alert: _Alert, key: str | None) -> _Track | None:
        track = alert.tracks.get(key)
        if track is None:
            if len(alert.tracks) >= MAX_KEYS:
                self.keys_dropped += 1
                return None
            track = alert.tracks[key] = _Track(Window(alert.rule.window_ms / 1000.0))
        return track

    def _step(self, alert: _Alert, now: float, sent: list[Notification]) -> None:
        rule = alert.rule
        if rule.split_by is None and None not in alert.tracks:
            self._track(alert, None)  # one series: counted from zero from the start
        hold_s = rule.for_ms / 1000.0
        gone: list[str | None] = []
        for key, track in alert.tracks.items():
            track.window.expire(now)
            value = _value(rule.signal, track.window)
            track.value = value
            holds = value is not None and rule.holds(value)
            if holds:
                if track.state in (INACTIVE, RESOLVED):
                    track.state, track.since, track.changed_at = PENDING, now, now
                if track.state == PENDING and now - (track.since or now) >= hold_s:
                    track.state, track.changed_at = FIRING, now
                    sent.append(self._notification(alert, key, track, now))
            elif track.state == PENDING:
                track.state, track.since, track.changed_at = INACTIVE, None, now
            elif track.state == FIRING:
                track.state, track.changed_at = RESOLVED, now
                sent.append(self._notification(alert, key, track, now))
            if (
                key is not None
                and track.window.empty
                and track.state in (INACTIVE, RESOLVED)
                and (track.changed_at is None or now - track.changed_at >= track.window.window_s)
            ):
                gone.append(key)  # a key with nothing in the window and nothing new to say
        for key in gone:
            del alert.tracks[key]

    def _notification(
        self, alert: _Alert, key: str | None, track: _Track, now: float
    ) -> Notification:
        return Notification(
            self._status(alert, key, track), now, alert.rule.webhook or self.webhook, self.version
        )

    def _notify(self, notification: Notification) -> None:
        self.notifications += 1
        level = logging.WARNING if notification.status.state == FIRING else logging.INFO
        log.log(level, notification.line())
        if notification.webhook is not None:
            what = f"{notification.status.state}: {notification.status.message}"
            self.sender.submit(notification.webhook, notification.to_dict(), what)

    # ------------------------------------------------------------------ reading

    def statuses(self) -> tuple[AlertStatus, ...]:
        """Every alert's state (per key for a split alert), in policy order, keys sorted."""
        with self._lock:
            out: list[AlertStatus] = []
            for alert in self._alerts:
                if not alert.tracks:
                    out.append(self._status(alert, None, None))
                for key in sorted(alert.tracks, key=lambda k: "" if k is None else k):
                    out.append(self._status(alert, key, alert.tracks[key]))
            return tuple(out)

    def _status(self, alert: _Alert, key: str | None, track: _Track | None) -> AlertStatus:
        rule = alert.rule
        return AlertStatus(
            name=rule.name,
            message=rule.name if key is None else rule.name.replace(KEY_PLACEHOLDER, key),
            key=key,
            state=INACTIVE if track is None else track.state,
            value=None if track is None else track.value,
            op=rule.op,
            threshold=rule.threshold,
            unit=SIGNALS[rule.signal].unit.value,
            signal=alert.signal,
            since=None if track is None or track.state not in (PENDING, FIRING) else track.since,
            changed_at=None if track is None else track.changed_at,
            location=rule.location,
        )

    def deliveries(self) -> DeliveryStats:
        return self.sender.stats()

    # ------------------------------------------------------------------ the ticker

    def start(self, clock: Callable[[], float], interval_s: float = DEFAULT_INTERVAL_S) -> None:
        """Tick every `interval_s` seconds (real time) at `clock()`, in a daemon thread."""
        if self._ticker is not None:
            return
        self._stop.clear()

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.tick(clock())
                except Exception:  # a bug must not end the ticking: log it, keep going
                    log.exception("alert tick failed")

        self._ticker = threading.Thread(target=run, name="policyctl-alerts", daemon=True)
        self._ticker.start()

    def close(self) -> None:
        """Stop ticking; deliver what is queued."""
        self._stop.set()
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.join(timeout=5.0)
        self.sender.close()


def _drain(events: deque[Outcome] | deque[Denied]) -> list:  # type: ignore[type-arg]
    """Every event appended so far, taken out (appends by other threads keep going)."""
    taken = []
    pop = events.popleft
    for _ in range(len(events)):
        taken.append(pop())
    return taken


def _value(signal: str, window: Window) -> float | None:
    q = _PERCENTILES.get(signal)
    if q is not None:
        return window.percentile(q)
    if signal == "success_rate":
        return window.success_rate()
    if signal == "error_rate":
        rate = window.success_rate()
        return None if rate is None else 1.0 - rate
    return window.total  # spend, violations, denials: a sum over the window
