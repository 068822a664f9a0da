"""What `GET /metrics` shows, and the access log.

The hot path only counts: a decision adds to a few plain counters (`Telemetry.observe`), a
request to its path's histogram (`RequestTimer`). `prometheus_client` turns them into
metric families when `/metrics` is scraped (`Telemetry.collect`, a custom collector on the
app's own `CollectorRegistry`, beside the process and platform collectors), and renders
them in the format the scraper asks for. Everything runs on the event loop's thread, so
the counters need no lock.

Labels are bounded: routes, providers and denial scopes come from the policy and its
catalog, paths are the app's route templates (`unmatched` for a 404), methods the HTTP
ones (`other` for the rest), statuses the codes the app answers. Nothing is labelled by
user, key or request id.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from time import perf_counter, time

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api.policy_engine import PolicyEngine
from engine.build import VERSION, commit
from engine.limits.limiter import event_scope
from engine.limits.records import LimitDenial
from engine.limits.stores.base import HeldBuckets, StoreUnavailableError
from engine.routing.decision import Denial
from engine.service.logconfig import ACCESS_FORMAT, AccessLine, access_lane, access_lines_dropped
from engine.wire.plugins import BUCKETS_S as PLUGIN_BUCKETS_S

# seconds: the decision inside the service, and a whole request (body read to last byte)
LATENCY_BUCKETS_S = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1)
REQUEST_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
UNMATCHED = "unmatched"  # the path label of a request no route matched (a 404)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
access_log = logging.getLogger("policyctl.access")


class Telemetry:
    """The counters behind /metrics, and the collector that reports them."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.engine = engine
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # route, provider, outcome
        self.denials: Counter[str] = Counter()  # scope (or no_eligible_model, deny_rule, …)
        self.buckets = [0.0] * (len(LATENCY_BUCKETS_S) + 1)  # the last one: past every bound
        self.latency_sum = 0.0
        self.bad_requests: Counter[int] = Counter()
        # (path, method, status) -> request counts per bucket of REQUEST_BUCKETS_S, the +Inf
        # bucket's, then the seconds they took in all
        self.requests: dict[tuple[str, str, int], list[float]] = {}
        self.build = {"version": VERSION, "commit": commit()}
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.registry.register(self)

    @property
    def latency_count(self) -> float:
        return sum(self.buckets)

    def observe(
        self,
        route: str,
        provider: str | None,
        allowed: bool,
        denied: Denial | None,
        s: float,
    ) -> None:
        """One decision that took `s` seconds."""
        self.decisions[(route, provider or "", "allowed" if allowed else "denied")] += 1
        if not allowed and denied is not None:
            self.denials[denied.scope if isinstance(denied, LimitDenial) else denied.reason] += 1
        self.buckets[bisect_left(LATENCY_BUCKETS_S, s)] += 1
        self.latency_sum += s

    def observe_request(self, path: str, method: str, status: int, s: float) -> None:
        """One HTTP request, answered `status` after `s` seconds."""
        key = (path, method if method in METHODS else "other", status)
        row = self.requests.get(key)
        if row is None:
            row = self.requests[key] = [0.0] * (len(REQUEST_BUCKETS_S) + 2)
        row[bisect_left(REQUEST_BUCKETS_S, s)] += 1
        row[-1] += s

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry rendered as the `Accept` header asks (Prometheus text 0.0.4 unless
        it asks for OpenMetrics), and its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def describe(self) -> list[Metric]:
        return []  # the registry need not collect to learn the names

    def collect(self) -> Iterator[Metric]:
        """The families, read from the counters and the engine when scraped."""
        engine = self.engine
        yield InfoMetricFamily(
            "policyctl_build", "The policyctl version and the commit it was built from.",
            value=self.build,
        )  # fmt: skip
        decisions = CounterMetricFamily(
            "policyctl_decisions_total",
            "Decisions by route, provider and outcome.",
            labels=("route", "provider", "outcome"),
        )
        for labels, n in sorted(self.decisions.items()):
            decisions.add_metric(labels, n)
        yield decisions
        denials = CounterMetricFamily(
            "policyctl_denials_total",
            "Denied decisions by the scope that denied them.",
            labels=("scope",),
        )
        for scope, n in sorted(self.denials.items()):
            denials.add_metric((scope,), n)
        yield denials
        shadow = CounterMetricFamily(
            "policyctl_shadow_denials_total",
            "Allowed decisions a `shadow limit` of the scope would have denied.",
            labels=("scope",),
        )
        for scope, n in sorted(engine.limiter.shadow_denials().items()):
            shadow.add_metric((scope,), n)
        yield shadow
        seconds = HistogramMetricFamily(
            "policyctl_decision_seconds", "Time to decide, in the service."
        )
        seconds.add_metric((), _cumulative(LATENCY_BUCKETS_S, self.buckets), self.latency_sum)
        yield seconds
        yield CounterMetricFamily(
            "policyctl_policy_reloads_total",
            "Policy reloads that swapped a new version in.",
            value=engine.reloads,
        )
        yield CounterMetricFamily(
            "policyctl_policy_reload_errors_total",
            "Reloads refused (last good kept).",
            value=engine.reload_errors,
        )
        bad = CounterMetricFamily(
            "policyctl_bad_requests_total", "Client errors by HTTP status.", labels=("status",)
        )
        for status, n in sorted(self.bad_requests.items()):
            bad.add_metric((str(status),), n)
        yield bad
        yield CounterMetricFamily(
            "policyctl_outcomes_dropped_total",
            "Outcomes the full log queue dropped.",
            value=engine.outcome_log.dropped if engine.outcome_log is not None else 0,
        )
        yield CounterMetricFamily(
            "policyctl_access_log_dropped_total",
            "Access log lines the full queue of the log's writer thread dropped.",
            value=access_lines_dropped(),
        )
        if isinstance(engine.store, HeldBuckets):  # memory or DuckDB state: buckets held here
            held = engine.store.bucket_counts()
            yield GaugeMetricFamily(
                "policyctl_buckets_held", "Rate-limit buckets held in memory.", value=held.held
            )
            yield CounterMetricFamily(
                "policyctl_buckets_dropped_total",
                "Buckets not yet full dropped past max_keys (their used quota handed back).",
                value=held.dropped_partial,
            )
        yield CounterMetricFamily(
            "policyctl_store_errors_total",
            "Rate-limit store calls that failed (Redis down or slow); each decision failed"
            " open or closed as the policy's on_store_error says.",
            value=engine.limiter.store_errors,
        )
        yield CounterMetricFamily(
            "policyctl_state_write_errors_total",
            "Writes of outcomes and decisions to the DuckDB state file that failed (a full"
            " disk); the rows are kept and written again.",
            value=engine.outcome_log.failed_writes if engine.outcome_log is not None else 0,
        )
        yield CounterMetricFamily(
            "policyctl_pin_errors_total",
            "Store calls for a shared affinity pin that failed (Redis state); the decision"
            " routed on this instance's own pins.",
            value=engine.pin_errors,
        )
        yield CounterMetricFamily(
            "policyctl_limit_events_dropped_total",
            "Rate-limit analytics events (settlements, waits, in-flight releases) the full"
            " writer queue dropped.",
            value=engine.events_dropped,
        )
        yield from _alert_families(engine)
        yield _inflight_family(engine)
        yield from _settlement_families(engine)
        yield from _waiting_families(engine)
        yield from _plugin_families(engine)
        requests = HistogramMetricFamily(
            "policyctl_http_request_duration_seconds",
            "HTTP requests by route template, method and status: from the app's start on the"
            " request (its headers in) to the last byte of the answer.",
            labels=("path", "method", "status"),
        )
        for (path, method, status), row in sorted(self.requests.items()):
            requests.add_metric(
                (path, method, str(status)), _cumulative(REQUEST_BUCKETS_S, row[:-1]), row[-1]
            )
        yield requests


ALERT_STATES = ("inactive", "pending", "firing", "resolved")
KEYED_GAUGES = ("global", "provider", "model")  # in-flight keys from the catalog: bounded


def _waiting_families(engine: PolicyEngine) -> Iterator[Metric]:
    """The requests waiting for a `wait up to D` limit's tokens, and those that waited."""
    stats = engine.waiters.stats()
    yield GaugeMetricFamily(
        "policyctl_waiting_requests",
        "Requests waiting now for a limit's tokens (`wait up to D`), over every bucket key.",
        value=stats.waiting,
    )
    waited = CounterMetricFamily(
        "policyctl_waited",
        "Requests that waited for a limit's tokens, by how it ended (admitted, timed_out,"
        " shutdown: denied when the server stopped) or denied at once because their key's"
        " queue was full (queue_full).",
        labels=("outcome",),
    )
    waited.add_metric(("admitted",), stats.admitted)
    waited.add_metric(("timed_out",), stats.timed_out)
    waited.add_metric(("shutdown",), stats.shutdown)
    waited.add_metric(("queue_full",), stats.queue_full)
    yield waited
    yield CounterMetricFamily(
        "policyctl_wait_seconds",
        "Time the requests that waited spent waiting (engine clock), summed.",
        value=stats.wait_seconds,
    )


def _inflight_family(engine: PolicyEngine) -> Metric:
    """The slots held now by the policy's in-flight (`concurrent`) limits: per provider or
    model (keys from the catalog), summed over the keys of every other scope (users, IPs
    and named scopes never become labels)."""
    family = GaugeMetricFamily(
        "policyctl_inflight",
        "Requests in flight (allowed, no outcome yet) held by in-flight limits, by scope"
        " (`shadow:SCOPE` for a shadow limit's) and (provider and model only) key.",
        labels=("scope", "key"),
    )
    held: Counter[tuple[str, str]] = Counter()
    try:
        gauges = engine.limiter.inflight()
    except StoreUnavailableError:  # Redis down: no sample (unknown, not zero); the scrape goes on
        return family
    for gauge, n in gauges:  # `scope/concurrent/WINDOW/key`
        scope, _, rest = gauge.partition("/")
        key = rest.split("/", 2)[-1] if scope in KEYED_GAUGES and rest.count("/") >= 2 else ""
        held[(event_scope(gauge), key)] += n  # a shadow limit's gauge: `shadow:user`
    for (scope, key), n in sorted(held.items()):
        family.add_metric((scope, key), float(n))
    return family


def _settlement_families(engine: PolicyEngine) -> Iterator[Metric]:
    """Reserve-then-settle (docs/ratelimits.md): reservations by how they ended, those
    waiting for their outcome, and the tokens and dollars refunded and charged."""
    counts = engine.limiter.settlement_counts()
    ended = CounterMetricFamily(
        "policyctl_reservations_total",
        "Token and spend reservations, by how they ended: settled by their outcome, or"
        " expired unsettled (the estimate stands).",
        labels=("result",),
    )
    ended.add_metric(("settled",), counts.settled)
    ended.add_metric(("expired",), counts.expired)
    yield ended
    yield GaugeMetricFamily(
        "policyctl_reservations_outstanding",
        "Token and spend reservations waiting for their outcome.",
        value=counts.outstanding,
    )
    settled = CounterMetricFamily(
        "policyctl_settled_total",
        "Amounts settled (tokens; dollars for spend), summed over the buckets adjusted:"
        " refunded (actual below the estimate) or charged (above it).",
        labels=("unit", "direction"),
    )
    for unit in ("tokens", "spend"):
        settled.add_metric((unit, "refunded"), counts.refunded.get(unit, 0.0))
        settled.add_metric((unit, "charged"), counts.charged.get(unit, 0.0))
    yield settled


def _alert_families(engine: PolicyEngine) -> Iterator[Metric]:
    """The policy's alerts at the last tick: 1 for each alert (and key: a split alert's keys
    are capped by the monitor) in its state; and the webhook's deliveries."""
    firing = GaugeMetricFamily(
        "policyctl_alert_state",
        "The policy's alerts: 1 in the state each alert (per key, when split) is in.",
        labels=("alert", "key", "state"),
    )
    for status in engine.alerts():
        for state in ALERT_STATES:
            firing.add_metric(
                (status.message, status.key or "", state), 1.0 if status.state == state else 0.0
            )
    yield firing
    sent = engine.alert_monitor.deliveries()
    deliveries = CounterMetricFamily(
        "policyctl_alert_notifications_total",
        "Alert notifications by what became of them (sent to the webhook, failed, dropped).",
        labels=("result",),
    )
    for result in ("sent", "failed", "dropped"):
        deliveries.add_metric((result,), float(getattr(sent, result)))
    yield deliveries


def _plugin_families(engine: PolicyEngine) -> Iterator[Metric]:
    """The classifier plugins the loaded policy reads: their calls' seconds and the calls
    that gave the fallback, by reason (labels: the plugin names the policy reads, and the
    three reasons)."""
    seconds = HistogramMetricFamily(
        "policyctl_feature_seconds",
        "Calls of a classifier plugin (request.features.NAME), in seconds, since the start.",
        labels=("feature",),
    )
    errors = CounterMetricFamily(
        "policyctl_feature_errors_total",
        "Classifier plugin calls that gave the fallback value: error (raised), type (a"
        " value of another type), timeout (over its timeout_ms).",
        labels=("feature", "reason"),
    )
    for plugin in engine.program.plugins:
        stats = plugin.stats
        seconds.add_metric(
            [plugin.name],
            _cumulative(PLUGIN_BUCKETS_S, [float(n) for n in stats.buckets]),
            stats.seconds,
        )
        for reason, n in stats.errors.items():
            errors.add_metric([plugin.name, reason], n)
    yield seconds
    yield errors


def _cumulative(bounds: tuple[float, ...], counts: list[float]) -> list[tuple[str, float]]:
    running = 0.0
    out: list[tuple[str, float]] = []
    for bound, n in zip((*bounds, float("inf")), counts, strict=True):
        running += n
        out.append((floatToGoString(bound), running))
    return out


class RequestTimer:
    """ASGI middleware: each HTTP request into `telemetry`'s per-path histogram and, when
    `log_access` is on, one line to the `policyctl.access` logger (at INFO; the path
    without its query string, as the client sent it)."""

    def __init__(self, app: ASGIApp, *, telemetry: Telemetry, log_access: bool) -> None:
        self.app = app
        self.telemetry = telemetry
        self.log_access = log_access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500  # unless an answer starts: an exception's 500 is sent outside

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            s = perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            self.telemetry.observe_request(path, scope["method"], status, s)
            if self.log_access:
                log_request(scope, status, s)


def log_request(scope: Scope, status: int, s: float) -> None:
    """One request's line to the `policyctl.access` logger (at INFO): under `policyctl
    serve`, a record put on the access writer's queue (`engine.service.logconfig`), formatted
    and written by its thread, not here."""
    client = scope.get("client")
    where = f"{client[0]}:{client[1]}" if client else "-"
    raw = scope.get("raw_path")  # as sent: percent-escapes kept, so no newline gets in
    path = raw.decode("latin-1") if raw else scope["path"]
    ms = round(s * 1000, 3)
    fields = {
        "method": scope["method"],
        "path": path,
        "status": status,
        "duration_ms": ms,
        "client": where,
    }
    args = (where, scope["method"], path, scope.get("http_version", "1.1"), status, ms)
    lane = access_lane(access_log)
    if lane is not None:  # `policyctl serve --access-log`: the record is made off the loop
        lane.enqueue(AccessLine(time(), args, fields))
        return
    access_log.info(ACCESS_FORMAT, *args, extra={"access": fields})
