"""What the runs used: prompt caches (agent sessions) and token and spend limits.

`prompt_cache`: per row, the input tokens of its answers, the share read from the
providers' caches (the cache hit rate), how often a session's turn went to another model
than its previous turn, and, for a run with the scenario's `affinity`, its cost against the
same run without it.

`limit_usage`: per strategy run and per `tokens` or `spend` limit of the policy (scope
`global`, `user`, `provider` or `model`, without `when`, not shadow), the real usage of the
requests it admitted per window of the limit (fixed windows of simulated time from the
first arrival) against the limit, the denials it made, and how many of those would have
fit: a bucket of the limit's size, charged at admission with what each admitted request
really used (known in hindsight), had room for the denied request's real tokens (and then
takes them: it counts what a limiter that knew the real usage would have admitted too).
The mean per window is what the limit holds the traffic to; the busiest window also
shows how unevenly it let it through.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from engine.language.program import CompiledLimit
from engine.simulate.run import Run
from engine.simulate.world import START, Arrival
from engine.units import format_duration

USAGE_SCOPES = ("global", "user", "provider", "model")
USAGE_UNITS = ("tokens", "spend")


def has_sessions(arrivals: Sequence[Arrival]) -> bool:
    return any(a.session is not None for a in arrivals)


def prompt_cache(runs: Sequence[Run], arrivals: Sequence[Arrival]) -> dict[str, Any]:
    """The sessions and their turns, and per row: input tokens answered, cached tokens,
    hit rate, turns moved, cost."""
    rows = []
    by_name = {run.name: run for run in runs}
    for run in runs:
        answered = [i for i, ok in enumerate(run.ok) if ok]
        input_tokens = sum(arrivals[i].input_tokens for i in answered)
        cached = sum(run.cached)
        moved, later = _turns_moved(run, arrivals)
        cost = math.fsum(run.cost)
        row: dict[str, Any] = {
            "name": run.name,
            "kind": run.kind,
            "affinity": run.affinity,
            "input_tokens": input_tokens,
            "cached_tokens": cached,
            "hit_rate": round(cached / input_tokens, 4) if input_tokens else None,
            "turns_moved": moved,
            "later_turns": later,
            "total_cost": round(cost, 10),
            "cost_vs_without_affinity": None,
        }
        if run.affinity:
            base = by_name.get(run.name.replace(" + affinity", "", 1))
            base_cost = math.fsum(base.cost) if base is not None else 0.0
            if base_cost:
                row["cost_vs_without_affinity"] = round(cost / base_cost - 1.0, 4)
        rows.append(row)
    sessions = {a.session for a in arrivals if a.session is not None}
    turns = sum(1 for a in arrivals if a.session is not None)
    return {"sessions": len(sessions), "turns": turns, "rows": rows}


def _turns_moved(run: Run, arrivals: Sequence[Arrival]) -> tuple[int, int]:
    """(turns served on another model than their session's previous served turn, turns
    served after an earlier served turn of their session)."""
    last: dict[str, int] = {}
    moved = later = 0
    for a in arrivals:
        if a.session is None:
            continue
        chosen = run.chosen[a.index]
        if chosen < 0:
            continue
        before = last.get(a.session)
        if before is not None:
            later += 1
            moved += before != chosen
        last[a.session] = chosen
    return moved, later


def reported_limits(run: Run) -> list[CompiledLimit]:
    """The run's limits that `limit_usage` measures."""
    return [
        limit
        for limit in run.limits
        if limit.unit in USAGE_UNITS
        and limit.scope in USAGE_SCOPES
        and limit.when is None
        and not limit.shadow
    ]


def limit_text(limit: CompiledLimit) -> str:
    """`limit global tokens 20,000 per 1m`."""
    amount = f"${limit.amount:,.6g}" if limit.unit == "spend" else f"{limit.amount:,.0f}"
    key = f' "{limit.key}"' if limit.key is not None else ""
    burst = f" burst {limit.burst:,.0f}" if limit.burst else ""
    window = format_duration(limit.window_ms)
    return f"limit {limit.scope}{key} {limit.unit} {amount} per {window}{burst}"


def limit_usage(runs: Sequence[Run], arrivals: Sequence[Arrival]) -> list[dict[str, Any]]:
    """Per token or spend limit (by its text, in policy order): one row per strategy run."""
    out: dict[str, dict[str, Any]] = {}
    for run in runs:
        if run.kind == "baseline":
            continue
        limits = reported_limits(run)
        keyed = {(lim.scope, lim.unit, lim.key) for lim in limits if lim.key is not None}
        for limit in limits:
            text = limit_text(limit)
            entry = out.setdefault(
                text,
                {
                    "limit": text,
                    "scope": limit.scope,
                    "unit": limit.unit,
                    "amount": limit.amount,
                    "capacity": limit.capacity,
                    "window_s": limit.window_ms / 1000.0,
                    "rows": [],
                },
            )
            entry["rows"].append(_usage_row(run, arrivals, limit, keyed))
    return list(out.values())


def _key_of(run: Run, a: Arrival, limit: CompiledLimit) -> str | None:
    """The bucket a served request counted in, for `limit`'s scope (None: none)."""
    if limit.scope == "global":
        return ""
    if limit.scope == "user":
        return a.user
    model = run.keys[run.chosen[a.index]]
    return model if limit.scope == "model" else model.partition("/")[0]


def _usage_row(
    run: Run,
    arrivals: Sequence[Arrival],
    limit: CompiledLimit,
    keyed: set[tuple[str, str, str | None]],
) -> dict[str, Any]:
    window_s = limit.window_ms / 1000.0
    rate = limit.amount / window_s  # per second
    capacity = limit.capacity
    tokens = limit.unit == "tokens"

    def applies(key: str | None) -> bool:
        if key is None:
            return False
        if limit.key is not None:
            return key == limit.key
        return (limit.scope, limit.unit, key) not in keyed  # a keyed limit replaces it

    end = arrivals[-1].at if arrivals else START
    full_windows = int((end - START) // window_s)  # windows that ended before the last arrival
    used: dict[tuple[str, int], float] = {}
    ideal: dict[str, tuple[float, float]] = {}  # key -> (level, at)
    denials = fit = 0

    def level_at(key: str, at: float) -> float:
        level, when = ideal.get(key, (capacity, at))
        return min(capacity, level + (at - when) * rate)

    for a in arrivals:
        i = a.index
        real_tokens = a.input_tokens + a.template.output_tokens
        if run.chosen[i] < 0:
            denial = run.denials.get(i)
            if denial is None or denial[0] != limit.scope or denial[2] != limit.unit:
                continue
            key = (
                a.user if limit.scope == "user" else ("" if limit.scope == "global" else denial[1])
            )
            if not applies(key):
                continue
            assert key is not None
            denials += 1
            level = level_at(key, a.at)
            if tokens and level >= real_tokens:
                fit += 1  # … and takes its room: the next denial finds less
                ideal[key] = (level - real_tokens, a.at)
            continue
        key = _key_of(run, a, limit)
        if not applies(key):
            continue
        assert key is not None
        if tokens:
            real = float(a.input_tokens + (a.template.output_tokens if run.ok[i] else 0))
        else:
            real = run.cost[i]
        window = int((a.at - START) // window_s)
        used[(key, window)] = used.get((key, window), 0.0) + real
        ideal[key] = (level_at(key, a.at) - real, a.at)
    # the first window is left out (a bucket starts full: up to its capacity on top of the
    # window's refill), and so is the last one when the run ended inside it
    counted = [v for (_, w), v in used.items() if 1 <= w < full_windows]
    digits = 0 if tokens else 8
    mean = math.fsum(counted) / len(counted) if counted else None
    most = max(counted) if counted else None
    return {
        "name": run.name,
        "settled": run.settled,
        "windows": len(counted),
        "mean_per_window": None if mean is None else round(mean, digits),
        "max_per_window": None if most is None else round(most, digits),
        "mean_vs_limit": None if mean is None else round(mean / limit.amount - 1.0, 4),
        "max_vs_limit": None if most is None else round(most / limit.amount - 1.0, 4),
        "denials": denials,
        "would_have_fit": fit if tokens else None,
    }
