"""The report: `simulate(scenario) -> Report`, its rows and event tables, and the plot.

Each row summarises one run (served, mean and p95 latency, cost per request, failures,
denials, bad answers, the model picked most), next to the baselines: latency against
uniform random, cost against always Sonnet, and the regret against the oracle (extra cost
per request, extra mean latency, extra bad answers). For each provider outage and
degradation, how each run met it: calls during it, how soon it routed away, how soon it
came back. For traffic with a `region`, how many requests each run served outside it.
When the policy has a `split`, each strategy run's figures per experiment and arm, with
confidence intervals, and each arm against the first (`ab`).
`--plot` draws latency and cost over simulated time (matplotlib, the `policyctl[plot]`
extra).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.errors import PolicyctlError
from engine.simulate.ab import ExperimentSummary, summarize
from engine.simulate.run import (
    ORACLE_ROW,
    RANDOM_ROW,
    SONNET_ROW,
    Run,
    run_always,
    run_oracle,
    run_random,
    run_strategy,
)
from engine.simulate.scenario import Scenario
from engine.simulate.world import START, Arrival, draw_arrivals


class PlotUnavailable(PolicyctlError):
    """`--plot` without matplotlib installed."""


@dataclass
class Report:
    scenario: Scenario
    arrivals: list[Arrival]
    runs: list[Run]

    def to_dict(self) -> dict[str, Any]:
        s = self.scenario
        rows = [run.summary() for run in self.runs]
        by_name = {row["name"]: row for row in rows}
        base_latency = by_name[RANDOM_ROW]["mean_ms"]
        base_cost = by_name[SONNET_ROW]["cost_per_request"]
        oracle = by_name[ORACLE_ROW]
        for row in rows:
            row["latency_vs_random"] = _ratio(row["mean_ms"], base_latency)
            row["cost_vs_sonnet"] = _ratio(row["cost_per_request"], base_cost)
            row["regret"] = {
                "cost_per_request": _minus(row["cost_per_request"], oracle["cost_per_request"], 12),
                "mean_ms": _minus(row["mean_ms"], oracle["mean_ms"], 3),
                "bad_answers": row["bad_answers"] - oracle["bad_answers"],
            }
        duration = self.arrivals[-1].at - START if self.arrivals else 0.0
        n = max(len(self.arrivals), 1)
        mix = Counter(a.template.name for a in self.arrivals)
        return {
            "scenario": s.path,
            "name": s.name,
            "seed": s.seed,
            "requests": s.requests,
            "rate_per_s": s.rate_per_s,
            "duration_s": round(duration, 3),
            "strategies": list(s.strategies),
            "explore": s.explore,
            "traffic": {
                "templates": {t.name: mix.get(t.name, 0) for t in s.traffic},
                "mean_input_tokens": round(
                    math.fsum(a.template.input_tokens for a in self.arrivals) / n, 3
                ),
                "mean_output_tokens": round(
                    math.fsum(a.template.output_tokens for a in self.arrivals) / n, 3
                ),
            },
            "rows": rows,
            "outages": self.outages(),
            "degradations": self.degradations(),
            "residency": self.residency(),
            **self._experiments_field(),
        }

    def outages(self) -> list[dict[str, Any]]:
        out = []
        at = [a.at for a in self.arrivals]
        for key, provider in self.scenario.providers.items():
            outage = provider.outage
            if outage is None:
                continue
            start, end = outage.from_request, outage.to_request
            rows = []
            for run in self.runs:
                rows.append(_window_row(run, key, start, end, at, "calls_during_outage"))
            out.append({"provider": key, "from_request": start, "to_request": end, "rows": rows})
        return out

    def degradations(self) -> list[dict[str, Any]]:
        """Per degradation: how each run met it, as for an outage (`_window_row`)."""
        out = []
        at = [a.at for a in self.arrivals]
        n = len(at)
        for key, provider in self.scenario.providers.items():
            slow = provider.degradation
            if slow is None:
                continue
            start, end = slow.from_request, slow.to_request
            rows = [_window_row(run, key, start, end, at, "calls_during") for run in self.runs]
            out.append(
                {
                    "provider": key,
                    "from_request": start,
                    "to_request": end,
                    "from_s": round(at[start] - START, 3) if start < n else None,
                    "to_s": round(at[end] - START, 3) if end < n else None,
                    "latency_factor": slow.latency_factor,
                    "rows": rows,
                }
            )
        return out

    def residency(self) -> dict[str, Any] | None:
        """For requests with a `region`: how many each run served on a model whose catalog
        `regions` do not include it (None when no template gives a region)."""
        regional = [a.index for a in self.arrivals if a.template.region is not None]
        if not any(t.region is not None for t in self.scenario.traffic):
            return None
        models = self.scenario.catalog.models
        region_of = [a.template.region for a in self.arrivals]
        rows = []
        for run in self.runs:
            served = [i for i in regional if run.chosen[i] >= 0]
            outside = [i for i in served if region_of[i] not in models[run.chosen[i]].regions]
            rows.append(
                {
                    "name": run.name,
                    "kind": run.kind,
                    "served": len(served),
                    "denied": len(regional) - len(served),
                    "outside": len(outside),
                    "first_outside": outside[0] if outside else None,
                    "fallbacks_outside": (
                        len(run.fallbacks_outside) if run.kind == "strategy" else None
                    ),
                }
            )
        return {"requests": len(regional), "rows": rows}

    def experiments(self) -> list[ExperimentSummary]:
        """Per strategy run and per experiment of the policy (a `split`): the figures of
        each arm with their confidence intervals, and each arm against the first."""
        return [e for run in self.runs if run.kind == "strategy" for e in summarize(run)]

    def _experiments_field(self) -> dict[str, Any]:
        """`experiments` in the JSON, only when the policy splits (so a report without a
        split is what it was before experiments existed)."""
        found = self.experiments()
        return {"experiments": [e.to_dict() for e in found]} if found else {}


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or not base:
        return None
    return round(value / base - 1.0, 4)


def _minus(value: float | None, base: float | None, digits: int) -> float | None:
    if value is None or base is None:
        return None
    return round(value - base, digits)


def _window_row(
    run: Run, key: str, start: int, end: int, at: list[float], calls_name: str
) -> dict[str, Any]:
    """How a run met an outage or a degradation of `key` over requests [start, end)."""
    n = len(run.chosen)
    index = run.keys.index(key)
    chosen = run.chosen
    calls = sum(1 for i in range(start, min(end, n)) if chosen[i] == index)
    row: dict[str, Any] = {
        "name": run.name,
        "kind": run.kind,
        calls_name: calls,
        "routed_away_after": None,
        "routed_away_after_s": None,
        "calls_before_away": None,
        "back_after": None,
        "back_after_s": None,
    }
    drops = [i for i in run.health_drops.get(key, ()) if i >= start]
    if not drops or start >= n:
        return row
    away = drops[0]
    row["routed_away_after"] = away - start
    row["routed_away_after_s"] = round(at[away] - at[start], 3)
    row["calls_before_away"] = sum(1 for i in range(start, away) if chosen[i] == index)
    for i in range(max(end, away), n):
        if chosen[i] == index:
            row["back_after"] = i - end
            row["back_after_s"] = round(at[i] - at[end], 3) if end < n else None
            break
    return row


def simulate(
    scenario: Scenario, progress: Callable[[int, int | None], None] | None = None
) -> Report:
    """Run the baselines and every strategy of the scenario on the same traffic.
    `progress(requests done, requests to do)`: over all runs (each run's requests count),
    told after each baseline and every `PROGRESS_EVERY` requests of a strategy run."""
    arrivals = draw_arrivals(
        scenario.seed, scenario.requests, scenario.rate_per_s, scenario.traffic
    )
    strategies = scenario.runs()
    n = scenario.requests
    total = n * (3 + len(strategies))
    runs: list[Run] = []

    def tell(done: int) -> None:
        if progress is not None:
            progress(len(runs) * n + done, total)

    for baseline in (run_random, run_always, run_oracle):
        tell(0)
        runs.append(baseline(scenario, arrivals))
    for s, explore in strategies:
        runs.append(run_strategy(scenario, arrivals, s, explore, tell))
    tell(0)
    return Report(scenario, arrivals, runs)


# ---------------------------------------------------------------- rendering


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(
            "--plot needs matplotlib, which is not installed: pip install 'policyctl[plot]'"
        ) from None


def plot(report: Report, path: str | os.PathLike[str]) -> None:
    """Latency and cost per request over simulated time, one line per row (rolling means)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    at = [a.at - START for a in report.arrivals]
    n = len(at)
    window = max(1, n // 60)
    fig, (ax_latency, ax_cost) = plt.subplots(2, 1, sharex=True, figsize=(12, 7))
    for run in report.runs:
        xs, lat, cost = _rolling(at, run, window)
        style = "--" if run.kind == "baseline" else "-"
        label = f"{run.name} (baseline)" if run.kind == "baseline" else run.name
        ax_latency.plot(xs, lat, style, label=label, linewidth=1.2)
        ax_cost.plot(xs, cost, style, label=label, linewidth=1.2)
    for key, provider in report.scenario.providers.items():
        if provider.outage is not None and provider.outage.from_request < n:
            lo = at[provider.outage.from_request]
            hi = at[min(provider.outage.to_request, n) - 1]
            for ax in (ax_latency, ax_cost):
                ax.axvspan(lo, hi, color="red", alpha=0.08)
            ax_latency.annotate(f"outage {key}", (lo, 0.97), xycoords=("data", "axes fraction"),
                                fontsize=8, va="top")  # fmt: skip
        slow = provider.degradation
        if slow is not None and slow.from_request < n:
            lo, hi = at[slow.from_request], at[min(slow.to_request, n) - 1]
            for ax in (ax_latency, ax_cost):
                ax.axvspan(lo, hi, color="orange", alpha=0.08)
            label = f"{slow.latency_factor:g}× slower {key}"
            ax_latency.annotate(label, (lo, 0.92), xycoords=("data", "axes fraction"),
                                fontsize=8, va="top")  # fmt: skip
        if provider.drift is not None and provider.drift.at_request < n:
            x = at[provider.drift.at_request]
            for ax in (ax_latency, ax_cost):
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    ax_latency.set_ylabel(f"latency, ms (mean of {window})")
    ax_cost.set_ylabel(f"cost per request, USD (mean of {window})")
    ax_cost.set_xlabel("simulated time, s")
    ax_cost.set_yscale("log")
    ax_latency.set_title(f"{report.scenario.name}: {n:,} requests, seed {report.scenario.seed}")
    ax_latency.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def _rolling(
    at: list[float], run: Run, window: int
) -> tuple[list[float], list[float], list[float]]:
    """Means over consecutive blocks of `window` requests (served ones only)."""
    xs: list[float] = []
    lat: list[float] = []
    cost: list[float] = []
    for lo in range(0, len(at), window):
        hi = min(lo + window, len(at))
        served = [i for i in range(lo, hi) if run.chosen[i] >= 0]
        if not served:
            continue
        xs.append(at[(lo + hi - 1) // 2])
        lat.append(math.fsum(run.latency_ms[i] for i in served) / len(served))
        cost.append(max(math.fsum(run.cost[i] for i in served) / len(served), 1e-9))
    return xs, lat, cost
