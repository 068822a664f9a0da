"""`eval` is a query by default, and the admin commands reach a running server.

Real processes throughout: `policyctl eval` in subprocesses on a temporary
$XDG_STATE_HOME; a real `policyctl serve` on 127.0.0.1 on a DuckDB state file, served
load from a thread (POST /v1/eval in a loop) while `policyctl ratelimit … --server URL`
and `policyctl metrics show --server URL` run in subprocesses; then the same commands on
the file once the server has stopped, whose output must be the same.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from test_service import FLASH, Server, free_port, serving

REPO = Path(__file__).resolve().parent.parent
TOKEN = "admin-t0ken"
NOW = "2026-11-28T17:46:05Z"  # server and commands on one fixed clock: nothing refills
REFUSED = "policyctl: error: the server refused the admin token: set POLICYCTL_ADMIN_TOKEN\n"


@dataclass
class Run:
    code: int
    out: str
    err: str


def environ(root: Path, **extra: str) -> dict[str, str]:
    """The commands' environment: no POLICYCTL_* of the caller's, a private state home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env |= {"PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(root / "xdg"),
            "HOME": str(root / "home")}  # fmt: skip
    return env | extra


def policyctl(root: Path, *args: str, **env: str) -> Run:
    done = subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=root,
        env=environ(root, **env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return Run(done.returncode, done.stdout, done.stderr)


def files_under(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# --------------------------------------------------------------------------- eval is a query


def test_a_bare_eval_is_a_query_and_a_state_file_keeps_limits(tmp_path: Path) -> None:
    (tmp_path / "one.policy").write_text("limit user 1 per 1m\n", encoding="utf-8")
    request = tmp_path / "request.json"
    request.write_text('{"id": "r1", "user": "ann", "prompt": "hi"}', encoding="utf-8")
    bare = ["eval", "--policy", "one.policy", str(request)]
    runs = [policyctl(tmp_path, *bare, POLICYCTL_NOW=NOW) for _ in range(2)]
    assert [r.code for r in runs] == [0, 0], [r.err for r in runs]
    assert [json.loads(r.out)["allowed"] for r in runs] == [True, True]  # nothing consumed
    assert files_under(tmp_path / "xdg") == [] and files_under(tmp_path / "home") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.policy", "request.json"]

    state = str(tmp_path / "kept.duckdb")
    kept = [policyctl(tmp_path, *bare, "--state", state, POLICYCTL_NOW=NOW) for _ in range(2)]
    assert [r.code for r in kept] == [0, 3], [r.err for r in kept]
    assert json.loads(kept[1].out)["denied_by"]["scope"] == "user"

    from_env = str(tmp_path / "env.duckdb")
    env = {"POLICYCTL_NOW": NOW, "POLICYCTL_STATE": from_env}
    assert [policyctl(tmp_path, *bare, **env).code for _ in range(2)] == [0, 3]
    assert Path(from_env).is_file()
    assert files_under(tmp_path / "xdg") == []


def test_eval_help_says_it_is_a_query(tmp_path: Path) -> None:
    run = policyctl(tmp_path, "eval", "--help")
    assert run.code == 0
    text = " ".join(run.out.split())
    assert "else memory://: fresh in-memory state, nothing written" in text
    assert "Without --state (or $POLICYCTL_STATE) eval is a query" in text
    assert "--lock-wait SECONDS" in text


# --------------------------------------------------------------------------- load


@dataclass
class Load:
    """POST /v1/eval in a loop from a thread until stopped; every answer must be a 200."""

    url: str
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self.stop.is_set():
                user = f"load-{self.sent % 40}"
                body = {"id": f"load{self.sent}", "user": user, "prompt": "hi"}
                try:
                    response = client.post("/v1/eval", json=body)
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                    return
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code}: {response.text}")
                self.sent += 1
                self.stop.wait(0.002)


@contextmanager
def loaded(server: Server) -> Iterator[Load]:
    load = Load(server.url)
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        yield load
    finally:
        load.stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert load.failures == []


def seed(server: Server) -> None:
    """What the commands will show: seven decisions for `quiet` (103 of 110 tokens left)
    and 40 outcomes of one model (100 … 490 ms, so p50 295 ms)."""
    with server.client() as client:
        for i in range(7):
            body = {"id": f"quiet{i}", "user": "quiet", "prompt": "hi"}
            assert client.post("/v1/eval", json=body).status_code == 200
        outcomes = [{**FLASH, "latency_ms": 100 + 10 * i, "success": True} for i in range(40)]
        response = client.post("/v1/outcomes", json=outcomes)
        assert response.status_code == 202, response.text


# --------------------------------------------------------------------------- admin via server

# read-only commands whose output must be the same through the server and from the file
SAME = [
    ("ratelimit", "status", "--user", "quiet"),
    ("ratelimit", "status", "--user", "quiet", "--verbose", "--format", "json"),
    ("ratelimit", "config"),
    ("ratelimit", "config", "--verbose", "--format", "json"),
    ("metrics", "show"),
    ("metrics", "show", "--format", "json"),
    ("metrics", "show", "--provider", "openai"),
]


def test_admin_commands_reach_a_serving_server_under_load(tmp_path: Path) -> None:
    env = {"POLICYCTL_ADMIN_TOKEN": TOKEN, "POLICYCTL_NOW": NOW}
    served: dict[tuple[str, ...], str] = {}
    with serving(tmp_path, env=env) as server:
        state = str(server.state)
        seed(server)
        with loaded(server) as load:
            at_start = load.sent

            def ask(*args: str, **extra: str) -> Run:
                run = policyctl(tmp_path, *args, "--server", server.url, **(env | extra))
                assert "in use by another process" not in run.err
                assert run.code == 0, (args, run.err)
                return run

            for args in SAME:
                served[args] = ask(*args).out

            rows = json.loads(served[SAME[1]])
            (user,) = [r for r in rows if r["scope"] == "user"]
            assert (user["key"], user["limit"], user["capacity"], user["tokens"]) == (
                "quiet", 100, 110, 103,
            )  # fmt: skip
            report = json.loads(served[("metrics", "show", "--format", "json")])
            assert report["state"] == state and report["window"] == "24h"
            (model,) = report["models"]
            assert model["provider"] == FLASH["provider"]  # the catalog's name for the alias:
            assert model["model"].startswith(FLASH["model"])  # gemini-1.5-flash-latest
            assert (model["samples"], model["p50_ms"], model["success_rate"]) == (40, 295.0, 1.0)
            assert "no outcomes for provider `openai` in the last 24h" in served[SAME[6]]

            # every other subcommand, the state-changing ones with the token
            for args in (("stats",), ("violations", "--limit", "5"), ("buckets",)):
                ask("ratelimit", *args, "--format", "json")
            quota = json.loads(
                ask("ratelimit", "set", "--user", "vip", "--limit", "5", "--window", "1m",
                    "--format", "json").out
            )  # fmt: skip
            assert (quota["key"], quota["limit"], quota["capacity"]) == ("vip", 5, 5)
            vip = json.loads(ask("ratelimit", "status", "--user", "vip", "--format", "json").out)
            assert [r["source"] for r in vip if r["scope"] == "user"] == ["quota"]
            removed = ask("ratelimit", "remove", "--user", "vip")
            assert removed.out == "removed the quota of user vip; the policy's user limits apply\n"
            assert ask("ratelimit", "reset", "--user", "load-1").out.startswith("reset ")
            assert ask("ratelimit", "cleanup", "--format", "json").out.startswith('{"deleted": ')
            # the variable names the server as the flag does
            by_env = policyctl(
                tmp_path, "ratelimit", "status", "--user", "quiet",
                **(env | {"POLICYCTL_SERVER": server.url}),
            )  # fmt: skip
            assert (by_env.code, by_env.out) == (0, served[SAME[0]]), by_env.err

            # the file itself is the server's: a short wait, then an error naming --server
            for args in (("ratelimit", "status"), ("metrics", "show")):
                busy = policyctl(tmp_path, *args, "--state", state, "--lock-wait", "0.5", **env)
                assert (busy.code, busy.out) == (4, ""), busy.err
                assert busy.err == (
                    f"policyctl: error: state file `{state}` is in use by another process;"
                    " waited 0.5 s\nhelp: ask the server that holds it: --server URL (or"
                    " $POLICYCTL_SERVER); or wait longer: --lock-wait SECONDS (or"
                    " $POLICYCTL_LOCK_WAIT)\n"
                )
            assert load.sent > at_start  # it served the load all along
    # the server has stopped and written its state back: the file says the same
    for args in SAME:
        run = policyctl(tmp_path, *args, "--state", state, **env)
        assert run.code == 0, run.err
        assert run.out == served[args], args


def test_refusals_and_errors_from_the_server(tmp_path: Path) -> None:
    env = {"POLICYCTL_ADMIN_TOKEN": TOKEN, "POLICYCTL_NOW": NOW}
    with serving(tmp_path, state="memory://", env=env) as server:
        url = server.url
        for token in ("wrong", ""):
            run = policyctl(tmp_path, "ratelimit", "reset", "--user", "x", "--server", url,
                            POLICYCTL_ADMIN_TOKEN=token)  # fmt: skip
            assert (run.code, run.out, run.err) == (2, "", REFUSED)
        # a parameter only the server can check (its policy's scopes): its problem message
        run = policyctl(tmp_path, "ratelimit", "buckets", "--type", "nosuch", "--server", url)
        assert (run.code, run.out) == (2, "")
        assert run.err.startswith(
            f"policyctl: error: the server at {url} answered 422: invalid admin call; type:"
            " unknown scope `nosuch`"
        ), run.err
        # a server on memory state keeps no outcome log
        run = policyctl(tmp_path, "metrics", "show", "--server", url + "/")
        assert (run.code, run.out) == (2, "")
        assert run.err == (
            f"policyctl: error: the server at {url} answered 409: this server keeps no outcome"
            " log: its state `memory://` is not a DuckDB file\n"
        )
    port = free_port()  # nothing listens on it
    for args in (("ratelimit", "status"), ("metrics", "show")):
        run = policyctl(tmp_path, *args, "--server", f"http://127.0.0.1:{port}")
        assert (run.code, run.out) == (1, ""), run.err
        assert run.err.startswith(
            f"policyctl: error: cannot reach the server at http://127.0.0.1:{port}: "
        ), run.err


def test_server_flags_are_checked_before_anything_is_asked(tmp_path: Path) -> None:
    cases = {
        ("ratelimit", "status", "--server", "ftp://x"):
            "--server must be an http:// or https:// URL, got `ftp://x`",
        ("ratelimit", "status", "--server", "http://127.0.0.1:1", "--state", "s.duckdb"):
            "give --server or --state, not both: a server answers from its own state",
        ("ratelimit", "config", "--server", "http://127.0.0.1:1", "--policy", "p"):
            "--policy is for the state file: a server (--server or $POLICYCTL_SERVER) answers"
            " with its own policy",
        ("metrics", "show", "--lock-wait", "-1"):
            "`--lock-wait` must be a number of seconds, 0 or more, got `-1`",
    }  # fmt: skip
    for args, message in cases.items():
        run = policyctl(tmp_path, *args)
        assert (run.code, run.out, run.err) == (2, "", f"policyctl: error: {message}\n"), args
    assert files_under(tmp_path / "xdg") == []


def test_a_state_file_that_is_not_duckdb_is_bad_input_not_busy(tmp_path: Path) -> None:
    """Exit 4 is for a state file another process holds (docs/decisions.md §4); a file that
    is not a DuckDB database is the --state given: exit 2, saying so, at once (it was 4)."""
    state = tmp_path / "state.duckdb"
    state.write_text("not a database\n", encoding="utf-8")
    message = f"policyctl: error: cannot open state file `{state}`: IO Error: The file"
    for args in (
        ("serve", "--port", "0", "--no-watch"),
        ("ratelimit", "status", "--user", "a"),
        ("metrics", "show"),
        ("eval", "--policy", str(REPO / "policies"), "-"),
    ):
        run = policyctl(tmp_path, *args, "--state", str(state), POLICYCTL_NOW=NOW)
        assert run.code == 2, (args, run.err)
        assert run.err.startswith(message) and "is not a valid DuckDB database" in run.err
