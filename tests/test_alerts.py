"""Alerts: the `alert` statement through the compiler, and the AlertMonitor's states on a
fake clock, driven through a real PolicyEngine (recorded outcomes, real denials), with
notifications delivered to a real HTTP receiver on 127.0.0.1.

No test sleeps to make time pass: the engine's clock is a fake one and the tests call
`alert_monitor.tick(now)` themselves. Waiting happens only for the webhook thread's
deliveries (`sender.flush()`: until the queue is done) and, in the `policyctl serve` test,
for a real server's ticker (a generous timeout, asserting content, never time).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.alerts.records import FIRING, INACTIVE, PENDING, RESOLVED, AlertStatus
from engine.language.formatter import format_text
from engine.language.loader import compile_sources

ROOT = Path(__file__).resolve().parent.parent
START = 1_750_000_000.0  # a fixed epoch second the fake clocks start at (2025-06-15)


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------- a webhook receiver


class Receiver:
    """An HTTP server on 127.0.0.1 in a thread, keeping every JSON body POSTed to it."""

    def __init__(self, status: int = 200) -> None:
        received: list[dict[str, object]] = []
        self.received = received
        self.arrived = threading.Condition()
        arrived = self.arrived

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                self.send_response(status)
                self.end_headers()
                with arrived:
                    received.append(body)
                    arrived.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float = 60.0) -> list[dict[str, object]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, timeout=timeout_s)
            return list(self.received)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.close()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- helpers

SLOW = """
route chat {
    prefer openai/gpt-4o-mini
}

alert "slow {key}" when p95(provider) > 3s over 5m for 5m
"""


def engine_of(text: str, clock: Clock) -> PolicyEngine:
    return PolicyEngine.from_text(text, "alerts.policy", clock=clock)


def status(engine: PolicyEngine, name: str, key: str | None = None) -> AlertStatus:
    found = [s for s in engine.alerts() if s.name == name and s.key == key]
    assert len(found) == 1, engine.alerts()
    return found[0]


def run(
    engine: PolicyEngine,
    clock: Clock,
    seconds: int,
    each: Callable[[int], None] | None = None,
) -> list[tuple[float, str, str]]:
    """Tick once a second for `seconds` (calling `each(second)` first): the notifications
    as (time, state, message)."""
    sent: list[tuple[float, str, str]] = []
    for second in range(seconds):
        clock.now += 1
        if each is not None:
            each(second)
        for n in engine.alert_monitor.tick(clock.now):
            sent.append((clock.now, n.status.state, n.status.message))
    return sent


def record_slow(engine: PolicyEngine, latency_ms: float = 5000.0) -> Callable[[int], None]:
    decision = engine.evaluate({"id": "r", "prompt": "hi"}, dry_run=True)

    def each(second: int) -> None:
        if second % 10 == 0:
            for _ in range(3):
                engine.record(decision, latency_ms=latency_ms, success=True)

    return each


# ---------------------------------------------------------------- the language


def test_an_alert_compiles_to_its_rule() -> None:
    loaded = compile_sources([("a.policy", SLOW + 'alert "spend" when spend > $5 per 1h\n')])
    slow, spend = loaded.program.alerts
    assert (slow.name, slow.signal, slow.split_by, slow.subject) == (
        "slow {key}", "p95", "provider", None,
    )  # fmt: skip
    assert (slow.op, slow.threshold, slow.window_ms, slow.for_ms) == (">", 3000.0, 300_000, 300_000)
    assert slow.location == "a.policy:6"
    assert (spend.signal, spend.threshold, spend.window_ms, spend.for_ms) == (
        "spend", 5.0, 3_600_000, 0.0,
    )  # fmt: skip


def test_a_catalog_subject_resolves_to_its_models_and_a_quoted_word_is_a_provider() -> None:
    text = 'alert "mini" when p95(openai/gpt-4o-mini) > 3s\nalert "all" when p95(openai) > 3s\n'
    mini, every = compile_sources([("a.policy", text)]).program.alerts
    assert mini.split_by is None and mini.subject == "openai/gpt-4o-mini"
    assert mini.models == {"openai/gpt-4o-mini"}
    assert len(every.models) > 1 and all(key.startswith("openai/") for key in every.models)


def test_format_round_trip_keeps_the_program() -> None:
    text = 'alert "x {key}"  when  violations( user )>5 per 1m  for 30s\nlimit user 1 per 1m\n'
    formatted = format_text(text)
    assert formatted.splitlines()[0] == 'alert "x {key}" when violations(user) > 5 per 1m for 30s'
    assert format_text(formatted) == formatted
    before = compile_sources([("a.policy", text)]).program.alerts
    after = compile_sources([("a.policy", formatted)]).program.alerts
    assert [(a.signal, a.split_by, a.threshold, a.window_ms, a.for_ms) for a in before] == [
        (a.signal, a.split_by, a.threshold, a.window_ms, a.for_ms) for a in after
    ]


# ---------------------------------------------------------------- the state machine


def test_pending_until_for_then_fires_once_stays_firing_and_resolves_once() -> None:
    clock = Clock()
    with engine_of(SLOW, clock) as engine:
        slow = record_slow(engine)
        assert status(engine, "slow {key}").state == INACTIVE  # listed before any key
        # slow from the first tick (START + 1) on; 4m59s later: pending, nothing sent
        sent = run(engine, clock, 300, slow)
        assert sent == []
        pending = status(engine, "slow {key}", "openai")
        assert pending.state == PENDING and pending.since == START + 1
        assert pending.value is not None and pending.value > 3000
        # at 5m it fires, once
        sent = run(engine, clock, 1, slow)
        assert sent == [(START + 301, FIRING, "slow openai")]
        # still slow for another 3 minutes: firing, nothing more sent
        assert run(engine, clock, 180, slow) == []
        assert status(engine, "slow {key}", "openai").state == FIRING
        # fast from now on: once the slow outcomes have left the 5m window, one resolve
        fast = record_slow(engine, latency_ms=200.0)
        sent = run(engine, clock, 600, fast)
        assert [(state, message) for _, state, message in sent] == [(RESOLVED, "slow openai")]
        assert status(engine, "slow {key}", "openai").state == RESOLVED
        assert engine.alert_monitor.notifications == 2


def test_a_condition_that_stops_before_for_goes_back_to_inactive_without_a_word() -> None:
    clock = Clock()
    with engine_of(SLOW, clock) as engine:
        sent = run(engine, clock, 60, record_slow(engine))
        assert status(engine, "slow {key}", "openai").state == PENDING
        decision = engine.evaluate({"id": "r", "prompt": "hi"}, dry_run=True)
        for _ in range(1000):  # fast outcomes swamp the 18 slow ones: p95 is fast again
            engine.record(decision, latency_ms=100.0, success=True)
        sent += run(engine, clock, 1)
        assert status(engine, "slow {key}", "openai").state == INACTIVE
        sent += run(engine, clock, 900)
        assert sent == []
        # the key has had nothing in its window for a window: it is forgotten
        assert [(s.key, s.state) for s in engine.alerts()] == [(None, INACTIVE)]


def test_violations_per_user_fire_for_that_user_only_and_name_it() -> None:
    clock = Clock()
    text = 'limit user 2 per 1h\nalert "abuse by {key}" when violations(user) > 3 per 1m\n'
    with engine_of(text, clock) as engine:

        def traffic(second: int) -> None:
            if second < 10:  # alice: 2 allowed, then 8 denied; bob: 2 allowed, 1 denied
                engine.evaluate({"id": f"a{second}", "user": "alice", "prompt": "hi"})
            if second < 3:
                engine.evaluate({"id": f"b{second}", "user": "bob", "prompt": "hi"})

        sent = run(engine, clock, 10, traffic)
        assert [(s, m) for _, s, m in sent] == [(FIRING, "abuse by alice")]
        assert status(engine, "abuse by {key}", "alice").value == 8
        assert status(engine, "abuse by {key}", "bob").state == INACTIVE
        # a minute later the violations have left the window: alice's alert resolves
        sent = run(engine, clock, 70)
        assert [(s, m) for _, s, m in sent] == [(RESOLVED, "abuse by alice")]


def test_denials_and_a_dry_run_that_is_not_counted() -> None:
    clock = Clock()
    text = 'deny "no" when request.user == "mallory"\nalert "denials" when denials >= 2 per 1m\n'
    with engine_of(text, clock) as engine:
        for _ in range(3):
            engine.evaluate({"id": "m", "user": "mallory"}, dry_run=True)
        assert run(engine, clock, 2) == []
        engine.evaluate({"id": "m1", "user": "mallory"})
        engine.evaluate({"id": "m2", "user": "mallory"})
        assert [s for _, s, _ in run(engine, clock, 1)] == [FIRING]


def test_an_unchanged_alert_keeps_its_state_across_a_reload(tmp_path: Path) -> None:
    clock = Clock()
    policy = tmp_path / "a.policy"
    policy.write_text(SLOW, encoding="utf-8")
    with PolicyEngine(policy, clock=clock) as engine:
        run(engine, clock, 60, record_slow(engine))
        policy.write_text(SLOW + 'alert "spend" when spend > $100 per 1h\n', encoding="utf-8")
        assert engine.reload()
        assert status(engine, "slow {key}", "openai").state == PENDING
        assert status(engine, "spend").state == INACTIVE


# ---------------------------------------------------------------- delivery


def test_a_real_webhook_receives_one_firing_and_one_resolved(receiver: Receiver) -> None:
    clock = Clock()
    with engine_of(SLOW.replace("for 5m", f'for 5m to "{receiver.url}"'), clock) as engine:
        run(engine, clock, 400, record_slow(engine))
        run(engine, clock, 600, record_slow(engine, latency_ms=150.0))
        engine.alert_monitor.sender.flush()
        bodies = receiver.wait_for(2)
        assert [(b["state"], b["message"]) for b in bodies] == [
            ("firing", "slow openai"),
            ("resolved", "slow openai"),
        ]
        firing = bodies[0]
        assert firing["alert"] == "slow {key}" and firing["key"] == "openai"
        assert firing["threshold"] == 3000.0 and firing["threshold_text"] == "3s"
        assert firing["unit"] == "duration" and float(firing["value"]) > 3000  # type: ignore[arg-type]
        assert firing["since"] == "2025-06-15T15:06:41.000Z"  # START + 1 s
        assert firing["labels"] == {
            "signal": "p95(provider)",
            "location": "alerts.policy:6",
            "policy_version": engine.version,
            "key": "openai",
        }
        assert engine.alert_monitor.deliveries().sent == 2


def test_the_default_webhook_serves_alerts_without_their_own(receiver: Receiver) -> None:
    clock = Clock()
    text = 'deny "no" when request.user == "m"\nalert "denied" when denials >= 1 per 1m\n'
    with engine_of(text, clock) as engine:
        engine.alert_monitor.configure(receiver.url)
        engine.evaluate({"id": "x", "user": "m"})
        run(engine, clock, 1)
        engine.alert_monitor.sender.flush()
        assert [b["state"] for b in receiver.wait_for(1)] == ["firing"]


def test_a_dead_webhook_neither_blocks_nor_fails_decisions_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    url = f"http://127.0.0.1:{closed_port()}/hook"
    text = (
        f'deny "no" when request.user == "m"\nalert "denied" when denials >= 1 per 1m to "{url}"\n'
    )
    with engine_of(text, clock) as engine:
        engine.alert_monitor.configure(timeout_s=2.0, retries=2, backoff_s=0.2)
        engine.evaluate({"id": "x", "user": "m"})
        assert [s for _, s, _ in run(engine, clock, 1)] == [FIRING]
        # while the sender retries, decisions go on
        decisions = [engine.evaluate({"id": f"r{i}", "prompt": "hi"}) for i in range(50)]
        assert all(d.allowed for d in decisions)
        engine.alert_monitor.sender.flush()
        stats = engine.alert_monitor.deliveries()
        assert (stats.sent, stats.failed, stats.retries) == (0, 1, 2)
    assert any("alert webhook" in r.message and "failed" in r.message for r in caplog.records)


def test_notifications_are_logged_at_warning_and_info(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    text = 'deny "no" when request.user == "m"\nalert "denied" when denials >= 1 per 1m\n'
    caplog.set_level("INFO", logger="policyctl.alerts")
    with engine_of(text, clock) as engine:
        engine.evaluate({"id": "x", "user": "m"})
        run(engine, clock, 90)
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "policyctl.alerts"]
    assert [level for level, _ in lines] == ["WARNING", "INFO"]
    assert lines[0][1].startswith("alert firing: denied (denials = 1, alert when >= 1;")


# ---------------------------------------------------------------- policyctl serve


def test_serve_ticks_the_alerts_and_posts_to_the_alert_webhook(
    receiver: Receiver, tmp_path: Path
) -> None:
    policy = tmp_path / "a.policy"
    policy.write_text(
        'deny "no" when request.user == "m"\nalert "denied" when denials >= 1 per 1m\n',
        encoding="utf-8",
    )
    port = closed_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--policy", str(policy), "--state",
             "memory://", "--port", str(port), "--no-watch", "--alert-webhook", receiver.url],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        body = json.dumps({"id": "x", "user": "m"}).encode()
        deadline = time.monotonic() + 60
        while True:  # until the server answers (it prints its line before it listens)
            assert server.poll() is None, log.read_text(encoding="utf-8")
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/eval",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    assert json.loads(answer.read())["allowed"] is False
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, log.read_text(encoding="utf-8")
                time.sleep(0.1)
        bodies = receiver.wait_for(1, timeout_s=60)
        assert [(b["alert"], b["state"]) for b in bodies] == [("denied", "firing")]
        # the same state on /metrics and on the dashboard
        base = f"http://127.0.0.1:{port}"
        sent = 'policyctl_alert_notifications_total{result="sent"} 1.0'
        deadline = time.monotonic() + 60
        while True:  # the sender counts a delivery once the receiver has answered it
            with urllib.request.urlopen(f"{base}/metrics", timeout=30) as answer:
                scraped = answer.read().decode()
            if sent in scraped or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert 'policyctl_alert_state{alert="denied",key="",state="firing"} 1.0' in scraped
        assert 'policyctl_alert_state{alert="denied",key="",state="inactive"} 0.0' in scraped
        assert 'policyctl_alert_notifications_total{result="sent"} 1.0' in scraped
        with urllib.request.urlopen(f"{base}/dashboard/snapshot.json", timeout=30) as answer:
            (shown,) = json.loads(answer.read())["alerts"]
        assert (shown["message"], shown["state"]) == ("denied", "firing")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert "alert firing: denied" in log.read_text(encoding="utf-8")


def test_serve_refuses_an_alert_webhook_that_is_not_http() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--alert-webhook", "ftp://x"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "`--alert-webhook` is an http:// or https:// URL, got `ftp://x`" in done.stderr


# ---------------------------------------------------------------- the language server


def test_the_language_server_completes_signals_and_subjects_and_explains_them() -> None:
    from engine.lsp.knowledge import completions, hover, symbols

    text = 'alert "slow {key}" when p9'
    assert {"p95", "violations", "spend"} <= {
        c.label for c in completions(text, len(text), None).items
    }
    text = 'alert "slow {key}" when p95(pro'
    found = completions(text, len(text), None)
    assert found.start == len(text) - 3 and [c.label for c in found.items] == ["provider", "model"]
    text = 'alert "slow {key}" when p95(provider) > 3s for 5m'
    shown = hover(text, text.index("p95") + 1, None)
    assert shown is not None and shown.markdown.startswith("`p95`: the 95th latency percentile")
    keyword = hover(text, 2, None)
    assert keyword is not None and keyword.markdown.startswith('`alert "NAME" when SIGNAL')
    (symbol,) = symbols(Path("a.policy"), text)
    assert (symbol.name, symbol.kind) == ('alert "slow {key}"', "alert")
