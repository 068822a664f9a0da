"""The memory store's memory: eviction that keeps pace with new keys, the `max_keys` bound
(least recently used first, full ones first, partly used drops counted), and eviction that
never changes a decision. Clocks are fake numbers; everything here counts, nothing is timed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from _design import from_design
from hypothesis import given, settings
from hypothesis import strategies as st
from test_service import serving

from engine.limits.stores import ConfigurationError, open_store
from engine.limits.stores.base import BucketCounts, HeldBuckets, Spec
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import DEFAULT_MAX_KEYS, EVICT_SLICE, MemoryStore

START_MS = 1_800_000_000_000.0


def take(store: MemoryStore, key: str, now: float, rate: float = 0.01, cost: float = 1.0) -> bool:
    """One bucket of capacity 10 refilling `rate` tokens a ms; whether it had room."""
    result = store.acquire([Spec(key, 10.0, rate, cost)], (), now)
    return result.option is not None


# ------------------------------------------------------------------ eviction keeps pace


def test_held_buckets_track_the_keys_refilling_not_every_key_seen() -> None:
    """200,000 distinct keys, one a millisecond, each full again 100 ms after its one use:
    about 100 keys are refilling at any time, and the store never holds more than a small
    multiple of that (plus a slice), however many keys it has seen."""
    store = MemoryStore()
    most = 0
    for i in range(200_000):
        assert take(store, f"user/requests/1000/u{i}", START_MS + i)
        if i >= 1_000:
            most = max(most, len(store))
    refilling = 100
    assert most <= 2 * refilling + 2 * EVICT_SLICE
    counts = store.bucket_counts()
    assert counts.held == len(store)
    assert counts.evicted + counts.held == 200_000  # every other bucket went by eviction
    assert counts.dropped_full == counts.dropped_partial == 0  # the bound never came into it


def test_eviction_work_is_paid_per_new_key() -> None:
    """Each new key pays for examining two: a burst of new keys that are all still refilling
    (nothing to evict) is followed, once they are full, by their eviction within as many
    acquires of new keys as there were, not four times as many as before."""
    store = MemoryStore()
    for i in range(10_000):
        take(store, f"a{i}", START_MS)
    assert len(store) == 10_000  # all refilling: none may go
    later = START_MS + 10_000.0  # all full again
    for i in range(6_000):
        take(store, f"b{i}", later)
    # 6,000 new keys paid for 12,000 examinations: the 10,000 full ones are gone
    assert store.bucket_counts().evicted >= 10_000
    assert len(store) <= 6_000 + EVICT_SLICE


def test_engine_decisions_with_new_users_hold_few_buckets() -> None:
    """Through the engine (the limiter's one-pass path, two buckets a decision): 20,000
    users and IPs never seen before, 10 ms apart, each bucket full again 1 s after its use."""
    now = [1_800_000_000.0]
    engine = from_design("limit user 10 per 10s\nlimit ip 10 per 10s\n", clock=lambda: now[0])
    store = engine.store
    assert isinstance(store, MemoryStore)
    most = 0
    for i in range(20_000):
        now[0] += 0.01
        decision = engine.evaluate(
            {"id": f"r{i}", "user": f"u{i}", "ip": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"}
        )
        assert decision.allowed
        if i >= 1_000:
            most = max(most, len(store))
    refilling = 2 * 100  # two buckets a decision, 100 decisions a second
    assert most <= 2 * refilling + 2 * EVICT_SLICE


# ------------------------------------------------------------------ the max_keys bound


def test_max_keys_drops_the_least_recently_used_and_counts_partly_used_ones() -> None:
    store = MemoryStore(max_keys=5)
    for i in range(5):
        take(store, f"k{i}", START_MS + i)
    take(store, "k0", START_MS + 10)  # k0 is now the most recently used
    assert [k for k, _ in store.buckets()] == ["k0", "k1", "k2", "k3", "k4"]
    take(store, "k5", START_MS + 11)  # one too many: k1, least recently used, goes
    assert sorted(k for k, _ in store.buckets()) == ["k0", "k2", "k3", "k4", "k5"]
    assert store.bucket_counts() == BucketCounts(5, 5, 0, 0, 1)
    take(store, "k6", START_MS + 12)
    take(store, "k7", START_MS + 13)
    assert sorted(k for k, _ in store.buckets()) == ["k0", "k4", "k5", "k6", "k7"]
    assert store.bucket_counts().dropped_partial == 3
    # k1 was dropped partly used: it comes back full, its used token handed back
    assert store.peek("k1") is None


def test_max_keys_drops_full_buckets_first() -> None:
    store = MemoryStore(max_keys=4)
    take(store, "slow1", START_MS, rate=0.0001)  # 10 s to refill
    take(store, "fast", START_MS, rate=1.0)  # full again 1 ms later
    take(store, "slow2", START_MS, rate=0.0001)
    take(store, "slow3", START_MS, rate=0.0001)
    take(store, "slow4", START_MS + 5, rate=0.0001)  # one too many
    # `slow1` is the least recently used, but `fast` is full: it goes, nothing handed back
    assert sorted(k for k, _ in store.buckets()) == ["slow1", "slow2", "slow3", "slow4"]
    assert store.bucket_counts() == BucketCounts(4, 4, 0, 1, 0)


def test_a_large_bound_trims_in_batches_and_never_exceeds_it() -> None:
    store = MemoryStore(max_keys=6_400)  # a batch of 100
    for i in range(20_000):
        take(store, f"k{i}", START_MS, rate=1e-6)  # none refills within the test
        assert len(store) <= 6_400
    counts = store.bucket_counts()
    assert counts.dropped_partial == 20_000 - counts.held
    assert 6_300 <= counts.held <= 6_400
    # the most recent keys are the ones kept
    assert store.peek("k19999") is not None
    assert store.peek("k0") is None


def test_max_keys_from_the_url_and_its_errors() -> None:
    assert MemoryStore().max_keys == DEFAULT_MAX_KEYS
    store = open_store("memory://?max_keys=2_000")
    assert isinstance(store, MemoryStore)
    assert store.max_keys == 2_000
    assert store.url == "memory://?max_keys=2_000"
    for url, words in (
        ("memory://?max_keys=0", "`max_keys` must be a whole number of keys, 1 or more, got `0`"),
        ("memory://?max_keys=lots", "got `lots`"),
        ("memory://?size=5", "unknown option `size=5`"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            open_store(url)


def test_the_service_shows_held_and_dropped_buckets(tmp_path: Path) -> None:
    """A real `policyctl serve --state memory://?max_keys=4`: each decision takes a global,
    a user, an IP and a provider bucket; new users and IPs push old ones out, counted."""
    with serving(tmp_path, state="memory://?max_keys=4") as server, server.client() as client:
        for i in range(3):
            body = {"id": f"r{i}", "user": f"user-{i}", "ip": f"10.0.0.{i + 1}", "prompt": "hi"}
            assert client.post("/v1/eval", json=body).json()["allowed"]
        text = client.get("/metrics").text
    assert "# TYPE policyctl_buckets_held gauge" in text
    assert "# TYPE policyctl_buckets_dropped_total counter" in text
    held = re.search(r"^policyctl_buckets_held (\d+)\.0$", text, re.M)
    dropped = re.search(r"^policyctl_buckets_dropped_total (\d+)\.0$", text, re.M)
    assert held is not None and dropped is not None
    assert int(held.group(1)) == 4
    assert int(dropped.group(1)) >= 4  # two decisions' user and IP buckets, at least


def test_the_held_buckets_claim(tmp_path: Path) -> None:
    memory = MemoryStore(max_keys=10)
    take(memory, "a", START_MS)
    assert isinstance(memory, HeldBuckets)
    assert memory.bucket_counts() == BucketCounts(1, 10, 0, 0, 0)
    duck = DuckDBStore(f"{tmp_path}/state.duckdb")
    try:
        take(duck, "a", START_MS)  # type: ignore[arg-type]
        assert duck.bucket_counts() == BucketCounts(1, None, 0, 0, 0)
    finally:
        duck.close()


# ------------------------------------------------------------------ eviction is invisible

steps = st.lists(
    st.tuples(
        st.integers(0, 3),  # which key
        st.floats(0.0, 400.0),  # ms since the previous step
        st.sampled_from([0.5, 1.0, 3.0, 12.0]),  # cost (12: more than the capacity)
        st.booleans(),  # evict every full bucket before this step (else maybe a slice)
        st.booleans(),  # consume (else a dry check)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_a_full_bucket_evicted_behaves_as_if_it_had_stayed(
    plan: list[tuple[int, float, float, bool, bool]],
) -> None:
    """Two stores, the same acquires on a fake clock; one evicts every full bucket at
    arbitrary points: every result, each bucket's tokens, verdict and `full_at`, is the
    same."""
    kept = MemoryStore()
    evicting = MemoryStore()
    now = START_MS
    for key, dt, cost, evict, consume in plan:
        now += dt
        if evict:
            evicting.evict(now)
        elif key == 0:
            evicting._evict_slice(now)  # a slice of the least recently used, as acquires do
        shared = [Spec(f"k{key}", 10.0, 0.01, cost), Spec("global", 10.0, 0.02, 1.0)]
        options = [[Spec(f"p{key % 2}", 10.0, 0.005, 1.0)], [Spec("p9", 10.0, 0.005, 1.0)]]
        one = kept.acquire(shared, options, now, consume=consume)
        two = evicting.acquire(shared, options, now, consume=consume)
        assert one == two
    now += 10_000.0
    assert [k for k, v in kept.buckets() if v > now] == [
        k for k, v in evicting.buckets() if v > now
    ]
