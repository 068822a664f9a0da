"""Violations and daily stats of an engine on Redis (or memory) state go to a DuckDB
analytics file, where `policyctl ratelimit violations` and `stats` read them.

Real processes throughout: a real redis-server (tests/_redis.py), `policyctl eval` and
`policyctl serve` in subprocesses, and the DuckDB files they write, read back both by the
`ratelimit` commands and directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
import redis
from _design import from_design

from engine.limits.stores import ConfigurationError

pytest_plugins = ["_redis"]

POLICIES = Path(__file__).parents[1] / "examples" / "policies"  # the design catalog
# one small limit: the third request of a user in an hour is denied
POLICY = 'catalog "models.yaml"\nlimit user 2 per 1h\n'
DEADLINE_S = 60.0


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Setup:
    root: Path
    state: str  # a fresh Redis database

    @property
    def policy(self) -> str:
        return str(self.root / "policy")

    def environ(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
        env["XDG_STATE_HOME"] = str(self.root / "xdg-state")
        return env

    @property
    def default_file(self) -> Path:
        return self.root / "xdg-state" / "policyctl" / "state.duckdb"

    def run(self, *args: str, stdin: str = "") -> Run:
        done = subprocess.run(
            [sys.executable, "-m", "engine", *args],
            cwd=self.root,
            env=self.environ(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in done.stderr, done.stderr
        return Run(done.returncode, done.stdout, done.stderr)

    def rl(self, action: str, *args: str) -> Any:
        done = self.run(
            "ratelimit", action, "--state", self.state, "--policy", self.policy,
            "--format", "json", *args,
        )  # fmt: skip
        assert done.code == 0, done.err
        return json.loads(done.out)


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute(sql).fetchall()


@pytest.fixture
def setup(tmp_path: Path, redis_server: Any, request: pytest.FixtureRequest) -> Setup:
    policy = tmp_path / "policy"
    policy.mkdir()
    shutil.copy(POLICIES / "models.yaml", policy / "models.yaml")
    (policy / "limits.policy").write_text(POLICY, encoding="utf-8")
    db = 8 + len(request.node.name) % 7  # databases 8..14: apart from the other Redis tests
    url = redis_server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return Setup(tmp_path, url)


def requests(user: str, count: int) -> str:
    return "".join(json.dumps({"id": f"{user}-{i}", "user": user}) + "\n" for i in range(count))


def test_eval_on_redis_records_violations_and_stats_in_the_analytics_file(
    setup: Setup,
) -> None:
    analytics = setup.root / "analytics.duckdb"
    done = setup.run(
        "eval", "-", "--state", setup.state, "--policy", setup.policy,
        "--analytics", str(analytics), "--format", "json", stdin=requests("alice", 3),
    )  # fmt: skip
    assert done.code == 3, done.err  # one denied
    assert [json.loads(line)["allowed"] for line in done.out.splitlines()] == [True, True, False]
    assert query(analytics, "SELECT scope, key, unit, request_id FROM rate_limit_violations") == [
        ("user", "alice", "requests", "alice-2")
    ]

    found = setup.rl("violations", "--analytics", str(analytics))
    assert [(v["scope"], v["key"], v["request_id"]) for v in found] == [
        ("user", "alice", "alice-2")
    ]
    stats = setup.rl("stats", "--analytics", str(analytics))
    assert [(s["scope"], s["total"], s["allowed"], s["denied"]) for s in stats] == [
        ("user", 3, 2, 1)
    ]
    # the default file was not involved
    assert not setup.default_file.exists()


def test_serve_on_redis_records_in_the_default_state_file(setup: Setup) -> None:
    """`serve --state redis://…` with no --analytics: the state directory's DuckDB file,
    which `ratelimit violations` and `stats` read by default too."""
    from _redis import free_port

    port = free_port()
    log = setup.root / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port",
             str(port), "--policy", setup.policy, "--state", setup.state, "--no-watch"],
            cwd=setup.root, env=setup.environ(), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE_S) as client:
            for _ in range(600):  # bounded: up to 60 s for the server to come up
                assert proc.poll() is None, log.read_text()
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.1)  # not up yet: wait a little (or see it exit)
            else:
                pytest.fail(f"the server did not answer:\n{log.read_text()}")
            allowed = [
                client.post("/v1/eval", json={"id": f"bob-{i}", "user": "bob"}).json()["allowed"]
                for i in range(3)
            ]
            assert allowed == [True, True, False]
            # the running server shows its violation through the admin API as well
            shown = client.get("/v1/ratelimit/violations", params={"key": "bob"}).json()
            assert [v["request_id"] for v in shown] == ["bob-2"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert query(setup.default_file, "SELECT key, request_id FROM rate_limit_violations") == [
        ("bob", "bob-2")
    ]
    found = setup.rl("violations")
    assert [(v["key"], v["request_id"]) for v in found] == [("bob", "bob-2")]
    stats = setup.rl("stats")
    assert [(s["scope"], s["total"], s["allowed"], s["denied"]) for s in stats] == [
        ("user", 3, 2, 1)
    ]


def test_analytics_beside_a_duckdb_state_file_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.duckdb"
    with pytest.raises(ConfigurationError) as refused:
        from_design("limit user 2 per 1h\n", state=str(state), analytics=str(tmp_path / "a.duckdb"))
    assert str(refused.value) == (
        f"an analytics file (`{tmp_path / 'a.duckdb'}`) is for a memory or Redis state store;"
        f" the DuckDB state file `{state}` keeps its own logs"
    )
    assert not (tmp_path / "a.duckdb").exists()
