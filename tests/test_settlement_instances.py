"""Reserve-then-settle across instances on one (real) Redis: the reservation record lives in
Redis, written by the admission's own script, so the outcome may reach any instance. Decided
in one process and settled in another (hand-computed bucket levels), duplicate outcomes
racing in two processes settle once, an expired reservation (injected clock) settles
nothing, a shadow limit's buckets settle with the enforced ones, `POST /v1/outcomes` on
another instance settles, and admission stays one EVALSHA per decision."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from engine import PolicyEngine
from engine.limits.stores.base import SharedReservations, available
from engine.limits.stores.redis_store import RESERVATIONS, RedisStore
from engine.service.app import create_app
from engine.service.telemetry import Telemetry

pytest_plugins = ["_redis"]

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
ROUTE = "route default { strategy cost }\n"
TOKENS_KEY = "user/tokens/3600000/u"
SPEND_KEY = "user/spend/86400000/u"
# 500 input + 100 output tokens under `strategy cost`: gemini-2.5-flash-lite, the cheapest of
# the packaged catalog, (500 × 0.1 + 100 × 0.4) / 1e6 = $0.00009
FLASH_ESTIMATE = 0.00009


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def url_for(server: Any, db: int) -> str:
    return server.url.rsplit("/", 1)[0] + f"/{db}?timeout=5"


def fresh(server: Any, db: int) -> str:
    url = url_for(server, db)
    client = redis.Redis.from_url(url.split("?")[0])
    client.flushdb()
    client.close()
    return url


def level(url: str, key: str, capacity: float, window_ms: float, now_s: float = NOW) -> float:
    """A bucket's tokens at `now_s`, read from Redis by a store of the test's own."""
    store = RedisStore(url)
    try:
        return available(store.peek(key), capacity, capacity / window_ms, now_s * 1000)
    finally:
        store.close()


def records(url: str) -> list[bytes]:
    client = redis.Redis.from_url(url.split("?")[0])
    try:
        return sorted(client.keys(RESERVATIONS + "*"))
    finally:
        client.close()


def engine_on(url: str, policy: str, clock: Any, **kw: Any) -> PolicyEngine:
    return PolicyEngine.from_text(policy + ROUTE, state=url, clock=clock, **kw)


def ask(engine: PolicyEngine, rid: str, input_tokens: int = 500, max_tokens: int = 100) -> Any:
    decision = engine.evaluate(
        {"id": rid, "user": "u", "input_tokens": input_tokens, "max_tokens": max_tokens}
    )
    assert decision.allowed
    return decision


def python(script: str, *args: str) -> subprocess.Popen[str]:
    """A Python process running `script` on this tree (stdin and stdout piped, line by line)."""
    prelude = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_redis_store_keeps_reservations_itself(redis_server: Any) -> None:
    store = RedisStore(url_for(redis_server, 9))
    assert isinstance(store, SharedReservations)
    store.close()
    # memory and DuckDB keep them in the limiter's own table (one process each)
    assert not isinstance(PolicyEngine.from_text(ROUTE).store, SharedReservations)


def test_decided_in_one_process_settled_in_another_once(redis_server: Any) -> None:
    """Process A admits two requests (600 tokens and $0.00009 estimated each); process B,
    which decided nothing, gets their outcomes (twice): one refund and one charge per
    bucket, applied once. Then A sees none of its reservations outstanding."""
    url = fresh(redis_server, 9)
    policy = "limit user tokens 2000 per 1h\nlimit user spend $1 per 1d\n" + ROUTE
    decider = python(
        f"""
        import json
        from engine import PolicyEngine
        engine = PolicyEngine.from_text({policy!r}, state={url!r}, clock=lambda: {NOW!r})
        for rid in ("a1", "a2"):
            d = engine.evaluate({{"id": rid, "user": "u", "input_tokens": 500, "max_tokens": 100}})
            print(json.dumps([rid, d.allowed, d.provider, d.model, d.estimated_cost]), flush=True)
        sys.stdin.readline()  # the outcomes go to the other process meanwhile
        c = engine.limiter.settlement_counts()
        print(json.dumps([c.settled, c.expired, c.outstanding]), flush=True)
        """
    )
    assert decider.stdout is not None and decider.stdin is not None
    made = [json.loads(decider.stdout.readline()) for _ in range(2)]
    for _, allowed, _, model, estimate in made:
        assert allowed and model == "gemini-2.5-flash-lite"
        assert estimate == pytest.approx(FLASH_ESTIMATE)
    assert level(url, TOKENS_KEY, 2000, 3_600_000) == pytest.approx(800)  # 2 × 600 taken
    assert level(url, SPEND_KEY, 1, 86_400_000) == pytest.approx(1 - 2 * FLASH_ESTIMATE)
    assert len(records(url)) == 2

    # a1 used 40 + 60 tokens and $0.00002; a2 used 500 + 300 and $0.0002
    used = {"a1": (40, 60, 0.00002), "a2": (500, 300, 0.0002)}
    outcomes = [
        {"provider": provider, "model": model, "request_id": rid, "input_tokens": used[rid][0],
         "output_tokens": used[rid][1], "cost": used[rid][2]}
        for rid, _, provider, model, _ in made
    ]  # fmt: skip
    settler = python(
        f"""
        import json
        from engine import PolicyEngine
        engine = PolicyEngine.from_text({policy!r}, state={url!r}, clock=lambda: {NOW!r})
        outcomes = json.loads(sys.argv[1])
        applied = []
        for outcome in outcomes + outcomes:  # every outcome twice
            outcome = dict(outcome)
            provider, model = outcome.pop("provider"), outcome.pop("model")
            engine.record_outcome(provider, model, latency_ms=1.0, success=True, **outcome)
        c = engine.limiter.settlement_counts()
        print(json.dumps([c.settled, c.expired, c.outstanding, c.refunded, c.charged]))
        """,
        json.dumps(outcomes),
    )
    out, _ = settler.communicate(timeout=120)
    assert settler.returncode == 0
    settled, expired, outstanding, refunded, charged = json.loads(out)
    assert (settled, expired, outstanding) == (2, 0, 0)
    assert refunded["tokens"] == pytest.approx(500)  # 600 estimated, 100 used
    assert charged["tokens"] == pytest.approx(200)  # 600 estimated, 800 used
    assert refunded["spend"] == pytest.approx(FLASH_ESTIMATE - 0.00002)
    assert charged["spend"] == pytest.approx(0.0002 - FLASH_ESTIMATE)
    # by hand: 2000 - 600 - 600 + 500 - 200 = 1100; $1 less what was really spent
    assert level(url, TOKENS_KEY, 2000, 3_600_000) == pytest.approx(1100)
    assert level(url, SPEND_KEY, 1, 86_400_000) == pytest.approx(1 - 0.00022, abs=1e-12)
    assert records(url) == []

    out, _ = decider.communicate("go\n", timeout=120)
    assert decider.returncode == 0
    assert json.loads(out) == [0, 0, 0]  # settled elsewhere: no longer outstanding here


def test_duplicate_outcomes_racing_in_two_processes_settle_once(redis_server: Any) -> None:
    """40 reservations of 600 tokens; two processes of 4 threads each send every outcome
    (100 + 20 i tokens): 40 settled between them, the bucket at capacity less the hand sum
    of the tokens really used."""
    url = fresh(redis_server, 10)
    policy = "limit user tokens 100000 per 1h\n"
    engine = engine_on(url, policy, Clock())
    for i in range(40):
        ask(engine, f"r{i}")
    assert level(url, "user/tokens/3600000/u", 100_000, 3_600_000) == pytest.approx(76_000)
    script = f"""
        import threading
        from engine import PolicyEngine
        engine = PolicyEngine.from_text({policy + ROUTE!r}, state={url!r}, clock=lambda: {NOW!r})
        engine.limiter.settlement_counts()  # connected, before the start
        print("ready", flush=True)
        sys.stdin.readline()

        def send(n):
            for i in range(n, 40 + n):
                i %= 40
                engine.record_outcome(
                    "gemini", "gemini-2.5-flash-lite", latency_ms=1.0, success=True,
                    input_tokens=100 + 20 * i, output_tokens=0, request_id=f"r{{i}}",
                )

        threads = [threading.Thread(target=send, args=(n * 10,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(engine.limiter.settlement_counts().settled, flush=True)
        """
    procs = [python(script) for _ in range(2)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    settled = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        settled.append(int(out))
    assert sum(settled) == 40
    used = sum(100 + 20 * i for i in range(40))
    assert used == 19_600
    assert level(url, "user/tokens/3600000/u", 100_000, 3_600_000) == pytest.approx(80_400)
    counts = engine.limiter.settlement_counts()
    assert (counts.settled, counts.expired, counts.outstanding) == (0, 0, 0)
    assert records(url) == []
    engine.close()


def test_an_expired_reservation_settles_nothing_on_another_instance(redis_server: Any) -> None:
    url = fresh(redis_server, 11)
    clock = Clock()
    policy = "limit user tokens 1000 per 1h\n"
    maker = engine_on(url, policy, clock, settle_within_s=60)
    other = engine_on(url, policy, clock, settle_within_s=60)
    decision = ask(maker, "late")  # 600 taken: 400 left
    assert maker.limiter.settlement_counts().outstanding == 1
    clock.now += 61  # expired on the engines' clock (Redis still holds the record)
    assert len(records(url)) == 1
    refilled = 61_000 * 1000 / 3_600_000
    assert level(url, TOKENS_KEY, 1000, 3_600_000, clock.now) == pytest.approx(400 + refilled)
    other.record(decision, latency_ms=1.0, success=True, input_tokens=0, output_tokens=0)
    # not refunded the 600
    assert level(url, TOKENS_KEY, 1000, 3_600_000, clock.now) == pytest.approx(400 + refilled)
    assert records(url) == []  # taken out, nothing applied
    assert other.limiter.settlement_counts().settled == 0
    counts = maker.limiter.settlement_counts()  # the maker counts it expired, once
    assert (counts.settled, counts.expired, counts.outstanding) == (0, 1, 0)
    assert maker.limiter.settlement_counts().expired == 1
    # a reservation made now expires by itself at its maker, with no outcome at all
    ask(maker, "unanswered", input_tokens=100, max_tokens=100)
    clock.now += 60
    counts = maker.limiter.settlement_counts()
    assert (counts.expired, counts.outstanding) == (2, 0)
    maker.close()
    other.close()


def test_a_shadow_limits_buckets_settle_with_the_enforced_ones(redis_server: Any) -> None:
    """The shadow limits' second store call appends to the same record: another instance
    refunds both buckets."""
    url = fresh(redis_server, 12)
    policy = "limit user tokens 1000 per 1h\nshadow limit user tokens 500 per 1h\n"
    maker = engine_on(url, policy, Clock())
    other = engine_on(url, policy, Clock())
    ask(maker, "s", input_tokens=200, max_tokens=100)  # 300 from each bucket
    shadow_key = "user/tokens/3600000#shadow/u"
    assert level(url, shadow_key, 500, 3_600_000) == pytest.approx(200)
    applied = other.limiter.settle("s", input_tokens=50, output_tokens=50)
    assert sorted(applied) == [(shadow_key, -200.0), (TOKENS_KEY, -200.0)]
    assert level(url, TOKENS_KEY, 1000, 3_600_000) == pytest.approx(900)
    assert level(url, shadow_key, 500, 3_600_000) == pytest.approx(400)
    assert maker.limiter.settlement_counts().outstanding == 0
    maker.close()
    other.close()


@pytest.mark.asyncio
async def test_post_outcomes_on_another_instance_settles(redis_server: Any) -> None:
    url = fresh(redis_server, 13)
    policy = "limit user tokens 1000 per 1h\n"
    maker = engine_on(url, policy, Clock())
    other = engine_on(url, policy, Clock())
    decision = ask(maker, "h")  # 600 taken
    outcome = {
        "provider": decision.provider, "model": decision.model, "latency_ms": 5.0,
        "success": True, "request_id": "h", "input_tokens": 100, "output_tokens": 50,
    }  # fmt: skip
    transport = httpx.ASGITransport(app=create_app(other))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        answer = await client.post("/v1/outcomes", json=[outcome, outcome])
        assert (answer.status_code, answer.json()) == (202, {"recorded": 2})
        text = (await client.get("/metrics")).text
    assert level(url, TOKENS_KEY, 1000, 3_600_000) == pytest.approx(850)  # 150 used
    families = {f.name: f for f in text_string_to_metric_families(text)}
    ended = {s.labels["result"]: s.value for s in families["policyctl_reservations"].samples
             if s.name.endswith("_total")}  # fmt: skip
    assert ended == {"settled": 1.0, "expired": 0.0}
    exposed = Telemetry(maker).exposition("")[0].decode()
    makers = {f.name: f for f in text_string_to_metric_families(exposed)}
    (outstanding,) = makers["policyctl_reservations_outstanding"].samples
    assert outstanding.value == 0.0
    maker.close()
    other.close()


def test_admission_with_reservations_is_one_evalsha_per_decision(redis_server: Any) -> None:
    url = fresh(redis_server, 14)
    store = RedisStore(url)
    client = redis.Redis.from_url(url.split("?")[0])
    policy = (
        "limit user 100 per 1m\nlimit user tokens 100000 per 1h\nlimit global spend $10 per 1d\n"
        "limit model tokens 100000 per 1h\n"
    )
    engine = PolicyEngine.from_text(policy + ROUTE, state=store, clock=Clock())
    ask(engine, "warm")  # loads the script
    client.config_resetstat()
    trips_before = store.round_trips
    for i in range(50):
        ask(engine, f"d{i}")
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 50  # Redis' own count: one script per decision
    assert store.round_trips - trips_before == 50
    assert len(records(url)) == 51
    # each record holds the decision's three token and spend buckets, with their estimates
    record = client.lrange(RESERVATIONS + "d0", 0, -1)
    assert float(record[0]) == NOW * 1000 + 600_000  # expires_at: the default 600 s
    assert float(record[1]) == 500  # the request's input tokens
    estimates = sorted(float(v) for v in record[5::4])
    assert estimates == pytest.approx([FLASH_ESTIMATE, 600, 600])
    assert sorted(record[6::4]) == [b"s", b"t", b"t"]
    assert 0 < client.pttl(RESERVATIONS + "d0") <= 600_000 + 3_600_000  # cleanup only
    assert engine.limiter.settlement_counts().outstanding == 51
    client.config_resetstat()
    engine.limiter.settle("d0", input_tokens=1, output_tokens=1)
    assert client.info("commandstats")["cmdstat_evalsha"]["calls"] == 1  # one script to settle
    client.close()
    engine.close()
