"""The Redis Cluster store (`redis+cluster://`) against a real 3-master cluster on loopback:
state sharded by key, round trips per decision, all-or-nothing across slots under
concurrency, many processes, a master killed mid-run, settlement, in-flight release and
provider health across instances."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _design import from_design

from engine import PolicyEngine
from engine.limits.stores import ConfigurationError, open_store
from engine.limits.stores.base import Spec, StoreUnavailableError, available
from engine.limits.stores.redis_cluster_store import (
    RedisClusterStore,
    bucket_redis_key,
    bucket_tag,
)
from engine.limits.stores.redis_store import RedisStore

if TYPE_CHECKING:
    from _redis_cluster import RedisCluster

pytest_plugins = ["_redis_cluster"]

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
HOUR_MS = 3_600_000.0


def fresh(cluster: RedisCluster, timeout: float = 5.0) -> str:
    cluster.flush()
    return f"{cluster.url}?timeout={timeout}"


def level(url: str, key: str, capacity: float, window_ms: float, now_s: float = NOW) -> float:
    store = RedisClusterStore(url)
    try:
        return available(store.peek(key), capacity, capacity / window_ms, now_s * 1000)
    finally:
        store.close()


# ---------------------------------------------------------------------- URL and key layout


def test_open_store_picks_the_cluster_by_scheme(redis_cluster: RedisCluster) -> None:
    store = open_store(fresh(redis_cluster))
    assert isinstance(store, RedisClusterStore)
    spec = Spec("user/requests/60000/a", 1, 1 / 60_000, 1)
    assert store.acquire([spec], (), NOW * 1000).option == 0
    store.close()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://", "`` is not host:port"),
        ("redis+cluster://h1:7000,h2", "`h2` is not host:port"),
        ("redis+cluster://h:port", "`h:port` is not host:port"),
        ("redis+cluster://h:7000/0", "no user, password or database"),
        ("redis+cluster://h:7000?timeout=soon", "`timeout` must be seconds"),
        ("redis+cluster://h:7000?timeout=0", "`timeout` must be more than 0"),
        ("redis+cluster://h:7000?db=1", "unknown option `db`"),
    ],
)
def test_a_bad_cluster_url_says_where_and_why(url: str, why: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        open_store(url)
    assert f"state store `{url}`" in str(err.value)
    assert why in str(err.value)


def test_an_unreachable_cluster_is_unavailable_not_a_crash() -> None:
    from _redis import free_port

    store = open_store(f"redis+cluster://127.0.0.1:{free_port()}?timeout=0.2")  # lazy
    with pytest.raises(StoreUnavailableError, match="redis cluster at `redis\\+cluster://"):
        store.acquire([Spec("user/requests/60000/a", 1, 1, 1)], (), 0.0)


def test_buckets_are_tagged_by_their_own_key() -> None:
    assert bucket_tag("user/requests/60000/alice") == "u:alice"
    assert bucket_tag("user/tokens/3600000#2/alice") == "u:alice"
    assert bucket_tag("ip/requests/60000/10.0.0.1") == "ip:10.0.0.1"
    assert bucket_tag("team/requests/60000/acme") == "k:team:acme"
    assert bucket_tag("global/requests/60000/") == "policyctl"
    assert bucket_tag("model/requests/60000/openai/gpt-4o") == "policyctl"
    assert bucket_tag("provider/tokens/60000/openai") == "policyctl"
    # a brace in a key never ends the tag early: it is hashed
    tag = bucket_tag("user/requests/60000/a}b{c")
    assert tag.startswith("u:h") and "{" not in tag and "}" not in tag
    assert bucket_redis_key("user/requests/60000/bob") == "{u:bob}:b:user/requests/60000/bob"


def test_per_user_state_spreads_over_every_master(redis_cluster: RedisCluster) -> None:
    engine = from_design("limit user 10 per 1h\n", state=fresh(redis_cluster))
    for i in range(300):
        assert engine.evaluate({"id": str(i), "user": f"user-{i}"}).allowed
    sizes = [redis_cluster.dbsize(port) for port in redis_cluster.ports]
    assert sum(sizes) == 300  # one bucket per user, nothing else
    assert all(size > 30 for size in sizes), sizes  # a third each, give or take
    assert len(engine.store.buckets("user/")) == 300  # scanned over every master
    assert engine.store.reset("user/requests/3600000/user-1") == 111  # user-1, -10..19, -100..199
    engine.close()


# ---------------------------------------------------------------------- round trips


def trips(engine: PolicyEngine, requests: list[dict[str, Any]]) -> list[int]:
    store = engine.store
    assert isinstance(store, RedisStore)  # a RedisClusterStore is one
    counted = []
    for request in requests:
        before = store.round_trips
        engine.evaluate(request)
        counted.append(store.round_trips - before)
    return counted


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("limit user 100 per 1m\n", 1),  # the user's slot only
        ("limit global 1000 per 1m\n", 1),  # the shared slot only
        ("limit user 100 per 1m\nlimit global 1000 per 1m\n", 2),  # user's, then shared
        ("limit user 100 per 1m\nlimit model 1000 per 1m\nlimit provider 1000 per 1m\n", 2),
        ("limit user 100 per 1m\nlimit ip 100 per 1m\nlimit global 1000 per 1m\n", 3),
        ("limit user tokens 100000 per 1h\n", 2),  # reserving: + the directory's note
        ("limit user tokens 100000 per 1h\nlimit global 1000 per 1m\n", 3),
        # a per-user gauge in the user's bucket call (its lease's directory written later,
        # with others: `flush_notes`); a global one in the shared slot (no directory)
        ("limit user concurrent 100\nlimit user 100 per 1m\n", 1),
        ("limit global concurrent 100\nlimit user 100 per 1m\n", 2),
    ],
)
def test_round_trips_per_decision(redis_cluster: RedisCluster, policy: str, expected: int) -> None:
    # a still clock: the directories' batch (32) is not due by time within these 21
    engine = from_design(policy, state=fresh(redis_cluster), clock=lambda: 1_800_000_000.0)
    request = {"id": "w", "user": "u", "ip": "10.0.0.1", "input_tokens": 10, "max_tokens": 10}
    engine.evaluate(request)  # loads the scripts, reads the slot map
    requests = [dict(request, id=str(i)) for i in range(20)]
    assert trips(engine, requests) == [expected] * 20
    engine.close()


def test_a_single_node_url_keeps_one_call_and_one_slot(redis_cluster: RedisCluster) -> None:
    """`redis://` to one master of the cluster: today's layout, every key `{policyctl}`
    (so in one slot, which that master may not own: then it answers MOVED). Checked on the
    master owning the slot of `{policyctl}`."""
    fresh(redis_cluster)
    probe = RedisClusterStore(redis_cluster.url)
    slot = probe._redis.keyslot("{policyctl}")
    owner = probe._redis.nodes_manager.get_node_from_slot(slot).port
    probe.close()
    store = open_store(f"redis://127.0.0.1:{owner}/0?timeout=5")
    assert type(store) is RedisStore
    engine = from_design("limit user 100 per 1m\nlimit global 1000 per 1m\n", state=store)
    engine.evaluate({"id": "w", "user": "u0"})  # reads the quotas, loads the script
    assert trips(engine, [{"id": str(i), "user": f"u{i}"} for i in range(10)]) == [1] * 10
    assert redis_cluster.dbsize(owner) == 11  # 10 users and the global bucket, on one master

    engine.close()


# ---------------------------------------------------------------------- all-or-nothing


def test_no_scope_is_consumed_unless_every_scope_admits(redis_cluster: RedisCluster) -> None:
    """4 users × 6 requests from 6 threads over 2 stores (2 slots per decision: the user's,
    then the shared one), `limit user 5` and `limit global 12`: exactly 12 admitted, at
    most 5 per user; and every bucket holds exactly what was admitted (a user's tokens taken
    before the global bucket denied were handed back)."""
    url = fresh(redis_cluster)
    policy = "limit user 5 per 1h\nlimit global 12 per 1h\n"
    clock = lambda: NOW  # noqa: E731 - a fixed time: no refill during the run
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
    assert sum(admitted.values()) == 12
    assert all(count <= 5 for count in admitted.values())
    assert level(url, "global/requests/3600000/", 12, HOUR_MS) == pytest.approx(0, abs=1e-6)
    for user, count in admitted.items():
        assert level(url, f"user/requests/3600000/{user}", 5, HOUR_MS) == pytest.approx(
            5 - count, abs=1e-6
        )
    for engine in engines:
        engine.close()


def test_a_denial_by_the_shared_slot_refunds_the_users_tokens(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster)
    engine = from_design(
        "limit user 3 per 1h\nlimit global 1 per 1h\n", state=url, clock=lambda: NOW
    )
    assert engine.evaluate({"id": "1", "user": "a"}).allowed
    denied = engine.evaluate({"id": "2", "user": "b"})
    assert not denied.allowed and denied.denied_by["scope"] == "global"
    assert level(url, "user/requests/3600000/b", 3, HOUR_MS) == pytest.approx(3)  # handed back
    assert level(url, "user/requests/3600000/a", 3, HOUR_MS) == pytest.approx(2)
    # a denial by the user's own slot reports the shared bucket before it as one node does
    url = fresh(redis_cluster)
    policy = "limit global 10 per 1h\nlimit user 1 per 1h\n"
    engine = from_design(policy, state=url, clock=lambda: NOW)
    assert engine.evaluate({"id": "3", "user": "c"}).allowed
    denied = engine.evaluate({"id": "4", "user": "c"})
    assert denied.denied_by["scope"] == "user"
    assert level(url, "global/requests/3600000/", 10, HOUR_MS) == pytest.approx(9)  # 1 admitted
    engine.close()


def test_a_candidate_denied_in_the_shared_slot_moves_on(redis_cluster: RedisCluster) -> None:
    """Per-user spend (the user's slot) and per-model limits (the shared slot): the first
    candidate's model is full, so the decision takes the second, and the user's spend bucket
    holds the second's estimate only."""
    url = fresh(redis_cluster)
    policy = (
        "limit user spend $1 per 1d\nlimit model 1 per 1h\n"
        "route r {\n prefer gemini/gemini-1.5-flash-latest\n"
        " prefer claude/claude-3-haiku-20240307\n}\n"
    )
    engine = from_design(policy, state=url, clock=lambda: NOW)
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
    engine.close()


# ---------------------------------------------------------------------- many processes


def test_three_processes_admit_exactly_n_of_m_per_user(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster)
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine import PolicyEngine
        engine = PolicyEngine.from_text(
            "limit user 10 per 1h\\nlimit global 1000 per 1h\\n", state={url!r})
        counts = [0] * 6
        for i in range(25):
            for u in range(6):
                counts[u] += engine.evaluate({{"id": f"{{i}}-{{u}}", "user": f"user{{u}}"}}).allowed
        print(" ".join(map(str, counts)))
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    totals = [0] * 6
    for proc in procs:
        out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0
        for u, count in enumerate(out.split()):
            totals[u] += int(count)
    assert totals == [10] * 6  # 75 asked per user over 3 processes, 10 admitted each


# ---------------------------------------------------------------------- a master killed


@pytest.mark.parametrize("mode", ["open", "closed"])
def test_a_killed_master_follows_on_store_error(redis_cluster: RedisCluster, mode: str) -> None:
    url = fresh(redis_cluster, timeout=0.3)
    engine = from_design(f"defaults {{ on_store_error {mode} }}\nlimit user 3 per 1h\n", state=url)
    store = engine.store
    assert isinstance(store, RedisClusterStore)
    users = [f"user-{i}" for i in range(30)]
    for user in users:
        assert engine.evaluate({"id": user, "user": user}).allowed
    victim = redis_cluster.ports[0]
    client = store._redis
    on_victim = [
        u for u in users
        if client.nodes_manager.get_node_from_slot(client.keyslot(bucket_redis_key(
            f"user/requests/3600000/{u}"))).port == victim
    ]  # fmt: skip
    assert on_victim
    redis_cluster.kill(victim)
    try:
        down = [engine.evaluate({"id": f"d-{u}", "user": u}) for u in on_victim]
        assert [d.allowed for d in down] == [mode == "open"] * len(on_victim)
        if mode == "closed":
            assert all(d.denied_by["scope"] == "store" for d in down)
        assert engine.limiter.store_errors >= len(on_victim)
    finally:
        redis_cluster.restart(victim)  # back on its port with its slots, empty
    engine.close()
    engine = from_design("limit user 3 per 1h\n", state=url)
    user = on_victim[0]
    results = [engine.evaluate({"id": f"r{i}", "user": user}).allowed for i in range(5)]
    assert results == [True, True, True, False, False]  # a fresh client recovers
    engine.close()


# ---------------------------------------------------------------------- across instances


def test_settled_on_another_instance_once(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster)
    policy = (
        "limit user tokens 2000 per 1h\nlimit global tokens 100000 per 1h\n"
        "route default { strategy cost }\n"
    )
    decider = PolicyEngine.from_text(policy, state=url, clock=lambda: NOW)
    settler = PolicyEngine.from_text(policy, state=url, clock=lambda: NOW)
    d = decider.evaluate({"id": "a1", "user": "u", "input_tokens": 500, "max_tokens": 100})
    assert d.allowed
    assert level(url, "user/tokens/3600000/u", 2000, HOUR_MS) == pytest.approx(1400)
    assert level(url, "global/tokens/3600000/", 100_000, HOUR_MS) == pytest.approx(99_400)
    for _ in range(2):  # a duplicate outcome settles nothing more
        settler.record_outcome(
            d.provider, d.model, latency_ms=1.0, success=True, request_id="a1",
            input_tokens=40, output_tokens=60,
        )  # fmt: skip
    assert level(url, "user/tokens/3600000/u", 2000, HOUR_MS) == pytest.approx(1900)
    assert level(url, "global/tokens/3600000/", 100_000, HOUR_MS) == pytest.approx(99_900)
    assert settler.limiter.settlement_counts().settled == 1
    counts = decider.limiter.settlement_counts()
    assert (counts.outstanding, counts.expired) == (0, 0)
    decider.close()
    settler.close()


def test_inflight_released_on_another_instance(redis_cluster: RedisCluster) -> None:
    url = fresh(redis_cluster)
    policy = "limit user concurrent 1\nlimit user 100 per 1h\n"
    a = from_design(policy, state=url)
    b = from_design(policy, state=url)
    first = a.evaluate({"id": "x1", "user": "u"})
    assert first.allowed
    assert not b.evaluate({"id": "x2", "user": "u"}).allowed  # the slot is held
    b.record_outcome(first.provider, first.model, latency_ms=1.0, success=True, request_id="x1")
    assert a.evaluate({"id": "x3", "user": "u"}).allowed
    a.close()
    b.close()


def test_provider_health_is_shared_on_the_cluster(redis_cluster: RedisCluster) -> None:
    from engine.routing.shared_health import SharedMetrics

    url = fresh(redis_cluster)
    now = [NOW]
    policy = (
        "defaults {\n strategy latency\n min_samples 10\n}\n"
        "route r {\n prefer gemini/gemini-1.5-flash-latest\n"
        " prefer claude/claude-3-haiku-20240307\n}\n"
    )
    models = ["gemini/gemini-1.5-flash-latest", "claude/claude-3-haiku-20240307"]
    one = SharedMetrics(url, models, clock=lambda: now[0], background=False)
    two = SharedMetrics(url, models, clock=lambda: now[0], background=False)
    a = from_design(policy, metrics=one, clock=lambda: now[0])
    b = from_design(policy, metrics=two, clock=lambda: now[0])
    decision = a.evaluate({"id": "x"})
    assert decision.model == "gemini-1.5-flash-latest"
    for _ in range(12):
        a.record(decision, latency_ms=5000.0, success=True)
    one.refresh()
    two.refresh()
    assert one.errors == two.errors == 0
    stats = two.stats("gemini/gemini-1.5-flash-latest")
    assert stats is not None and stats.samples == 12
    assert b.evaluate({"id": "z"}).model == "claude-3-haiku-20240307"
    one.close()
    two.close()
