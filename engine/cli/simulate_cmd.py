"""`policyctl simulate SCENARIO.yaml`: replay synthetic traffic against each strategy."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from engine.cli import progress
from engine.cli.common import (
    EXIT_OK,
    UsageError,
    add_format,
    dump_json,
    render_table,
)
from engine.simulate import (
    MAX_REQUESTS,
    load_scenario,
    plot,
    require_matplotlib,
    simulate,
    split_strategies,
)
from engine.simulate.ab import METRICS as AB_METRICS
from engine.units import format_money as money

EXAMPLE = """\
examples:
  policyctl simulate examples/simulations/design.yaml
  policyctl simulate examples/simulations/calibrated.yaml
  policyctl simulate examples/simulations/outage.yaml --plot outage.png
  policyctl simulate examples/simulations/ab.yaml
  policyctl simulate examples/simulations/agent.yaml
  policyctl simulate examples/simulations/tpm.yaml
  policyctl simulate examples/simulations/content.yaml
  policyctl simulate my.yaml --strategies "latency,weighted(latency: 70%, cost: 30%)" \\
      --seed 3 --requests 10000 --format json

A scenario gives synthetic providers per catalog model (latency mean and p95, failure
rate, true quality per template, optional drift, outage or degradation), a traffic mix, a
seed and the strategies to compare; see docs/simulate.md. Each strategy runs a fresh
engine on a fake clock with outcomes fed back; three baselines (uniform random, always
Claude 3.5 Sonnet, and an oracle that knows the world) run on the same traffic, and each
row's regret against the oracle is reported. When the policy has a `split`, each strategy
also gets its arms' figures with 95% confidence intervals, and each arm against the first.
Agent sessions (a template's `session`) add each row's prompt-cache hit rate, and the
scenario's `affinity` runs each strategy with it too; token and spend limits add their real
usage per window, and `compare_settlement: true` runs each strategy unsettled too.

exit codes: 0 done, 2 bad scenario or flags
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="replay synthetic traffic against each routing strategy and three baselines",
        description="Simulate routing on synthetic providers: latency, cost, failures,"
        " denials and bad answers per strategy, next to uniform random, always-Sonnet and"
        " oracle baselines, with each strategy's regret against the oracle.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("scenario", metavar="SCENARIO", help="a scenario .yaml file")
    p.add_argument(
        "--strategies",
        metavar="LIST",
        help="comma-separated strategies to compare instead of the scenario's"
        ' (e.g. "latency,cost,weighted(latency: 60%%, cost: 40%%)")',
    )
    p.add_argument("--seed", type=int, metavar="N", help="override the scenario's seed")
    p.add_argument(
        "--requests", type=int, metavar="N", help="override the scenario's request count"
    )
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        help="draw latency and cost over time per strategy, and failures when a provider"
        " has an outage; .png, .svg or .pdf (needs policyctl[plot])",
    )
    add_format(p, default="table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.requests is not None and not 1 <= args.requests <= MAX_REQUESTS:
        raise UsageError(f"--requests must be between 1 and {MAX_REQUESTS:,}")
    strategies = None
    if args.strategies is not None:
        strategies = split_strategies(args.strategies)
        if not strategies:
            raise UsageError("--strategies needs at least one strategy")
    if args.plot is not None:
        require_matplotlib()  # PlotUnavailable: a usage error
    scenario = load_scenario(  # ScenarioError: every problem, one line each
        args.scenario, strategies=strategies, seed=args.seed, requests=args.requests
    )
    runs = 3 + len(scenario.runs())
    with progress.task(f"simulating {runs} runs, requests", unit="requests") as bar:
        report = simulate(scenario, bar)
        bar.summary = f"simulated {scenario.requests:,} requests × {runs} runs"
    data = report.to_dict()
    if args.format == "json":
        dump_json(data)
    else:
        print(render(data))
    if args.plot is not None:
        try:
            plot(report, args.plot)
        except OSError as err:
            raise UsageError(f"cannot write `{args.plot}`: {err.strerror}") from None
    return EXIT_OK


REGRET_HEADERS = ("strategy", "bad answers", "extra cost/request", "extra mean latency",
                  "extra bad answers")  # fmt: skip
EXPLORE_HEADERS = ("strategy", "explored requests", "their cost", "of the run's cost",
                   "run's cost")  # fmt: skip
RESIDENCY_HEADERS = ("strategy", "served", "denied", "served outside region",
                     "fallback chains leaving region")  # fmt: skip


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.1f}%"


def _signed_money(value: float | None) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    return ("+" if value > 0 else "-") + money(abs(value))


def _signed_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+,.0f} ms" if round(value) else "0 ms"


def _name(r: Mapping[str, Any]) -> str:
    return f"{r['name']} ({r['kind']})" if r["kind"] in ("baseline", "policy") else r["name"]


def _requests(count: int, seconds: float | None) -> str:
    return f"{count:,} requests" + ("" if seconds is None else f" ({seconds:.1f}s)")


def _window_rows(rows: list[Mapping[str, Any]], calls: str, ended: bool) -> list[tuple[Any, ...]]:
    """The rows of an outage or degradation table: calls, routed away, back (`ended`: the
    run ended before the window did)."""
    out = []
    for r in rows:
        if r["routed_away_after"] is None:
            away = "never" if r[calls] else "-"
            back = "-"
        else:
            away = (
                f"{r['routed_away_after']:,} requests ({r['routed_away_after_s']:.1f}s,"
                f" {r['calls_before_away']} calls)"
            )
            if r["back_after"] is not None:
                back = _requests(r["back_after"], r["back_after_s"])
            else:
                back = "(run ended first)" if ended else "never"
        out.append((_name(r), r[calls], away, back))
    return out


def render(data: Mapping[str, Any]) -> str:
    """The report for people: the rows, the regret against the oracle, then one table per
    outage and per degradation, and the residency table when the traffic has regions."""
    traffic = data["traffic"]
    lines = [
        f"scenario {data['scenario']}: {data['requests']:,} requests at"
        f" {data['rate_per_s']:g}/s over {data['duration_s']:,.0f}s (seed {data['seed']})",
        "traffic: "
        + ", ".join(f"{name} {count:,}" for name, count in traffic["templates"].items())
        + f"; {traffic['mean_input_tokens']:.0f} input and {traffic['mean_output_tokens']:.0f}"
        " output tokens per request on average",
        "",
    ]
    headers = ("strategy", "mean", "p95", "cost/request", "failures", "denials",
               "Δ latency vs random", "Δ cost vs sonnet", "top model")  # fmt: skip
    rows = []
    for r in data["rows"]:
        top = (
            f"{r['top_model'].split('/', 1)[1]} {r['top_share'] * 100:.0f}%"
            if r["top_model"]
            else None
        )
        cost = money(r["cost_per_request"]) if r["cost_per_request"] is not None else None
        rows.append((_name(r), _ms(r["mean_ms"]), _ms(r["p95_ms"]), cost, r["failures"],
                     r["denials"], _pct(r["latency_vs_random"]), _pct(r["cost_vs_sonnet"]),
                     top))  # fmt: skip
    lines.append(render_table(headers, rows))
    lines += ["", "regret against the oracle (the cheapest model that is up and good enough)"]
    rows = []
    for r in data["rows"]:
        rate = r["bad_answer_rate"]
        bad = f"{r['bad_answers']:,}" + ("" if rate is None else f" ({rate * 100:.1f}%)")
        regret = r["regret"]
        rows.append((_name(r), bad, _signed_money(regret["cost_per_request"]),
                     _signed_ms(regret["mean_ms"]), f"{regret['bad_answers']:+,}"
                     if regret["bad_answers"] else "0"))  # fmt: skip
    lines.append(
        render_table(
            REGRET_HEADERS,
            rows,
        )
    )
    for outage in data["outages"]:
        lines += [
            "",
            f"outage {outage['provider']}: requests {outage['from_request']:,}"
            f"–{outage['to_request']:,}",
            render_table(
                ("strategy", "failed calls", "routed away after", "back after recovery"),
                _window_rows(
                    outage["rows"], "calls_during_outage", outage["to_request"] >= data["requests"]
                ),
            ),
        ]
    for slow in data["degradations"]:
        span = ""
        if slow["from_s"] is not None:
            end = f"{slow['to_s']:,.0f}s" if slow["to_s"] is not None else "the end"
            span = f" ({slow['from_s']:,.0f}s–{end})"
        lines += [
            "",
            f"degradation {slow['provider']}: {slow['latency_factor']:g}× slower, requests"
            f" {slow['from_request']:,}–{slow['to_request']:,}{span}",
            render_table(
                ("strategy", "slow calls", "routed away after", "back after recovery"),
                _window_rows(slow["rows"], "calls_during", slow["to_s"] is None),
            ),
        ]
    strategies = [r for r in data["rows"] if r["kind"] != "baseline"]
    if data["explore"] is not None or any(r["explored"] for r in strategies):
        lines += ["", "exploration: requests sent to a model with few samples, and what they cost"]
        rows = []
        for r in strategies:
            share = r["explored"] / data["requests"] if data["requests"] else 0.0
            total = r["total_cost"]
            part = r["explored_cost"] / total if total else 0.0
            rows.append((_name(r), f"{r['explored']:,} ({share * 100:.1f}%)",
                         money(r["explored_cost"]), f"{part * 100:.1f}%",
                         money(total)))  # fmt: skip
        lines.append(render_table(EXPLORE_HEADERS, rows))
    residency = data["residency"]
    if residency is not None:
        lines += ["", f"residency: {residency['requests']:,} requests with a region"]
        rows = []
        for r in residency["rows"]:
            chain = "-" if r["fallbacks_outside"] is None else f"{r['fallbacks_outside']:,}"
            rows.append((_name(r), f"{r['served']:,}", f"{r['denied']:,}",
                         f"{r['outside']:,}", chain))  # fmt: skip
        lines.append(
            render_table(
                RESIDENCY_HEADERS,
                rows,
            )
        )
    lines += _experiment_lines(data.get("experiments", ()))
    lines += _prompt_cache_lines(data.get("prompt_cache"))
    lines += _limit_usage_lines(data.get("limit_usage", ()))
    return "\n".join(lines)


# ---------------------------------------------------------------- prompt caches and limits

CACHE_HEADERS = ("strategy", "cache hit rate", "turns moved", "cost",
                 "Δ cost vs without affinity")  # fmt: skip
USAGE_HEADERS = ("strategy", "mean per window", "busiest window", "denied",
                 "refused, would have fit")  # fmt: skip


def _prompt_cache_lines(cache: Mapping[str, Any] | None) -> list[str]:
    """Per row: the share of input tokens read from a provider's cache, the session turns
    sent to another model than their previous turn, the run's cost, and with `affinity`
    the cost against the same run without it."""
    if cache is None:
        return []
    lines = [
        "",
        f"prompt caches: {cache['turns']:,} turns in {cache['sessions']:,} agent sessions;"
        " a cached prompt is billed at the catalog's cached-input price",
    ]
    rows = []
    for r in cache["rows"]:
        rate = "-" if r["hit_rate"] is None else f"{r['hit_rate'] * 100:.1f}%"
        moved = f"{r['turns_moved']:,} of {r['later_turns']:,}"
        rows.append((_name(r), rate, moved, money(r["total_cost"]),
                     _pct(r["cost_vs_without_affinity"])))  # fmt: skip
    lines.append(render_table(CACHE_HEADERS, rows))
    return lines


def _usage_amount(unit: str, value: float | None, share: float | None) -> str:
    if value is None:
        return "-"
    shown = money(value) if unit == "spend" else f"{value:,.0f}"
    return f"{shown} ({_pct(share)})"


def _limit_usage_lines(usage: Any) -> list[str]:
    """Per token or spend limit: the real usage it admitted per window against the limit,
    its denials, and those a limiter knowing the real usage would have admitted."""
    lines: list[str] = []
    for u in usage:
        windows = u["rows"][0]["windows"] if u["rows"] else 0
        what = "real tokens" if u["unit"] == "tokens" else "real spend"
        lines += [
            "",
            f"{u['limit']}: {what} admitted per window, against the limit"
            f" ({windows:,} windows; the first, when the bucket starts full, left out)",
        ]
        rows = []
        for r in u["rows"]:
            fit = "-" if r["would_have_fit"] is None else f"{r['would_have_fit']:,}"
            rows.append((r["name"], _usage_amount(u["unit"], r["mean_per_window"],
                         r["mean_vs_limit"]), _usage_amount(u["unit"], r["max_per_window"],
                         r["max_vs_limit"]), f"{r['denials']:,}", fit))  # fmt: skip
        lines.append(render_table(USAGE_HEADERS, rows))
    return lines


# ---------------------------------------------------------------- the A/B section


def _ab_value(metric: str, value: float, signed: bool = False) -> str:
    """One figure of the A/B table: money, milliseconds, or a rate (a difference of rates
    in percentage points)."""
    if metric == "cost_per_request":
        return _signed_money(value) if signed else money(value)
    if metric.endswith("_ms"):
        return f"{value:+,.0f}" if signed else f"{value:,.0f}"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}%"


def _ab_cell(metric: str, found: Mapping[str, float] | None, signed: bool = False) -> str:
    """`value [low, high]`, with the unit once: `797 ms [782, 813]`, `+0.3 pp [-0.3, +1.0]`."""
    if found is None or found.get("value") is None:
        return "-"
    value, low, high = (_ab_value(metric, found[k], signed) for k in ("value", "low", "high"))
    if metric.endswith("_ms"):
        return f"{value} ms [{low}, {high}]"
    if metric.endswith("_rate"):
        if signed:
            return f"{value} pp [{low}, {high}]"
        return f"{value} [{low}, {high}]"
    return f"{value} [{low}, {high}]"


def _experiment_lines(experiments: Any) -> list[str]:
    """Per strategy run and experiment: a table of the figures per arm (95% confidence
    intervals), and each arm after the first against the first, with a verdict."""
    lines: list[str] = []
    for e in experiments:
        arms = e["arms"]
        control = arms[0]["arm"]
        others = [a["arm"] for a in arms[1:]]
        total = sum(a["requests"] for a in arms)
        lines += [
            "",
            f"experiment {e['experiment']} (split by {e['key']}), strategy {e['name']}:"
            " per arm, with 95% confidence intervals",
        ]
        headers = ["metric", *(a["arm"] for a in arms)]
        for other in others:
            headers += [f"{other} − {control}", "verdict"]
        share = [
            f"{a['requests']:,}" + (f" ({a['requests'] / total * 100:.1f}%)" if total else "")
            for a in arms
        ]
        rows: list[tuple[Any, ...]] = [("requests", *share, *([""] * 2 * len(others)))]
        if any(a["denials"] for a in arms):
            denials = [f"{a['denials']:,}" for a in arms]
            rows.append(("denials", *denials, *([""] * 2 * len(others))))
        for metric, label in ((m.name, m.label) for m in AB_METRICS):
            cells = [_ab_cell(metric, a[metric]) for a in arms]
            for other in others:
                [d] = [d for d in e["differences"] if d["metric"] == metric and d["arm"] == other]
                cells += [_ab_cell(metric, d, signed=True), d["verdict"]]
            rows.append((label, *cells))
        lines.append(render_table(headers, rows))
    return lines
