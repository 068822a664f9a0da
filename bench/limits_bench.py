"""Rate-limit speed and memory, side by side with the `limits` library, in one run.

    python bench/limits_bench.py [--quick] [--keys N]

Rows (SPEC §8, issue 15):
- **the marginal cost of each limit inside a decision** (target: at least 2× faster than
  `limits`' `hit()` for the same key): `PolicyEngine.evaluate` with k limits against k-1
  (user, then ip, global, provider; the design's 11-model catalog, model-specific routing),
  each request from a different user and IP (the
  bucket keys are built per call), against `hit(item, "user", user)` (its key is built per
  call too) made beside a decision with no limits, i.e. what an app pays calling `limits`
  next to its router. `limits`' strategy: the sliding window counter, the closest to a
  token bucket (a rate that refills continuously, O(1) state per key; the fixed window
  resets at once, the moving window keeps a log of hits); the fixed window, the cheapest,
  beside it. The sides are interleaved (rounds of every side, the order rotated per
  round), medians and min–max over ≥ 15 rounds;
- the raw calls, cache-warm: the memory store's one-bucket `acquire` and `hit()` alone
  (what the row above used to time), and a hand-written dict token bucket as the floor,
  in rounds the same way, the ratio limits/ours per round;
- a whole decision with the 4 limits against one with none (A/B pairs, distinct users and
  IPs): what the limits cost;
- bytes per idle bucket with N keys (default 1,000,000; target ≤ 200 B);
- held buckets after N distinct users, one every 50 µs of a fake clock on
  `100 per 1m burst 10` (each bucket full again 0.6 s after its request): memory tracks
  the ~12,000 buckets refilling, not the N seen.
Nothing here touches the network.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import machine_line
from _pairs import pairs_option, ratio_cell, ratios, rounds, us

from engine import PolicyEngine
from engine.limits.stores.base import Spec
from engine.limits.stores.memory import MemoryStore


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


def decisions_paired(n: int, pairs: int) -> tuple[list[float], list[float]]:
    """(µs per decision with 4 limits, without), one figure per A/B pair of n decisions,
    every request from a distinct user and IP."""
    policy = (
        "defaults { strategy model-specific }\n"
        "limit global 1000000000 per 1m burst 1000\n"
        "limit user 1000000000 per 1m burst 10\n"
        "limit provider 1000000000 per 1m burst 100\n"
        "limit ip 1000000000 per 1m burst 5\n"
    )
    requests = distinct_requests()
    engine = PolicyEngine.from_text(policy)
    plain = PolicyEngine.from_text("defaults { strategy model-specific }\n")
    sides = {
        "with": index_block(lambda i: engine.evaluate(requests[i % USERS]), n),
        "without": index_block(lambda i: plain.evaluate(requests[i % USERS]), n),
    }
    for side in sides.values():
        side(0)
    figures = rounds(pairs, sides, lambda i: n * (i + 1))
    return [ns / 1000 for ns in figures["with"]], [ns / 1000 for ns in figures["without"]]


def distinct_requests() -> list[dict[str, Any]]:
    """USERS requests, each from its own user and IP."""
    return [
        {"id": f"r{i}", "user": f"u{i}", "ip": f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}",
         "prompt": "Summarise the attached meeting notes in three bullet points."}
        for i in range(USERS)
    ]  # fmt: skip


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


LIMIT_LINES = (
    "limit user 1000000000 per 1m burst 10\n",
    "limit ip 1000000000 per 1m burst 5\n",
    "limit global 1000000000 per 1m burst 1000\n",
    "limit provider 1000000000 per 1m burst 100\n",
)
USERS = 100_000  # distinct users (and IPs) the requests cycle through


def index_block(fn: Callable[[int], object], n: int) -> Callable[[int], float]:
    """A side of a round: ns per call of fn(start..start+n), `start` the round's input."""

    def side(start: int) -> float:
        clock = time.perf_counter_ns
        t0 = clock()
        for i in range(start, start + n):
            fn(i)
        return (clock() - t0) / n

    return side


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} ({min(values):.2f}–{max(values):.2f})"


def marginal_rows(pairs: int, n: int) -> list[str]:
    """Each limit's marginal cost inside a decision against `hit()` beside one, A/B pairs."""
    try:
        from limits import RateLimitItemPerMinute
        from limits.storage import MemoryStorage
        from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter
    except ImportError:
        return ["marginal cost of a limit: `limits` not installed (pip install '.[bench]')"]
    # the design's 11-model catalog: a small base, so each limit's share is measurable
    catalog = Path(__file__).resolve().parent.parent / "examples" / "policies" / "models.yaml"
    head = f'catalog "{catalog}"\ndefaults {{ strategy model-specific }}\n'
    engines = [PolicyEngine.from_text(head + "".join(LIMIT_LINES[:k])) for k in range(5)]
    requests = distinct_requests()
    item = RateLimitItemPerMinute(1_000_000_000)
    peers = {
        "sliding window": SlidingWindowCounterRateLimiter(MemoryStorage()),
        "fixed window": FixedWindowRateLimiter(MemoryStorage()),
    }
    plain = engines[0].evaluate

    def with_hit(limiter: Any) -> Callable[[int], object]:
        hit = limiter.hit

        def call(i: int) -> object:
            request = requests[i % USERS]
            plain(request)
            return hit(item, "user", request["user"])

        return call

    sides: dict[str, Callable[[int], object]] = {
        f"{k} limits": (lambda e: lambda i: e.evaluate(requests[i % USERS]))(engines[k])
        for k in range(5)
    }
    for name, limiter in peers.items():
        sides[f"0 limits + {name} hit()"] = with_hit(limiter)
    for fn in sides.values():  # warm every side (and fill the buckets) once
        index_block(fn, n)(0)
    # one round: every side once, in an order rotated per round, on the same requests
    times = rounds(
        pairs, {name: index_block(fn, n) for name, fn in sides.items()}, lambda i: n * (i + 1)
    )
    times = {name: [ns / 1000 for ns in values] for name, values in times.items()}
    rows = [
        f"{'decision':34} {'µs per decision: median (min–max) over ' + str(pairs) + ' pairs':>44}"
    ]
    for name, values in times.items():
        rows.append(f"{name:34} {spread(values):>44}")
    base = times["0 limits"]
    peer = {
        name: [a - b for a, b in zip(times[f"0 limits + {name} hit()"], base, strict=True)]
        for name in peers
    }
    rows.append("")
    rows.append(
        f"{'marginal cost':34} {'ours µs':>20} {'hit() µs (sliding)':>22} "
        f"{'ratio (sliding)':>22} {'ratio (fixed)':>22}  target ≥2×"
    )
    for k in range(1, 5):
        ours = [a - b for a, b in zip(times[f"{k} limits"], times[f"{k - 1} limits"], strict=True)]
        ratios = {
            name: [p / o if o > 0 else float("inf") for p, o in zip(peer[name], ours, strict=True)]
            for name in peers
        }
        median_ratio = statistics.median(ratios["sliding window"])
        rows.append(
            f"{'limit #' + str(k) + ' (' + LIMIT_LINES[k - 1].split()[1] + ')':34} "
            f"{spread(ours):>20} {spread(peer['sliding window']):>22} "
            f"{spread(ratios['sliding window']):>22} {spread(ratios['fixed window']):>22}  "
            f"{'met' if median_ratio >= 2 else 'NOT met'}"
        )
    return rows


def held_after_distinct_users(users: int) -> tuple[int, int, float]:
    """(held, evicted, seconds) after `users` distinct users, one every 50 µs (fake clock)."""
    store = MemoryStore()
    rate = 100 / 60_000
    start = time.perf_counter()
    for i in range(users):
        store.acquire([Spec(f"user/requests/60000/u{i}", 110.0, rate, 1.0)], (), i * 0.05)
    seconds = time.perf_counter() - start
    counts = store.bucket_counts()
    return counts.held, counts.evicted, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations and keys")
    parser.add_argument("--keys", type=int, default=None, help="keys for the memory rows")
    pairs_option(parser)
    args = parser.parse_args()
    print(machine_line(), flush=True)
    block = 2_000 if args.quick else 20_000  # raw calls per side per round
    keys = args.keys or (100_000 if args.quick else 1_000_000)
    pairs = args.pairs

    try:
        import limits

        limits_version = limits.__version__
    except ImportError:
        limits_version = "not installed (pip install '.[bench]')"
    print(f"policyctl limits bench — {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"python {platform.python_version()} on {platform.machine()} ({platform.platform()})")
    print(f"limits {limits_version}\n")

    print("\n".join(marginal_rows(pairs, 300 if args.quick else 2_000)))
    print()
    header = (
        f"{'raw call, cache-warm':34} {'ours µs':>9} {'limits µs':>10} {'limits/ours':>20}"
        f" {'dict-bucket µs':>15}"
    )
    print(header)
    for key_count in (1, 100_000):
        sides = {"ours": index_block(ours_check(key_count), block)}
        hit = limits_hit(key_count)
        if hit is not None:
            sides["limits"] = index_block(hit, block)
        sides["floor"] = index_block(dict_bucket(key_count), block)
        for side in sides.values():  # warm: first calls, and every key's bucket made
            side(0)
        figures = rounds(pairs, sides, lambda i: block * (i + 1))
        theirs, ratio = "n/a", "n/a"
        if "limits" in figures:
            theirs = f"{us(figures['limits']):.2f}"
            ratio = ratio_cell(ratios(figures["limits"], figures["ours"]))
        print(
            f"{'one limit check, ' + format(key_count, ',') + ' keys':34}"
            f" {us(figures['ours']):9.2f} {theirs:>10} {ratio:>20} {us(figures['floor']):15.2f}"
        )
    print(
        f"(memory store acquire with a prebuilt key; limits' fixed-window hit(); a dict token"
        f" bucket as the floor;\n{pairs} rounds of {block:,} calls per side, the order rotated"
        " per round; limits/ours: the median of the per-round ratios, min–max)"
    )
    with_limits, without = decisions_paired(block // 4, pairs)
    print(
        f"\nwhole decision, 11 models, model-specific, 4 limits, distinct users and IPs:"
        f" {statistics.median(with_limits):.1f} µs = {1e6 / statistics.median(with_limits):,.0f}"
        f" decisions/s on one core (without limits {statistics.median(without):.1f} µs; the"
        " limits cost"
        f" {statistics.median([a - b for a, b in zip(with_limits, without, strict=True)]):.1f} µs,"
        f" the median over {pairs} pairs)"
    )
    ours_b, theirs_b, evicted, seconds = bytes_per_idle_bucket(keys)
    print(
        f"\nidle buckets: {keys:,} keys, ours {ours_b:.0f} B/key (target ≤ 200 B: "
        f"{'met' if ours_b <= 200 else 'NOT met'}), limits {theirs_b:.0f} B/key; "
        f"evicted {evicted:,} full buckets in {seconds * 1000:.0f} ms"
    )
    held, evicted, seconds = held_after_distinct_users(keys)
    print(
        f"held buckets after {keys:,} distinct users (one every 50 µs, each full again 0.6 s"
        f" after its request, ~12,000 refilling at a time): {held:,} held, {evicted:,}"
        f" evicted as the store went ({seconds:.1f} s)"
    )


if __name__ == "__main__":
    main()
