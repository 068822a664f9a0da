"""What routing knows about past outcomes, per model.

`MetricsView` is the read interface the evaluator uses. `NoMetrics` (nothing measured:
catalog priors stand everywhere) is the default until outcomes are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ModelStats:
    samples: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    success_rate: float
    avg_cost: float
    in_cooldown: bool = False


class MetricsView(Protocol):
    def stats(self, model_key: str) -> ModelStats | None:
        """Measurements for `provider/model` over the window, or None if there are none."""
        ...


class NoMetrics:
    """Nothing measured yet: every model routes on its catalog priors."""

    def stats(self, model_key: str) -> ModelStats | None:
        return None
