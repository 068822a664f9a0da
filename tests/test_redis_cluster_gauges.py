"""Per-key in-flight gauges folded into their key's bucket call on a real 3-master Redis
Cluster (docs/redis.md, Cluster: in-flight gauges): one command per decision, counted by
every master's `INFO commandstats`; all-or-nothing with the buckets; exact concurrency across
processes; a release on another instance before the directory is written; a holder that
dies without releasing reclaimed at its lease's expiry. Time is the engines' injectable
clock (no sleeps)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from engine import PolicyEngine
from engine.limits.stores.redis_cluster_store import (
    GAUGE_FOLD_SCRIPT,
    NOTE_BATCH,
    RedisClusterStore,
)

if TYPE_CHECKING:
    from _redis_cluster import RedisCluster

pytest_plugins = ["_redis_cluster"]

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
POLICY = "limit user concurrent 3 lease 1m\nlimit user 100 per 1h\n"
GEMINI = ("gemini", "gemini-2.5-flash-lite")


class Clock:
    """The engines' clock (seconds), moved by the test."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fresh(cluster: RedisCluster) -> str:
    cluster.flush()
    return f"{cluster.url}?timeout=5"


def commands(cluster: RedisCluster) -> list[Counter[str]]:
    """Per master, the commands it has served by name (INFO and connection setup left out;
    the commands a script runs are counted under their own names as well)."""
    found = []
    for port in cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        stats = client.info("commandstats")
        client.close()
        counter = Counter({name[len("cmdstat_") :]: int(v["calls"]) for name, v in stats.items()})
        for name in ("info", "hello"):  # this function's own
            counter.pop(name, None)
        found.append(counter)
    return found


def served(before: list[Counter[str]], after: list[Counter[str]]) -> list[Counter[str]]:
    return [a - b for a, b in zip(after, before, strict=True)]


def store_of(engine: PolicyEngine) -> RedisClusterStore:
    store = engine.limiter.store
    assert isinstance(store, RedisClusterStore)
    return store


def done(engine: PolicyEngine, rid: str) -> None:
    engine.record_outcome(*GEMINI, latency_ms=1.0, success=True, request_id=rid)


def test_a_per_user_gauge_and_bucket_decision_is_one_command_on_one_master(
    redis_cluster: RedisCluster,
) -> None:
    clock = Clock()
    # the store given, not its URL: no shared provider health syncing in the background,
    # so what the masters serve is the decisions' alone
    store = RedisClusterStore(fresh(redis_cluster))
    engine = PolicyEngine.from_text(POLICY, state=store, clock=clock)
    for port in redis_cluster.ports:  # the script on every master: no NOSCRIPT round trip
        redis.Redis(port=port).script_load(GAUGE_FOLD_SCRIPT)
    assert engine.evaluate({"id": "warm", "user": "warm"}).allowed  # the slot map read
    store.flush_notes()
    per_master: Counter[int] = Counter()
    for i in range(NOTE_BATCH - 1):  # the batch of directories not full yet
        before, trips = commands(redis_cluster), store.round_trips
        assert engine.evaluate({"id": f"r{i}", "user": f"user-{i}"}).allowed
        delta = served(before, commands(redis_cluster))
        assert store.round_trips - trips == 1
        # one script call on one master (the store's calls are all scripts but for reads
        # and a denial's MGET; other engines of this test session may still poll health)
        assert sorted(d["evalsha"] for d in delta) == [0, 0, 1], delta
        assert all(d["mget"] == 0 and d["get"] <= 1 for d in delta), delta
        per_master[next(m for m, d in enumerate(delta) if d["evalsha"])] += 1
    assert len(per_master) == 3  # the users' gauges and buckets spread over every master
    # the batch full: its directories written by one pipeline, a round trip per master
    before, trips = commands(redis_cluster), store.round_trips
    assert engine.evaluate({"id": "last", "user": "user-last"}).allowed
    delta = served(before, commands(redis_cluster))
    assert store.round_trips - trips <= 1 + 3
    assert sum(d["evalsha"] for d in delta) == 1 + NOTE_BATCH
    # a release on the same instance: one call on the user's master
    before, trips = commands(redis_cluster), store.round_trips
    done(engine, "r0")
    assert store.round_trips - trips == 1
    delta = served(before, commands(redis_cluster))
    assert sorted(d["evalsha"] for d in delta) == [0, 0, 1], delta
    assert engine.limiter.inflight("user/concurrent/60000/user-0") == []
    engine.close()


def test_a_full_gauge_consumes_no_bucket_and_a_bucket_denial_holds_no_slot(
    redis_cluster: RedisCluster,
) -> None:
    clock = Clock()
    url = fresh(redis_cluster)
    engine = PolicyEngine.from_text(
        "limit user concurrent 2\nlimit user 10 per 1h\n", state=url, clock=clock
    )
    assert engine.evaluate({"id": "a", "user": "u"}).allowed
    assert engine.evaluate({"id": "b", "user": "u"}).allowed
    denied = engine.evaluate({"id": "c", "user": "u"}).to_dict()
    assert not denied["allowed"] and denied["denied_by"]["unit"] == "concurrent"
    store = store_of(engine)
    full_at = store.peek("user/requests/3600000/u")
    assert full_at is not None
    # exactly two requests' worth taken from the bucket: 10 per hour, so 2 × 360000 ms
    assert abs(full_at - (NOW * 1000 + 2 * 360_000)) < 1e-3
    engine.close()

    url = fresh(redis_cluster)
    engine = PolicyEngine.from_text(
        "limit user concurrent 5\nlimit user 2 per 1h\n", state=url, clock=clock
    )
    assert engine.evaluate({"id": "a", "user": "u"}).allowed
    assert engine.evaluate({"id": "b", "user": "u"}).allowed
    denied = engine.evaluate({"id": "c", "user": "u"}).to_dict()
    assert not denied["allowed"] and denied["denied_by"]["unit"] == "requests"
    assert engine.limiter.inflight("user/") == [("user/concurrent/600000/u", 2)]
    done(engine, "a")
    done(engine, "b")
    assert engine.limiter.inflight() == []
    engine.close()


def test_three_processes_hold_exactly_n_per_user_then_another_releases(
    redis_cluster: RedisCluster,
) -> None:
    url = fresh(redis_cluster)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine import PolicyEngine
        engine = PolicyEngine.from_text({POLICY!r}, state={url!r})
        admitted = []
        for i in range(10):
            for u in range(6):
                rid = f"{{sys.argv[1]}}-{{i}}-{{u}}"
                if engine.evaluate({{"id": rid, "user": f"user{{u}}"}}).allowed:
                    admitted.append(rid)
        engine.close()  # the directories still pending written
        print(" ".join(admitted))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(n)], stdout=subprocess.PIPE, text=True)
        for n in range(3)
    ]
    admitted: list[str] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0
        admitted += out.split()
    per_user = Counter(rid.rsplit("-", 1)[1] for rid in admitted)
    assert per_user == {str(u): 3 for u in range(6)}  # 30 asked per user, 3 held each
    engine = PolicyEngine.from_text(POLICY, state=url)
    assert sum(n for _, n in engine.limiter.inflight("user/")) == 18
    for rid in admitted:
        done(engine, rid)
    assert engine.limiter.inflight() == []
    assert engine.evaluate({"id": "again", "user": "user0"}).allowed  # the slots are free
    engine.close()


def test_a_release_on_another_instance_before_the_directory_is_written(
    redis_cluster: RedisCluster,
) -> None:
    clock = Clock()
    url = fresh(redis_cluster)
    maker = PolicyEngine.from_text(POLICY, state=url, clock=clock)
    other = PolicyEngine.from_text(POLICY, state=url, clock=clock)
    for i in range(5):
        assert maker.evaluate({"id": f"r{i}", "user": f"u{i}"}).allowed
    assert store_of(maker).notes_written == 0  # still pending on the maker
    for i in range(5):  # the outcomes reach the other instance first: each leaves a mark
        done(other, f"r{i}")
    assert len(other.limiter.inflight("user/")) == 5  # held until the maker writes
    assert store_of(maker).flush_notes() == (5, 5)  # each note finds its mark: released
    assert other.limiter.inflight() == []
    left = [k for port in redis_cluster.ports for k in redis.Redis(port=port).keys("*:ld:*")]
    assert left == []
    maker.close()
    other.close()


def test_a_holder_that_dies_is_reclaimed_at_its_lease_expiry(
    redis_cluster: RedisCluster,
) -> None:
    url = fresh(redis_cluster)
    policy = "limit user concurrent 1 lease 1m\nlimit user 100 per 1h\n"
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine import PolicyEngine
        engine = PolicyEngine.from_text({policy!r}, state={url!r}, clock=lambda: {NOW!r})
        print(engine.evaluate({{"id": "dead", "user": "u"}}).allowed, flush=True)
        os._exit(0)  # no outcome, no close: the directory never written
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == ["True"]
    clock = Clock(NOW + 30)
    engine = PolicyEngine.from_text(policy, state=url, clock=clock)
    denied = engine.evaluate({"id": "early", "user": "u"}).to_dict()
    assert not denied["allowed"] and denied["denied_by"]["unit"] == "concurrent"
    done(engine, "dead")  # an outcome elsewhere finds no directory: a mark, nothing freed
    assert engine.limiter.inflight("user/") == [("user/concurrent/60000/u", 1)]
    clock.now = NOW + 60.001  # past the dead holder's lease: the fold script trims it
    assert engine.evaluate({"id": "late", "user": "u"}).allowed
    assert engine.limiter.inflight("user/") == [("user/concurrent/60000/u", 1)]
    engine.close()
