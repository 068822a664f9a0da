"""The rate-limit analytics tables: `rate_limit_settlements` (a reservation's buckets,
settled or expired), `rate_limit_waits` (a finished waiter, or a full queue) and
`rate_limit_inflight` (a slot given back by its outcome or by its lease), written by the
batched writer of an engine with analytics (a DuckDB state file, or an analytics file beside
memory or Redis state); `rate_limit_configs` marks shadow limits and in-flight leases, and an
older file gains the columns. Real DuckDB files, a fake clock, hand-checked rows; nothing
sleeps."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine import PolicyEngine
from engine.analytics.records import InFlightRow, SettlementRow, WaitRow
from engine.analytics.schema import ensure_schema
from engine.analytics.writer import OutcomeWriter

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
    """START + seconds, as a TIMESTAMP column reads back (naive UTC)."""
    return dt.datetime.fromtimestamp(START + seconds, dt.UTC).replace(tzinfo=None)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


# Where the tables are: a DuckDB state file, or an analytics file beside memory state.
Setup = Callable[[Path], tuple[dict[str, Any], Path]]


def duckdb_state(tmp: Path) -> tuple[dict[str, Any], Path]:
    return {"state": str(tmp / "state.duckdb")}, tmp / "state.duckdb"


def analytics_file(tmp: Path) -> tuple[dict[str, Any], Path]:
    return {"state": "memory://", "analytics": str(tmp / "logs.duckdb")}, tmp / "logs.duckdb"


SETUPS = pytest.mark.parametrize(
    "setup", [duckdb_state, analytics_file], ids=["state", "analytics"]
)


def ask(engine: PolicyEngine, rid: str, input_tokens: int, max_tokens: int) -> Any:
    decision = engine.evaluate(
        {"id": rid, "user": "u", "input_tokens": input_tokens, "max_tokens": max_tokens}
    )
    assert decision.allowed, decision.reason
    return decision


# ----------------------------------------------------------------------------- settlements


@SETUPS
def test_settlements_refunds_charges_unreported_and_expired(setup: Setup, tmp_path: Path) -> None:
    where, path = setup(tmp_path)
    clock = Clock()
    engine = PolicyEngine.from_text(TOKENS + ROUTE, clock=clock, settle_within_s=120, **where)
    a = ask(engine, "a", 500, 100)  # 600 of each: enforced 400 left, shadow 200
    engine.record(a, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    # 100 used: 500 refunded on both (enforced 900 left, shadow 700)
    b = ask(engine, "b", 500, 100)  # enforced 300, shadow 100
    clock.now = START + 1
    engine.record(b, latency_ms=1.0, success=True, input_tokens=500, output_tokens=300)
    # 800 used: 200 charged on both (enforced ~100 left, shadow ~-100)
    c = ask(engine, "c", 40, 50)  # 90: the enforced bucket only (the shadow one has no room)
    clock.now = START + 2
    engine.record(c, latency_ms=1.0, success=False)  # no usage: the estimate stands
    clock.now = START + 100  # everything full again
    ask(engine, "d", 100, 100)  # 200, never settled: expires at START + 220
    e = ask(engine, "e", 500, 100)  # 600
    clock.now = START + 200  # full again: a refund has nothing to give back
    engine.record(e, latency_ms=1.0, success=True, input_tokens=50, output_tokens=50)
    clock.now = START + 300
    engine.close()  # d expired: swept before the writer's last batch

    rows = query(
        path,
        "SELECT settled_at, request_id, bucket_key, scope, unit, estimate, actual,"
        " round(delta, 6), result FROM rate_limit_settlements ORDER BY settled_at, request_id,"
        " scope DESC",
    )
    assert rows == [
        (at(0), "a", KEY, "user", "tokens", 600.0, 100.0, -500.0, "settled"),
        (at(0), "a", SHADOW_KEY, "shadow:user", "tokens", 600.0, 100.0, -500.0, "settled"),
        (at(1), "b", KEY, "user", "tokens", 600.0, 800.0, 200.0, "settled"),
        (at(1), "b", SHADOW_KEY, "shadow:user", "tokens", 600.0, 800.0, 200.0, "settled"),
        (at(2), "c", KEY, "user", "tokens", 90.0, None, 0.0, "unreported"),
        (at(200), "e", KEY, "user", "tokens", 600.0, 100.0, 0.0, "settled"),
        (at(200), "e", SHADOW_KEY, "shadow:user", "tokens", 600.0, 100.0, 0.0, "settled"),
        (at(220), "d", KEY, "user", "tokens", 200.0, None, 0.0, "expired"),
        (at(220), "d", SHADOW_KEY, "shadow:user", "tokens", 200.0, None, 0.0, "expired"),
    ]
    view = query(
        path,
        "SELECT day, scope, unit, reservations, buckets_settled, buckets_expired,"
        " round(refunded, 6), round(charged, 6), round(net_delta, 6)"
        " FROM settled_deltas ORDER BY scope DESC",
    )
    day = dt.date(2027, 1, 15)
    assert view == [
        (day, "user", "tokens", 5, 3, 1, 500.0, 200.0, -300.0),
        (day, "shadow:user", "tokens", 4, 3, 1, 500.0, 200.0, -300.0),
    ]


def test_a_store_error_at_settlement_is_a_row_too(tmp_path: Path) -> None:
    from engine.limits.stores.base import StoreUnavailableError
    from engine.limits.stores.memory import MemoryStore

    class Down(MemoryStore):
        def settle(self, adjustments: Any, now: float) -> list[float]:
            raise StoreUnavailableError("down for the test")

    clock = Clock()
    path = tmp_path / "logs.duckdb"
    engine = PolicyEngine.from_text(
        "limit user tokens 1000 per 1m\n" + ROUTE, state=Down(), clock=clock, analytics=str(path)
    )
    a = ask(engine, "a", 500, 100)
    engine.record(a, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    engine.close()
    assert query(path, "SELECT request_id, actual, delta, result FROM rate_limit_settlements") == [
        ("a", 100.0, 0.0, "store_error")
    ]


# ----------------------------------------------------------------------------- waits


async def _turn() -> None:
    """Let the ready tasks run (a turn of the loop, not a sleep: no time passes)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.mark.asyncio
@SETUPS
async def test_waits_admitted_timed_out_and_queue_full(setup: Setup, tmp_path: Path) -> None:
    where, path = setup(tmp_path)
    clock = Clock()
    # one token a second, 60 in the bucket; p1 waits 2.5 s at most, the others 10 s
    engine = PolicyEngine.from_text("limit user 60 per 1m wait up to 10s\n", clock=clock, **where)
    for i in range(60):
        assert engine.evaluate({"id": f"drain{i}", "user": "u"}).allowed
    engine.waiters.max_waiters = 3
    tasks = {
        p: asyncio.create_task(
            engine.acquire({"id": f"p{p}", "user": "u"}, priority=p, timeout_s=timeout)
        )
        for p, timeout in ((1, 2.5), (5, None), (3, None))
    }
    await _turn()
    await _turn()  # p1's answer, given as p3 queued, reaches its task
    # fair queues: p5 and p3 go ahead of p1, whose turn (3 s) is then past its 2.5 s
    assert engine.waiters.depth() == 2
    assert tasks[1].done() and not tasks[1].result().allowed
    engine.waiters.max_waiters = 2
    full = await engine.acquire({"id": "full", "user": "u"}, priority=7)
    assert not full.allowed
    clock.now = START + 1  # p5 admitted
    engine.waiters.wake(clock.now)
    await _turn()
    clock.now = START + 2  # p3 admitted
    engine.waiters.wake(clock.now)
    results = {p: (await task).allowed for p, task in tasks.items()}
    assert results == {1: False, 5: True, 3: True}
    engine.close()
    rows = query(
        path,
        "SELECT finished_at, request_id, bucket_key, priority, waited_ms, outcome"
        " FROM rate_limit_waits ORDER BY finished_at, request_id",
    )
    assert rows == [
        (at(0), "full", "user/requests/u", 7.0, 0.0, "queue_full"),
        (at(0), "p1", "user/requests/u", 1.0, 0.0, "timed_out"),
        (at(1), "p5", "user/requests/u", 5.0, 1000.0, "admitted"),
        (at(2), "p3", "user/requests/u", 3.0, 2000.0, "admitted"),
    ]
    summary = query(
        path,
        "SELECT outcome, requests, avg_waited_ms, max_waited_ms FROM wait_summary ORDER BY 1",
    )
    assert summary == [
        ("admitted", 2, 1500.0, 2000.0),
        ("queue_full", 1, 0.0, 0.0),
        ("timed_out", 1, 0.0, 0.0),
    ]


# ----------------------------------------------------------------------------- in flight

INFLIGHT = "limit global concurrent 2 lease 30s\nlimit user concurrent 1 lease 10s\n"
GLOBAL = "global/concurrent/30000/"


@SETUPS
def test_inflight_released_by_outcomes_and_by_leases(setup: Setup, tmp_path: Path) -> None:
    where, path = setup(tmp_path)
    clock = Clock()
    engine = PolicyEngine.from_text(INFLIGHT, clock=clock, **where)

    def take(rid: str, user: str) -> Any:
        decision = engine.evaluate({"id": rid, "user": user})
        assert decision.allowed, decision.reason
        return decision

    a, _ = take("a", "u1"), take("b", "u2")
    assert not engine.evaluate({"id": "x", "user": "u3"}).allowed  # the global gauge is full
    clock.now = START + 5
    engine.record(a, latency_ms=1.0, success=True)  # both of a's slots, held 5 s
    engine.record(a, latency_ms=1.0, success=True)  # a second outcome: nothing more
    clock.now = START + 25  # b's user lease ran out at +10 (its global one at +30)
    engine.flush()
    tables: Any = engine.analytics or engine.store  # the file is open: read through it
    written = tables.read(lambda con: con.execute("SELECT count(*) FROM rate_limit_inflight"))
    assert written.fetchall() == [(3,)]
    clock.now = START + 40  # b's global lease ran out at +30, with no outcome ever
    d = take("d", "u4")
    clock.now = START + 52  # d's user lease ran out at +50; its global one is live
    engine.record(d, latency_ms=1.0, success=True)
    engine.close()
    rows = query(
        path,
        "SELECT released_at, gauge_key, scope, request_id, held_ms, released_by"
        " FROM rate_limit_inflight ORDER BY released_at, gauge_key",
    )
    assert rows == [
        (at(5), GLOBAL, "global", "a", 5000.0, "outcome"),
        (at(5), "user/concurrent/10000/u1", "user", "a", 5000.0, "outcome"),
        (at(10), "user/concurrent/10000/u2", "user", "b", 10000.0, "lease"),
        (at(30), GLOBAL, "global", "b", 30000.0, "lease"),
        (at(50), "user/concurrent/10000/u4", "user", "d", 10000.0, "lease"),
        (at(52), GLOBAL, "global", "d", 12000.0, "outcome"),
    ]
    summary = query(
        path,
        "SELECT gauge_key, released_by, releases, max_held_ms FROM inflight_summary"
        " WHERE gauge_key = 'global/concurrent/30000/' ORDER BY released_by",
    )
    assert summary == [(GLOBAL, "lease", 1, 30000.0), (GLOBAL, "outcome", 2, 12000.0)]


# ----------------------------------------------------------------------------- no analytics


def test_a_memory_only_engine_makes_no_events() -> None:
    clock = Clock()
    engine = PolicyEngine.from_text(INFLIGHT + TOKENS + ROUTE, clock=clock, settle_within_s=1)
    assert engine.limiter.events is None and engine.waiters.events is None
    decision = ask(engine, "a", 10, 10)
    assert engine.limiter._leases == {}  # nothing kept for the tables
    engine.record(decision, latency_ms=1.0, success=True, input_tokens=1, output_tokens=1)
    ask(engine, "b", 10, 10)
    clock.now += 60
    engine.flush()
    assert engine.limiter.settlement_counts().expired == 1  # counted as before, no rows
    engine.close()


def test_the_writer_counts_the_events_its_queue_had_no_room_for(tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    ensure_schema(con)
    writer = OutcomeWriter(con, max_queue=2, interval_s=3600)  # writes on flush only
    rows = [
        SettlementRow(START, "r", KEY, "user", "tokens", 10.0, 4.0, -6.0, "settled"),
        WaitRow(START, "r", "user/requests/u", 0.0, 10.0, "admitted"),
        InFlightRow(START, GLOBAL, "global", "r", 10.0, "outcome"),
    ]
    for row in rows:
        writer.submit_event(row)
    writer.close()
    assert (writer.dropped_events, writer.written_events) == (1, 2)
    counts = [
        con.execute(f"SELECT count(*) FROM {table}").fetchone()
        for table in ("rate_limit_settlements", "rate_limit_waits", "rate_limit_inflight")
    ]
    con.close()
    assert counts == [(1,), (1,), (0,)]


# ----------------------------------------------------------------------------- configs

OLD_CONFIGS = """
CREATE TABLE rate_limit_configs (
    id VARCHAR PRIMARY KEY, scope VARCHAR NOT NULL, key VARCHAR, unit VARCHAR NOT NULL,
    max_requests DOUBLE NOT NULL, window_ms DOUBLE NOT NULL, burst DOUBLE NOT NULL,
    until TIMESTAMP, source VARCHAR NOT NULL, enabled BOOLEAN NOT NULL DEFAULT TRUE
);
INSERT INTO rate_limit_configs VALUES
    ('user/requests/60000/*@old:1:1', 'user', NULL, 'requests', 5, 60000, 0, NULL, 'old:1:1',
     true);
"""
CONFIG_POLICY = (
    "limit user 100 per 1m\nshadow limit user 20 per 1m\n"
    'limit model "openai/gpt-4o" concurrent 8 lease 30s\n'
)


def test_an_old_file_gains_the_columns_and_the_tables(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute(OLD_CONFIGS)
    con.close()
    PolicyEngine.from_text(CONFIG_POLICY, state=str(path)).close()
    columns = [r[0] for r in query(path, "DESCRIBE rate_limit_configs")]
    assert columns[-3:] == ["enabled", "shadow", "lease_ms"]
    rows = query(
        path,
        "SELECT scope, unit, max_requests, shadow, lease_ms FROM rate_limit_configs"
        " ORDER BY source",
    )
    assert rows == [
        ("user", "requests", 100.0, False, None),
        ("user", "requests", 20.0, True, None),
        ("model", "concurrent", 8.0, False, 30000.0),
    ]
    tables = {r[0] for r in query(path, "SELECT table_name FROM information_schema.tables")}
    assert {"rate_limit_settlements", "rate_limit_waits", "rate_limit_inflight"} <= tables
    assert {"settled_deltas", "wait_summary", "inflight_summary"} <= tables


def test_ratelimit_config_shows_shadow_and_lease(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text(CONFIG_POLICY)
    state = tmp_path / "state.duckdb"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    environ["HOME"] = str(tmp_path / "home")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "ratelimit", "config", *args, "--state", str(state),
             "--policy", str(policy)],
            capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    table = [line.split() for line in cli().splitlines()[1:4]]
    assert [row[:5] for row in table] == [
        ["user", "-", "requests", "100", "1m"],
        ["user", "(shadow)", "-", "requests", "20"],
        ["model", "openai/gpt-4o", "concurrent", "8", "lease"],
    ]
    assert table[2][5] == "30s"
    limits = json.loads(cli("--format", "json"))["limits"]
    assert [(r["scope"], r.get("shadow", False), r["window"]) for r in limits] == [
        ("user", False, "1m"),
        ("user", True, "1m"),
        ("model", False, "lease 30s"),
    ]
    verbose = json.loads(cli("--format", "json", "--verbose"))["limits"]
    assert [r["rate_per_s"] for r in verbose] == [1.66667, 0.333333, None]
    stored = query(state, "SELECT shadow, lease_ms FROM rate_limit_configs ORDER BY source")
    assert stored == [(False, None), (True, None), (False, 30000.0)]
