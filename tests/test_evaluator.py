"""The evaluator: route selection, capability filtering, denials, traces and conditions.

Figures are worked out by hand from policies/models.yaml (USD per 1M tokens, p95 priors):

    model                        input  output  p95 ms  ctx      max_tokens  vision json  regions
    claude-3-5-sonnet-20241022    3.00   15.00    2400  200000   8192        yes    yes   us eu
    claude-3-opus-20240229       15.00   75.00    5200  200000   4096        yes    yes   us eu
    claude-3-sonnet-20240229      3.00   15.00    2700  200000   4096        yes    yes   us eu
    claude-3-haiku-20240307       0.25    1.25    1000  200000   4096        yes    yes   us eu
    gemini-1.5-pro-latest         1.25    5.00    2800  2097152  8192        yes    yes   us eu
    gemini-1.5-flash-latest       0.075   0.30     850  1048576  8192        yes    yes   us eu
    gemini-1.0-pro                0.50    1.50    1800  32760    8192        no     no    us eu
    gpt-4-turbo-preview          10.00   30.00    3800  128000   4096        yes    yes   us
    gpt-4                        30.00   60.00    5500  8192     8192        no     yes   us
    gpt-3.5-turbo                 0.50    1.50    1200  16385    4096        no     yes   us
    gpt-4o                        2.50   10.00    1900  128000   16384       yes    yes   us eu
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from _design import from_design

from engine import Decision, PolicyEngine

SONNET = "claude-3-5-sonnet-20241022"
OPUS = "claude-3-opus-20240229"
SONNET_3 = "claude-3-sonnet-20240229"
HAIKU = "claude-3-haiku-20240307"
PRO = "gemini-1.5-pro-latest"
FLASH = "gemini-1.5-flash-latest"
GEMINI_1 = "gemini-1.0-pro"
TURBO = "gpt-4-turbo-preview"
GPT4 = "gpt-4"
GPT35 = "gpt-3.5-turbo"
GPT4O = "gpt-4o"

CATALOG_ORDER = [
    ("claude", SONNET),
    ("claude", OPUS),
    ("claude", SONNET_3),
    ("claude", HAIKU),
    ("gemini", PRO),
    ("gemini", FLASH),
    ("gemini", GEMINI_1),
    ("openai", TURBO),
    ("openai", GPT4),
    ("openai", GPT35),
    ("openai", GPT4O),
]
US_ONLY = {TURBO, GPT4, GPT35}
REPO = Path(__file__).resolve().parent.parent
FIXED_CLOCK = 1_800_000_000.0  # 2027-01-15: epoch seconds, so nothing reads the wall clock


def clock() -> float:
    return FIXED_CLOCK


def engine(text: str) -> PolicyEngine:
    return from_design(text, clock=clock)


def ranking(d: Decision) -> list[tuple[str, str]]:
    """The full ranking from an explain trace's `choose` step."""
    assert d.trace is not None
    (choose,) = [s for s in d.trace if s["step"] == "choose"]
    return [(r["provider"], r["model"]) for r in choose["ranking"]]


def drops(d: Decision) -> list[tuple[str, str]]:
    assert d.trace is not None
    return [(s["model"], s["because"]) for s in d.trace if s["step"] == "drop"]


def denied(d: Decision) -> list[tuple[str, str, str]]:
    assert not d.allowed
    assert d.denied_by is not None and d.denied_by["reason"] == "no_eligible_model"
    return [(c["provider"], c["model"], c["dropped_because"]) for c in d.denied_by["candidates"]]


# ---------------------------------------------------------------- route selection


def test_routes_are_tried_in_file_order_and_the_first_match_wins() -> None:
    policy = """
    route first when request.metadata.team == "x" { strategy cost }
    route second when request.metadata.team == "x" or request.metadata.team == "y" {
        strategy latency
    }
    """
    e = engine(policy)
    assert e.evaluate({"id": "r1", "metadata": {"team": "x"}}).route == "first"
    assert e.evaluate({"id": "r2", "metadata": {"team": "y"}}).route == "second"
    assert e.evaluate({"id": "r3", "metadata": {"team": "z"}}).route == "default"


def test_routes_across_files_go_by_file_name(tmp_path: Path) -> None:
    (tmp_path / "20-late.policy").write_text(
        'route late when request.metadata.team == "x" { strategy latency }\n', encoding="utf-8"
    )
    (tmp_path / "10-early.policy").write_text(
        'route early when request.metadata.team == "x" { strategy cost }\n', encoding="utf-8"
    )
    d = PolicyEngine(tmp_path, clock=clock).evaluate({"id": "f1", "metadata": {"team": "x"}})
    assert (d.route, d.strategy) == ("early", "cost")


def test_no_match_routes_by_defaults_over_the_whole_catalog() -> None:
    policy = """
    defaults { strategy cost }
    route never when request.metadata.team == "nobody" { strategy latency }
    """
    d = engine(policy).evaluate({"id": "d1", "input_tokens": 1000, "max_tokens": 100}, explain=True)
    assert (d.route, d.strategy) == ("default", "cost")
    assert d.model == FLASH
    assert d.reason == "Lowest estimated cost: $0.000105"  # (1000*0.075 + 100*0.30)/1e6
    assert d.trace is not None
    assert d.trace[:2] == [
        {
            "step": "route",
            "route": "never",
            "when": 'request.metadata.team == "nobody"',
            "matched": False,
        },
        {"step": "route", "route": "default", "when": None, "matched": True},
    ]
    # all 11 models, cheapest first (1000 input, 100 output):
    #   flash 0.000105, haiku 0.000375, gpt-3.5 = gemini-1.0 0.00065 (tie: lower latency
    #   first, 1200 < 1800), pro 0.00175, gpt-4o 0.0035, sonnet 3.5 = sonnet 3 0.0045
    #   (2400 < 2700), turbo 0.013, opus 0.0225, gpt-4 0.036
    assert ranking(d) == [
        ("gemini", FLASH),
        ("claude", HAIKU),
        ("openai", GPT35),
        ("gemini", GEMINI_1),
        ("gemini", PRO),
        ("openai", GPT4O),
        ("claude", SONNET),
        ("claude", SONNET_3),
        ("openai", TURBO),
        ("claude", OPUS),
        ("openai", GPT4),
    ]


def test_default_route_denial_lists_the_whole_catalog() -> None:
    d = engine("defaults { strategy cost }").evaluate(
        {"id": "d2", "input_tokens": 1000, "max_tokens": 100, "max_cost": 0}
    )
    assert d.route == "default"
    assert d.reason == "No eligible model: all 11 candidates of route `default` were dropped"
    # (1000 * input + 100 * output) / 1e6 for each model, in catalog order
    costs = [
        "$0.0045",  # 3000 + 1500
        "$0.0225",  # 15000 + 7500
        "$0.0045",
        "$0.000375",  # 250 + 125
        "$0.00175",  # 1250 + 500
        "$0.000105",  # 75 + 30
        "$0.00065",  # 500 + 150
        "$0.013",  # 10000 + 3000
        "$0.036",  # 30000 + 6000
        "$0.00065",
        "$0.0035",  # 2500 + 1000
    ]
    assert denied(d) == [
        (p, m, f"estimated cost {c} exceeds max_cost $0")
        for (p, m), c in zip(CATALOG_ORDER, costs, strict=True)
    ]


# ---------------------------------------------------------------- capability filtering

COST_ALL = "defaults { strategy cost }"


def test_vision_need_drops_models_without_vision() -> None:
    d = engine(COST_ALL).evaluate(
        {"id": "v1", "input_tokens": 10, "requires_vision": True}, explain=True
    )
    assert d.model == FLASH
    assert drops(d) == [
        (GEMINI_1, "does not support vision"),
        (GPT4, "does not support vision"),
        (GPT35, "does not support vision"),
    ]
    assert len(ranking(d)) == 8


def test_json_need_drops_models_without_json() -> None:
    d = engine(COST_ALL).evaluate(
        {"id": "j1", "input_tokens": 10, "requires_json": True}, explain=True
    )
    assert drops(d) == [(GEMINI_1, "does not support json")]


CAPS_CATALOG = """
models:
  - id: full
    provider: acme
    context_window: 100000
    max_tokens: 4096
    supports: [streaming, tools, vision, json]
    pricing: {input: 2.00, output: 4.00}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: bare
    provider: basic
    context_window: 100000
    max_tokens: 4096
    supports: []
    pricing: {input: 1.00, output: 2.00}
    latency_prior_ms: {p50: 500, p95: 1000}
"""


@pytest.mark.parametrize(
    ("needs", "because"),
    [
        ({"requires_tools": True}, "does not support tools"),
        ({"stream": True}, "does not support streaming"),
        ({"requires_json": True}, "does not support json"),
        ({"requires_vision": True}, "does not support vision"),
        # several needs: the first missing one, in the order vision, tools, json, streaming
        ({"stream": True, "requires_tools": True}, "does not support tools"),
        ({"stream": True, "requires_json": True}, "does not support json"),
    ],
)
def test_tools_and_streaming_needs(tmp_path: Path, needs: dict[str, bool], because: str) -> None:
    catalog = tmp_path / "caps.yaml"
    catalog.write_text(CAPS_CATALOG, encoding="utf-8")
    e = engine(f'catalog "{catalog}"\ndefaults {{ strategy cost }}')
    # without needs the cheaper bare model wins: (1000*1 + 100*2)/1e6 < (1000*2 + 100*4)/1e6
    assert e.evaluate({"id": "c0", "input_tokens": 1000, "max_tokens": 100}).model == "bare"
    d = e.evaluate({"id": "c1", "input_tokens": 1000, "max_tokens": 100, **needs}, explain=True)
    assert (d.provider, d.model) == ("acme", "full")
    assert drops(d) == [("bare", because)]


def test_context_window_counts_input_plus_max_tokens() -> None:
    e = engine(COST_ALL)
    # 8000 + 500 = 8500 > 8192: gpt-4 is dropped
    d = e.evaluate({"id": "ctx1", "input_tokens": 8000, "max_tokens": 500}, explain=True)
    assert drops(d) == [
        (GPT4, "needs 8500 tokens of context (input 8000 + max_tokens 500), the model has 8192")
    ]
    # 7692 + 500 = 8192: exactly the window, kept
    d = e.evaluate({"id": "ctx2", "input_tokens": 7692, "max_tokens": 500}, explain=True)
    assert drops(d) == []
    assert ("openai", GPT4) in ranking(d)
    # 16000 + 400 = 16400 > 16385 drops gpt-3.5-turbo as well
    d = e.evaluate({"id": "ctx3", "input_tokens": 16000, "max_tokens": 400}, explain=True)
    assert drops(d) == [
        (GPT4, "needs 16400 tokens of context (input 16000 + max_tokens 400), the model has 8192"),
        (
            GPT35,
            "needs 16400 tokens of context (input 16000 + max_tokens 400), the model has 16385",
        ),
    ]


def test_max_tokens_above_a_models_limit() -> None:
    e = engine(COST_ALL)
    d = e.evaluate({"id": "mt1", "input_tokens": 100, "max_tokens": 4097}, explain=True)
    because = "max_tokens 4097 exceeds the model's limit of 4096"
    assert drops(d) == [
        (OPUS, because),
        (SONNET_3, because),
        (HAIKU, because),
        (TURBO, because),
        (GPT35, because),
    ]
    # flash: (100*0.075 + 4097*0.30)/1e6 is still the cheapest
    assert d.model == FLASH
    assert d.estimated_cost == pytest.approx((100 * 0.075 + 4097 * 0.30) / 1e6)
    d = e.evaluate({"id": "mt2", "input_tokens": 100, "max_tokens": 4096}, explain=True)
    assert drops(d) == []
    # 8193 leaves only gpt-4o (16384); gpt-4 at 8192 is over on max_tokens first
    d = e.evaluate({"id": "mt3", "input_tokens": 100, "max_tokens": 8193})
    assert d.model == GPT4O


def test_max_cost_is_a_hard_limit_on_the_estimate() -> None:
    policy = """
    route r {
        strategy latency
        prefer claude/claude-3-haiku-20240307
        prefer gemini/gemini-1.5-pro-latest
    }
    """
    e = engine(policy)
    haiku = (1000 * 0.25 + 500 * 1.25) / 1e6  # 0.000875
    # equal to the limit: kept
    d = e.evaluate({"id": "mc1", "input_tokens": 1000, "max_tokens": 500, "max_cost": haiku})
    assert d.model == HAIKU
    assert d.estimated_cost == pytest.approx(haiku)
    # just below: dropped, and pro (1000*1.25 + 500*5)/1e6 = 0.00375 is over too
    d = e.evaluate({"id": "mc2", "input_tokens": 1000, "max_tokens": 500, "max_cost": 0.00087})
    assert denied(d) == [
        ("claude", HAIKU, "estimated cost $0.000875 exceeds max_cost $0.00087"),
        ("gemini", PRO, "estimated cost $0.00375 exceeds max_cost $0.00087"),
    ]
    # a budget that drops only pro: latency would prefer haiku anyway; check pro's text
    d = e.evaluate(
        {"id": "mc3", "input_tokens": 1000, "max_tokens": 500, "max_cost": 0.001}, explain=True
    )
    assert drops(d) == [(PRO, "estimated cost $0.00375 exceeds max_cost $0.001")]


def test_max_latency_is_a_hard_limit_on_the_estimate() -> None:
    policy = """
    route r {
        strategy cost
        prefer openai/gpt-3.5-turbo
        prefer claude/claude-3-haiku-20240307
    }
    """
    e = engine(policy)
    d = e.evaluate(
        {"id": "ml1", "input_tokens": 1000, "max_tokens": 500, "max_latency_ms": 1000}, explain=True
    )
    assert d.model == HAIKU  # 1000 ms == the limit: kept
    assert drops(d) == [(GPT35, "estimated latency 1200ms exceeds max_latency 1000ms")]
    d = e.evaluate({"id": "ml2", "input_tokens": 1000, "max_tokens": 500, "max_latency_ms": 999})
    assert denied(d) == [
        ("openai", GPT35, "estimated latency 1200ms exceeds max_latency 999ms"),
        ("claude", HAIKU, "estimated latency 1000ms exceeds max_latency 999ms"),
    ]


# rounding the request's limit for display must not produce "X exceeds X"
SONNET_ONLY = "route r {\n strategy cost\n prefer claude/claude-3-5-sonnet-20241022\n}"


def test_a_cost_limit_just_under_the_estimate_is_not_shown_equal_to_it() -> None:
    # sonnet: (1000*3.00 + 500*15.00)/1e6 = 0.0105 > 0.01049
    d = engine(SONNET_ONLY).evaluate(
        {"id": "sh1", "input_tokens": 1000, "max_tokens": 500, "max_cost": 0.01049}
    )
    (because,) = [c[2] for c in denied(d)]
    assert because.startswith("estimated cost $0.0105 exceeds max_cost ")
    assert because.endswith("exceeds max_cost $0.01049"), because


def test_a_latency_limit_just_under_the_estimate_is_not_shown_equal_to_it() -> None:
    # sonnet's p95 prior 2400 ms > 2399.6 ms
    d = engine(SONNET_ONLY).evaluate(
        {"id": "sh2", "input_tokens": 1000, "max_tokens": 500, "max_latency_ms": 2399.6}
    )
    (because,) = [c[2] for c in denied(d)]
    assert because == "estimated latency 2400ms exceeds max_latency 2399.6ms", because


# ---------------------------------------------------------------- denial

DENIAL_POLICY = """
route strict {
    strategy cost
    prefer gemini/gemini-1.0-pro
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-4
    prefer gemini/gemini-1.5-pro-latest
    prefer claude/claude-3-5-sonnet-20241022
    prefer openai/gpt-4o
    prefer openai/gpt-4-turbo-preview
    exclude openai/gpt-4o
    require model.id != "gpt-4-turbo-preview"
}
"""
DENIAL_REQUEST = {
    "id": "deny-1",
    "input_tokens": 4000,
    "max_tokens": 5000,
    "requires_json": True,
    "max_cost": 0.05,
    "max_latency_ms": 2000,
}
DENIAL_CANDIDATES = [
    # dropped when the policy was compiled, in preference order
    ("openai", GPT4O, "excluded by route `strict`"),
    ("openai", TURBO, 'fails `require model.id != "gpt-4-turbo-preview"`'),
    # dropped for this request, in preference order
    ("gemini", GEMINI_1, "does not support json"),
    ("claude", HAIKU, "max_tokens 5000 exceeds the model's limit of 4096"),
    # 4000 + 5000 = 9000 > 8192
    (
        "openai",
        GPT4,
        "needs 9000 tokens of context (input 4000 + max_tokens 5000), the model has 8192",
    ),
    # (4000*1.25 + 5000*5.00)/1e6 = 0.03 <= 0.05, but 2800 ms > 2000 ms
    ("gemini", PRO, "estimated latency 2800ms exceeds max_latency 2000ms"),
    # (4000*3.00 + 5000*15.00)/1e6 = 0.087 > 0.05
    ("claude", SONNET, "estimated cost $0.087 exceeds max_cost $0.05"),
]


def test_denial_lists_every_candidate_and_why() -> None:
    d = engine(DENIAL_POLICY).evaluate(DENIAL_REQUEST)
    assert d.allowed is False
    assert (d.provider, d.model) == (None, None)
    assert (d.route, d.strategy) == ("strict", "cost")
    assert d.reason == "No eligible model: all 7 candidates of route `strict` were dropped"
    assert d.estimated_cost is None
    assert d.estimated_latency_ms is None
    assert d.alternatives == []
    assert d.fallbacks == []
    assert denied(d) == DENIAL_CANDIDATES
    out = d.to_dict()
    assert out["denied_by"] == {
        "reason": "no_eligible_model",
        "candidates": [
            {"provider": p, "model": m, "dropped_because": b} for p, m, b in DENIAL_CANDIDATES
        ],
    }
    assert "trace" not in out


def test_denial_trace_has_every_drop_and_no_choice() -> None:
    d = engine(DENIAL_POLICY).evaluate(DENIAL_REQUEST, explain=True)
    assert d.trace == [
        {"step": "route", "route": "strict", "when": None, "matched": True},
        *(
            {"step": "drop", "provider": p, "model": m, "because": b}
            for p, m, b in DENIAL_CANDIDATES
        ),
    ]


# ---------------------------------------------------------------- explain


def test_explain_trace_records_routes_drops_and_the_choice() -> None:
    policy = """
    route a when request.metadata.team == "a" { strategy cost }
    route b when request.tags contains "b" {
        strategy latency
        prefer claude/claude-3-haiku-20240307
        prefer openai/gpt-3.5-turbo
        prefer openai/gpt-4
        prefer gemini/gemini-1.5-flash-latest
        exclude gemini/gemini-1.5-flash-latest
    }
    """
    request = {"id": "t1", "tags": ["b"], "input_tokens": 8000, "max_tokens": 500}
    d = engine(policy).evaluate(request, explain=True)
    assert d.model == HAIKU
    assert d.trace == [
        {"step": "route", "route": "a", "when": 'request.metadata.team == "a"', "matched": False},
        {"step": "route", "route": "b", "when": 'request.tags contains "b"', "matched": True},
        {
            "step": "drop",
            "provider": "gemini",
            "model": FLASH,
            "because": "excluded by route `b`",
        },
        {
            "step": "drop",
            "provider": "openai",
            "model": GPT4,
            "because": (
                "needs 8500 tokens of context (input 8000 + max_tokens 500), the model has 8192"
            ),
        },
        {
            "step": "choose",
            "strategy": "latency",
            "ranking": [
                {"provider": "claude", "model": HAIKU, "score": 1.0},
                {"provider": "openai", "model": GPT35, "score": round(1000 / 1200, 4)},
            ],
        },
    ]
    assert d.to_dict()["trace"] == d.trace
    # without explain: no trace at all
    plain = engine(policy).evaluate(request)
    assert plain.trace is None
    assert "trace" not in plain.to_dict()
    assert (plain.model, plain.reason) == (d.model, d.reason)


# ---------------------------------------------------------------- exclude and require


def test_exclude_and_static_require_shape_the_candidates() -> None:
    policy = """
    route eu {
        strategy cost
        require model.regions contains "eu"
        exclude gemini
    }
    """
    d = engine(policy).evaluate(
        {"id": "eu1", "input_tokens": 1000, "max_tokens": 100}, explain=True
    )
    fails = 'fails `require model.regions contains "eu"`'
    assert drops(d) == [
        (PRO, "excluded by route `eu`"),
        (FLASH, "excluded by route `eu`"),
        (GEMINI_1, "excluded by route `eu`"),
        (TURBO, fails),
        (GPT4, fails),
        (GPT35, fails),
    ]
    # left: sonnet 3.5, opus, sonnet 3, haiku, gpt-4o; cheapest haiku (250 + 125)/1e6
    assert d.model == HAIKU
    assert d.reason == "Lowest estimated cost: $0.000375"
    assert ranking(d) == [
        ("claude", HAIKU),
        ("openai", GPT4O),  # 0.0035
        ("claude", SONNET),  # 0.0045, 2400 ms
        ("claude", SONNET_3),  # 0.0045, 2700 ms
        ("claude", OPUS),  # 0.0225
    ]


def test_require_reading_the_request_is_evaluated_per_request() -> None:
    policy = """
    route regional {
        strategy cost
        require model.regions contains request.region
        prefer openai/gpt-3.5-turbo
        prefer openai/gpt-4o
        prefer claude/claude-3-5-sonnet-20241022
    }
    """
    e = engine(policy)
    base = {"input_tokens": 1000, "max_tokens": 100}
    # us: gpt-3.5-turbo (500 + 150)/1e6 is the cheapest
    assert e.evaluate({"id": "rg1", "region": "us", **base}).model == GPT35
    # eu: gpt-3.5-turbo is us-only; gpt-4o (2500 + 1000)/1e6 < sonnet (3000 + 1500)/1e6
    d = e.evaluate({"id": "rg2", "region": "eu", **base}, explain=True)
    assert d.model == GPT4O
    assert drops(d) == [(GPT35, "fails `require model.regions contains request.region`")]
    # the same engine again for us: nothing was cached from the eu request
    assert e.evaluate({"id": "rg3", "region": "us", **base}).model == GPT35
    # no region: null contains nothing, every candidate fails
    d = e.evaluate({"id": "rg4", **base})
    because = "fails `require model.regions contains request.region`"
    assert denied(d) == [
        ("openai", GPT35, because),
        ("openai", GPT4O, because),
        ("claude", SONNET, because),
    ]


# ---------------------------------------------------------------- conditions


@pytest.mark.parametrize(
    ("when", "fields", "matched"),
    [
        ('request.metadata.team == "x"', {"metadata": {"team": "x"}}, True),
        ('request.metadata.team == "x"', {"metadata": {"team": "y"}}, False),
        ('request.metadata.team == "x"', {}, False),
        ('request.metadata.team != "x"', {"metadata": {"team": "y"}}, True),
        ('request.metadata.team != "x"', {"metadata": {"team": "x"}}, False),
        # a missing field is null, and any comparison with null is false
        ('request.metadata.team != "x"', {}, False),
        ('request.region != "eu"', {}, False),
        ('request.region == "eu"', {}, False),
        ("request.max_tokens < 100", {}, False),
        ("request.max_tokens < 100", {"max_tokens": 50}, True),
        ("request.max_tokens >= 100", {}, False),
        ("request.metadata.level > 1", {}, False),
        ('request.region in ["eu", "us"]', {}, False),
        ('request.region in ["eu", "us"]', {"region": "eu"}, True),
        ('request.region not in ["eu"]', {}, False),
        ('request.region not in ["eu"]', {"region": "us"}, True),
        ('request.region contains "e"', {}, False),
        ('request.region contains "e"', {"region": "eu"}, True),
        ('request.metadata.team contains "x"', {}, False),
        ('request.metadata.team in ["a", "b"]', {"metadata": {"team": "b"}}, True),
        ('request.metadata.team in ["a", "b"]', {}, False),
        # presence tests
        ("request.region == null", {}, True),
        ("request.region == null", {"region": "eu"}, False),
        ("request.region != null", {}, False),
        ("request.region != null", {"region": "eu"}, True),
        ("request.metadata.team == null", {}, True),
        # not (…) of a false comparison with null is true
        ('not (request.region == "eu")', {}, True),
        ('not (request.region == "eu")', {"region": "eu"}, False),
        ('not (request.region == "eu")', {"region": "us"}, True),
        ("not (request.max_tokens < 100)", {}, True),
        # metadata values of another kind compare false, never raise
        ("request.metadata.level >= 3", {"metadata": {"level": 3}}, True),
        ("request.metadata.level >= 3", {"metadata": {"level": 2.5}}, False),
        ("request.metadata.level >= 3", {"metadata": {"level": "high"}}, False),
        # lists, booleans, units
        ('request.tags contains "beta"', {"tags": ["alpha", "beta"]}, True),
        ('request.tags contains "beta"', {}, False),
        ("request.requires_vision", {"requires_vision": True}, True),
        ("request.requires_vision", {}, False),
        ("request.max_cost <= $0.001", {"max_cost": 0.001}, True),
        ("request.max_cost <= $0.001", {"max_cost": 0.0011}, False),
        ("request.max_latency <= 2s", {"max_latency_ms": 2000}, True),
        ("request.max_latency <= 2s", {"max_latency_ms": 2001}, False),
        # the input token estimate: ceil(11 / 4) = 3
        ("request.input_tokens >= 3", {"prompt": "hello world"}, True),
        ("request.input_tokens >= 4", {"prompt": "hello world"}, False),
        # and / or
        ('request.user == "alice" and request.region == "eu"', {"user": "alice"}, False),
        (
            'request.user == "alice" and request.region == "eu"',
            {"user": "alice", "region": "eu"},
            True,
        ),
        ('request.user == "alice" or request.region == "eu"', {"region": "eu"}, True),
    ],
)
def test_conditions(when: str, fields: dict[str, Any], matched: bool) -> None:
    e = engine(f"route hit when {when} {{ strategy cost }}")
    d = e.evaluate({"id": "cond", **fields})
    assert d.route == ("hit" if matched else "default")


@pytest.mark.parametrize(
    ("when", "fields", "matched"),
    [
        ("request.metadata.flag == true", {"metadata": {"flag": True}}, True),
        ("request.metadata.flag == true", {"metadata": {"flag": 1}}, False),
        ("request.metadata.level == 1", {"metadata": {"level": True}}, False),
        ("request.metadata.level == 1", {"metadata": {"level": 1.0}}, True),
        ("request.metadata.level != 1", {"metadata": {"level": True}}, True),
        ("request.metadata.level in [1, 2]", {"metadata": {"level": 2}}, True),
        ("request.metadata.flag in [true]", {"metadata": {"flag": True}}, True),
        # `x in [a, b]` means `x == a or x == b`, and `true == 1` is false: so these must
        # agree with the `==` cases above
        ("request.metadata.level in [1, 2]", {"metadata": {"level": True}}, False),
        ("request.metadata.flag in [true]", {"metadata": {"flag": 1}}, False),
        ("request.metadata.flag not in [true]", {"metadata": {"flag": 1}}, True),
        # a boolean is not ordered against a number (like a string is not: "high" >= 3)
        ("request.metadata.level >= 1", {"metadata": {"level": True}}, False),
    ],
)
def test_booleans_are_not_numbers(when: str, fields: dict[str, Any], matched: bool) -> None:
    e = engine(f"route hit when {when} {{ strategy cost }}")
    d = e.evaluate({"id": "bool", **fields})
    assert d.route == ("hit" if matched else "default")


# ---------------------------------------------------------------- confidence and money


def test_confidence_with_no_samples_is_the_prior_confidence() -> None:
    d = engine(COST_ALL).evaluate({"id": "conf1", "input_tokens": 10})
    assert d.confidence == 0.25


def test_confidence_with_no_samples_stays_low_when_min_samples_is_zero() -> None:
    # `min_samples 0` says measurements count from the first sample; but with no samples at
    # all the decision still rests on catalog priors only, so it cannot be fully confident.
    d = engine("defaults {\n strategy cost\n min_samples 0\n}").evaluate(
        {"id": "conf2", "input_tokens": 10}
    )
    assert d.model == FLASH
    assert d.confidence == 0.25


def test_tiny_max_cost_is_shown_as_a_nonzero_amount() -> None:
    # flash with 0 input and 1 output token: 1 * 0.30 / 1e6 = $0.0000003; the request's
    # max_cost of $0.00000001 must not print as "$0." (nor as "$0": it is not zero)
    d = engine(COST_ALL).evaluate(
        {"id": "tiny", "input_tokens": 0, "max_tokens": 1, "max_cost": 1e-8}
    )
    flash = [c for c in denied(d) if c[1] == FLASH]
    assert len(flash) == 1
    assert re.fullmatch(r"estimated cost \$0\.0000003 exceeds max_cost \$0\.0*1", flash[0][2]), (
        flash[0][2]
    )


# ---------------------------------------------------------------- the SPEC §2 example

SPEC_EXAMPLE = """\
# policies/default.policy
catalog "models.yaml"                 # path relative to this file

defaults {
    strategy weighted(latency: 60%, cost: 40%)
    min_success_rate 80%              # providers below this (with enough samples) are skipped
    min_samples 100                   # below this, catalog priors stand in for measurements
    window 24h                        # metrics window for percentiles and success rate
    fallback claude, gemini, openai   # provider order for failover and for the fallback chain
}

route vision when request.requires_vision {
    strategy model-specific
    prefer claude/claude-3-5-sonnet-20241022  weight 40
    prefer gemini/gemini-1.5-pro-latest       weight 35
    prefer openai/gpt-4-turbo-preview         weight 25
}

route budget when request.max_cost <= $0.001 {
    strategy cost
    prefer gemini/gemini-1.5-flash-latest  weight 60
    prefer claude/claude-3-haiku-20240307  weight 30
    prefer openai/gpt-3.5-turbo            weight 10
}

route fast when request.max_latency <= 2s {
    strategy latency
    prefer gemini/gemini-1.5-flash-latest  weight 50
    prefer claude/claude-3-haiku-20240307  weight 30
    prefer openai/gpt-3.5-turbo            weight 20
}

route eu_only when request.region == "eu" {
    require model.regions contains "eu"      # a filter over catalog attributes
}

limit global              10000 per 1m burst 1000
limit user                100 per 1m burst 10
limit provider            1000 per 1m burst 100
limit ip                  50 per 1m burst 5
limit user "vip-user"     1000 per 1m burst 100 until 2026-12-28
limit user tokens         200k per 1m          # consumes the request's token estimate
limit user spend          $5 per 1d            # consumes the decision's estimated cost
limit team = request.metadata.team  500 per 1m when request.metadata.tier == "free"
"""


@pytest.fixture
def spec_engine(tmp_path: Path) -> PolicyEngine:
    shutil.copyfile(REPO / "examples" / "policies" / "models.yaml", tmp_path / "models.yaml")
    path = tmp_path / "example.policy"
    path.write_text(SPEC_EXAMPLE, encoding="utf-8")
    return PolicyEngine(path, clock=clock)


def test_spec_example_vision_request(spec_engine: PolicyEngine) -> None:
    # "req-0": blake2b-64 draw 0.3078 -> 30.78 of 100 -> sonnet (0–40)
    d = spec_engine.evaluate(
        {"id": "req-0", "user": "alice", "ip": "10.0.0.1", "requires_vision": True}
    )
    assert (d.route, d.strategy) == ("vision", "model-specific")
    assert (d.provider, d.model) == ("claude", SONNET)
    assert d.reason == "Preferred model drawn by weight: 40% share among 3 eligible"
    assert [(a.model, a.score) for a in d.alternatives] == [(PRO, 0.35), (TURBO, 0.25)]
    assert d.fallbacks == [
        {"provider": "gemini", "model": PRO},
        {"provider": "openai", "model": TURBO},
    ]


def test_spec_example_budget_request(spec_engine: PolicyEngine) -> None:
    d = spec_engine.evaluate(
        {"id": "b1", "user": "alice", "ip": "10.0.0.1", "input_tokens": 1000, "max_cost": 0.0005}
    )
    assert (d.route, d.strategy) == ("budget", "cost")
    # 256 output tokens: flash (1000*0.075 + 256*0.30)/1e6 = 0.0001518;
    # haiku (250 + 320)/1e6 = 0.00057 and gpt-3.5 (500 + 384)/1e6 = 0.000884 exceed 0.0005
    assert d.model == FLASH
    assert d.reason == "Lowest estimated cost: $0.0001518"
    assert d.estimated_cost == pytest.approx((1000 * 0.075 + 256 * 0.30) / 1e6)
    assert d.alternatives == []
    assert d.fallbacks == []
    d = spec_engine.evaluate(
        {"id": "b2", "user": "alice", "ip": "10.0.0.1", "input_tokens": 1000, "max_cost": 0.0005},
        explain=True,
    )
    assert drops(d) == [
        (HAIKU, "estimated cost $0.00057 exceeds max_cost $0.0005"),
        (GPT35, "estimated cost $0.000884 exceeds max_cost $0.0005"),
    ]


def test_spec_example_eu_request_never_gets_a_us_only_model(spec_engine: PolicyEngine) -> None:
    d = spec_engine.evaluate(
        {"id": "eu-1", "user": "alice", "ip": "10.0.0.1", "region": "eu", "input_tokens": 1000},
        explain=True,
    )
    assert (d.route, d.strategy) == ("eu_only", "weighted")
    fails = 'fails `require model.regions contains "eu"`'
    assert drops(d) == [(TURBO, fails), (GPT4, fails), (GPT35, fails)]
    # 8 eu models, 256 output tokens; max latency 5200 (opus),
    # max cost opus (1000*15 + 256*75)/1e6 = 0.0342
    max_cost = (1000 * 15.00 + 256 * 75.00) / 1e6
    flash = 0.6 * (1 - 850 / 5200) + 0.4 * (1 - (1000 * 0.075 + 256 * 0.30) / 1e6 / max_cost)
    haiku = 0.6 * (1 - 1000 / 5200) + 0.4 * (1 - (1000 * 0.25 + 256 * 1.25) / 1e6 / max_cost)
    gem1 = 0.6 * (1 - 1800 / 5200) + 0.4 * (1 - (1000 * 0.50 + 256 * 1.50) / 1e6 / max_cost)
    gpt4o = 0.6 * (1 - 1900 / 5200) + 0.4 * (1 - (1000 * 2.50 + 256 * 10.00) / 1e6 / max_cost)
    assert d.model == FLASH
    assert d.reason == "Best weighted score: 0.90 (latency 0.84, cost 1.00)"
    assert f"{flash:.2f}" == "0.90"
    assert [(a.model, a.score) for a in d.alternatives] == [
        (HAIKU, round(haiku, 4)),  # 0.8779
        (GEMINI_1, round(gem1, 4)),  # 0.7820
        (GPT4O, round(gpt4o, 4)),  # 0.7216
    ]
    assert d.fallbacks == [
        {"provider": "claude", "model": HAIKU},
        {"provider": "openai", "model": GPT4O},
    ]
    # no eu request, whatever its size or id, is given a us-only model
    for i in range(40):
        request = {"id": f"eu-{i}", "region": "eu", "input_tokens": 500 * i, "max_tokens": 10 + i}
        d = spec_engine.evaluate(request, explain=True)
        assert d.route == "eu_only"
        assert d.model not in US_ONLY
        assert not {a.model for a in d.alternatives} & US_ONLY
        assert not {f["model"] for f in d.fallbacks} & US_ONLY
        assert not {m for _, m in ranking(d)} & US_ONLY


def test_spec_example_route_order(spec_engine: PolicyEngine) -> None:
    # vision comes before budget and eu_only: the first match wins, even for an eu request
    both = {"id": "o1", "requires_vision": True, "max_cost": 0.001, "region": "eu"}
    assert spec_engine.evaluate(both).route == "vision"
    # budget before fast
    assert spec_engine.evaluate({"id": "o2", "max_cost": 0.001, "max_latency_ms": 2000}).route == (
        "budget"
    )
    assert spec_engine.evaluate({"id": "o3", "max_latency_ms": 2000}).route == "fast"
    assert spec_engine.evaluate({"id": "o4", "region": "us"}).route == "default"


# ------------------------------------------ found by the mutation run (bench/mutation.py)
# The same limits as above, decided without `explain` (the path most decisions take).


def test_max_tokens_and_context_filters_without_explain() -> None:
    e = engine(COST_ALL)
    d = e.evaluate({"id": "mt4", "input_tokens": 100, "max_tokens": 4097})
    over = {OPUS, SONNET_3, HAIKU, TURBO, GPT35}  # max_tokens 4096
    assert d.model == FLASH
    assert d.alternatives and not {a.model for a in d.alternatives} & over
    assert d.estimated_cost == pytest.approx((100 * 0.075 + 4097 * 0.30) / 1e6)
    # 16000 + 400 tokens of context drop gpt-4 and gpt-3.5-turbo; flash's cost counts both
    d = e.evaluate({"id": "ctx4", "input_tokens": 16000, "max_tokens": 400})
    assert d.model == FLASH
    assert d.alternatives and not {a.model for a in d.alternatives} & {GPT4, GPT35}
    assert d.estimated_cost == pytest.approx((16000 * 0.075 + 400 * 0.30) / 1e6)


def test_a_latency_limit_equal_to_the_estimate_keeps_the_model_with_a_cost_limit() -> None:
    e = engine(
        "route r {\n    strategy cost\n    prefer openai/gpt-3.5-turbo\n"
        "    prefer claude/claude-3-haiku-20240307\n}\n"
    )
    request = {"id": "ml3", "input_tokens": 1000, "max_tokens": 500}
    d = e.evaluate({**request, "max_latency_ms": 1000, "max_cost": 1.0})
    assert d.model == HAIKU  # 1000 ms == the limit: kept
    assert [a.model for a in d.alternatives] == []


def test_a_latency_limit_equal_to_an_estimate_over_the_whole_catalog() -> None:
    # haiku's p95 is 1000 ms, flash's 850: with both limits set both are kept, the rest
    # are slower (an empty result would be decided again on the full path)
    d = engine(COST_ALL).evaluate(
        {"id": "ml4", "input_tokens": 100, "max_latency_ms": 1000, "max_cost": 1.0}
    )
    assert d.model == FLASH
    assert [a.model for a in d.alternatives] == [HAIKU]


# ------------------------------------------ decisions the evaluator's tests never made


def test_a_rate_limited_decision_names_its_route_strategy_version_and_limit() -> None:
    e = engine(COST_ALL + "\nlimit user 1 per 1m\n")
    first = e.evaluate({"id": "rl1", "user": "u"})
    second = e.evaluate({"id": "rl2", "user": "u"})
    assert first.allowed and not second.allowed
    assert (second.route, second.strategy, second.model) == ("default", "cost", None)
    assert second.policy_version == first.policy_version != ""
    assert second.denied_by is not None
    assert (second.denied_by["scope"], second.denied_by["key"]) == ("user", "u")


def test_a_choice_below_more_than_three_rate_limited_models_names_the_first_three() -> None:
    e = engine(COST_ALL + "\nlimit model 1 per 1m\n")
    first_four = [e.evaluate({"id": f"sk{i}"}) for i in range(4)]
    names = [f"{d.provider}/{d.model}" for d in first_four]
    assert len(set(names)) == 4
    fifth = e.evaluate({"id": "sk4"})
    assert fifth.allowed and f"{fifth.provider}/{fifth.model}" not in names
    assert fifth.reason == (
        "Ranked #5 by cost: the 4 ranked above it are at a provider or model rate limit"
        f" ({names[0]}, {names[1]}, {names[2]}, …)"
    )


def test_confidence_grows_with_the_samples_behind_the_choice() -> None:
    e = engine("defaults {\n  strategy cost\n  min_samples 10\n}\n")
    d = e.evaluate({"id": "c0"})
    assert d.confidence == 0.25  # catalog priors only
    for _ in range(4):
        e.record(d, latency_ms=500.0, success=True)
    again = e.evaluate({"id": "c1"})
    assert again.model == d.model
    assert again.confidence == pytest.approx(0.25 + 0.75 * 4 / 10)  # 0.55


def test_a_model_in_cooldown_is_dropped_with_the_time_left() -> None:
    e = engine("defaults {\n  strategy cost\n  cooldown after 3 failures for 30s\n}\n")
    d = e.evaluate({"id": "cd0"})
    for _ in range(3):
        e.record(d, latency_ms=500.0, success=False)
    again = e.evaluate({"id": "cd1"}, explain=True)
    assert again.model != d.model
    assert (d.model, "in cooldown after 3 consecutive failures (30.0s left)") in drops(again)


def test_every_need_counts_on_the_fast_path() -> None:
    # vision, tools, json and streaming together: gemini-1.0-pro (no vision, no json),
    # gpt-4 and gpt-3.5-turbo (no vision) are out, though each has some of the needs
    needs = {"requires_vision": True, "requires_tools": True, "requires_json": True}
    d = engine(COST_ALL).evaluate({"id": "needs", "input_tokens": 10, "stream": True, **needs})
    assert d.model == FLASH
    assert [a.model for a in d.alternatives] == [HAIKU, PRO, GPT4O]
