"""Outcome import, `metrics show` and `PolicyEngine.record()`, side by side, in one run.

    python bench/metrics_bench.py [--quick] [--rows N]

Rows (SPEC §8):
- `import_outcomes` of an N-row CSV (default 10M; --quick 1M) into a DuckDB file: rows/s
  (target: at least 1M rows/s); against DuckDB's bare typed load (no validation, no line
  numbers) in ≥ 15 A/B pairs on a smaller file (1M rows; --quick 100k), the order
  alternating, the ratio per pair; and the same import with 0.01% bad rows, which adds the
  pass that finds their line numbers;
- the `metrics show` query (exact p50/p95/p99, success rate, average cost, count per
  provider/model over 24 h) against the bare `SELECT provider, model, quantile_cont(latency_ms,
  [0.5, 0.95, 0.99]) … GROUP BY` over the same table (target: within 2x), in ≥ 15 A/B pairs;
- `PolicyEngine.record()` per call, to the caller (target: at most 2 µs), with the memory
  window only and with a DuckDB outcome log; a plain dict-and-list update as the floor.

Ratios come from the same run; absolute times on a shared machine are noisy. Nothing here
touches the network. The generated files live in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import duckdb
from _pairs import pairs_option, ratio_cell, ratios, rounds

from engine import PolicyEngine
from engine.analytics.importer import import_outcomes
from engine.analytics.schema import ensure_schema
from engine.analytics.summary import model_rows as show_rows
from engine.language.loader import load_policy

BARE_QUANTILES = """
    SELECT provider, model, quantile_cont(latency_ms, [0.5, 0.95, 0.99]) AS q
    FROM outcomes GROUP BY provider, model
"""


def generate_csv(path: Path, rows: int, now: float, bad_every: int = 0) -> float:
    """N outcome rows over the catalog's 11 models (a third named by alias), ISO 8601
    timestamps within the last 23 hours, unique request ids; `bad_every`: a negative latency
    on every such row. Returns seconds taken."""
    catalog = load_policy(None).program.catalog
    names = [(m.provider, m.aliases[0] if m.aliases and i % 3 == 0 else m.id)
             for i, m in enumerate(catalog.models)]  # fmt: skip
    providers = "[" + ", ".join(f"'{p}'" for p, _ in names) + "]"
    models = "[" + ", ".join(f"'{n}'" for _, n in names) + "]"
    k = len(names)
    latency = f"round(200 + (hash(i) % 100000) / 40.0 + (i % {k}) * 150, 3)"
    if bad_every:
        latency = f"CASE WHEN i % {bad_every} = {bad_every // 2} THEN -1.0 ELSE {latency} END"
    start = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(
        f"""
        COPY (
            SELECT {providers}[1 + i % {k}] AS provider,
                   {models}[1 + i % {k}] AS model,
                   {latency} AS latency_ms,
                   hash(i * 7) % 100 >= 4 AS success,
                   100 + i % 3000 AS input_tokens,
                   20 + i % 700 AS output_tokens,
                   round((100 + i % 3000) * 0.000003 + (20 + i % 700) * 0.000015, 8) AS cost,
                   strftime(make_timestamp(CAST(({now} - 82800 + (i * 82000.0 / {rows})) * 1e6
                       AS BIGINT)), '%Y-%m-%dT%H:%M:%S.%gZ') AS timestamp,
                   'req-' || i AS request_id,
                   'default' AS route,
                   'user-' || (i % 5000) AS user
            FROM range({rows}) AS t(i)
        ) TO '{path}' (FORMAT csv, HEADER true)
        """
    )
    con.close()
    return time.perf_counter() - start


def fresh_db(path: Path) -> Any:
    for f in (path, path.with_name(path.name + ".wal")):
        if f.exists():
            f.unlink()
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")
    ensure_schema(con)
    return con


def time_import(db: Path, csv_path: Path, now: float) -> tuple[float, Any]:
    catalog = load_policy(None).program.catalog
    con = fresh_db(db)
    start = time.perf_counter()
    report = import_outcomes(con, str(csv_path), catalog, now_s=now)
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed, report


def time_bare_load(db: Path, csv_path: Path) -> float:
    """DuckDB's own typed load of the file, with the import's setting: rows need not be
    stored in file order (`preserve_insertion_order = false`), so both insert in parallel."""
    con = fresh_db(db)
    con.execute("SET preserve_insertion_order = false")
    start = time.perf_counter()
    con.execute(
        "INSERT INTO outcomes SELECT make_timestamp(epoch_us(CAST(timestamp AS TIMESTAMPTZ))),"
        " provider, model, latency_ms, success, input_tokens, output_tokens, cost, request_id,"
        f" route, user, NULL FROM read_csv('{csv_path}', header = true)"  # no cached_tokens
    )
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed


def timed_s(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_call_us(fn: Callable[[int], object], n: int, repeats: int) -> float:
    """Median µs per call of fn(i) over `repeats` runs of n calls (gc off while timing)."""
    results = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        start = time.perf_counter_ns()
        for i in range(n):
            fn(i)
        elapsed = time.perf_counter_ns() - start
        gc.enable()
        results.append(elapsed / n / 1000)
    return statistics.median(results)


def record_rows(tmp: Path, calls: int, repeats: int) -> list[tuple[str, float, str]]:
    latencies = [100.0 + (i * 37) % 2000 for i in range(1024)]
    rows: list[tuple[str, float, str]] = []

    with PolicyEngine() as engine:
        decision = engine.evaluate({"id": "bench", "prompt": "hello"})
        rec = engine.record

        def memory_only(i: int) -> None:
            rec(decision, latency_ms=latencies[i & 1023], success=True)

        rows.append(("record(): memory window", per_call_us(memory_only, calls, repeats), ""))

    with PolicyEngine(outcomes=str(tmp / "log.duckdb")) as engine:
        decision = engine.evaluate({"id": "bench", "prompt": "hello"})
        rec = engine.record

        def with_log(i: int) -> None:
            rec(decision, latency_ms=latencies[i & 1023], success=True)

        us = per_call_us(with_log, calls, repeats)
        log = engine.outcome_log
        assert log is not None
        # What the background writer made of it: wait for it to drain what is queued.
        drain_start = time.perf_counter()
        log.flush()
        drained = time.perf_counter() - drain_start
        note = (
            f"of {calls * repeats:,}: {log.written:,} written, {log.dropped:,} dropped"
            f" (queue full); the writer drained the rest in {drained:.2f} s after timing"
        )
        rows.append(("record(): + DuckDB outcome log", us, note))

    counts: dict[str, int] = {}
    seen: list[tuple[float, bool]] = []

    def floor(i: int) -> None:
        counts["claude/claude-3-haiku-20240307"] = (
            counts.get("claude/claude-3-haiku-20240307", 0) + 1
        )
        seen.append((latencies[i & 1023], True))

    rows.append(
        ("floor: dict + list update (plain Python)", per_call_us(floor, calls, repeats), "")
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1M rows, fewer repeats (< 60 s)")
    parser.add_argument("--rows", type=int, help="rows to generate (default 10M; --quick 1M)")
    pairs_option(parser)
    args = parser.parse_args()
    rows = args.rows or (1_000_000 if args.quick else 10_000_000)
    import_repeats = 1 if args.quick else 2
    pair_rows = 100_000 if args.quick else 1_000_000  # the import's A/B pairs
    calls, call_repeats = (100_000, 5) if args.quick else (300_000, 7)
    print(
        f"policyctl metrics bench: {rows:,} rows; Python {platform.python_version()},"
        f" DuckDB {duckdb.__version__}, {os.cpu_count()} CPUs"
    )
    table: list[tuple[str, str, str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="policyctl-metrics-bench-") as tmpdir:
        tmp = Path(tmpdir)
        now = time.time()
        clean, dirty = tmp / "outcomes.csv", tmp / "outcomes-bad.csv"
        took = generate_csv(clean, rows, now)
        generate_csv(dirty, rows, now, bad_every=10_000)
        if hasattr(os, "sync"):
            os.sync()  # the generated files on disk now, not written back while timing
        size = clean.stat().st_size / 1e6
        print(f"generated {clean.name}: {size:,.0f} MB in {took:.1f} s")

        runs = [time_import(tmp / "import.duckdb", clean, now) for _ in range(import_repeats)]
        report = runs[-1][1]
        assert report.imported == rows and report.rejected == 0
        ours_s = statistics.median(elapsed for elapsed, _ in runs)
        rate = rows / ours_s
        table.append(
            (
                "import_outcomes (CSV, all good)", f"{ours_s:.2f} s", f"{rate / 1e6:.2f}M rows/s",
                f"median of {import_repeats}", "", ">= 1M rows/s", "yes" if rate >= 1e6 else "NO",
            )
        )  # fmt: skip
        # against DuckDB's bare load: A/B pairs on a smaller file, the order alternating
        small = tmp / "outcomes-pairs.csv"
        generate_csv(small, pair_rows, now)
        sides = {
            "ours": lambda _: time_import(tmp / "pair.duckdb", small, now)[0],
            "bare": lambda _: time_bare_load(tmp / "bare.duckdb", small),
        }
        figures = rounds(args.pairs, sides, int)
        ours_p, bare_p = statistics.median(figures["ours"]), statistics.median(figures["bare"])
        table.append(
            (
                f"  vs bare load: {args.pairs} pairs of {pair_rows:,} rows", f"{ours_p:.2f} s",
                f"{pair_rows / ours_p / 1e6:.2f}M rows/s",
                f"bare DuckDB load {bare_p:.2f} s ({pair_rows / bare_p / 1e6:.2f}M rows/s)",
                ratio_cell(ratios(figures["ours"], figures["bare"])), "", "",
            )
        )  # fmt: skip
        elapsed, bad_report = time_import(tmp / "import-bad.duckdb", dirty, now)
        rate_bad = rows / elapsed
        table.append(
            (
                f"  with 0.01% bad rows ({bad_report.rejected:,} reported by line)",
                f"{elapsed:.2f} s", f"{rate_bad / 1e6:.2f}M rows/s", "", "", ">= 1M rows/s",
                "yes" if rate_bad >= 1e6 else "NO",
            )
        )  # fmt: skip

        con = duckdb.connect(str(tmp / "import.duckdb"))
        con.execute("SET enable_progress_bar = false")
        con.execute("SET TimeZone = 'UTC'")
        since = round((time.time() - 86_400) * 1e6)
        shown = show_rows(con, since, None)
        bare_q = {(p, m): q for p, m, q in con.execute(BARE_QUANTILES).fetchall()}
        for r in shown:  # the same numbers, or the comparison means nothing
            assert abs(r["p95_ms"] - bare_q[(r["provider"], r["model"])][1]) < 1e-6
        assert sum(r["samples"] for r in shown) == rows
        figures = rounds(
            args.pairs,
            {
                "ours": lambda _: timed_s(lambda: show_rows(con, since, None)),
                "bare": lambda _: timed_s(lambda: con.execute(BARE_QUANTILES).fetchall()),
            },
            int,
        )
        con.close()
        per_pair = ratios(figures["ours"], figures["bare"])
        show_s, bare_q_s = statistics.median(figures["ours"]), statistics.median(figures["bare"])
        table.append(
            (
                f"metrics show query ({len(shown)} models)", f"{show_s * 1000:.0f} ms", "",
                f"bare quantile_cont GROUP BY {bare_q_s * 1000:.0f} ms", ratio_cell(per_pair),
                "<= 2x", "yes" if statistics.median(per_pair) <= 2 else "NO",
            )
        )  # fmt: skip

        recorded = record_rows(tmp, calls, call_repeats)
        for label, us, note in recorded:
            is_floor = label.startswith("floor")
            table.append(
                (
                    label, f"{us:.2f} µs", "", note, "",
                    "" if is_floor else "<= 2 µs",
                    "" if is_floor else ("yes" if us <= 2.0 else "NO"),
                )
            )  # fmt: skip

    headers = ("operation", "ours", "rate", "peer / note", "ratio", "target", "met?")
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print()
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    print("-+-".join("-" * w for w in widths))
    for r in table:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print()
    print(
        f"ratio: ours / peer (lower is better), the median of the per-pair ratios over"
        f" {args.pairs} A/B pairs (the order alternating), min–max in parentheses. The"
        " import's peer is DuckDB reading the same CSV"
        " with typed auto-detection and inserting it (preserve_insertion_order off, as in the"
        " import) with no validation and no line numbers."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
