"""Past traffic decided again: each logged request under the new policy set (and a
baseline set, or else the logged decision), in time order.

Each side is a `PolicyEngine` on its own memory state with a clock that reads the logged
time, so its buckets start empty and fill as the log's traffic did; the logged outcomes
are recorded into both sides at their own times, so the live measurements are rebuilt
as they were (a model the log never used has none: its catalog priors). Nothing is
written and no real limit is consumed.

A request the log kept no features for (`--log-requests off`, or a file written before
them) cannot be decided again: it is counted, never read as an empty request. A logged
request's prompt features are its logged ones (`engine.routing.request_log`: the prompt
features and plugin values the logging policy read): a decision that reads one the log
did not keep is not made; the request is counted under that field (`unlogged`), never
decided on an empty conversation. A request
whose user or IP key was hashed (`--hash-keys`) replays its limits per key, but a
condition or keyed limit on a literal user or IP cannot be decided from it: such
requests are counted and flagged.
"""

from __future__ import annotations

import bisect
import functools
import gc
import math
import operator
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from engine.analytics.decision_log import (
    DecisionLog,
    LoggedDecision,
    LoggedOutcome,
    ModelMeans,
)
from engine.api.policy_engine import PolicyEngine
from engine.errors import EXIT_BAD_INPUT, PolicyctlError
from engine.limits.records import LimitDenial
from engine.replay.batch import CHUNK, Asked, BatchSide
from engine.routing.decision import Decision
from engine.routing.evaluator import Lean
from engine.routing.metrics import LiveMetrics
from engine.routing.request import RequestError, env_of
from engine.routing.request_log import HASHED_PREFIX, Unlogged, logged_conversation

EXAMPLES = 3  # example request ids kept per kind of change
PROGRESS_EVERY = 4096  # logged requests between two calls of replay's `progress`
KEPT_VERDICTS = 4096  # measured verdicts remembered (by decision) at most
GC_YOUNG = 50_000  # allocations between two scans of the youngest GC generation, replaying


class ReplayError(PolicyctlError, exit_code=EXIT_BAD_INPUT):
    """A replay that cannot be made as asked."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one side decided for a request, as far as the replay compares."""

    allowed: bool
    route: str
    target: str | None  # provider/model
    denied: str | None  # a limit's scope, or the reason
    cost: float | None  # projected: the model's measured mean cost, else the estimate
    latency_ms: float | None  # projected: the model's measured mean latency, else the estimate
    measured: bool  # the projection is measured (False: the catalog's estimate)

    def label(self) -> str:
        return self.target if self.allowed and self.target else f"denied ({self.denied})"


@dataclass(frozen=True, slots=True)
class Change:
    request_id: str | None
    route: str  # the new side's route
    before: Verdict
    after: Verdict


@dataclass
class Totals:
    """A side's projected totals over the replayed requests."""

    cost: float = 0.0
    latency_ms: float = 0.0
    served: int = 0
    denied: int = 0
    from_priors: int = 0  # served decisions projected from catalog estimates

    def add(self, v: Verdict) -> None:
        if not v.allowed:
            self.denied += 1
            return
        self.served += 1
        self.cost += v.cost or 0.0
        self.latency_ms += v.latency_ms or 0.0
        self.from_priors += not v.measured


@dataclass
class Hour:
    """Both sides' projected totals over one hour of the log (the HTML report's charts)."""

    before: Totals = field(default_factory=Totals)
    after: Totals = field(default_factory=Totals)


HOUR_S = 3600


@dataclass
class ReplayReport:
    requests: int = 0  # logged decisions in the window
    replayed: int = 0
    no_features: int = 0  # not replayable: the log kept nothing of the request
    invalid: int = 0  # a JSONL source's lines that are not a valid request
    hashed_keys: int = 0  # replayed, but literal user/IP conditions cannot be decided
    # not replayed: they read a prompt feature or plugin the log never kept (by the first
    # such field a decision read)
    unlogged: Counter[str] = field(default_factory=Counter)
    limit_warmup: int = 0  # decided within the longest limit window of the log's start
    limit_window_s: float = 0.0  # that window
    changed: int = 0
    by_route: Counter[str] = field(default_factory=Counter)
    by_pair: Counter[tuple[str, str]] = field(default_factory=Counter)
    # up to EXAMPLES (time, request id) of each pair, the earliest first
    examples: dict[tuple[str, str], list[tuple[float, str]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    denials_added: Counter[str] = field(default_factory=Counter)
    denials_removed: Counter[str] = field(default_factory=Counter)
    newly_no_model: int = 0
    before: Totals = field(default_factory=Totals)
    after: Totals = field(default_factory=Totals)
    hours: dict[int, Hour] = field(default_factory=dict)  # by the hour's start (epoch s)
    models_before: Counter[str] = field(default_factory=Counter)  # served decisions by
    models_after: Counter[str] = field(default_factory=Counter)  # provider/model
    baseline: str = "the logged decisions"
    policy: str = ""
    shard: Shard | None = None  # this report covers one shard of the log (`--shard K/N`)
    approximate: list[str] = field(default_factory=list)  # limits a shard splits (names)
    merged_from: int = 0  # the number of shards merged into this report (`replay merge`)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# a logged decision's (allowed, route, provider, model, denied_scope): what its verdict
# is made of, with its estimates (a measured model's verdict reads none)
_verdict_fields = operator.itemgetter(2, 3, 4, 5, 8)


class _Measured:
    """Mean cost and latency per model over the log's outcomes (what projections use),
    computed by the log's source before the replay."""

    def __init__(self, means: Iterable[ModelMeans]) -> None:
        self.cost = {m.target: m.cost for m in means if m.cost is not None}
        self.latency = {m.target: m.latency_ms for m in means}
        # (allowed, route, provider, model, denied) -> its verdict, for the served models
        # measured in both (their verdicts read no estimate)
        self.known: dict[tuple[Any, ...], Verdict] = {}

    def verdict(self, d: Decision) -> Verdict:
        denied = None
        if d.denied_by is not None:
            denied = (
                d.denied_by.scope if isinstance(d.denied_by, LimitDenial) else d.denied_by.reason
            )
        key = f"{d.provider}/{d.model}" if d.allowed else None
        return self._projected(d.allowed, d.route, key, denied, d.estimated_cost,
                               d.estimated_latency_ms)  # fmt: skip

    def lean(self, d: Lean) -> Verdict:
        known = self.known.get(d[:5])
        if known is not None:
            return known
        key = f"{d.provider}/{d.model}" if d.allowed else None
        return self._kept(d[:5], self._projected(
            d.allowed, d.route, key, d.denied, d.estimated_cost, d.estimated_latency_ms
        ))  # fmt: skip

    def logged(self, d: LoggedDecision) -> Verdict:
        fields = _verdict_fields(d)
        known = self.known.get(fields)
        if known is not None:
            return known
        key = f"{d.provider}/{d.model}" if d.allowed else None
        return self._kept(fields, self._projected(
            d.allowed, d.route, key, d.denied_scope, d.estimated_cost, d.estimated_latency_ms
        ))  # fmt: skip

    def _kept(self, key: tuple[Any, ...], verdict: Verdict) -> Verdict:
        """The verdict, remembered by `key` when it reads no estimate (a measured model)."""
        if verdict.measured and len(self.known) < KEPT_VERDICTS:
            self.known[key] = verdict
        return verdict

    def _projected(
        self, allowed: bool, route: str, key: str | None, denied: str | None,
        cost: float | None, latency: float | None,
    ) -> Verdict:  # fmt: skip
        mean_cost, mean_latency = self.cost.get(key or ""), self.latency.get(key or "")
        measured = mean_cost is not None and mean_latency is not None
        if mean_cost is not None:
            cost = mean_cost
        if mean_latency is not None:
            latency = mean_latency
        return Verdict(allowed, route, key, denied, cost, latency, measured)


@dataclass(frozen=True, slots=True)
class Shard:
    """`--shard K/N`: the requests whose shard key (the user, else the IP, else the request
    id) hashes to K of N (CRC-32: the same split on every machine and Python)."""

    index: int  # 1 … count
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        k, slash, n = text.partition("/")
        if not (slash and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
            raise ReplayError(f"`--shard` is K/N with 1 ≤ K ≤ N (like `2/8`), not `{text}`")
        return cls(int(k), int(n))

    def owns(self, key: str) -> bool:
        return zlib.crc32(key.encode()) % self.count == self.index - 1


def shard_key(request: Mapping[str, Any], request_id: str | None) -> str:
    for name in ("user", "ip"):
        value = request.get(name)
        if isinstance(value, str) and value:
            return f"{name}:{value}"
    return f"id:{request_id or ''}"


def approximate_limits(engine: PolicyEngine) -> list[str]:
    """The limits a shard cannot replay whole: every limit not kept per user (global,
    provider, model, IP, a named scope), whose buckets the shards split between them."""
    return [lim.name for lim in engine.program.limits if lim.key_field != "user"]


def _side(policy: Path, clock: _Clock) -> PolicyEngine:
    return PolicyEngine(policy, state="memory://", clock=clock)


def _events(log: DecisionLog, warm_s: float) -> Iterator[LoggedDecision | LoggedOutcome]:
    """Decisions and outcomes merged by time (at the same time, the decision first: an
    outcome follows the decision it reports on), both streamed; the outcomes of the
    `warm_s` before the window come first."""
    outcomes = log.outcomes(warm_s)
    pending = next(outcomes, None)
    for d in log.decisions():
        while pending is not None and pending.at < d.at:
            yield pending
            pending = next(outcomes, None)
        yield d
    while pending is not None:
        yield pending
        pending = next(outcomes, None)


def _reads_literal_keys(engine: PolicyEngine) -> bool:
    program = engine.program
    keyed = any(lim.key is not None and lim.key_field in ("user", "ip") for lim in program.limits)
    return keyed or bool({"request.user", "request.ip"} & program.request_paths)


def replay(
    log: DecisionLog,
    new_policy: Path,
    baseline_policy: Path | None = None,
    shard: Shard | None = None,
    progress: Callable[[int], None] | None = None,
    batch: bool = True,
) -> ReplayReport:
    """Every logged request decided again under `new_policy` (and `baseline_policy`, or
    compared with what was logged), in time order; the report of what changed. A JSONL
    source's requests (no logged decision) need a baseline. With `shard`, only the
    requests it owns are decided (every outcome is still recorded: the measurements are
    the whole log's). `progress(logged requests read)`: told every `PROGRESS_EVERY`."""
    if baseline_policy is None and log.raw:
        raise ReplayError("a JSONL file of requests has no logged decisions: give --baseline")
    clock = _Clock()
    new = _side(new_policy, clock)
    base = _side(baseline_policy, clock) if baseline_policy is not None else None
    sides = [e for e in (new, base) if e is not None]
    literal = any(_reads_literal_keys(e) for e in sides)
    measured = _Measured(log.means())
    # live measurements: warmed by the outcomes of one metrics window before the log's
    warm_s = max(e.program.default_route.settings.window_ms for e in sides) / 1000.0
    # limits: the buckets start full; when the log holds traffic in the longest limit
    # window before `--since`, the original's may have been drained by it then
    limit_window_s = max((lim.window_ms for e in sides for lim in e.program.limits), default=0)
    limit_window_s /= 1000.0
    warm_until = -math.inf
    if log.since_s is not None and log.traffic_before(limit_window_s):
        warm_until = log.since_s + limit_window_s
    report = ReplayReport(policy=str(new_policy), limit_window_s=limit_window_s)
    if baseline_policy is not None:
        report.baseline = str(baseline_policy)
    if shard is not None:
        report.shard = shard
        if shard.count > 1:
            report.approximate = sorted({name for e in sides for name in approximate_limits(e)})
    # what exists now (the engines, their catalogs, the modules) is not garbage: kept out
    # of the cyclic collector's scans while the replay allocates (a chunk's requests);
    # and the youngest generation scanned every GC_YOUNG allocations, not every 700 (a
    # chunk's requests, environments and rows are thousands of short-lived containers):
    # bounded, so memory stays flat, and restored after
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(max(thresholds[0], GC_YOUNG), *thresholds[1:])
    try:
        if batch and all(e.decides_lean for e in sides):
            _batched(report, log, warm_s, warm_until, clock, new, base, measured, shard,
                     literal, progress)  # fmt: skip
        else:
            _one_by_one(report, log, warm_s, warm_until, clock, new, base, measured, shard,
                        literal, progress, batch)  # fmt: skip
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        for engine in sides:
            engine.close()
    return report


def _one_by_one(
    report: ReplayReport, log: DecisionLog, warm_s: float, warm_until: float, clock: _Clock,
    new: PolicyEngine, base: PolicyEngine | None, measured: _Measured, shard: Shard | None,
    literal: bool, progress: Callable[[int], None] | None, lean: bool,
) -> None:  # fmt: skip
    """Each request decided as it comes (`evaluate`, or `evaluate_lean` when `lean`)."""
    sides = [e for e in (new, base) if e is not None]
    read = 0
    for event in _events(log, warm_s):
        clock.now = event.at
        if isinstance(event, LoggedOutcome):
            for engine in sides:
                _record(engine, event)
            continue
        read += 1
        if progress is not None and not read % PROGRESS_EVERY:
            progress(read)
        asked = _asked(report, event, shard, literal, event.at < warm_until)
        if asked is None:
            continue
        request, rid, conv = asked.request, asked.request_id, asked.conversation
        try:
            if lean:
                after = measured.lean(new.evaluate_lean(request, request_id=rid, conversation=conv))
            else:
                after = measured.verdict(new.evaluate(request, request_id=rid, conversation=conv))
            if base is not None and lean:
                before = measured.lean(
                    base.evaluate_lean(request, request_id=rid, conversation=conv)
                )
            elif base is not None:
                before = measured.verdict(base.evaluate(request, request_id=rid, conversation=conv))
            else:
                before = measured.logged(event)
        except Unlogged as unlogged:  # a field the log never kept: counted, not decided
            report.unlogged[unlogged.field] += 1
            continue
        _count(report, event.at, event.request_id, before, after)


def _batched(
    report: ReplayReport, log: DecisionLog, warm_s: float, warm_until: float, clock: _Clock,
    new: PolicyEngine, base: PolicyEngine | None, measured: _Measured, shard: Shard | None,
    literal: bool, progress: Callable[[int], None] | None,
) -> None:  # fmt: skip
    """The requests decided a chunk at a time on each side (engine.replay.batch)."""

    def set_now(at: float) -> None:
        clock.now = at

    after_side = BatchSide(new, set_now)
    record_after = _recorder(new)
    record_before = _record if base is None else _recorder(base)
    before_side = None if base is None else BatchSide(base, set_now)
    events: list[LoggedOutcome | Asked] = []
    asked: list[LoggedDecision] = []
    read = 0

    def flush() -> None:
        afters = after_side.decide(events, record_after)
        befores = None if before_side is None else before_side.decide(events, record_before)
        kept: list[LoggedDecision] = []
        after_verdicts: list[Verdict] = []
        before_verdicts: list[Verdict] = []
        lean, logged = measured.lean, measured.logged
        for i, event in enumerate(asked):
            after_lean = afters[i]
            before_lean = None if befores is None else befores[i]
            if type(after_lean) is not Lean or (
                before_lean is not None and type(before_lean) is not Lean
            ):
                made = after_lean if befores is None else (after_lean, before_lean)
                unlogged = _unlogged(made)
                if unlogged is not None:  # a field the log never kept: counted, not decided
                    report.unlogged[unlogged.field] += 1
                    continue
            kept.append(event)
            after_verdicts.append(lean(after_lean))  # type: ignore[arg-type]
            before_verdicts.append(
                logged(event) if before_lean is None else lean(before_lean)  # type: ignore[arg-type]
            )
        _count_all(report, kept, before_verdicts, after_verdicts)
        events.clear()
        asked.clear()

    for event in _events(log, warm_s):
        if isinstance(event, LoggedOutcome):
            events.append(event)
            continue
        read += 1
        if progress is not None and not read % PROGRESS_EVERY:
            progress(read)
        one = _asked(report, event, shard, literal, event.at < warm_until, deferred=True)
        if one is None:
            continue
        events.append(one)
        asked.append(event)
        if len(asked) >= CHUNK:
            flush()
    flush()


def _unlogged(made: Any) -> Unlogged | None:
    """The first side's `Unlogged` among a request's decisions (a decision, or a pair)."""
    for one in made if type(made) is tuple else (made,):
        if isinstance(one, Unlogged):
            return one
    return None


_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _asked(
    report: ReplayReport,
    event: LoggedDecision,
    shard: Shard | None,
    literal: bool,
    warming: bool,
    deferred: bool = False,
) -> Asked | None:
    """The request to decide again, counted (None: it is not this shard's, or it is
    counted as not replayable or invalid). `deferred`: a logged request's conversation is
    left to the batch path to make, when it makes the request's environment
    (`Asked.logged`)."""
    if event.request is None:
        if shard is None or shard.owns(shard_key({}, event.request_id)):
            report.requests += 1
            report.no_features += 1
        return None
    rid = event.request_id if event.raw else None
    conversation = None
    if event.raw:  # a request as a client sent it: its own format, its own id
        request = _decode(event.request)
        try:
            keys: Mapping[str, Any] = env_of(request, request_id=rid)
        except RequestError:
            if shard is None or shard.owns(shard_key({}, event.request_id)):
                report.requests += 1
                report.invalid += 1
            return None
    else:  # its features: the prompt's as logged (`text`, `features`), never an empty one
        request = _decode(event.request)
        if not deferred:
            conversation = logged_conversation(request)
        if event.request_id is not None:
            request["id"] = event.request_id
        keys = request
    if shard is not None and not shard.owns(shard_key(keys, event.request_id)):
        return None
    report.requests += 1
    report.limit_warmup += warming
    if literal and any(str(keys.get(k, "")).startswith(HASHED_PREFIX) for k in ("user", "ip")):
        report.hashed_keys += 1
    return _new_asked((event.at, request, rid, conversation, deferred and not event.raw))


_new_asked = functools.partial(tuple.__new__, Asked)  # (the generated constructor is slower)


def _recorder(engine: PolicyEngine) -> Callable[[PolicyEngine, LoggedOutcome], None]:
    """`_record` for one side, made cheaper where that changes nothing: an outcome with a
    plain latency and success, on a side whose outcomes go to its live metrics alone (no
    outcome log, no alert reading outcomes), is recorded as `PolicyEngine.record_outcome`
    records it (the catalog entry found once per model, the cost from the tokens when the
    log has none); any other outcome, and every one of another side, goes through
    `record_outcome`."""
    metrics = engine.metrics
    if (
        engine.outcome_log is not None
        or engine.alert_monitor.takes_outcomes
        or not isinstance(metrics, LiveMetrics)
    ):
        return _record
    find = engine.program.catalog.find
    found: dict[tuple[str, str], Any] = {}
    record = metrics.record

    def recorded(side: PolicyEngine, o: LoggedOutcome) -> None:
        latency = o.latency_ms
        entry = found.get((o.provider, o.model))
        if entry is None:
            entry = found[(o.provider, o.model)] = find(o.provider, o.model) or False
        if (
            side is not engine
            or not entry
            or type(latency) is not float
            or not 0.0 <= latency < math.inf
            or type(o.success) is not bool
        ):
            _record(side, o)
            return
        cost = o.cost
        if cost is None:
            cost = entry.cost(o.input_tokens or 0, o.output_tokens or 0, 0)
        record(entry.key, latency, o.success, float(cost), o.at)

    return recorded


def _record(engine: PolicyEngine, o: LoggedOutcome) -> None:
    try:
        engine.record_outcome(
            o.provider, o.model, latency_ms=o.latency_ms, success=o.success,
            output_tokens=o.output_tokens, input_tokens=o.input_tokens, cost=o.cost, at=o.at,
        )  # fmt: skip
    except ValueError:  # a model this side's catalog lacks: nothing to measure here
        return


def _count_all(
    report: ReplayReport,
    decisions: list[LoggedDecision],
    befores: list[Verdict],
    afters: list[Verdict],
) -> None:
    """`_count` of each decision (its verdicts before and after), in order, folded: the
    same totals (each sum added to in the same order), hours, model counts and changes."""
    n = len(decisions)
    if not n:
        return
    report.replayed += n
    ats = [d.at for d in decisions]
    hours = [int(at // HOUR_S) * HOUR_S for at in ats]
    start = 0
    while start < n:  # runs of one hour (the log is in time order: a few runs per chunk)
        first = hours[start]
        end = bisect.bisect_right(hours, first, start)
        if end <= start or hours[start:end].count(first) != end - start:
            end = start + 1  # out of time order here: one at a time
        hour = report.hours.get(first)
        if hour is None:
            hour = report.hours[first] = Hour()
        # the run's sums added to the hour's and, run after run, to the whole log's
        _add_all(befores[start:end], hour.before, report.before)
        _add_all(afters[start:end], hour.after, report.after)
        start = end
    report.models_before.update([v.target for v in befores if v.allowed and v.target])
    report.models_after.update([v.target for v in afters if v.allowed and v.target])
    for i, (before, after) in enumerate(zip(befores, afters, strict=True)):
        if before is after or (before.allowed == after.allowed and before.target == after.target):
            continue
        _changed(report, ats[i], decisions[i].request_id, before, after)


def _add_all(verdicts: list[Verdict], *into: Totals) -> None:
    """`Totals.add` of each verdict, in order, to each of `into` (each one's sums added to
    one by one, in order); the verdicts' figures read once for all of them."""
    served = [v for v in verdicts if v.allowed]
    costs = [v.cost or 0.0 for v in served]
    latencies = [v.latency_ms or 0.0 for v in served]
    priors = sum([not v.measured for v in served])
    for totals in into:
        totals.denied += len(verdicts) - len(served)
        totals.served += len(served)
        totals.cost = functools.reduce(operator.add, costs, totals.cost)
        totals.latency_ms = functools.reduce(operator.add, latencies, totals.latency_ms)
        totals.from_priors += priors


def _count(
    report: ReplayReport, at: float, request_id: str | None, before: Verdict, after: Verdict
) -> None:
    report.replayed += 1
    report.before.add(before)
    report.after.add(after)
    start = int(at // HOUR_S) * HOUR_S
    hour = report.hours.get(start)
    if hour is None:
        hour = report.hours[start] = Hour()
    hour.before.add(before)
    hour.after.add(after)
    if before.allowed and before.target:
        report.models_before[before.target] += 1
    if after.allowed and after.target:
        report.models_after[after.target] += 1
    differs = (before.allowed, before.target) != (after.allowed, after.target)
    if differs:
        _changed(report, at, request_id, before, after)


def _changed(
    report: ReplayReport, at: float, request_id: str | None, before: Verdict, after: Verdict
) -> None:
    report.changed += 1
    report.by_route[after.route or "(denied before routing)"] += 1
    pair = (before.label(), after.label())
    report.by_pair[pair] += 1
    if len(report.examples[pair]) < EXAMPLES and request_id is not None:
        report.examples[pair].append((at, request_id))
    if after.denied is not None and before.denied != after.denied:
        report.denials_added[after.denied] += 1
        if after.denied == "no_eligible_model":
            report.newly_no_model += 1
    if before.denied is not None and before.denied != after.denied:
        report.denials_removed[before.denied] += 1
