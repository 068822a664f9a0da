"""Rate-limit speed and memory, side by side with the `limits` library, in one run.

    python bench/limits_bench.py [--quick] [--keys N]

Rows (SPEC §8): one limit check against `limits`' memory fixed window `hit` (target: ours
at least 2× faster); four-limit decisions per second through the whole engine; bytes per
idle bucket with N keys (default 1,000,000; target ≤ 200 B) and their eviction; and a
hand-written dict token bucket as the floor. Figures are medians of repeated runs; ratios
come from the same run. Nothing here touches the network.
"""

from __future__ import annotations

import argparse
import gc
import platform
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import PolicyEngine
from engine.limits.stores.base import Spec
from engine.limits.stores.memory import MemoryStore


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


def ours_check(keys: int) -> Callable[[int], object]:
    store = MemoryStore()
    names = [f"user/requests/60000/u{i}" for i in range(keys)]
    clock = time.time

    def check(i: int) -> object:
        return store.acquire([Spec(names[i % keys], 1e9, 1e9 / 60000, 1.0)], (), clock() * 1000)

    return check


def limits_hit(keys: int) -> Callable[[int], object] | None:
    try:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter
    except ImportError:
        return None
    limiter = FixedWindowRateLimiter(MemoryStorage())
    item = RateLimitItemPerMinute(1_000_000_000)
    names = [f"u{i}" for i in range(keys)]

    def hit(i: int) -> object:
        return limiter.hit(item, names[i % keys])

    return hit


def dict_bucket(keys: int) -> Callable[[int], object]:
    buckets: dict[str, list[float]] = {}
    names = [f"u{i}" for i in range(keys)]
    rate, capacity = 1e9 / 60_000, 1e9

    def take(i: int) -> object:
        now = time.time() * 1000
        b = buckets.get(names[i % keys])
        if b is None:
            b = buckets[names[i % keys]] = [capacity, now]
        tokens = min(capacity, b[0] + (now - b[1]) * rate)
        if tokens >= 1:
            b[0], b[1] = tokens - 1, now
            return True
        return False

    return take


def decisions_per_second(n: int, repeats: int) -> tuple[float, float]:
    policy = (
        "defaults { strategy model-specific }\n"
        "limit global 1000000000 per 1m burst 1000\n"
        "limit user 1000000000 per 1m burst 10\n"
        "limit provider 1000000000 per 1m burst 100\n"
        "limit ip 1000000000 per 1m burst 5\n"
    )
    engine = PolicyEngine.from_text(policy)
    requests = [
        {"id": f"r{i}", "user": f"u{i % 1000}", "ip": f"10.0.{i % 200}.{i % 250}", "prompt": "hi"}
        for i in range(4096)
    ]
    plain = PolicyEngine.from_text("defaults { strategy model-specific }\n")
    with_limits = per_call_us(lambda i: engine.evaluate(requests[i % 4096]), n, repeats)
    without = per_call_us(lambda i: plain.evaluate(requests[i % 4096]), n, repeats)
    return with_limits, without


def bytes_per_idle_bucket(keys: int) -> tuple[float, float, int, float]:
    """(ours B/key, limits B/key or nan, evicted, eviction seconds)."""
    gc.collect()
    tracemalloc.start()
    store = MemoryStore()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(keys):
        store.acquire([Spec(f"user/requests/60000/u{i}", 110.0, 100 / 60000, 1.0)], (), 0.0)
    ours = (tracemalloc.get_traced_memory()[0] - base) / keys
    tracemalloc.stop()
    start = time.perf_counter()
    evicted = store.evict(now=60_000.0)  # one minute later every bucket is full again
    seconds = time.perf_counter() - start
    theirs = float("nan")
    try:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter

        gc.collect()
        tracemalloc.start()
        storage = MemoryStorage()
        limiter = FixedWindowRateLimiter(storage)
        item = RateLimitItemPerMinute(100)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(keys):
            limiter.hit(item, f"u{i}")
        theirs = (tracemalloc.get_traced_memory()[0] - base) / keys
        tracemalloc.stop()
    except ImportError:
        pass
    return ours, theirs, evicted, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and keys")
    parser.add_argument("--keys", type=int, default=None, help="keys for the memory rows")
    args = parser.parse_args()
    n, repeats = (20_000, 3) if args.quick else (200_000, 5)
    keys = args.keys or (100_000 if args.quick else 1_000_000)

    try:
        import limits

        limits_version = limits.__version__
    except ImportError:
        limits_version = "not installed (pip install '.[bench]')"
    print(f"policyctl limits bench — {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.platform()})")
    print(f"limits {limits_version}\n")

    rows = []
    for key_count in (1, 100_000):
        ours = per_call_us(ours_check(key_count), n, repeats)
        hit = limits_hit(key_count)
        theirs = per_call_us(hit, n, repeats) if hit else float("nan")
        floor = per_call_us(dict_bucket(key_count), n, repeats)
        rows.append((f"one limit check, {key_count:,} keys", ours, theirs, floor))
    header = f"{'operation':34} {'ours µs':>9} {'limits µs':>10} {'ratio':>7} {'target':>7}"
    print(header + "  met   dict-bucket µs")
    for name, ours, theirs, floor in rows:
        ratio = theirs / ours
        print(
            f"{name:34} {ours:9.2f} {theirs:10.2f} {ratio:6.2f}× {'≥2×':>7}  "
            f"{'yes' if ratio >= 2 else 'NO ':4} {floor:9.2f}"
        )
    with_limits, without = decisions_per_second(n // 4, repeats)
    print(
        f"\nwhole decision, 11 models, model-specific, 4 limits: {with_limits:.1f} µs "
        f"= {1e6 / with_limits:,.0f} decisions/s on one core "
        f"(without limits {without:.1f} µs; the limits cost {with_limits - without:.1f} µs)"
    )
    ours_b, theirs_b, evicted, seconds = bytes_per_idle_bucket(keys)
    print(
        f"\nidle buckets: {keys:,} keys, ours {ours_b:.0f} B/key (target ≤ 200 B: "
        f"{'met' if ours_b <= 200 else 'NOT met'}), limits {theirs_b:.0f} B/key; "
        f"evicted {evicted:,} full buckets in {seconds * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
