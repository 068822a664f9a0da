"""The A/B report: for a policy with a `split`, each run's figures per experiment and arm.

Per arm: the requests the split sent to it, the calls made and the denials, and with a 95%
confidence interval (`stats`) the mean cost per call made, the mean and p95 latency of the
calls made, the failure rate (failed calls over calls made) and the bad-answer rate (bad
answers over answers, the successful calls) — the same definitions as the report's rows.
Then each arm after the first against the first (the control, A): the difference B − A of
each figure with its interval, and a verdict that names a direction only when the interval
excludes zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.simulate.run import Run, arm_keys
from engine.simulate.stats import (
    Interval,
    mean_difference,
    mean_interval,
    percentile_difference,
    percentile_interval,
    proportion_difference,
    wilson,
)

NO_DIFFERENCE = "no significant difference"
TOO_FEW = "too few samples"


@dataclass(frozen=True, slots=True)
class Metric:
    """A figure compared between arms: its name, and how a verdict words each direction."""

    name: str  # the JSON key
    label: str  # the table's
    lower: str  # the verdict when B's is lower: "cheaper"
    higher: str  # … and when higher: "dearer"
    digits: int  # rounding in the JSON


METRICS = (
    Metric("cost_per_request", "cost/request", "cheaper", "dearer", 12),
    Metric("mean_ms", "mean latency", "faster", "slower", 3),
    Metric("p95_ms", "p95 latency", "faster at p95", "slower at p95", 3),
    Metric("failure_rate", "failure rate", "fails less", "fails more", 6),
    Metric("bad_answer_rate", "bad-answer rate", "fewer bad answers", "more bad answers", 6),
)


@dataclass(frozen=True, slots=True)
class ArmSamples:
    """What one arm's requests came to in one run (the samples behind its figures)."""

    arm: str
    requests: int
    latency_ms: tuple[float, ...]  # per call made
    cost: tuple[float, ...]  # per call made (a failed call costs nothing)
    failures: int
    bad_answers: int

    @property
    def calls(self) -> int:
        return len(self.latency_ms)

    @property
    def answers(self) -> int:
        return self.calls - self.failures


@dataclass(frozen=True, slots=True)
class ArmSummary:
    arm: str
    requests: int
    calls: int
    denials: int
    failures: int
    answers: int
    bad_answers: int
    figures: Mapping[str, Interval | None]  # by Metric.name


@dataclass(frozen=True, slots=True)
class Difference:
    """One figure of arm `arm` against the control arm `against`: B − A."""

    metric: str
    arm: str
    against: str
    interval: Interval | None
    verdict: str


@dataclass(frozen=True, slots=True)
class ExperimentSummary:
    run: str  # the strategy's row name
    experiment: str
    key: str
    arms: tuple[ArmSummary, ...]
    differences: tuple[Difference, ...]

    def to_dict(self) -> dict[str, Any]:
        digits = {m.name: m.digits for m in METRICS}
        return {
            "name": self.run,
            "experiment": self.experiment,
            "key": self.key,
            "arms": [
                {
                    "arm": a.arm,
                    "requests": a.requests,
                    "calls": a.calls,
                    "denials": a.denials,
                    "failures": a.failures,
                    "answers": a.answers,
                    "bad_answers": a.bad_answers,
                    **{name: _interval(value, digits[name]) for name, value in a.figures.items()},
                }
                for a in self.arms
            ],
            "differences": [
                {
                    "metric": d.metric,
                    "arm": d.arm,
                    "against": d.against,
                    **(
                        _interval(d.interval, digits[d.metric])
                        or dict.fromkeys(("value", "low", "high"))
                    ),
                    "verdict": d.verdict,
                }
                for d in self.differences
            ],
        }


def _interval(interval: Interval | None, digits: int) -> dict[str, float] | None:
    if interval is None:
        return None
    return {
        "value": round(interval.value, digits),
        "low": round(interval.low, digits),
        "high": round(interval.high, digits),
    }


def arm_samples(run: Run) -> dict[tuple[str, str], ArmSamples]:
    """Per (experiment, arm): the run's samples (every arm, even one with no request)."""
    keys = arm_keys(run.experiments)
    requests = [0] * len(keys)
    latency: list[list[float]] = [[] for _ in keys]
    cost: list[list[float]] = [[] for _ in keys]
    failures = [0] * len(keys)
    bad = [0] * len(keys)
    for i, k in enumerate(run.arm):
        if k < 0:
            continue
        requests[k] += 1
        if run.chosen[i] < 0:
            continue  # denied
        latency[k].append(run.latency_ms[i])
        cost[k].append(run.cost[i])
        if not run.ok[i]:
            failures[k] += 1
        bad[k] += run.bad[i]
    return {
        key: ArmSamples(key[1], requests[k], tuple(latency[k]), tuple(cost[k]), failures[k], bad[k])
        for k, key in enumerate(keys)
    }


def _summary(s: ArmSamples) -> ArmSummary:
    return ArmSummary(
        arm=s.arm,
        requests=s.requests,
        calls=s.calls,
        denials=s.requests - s.calls,
        failures=s.failures,
        answers=s.answers,
        bad_answers=s.bad_answers,
        figures={
            "cost_per_request": mean_interval(s.cost),
            "mean_ms": mean_interval(s.latency_ms),
            "p95_ms": percentile_interval(s.latency_ms, 0.95),
            "failure_rate": wilson(s.failures, s.calls),
            "bad_answer_rate": wilson(s.bad_answers, s.answers),
        },
    )


def _differences(a: ArmSamples, b: ArmSamples) -> list[Difference]:
    intervals = {
        "cost_per_request": mean_difference(a.cost, b.cost),
        "mean_ms": mean_difference(a.latency_ms, b.latency_ms),
        "p95_ms": percentile_difference(a.latency_ms, b.latency_ms, 0.95),
        "failure_rate": proportion_difference(a.failures, a.calls, b.failures, b.calls),
        "bad_answer_rate": proportion_difference(
            a.bad_answers, a.answers, b.bad_answers, b.answers
        ),
    }
    return [
        Difference(m.name, b.arm, a.arm, intervals[m.name], verdict(m, b.arm, intervals[m.name]))
        for m in METRICS
    ]


def verdict(metric: Metric, arm: str, interval: Interval | None) -> str:
    """`quality dearer`, `quality fewer bad answers`, or no significant difference."""
    if interval is None:
        return TOO_FEW
    sign = interval.sign()
    if sign == 0 or math.isnan(interval.value):
        return NO_DIFFERENCE
    return f"{arm} {metric.lower if sign < 0 else metric.higher}"


def summarize(run: Run) -> list[ExperimentSummary]:
    """Each experiment of the run's policy, per arm, and each arm against the first."""
    samples = arm_samples(run)
    out = []
    for e in run.experiments:
        arms: Sequence[ArmSamples] = [samples[(e.name, arm)] for arm in e.arms]
        differences = [d for b in arms[1:] for d in _differences(arms[0], b)]
        out.append(
            ExperimentSummary(
                run=run.name,
                experiment=e.name,
                key=e.key,
                arms=tuple(_summary(s) for s in arms),
                differences=tuple(differences),
            )
        )
    return out
