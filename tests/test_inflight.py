"""In-flight (`concurrent`) limits: a slot per decision, released by its outcome or its lease.

Exactness under concurrency (8 threads on one memory state; 3 processes on one real Redis),
release once, lease expiry on the injected clock, dry runs, and the language (check, fmt)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.formatter import format_text
from engine.limits.stores.base import Gauge
from engine.limits.stores.memory import MemoryStore
from engine.limits.stores.redis_store import RedisStore

pytest_plugins = ["_redis"]

ROOT = Path(__file__).resolve().parent.parent
ROUTE = "route default { strategy cost }\n"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def engine_for(text: str, clock: Clock | None = None, state: Any = "memory://") -> PolicyEngine:
    return PolicyEngine.from_text(text + ROUTE, clock=clock or Clock(), state=state)


def held(engine: PolicyEngine) -> int:
    return sum(n for _, n in engine.limiter.inflight())


def test_eight_threads_never_exceed_three_in_flight_and_all_slots_return() -> None:
    engine = engine_for("limit global concurrent 3\n")
    lock = threading.Lock()
    in_flight = [0, 0]  # now, the most seen
    allowed = [0]
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for i in range(200):
            decision = engine.evaluate({"id": f"t{n}-{i}", "prompt": "hi"})
            if not decision.allowed:
                assert decision.denied_by is not None
                assert decision.denied_by.unit == "concurrent"
                continue
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight[1], in_flight[0])
                allowed[0] += 1
            with lock:  # hold: decremented before the outcome releases the slot
                in_flight[0] -= 1
            assert engine.record(decision, latency_ms=5.0, success=True)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert in_flight[1] <= 3
    assert allowed[0] >= 3
    assert held(engine) == 0


def test_a_slot_is_held_until_the_outcome() -> None:
    engine = engine_for("limit global concurrent 2\n")
    first = engine.evaluate({"id": "a", "prompt": "hi"})
    second = engine.evaluate({"id": "b", "prompt": "hi"})
    third = engine.evaluate({"id": "c", "prompt": "hi"})
    assert first.allowed and second.allowed and not third.allowed
    assert third.denied_by is not None
    assert (third.denied_by.scope, third.denied_by.unit) == ("global", "concurrent")
    assert third.denied_by.retry_after_ms == 600_000  # the soonest lease: the default 10m
    engine.record(first, latency_ms=1.0, success=True)
    assert engine.evaluate({"id": "d", "prompt": "hi"}).allowed


def test_a_second_outcome_releases_nothing() -> None:
    engine = engine_for("limit global concurrent 2\n")
    a = engine.evaluate({"id": "a", "prompt": "hi"})
    engine.evaluate({"id": "b", "prompt": "hi"})
    assert held(engine) == 2
    engine.record(a, latency_ms=1.0, success=True)
    assert held(engine) == 1
    engine.record(a, latency_ms=1.0, success=True)  # a duplicate outcome
    engine.record_outcome("openai", "gpt-4o-mini", latency_ms=1.0, success=True, request_id="a")
    assert held(engine) == 1
    engine.evaluate({"id": "c", "prompt": "hi"})
    assert not engine.evaluate({"id": "d", "prompt": "hi"}).allowed


def test_record_outcome_with_the_request_id_releases() -> None:
    engine = engine_for("limit user concurrent 1\n")
    decision = engine.evaluate({"id": "r1", "user": "u", "prompt": "hi"})
    assert not engine.evaluate({"id": "r2", "user": "u", "prompt": "hi"}).allowed
    assert engine.evaluate({"id": "r3", "user": "v", "prompt": "hi"}).allowed  # per user
    assert decision.provider is not None and decision.model is not None
    engine.record_outcome(
        decision.provider, decision.model, latency_ms=3.0, success=False, request_id="r1"
    )
    assert engine.evaluate({"id": "r4", "user": "u", "prompt": "hi"}).allowed


def test_lease_expiry_on_the_clock_releases_a_slot_with_no_outcome() -> None:
    clock = Clock()
    engine = engine_for("limit global concurrent 1 lease 30s\n", clock)
    assert engine.evaluate({"id": "a", "prompt": "hi"}).allowed
    clock.now += 10
    denied = engine.evaluate({"id": "b", "prompt": "hi"})
    assert not denied.allowed
    assert denied.denied_by is not None and denied.denied_by.retry_after_ms == 20_000
    clock.now += 20  # the lease runs out: no outcome ever came
    assert held(engine) == 0
    assert engine.evaluate({"id": "c", "prompt": "hi"}).allowed


def test_dry_run_takes_nothing_but_reports_a_full_gauge() -> None:
    engine = engine_for("limit global concurrent 1\n")
    for i in range(3):
        assert engine.evaluate({"id": f"q{i}", "prompt": "hi"}, dry_run=True).allowed
    assert held(engine) == 0
    assert engine.evaluate({"id": "real", "prompt": "hi"}).allowed
    assert not engine.evaluate({"id": "q", "prompt": "hi"}, dry_run=True).allowed
    assert held(engine) == 1


def test_a_bucket_denial_holds_no_slot_and_a_gauge_denial_takes_no_token() -> None:
    engine = engine_for("limit global concurrent 5\nlimit user 1 per 1h\n")
    assert engine.evaluate({"id": "a", "user": "u", "prompt": "hi"}).allowed
    denied = engine.evaluate({"id": "b", "user": "u", "prompt": "hi"})
    assert denied.denied_by is not None and denied.denied_by.scope == "user"
    assert held(engine) == 1  # only the allowed decision's slot
    engine2 = engine_for("limit global concurrent 1\nlimit user 2 per 1h\n")
    first = engine2.evaluate({"id": "a", "user": "u", "prompt": "hi"})
    assert not engine2.evaluate({"id": "b", "user": "u", "prompt": "hi"}).allowed  # gauge
    engine2.record(first, latency_ms=1.0, success=True)
    # the gauge's denial took no token of the user's 2: the next one still fits
    assert engine2.evaluate({"id": "c", "user": "u", "prompt": "hi"}).allowed


def test_a_full_model_gauge_routes_to_the_next_candidate() -> None:
    cheapest = engine_for("").evaluate({"id": "x", "prompt": "hi"}, dry_run=True)
    name = f"{cheapest.provider}/{cheapest.model}"
    engine = engine_for(f'limit model "{name}" concurrent 1\n')
    first = engine.evaluate({"id": "a", "prompt": "hi"})
    assert first.allowed and f"{first.provider}/{first.model}" == name
    second = engine.evaluate({"id": "b", "prompt": "hi"})
    assert second.allowed and f"{second.provider}/{second.model}" != name
    assert "rate limit" in second.reason
    engine.record(first, latency_ms=1.0, success=True)
    third = engine.evaluate({"id": "c", "prompt": "hi"})
    assert f"{third.provider}/{third.model}" == name
    assert held(engine) == 1  # the third's (the second went to a model without a gauge)


def test_memory_store_gauge_is_all_or_nothing() -> None:
    store = MemoryStore()
    now = 1_000.0
    one, two = Gauge("a", 1, now + 100), Gauge("b", 1, now + 100)
    assert store.take_slots([one], "x", now).failed is None
    found = store.take_slots([two, one], "y", now)
    assert found.failed == 1 and found.free_at == now + 100
    assert store.inflight(now) == [("a", 1)]  # `b` was not taken
    assert store.release_slots("x") == 1
    assert store.release_slots("x") == 0


def test_check_refuses_nonsense() -> None:
    text = (
        "limit user concurrent 0\n"
        "limit user concurrent 2 per 1m\n"
        "limit global concurrent 3 burst 2\n"
        "limit global concurrent 2.5\n"
        "limit global concurrent 2 lease 0s\n"
    )
    with pytest.raises(PolicyError) as err:
        PolicyEngine.from_text(text + ROUTE)
    codes = {d.code for d in err.value.diagnostics}
    assert codes == {"E0413", "E0414", "E0415", "E0416", "E0417"}


def test_fmt_round_trips() -> None:
    text = (
        'limit model "openai/gpt-4o" concurrent 8\n'
        "limit user concurrent 2 lease 5m\n"
        "limit global concurrent 100\n"
    )
    formatted = format_text(text)
    assert "concurrent  8" in formatted and "2 lease 5m" in formatted
    assert format_text(formatted) == formatted
    PolicyEngine.from_text(formatted + ROUTE)


# ------------------------------------------------------------------ Redis


def fresh(server: Any, db: int) -> RedisStore:
    store = RedisStore(server.url.rsplit("/", 1)[0] + f"/{db}?timeout=5")
    store._redis.flushdb()
    return store


def test_redis_gauge_matches_the_memory_store(redis_server: Any) -> None:
    store = fresh(redis_server, 14)
    now = 1_000.0
    one, two = Gauge("a", 1, now + 100), Gauge("b", 2, now + 100)
    assert store.take_slots([one, two], "x", now).failed is None
    found = store.take_slots([two, one], "y", now)
    assert found.failed == 1 and found.free_at == now + 100 and found.held == (1, 1)
    assert store.inflight(now) == [("a", 1), ("b", 1)]
    later = Gauge("a", 1, now + 200)
    assert store.take_slots([later], "z", now + 100).failed is None  # x's lease ran out
    assert store.release_slots("x") == 1  # only `b`: its slot of `a` had expired
    assert store.release_slots("x") == 0
    assert store.inflight(now + 100) == [("a", 1)]
    store.close()


def test_three_processes_on_one_redis_never_exceed_n_in_flight(redis_server: Any) -> None:
    fresh(redis_server, 15).close()
    url = redis_server.url.rsplit("/", 1)[0] + "/15?timeout=5"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import redis
        from engine import PolicyEngine
        engine = PolicyEngine.from_text(
            "limit global concurrent 2\\nroute default {{ strategy cost }}\\n", state={url!r}
        )
        counter = redis.Redis.from_url({url!r}.split("?")[0])
        most, allowed = 0, 0
        for i in range(150):
            decision = engine.evaluate({{"id": sys.argv[1] + str(i), "prompt": "hi"}})
            if not decision.allowed:
                continue
            allowed += 1
            most = max(most, counter.incr("test:inflight"))
            counter.decr("test:inflight")
            engine.record(decision, latency_ms=1.0, success=True)
        print(most, allowed)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"p{n}-"], stdout=subprocess.PIPE, text=True
        )
        for n in range(3)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        most, allowed = map(int, out.split())
        assert most <= 2
        total += allowed
    assert total >= 2
    client = redis.Redis.from_url(url.split("?")[0])
    assert int(client.get("test:inflight") or 0) == 0
    left = RedisStore(url)
    assert left.inflight(0.0) == []  # every slot returned by its outcome
    left.close()
    client.close()


def test_lsp_hover_explains_concurrent_and_lease() -> None:
    from engine.lsp import knowledge

    text = 'limit model "openai/gpt-4o" concurrent 8 lease 5m'
    shown = knowledge.hover(text, text.index("concurrent") + 2, None)
    assert shown is not None and "in-flight" in shown.markdown
    shown = knowledge.hover(text, text.index("lease") + 1, None)
    assert shown is not None and "outcome never comes" in shown.markdown


def test_metrics_show_slots_per_model_and_summed_per_user() -> None:
    """`policyctl_inflight`: a model gauge by its key, users summed (never a label)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from engine.service.telemetry import Telemetry

    engine = engine_for("limit user concurrent 5\nlimit global concurrent 9\n")
    for i, user in enumerate(("alice", "bob", "bob")):
        assert engine.evaluate({"id": f"m{i}", "user": user, "prompt": "hi"}).allowed
    registry = CollectorRegistry()
    registry.register(Telemetry(engine))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    samples = {(s.labels["scope"], s.labels["key"]): s.value
               for s in families["policyctl_inflight"].samples}  # fmt: skip
    assert samples == {("global", ""): 3.0, ("user", ""): 3.0}
    engine.close()


def test_ratelimit_status_shows_free_slots_and_the_lease() -> None:
    from engine.cli.ratelimit_cmd import _status_table
    from engine.limits.admin import RateLimitAdmin

    engine = engine_for("limit user concurrent 2\nlimit global concurrent 5 lease 5m\n")
    for i in range(2):
        assert engine.evaluate({"id": f"s{i}", "user": "al", "prompt": "hi"}).allowed
    rows = RateLimitAdmin(engine).status(verbose=True)
    shown = {(r["scope"], r["key"]): (r["window"], r["tokens"], r["in_flight"]) for r in rows}
    assert shown == {("global", None): ("lease 5m", 3, 2), ("user", "al"): ("lease 10m", 0, 2)}
    assert "2 in flight" in _status_table(rows, verbose=True)
    engine.record(engine.evaluate({"id": "s2", "user": "bo", "prompt": "hi"}), latency_ms=1.0,
                  success=True)  # fmt: skip
    (user_row,) = [r for r in RateLimitAdmin(engine).status("user", "al")]
    assert user_row["in_flight"] == 2  # another user's outcome frees none of al's
    engine.close()


def test_an_instance_that_never_decided_releases_the_slots_of_another(redis_server: Any) -> None:
    """Two engines on one Redis (a load balancer sends the outcome elsewhere): the outcome
    reaching an instance that has made no decision yet still frees the slot."""
    clock = Clock()
    text = "limit global concurrent 1\n"
    deciding = engine_for(text, clock, fresh(redis_server, 13))
    receiving = engine_for(text, clock, fresh(redis_server, 13))
    first = deciding.evaluate({"id": "a", "prompt": "hi"})
    assert first.allowed
    assert not deciding.evaluate({"id": "b", "prompt": "hi"}).allowed  # the one slot is held
    assert receiving.record_outcome(
        first.provider, first.model, latency_ms=100.0, success=True, request_id="a"
    )
    assert held(deciding) == 0
    assert deciding.evaluate({"id": "c", "prompt": "hi"}).allowed
    deciding.close()
    receiving.close()
