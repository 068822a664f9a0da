"""The memory store's one-pass path and the limiter's use of it agree with the step-by-step
path, and are never taken where a store changes a step (DuckDB, a wrapping subclass)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from engine import PolicyEngine
from engine.limits.stores.base import AcquireResult, Spec
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


def _random_spec(rng: random.Random) -> Spec:
    return Spec(
        rng.choice(["a", "b", "c", "user/requests/60000/u"]),
        rng.choice([1.0, 3.0, 10.0]),
        rng.choice([0.001, 0.01, 0.1]),
        rng.choice([1.0, 2.0, 11.0]),
    )


def test_one_pass_acquire_agrees_with_the_step_by_step_path() -> None:
    rng = random.Random(5)
    fast, slow = MemoryStore(), MemoryStore()
    now = START * 1000
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


def test_consume_all_takes_a_repeated_bucket_twice_and_a_denial_changes_nothing() -> None:
    store = MemoryStore()
    spec = ("k", 3.0, 0.001, 1.0)
    taken = store.consume_all([spec, spec], 0.0)
    assert taken == ([3.0, 3.0], [1000.0, 2000.0])
    assert store.consume_all([spec, ("k2", 1.0, 0.001, 2.0)], 0.0) is None
    assert store.buckets() == [("k", 2000.0)]


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
    engine = PolicyEngine.from_text(POLICY, state=store, clock=lambda: START)
    for i in range(20):
        engine.evaluate({"id": f"r{i}", "user": "u", "ip": "10.0.0.1"})
    assert store.calls == 20


def test_duckdb_store_keeps_its_write_back_bookkeeping(tmp_path: Path) -> None:
    store = DuckDBStore(str(tmp_path / "state.duckdb"))
    assert not store.one_pass
    engine = PolicyEngine.from_text(POLICY, state=store, clock=lambda: START)
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
    memory = PolicyEngine.from_text(POLICY, clock=lambda: t[0])
    duck = PolicyEngine.from_text(
        POLICY, state=DuckDBStore(str(tmp_path / "s.duckdb")), clock=lambda: t[0]
    )
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
    engine = PolicyEngine.from_text("limit user 2 per 1m\n", clock=lambda: t[0])
    other = PolicyEngine.from_text("limit user 5 per 1m\n", clock=lambda: t[0])
    limiter = engine.limiter
    for program, expected in ((engine.program, 2.0), (other.program, 5.0), (engine.program, 2.0)):
        env = {"id": "x", "user": "u", "input_tokens": 1.0, "max_tokens": None}
        verdict = limiter.check(program.limits, env, [("gemini", "gemini/x", 0.0)])
        assert [s.limit for s in verdict.statuses] == [expected]
