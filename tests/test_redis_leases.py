"""Leases on the shared limits of a `redis+cluster://` store (`?lease=auto`), against a real
3-master cluster on loopback: URL options, round trips, all-or-nothing in both modes, the
over-admission bound measured with several engines, and leases returned on shutdown. Time
is the engines' injectable clock (no sleeps)."""

from __future__ import annotations

import bisect
import threading
from typing import TYPE_CHECKING

import pytest
from _design import from_design

from engine import PolicyEngine
from engine.limits.stores import ConfigurationError, open_store
from engine.limits.stores.base import Spec, available
from engine.limits.stores.leases import LeaseBook, LeaseConfig, parse_lease_options
from engine.limits.stores.redis_cluster_store import RedisClusterStore

if TYPE_CHECKING:
    from _redis_cluster import RedisCluster

pytest_plugins = ["_redis_cluster"]

NOW = 1_800_000_000.0
HOUR_MS = 3_600_000.0
MINUTE_MS = 60_000.0


def fresh(cluster: RedisCluster, options: str = "lease=auto") -> str:
    cluster.flush()
    return f"{cluster.url}?timeout=5&{options}"


def level(url: str, key: str, capacity: float, window_ms: float, now_s: float = NOW) -> float:
    store = RedisClusterStore(url.split("?")[0] + "?timeout=5")
    try:
        return available(store.peek(key), capacity, capacity / window_ms, now_s * 1000)
    finally:
        store.close()


class Clock:
    """The engines' clock (seconds), moved by the test."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---------------------------------------------------------------------- options


def test_lease_options_default_to_strict_and_parse() -> None:
    assert parse_lease_options("u", "") == LeaseConfig("strict", 0.01, 1000.0)
    config = parse_lease_options("u", "lease=auto&lease_max=0.05&lease_ms=250&timeout=1")
    assert config == LeaseConfig("auto", 0.05, 250.0)
    assert config.leased and not LeaseConfig().leased
    spec = Spec("global/requests/60000/", 1000, 1000 / 60_000, 1)
    assert config.cap(spec) == 50
    assert config.bound(spec, instances=4) == 200
    assert LeaseConfig().bound(spec, instances=4) == 0  # strict: exact


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("lease=sometimes", "`lease` is `auto` or `strict`, not `sometimes`"),
        ("lease=auto&lease_max=lots", "must be numbers"),
        ("lease=auto&lease_max=0", "`lease_max` must be more than 0 and at most 1"),
        ("lease=auto&lease_max=2", "`lease_max` must be more than 0 and at most 1"),
        ("lease=auto&lease_ms=-5", "`lease_ms` must be more than 0"),
    ],
)
def test_a_bad_lease_option_says_where_and_why(query: str, why: str) -> None:
    url = f"redis+cluster://127.0.0.1:7000?{query}"
    with pytest.raises(ConfigurationError) as err:
        open_store(url)
    assert f"state store `{url}`" in str(err.value)
    assert why in str(err.value)


def test_a_batch_grows_with_the_instances_own_rate_up_to_the_cap() -> None:
    """The book alone (no I/O): each renewal asks for twice what was spent lately (and
    this decision's cost), never more than the cap; a renewal hands back what is held."""
    from engine.limits.stores.leases import Granted

    book = LeaseBook(LeaseConfig("auto", 0.01, 1000.0))
    spec = Spec("global/requests/60000/", 10_000, 10_000 / 60_000, 1)
    wants = []
    now = 0.0
    for _ in range(200):
        renewals = book.renewals([spec], now)
        if renewals:
            (r,) = renewals
            wants.append(r.want)
            assert r.give_back == book.live(spec.key, now)
            book.apply(renewals, [Granted(r.want, 10_000, now)], now)
        assert book.has_room(spec, now)
        book.spend(spec, now)
    assert wants[:3] == [2, 4, 10]  # 2 × (spent + cost)
    assert max(wants) == 100  # the cap: 1% of 10 000
    assert len(wants) < 10  # then one renewal per 75 decisions (the low mark: a quarter)


# ---------------------------------------------------------------------- round trips


def trips(engine: PolicyEngine, requests: list[dict[str, str]]) -> list[int]:
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    counted = []
    for request in requests:
        before = store.round_trips
        engine.evaluate(request)
        counted.append(store.round_trips - before)
    return counted


def test_round_trips_leased(redis_cluster: RedisCluster) -> None:
    """Per-user-only decisions cost 1; the global limit, leased, costs ≤ 0.05 per decision
    amortised (strict: 1 more per decision)."""
    clock = Clock()
    policy = "limit user 100000 per 1m\nlimit global 100000 per 1m\n"
    for options, extra in (("lease=auto", 0.05), ("lease=strict", 1.0)):
        engine = from_design(policy, state=fresh(redis_cluster, options), clock=clock)
        engine.evaluate({"id": "w", "user": "u"})  # loads the scripts, reads the slot map
        counted = []
        for i in range(2000):
            clock.now += 0.001
            counted += trips(engine, [{"id": str(i), "user": f"u{i % 50}"}])
        per_decision = sum(counted) / len(counted)
        if extra < 1:
            assert per_decision <= 1 + extra, per_decision
        else:  # the user's slot, then the shared one (and once a second the quotas read)
            assert min(counted) == 2 and per_decision < 2.01
        engine.close()
    user_only = from_design("limit user 10 per 1m\n", state=fresh(redis_cluster), clock=clock)
    user_only.evaluate({"id": "w", "user": "u"})
    assert trips(user_only, [{"id": str(i), "user": f"v{i}"} for i in range(20)]) == [1] * 20
    user_only.close()


# ---------------------------------------------------------------------- all-or-nothing


@pytest.mark.parametrize("options", ["lease=auto&lease_max=0.25", "lease=strict"])
def test_no_scope_is_consumed_unless_every_scope_admits(
    redis_cluster: RedisCluster, options: str
) -> None:
    """4 users × 6 requests from 6 threads over 2 engines, `limit user 5` and `limit global
    12`: at most 12 admitted (exactly 12 in strict mode; leased, tokens held by the other
    instance may deny a few), at most 5 per user, each user's bucket holds exactly what that
    user was admitted, and, the engines closed (their leases handed back), the global bucket
    holds exactly the total admitted."""
    url = fresh(redis_cluster, options)
    policy = "limit user 5 per 1h\nlimit global 12 per 1h\n"
    clock = Clock()
    engines = [from_design(policy, state=url, clock=clock) for _ in range(2)]
    admitted: dict[str, int] = {f"u{i}": 0 for i in range(4)}
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def run(worker: int) -> None:
        engine = engines[worker % 2]
        barrier.wait()
        for n in range(4):
            user = f"u{(worker + n) % 4}"
            if engine.evaluate({"id": f"{worker}-{n}", "user": user}).allowed:
                with lock:
                    admitted[user] += 1

    threads = [threading.Thread(target=run, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(admitted.values())
    if options == "lease=strict":
        assert total == 12
    else:
        assert 12 - 2 * 3 <= total <= 12  # at most a cap (3) stranded per instance
    for user, count in admitted.items():
        assert count <= 5
        assert level(url, f"user/requests/3600000/{user}", 5, HOUR_MS) == pytest.approx(5 - count)
    for engine in engines:
        engine.close()
    assert level(url, "global/requests/3600000/", 12, HOUR_MS) == pytest.approx(12 - total)


def test_an_empty_lease_that_cannot_renew_denies_before_any_per_key_call(
    redis_cluster: RedisCluster,
) -> None:
    url = fresh(redis_cluster, "lease=auto&lease_max=0.5")
    clock = Clock()
    engine = from_design("limit user 5 per 1h\nlimit global 4 per 1h\n", state=url, clock=clock)
    for i in range(4):
        assert engine.evaluate({"id": str(i), "user": f"u{i}"}).allowed
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    before = store.round_trips
    decision = engine.evaluate({"id": "late", "user": "late"})
    assert not decision.allowed
    # the last renewal found the bucket empty moments ago, so the lease is not asked again
    # yet; the user's level is read for the denial's record (one MGET): no call that
    # consumes on the user's shard, and so nothing to refund
    assert store.round_trips - before == 1
    assert store.peek("user/requests/3600000/late") is None  # the user's bucket untouched
    clock.now += 3600  # the bucket refilled: asked again, and admitted
    assert engine.evaluate({"id": "later", "user": "late"}).allowed
    engine.close()


# ---------------------------------------------------------------------- the bound


def admitted_per_window(times: list[float], window_s: float) -> int:
    """The most admissions in any window of `window_s` (starting at an admission)."""
    times = sorted(times)
    return max(
        (bisect.bisect_left(times, t + window_s) - i for i, t in enumerate(times)), default=0
    )


def run_fleet(cluster: RedisCluster, options: str, instances: int) -> tuple[int, int]:
    """`instances` engines, each asked twice per 100 ms for 150 s (far past the limit) under
    `limit global 600 per 1m`: (the most admitted in any minute, admitted in all)."""
    url = fresh(cluster, options)
    clock = Clock()
    engines = [
        from_design("limit global 600 per 1m\n", state=url, clock=clock) for _ in range(instances)
    ]
    times: list[float] = []
    for step in range(1500):
        clock.now = NOW + step * 0.1
        for k, engine in enumerate(engines):
            for n in range(2):
                if engine.evaluate({"id": f"{step}-{k}-{n}"}).allowed:
                    times.append(clock.now)
    for engine in engines:
        engine.close()
    return admitted_per_window(times, 60.0), len(times)


def test_over_admission_stays_within_the_documented_bound(redis_cluster: RedisCluster) -> None:
    """A GCRA bucket admits at most capacity + rate × W in any window W (here 600 + 600 per
    minute) in strict mode; leased, at most `instances × lease_max × capacity` more (3 ×
    0.05 × 600 = 90)."""
    strict, strict_total = run_fleet(redis_cluster, "lease=strict", 3)
    assert strict <= 1200 + 1
    leased, leased_total = run_fleet(redis_cluster, "lease=auto&lease_max=0.05&lease_ms=500", 3)
    spec = Spec("global/requests/60000/", 600, 600 / 60_000, 1)
    bound = LeaseConfig("auto", 0.05, 500).bound(spec, instances=3)
    assert bound == 90
    assert leased <= 1200 + bound + 1, (leased, strict)
    assert leased_total >= strict_total - bound  # leases do not starve the fleet either


# ---------------------------------------------------------------------- shutdown


def test_leases_are_handed_back_on_shutdown(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster, "lease=auto&lease_max=0.2")
    clock = Clock()
    engine = from_design("limit global 100 per 1h\n", state=url, clock=clock)
    for i in range(5):
        assert engine.evaluate({"id": str(i)}).allowed
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    held = store.leases.live("global/requests/3600000/", NOW * 1000)
    assert held > 0
    assert level(url, "global/requests/3600000/", 100, HOUR_MS) == pytest.approx(95 - held)
    engine.close()
    assert level(url, "global/requests/3600000/", 100, HOUR_MS) == pytest.approx(95)


def test_an_expired_lease_is_handed_back_at_the_next_call(redis_cluster: RedisCluster) -> None:
    """An instance whose lease ran out hands back its rest with its next lease call (the
    renewal: the rest returned and a new batch taken, in one call)."""
    url = fresh(redis_cluster, "lease=auto&lease_max=0.2&lease_ms=1000")
    clock = Clock()
    engine = from_design("limit global 100 per 1h\n", state=url, clock=clock)
    assert engine.evaluate({"id": "a"}).allowed
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    key = "global/requests/3600000/"
    held = store.leases.live(key, NOW * 1000)
    assert held > 0
    clock.now += 2  # past lease_ms: the lease is expired
    assert store.leases.live(key, clock.now * 1000) == 0
    assert engine.evaluate({"id": "b"}).allowed
    # the global bucket: 2 spent, the new batch held; the old batch's rest handed back
    new = store.leases.live(key, clock.now * 1000)
    refill = 2 * 100 / 3600  # two seconds of refill
    got = level(url, key, 100, HOUR_MS, clock.now)
    assert got == pytest.approx(min(100, 100 - 2 - new + refill), abs=1e-6)
    engine.close()


def test_a_candidate_whose_lease_is_empty_moves_on(redis_cluster: RedisCluster) -> None:
    """Per-user spend (the user's slot, asked first) and per-model limits (leased): the
    first candidate's model lease is empty and cannot renew, so the decision takes the
    second, and the user's spend bucket holds the second's estimate only; with both empty,
    the denial is the model's and the user's spend is handed back."""
    url = fresh(redis_cluster, "lease=auto&lease_max=0.5")
    policy = (
        "limit user spend $1 per 1d\nlimit model 1 per 1h\n"
        "route r {\n prefer gemini/gemini-1.5-flash-latest\n"
        " prefer claude/claude-3-haiku-20240307\n}\n"
    )
    engine = from_design(policy, state=url, clock=Clock())
    first = engine.evaluate({"id": "1", "user": "a", "input_tokens": 100, "max_tokens": 10})
    second = engine.evaluate({"id": "2", "user": "a", "input_tokens": 100, "max_tokens": 10})
    assert first.allowed and second.allowed
    assert first.model == "gemini-1.5-flash-latest"
    assert second.model == "claude-3-haiku-20240307"
    spent = 1 - level(url, "user/spend/86400000/a", 1, 86_400_000)
    assert spent == pytest.approx(first.estimated_cost + second.estimated_cost, rel=1e-9)
    third = engine.evaluate({"id": "3", "user": "a", "input_tokens": 100, "max_tokens": 10})
    assert not third.allowed and third.denied_by["scope"] == "model"
    assert 1 - level(url, "user/spend/86400000/a", 1, 86_400_000) == pytest.approx(spent)
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    assert sorted(k.split("/")[3] for k in store.leases.leases) == ["claude", "gemini"]
    engine.close()
