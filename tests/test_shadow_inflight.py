"""`shadow limit … concurrent N`: an in-flight cap in report-only mode. Its gauge counts the
requests in flight like an enforced one (a slot per allowed decision, given back by the
outcome or the lease) and never denies: a full shadow gauge is a would-be denial (in the
decision, the violations, the daily stats, `/metrics`). Memory, DuckDB and a real Redis;
fake clocks, nothing sleeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.formatter import format_text
from engine.limits.admin import RateLimitAdmin
from engine.limits.stores.base import Store
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import MemoryStore
from engine.limits.stores.redis_store import RedisStore
from engine.service.telemetry import Telemetry

pytest_plugins = ["_redis"]

START = 1_800_000_000.0  # 2027-01-15
DAY = "2027-01-15"
ROUTE = "route default { strategy cost }\n"
GAUGE = "global/concurrent/600000/"
SHADOW_GAUGE = "global/concurrent/600000#shadow/"


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "duckdb", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "duckdb":
        opened = DuckDBStore(str(tmp_path / "state.duckdb"))
    else:
        server = request.getfixturevalue("redis_server")
        opened = RedisStore(server.url.rsplit("/", 1)[0] + "/6?timeout=5")
        opened._redis.flushdb()
    yield opened
    opened.close()


def engine_for(text: str, state: Any = "memory://", clock: Clock | None = None) -> PolicyEngine:
    return PolicyEngine.from_text(text + ROUTE, clock=clock or Clock(), state=state)


def held(engine: PolicyEngine) -> dict[str, int]:
    return dict(engine.limiter.inflight())


def ask(engine: PolicyEngine, rid: str, user: str = "u") -> Any:
    decision = engine.evaluate({"id": rid, "user": user, "prompt": "hi"})
    assert decision.allowed, decision.reason
    return decision


# ---------------------------------------------------------------- the language


def test_parse_check_and_fmt_round_trip() -> None:
    text = (
        "limit user concurrent 4\n"
        "shadow limit user concurrent 2 lease 5m\n"
        'shadow limit model "openai/gpt-4o" concurrent 1\n'
    )
    formatted = format_text(text)
    assert "shadow limit user concurrent" in formatted and "2 lease 5m" in formatted
    assert format_text(formatted) == formatted
    limits = engine_for(formatted).program.limits
    assert [(lim.scope, lim.unit, lim.shadow, lim.window_ms) for lim in limits] == [
        ("user", "concurrent", False, 600_000.0),
        ("user", "concurrent", True, 300_000.0),
        ("model", "concurrent", True, 600_000.0),
    ]


def test_a_shadow_in_flight_limit_cannot_wait() -> None:
    with pytest.raises(PolicyError) as found:
        engine_for("shadow limit user concurrent 2 wait up to 1s\n")
    assert "E0423" in str(found.value)


def check(tmp_path: Path, text: str) -> str:
    policy = tmp_path / "p.policy"
    policy.write_text(text)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "check", str(policy)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )  # fmt: skip
    return done.stdout + done.stderr


def test_w0506_a_shadow_gauge_an_enforced_one_always_fills_first(tmp_path: Path) -> None:
    never = check(tmp_path, "limit user concurrent 2\nshadow limit user concurrent 3\n" + ROUTE)
    assert "warning[W0506]: shadow limit `user concurrent` is never reached" in never
    assert "holds no more slots and keeps them no shorter" in never
    tighter = "limit user concurrent 4\nshadow limit user concurrent 2\n"
    assert "W0506" not in check(tmp_path, tighter + ROUTE)
    # a longer lease holds slots the enforced gauge has given back: it can fill
    longer = "limit user concurrent 2 lease 1m\nshadow limit user concurrent 2 lease 5m\n"
    assert "W0506" not in check(tmp_path, longer + ROUTE)


def test_the_language_server_completes_a_shadow_in_flight_limit() -> None:
    from engine.lsp.knowledge import completions

    def labels(text: str) -> list[str]:
        return [c.label for c in completions(text, len(text), None).items]

    assert labels("shadow ") == ["limit"]
    assert "concurrent" in labels("shadow limit user ")
    assert labels("shadow limit user concurrent 2 ") == ["lease", "when", "until"]


# ---------------------------------------------------------------- counting, never denying


def test_eight_threads_the_cap_holds_and_the_shadow_gauge_only_records() -> None:
    """Rounds of 8 requests in flight at once: the enforced `concurrent 3` admits exactly 3
    per round, the shadow `concurrent 2` holds 2 of them and records the third as a
    would-be denial, denying nothing; every outcome gives both kinds of slot back."""
    engine = engine_for("limit global concurrent 3\nshadow limit global concurrent 2\n")
    rounds = 25
    seen: list[dict[str, int]] = []
    results: list[tuple[bool, int]] = []
    lock = threading.Lock()
    in_flight = threading.Barrier(8, action=lambda: seen.append(held(engine)))
    returned = threading.Barrier(8, action=lambda: seen.append(held(engine)))

    def worker(n: int) -> None:
        for r in range(rounds):
            decision = engine.evaluate({"id": f"t{n}-{r}", "prompt": "hi"})
            with lock:
                results.append((decision.allowed, len(decision.shadow_denials)))
            if not decision.allowed:
                assert decision.denied_by is not None and decision.denied_by.unit == "concurrent"
                assert decision.denied_by.scope == "global"
            in_flight.wait()
            if decision.allowed:
                assert engine.record(decision, latency_ms=5.0, success=True)
            returned.wait()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0::2] == [{GAUGE: 3, SHADOW_GAUGE: 2}] * rounds  # mid-round
    assert seen[1::2] == [{}] * rounds  # every slot back after the outcomes
    allowed = [shadowed for ok, shadowed in results if ok]
    assert len(allowed) == 3 * rounds  # the shadow gauge denied nothing
    assert sum(allowed) == rounds  # the third admitted of each round: a would-be denial
    assert sum(shadowed for ok, shadowed in results if not ok) == 0  # never reached
    assert engine.limiter.shadow_denials() == {"global": rounds}
    scopes = [v.scope for v in engine.limiter.violations]
    assert scopes.count("shadow:global") == rounds and scopes.count("global") == 5 * rounds
    stats = engine.limiter.daily_stats()
    assert stats[(DAY, "shadow:global")] == (2 * rounds, rounds)


def test_shadow_slots_return_by_outcome_and_by_lease(store: Store) -> None:
    clock = Clock()
    engine = engine_for(
        "limit user concurrent 5\nshadow limit user concurrent 1 lease 30s\n", store, clock
    )
    shadow, enforced = "user/concurrent/30000#shadow/u", "user/concurrent/600000/u"
    a = ask(engine, "a")
    assert not a.shadow_denials
    b = ask(engine, "b")
    assert [(d.scope, d.key, d.unit, d.retry_after_ms) for d in b.shadow_denials] == [
        ("user", "u", "concurrent", 30_000)
    ]
    assert not [s for s in b.to_dict()["rate_limits"] if "shadow" in str(s)]
    assert held(engine) == {enforced: 2, shadow: 1}
    assert engine.record(a, latency_ms=1.0, success=True)  # a's slots, both kinds
    assert held(engine) == {enforced: 1}
    c = ask(engine, "c")
    assert not c.shadow_denials and held(engine) == {enforced: 2, shadow: 1}
    clock.now += 31  # c's shadow lease ran out with no outcome; its enforced one has not
    assert held(engine) == {enforced: 2}
    assert not ask(engine, "d").shadow_denials
    assert engine.limiter.shadow_denials() == {"user": 1}
    violation = [v for v in engine.limiter.violations if v.scope == "shadow:user"]
    assert [(v.key, v.unit, v.request_id) for v in violation] == [("u", "concurrent", "b")]
    engine.close()


def test_gauge_keys_never_collide_with_an_enforced_gauge(store: Store) -> None:
    """The same scope, size and lease: two gauges. The enforced one denies the second
    request (which the shadow one then never sees); each outcome frees one slot of each."""
    engine = engine_for("limit user concurrent 1\nshadow limit user concurrent 1\n", store)
    a = ask(engine, "a")
    second = engine.evaluate({"id": "b", "user": "u", "prompt": "hi"})
    assert not second.allowed and not second.shadow_denials
    assert held(engine) == {"user/concurrent/600000/u": 1, "user/concurrent/600000#shadow/u": 1}
    assert engine.limiter.release("a") == 2
    assert engine.limiter.release("a") == 0  # once
    assert held(engine) == {}
    assert a.allowed and ask(engine, "c") is not None
    engine.close()


def test_a_shadow_bucket_without_room_gives_the_shadow_slot_back(store: Store) -> None:
    """All-or-nothing among the shadow limits: a shadow bucket that would deny leaves the
    shadow gauge as it was (and a full shadow gauge consumes no shadow bucket)."""
    engine = engine_for("shadow limit global concurrent 2\nshadow limit global 1 per 1m\n", store)
    assert not ask(engine, "a").shadow_denials
    b = ask(engine, "b")
    assert [(d.scope, d.unit) for d in b.shadow_denials] == [("global", "requests")]
    assert held(engine) == {SHADOW_GAUGE: 1}  # a's only
    engine.limiter.release("a")
    assert held(engine) == {}
    engine.close()


def test_a_full_shadow_gauge_consumes_no_shadow_bucket() -> None:
    engine = engine_for("shadow limit global concurrent 1\nshadow limit global 2 per 1m\n")
    ask(engine, "a")
    b = ask(engine, "b")
    assert [(d.scope, d.unit) for d in b.shadow_denials] == [("global", "concurrent")]
    engine.limiter.release("a")
    c = ask(engine, "c")  # the bucket still has b's token: room for c
    assert not c.shadow_denials
    engine.close()


def test_a_shadow_model_gauge_counts_the_chosen_candidate_and_moves_nothing() -> None:
    engine = engine_for("shadow limit model concurrent 1\n")
    a = ask(engine, "a")
    b = ask(engine, "b")
    assert (b.provider, b.model) == (a.provider, a.model)  # routing is not moved
    assert [(d.scope, d.key, d.unit) for d in b.shadow_denials] == [
        ("model", f"{a.provider}/{a.model}", "concurrent")
    ]
    assert held(engine) == {f"model/concurrent/600000#shadow/{a.provider}/{a.model}": 1}
    engine.close()


def test_a_dry_run_reports_a_full_shadow_gauge_and_takes_nothing() -> None:
    engine = engine_for("shadow limit global concurrent 1\n")
    ask(engine, "a")
    dry = engine.evaluate({"id": "q", "prompt": "hi"}, dry_run=True)
    assert dry.allowed and [d.unit for d in dry.shadow_denials] == ["concurrent"]
    assert held(engine) == {SHADOW_GAUGE: 1}
    engine.close()


# ---------------------------------------------------------------- where it shows


def test_metrics_name_the_shadow_gauge_apart() -> None:
    engine = engine_for("limit user concurrent 5\nshadow limit user concurrent 1\n")
    ask(engine, "a")
    ask(engine, "b", user="v")
    ask(engine, "c")  # a would-be denial
    registry = CollectorRegistry()
    registry.register(Telemetry(engine))
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    gauges = {s.labels["scope"]: s.value for s in families["policyctl_inflight"].samples}
    assert gauges == {"user": 3.0, "shadow:user": 2.0}
    denials = [(s.labels, s.value) for s in families["policyctl_shadow_denials"].samples]
    assert denials == [({"scope": "user"}, 1.0)]
    engine.close()


def test_ratelimit_status_and_config_show_it_as_shadow(tmp_path: Path) -> None:
    from engine.cli.ratelimit_cmd import _status_table

    engine = engine_for("limit user concurrent 3\nshadow limit user concurrent 1 lease 1m\n")
    ask(engine, "a")
    rows = RateLimitAdmin(engine).status("user", "u")
    shown = [(r["scope"], r.get("shadow", False), r["window"], r["tokens"], r["in_flight"])
             for r in rows]  # fmt: skip
    assert shown == [("user", False, "lease 10m", 2, 1), ("user", True, "lease 1m", 0, 1)]
    assert "user (shadow)" in _status_table(rows, verbose=False)
    engine.close()

    policy = tmp_path / "p.policy"
    policy.write_text("limit user concurrent 3\nshadow limit user concurrent 1 lease 1m\n" + ROUTE)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    environ["HOME"] = str(tmp_path / "home")
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    done = subprocess.run(
        [sys.executable, "-m", "engine", "ratelimit", "config", "--format", "json",
         "--state", str(tmp_path / "state.duckdb"), "--policy", str(policy)],
        capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    limits = json.loads(done.stdout)["limits"]
    assert [(r["unit"], r.get("shadow", False), r["window"]) for r in limits] == [
        ("concurrent", False, "lease 10m"),
        ("concurrent", True, "lease 1m"),
    ]


def test_the_inflight_table_names_the_shadow_scope(tmp_path: Path) -> None:
    clock = Clock()
    engine = engine_for("shadow limit global concurrent 2\n", str(tmp_path / "state.duckdb"), clock)
    a = ask(engine, "a")
    clock.now += 4
    engine.record(a, latency_ms=1.0, success=True)
    engine.close()
    import duckdb

    con = duckdb.connect(str(tmp_path / "state.duckdb"), read_only=True)
    rows = con.execute(
        "SELECT gauge_key, scope, request_id, held_ms, released_by FROM rate_limit_inflight"
    ).fetchall()
    con.close()
    assert rows == [(SHADOW_GAUGE, "shadow:global", "a", 4000.0, "outcome")]


# ---------------------------------------------------------------- Redis: across instances


def test_on_redis_another_instance_gives_the_shadow_slot_back(redis_server: Any) -> None:
    """Two engines on one real Redis: the gauges are shared, and the outcome reaching the
    instance that did not decide frees the shadow slot with the enforced one."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7?timeout=5"
    first = RedisStore(url)
    first._redis.flushdb()
    clock = Clock()
    text = "limit global concurrent 3\nshadow limit global concurrent 1\n"
    deciding = engine_for(text, first, clock)
    receiving = engine_for(text, RedisStore(url), clock)
    a = ask(deciding, "a")
    b = ask(receiving, "b")  # the other instance sees a's shadow slot
    assert not a.shadow_denials and [d.unit for d in b.shadow_denials] == ["concurrent"]
    assert held(receiving) == {GAUGE: 2, SHADOW_GAUGE: 1}
    assert a.provider is not None and a.model is not None
    assert receiving.record_outcome(
        a.provider, a.model, latency_ms=1.0, success=True, request_id="a"
    )
    assert held(deciding) == {GAUGE: 1}
    assert not ask(deciding, "c").shadow_denials
    deciding.close()
    receiving.close()
