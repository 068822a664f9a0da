"""Affinity pins shared through a real Redis (docs/language.md, Session affinity; docs/redis.md).

Engines on one Redis (in this process, and in real processes) share a session's pin: its
requests, alternating between instances as a round-robin load balancer sends them, all go to
one model; the pin breaks only for health, eligibility or a limit, and the decision says
which; it expires after D on the engines' clock; a Redis killed mid-run costs no decision.
Round trips per decision are counted on the store (`RedisStore.round_trips`): one more for
a route with affinity, none for a route without. Time moves only on the fake clocks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from engine import PolicyEngine
from engine.limits.stores.redis_store import PINS, RedisStore
from engine.routing.decision import Decision, DecisionSchema
from engine.routing.shared_pins import KEEP_FACTOR, SharedPins

pytest_plugins = ["_redis"]

ROOT = Path(__file__).resolve().parent.parent
START = 1_800_000_000.0

# three models alike but for caching and vision: round-robin spreads requests over them
CATALOG = """\
version: 2
models:
  - id: m1
    provider: a
    context_window: 200000
    max_tokens: 8192
    supports: [streaming, vision]
    pricing: {input: 3.00, output: 15.00, cached_input: 0.30}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: m2
    provider: b
    context_window: 200000
    max_tokens: 8192
    supports: [streaming]
    pricing: {input: 3.00, output: 15.00}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: m3
    provider: c
    context_window: 200000
    max_tokens: 8192
    supports: [streaming, vision]
    pricing: {input: 3.00, output: 15.00, cached_input: 0.75}
    latency_prior_ms: {p50: 500, p95: 1000}
"""

ROUTE = """
route agents when request.metadata.session_id != null {
    strategy round-robin
    cooldown after 3 failures for 30s
    affinity by request.metadata.session_id for 10m
}

route plain {
    strategy round-robin
}
"""


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def catalog(tmp_path: Path) -> str:
    path = tmp_path / "models.yaml"
    path.write_text(CATALOG, encoding="utf-8")
    return f"catalog {json.dumps(path.as_posix())}\n"


def url_of(server: Any, db: int, timeout: float = 5.0) -> str:
    url = server.url.rsplit("/", 1)[0] + f"/{db}?timeout={timeout}"
    client = redis.Redis.from_url(url.split("?")[0])
    client.flushdb()
    client.close()
    return url


def engines(text: str, url: str, clock: Clock, n: int = 2) -> list[PolicyEngine]:
    return [
        PolicyEngine.from_text(text, "affinity.policy", clock=clock, state=url) for _ in range(n)
    ]


def ask(e: PolicyEngine, session: str | None, i: int = 0, **fields: object) -> Decision:
    metadata = {} if session is None else {"session_id": session}
    request = {"id": f"r{i}", "input_tokens": 10_000, "max_tokens": 500, "metadata": metadata}
    return e.evaluate({**request, **fields})


def where(d: Decision) -> str:
    return f"{d.provider}/{d.model}"


def affinity(d: Decision) -> dict[str, object]:
    DecisionSchema.model_validate(d.to_dict())  # the JSON is the documented one
    return d.to_dict()["affinity"]  # type: ignore[no-any-return]


def trips(e: PolicyEngine) -> int:
    store = e.store
    assert isinstance(store, RedisStore)
    return store.round_trips


def close(*es: PolicyEngine) -> None:
    for e in es:
        e.close()


# ---------------------------------------------------------------- holding


def test_two_engines_alternating_a_thousand_requests_keep_the_session_on_one_model(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    a, b = engines(catalog + ROUTE, url_of(redis_server, 8), clock)
    assert isinstance(a._state.pins, SharedPins)
    spread = Counter(where(ask((a, b)[i % 2], None, i)) for i in range(30))
    assert len(spread) == 3  # no session: the route without affinity spreads them
    first = ask(a, "s-1", 0)
    assert affinity(first)["pinned"] is False
    seen: Counter[str] = Counter()
    for i in range(1, 1001):
        clock.now += 5.0
        d = ask((a, b)[i % 2], "s-1", i)  # a round-robin load balancer
        seen[where(d)] += 1
        assert affinity(d)["pinned"] is True and affinity(d)["broken"] is None, d.reason
    assert seen == {where(first): 1000}
    # without shared pins each engine's own round-robin turn would have spread them
    others = Counter(where(ask((a, b)[n % 2], f"s-{n}", n)) for n in range(2, 8))
    assert len(others) > 1
    close(a, b)


def test_two_processes_alternating_a_thousand_requests_keep_the_session_on_one_model(
    catalog: str, redis_server: Any
) -> None:
    url = url_of(redis_server, 9)
    worker = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from engine import PolicyEngine
        now = [0.0]
        engine = PolicyEngine.from_text(
            {(catalog + ROUTE)!r}, clock=lambda: now[0], state={url!r}
        )
        for line in sys.stdin:
            i, at, session = json.loads(line)
            now[0] = at
            d = engine.evaluate(
                {{"id": f"r{{i}}", "input_tokens": 10000, "metadata": {{"session_id": session}}}}
            )
            out = d.to_dict()
            print(json.dumps([out["provider"] + "/" + out["model"], out["affinity"]]), flush=True)
        engine.close()
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    seen: Counter[str] = Counter()
    broken: list[object] = []
    try:
        for i in range(1000):
            proc = procs[i % 2]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps([i, START + i, "session-7"]) + "\n")
            proc.stdin.flush()
            model, outcome = json.loads(proc.stdout.readline())
            seen[model] += 1
            broken.append(outcome["broken"])
            assert outcome["pinned"] is (i > 0)
    finally:
        for proc in procs:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.close()
            proc.wait(timeout=60)
            proc.stdout.close()
    assert len(seen) == 1 and sum(seen.values()) == 1000
    assert broken == [None] * 1000
    assert all(proc.returncode == 0 for proc in procs)


# ---------------------------------------------------------------- round trips


def test_an_affinity_decision_costs_one_round_trip_and_a_plain_one_none(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    url = url_of(redis_server, 10)
    (e,) = engines(catalog + ROUTE, url, clock, 1)
    before = trips(e)
    ask(e, None, 0)  # the route without affinity, no limits: Redis is not asked
    assert trips(e) == before
    for i in range(1, 6):
        before = trips(e)
        ask(e, "s", i)
        assert trips(e) == before + 1  # the pin read and written in one script
    before = trips(e)
    e.evaluate({"id": "dry", "metadata": {"session_id": "s"}}, dry_run=True)
    assert trips(e) == before + 1  # a dry run reads
    dry = e.evaluate({"id": "dry", "metadata": {"session_id": "new"}}, dry_run=True)
    client = redis.Redis.from_url(url.split("?")[0])
    assert len(client.keys(PINS + "*")) == 1  # ... and neither creates nor moves a pin
    assert not client.exists(f"{PINS}agents:{affinity(dry)['key_hash']}")
    client.close()
    close(e)


def test_with_limits_the_pin_rides_along_and_a_limit_moves_it_in_the_same_call(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    body = ROUTE + 'limit user 1000 per 1m\nlimit model "a/m1" 3 per 1h\n'
    a, b = engines(catalog + body, url_of(redis_server, 11), clock)
    for e in (a, b):  # each reads the quotas once a second: not what is counted here
        e.evaluate({"id": "warm", "user": "u"}, dry_run=True)
    before = trips(a)
    ask(a, None, 0, user="u")  # no affinity: the limits' one call (a/m1: 1 of 3)
    assert trips(a) == before + 1
    first = ask(b, "s", 1, user="u")
    assert where(first) == "a/m1"  # b's own round-robin turn: its first (a/m1: 2 of 3)
    before = trips(a)
    second = ask(a, "s", 2, user="u")  # pinned: a's turn would have said b/m2
    assert where(second) == "a/m1" and affinity(second)["pinned"] is True
    assert trips(a) == before + 2  # the pin, then the limits: one more than without
    before = trips(b)
    moved = ask(b, "s", 3, user="u")  # a/m1 is at its limit (3 per hour)
    assert moved.allowed and where(moved) != "a/m1"
    assert affinity(moved)["broken"] == "limit" and affinity(moved)["pinned"] is False
    assert trips(b) == before + 2  # the pin moved inside the limits' own call
    for i in range(4, 10):
        d = ask((a, b)[i % 2], "s", i, user="u")
        assert where(d) == where(moved) and affinity(d)["pinned"] is True
    close(a, b)


# ---------------------------------------------------------------- breaking


def test_a_cooldown_seen_by_every_instance_breaks_the_pin_for_health(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    a, b = engines(catalog + ROUTE, url_of(redis_server, 12), clock)
    first = ask(a, "s", 0)
    for _ in range(3):  # three failures in a row, recorded on a: 30 s of cooldown
        assert a.record_outcome(
            first.provider or "", first.model or "", latency_ms=100.0, success=False
        )
    for e in (a, b):
        e.metrics.refresh()  # type: ignore[attr-defined]  # the shared health, now
    clock.now += 1.0
    d = ask(b, "s", 1)
    assert affinity(d)["broken"] == "health" and where(d) != where(first)
    assert "broken" in d.reason
    clock.now += 60.0  # the cooldown is over; the session stays where it moved
    for i in range(2, 8):
        after = ask((a, b)[i % 2], "s", i)
        assert affinity(after)["pinned"] is True and where(after) == where(d)
    close(a, b)


def test_a_request_the_pinned_model_cannot_serve_breaks_the_pin_everywhere(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    a, b = engines(catalog + ROUTE, url_of(redis_server, 13), clock)
    ask(a, "other", 0)  # a's round-robin turn moves on: its next session starts on b/m2
    first = ask(a, "s", 1)
    assert where(first) == "b/m2"  # no vision
    assert where(ask(b, "s", 2)) == "b/m2"  # b reads a's pin
    d = ask(b, "s", 3, requires_vision=True)
    assert affinity(d)["broken"] == "ineligible" and where(d) in ("a/m1", "c/m3")
    for i in range(4, 10):  # the pin moved with the session, for both
        again = ask((a, b)[i % 2], "s", i)
        assert affinity(again)["pinned"] is True and where(again) == where(d)
    close(a, b)


def test_a_pin_expires_after_the_duration_on_the_engines_clock(
    catalog: str, redis_server: Any
) -> None:
    clock = Clock()
    url = url_of(redis_server, 7)
    a, b = engines(catalog + ROUTE, url, clock)
    first = ask(a, "s", 0)
    clock.now += 599.0  # within 10m of the last request: pinned, and 10m start again
    assert affinity(ask(b, "s", 1))["pinned"] is True
    clock.now += 599.0
    assert affinity(ask(a, "s", 2))["pinned"] is True
    client = redis.Redis.from_url(url.split("?")[0])
    (key,) = client.keys(PINS + "*")
    assert key.decode() == f"{PINS}agents:{affinity(first)['key_hash']}"  # never the value
    assert 0 < client.pttl(key) <= 600_000 * KEEP_FACTOR  # Redis only cleans up
    clock.now += 601.0  # quiet for more than 10m on the engines' clock
    d = ask(b, "s", 3)
    assert affinity(d)["pinned"] is False and affinity(d)["broken"] is None
    clock.now += 1.0
    assert affinity(ask(a, "s", 4))["pinned"] is True
    client.close()
    close(a, b)


# ---------------------------------------------------------------- Redis failing


def test_a_redis_killed_mid_run_fails_no_decision_and_the_instances_pins_carry_on(
    catalog: str, tmp_path: Path
) -> None:
    from _redis import RedisServer  # the plugin's module: imported once pytest has it

    server = RedisServer(tmp_path)
    server.start()
    clock = Clock()
    url = server.url.rsplit("/", 1)[0] + "/0?timeout=0.2"
    a, b = engines(catalog + ROUTE + "limit user 100000 per 1m\n", url, clock)
    try:
        seen: Counter[str] = Counter()
        for i in range(300):
            clock.now += 1.0
            d = ask((a, b)[i % 2], "s", i, user="u")
            assert d.allowed
            seen[where(d)] += 1
        assert len(seen) == 1
        server.stop()  # killed: every call now fails at once
        for i in range(300, 400):
            clock.now += 1.0
            d = ask((a, b)[i % 2], "s", i, user="u")
            assert d.allowed  # `on_store_error open` for the limits; the pin never fails one
            seen[where(d)] += 1
        assert len(seen) == 1  # each instance routes on the pins it mirrored
        assert a.pin_errors >= 50 and b.pin_errors >= 50  # one per decision, counted
        server.start()  # an empty Redis on the same port: the sessions start afresh
        after: Counter[str] = Counter()
        for i in range(400, 500):
            clock.now += 1.0
            d = ask((a, b)[i % 2], "s", i, user="u")
            assert d.allowed
            if i > 400:
                assert affinity(d)["pinned"] is True
            after[where(d)] += 1
        assert len(after) == 1
    finally:
        close(a, b)
        server.stop()


def test_a_token_limit_reservation_and_a_moved_pin_ride_in_one_call(
    catalog: str, redis_server: Any
) -> None:
    """Reserve-then-settle and affinity together: the admission's one script call writes
    the reservation record and moves the pin; the outcome on the other instance settles."""
    clock = Clock()
    body = ROUTE + 'limit user tokens 100000 per 1m\nlimit model "a/m1" 1 per 1h\n'
    a, b = engines(catalog + body, url_of(redis_server, 10), clock)
    for e in (a, b):
        e.evaluate({"id": "warm", "user": "u"}, dry_run=True)
    first = ask(a, "s", 1, user="u")  # a/m1: 1 of 1
    assert where(first) == "a/m1"
    before = trips(b)
    moved = ask(b, "s", 2, user="u")  # a/m1 is at its limit: the pin moves in the same call
    assert moved.allowed and where(moved) != "a/m1" and affinity(moved)["broken"] == "limit"
    assert trips(b) == before + 2  # the pin's read, then the limits (record + pin inside)
    for i in (3, 4):
        assert where(ask((a, b)[i % 2], "s", i, user="u")) == where(moved)
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/10")
    assert client.exists("{policyctl}:r:r2")  # the moved request's reservation record
    assert a.record(moved, latency_ms=100.0, success=True, input_tokens=10_000,
                    output_tokens=100)  # fmt: skip
    assert not client.exists("{policyctl}:r:r2")  # taken out by the other instance
    counts = a.limiter.settlement_counts()
    assert counts.settled == 1 and counts.refunded["tokens"] == 500 - 100
    client.close()
    close(a, b)
