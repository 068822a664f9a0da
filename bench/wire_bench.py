"""What reading a wire body costs over the native request (issue 14's targets: ≤ 10 µs for
a typical 4-message chat body, ≤ 30 µs for a 200 KB body carrying a base64 image).

    python bench/wire_bench.py [--quick]

Each row interleaves A/B pairs: A reads the native request that says the same thing
(`env_of`), B reads the wire body; the extra cost is B − A per pair, median and min–max of
the pairs' per-call means. The same for a whole decision (`PolicyEngine.evaluate`, dry run,
default policy set). Bodies are what the OpenAI and Anthropic SDKs send (checked-in copies
below); JSON decoding is shown on its own line: every gateway pays it for either format.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import statistics
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import PolicyEngine  # noqa: E402
from engine.routing.request import env_of  # noqa: E402


def png_bytes(width: int, height: int, size: int) -> bytes:
    """A PNG of `width`×`height` padded with incompressible data to about `size` bytes."""
    header = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    noise = bytes((i * 2654435761 >> 13) & 0xFF for i in range(size))
    return header + chunk(b"IHDR", ihdr) + chunk(b"IDAT", noise) + chunk(b"IEND", b"")


CHAT = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer concisely."},
        {"role": "user", "content": "What's the difference between a list and a tuple in Python?"},
        {
            "role": "assistant",
            "content": "A list is mutable and a tuple is immutable; tuples can be dict keys.",
        },
        {"role": "user", "content": "And which one is faster to create? Show a tiny benchmark."},
    ],
    "temperature": 0.7,
    "max_completion_tokens": 512,
    "stream": True,
    "stream_options": {"include_usage": True},
    "user": "user-1234",
}
CHAT_NATIVE = {
    "id": "bench",
    "model": "gpt-4o",
    "user": "user-1234",
    "input_tokens": 80,
    "max_tokens": 512,
    "stream": True,
}
ANTHROPIC_CHAT = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 512,
    "system": CHAT["messages"][0]["content"],
    "metadata": {"user_id": "user-1234"},
    "messages": CHAT["messages"][1:],
    "stream": True,
}
PAYLOAD = base64.b64encode(png_bytes(1600, 900, 150_000)).decode()
IMAGE = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 1024,
    "system": "You describe images precisely.",
    "metadata": {"user_id": "user-1234"},
    "messages": [
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PAYLOAD},
                },
                {"type": "text", "text": "What is in this picture? List the objects."},
            ],
        }
    ],
}
IMAGE_NATIVE = {
    "id": "bench",
    "model": "claude-sonnet-4-6",
    "user": "user-1234",
    "input_tokens": 1940,
    "images": 1,
    "max_tokens": 1024,
    "requires_vision": True,
}


def mean_us(fn: Callable[[], Any], n: int) -> float:
    gc.disable()
    start = time.perf_counter_ns()
    for _ in range(n):
        fn()
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    return elapsed / n / 1000


def pairs(a: Callable[[], Any], b: Callable[[], Any], n: int, rounds: int) -> list[float]:
    """B − A per round, A and B interleaved (which runs first alternates)."""
    out = []
    for r in range(rounds):
        if r % 2:
            tb, ta = mean_us(b, n), mean_us(a, n)
        else:
            ta, tb = mean_us(a, n), mean_us(b, n)
        out.append(tb - ta)
    return out


def ratio_pairs(a: Callable[[], Any], b: Callable[[], Any], n: int, rounds: int) -> list[float]:
    """B / A per round, A and B interleaved (which runs first alternates)."""
    out = []
    for r in range(rounds):
        if r % 2:
            tb, ta = mean_us(b, n), mean_us(a, n)
        else:
            ta, tb = mean_us(a, n), mean_us(b, n)
        out.append(tb / ta)
    return out


def ratio_row(name: str, values: list[float], target: float) -> str:
    med = statistics.median(values)
    verdict = "  ok" if med <= target else "  OVER"
    return (
        f"{name:<44} {med:8.2f}×   [{min(values):7.2f} – {max(values):7.2f}]"
        f"  (target ≤ {target:g}×){verdict}"
    )


def same_size_prompt(body: dict[str, Any]) -> dict[str, Any]:
    """The native request that says what a chat body says: its text as one `prompt` (every
    message's text joined, the system prompt first), its model, user, output cap, stream."""
    texts = [body["system"]] if isinstance(body.get("system"), str) else []
    texts += [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
    user = body.get("user") or body.get("metadata", {}).get("user_id")
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    return {
        "model": body["model"], "user": user, "prompt": "\n".join(texts),
        "max_tokens": limit, "stream": bool(body.get("stream")),
    }  # fmt: skip


def row(name: str, values: list[float], target: float | None) -> str:
    med = statistics.median(values)
    verdict = "" if target is None else ("  ok" if med <= target else "  OVER")
    goal = f"  (target ≤ {target:g} µs)" if target is not None else ""
    return f"{name:<44} {med:8.2f} µs  [{min(values):7.2f} – {max(values):7.2f}]{goal}{verdict}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    args = parser.parse_args()
    n, rounds = (100, 15) if args.quick else (2000, 21)  # ≥ 15 pairs either way
    image_bytes = len(json.dumps(IMAGE))
    print(f"bodies: 4-message chat {len(json.dumps(CHAT))} B, image body {image_bytes:,} B")
    print(f"{'extra cost of the wire body (B − A)':<44} {'median':>11}  [min – max]")
    for fmt_name, native, body, target in (
        ("4-message chat (openai-chat)", CHAT_NATIVE, CHAT, 10.0),
        ("200 KB base64 image (anthropic)", IMAGE_NATIVE, IMAGE, 30.0),
    ):
        read = pairs(
            lambda native=native: env_of(native), lambda body=body: env_of(body), n, rounds
        )
        print(row(f"read: {fmt_name}", read, target))
    engine = PolicyEngine(state="memory://")
    for fmt_name, native, body in (
        ("4-message chat (openai-chat)", CHAT_NATIVE, CHAT),
        ("200 KB base64 image (anthropic)", IMAGE_NATIVE, IMAGE),
    ):
        whole = pairs(
            lambda native=native: engine.evaluate(native, dry_run=True),
            lambda body=body: engine.evaluate(body, dry_run=True),
            n // 2,
            rounds,
        )
        print(row(f"decision: {fmt_name}", whole, None))
    # issue 15: a wire body against a native `prompt` request carrying the same text (the
    # same size), whole decisions, as a ratio (target ≤ 1.1×)
    for fmt_name, body in (("openai-chat", CHAT), ("anthropic", ANTHROPIC_CHAT)):
        same = same_size_prompt(body)
        ratios = ratio_pairs(
            lambda same=same: engine.evaluate(same, dry_run=True),
            lambda body=body: engine.evaluate(body, dry_run=True),
            n // 2,
            rounds,
        )
        print(ratio_row(f"decision: {fmt_name} chat / same-size prompt", ratios, 1.1))
    text = json.dumps(IMAGE)
    decode = [mean_us(lambda: json.loads(text), max(1, n // 20)) for _ in range(rounds)]
    print(row("json.loads of the image body (both pay it)", decode, None))
    base = [mean_us(lambda: engine.evaluate(CHAT_NATIVE, dry_run=True), n) for _ in range(rounds)]
    print(row("a native decision, for scale", base, None))


if __name__ == "__main__":
    main()
