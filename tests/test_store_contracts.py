"""One contract suite per store capability, over every store that claims it.

The capabilities are the protocols of `engine.limits.stores.base` (its docstring has the
table). `CLAIMS` says which store claims which; `test_each_store_claims_exactly_its_
protocols` holds the stores to it, so a claim cannot appear or disappear unnoticed, and
each class below runs for exactly the stores that claim its protocol (its fixture checks
the claim with `isinstance`). The memory store is the reference the others agree with.
Clocks are numbers passed in; nothing sleeps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _design import from_design

from engine import PolicyEngine
from engine.analytics import queries
from engine.limits.stores.base import (
    BucketInspection,
    HeldBuckets,
    OnePassCheck,
    Persistence,
    Quota,
    Spec,
    SQLQueries,
    Store,
    available,
    uses_one_pass,
)
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import MemoryStore
from engine.limits.stores.redis_store import RedisStore
from engine.routing.metrics import ClosableMetrics, LiveMetrics, NoMetrics, RecordingMetrics
from engine.routing.shared_health import SharedMetrics

pytest_plugins = ["_redis"]

NOW = 1_800_000_000_000.0  # epoch milliseconds
KINDS = ("memory", "duckdb", "redis")
CLAIMS: dict[str, set[str]] = {
    "memory": {"Store", "OnePassCheck", "HeldBuckets"},
    "duckdb": {"Store", "Persistence", "BucketInspection", "SQLQueries", "HeldBuckets"},
    "redis": {"Store"},
}
PROTOCOLS: dict[str, type] = {
    "Store": Store,
    "Persistence": Persistence,
    "BucketInspection": BucketInspection,
    "SQLQueries": SQLQueries,
    "HeldBuckets": HeldBuckets,
}


def claims(store: object) -> set[str]:
    """The protocols a store claims (`OnePassCheck`: its members and `one_pass`)."""
    found = {name for name, protocol in PROTOCOLS.items() if isinstance(store, protocol)}
    if isinstance(store, Store) and uses_one_pass(store):
        found.add("OnePassCheck")
    return found


def claiming(protocol: str) -> list[str]:
    return [kind for kind in KINDS if protocol in CLAIMS[kind]]


StoreFactory = Callable[[], Any]


@pytest.fixture
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Fresh stores of the kind `request.param` (a DuckDB file each, a Redis database each)."""
    kind = request.param
    opened: list[Any] = []

    def factory() -> Any:
        store: Any
        if kind == "memory":
            store = MemoryStore()
        elif kind == "duckdb":
            store = DuckDBStore(str(tmp_path / f"state{len(opened)}.duckdb"))
        else:
            server = request.getfixturevalue("redis_server")
            db = 12 + len(opened)  # databases the other redis tests do not use
            store = RedisStore(server.url.rsplit("/", 1)[0] + f"/{db}?timeout=2")
            store._redis.flushdb()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


def _claimed(factory: StoreFactory, protocol: str) -> Any:
    store = factory()
    assert protocol in claims(store), f"{type(store).__name__} no longer claims {protocol}"
    return store


# ----------------------------------------------------------------------------- the claims


@pytest.mark.parametrize("make_store", KINDS, indirect=True)
def test_each_store_claims_exactly_its_protocols(
    make_store: StoreFactory, request: pytest.FixtureRequest
) -> None:
    store = make_store()
    kind = request.node.callspec.params["make_store"]
    assert claims(store) == CLAIMS[kind]
    # `persistent` (the engine hands logs to `flush`) goes with the Persistence claim
    assert store.persistent == isinstance(store, Persistence)


def test_a_subclass_that_changes_a_step_of_acquire_does_not_claim_one_pass() -> None:
    class Wrapping(MemoryStore):
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            return super().acquire(*args, **kwargs)

    store = Wrapping()
    assert isinstance(store, OnePassCheck)  # it inherits the members…
    assert claims(store) == {"Store", "HeldBuckets"}  # …but not the claim


def test_metrics_views_claim_their_protocols(redis_server: Any) -> None:
    shared = SharedMetrics(redis_server.url, [], background=False)
    try:
        views: list[tuple[object, set[type]]] = [
            (NoMetrics(), set()),
            (LiveMetrics(60.0), {RecordingMetrics}),
            (shared, {RecordingMetrics, ClosableMetrics}),
        ]
        for view, expected in views:
            got = {p for p in (RecordingMetrics, ClosableMetrics) if isinstance(view, p)}
            assert got == expected, type(view).__name__
    finally:
        shared.close()


# ----------------------------------------------------------------------------- Store


def _spec(key: str, capacity: float = 3.0, rate: float = 0.001, cost: float = 1.0) -> Spec:
    return Spec(key, capacity, rate, cost)


@pytest.mark.parametrize("make_store", claiming("Store"), indirect=True)
class TestStore:
    def test_shared_buckets_alone_are_all_or_nothing(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        a, b = _spec("a", 3.0), _spec("b", 1.0)
        first = store.acquire([a, b], (), NOW)
        assert first.option == 0 and first.failed is None
        assert [(o.spec.key, o.available, o.allowed) for o in first.outcomes] == [
            ("a", 3.0, True),
            ("b", 1.0, True),
        ]
        denied = store.acquire([a, b], (), NOW)
        assert denied.option is None
        assert denied.failed is not None and denied.failed.spec.key == "b"
        assert denied.failed.available == pytest.approx(0.0)
        # the denial took nothing from `a`: two tokens left of three
        assert store.peek("a") == pytest.approx(NOW + 1000.0)
        assert store.peek("b") == pytest.approx(NOW + 1000.0)

    def test_exactly_n_fit_a_bucket_of_n_at_any_epoch(self, make_store: StoreFactory) -> None:
        """A full-at time is epoch ms (~1e12, where a float's step is ~1e-4 ms) and every
        consumption adds to it, rounding: without slack in time, a burst at one instant
        got N - 1 of N at about half of all epochs (`limit user 7 per 1m` at 1e9 s: 6)."""
        rng = random.Random(7)
        store = _claimed(make_store, "Store")
        cases = [(1e12, 7, 60_000.0)] + [
            (rng.uniform(1e12, 4e12), rng.choice((3, 7, 13, 100)),
             rng.choice((1_000.0, 60_000.0, 3_600_000.0)))
            for _ in range(40)
        ]  # fmt: skip
        for i, (now, n, window_ms) in enumerate(cases):
            spec = Spec(f"burst/{i}", float(n), n / window_ms, 1.0)
            admitted = sum(store.acquire([spec], (), now).option == 0 for _ in range(n + 2))
            assert admitted == n, (now, n, window_ms)

    def test_the_first_option_with_room_is_consumed(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        shared = [_spec("g", 10.0)]
        full = _spec("p1", 1.0)
        store.acquire([full], (), NOW)  # p1 is now empty
        result = store.acquire(shared, [[full], [_spec("p2", 1.0)]], NOW)
        assert result.option == 1
        assert [o.spec.key for o in result.outcomes] == ["g", "p2"]
        assert store.peek("g") == pytest.approx(NOW + 1000.0)
        assert store.peek("p1") == pytest.approx(NOW + 1000.0)  # not charged again
        assert store.peek("p2") == pytest.approx(NOW + 1000.0)
        denied = store.acquire(shared, [[full], [_spec("p2", 1.0)]], NOW)
        assert denied.option is None
        assert denied.failed is not None and denied.failed.spec.key == "p2"
        assert store.peek("g") == pytest.approx(NOW + 1000.0)  # nothing consumed

    def test_without_consume_nothing_changes(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        result = store.acquire([_spec("a")], [[_spec("b")]], NOW, consume=False)
        assert result.option == 0
        assert store.peek("a") is None and store.peek("b") is None
        assert store.buckets() == []

    def test_buckets_peek_reset_by_prefix(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        for key in ("user/requests/60000/a", "user/requests/60000/ab", "ip/requests/60000/x"):
            store.acquire([_spec(key)], (), NOW)
        assert store.peek("user/requests/60000/a") == pytest.approx(NOW + 1000.0)
        assert store.peek("user/requests/60000/zz") is None
        assert [k for k, _ in store.buckets()] == [
            "ip/requests/60000/x",
            "user/requests/60000/a",
            "user/requests/60000/ab",
        ]
        assert [k for k, _ in store.buckets("user/")] == [
            "user/requests/60000/a",
            "user/requests/60000/ab",
        ]
        assert store.reset("user/requests/60000/a") == 2  # a prefix: `ab` too
        assert [k for k, _ in store.buckets()] == ["ip/requests/60000/x"]
        assert store.reset("nothing/") == 0

    def test_evict_never_takes_a_bucket_that_is_not_full(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        store.acquire([_spec("quick", 3.0, 0.01)], (), NOW)  # full again after 100 ms
        store.acquire([_spec("slow", 3.0, 0.0001)], (), NOW)  # after 10 s
        assert store.evict(NOW + 500.0) >= 0
        assert store.peek("slow") == pytest.approx(NOW + 10_000.0)
        quick = store.peek("quick")
        assert available(quick, 3.0, 0.01, NOW + 500.0) == 3.0  # gone, or full: the same

    def test_quotas_are_set_listed_replaced_and_removed(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        assert store.quotas() == []
        store.set_quota(Quota("user", "vip", 5, 60_000, 0, None))
        store.set_quota(Quota("ip", "10.0.0.1", 2, 1000, 1, 1_900_000_000.0))
        store.set_quota(Quota("user", "vip", 7, 60_000, 2, None))  # replaces
        assert store.quotas() == [
            Quota("ip", "10.0.0.1", 2.0, 1000.0, 1.0, 1_900_000_000.0),
            Quota("user", "vip", 7.0, 60_000.0, 2.0, None),
        ]
        assert store.remove_quota("user", "vip") is True
        assert store.remove_quota("user", "vip") is False
        assert [q.key for q in store.quotas()] == ["10.0.0.1"]

    def test_flush_without_logs_keeps_the_state(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        store.acquire([_spec("a")], (), NOW)
        store.flush()
        assert [k for k, _ in store.buckets()] == ["a"]

    def test_agrees_with_the_memory_store(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Store")
        reference = MemoryStore()
        rng = random.Random(11)
        now = NOW
        keys = ["g", "u1", "u2", "p1", "p2"]
        for _ in range(300):
            now += rng.choice([0.0, 1.0, 50.0, 400.0])
            specs = [
                Spec(key, rng.choice([1.0, 2.0, 5.0]), 0.004, rng.choice([1.0, 2.0]))
                for key in keys
            ]
            shared = specs[: rng.randint(0, 2)]
            options = [[specs[3]], [specs[4]]][: rng.randint(0, 2)]
            consume = rng.random() > 0.2
            want = reference.acquire(shared, [list(o) for o in options], now, consume=consume)
            got = store.acquire(shared, [list(o) for o in options], now, consume=consume)
            assert got == want
        assert store.buckets() == reference.buckets()


# ----------------------------------------------------------------------------- OnePassCheck


@pytest.mark.parametrize("make_store", claiming("OnePassCheck"), indirect=True)
class TestOnePassCheck:
    def test_one_pass_acquire_agrees_with_the_step_by_step_path(
        self, make_store: StoreFactory
    ) -> None:
        fast, slow = _claimed(make_store, "OnePassCheck"), _claimed(make_store, "OnePassCheck")
        rng = random.Random(5)
        now = NOW
        for _ in range(3000):
            now += rng.random() * rng.choice([1, 100, 2000])
            shared = [_random_spec(rng) for _ in range(rng.choice([0, 1, 1, 2, 3]))]
            options = [[_random_spec(rng) for _ in range(rng.randint(0, 2))] for _ in range(3)]
            options = options[: rng.randint(0, 3)]
            consume = rng.random() > 0.2
            no_options = rng.random() < 0.5
            got = fast.acquire(shared, () if no_options else iter(options), now, consume=consume)
            want = slow.acquire_stepwise(
                shared, () if no_options else iter(options), now, consume=consume
            )
            assert got == want
        assert fast.buckets() == slow.buckets()

    def test_consume_all_takes_a_repeated_bucket_twice_and_a_denial_changes_nothing(
        self, make_store: StoreFactory
    ) -> None:
        store = _claimed(make_store, "OnePassCheck")
        spec = ("k", 3.0, 0.001, 1.0)
        taken = store.consume_all([spec, spec], 0.0)
        assert taken == ([3.0, 3.0], [1000.0, 2000.0])
        assert store.consume_all([spec, ("k2", 1.0, 0.001, 2.0)], 0.0) is None
        assert store.buckets() == [("k", 2000.0)]


def _random_spec(rng: random.Random) -> Spec:
    return Spec(
        rng.choice(["a", "b", "c", "user/requests/60000/u"]),
        rng.choice([1.0, 3.0, 10.0]),
        rng.choice([0.001, 0.01, 0.1]),
        rng.choice([1.0, 2.0, 11.0]),
    )


# ----------------------------------------------------------------------------- Persistence


def _reopen(store: Any) -> Any:
    """The same state opened again (after `close`), as the next process would."""
    store.close()
    return type(store)(store.url)


def _log_through_an_engine(store: Any) -> PolicyEngine:
    """An engine over `store` that decided five requests (two allowed, three denied by
    `limit user 1 per 1h`, all at NOW) and flushed its logs; close it when done."""
    engine = from_design("limit user 1 per 1h\n", state=store, clock=lambda: NOW / 1e3)
    for i, user in enumerate(["a", "a", "b", "b", "b"]):
        engine.evaluate({"id": f"r{i}", "user": user})
    engine.flush()
    return engine


@pytest.mark.parametrize("make_store", claiming("Persistence"), indirect=True)
class TestPersistence:
    def test_buckets_and_quotas_outlive_the_process(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Persistence")
        store.acquire([_spec("user/requests/60000/a")], [[_spec("provider/requests/1000/p")]], NOW)
        store.set_quota(Quota("user", "vip", 5, 60_000, 0, None))
        buckets, quotas = store.buckets(), store.quotas()
        again = _reopen(store)
        try:
            assert again.buckets() == buckets
            assert again.quotas() == quotas
        finally:
            again.close()

    def test_a_reset_outlives_the_process(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Persistence")
        store.acquire([_spec("a"), _spec("b")], (), NOW)
        store.flush()
        assert store.reset("a") == 1
        again = _reopen(store)
        try:
            assert [k for k, _ in again.buckets()] == ["b"]
        finally:
            again.close()

    def test_configs_and_logs_land_on_the_connection(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "Persistence")
        engine = _log_through_an_engine(store)
        try:
            con = store.connection
            assert con.execute(
                "SELECT scope, unit, max_requests, window_ms FROM rate_limit_configs"
            ).fetchall() == [("user", "requests", 1.0, 3_600_000.0)]
            assert con.execute(
                "SELECT key, request_id FROM rate_limit_violations ORDER BY request_id"
            ).fetchall() == [("a", "r1"), ("b", "r3"), ("b", "r4")]
            assert con.execute(
                "SELECT scope, allowed_requests, denied_requests FROM rate_limit_stats"
            ).fetchall() == [("user", 2, 3)]
            assert con.execute("SELECT count(*) FROM outcomes").fetchall() == [(0,)]
        finally:
            engine.close()


# ----------------------------------------------------------------------------- BucketInspection


@pytest.mark.parametrize("make_store", claiming("BucketInspection"), indirect=True)
class TestBucketInspection:
    def test_details_of_every_bucket(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "BucketInspection")
        store.acquire([_spec("b", 3.0, 0.001)], (), NOW)
        store.acquire([_spec("a", 5.0, 0.01, 2.0)], (), NOW + 10.0)
        assert store.bucket_details() == [
            ("a", pytest.approx(NOW + 210.0), 5.0, 0.01, NOW + 10.0),
            ("b", pytest.approx(NOW + 1000.0), 3.0, 0.001, NOW),
        ]
        assert [row[0] for row in store.bucket_details()] == [k for k, _ in store.buckets()]
        store.reset("a")
        assert [row[0] for row in store.bucket_details()] == ["b"]

    def test_cleanup_takes_full_buckets_idle_long_enough(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "BucketInspection")
        store.acquire([_spec("old", 3.0, 0.01)], (), NOW)  # full at NOW + 100
        store.acquire([_spec("recent", 3.0, 0.01)], (), NOW + 900.0)  # full at NOW + 1000
        store.acquire([_spec("busy", 3.0, 0.0001)], (), NOW)  # full at NOW + 10 s
        assert store.cleanup(NOW + 1000.0, 500.0) == 1  # `recent` is full but used 100 ms ago
        assert [k for k, _ in store.buckets()] == ["busy", "recent"]
        assert store.cleanup(NOW + 1000.0, 0.0) == 1
        assert [k for k, _ in store.buckets()] == ["busy"]


# ----------------------------------------------------------------------------- SQLQueries


@pytest.mark.parametrize("make_store", claiming("SQLQueries"), indirect=True)
class TestSQLQueries:
    def test_read_runs_on_the_connection_and_sees_the_flushed_logs(
        self, make_store: StoreFactory
    ) -> None:
        store = _claimed(make_store, "SQLQueries")
        assert store.read(lambda con: con.execute("SELECT 41 + 1").fetchall()) == [(42,)]
        engine = _log_through_an_engine(store)
        try:
            assert store.read(queries.limit_stats) == [("2027-01-15", "user", 2, 3)]
            newest = store.read(lambda con: queries.violations(con, None, None, 10))
            assert [(row[1], row[2], row[6]) for row in newest] == [
                ("user", "b", "r4"),
                ("user", "b", "r3"),
                ("user", "a", "r1"),
            ]
            assert newest[0][0] == NOW * 1000  # epoch microseconds
            only = store.read(lambda con: queries.violations(con, "a", "user", 10))
            assert [row[6] for row in only] == ["r1"]
            assert store.read(lambda con: queries.violations(con, None, "ip", 10)) == []
            assert store.read(lambda con: queries.violations(con, None, None, 1)) == newest[:1]
        finally:
            engine.close()


# ----------------------------------------------------------------------------- HeldBuckets


@pytest.mark.parametrize("make_store", claiming("HeldBuckets"), indirect=True)
class TestHeldBuckets:
    def test_counts_what_it_holds(self, make_store: StoreFactory) -> None:
        store = _claimed(make_store, "HeldBuckets")
        assert store.bucket_counts().held == 0
        for key in ("a", "b", "c"):
            store.acquire([_spec(key)], (), NOW)
        store.acquire([_spec("fast", rate=1.0)], (), NOW)
        counts = store.bucket_counts()
        assert counts.held == len(store.buckets()) == 4
        assert counts.dropped_partial == 0
        assert store.evict(NOW + 10.0) == 1  # `fast` is full again
        assert store.bucket_counts().held == 3
