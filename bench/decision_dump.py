"""Print thousands of decisions, admin views and CLI outputs, deterministically.

A refactor that claims "no behaviour changed" runs this before and after and compares the
outputs byte for byte:

    python bench/decision_dump.py > before.txt      # at the base commit
    python bench/decision_dump.py > after.txt       # after the change
    cmp before.txt after.txt

It covers every strategy, every limit scope and unit (keyed, named, `when`, `until`,
runtime quotas), both kinds of denial, `--explain` traces, live metrics (outcomes that
move latency, success-rate health and cooldown), a DuckDB state file's tables, and the
CLI's outputs that do not depend on the wall clock. Everything runs on a fake clock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import PolicyEngine  # noqa: E402


def _admin_class() -> Any:
    """The rate-limit admin, wherever this version of the engine keeps it."""
    import importlib

    for name in ("engine.limits.admin", "engine.admin"):
        try:
            return importlib.import_module(name).RateLimitAdmin
        except (ImportError, AttributeError):
            continue
    raise ImportError("RateLimitAdmin not found")


POLICY = """
catalog "{catalog}"

defaults {{
    strategy weighted(latency: 50%, cost: 30%, success: 20%)
    min_success_rate 80%
    min_samples 20
    window 1h
    fallback claude, gemini, openai
    cooldown after 3 failures for 30s
}}

route vision when request.requires_vision {{
    strategy model-specific
    prefer claude/claude-3-5-sonnet-20241022  weight 40
    prefer gemini/gemini-1.5-pro-latest       weight 35
    prefer openai/gpt-4o                      weight 25
}}

route budget when request.max_cost <= $0.001 {{
    strategy cost
    prefer gemini
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-3.5-turbo
}}

route fast when request.max_latency <= 2s {{
    strategy latency
    prefer gemini/gemini-1.5-flash-latest
    prefer claude/claude-3-haiku-20240307
    prefer openai/gpt-3.5-turbo
}}

route rr when request.metadata.s == "rr" {{
    strategy round-robin
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
}}

route fo when request.metadata.s == "fo" {{
    strategy failover
    prefer openai/gpt-4o
    prefer claude/claude-3-haiku-20240307
    prefer gemini/gemini-1.5-flash-latest
    fallback openai, gemini
}}

route eu when request.region == "eu" {{
    require model.regions contains "eu" and model.context_window >= 128k
    strategy cost
    exclude claude/claude-3-opus-20240229
}}

route tagged when "big" in request.tags or request.metadata.tier == "pro" {{
    strategy weighted(latency: 3, cost: 1)
    prefer claude
    prefer openai
    min_samples 5
}}

limit global              5000 per 1m burst 100
limit user                12 per 1m burst 3
limit user "vip"          40 per 1m burst 10 until 2030-01-01
limit user "old"          1 per 1m until 2020-01-01
limit ip                  9 per 1m burst 2
limit provider            400 per 1m
limit provider "openai"   30 per 1m
limit model "claude/claude-3-haiku-20240307"  25 per 1m
limit user tokens         20k per 1m
limit user spend          $0.05 per 1h
limit team = request.metadata.team  15 per 1m when request.metadata.tier == "free"
"""

WALL_CLOCK_COLUMNS = {"created_at", "updated_at"}  # written by DuckDB's now(), not the clock
USERS = ["alice", "bob", "carol", "dave", "erin", "vip", "old", "mallory"]
IPS = ["203.0.113.7", "198.51.100.23", "2001:db8::1", "192.0.2.44"]
TEAMS = ["support", "search", "infra"]


class Clock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def _request(i: int) -> dict[str, Any]:
    """A deterministic mix of request shapes that reaches every route."""
    kind = i % 11
    req: dict[str, Any] = {"id": f"req-{i}", "user": USERS[i % len(USERS)]}
    if i % 3:
        req["ip"] = IPS[i % len(IPS)]
    if kind == 0:
        req["requires_vision"] = True
        req["messages"] = [{"role": "user", "content": "what is this? " * (i % 7 + 1)}]
    elif kind == 1:
        req["max_cost"] = 0.001 if i % 2 else 0.0004
        req["input_tokens"] = 300 + i % 900
        req["max_tokens"] = 100
    elif kind == 2:
        req["max_latency_ms"] = 1500 + (i % 4) * 250
        req["prompt"] = "complete: " + "x" * (i % 50)
        req["stream"] = bool(i % 2)
    elif kind == 3:
        req["metadata"] = {"s": "rr"}
        req["prompt"] = "round robin " * (i % 5 + 1)
    elif kind == 4:
        req["metadata"] = {"s": "fo", "team": TEAMS[i % 3], "tier": "free"}
        req["input_tokens"] = 50
    elif kind == 5:
        req["region"] = "eu"
        req["input_tokens"] = 1000 + i
        req["requires_json"] = bool(i % 2)
    elif kind == 6:
        req["tags"] = ["big"] if i % 2 else ["small"]
        req["metadata"] = {"tier": "pro" if i % 4 == 0 else "free", "team": TEAMS[i % 3]}
        req["messages"] = [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello " * (i % 30)},
        ]
    elif kind == 7:
        req["requires_tools"] = True
        req["max_tokens"] = 2000 + i % 3000
        req["input_tokens"] = 4000
    elif kind == 8:  # impossible: no model fits
        req["requires_vision"] = True
        req["input_tokens"] = 50_000
        req["max_cost"] = 0.00001
    elif kind == 9:  # big token consumers: the tokens and spend limits
        req["input_tokens"] = 6000 + (i % 5) * 1000
        req["max_tokens"] = 1500
    else:
        req["model"] = "gpt-4o"
        req["prompt"] = "hint " * (i % 9)
        req["metadata"] = {"team": TEAMS[i % 3], "tier": "free"}
    return req


def _line(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


def dump_engine(out: list[str], work: Path) -> None:
    # relative to the working directory (main() runs from ROOT), so that `policy_version`,
    # a hash of the policy text, does not depend on where the checkout lives
    text = POLICY.format(catalog="examples/policies/models.yaml")  # the design catalog
    clock = Clock()
    state = str(work / "state.duckdb")
    # metrics_refresh_ms=0: every outcome counts from the next decision on, so the decisions
    # do not hang on how the fake clock's steps fall against the snapshot refresh interval
    engine = PolicyEngine.from_text(
        text, "dump.policy", state=state, clock=clock, metrics_refresh_ms=0
    )
    admin = _admin_class()(engine)
    out.append("== config")
    out.append(_line(admin.config(verbose=True)))
    out.append(_line(admin.set_quota(scope="user", key="carol", limit=5, window_ms="1m")))
    out.append(_line(admin.set_quota(scope="ip", key="192.0.2.44", limit=3, window_ms=60000)))
    out.append("== decisions")
    for i in range(3000):
        clock.now += 0.137 + (i % 7) * 0.05
        req = _request(i)
        explain = i % 5 == 0
        dry = i % 17 == 0
        decision = engine.evaluate(req, explain=explain, dry_run=dry)
        out.append(_line(decision.to_dict()))
        if decision.allowed and decision.provider and i % 2 == 0:
            # outcomes: openai's gpt-4o turns slow and flaky after a while; claude haiku
            # fails in bursts (cooldown); the rest vary deterministically
            slow = decision.model == "gpt-4o" and i > 800
            fails = (decision.model == "claude-3-haiku-20240307" and 1200 < i < 1300) or (
                i % 13 == 0
            )
            latency = 400.0 + (i % 37) * 31 + (4000 if slow else 0)
            engine.record(
                decision,
                latency_ms=latency,
                success=not (fails or (slow and i % 3 == 0)),
                output_tokens=50 + i % 200,
                input_tokens=100 + i % 300,
            )
        if i % 500 == 499:
            out.append(_line(admin.status(verbose=True)))
            for key in engine.metrics.keys():  # noqa: SIM118 (a method, not a dict)
                stats = engine.metrics.stats(key)
                out.append(_line([key, repr(stats)]))
        if i == 1500:
            out.append(_line(admin.reset("user", "alice")))
            out.append(_line(admin.remove_quota("user", "carol")))
    for provider, model in [
        ("openai", "gpt-4o"),
        ("claude", "claude-3-haiku"),
        ("gemini", "gemini-1.5-flash-latest"),
    ]:
        engine.record_outcome(provider, model, latency_ms=321.5, success=True, user="u1")
    out.append("== admin")
    out.append(_line(admin.status("user", "alice", verbose=True)))
    out.append(_line(admin.status("team", "support")))
    out.append(_line(admin.buckets()))
    out.append(_line(admin.violations(limit=50)))
    out.append(_line(admin.stats()))
    clock.now += 7200
    out.append(_line(admin.cleanup("1h")))
    engine.close()
    out.append("== tables")
    import duckdb

    con = duckdb.connect(state, read_only=True)
    tables = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables "
                                        "ORDER BY table_name").fetchall()]  # fmt: skip
    for table in tables:
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                "ORDER BY ordinal_position",
                [table],
            ).fetchall()
            if r[0] not in WALL_CLOCK_COLUMNS
        ]
        listed = ", ".join(f'"{c}"' for c in columns)
        rows = con.execute(f'SELECT {listed} FROM "{table}"').fetchall()
        out.append(f"-- {table}: {len(rows)} rows")
        for row in sorted(rows, key=repr):
            out.append(_line(list(row)))
    con.close()


def dump_default_engine(out: list[str]) -> None:
    out.append("== default policy")
    clock = Clock()
    engine = PolicyEngine(clock=clock, metrics_refresh_ms=0)  # as dump_engine: always fresh
    for i in range(1500):
        clock.now += 0.05
        req = _request(i)
        if i % 4 == 0:
            req["max_tokens"] = 5000
        decision = engine.evaluate(req, explain=i % 3 == 0)
        out.append(_line(decision.to_dict()))
        if decision.allowed and i % 3 == 1:
            engine.record(decision, latency_ms=200.0 + i % 900, success=i % 11 != 0)
    engine.close()


def _cli(args: list[str], cwd: Path, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    return f"$ policyctl {' '.join(args)}\nexit {done.returncode}\n{done.stdout}{done.stderr}"


def dump_cli(out: list[str], work: Path) -> None:
    out.append("== cli")
    bad = work / "bad.policy"
    bad.write_text(
        'catalog "' + str(ROOT / "examples" / "policies" / "models.yaml") + '"\n'
        "route fast when request.max_cost <= 2s {\n    strategy latncy\n}\n"
        "limit user 10 per 1x\n",
        encoding="utf-8",
    )
    commands: list[tuple[list[str], str | None]] = [
        (["check", str(ROOT / "policies")], None),
        (["check", str(bad)], None),
        (["check", str(bad), "--format", "json"], None),
        (["schema", "request"], None),
        (["schema", "decision"], None),
        (
            [
                "simulate",
                str(ROOT / "examples/simulations/design.yaml"),
                "--seed",
                "7",
                "--requests",
                "600",
            ],
            None,
        ),
        (["simulate", str(ROOT / "examples/simulations/outage.yaml"), "--format", "json"], None),
        (["eval", "-", "--dry-run"], '{"id": "x", "user": "u", "bogus": 1}'),
        (["eval", "-", "--dry-run"], "not json"),
        (["eval", "--format", "table", "--policy", str(bad), "-"], "{}"),
        (["ratelimit", "config", "--format", "json", "--policy", str(ROOT / "policies")], None),
        (["ratelimit", "set", "--type", "user", "--key", "a", "--limit", "x"], None),
        (["metrics", "show", "--state", "memory://"], None),
        (["nosuch"], None),
    ]
    for args, stdin in commands:
        out.append(_cli(args, work, stdin))
    outcomes = work / "outcomes.jsonl"
    outcomes.write_text(
        "\n".join(
            [
                '{"provider": "openai", "model": "gpt-4o", "latency_ms": 500, "success": true,'
                ' "timestamp": "2026-11-01T00:00:00Z"}',
                '{"provider": "openai", "model": "gpt-9", "latency_ms": 500, "success": true}',
                '{"provider": "openai", "model": "gpt-4o", "latency_ms": -1, "success": true}',
                '{"provider": "openai", "model": "gpt-4o", "success": "yes"}',
                "[1, 2]",
                '{"provider": "claude", "model": "claude-3-haiku", "latency_ms": 9,'
                ' "success": false, "timestamp": 1790000000, "cost": 0.1, "extra": 1}',
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    state = work / "cli.duckdb"
    out.append(_cli(["metrics", "import", str(outcomes), "--state", str(state)], work))
    out.append(_cli(["metrics", "import", str(outcomes), "--state", str(state),
                     "--format", "json"], work))  # fmt: skip
    csv = work / "outcomes.csv"
    csv.write_text(
        "provider,model,latency_ms,success,timestamp\n"
        "openai,gpt-4o,120,true,2026-11-01T00:00:00Z\n"
        "gemini,gemini-1.5-flash,80,1,1790000000\n"
        "gemini,nope,80,1,1790000000\n",
        encoding="utf-8",
    )
    out.append(_cli(["metrics", "import", str(csv), "--state", str(state)], work))


def main() -> None:
    os.chdir(ROOT)
    out: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dump_engine(out, work)
        dump_default_engine(out)
        dump_cli(out, work)
        text = "\n".join(out) + "\n"
        text = text.replace(str(work), "<tmp>").replace(str(ROOT), "<root>")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
