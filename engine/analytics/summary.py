"""What `policyctl metrics show` reports, as one JSON-ready document: read from a state file
by the command, or from a running server's log by `GET /v1/metrics/summary` (the command's
`--server`), so both print the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.analytics import queries
from engine.units import format_timestamp

BY = ("model", "arm")
SUMMARY_PATH = "/v1/metrics/summary"  # where `policyctl serve` answers it


@dataclass(frozen=True)
class SummaryQuery:
    """A `metrics show`: the window as written (`24h`) and in seconds, the instant it ends,
    one provider or all, per model or per experiment arm."""

    window: str
    window_s: float
    now_s: float
    provider: str | None = None
    by: str = "model"


def model_rows(con: Any, since_us: int | None, provider: str | None) -> list[dict[str, Any]]:
    """Per provider/model: samples, exact p50/p95/p99 (quantile_cont), success rate, cost."""
    rows = []
    for prov, model, samples, q, success_rate, avg_cost in queries.model_summary(
        con, since_us, provider
    ):
        rows.append(
            {
                "provider": prov,
                "model": model,
                "samples": int(samples),
                "p50_ms": q[0],
                "p95_ms": q[1],
                "p99_ms": q[2],
                "success_rate": float(success_rate),
                "avg_cost": None if avg_cost is None else float(avg_cost),
            }
        )
    return rows


def arm_rows(con: Any, since_us: int | None) -> list[dict[str, Any]]:
    """Per experiment arm: decisions, allowed, and the outcomes of its requests."""
    rows = []
    for (
        experiment,
        arm,
        decisions,
        allowed,
        outcomes,
        q,
        rate,
        cost,
        estimated,
    ) in queries.arm_summary(con, since_us):
        rows.append(
            {
                "experiment": experiment,
                "arm": arm,
                "decisions": int(decisions),
                "allowed": int(allowed),
                "outcomes": int(outcomes),
                "p50_ms": None if q is None else q[0],
                "p95_ms": None if q is None else q[1],
                "p99_ms": None if q is None else q[2],
                "success_rate": None if rate is None else float(rate),
                "cost": None if cost is None else float(cost),
                "avg_estimated_cost": None if estimated is None else float(estimated),
            }
        )
    return rows


def since_us(window_s: float | None, now_s: float) -> int | None:
    """The window's start in epoch microseconds (None: everything)."""
    return None if window_s is None else round((now_s - window_s) * 1e6)


def summary(con: Any, state: str, query: SummaryQuery) -> dict[str, Any]:
    """The document `metrics show --format json` prints for `query` over `con`'s log."""
    start = since_us(query.window_s, query.now_s)
    since = format_timestamp(query.now_s - query.window_s, timespec="seconds")
    if query.by == "arm":
        return {
            "state": state,
            "window": query.window,
            "since": since,
            "arms": arm_rows(con, start),
        }
    return {
        "state": state,
        "window": query.window,
        "since": since,
        "provider": query.provider,
        "models": model_rows(con, start, query.provider),
    }
