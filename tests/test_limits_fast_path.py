"""The limiter's use of the memory store's one-pass path agrees with the step-by-step path,
and is never taken where a store changes a step (DuckDB, a wrapping subclass). The store's
own one-pass contract is `TestOnePassCheck` in test_store_contracts.py."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from _design import from_design

from engine.limits.stores.base import AcquireResult
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import MemoryStore

START = 1_800_000_000.0
POLICY = (
    "limit global 50 per 1m burst 5\n"
    "limit user 5 per 10s burst 1\n"
    "limit ip 4 per 10s\n"
    "limit provider 6 per 10s\n"
    'limit provider "gemini" 2 per 10s\n'
)


class CountingStore(MemoryStore):
    """A store that wraps `acquire`: the limiter must go through it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def acquire(self, *args: Any, **kwargs: Any) -> AcquireResult:
        self.calls += 1
        return super().acquire(*args, **kwargs)


def test_the_limiter_goes_through_acquire_of_a_store_that_wraps_it() -> None:
    assert MemoryStore().one_pass
    store = CountingStore()
    assert not store.one_pass
    engine = from_design(POLICY, state=store, clock=lambda: START)
    for i in range(20):
        engine.evaluate({"id": f"r{i}", "user": "u", "ip": "10.0.0.1"})
    assert store.calls == 20


def test_duckdb_store_keeps_its_write_back_bookkeeping(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "state.duckdb"))
    assert not store.one_pass
    engine = from_design(POLICY, state=store, clock=lambda: START)
    engine.evaluate({"id": "r1", "user": "u", "ip": "10.0.0.1"})
    keys = [row[0] for row in store.bucket_details()]
    assert keys == [
        "global/requests/60000/",
        "ip/requests/10000/10.0.0.1",
        "provider/requests/10000/gemini",
        "user/requests/10000/u",
    ]
    engine.close()
    reopened = DuckDBStore(str(tmp_path / "state.duckdb"))
    assert [k for k, _ in reopened.buckets()] == keys
    reopened.close()


def test_memory_and_duckdb_engines_decide_alike(tmp_path: Path) -> None:
    t = [START]
    memory = from_design(POLICY, clock=lambda: t[0])
    duck = from_design(POLICY, state=DuckDBStore(str(tmp_path / "s.duckdb")), clock=lambda: t[0])
    rng = random.Random(3)
    for i in range(300):
        t[0] += rng.random() * 2
        request = {"id": f"r{i}", "user": rng.choice(["a", "b"]), "ip": "10.0.0.1"}
        dry = rng.random() < 0.2
        one = memory.evaluate(request, dry_run=dry)
        two = duck.evaluate(request, dry_run=dry)
        assert one.to_dict() == two.to_dict()
    assert memory.limiter.daily_stats() == duck.limiter.daily_stats()
    assert list(memory.limiter.violations) == list(duck.limiter.violations)
    duck.close()


def test_a_new_policy_gets_a_new_plan() -> None:
    t = [START]
    engine = from_design("limit user 2 per 1m\n", clock=lambda: t[0])
    other = from_design("limit user 5 per 1m\n", clock=lambda: t[0])
    limiter = engine.limiter
    for program, expected in ((engine.program, 2.0), (other.program, 5.0), (engine.program, 2.0)):
        env = {"id": "x", "user": "u", "input_tokens": 1.0, "max_tokens": None}
        verdict = limiter.check(program.limits, env, [("gemini", "gemini/x", 0.0)])
        assert [s.limit for s in verdict.statuses] == [expected]


def test_the_first_candidates_cached_buckets_agree_with_acquire_and_stay_as_cached() -> None:
    """One static per-candidate part (`limit provider`): its first candidate's buckets come
    from the part's cache. Through denials (the next candidate) and a run-time quota on a
    provider, decisions equal those of a store the limiter must call `acquire` on, and the
    cached buckets are never changed."""
    from engine.limits.stores.base import Quota

    t = [START]
    fast_store, slow_store = MemoryStore(), CountingStore()
    fast = from_design(POLICY, state=fast_store, clock=lambda: t[0])
    slow = from_design(POLICY, state=slow_store, clock=lambda: t[0])
    _, plan = fast.limiter._plan
    assert plan is not None and plan.lone_static is not None
    rng = random.Random(5)
    cached: dict[str, tuple[list[Any], list[Any]]] = {}
    denied = moved = 0  # denials; decisions routed past a provider at its limit
    for i in range(300):
        t[0] += rng.random() * 0.5
        if i == 150:
            for store in (fast_store, slow_store):
                store.set_quota(Quota("provider", "gemini", 3, 10_000, 0, None))
            t[0] += 1.5  # the quotas are read again
        request = {"id": f"r{i}", "user": rng.choice("abcdefgh"), "ip": f"10.0.0.{i % 7}"}
        one, two = fast.evaluate(request), slow.evaluate(request)
        assert one.to_dict() == two.to_dict()
        denied += not one.allowed
        moved += one.allowed and "rate limit" in one.reason
        for key, (buckets, info) in plan.lone_static.cache.items():
            snapshot = ([*buckets], [*info])
            assert cached.setdefault(key, snapshot) == snapshot
    assert denied and moved  # both cases were met
    assert fast.limiter.daily_stats() == slow.limiter.daily_stats()
    assert list(fast.limiter.violations) == list(slow.limiter.violations)
    assert slow_store.calls == 300
