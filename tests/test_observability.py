"""What an operator watches: `GET /metrics` scraped from a real `policyctl serve` and
parsed by prometheus_client's own parsers, and the server's logs (`--access-log`,
`--log-level`, `--log-format json`) read from its stderr.

Each test starts its own server, so the counts it checks are exactly the requests it sent.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from test_service import DEADLINE_S, copy_policies, free_port, wait_until_serving

import engine
from engine.cli import serve_cmd
from engine.service import logconfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    url: str
    stdout: Path
    stderr: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=DEADLINE_S)


@contextmanager
def serve(workdir: Path, *flags: str) -> Iterator[Served]:
    """`policyctl serve FLAGS` on memory state, its stdout and stderr in files apart; on
    the way out it is stopped with SIGTERM and must exit 0 (its logs are then complete)."""
    port = free_port()
    policies = copy_policies(workdir / "policies")
    out, err = workdir / "stdout.log", workdir / "stderr.log"
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--policy", str(policies), "--state", "memory://", "--no-watch",
               *flags]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(command, cwd=workdir, stdout=stdout, stderr=stderr, env=env)
    served = Served(f"http://127.0.0.1:{port}", out, err)
    try:
        wait_until_serving(proc, served.url, lambda: err.read_text(errors="replace"))
        yield served
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0, err.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _git_head() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "unknown"


def _samples(families: dict[str, Any], family: str, name: str | None = None) -> list[Sample]:
    return [s for s in families[family].samples if name is None or s.name == name]


# ----------------------------------------------------------------------------- /metrics


def test_a_scrape_has_process_build_and_request_metrics(tmp_path: Path) -> None:
    users = ["scrape-alice", "scrape-bob", "scrape-carol"]
    with serve(tmp_path) as served, served.client() as client:
        assert client.get("/metrics").status_code == 200
        for i, user in enumerate(users):
            sent = client.post("/v1/eval", json={"id": f"req-{i}", "user": user, "prompt": "hi"})
            assert sent.status_code == 200
        denied = client.post("/v1/eval", json={"id": "req-x", "user": "u", "max_cost": 0})
        assert denied.json()["allowed"] is False
        assert client.post("/v1/eval", content=b"{bad").status_code == 400
        assert client.get("/nope/req-secret", params={"user": "mallory"}).status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}

    # the process and platform collectors
    for name in ("process_cpu_seconds", "process_resident_memory_bytes",
                 "process_start_time_seconds", "process_open_fds"):  # fmt: skip
        assert name in families, f"{name} is missing"
    (cpu,) = families["process_cpu_seconds"].samples
    assert cpu.value > 0
    (python,) = families["python_info"].samples
    assert python.labels["major"] == str(sys.version_info.major)

    # the build: this checkout's version and commit
    (build,) = _samples(families, "policyctl_build_info")  # an info is a gauge in this format
    assert build.labels == {"version": engine.__version__, "commit": _git_head()}
    assert build.value == 1

    # decisions: exactly the four sent, by outcome
    decided = _samples(families, "policyctl_decisions", "policyctl_decisions_total")
    by_outcome = {o: sum(s.value for s in decided if s.labels["outcome"] == o)
                  for o in ("allowed", "denied")}  # fmt: skip
    assert by_outcome == {"allowed": 3, "denied": 1}
    (decision_count,) = _samples(
        families, "policyctl_decision_seconds", "policyctl_decision_seconds_count"
    )
    assert decision_count.value == 4

    # requests: one histogram per path template, method and status
    requests = families["policyctl_http_request_duration_seconds"]
    assert requests.type == "histogram"

    def series(path: str, method: str, status: str) -> tuple[list[tuple[str, float]], float]:
        labels = {"path": path, "method": method, "status": status}
        rows = [s for s in requests.samples if {k: s.labels.get(k) for k in labels} == labels]
        buckets = [(s.labels["le"], s.value) for s in rows if s.name.endswith("_bucket")]
        (count,) = (s.value for s in rows if s.name.endswith("_count"))
        return buckets, count

    buckets, count = series("/v1/eval", "POST", "200")
    assert count == 4  # three allowed and one denied: a denial is a 200
    assert buckets[-1] == ("+Inf", 4)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert len(buckets) > 10 and float(buckets[0][0]) < 0.001
    assert series("/v1/eval", "POST", "400")[1] == 1
    assert series("unmatched", "GET", "404")[1] == 1
    # a scrape is counted once answered: the first one is in, this one is not yet
    assert series("/metrics", "GET", "200")[1] == 1
    assert series("/healthz", "GET", "200")[1] >= 1  # the polls that waited for the server

    # bounded labels: no user, request id or raw URL is a label value anywhere
    values = {v for f in families.values() for s in f.samples for v in s.labels.values()}
    for secret in (*users, "mallory", "req-0", "req-x", "/nope/req-secret"):
        assert not any(secret in v for v in values), secret
    assert {s.labels["path"] for s in requests.samples} <= {
        "/v1/eval", "/metrics", "/healthz", "unmatched",
    }  # fmt: skip


def test_openmetrics_when_the_scraper_asks_for_it(tmp_path: Path) -> None:
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    with serve(tmp_path) as served, served.client() as client:
        client.post("/v1/eval", json={"id": "om", "user": "om", "prompt": "hi"})
        response = client.get("/metrics", headers={"Accept": accept})
    assert response.headers["content-type"].startswith("application/openmetrics-text;")
    assert response.text.endswith("# EOF\n")
    families = {f.name: f for f in openmetrics_families(response.text)}
    assert families["policyctl_build"].type == "info"
    assert families["policyctl_decisions"].type == "counter"
    (created,) = [s for s in families["policyctl_decisions"].samples]  # no `_created` series
    assert (created.name, created.value) == ("policyctl_decisions_total", 1)
    assert families["policyctl_http_request_duration_seconds"].type == "histogram"


# ----------------------------------------------------------------------------- logs


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
        assert entry["time"].endswith("Z") and "T" in entry["time"]
    return entries


def test_access_log_as_json_lines_on_stderr(tmp_path: Path) -> None:
    flags = ("--access-log", "--log-format", "json")
    with serve(tmp_path, *flags) as served, served.client() as client:
        sent = [
            client.post("/v1/eval", json={"id": "a1", "user": "al", "prompt": "hi"}),
            client.post("/v1/eval?dry_run=true", content=b"{bad"),
            client.get("/nope"),
            client.post("/v1/eval", json={"id": "a2", "user": "al", "nope": 1}),
        ]
    assert [r.status_code for r in sent] == [200, 400, 404, 422]
    assert served.stdout.read_text() == ""
    entries = _json_lines(served.stderr)
    access = [e for e in entries if e["logger"] == "policyctl.access"]
    # the readiness polls of /healthz come first; then one line per request, in order
    asked = [e for e in access if e["path"] != "/healthz"]
    assert [(e["method"], e["path"], e["status"]) for e in asked] == [
        ("POST", "/v1/eval", 200),
        ("POST", "/v1/eval", 400),
        ("GET", "/nope", 404),
        ("POST", "/v1/eval", 422),
    ]
    for entry in access:
        assert entry["level"] == "info"
        assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] > 0
        host, port = entry["client"].rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        assert (
            f'"{entry["method"]} {entry["path"]} HTTP/1.1" {entry["status"]}' in (entry["message"])
        )
    # uvicorn's lines and the engine's own (`policyctl.*`) come out as JSON too
    assert any(e["logger"] == "uvicorn.error" and "Started server process" in e["message"]
               for e in entries)  # fmt: skip
    assert any(e["logger"] == "policyctl.service" and e["message"].startswith(
        "policyctl serving on http://127.0.0.1:") for e in entries)  # fmt: skip


def test_no_access_log_by_default(tmp_path: Path) -> None:
    with serve(tmp_path) as served, served.client() as client:
        assert client.post("/v1/eval", json={"id": "d1", "user": "d", "prompt": "hi"}).is_success
        assert client.get("/nope").status_code == 404
    stderr = served.stderr.read_text()
    assert "/v1/eval" not in stderr and "/nope" not in stderr and "/healthz" not in stderr
    # the default level is info (uvicorn's): its start and stop lines are there, as text
    assert "INFO:     Started server process" in stderr
    assert "INFO:     policyctl serving on http://127.0.0.1:" in stderr
    assert "Finished server process" in stderr


def test_log_level_warning_keeps_info_out_but_not_the_access_log(tmp_path: Path) -> None:
    flags = ("--log-level", "warning", "--access-log")
    with serve(tmp_path, *flags) as served, served.client() as client:
        assert client.get("/v1/policy").status_code == 200
    lines = served.stderr.read_text().splitlines()
    assert not any("Started server process" in line or "serving on" in line for line in lines)
    policy = [line for line in lines if '"GET /v1/policy HTTP/1.1" 200' in line]
    assert len(policy) == 1 and policy[0].startswith("INFO:     127.0.0.1:")


def test_no_access_line_is_lost_on_sigterm(tmp_path: Path) -> None:
    """The access log is written by a thread from a queue. Its stderr is a pipe nobody
    reads during the burst: the writer blocks once the pipe is full, so lines are still
    queued when SIGTERM comes at once after the last answer, and still when the server has
    stopped (read a second later; at `warning` the server itself writes nothing then):
    every request's line is there after the exit all the same, and the queue dropped
    none."""
    per_client, clients = 150, 4  # 600 JSON lines, far more than a pipe holds (64 KiB)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port",
               str(port), "--policy", str(copy_policies(tmp_path / "policies")), "--state",
               "memory://", "--no-watch", "--access-log", "--log-format", "json",
               "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip

    def burst(n: int) -> list[int]:
        with httpx.Client(base_url=url, timeout=DEADLINE_S) as client:
            body = {"user": f"u{n}", "prompt": "hi"}
            return [client.post("/v1/eval", json=dict(body, id=f"s{n}-{i}")).status_code
                    for i in range(per_client)]  # fmt: skip

    try:
        wait_until_serving(proc, url, lambda: "(stderr is read after the exit)")
        with ThreadPoolExecutor(clients) as pool:
            codes = [c for got in pool.map(burst, range(clients)) for c in got]
        with httpx.Client(base_url=url, timeout=DEADLINE_S) as client:
            metrics = client.get("/metrics").text
        proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the server stops meanwhile; its lines must wait for the reader
        _, err = proc.communicate(timeout=DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    assert codes == [200] * (per_client * clients)
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    (dropped,) = _samples(families, "policyctl_access_log_dropped")
    assert dropped.value == 0
    entries = [json.loads(line) for line in err.decode().splitlines()]
    access = [e for e in entries if e["logger"] == "policyctl.access"]
    evals = [e for e in access if e["path"] == "/v1/eval"]
    assert len(evals) == per_client * clients
    assert all(e["status"] == 200 for e in evals)


def _record(logger: str, n: int) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.INFO, __file__, 1, "line %d", (n,), None)


class _CountingStream(io.StringIO):
    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_the_access_writer_batches_its_writes_and_counts_what_a_full_queue_drops() -> None:
    stream = _CountingStream()
    name = "policyctl.test_access_writer"
    writer = logconfig.start_access_writer(
        logging.Formatter("%(message)s"), logger=name, size=3, stream=stream
    )
    try:
        writer.listener.stop()  # the thread stopped: the queue fills and stays full
        log = logging.getLogger(name)
        log.setLevel(logging.INFO)
        for n in range(5):
            log.info("line %d", n)
        assert writer.handler.dropped == 2  # a full queue drops, counted, and never blocks
        assert writer.listener.queue.qsize() == 3
        assert stream.getvalue() == ""
        for n in range(5, 7):  # queued, as a burst would be, before the thread picks up
            writer.listener.queue.get_nowait()
            writer.handler.handle(_record(name, n))
        writer.listener.start()
        writer.stop()  # the lines queued are written before it returns
    finally:
        logging.getLogger(name).handlers = []
    assert stream.getvalue() == "line 2\nline 5\nline 6\n"
    assert stream.writes == 1  # one write for the batch
    assert writer.handler.dropped == 2


def test_the_command_line_offers_the_levels_and_formats_the_server_knows() -> None:
    assert serve_cmd.LOG_LEVELS == logconfig.LOG_LEVELS
    assert serve_cmd.LOG_FORMATS == logconfig.LOG_FORMATS


def test_a_bad_log_level_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--log-level", "loud"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "argument --log-level: invalid choice: 'loud'" in done.stderr


def test_under_the_access_writer_an_access_line_becomes_a_record_on_its_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the access writer the only way out of `policyctl.access` (as `serve
    --access-log` sets it up), a request's line is queued as it is and its `LogRecord` is
    made on the writer's thread (counted by thread); with another handler on the logger,
    the line is logged as usual, its record made by the caller."""
    from engine.service.telemetry import log_request

    access = logging.getLogger("policyctl.access")
    monkeypatch.setattr(access, "handlers", [])
    monkeypatch.setattr(access, "propagate", False)
    level = access.level
    made_on: list[str] = []
    init = logging.LogRecord.__init__

    def counted(self: logging.LogRecord, *args: Any, **kwargs: Any) -> None:
        made_on.append(threading.current_thread().name)
        init(self, *args, **kwargs)

    stream = _CountingStream()
    scope = {
        "type": "http", "method": "POST", "path": "/v1/eval", "raw_path": b"/v1/eval",
        "http_version": "1.1", "client": ("127.0.0.1", 5000), "headers": [],
    }  # fmt: skip
    access.setLevel(logging.INFO)
    try:
        writer = logconfig.start_access_writer(
            logging.Formatter("%(name)s %(levelname)s %(message)s %(access)s"), stream=stream
        )
        monkeypatch.setattr(logconfig, "_writer", writer)
        monkeypatch.setattr(logging.LogRecord, "__init__", counted)
        for status in (200, 429, 400):
            log_request(scope, status, 0.0015)
        writer.stop()
        assert len(made_on) == 3 and threading.current_thread().name not in made_on
        fields = "'method': 'POST', 'path': '/v1/eval', 'status': {}, 'duration_ms': 1.5"
        assert stream.getvalue().splitlines() == [
            f'policyctl.access INFO 127.0.0.1:5000 - "POST /v1/eval HTTP/1.1" {status} 1.500ms'
            f" {{{fields.format(status)}, 'client': '127.0.0.1:5000'}}"
            for status in (200, 429, 400)
        ]
        made_on.clear()
        other = logging.NullHandler()
        access.addHandler(other)  # another way out: no lane, logged as usual
        log_request(scope, 200, 0.0015)
        assert made_on == [threading.current_thread().name]
    finally:
        access.setLevel(level)


class _HeldStream(io.StringIO):
    """A stream whose first flush waits until released: the writer thread stands still."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    def flush(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        super().flush()


def test_the_access_queue_holds_size_lines_and_counts_the_rest_dropped() -> None:
    """Counted: with the writer thread held, a queue of 5 takes 5 lines and drops (and
    counts) the other 7; released, the 5 are written, in order."""
    from engine.service.logconfig import start_access_writer

    name = "policyctl.test-access-bound"
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    stream = _HeldStream()
    writer = start_access_writer(logging.Formatter("%(message)s"), logger=name, size=5,
                                 stream=stream)  # fmt: skip
    try:
        assert stream.entered.wait(30)  # the thread is in its first (empty) flush
        for n in range(12):
            logger.info("line %d", n)
        assert writer.handler.dropped == 7
    finally:
        stream.release.set()
        writer.stop()
        logger.handlers = []
    assert stream.getvalue().splitlines() == [f"line {n}" for n in range(5)]


# ----------------------------------------------------------------------------- the address


def test_an_address_in_use_is_an_error_before_anything_loads(tmp_path: Path) -> None:
    """The port is bound before the engine starts: one in use is exit 2 with the reason and
    what to do, and no `serving on` line claims otherwise."""
    with serve(tmp_path) as served:
        port = served.url.rsplit(":", 1)[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
        done = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", port, "--state", "memory://",
             "--no-watch"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        f"policyctl: error: cannot listen on 127.0.0.1:{port}: address already in use: another"
        " process listens there (stop it, or pick another --port; 0 picks a free one)\n"
    )


def test_an_address_this_machine_does_not_have_is_an_error(tmp_path: Path) -> None:
    """(192.0.2.1 is a documentation address, on no interface; a name would ask a resolver,
    and nothing here leaves the machine.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--host", "192.0.2.1", "--port", "0",
         "--state", "memory://", "--no-watch"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "policyctl: error: cannot listen on 192.0.2.1:0: cannot assign requested address:"
        " --host is an address or a name of this machine (127.0.0.1, 0.0.0.0, …)\n"
    )


def test_a_state_file_another_process_holds_is_one_error(tmp_path: Path) -> None:
    """A DuckDB --state held by another process: exit 4 naming the file, after one lock
    wait. (It was taken for a busy default analytics file: a warning naming `None`, a
    second wait, then the error.)"""
    import duckdb

    state = tmp_path / "state.duckdb"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    holder = duckdb.connect(str(state))  # this process holds the file's lock
    try:
        done = subprocess.run(
            [sys.executable, "-m", "engine", "serve", "--port", "0", "--state", str(state),
             "--no-watch"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip
    finally:
        holder.close()
    assert done.returncode == 4
    assert done.stderr == (
        f"policyctl: error: state file `{state}` is in use by another process; waited 10 s\n"
    )


def test_port_0_logs_the_port_it_serves_on(tmp_path: Path) -> None:
    """`--port 0` picks a free port; the `serving on` line names it, and it answers there."""
    policies = copy_policies(tmp_path / "policies")
    err = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", "--port", "0", "--policy", str(policies),
             "--state", "memory://", "--no-watch"],
            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + DEADLINE_S
        found = None
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"serving on http://127\.0\.0\.1:(\d+)", err.read_text())
            time.sleep(0.05)
        assert found is not None, err.read_text()
        port = int(found.group(1))
        assert port != 0
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(proc, url, lambda: err.read_text(errors="replace"))
        assert httpx.get(f"{url}/healthz", timeout=DEADLINE_S).json()["status"] == "ok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
