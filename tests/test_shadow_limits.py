"""`shadow limit …`: a limit in report-only mode. Its buckets count what enforcement would
have seen; it never denies; what it would have denied is in the decision, the violations
log, the daily stats and `/metrics`. Every store; fake clocks, nothing sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from _design import from_design

from engine import PolicyEngine
from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.language.parser import parse
from engine.limits.stores.base import Store
from engine.limits.stores.duckdb_store import DuckDBStore
from engine.limits.stores.memory import MemoryStore
from engine.limits.stores.redis_store import RedisStore
from engine.service.telemetry import Telemetry

pytest_plugins = ["_redis"]

START = 1_800_000_000.0  # 2027-01-15
DAY = "2027-01-15"
SHADOW_3 = "shadow limit user 3 per 1m\n"
REQUEST = {"user": "u", "ip": "10.0.0.1"}


class FakeClock:
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
        opened = RedisStore(server.url.rsplit("/", 1)[0] + "/5?timeout=2")
        opened._redis.flushdb()
    yield opened
    opened.close()


def _run(engine: PolicyEngine, n: int, prefix: str = "r") -> list[dict[str, object]]:
    return [engine.evaluate({"id": f"{prefix}{i}", **REQUEST}).to_dict() for i in range(n)]


# ---------------------------------------------------------------- the language


def test_parse_compile_and_fmt_round_trip() -> None:
    text = (
        "limit user 100 per 1m\n"
        "shadow   limit user 3 per 1m burst 2\n"
        'shadow limit model "openai/gpt-4o" tokens 1000 per 1m when request.stream\n'
    )
    (enforced, shadow, tokens) = parse(text).statements
    assert (enforced.shadow, shadow.shadow, tokens.shadow) == (False, True, True)  # type: ignore[union-attr]
    formatted = format_text(text)
    assert " ".join(formatted.splitlines()[1].split()) == "shadow limit user 3 per 1m burst 2"
    assert format_text(formatted) == formatted
    program = compile_sources([("p.policy", formatted)], now=START).program
    assert [limit.shadow for limit in program.limits] == [False, True, True]


def test_a_route_shadow_and_a_limit_shadow_are_told_apart_in_errors(tmp_path: Path) -> None:
    for text, hint in [
        ("shadow route x\n", "`shadow route NAME` goes inside a route"),
        ("route a {\n    shadow limit user 3 per 1m\n}\n", "a statement of its own"),
    ]:
        with pytest.raises(Exception, match="E0014") as err:
            parse(text)
        assert hint in str(err.value)


# ---------------------------------------------------------------- semantics, every store


def test_shadow_limit_denies_nothing_and_records_everything(store: Store) -> None:
    engine = from_design(SHADOW_3, state=store, clock=FakeClock())
    decisions = _run(engine, 10)
    assert all(d["allowed"] for d in decisions)
    shadowed = [d for d in decisions if "shadow_denials" in d]
    assert [d["request_id"] for d in shadowed] == [f"r{i}" for i in range(3, 10)]
    assert shadowed[0]["shadow_denials"] == [
        {"scope": "user", "key": "u", "unit": "requests", "retry_after_ms": 20_000}
    ]
    assert all(d["rate_limits"] == [] for d in decisions)  # not advertised as a limit
    violations = list(engine.limiter.violations)
    assert [(v.scope, v.key, v.request_id) for v in violations] == [
        ("shadow:user", "u", f"r{i}") for i in range(3, 10)
    ]
    assert engine.limiter.daily_stats() == {(DAY, "shadow:user"): (3, 7)}
    assert engine.limiter.shadow_denials() == {"user": 7}


def test_an_enforced_limit_beside_a_shadow_one_still_denies(store: Store) -> None:
    engine = from_design("limit user 5 per 1m\n" + SHADOW_3, state=store, clock=FakeClock())
    decisions = _run(engine, 8)
    assert [d["allowed"] for d in decisions] == [True] * 5 + [False] * 3
    assert [d["denied_by"]["scope"] for d in decisions[5:]] == ["user"] * 3  # type: ignore[index]
    # the shadow limit saw the 5 allowed requests only: 2 it would have denied
    assert ["shadow_denials" in d for d in decisions] == [False] * 3 + [True] * 2 + [False] * 3
    assert engine.limiter.daily_stats() == {
        (DAY, "user"): (5, 3),
        (DAY, "shadow:user"): (3, 2),
    }


def test_a_shadow_keyed_limit_never_replaces_an_enforced_default(store: Store) -> None:
    policy = 'limit user 2 per 1m\nshadow limit user "u" 1 per 1m\n'
    engine = from_design(policy, state=store, clock=FakeClock())
    decisions = _run(engine, 4)
    assert [d["allowed"] for d in decisions] == [True, True, False, False]
    assert ["shadow_denials" in d for d in decisions] == [False, True, False, False]


def test_a_shadow_denial_consumes_none_of_the_shadow_buckets(store: Store) -> None:
    """All-or-nothing, as if enforced: the request the ip limit would deny takes nothing
    from the user bucket either."""
    policy = "shadow limit user 5 per 1m\nshadow limit ip 2 per 1m\n"
    engine = from_design(policy, state=store, clock=FakeClock())
    _run(engine, 4)
    other_ip = engine.evaluate({"id": "x", "user": "u", "ip": "10.0.0.2"}).to_dict()
    assert "shadow_denials" not in other_ip  # the user bucket holds 5 - 2 - 1 = 2
    assert [v.scope for v in engine.limiter.violations] == ["shadow:ip", "shadow:ip"]


def test_a_dry_run_reports_shadow_denials_and_consumes_nothing(store: Store) -> None:
    engine = from_design(SHADOW_3, state=store, clock=FakeClock())
    _run(engine, 3)
    first = engine.evaluate({"id": "d1", **REQUEST}, dry_run=True).to_dict()
    assert first["shadow_denials"][0]["scope"] == "user"  # type: ignore[index]
    assert list(engine.limiter.violations) == []


def test_shadow_provider_limit_counts_the_chosen_candidate() -> None:
    engine = from_design(
        'route all {\n    prefer openai\n}\nshadow limit provider "openai" 1 per 1m\n',
        clock=FakeClock(),
    )
    decisions = _run(engine, 3)
    assert all(d["allowed"] and d["provider"] == "openai" for d in decisions)
    assert ["shadow_denials" in d for d in decisions] == [False, True, True]
    assert decisions[1]["shadow_denials"][0]["key"] == "openai"  # type: ignore[index]


# ---------------------------------------------------------------- where it is recorded


def test_violations_and_stats_reach_the_duckdb_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    engine = from_design(SHADOW_3, state=str(state), clock=FakeClock())
    _run(engine, 10)
    engine.close()
    con = duckdb.connect(str(state), read_only=True)
    try:
        rows = con.execute(
            "SELECT scope, key, request_id FROM rate_limit_violations ORDER BY request_id"
        ).fetchall()
        stats = con.execute(
            "SELECT day::VARCHAR, scope, total_requests, allowed_requests, denied_requests"
            " FROM rate_limit_stats"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("shadow:user", "u", f"r{i}") for i in range(3, 10)]
    assert stats == [(DAY, "shadow:user", 10, 3, 7)]


def test_the_metrics_counter(store: Store) -> None:
    engine = from_design(SHADOW_3 + "limit ip 100 per 1m\n", state=store, clock=FakeClock())
    _run(engine, 10)
    families = {m.name: m for m in Telemetry(engine).collect()}
    samples = [(s.labels, s.value) for s in families["policyctl_shadow_denials"].samples]
    assert samples == [({"scope": "user"}, 7.0)]


def test_ratelimit_config_and_status_show_a_shadow_limit(tmp_path: Path) -> None:
    from _design import on_design

    policy = tmp_path / "p.policy"
    policy.write_text(on_design("limit user 100 per 1m\n" + SHADOW_3))
    state = tmp_path / "state.duckdb"
    environ = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    environ["HOME"] = str(tmp_path / "home")

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "ratelimit", *args, "--state", str(state),
             "--policy", str(policy)],
            capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    table = cli("config").splitlines()
    assert [line.split()[:3] for line in table[1:3]] == [
        ["user", "-", "requests"],
        ["user", "(shadow)", "-"],
    ]
    import json

    rows = json.loads(cli("config", "--format", "json"))["limits"]
    assert [r.get("shadow", False) for r in rows] == [False, True]
    status = json.loads(cli("status", "--user", "u", "--format", "json"))
    assert [(r["scope"], r.get("shadow", False)) for r in status] == [
        ("user", False),
        ("user", True),
    ]


# ---------------------------------------------------------------- no shadow limit: no cost


def test_without_shadow_limits_the_plan_has_no_shadow_part() -> None:
    engine = from_design("limit user 3 per 1m\n", clock=FakeClock())
    _run(engine, 1)
    _, plan = engine.limiter._plan
    assert plan is not None and plan.shadow is None
    engine = from_design(SHADOW_3, clock=FakeClock())
    _run(engine, 1)
    _, plan = engine.limiter._plan
    assert plan is not None and plan.shadow is not None and not plan.shared


def test_the_language_server_explains_a_shadow_limit() -> None:
    from engine.lsp.knowledge import hover

    text = "route a {\n    shadow route b\n}\nshadow limit user 3 per 1m\n"
    on_limit = hover(text, text.index("shadow limit") + 2, None)
    on_route = hover(text, text.index("shadow route") + 2, None)
    assert on_limit is not None and "report-only" in on_limit.markdown
    assert on_route is not None and "shadow route NAME" in on_route.markdown


def test_ratelimit_violations_filters_the_shadow_scope(store: Store) -> None:
    from engine.limits.admin import RateLimitAdmin

    engine = from_design("limit ip 5 per 1m\n" + SHADOW_3, state=store, clock=FakeClock())
    _run(engine, 6)
    admin = RateLimitAdmin(engine)
    shadow = admin.violations(scope="shadow:user")
    assert [(v["scope"], v["request_id"]) for v in shadow] == [
        ("shadow:user", "r4"),
        ("shadow:user", "r3"),
    ]
    assert [v["scope"] for v in admin.violations(scope="ip")] == ["ip"]


def test_a_shadow_limit_beside_an_in_flight_cap() -> None:
    """Both kinds at once: the cap denies the third request in flight, the shadow limit
    reports (never applies) the second allowed one, and the outcome frees a slot."""
    now = [1_800_000_000.0]
    engine = PolicyEngine.from_text(
        "limit global concurrent 2\nshadow limit user 1 per 1m\n", "both.policy",
        state="memory://", clock=lambda: now[0],
    )  # fmt: skip
    first = engine.evaluate({"id": "a", "user": "u", "prompt": "hi"})
    second = engine.evaluate({"id": "b", "user": "u", "prompt": "hi"})
    third = engine.evaluate({"id": "c", "user": "u", "prompt": "hi"})
    assert first.allowed and not first.shadow_denials
    assert second.allowed and [d.scope for d in second.shadow_denials] == ["user"]
    assert not third.allowed and third.denied_by is not None
    assert third.denied_by.unit == "concurrent"
    engine.record(first, latency_ms=100.0, success=True)
    fourth = engine.evaluate({"id": "d", "user": "u", "prompt": "hi"})
    assert fourth.allowed and [d.scope for d in fourth.shadow_denials] == ["user"]
    engine.close()
