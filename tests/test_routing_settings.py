"""Settings a route inherits from `defaults`, and explicit fallback models in failover."""

from __future__ import annotations

from _design import from_design


def test_bare_weighted_in_a_route_inherits_the_defaults_factors() -> None:
    policy = """
    defaults { strategy weighted(latency: 10%, cost: 90%) }
    route r when request.user == "u" { strategy weighted }
    """
    engine = from_design(policy)
    routed = engine.evaluate({"id": "a", "user": "u", "input_tokens": 100, "max_tokens": 100})
    default = engine.evaluate({"id": "b", "input_tokens": 100, "max_tokens": 100})
    assert routed.route == "r" and default.route == "default"
    assert routed.reason == default.reason
    assert routed.model == default.model


def test_bare_weighted_over_another_default_strategy_is_60_40() -> None:
    policy = "defaults { strategy cost }\nroute r { strategy weighted }"
    decision = from_design(policy).evaluate({"id": "c", "input_tokens": 10})
    assert decision.strategy == "weighted"
    assert decision.reason.startswith("Best weighted score: ")
    assert "(latency " in decision.reason and ", cost " in decision.reason


def test_failover_tries_explicit_fallback_models_first() -> None:
    policy = """
    defaults {
        strategy failover
        fallback openai/gpt-4o, claude, gemini
    }
    """
    decision = from_design(policy).evaluate({"id": "f", "input_tokens": 10})
    assert (decision.provider, decision.model) == ("openai", "gpt-4o")
    assert decision.reason == "First healthy in failover order: openai/gpt-4o"
    # then by provider order (openai is first, named by the explicit entry), catalog order
    assert [a.model for a in decision.alternatives] == [
        "gpt-4-turbo-preview",
        "gpt-4",
        "gpt-3.5-turbo",
    ]


def test_failover_without_explicit_models_goes_by_provider_order() -> None:
    policy = "defaults {\n strategy failover\n fallback gemini, openai, claude\n}"
    decision = from_design(policy).evaluate({"id": "g", "input_tokens": 10})
    assert (decision.provider, decision.model) == ("gemini", "gemini-1.5-pro-latest")
