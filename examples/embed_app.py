"""Embedding policyctl in an application: decide, call, report back, hot-reload.

    python examples/embed_app.py                    # 200 requests, packaged policies (a copy)
    python examples/embed_app.py --requests 1000 --policy ./policies --seed 7
    python examples/embed_app.py --json             # the summary as one JSON object

The loop an LLM gateway runs around the engine:

1. `engine.evaluate(request)` picks a provider/model (or denies, with a reason);
2. the app calls that provider — here a simulated one: latency is drawn from the model's
   catalog prior (a log-normal through its p50/p95) with a seeded random generator, and a
   few calls fail. Nothing goes over the network and nothing sleeps: the latency is only
   recorded;
3. `engine.record(decision, latency_ms=…, success=…)` feeds the outcome back, so the live
   metrics the strategies rank by reflect what happened; a failed call is retried once on
   the decision's first fallback and that outcome is recorded too.

Halfway through, the app edits the policy file on disk (the default strategy becomes
`cost`); `engine.watch()` picks the change up, and the decisions after it come from the
new version. With `--policy DIR` that directory's files are edited in place — point it at
a copy you do not mind changing. Without it the packaged policies are copied to a
temporary directory first.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from engine import LimitDenial, NoEligibleModel, PolicyEngine
from engine.resources import default_policy_dir

FAILURE_RATE = {"claude": 0.02, "gemini": 0.05, "openai": 0.03}  # per call, simulated
RELOAD_DEADLINE_S = 10.0
PROMPTS = [
    "Summarise this paragraph in one sentence.",
    "Translate 'good morning' into French, German and Japanese.",
    "Write a haiku about rate limits.",
    "Explain the difference between p50 and p99 latency " * 8,
    "List three uses of a token bucket. " * 30,
]


class SimulatedProvider:
    """Every model's latency is log-normal through its catalog p50 and p95."""

    def __init__(self, engine: PolicyEngine, rng: random.Random) -> None:
        self.rng = rng
        self.engine = engine

    def call(self, provider: str, model: str, max_tokens: int) -> tuple[float, bool, int]:
        found = self.engine.program.catalog.find(provider, model)
        assert found is not None, f"{provider}/{model} is not in the catalog"
        mu = math.log(found.latency_p50_ms)
        sigma = max(1e-6, (math.log(found.latency_p95_ms) - mu) / 1.645)
        latency_ms = self.rng.lognormvariate(mu, sigma)
        success = self.rng.random() >= FAILURE_RATE.get(provider, 0.03)
        output_tokens = self.rng.randint(1, max_tokens) if success else 0
        return round(latency_ms, 1), success, output_tokens


def synthetic_request(i: int, rng: random.Random) -> dict[str, Any]:
    request: dict[str, Any] = {
        "id": f"req-{i}",
        "user": f"user-{rng.randrange(20)}",
        "prompt": rng.choice(PROMPTS),
        "max_tokens": rng.choice([64, 256, 512, 1024]),
    }
    roll = rng.random()
    if roll < 0.10:
        request["max_cost"] = 0.001  # the `budget` route
    elif roll < 0.20:
        request["max_latency_ms"] = 2000  # the `fast` route
    elif roll < 0.25:
        request["requires_vision"] = True  # the `vision` route
    elif roll < 0.28:
        request["max_cost"] = 0  # nothing is that cheap: a denial
    return request


def edit_default_strategy(policy_file: Path) -> tuple[str, str]:
    """Rewrite the `strategy` line of the `defaults` block; returns (old, new)."""
    text = policy_file.read_text(encoding="utf-8")
    pattern = re.compile(r"(defaults\s*\{[^}]*?\bstrategy\s+)([^\n#]*?)(\s*(?:#[^\n]*)?\n)")
    match = pattern.search(text)
    if match is None:
        raise SystemExit(f"{policy_file}: no `strategy` line in a `defaults` block to edit")
    old = match.group(2).strip()
    new = "latency" if old == "cost" else "cost"
    policy_file.write_text(pattern.sub(rf"\g<1>{new}\g<3>", text, count=1), encoding="utf-8")
    return old, new


def policy_file_of(directory: Path) -> Path:
    candidates = sorted(directory.glob("*.policy"))
    for candidate in candidates:
        if re.search(r"^defaults\s*\{", candidate.read_text(encoding="utf-8"), re.M):
            return candidate
    raise SystemExit(f"{directory}: no .policy file with a `defaults` block")


def run(requests: int, policy_dir: Path, seed: int, out: list[str]) -> dict[str, Any]:
    rng = random.Random(seed)
    policy_file = policy_file_of(policy_dir)
    by_model: Counter[str] = Counter()
    by_version: Counter[str] = Counter()
    by_strategy: dict[str, Counter[str]] = {}
    denied: Counter[str] = Counter()
    failures = recovered = 0
    errors: list[str] = []
    edit: dict[str, Any] = {}
    simulated_ms = 0.0

    with PolicyEngine(policy_dir, state="memory://") as engine:
        engine.watch()
        provider = SimulatedProvider(engine, rng)
        out.append(f"policy {policy_file} version {engine.version}")
        for i in range(requests):
            if i == requests // 2:
                edit = reload_midway(engine, policy_file, out, errors)
            try:
                request = synthetic_request(i, rng)
                decision = engine.evaluate(request)
                by_version[decision.policy_version] += 1
                by_strategy.setdefault(decision.policy_version, Counter())[
                    f"{decision.route}:{decision.strategy}"
                ] += 1
                if i == requests // 2 and edit:
                    out.append(
                        f"  first decision after the edit: route {decision.route}, strategy "
                        f"{decision.strategy} -> {decision.provider}/{decision.model}"
                    )
                if not decision.allowed:
                    why = decision.denied_by  # a typed record: read its attributes
                    if isinstance(why, LimitDenial):
                        denied[why.scope] += 1  # user, ip, team…, or store
                    elif isinstance(why, NoEligibleModel):
                        denied[why.reason] += 1  # no_eligible_model
                    continue
                assert decision.provider is not None and decision.model is not None
                by_model[f"{decision.provider}/{decision.model}"] += 1
                latency, ok, output_tokens = provider.call(
                    decision.provider, decision.model, request["max_tokens"]
                )
                simulated_ms += latency
                engine.record(decision, latency_ms=latency, success=ok, output_tokens=output_tokens)
                if not ok:
                    failures += 1
                    if decision.fallbacks:  # retry once, on the first fallback
                        fallback = decision.fallbacks[0]  # {"provider": …, "model": …}
                        latency, ok, output_tokens = provider.call(
                            fallback["provider"], fallback["model"], request["max_tokens"]
                        )
                        simulated_ms += latency
                        engine.record_outcome(
                            fallback["provider"],
                            fallback["model"],
                            latency_ms=latency,
                            success=ok,
                            output_tokens=output_tokens,
                            request_id=decision.request_id,
                            route=decision.route,
                        )
                        recovered += ok
            except Exception as err:  # an embedding app logs and goes on; we count them
                errors.append(f"request {i}: {type(err).__name__}: {err}")
        status = engine.policy_status()
        if status["last_error"]:
            errors.append(f"policy: {status['last_error']}")

    return {
        "requests": requests,
        "allowed": sum(by_model.values()),
        "denied": sum(denied.values()),
        "denied_by_reason": dict(denied),
        "decisions_by_model": dict(by_model.most_common()),
        "provider_failures": failures,
        "recovered_by_fallback": recovered,
        "simulated_provider_ms": round(simulated_ms, 1),
        "versions": dict(by_version),
        "routes_by_version": {v: dict(c) for v, c in by_strategy.items()},
        "edit": edit,
        "errors": errors,
    }


def reload_midway(
    engine: PolicyEngine, policy_file: Path, out: list[str], errors: list[str]
) -> dict[str, Any]:
    before = engine.version
    old, new = edit_default_strategy(policy_file)
    written = time.perf_counter()
    deadline = written + RELOAD_DEADLINE_S
    while engine.version == before and engine.last_reload_error is None:
        if time.perf_counter() > deadline:
            errors.append(f"the edit was not picked up within {RELOAD_DEADLINE_S:g}s")
            return {}
        time.sleep(0.002)
    if engine.version == before:
        errors.append(f"the edit was refused: {engine.last_reload_error}")
        return {}
    took_ms = (time.perf_counter() - written) * 1000
    out.append(
        f"  edited {policy_file.name}: default strategy {old} -> {new}; "
        f"version {before} -> {engine.version} live after {took_ms:.0f} ms"
    )
    return {"from": old, "to": new, "old_version": before, "new_version": engine.version}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests to route (200)")
    parser.add_argument("--policy", type=Path, help="policy directory (edited in place!)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the simulation (1)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.requests < 2:
        parser.error("--requests must be at least 2 (the policy is edited halfway)")

    out: list[str] = []
    if args.policy is not None:
        summary = run(args.requests, args.policy, args.seed, out)
    else:
        with tempfile.TemporaryDirectory(prefix="policyctl-example-") as tmp:
            policy_dir = Path(tmp) / "policies"
            shutil.copytree(default_policy_dir(), policy_dir)
            summary = run(args.requests, policy_dir, args.seed, out)

    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print("\n".join(out))
        print_summary(summary)
    return 1 if summary["errors"] else 0


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n{s['requests']} requests: {s['allowed']} allowed, {s['denied']} denied")
    for reason, n in s["denied_by_reason"].items():
        print(f"  denied  {n:5d}  {reason}")
    print("decisions per model:")
    for model, n in s["decisions_by_model"].items():
        print(f"  {n:5d}  {model}")
    print(
        f"provider failures: {s['provider_failures']} "
        f"({s['recovered_by_fallback']} recovered on the first fallback); "
        f"simulated provider time {s['simulated_provider_ms'] / 1000:.1f} s (not slept)"
    )
    print(f"policy versions seen: {len(s['versions'])}")
    for version, n in s["versions"].items():
        routes = ", ".join(f"{k} {v}" for k, v in sorted(s["routes_by_version"][version].items()))
        print(f"  {version}  {n:5d} decisions  ({routes})")
    print(f"errors: {len(s['errors'])}")
    for error in s["errors"]:
        print(f"  {error}")


if __name__ == "__main__":
    sys.exit(main())
