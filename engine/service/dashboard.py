"""The live dashboard: `/dashboard` (a page shipped in the package), its JSON snapshot and a
server-sent event stream of snapshots.

    GET  /dashboard                 the page (static: index.html, dashboard.js, dashboard.css)
    GET  /dashboard/session         {"required": bool, "authenticated": bool}
    POST /dashboard/login           {"token": …} -> 204 and an HTTP-only session cookie, or 401
    POST /dashboard/logout          204, the cookie cleared
    GET  /dashboard/snapshot.json   the snapshot (below), with the whole series
    GET  /dashboard/events          text/event-stream: `snapshot` events (?interval=SECONDS,
                                    default 1), sooner when the decision counts move; a
                                    `: heartbeat` comment when nothing was sent for a while

What a snapshot holds: decisions since the server started (allowed, denied) and per second
over the last `RATE_WINDOW_S`; the estimated spend of the allowed decisions over the last
minute (the decisions' `estimated_cost`: known at once, before any outcome is reported); per
model, the live metrics window's p50, p95 and success rate; the violations (recent ones, and
the keys limited most often among the last `VIOLATIONS_READ`); the policy status (`GET
/v1/policy`); the alerts (`alerts`, a callable another module supplies; none by default);
and a series of samples for the charts.

The hot path pays one counter increment per decision (`count`). A timer thread samples the
counters and the metrics window every `interval_s` into a bounded ring (`HISTORY_S` of
history); it reads the violations (which may be on disk) only while someone watches.

With an admin token the page, the snapshot and the stream need the dashboard cookie (an
HMAC of the token, set by `/dashboard/login`: HttpOnly, SameSite=Strict) or `Authorization:
Bearer TOKEN`. `stop()` ends every open stream, so the server's graceful shutdown does not
wait for clients that never leave.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request as HttpRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from engine.limits.admin import RateLimitAdmin
from engine.routing.decision import Decision
from engine.routing.metrics import LiveMetrics, MetricsSnapshot, SnapshotMetrics
from engine.service.body import BodyError, json_body, problem

SAMPLE_INTERVAL_S = 1.0  # the timer's period, and the stream's default
MIN_INTERVAL_S = 0.1
MAX_STREAM_INTERVAL_S = 60.0
HISTORY_S = 300.0  # what the charts show
RATE_WINDOW_S = 5.0  # decisions per second: over this long
SPEND_WINDOW_S = 60.0  # spend per minute: the allowed decisions of the last minute
POLL_S = 0.25  # a stream looks for changes (and for the server stopping) this often
HEARTBEAT_S = 15.0  # a comment line when no event went out for this long
WATCHED_S = 30.0  # after the last page or stream, the violations stay read this long
RECENT_VIOLATIONS = 20
TOP_KEYS = 10
VIOLATIONS_READ = 500  # the newest violations the top keys are counted over
MAX_MODELS = 50  # rows of the models table
CHART_MODELS = 6  # models in each sample (the most measured)
SESSION_AGE_S = 12 * 3600
COOKIE = "policyctl_dashboard"
_SESSION_SALT = b"policyctl dashboard session v1"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ASSETS = {  # path under /dashboard -> (file in static/dashboard, media type)
    "": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}

Alerts = Callable[[], list[dict[str, Any]]]  # items {name, state, since, value}


@dataclass(frozen=True, slots=True)
class ModelPoint:
    """One model in the live metrics window at one time."""

    model: str  # provider/id
    samples: int
    p50_ms: float
    p95_ms: float
    success_rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "samples": self.samples,
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "success_rate": _round(self.success_rate, 4),
        }


@dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one tick of the timer, and the rates since the tick before."""

    seq: int
    mono: float  # time.monotonic(): the rates' clock
    at: float  # the engine's clock (epoch seconds): what the charts show
    allowed: int  # since the server started
    denied: int
    spend: float  # estimated cost of the allowed decisions, since the server started
    decisions_per_s: float
    allowed_per_s: float
    denied_per_s: float
    spend_per_minute: float
    models: tuple[ModelPoint, ...]  # the CHART_MODELS most measured

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": round(self.at, 3),
            "decisions_per_s": _round(self.decisions_per_s),
            "allowed_per_s": _round(self.allowed_per_s),
            "denied_per_s": _round(self.denied_per_s),
            "spend_per_minute": _round(self.spend_per_minute, 6),
            "models": {m.model: [_round(m.p50_ms), _round(m.p95_ms),
                                 _round(m.success_rate, 4)] for m in self.models},
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Watched:
    """What the timer reads only while someone watches: the violations."""

    recent: list[dict[str, Any]]
    top: list[dict[str, Any]]
    error: str | None  # why they could not be read, if so


NOTHING_WATCHED = Watched([], [], None)


class Dashboard:
    """The dashboard of one engine: its counters, its sampled series and its routes."""

    def __init__(
        self,
        engine: Any,  # a PolicyEngine (typed loosely: the service's, not imported here)
        *,
        admin_token: str | None = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        alerts: Alerts | None = None,
    ) -> None:
        if not MIN_INTERVAL_S <= interval_s <= MAX_STREAM_INTERVAL_S:
            raise ValueError(
                f"the dashboard's interval must be {MIN_INTERVAL_S:g} to"
                f" {MAX_STREAM_INTERVAL_S:g} seconds, got {interval_s!r}"
            )
        self.engine = engine
        self.admin = RateLimitAdmin(engine)
        self.interval_s = interval_s
        self.alerts: Alerts = alerts or (lambda: [])
        self._token = admin_token.encode("utf-8") if admin_token else None
        self._session = (
            hmac.new(self._token, _SESSION_SALT, hashlib.sha256).hexdigest()
            if self._token is not None
            else None
        )
        # the hot path's counters (`count`): written on the event loop, read by the timer
        self.allowed = 0
        self.denied = 0
        self.spend = 0.0
        capacity = math.ceil(HISTORY_S / interval_s) + 2
        self._ring: deque[Sample] = deque(maxlen=capacity)
        self._ring_lock = threading.Lock()
        self._watched = NOTHING_WATCHED
        self._watched_until = 0.0  # monotonic: read the violations until then
        self._stopping = threading.Event()
        self._ring.append(self._sample(0, time.monotonic()))  # the baseline: all zero
        self._timer = threading.Thread(
            target=_tick_while_alive,
            args=(weakref.ref(self), self._stopping, interval_s),
            name="policyctl-dashboard",
            daemon=True,
        )
        self._timer.start()

    # ------------------------------------------------------------------ hot path

    def count(self, decision: Decision) -> None:
        """One decision served (the only work the dashboard adds to a request)."""
        if decision.allowed:
            self.allowed += 1
            cost = decision.estimated_cost
            if cost:
                self.spend += cost
        else:
            self.denied += 1

    # ------------------------------------------------------------------ sampling

    def stop(self) -> None:
        """End the timer and every open event stream (the server is stopping)."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _tick(self) -> None:
        with self._ring_lock:
            seq = self._ring[-1].seq + 1
        sample = self._sample(seq, time.monotonic())
        with self._ring_lock:
            self._ring.append(sample)
        if time.monotonic() < self._watched_until:
            self._watched = self._read_violations()

    def _sample(self, seq: int, mono: float) -> Sample:
        allowed, denied, spend = self.allowed, self.denied, self.spend
        previous = self._ring[-1] if self._ring else None
        elapsed = mono - previous.mono if previous is not None else 0.0

        def rate(now: float, before: float) -> float:
            return (now - before) / elapsed if elapsed > 0 else 0.0

        models = self._models()[:CHART_MODELS]
        return Sample(
            seq=seq,
            mono=mono,
            at=float(self.engine.clock()),
            allowed=allowed,
            denied=denied,
            spend=spend,
            decisions_per_s=rate(allowed + denied, previous.allowed + previous.denied)
            if previous
            else 0.0,
            allowed_per_s=rate(allowed, previous.allowed) if previous else 0.0,
            denied_per_s=rate(denied, previous.denied) if previous else 0.0,
            spend_per_minute=spend - self._before(mono - SPEND_WINDOW_S).spend if previous else 0.0,
            models=tuple(models),
        )

    def _before(self, mono: float) -> Sample:
        """The newest sample taken at or before `mono` (else the oldest kept)."""
        with self._ring_lock:
            found = self._ring[0]
            for sample in reversed(self._ring):
                if sample.mono <= mono:
                    found = sample
                    break
        return found

    def _models(self) -> list[ModelPoint]:
        """The measured models, most samples first (the live metrics window, exact read)."""
        metrics = self.engine.metrics
        snap: MetricsSnapshot
        if isinstance(metrics, LiveMetrics):
            snap = metrics.refresh()
        elif isinstance(metrics, SnapshotMetrics):
            snap = metrics.snapshot()
        else:
            return []
        points = [
            ModelPoint(key, s.samples, s.p50_ms, s.p95_ms, s.success_rate)
            for key, s in snap.stats.items()
            if s.samples > 0
        ]
        points.sort(key=lambda p: (-p.samples, p.model))
        return points[:MAX_MODELS]

    def _read_violations(self) -> Watched:
        try:
            rows = self.admin.violations(limit=VIOLATIONS_READ)
        except Exception as err:  # a store that is down: the page says so, the rest stands
            return Watched(self._watched.recent, self._watched.top, f"{type(err).__name__}: {err}")
        recent = [
            {"at": r["at"], "scope": r["scope"], "key": r["key"], "unit": r["unit"],
             "request_id": r["request_id"]}
            for r in rows[:RECENT_VIOLATIONS]
        ]  # fmt: skip
        counts = Counter((r["scope"], r["key"]) for r in rows)
        ranked = sorted(counts.items(), key=lambda i: (-i[1], i[0][0], str(i[0][1])))
        top = [{"scope": s, "key": k, "violations": n} for (s, k), n in ranked[:TOP_KEYS]]
        return Watched(recent, top, None)

    def _watch(self) -> bool:
        """Someone is looking: the timer reads the violations on each tick for a while.
        True when nobody was (what was read is old: `read_violations` now)."""
        first = time.monotonic() >= self._watched_until
        self._watched_until = time.monotonic() + WATCHED_S
        return first

    def read_violations(self) -> None:
        self._watched = self._read_violations()

    # ------------------------------------------------------------------ snapshot

    def snapshot(self, *, since_seq: int = -1) -> dict[str, Any]:
        """The dashboard's state now, with the samples newer than `since_seq`."""
        now = time.monotonic()
        allowed, denied, spend = self.allowed, self.denied, self.spend
        base = self._before(now - RATE_WINDOW_S)
        elapsed = now - base.mono
        per_s = (allowed + denied - base.allowed - base.denied) / elapsed if elapsed > 0 else 0.0
        with self._ring_lock:
            series = [s.to_dict() for s in self._ring if s.seq > since_seq]
            last_seq = self._ring[-1].seq
        watched = self._watched
        status = self.engine.policy_status()
        return {
            "at": round(float(self.engine.clock()), 3),
            "seq": last_seq,
            "interval_s": self.interval_s,
            "decisions": {
                "allowed": allowed,
                "denied": denied,
                "total": allowed + denied,
                "per_second": _round(per_s),
                "window_s": RATE_WINDOW_S,
            },
            "spend": {
                "per_minute": _round(spend - self._before(now - SPEND_WINDOW_S).spend, 6),
                "total": _round(spend, 6),
                "source": "estimated cost of allowed decisions",
            },
            "models": [m.to_dict() for m in self._models()],
            "top_limited": watched.top,
            "violations": watched.recent,
            "violations_error": watched.error,
            "policy": {
                "version": status["version"],
                "loaded_at": status["loaded_at"],
                "reloads": status["reloads"],
                "reload_errors": status["reload_errors"],
                "last_error": status["last_error"],
            },
            "alerts": list(self.alerts()),
            "series": series,
            "history_s": HISTORY_S,
        }

    # ------------------------------------------------------------------ auth

    def token_required(self) -> bool:
        return self._token is not None

    def authorized(self, request: HttpRequest) -> bool:
        if self._token is None or self._session is None:
            return True
        cookie = request.cookies.get(COOKIE, "")
        if cookie and hmac.compare_digest(
            cookie.encode("utf-8", "replace"), self._session.encode()
        ):
            return True
        scheme, _, supplied = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            supplied.strip().encode("utf-8", "replace"), self._token
        )

    # ------------------------------------------------------------------ routes

    def routes(self) -> list[Route]:
        """The `/dashboard` routes."""
        assets = {path: (_asset(name), media) for path, (name, media) in ASSETS.items()}

        def asset(path: str) -> Callable[[HttpRequest], Any]:
            body, media = assets[path]

            async def serve(request: HttpRequest) -> Response:
                return Response(body, media_type=media, headers=SECURITY_HEADERS)

            return serve

        def refused() -> Response:
            response = problem(401, "the dashboard needs the admin token: log in at /dashboard")
            response.headers["WWW-Authenticate"] = 'Bearer realm="policyctl"'
            return _secured(response)

        async def session(request: HttpRequest) -> Response:
            body = {"required": self.token_required(), "authenticated": self.authorized(request)}
            return _secured(_json(body))

        async def login(request: HttpRequest) -> Response:
            try:
                body = await json_body(request)
            except BodyError as err:
                return _secured(problem(err.status, err.error, err.detail))
            token = body.get("token") if isinstance(body, dict) else None
            if not isinstance(token, str):
                return _secured(problem(422, 'the body is {"token": "…"}'))
            if self._token is None or self._session is None:
                return _secured(Response(status_code=204))  # nothing to log in to
            if not hmac.compare_digest(token.encode("utf-8", "replace"), self._token):
                return _secured(problem(401, "the token is not the admin token"))
            response = Response(status_code=204)
            response.set_cookie(
                COOKIE, self._session, max_age=SESSION_AGE_S, path="/dashboard",
                httponly=True, samesite="strict",
            )  # fmt: skip
            return _secured(response)

        async def logout(request: HttpRequest) -> Response:
            response = Response(status_code=204)
            response.delete_cookie(COOKIE, path="/dashboard", httponly=True, samesite="strict")
            return _secured(response)

        async def snapshot(request: HttpRequest) -> Response:
            if not self.authorized(request):
                return refused()
            if self._watch():  # may read a file: off the event loop
                await run_in_threadpool(self.read_violations)
            return _secured(_json(self.snapshot()))

        async def events(request: HttpRequest) -> Response:
            if not self.authorized(request):
                return refused()
            raw = request.query_params.get("interval", str(self.interval_s))
            try:
                interval = float(raw)
            except ValueError:
                interval = math.nan
            if not MIN_INTERVAL_S <= interval <= MAX_STREAM_INTERVAL_S:
                message = (
                    f"seconds from {MIN_INTERVAL_S:g} to {MAX_STREAM_INTERVAL_S:g}, got `{raw}`"
                )
                detail = [{"field": "interval", "message": message}]
                return _secured(problem(422, "invalid stream", detail))
            if self._watch():
                await run_in_threadpool(self.read_violations)
            return StreamingResponse(
                self._stream(interval),
                media_type="text/event-stream",
                headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
            )

        return [
            *(Route(f"/dashboard{path}", asset(path), methods=["GET"]) for path in ASSETS),
            Route("/dashboard/session", session, methods=["GET"]),
            Route("/dashboard/login", login, methods=["POST"]),
            Route("/dashboard/logout", logout, methods=["POST"]),
            Route("/dashboard/snapshot.json", snapshot, methods=["GET"]),
            Route("/dashboard/events", events, methods=["GET"]),
        ]

    async def _stream(self, interval: float) -> AsyncIterator[str]:
        """`snapshot` events every `interval` and when the counts move (at most every
        POLL_S), until the client leaves (Starlette cancels this) or `stop()`."""
        yield f"retry: 2000\n: policyctl dashboard, a snapshot every {interval:g}s\n\n"
        sent_seq = -1
        sent_at = last_out = -math.inf
        sent_counts: tuple[int, int] | None = None
        while not self._stopping.is_set():
            self._watch()  # keeps the timer reading the violations while the stream is open
            now = time.monotonic()
            counts = (self.allowed, self.denied)
            if now - sent_at >= interval or counts != sent_counts:
                snap = self.snapshot(since_seq=sent_seq)
                sent_seq, sent_at, last_out, sent_counts = snap["seq"], now, now, counts
                yield f"event: snapshot\nid: {snap['seq']}\ndata: {_dumps(snap)}\n\n"
            elif now - last_out >= HEARTBEAT_S:
                last_out = now
                yield ": heartbeat\n\n"
            await asyncio.sleep(min(POLL_S, interval))


def _tick_while_alive(
    board: weakref.ref[Dashboard], stopping: threading.Event, interval_s: float
) -> None:
    """The timer: a tick every `interval_s` until `stop()`, or until the dashboard is
    gone (an app dropped without stopping it leaves no thread behind)."""
    while not stopping.wait(interval_s):
        alive = board()
        if alive is None:
            return
        alive._tick()
        del alive


def _asset(name: str) -> bytes:
    """A file of the page, from the package (a wheel or a source checkout)."""
    return (resources.files("engine.service") / "static" / "dashboard" / name).read_bytes()


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits) if math.isfinite(value) else 0.0


def _dumps(body: Any) -> str:
    # ASCII: a string a request carried (a key, an id) cannot break the encoding or the
    # event framing (a newline in it is `\n` in JSON)
    return json.dumps(body, ensure_ascii=True, allow_nan=False, separators=(",", ":"))


def _json(body: Any) -> Response:
    return Response(_dumps(body), media_type="application/json")


def _secured(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response
