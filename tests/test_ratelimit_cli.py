"""`policyctl ratelimit …` end to end: real subprocesses on a real DuckDB state file.

Buckets are filled by real `policyctl eval` runs with the packaged default policy
(`limit user 100 per 1m burst 10`, `limit ip 50 per 1m burst 5`, …). Where a test counts
exact admissions against a per-minute limit, its commands run on a frozen clock
(`POLICYCTL_NOW`, `FROZEN`): under the real clock a pause of 1.2 s anywhere in a run (a
loaded machine) gives the ip bucket a token back. Elsewhere the clock is real time, so
token counts are checked against bounds computed from the time that can have passed
(refill = limit / window), never for equality, and nothing sleeps.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest

from engine.resources import default_policy_dir

IP = "203.0.113.7"
FROZEN = 1_795_887_965.0  # 2026-11-28T17:46:05Z: `POLICYCTL_NOW` for the frozen-clock tests
MINUTE_MS = 60_000.0
USER_RATE = 100 / MINUTE_MS  # tokens per ms of the default `limit user`
IP_RATE = 50 / MINUTE_MS
ACTIONS = ("status", "set", "reset", "remove", "config", "stats", "violations", "buckets",
           "cleanup")  # fmt: skip


def _limit_line(scope: str) -> int:
    """The line of `limit SCOPE` in the packaged default.policy (read as text)."""
    lines = (default_policy_dir() / "default.policy").read_text(encoding="utf-8").splitlines()
    (found,) = [i for i, line in enumerate(lines, 1) if line.startswith(f"limit {scope} ")]
    return found


DEFAULT_LIMITS = [  # policies/default.policy, in file order
    ("global", 10000, 1000),
    ("user", 100, 10),
    ("provider", 1000, 100),
    ("ip", 50, 5),
]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        assert self.code == 0, self.err
        return json.loads(self.out)

    def decisions(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.splitlines()]

    def allowed(self) -> int:
        return sum(1 for d in self.decisions() if d["allowed"])


@dataclass
class Env:
    root: Path
    state: Path
    now: float | None = None  # every command's clock (`POLICYCTL_NOW`), else real time

    @property
    def work(self) -> Path:
        return self.root / "work"

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
        env["HOME"] = str(self.root / "home")
        env["XDG_STATE_HOME"] = str(self.root / "xdg-state")
        if self.now is not None:
            env["POLICYCTL_NOW"] = repr(self.now)
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        argv = [sys.executable, "-m", "engine", *args]
        if args and args[0] in ("eval", "ratelimit") and "--help" not in args:
            argv += ["--state", str(self.state)]
        return argv

    def run(self, *args: str) -> Run:
        done = subprocess.run(
            self.argv(args),
            cwd=self.work,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def rl(self, *args: str) -> Any:
        """`policyctl ratelimit ARGS --format json`, which must succeed: its JSON."""
        return self.run("ratelimit", *args, "--format", "json").json()

    def start(self, name: str, *args: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
        """Start a command in the background; its output goes to files (a full pipe would
        block a process that holds the state's lock)."""
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                self.argv(args), cwd=self.work, env=self.environ(), stdout=stdout, stderr=stderr
            )
        return proc, out, err

    def requests(self, name: str, items: Iterable[dict[str, Any]]) -> str:
        path = self.work / name
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
        return str(path)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        con = duckdb.connect(str(self.state), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    def fingerprint(self) -> dict[str, str]:
        """Hashes of the state file and its WAL: equal means untouched."""
        found = {}
        for path in sorted(self.state.parent.glob(self.state.name + "*")):
            found[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found


def make_env(root: Path, now: float | None = None) -> Env:
    for sub in ("work", "home", "xdg-state", "state"):  # an explicit --state needs its directory
        (root / sub).mkdir(parents=True, exist_ok=True)
    return Env(root, root / "state" / "state.duckdb", now)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def from_ip(ip: str, count: int, prefix: str = "r", user: str = "alice") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "user": user, "ip": ip, "prompt": "hi"} for i in range(count)]


def for_user(user: str, count: int, prefix: str = "u") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "user": user, "prompt": "hi"} for i in range(count)]


def parallel(*thunks: Any) -> list[Any]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda thunk: thunk(), thunks))


def refill_bound(rate_per_ms: float, since_s: float) -> float:
    """The most tokens a bucket can have regained since `since_s` (epoch seconds), as the
    commands report them: rounded to 3 decimals (so up to 0.0005 above the true figure)."""
    return (time.time() - since_s) * 1000.0 * rate_per_ms + 0.0005 + 1e-9


def daily_policy(env: Env, *scopes: str) -> list[str]:
    """`--policy` for the default policy with `limit SCOPE … per 1d` instead of `per 1m`: the
    same capacities, but they refill 1,440 times slower, so no whole token comes back (and
    no bucket is full again) while a test runs, and counts can be exact."""
    target = env.root / f"policy-{'-'.join(scopes)}"
    shutil.copytree(default_policy_dir(), target)
    path = target / "default.policy"
    text = path.read_text()
    for scope in scopes:
        text, count = re.subn(rf"(?m)^(limit {scope}\s+\d+ per )1m", r"\g<1>1d", text)
        assert count == 1
    path.write_text(text)
    return ["--policy", str(target)]


# ----------------------------------------------------------------------------- a shared state


@dataclass
class IpState:
    env: Env
    policy: list[str]  # `--policy …`, or nothing for the packaged default
    started: float  # epoch seconds before the eval began
    eval_run: Run

    def rl(self, *args: str) -> Any:
        return self.env.rl(*args, *self.policy)

    def table(self, *args: str) -> Run:
        return self.env.run("ratelimit", *args, *self.policy)


def _ip_state(root: Path, daily: bool) -> IpState:
    """60 requests from one IP (user alice) through `eval`: 55 allowed, 5 denied by ip."""
    env = make_env(root, now=None if daily else FROZEN)
    policy = daily_policy(env, "user", "ip") if daily else []
    started = time.time()
    run = env.run("eval", *policy, env.requests("ip.jsonl", from_ip(IP, 60)))
    return IpState(env, policy, started, run)


@pytest.fixture(scope="module")
def ip_state(tmp_path_factory: pytest.TempPathFactory) -> IpState:
    """With the packaged default policy (its ip bucket is full again after 66 s), every
    command at the frozen instant `FROZEN`: the counts are exact however slowly it runs."""
    return _ip_state(tmp_path_factory.mktemp("ip-state"), daily=False)


@pytest.fixture(scope="module")
def daily_ip_state(tmp_path_factory: pytest.TempPathFactory) -> IpState:
    """The same with `limit user 100 per 1d burst 10` and `limit ip 50 per 1d burst 5`:
    the user and ip buckets stay far from full however slowly the tests run."""
    return _ip_state(tmp_path_factory.mktemp("daily-ip-state"), daily=True)


DAY_MS = 86_400_000.0


@pytest.mark.parametrize("daily", [False, True], ids=["per-minute", "per-day"])
def test_the_eval_that_fills_the_state(
    ip_state: IpState, daily_ip_state: IpState, daily: bool
) -> None:
    run = (daily_ip_state if daily else ip_state).eval_run
    assert run.code == 3, run.err  # at least one denial
    decisions = run.decisions()
    assert [d["allowed"] for d in decisions] == [True] * 55 + [False] * 5
    assert {(d["denied_by"]["scope"], d["denied_by"]["key"]) for d in decisions[55:]} == {
        ("ip", IP)
    }


def test_status_of_an_exhausted_ip(ip_state: IpState) -> None:
    (row,) = ip_state.env.rl("status", "--ip", IP)
    expected = {
        "scope": "ip", "key": IP, "unit": "requests", "limit": 50, "window": "1m",
        "window_ms": 60000, "burst": 5, "capacity": 55,
    }  # fmt: skip
    assert {k: row[k] for k in expected} == expected
    assert row["source"].endswith(f"default.policy:{_limit_line('ip')}:1")
    # the 55 allowed requests emptied the bucket, full again 55 / rate = 66 s later
    assert (row["tokens"], row["reset_at"]) == (0, FROZEN + 66.0)


def test_status_verbose_and_table(daily_ip_state: IpState) -> None:
    state = daily_ip_state
    verbose, table, everything = parallel(
        lambda: state.rl("status", "--ip", IP, "--verbose"),
        lambda: state.table("status", "--ip", IP),
        lambda: state.rl("status"),
    )
    (row,) = verbose
    scope, unit, window, key = row["bucket"].split("/", 3)
    assert (scope, unit, float(window), key) == ("ip", "requests", DAY_MS, IP)
    assert row["rate_per_s"] == pytest.approx(50 / 86_400, rel=1e-5)
    assert row["when"] is False and row["until"] is None
    assert row["fill_percent"] == 0  # below 0.05 % for hours
    assert row["retry_after_ms"] == pytest.approx(DAY_MS / 50, abs=refill_bound(1, state.started))
    assert row["last_used"] is not None and row["last_used"] >= state.started - 0.001
    assert table.code == 0 and table.err == ""
    header, line = table.out.splitlines()
    assert header.split() == ["SCOPE", "KEY", "UNIT", "LIMIT", "WINDOW", "BURST", "CAPACITY",
                              "TOKENS", "FULL", "AT", "SOURCE"]  # fmt: skip
    assert line.split()[:7] == ["ip", IP, "requests", "50", "1d", "5", "55"]
    assert float(line.split()[7]) <= refill_bound(50 / DAY_MS, state.started) + 0.001
    # no flag: the global bucket and every key with a bucket, in scope order
    keys = [(r["scope"], r["key"]) for r in everything]
    assert keys[0] == ("global", None)
    assert ("user", "alice") in keys and ("ip", IP) in keys
    providers = [r for r in everything if r["scope"] == "provider"]
    assert providers and all(r["capacity"] == 1100 for r in providers)
    assert sum(1100 - r["tokens"] for r in providers) <= 55 + 1e-6  # 55 requests in all


def test_status_of_a_key_without_a_bucket_is_full(env: Env) -> None:
    (row,) = env.rl("status", "--user", "nobody")
    assert (row["limit"], row["capacity"], row["tokens"], row["reset_at"]) == (100, 110, 110, None)
    (row,) = env.rl("status", "--global")
    assert (row["scope"], row["key"], row["capacity"], row["tokens"]) == ("global", None, 11000,
                                                                          11000)  # fmt: skip


def test_violations_newest_first(ip_state: IpState) -> None:
    env = ip_state.env
    rows, two, none = parallel(
        lambda: env.rl("violations", "--key", IP),
        lambda: env.rl("violations", "--key", IP, "--limit", "2"),
        lambda: env.rl("violations", "--key", "198.51.100.1"),
    )
    assert [r["request_id"] for r in rows] == ["r59", "r58", "r57", "r56", "r55"]
    for r in rows:
        assert (r["scope"], r["key"], r["unit"], r["requested"]) == ("ip", IP, "requests", 1)
        assert (r["available"], r["at"]) == (0, FROZEN)
    assert [r["request_id"] for r in two] == ["r59", "r58"]
    assert none == []


def test_stats_per_scope(ip_state: IpState) -> None:
    env = ip_state.env
    rows, ip_only, future, past = parallel(
        lambda: env.rl("stats"),
        lambda: env.rl("stats", "--type", "ip"),
        lambda: env.rl("stats", "--start", "2999-01-01"),
        lambda: env.rl("stats", "--start", "2000-01-01", "--end", "2000-12-31"),
    )

    totals = {r["scope"]: (r["day"], r["allowed"], r["denied"], r["total"]) for r in rows}
    assert (len(rows), totals) == (4, {
        "global": ("2026-11-28", 55, 0, 55),
        "user": ("2026-11-28", 55, 0, 55),
        "provider": ("2026-11-28", 55, 0, 55),
        "ip": ("2026-11-28", 55, 5, 60),
    })  # fmt: skip
    (ip_row,) = ip_only
    assert (ip_row["scope"], ip_row["total"], ip_row["approval_rate"]) == ("ip", 60, 91.67)
    assert future == [] and past == []


def test_buckets(daily_ip_state: IpState) -> None:
    state = daily_ip_state
    ip_rows, user_rows, table = parallel(
        lambda: state.rl("buckets", "--type", "ip"),
        lambda: state.rl("buckets", "--type", "user"),
        lambda: state.table("buckets", "--type", "ip"),
    )
    (row,) = ip_rows
    assert (row["scope"], row["unit"], row["key"], row["capacity"]) == ("ip", "requests", IP, 55)
    assert 0 <= row["tokens"] <= refill_bound(50 / DAY_MS, state.started)
    assert row["fill_percent"] == 0
    assert state.started + 86_400 * 55 / 50 - 0.001 <= row["reset_at"]
    (alice,) = user_rows
    assert alice["key"] == "alice" and alice["capacity"] == 110
    assert 55 <= alice["tokens"] <= 55 + refill_bound(100 / DAY_MS, state.started)
    assert alice["fill_percent"] == 50
    assert table.code == 0
    assert table.out.splitlines()[0].split()[:6] == ["SCOPE", "KEY", "UNIT", "CAPACITY",
                                                     "TOKENS", "FILL"]  # fmt: skip


def test_config_lists_the_default_limits(ip_state: IpState) -> None:
    env = ip_state.env
    data, verbose = parallel(lambda: env.rl("config"), lambda: env.rl("config", "--verbose"))
    found = [(r["scope"], r["limit"], r["burst"]) for r in data["limits"]]
    assert found == DEFAULT_LIMITS
    for r in data["limits"]:
        assert (r["key"], r["unit"], r["window"], r["window_ms"]) == (None, "requests", "1m",
                                                                      60000)  # fmt: skip
        assert r["capacity"] == r["limit"] + r["burst"]
        assert (r["when"], r["until"], r["expired"]) == (False, None, False)
    assert data["quotas"] == []
    for r, (scope, limit, burst) in zip(verbose["limits"], DEFAULT_LIMITS, strict=True):
        assert re.fullmatch(rf"limit {scope}\s+{limit} per 1m burst {burst}", r["statement"])
        assert r["rate_per_s"] == pytest.approx(limit / 60, rel=1e-5)


def test_cleanup_deletes_only_full_idle_buckets(daily_ip_state: IpState) -> None:
    state, env = daily_ip_state, daily_ip_state.env
    assert state.rl("cleanup") == {"deleted": 0, "idle_ms": 86400000}  # nothing idle for 24 h
    before = env.query("SELECT scope, key FROM rate_limit_buckets")
    done = state.rl("cleanup", "--idle", "0s")
    after = env.query("SELECT scope, key FROM rate_limit_buckets")
    assert done["deleted"] == len(before) - len(after)
    # not full: kept (the per-minute global and provider buckets may be full already)
    assert {("ip", IP), ("user", "alice")} <= set(after)
    table = state.table("cleanup")
    assert (table.code, table.out) == (0, "deleted 0 buckets (full and idle for 24h)\n")


# ----------------------------------------------------------------------------- changing state


def test_reset_refills_one_ip_only(env: Env) -> None:
    policy = daily_policy(env, "ip")  # `limit ip 50 per 1d burst 5`: no refill to speak of
    other = "203.0.113.70"  # its key extends IP's: a prefix reset must not touch it
    requests = env.requests("a.jsonl", from_ip(IP, 56, "a") + from_ip(other, 56))
    first = env.run("eval", *policy, requests)
    assert (first.code, first.allowed()) == (3, 110)
    assert env.rl("reset", "--ip", IP, *policy) == {"scope": "ip", "key": IP, "reset": 1}
    mine, theirs = parallel(
        lambda: env.rl("status", "--ip", IP, *policy),
        lambda: env.rl("status", "--ip", other, *policy),
    )
    assert (mine[0]["tokens"], mine[0]["reset_at"]) == (55, None)
    assert theirs[0]["tokens"] < 1  # still exhausted
    requests = env.requests("b.jsonl", from_ip(IP, 1, "b") + from_ip(other, 1, "c"))
    again = env.run("eval", *policy, requests)
    assert [d["allowed"] for d in again.decisions()] == [True, False]
    assert env.rl("reset", "--ip", "198.51.100.9", *policy)["reset"] == 0
    assert env.rl("reset", "--global", *policy) == {"scope": "global", "key": None, "reset": 1}
    (row,) = env.rl("status", "--global", *policy)
    assert row["tokens"] == 11000


def test_reset_every_bucket_of_a_user(tmp_path: Path) -> None:
    env = make_env(tmp_path, now=FROZEN)  # 111 requests, 110 fit: no refill between them
    first = env.run("eval", env.requests("u.jsonl", for_user("dave", 111)))
    assert (first.code, first.allowed()) == (3, 110)
    table = env.run("ratelimit", "reset", "--user", "dave")
    assert (table.code, table.out, table.err) == (0, "reset 1 bucket of user dave\n", "")
    assert env.run("eval", env.requests("v.jsonl", for_user("dave", 1, "v"))).code == 0


def test_set_status_and_remove_a_quota(env: Env) -> None:
    quota = env.rl("set", "--user", "vip", "--limit", "1000", "--window", "1m", "--burst", "100")
    assert quota == {
        "scope": "user", "key": "vip", "unit": "requests", "limit": 1000, "window": "1m",
        "window_ms": 60000, "burst": 100, "capacity": 1100, "expires_at": None,
        "expired": False, "source": "quota",
    }  # fmt: skip
    (row,) = env.rl("status", "--user", "vip")
    assert (row["limit"], row["capacity"], row["tokens"]) == (1000, 1100, 1100)
    assert row["source"] == "quota"
    stored = env.query(
        "SELECT scope, key, max_requests, window_ms, burst, expires_at FROM user_quotas"
    )
    assert stored == [("user", "vip", 1000.0, 60000.0, 100.0, None)]
    started = time.time()
    vip = env.run("eval", env.requests("vip.jsonl", for_user("vip", 150, "v")))
    assert (vip.code, vip.allowed()) == (0, 150)  # no longer limited at 110
    (row,) = env.rl("status", "--user", "vip")
    assert 950 <= row["tokens"] <= 950 + refill_bound(1000 / MINUTE_MS, started)
    config = env.rl("config")
    assert [(q["scope"], q["key"], q["capacity"]) for q in config["quotas"]] == [
        ("user", "vip", 1100)
    ]
    assert env.rl("remove", "--user", "vip") == {"scope": "user", "key": "vip", "removed": True}
    (row,) = env.rl("status", "--user", "vip")
    assert (row["limit"], row["capacity"]) == (100, 110)
    assert row["source"].endswith(f"default.policy:{_limit_line('user')}:1")
    assert env.query("SELECT * FROM user_quotas") == []
    limited = env.run("eval", env.requests("again.jsonl", for_user("vip", 120, "w")))
    assert limited.code == 3 and limited.allowed() <= 110
    assert env.rl("remove", "--user", "vip") == {"scope": "user", "key": "vip", "removed": False}


def test_set_with_an_expiry(env: Env) -> None:
    quota = env.rl("set", "--user", "trial", "--limit", "10", "--window", "3600000",
                   "--expires", "2099-12-31")  # fmt: skip
    assert quota["expires_at"] == datetime(2099, 12, 31, tzinfo=UTC).timestamp()
    assert (quota["window"], quota["window_ms"], quota["burst"]) == ("1h", 3600000, 0)
    table = env.run("ratelimit", "config")
    assert "trial" in table.out and "2099-12-31T00:00:00.000Z" in table.out
    text = env.run("ratelimit", "set", "--user", "t2", "--limit", "1.5k", "--window", "250ms")
    assert text.out == (
        "quota set for user t2: 1500 per 250ms burst 0 (capacity 1500), no expiry\n"
    )


BAD_INPUT = [
    (["set", "--user", "vip", "--limit", "0", "--window", "1m"],
     "`--limit` must be greater than zero, got `0`"),
    (["set", "--user", "vip", "--limit", "-5", "--window", "1m"],
     "`--limit` must be greater than zero, got `-5`"),
    (["set", "--user", "vip", "--limit", "ten", "--window", "1m"],
     "`--limit` must be a number such as `100`, `1.5k` or `2M`, got `ten`"),
    (["set", "--user", "vip", "--limit", "10", "--window=-1m"],
     "`--window` must be greater than zero, got `-1m`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "-60000"],
     "`--window` must be greater than zero, got `-60000`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "0"],
     "`--window` must be greater than zero, got `0`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "5x"],
     "`--window` must be a duration such as `1m`, `30s`, `250ms`, `1h`, `1d` or milliseconds"
     " such as `60000`, got `5x`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "1m", "--burst", "-1"],
     "`--burst` must be zero or more, got `-1`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "1m", "--expires", "notadate"],
     "`--expires` must be a date such as `2026-12-31` or `2026-12-31T18:00:00Z`,"
     " got `notadate`"),
    (["set", "--user", "vip", "--limit", "10", "--window", "1m", "--expires", "2001-01-01"],
     "`--expires` must be in the future, got `2001-01-01`"),
    (["set", "--user", "", "--limit", "10", "--window", "1m"], "`--user` must not be empty"),
    (["remove", "--user", ""], "`--user` must not be empty"),
    (["reset", "--user", " "], "`--user` must not be empty"),
    (["status", "--ip", "not-an-ip"], "`--ip` must be an IPv4 or IPv6 address, got `not-an-ip`"),
    (["stats", "--type", "team"],
     "unknown scope `team` for `--type`: use one of global, user, ip, provider, model"),
    (["buckets", "--type", "users"],
     "unknown scope `users` for `--type`: use one of global, user, ip, provider, model"),
    (["stats", "--start", "yesterday"],
     "`--start` must be a date such as `2026-01-31`, got `yesterday`"),
    (["stats", "--start", "2026-02-01", "--end", "2026-01-01"],
     "`--start` 2026-02-01 is after `--end` 2026-01-01"),
    (["violations", "--limit", "0"], "`--limit` must be greater than zero, got `0`"),
    (["violations", "--key", ""], "`--key` must not be empty"),
    (["cleanup", "--idle", "soon"],
     "`--idle` must be a duration such as `1m`, `30s`, `250ms`, `1h`, `1d` or milliseconds"
     " such as `60000`, got `soon`"),
]  # fmt: skip


def snapshot(env: Env) -> tuple[Any, ...]:
    """The state file's bytes (hashed) and the rows a bad command could have changed."""
    return (
        env.fingerprint(),
        env.query("SELECT * FROM user_quotas ORDER BY key"),
        env.query("SELECT * FROM rate_limit_buckets ORDER BY bucket_key"),
    )


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Any, list[Run]]:
    """Every bad-input case, side by side, on one state file with buckets and a quota:
    (snapshot before, snapshot after, runs)."""
    env = make_env(tmp_path_factory.mktemp("bad-input"))
    assert env.run("eval", env.requests("r.jsonl", from_ip(IP, 3))).code == 0
    env.rl("set", "--user", "vip", "--limit", "1000", "--window", "1m", "--burst", "100")
    before = snapshot(env)
    assert len(before[1]) == 1 and before[2]  # a quota and buckets to leave alone
    runs = parallel(*[lambda a=a: env.run("ratelimit", *a) for a, _ in BAD_INPUT])
    return before, snapshot(env), runs


@pytest.mark.parametrize("case", range(len(BAD_INPUT)), ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exits_2_and_leaves_the_state_alone(
    bad_runs: tuple[Any, Any, list[Run]], case: int
) -> None:
    before, after, runs = bad_runs
    message = BAD_INPUT[case][1]
    run = runs[case]
    assert (run.code, run.out, run.err) == (2, "", f"policyctl: error: {message}\n")
    assert after == before


def test_a_scope_flag_is_required_to_reset(env: Env) -> None:
    run = env.run("ratelimit", "reset")
    assert run.code == 2
    assert run.err.endswith(
        "policyctl ratelimit reset: error: one of the arguments --user --provider --ip --global"
        " is required\n"
    )
    assert not env.state.exists()


# ----------------------------------------------------------------------------- concurrency


def _concurrent_evals(env: Env, user: str, each: int, *policy: str) -> tuple[list[int], float]:
    """Two `eval` processes on one state file at once: each one's allowed count."""
    files = [env.requests(f"{user}{n}.jsonl", for_user(user, each, f"p{n}-")) for n in (1, 2)]
    started = time.time()
    procs = [env.start(f"{user}{n}", "eval", *policy, f) for n, f in enumerate(files)]
    results = []
    for proc, out, err in procs:
        proc.wait(timeout=120)
        results.append(Run(proc.returncode, out.read_text(), err.read_text()))
        assert "Traceback" not in results[-1].err, results[-1].err
    for run in results:
        assert run.code in (0, 3), run.err
        assert len(run.decisions()) == each
    return [run.allowed() for run in results], started


def test_two_concurrent_evals_that_both_fit(env: Env) -> None:
    counts, _ = _concurrent_evals(env, "carol", 40)
    assert counts == [40, 40]


@pytest.mark.parametrize("window", ["1m", "1d"])
def test_two_concurrent_evals_never_over_admit(env: Env, window: str) -> None:
    policy = daily_policy(env, "user") if window == "1d" else []
    rate = USER_RATE if window == "1m" else 100 / 86_400_000.0
    counts, started = _concurrent_evals(env, "erin", 70, *policy)
    total = sum(counts)
    assert 110 <= total <= 110 + refill_bound(rate, started)
    if window == "1d":
        assert total == 110
    assert max(counts) == 70  # the state is locked: one process runs, then the other
    stats = env.rl("stats", "--type", "user", *policy)
    assert sum(r["allowed"] for r in stats) == total
    assert sum(r["denied"] for r in stats) == 140 - total
    assert len(env.rl("violations", "--key", "erin", "--limit", "500", *policy)) == 140 - total


# ----------------------------------------------------------------------------- the rest


def test_every_action_has_help_with_an_example(env: Env) -> None:
    runs = parallel(
        *[lambda a=a: env.run("ratelimit", a, "--help") for a in ("", *ACTIONS) if a],
        lambda: env.run("ratelimit", "--help"),
    )
    for action, run in zip((*ACTIONS, None), runs, strict=True):
        assert run.code == 0, run.err
        usage = "usage: policyctl ratelimit" + (f" {action}" if action else "")
        assert run.out.startswith(usage)
        assert "examples:\n  policyctl ratelimit " in run.out
        assert "--format" in run.out or action is None
    assert not env.state.exists()


@pytest.mark.parametrize("action", ["status", "stats", "violations", "buckets"])
def test_reading_a_state_file_that_does_not_exist_creates_none_and_says_so(
    env: Env, action: str
) -> None:
    """A mistyped --state must not leave an empty state file behind: a command that only
    reads shows what a new file holds (every bucket full, nothing logged) and names the
    file that was not there."""
    assert not env.state.exists()
    run = env.run("ratelimit", action, "--format", "json")
    assert run.code == 0, run.err
    assert run.err == (
        f"policyctl: note: no state file at `{env.state}` yet: nothing recorded there"
        " (check --state or $POLICYCTL_STATE)\n"
    )
    assert not env.state.exists()
    if action == "status":
        assert json.loads(run.out)[0]["tokens"] == 11000


def test_a_command_that_writes_creates_the_state_file(env: Env) -> None:
    run = env.run("ratelimit", "reset", "--user", "bob")
    assert (run.code, run.err) == (0, "")
    assert env.state.exists()


def test_memory_state_works_and_writes_no_file(env: Env) -> None:
    run = env.run("ratelimit", "status", "--global", "--state", "memory://", "--format", "json")
    assert run.code == 0, run.err
    (row,) = json.loads(run.out)
    assert row["tokens"] == 11000
    assert not (env.root / "xdg-state" / "policyctl").exists()


def test_bucket_keys_spell_the_window_in_milliseconds(daily_ip_state: IpState) -> None:
    (row,) = daily_ip_state.rl("buckets", "--type", "ip")
    assert row["bucket"] == f"ip/requests/86400000/{IP}"


def test_stats_count_a_request_once_per_scope(env: Env) -> None:
    policy = env.root / "two.policy"
    catalog = default_policy_dir() / "models.json"
    policy.write_text(
        f'catalog "{catalog}"\nlimit user 100 per 1m burst 10\nlimit user tokens 200k per 1m\n'
    )
    assert (
        env.run("eval", "--policy", str(policy), env.requests("t.jsonl", for_user("a", 3))).code
        == 0
    )
    (row,) = env.rl("stats", "--type", "user", "--policy", str(policy))
    assert (row["allowed"], row["denied"], row["total"]) == (3, 0, 3)


# ----------------------------------------------------------------------------- in process


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_admin_on_the_memory_store_with_a_fake_clock() -> None:
    """The same calls the CLI makes, on `memory://` (no stored capacities: they come from
    the policy) and a fake clock, so every number is exact."""
    from engine import PolicyEngine
    from engine.limits.admin import AdminError, RateLimitAdmin

    clock = FakeClock()
    engine = PolicyEngine(state="memory://", clock=clock)
    admin = RateLimitAdmin(engine)
    try:
        for i in range(60):
            engine.evaluate({"id": f"r{i}", "user": "alice", "ip": IP, "prompt": "hi"})
        (row,) = admin.status("ip", IP)
        assert (row["tokens"], row["reset_at"]) == (0, clock.now + 66.0)
        clock.now += 6.0  # 6 s at 50 per minute: 5 tokens back
        (row,) = admin.status("ip", IP, verbose=True)
        assert (row["tokens"], row["fill_percent"], row["retry_after_ms"]) == (5, 9.1, 0)
        by_bucket = {b["bucket"]: b for b in admin.buckets()}
        assert by_bucket[f"ip/requests/60000/{IP}"]["tokens"] == 5
        assert by_bucket["user/requests/60000/alice"]["tokens"] == 65  # 55 + 6 s x 100/min
        assert [v["request_id"] for v in admin.violations(IP)] == ["r59", "r58", "r57", "r56",
                                                                    "r55"]  # fmt: skip
        (ip_stats,) = admin.stats(scope="ip")
        assert (ip_stats["allowed"], ip_stats["denied"], ip_stats["approval_rate"]) == (
            55, 5, 91.67,
        )  # fmt: skip
        admin.set_quota("user", "alice", 10, "1s", 0)
        (row,) = admin.status("user", "alice")
        assert (row["source"], row["capacity"], row["window_ms"]) == ("quota", 10, 1000)
        assert admin.remove_quota("user", "alice") is True
        assert admin.remove_quota("user", "alice") is False
        assert admin.reset("ip", IP) == 1
        assert admin.status("ip", IP)[0]["tokens"] == 55
        clock.now += 3600.0  # every bucket full again
        assert admin.buckets() == []
        assert admin.cleanup() > 0  # memory keeps no usage times: every full bucket goes
        with pytest.raises(AdminError, match="unknown scope `team`"):
            admin.status("team")
        with pytest.raises(AdminError, match="`--window` must be greater than zero, got `0`"):
            admin.set_quota("user", "bob", 10, 0)
    finally:
        engine.close()


def test_rate_limit_configs_keeps_every_limit(env: Env) -> None:
    policy = env.root / "team.policy"
    catalog = default_policy_dir() / "models.json"
    policy.write_text(
        f'catalog "{catalog}"\n'
        'limit team = request.metadata.team  500 per 1m when request.metadata.tier == "free"\n'
        'limit team = request.metadata.team  5000 per 1m when request.metadata.tier == "pro"\n'
    )
    data = env.rl("config", "--policy", str(policy))
    assert [r["limit"] for r in data["limits"]] == [500, 5000]
    stored = env.query("SELECT max_requests FROM rate_limit_configs ORDER BY max_requests")
    assert stored == [(500.0,), (5000.0,)]


def test_source_is_the_policy_files_own_name_not_where_it_was_installed(env: Env) -> None:
    """The packaged policy lives under site-packages: SOURCE names the file, not its path."""
    rows = env.rl("config")
    scopes = ("global", "user", "provider", "ip")
    assert [row["source"] for row in rows["limits"]] == [
        f"default.policy:{_limit_line(scope)}:1" for scope in scopes
    ]
    env.run("eval", env.requests("one.jsonl", from_ip(IP, 1)))
    (row,) = env.rl("status", "--ip", IP)
    assert row["source"] == f"default.policy:{_limit_line('ip')}:1"
    table = env.run("ratelimit", "config")
    assert table.code == 0 and str(default_policy_dir()) not in table.out
    verbose = env.rl("config", "--verbose")
    assert verbose["limits"][1]["statement"] == "limit user      100 per 1m burst 10"
