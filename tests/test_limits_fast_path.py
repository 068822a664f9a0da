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
from engine.routing.request import env_of

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


def _state(engine: Any) -> tuple[Any, ...]:
    """What a check can change: the buckets, the uncounted tallies, the violations."""
    limiter = engine.limiter
    return (
        dict(limiter.store._full_at),
        list(limiter._pending),
        dict(limiter.allowed_tallies),
        list(limiter.violations),
    )


def _env(user: str, ip: str = "10.0.0.1", team: object = None) -> dict[str, Any]:
    metadata = {} if team is None else {"team": team}
    return env_of({"id": "x", "user": user, "ip": ip, "prompt": "hello", "metadata": metadata})


def test_check_plain_agrees_with_check_on_a_twin_limiter() -> None:
    """`check_plain` (the evaluator's first call) gives the verdict `check` gives, bucket for
    bucket, and leaves the same state, on the design's shape: shared plain limits and one
    static provider part with a keyed value."""
    t = [START]
    policy = POLICY + "limit team = request.metadata.team 3 per 10s\n"  # a key path's value
    plain = from_design(policy, clock=lambda: t[0])
    full = from_design(policy, clock=lambda: t[0])
    limits = plain.program.limits
    full.limiter.check(limits, _env("warm"), [])  # both plans known
    plain.limiter.check(limits, _env("warm"), [])
    _, plan = plain.limiter._plan
    assert plan is not None and plan.plain is not None and plan.lone_static is not None
    taken = 0
    for i in range(40):
        t[0] += 0.3
        provider = ("gemini", "openai")[i % 2]
        model = f"{provider}/m"
        env = _env(f"u{i % 3}", f"10.0.0.{i % 2}", (None, 7, 7.0, True, "", "t")[i % 6])
        one = plain.limiter.check_plain(limits, env, provider, model)
        if one is None:  # a bucket without room: nothing changed, `check` reports it
            continue
        taken += 1
        two = full.limiter.check(limits, env, [(provider, model, 0.0)])
        assert (one.option, one.denied_by, one.shadow_denials) == (0, None, ())
        assert [s.to_dict() for s in one.statuses] == [s.to_dict() for s in two.statuses]
        assert [s.window_ms for s in one.statuses] == [s.window_ms for s in two.statuses]
        assert _state(plain) == _state(full)
    assert 0 < taken < 40  # both cases met
    teams = {k for k in plain.limiter.store._full_at if k.startswith("team/")}
    assert teams == {"team/requests/10000/7", "team/requests/10000/true", "team/requests/10000/t"}
    assert plain.limiter.daily_stats() == full.limiter.daily_stats()


def test_check_plain_changes_nothing_when_it_declines() -> None:
    """A bucket without room, a quota on one of the request's keys, or a policy of another
    shape: `check_plain` answers None and the store, the tallies and the violations are as
    they were (the caller's `check` then decides and counts)."""
    from engine.limits.stores.base import Quota

    t = [START]
    engine = from_design(POLICY, clock=lambda: t[0])
    limiter, limits = engine.limiter, engine.program.limits
    limiter.check(limits, _env("warm"), [])
    assert limiter.check_plain(limits, _env("a"), "openai", "openai/m") is not None
    for _ in range(5):  # user a: 5 per 10s burst 1, one taken above
        limiter.check_plain(limits, _env("a"), "openai", "openai/m")
    before = _state(engine)
    assert limiter.check_plain(limits, _env("a"), "openai", "openai/m") is None
    assert _state(engine) == before
    # the first candidate's own bucket without room (gemini: 2 per 10s)
    for i in range(2):
        assert limiter.check_plain(limits, _env(f"g{i}", "10.0.1.1"), "gemini", "gemini/m")
    before = _state(engine)
    assert limiter.check_plain(limits, _env("g9", "10.0.1.2"), "gemini", "gemini/m") is None
    assert _state(engine) == before
    # a quota on the user's key: `check` applies it
    engine.limiter.store.set_quota(Quota("user", "b", 100, 10_000, 0, None))
    t[0] += 2.0  # the quotas are read again
    before = _state(engine)
    assert limiter.check_plain(limits, _env("b", "10.0.2.1"), "openai", "openai/m") is None
    assert _state(engine) == before
    # other shapes: a `when`, a spend limit, a shadow limit, a second per-candidate part
    for policy in (
        'limit user 5 per 1m when request.metadata.tier == "free"\n',
        "limit user spend $1 per 1d\n",
        "shadow limit user 5 per 1m\nlimit ip 5 per 1m\n",
        "limit provider 5 per 1m\nlimit model 5 per 1m\n",
    ):
        other = from_design(policy, clock=lambda: t[0])
        other.limiter.check(other.program.limits, _env("warm"), [("openai", "openai/m", 0.0)])
        before = _state(other)
        assert (
            other.limiter.check_plain(other.program.limits, _env("c"), "openai", "openai/m") is None
        )
        assert _state(other) == before


def test_the_evaluator_calls_check_only_for_what_check_plain_declines() -> None:
    """Decisions the common shape admits on their first candidate take `check_plain` alone
    (the engine made the plan when it loaded the policy); `check` is called for a denial
    and for a decision routed past a candidate at its limit, and for nothing else."""
    t = [START]
    engine = from_design(POLICY, clock=lambda: t[0])
    calls = [0]
    check = engine.limiter.check

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return check(*args, **kwargs)

    engine.limiter.check = counted  # type: ignore[method-assign]
    declined = 0
    rng = random.Random(11)
    for i in range(200):
        t[0] += rng.random()
        request = {"id": f"r{i}", "user": rng.choice("abc"), "ip": f"10.0.0.{i % 9}"}
        decision = engine.evaluate(request)
        declined += not decision.allowed or "rate limit" in decision.reason
    assert calls[0] == declined
    assert 10 < declined < 190  # both paths were taken
