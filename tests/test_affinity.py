"""Session affinity: `affinity by request.KEY for D` (docs/language.md, Affinity).

A request goes to the model the previous request with the same key went to, within D of
it, while that model stays eligible; the pin is broken only by health (a cooldown), by the
request (the model cannot serve it) or by a limit, and the decision says which. A pinned
request's estimated cost prices the part of its prompt the session already sent at the
catalog's cache-read price. Time moves only on the engine's fake clock.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.diagnostics import PolicyError
from engine.language.formatter import format_text
from engine.language.loader import compile_sources
from engine.routing.decision import Decision, DecisionSchema
from engine.routing.evaluator import EvalState, Pin, PinTable, evaluate
from engine.routing.request import env_of

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
route agents {
    strategy round-robin
    cooldown after 3 failures for 30s
    affinity by request.metadata.session_id for 10m
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


def engine(catalog: str, body: str = ROUTE, clock: Clock | None = None) -> PolicyEngine:
    return PolicyEngine.from_text(
        catalog + body, "affinity.policy", clock=clock or Clock(), metrics_refresh_ms=0
    )


def ask(e: PolicyEngine, session: str | None, i: int = 0, **fields: object) -> Decision:
    metadata = {} if session is None else {"session_id": session}
    request = {"id": f"r{i}", "input_tokens": 10_000, "max_tokens": 500, "metadata": metadata}
    return e.evaluate({**request, **fields})


def where(d: Decision) -> str:
    return f"{d.provider}/{d.model}"


def affinity(d: Decision) -> dict[str, object]:
    DecisionSchema.model_validate(d.to_dict())  # the JSON is the documented one
    return d.to_dict()["affinity"]  # type: ignore[no-any-return]


# ---------------------------------------------------------------- holding


def test_a_thousand_requests_of_one_session_go_to_one_model(catalog: str) -> None:
    clock = Clock()
    e = engine(catalog, clock=clock)
    spread = Counter(where(ask(e, None, i)) for i in range(30))  # no key: round-robin
    assert len(spread) == 3
    first = ask(e, "s-1", 0)
    assert affinity(first)["pinned"] is False and affinity(first)["broken"] is None
    seen = Counter()
    for i in range(1, 1001):
        clock.now += 5.0  # well within 10m of the previous request
        d = ask(e, "s-1", i)
        seen[where(d)] += 1
        assert affinity(d)["pinned"] is True, d.reason
    assert seen == {where(first): 1000}
    other = Counter(where(ask(e, f"s-{n}", n)) for n in range(2, 8))
    assert len(other) > 1  # other sessions are spread as the strategy spreads them


def test_the_key_hash_names_no_session_and_is_stable(catalog: str) -> None:
    e = engine(catalog)
    a, b = ask(e, "secret-session"), ask(e, "secret-session", 1)
    assert affinity(a)["key_hash"] == affinity(b)["key_hash"]
    assert "secret" not in json.dumps(b.to_dict())
    assert affinity(ask(e, "other", 2))["key_hash"] != affinity(a)["key_hash"]
    nokey = affinity(ask(e, None, 3))
    assert nokey == {"key_hash": None, "pinned": False, "broken": None, "cached_tokens": 0}


def test_the_pin_expires_after_the_duration_of_inactivity(catalog: str) -> None:
    clock = Clock()
    e = engine(catalog, clock=clock)
    first = ask(e, "s", 0)
    clock.now += 599.0  # within 10m: pinned, and the 10m start again from here
    assert affinity(ask(e, "s", 1))["pinned"] is True
    clock.now += 599.0
    assert affinity(ask(e, "s", 2))["pinned"] is True
    ask(e, None, 3)  # round-robin's turn moves on: the next new session goes elsewhere
    clock.now += 601.0  # quiet for more than 10m: a new session
    d = ask(e, "s", 4)
    assert affinity(d) == {
        "key_hash": affinity(first)["key_hash"], "pinned": False, "broken": None,
        "cached_tokens": 0,
    }  # fmt: skip
    assert where(d) != where(first)  # the strategy chose again (round-robin moved on)
    clock.now += 1.0
    assert where(ask(e, "s", 5)) == where(d)  # and the new choice is pinned


def test_a_dry_run_reads_pins_and_neither_creates_nor_moves_them(catalog: str) -> None:
    e = engine(catalog)
    dry = e.evaluate({"id": "d", "metadata": {"session_id": "s"}}, dry_run=True)
    assert affinity(dry)["pinned"] is False
    assert len(e._state.pins) == 0
    real = ask(e, "s", 1)
    assert len(e._state.pins) == 1
    again = e.evaluate({"id": "d2", "metadata": {"session_id": "s"}}, dry_run=True)
    assert affinity(again)["pinned"] is True and where(again) == where(real)


# ---------------------------------------------------------------- breaking


def test_a_cooldown_breaks_the_pin_for_health_and_the_pin_moves(catalog: str) -> None:
    clock = Clock()
    e = engine(catalog, clock=clock)
    first = ask(e, "s", 0)
    for _ in range(3):  # three failures in a row: 30 s of cooldown
        e.record_outcome(first.provider or "", first.model or "", latency_ms=100, success=False)
    clock.now += 1.0
    d = ask(e, "s", 1)
    assert affinity(d)["broken"] == "health" and affinity(d)["pinned"] is False
    assert where(d) != where(first)
    assert "broken" in d.reason and where(first) in d.reason
    clock.now += 60.0  # the cooldown is over, but the pin moved with the session
    after = ask(e, "s", 2)
    assert affinity(after)["pinned"] is True and where(after) == where(d)


def test_a_request_the_pinned_model_cannot_serve_breaks_the_pin(catalog: str) -> None:
    e = engine(catalog)
    ask(e, None, 0)  # round-robin's first turn goes to a/m1: the session starts on b/m2
    first = ask(e, "s", 1)
    assert where(first) == "b/m2"  # no vision
    d = ask(e, "s", 2, requires_vision=True)
    assert affinity(d)["broken"] == "ineligible"
    assert where(d) in ("a/m1", "c/m3")
    explained = e.evaluate(
        {"id": "x", "metadata": {"session_id": "s"}, "requires_vision": True},
        explain=True,
        dry_run=True,
    )
    step = next(s for s in explained.trace or () if s["step"] == "affinity")
    assert step["pinned"] is True and step["pin"] == where(d)  # the pin moved with it


def test_a_limit_on_the_pinned_model_breaks_the_pin(catalog: str) -> None:
    body = ROUTE + '\nlimit model "a/m1" 2 per 1h\n'
    e = engine(catalog, body)
    first = ask(e, "s", 0)
    assert where(first) == "a/m1"
    assert affinity(ask(e, "s", 1))["pinned"] is True  # the limit's second request
    d = ask(e, "s", 2)
    assert d.allowed and where(d) != "a/m1"
    assert affinity(d)["broken"] == "limit" and affinity(d)["pinned"] is False
    assert "rate limit" in d.reason
    assert affinity(ask(e, "s", 3))["pinned"] is True  # pinned where it moved


def test_the_explain_output_says_what_affinity_did(catalog: str) -> None:
    e = engine(catalog)
    ask(e, "s", 0)
    d = e.evaluate({"id": "x", "metadata": {"session_id": "s"}}, explain=True)
    (step,) = [s for s in d.trace or () if s["step"] == "affinity"]
    assert step["by"] == "request.metadata.session_id" and step["pinned"] is True


# ---------------------------------------------------------------- cache-aware cost


def test_a_pinned_request_prices_what_the_session_sent_at_the_cache_read_price(
    catalog: str,
) -> None:
    e = engine(catalog)
    first = ask(e, "s", 0, input_tokens=10_000)
    assert where(first) == "a/m1"  # $3 in, $0.30 cached in, $15 out per 1M tokens
    assert first.estimated_cost == pytest.approx((10_000 * 3.00 + 500 * 15.00) / 1e6)
    second = ask(e, "s", 1, input_tokens=12_000)  # 10,000 of them sent before
    assert affinity(second)["cached_tokens"] == 10_000
    assert second.estimated_cost == pytest.approx(
        (2_000 * 3.00 + 10_000 * 0.30 + 500 * 15.00) / 1e6
    )
    third = ask(e, "s", 2, input_tokens=4_000)  # a shorter prompt: all of it at most
    assert third.estimated_cost == pytest.approx((4_000 * 0.30 + 500 * 15.00) / 1e6)
    stated = ask(e, "s", 3, input_tokens=12_000, cached_tokens=1_000)  # the caller knows
    assert affinity(stated)["cached_tokens"] == 0
    assert stated.estimated_cost == pytest.approx(
        (11_000 * 3.00 + 1_000 * 0.30 + 500 * 15.00) / 1e6
    )


def test_a_model_without_a_cache_read_price_is_priced_as_before(catalog: str) -> None:
    e = engine(catalog)
    ask(e, None, 0)
    first = ask(e, "s", 1)
    assert where(first) == "b/m2"  # no cached_input price in the catalog
    second = ask(e, "s", 2)
    assert affinity(second)["pinned"] is True and affinity(second)["cached_tokens"] == 0
    assert second.estimated_cost == first.estimated_cost


# ---------------------------------------------------------------- routes without affinity


def test_a_route_without_affinity_decides_as_before(catalog: str) -> None:
    with_pins = compile_sources([("p", catalog + ROUTE)]).program
    without = compile_sources([("p", catalog + ROUTE.replace("affinity", "# affinity"))]).program
    state_a, state_b = EvalState(), EvalState()
    for i in range(60):
        env = env_of({"id": f"r{i}", "input_tokens": 1000, "metadata": {"session_id": "s"}})
        plain = evaluate(without, env, state=state_b, now=START + i)
        assert "affinity" not in plain.to_dict()
        assert plain.affinity is None
        pinned = evaluate(with_pins, env, state=state_a, now=START + i)
        assert pinned.affinity is not None
    assert len(state_b.pins) == 0 and len(state_a.pins) == 1


def test_the_pin_table_is_bounded_and_drops_the_least_recently_used() -> None:
    table = PinTable(max_entries=3)
    for i in range(5):
        table.put(("r", i), Pin("a/m1", START + i, START + 1e6, 10.0))
    assert len(table) == 3
    assert table.get(("r", 0)) is None and table.get(("r", 1)) is None
    table.put(("r", 2), Pin("a/m1", START + 9, START + 1e6, 10.0))  # used again: kept
    table.put(("r", 9), Pin("a/m1", START + 10, START + 1e6, 10.0))
    assert table.get(("r", 2)) is not None and table.get(("r", 3)) is None
    with pytest.raises(ValueError):
        PinTable(0)


def test_expired_pins_at_the_front_are_dropped_as_new_ones_come() -> None:
    table = PinTable()
    table.put(("r", "old"), Pin("a/m1", START, START + 60, 10.0))
    table.put(("r", "new"), Pin("a/m1", START + 61, START + 121, 10.0))
    assert table.get(("r", "old")) is None and len(table) == 1


def test_the_engine_takes_a_bound_on_its_pins(catalog: str) -> None:
    e = PolicyEngine.from_text(catalog + ROUTE, clock=Clock(), affinity_pins=2)
    for n in range(5):
        ask(e, f"s{n}", n)
    assert len(e._state.pins) == 2


# ---------------------------------------------------------------- the language


def test_affinity_parses_checks_and_formats_in_defaults_and_routes(catalog: str) -> None:
    text = (
        catalog
        + "defaults {\n    affinity   by request.user for 1h\n}\n"
        + "route r {\n    affinity by request.metadata.session_id  for 30m\n}\n"
    )
    program = compile_sources([("p", text)]).program
    assert program.default_route.settings.affinity is not None
    assert program.default_route.settings.affinity.ttl_ms == 3_600_000.0
    route = program.by_name["r"].settings.affinity
    assert route is not None and route.key_text == "request.metadata.session_id"
    assert route.ttl_ms == 1_800_000.0
    formatted = format_text(text)
    assert "    affinity by request.user for 1h\n" in formatted
    assert "    affinity by request.metadata.session_id for 30m\n" in formatted
    assert format_text(formatted) == formatted


@pytest.mark.parametrize(
    ("setting", "code", "hint"),
    [
        ("affinity by model.provider for 30m", "E0280", "request.metadata.session_id"),
        ("affinity by request for 30m", "E0280", None),
        ("affinity by request.tags for 30m", "E0280", "a list"),
        ("affinity by request.metdata.session_id for 30m", "E0324", "request.metadata"),
        ("affinity by request.usr for 30m", "E0324", "request.user"),
        ("affinity by request.user for 30", "E0281", "30m"),
        ("affinity by request.user for 0s", "E0281", None),
        ("affinity by request.user for 50%", "E0281", None),
    ],
)
def test_the_checker_names_a_bad_affinity(
    catalog: str, setting: str, code: str, hint: str | None
) -> None:
    with pytest.raises(PolicyError) as err:
        compile_sources([("p", catalog + f"route r {{\n    {setting}\n}}\n")])
    codes = [d.code for d in err.value.diagnostics]
    assert codes == [code], str(err.value)
    if hint is not None:
        assert hint in str(err.value)


def test_affinity_twice_in_a_block_is_refused(catalog: str) -> None:
    text = "route r {\n    affinity by request.user for 1m\n    affinity by request.ip for 1m\n}\n"
    with pytest.raises(PolicyError) as err:
        compile_sources([("p", catalog + text)])
    assert [d.code for d in err.value.diagnostics] == ["E0203"]


def test_eval_shows_the_affinity_row_and_trace(catalog: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    policy = tmp_path / "a.policy"
    policy.write_text(catalog + ROUTE, encoding="utf-8")
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"id": "r", "metadata": {"session_id": "s"}}))
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "--policy", str(policy), "--state",
         "memory://", "--format", "table", "--explain", str(request)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = out.stdout.splitlines()
    assert any(r.split() == ["affinity", "not", "pinned"] for r in rows), out.stdout
    assert any("affinity by request.metadata.session_id: no live pin" in r for r in rows), (
        out.stdout
    )
