"""When the DuckDB state file fails: a lock another process holds, a write the disk refuses.

`on_store_error` (docs/language.md, settings) decides a request when the store that holds
the buckets cannot be reached — Redis down or slow (tests/test_redis.py). A DuckDB file is
different: its buckets live in the process that has the file open and are written back
by a timer. So under both modes:
- a file another process holds is an error before any decision (exit 4, nothing decided);
- a write the disk refuses changes no decision (the limits hold exactly, nothing fails
  open or closed, `store_errors` stays 0); it is reported (`StateWriteError`) and what
  could not be written (buckets, violations, daily stats, decisions, outcomes) is kept and
  written by the next flush that succeeds, so a quota used up before the failure is still
  used up after a restart;
- a write that still fails when the engine closes is an error of `close()` (the CLI's
  exit 1), never a silent loss.

Real DuckDB files, real processes. A write failure is made real: after a checkpoint (the
write-ahead log is gone), a directory stands where DuckDB must create `FILE.wal`, or the
file's directory is removed; DuckDB then cannot commit.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from _design import from_design

from engine import Decision, PolicyEngine
from engine.analytics.salvage import StateWriteError
from engine.limits.stores.base import Spec
from engine.limits.stores.duckdb_store import FLUSH_EVERY, DuckDBStore

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
MODES = ["open", "closed"]
USER_DENIED = {"scope": "user", "key": "u", "unit": "requests", "retry_after_ms": 1_200_000}


def policy(mode: str) -> str:
    return f"defaults {{ on_store_error {mode} }}\nlimit user 3 per 1h\n"


def engine_on(path: Path, mode: str) -> PolicyEngine:
    """A fixed clock, and a flush timer that never fires during a test: writes happen when
    the test flushes or closes."""
    return from_design(policy(mode), state=str(path), clock=lambda: NOW, flush_interval_s=3600.0)


def store_of(engine: PolicyEngine) -> DuckDBStore:
    assert isinstance(engine.store, DuckDBStore)
    return engine.store


def checkpoint(engine: PolicyEngine) -> None:
    """Fold the write-ahead log into the file: the next commit must create `FILE.wal`."""
    store_of(engine).read(lambda con: con.execute("CHECKPOINT"))


def decide(engine: PolicyEngine, n: int) -> list[Decision]:
    return [engine.evaluate({"id": f"r{i}", "user": "u"}) for i in range(n)]


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize("mode", MODES)
def test_a_write_the_disk_refuses_changes_no_decision_and_is_written_later(
    tmp_path: Path, mode: str
) -> None:
    state = tmp_path / "state.duckdb"
    wal = tmp_path / "state.duckdb.wal"
    engine = engine_on(state, mode)
    try:
        checkpoint(engine)
        assert not wal.exists()
        wal.mkdir()  # DuckDB cannot create its log: every commit fails
        decisions = decide(engine, 5)
        assert [d.allowed for d in decisions] == [True, True, True, False, False]
        assert [d.denied_by for d in decisions[3:]] == [USER_DENIED, USER_DENIED]
        assert engine.limiter.store_errors == 0  # not an outage: no fail mode applied
        assert engine.record(decisions[0], latency_ms=640, success=True) is True
        with pytest.raises(StateWriteError) as failed:
            engine.flush()
        assert str(failed.value) == (
            f"could not write the state file `{state}`: TransactionContext Error: Failed to"
            f' commit: Cannot open file "{wal}": Is a directory'
        )
        assert decide(engine, 1)[0].denied_by == USER_DENIED  # still deciding exactly
        wal.rmdir()  # the disk is back: the next flush writes what the failed one held
        engine.flush()
    finally:
        engine.close()
    assert rows(state, "SELECT bucket_key FROM rate_limit_buckets") == [
        ("user/requests/3600000/u",)
    ]
    assert rows(state, "SELECT count(*), min(key) FROM rate_limit_violations") == [(3, "u")]
    assert rows(state, "SELECT scope, allowed_requests, denied_requests FROM rate_limit_stats") == [
        ("user", 3, 3)
    ]
    assert rows(state, "SELECT count(*) FROM decisions") == [(6,)]
    assert rows(state, "SELECT request_id, latency_ms FROM outcomes") == [("r0", 640.0)]
    again = engine_on(state, mode)  # a restart: the quota used up before the failure
    try:
        assert decide(again, 1)[0].denied_by == USER_DENIED
    finally:
        again.close()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30.0  # a guard against a hang, not a timing assertion
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.mark.parametrize("mode", MODES)
def test_the_flush_timer_logs_a_refused_write_and_writes_it_once_it_can(
    tmp_path: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    state = tmp_path / "state.duckdb"
    wal = tmp_path / "state.duckdb.wal"
    engine = from_design(policy(mode), state=str(state), clock=lambda: NOW, flush_interval_s=0.05)
    store = store_of(engine)

    def violations_written() -> bool:
        counted = store.read(
            lambda con: con.execute("SELECT count(*) FROM rate_limit_violations").fetchone()
        )
        return bool(counted == (1,))

    try:
        with caplog.at_level(logging.WARNING, logger="policyctl"):
            checkpoint(engine)
            wal.mkdir()
            assert [d.allowed for d in decide(engine, 4)] == [True, True, True, False]
            wait_for(lambda: store.write_errors > 0, "a refused flush")
            wal.rmdir()
            wait_for(violations_written, "the violation to be written")
        timer = [r.getMessage() for r in caplog.records if r.name == "policyctl"]
        assert timer == [
            f"could not write the state file `{state}`: TransactionContext Error: Failed to"
            f' commit: Cannot open file "{wal}": Is a directory; kept for the next flush'
        ]  # once: at most every 10 s
    finally:
        engine.close()
    assert rows(state, "SELECT bucket_key FROM rate_limit_buckets") == [
        ("user/requests/3600000/u",)
    ]


@pytest.mark.parametrize("mode", MODES)
def test_a_state_that_cannot_be_written_at_close_is_an_error(tmp_path: Path, mode: str) -> None:
    directory = tmp_path / "state"
    directory.mkdir()
    state = directory / "state.duckdb"
    engine = engine_on(state, mode)
    checkpoint(engine)
    shutil.rmtree(directory)  # the file's directory is gone: nothing can be committed
    decisions = decide(engine, 4)
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert decisions[3].denied_by == USER_DENIED
    assert engine.limiter.store_errors == 0
    with pytest.raises(StateWriteError) as failed:
        engine.close()
    assert str(failed.value) == (
        f"could not write the state file `{state}`: TransactionContext Error: Failed to"
        f' commit: Cannot open file "{state}.wal": No such file or directory'
    )
    engine.close()  # closed: a second close does nothing


@contextmanager
def _held(path: Path) -> Iterator[None]:
    """Another process holds the DuckDB file `path` (its write lock) while the block runs,
    and ends cleanly after."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]);"
         " print('locked', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        yield
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0


def test_a_state_file_another_process_holds_is_an_error_before_any_decision(
    tmp_path: Path,
) -> None:
    """`policyctl eval` waits 10 s for the lock, then stops with exit code 4 and decides
    nothing, whatever the policy's fail mode (both modes run at once: one wait)."""
    state = tmp_path / "state.duckdb"
    with _held(state):
        env = {**os.environ, "PYTHONPATH": str(REPO), "POLICYCTL_NOW": str(NOW)}
        runs = {}
        for mode in MODES:
            (tmp_path / f"{mode}.policy").write_text(policy(mode), encoding="utf-8")
            command = [sys.executable, "-m", "engine", "eval", "--policy", f"{mode}.policy"]
            runs[mode] = subprocess.Popen(
                [*command, "--state", str(state), "-"],
                cwd=tmp_path, env=env, text=True,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            )  # fmt: skip
        for mode, run in runs.items():
            stdout, stderr = run.communicate('{"id": "r1", "user": "u"}\n', timeout=120)
            assert (run.returncode, stdout) == (4, ""), (mode, stderr)
            assert stderr == (
                f"policyctl: error: state file `{state}` is in use by another process;"
                " waited 10 s\nhelp: wait longer: --lock-wait SECONDS (or $POLICYCTL_LOCK_WAIT);"
                " or leave --state out for a query on fresh in-memory state (the server that"
                " holds the file decides on POST /v1/eval)\n"
            )
    assert rows(state, "SELECT count(*) FROM duckdb_tables()") == [(0,)]  # never written


def test_an_analytics_file_another_process_holds_waits_as_long_as_lock_wait_says(
    tmp_path: Path,
) -> None:
    """`--lock-wait` is how long every DuckDB file a command opens waits, the analytics file
    of a memory or Redis state too (the engine opened it with a fixed 10 s wait: `ratelimit
    stats --lock-wait 0.5` waited 10 s and said so)."""
    analytics = tmp_path / "analytics.duckdb"
    with _held(analytics):
        env = {**os.environ, "PYTHONPATH": str(REPO), "POLICYCTL_NOW": str(NOW)}
        (tmp_path / "r.json").write_text('{"id": "r1", "user": "u"}', encoding="utf-8")
        for command in (
            ["eval", "--state", "memory://", "r.json"],
            ["ratelimit", "stats", "--state", "memory://"],
        ):
            run = subprocess.run(
                [sys.executable, "-m", "engine", *command, "--analytics", str(analytics),
                 "--lock-wait", "0.5"],
                cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert (run.returncode, run.stdout) == (4, ""), (command, run.stderr)
            first = run.stderr.splitlines()[0]
            assert first == (
                f"policyctl: error: state file `{analytics}` is in use by another process;"
                " waited 0.5 s"
            ), command


def test_a_running_engine_writes_on_its_timer_never_on_the_deciding_thread(
    tmp_path: Path,
) -> None:
    """FLUSH_EVERY acquires wake the flush timer (a timer that would otherwise not fire in
    the test) rather than flushing on the thread that decides: a service's event loop never
    writes the state file. Without a timer (the store alone), the deciding thread flushes."""
    state = tmp_path / "state.duckdb"
    engine = from_design(
        "limit user 1000000 per 1h\n", state=str(state), clock=lambda: NOW,
        flush_interval_s=3600.0,
    )  # fmt: skip
    store = store_of(engine)
    flushed_on: list[str] = []
    flush = store.flush

    def counted(**logs: Any) -> None:
        flushed_on.append(threading.current_thread().name)
        flush(**logs)

    store.flush = counted  # type: ignore[method-assign]
    try:
        for i in range(FLUSH_EVERY + 10):  # one acquire each, a user each
            assert engine.evaluate({"id": f"r{i}", "user": f"u{i}"}).allowed
        wait_for(lambda: engine._logs is not None and engine._logs.timer_flushes >= 1, "a flush")
        assert threading.current_thread().name not in flushed_on
        assert flushed_on and set(flushed_on) == {"policyctl-flush"}
    finally:
        engine.close()
    assert rows(state, "SELECT count(*) FROM rate_limit_buckets") == [(FLUSH_EVERY + 10,)]

    alone = DuckDBStore(str(tmp_path / "alone.duckdb"))
    alone_on: list[str] = []
    alone_flush = alone.flush

    def alone_counted(**logs: Any) -> None:
        alone_on.append(threading.current_thread().name)
        alone_flush(**logs)

    alone.flush = alone_counted  # type: ignore[method-assign]
    try:
        spec = Spec("user/requests/3600000/x", capacity=1e9, rate=1.0, cost=1.0)
        for _ in range(FLUSH_EVERY):
            alone.acquire_stepwise([spec], (), NOW * 1000)
        assert alone_on == [threading.current_thread().name]
    finally:
        alone.close()
