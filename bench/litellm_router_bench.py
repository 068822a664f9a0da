"""One LiteLLM Router call routed by policyctl, side by side with LiteLLM's own
simple-shuffle, in one run.

    python bench/litellm_router_bench.py [--quick] [--pairs N] [--calls N]

Both Routers hold the same 11 deployments in one model group, each answered by LiteLLM's
`mock_response` (no network), and serve `router.completion(...)`: the whole sync call
path (LiteLLM's pre-call work, the pick, the mock completion, its logging). The policyctl
Router runs `engine.integrations.litellm.install` (the strategy decides by a cost policy
with a per-user limit over the packaged catalog, and the callback records every outcome).
A and B are interleaved in pairs (alternating which goes first); per pair, the µs per
call of each side; printed: each side's median and min–max over the pairs, and the ratio
policyctl / simple-shuffle (median and min–max of the per-pair ratios); then the policyctl
strategy's pick alone (reading the call, the decision, the deployment; no LiteLLM call).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # never fetch the price table

from litellm import Router

from engine import PolicyEngine
from engine.integrations.litellm import install
from engine.resources import default_policy_dir

MODELS = [  # in the packaged catalog (policies/models.json), with no retirement date
    "openai/gpt-5.2", "openai/gpt-5.4", "openai/gpt-5.4-mini", "openai/gpt-6-luna",
    "anthropic/claude-haiku-4-5", "anthropic/claude-haiku-5-5", "anthropic/claude-sonnet-4-6",
    "gemini/gemini-2.5-flash-lite", "gemini/gemini-3-flash-preview",
    "gemini/gemini-3.1-pro-preview", "gemini/gemini-3.5-flash",
]  # fmt: skip
POLICY = """\
catalog "{catalog}"
defaults {{
    strategy cost
}}
limit user 1000000000 per 1m
"""
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy? Answer in one word."},
]


def model_list() -> list[dict[str, Any]]:
    return [
        {
            "model_name": "chat",
            "litellm_params": {"model": m, "api_key": "unused", "mock_response": "ok"},
        }
        for m in MODELS
    ]


def engine() -> PolicyEngine:
    catalog = default_policy_dir() / "models.json"
    return PolicyEngine.from_text(POLICY.format(catalog=catalog.as_posix()))


def per_call_us(router: Router, calls: int) -> float:
    gc.collect()
    gc.disable()
    start = time.perf_counter_ns()
    for i in range(calls):
        router.completion(model="chat", messages=MESSAGES, user=f"u{i % 50}")
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    return elapsed / calls / 1000


def pick_us(strategy: Any, calls: int, start: int) -> float:
    """µs per pick of the policyctl strategy alone (no LiteLLM call around it)."""
    requests = [
        {"messages": MESSAGES, "user": f"u{i % 50}", "metadata": {}, "litellm_trace_id": f"p{i}"}
        for i in range(start, start + calls)
    ]
    gc.collect()
    gc.disable()
    begin = time.perf_counter_ns()
    for kwargs in requests:
        strategy.get_available_deployment("chat", messages=MESSAGES, request_kwargs=kwargs)
    elapsed = time.perf_counter_ns() - begin
    gc.enable()
    return elapsed / calls / 1000


def spread(values: list[float], digits: int = 0) -> str:
    def show(x: float) -> str:
        return f"{x:,.{digits}f}"

    return f"{show(statistics.median(values))} ({show(min(values))}–{show(max(values))})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few pairs and calls (a smoke run)")
    parser.add_argument("--pairs", type=int, default=None, help="A/B pairs (default 15)")
    parser.add_argument("--calls", type=int, default=None, help="calls per side per pair (50)")
    args = parser.parse_args(argv)
    pairs = args.pairs or 15  # --quick: fewer calls per pair, still 15 pairs
    calls = args.calls or (6 if args.quick else 50)

    shuffle = Router(model_list=model_list(), routing_strategy="simple-shuffle", num_retries=0)
    routed = Router(model_list=model_list(), num_retries=0)
    policy = engine()
    strategy = install(routed, policy)
    try:
        warm = max(5, calls // 10)
        for router in (shuffle, routed):  # warm both: LiteLLM's first call builds its caches
            per_call_us(router, warm)
        a_side: list[float] = []
        b_side: list[float] = []
        for pair in range(pairs):
            if pair % 2 == 0:
                a = per_call_us(shuffle, calls)
                b = per_call_us(routed, calls)
            else:
                b = per_call_us(routed, calls)
                a = per_call_us(shuffle, calls)
            a_side.append(a)
            b_side.append(b)
        ratios = [b / a for a, b in zip(a_side, b_side, strict=True)]
        picks = [pick_us(strategy, calls * 10, i * calls * 10) for i in range(pairs)]
        deadline = time.monotonic() + 30  # LiteLLM's logging threads finish the last outcomes
        while strategy.callback.recorded < warm + pairs * calls and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        strategy.uninstall()
        policy.close()
    print(
        f"litellm {importlib.metadata.version('litellm')}, "
        f"Python {platform.python_version()}, {len(MODELS)} deployments, "
        f"{pairs} A/B pairs of {calls} calls (router.completion with mock_response)"
    )
    print(f"simple-shuffle            µs/call  {spread(a_side)}")
    print(f"policyctl (strategy+log)  µs/call  {spread(b_side)}")
    print(f"ratio policyctl / simple-shuffle   {spread(ratios, 2)}")
    print(f"policyctl pick alone      µs/pick  {spread(picks, 1)}")
    print(f"outcomes recorded by the callback: {strategy.callback.recorded}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
