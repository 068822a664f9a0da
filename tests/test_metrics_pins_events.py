"""`/metrics` counts what used to be attributes only: `policyctl_pin_errors_total` (shared
affinity pins whose Redis call failed) and `policyctl_limit_events_dropped_total` (rate-limit
analytics rows the full writer queue had no room for). A real `policyctl serve` on a real
redis-server (stopped mid-test, then started again: the scrape still answers while Redis is
down), a real scrape, parsed by prometheus_client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from _redis import RedisServer
from prometheus_client.parser import text_string_to_metric_families
from test_service import DEADLINE_S, DESIGN, free_port, wait_until_serving

POLICY = """
limit global concurrent 100
limit user concurrent 100

route agents when request.metadata.session_id != null {
    strategy cost
    affinity by request.metadata.session_id for 10m
}

route plain {
    strategy cost
}
"""


def scrape(client: httpx.Client) -> dict[str, tuple[str, float]]:
    """family -> (its HELP text, its one sample's value), for the families without labels."""
    response = client.get("/metrics")
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.text):
        if len(family.samples) == 1 and not family.samples[0].labels:
            found[family.name] = (family.documentation, family.samples[0].value)
    return found


def test_pin_errors_and_dropped_events_are_scraped(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path)
    redis_server.start()
    policies = tmp_path / "policies"
    policies.mkdir()
    shutil.copy(DESIGN / "models.yaml", policies / "models.yaml")
    (policies / "default.policy").write_text(POLICY, encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port),
        "--policy", str(policies), "--state", redis_server.url + "?timeout=0.2",
        "--analytics", str(tmp_path / "logs.duckdb"), "--outcome-queue", "1",
        "--flush-interval", "3600", "--no-watch",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    err = tmp_path / "stderr.log"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr, env=env
        )
    try:
        wait_until_serving(proc, url, lambda: err.read_text(errors="replace"))
        with httpx.Client(base_url=url, timeout=DEADLINE_S) as client:
            before = scrape(client)
            assert before["policyctl_pin_errors"][1] == 0
            assert before["policyctl_limit_events_dropped"][1] == 0
            assert "affinity pin" in before["policyctl_pin_errors"][0]
            assert "writer queue dropped" in before["policyctl_limit_events_dropped"][0]

            decided = client.post("/v1/eval", json={"id": "e1", "user": "u", "prompt": "hi"})
            assert decided.json()["allowed"] is True
            body = decided.json()
            outcome = {"request_id": "e1", "provider": body["provider"], "model": body["model"],
                       "latency_ms": 5.0, "success": True}  # fmt: skip
            assert client.post("/v1/outcomes", json=outcome).status_code == 202
            # two slots given back (global, user): two `rate_limit_inflight` rows for a
            # queue of one, so one is dropped
            assert scrape(client)["policyctl_limit_events_dropped"][1] == 1

            session = {"id": "s1", "prompt": "hi", "metadata": {"session_id": "abc"}}
            assert client.post("/v1/eval", json=session).status_code == 200
            assert scrape(client)["policyctl_pin_errors"][1] == 0  # Redis answered
            redis_server.stop()
            session = {"id": "s2", "prompt": "hi", "metadata": {"session_id": "abc"}}
            assert client.post("/v1/eval", json=session).status_code == 200
            assert scrape(client)["policyctl_pin_errors"][1] == 1
        redis_server.start()  # the same port: the server closes on a live store
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE_S) == 0, err.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        redis_server.stop()
