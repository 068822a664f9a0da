"""`rate_limit_settlements` when the reservations live in Redis: the instance an outcome
reaches takes the record out (`redis_settle.lua`, which returns every bucket's estimate and
actual) and writes the same rows a memory or DuckDB engine writes: settled (a refund, a
charge), unreported, and expired (an outcome that came after the reservation's expiry).
Two engines on one real redis-server, a DuckDB analytics file each, an injected clock."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import redis

from engine import PolicyEngine
from engine.limits.stores.base import Usage
from engine.limits.stores.redis_store import RedisStore

pytest_plugins = ["_redis"]

START = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
ROUTE = "route default { strategy cost }\n"
TOKENS = "limit user tokens 1000 per 1m\nshadow limit user tokens 800 per 1m\n"
KEY = "user/tokens/60000/u"
SHADOW_KEY = "user/tokens/60000#shadow/u"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(START + seconds, dt.UTC).replace(tzinfo=None)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def fresh(server: Any, db: int) -> str:
    url = server.url.rsplit("/", 1)[0] + f"/{db}?timeout=5"
    client = redis.Redis.from_url(url.split("?")[0])
    client.flushdb()
    client.close()
    return url


def ask(engine: PolicyEngine, rid: str, input_tokens: int, max_tokens: int) -> Any:
    decision = engine.evaluate(
        {"id": rid, "user": "u", "input_tokens": input_tokens, "max_tokens": max_tokens}
    )
    assert decision.allowed, decision.reason
    return decision


def test_the_settling_instance_writes_the_rows(redis_server: Any, tmp_path: Path) -> None:
    url = fresh(redis_server, 9)
    clock = Clock()
    deciding = PolicyEngine.from_text(
        TOKENS + ROUTE, state=url, analytics=str(tmp_path / "a.duckdb"), clock=clock,
        settle_within_s=120,
    )  # fmt: skip
    settling = PolicyEngine.from_text(
        TOKENS + ROUTE, state=url, analytics=str(tmp_path / "b.duckdb"), clock=clock,
        settle_within_s=120,
    )  # fmt: skip

    def outcome(decision: Any, **usage: Any) -> None:
        assert settling.record_outcome(
            decision.provider, decision.model, latency_ms=1.0, success=True,
            request_id=decision.request_id, **usage,
        )  # fmt: skip

    a = ask(deciding, "a", 500, 100)  # 600 of each: enforced 400 left, shadow 200
    outcome(a, input_tokens=40, output_tokens=60)  # 100 used: 500 refunded on both
    b = ask(deciding, "b", 500, 100)  # enforced 300, shadow 100
    clock.now = START + 1
    outcome(b, input_tokens=500, output_tokens=300)  # 800 used: 200 charged on both
    c = ask(deciding, "c", 40, 50)  # 90: the enforced bucket only (the shadow one is short)
    clock.now = START + 2
    outcome(c)  # no usage: the estimate stands
    clock.now = START + 100
    d = ask(deciding, "d", 100, 100)  # 200 of each, expires at START + 220
    clock.now = START + 300
    outcome(d, input_tokens=10, output_tokens=10)  # too late: the estimate stands
    outcome(a, input_tokens=1, output_tokens=1)  # a second outcome: nothing, no row
    deciding.close()
    settling.close()

    sql = (
        "SELECT settled_at, request_id, bucket_key, scope, unit, estimate, actual,"
        " round(delta, 6), result FROM rate_limit_settlements ORDER BY settled_at, request_id,"
        " scope DESC"
    )
    assert query(tmp_path / "a.duckdb", sql) == []  # the deciding instance settled nothing
    assert query(tmp_path / "b.duckdb", sql) == [
        (at(0), "a", KEY, "user", "tokens", 600.0, 100.0, -500.0, "settled"),
        (at(0), "a", SHADOW_KEY, "shadow:user", "tokens", 600.0, 100.0, -500.0, "settled"),
        (at(1), "b", KEY, "user", "tokens", 600.0, 800.0, 200.0, "settled"),
        (at(1), "b", SHADOW_KEY, "shadow:user", "tokens", 600.0, 800.0, 200.0, "settled"),
        (at(2), "c", KEY, "user", "tokens", 90.0, None, 0.0, "unreported"),
        (at(220), "d", KEY, "user", "tokens", 200.0, None, 0.0, "expired"),
        (at(220), "d", SHADOW_KEY, "shadow:user", "tokens", 200.0, None, 0.0, "expired"),
    ]


def test_the_script_returns_every_bucket_adjusted_or_not(redis_server: Any) -> None:
    """A bucket whose actual equals its estimate is returned (not adjusted), the others
    with the delta applied; `applied` keeps the adjusted ones only."""
    url = fresh(redis_server, 10)
    clock = Clock()
    engine = PolicyEngine.from_text(
        "limit user tokens 1000 per 1m\nlimit user spend $1 per 1d\n" + ROUTE,
        state=url, clock=clock,
    )  # fmt: skip
    decision = ask(engine, "x", 100, 100)
    estimate = decision.estimated_cost
    store = RedisStore(url)
    found = store.settle_reservation("x", Usage(100, 100, estimate), START * 1000.0)
    store.close()
    engine.close()
    assert found.state == "settled" and found.expires_at == (START + 600) * 1000.0
    units = {b.unit: (b.estimate, b.actual, b.delta, b.adjusted) for b in found.buckets}
    assert units == {
        "tokens": (200.0, 200.0, 0.0, False),
        "spend": (estimate, estimate, 0.0, False),
    }
    assert found.applied == ()
