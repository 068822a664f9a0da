"""Token buckets and the limiter: one contract suite over every store, properties, threads.

The memory store is the reference: every other store must agree with it decision by
decision. Clocks are fake and stepped; nothing sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _design import from_design
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import PolicyEngine
from engine.limits.records import LimitDenial
from engine.limits.stores import ConfigurationError, open_store
from engine.limits.stores.base import Spec, Store
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import MemoryStore
from engine.limits.stores.redis_store import RedisStore

pytest_plugins = ["_redis"]

START = 1_800_000_000.0  # a fixed epoch second for the fake clock


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.now += seconds


StoreFactory = Callable[[], Store]


@pytest.fixture(params=["memory", "duckdb", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    opened: list[Store] = []

    def factory() -> Store:
        if request.param == "memory":
            store: Store = MemoryStore()
        elif request.param == "duckdb":
            store = DuckDBStore(str(tmp_path / f"state{len(opened)}.duckdb"))
        else:
            server = request.getfixturevalue("redis_server")
            db = len(opened) + 1  # a fresh database per store in this test
            store = RedisStore(server.url.rsplit("/", 1)[0] + f"/{db}?timeout=2")
            store._redis.flushdb()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def engine_with(policy: str, store: Store, clock: FakeClock) -> PolicyEngine:
    return from_design(policy, state=store, clock=clock)


USER_LIMIT = "limit user 100 per 1m burst 10\n"


# ---------------------------------------------------------------- the design's example


def test_design_example_110_at_once_then_one_every_600ms(make_store: StoreFactory) -> None:
    clock = FakeClock()
    engine = engine_with(USER_LIMIT, make_store(), clock)
    allowed = [engine.evaluate({"id": f"r{i}", "user": "u"}).allowed for i in range(115)]
    assert allowed.count(True) == 110
    assert allowed[:110] == [True] * 110
    denied = engine.evaluate({"id": "x", "user": "u"})
    assert denied.denied_by == {
        "scope": "user",
        "key": "u",
        "unit": "requests",
        "retry_after_ms": 600,
    }
    clock.step(0.599)
    assert not engine.evaluate({"id": "y", "user": "u"}).allowed
    clock.step(0.001)
    assert engine.evaluate({"id": "z", "user": "u"}).allowed
    assert not engine.evaluate({"id": "z2", "user": "u"}).allowed
    clock.step(60)  # a full window refills 100, capped at capacity 110
    allowed = [engine.evaluate({"id": f"s{i}", "user": "u"}).allowed for i in range(120)]
    assert allowed.count(True) == 100


def test_denial_consumes_nothing_all_or_nothing(make_store: StoreFactory) -> None:
    clock = FakeClock()
    policy = "limit user 5 per 1m\nlimit ip 3 per 1m\n"
    engine = engine_with(policy, make_store(), clock)
    for i in range(3):
        assert engine.evaluate({"id": f"a{i}", "user": "u", "ip": "10.0.0.1"}).allowed
    denied = engine.evaluate({"id": "a3", "user": "u", "ip": "10.0.0.1"})
    assert not denied.allowed
    assert denied.denied_by["scope"] == "ip"
    # the user bucket was not charged for the denied request: 2 left, from another ip
    assert engine.evaluate({"id": "b1", "user": "u", "ip": "10.0.0.2"}).allowed
    assert engine.evaluate({"id": "b2", "user": "u", "ip": "10.0.0.2"}).allowed
    third = engine.evaluate({"id": "b3", "user": "u", "ip": "10.0.0.2"})
    assert not third.allowed and third.denied_by["scope"] == "user"


def test_dry_run_consumes_nothing(make_store: StoreFactory) -> None:
    engine = engine_with("limit user 2 per 1m\n", make_store(), FakeClock())
    for _ in range(10):
        assert engine.evaluate({"id": "d", "user": "u"}, dry_run=True).allowed
    assert [engine.evaluate({"id": "d", "user": "u"}).allowed for _ in range(3)] == [
        True,
        True,
        False,
    ]


def test_a_dry_run_changes_no_state(make_store: StoreFactory) -> None:
    """A dry run is a what-if: no bucket, no daily tally, no violation, no round-robin
    turn; the real requests after it go exactly as if it had not been made."""
    policy = "limit user 1 per 1m\nroute rr { strategy round-robin }\n"
    dry = engine_with(policy, make_store(), FakeClock())
    plain = engine_with(policy, make_store(), FakeClock())
    for i in range(2):  # the second is denied: a dry run reports it, and records nothing
        first, second = (dry.evaluate({"id": f"d{i}", "user": "u"}, dry_run=True) for _ in "ab")
        assert first.model == second.model  # the turn is only peeked at
        dry_first = first.model
    assert dry.limiter.daily_stats() == {} and list(dry.limiter.violations) == []
    dry.evaluate({"id": "x", "user": "u"}, dry_run=True)
    real = {
        name: [
            (d.allowed, d.model)
            for d in (engine.evaluate({"id": f"r{i}", "user": f"u{i % 2}"}) for i in range(4))
        ]
        for name, engine in (("dry", dry), ("plain", plain))
    }
    assert real["dry"] == real["plain"]
    first, second = (model for _, model in real["dry"][:2])
    assert first == dry_first and second != first  # the turns start where no dry run was
    assert dry.limiter.daily_stats() == plain.limiter.daily_stats() != {}
    assert len(dry.limiter.violations) == len(plain.limiter.violations) == 2
    dry.close()
    plain.close()


def test_allowed_decision_reports_remaining_and_reset(make_store: StoreFactory) -> None:
    clock = FakeClock()
    engine = engine_with(USER_LIMIT, make_store(), clock)
    decision = engine.evaluate({"id": "r", "user": "u"})
    (status,) = decision.rate_limits
    assert (status.scope, status.key, status.allowed) == ("user", "u", True)
    assert status.remaining == 109
    assert status.limit == 100
    # one token at 100 per minute refills in 600 ms
    assert status.reset_at == pytest.approx(START + 0.6)
    assert status.retry_after_ms is None


def test_a_bucket_full_again_reports_full_at_now_whether_or_not_it_was_evicted(
    make_store: StoreFactory,
) -> None:
    """A full bucket is the same as none: a dry run (nothing consumed) after the bucket has
    refilled reports it full at the decision's time, on every store, whether the store
    still holds it (memory before eviction, DuckDB, Redis within its expiry) or not."""
    clock = FakeClock()
    store = make_store()
    engine = engine_with(USER_LIMIT, store, clock)
    engine.evaluate({"id": "r", "user": "u"})  # full again 600 ms later
    clock.step(0.9)
    kept = engine.evaluate({"id": "d1", "user": "u"}, dry_run=True).rate_limits[0]
    assert kept.reset_at == pytest.approx(START + 0.9, abs=1e-6)
    assert kept.remaining == 109
    store.evict(clock.now * 1000)
    gone = engine.evaluate({"id": "d2", "user": "u"}, dry_run=True).rate_limits[0]
    assert gone.to_dict() == kept.to_dict()


# ---------------------------------------------------------------- provider exhaustion


def test_exhausted_provider_reroutes_then_denies(make_store: StoreFactory) -> None:
    policy = """
    defaults { strategy latency }
    route r {
        prefer gemini/gemini-1.5-flash-latest
        prefer claude/claude-3-haiku-20240307
    }
    limit provider 2 per 1h
    """
    engine = engine_with(policy, make_store(), FakeClock())
    picks = []
    for i in range(5):
        d = engine.evaluate({"id": f"p{i}", "user": "u"})
        picks.append(d.provider if d.allowed else None)
    assert picks == ["gemini", "gemini", "claude", "claude", None]
    last = engine.evaluate({"id": "p5"})
    assert last.denied_by["scope"] == "provider"
    rerouted = engine_with(policy, make_store(), FakeClock())
    for i in range(2):
        rerouted.evaluate({"id": f"q{i}"})
    third = rerouted.evaluate({"id": "q2"})
    assert third.provider == "claude"
    assert third.reason == (
        "Ranked #2 by latency: the 1 ranked above it is at a provider or model rate limit"
        " (gemini/gemini-1.5-flash-latest)"
    )
    assert third.alternatives == []  # the limited candidate is not offered again
    assert third.fallbacks == []


# ---------------------------------------------------------------- keyed limits and quotas


def test_keyed_limit_replaces_default_and_expires(make_store: StoreFactory) -> None:
    clock = FakeClock()  # 2027-01-15
    policy = (
        "limit user 2 per 1m\n"
        'limit user "vip" 5 per 1m until 2027-02-01\n'
        'limit user "old" 5 per 1m until 2026-01-01\n'
    )
    engine = engine_with(policy, make_store(), clock)
    vip = [engine.evaluate({"id": "v", "user": "vip"}).allowed for _ in range(7)]
    assert vip.count(True) == 5
    old = [engine.evaluate({"id": "o", "user": "old"}).allowed for _ in range(4)]
    assert old.count(True) == 2  # expired keyed limit: the default applies


def test_runtime_quota_overrides_policy(make_store: StoreFactory) -> None:
    from engine.limits.stores.base import Quota

    clock = FakeClock()
    store = make_store()
    engine = engine_with("limit user 2 per 1m\n", store, clock)
    store.set_quota(Quota("user", "big", 4, 60_000, 0, START + 3600))
    engine.limiter.refresh_quotas()
    assert [engine.evaluate({"id": "q", "user": "big"}).allowed for _ in range(5)].count(True) == 4
    clock.step(7200)  # the quota expired; the policy's 2 per minute is back
    engine.limiter.refresh_quotas()
    assert [engine.evaluate({"id": "q", "user": "big"}).allowed for _ in range(5)].count(True) == 2


def test_named_scope_with_when(make_store: StoreFactory) -> None:
    policy = 'limit team = request.metadata.team 3 per 1m when request.metadata.tier == "free"\n'
    engine = engine_with(policy, make_store(), FakeClock())
    free = {"metadata": {"team": "a", "tier": "free"}}
    paid = {"metadata": {"team": "a", "tier": "paid"}}
    assert [engine.evaluate({"id": "f", **free}).allowed for _ in range(5)].count(True) == 3
    assert all(engine.evaluate({"id": "p", **paid}).allowed for _ in range(5))


def test_token_and_spend_units(make_store: StoreFactory) -> None:
    policy = (
        "defaults { strategy cost }\n"
        "limit user tokens 1000 per 1m\n"
        "limit user spend $0.001 per 1d\n"
    )
    engine = engine_with(policy, make_store(), FakeClock())
    # 300 input + 100 output = 400 tokens each: two fit in 1000, the third does not
    request = {"id": "t", "user": "u", "input_tokens": 300, "max_tokens": 100}
    results = [engine.evaluate(request) for _ in range(3)]
    assert [d.allowed for d in results] == [True, True, False]
    assert results[2].denied_by["unit"] == "tokens"
    # spend: gemini flash costs (1000*0.075 + 1000*0.30)/1e6 = $0.000375 per request
    spender = {"id": "s", "user": "w", "input_tokens": 1000, "max_tokens": 1000}
    policy_spend = "defaults { strategy cost }\nlimit user spend $0.001 per 1d\n"
    engine2 = engine_with(policy_spend, make_store(), FakeClock())
    allowed = [engine2.evaluate(spender).allowed for _ in range(4)]
    assert allowed == [True, True, False, False]  # 2 × $0.000375 fit in $0.001, a third not
    decisions = [engine2.evaluate(spender) for _ in range(3)]
    # once the cheapest model no longer fits, a cheaper one cannot exist: denied by spend
    assert all(not d.allowed for d in decisions)
    assert decisions[0].denied_by["unit"] == "spend"


# spend under `strategy cost`, 1000 input + 1000 output tokens: gemini flash, the cheapest
# candidate, costs (1000*0.075 + 1000*0.30)/1e6 = $0.000375; every other model costs more
SPENDER = {"id": "s", "user": "w", "input_tokens": 1000, "max_tokens": 1000}
FLASH_COST = 0.000375


def test_spend_denial_waits_for_the_first_candidate_that_fits(make_store: StoreFactory) -> None:
    """$0.001 per 1h: two flash requests leave $0.00025. The pricier candidates never fit
    in $0.001, flash fits again after $0.000125 refills (0.000125 / 0.001 × 1 h = 450 s):
    the denial says so, and logs flash's cost, not the last candidate's."""
    clock = FakeClock()
    policy = "defaults { strategy cost }\nlimit user spend $0.001 per 1h\n"
    engine = engine_with(policy, make_store(), clock)
    assert [engine.evaluate(SPENDER).model for _ in range(2)] == ["gemini-1.5-flash-latest"] * 2
    denied = engine.evaluate(SPENDER)
    assert denied.reason == "Rate limited by user `w` (spend): retry after 450000 ms"
    assert denied.denied_by == LimitDenial("user", "w", "spend", 450_000)
    (violation,) = engine.limiter.violations
    assert (violation.unit, violation.requested) == ("spend", FLASH_COST)
    assert violation.available == pytest.approx(0.00025, abs=1e-12)
    clock.step(449)
    assert engine.evaluate(SPENDER).denied_by == LimitDenial("user", "w", "spend", 1000)
    clock.step(1)
    assert engine.evaluate(SPENDER).model == "gemini-1.5-flash-latest"


def test_spend_larger_than_the_limit_for_every_candidate(make_store: StoreFactory) -> None:
    """$0.0003 per 1h is less than any candidate costs: no retry, and the violation logs the
    cost of the first ranked candidate (flash, under `cost`)."""
    policy = "defaults { strategy cost }\nlimit user spend $0.0003 per 1h\n"
    engine = engine_with(policy, make_store(), FakeClock())
    denied = engine.evaluate(SPENDER)
    assert denied.reason == "Rate limited by user `w` (spend): the request is larger than the limit"
    assert denied.denied_by == LimitDenial("user", "w", "spend", None)
    (violation,) = engine.limiter.violations
    assert (violation.requested, violation.available) == (FLASH_COST, 0.0003)


def test_spend_limit_reroutes_to_a_candidate_that_fits(make_store: StoreFactory) -> None:
    """gpt-4o ($0.0125 for this request) is ranked first but does not fit in $0.01: the
    cheaper candidate that fits is chosen, as for a provider or model limit."""
    policy = (
        "route r {\n    strategy model-specific\n    prefer openai/gpt-4o weight 9\n"
        "    prefer gemini/gemini-1.5-flash-latest weight 1\n}\n"
        "limit user spend $0.01 per 1h\n"
    )
    engine = engine_with(policy, make_store(), FakeClock())
    chosen = engine.evaluate(SPENDER)
    assert (chosen.allowed, chosen.model) == (True, "gemini-1.5-flash-latest")


# ---------------------------------------------------------------- stores agree


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=5.0),  # seconds to step
            st.sampled_from(["a", "b", "c"]),  # user
            st.sampled_from(["10.0.0.1", "10.0.0.2"]),  # ip
        ),
        min_size=1,
        max_size=60,
    )
)
def test_duckdb_and_redis_agree_with_memory(
    tmp_path_factory: pytest.TempPathFactory, redis_server: Any, steps: Any
) -> None:
    policy = "limit user 5 per 10s burst 2\nlimit ip 8 per 10s\nlimit provider 6 per 10s\n"
    path = tmp_path_factory.mktemp("agree") / "state.duckdb"
    redis_store = RedisStore(redis_server.url.rsplit("/", 1)[0] + "/9?timeout=2")
    redis_store._redis.flushdb()
    clocks = [FakeClock(), FakeClock(), FakeClock()]
    memory = engine_with(policy, MemoryStore(), clocks[0])
    durable = engine_with(policy, DuckDBStore(str(path)), clocks[1])
    shared = engine_with(policy, redis_store, clocks[2])
    try:
        for i, (step, user, ip) in enumerate(steps):
            for clock in clocks:
                clock.step(step)
            request = {"id": f"r{i}", "user": user, "ip": ip}
            reference = memory.evaluate(request).to_dict()
            assert durable.evaluate(request).to_dict() == reference
            assert shared.evaluate(request).to_dict() == reference
    finally:
        durable.close()
        shared.close()


def test_duckdb_state_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "state.duckdb")
    clock = FakeClock()
    with engine_with("limit user 3 per 1h\n", DuckDBStore(path), clock) as engine:
        assert [engine.evaluate({"id": "x", "user": "u"}).allowed for _ in range(2)] == [True] * 2
    with engine_with("limit user 3 per 1h\n", DuckDBStore(path), clock) as engine:
        assert [engine.evaluate({"id": "x", "user": "u"}).allowed for _ in range(2)] == [
            True,
            False,
        ]


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=2000), st.floats(min_value=0.1, max_value=30)),
        min_size=1,
        max_size=80,
    ),
    st.floats(min_value=1, max_value=100),
    st.floats(min_value=0, max_value=50),
)
def test_never_more_than_capacity_plus_rate_times_elapsed(
    steps: list[tuple[float, float]], limit: float, burst: float
) -> None:
    """Over any sequence of (time step ms, cost): admitted ≤ capacity + rate × elapsed, and
    no bucket ever shows negative tokens."""
    store = MemoryStore()
    window_ms = 1000.0
    capacity, rate = limit + burst, limit / window_ms
    now = 0.0
    admitted = 0.0
    for step, cost in steps:
        now += step
        result = store.acquire([Spec("k", capacity, rate, cost)], (), now)
        outcome = result.outcomes[0]
        assert outcome.available >= -1e-6
        if result.option is not None:
            admitted += cost
            assert outcome.available + 1e-6 >= cost
        assert admitted <= capacity + rate * now + 1e-6


# ---------------------------------------------------------------- concurrency


def test_threads_never_over_admit() -> None:
    clock = FakeClock()
    engine = engine_with("limit user 100 per 1h burst 10\n", MemoryStore(), clock)
    results: list[bool] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        local = [engine.evaluate({"id": f"t{n}-{i}", "user": "shared"}).allowed for i in range(50)]
        with lock:
            results.extend(local)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 400
    assert results.count(True) == 110


# ---------------------------------------------------------------- eviction and URLs


def test_idle_full_buckets_are_evicted() -> None:
    store = MemoryStore()
    for i in range(5000):
        store.acquire([Spec(f"user/requests/1000/u{i}", 10, 0.01, 1)], (), 0.0)
    assert len(store) == 5000
    assert store.evict(now=50.0) == 0  # still refilling: 1 token takes 100 ms
    assert store.evict(now=100.0) == 5000
    assert len(store) == 0


def test_eviction_runs_as_the_store_is_used() -> None:
    store = MemoryStore()
    for i in range(3000):
        store.acquire([Spec(f"k{i}", 10, 1.0, 1)], (), float(i) * 10)
    # keys touched long ago are full again and get swept in slices as acquires go on
    assert len(store) < 3000


def test_unknown_store_scheme_quotes_the_url() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown state store `ftp://x` \(scheme `ftp`\)"):
        open_store("ftp://x")
    assert isinstance(open_store("memory://"), MemoryStore)


# ------------------------------------------ found by the mutation run (bench/mutation.py)


def test_per_candidate_token_and_spend_limits_charge_their_own_unit() -> None:
    """A provider limit in tokens takes the request's tokens, a model limit in spend its
    price (flash: $0.000375 for 1000 + 1000 tokens), a provider limit in requests one."""
    policy = (
        "defaults { strategy cost }\n"
        "limit provider tokens 10000 per 1m\n"
        "limit model spend $0.01 per 1d\n"
        "limit provider 50 per 1m\n"
    )
    engine = engine_with(policy, MemoryStore(), FakeClock())
    decision = engine.evaluate(SPENDER)
    assert decision.allowed
    left = {(s.scope, s.unit): s.remaining for s in decision.rate_limits}
    assert left[("provider", "tokens")] == 8000
    assert left[("model", "spend")] == pytest.approx(0.01 - FLASH_COST)
    assert left[("provider", "requests")] == 49


def test_a_quota_set_after_the_first_decision_applies_within_a_second() -> None:
    """The limiter reads run-time quotas again once a second, without refresh_quotas()."""
    from engine.limits.stores.base import Quota

    clock = FakeClock()
    store = MemoryStore()
    engine = engine_with("defaults { strategy cost }\nlimit provider 100 per 1m\n", store, clock)
    (status,) = engine.evaluate({"id": "a"}).rate_limits
    assert (status.scope, status.limit) == ("provider", 100)
    provider = status.key or ""
    store.set_quota(Quota("provider", provider, 50, 60_000, 0, None))
    clock.step(0.5)  # within the second: the quotas read at the first decision still hold
    assert engine.evaluate({"id": "b"}).rate_limits[0].limit == 100
    clock.step(1.0)
    (status,) = engine.evaluate({"id": "c"}).rate_limits
    assert (status.key, status.limit) == (provider, 50)


def test_decision_records_in_json() -> None:
    from engine.limits.records import UNATTRIBUTED, LimitStatus

    assert UNATTRIBUTED.to_dict() == {"scope": "unknown", "key": None, "retry_after_ms": None}
    status = LimitStatus("user", "u", "requests", True, 9.0, 10.0, 1_800_000_000.12345, None)
    assert status.to_dict()["reset_at"] == 1_800_000_000.123


def test_a_later_candidate_is_charged_its_own_tokens() -> None:
    """The first candidate's provider is out of tokens: the next one, built only when the
    store asks for it, is charged the request's 2000 tokens in its own provider bucket."""
    policy = "defaults { strategy cost }\nlimit provider tokens 3000 per 1m\n"
    engine = engine_with(policy, MemoryStore(), FakeClock())
    first = engine.evaluate(SPENDER)
    second = engine.evaluate(SPENDER)
    assert first.allowed and second.allowed
    assert first.provider != second.provider
    assert [s.remaining for s in first.rate_limits] == [1000]
    assert [s.remaining for s in second.rate_limits] == [1000]


def test_allowed_tallies_lose_nothing_to_threads_and_flushes() -> None:
    """Allowed decisions are tallied without a lock (a pending list): four threads deciding
    while a fifth keeps taking the logs (as the flush does) lose no count and count none
    twice; more than `_PENDING_MAX` decisions per thread, so the in-line counting runs too."""
    engine = from_design(
        "defaults { strategy cost }\nlimit user 1000000 per 1m\nlimit global 1000000 per 1m\n",
        state="memory://",
    )
    limiter = engine.limiter
    per_thread, threads = 5000, 4
    taken: list[dict[tuple[str, str], tuple[int, int]]] = []
    done = threading.Event()

    def decide(t: int) -> None:
        for i in range(per_thread):
            assert engine.evaluate({"id": f"t{t}-{i}", "user": f"u{t}"}).allowed

    def flush() -> None:
        while not done.is_set():
            taken.append(limiter.take_logs()[1])

    flusher = threading.Thread(target=flush)
    flusher.start()
    workers = [threading.Thread(target=decide, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    done.set()
    flusher.join()
    taken.append(limiter.take_logs()[1])
    totals: dict[str, int] = {}
    for stats in taken:
        for (_, scope), (allowed, denied) in stats.items():
            totals[scope] = totals.get(scope, 0) + allowed
            assert denied == 0
    assert totals == {"user": per_thread * threads, "global": per_thread * threads}
    engine.close()
