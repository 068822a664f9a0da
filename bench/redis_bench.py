"""Decisions per second with the Redis store, and round trips per decision.

    python bench/redis_bench.py [--quick] [--url redis://127.0.0.1:6379/0]

Without --url it starts its own `redis-server` on a free 127.0.0.1 port (and stops it).
Round trips are counted by Redis itself (INFO commandstats: EVALSHA calls per decision).
The memory and Redis stores run in A/B pairs (the order alternating, fresh requests from
distinct users and IPs per pair, `eval_bench.make_requests`); the ratio is per pair,
median and min–max.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _pairs import pairs_option, per_op_ns, ratio_cell, ratios, rounds, us
from eval_bench import make_requests

from engine import PolicyEngine

POLICY = """
defaults { strategy model-specific }
limit global 1000000000 per 1m burst 1000
limit user 1000000000 per 1m burst 10
limit provider 1000000000 per 1m burst 100
limit ip 1000000000 per 1m burst 5
"""


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed (apt-get install redis-server), or pass --url")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.02)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--url", help="an existing Redis (its database is flushed!)")
    pairs_option(parser)
    args = parser.parse_args()
    block = 300 if args.quick else 3_000  # decisions per side per pair
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server()
    try:
        import redis

        client = redis.Redis.from_url(url)
        client.flushdb()
        memory = PolicyEngine.from_text(POLICY)
        shared = PolicyEngine.from_text(POLICY, state=url + "?timeout=1")
        sides = {
            "memory": lambda items: per_op_ns(memory.evaluate, items),
            "redis": lambda items: per_op_ns(shared.evaluate, items),
        }
        for side in sides.values():  # loads the script; first-call costs out of the pairs
            side(make_requests(-1, 100))
        client.config_resetstat()
        figures = rounds(args.pairs, sides, lambda i: make_requests(i, block))
        calls = client.info("commandstats")["cmdstat_evalsha"]["calls"]
        decided = args.pairs * block
        print(
            f"policyctl redis bench — {time.strftime('%Y-%m-%d %H:%M')}, {args.pairs} A/B pairs"
            f" of {block:,} decisions per side"
        )
        print(f"redis-server {client.info('server')['redis_version']} on 127.0.0.1 (loopback)")
        print(f"{'store':8} {'µs/decision':>12} {'decisions/s':>12}")
        for name, values in figures.items():
            print(f"{name:8} {us(values):12.1f} {1e6 / us(values):12,.0f}")
        print(
            f"redis / memory: {ratio_cell(ratios(figures['redis'], figures['memory']))} (per"
            " pair, the order alternating, fresh requests from distinct users and IPs each)"
        )
        print(
            f"round trips per decision (EVALSHA calls / decisions): {calls / decided:.3f}"
            " (target 1)"
        )
        shared.close()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
