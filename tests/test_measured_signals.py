"""Measured signals in conditions (issue 17): `model.p50`, `model.p95`,
`model.success_rate` and `model.samples` in `require`, and the health rule
`degraded when …`, driven by recorded outcomes on a fake clock.

The design catalog's priors: claude/claude-3-haiku (the cheapest of the two, p95 1,000 ms)
and openai/gpt-3.5-turbo (p95 1,200 ms).
"""

from __future__ import annotations

from _design import from_design, on_design

from engine import PolicyEngine
from engine.language.loader import compile_sources
from engine.lsp import knowledge
from engine.routing import evaluator as evaluator_module
from engine.routing.evaluator import HEALTH_PROBE_MS

START = 1_800_000_000.0
HAIKU = "claude-3-haiku-20240307"
TURBO = "gpt-3.5-turbo"


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def engine_for(body: str, clock: FakeClock) -> PolicyEngine:
    """A route over the two models, cheapest first; measurements over a 10-minute window."""
    return from_design(
        "defaults {\n    min_samples 10\n    window 10m\n}\n"
        "route chat {\n    prefer openai/gpt-3.5-turbo\n    prefer claude/claude-3-haiku\n"
        f"    strategy cost\n{body}\n}}\n",
        clock=clock,
    )


def record(engine: PolicyEngine, clock: FakeClock, n: int, latency_ms: float) -> None:
    for _ in range(n):
        clock.now += 1.0
        engine.record_outcome("claude", "claude-3-haiku", latency_ms=latency_ms, success=True)
    clock.now += 1.0  # past the snapshot's refresh interval


def drops(engine: PolicyEngine, request_id: str) -> dict[str, str]:
    decision = engine.evaluate({"id": request_id}, explain=True)
    assert decision.trace is not None
    return {t["model"]: t["because"] for t in decision.trace if t["step"] == "drop"}


# ------------------------------------------------------------------ degraded when


def test_a_model_whose_p95_passes_the_rule_is_dropped_probed_and_taken_back() -> None:
    clock = FakeClock()
    engine = engine_for("    degraded when model.p95 > 3s", clock)
    assert engine.evaluate({"id": "cold"}).model == HAIKU  # the cheapest

    record(engine, clock, 9, 5000.0)  # below min_samples: the prior (1,000 ms) stands
    assert engine.evaluate({"id": "nine"}).model == HAIKU

    record(engine, clock, 11, 5000.0)  # 20 outcomes at 5 s: degraded
    general = evaluator_module.general_path_calls
    assert engine.evaluate({"id": "slow"}).model == TURBO  # traffic moves
    assert evaluator_module.general_path_calls == general  # on the shortcut
    assert drops(engine, "why") == {
        HAIKU: "degraded: `model.p95 > 3s` holds (p95 4,965 ms, 20 samples)"
    }
    explained = engine.evaluate({"id": "why2"}, explain=True)
    assert explained.model == TURBO  # the general path decides alike

    # quiet for a probe interval: one request goes back to measure it
    clock.now += HEALTH_PROBE_MS / 1000.0
    assert engine.evaluate({"id": "probe"}).model == HAIKU
    record(engine, clock, 1, 5000.0)  # still slow: out again, for another interval
    assert engine.evaluate({"id": "after-probe"}).model == TURBO
    clock.now += HEALTH_PROBE_MS / 1000.0 - 10.0
    assert engine.evaluate({"id": "not-yet"}).model == TURBO

    # it recovers: the probes measure 800 ms, and once the slow outcomes leave the 10 m
    # window its p95 is under 3 s and it is chosen again, every time
    chosen_again_at = None
    for minute in range(20):
        clock.now += HEALTH_PROBE_MS / 1000.0
        decision = engine.evaluate({"id": f"probe{minute}"})
        if decision.model == HAIKU:
            record(engine, clock, 1, 800.0)
        if all(engine.evaluate({"id": f"m{minute}-{i}"}).model == HAIKU for i in range(3)):
            chosen_again_at = minute
            break
    assert chosen_again_at is not None
    assert drops(engine, "healthy") == {}
    assert engine.evaluate({"id": "last"}, explain=True).model == HAIKU


def test_the_cooldown_duration_is_the_probe_interval_when_given() -> None:
    clock = FakeClock()
    engine = engine_for(
        "    degraded when model.p95 > 3s\n    cooldown after 3 failures for 5s", clock
    )
    record(engine, clock, 20, 5000.0)
    assert engine.evaluate({"id": "slow"}).model == TURBO
    clock.now += 3.0  # 4 s since its last outcome
    assert engine.evaluate({"id": "still"}).model == TURBO
    clock.now += 1.5
    assert engine.evaluate({"id": "probe"}).model == HAIKU


def test_degraded_in_defaults_binds_the_default_route_and_reads_the_success_rate() -> None:
    clock = FakeClock()
    engine = from_design(
        "defaults {\n    strategy cost\n    min_samples 10\n"
        "    degraded when model.success_rate < 90% and model.samples >= 10\n}\n",
        clock=clock,
    )
    cheapest = engine.evaluate({"id": "cold"})
    for i in range(20):
        clock.now += 1.0
        engine.record_outcome(
            cheapest.provider, cheapest.model, latency_ms=500.0, success=i % 4 != 0
        )  # 75% succeed, never 3 in a row failing
    clock.now += 1.0
    decision = engine.evaluate({"id": "after"}, explain=True)
    assert decision.model != cheapest.model
    assert decision.trace is not None
    because = [t["because"] for t in decision.trace if t.get("model") == cheapest.model]
    assert because == [
        "degraded: `model.success_rate < 90% and model.samples >= 10` holds"
        " (success rate 75%, 20 samples)"
    ]
    assert engine.evaluate({"id": "fast"}).model == decision.model


# ------------------------------------------------------------------ require


def test_require_on_the_measured_p95_reads_the_measurement_above_min_samples() -> None:
    clock = FakeClock()
    engine = engine_for("    require model.p95 < 3s", clock)
    assert engine.evaluate({"id": "cold"}).model == HAIKU
    record(engine, clock, 9, 5000.0)
    assert engine.evaluate({"id": "prior"}).model == HAIKU  # 9 < min_samples: the prior
    record(engine, clock, 1, 5000.0)
    general = evaluator_module.general_path_calls
    decision = engine.evaluate({"id": "measured"})
    assert evaluator_module.general_path_calls == general  # decided once per snapshot
    assert decision.model == TURBO  # no probe: a `require` is a constraint, not health
    assert drops(engine, "why") == {HAIKU: "fails `require model.p95 < 3s`"}
    clock.now += HEALTH_PROBE_MS / 1000.0
    assert engine.evaluate({"id": "later"}).model == TURBO


def test_require_on_samples_and_success_rate() -> None:
    clock = FakeClock()
    # only models measured at least 5 times, with a success rate over 50% (the prior: 100%)
    engine = engine_for("    require model.samples >= 5 and model.success_rate > 50%", clock)
    assert not engine.evaluate({"id": "cold"}).allowed  # nothing measured yet
    record(engine, clock, 5, 700.0)
    assert engine.evaluate({"id": "five"}).model == HAIKU
    assert drops(engine, "why") == {
        TURBO: "fails `require model.samples >= 5 and model.success_rate > 50%`"
    }


def test_a_require_on_measurements_and_the_request_is_decided_per_request() -> None:
    clock = FakeClock()
    engine = engine_for("    require model.p95 < 3s or request.metadata.patient == true", clock)
    record(engine, clock, 20, 5000.0)
    assert engine.evaluate({"id": "hurried"}).model == TURBO
    patient = {"id": "patient", "metadata": {"patient": True}}
    assert engine.evaluate(patient).model == HAIKU


def test_model_latency_p95_keeps_meaning_the_catalog_prior() -> None:
    clock = FakeClock()
    engine = engine_for("    require model.latency_p95 < 3s", clock)
    record(engine, clock, 20, 5000.0)
    assert engine.evaluate({"id": "measured"}).model == HAIKU  # the prior is 1,000 ms


# ------------------------------------------------------------------ the authoring tools


def test_measured_conditions_are_unknown_to_the_analysis() -> None:
    """No catalog prior passes `model.p95 < 1ms`, yet the route is not unservable: what it
    keeps is decided by measurements, per request."""
    text = on_design(
        "route fast when request.stream {\n    require model.p95 < 1ms\n"
        "    degraded when model.p95 > 1ms\n}\n"
        "route slow when request.stream and request.max_tokens > 100 {\n}\n"
    )
    loaded = compile_sources([("t.policy", text)])
    assert [d.code for d in loaded.warnings] == ["W0500"]  # `slow` is shadowed, truly


def test_the_language_server_offers_the_measured_attributes_and_the_rule() -> None:
    text = "route a {\n    require model."
    labels = [c.label for c in knowledge.completions(text, len(text), None).items]
    assert {"p50", "p95", "success_rate", "samples", "latency_p95"} <= set(labels)
    assert "degraded" in knowledge.keywords()
    hover = knowledge.hover("route a {\n    require model.p95 < 3s\n}", 24, None)
    assert hover is not None and "duration" in hover.markdown
