"""Crashes with real processes: a `policyctl serve` killed with SIGKILL (a crash, an OOM
kill) and a policy file written slowly in place while the server decides.

- the rate-limit state of a used-up limit reaches the DuckDB file within the flush
  interval, so a restart does not hand the quota back;
- every outcome acknowledged (202) longer ago than the flush interval is on disk;
- no decision is made by a half-written policy file.

Each test prints its figures (run with `-s` to see them).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
from test_service import DESIGN, FLASH, free_port, wait_for, wait_until_serving

from engine.language.loader import load_policy

FLUSH_INTERVAL_S = 0.25
USER_LIMIT_LINE = "limit user      100 per 1m burst 10"


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def policy_dir(directory: Path, *, user_limit: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    # the design's policy set, whose models these tests name
    (directory / "models.yaml").write_bytes((DESIGN / "models.yaml").read_bytes())
    text = (DESIGN / "design.policy").read_text(encoding="utf-8")
    assert USER_LIMIT_LINE in text
    (directory / "default.policy").write_text(
        text.replace(USER_LIMIT_LINE, user_limit), encoding="utf-8"
    )
    return directory


@contextmanager
def serve(workdir: Path, policies: Path, state: Path, *flags: str) -> Iterator[Proc]:
    """`policyctl serve` in a subprocess, ready to answer; killed (if still alive) on exit."""
    port = free_port()
    log = workdir / f"serve-{port}.log"
    command = [sys.executable, "-m", "engine", "serve", "--port", str(port)]
    command += ["--policy", str(policies), "--state", str(state), *flags]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    served = Proc(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_until_serving(proc, served.url, served.output)
        yield served
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def kill(served: Proc) -> None:
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait()
    assert served.proc.returncode == -signal.SIGKILL


def test_a_used_up_limit_stays_used_after_sigkill_and_restart(tmp_path: Path) -> None:
    policies = policy_dir(tmp_path / "policies", user_limit="limit user 3 per 1d")
    state = tmp_path / "state.duckdb"
    flags = ("--flush-interval", str(FLUSH_INTERVAL_S), "--no-watch")
    request = {"id": "q", "user": "quota-user", "prompt": "hi"}
    with (
        serve(tmp_path, policies, state, *flags) as served,
        httpx.Client(base_url=served.url, timeout=10) as client,
    ):
        allowed = [client.post("/v1/eval", json=request).json()["allowed"] for _ in range(4)]
        assert allowed == [True, True, True, False]
        # the guarantee under test: within the flush interval the state is on disk
        time.sleep(FLUSH_INTERVAL_S * 6)
        kill(served)
    con = duckdb.connect(str(state), read_only=True)
    violations = con.execute("SELECT key, request_id FROM rate_limit_violations").fetchall()
    stats = con.execute(
        "SELECT allowed_requests, denied_requests FROM rate_limit_stats WHERE scope = 'user'"
    ).fetchall()
    (buckets,) = con.execute(
        "SELECT count(*) FROM rate_limit_buckets WHERE bucket_key LIKE 'user/%quota-user'"
    ).fetchone()
    con.close()
    print(f"\nafter SIGKILL: {buckets} user bucket, violations {violations}, stats {stats}")
    assert buckets == 1
    assert violations == [("quota-user", "q")]
    assert stats == [(3, 1)]
    with (
        serve(tmp_path, policies, state, *flags) as served,
        httpx.Client(base_url=served.url, timeout=10) as client,
    ):
        decision = client.post("/v1/eval", json=request).json()
        assert decision["allowed"] is False  # the quota stays used
        assert decision["denied_by"]["scope"] == "user"


def test_every_acknowledged_outcome_older_than_the_flush_interval_survives_sigkill(
    tmp_path: Path,
) -> None:
    policies = policy_dir(tmp_path / "policies", user_limit=USER_LIMIT_LINE)
    state = tmp_path / "state.duckdb"
    interval = 1.0  # the default
    acked: list[tuple[float, str]] = []  # (monotonic time of the 202, request id)
    stop = threading.Event()
    with serve(tmp_path, policies, state, "--flush-interval", str(interval)) as served:

        def post() -> None:
            with httpx.Client(base_url=served.url, timeout=10) as client:
                for i in range(1_000_000):  # bounded; ends at the kill
                    if stop.is_set():
                        return
                    ids = [f"o{i}-{j}" for j in range(10)]
                    body = [{**FLASH, "latency_ms": 100.0, "success": True, "request_id": r}
                            for r in ids]  # fmt: skip
                    try:
                        response = client.post("/v1/outcomes", json=body)
                    except httpx.TransportError:
                        return  # killed
                    if response.status_code == 202:
                        now = time.monotonic()
                        acked.extend((now, r) for r in ids)

        poster = threading.Thread(target=post)
        poster.start()
        wait_for(
            lambda: bool(acked) and time.monotonic() - acked[0][0] >= 3 * interval,
            "outcomes acknowledged over three flush intervals",
        )
        killed_at = time.monotonic()
        kill(served)
        stop.set()
        poster.join(timeout=20)
    con = duckdb.connect(str(state), read_only=True)
    on_disk = {r for (r,) in con.execute("SELECT request_id FROM outcomes").fetchall()}
    con.close()
    old = [r for at, r in acked if at < killed_at - interval]
    lost_old = [r for r in old if r not in on_disk]
    lost_recent = sum(1 for at, r in acked if at >= killed_at - interval and r not in on_disk)
    print(
        f"\nacknowledged {len(acked)}, of which {len(old)} older than {interval:g} s;"
        f" lost {len(lost_old)} of those and {lost_recent} of the newer"
    )
    assert old, "no outcome was acknowledged long enough before the kill"
    assert lost_old == []


def test_a_slow_in_place_write_never_serves_a_partial_policy(tmp_path: Path) -> None:
    quiet_ms = 300
    pause_s = 0.06  # between chunks: longer than the old 50 ms debounce, shorter than quiet
    policies = policy_dir(tmp_path / "policies", user_limit=USER_LIMIT_LINE)
    path = policies / "default.policy"
    old_text = path.read_text(encoding="utf-8")
    new_text = old_text.replace(USER_LIMIT_LINE, "limit user 90 per 1m burst 10")
    final = tmp_path / "final"
    final.mkdir()
    (final / "models.yaml").write_bytes((policies / "models.yaml").read_bytes())
    (final / "default.policy").write_text(new_text, encoding="utf-8")
    old_version = load_policy(policies).program.version
    new_version = load_policy(final).program.version
    # chunks end at blank lines: many prefixes are whole policies of their own
    chunks = [part + "\n\n" for part in new_text.split("\n\n")]
    chunks[-1] = chunks[-1][:-2]
    assert "".join(chunks) == new_text and len(chunks) >= 8
    versions: dict[str, int] = {}
    stop = threading.Event()
    flags = ("--state", "memory://", "--reload-quiet", str(quiet_ms))
    with serve(tmp_path, policies, tmp_path / "unused.duckdb", *flags) as served:

        def load() -> None:
            with httpx.Client(base_url=served.url, timeout=10) as client:
                for i in range(1_000_000):  # bounded; ends when told
                    if stop.is_set():
                        return
                    body = {"id": f"r{i}", "user": f"u{i % 50}", "prompt": "hi"}
                    version = client.post("/v1/eval", json=body).json()["policy_version"]
                    versions[version] = versions.get(version, 0) + 1

        loader = threading.Thread(target=load)
        loader.start()
        wait_for(lambda: sum(versions.values()) >= 50, "decisions before the write")
        with open(path, "w", encoding="utf-8") as out:  # in place: truncate, then write
            for chunk in chunks:
                out.write(chunk)
                out.flush()
                time.sleep(pause_s)
        with httpx.Client(base_url=served.url, timeout=10) as client:
            wait_for(
                lambda: client.get("/v1/policy").json()["version"] == new_version,
                "the complete file to be served",
            )
            status = client.get("/v1/policy").json()
        served_new = versions.get(new_version, 0)
        wait_for(lambda: versions.get(new_version, 0) >= served_new + 50, "decisions after")
        stop.set()
        loader.join(timeout=20)
    partial = {v: n for v, n in versions.items() if v not in (old_version, new_version)}
    print(
        f"\n{len(chunks)} chunks, {pause_s * 1000:g} ms apart, quiet window {quiet_ms} ms:"
        f" {sum(versions.values())} decisions, {sum(partial.values())} by a partial version"
        f" ({len(partial)} partial versions); reloads {status['reloads']}"
    )
    assert partial == {}
    assert status["reloads"] >= 1
