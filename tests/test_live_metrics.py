"""The live window under traffic: what a decision costs in counted work, and how old the
measurements it reads may be (docs/metrics.md §2, "Snapshots").

Counts, not times: histogram walks for percentiles, models recomputed per refresh, calls of
the evaluator's general path. The staleness is made exact with a fake clock.
"""

from __future__ import annotations

import pytest
from _design import from_design

from engine.routing import evaluator as evaluator_module
from engine.routing import metrics as metrics_module
from engine.routing.metrics import DEFAULT_REFRESH_MS, LiveMetrics

START = 1_800_000_000.0
MODELS = [f"p/m{i}" for i in range(5)]


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def filled(clock: FakeClock, refresh_ms: float = 250.0) -> LiveMetrics:
    metrics = LiveMetrics(3600.0, clock, refresh_ms)
    for i in range(500):
        metrics.record(MODELS[i % len(MODELS)], 100.0 + i, True)
    return metrics


def test_the_default_refresh_interval_is_the_documented_one() -> None:
    assert DEFAULT_REFRESH_MS == 250.0  # docs/metrics.md §2
    assert LiveMetrics().refresh_ms == 250.0


def test_one_histogram_walk_per_model_per_refresh_for_all_percentiles() -> None:
    clock = FakeClock()
    metrics = filled(clock)
    before = metrics_module.percentile_passes
    first = metrics.snapshot()
    assert metrics_module.percentile_passes - before == len(MODELS)  # p50, p95, p99 at once
    for _ in range(1000):  # decisions within the interval read the same snapshot
        clock.now += 0.0002
        assert metrics.snapshot() is first
    assert metrics_module.percentile_passes - before == len(MODELS)


def test_a_record_recomputes_only_its_model() -> None:
    clock = FakeClock()
    metrics = filled(clock)
    old = metrics.refresh()
    recomputed = metrics.recomputed
    metrics.record("p/m3", 5000.0, True)
    new = metrics.refresh()
    assert metrics.recomputed - recomputed == 1
    for key in MODELS:
        if key == "p/m3":
            assert new.stats[key] is not old.stats[key]
            assert new.stats[key].samples == old.stats[key].samples + 1
        else:  # the same objects: nothing thrown away
            assert new.stats[key] is old.stats[key]


def test_nothing_new_keeps_the_snapshot_and_what_was_built_from_it() -> None:
    clock = FakeClock()
    metrics = filled(clock)
    snap = metrics.refresh()
    snap.routes[1] = "built"
    clock.now += 10
    assert metrics.snapshot() is snap and snap.routes[1] == "built"
    assert snap.taken_at == clock.now


def test_a_decision_sees_measurements_at_most_refresh_ms_old() -> None:
    clock = FakeClock()
    metrics = LiveMetrics(3600.0, clock, 250.0)
    metrics.record("p/m", 100.0, True)
    taken = metrics.snapshot()
    assert taken.stats["p/m"].samples == 1
    clock.now += 0.1
    metrics.record("p/m", 100.0, True)
    clock.now += 0.149  # 249 ms since the snapshot was taken: still that snapshot
    assert metrics.snapshot() is taken and taken.stats["p/m"].samples == 1
    clock.now = START + 0.25
    metrics.record("p/m", 100.0, True)
    assert metrics.snapshot().stats["p/m"].samples == 3  # 250 ms: rebuilt
    clock.now -= 5  # a clock that went back: rebuilt too
    metrics.record("p/m", 100.0, True)
    assert metrics.snapshot().stats["p/m"].samples == 4
    metrics.record("p/m", 100.0, True)
    assert metrics.snapshot().stats["p/m"].samples == 4  # within the interval
    exact = metrics.stats("p/m")  # the exact read does not wait (and refreshes)
    assert exact is not None and exact.samples == 5
    assert metrics.snapshot().stats["p/m"] is exact


def test_refresh_ms_zero_is_always_fresh() -> None:
    clock = FakeClock()
    metrics = LiveMetrics(3600.0, clock, 0)
    for n in range(1, 20):
        metrics.record("p/m", 100.0, True)
        assert metrics.snapshot().stats["p/m"].samples == n
    with pytest.raises(ValueError, match="refresh_ms"):
        LiveMetrics(3600.0, clock, -1)


def test_failure_counts_reach_the_next_snapshot_at_once_and_nothing_else_moves() -> None:
    clock = FakeClock()
    metrics = filled(clock)
    taken = metrics.snapshot()
    passes = metrics_module.percentile_passes
    metrics.record("p/m1", 9000.0, False)
    metrics.record("p/m1", 9000.0, False)
    patched = metrics.snapshot()
    assert patched is not taken and patched.parent is taken
    assert patched.health_keys == {"p/m1"}
    after, before = patched.stats["p/m1"], taken.stats["p/m1"]
    assert after.consecutive_failures == 2 and before.consecutive_failures == 0
    assert (after.samples, after.p95_ms, after.success_rate) == (
        before.samples,
        before.p95_ms,
        before.success_rate,
    )
    assert metrics_module.percentile_passes == passes  # no histogram walked
    assert metrics.snapshot() is patched  # once
    metrics.record("p/m1", 100.0, True)  # a success ending the run of failures
    closed = metrics.snapshot()
    assert closed.stats["p/m1"].consecutive_failures == 0
    assert taken.parent is None and closed.parent is patched and patched.parent is None


POLICY = """
defaults {
    strategy latency
    min_samples 20
    min_success_rate 50%
    cooldown after 3 failures for 30s
}
route r {
    prefer gemini/gemini-1.5-flash-latest
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-3.5-turbo
}
"""


def test_decisions_with_live_outcomes_take_the_shortcut_and_walk_no_histogram() -> None:
    clock = FakeClock()
    engine = from_design(POLICY, clock=clock)
    decision = engine.evaluate({"id": "warm"})
    for i in range(300):
        engine.record(decision, latency_ms=300.0 + i, success=i % 9 != 0)
    general = evaluator_module.general_path_calls
    passes = metrics_module.percentile_passes
    rebuilds = engine.metrics.rebuilds  # type: ignore[attr-defined]
    decisions = 2000
    for i in range(decisions):
        clock.now += 0.001  # 2 s of traffic: 8 refresh intervals
        decision = engine.evaluate({"id": f"r{i}"})
        assert decision.allowed
        engine.record(decision, latency_ms=300.0 + i % 50, success=i % 50 != 0)
    assert evaluator_module.general_path_calls == general  # the shortcut, every time
    refreshed = engine.metrics.rebuilds - rebuilds  # type: ignore[attr-defined]
    assert refreshed <= 2 / (DEFAULT_REFRESH_MS / 1000) + 1
    # one walk per refreshed model (at most the three of the route) per refresh
    assert metrics_module.percentile_passes - passes <= 3 * refreshed
    assert decision.confidence == 1.0  # measured: samples ≥ min_samples
    engine.evaluate({"id": "traced"}, explain=True)
    assert evaluator_module.general_path_calls == general + 1  # a trace takes the general path


def test_a_failure_under_every_threshold_patches_no_columns() -> None:
    """A failure reaches the next decision's snapshot at once; while its model's count stays
    under the route's `cooldown after 3 failures` (and its success rate above the floor), the
    route's measured columns stay the very same object: none built, none patched. The third
    failure puts the model in the watch list: one patch, and it is dropped."""
    clock = FakeClock()
    engine = from_design(POLICY, clock=clock)
    metrics = engine.metrics
    decision = engine.evaluate({"id": "warm"})
    for i in range(60):
        engine.record(decision, latency_ms=300.0 + i, success=True)
    clock.now += 1.0
    first = engine.evaluate({"id": "r0"})
    chosen = (first.provider, first.model)
    snapshot = metrics.snapshot()  # type: ignore[attr-defined]
    (columns,) = snapshot.routes.values()
    patched = evaluator_module.columns_patched
    updates = metrics.health_updates  # type: ignore[attr-defined]
    for n in (1, 2):
        engine.record(first, latency_ms=300.0, success=False)
        clock.now += 0.001
        again = engine.evaluate({"id": f"f{n}"})
        assert (again.provider, again.model) == chosen  # 2 failures: no cooldown yet
        now = metrics.snapshot()  # type: ignore[attr-defined]
        assert (
            now is not snapshot and now.stats[f"{chosen[0]}/{chosen[1]}"].consecutive_failures == n
        )
        assert list(now.routes.values()) == [columns]  # the same columns, not a copy
        snapshot = now
    assert metrics.health_updates - updates == 2  # type: ignore[attr-defined]
    assert evaluator_module.columns_patched == patched
    engine.record(first, latency_ms=300.0, success=False)  # the third: cooldown
    clock.now += 0.001
    cooled = engine.evaluate({"id": "f3"})
    assert (cooled.provider, cooled.model) != chosen
    assert evaluator_module.columns_patched == patched + 1
    (after,) = metrics.snapshot().routes.values()  # type: ignore[attr-defined]
    assert after is not columns and len(after.watch) == 1
    assert engine.evaluate({"id": "f3"}, explain=True).model == cooled.model


def test_a_bucket_that_appears_is_inserted_not_sorted_again() -> None:
    """A model's sorted buckets are kept between rebuilds: one whole sort per model, a bucket
    that appears later is inserted; one that leaves with its slice has them sorted again. The
    percentiles are those of the histogram sorted from scratch, every time."""
    import random

    rng = random.Random(15)
    clock = FakeClock()
    metrics = LiveMetrics(3600.0, clock, 0)
    for step in range(4000):  # new buckets all along: a wide log-normal
        metrics.record(MODELS[step % 2], rng.lognormvariate(6, 1.5), True)
        if step % 97 == 1:
            metrics.refresh()
            for key in MODELS[:2]:
                series = metrics._series[key]
                assert series.buckets == sorted(series.counts)
                want = metrics_module.quantiles(series.counts, series.n)
                got = metrics.snapshot().stats[key]
                assert (got.p50_ms, got.p95_ms, got.p99_ms) == want
    assert metrics.bucket_sorts == 2  # one whole sort per model
    assert len(metrics._series[MODELS[0]].counts) > 100
    clock.now += 2 * 3600.0  # every slice leaves: buckets empty
    metrics.record(MODELS[0], 100.0, True)
    assert metrics.stats(MODELS[0]).samples == 1  # type: ignore[union-attr]
    assert metrics.bucket_sorts == 3 and metrics._series[MODELS[0]].buckets == [
        metrics_module.bucket_of(100.0)
    ]


def test_the_window_matches_a_recount_of_its_outcomes() -> None:
    """Successes wait in their slice to be bucketed in bulk, the newest slice joins the
    totals only when a newer one starts, past outcomes go to their own slice: whatever the
    order, the stats are those of the outcomes still in the window, recounted from scratch."""
    import random

    rng = random.Random(15)
    clock = FakeClock()
    window = 3600.0
    slice_s = window / metrics_module.SLICES
    metrics = LiveMetrics(window, clock, 0)
    kept: dict[str, list[tuple[float, float, bool, float]]] = {k: [] for k in MODELS[:2]}
    for step in range(6000):
        key = MODELS[step % 2]
        clock.now += rng.expovariate(1 / 3.0)  # about 20 minutes of traffic per 400 steps
        latency = rng.lognormvariate(5, 1)
        success = rng.random() > 0.1
        cost = rng.random() / 1000
        at = None
        if rng.random() < 0.05:  # an import from the past, some older than the window
            at = clock.now - rng.uniform(0, 1.2 * window)
        metrics.record(key, latency, success, cost, at)
        when = clock.now if at is None else at
        if when >= clock.now - window or at is None:
            kept[key].append((when, latency, success, cost))
        if step % 997 == 0 or step == 5999:
            for model, outcomes in kept.items():
                if not outcomes:
                    continue
                horizon = clock.now - window
                inside = [o for o in outcomes if o[0] - o[0] % slice_s + slice_s > horizon]
                got = metrics.stats(model)
                assert got is not None
                counts: dict[int, int] = {}
                for o in inside:
                    bucket = metrics_module.bucket_of(o[1])
                    counts[bucket] = counts.get(bucket, 0) + 1
                n = len(inside)
                assert got.samples == n
                assert (got.p50_ms, got.p95_ms, got.p99_ms) == metrics_module.quantiles(counts, n)
                assert got.success_rate == sum(o[2] for o in inside) / n
                assert got.avg_cost == pytest.approx(sum(o[3] for o in inside) / n)
                run = 0
                for o in reversed(outcomes):  # in the order they were recorded
                    if o[2]:
                        break
                    run += 1
                assert got.consecutive_failures == run
