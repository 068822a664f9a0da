"""`PolicyEngine.record` asks the limiter only when an outcome may have something to give
back (SPEC: recording an outcome costs the caller at most 2 µs): no `release` or `settle`
call under a policy without `concurrent`, token or spend limits; one of each, and the slot
or reservation given back, under one with them, and after a reload that dropped them while
a reservation was still held. Counted on a real `Limiter` subclass the engine builds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from engine import PolicyEngine
from engine.api import policy_engine as policy_engine_module
from engine.limits.limiter import Limiter
from engine.limits.stores.base import available

NOW = 1_800_000_000.0
ROUTE = "route default { strategy cost }\n"
TOKENS = "limit user tokens 1000 per 1m\n"
TOKEN_KEY = "user/tokens/60000/u"


@dataclass
class CountingLimiter(Limiter):
    releases: int = 0
    settles: int = 0

    def release(self, request_id: str | None) -> int:
        self.releases += 1
        return super().release(request_id)

    def settle(
        self,
        request_id: str | None,
        *,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        cost: float | None = None,
    ) -> list[tuple[str, float]]:
        self.settles += 1
        return super().settle(
            request_id, input_tokens=input_tokens, output_tokens=output_tokens, cost=cost
        )


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_engine_module, "Limiter", CountingLimiter)


def calls(engine: PolicyEngine) -> tuple[int, int]:
    limiter = engine.limiter
    assert isinstance(limiter, CountingLimiter)
    return limiter.releases, limiter.settles


def tokens_left(engine: PolicyEngine) -> float:
    return available(engine.store.peek(TOKEN_KEY), 1000, 1000 / 60_000, engine.clock() * 1000)


def test_no_limiter_call_for_a_policy_that_holds_nothing() -> None:
    engine = PolicyEngine.from_text("limit user requests 100 per 1m\n" + ROUTE, clock=lambda: NOW)
    for i in range(50):
        decision = engine.evaluate({"id": f"r{i}", "user": "u", "prompt": "hi"})
        assert engine.record(decision, latency_ms=5.0, success=True, input_tokens=3)
        engine.record_outcome(
            decision.provider or "", decision.model or "", latency_ms=5.0, success=False,
            request_id=f"r{i}", output_tokens=4,
        )  # fmt: skip
    assert calls(engine) == (0, 0)
    found = engine.program.catalog.find(decision.provider or "", decision.model or "")
    assert found is not None
    stats = engine.metrics.stats(found.key)  # every outcome still counted
    assert stats is not None
    assert (stats.samples, stats.success_rate) == (100, 0.5)
    engine.close()


def test_a_held_slot_is_released_by_one_call() -> None:
    engine = PolicyEngine.from_text("limit global concurrent 2\n" + ROUTE, clock=lambda: NOW)
    decision = engine.evaluate({"id": "a", "prompt": "hi"})
    assert sum(n for _, n in engine.limiter.inflight()) == 1
    assert engine.record(decision, latency_ms=5.0, success=True)
    assert calls(engine) == (1, 1)
    assert sum(n for _, n in engine.limiter.inflight()) == 0
    engine.close()


def test_a_reservation_is_settled_by_one_call() -> None:
    engine = PolicyEngine.from_text(TOKENS + ROUTE, clock=lambda: NOW)
    decision = engine.evaluate({"id": "a", "user": "u", "input_tokens": 500, "max_tokens": 100})
    assert tokens_left(engine) == pytest.approx(400)
    engine.record(decision, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    assert calls(engine) == (1, 1)
    assert tokens_left(engine) == pytest.approx(900)  # 100 used: 500 refunded
    engine.close()


def test_a_reservation_made_before_a_reload_is_settled_after_it(tmp_path: Path) -> None:
    policy = tmp_path / "p.policy"
    policy.write_text(TOKENS + ROUTE, encoding="utf-8")
    engine = PolicyEngine(policy, clock=lambda: NOW)
    decision = engine.evaluate({"id": "a", "user": "u", "input_tokens": 500, "max_tokens": 100})
    assert tokens_left(engine) == pytest.approx(400)
    policy.write_text(ROUTE, encoding="utf-8")  # no limit left to reserve
    assert engine.reload()
    engine.record(decision, latency_ms=1.0, success=True, input_tokens=40, output_tokens=60)
    assert calls(engine) == (1, 1)
    assert tokens_left(engine) == pytest.approx(900)
    assert engine.limiter.settlement_counts().settled == 1
    engine.close()


@pytest.mark.parametrize(
    ("latency", "shown"),
    [
        (-1, "`-1`"),
        (-0.5, "`-0.5`"),
        (float("nan"), "`nan`"),
        (float("inf"), "`inf`"),
        (True, "`true`"),
        ("5", "`5`"),
        (None, "`null`"),
    ],
)
def test_a_bad_latency_keeps_its_message(latency: object, shown: str) -> None:
    engine = PolicyEngine.from_text(ROUTE, clock=lambda: NOW)
    decision = engine.evaluate({"id": "a", "prompt": "hi"})
    with pytest.raises(ValueError) as raised:
        engine.record(decision, latency_ms=latency, success=True)  # type: ignore[arg-type]
    assert str(raised.value) == f"latency_ms must be a number >= 0, got {shown}"
    engine.close()


def test_an_int_latency_is_taken_as_a_float() -> None:
    engine = PolicyEngine.from_text(ROUTE, clock=lambda: NOW)
    decision = engine.evaluate({"id": "a", "prompt": "hi"})
    assert engine.record(decision, latency_ms=0, success=True)
    assert engine.record(decision, latency_ms=7, success=True)
    found = engine.program.catalog.find(decision.provider or "", decision.model or "")
    assert found is not None
    stats = engine.metrics.stats(found.key)
    assert stats is not None
    assert stats.samples == 2
    engine.close()
