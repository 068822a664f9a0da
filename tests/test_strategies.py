"""The six routing strategies, end to end through `PolicyEngine.from_text`.

Every expected figure is worked out by hand from the catalog (policies/models.yaml):
prices are USD per 1M tokens, latencies are the p95 priors (no outcomes are recorded, so
priors stand and confidence is 0.25). The figures used here:

    model                        input  output  p95 ms  provider
    claude-3-5-sonnet-20241022    3.00   15.00    2400  claude
    claude-3-opus-20240229       15.00   75.00    5200  claude
    claude-3-haiku-20240307       0.25    1.25    1000  claude
    gemini-1.5-pro-latest         1.25    5.00    2800  gemini
    gemini-1.5-flash-latest       0.075   0.30     850  gemini
    gemini-1.0-pro                0.50    1.50    1800  gemini
    gpt-4-turbo-preview          10.00   30.00    3800  openai
    gpt-4                        30.00   60.00    5500  openai
    gpt-3.5-turbo                 0.50    1.50    1200  openai
    gpt-4o                        2.50   10.00    1900  openai

estimated cost = (input_tokens * input_price + output_tokens * output_price) / 1e6, where
output_tokens is the request's max_tokens, else min(256, the model's max_tokens).
Alternative scores are rounded to 4 places by the engine, so expectations use round(x, 4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from _design import design_engine, from_design

from engine import Decision

SONNET = "claude-3-5-sonnet-20241022"
OPUS = "claude-3-opus-20240229"
HAIKU = "claude-3-haiku-20240307"
PRO = "gemini-1.5-pro-latest"
FLASH = "gemini-1.5-flash-latest"
GEMINI_1 = "gemini-1.0-pro"
TURBO = "gpt-4-turbo-preview"
GPT4 = "gpt-4"
GPT35 = "gpt-3.5-turbo"
GPT4O = "gpt-4o"

PRIOR_CONFIDENCE = 0.25  # no samples: catalog priors only


def request(rid: str, **extra: Any) -> dict[str, Any]:
    """1000 input tokens and 500 output tokens unless a test says otherwise."""
    return {"id": rid, "input_tokens": 1000, "max_tokens": 500, **extra}


def alternatives(d: Decision) -> list[tuple[str, str, float]]:
    return [(a.provider, a.model, a.score) for a in d.alternatives]


def fallbacks(d: Decision) -> list[tuple[str, str]]:
    return [(f["provider"], f["model"]) for f in d.fallbacks]


# ---------------------------------------------------------------- latency

LATENCY_POLICY = """
route fast {
    strategy latency
    fallback claude, gemini, openai
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
    prefer openai/gpt-3.5-turbo
}
"""


def test_latency_picks_lowest_p95_and_scores_best_over_x() -> None:
    d = from_design(LATENCY_POLICY).evaluate(request("lat-1"))
    assert d.allowed
    assert (d.route, d.strategy) == ("fast", "latency")
    assert (d.provider, d.model) == ("gemini", FLASH)
    assert d.reason == "Lowest P95 latency: 850ms"
    assert d.estimated_cost == pytest.approx((1000 * 0.075 + 500 * 0.30) / 1e6)  # 0.000225
    assert d.estimated_latency_ms == pytest.approx(850)
    assert d.confidence == PRIOR_CONFIDENCE
    # score = best / x: 850/1000, 850/1200, 850/1900
    assert alternatives(d) == [
        ("claude", HAIKU, round(850 / 1000, 4)),  # 0.85
        ("openai", GPT35, round(850 / 1200, 4)),  # 0.7083
        ("openai", GPT4O, round(850 / 1900, 4)),  # 0.4474
    ]
    # chosen provider gemini is skipped; claude then openai, each its best-ranked model
    # (gpt-3.5-turbo outranks gpt-4o although gpt-4o is preferred first)
    assert fallbacks(d) == [("claude", HAIKU), ("openai", GPT35)]


def test_latency_ranks_only_what_capability_filtering_left() -> None:
    # gpt-3.5-turbo has no vision: it is dropped before ranking
    d = from_design(LATENCY_POLICY).evaluate(request("lat-2", requires_vision=True))
    assert d.model == FLASH
    assert alternatives(d) == [
        ("claude", HAIKU, round(850 / 1000, 4)),
        ("openai", GPT4O, round(850 / 1900, 4)),
    ]
    assert fallbacks(d) == [("claude", HAIKU), ("openai", GPT4O)]


def test_latency_hard_cost_limit_filters_before_ranking() -> None:
    engine = from_design(LATENCY_POLICY)
    d = engine.evaluate(request("lat-3", max_cost=0.0002))
    # flash 0.000225 > 0.0002, and every other candidate costs more: nothing is left
    assert not d.allowed
    assert d.denied_by is not None and d.denied_by["reason"] == "no_eligible_model"
    d = engine.evaluate(request("lat-4", max_tokens=100, max_cost=0.0004))
    # flash (1000*0.075 + 100*0.30)/1e6 = 0.000105 ok; haiku (250 + 125)/1e6 = 0.000375 ok;
    # gpt-3.5 (500 + 150)/1e6 = 0.00065 dropped; gpt-4o (2500 + 1000)/1e6 dropped
    assert d.model == FLASH
    assert alternatives(d) == [("claude", HAIKU, round(850 / 1000, 4))]
    assert fallbacks(d) == [("claude", HAIKU)]


# ---------------------------------------------------------------- cost

COST_POLICY = """
route cheap {
    strategy cost
    fallback openai, gemini, claude
    prefer claude/claude-3-5-sonnet-20241022
    prefer gemini/gemini-1.5-pro-latest
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
}
"""


def test_cost_picks_lowest_estimate_and_scores_best_over_x() -> None:
    d = from_design(COST_POLICY).evaluate(request("cost-1"))
    haiku = (1000 * 0.25 + 500 * 1.25) / 1e6  # 0.000875
    pro = (1000 * 1.25 + 500 * 5.00) / 1e6  # 0.00375
    gpt4o = (1000 * 2.50 + 500 * 10.00) / 1e6  # 0.0075
    sonnet = (1000 * 3.00 + 500 * 15.00) / 1e6  # 0.0105
    assert (d.route, d.strategy) == ("cheap", "cost")
    assert (d.provider, d.model) == ("claude", HAIKU)
    assert d.reason == "Lowest estimated cost: $0.000875"
    assert d.estimated_cost == pytest.approx(haiku)
    assert d.estimated_latency_ms == pytest.approx(1000)
    assert d.confidence == PRIOR_CONFIDENCE
    assert alternatives(d) == [
        ("gemini", PRO, round(haiku / pro, 4)),  # 0.2333
        ("openai", GPT4O, round(haiku / gpt4o, 4)),  # 0.1167
        ("claude", SONNET, round(haiku / sonnet, 4)),  # 0.0833
    ]
    # fallback order openai, gemini (claude is the chosen provider)
    assert fallbacks(d) == [("openai", GPT4O), ("gemini", PRO)]


def test_cost_reason_formats_cents_with_four_places_at_most() -> None:
    policy = """
    route big {
        strategy cost
        prefer claude/claude-3-opus-20240229
        prefer openai/gpt-4
        prefer openai/gpt-4-turbo-preview
    }
    """
    d = from_design(policy).evaluate(request("cost-2", input_tokens=5000, max_tokens=1000))
    turbo = (5000 * 10.00 + 1000 * 30.00) / 1e6  # 0.08
    opus = (5000 * 15.00 + 1000 * 75.00) / 1e6  # 0.15
    gpt4 = (5000 * 30.00 + 1000 * 60.00) / 1e6  # 0.21 (context 6000 <= 8192: eligible)
    assert d.model == TURBO
    assert d.reason == "Lowest estimated cost: $0.08"
    assert d.estimated_cost == pytest.approx(turbo)
    assert d.estimated_latency_ms == pytest.approx(3800)
    assert alternatives(d) == [
        ("claude", OPUS, round(turbo / opus, 4)),  # 0.5333
        ("openai", GPT4, round(turbo / gpt4, 4)),  # 0.381
    ]
    # no fallback setting: provider order is the catalog's (claude, gemini, openai)
    assert fallbacks(d) == [("claude", OPUS)]


def test_cost_tie_is_broken_by_latency_then_catalog_order() -> None:
    # gemini-1.0-pro and gpt-3.5-turbo are both 0.50/1.50: equal cost
    # (1000*0.50 + 500*1.50)/1e6 = 0.00125; gpt-3.5-turbo is faster (1200 < 1800)
    policy = """
    route tie {
        strategy cost
        prefer gemini/gemini-1.0-pro
        prefer openai/gpt-3.5-turbo
    }
    """
    d = from_design(policy).evaluate(request("cost-3"))
    assert d.model == GPT35
    assert d.reason == "Lowest estimated cost: $0.00125"
    assert d.estimated_cost == pytest.approx((1000 * 0.50 + 500 * 1.50) / 1e6)
    assert alternatives(d) == [("gemini", GEMINI_1, 1.0)]


# ---------------------------------------------------------------- weighted

WEIGHTED_3 = """
route mix {{
    strategy {strategy}
    fallback openai, claude
    prefer gemini/gemini-1.5-flash-latest
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-4o
}}
"""

# the three candidates for 1000 input / 500 output tokens
FLASH_COST = (1000 * 0.075 + 500 * 0.30) / 1e6  # 0.000225
HAIKU_COST = (1000 * 0.25 + 500 * 1.25) / 1e6  # 0.000875
GPT4O_COST = (1000 * 2.50 + 500 * 10.00) / 1e6  # 0.0075 = max cost
# normalised scores 1 - x/max (max latency 1900 ms, max cost 0.0075)
FLASH_L, FLASH_C = 1 - 850 / 1900, 1 - FLASH_COST / GPT4O_COST  # 0.5526, 0.97
HAIKU_L, HAIKU_C = 1 - 1000 / 1900, 1 - HAIKU_COST / GPT4O_COST  # 0.4737, 0.8833
# gpt-4o is the max on both: 0 and 0


def test_weighted_three_models_by_hand() -> None:
    d = from_design(WEIGHTED_3.format(strategy="weighted(latency: 60%, cost: 40%)"))
    d = d.evaluate(request("w-1"))
    flash = 0.6 * FLASH_L + 0.4 * FLASH_C  # 0.3316 + 0.388 = 0.7196
    haiku = 0.6 * HAIKU_L + 0.4 * HAIKU_C  # 0.2842 + 0.3533 = 0.6375
    assert (d.route, d.strategy) == ("mix", "weighted")
    assert (d.provider, d.model) == ("gemini", FLASH)
    assert d.reason == "Best weighted score: 0.72 (latency 0.55, cost 0.97)"
    assert f"{flash:.2f} (latency {FLASH_L:.2f}, cost {FLASH_C:.2f})" in d.reason
    assert d.estimated_cost == pytest.approx(FLASH_COST)
    assert d.estimated_latency_ms == pytest.approx(850)
    assert d.confidence == PRIOR_CONFIDENCE
    assert alternatives(d) == [
        ("claude", HAIKU, round(haiku, 4)),  # 0.6375
        ("openai", GPT4O, 0.0),
    ]
    # provider order: openai, claude (the fallback setting), then gemini (catalog order)
    assert fallbacks(d) == [("openai", GPT4O), ("claude", HAIKU)]


def test_weighted_reason_lists_factors_in_policy_order() -> None:
    d = from_design(WEIGHTED_3.format(strategy="weighted(cost: 40%, latency: 60%)"))
    d = d.evaluate(request("w-2"))
    assert d.model == FLASH
    assert d.reason == "Best weighted score: 0.72 (cost 0.97, latency 0.55)"
    assert alternatives(d)[0] == ("claude", HAIKU, round(0.6 * HAIKU_L + 0.4 * HAIKU_C, 4))


def test_weighted_with_success_factor() -> None:
    # no outcomes: every success rate is 1.0
    text = WEIGHTED_3.format(strategy="weighted(latency: 50%, cost: 30%, success: 20%)")
    d = from_design(text).evaluate(request("w-3"))
    flash = 0.5 * FLASH_L + 0.3 * FLASH_C + 0.2 * 1.0  # 0.2763 + 0.291 + 0.2 = 0.7673
    haiku = 0.5 * HAIKU_L + 0.3 * HAIKU_C + 0.2 * 1.0  # 0.2368 + 0.265 + 0.2 = 0.7018
    gpt4o = 0.5 * 0.0 + 0.3 * 0.0 + 0.2 * 1.0  # 0.2
    assert d.model == FLASH
    assert d.reason == "Best weighted score: 0.77 (latency 0.55, cost 0.97, success 1.00)"
    assert f"{flash:.2f}" == "0.77"
    assert alternatives(d) == [
        ("claude", HAIKU, round(haiku, 4)),
        ("openai", GPT4O, round(gpt4o, 4)),
    ]


def test_weighted_plain_number_weights_are_normalised() -> None:
    # latency 3, cost 1 -> 0.75, 0.25
    d = from_design(WEIGHTED_3.format(strategy="weighted(latency: 3, cost: 1)"))
    d = d.evaluate(request("w-4"))
    flash = 0.75 * FLASH_L + 0.25 * FLASH_C  # 0.4145 + 0.2425 = 0.6570
    haiku = 0.75 * HAIKU_L + 0.25 * HAIKU_C  # 0.3553 + 0.2208 = 0.5761
    assert d.model == FLASH
    assert d.reason == f"Best weighted score: {flash:.2f} (latency 0.55, cost 0.97)"
    assert d.reason == "Best weighted score: 0.66 (latency 0.55, cost 0.97)"
    assert alternatives(d)[0] == ("claude", HAIKU, round(haiku, 4))


@pytest.mark.parametrize(
    ("factors", "winner", "reason"),
    [
        # max latency 5200 (opus), max cost (1000*15 + 500*75)/1e6 = 0.0525 (opus)
        # gpt-4o: latency 1 - 1900/5200 = 0.6346, cost 1 - 0.0075/0.0525 = 0.8571
        # pro:    latency 1 - 2800/5200 = 0.4615, cost 1 - 0.00375/0.0525 = 0.9286
        # 60/40: gpt-4o 0.3808 + 0.3429 = 0.7236 > pro 0.2769 + 0.3714 = 0.6484
        ("latency: 60%, cost: 40%", GPT4O, "Best weighted score: 0.72 (latency 0.63, cost 0.86)"),
        # 10/90: gpt-4o 0.0635 + 0.7714 = 0.8349 < pro 0.0462 + 0.8357 = 0.8819
        ("latency: 10%, cost: 90%", PRO, "Best weighted score: 0.88 (latency 0.46, cost 0.93)"),
    ],
)
def test_weighted_weights_decide_between_fast_and_cheap(
    factors: str, winner: str, reason: str
) -> None:
    policy = f"""
    route mix {{
        strategy weighted({factors})
        prefer claude/claude-3-opus-20240229
        prefer gemini/gemini-1.5-pro-latest
        prefer openai/gpt-4o
    }}
    """
    d = from_design(policy).evaluate(request("w-5"))
    assert d.model == winner
    assert d.reason == reason
    opus_cost = (1000 * 15.00 + 500 * 75.00) / 1e6
    gpt4o_l, gpt4o_c = 1 - 1900 / 5200, 1 - (1000 * 2.50 + 500 * 10.00) / 1e6 / opus_cost
    pro_l, pro_c = 1 - 2800 / 5200, 1 - (1000 * 1.25 + 500 * 5.00) / 1e6 / opus_cost
    w_l, w_c = (0.6, 0.4) if winner == GPT4O else (0.1, 0.9)
    loser_score = w_l * pro_l + w_c * pro_c if winner == GPT4O else w_l * gpt4o_l + w_c * gpt4o_c
    loser = ("gemini", PRO) if winner == GPT4O else ("openai", GPT4O)
    assert alternatives(d) == [(*loser, round(loser_score, 4)), ("claude", OPUS, 0.0)]


def test_default_policy_weighted_over_whole_catalog() -> None:
    """The packaged default: no route matches, `weighted(latency: 60%, cost: 40%)` over all 11."""
    d = design_engine().evaluate({"id": "default-1", "input_tokens": 1000})
    # no max_tokens: 256 output tokens for every model (all allow >= 4096)
    # max latency 5500 (gpt-4); max cost gpt-4 = (1000*30 + 256*60)/1e6 = 0.04536
    max_cost = (1000 * 30.00 + 256 * 60.00) / 1e6
    flash_cost = (1000 * 0.075 + 256 * 0.30) / 1e6  # 0.0001518
    flash = 0.6 * (1 - 850 / 5500) + 0.4 * (1 - flash_cost / max_cost)  # 0.5073 + 0.3987
    haiku = 0.6 * (1 - 1000 / 5500) + 0.4 * (1 - (1000 * 0.25 + 256 * 1.25) / 1e6 / max_cost)
    gpt35 = 0.6 * (1 - 1200 / 5500) + 0.4 * (1 - (1000 * 0.50 + 256 * 1.50) / 1e6 / max_cost)
    gem1 = 0.6 * (1 - 1800 / 5500) + 0.4 * (1 - (1000 * 0.50 + 256 * 1.50) / 1e6 / max_cost)
    assert (d.route, d.strategy) == ("default", "weighted")
    assert (d.provider, d.model) == ("gemini", FLASH)
    assert d.reason == "Best weighted score: 0.91 (latency 0.85, cost 1.00)"
    assert f"{flash:.2f}" == "0.91"
    assert d.estimated_cost == pytest.approx(flash_cost)
    assert d.estimated_latency_ms == pytest.approx(850)
    assert d.confidence == PRIOR_CONFIDENCE
    assert alternatives(d) == [
        ("claude", HAIKU, round(haiku, 4)),  # 0.8859
        ("openai", GPT35, round(gpt35, 4)),  # 0.8613
        ("gemini", GEMINI_1, round(gem1, 4)),  # 0.7958
    ]
    assert fallbacks(d) == [("claude", HAIKU), ("openai", GPT35)]


# ---------------------------------------------------------------- explicit fallbacks


def test_explicit_fallback_models_come_first_then_one_per_other_provider() -> None:
    policy = """
    route fast {
        strategy latency
        fallback gemini/gemini-1.5-pro-latest, claude/claude-3-haiku-20240307, openai
        prefer gemini/gemini-1.5-flash-latest
        prefer gemini/gemini-1.5-pro-latest
        prefer claude/claude-3-5-sonnet-20241022
        prefer claude/claude-3-haiku-20240307
        prefer openai/gpt-4o
    }
    """
    d = from_design(policy).evaluate(request("fb-1"))
    assert d.model == FLASH
    # explicit: pro (even though it is the chosen provider's), haiku; then openai's best
    assert fallbacks(d) == [("gemini", PRO), ("claude", HAIKU), ("openai", GPT4O)]


def test_ineligible_explicit_fallback_is_skipped_and_its_provider_still_covered() -> None:
    policy = """
    route fast {
        strategy latency
        fallback openai/gpt-3.5-turbo, gemini
        prefer claude/claude-3-haiku-20240307
        prefer openai/gpt-3.5-turbo
        prefer openai/gpt-4o
        prefer gemini/gemini-1.5-flash-latest
    }
    """
    # vision drops gpt-3.5-turbo: the explicit entry is skipped; provider order is
    # openai, gemini (the setting), then claude (catalog order); gemini is chosen
    d = from_design(policy).evaluate(request("fb-2", requires_vision=True))
    assert d.model == FLASH
    assert fallbacks(d) == [("openai", GPT4O), ("claude", HAIKU)]
    # without vision, gpt-3.5-turbo is eligible and listed explicitly first
    d = from_design(policy).evaluate(request("fb-3"))
    assert d.model == FLASH
    assert fallbacks(d) == [("openai", GPT35), ("claude", HAIKU)]


def test_explicit_fallback_equal_to_the_choice_is_not_listed() -> None:
    policy = """
    route fast {
        strategy latency
        fallback gemini/gemini-1.5-flash-latest, claude
        prefer gemini/gemini-1.5-flash-latest
        prefer claude/claude-3-haiku-20240307
    }
    """
    d = from_design(policy).evaluate(request("fb-4"))
    assert d.model == FLASH
    assert fallbacks(d) == [("claude", HAIKU)]


# ---------------------------------------------------------------- model-specific

MODEL_SPECIFIC = """
route pick {
    strategy model-specific
    fallback claude, gemini, openai
    prefer gemini/gemini-1.5-flash-latest weight 60
    prefer openai/gpt-3.5-turbo           weight 30
    prefer claude/claude-3-haiku-20240307 weight 10
}
"""

# The draw is blake2b-64 of the request id over 2**64, times the weight total:
#   "req-0"  -> 0.3078: 30.78 of 100 -> flash (0–60);   of 70 -> 21.5 -> flash
#   "req-9"  -> 0.8287: 82.87 of 100 -> gpt-3.5 (60–90); of 70 -> 58.0 -> flash (0–60)
#   "req-18" -> 0.9895: 98.95 of 100 -> haiku (90–100); of 70 -> 69.3 -> haiku (60–70)


@pytest.mark.parametrize(
    ("rid", "model", "reason", "alts"),
    [
        (
            "req-0",
            FLASH,
            "Preferred model drawn by weight: 60% share among 3 eligible",
            [("openai", GPT35, 30 / 100), ("claude", HAIKU, 10 / 100)],
        ),
        (
            "req-9",
            GPT35,
            "Preferred model drawn by weight: 30% share among 3 eligible",
            [("gemini", FLASH, 60 / 100), ("claude", HAIKU, 10 / 100)],
        ),
        (
            "req-18",
            HAIKU,
            "Preferred model drawn by weight: 10% share among 3 eligible",
            [("gemini", FLASH, 60 / 100), ("openai", GPT35, 30 / 100)],
        ),
    ],
)
def test_model_specific_pick_is_fixed_by_request_id(
    rid: str, model: str, reason: str, alts: list[tuple[str, str, float]]
) -> None:
    d = from_design(MODEL_SPECIFIC).evaluate(request(rid))
    assert (d.route, d.strategy) == ("pick", "model-specific")
    assert d.model == model
    assert d.reason == reason
    assert alternatives(d) == alts


def test_model_specific_estimates_and_fallbacks() -> None:
    d = from_design(MODEL_SPECIFIC).evaluate(request("req-9"))
    assert (d.provider, d.model) == ("openai", GPT35)
    assert d.estimated_cost == pytest.approx((1000 * 0.50 + 500 * 1.50) / 1e6)  # 0.00125
    assert d.estimated_latency_ms == pytest.approx(1200)
    assert d.confidence == PRIOR_CONFIDENCE
    # claude first, then gemini (openai is the chosen provider)
    assert fallbacks(d) == [("claude", HAIKU), ("gemini", FLASH)]


def test_model_specific_is_deterministic_across_fresh_engines() -> None:
    ids = [f"det-{i}" for i in range(200)]
    first = from_design(MODEL_SPECIFIC)
    second = from_design(MODEL_SPECIFIC)
    picks = [first.evaluate(request(i)).model for i in ids]
    # a different engine, asked in the reverse order, and asked twice
    again = [second.evaluate(request(i)).model for i in reversed(ids)][::-1]
    assert picks == again
    assert picks == [second.evaluate(request(i)).model for i in ids]
    assert set(picks) == {FLASH, GPT35, HAIKU}


def test_model_specific_shares_follow_weights() -> None:
    engine = from_design(MODEL_SPECIFIC)
    n = 4000
    counts = {FLASH: 0, GPT35: 0, HAIKU: 0}
    for i in range(n):
        counts[engine.evaluate(request(f"share-{i}")).model] += 1  # type: ignore[index]
    assert counts[FLASH] / n == pytest.approx(0.60, abs=0.03)
    assert counts[GPT35] / n == pytest.approx(0.30, abs=0.03)
    assert counts[HAIKU] / n == pytest.approx(0.10, abs=0.03)


def test_model_specific_renormalises_when_a_preference_is_filtered_out() -> None:
    # vision drops gpt-3.5-turbo: flash 60/70, haiku 10/70
    engine = from_design(MODEL_SPECIFIC)
    d = engine.evaluate(request("req-9", requires_vision=True))
    assert d.model == FLASH
    assert d.reason == "Preferred model drawn by weight: 86% share among 2 eligible"
    assert alternatives(d) == [("claude", HAIKU, round(10 / 70, 4))]  # 0.1429
    d = engine.evaluate(request("req-18", requires_vision=True))
    assert d.model == HAIKU
    assert d.reason == "Preferred model drawn by weight: 14% share among 2 eligible"
    assert alternatives(d) == [("gemini", FLASH, round(60 / 70, 4))]  # 0.8571

    n = 4000
    counts = {FLASH: 0, HAIKU: 0}
    for i in range(n):
        counts[engine.evaluate(request(f"share-{i}", requires_vision=True)).model] += 1  # type: ignore[index]
    assert counts[FLASH] / n == pytest.approx(60 / 70, abs=0.03)
    assert counts[HAIKU] / n == pytest.approx(10 / 70, abs=0.03)


def test_model_specific_provider_preference_splits_its_weight() -> None:
    # `prefer gemini weight 60` is 20 for each of its three models (catalog order:
    # pro, flash, 1.0-pro), then haiku 40. "req-0": 30.78 of 100 -> flash (20–40)
    policy = """
    route pick {
        strategy model-specific
        prefer gemini weight 60
        prefer claude/claude-3-haiku-20240307 weight 40
    }
    """
    d = from_design(policy).evaluate(request("req-0"))
    assert d.model == FLASH
    assert d.reason == "Preferred model drawn by weight: 20% share among 4 eligible"
    # the rest by weight, ties in catalog order
    assert alternatives(d) == [
        ("claude", HAIKU, 0.4),
        ("gemini", PRO, 0.2),
        ("gemini", GEMINI_1, 0.2),
    ]


# ---------------------------------------------------------------- round-robin

ROUND_ROBIN = """
route rr {
    strategy round-robin
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
}
"""


def test_round_robin_cycles_candidates_in_order() -> None:
    engine = from_design(ROUND_ROBIN)
    got = [engine.evaluate(request(f"rr-{i}")) for i in range(7)]
    assert [d.model for d in got] == [GPT4O, HAIKU, FLASH, GPT4O, HAIKU, FLASH, GPT4O]
    assert [d.reason for d in got[:4]] == [
        "Round-robin: candidate 1 of 3",
        "Round-robin: candidate 2 of 3",
        "Round-robin: candidate 3 of 3",
        "Round-robin: candidate 1 of 3",
    ]
    # the rest of the cycle follows, scored 1 - i/n
    assert alternatives(got[0]) == [
        ("claude", HAIKU, round(1 - 1 / 3, 4)),
        ("gemini", FLASH, round(1 - 2 / 3, 4)),
    ]
    assert alternatives(got[1]) == [
        ("gemini", FLASH, round(1 - 1 / 3, 4)),
        ("openai", GPT4O, round(1 - 2 / 3, 4)),
    ]
    assert got[0].estimated_cost == pytest.approx((1000 * 2.50 + 500 * 10.00) / 1e6)
    assert got[0].estimated_latency_ms == pytest.approx(1900)
    assert got[1].estimated_cost == pytest.approx((1000 * 0.25 + 500 * 1.25) / 1e6)
    assert got[2].estimated_latency_ms == pytest.approx(850)
    # no fallback setting: catalog provider order claude, gemini, openai
    assert fallbacks(got[0]) == [("claude", HAIKU), ("gemini", FLASH)]


def test_round_robin_turns_are_per_engine_and_per_route() -> None:
    policy = (
        ROUND_ROBIN
        + """
    route other when request.metadata.team == "b" {
        strategy round-robin
        prefer gemini/gemini-1.5-pro-latest
        prefer claude/claude-3-5-sonnet-20241022
    }
    """
    )
    policy = policy.replace("route rr {", 'route rr when request.metadata.team == "a" {')
    engine = from_design(policy)
    a = {"metadata": {"team": "a"}}
    b = {"metadata": {"team": "b"}}
    assert engine.evaluate(request("x1", **a)).model == GPT4O
    assert engine.evaluate(request("x2", **b)).model == PRO
    assert engine.evaluate(request("x3", **a)).model == HAIKU
    assert engine.evaluate(request("x4", **b)).model == SONNET
    assert engine.evaluate(request("x5", **b)).model == PRO
    # a fresh engine starts at the first candidate again
    assert from_design(policy).evaluate(request("x6", **a)).model == GPT4O


def test_round_robin_counts_turns_over_the_eligible_candidates() -> None:
    policy = """
    route rr {
        strategy round-robin
        prefer openai/gpt-4o
        prefer openai/gpt-3.5-turbo
        prefer gemini/gemini-1.5-flash-latest
    }
    """
    engine = from_design(policy)
    assert engine.evaluate(request("v1")).model == GPT4O  # turn 0 of 3
    # turn 1; vision leaves [gpt-4o, flash]: 1 % 2 -> flash
    d = engine.evaluate(request("v2", requires_vision=True))
    assert d.model == FLASH
    assert d.reason == "Round-robin: candidate 2 of 2"
    assert engine.evaluate(request("v3")).model == FLASH  # turn 2 of 3


# ---------------------------------------------------------------- failover

FAILOVER = """
route fo {
    strategy failover
    fallback gemini, openai, claude
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-4o
    prefer gemini/gemini-1.5-pro-latest
    prefer gemini/gemini-1.5-flash-latest
}
"""


def test_failover_follows_fallback_provider_order() -> None:
    d = from_design(FAILOVER).evaluate(request("fo-1"))
    assert (d.route, d.strategy) == ("fo", "failover")
    assert (d.provider, d.model) == ("gemini", PRO)
    assert d.reason == "First healthy in failover order: gemini/gemini-1.5-pro-latest"
    assert d.estimated_cost == pytest.approx((1000 * 1.25 + 500 * 5.00) / 1e6)  # 0.00375
    assert d.estimated_latency_ms == pytest.approx(2800)
    assert d.confidence == PRIOR_CONFIDENCE
    assert alternatives(d) == [
        ("gemini", FLASH, 1 - 1 / 4),
        ("openai", GPT4O, 1 - 2 / 4),
        ("claude", HAIKU, 1 - 3 / 4),
    ]
    assert fallbacks(d) == [("openai", GPT4O), ("claude", HAIKU)]


def test_failover_skips_what_capability_filtering_dropped() -> None:
    # max_latency_ms 2000 drops pro (2800): the next in order wins
    d = from_design(FAILOVER).evaluate(request("fo-2", max_latency_ms=2000))
    assert d.model == FLASH
    assert d.reason == "First healthy in failover order: gemini/gemini-1.5-flash-latest"
    assert alternatives(d) == [
        ("openai", GPT4O, round(1 - 1 / 3, 4)),
        ("claude", HAIKU, round(1 - 2 / 3, 4)),
    ]


def test_failover_keeps_preference_order_within_a_provider() -> None:
    policy = FAILOVER.replace(
        "prefer gemini/gemini-1.5-pro-latest\n    prefer gemini/gemini-1.5-flash-latest",
        "prefer gemini/gemini-1.5-flash-latest\n    prefer gemini/gemini-1.5-pro-latest",
    )
    assert policy != FAILOVER
    d = from_design(policy).evaluate(request("fo-3"))
    assert d.model == FLASH
    assert [a.model for a in d.alternatives] == [PRO, GPT4O, HAIKU]


def test_route_fallback_setting_overrides_defaults_for_failover() -> None:
    # route `fallback claude` (over the defaults' `fallback openai`): claude, then the
    # catalog's remaining order gemini, openai
    policy = "defaults { fallback openai }\n" + FAILOVER.replace(
        "fallback gemini, openai, claude", "fallback claude"
    )
    d = from_design(policy).evaluate(request("fo-4"))
    assert d.model == HAIKU
    assert d.reason == "First healthy in failover order: claude/claude-3-haiku-20240307"
    assert [a.model for a in d.alternatives] == [PRO, FLASH, GPT4O]
    assert fallbacks(d) == [("gemini", PRO), ("openai", GPT4O)]


# ---------------------------------------------------------------- ties: catalog order

TWINS_CATALOG = """
models:
  - id: twin-a
    provider: acme
    context_window: 100000
    max_tokens: 4096
    supports: [streaming, tools, vision, json]
    pricing: {input: 1.00, output: 2.00}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: twin-b
    provider: acme
    context_window: 100000
    max_tokens: 4096
    supports: [streaming, tools, vision, json]
    pricing: {input: 1.00, output: 2.00}
    latency_prior_ms: {p50: 500, p95: 1000}
  - id: twin-c
    provider: acme
    context_window: 100000
    max_tokens: 4096
    supports: [streaming, tools, vision, json]
    pricing: {input: 1.00, output: 2.00}
    latency_prior_ms: {p50: 500, p95: 1000}
"""


@pytest.mark.parametrize(
    ("strategy", "reason"),
    [
        ("latency", "Lowest P95 latency: 1000ms"),
        # (1000*1.00 + 500*2.00)/1e6 = 0.002
        ("cost", "Lowest estimated cost: $0.002"),
        # every model is the max on both measures: 1 - x/max = 0
        (
            "weighted(latency: 60%, cost: 40%)",
            "Best weighted score: 0.00 (latency 0.00, cost 0.00)",
        ),
    ],
)
def test_ties_are_broken_by_catalog_order(tmp_path: Path, strategy: str, reason: str) -> None:
    catalog = tmp_path / "twins.yaml"
    catalog.write_text(TWINS_CATALOG, encoding="utf-8")
    policy = f"""
    catalog "{catalog}"
    route tie {{
        strategy {strategy}
        prefer acme/twin-c
        prefer acme/twin-b
        prefer acme/twin-a
    }}
    """
    d = from_design(policy).evaluate(request("tie-1"))
    assert (d.provider, d.model) == ("acme", "twin-a")
    assert d.reason == reason
    assert d.estimated_cost == pytest.approx((1000 * 1.00 + 500 * 2.00) / 1e6)
    assert [a.model for a in d.alternatives] == ["twin-b", "twin-c"]


def test_cost_reason_for_a_tiny_amount_is_a_valid_amount(tmp_path: Path) -> None:
    catalog = tmp_path / "tiny.yaml"
    catalog.write_text(
        TWINS_CATALOG.replace("{input: 1.00, output: 2.00}", "{input: 0.01, output: 0.01}"),
        encoding="utf-8",
    )
    policy = f'catalog "{catalog}"\nroute r {{\n strategy cost\n prefer acme/twin-a\n}}'
    d = from_design(policy).evaluate(request("tiny", input_tokens=1, max_tokens=1))
    assert d.estimated_cost == pytest.approx((1 * 0.01 + 1 * 0.01) / 1e6)  # 2e-08
    # "$0.00000002" (or at worst "$0"), never a dangling "$0."
    assert re.fullmatch(r"Lowest estimated cost: \$0(\.0*[1-9][0-9]*)?", d.reason), d.reason


# ------------------------------------------ found by the mutation run (bench/mutation.py)


@pytest.mark.parametrize(
    ("factors", "model", "reason", "alts"),
    [
        # one factor: the other factors weigh 0, whatever the catalog says about them
        (
            "cost: 100%",
            FLASH,
            f"Best weighted score: {FLASH_C:.2f} (cost {FLASH_C:.2f})",
            [("claude", HAIKU, round(HAIKU_C, 4)), ("openai", GPT4O, 0.0)],
        ),
        (
            "latency: 100%",
            FLASH,
            f"Best weighted score: {FLASH_L:.2f} (latency {FLASH_L:.2f})",
            [("claude", HAIKU, round(HAIKU_L, 4)), ("openai", GPT4O, 0.0)],
        ),
    ],
)
def test_weighted_with_one_factor(
    factors: str, model: str, reason: str, alts: list[tuple[str, str, float]]
) -> None:
    d = from_design(WEIGHTED_3.format(strategy=f"weighted({factors})"))
    d = d.evaluate(request("w-one"))
    assert (d.model, d.reason) == (model, reason)
    assert alternatives(d) == alts


def test_model_specific_shares_follow_two_distinct_weights() -> None:
    engine = from_design(
        "route pick {\n    strategy model-specific\n"
        "    prefer gemini/gemini-1.5-flash-latest weight 90\n"
        "    prefer openai/gpt-3.5-turbo weight 10\n}\n"
    )
    n = 2000
    flash = sum(engine.evaluate(request(f"two-{i}")).model == FLASH for i in range(n))
    assert flash / n == pytest.approx(0.90, abs=0.03)


def test_failover_puts_explicit_models_first_then_named_providers_then_the_rest() -> None:
    # `fallback openai/gpt-4o, gemini`: gpt-4o (an explicit model), then gemini's models in
    # preference order, then claude, which the setting does not name
    policy = FAILOVER.replace("fallback gemini, openai, claude", "fallback openai/gpt-4o, gemini")
    d = from_design(policy).evaluate(request("fo-5"))
    assert d.model == GPT4O
    assert [a.model for a in d.alternatives] == [PRO, FLASH, HAIKU]


def test_model_specific_lists_the_rest_by_weight_with_two_distinct_weights() -> None:
    # draws run over catalog order: haiku 0-10, flash 10-55, gpt-3.5 55-100; "req-0" draws
    # 30.78 (flash); the rest go by weight (gpt-3.5 45 before haiku 10), not catalog order
    engine = from_design(
        "route pick {\n    strategy model-specific\n"
        "    prefer claude/claude-3-haiku-20240307 weight 10\n"
        "    prefer gemini/gemini-1.5-flash-latest weight 45\n"
        "    prefer openai/gpt-3.5-turbo weight 45\n}\n"
    )
    d = engine.evaluate(request("req-0"))
    assert d.model == FLASH
    assert alternatives(d) == [("openai", GPT35, 0.45), ("claude", HAIKU, 0.10)]


# ---------------------------------------------------------------- failover order

# the routes above give their own `fallback` line; without one, a route that names models
# fails over in its `prefer` order (issue 17), whatever the defaults' `fallback` says
PREFER_ORDER = """
defaults { fallback gemini, claude, openai }
route fo {
    strategy failover
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
}
route fast {
    strategy latency
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
}
"""


def test_without_its_own_fallback_line_a_route_fails_over_in_prefer_order() -> None:
    engine = from_design(PREFER_ORDER)
    d = engine.evaluate(request("po-1"))
    assert (d.route, d.provider, d.model) == ("fo", "openai", GPT4O)
    assert d.reason == "First healthy in failover order: openai/gpt-4o"
    assert [a.model for a in d.alternatives] == [HAIKU, FLASH]
    assert fallbacks(d) == [("claude", HAIKU), ("gemini", FLASH)]
    # the defaults' order (gemini, claude, openai) would have put gemini first
    fast = PREFER_ORDER.replace("route fo {", 'route fo when request.user == "x" {')
    d = from_design(fast).evaluate(request("po-2"))
    assert (d.route, d.provider, d.model) == ("fast", "gemini", FLASH)  # lowest p95
    assert fallbacks(d) == [("openai", GPT4O), ("claude", HAIKU)]  # prefer order, not claude


def test_a_routes_own_fallback_line_still_decides_its_order() -> None:
    own = PREFER_ORDER.replace(
        "strategy failover\n", "strategy failover\n    fallback claude, gemini, openai\n"
    )
    assert own != PREFER_ORDER
    d = from_design(own).evaluate(request("po-3"))
    assert (d.provider, d.model) == ("claude", HAIKU)
    assert fallbacks(d) == [("gemini", FLASH), ("openai", GPT4O)]
