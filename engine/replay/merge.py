"""`policyctl replay merge`: the JSON reports of a sharded replay (`--shard K/N`, one per
shard, made on any machine) added up into the report of the whole log.

Every count and total is a sum; mean latencies are recomputed from the latency totals;
each model pair keeps its earliest examples across the shards. The shards must be one
split: the same N, each K once, the same policy and baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.replay.run import EXAMPLES, Hour, ReplayError, ReplayReport, Shard, Totals
from engine.units import iso_timestamp_s

_COUNTS = (
    ("requests", "requests"),
    ("replayed", "replayed"),
    ("no_features", "not_replayable"),
    ("invalid", "invalid"),
    ("hashed_keys", "hashed_keys"),
    ("limit_warmup", "limit_warmup"),
    ("changed", "changed"),
    ("newly_no_model", "newly_no_eligible_model"),
)


def merge(reports: Sequence[dict[str, Any]], names: Sequence[str]) -> ReplayReport:
    """The shards' JSON reports (named for errors: their files) as one report."""
    shards = [_shard_of(r, name) for r, name in zip(reports, names, strict=True)]
    counts = {s.count for s in shards}
    if len(counts) != 1:
        raise ReplayError(f"the reports come from different splits: N = {sorted(counts)}")
    (count,) = counts
    seen: dict[int, str] = {}
    for s, name in zip(shards, names, strict=True):
        if s.index in seen:
            raise ReplayError(f"`{name}` and `{seen[s.index]}` are both shard {s.index}/{count}")
        seen[s.index] = name
    missing = sorted(set(range(1, count + 1)) - seen.keys())
    if missing:
        shown = ", ".join(f"{k}/{count}" for k in missing)
        raise ReplayError(f"shards missing: {shown} (give every shard's report)")
    for key in ("policy", "baseline"):
        values = {r.get(key) for r in reports}
        if len(values) != 1:
            raise ReplayError(
                f"the reports replayed different {key} sets: {sorted(map(str, values))}"
            )
    merged = ReplayReport(
        policy=str(reports[0].get("policy", "")),
        baseline=str(reports[0].get("baseline", "")),
        shard=None,
        approximate=sorted({n for r in reports for n in r.get("approximate", [])}),
        limit_window_s=max(float(r.get("limit_window_s", 0.0)) for r in reports),
    )
    merged.merged_from = count
    for r, name in zip(reports, names, strict=True):
        try:
            _add(merged, r)
        except (KeyError, TypeError, ValueError) as err:
            raise ReplayError(f"`{name}`: not a replay report ({err!r})") from None
    return merged


def _shard_of(report: dict[str, Any], name: str) -> Shard:
    shard = report.get("shard") if isinstance(report, dict) else None
    if not isinstance(shard, dict):
        raise ReplayError(
            f"`{name}`: not the JSON report of a sharded replay"
            " (made by `policyctl replay --shard K/N --format json`)"
        )
    return Shard(int(shard["index"]), int(shard["count"]))


def _add(merged: ReplayReport, r: dict[str, Any]) -> None:
    for attr, key in _COUNTS:
        setattr(merged, attr, getattr(merged, attr) + int(r[key]))
    merged.by_route.update({k: int(v) for k, v in r["by_route"].items()})
    for entry in r["by_model"]:
        pair = (str(entry["before"]), str(entry["after"]))
        merged.by_pair[pair] += int(entry["count"])
        examples = merged.examples[pair] + list(
            zip(map(float, entry.get("examples_at", [])), entry["examples"], strict=True)
        )
        merged.examples[pair] = sorted(examples)[:EXAMPLES]
    merged.unlogged.update({k: int(v) for k, v in r.get("unlogged_fields", {}).items()})
    merged.denials_added.update({k: int(v) for k, v in r["denials_added"].items()})
    merged.denials_removed.update({k: int(v) for k, v in r["denials_removed"].items()})
    _add_totals(merged.before, r["before"])
    _add_totals(merged.after, r["after"])
    for hour in r["hours"]:
        start = int(iso_timestamp_s(hour["hour"]))
        into = merged.hours.setdefault(start, Hour())
        _add_totals(into.before, hour["before"])
        _add_totals(into.after, hour["after"])
    merged.models_before.update({k: int(v) for k, v in r["models"]["before"].items()})
    merged.models_after.update({k: int(v) for k, v in r["models"]["after"].items()})


def _add_totals(into: Totals, t: dict[str, Any]) -> None:
    into.served += int(t["served"])
    into.denied += int(t["denied"])
    into.cost += float(t["cost"])
    into.latency_ms += float(t["latency_ms_total"])
    into.from_priors += int(t["from_priors"])
