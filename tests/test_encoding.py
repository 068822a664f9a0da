"""JSON in and out: `Decision.to_json()` is `to_dict()` encoded (integral numbers as
integers), a string it cannot encode falls back rather than fails, and the msgspec readers
of `policyctl eval` and the service read what `json.loads` reads, to the same values.

Real engines on the design catalog; no wall-clock assertions.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.cli.eval_cmd import _loads
from engine.limits.records import LimitDenial, LimitStatus
from engine.routing import decision as decision_module
from engine.routing.decision import (
    _ALTERNATIVES,
    _CACHED,
    AffinityOutcome,
    Alternative,
    Decision,
    DroppedCandidate,
    NoEligibleModel,
    _alternatives_json,
    _integral_float_in,
    _integral_numbers,
    _integral_tree,
    _round3,
    _statuses_json,
    _trace_json,
)
from engine.service.body import BodyError, _parse
from tests._design import design_engine, from_design

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = ROOT / "examples" / "requests"

TIGHT = """
defaults { strategy weighted(latency: 50%, cost: 50%) fallback claude, gemini, openai }
route cheap when request.max_cost <= $0.01 { strategy cost }
route quick when request.max_latency_ms <= 2s { strategy latency }
limit user 3 per 1m burst 3
limit ip 2 per 1m
limit global 1000 per 1h
limit user tokens 20000 per 1h
limit user spend $0.5 per 1d
"""


def _requests() -> list[dict[str, Any]]:
    """Every example request, and a spread of users, IPs, budgets and prompts."""
    found: list[dict[str, Any]] = []
    for path in sorted(REQUESTS.iterdir()):
        if path.suffix == ".json":
            found.append(json.loads(path.read_text(encoding="utf-8")))
        elif path.suffix == ".jsonl":
            lines = path.read_text(encoding="utf-8").splitlines()
            found += [json.loads(line) for line in lines if line.strip()]
    for i in range(60):
        request: dict[str, Any] = {"id": f"e{i}", "user": f"u{i % 4}", "ip": f"10.0.0.{i % 3}"}
        if i % 2:
            request["messages"] = [{"role": "user", "content": "naïve café ✓ " * (i + 1)}]
        else:
            request["prompt"] = "x" * (i * 37)
        if i % 5 == 0:
            request["max_cost"] = 0.005
        if i % 7 == 0:
            request["max_latency_ms"] = 1500
        found.append(request)
    return found


def _decisions() -> list[Decision]:
    decisions = []
    for engine in (design_engine(state="memory://"), from_design(TIGHT, state="memory://")):
        try:
            for explain in (False, True):
                for request in _requests():
                    decisions.append(engine.evaluate(dict(request), explain=explain))
        finally:
            engine.close()
    return decisions


DECISIONS = _decisions()


def _numbers(value: Any) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [value]
    if isinstance(value, dict):
        return [n for item in value.values() for n in _numbers(item)]
    if isinstance(value, list):
        return [n for item in value for n in _numbers(item)]
    return []


def test_the_decisions_cover_allowed_denied_limits_and_traces() -> None:
    assert any(d.allowed and d.alternatives and d.fallbacks for d in DECISIONS)
    assert any(not d.allowed and d.denied_by is not None for d in DECISIONS)
    assert any(len(d.rate_limits) >= 3 for d in DECISIONS)
    assert any(d.trace for d in DECISIONS)
    assert any(d.input_format != "native" for d in DECISIONS)


def test_to_json_parses_to_exactly_to_dict() -> None:
    for decision in DECISIONS:
        fields = decision.to_dict()
        assert json.loads(decision.to_json()) == fields
        # and with the same types: an integral number is an int on both sides
        again = json.loads(decision.to_json())
        assert [type(n) for n in _numbers(again)] == [type(n) for n in _numbers(fields)]


def test_integral_numbers_are_integers_and_keep_their_values() -> None:
    integral = 0
    for decision in DECISIONS:
        fields = decision.to_dict()
        shown = [fields["estimated_cost"], fields["estimated_latency_ms"], fields["confidence"]]
        held = [decision.estimated_cost, decision.estimated_latency_ms, decision.confidence]
        for status, row in zip(decision.rate_limits, fields["rate_limits"], strict=True):
            shown += [row["remaining"], row["limit"], row["retry_after_ms"]]
            held += [status.remaining, status.limit, status.retry_after_ms]
            if status.reset_at is not None:
                shown.append(row["reset_at"])
                held.append(round(status.reset_at, 3))
        for alternative, row in zip(decision.alternatives, fields["alternatives"], strict=True):
            shown.append(row["score"])
            held.append(alternative.score)
        for value, original in zip(shown, held, strict=True):
            assert value == original or (value is None and original is None)
            if isinstance(value, float):
                assert not value.is_integer() or not math.isfinite(value), value
            elif isinstance(original, float):
                integral += 1
    assert integral > 0  # some float held was integral, and was written as an int


def test_no_number_anywhere_in_a_decision_is_an_integral_float() -> None:
    """The explain trace too: a ranking's score of 1.0 or a denial's retry_after_ms of
    60000.0 inside a trace step is written as an integer."""
    traced = [d for d in DECISIONS if d.trace]
    assert traced
    floats_in_traces = 0
    for decision in DECISIONS:
        again = json.loads(decision.to_json())
        for value in _numbers(again):
            assert not (isinstance(value, float) and value.is_integer()), value
        floats_in_traces += sum(isinstance(n, float) for n in _numbers(decision.trace or []))
    assert floats_in_traces > 0  # the traces carry numbers, so the walk had work to do


def test_to_json_is_the_bytes_of_to_dict_encoded() -> None:
    """`to_json()` encodes a struct built from the decision, not `to_dict()`: the bytes
    are those of `to_dict()` encoded, key order and integral numbers included."""
    encode = msgspec.json.Encoder().encode
    for decision in DECISIONS:
        assert decision.to_json() == encode(decision.to_dict())


def test_every_optional_field_encodes_as_to_dict_has_it() -> None:
    base = next(d for d in DECISIONS if d.allowed and d.rate_limits and d.alternatives)
    trace: list[dict[str, Any]] = [
        {"step": "choose", "ranking": [{"model": "m", "score": 2.0}, {"score": 0.25}]},
        {"step": "x", "nested": [[1.0, (3.0, "a")], {"deep": {"n": -4.0, "b": True}}]},
    ]
    shadow = replace(base, request_id="shadow", trace=list(trace), estimated_cost=3.0)
    full = replace(
        base,
        deployment_of="catalog-model",
        experiment="exp",
        arm=None,
        explored=True,
        affinity=AffinityOutcome("h", True, None, 12.0),
        shadow_denials=(LimitDenial("user", "u", "requests", 1000),),
        input_format="openai",
        trace=trace,
        shadow=shadow,
        denied_by=NoEligibleModel((DroppedCandidate("p", "m", "health"),)),
    )
    encode = msgspec.json.Encoder().encode
    for decision in (full, replace(full, trace=None), replace(full, experiment=None)):
        assert decision.to_json() == encode(decision.to_dict())
    fields = json.loads(full.to_json())
    assert list(fields)[-9:] == [
        "deployment_of", "experiment", "arm", "explored", "affinity", "shadow_denials",
        "input_format", "trace", "shadow",
    ]  # fmt: skip
    assert fields["trace"][1]["nested"] == [[1, [3, "a"]], {"deep": {"n": -4, "b": True}}]
    assert fields["shadow"]["estimated_cost"] == 3


@settings(max_examples=2000, deadline=None)
@given(
    st.floats(min_value=0, max_value=1e13)
    | st.integers(0, 2 * 10**12).map(lambda n: n / 1000)
    | st.integers(0, 2 * 10**12).map(lambda n: (n + 0.5) / 1000)  # ties and near ties
    | st.integers(0, 2 * 10**12).map(lambda n: math.nextafter((n + 0.5) / 1000, math.inf))
    | st.integers(0, 2 * 10**9)
)
def test_a_status_reset_at_is_rounded_as_round_does(x: float) -> None:
    assert repr(_round3(x)) == repr(round(x, 3))


def test_an_alternative_is_encoded_once_not_per_decision() -> None:
    """The alternatives of a route's decisions are spliced from fragments encoded once:
    after the first decisions, hundreds more (distinct ids, users, IPs, prompts) encode
    none, and a second engine on the same policy and catalog (a reload) finds them too."""
    requests = [
        {
            "id": f"c{i}",
            "user": f"user-{i}",
            "ip": f"10.1.{i % 250}.{i % 7}",
            "prompt": "hi " * (i % 5),
        }
        for i in range(300)
    ]
    for attempt in range(2):  # the second engine: the fragments it needs are kept
        engine = design_engine(state="memory://")
        try:
            for request in requests[:20]:
                engine.evaluate(dict(request)).to_json()
            warm = _ALTERNATIVES.made
            encoded = []
            for request in requests[20:]:
                decision = engine.evaluate(dict(request))
                encoded.append(decision.to_json())
                assert decision.alternatives
                assert encoded[-1] == msgspec.json.encode(decision.to_dict())
            assert _ALTERNATIVES.made == warm, attempt  # 280 decisions, no alternative encoded
        finally:
            engine.close()


def test_the_fragments_stay_bounded_and_right_past_their_bound() -> None:
    alternatives = [Alternative("p", f"m{i}", i / 7) for i in range(_CACHED + 50)]
    for a in alternatives:
        (raw,) = _alternatives_json([a])
        assert json.loads(bytes(raw)) == a.to_dict()
        assert len(_ALTERNATIVES.table) <= _CACHED
    # the score's type is part of the key: a bool never reads an int's fragment
    for score in (1, 1.0, True):
        (raw,) = _alternatives_json([Alternative("p", "m", score)])  # type: ignore[arg-type]
        assert bytes(raw) == msgspec.json.encode(Alternative("p", "m", score).to_dict())  # type: ignore[arg-type]


_near = (
    st.integers(1, 4 * 10**12).map(lambda n: n / 1000)
    | st.integers(1, 4 * 10**9).map(float)  # whole seconds: shown as ints
    | st.floats(1e-3, 1e13)
)


@settings(max_examples=1500, deadline=None)
@given(
    _near,
    st.lists(
        st.floats(-1.0, 1.0) | st.sampled_from([0.4899, 0.49, 0.4901, 0.5, -0.49, -0.5]),
        min_size=1,
        max_size=4,
    ),
)
def test_a_status_reset_at_kept_from_the_last_is_the_one_to_dict_shows(
    base: float, offsets_ms: list[float]
) -> None:
    """`_statuses_json` reuses the last `reset_at`'s rounding for values within 0.49 ms
    of it: each status still encodes as its `to_dict()` does, ties and near ties included,
    whatever the previous example left kept."""
    statuses = [
        LimitStatus("user", "u", "requests", True, 3.0, 5.0, base + off / 1000, None)
        for off in [0.0, *offsets_ms]
    ]
    encode = msgspec.json.Encoder().encode
    for status, row in zip(statuses, _statuses_json(statuses), strict=True):
        assert encode(row) == encode(_integral_numbers(status.to_dict()))


def test_a_decision_s_limits_share_one_reset_at_rounding() -> None:
    """Limits checked microseconds apart round to the same ms: the first computes it, the
    others find it kept (their values lie in the kept range) and show the same value."""
    base = 1796226278.7495822
    statuses = [
        LimitStatus("user", "u", "requests", True, 3.0, 5.0, base + i * 4e-7, None)
        for i in range(4)
    ]
    rows = _statuses_json(statuses)
    lo, hi, shown = decision_module._last_reset[:3]
    assert all(lo < s.reset_at < hi for s in statuses)  # type: ignore[operator]
    assert all(row.reset_at is shown for row in rows)  # the one kept value, four times
    assert shown == 1796226278.75


def test_a_lone_surrogate_falls_back_to_escaped_json() -> None:
    decision = Decision(
        request_id="\ud800",
        allowed=True,
        provider="p\udfff",
        model="m",
        route="default",
        strategy="cost",
        reason="r",
        estimated_cost=1.0,
        estimated_latency_ms=None,
        confidence=0.5,
        alternatives=[Alternative("p", "m2", 1.0)],
    )
    encoded = decision.to_json()
    assert encoded.isascii()
    assert b"\\ud800" in encoded
    assert json.loads(encoded) == decision.to_dict()
    assert json.loads(encoded)["estimated_cost"] == 1
    assert isinstance(json.loads(encoded)["alternatives"][0]["score"], int)


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(codec=None), max_size=12)  # lone surrogates included
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
_texts = st.one_of(
    _values.map(json.dumps),  # ASCII: lone surrogates as \\udXXX
    _values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    st.sampled_from(["NaN", "1e400", "[1,", "{} x", '"\\ud800"', "[" * 3000 + "]" * 3000, "01"]),
)


def _outcome(read: Any, text: str) -> tuple[str, Any]:
    try:
        return "ok", read(text)
    except (ValueError, RecursionError) as err:
        return "error", f"{type(err).__name__}: {err}"


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types at every depth (1 and 1.0 differ; NaN is itself)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@settings(max_examples=300, deadline=None)
@given(_texts)
def test_eval_reads_lines_as_json_loads_does(text: str) -> None:
    ours, theirs = _outcome(_loads, text), _outcome(json.loads, text)
    assert ours[0] == theirs[0]
    assert _same(ours[1], theirs[1]) if ours[0] == "ok" else ours[1] == theirs[1]


@settings(max_examples=300, deadline=None)
@given(_texts)
def test_the_service_reads_bodies_as_json_loads_does(text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    try:
        theirs: tuple[str, Any] = ("ok", json.loads(raw.decode("utf-8")))
    except (ValueError, RecursionError):
        theirs = ("error", None)
    try:
        ours: tuple[str, Any] = ("ok", _parse(raw, allow_empty=False))
    except BodyError as err:
        ours = ("error", err.status)
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        assert _same(ours[1], theirs[1])
    else:
        assert ours[1] == 400


@settings(max_examples=500, deadline=None)
@given(_values)
def test_a_trace_encoded_as_it_is_only_when_the_walk_would_change_no_byte(value: Any) -> None:
    """`to_json` skips the trace walk when the check finds no integral float in msgspec's
    bytes: whenever it does, the walked copy encodes to the same bytes."""
    encode = msgspec.json.Encoder().encode
    try:
        raw = encode(value)
    except (ValueError, TypeError):  # a lone surrogate: to_json's fallback
        return
    if not _integral_float_in(raw):
        assert encode(_integral_tree(value)) == raw
    for x in (1.0, -0.0, 1e16, 2.5e20, 1e308):
        assert _integral_float_in(encode([value, x]))


def test_the_decisions_take_both_trace_paths() -> None:
    traced = [_trace_json(d.trace) for d in DECISIONS if d.trace]
    assert any(isinstance(t, msgspec.Raw) for t in traced)
    assert any(not isinstance(t, msgspec.Raw) for t in traced)


@pytest.mark.parametrize("digits", [19, 20, 40, 4000])
def test_integers_past_64_bits_stay_integers(digits: int) -> None:
    text = '{"n": %s}' % ("9" * digits)
    assert _loads(text) == {"n": int("9" * digits)}
    assert _parse(text.encode(), allow_empty=False) == {"n": int("9" * digits)}
