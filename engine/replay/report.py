"""`policyctl replay`'s report: a table for people, JSON for scripts."""

from __future__ import annotations

from typing import Any

from engine.replay.run import ReplayReport, Totals
from engine.units import format_duration, format_money, format_timestamp


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _mean(total: float, n: int) -> float | None:
    return total / n if n else None


def text(r: ReplayReport) -> str:
    lines = [
        f"replayed {r.replayed:,} of {r.requests:,} requests against {r.baseline}"
        + ("" if r.shard is None else f" (shard {r.shard.index} of {r.shard.count})")
        + (f" (merged from {r.merged_from} shards)" if r.merged_from else ""),
    ]
    if r.approximate:
        lines.append(
            "  approximate: these limits are not kept per user, so the shards split their"
            " buckets: " + ", ".join(r.approximate)
        )
    if r.no_features:
        lines.append(
            f"  {r.no_features:,} not replayable: the log kept no features of them"
            " (--log-requests off, or logged before features were kept)"
        )
    if r.unlogged:
        lines.append(
            f"  {sum(r.unlogged.values()):,} not replayable: they read a field the log never"
            " kept: " + ", ".join(f"{k} {n:,}" for k, n in r.unlogged.most_common())
        )
    if r.invalid:
        lines.append(f"  {r.invalid:,} lines that are not a valid request (left out)")
    if r.hashed_keys:
        lines.append(
            f"  {r.hashed_keys:,} with hashed user or IP keys: conditions and keyed limits on"
            " a literal user or IP could not be decided for them"
        )
    if r.limit_warmup:
        lines.append(
            f"  {r.limit_warmup:,} in the first {format_duration(r.limit_window_s * 1000)} of"
            " the window: their limits' buckets start full here, where the original's may"
            " have been drained by the traffic before it"
        )
    lines.append(f"changed: {r.changed:,} ({_share(r.changed, r.replayed)})")
    if r.by_route:
        lines.append("by route (after):")
        lines += [f"  {route:30} {n:>8,}" for route, n in r.by_route.most_common()]
    if r.by_pair:
        lines.append("by model (before → after), with example request ids:")
        for (a, b), n in r.by_pair.most_common():
            ids = ", ".join(rid for _, rid in r.examples.get((a, b), []))
            lines.append(f"  {a} → {b}: {n:,}" + (f"  e.g. {ids}" if ids else ""))
    for title, counts in (
        ("denials added", r.denials_added),
        ("denials removed", r.denials_removed),
    ):
        if counts:
            lines.append(f"{title}: " + ", ".join(f"{k} {n:,}" for k, n in counts.most_common()))
    if r.newly_no_model:
        lines.append(f"newly no eligible model: {r.newly_no_model:,}")
    lines.append("projected (measured per-model means of the log's outcomes; * from estimates):")
    for name, t in (("before", r.before), ("after", r.after)):
        lines.append(f"  {name:7} {_totals(t)}")
    cost = r.after.cost - r.before.cost
    change = f"  change  cost {'+' if cost >= 0 else '-'}{format_money(abs(cost))}"
    before, after = (
        _mean(r.before.latency_ms, r.before.served),
        _mean(r.after.latency_ms, r.after.served),
    )
    if before is not None and after is not None:
        change += f", mean latency {after - before:+,.0f} ms"
    lines.append(change)
    return "\n".join(lines)


def _totals(t: Totals) -> str:
    latency = _mean(t.latency_ms, t.served)
    shown = "-" if latency is None else f"{latency:,.0f} ms"
    priors = f" ({t.from_priors:,}*)" if t.from_priors else ""
    return (
        f"served {t.served:,}{priors}, denied {t.denied:,}, cost {format_money(t.cost)},"
        f" mean latency {shown}"
    )


def _totals_json(t: Totals) -> dict[str, Any]:
    return {
        "served": t.served,
        "denied": t.denied,
        "cost": t.cost,
        "mean_latency_ms": _mean(t.latency_ms, t.served),
        "latency_ms_total": t.latency_ms,
        "from_priors": t.from_priors,
    }


def as_json(r: ReplayReport) -> dict[str, Any]:
    totals = _totals_json
    return {
        "requests": r.requests,
        "replayed": r.replayed,
        "not_replayable": r.no_features,
        "unlogged": sum(r.unlogged.values()),
        "unlogged_fields": dict(r.unlogged.most_common()),
        "invalid": r.invalid,
        "hashed_keys": r.hashed_keys,
        "limit_warmup": r.limit_warmup,
        "limit_window_s": r.limit_window_s,
        "policy": r.policy,
        "baseline": r.baseline,
        "shard": None if r.shard is None else {"index": r.shard.index, "count": r.shard.count},
        "approximate": r.approximate,
        "merged_from": r.merged_from or None,
        "changed": r.changed,
        "changed_share": r.changed / r.replayed if r.replayed else None,
        "by_route": dict(r.by_route.most_common()),
        "by_model": [
            {
                "before": a,
                "after": b,
                "count": n,
                "examples": [rid for _, rid in r.examples.get((a, b), [])],
                "examples_at": [at for at, _ in r.examples.get((a, b), [])],
            }
            for (a, b), n in r.by_pair.most_common()
        ],
        "denials_added": dict(r.denials_added),
        "denials_removed": dict(r.denials_removed),
        "newly_no_eligible_model": r.newly_no_model,
        "before": totals(r.before),
        "after": totals(r.after),
        "hours": [
            {
                "hour": format_timestamp(start, "seconds"),
                "before": totals(h.before),
                "after": totals(h.after),
            }
            for start, h in sorted(r.hours.items())
        ],
        "models": {
            "before": dict(r.models_before.most_common()),
            "after": dict(r.models_after.most_common()),
        },
    }
