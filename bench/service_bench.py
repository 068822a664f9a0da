"""The HTTP decision service: decisions per second and latency of POST /v1/eval over
loopback, and how long a policy edit takes to go live (SPEC §8: within 250 ms).

    python bench/service_bench.py             # 20,000 requests, 20 timed reloads
    python bench/service_bench.py --quick     # 3,000 requests, 10 timed reloads
    python bench/service_bench.py --generator python   # even when wrk is installed

It starts `policyctl serve` in a subprocess on a free 127.0.0.1 port (memory state; a
temporary copy of the packaged default policy with its limit amounts multiplied by a
million, so every request runs the four limits but none binds), then:

0. near its stack (A/B): `policyctl serve` against a bare Starlette + uvicorn app (same
   uvicorn, same protocol and loop, no access log) that parses the same JSON body and
   answers a constant body of the same size as a decision, both loaded by `wrk` (8
   connections; installed with apt-get when missing and this runs as root) in interleaved
   pairs of equal duration, the order alternating; the ratio of requests/s and of p99
   latency per pair, median and min–max over ≥ 15 pairs, and each server's CPU time per
   request (its user and system time from /proc/PID/stat over each wrk run, divided by
   the requests: steadier than requests/s when the machine is busy) with their ratio.
   The same for the DuckDB state file, for decision logs on (`--analytics`) and for access
   logs on (`--access-log`, text and JSON lines, to a file), full run only. The bare
   app's own requests/s is the stack's ceiling here (wrk takes its share of the two cores);
1. load: a fixed number of POST /v1/eval requests (chat bodies, each from a distinct user
   and IP; JSON decisions back, as in every row) from a
   second process — `wrk` with a Lua script that stops each thread after its share, when
   `wrk` is installed (`apt-get install wrk`), else this script's own generator (Python
   `http.client`, one keep-alive connection per thread). It reports decisions per second
   and latency percentiles as the client saw them, and the server's own time to decide
   (from `policyctl_decision_seconds` on GET /metrics);
2. hot reload: write the policy file (a changed limit), then poll POST /v1/eval?dry_run
   until a decision names the new version; repeated, median and max reported;
3. reload under load: edits while the generator runs; every response must be a 200.

Only 127.0.0.1 is used. The service has no throughput target in SPEC §8; the figures
are for reference (both processes share this machine's cores).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
RELOAD_TARGET_MS = 250.0
PROMPT = "Summarise the attached meeting notes in two sentences for the weekly report."
HEADERS = {"Content-Type": "application/json"}

WRK_SCRIPT = r"""
local prompt = os.getenv("BENCH_PROMPT")
local run = tonumber(os.getenv("BENCH_RUN") or "0")
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  n = 0
end
function request()
  n = n + 1
  -- a distinct user and IP for every request of every run (a chat body, as SDKs send)
  local k = (run * 8 + tid) * 1048576 + n
  local body = string.format(
    '{"id":"w%d-%d-%d","user":"u%d-%d-%d","ip":"%d.%d.%d.%d",' ..
    '"messages":[{"role":"user","content":"%s"}]}',
    run, tid, n, run, tid, n, 10 + math.floor(k / 16777216) % 200,
    math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256, prompt)
  return wrk.format("POST", "/v1/eval", {["Content-Type"] = "application/json"}, body)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_RESULT {"requests":%d,"duration_s":%.6f,"p50_ms":%.4f,"p90_ms":%.4f,' ..
    '"p99_ms":%.4f,"max_ms":%.4f,"errors":%d,"non_200":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3,
    latency:percentile(90) / 1e3, latency:percentile(99) / 1e3, latency.max / 1e3,
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# --------------------------------------------------------------------------- load generator


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def python_loadgen(port: int, requests: int, threads: int, tag: str) -> dict[str, Any]:
    """Runs in the second process: `threads` keep-alive connections, `requests` in all."""
    per_thread = [requests // threads + (i < requests % threads) for i in range(threads)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    statuses: list[dict[int, int]] = [{} for _ in range(threads)]
    errors = [0] * threads
    start_gate = threading.Barrier(threads + 1)

    def worker(t: int) -> None:
        bodies = [
            json.dumps(
                {
                    "id": f"{tag}{t}-{i}",
                    "user": f"u{tag}{t}-{i}",
                    "ip": f"10.{t % 256}.{(i >> 8) & 255}.{i & 255}",
                    "messages": [{"role": "user", "content": PROMPT}],
                }
            ).encode()
            for i in range(per_thread[t])
        ]
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start_gate.wait()
        mine, counts = latencies[t], statuses[t]
        for body in bodies:
            began = time.perf_counter()
            try:
                conn.request("POST", "/v1/eval", body, HEADERS)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors[t] += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
                continue
            mine.append(time.perf_counter() - began)
            counts[response.status] = counts.get(response.status, 0) + 1
        conn.close()

    workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    start_gate.wait()
    began = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    merged = sorted(x * 1000 for xs in latencies for x in xs)
    status_counts: dict[str, int] = {}
    for counts in statuses:
        for status, n in counts.items():
            status_counts[str(status)] = status_counts.get(str(status), 0) + n
    return {
        "requests": len(merged),
        "duration_s": elapsed,
        "p50_ms": percentile(merged, 50),
        "p90_ms": percentile(merged, 90),
        "p99_ms": percentile(merged, 99),
        "max_ms": merged[-1] if merged else float("nan"),
        "errors": sum(errors),
        "non_200": sum(n for s, n in status_counts.items() if s != "200"),
    }


def run_generator(
    generator: str, port: int, requests: int, threads: int, tag: str, rate: float = 0.0
) -> dict[str, Any]:
    """Run the load from a second process and parse its one-line result.

    The Python generator sends exactly `requests`. wrk runs for a duration (it cannot stop
    at a count): `requests / rate` seconds at the `rate` a warm-up measured, 1 to 60 s, so
    the count is close to `requests`; with no rate yet, one second."""
    if generator == "wrk":
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(WRK_SCRIPT)
            script = f.name
        try:
            connections = threads * 2
            env = wrk_env()
            seconds = min(60, max(1, round(requests / rate))) if rate > 0 else 1
            command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
            command += ["--timeout", "10s", "-s", script, f"http://{HOST}:{port}/v1/eval"]
            done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        finally:
            os.unlink(script)
    else:
        command = [sys.executable, __file__, "--_loadgen", str(port), str(requests)]
        command += [str(threads), tag]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["generator"] = generator
            return result
    raise RuntimeError(f"the {generator} load generator failed:\n{done.stdout}\n{done.stderr}")


# --------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def bench_policies(directory: Path) -> Path:
    """The packaged default policy set, limit amounts ×1,000,000 (checked, never binding)."""
    from engine.resources import default_policy_dir

    shutil.copytree(default_policy_dir(), directory)
    path = directory / "default.policy"
    text = path.read_text(encoding="utf-8")
    raised, n = re.subn(
        r"^(limit\s+\w+\s+)(\d+)(\s+per)",
        lambda m: f"{m.group(1)}{int(m.group(2)) * 1_000_000}{m.group(3)}",
        text,
        flags=re.M,
    )
    if n == 0:
        raise SystemExit(f"{path}: no `limit` lines to raise")
    path.write_text(raised, encoding="utf-8")
    return path


class Client:
    """One keep-alive connection from this process (for control calls and reload polls)."""

    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body).encode()
        self.conn.request(method, path, payload, HEADERS if payload else {})
        response = self.conn.getresponse()
        return response.status, response.read()

    def json(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {data[:200]!r}")
        return json.loads(data)

    def close(self) -> None:
        self.conn.close()


def start_server(
    policy_dir: Path, port: int, extra: list[str] | None = None, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """`policyctl serve` on `port`; its stderr to `log` when given (an access log fills an
    unread pipe and stalls the server), else to a pipe read on failure."""
    command = [sys.executable, "-m", "engine", "serve", "--host", HOST, "--port", str(port)]
    command += ["--policy", str(policy_dir)]
    command += extra if extra and "--state" in extra else ["--state", "memory://", *(extra or [])]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    if log is not None:
        with log.open("ab") as sink:
            proc = subprocess.Popen(command, env=env, cwd=ROOT, stderr=sink)
    else:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stderr=subprocess.PIPE)
    wait_healthy(proc, port)
    return proc


def wait_healthy(proc: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = proc.stderr.read().decode() if proc.stderr is not None else "(see its log)"
            raise RuntimeError(f"the server exited: {said}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                pass
            client = Client(port)
            client.json("GET", "/healthz")
            client.close()
            return
        except (OSError, RuntimeError, http.client.HTTPException):
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("the server did not answer /healthz within 30 s")


def server_decide_us(port: int) -> tuple[float, int]:
    client = Client(port)
    status, data = client.call("GET", "/metrics")
    client.close()
    text = data.decode()
    total = re.search(r"^policyctl_decision_seconds_sum (\S+)$", text, re.M)
    count = re.search(r"^policyctl_decision_seconds_count (\d+)\.0$", text, re.M)
    if status != 200 or total is None or count is None or int(count.group(1)) == 0:
        return float("nan"), 0
    return float(total.group(1)) / int(count.group(1)) * 1e6, int(count.group(1))


# --------------------------------------------------------------------------- near its stack


def bare_app_main(port: int, size: int) -> None:
    """The peer: Starlette + uvicorn as `policyctl serve` runs them (h11, named rather than
    left to uvicorn's `auto`, which would take httptools where it is installed and ours
    does not; the loop uvicorn's `auto` picks, as ours: uvloop where it is installed; no
    access log, as ours without --access-log; logs at warning), one route that parses the
    JSON body and answers a constant body of `size` bytes. Not the same: ours gathers a
    response's head and body into one socket write (`engine.service.server`), sends a
    decision's answer on the loop's next turn (`engine.service.fastpath`), and sets the
    GIL's switch interval; the peer is stock."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    body = b'{"pad":"' + b"x" * max(0, size - 10) + b'"}'

    async def evaluate(request: Request) -> Response:
        data = json.loads(await request.body())
        if not isinstance(data, dict):
            return Response(b'{"error":"not an object"}', status_code=422)
        return Response(body, media_type="application/json")

    async def healthz(request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app = Starlette(
        routes=[Route("/v1/eval", evaluate, methods=["POST"]), Route("/healthz", healthz)]
    )
    uvicorn.run(
        app, host=HOST, port=port, log_level="warning", lifespan="off", http="h11",
        loop="auto", access_log=False,
    )  # fmt: skip


def start_bare(port: int, size: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, __file__, "--_bare", str(port), str(size)]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)
    wait_healthy(proc, port)
    return proc


def ensure_wrk() -> bool:
    """wrk on PATH, installed with apt-get when missing and this runs as root."""
    if shutil.which("wrk"):
        return True
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr, flush=True)
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], capture_output=True, check=False)
    return shutil.which("wrk") is not None


_wrk_runs = itertools.count(1)


def wrk_env() -> dict[str, str]:
    """The environment of one wrk run: the prompt, and the run's number, which keeps every
    run's users and IPs apart from the others'."""
    return {**os.environ, "BENCH_PROMPT": PROMPT, "BENCH_RUN": str(next(_wrk_runs))}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """The process's CPU time so far, user and system, all its threads (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
        fields = f.read().rsplit(")", 1)[1].split()  # after `(comm)`: fields 3 onwards
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14, 15)


def wrk_for(
    port: int, seconds: float, connections: int = 8, pid: int | None = None
) -> dict[str, Any]:
    """wrk for `seconds` against POST /v1/eval (the script's bodies), one result; with the
    server's `pid`, its CPU time per request over the run (`cpu_us`: the server's user and
    system time, from /proc/PID/stat before and after, over the requests wrk completed)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
        script = f.name
    try:
        command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s"]
        command += ["--timeout", "10s", "-s", script, f"http://{HOST}:{port}/v1/eval"]
        env = wrk_env()
        cpu_before = cpu_seconds(pid) if pid is not None else 0.0
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        cpu = cpu_seconds(pid) - cpu_before if pid is not None else float("nan")
    finally:
        os.unlink(script)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
            result["rate"] = result["requests"] / result["duration_s"]
            result["cpu_us"] = cpu / max(result["requests"], 1) * 1e6
            return result
    raise RuntimeError(f"wrk failed:\n{done.stdout}\n{done.stderr}")


def decision_size(port: int) -> int:
    client = Client(port)
    body = {
        "id": "w1-1-1",
        "user": "u1-1-1",
        "ip": "10.0.16.1",
        "messages": [{"role": "user", "content": PROMPT}],
    }
    status, data = client.call("POST", "/v1/eval?dry_run=true", body)
    client.close()
    if status != 200:
        raise RuntimeError(f"POST /v1/eval: {status} {data[:200]!r}")
    return len(data)


def ab_pairs(
    ours: tuple[int, int], bare: tuple[int, int], pairs: int, seconds: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """`pairs` interleaved wrk runs on each side (port, server pid), the order alternating
    pair by pair."""
    a: list[dict[str, Any]] = []
    b: list[dict[str, Any]] = []
    for i in range(pairs):
        if i % 2 == 0:
            a.append(wrk_for(ours[0], seconds, pid=ours[1]))
            b.append(wrk_for(bare[0], seconds, pid=bare[1]))
        else:
            b.append(wrk_for(bare[0], seconds, pid=bare[1]))
            a.append(wrk_for(ours[0], seconds, pid=ours[1]))
    return a, b


def spread(values: list[float], fmt: str) -> str:
    return (
        f"{format(statistics.median(values), fmt)}"
        f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    )


def report_ab(title: str, a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[str]:
    rate = [x["rate"] / y["rate"] for x, y in zip(a, b, strict=True)]
    p99 = [x["p99_ms"] / y["p99_ms"] for x, y in zip(a, b, strict=True)]
    cpu = [y["cpu_us"] / x["cpu_us"] for x, y in zip(a, b, strict=True)]
    bad = sum(x["non_200"] + x["errors"] for x in a)
    rate_ok = "met" if statistics.median(rate) >= 0.8 else "NOT met"
    p99_ok = "met" if statistics.median(p99) <= 1.5 else "NOT met"
    return [
        title,
        f"  policyctl requests/s  {spread([x['rate'] for x in a], ',.0f')}",
        f"  bare app requests/s   {spread([y['rate'] for y in b], ',.0f')}",
        f"  ratio requests/s      {spread(rate, '.2f')}×  (target ≥ 0.8×: {rate_ok})",
        f"  policyctl p99         {spread([x['p99_ms'] for x in a], '.2f')} ms",
        f"  bare app p99          {spread([y['p99_ms'] for y in b], '.2f')} ms",
        f"  ratio p99             {spread(p99, '.2f')}×  (target ≤ 1.5×: {p99_ok})",
        f"  policyctl server CPU  {spread([x['cpu_us'] for x in a], '.0f')} µs per request",
        f"  bare app server CPU   {spread([y['cpu_us'] for y in b], '.0f')} µs per request",
        f"  ratio CPU bare/ours   {spread(cpu, '.2f')}×  (steadier under load than requests/s;"
        f" beside the requests/s ratio {statistics.median(rate):.2f}×)",
        f"  non-200 / errors      {bad}",
    ]


def near_its_stack(
    policy_dir: Path,
    port: int,
    pairs: int,
    seconds: float,
    others: bool = True,
    pid: int | None = None,
) -> list[str]:
    """The A/B rows: memory state with logs off (against the bare app), then (`others`) the
    DuckDB state file and decision logs on (--analytics), each against the bare app again,
    every row over `pairs` pairs."""
    size = decision_size(port)
    bare_port = free_port()
    bare = start_bare(bare_port, size)
    lines = [
        f"near its stack: wrk, 2 threads, 8 keep-alive connections, {seconds:g} s runs,"
        f" interleaved pairs (order alternating); bare Starlette + uvicorn app parsing the"
        f" same body and answering {size:,} bytes (a decision's size); median (min–max)"
    ]
    try:
        wrk_for(bare_port, 1)  # warm both
        wrk_for(port, 1)
        a, b = ab_pairs((port, pid), (bare_port, bare.pid), pairs, seconds)
        lines += report_ab(f"memory state, logs off: {pairs} pairs", a, b)
        ceiling = statistics.median(r["rate"] for r in b)
        lines.append(
            f"  the stack's ceiling here: the bare app at {ceiling:,.0f} requests/s"
            " (median), wrk on the same 2 cores"
        )
        if not others:
            lines.append(
                "DuckDB state file, decision logs on, access logs on: not run in --quick"
                " (full run only)"
            )
            return lines
        few = pairs
        with tempfile.TemporaryDirectory(prefix="policyctl-bench-state-") as tmp:
            for label, extra, log in (
                ("DuckDB state file", ["--state", str(Path(tmp) / "state.duckdb")], None),
                ("memory state, decision logs on (--analytics)",
                 ["--analytics", str(Path(tmp) / "analytics.duckdb")], None),
                ("memory state, access log on (--access-log, to a file)",
                 ["--access-log"], Path(tmp) / "access.log"),
                ("memory state, access log on, JSON lines",
                 ["--access-log", "--log-format", "json"], Path(tmp) / "access.jsonl"),
            ):  # fmt: skip
                other = free_port()
                proc = start_server(policy_dir, other, extra, log)
                try:
                    wrk_for(other, 1)
                    a, b = ab_pairs((other, proc.pid), (bare_port, bare.pid), few, seconds)
                    lines += report_ab(f"{label}: {few} pairs", a, b)
                finally:
                    stop(proc)
    finally:
        stop(bare)
    return lines


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------- hot reload


def time_reloads(port: int, policy_file: Path, edits: int) -> list[float]:
    """Milliseconds from the end of a file write to the first decision of the new version."""
    client = Client(port)
    original = policy_file.read_text(encoding="utf-8")
    probe = {"id": "reload-probe", "user": "probe", "prompt": "hi"}
    times = []
    try:
        for i in range(edits):
            before = client.json("POST", "/v1/eval?dry_run=true", probe)["policy_version"]
            text = original.replace("burst 1000\n", f"burst {1001 + i}\n", 1)
            assert text != original, "the global limit's `burst 1000` is not in the policy"
            with open(policy_file, "w", encoding="utf-8") as f:
                f.write(text)
            written = time.perf_counter()
            while True:
                decision = client.json("POST", "/v1/eval?dry_run=true", probe)
                if decision["policy_version"] != before:
                    times.append((time.perf_counter() - written) * 1000)
                    break
                if time.perf_counter() - written > 10:
                    raise RuntimeError(f"edit {i} was not live after 10 s")
    finally:
        policy_file.write_text(original, encoding="utf-8")
        client.close()
    return times


def reload_under_load(
    generator: str, port: int, policy_file: Path, requests: int, threads: int, rate: float
) -> tuple[dict[str, Any], int]:
    """Edit the policy while the generator runs, each edit once the previous one is live
    (so every edit is a reload that lands under load, none coalesced or superseded: a new
    edit every 50–150 ms kept some runs from landing any); count the reloads."""
    original = policy_file.read_text(encoding="utf-8")
    result: dict[str, Any] = {}
    failure: list[BaseException] = []

    def load() -> None:
        try:
            result.update(run_generator(generator, port, requests, threads, "r", rate))
        except BaseException as err:  # reported by the caller
            failure.append(err)

    control = Client(port)
    before = control.json("GET", "/v1/policy")["reloads"]
    runner = threading.Thread(target=load)
    runner.start()
    i = 0
    try:
        while runner.is_alive():
            i += 1
            text = original.replace("burst 1000\n", f"burst {2000 + i}\n", 1)
            assert text != original, "the global limit's `burst 1000` is not in the policy"
            live = control.json("GET", "/v1/policy")["reloads"]
            policy_file.write_text(text, encoding="utf-8")
            while runner.is_alive() and live == control.json("GET", "/v1/policy")["reloads"]:
                runner.join(timeout=0.01)  # until this edit is live (or the load is over)
    finally:
        runner.join()
        policy_file.write_text(original, encoding="utf-8")
    deadline = time.monotonic() + 5
    reloads = control.json("GET", "/v1/policy")["reloads"] - before
    while time.monotonic() < deadline and control.json("GET", "/v1/policy")["last_error"]:
        time.sleep(0.01)
    control.close()
    if failure:
        raise failure[0]
    return result, reloads


# --------------------------------------------------------------------------- main


def report_load(title: str, r: dict[str, Any]) -> list[str]:
    rate = r["requests"] / r["duration_s"] if r["duration_s"] else float("nan")
    return [
        title,
        f"  decisions/s       {rate:10,.0f}   (no SPEC target; for reference)",
        f"  latency p50       {r['p50_ms']:10.2f} ms",
        f"  latency p90       {r['p90_ms']:10.2f} ms",
        f"  latency p99       {r['p99_ms']:10.2f} ms",
        f"  latency max       {r['max_ms']:10.2f} ms",
        f"  non-200 / errors  {r['non_200']:10d} / {r['errors']}",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3,000 requests, 10 reloads")
    parser.add_argument("--requests", type=int, help="load requests (default 20,000)")
    parser.add_argument("--threads", type=int, default=4, help="client threads (4)")
    parser.add_argument("--reloads", type=int, help="timed reloads (default 20)")
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator: wrk when installed (auto), or python",
    )
    parser.add_argument("--pairs", type=int, help="A/B pairs against the bare app (15)")
    parser.add_argument("--seconds", type=float, help="seconds per wrk run in a pair (2)")
    parser.add_argument("--_loadgen", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--_bare", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._bare:
        bare_app_main(*args._bare)
        return 0

    if args._loadgen:  # the second process
        port, requests, threads, tag = args._loadgen
        result = python_loadgen(int(port), int(requests), int(threads), tag)
        print("BENCH_RESULT " + json.dumps(result), flush=True)
        return 0

    requests = args.requests or (3_000 if args.quick else 20_000)
    reloads = args.reloads or (10 if args.quick else 20)
    generator = args.generator
    have_wrk = generator != "python" and ensure_wrk()
    pairs = args.pairs or 15  # --quick: 1 s runs, and the state and logs rows left out
    seconds = args.seconds or (1.0 if args.quick else 2.0)
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "python"
    elif generator == "wrk" and not shutil.which("wrk"):
        parser.error("wrk is not installed (apt-get install wrk), use --generator python")
    warmup = min(1_000, requests // 5)

    failed = False
    with tempfile.TemporaryDirectory(prefix="policyctl-bench-") as tmp:
        policy_dir = Path(tmp) / "policies"
        policy_file = bench_policies(policy_dir)
        port = free_port()
        proc = start_server(policy_dir, port)
        try:
            lines = [
                f"policyctl serve on {HOST}:{port}: memory state; packaged default policy, "
                "limit amounts x1,000,000 (4 limits checked, none binds)",
            ]
            if have_wrk:
                lines += near_its_stack(
                    policy_dir, port, pairs, seconds, others=not args.quick, pid=proc.pid
                )
            else:
                lines.append("near its stack: not measured (wrk is not installed)")
            print("\n".join(lines), flush=True)
            lines = []
            warm = run_generator(generator, port, warmup, args.threads, "warm")
            rate = warm["requests"] / warm["duration_s"]
            decided_before = server_decide_us(port)[1]
            load = run_generator(generator, port, requests, args.threads, "b", rate)
            decide_us, decided = server_decide_us(port)
            how = (
                f"wrk, {args.threads} threads, {args.threads * 2} keep-alive connections"
                if generator == "wrk"
                else f"python http.client, {args.threads} threads, one keep-alive connection each"
            )
            lines += report_load(
                f"load: {load['requests']:,} POST /v1/eval from a second process ({how}),"
                f" after {warm['requests']:,} warm-up requests",
                load,
            )
            lines.append(
                f"  server decide     {decide_us:10.1f} µs mean inside the service"
                f" ({decided - decided_before:,} decisions, policyctl_decision_seconds)"
            )
            failed |= load["non_200"] > 0 or load["errors"] > 0

            times = time_reloads(port, policy_file, reloads)
            worst = max(times)
            verdict = "met" if worst <= RELOAD_TARGET_MS else "NOT met"
            lines += [
                f"hot reload: file write -> first POST /v1/eval answered by the new version"
                f" ({len(times)} edits, watcher debounce 50 ms)",
                f"  median {statistics.median(times):.0f} ms, min {min(times):.0f} ms,"
                f" max {worst:.0f} ms (target ≤ {RELOAD_TARGET_MS:.0f} ms: {verdict})",
            ]

            during, swapped = reload_under_load(
                generator, port, policy_file, max(requests // 4, 1_000), args.threads, rate
            )
            bad = during["non_200"] + during["errors"]
            verdict = "met" if bad == 0 and swapped > 0 else "NOT met"
            lines.append(
                f"reload under load: {swapped} reloads during {during['requests']:,} requests:"
                f" {bad} failed (target 0 failed, at least one reload: {verdict})"
            )
            failed |= bad > 0 or swapped == 0
            print("\n".join(lines), flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
