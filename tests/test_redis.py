"""The Redis store against a real redis-server: many processes, failure, atomicity, trips."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
from _design import from_design

from engine.limits.stores import open_store
from engine.limits.stores.base import Spec, StoreUnavailableError
from engine.limits.stores.redis_store import BUCKETS, RedisStore

pytest_plugins = ["_redis"]

ROOT = Path(__file__).resolve().parent.parent


def fresh(server: Any, db: int, timeout: float = 2.0) -> RedisStore:
    store = RedisStore(server.url.rsplit("/", 1)[0] + f"/{db}?timeout={timeout}")
    store._redis.flushdb()
    return store


def test_open_store_picks_redis_by_scheme(redis_server: Any) -> None:
    store = open_store(redis_server.url)
    assert isinstance(store, RedisStore)
    store.close()


def test_three_processes_sharing_ten_per_hour_admit_exactly_ten(redis_server: Any) -> None:
    store = fresh(redis_server, 3)
    store.close()
    url = redis_server.url.rsplit("/", 1)[0] + "/3?timeout=2"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine import PolicyEngine
        engine = PolicyEngine.from_text("limit user 10 per 1h\\n", state={url!r})
        allowed = sum(engine.evaluate({{"id": str(i), "user": "shared"}}).allowed
                      for i in range(25))
        print(allowed)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    counts = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        counts.append(int(out.strip()))
    assert sum(counts) == 10


def test_script_is_atomic_under_eight_concurrent_clients(redis_server: Any) -> None:
    store = fresh(redis_server, 4)
    url = redis_server.url.rsplit("/", 1)[0] + "/4?timeout=5"
    admitted = []
    lock = threading.Lock()
    spec = Spec("global/requests/3600000/", 100.0, 100 / 3_600_000, 1.0)

    def hammer() -> None:
        mine = RedisStore(url)
        count = 0
        for _ in range(60):
            if mine.acquire([spec], (), 1_800_000_000_000.0).option is not None:
                count += 1
        mine.close()
        with lock:
            admitted.append(count)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(admitted) == 100  # 480 tries, capacity 100, no refill at a fixed time
    store.close()


def test_one_round_trip_per_decision(redis_server: Any) -> None:
    store = fresh(redis_server, 5)
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/5")
    engine = from_design(
        "limit global 1000 per 1m\nlimit user 100 per 1m\nlimit ip 100 per 1m\n"
        "limit provider 1000 per 1m\n",
        state=store,
    )
    engine.evaluate({"id": "warm", "user": "u", "ip": "10.0.0.1"})  # loads the script
    client.config_resetstat()
    trips_before = store.round_trips
    for i in range(50):
        assert engine.evaluate({"id": str(i), "user": "u", "ip": "10.0.0.1"}).allowed
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 50  # Redis' own count: one script per decision
    # four buckets, each read once and written once per decision (the take starts from what
    # the check read)
    assert stats["cmdstat_get"]["calls"] == 50 * 4
    assert stats["cmdstat_set"]["calls"] == 50 * 4
    # nothing else reached the server but the script's own GET/SET and this test's calls
    assert set(stats) <= {"cmdstat_evalsha", "cmdstat_get", "cmdstat_set",
                          "cmdstat_config|resetstat", "cmdstat_info"}  # fmt: skip
    assert store.round_trips - trips_before == 50
    client.close()


def test_buckets_get_a_ttl_and_quotas_live_in_redis(redis_server: Any) -> None:
    store = fresh(redis_server, 6)
    engine = from_design("limit user 100 per 1m burst 10\n", state=store)
    engine.evaluate({"id": "a", "user": "u"})
    key = BUCKETS + "user/requests/60000/u"
    ttl = store._redis.pttl(key)
    assert 0 < ttl <= 600 + 1000  # one token refills in 600 ms, plus a second of slack
    assert [k for k, _ in store.buckets()] == ["user/requests/60000/u"]
    assert store.reset("user/") == 1
    assert store.buckets() == []
    from engine.limits.stores.base import Quota

    store.set_quota(Quota("user", "vip", 5, 60_000, 0, None))
    assert store.quotas() == [Quota("user", "vip", 5.0, 60_000.0, 0.0, None)]
    assert store.remove_quota("user", "vip")
    assert store.quotas() == []


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_gives_the_fail_mode_then_recovers(tmp_path: Path, mode: str) -> None:
    from _redis import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        policy = f"defaults {{ on_store_error {mode} }}\nlimit user 3 per 1h\n"
        engine = from_design(policy, state=server.url + "?timeout=0.2")
        assert engine.evaluate({"id": "1", "user": "u"}).allowed
        server.stop()  # killed mid-run
        down = engine.evaluate({"id": "2", "user": "u"})
        assert down.allowed is (mode == "open")
        if mode == "closed":
            assert down.denied_by == {
                "scope": "store",
                "key": None,
                "unit": None,
                "retry_after_ms": None,
            }
        assert engine.limiter.store_errors == 1
        server.start()  # back, empty (no persistence): the store reconnects by itself
        results = [engine.evaluate({"id": str(i), "user": "u"}).allowed for i in range(5)]
        assert results == [True, True, True, False, False]
    finally:
        server.stop()


def test_a_policy_that_names_no_fail_mode_fails_open(tmp_path: Path) -> None:
    """`on_store_error` defaults to `open` (docs/language.md §3): with Redis gone, a policy
    that never sets it keeps allowing, and counts the error."""
    from _redis import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        engine = from_design("limit user 3 per 1h\n", state=server.url + "?timeout=0.2")
        assert engine.program.default_route.settings.on_store_error == "open"
        assert engine.evaluate({"id": "1", "user": "u"}).allowed
        server.stop()
        down = engine.evaluate({"id": "2", "user": "u"})
        assert down.allowed is True and down.denied_by is None
        assert engine.limiter.store_errors == 1
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_stalled_redis_is_bounded_by_its_timeout(tmp_path: Path, mode: str) -> None:
    """A Redis that stops answering (SIGSTOP: the socket stays open, nothing replies) is a
    store error after the URL's timeout, not a decision that waits forever."""
    import signal

    from _redis import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    assert server.process is not None
    try:
        policy = f"defaults {{ on_store_error {mode} }}\nlimit user 3 per 1h\n"
        engine = from_design(policy, state=server.url + "?timeout=0.2")
        assert engine.evaluate({"id": "1", "user": "u"}).allowed
        server.process.send_signal(signal.SIGSTOP)
        answers: list[Any] = []
        worker = threading.Thread(
            target=lambda: answers.append(engine.evaluate({"id": "2", "user": "u"})), daemon=True
        )
        worker.start()
        worker.join(timeout=60)  # a guard against a hang, not a timing assertion
        assert not worker.is_alive(), "evaluate waited on a stalled Redis"
        (stalled,) = answers
        assert stalled.allowed is (mode == "open")
        assert engine.limiter.store_errors == 1
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_down_when_quotas_are_due_for_a_refresh(tmp_path: Path, mode: str) -> None:
    """Runtime quotas are re-read from the store once a second; an outage at that moment is
    the policy's `on_store_error` too, not an exception out of `evaluate`."""
    from _redis import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    now = [1_800_000_000.0]
    try:
        policy = f"defaults {{ on_store_error {mode} }}\nlimit user 3 per 1h\n"
        engine = from_design(policy, state=server.url + "?timeout=0.2", clock=lambda: now[0])
        assert engine.evaluate({"id": "1", "user": "u"}).allowed
        server.stop()
        now[0] += 5.0  # the quota cache is stale: the next check reads quotas first
        down = engine.evaluate({"id": "2", "user": "u"})
        assert down.allowed is (mode == "open")
        assert engine.limiter.store_errors == 1
    finally:
        server.stop()


def test_unreachable_redis_raises_unavailable_not_a_hang() -> None:
    from _redis import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0?timeout=0.2")
    with pytest.raises(StoreUnavailableError, match=r"redis at `redis://127\.0\.0\.1:"):
        store.acquire([Spec("k", 1, 1, 1)], (), 0.0)


def test_bad_redis_url_is_a_configuration_error() -> None:
    from engine.limits.stores import ConfigurationError

    with pytest.raises(ConfigurationError, match="`timeout` must be seconds"):
        RedisStore("redis://127.0.0.1:1/0?timeout=soon")


def test_provider_health_is_shared_between_instances(redis_server: Any) -> None:
    from engine.routing.shared_health import SharedMetrics

    fresh(redis_server, 7).close()
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    now = [1_800_000_000.0]
    policy = (
        "defaults {\n strategy latency\n min_samples 10\n cooldown after 3 failures for 30s\n}\n"
        "route r {\n prefer gemini/gemini-1.5-flash-latest\n"
        " prefer claude/claude-3-haiku-20240307\n}\n"
    )
    models = ["gemini/gemini-1.5-flash-latest", "claude/claude-3-haiku-20240307"]
    one = SharedMetrics(url, models, clock=lambda: now[0], background=False)
    two = SharedMetrics(url, models, clock=lambda: now[0], background=False)
    a = from_design(policy, metrics=one, clock=lambda: now[0])
    b = from_design(policy, metrics=two, clock=lambda: now[0])
    decision = a.evaluate({"id": "x"})
    assert decision.model == "gemini-1.5-flash-latest"
    for _ in range(12):  # instance A sees flash get slow
        a.record(decision, latency_ms=5000.0, success=True)
    one.refresh()  # A writes
    assert b.evaluate({"id": "y"}).model == "gemini-1.5-flash-latest"  # B has not read yet
    two.refresh()  # B reads the shared view: no round trip per decision after this
    stats = two.stats("gemini/gemini-1.5-flash-latest")
    assert stats is not None and stats.samples == 12
    assert stats.p95_ms == pytest.approx(5000.0, rel=0.01)
    assert b.evaluate({"id": "z"}).model == "claude-3-haiku-20240307"
    # failures on B put haiku in cooldown for A too
    haiku = b.evaluate({"id": "w"})
    for _ in range(3):
        b.record(haiku, latency_ms=100.0, success=False)
    two.refresh()
    one.refresh()
    cooled = a.evaluate({"id": "v"}, explain=True)
    assert [s["because"] for s in cooled.trace if s["step"] == "drop"][-1].startswith(
        "in cooldown after 3 consecutive failures"
    )
    one.close()
    two.close()


def test_a_shared_metrics_outage_is_logged_once_then_its_recovery(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from _redis import RedisServer

    from engine.routing.shared_health import SharedMetrics

    server = RedisServer(tmp_path)
    server.start()
    metrics = SharedMetrics(server.url + "?timeout=0.2", ["openai/gpt-4o"], background=False)
    try:
        caplog.set_level(logging.WARNING, logger="policyctl.shared_metrics")
        metrics.refresh()
        assert caplog.messages == []
        server.stop()  # killed: every refresh now fails
        for _ in range(5):
            metrics.record("openai/gpt-4o", 120.0, True)
            metrics.refresh()
        assert metrics.errors == 5
        unavailable = [m for m in caplog.messages if "unavailable" in m]
        assert len(unavailable) == 1, caplog.messages
        assert unavailable[0].startswith(
            "shared metrics unavailable (1 failed refreshes in this outage, 1 in all): "
        )
        server.start()  # back on the same port: the client reconnects by itself
        metrics.refresh()
        metrics.refresh()
        assert caplog.messages[-1] == "shared metrics available again after 5 failed refreshes"
        assert len(caplog.messages) == 2
        server.stop()  # a second outage is logged again, counted on its own
        metrics.refresh()
        assert caplog.messages[-1].startswith(
            "shared metrics unavailable (1 failed refreshes in this outage, 6 in all): "
        )
    finally:
        metrics.close()
        server.stop()


def test_admin_reads_on_a_served_redis_that_is_down_are_503_then_recover(tmp_path: Path) -> None:
    """A real `policyctl serve` on Redis state: with Redis killed, the admin `GET`s that
    read the store answer 503 saying so (they were a 500 `internal error` and a traceback
    in the log); decisions keep failing open, counted in `policyctl_store_errors_total`;
    once Redis is back they answer again."""
    import httpx
    from _redis import RedisServer
    from test_service import serving

    server = RedisServer(tmp_path)
    server.start()
    try:
        state = server.url + "?timeout=0.2"
        with serving(tmp_path, "--analytics", str(tmp_path / "a.duckdb"), state=state) as served:
            status = f"{served.url}/v1/ratelimit/status?user=bob"
            assert httpx.get(status, timeout=20).status_code == 200
            server.stop()
            for path in ("status?user=bob", "config", "buckets"):
                down = httpx.get(f"{served.url}/v1/ratelimit/{path}", timeout=20)
                assert down.status_code == 503, (path, down.text)
                assert down.json()["error"].startswith(f"redis at `{state}`: "), down.text
                assert down.headers["retry-after"] == "1"
            decided = httpx.post(f"{served.url}/v1/eval", json={"id": "r", "user": "bob"})
            assert decided.status_code == 200 and decided.json()["allowed"] is True
            # the failing open is in /metrics, not only in the log
            scraped = httpx.get(f"{served.url}/metrics", timeout=20).text
            errors = [line for line in scraped.splitlines()
                      if line.startswith("policyctl_store_errors_total ")]  # fmt: skip
            assert len(errors) == 1 and float(errors[0].split()[1]) >= 1, errors
            server.start()
            back = httpx.get(status, timeout=20)
            assert back.status_code == 200 and back.json()[0]["key"] == "bob"
            assert "Traceback" not in served.output()
    finally:
        server.stop()
