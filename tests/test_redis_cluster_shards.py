"""In-flight gauges and affinity pins sharded on a real 3-master Redis Cluster (docs/redis.md,
Cluster): a per-user gauge lives on its user's shard, a pin in its own slot, a global gauge
in the shared slot; exact concurrency across processes; releases on another instance."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import redis
from test_affinity_redis import CATALOG, ROUTE

from engine import PolicyEngine
from engine.limits.stores.redis_cluster_store import (
    RedisClusterStore,
    gauge_redis_key,
    pin_redis_key,
)

if TYPE_CHECKING:
    from _redis_cluster import RedisCluster

pytest_plugins = ["_redis_cluster"]

ROOT = Path(__file__).resolve().parent.parent
POLICY = "limit user concurrent 3\nlimit global concurrent 1000\nlimit user 100 per 1h\n"


def fresh(cluster: RedisCluster) -> str:
    cluster.flush()
    return f"{cluster.url}?timeout=5"


def keys_on(cluster: RedisCluster, pattern: str) -> list[list[str]]:
    """Per master, its keys matching `pattern`."""
    found = []
    for port in cluster.ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        found.append([k.decode() for k in client.scan_iter(match=pattern, count=1000)])
        client.close()
    return found


def test_gauges_and_pins_are_tagged_by_their_own_key() -> None:
    assert gauge_redis_key("user/concurrent/600000/bob") == "{u:bob}:g:user/concurrent/600000/bob"
    assert gauge_redis_key("ip/concurrent/600000/10.0.0.1").startswith("{ip:10.0.0.1}:g:")
    assert gauge_redis_key("global/concurrent/600000/") == "{policyctl}:g:global/concurrent/600000/"
    assert gauge_redis_key("provider/concurrent/600000/a").startswith("{policyctl}:g:")
    assert pin_redis_key("agents:3f2a") == "{p:agents:3f2a}:p:agents:3f2a"


def test_gauges_spread_over_every_master_and_release_on_another_instance(
    redis_cluster: RedisCluster,
) -> None:
    url = fresh(redis_cluster)
    a = PolicyEngine.from_text(POLICY, state=url)
    b = PolicyEngine.from_text(POLICY, state=url)
    for i in range(300):
        assert a.evaluate({"id": f"r{i}", "user": f"user-{i}"}).allowed
    per_master = keys_on(redis_cluster, "*:g:user/*")
    assert sum(map(len, per_master)) == 300
    assert all(len(keys) > 30 for keys in per_master), [len(k) for k in per_master]
    assert not any(k.startswith("{policyctl}") for keys in per_master for k in keys)
    assert sum(map(len, keys_on(redis_cluster, "{policyctl}:g:global/*"))) == 1
    assert len(b.limiter.inflight("user/")) == 300  # read over every master
    assert b.limiter.inflight("global/") == [("global/concurrent/600000/", 300)]
    for i in range(300):  # the outcomes reach the other instance
        b.record_outcome(
            "gemini", "gemini-2.5-flash-lite", latency_ms=1.0, success=True, request_id=f"r{i}"
        )
    assert b.limiter.inflight() == []
    # nothing left but the buckets (and provider health, `:m:`): every lease's records and
    # directory are gone
    left = [k for keys in keys_on(redis_cluster, "*") for k in keys if ":m:" not in k]
    assert [k for k in left if ":b:user/" not in k] == []
    assert len(left) == 300
    a.close()
    b.close()


def test_three_processes_hold_exactly_n_concurrent_per_user(redis_cluster: RedisCluster) -> None:
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
    assert engine.limiter.inflight("global/") == [("global/concurrent/600000/", 18)]
    for rid in admitted:
        engine.record_outcome(
            "gemini", "gemini-2.5-flash-lite", latency_ms=1.0, success=True, request_id=rid
        )
    assert engine.limiter.inflight() == []
    assert engine.evaluate({"id": "again", "user": "user0"}).allowed  # the slots are free
    engine.close()


def test_a_full_gauge_in_a_later_slot_hands_back_the_earlier_ones(
    redis_cluster: RedisCluster,
) -> None:
    url = fresh(redis_cluster)
    policy = "limit user concurrent 5\nlimit global concurrent 2\n"
    engine = PolicyEngine.from_text(policy, state=url)
    assert engine.evaluate({"id": "1", "user": "x"}).allowed
    assert engine.evaluate({"id": "2", "user": "y"}).allowed
    denied = engine.evaluate({"id": "3", "user": "z"})
    assert not denied.allowed and denied.to_dict()["denied_by"]["scope"] == "global"
    # z's own gauge (asked first, on z's shard) holds nothing: the global denial refunded it
    assert engine.limiter.inflight("user/") == [
        ("user/concurrent/600000/x", 1), ("user/concurrent/600000/y", 1),
    ]  # fmt: skip
    engine.close()


def test_pins_spread_over_every_master_and_hold_a_session(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster)
    store = RedisClusterStore(url)
    for i in range(300):
        store.swap_pin(f"agents:h{i}", 1000.0, 60_000, 120_000, 10, "a/m1", ["a/m1"], True)
    per_master = keys_on(redis_cluster, "*:p:agents:*")
    assert sum(map(len, per_master)) == 300
    assert all(len(keys) > 30 for keys in per_master), [len(k) for k in per_master]
    store.close()
    catalog = f"catalog {json.dumps(str(_catalog(redis_cluster)))}\n"
    now = [1_800_000_000.0]
    a, b = (
        PolicyEngine.from_text(catalog + ROUTE, clock=lambda: now[0], state=url) for _ in range(2)
    )
    seen: Counter[str] = Counter()
    for i in range(60):
        now[0] += 5.0
        request = {"id": f"s{i}", "input_tokens": 100, "metadata": {"session_id": "s-1"}}
        d = (a, b)[i % 2].evaluate(request)
        seen[f"{d.provider}/{d.model}"] += 1
    assert len(seen) == 1, seen  # a round-robin strategy, yet one model: the pin is shared
    a.close()
    b.close()


def _catalog(cluster: RedisCluster) -> Path:
    path = Path(cluster.directory) / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return path
