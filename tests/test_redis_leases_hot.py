"""Threshold-keyed leasing on a real 3-master Redis Cluster (`?lease=auto&lease_hot=<rate>`,
docs/redis.md, Leases): a per-key limit whose key this instance sees more than `lease_hot`
decisions per second of is served from a lease; cold keys stay exact; a denial by a leased
limit refunds the per-user tokens of the same decision. Time is the engines' clock."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from _design import from_design

from engine.limits.stores import ConfigurationError, open_store
from engine.limits.stores.base import available
from engine.limits.stores.leases import LeaseConfig, parse_lease_options
from engine.limits.stores.redis_cluster_store import RedisClusterStore

if TYPE_CHECKING:
    from _redis_cluster import RedisCluster

pytest_plugins = ["_redis_cluster"]

NOW = 1_800_000_000.0
HOUR_MS = 3_600_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fresh(cluster: RedisCluster, options: str) -> str:
    cluster.flush()
    return f"{cluster.url}?timeout=5&{options}"


def level(url: str, key: str, capacity: float, window_ms: float, now_s: float) -> float:
    store = RedisClusterStore(url.split("?")[0] + "?timeout=5")
    try:
        return available(store.peek(key), capacity, capacity / window_ms, now_s * 1000)
    finally:
        store.close()


def test_lease_hot_option() -> None:
    config = parse_lease_options("u", "lease=auto&lease_hot=500")
    assert config == LeaseConfig("auto", 0.01, 1000.0, 500.0)
    assert parse_lease_options("u", "lease=auto").lease_hot == 0  # off: per-key stays exact


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("lease=auto&lease_hot=fast", "must be numbers"),
        ("lease=auto&lease_hot=-1", "`lease_hot` must be decisions per second"),
        ("lease=strict&lease_hot=50", "`lease_hot` needs `lease=auto`"),
    ],
)
def test_a_bad_lease_hot_says_why(query: str, why: str) -> None:
    url = f"redis+cluster://127.0.0.1:7000?{query}"
    with pytest.raises(ConfigurationError) as err:
        open_store(url)
    assert f"state store `{url}`" in str(err.value) and why in str(err.value)


def test_a_hot_key_goes_leased_and_a_cold_key_stays_exact(redis_cluster: RedisCluster) -> None:
    """One IP sending 1000 decisions/s (virtual) past `lease_hot=20`: after its first 20
    decisions its limit is leased, ≤ 0.05 round trips per decision amortised; IPs seen once
    cost one call each; quiet, it goes cold and its lease is handed back: its bucket holds
    exactly what was admitted."""
    url = fresh(redis_cluster, "lease=auto&lease_hot=20&lease_max=0.01")
    clock = Clock()
    engine = from_design("limit ip 1000000 per 1h\n", state=url, clock=clock)
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    engine.evaluate({"id": "w", "ip": "10.9.9.9"})  # loads the scripts, reads the slot map
    hot, cold = [], []
    for i in range(3000):
        clock.now += 0.001
        before = store.round_trips
        assert engine.evaluate({"id": f"h{i}", "ip": "10.0.0.1"}).allowed
        hot.append(store.round_trips - before)
        if i % 10 == 0:
            before = store.round_trips
            assert engine.evaluate({"id": f"c{i}", "ip": f"10.1.{i // 250}.{i % 250}"}).allowed
            cold.append(store.round_trips - before)
    assert hot[:20] == [1] * 20  # not hot yet: exact, one call each
    assert sum(hot) / len(hot) <= 0.05, sum(hot)
    assert cold == [1] * len(cold)
    # quiet for two lease periods: cold again, its lease handed back, then one exact call
    clock.now += 2.0
    engine.evaluate({"id": "other", "ip": "10.2.0.1"})  # (the engine's quotas, read once a second)
    before = store.round_trips
    assert engine.evaluate({"id": "late", "ip": "10.0.0.1"}).allowed
    assert store.round_trips - before == 2
    assert store.leases.leases == {}
    left = level(url, "ip/requests/3600000/10.0.0.1", 1_000_000, HOUR_MS, clock.now)
    refilled = (clock.now - (NOW + 0.001)) * 1000 * 1_000_000 / HOUR_MS  # since the first take
    assert left == pytest.approx(1_000_000 - 3001 + refilled, abs=1e-3)
    engine.close()


def test_a_denial_by_a_leased_hot_limit_refunds_the_users_tokens(
    redis_cluster: RedisCluster,
) -> None:
    """`limit user 2` (each request a new user: cold, exact) and `limit ip 30` for one hot IP
    (leased after 5 decisions): exactly 30 admitted, and every denied request's user bucket
    is full again (its token handed back), every admitted one's short by one. (Per hour:
    Redis keeps a bucket until it is full again, in real time, so these outlive the test.)"""
    url = fresh(redis_cluster, "lease=auto&lease_hot=5&lease_max=0.5")
    clock = Clock()
    engine = from_design("limit user 2 per 1h\nlimit ip 30 per 1h\n", state=url, clock=clock)
    allowed = []
    for i in range(60):
        clock.now += 0.001
        allowed.append(engine.evaluate({"id": str(i), "user": f"u{i}", "ip": "10.0.0.1"}).allowed)
    assert sum(allowed) == 30
    assert not all(allowed[-10:])  # the denials came from the leased limit
    for i, ok in enumerate(allowed):
        user = level(url, f"user/requests/3600000/u{i}", 2, HOUR_MS, clock.now)
        since = (clock.now - (NOW + 0.001 * (i + 1))) * 1000  # ms since its decision
        assert user == pytest.approx(1 + since * 2 / HOUR_MS if ok else 2), (
            i,
            ok,
        )
    engine.close()
    refilled = (clock.now - (NOW + 0.001)) * 1000 * 30 / HOUR_MS  # since the first take
    ip = level(url, "ip/requests/3600000/10.0.0.1", 30, HOUR_MS, clock.now)
    assert ip == pytest.approx(refilled, abs=1e-6)
