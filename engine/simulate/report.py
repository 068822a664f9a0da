"""The report: `simulate(scenario) -> Report`, its rows and event tables, and the plot.

Each row summarises one run (served, mean and p95 latency, cost per request, failures,
denials, bad answers, the model picked most), next to the baselines: latency against
uniform random, cost against always Sonnet, and the regret against the oracle (extra cost
per request, extra mean latency, extra bad answers). For each provider outage and
degradation, how each run met it: calls during it, how soon it routed away, how soon it
came back. For traffic with a `region`, how many requests each run served outside it.
When the policy has a `split`, each strategy run's figures per experiment and arm, with
confidence intervals, and each arm against the first (`ab`). With agent sessions, each
row's prompt-cache hit rate; with token or spend limits, their real usage per window
(`usage`).
`--plot` draws latency, cost and (with an outage) failures over simulated time, every row
distinguishable (`figure`; matplotlib, the `policyctl[plot]` extra).
"""

from __future__ import annotations

import math
import os
import textwrap
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
from engine.simulate.usage import has_sessions, limit_usage, prompt_cache
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
                "bad_answer_rate": _minus(row["bad_answer_rate"], oracle["bad_answer_rate"], 4),
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
            "policies": {p.name: p.path for p in s.policies},
            "explore": s.explore,
            "traffic": {
                "templates": {t.name: mix.get(t.name, 0) for t in s.traffic},
                "mean_input_tokens": round(math.fsum(a.input_tokens for a in self.arrivals) / n, 3),
                "mean_output_tokens": round(
                    math.fsum(a.template.output_tokens for a in self.arrivals) / n, 3
                ),
            },
            "rows": rows,
            "outages": self.outages(),
            "degradations": self.degradations(),
            "residency": self.residency(),
            **self._experiments_field(),
            **self._usage_fields(),
        }

    def _usage_fields(self) -> dict[str, Any]:
        """`prompt_cache` when the traffic has agent sessions, `limit_usage` when the policy
        has token or spend limits it measures (absent otherwise, as before they existed)."""
        out: dict[str, Any] = {}
        if has_sessions(self.arrivals):
            out["prompt_cache"] = prompt_cache(self.runs, self.arrivals)
        usage = limit_usage(self.runs, self.arrivals)
        if usage:
            out["limit_usage"] = usage
        return out

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
                        len(run.fallbacks_outside) if run.kind != "baseline" else None
                    ),
                }
            )
        return {"requests": len(regional), "rows": rows}

    def experiments(self) -> list[ExperimentSummary]:
        """Per strategy run and per experiment of the policy (a `split`): the figures of
        each arm with their confidence intervals, and each arm against the first."""
        return [e for run in self.runs if run.kind != "baseline" for e in summarize(run)]

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
    total = n * (3 + len(strategies) + len(scenario.policies))
    runs: list[Run] = []

    def tell(done: int) -> None:
        if progress is not None:
            progress(len(runs) * n + done, total)

    for baseline in (run_random, run_always, run_oracle):
        tell(0)
        runs.append(baseline(scenario, arrivals))
    for spec in strategies:
        runs.append(
            run_strategy(
                scenario, arrivals, spec.strategy, spec.explore, tell, spec.affinity, spec.settle
            )
        )
    for policy in scenario.policies:
        runs.append(run_strategy(scenario, arrivals, "", progress=tell, policy=policy))
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


# one style per row: a colour, a line style and a marker, so that no two rows look alike
# even where their lines coincide (10 colours and 7 markers: 70 rows before a pair repeats,
# and the line style moves on after them)
COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
          "tab:pink", "tab:gray", "tab:olive", "tab:cyan")  # fmt: skip
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = {"baseline": ("--", "-."), "strategy": ("-", ":")}
MARKS = 12  # markers per line, staggered between rows
DODGE_PT = 3.0  # rows whose lines coincide in a panel are drawn this far apart (points)
COINCIDE = 0.01  # ... when they differ by at most this share of the panel's range


@dataclass(frozen=True, slots=True)
class Style:
    """How one row is drawn in every panel."""

    label: str
    color: str
    linestyle: str
    marker: str


def styles(runs: list[Run]) -> list[Style]:
    """One distinct (colour, line style, marker) per row, in the rows' order."""
    out = []
    for i, run in enumerate(runs):
        label = f"{run.name} (baseline)" if run.kind == "baseline" else run.name
        dashes = LINESTYLES.get(run.kind, LINESTYLES["strategy"])
        span = len(COLORS) * len(MARKERS)
        out.append(
            Style(
                label,
                COLORS[i % len(COLORS)],
                dashes[(i // span) % len(dashes)],
                MARKERS[i % len(MARKERS)],
            )
        )
    return out


@dataclass(frozen=True, slots=True)
class Blocks:
    """A row's means over consecutive blocks of requests (served ones only), at each block's
    middle: latency, cost, and the share of served calls that failed."""

    xs: list[float]
    latency_ms: list[float]
    cost: list[float]
    failure_rate: list[float]


def has_failure_panel(report: Report) -> bool:
    """The plot has a failure panel when a provider of the scenario has an outage."""
    return any(p.outage is not None for p in report.scenario.providers.values())


def figure(report: Report) -> Any:
    """The plot as a matplotlib `Figure` (no pyplot, no global state): latency and cost per
    request over simulated time, and the failure rate when the scenario has an outage; one
    line per row, each with its own colour, line style and marker (`styles`), rows whose
    lines coincide drawn a little apart (and named in the panel), outages shaded red,
    degradations orange, drifts marked, and one legend naming every row."""
    require_matplotlib()
    from matplotlib.figure import Figure

    at = [a.at - START for a in report.arrivals]
    n = len(at)
    window = max(1, n // 60)
    failures = has_failure_panel(report)
    rows = 3 if failures else 2
    height = 3.2 * rows + 0.9  # inches
    fig = Figure(figsize=(13, height))
    axes = fig.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    ax_latency, ax_cost = axes[0], axes[1]
    ax_cost.set_yscale("log")
    blocks = [_blocks(at, run, window) for run in report.runs]
    looks = styles(report.runs)
    panels: list[tuple[Any, str]] = [(ax_latency, "latency_ms"), (ax_cost, "cost")]
    if failures:
        panels.append((axes[2], "failure_rate"))
    for ax, field_name in panels:
        series = [(b.xs, getattr(b, field_name)) for b in blocks]
        _draw(fig, ax, series, looks, log=ax.get_yscale() == "log")
    _mark_events(report, at, axes)
    ax_latency.set_ylabel(f"latency, ms (mean of {window})")
    ax_cost.set_ylabel(f"cost per request, USD (mean of {window})")
    if failures:
        axes[2].set_ylabel(f"failed calls, % of served (of {window})")
        axes[2].yaxis.set_major_formatter(_percent())
    axes[-1].set_xlabel("simulated time, s")
    ax_latency.set_title(f"{report.scenario.name}: {n:,} requests, seed {report.scenario.seed}")
    handles = ax_latency.get_lines()[: len(looks)]
    # the right margin: the legend, and under it each panel's note on coinciding rows
    fig.subplots_adjust(left=0.07, right=0.76, top=1 - 0.35 / height,
                        bottom=0.55 / height, hspace=0.08)  # fmt: skip
    fig.legend(handles, [s.label for s in looks], fontsize=8, loc="upper left",
               bbox_to_anchor=(0.77, 1 - 0.35 / height), frameon=True)  # fmt: skip
    return fig


def plot(report: Report, path: str | os.PathLike[str]) -> None:
    """`figure(report)` written to `path` (PNG, SVG or PDF, by its extension)."""
    figure(report).savefig(os.fspath(path), dpi=120)


def _percent() -> Any:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0, decimals=0)


def _draw(
    fig: Any, ax: Any, series: list[tuple[list[float], list[float]]], looks: list[Style],
    log: bool,
) -> None:  # fmt: skip
    """One line per row; the rows whose lines coincide with an earlier row's are drawn
    `DODGE_PT` points apart from it (the data is not changed) and named in the panel."""
    from matplotlib.transforms import offset_copy

    groups = _coinciding(series, log)
    dodge = {j: k for group in groups for k, j in enumerate(group)}
    for i, ((xs, ys), look) in enumerate(zip(series, looks, strict=True)):
        step = max(1, len(xs) // MARKS)
        transform = ax.transData
        if dodge.get(i):
            transform = offset_copy(ax.transData, fig=fig, y=DODGE_PT * dodge[i], units="points")
        ax.plot(xs, ys, color=look.color, linestyle=look.linestyle, marker=look.marker,
                markersize=4, markevery=(i % step, step), linewidth=1.2, label=look.label,
                transform=transform)  # fmt: skip
    if groups:  # in the margin on the right of the panel, under the legend
        lines = [f"drawn {DODGE_PT:g} pt apart here, as they coincide:"]
        for group in groups:
            text = " = ".join(looks[j].label for j in group)
            lines += textwrap.wrap(text, 44, initial_indent="• ", subsequent_indent="  ")
        ax.text(1.01, 0.0, "\n".join(lines), transform=ax.transAxes, fontsize=7,
                va="bottom", ha="left")  # fmt: skip


def _coinciding(series: list[tuple[list[float], list[float]]], log: bool) -> list[list[int]]:
    """Groups of rows (two or more, by index) whose lines coincide: the same blocks, values
    within `COINCIDE` of the panel's range (of its logarithm on a log scale)."""

    def scaled(ys: list[float]) -> list[float]:
        return [math.log10(y) for y in ys] if log else list(ys)

    values = [scaled(ys) for _, ys in series]
    flat = [v for vs in values for v in vs]
    spread = (max(flat) - min(flat)) if flat else 0.0
    tolerance = COINCIDE * spread if spread > 0 else 1e-12
    groups: list[list[int]] = []
    for j, (xs, _) in enumerate(series):
        for group in groups:
            lead = group[0]
            if series[lead][0] == xs and all(
                abs(a - b) <= tolerance for a, b in zip(values[lead], values[j], strict=True)
            ):
                group.append(j)
                break
        else:
            groups.append([j])
    return [g for g in groups if len(g) > 1]


def _mark_events(report: Report, at: list[float], axes: Any) -> None:
    """Outages shaded red, degradations orange, drifts a dotted line, on every panel."""
    n = len(at)
    top = axes[0]
    for key, provider in report.scenario.providers.items():
        if provider.outage is not None and provider.outage.from_request < n:
            lo = at[provider.outage.from_request]
            hi = at[min(provider.outage.to_request, n) - 1]
            for ax in axes:
                ax.axvspan(lo, hi, color="red", alpha=0.08)
            top.annotate(f"outage {key}", (lo, 0.97), xycoords=("data", "axes fraction"),
                         fontsize=8, va="top")  # fmt: skip
        slow = provider.degradation
        if slow is not None and slow.from_request < n:
            lo, hi = at[slow.from_request], at[min(slow.to_request, n) - 1]
            for ax in axes:
                ax.axvspan(lo, hi, color="orange", alpha=0.08)
            label = f"{slow.latency_factor:g}× slower {key}"
            top.annotate(label, (lo, 0.92), xycoords=("data", "axes fraction"),
                         fontsize=8, va="top")  # fmt: skip
        if provider.drift is not None and provider.drift.at_request < n:
            x = at[provider.drift.at_request]
            for ax in axes:
                ax.axvline(x, color="grey", linestyle=":", linewidth=1)


def _blocks(at: list[float], run: Run, window: int) -> Blocks:
    """Means over consecutive blocks of `window` requests (served ones only)."""
    xs: list[float] = []
    lat: list[float] = []
    cost: list[float] = []
    failed: list[float] = []
    for lo in range(0, len(at), window):
        hi = min(lo + window, len(at))
        served = [i for i in range(lo, hi) if run.chosen[i] >= 0]
        if not served:
            continue
        xs.append(at[(lo + hi - 1) // 2])
        lat.append(math.fsum(run.latency_ms[i] for i in served) / len(served))
        cost.append(max(math.fsum(run.cost[i] for i in served) / len(served), 1e-9))
        failed.append(sum(1 for i in served if not run.ok[i]) / len(served))
    return Blocks(xs, lat, cost, failed)
