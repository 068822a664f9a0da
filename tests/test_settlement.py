"""Reserve-then-settle: token and spend limits take an estimate at admission; the outcome
refunds or charges the difference on exactly the buckets the decision took, once, never past
full; an unsettled reservation expires on the engine's clock. Hand-computed on a fake clock,
on the memory, DuckDB and (real) Redis stores, and under 8 threads of outcomes."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import PolicyEngine
from engine.limits.stores.base import Adjustment, available
from engine.limits.stores.redis_store import RedisStore
from engine.service.telemetry import Telemetry

pytest_plugins = ["_redis"]

NOW = 1_800_000_000.0
TOKENS = "limit user tokens 1000 per 1m\n"
TOKEN_KEY = "user/tokens/60000/u"
SPEND = "limit user spend $0.001 per 1d\n"
SPEND_KEY = "user/spend/86400000/w"
ROUTE = "route default { strategy cost }\n"
# 1000 input + 1000 output tokens under `strategy cost`: gemini-2.5-flash-lite, the
# cheapest of the packaged catalog, (1000 × 0.1 + 1000 × 0.4) / 1e6 = $0.0005
FLASH_COST = 0.0005


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


StateFactory = Callable[[], Any]


@pytest.fixture(params=["memory", "duckdb", "redis"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path) -> StateFactory:
    if request.param == "memory":
        return lambda: "memory://"
    if request.param == "duckdb":
        return lambda: str(tmp_path / "state.duckdb")
    server = request.getfixturevalue("redis_server")

    def redis_state() -> RedisStore:
        store = RedisStore(server.url.rsplit("/", 1)[0] + "/13?timeout=5")
        store._redis.flushdb()
        return store

    return redis_state


def engine_for(policy: str, state: Any, clock: Clock, **kw: Any) -> PolicyEngine:
    return PolicyEngine.from_text(policy + ROUTE, state=state, clock=clock, **kw)


def level(engine: PolicyEngine, key: str, capacity: float, window_ms: float) -> float:
    """A bucket's tokens now."""
    return available(engine.store.peek(key), capacity, capacity / window_ms, engine.clock() * 1000)


def tokens_left(engine: PolicyEngine) -> float:
    return level(engine, TOKEN_KEY, 1000, 60_000)


def ask(engine: PolicyEngine, rid: str, input_tokens: int = 500, max_tokens: int = 100) -> Any:
    decision = engine.evaluate(
        {"id": rid, "user": "u", "input_tokens": input_tokens, "max_tokens": max_tokens}
    )
    assert decision.allowed
    return decision


def test_tokens_refunded_and_charged_once(make_state: StateFactory) -> None:
    engine = engine_for(TOKENS, make_state(), Clock())
    first = ask(engine, "a")  # 500 + 100 = 600 estimated
    assert tokens_left(engine) == pytest.approx(400)
    engine.record(first, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    assert tokens_left(engine) == pytest.approx(900)  # 100 used: 500 refunded
    second = ask(engine, "b")  # 600 more: 300 left
    assert tokens_left(engine) == pytest.approx(300)
    engine.record(second, latency_ms=1.0, success=True, input_tokens=500, output_tokens=300)
    assert tokens_left(engine) == pytest.approx(100)  # 800 used: 200 more charged
    # a second outcome for either id settles nothing
    engine.record(second, latency_ms=1.0, success=True, input_tokens=0, output_tokens=0)
    engine.record_outcome(
        first.provider, first.model, latency_ms=1.0, success=True, input_tokens=0,
        output_tokens=0, request_id="a",
    )  # fmt: skip
    assert tokens_left(engine) == pytest.approx(100)
    counts = engine.limiter.settlement_counts()
    assert (counts.settled, counts.expired, counts.outstanding) == (2, 0, 0)
    assert counts.refunded["tokens"] == pytest.approx(500)
    assert counts.charged["tokens"] == pytest.approx(200)
    engine.close()


def test_output_tokens_alone_count_the_requests_input(make_state: StateFactory) -> None:
    engine = engine_for(TOKENS, make_state(), Clock())
    decision = ask(engine, "a")  # 600 estimated: 500 input
    engine.record(decision, latency_ms=1.0, success=True, output_tokens=20)
    assert tokens_left(engine) == pytest.approx(480)  # 520 used
    engine.close()


def test_an_outcome_without_usage_leaves_the_estimate(make_state: StateFactory) -> None:
    engine = engine_for(TOKENS, make_state(), Clock())
    decision = ask(engine, "a")
    engine.record(decision, latency_ms=1.0, success=False)
    assert tokens_left(engine) == pytest.approx(400)
    engine.close()


def test_a_refund_never_fills_a_bucket_past_capacity(make_state: StateFactory) -> None:
    clock = Clock()
    engine = engine_for(TOKENS, make_state(), clock)
    decision = ask(engine, "a")  # 600 taken: full again in 36 s
    clock.now += 30  # 500 refilled: 900 now, 100 missing
    assert tokens_left(engine) == pytest.approx(900)
    engine.record(decision, latency_ms=1.0, success=True, input_tokens=0, output_tokens=0)
    assert tokens_left(engine) == pytest.approx(1000)  # full, not 1500
    assert engine.limiter.settlement_counts().refunded["tokens"] == pytest.approx(100)
    # full means full: the next 600 leave 400, as from a fresh bucket
    ask(engine, "b")
    assert tokens_left(engine) == pytest.approx(400)
    engine.close()


def test_an_expired_reservation_is_not_settled(make_state: StateFactory) -> None:
    clock = Clock()
    engine = engine_for(TOKENS, make_state(), clock, settle_within_s=60)
    decision = ask(engine, "a")
    assert engine.limiter.settlement_counts().outstanding == 1
    clock.now += 61  # expired (and the bucket full again: 600 refill in 36 s)
    engine.record(decision, latency_ms=1.0, success=True, input_tokens=500, output_tokens=300)
    assert tokens_left(engine) == pytest.approx(1000)  # not charged the 200
    counts = engine.limiter.settlement_counts()
    assert (counts.settled, counts.expired, counts.outstanding) == (0, 1, 0)
    engine.close()


def test_expiry_sweeps_unsettled_reservations_on_the_clock() -> None:
    clock = Clock()
    engine = engine_for("limit user tokens 100000 per 1m\n", "memory://", clock,
                        settle_within_s=10)  # fmt: skip
    for i in range(3):
        ask(engine, f"r{i}")
    clock.now += 5
    ask(engine, "late")
    assert engine.limiter.settlement_counts().outstanding == 4
    clock.now += 5  # the first three expire at +10; `late` at +15
    counts = engine.limiter.settlement_counts()
    assert (counts.outstanding, counts.expired) == (1, 3)


def test_settle_within_must_be_positive() -> None:
    with pytest.raises(ValueError, match="settle_within_s"):
        engine_for(TOKENS, "memory://", Clock(), settle_within_s=0)


def test_spend_refunded_by_cost_and_by_tokens(make_state: StateFactory) -> None:
    engine = engine_for(SPEND, make_state(), Clock())

    def spend_left() -> float:
        return level(engine, SPEND_KEY, 0.001, 86_400_000)

    request = {"user": "w", "input_tokens": 1000, "max_tokens": 1000}
    first = engine.evaluate({"id": "s1", **request})
    assert (first.model, first.estimated_cost) == (
        "gemini-2.5-flash-lite",
        pytest.approx(FLASH_COST),
    )
    assert spend_left() == pytest.approx(0.0005, abs=1e-12)
    engine.record(first, latency_ms=1.0, success=True, cost=0.0001)
    assert spend_left() == pytest.approx(0.0009, abs=1e-12)  # $0.0004 refunded
    second = engine.evaluate({"id": "s2", **request})  # $0.0004 left
    # 1000 in + 200 out: (1000 × 0.1 + 200 × 0.4) / 1e6 = $0.00018: $0.00032 refunded
    engine.record_outcome(
        second.provider, second.model, latency_ms=1.0, success=True, input_tokens=1000,
        output_tokens=200, request_id="s2",
    )  # fmt: skip
    assert spend_left() == pytest.approx(0.00072, abs=1e-12)
    third = engine.evaluate({"id": "s3", **request})  # $0.00022 left
    engine.record(third, latency_ms=1.0, success=True, cost=0.0006)  # $0.0001 charged
    assert spend_left() == pytest.approx(0.00012, abs=1e-12)
    engine.record(third, latency_ms=1.0, success=True, cost=0.0)  # settled already
    assert spend_left() == pytest.approx(0.00012, abs=1e-12)
    counts = engine.limiter.settlement_counts()
    assert counts.refunded["spend"] == pytest.approx(0.00072, abs=1e-12)
    assert counts.charged["spend"] == pytest.approx(0.0001, abs=1e-12)
    engine.close()


def test_only_the_buckets_the_decision_took_are_settled() -> None:
    """Two users: settling one's request refunds its own user bucket and the global one."""
    policy = "limit user tokens 1000 per 1m\nlimit global tokens 5000 per 1m\n"
    engine = engine_for(policy, "memory://", Clock())
    a = ask(engine, "a")
    engine.evaluate({"id": "b", "user": "v", "input_tokens": 500, "max_tokens": 100})
    engine.record(a, latency_ms=1.0, success=True, input_tokens=100, output_tokens=0)
    assert tokens_left(engine) == pytest.approx(900)
    assert level(engine, "user/tokens/60000/v", 1000, 60_000) == pytest.approx(400)
    assert level(engine, "global/tokens/60000/", 5000, 60_000) == pytest.approx(4300)


def test_outcomes_from_eight_threads_settle_exactly_once(make_state: StateFactory) -> None:
    """40 requests of 600 estimated tokens; each outcome (100 + 20 i tokens) sent twice, by
    8 threads: the bucket ends at capacity less the hand sum of the actual tokens."""
    policy = "limit user tokens 100000 per 1m\n"
    engine = engine_for(policy, make_state(), Clock())
    decisions = [ask(engine, f"r{i}") for i in range(40)]
    assert level(engine, "user/tokens/60000/u", 100_000, 60_000) == pytest.approx(76_000)
    jobs = [(d, 100 + 20 * i) for i, d in enumerate(decisions)] * 2
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        for decision, used in jobs[n::8]:
            engine.record(decision, latency_ms=1.0, success=True, input_tokens=used,
                          output_tokens=0)  # fmt: skip

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = sum(100 + 20 * i for i in range(40))  # 4000 + 20 × 780 = 19600
    assert used == 19_600
    assert level(engine, "user/tokens/60000/u", 100_000, 60_000) == pytest.approx(80_400)
    counts = engine.limiter.settlement_counts()
    assert (counts.settled, counts.outstanding) == (40, 0)
    engine.close()


def test_store_settle_matches_by_hand(make_state: StateFactory) -> None:
    """The stores' `settle` itself: charge, refund, refund past full, on an absent bucket."""
    state = make_state()
    store = state if isinstance(state, RedisStore) else None
    if store is None:
        engine = PolicyEngine.from_text(ROUTE, state=state, clock=Clock())
        store = engine.store
    now = 1_000_000.0
    rate = 0.5  # tokens per ms
    applied = store.settle(
        [
            Adjustment("a", 100, rate, 10),  # absent (full): charged, full again at now + 20
            Adjustment("b", 100, rate, -10),  # absent: nothing to refund
            Adjustment("a", 100, rate, -4),  # in the same step: full at now + 12
        ],
        now,
    )
    assert applied == [10.0, 0.0, -4.0]
    assert store.peek("a") == now + 12 and store.peek("b") is None
    assert store.settle([Adjustment("a", 100, rate, -50)], now) == [-6.0]  # only 6 missing
    assert store.peek("a") is None
    store.close()


def test_metrics_families() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    clock = Clock()
    engine = engine_for(TOKENS, "memory://", clock, settle_within_s=60)
    first = ask(engine, "a")  # 400 left
    engine.record(first, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    second = ask(engine, "b")  # 900, less 600
    engine.record(second, latency_ms=1.0, success=True, input_tokens=600, output_tokens=100)
    assert tokens_left(engine) == pytest.approx(200)
    ask(engine, "c", 50, 50)
    ask(engine, "d", 50, 50)
    clock.now += 61
    ask(engine, "e")  # `c` and `d` expire
    registry = CollectorRegistry()
    registry.register(Telemetry(engine))
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ended = {s.labels["result"]: s.value for s in families["policyctl_reservations"].samples
             if s.name.endswith("_total")}  # fmt: skip
    assert ended == {"settled": 2.0, "expired": 2.0}
    (outstanding,) = families["policyctl_reservations_outstanding"].samples
    assert outstanding.value == 1.0
    amounts = {
        (s.labels["unit"], s.labels["direction"]): s.value
        for s in families["policyctl_settled"].samples
        if s.name.endswith("_total")
    }
    assert amounts == {
        ("tokens", "refunded"): 500.0, ("tokens", "charged"): 100.0,
        ("spend", "refunded"): 0.0, ("spend", "charged"): 0.0,
    }  # fmt: skip
    engine.close()
