"""The HTTP decision service end to end: a real `policyctl serve` process on a free
127.0.0.1 port, driven by a real HTTP client (httpx), with real file edits for hot reload.

One server serves the module (state in a temporary DuckDB file, policies in a temporary
copy); the shutdown tests start their own. Waits poll a condition up to a deadline.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from engine.language.loader import load_policy

REPO = Path(__file__).resolve().parent.parent
POLICIES = REPO / "policies"
DESIGN = REPO / "examples" / "policies"
DEADLINE_S = 20.0
MIB = 1 << 20
# The served copy refills per-user buckets per day, so "remaining" cannot move by refill
# while a test compares it.
USER_LIMIT_LINE = "limit user      100 per 1m burst 10"
SERVED_USER_LIMIT = "limit user      100 per 1d burst 10"
FLASH = {"provider": "gemini", "model": "gemini-1.5-flash"}


def wait_for(condition: Callable[[], object], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.005)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_policies(directory: Path, *, user_limit: str = SERVED_USER_LIMIT) -> Path:
    """The design's policy set (its catalog's figures are the ones these tests check)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(DESIGN / "models.yaml", directory / "models.yaml")
    text = (DESIGN / "design.policy").read_text(encoding="utf-8")
    assert USER_LIMIT_LINE in text
    (directory / "default.policy").write_text(
        text.replace(USER_LIMIT_LINE, user_limit), encoding="utf-8"
    )
    return directory


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    policy_dir: Path
    state: Path
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=DEADLINE_S)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def wait_until_serving(proc: subprocess.Popen[bytes], url: str, output: Callable[[], str]) -> None:
    """Until `GET /healthz` answers 200; fails with the server's output if it exits first."""
    with httpx.Client(base_url=url, timeout=10) as client:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}:\n{output()}")
            try:
                return client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, "the server to answer /healthz")


@contextmanager
def serving(
    workdir: Path,
    *extra: str,
    state: str | None = None,
    env: dict[str, str] | None = None,
    user_limit: str = SERVED_USER_LIMIT,
) -> Iterator[Server]:
    """`policyctl serve` in a subprocess; stopped (and reaped) on the way out. State is a
    DuckDB file in `workdir` unless `state` says otherwise; `env` adds variables;
    `user_limit` is the policy's per-user limit line."""
    policy_dir = copy_policies(workdir / "policies", user_limit=user_limit)
    state_file = workdir / "state.duckdb"
    log = workdir / "serve.log"
    port = free_port()
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port"]
    command += [str(port), "--policy", str(policy_dir), "--state", state or str(state_file)]
    command += extra
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    server = Server(proc, f"http://127.0.0.1:{port}", policy_dir, state_file, log)
    try:
        wait_until_serving(proc, server.url, server.output)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(tmp_path_factory.mktemp("served")) as server:
        yield server


@pytest.fixture
def client(served: Server) -> Iterator[httpx.Client]:
    with served.client() as client:
        yield client


_serial = itertools.count()


def unique(prefix: str) -> str:
    """A fresh key (user names): a new rate-limit bucket for every test."""
    return f"{prefix}-{next(_serial)}"


def remaining(decision: dict[str, Any], scope: str) -> float:
    return next(r["remaining"] for r in decision["rate_limits"] if r["scope"] == scope)


# --------------------------------------------------------------------------- /v1/eval


def test_healthz_and_policy(client: httpx.Client, served: Server) -> None:
    health = client.get("/healthz")
    assert health.status_code == 200
    policy = client.get("/v1/policy").json()
    assert health.json() == {"status": "ok", "version": policy["version"]}
    assert policy["version"] == load_policy(served.policy_dir).program.version
    assert policy["watching"] is True
    assert [Path(f).name for f in policy["files"]] == ["default.policy"]
    assert Path(policy["catalog"]).name == "models.yaml"


HEADERS_JSON = {"content-type": "application/json"}


def test_eval_happy_path(client: httpx.Client) -> None:
    response = client.post("/v1/eval", json={"id": "r1", "user": unique("u"), "prompt": "hi"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    decision = response.json()
    assert decision["request_id"] == "r1"
    assert decision["allowed"] is True
    assert decision["route"] == "default"
    assert decision["strategy"] == "weighted"
    assert (decision["provider"], decision["model"]) == ("gemini", "gemini-1.5-flash-latest")
    assert decision["reason"]
    assert decision["estimated_cost"] > 0
    assert decision["estimated_latency_ms"] > 0
    assert decision["denied_by"] is None
    assert decision["policy_version"] == client.get("/v1/policy").json()["version"]
    assert {r["scope"] for r in decision["rate_limits"]} == {"global", "user", "provider"}
    assert "trace" not in decision


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?request_id=%ED%A0%80", {}),  # the UTF-8 form of U+D800: percent-decoded as U+FFFD
        ("?request_id=%ED%A0%80%FF", {}),
        ("", {"x-request-id": b"\xed\xa0\x80"}),  # a header's bytes: read as Latin-1
        ("?request_id=na%C3%AFve-%E2%9C%93", {}),  # non-ASCII text: answered as UTF-8
    ],
    ids=["query surrogate bytes", "query bad UTF-8", "header surrogate bytes", "query UTF-8"],
)
def test_a_request_id_from_the_url_or_a_header_always_encodes(
    client: httpx.Client, query: str, headers: dict[str, bytes]
) -> None:
    """The decision is encoded by msgspec, which refuses a lone surrogate: none can come
    from the query or a header, and the answer is JSON whatever bytes the id had."""
    response = client.post(
        f"/v1/eval{query}", content=b'{"prompt": "hi"}', headers={**HEADERS_JSON, **headers}
    )
    assert response.status_code == 200, response.text
    decision = json.loads(response.content.decode("utf-8"))
    assert decision["allowed"] is True
    assert isinstance(decision["request_id"], str) and decision["request_id"]
    if "C3%AF" in query:
        assert decision["request_id"] == "naïve-✓"
        assert "naïve-✓".encode() in response.content


def test_explain_adds_a_trace(client: httpx.Client) -> None:
    body = {"id": "r2", "user": unique("u"), "prompt": "hi"}
    decision = client.post("/v1/eval", params={"explain": "true"}, json=body).json()
    steps = [step["step"] for step in decision["trace"]]
    assert "route" in steps and "choose" in steps
    matched = [s for s in decision["trace"] if s["step"] == "route" and s["matched"]]
    assert [s["route"] for s in matched] == ["default"]


def test_dry_run_consumes_nothing(client: httpx.Client) -> None:
    user = unique("dry")
    body = {"id": "d", "user": user, "prompt": "hi"}

    def user_remaining(**params: str) -> float:
        response = client.post("/v1/eval", params=params, json=body)
        assert response.status_code == 200
        return remaining(response.json(), "user")

    first = user_remaining(dry_run="true")
    assert first == 109  # 100 + burst 10, less this request
    for _ in range(5):
        assert user_remaining(dry_run="true") == first
    assert user_remaining() == first  # the real one consumes what the dry runs showed
    assert user_remaining(dry_run="1") == first - 1
    assert user_remaining(dry_run="yes") == first - 1


@pytest.mark.parametrize(
    ("path", "flag"),
    [("/v1/eval", "dry_run"), ("/v1/eval", "explain"), ("/v1/enforce", "dry_run"),
     ("/v1/eval/batch", "dry_run"), ("/v1/eval", "stream")],
)  # fmt: skip
def test_a_flag_that_is_neither_true_nor_false_is_refused(
    client: httpx.Client, path: str, flag: str
) -> None:
    """`?dry_run=ture` was read as no flag: a real decision that consumed quota. A value
    that is neither true nor false is a 422 naming the parameter, and consumes nothing."""
    user = unique("flag")
    body = {"id": "f", "user": user, "prompt": "hi"}
    sent: Any = [body] if path.endswith("batch") else body
    response = client.post(path, params={flag: "ture"}, json=sent)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid request",
        "detail": [{"field": flag, "message": f"`{flag}` must be true or false (1/0, yes/no),"
                    " got `ture`"}],
    }  # fmt: skip
    left = client.post("/v1/eval", params={"dry_run": "TRUE"}, json=body)
    assert remaining(left.json(), "user") == 109  # nothing consumed: 100 + burst 10, less one
    for value in ("0", "false", "no", ""):
        kept = client.post(path, params={flag: value}, json=sent)
        assert kept.status_code in (200, 429), (value, kept.text)


@pytest.mark.parametrize(
    ("path", "name", "what"),
    [("/v1/eval", "model", "a model name"), ("/v1/enforce", "model", "a model name"),
     ("/v1/eval/batch", "model", "a model name"), ("/v1/eval", "request_id", "an id"),
     ("/v1/enforce", "request_id", "an id")],
)  # fmt: skip
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_model_or_request_id_in_the_query_is_refused(
    client: httpx.Client, path: str, name: str, what: str, value: str
) -> None:
    """`?model=` overrode a wire body's model with "" (and `?request_id=` fell back to the
    header): a 422 naming the parameter, as the CLI's `--model ""` is exit 2; nothing is
    consumed."""
    user = unique("empty")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "user": user}
    sent: Any = [body] if path.endswith("batch") else body
    response = client.post(path, params={name: value}, json=sent)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "invalid request",
        "detail": [{"field": name,
                    "message": f"`{name}` is empty: give {what}, or leave the parameter out"}],
    }  # fmt: skip
    left = client.post("/v1/eval", params={"dry_run": "true"}, json=body)
    assert remaining(left.json(), "user") == 109  # nothing consumed: 100 + burst 10, less one
    named = client.post(path, params={name: "gpt-4o" if name == "model" else "r9"}, json=sent)
    assert named.status_code in (200, 429), named.text


def test_a_denial_is_a_200(client: httpx.Client) -> None:
    body = {"id": "cheap", "user": unique("u"), "prompt": "hi", "max_cost": 0}
    response = client.post("/v1/eval", json=body)
    assert response.status_code == 200
    decision = response.json()
    assert decision["allowed"] is False
    assert decision["provider"] is None and decision["model"] is None
    assert decision["denied_by"]["reason"] == "no_eligible_model"
    assert decision["route"] == "budget"


def test_rate_limited_is_a_200_denial(tmp_path: Path) -> None:
    """`limit ip 50 per 1m burst 5`: 55 of 60 requests fit. On a frozen clock
    (`POLICYCTL_NOW`): under the real clock a token comes back every 1.2 s, so how many
    fitted depended on the machine's load."""
    ip = "203.0.113.7"
    env = {"POLICYCTL_NOW": "2026-11-28T17:46:05Z"}
    with serving(tmp_path, state="memory://", env=env) as server, server.client() as client:
        responses = [
            client.post("/v1/eval", json={"id": f"ip{i}", "ip": ip, "user": unique("u")})
            for i in range(60)
        ]
    assert {r.status_code for r in responses} == {200}
    decisions = [r.json() for r in responses]
    assert [d["allowed"] for d in decisions] == [True] * 55 + [False] * 5
    denied_by = {"scope": "ip", "key": ip, "unit": "requests", "retry_after_ms": 1200}
    assert [d["denied_by"] for d in decisions[55:]] == [denied_by] * 5


# --------------------------------------------------------------------------- bad input


def test_malformed_json_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/eval", content=b"{bad")
    assert response.status_code == 400
    assert response.json() == {
        "error": "malformed JSON: expecting property name enclosed in double quotes",
        "detail": {"line": 1, "column": 2},
    }


def test_invalid_utf8_is_a_400(client: httpx.Client) -> None:
    response = client.post("/v1/eval", content=b'{"id": "\xff\xfe"}')
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not UTF-8", "detail": {"byte": 8}}


def test_a_body_after_a_byte_order_mark_counts_its_bad_byte_from_the_body_start(
    client: httpx.Client,
) -> None:
    response = client.post("/v1/eval", content=b'\xef\xbb\xbf{"id": "\xc3"}')
    assert response.status_code == 400
    assert response.json() == {"error": "request body is not UTF-8", "detail": {"byte": 11}}


def test_a_2mib_body_with_content_length_is_a_413(client: httpx.Client) -> None:
    body = json.dumps({"prompt": "a" * (2 * MIB)}).encode()
    response = client.post("/v1/eval", content=body)
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 1 MiB"}


def test_a_2mib_chunked_body_is_a_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(32):
            yield b"a" * (64 * 1024)
        yield b'"}'

    response = client.post("/v1/eval", content=chunks())
    assert response.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.request.headers
    assert response.status_code == 413
    assert response.json() == {"error": "request body is larger than 1 MiB"}


def test_just_under_1mib_is_accepted(client: httpx.Client) -> None:
    overhead = len(json.dumps({"prompt": ""}))
    body = json.dumps({"prompt": "a" * (MIB - overhead)}).encode()
    assert len(body) == MIB
    assert client.post("/v1/eval", content=body).status_code == 200


def test_unknown_and_mistyped_fields_are_422_naming_them(client: httpx.Client) -> None:
    response = client.post("/v1/eval", json={"id": "x", "usr": "a", "max_tokens": "5"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid request"
    assert {"field": "max_tokens", "message": "input should be a valid integer"} in body["detail"]
    messages = [p["message"] for p in body["detail"]]
    assert "unknown field `usr` (did you mean `user`?)" in messages


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"ip": "999.1.1.1"}, "ip"),
        ({"tags": [1]}, "tags[0]"),
        ({"metadata": {"a": [1]}}, "metadata.a"),
        ({"messages": [{"content": 5}]}, "messages[0].content"),
        ({"requires_vision": "yes"}, "requires_vision"),
        ({"max_cost": -1}, "max_cost"),
    ],
)
def test_field_problems_name_the_field(client: httpx.Client, body: Any, field: str) -> None:
    response = client.post("/v1/eval", json=body)
    assert response.status_code == 422
    assert field in [p["field"] for p in response.json()["detail"]]


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"[1, 2]", "an array"), (b'"hello"', "a string"), (b"null", "null"), (b"7", "a number")],
)
def test_a_non_object_body_is_a_422(client: httpx.Client, body: bytes, kind: str) -> None:
    response = client.post("/v1/eval", content=body)
    assert response.status_code == 422
    assert response.json() == {
        "error": "invalid request",
        "detail": [{"field": "", "message": f"a request is a JSON object, not {kind}"}],
    }


NASTY_BODIES: dict[str, tuple[bytes, dict[str, str]]] = {
    "empty": (b"", {}),
    "whitespace": (b" \n\t ", {}),
    "null": (b"null", {}),
    "nested 10k arrays": (b"[" * 10_000 + b"]" * 10_000, {}),
    "nested 10k objects": (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, {}),
    "nested 10k in a field": (b'{"metadata": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", {}),
    "5000-digit integer": (b"1" * 5000, {}),
    "5000-digit integer field": (b'{"max_tokens": ' + b"9" * 5000 + b"}", {}),
    "huge float": (b'{"max_cost": 1e999999}', {}),
    "huge int field": (b'{"input_tokens": 99999999999999999999999999}', {}),
    "NaN": (b'{"max_cost": NaN}', {}),
    "invalid UTF-8": (b'{"prompt": "\xc3\x28\xa0\xa1"}', {}),
    "UTF-16 BOM": (b"\xff\xfe{\x00}\x00", {}),
    "lone surrogate value": (b'{"id": "\\ud800"}', {}),
    "lone surrogate key": (b'{"\\udfff": 1}', {}),
    "NUL in a string": (b'{"prompt": "a\\u0000b"}', {}),
    "trailing garbage": (b'{"id": "a"} {"id": "b"}', {}),
    "text/plain": (b'{"id": "a"}', {"content-type": "text/plain"}),
    "form": (b"id=a&user=b", {"content-type": "application/x-www-form-urlencoded"}),
}


@pytest.mark.parametrize("path", ["/v1/eval", "/v1/outcomes"])
@pytest.mark.parametrize("case", list(NASTY_BODIES))
def test_nasty_bodies_never_500(client: httpx.Client, path: str, case: str) -> None:
    body, headers = NASTY_BODIES[case]
    response = client.post(path, content=body, headers=headers)
    assert response.status_code in (200, 202, 400, 413, 422), (response.status_code, response.text)
    if response.status_code >= 400:
        assert "error" in response.json()


def raw_request(server: Server, head: bytes, body: bytes) -> bytes:
    """Send bytes no well-behaved client would; return the status line."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=DEADLINE_S) as s:
        s.sendall(head + b"\r\n\r\n" + body)
        s.shutdown(socket.SHUT_WR)
        received = b""
        while b"\r\n" not in received:
            chunk = s.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.split(b"\r\n", 1)[0]


@pytest.mark.parametrize(
    "headers",
    [
        b"Content-Length: not-a-number",
        b"Content-Length: 5",  # shorter than the body
        b"Content-Length: 99999999999999999999999",
        b"Transfer-Encoding: chunked",  # and then a body that is not chunked
    ],
)
def test_broken_framing_is_no_500(served: Server, headers: bytes) -> None:
    head = b"POST /v1/eval HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" + headers
    status = raw_request(served, head, b'{"id": "framing", "prompt": "hi"}')
    # a 4xx, or the HTTP layer hanging up on a request it cannot frame; never a 5xx
    assert status == b"" or re.fullmatch(rb"HTTP/1\.1 [24]\d\d .*", status), status


# --------------------------------------------------------------------------- /v1/outcomes


def outcome(**fields: Any) -> dict[str, Any]:
    return {**FLASH, "latency_ms": 420.5, "success": True, **fields}


def test_outcomes_one_or_a_list(client: httpx.Client) -> None:
    one = client.post("/v1/outcomes", json=outcome(request_id="o1"))
    assert (one.status_code, one.json()) == (202, {"recorded": 1})
    full = outcome(
        request_id="o2",
        input_tokens=12,
        output_tokens=30,
        cost=0.0001,
        timestamp="2024-05-01T12:00:00Z",
        route="default",
        user="alice",
    )
    many = client.post("/v1/outcomes", json=[full, outcome(timestamp=time.time(), success=False)])
    assert (many.status_code, many.json()) == (202, {"recorded": 2})
    alias = client.post("/v1/outcomes", json=outcome(model="gemini-1.5-flash-latest"))
    assert alias.status_code == 202
    empty = client.post("/v1/outcomes", json=[])
    assert (empty.status_code, empty.json()) == (202, {"recorded": 0})


def test_bad_outcomes_are_422_with_index_and_field(client: httpx.Client) -> None:
    batch = [
        outcome(),
        {"provider": "gemini", "latency_ms": -1, "success": 1, "colour": "red"},
        outcome(model="no-such-model"),
        outcome(timestamp="yesterday"),
        "not an object",
    ]
    response = client.post("/v1/outcomes", json=batch)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid outcome"
    problems = {(p["index"], p["field"]) for p in body["detail"]}
    assert problems == {
        (1, "colour"),
        (1, "model"),
        (1, "success"),
        (1, "latency_ms"),
        (2, "model"),
        (3, "timestamp"),
        (4, ""),
    }
    assert 0 not in {p["index"] for p in body["detail"]}


def test_outcomes_report_cached_tokens_within_the_input(client: httpx.Client) -> None:
    good = outcome(input_tokens=1000, cached_tokens=800, output_tokens=5, request_id="c1")
    response = client.post("/v1/outcomes", json=good)
    assert (response.status_code, response.json()) == (202, {"recorded": 1})
    batch = [
        good,
        outcome(input_tokens=10, cached_tokens=11),
        outcome(cached_tokens=5),
        outcome(input_tokens=10, cached_tokens=-1),
        outcome(input_tokens=10, cached_tokens="3"),
    ]
    response = client.post("/v1/outcomes", json=batch)
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "index": 1,
            "field": "cached_tokens",
            "message": "cached_tokens (`11`) must be at most input_tokens (`10`): cached tokens"
            " are part of the input",
        },
        {
            "index": 2,
            "field": "cached_tokens",
            "message": "cached_tokens needs input_tokens (cached tokens are part of the input)",
        },
        {
            "index": 3,
            "field": "cached_tokens",
            "message": "cached_tokens must be a whole number >= 0, got `-1`",
        },
        {
            "index": 4,
            "field": "cached_tokens",
            "message": "cached_tokens must be a whole number >= 0, got `3`",
        },
    ]


@pytest.mark.parametrize(
    "fields",
    [
        {"input_tokens": 2**70},  # a BIGINT column cannot hold it
        {"output_tokens": 2**63},
        {"input_tokens": -3},
        {"output_tokens": -1},
        {"cost": -5.0},
        {"request_id": "\ud800"},  # not encodable as UTF-8: the log cannot store it
        {"user": "\udfff"},
    ],
    ids=[
        "input_tokens=2**70",
        "output_tokens=2**63",
        "input_tokens=-3",
        "output_tokens=-1",
        "cost=-5",
        "request_id=lone surrogate",
        "user=lone surrogate",
    ],
)
def test_outcomes_the_log_cannot_store_are_refused(
    client: httpx.Client, fields: dict[str, Any]
) -> None:
    """Accepted means recorded: a value the outcome log cannot store (or that makes no
    sense) must be refused up front, not answered 202 and then lost — with every other
    outcome in the same write batch — when the writer's insert fails."""
    body = json.dumps(outcome(**fields)).encode()  # ensure_ascii: a lone surrogate as \\udXXX
    response = client.post("/v1/outcomes", content=body)
    assert response.status_code in (400, 422), (response.status_code, response.text)


@pytest.mark.parametrize("ahead_s", [3 * 86_400, 1e300], ids=["3 days", "1e300 s"])
def test_a_far_future_timestamp_is_no_500(client: httpx.Client, ahead_s: float) -> None:
    future = time.time() + ahead_s
    response = client.post("/v1/outcomes", json=[outcome(), outcome(timestamp=future)])
    assert response.status_code in (202, 422), (response.status_code, response.text)


@pytest.mark.parametrize(
    ("stamp", "message"),
    [
        (
            "2099-01-01T00:00:00Z",
            "timestamp is in the future, got `2099-01-01T00:00:00Z` (at most 5 minutes ahead"
            " of the server's clock)",
        ),
        (-86_400, "timestamp is before 1970, got `-86400`"),
        (
            "yesterday",
            "timestamp must be ISO 8601 (2024-05-01T12:00:00Z) or epoch seconds, got `yesterday`",
        ),
    ],
)
def test_a_timestamp_out_of_range_says_which_way(
    client: httpx.Client, stamp: object, message: str
) -> None:
    """A well-formed timestamp days ahead (or before 1970) is refused for what it is, not
    as a value that does not parse."""
    response = client.post("/v1/outcomes", json=[outcome(), outcome(timestamp=stamp)])
    assert response.status_code == 422
    assert response.json()["detail"] == [{"index": 1, "field": "timestamp", "message": message}]


def test_a_future_outcome_does_not_erase_health(tmp_path: Path) -> None:
    """An outcome stamped days ahead must not push the live window forward and expire
    what was measured: it is refused (422), or recorded without erasing the window."""
    dry = {"params": {"dry_run": "true"}, "json": {"id": "h", "prompt": "hi"}}
    with serving(tmp_path, "--no-watch", state="memory://") as server, server.client() as c:
        failures = [outcome(success=False) for _ in range(150)]
        assert c.post("/v1/outcomes", json=failures).status_code == 202
        assert c.post("/v1/eval", **dry).json()["model"] != "gemini-1.5-flash-latest"
        future = outcome(success=True, timestamp=time.time() + 3 * 86_400)
        assert c.post("/v1/outcomes", json=future).status_code in (202, 422)
        # flash failed 150 times in the last minute: it is still below min_success_rate
        assert c.post("/v1/eval", **dry).json()["model"] != "gemini-1.5-flash-latest"


# --------------------------------------------------------------------------- hot reload


def test_a_broken_edit_keeps_serving_the_last_good_policy(
    client: httpx.Client, served: Server
) -> None:
    path = served.policy_dir / "default.policy"
    original = path.read_text(encoding="utf-8")
    before = client.get("/v1/policy").json()
    broken_line = "route broken when request.nope {"
    broken = original + f"\n{broken_line}\n    strategy cost\n}}\n"
    line = broken.splitlines().index(broken_line) + 1
    col = broken_line.index("request.nope") + 1
    try:
        path.write_text(broken, encoding="utf-8")
        status: dict[str, Any] = {}

        def refused() -> bool:
            status.update(client.get("/v1/policy").json())
            return status["reload_errors"] > before["reload_errors"] and bool(status["last_error"])

        wait_for(refused, "the broken edit to be refused")
        assert status["version"] == before["version"]
        location, message = status["last_error"].split(": ", 1)
        file, at_line, at_col = location.rsplit(":", 2)
        assert Path(file).name == "default.policy"
        assert (int(at_line), int(at_col)) == (line, col)
        assert message.startswith("error[E0324]: unknown field `request.nope`")
        # ... and the server's log says so too
        wait_for(
            lambda: f"{location}: error[E0324]: unknown field `request.nope`" in served.output(),
            "the refused reload in the server log",
        )
        assert f"policy reload failed; keeping version {before['version']}" in served.output()

        decision = client.post("/v1/eval", json={"id": "b", "user": unique("u")})
        assert decision.status_code == 200
        assert decision.json()["allowed"] is True
        assert decision.json()["policy_version"] == before["version"]
        metrics = client.get("/metrics").text
        errors = re.search(r"^policyctl_policy_reload_errors_total (\d+)\.0$", metrics, re.M)
        assert errors is not None and int(errors.group(1)) >= 1
    finally:
        path.write_text(original, encoding="utf-8")
    wait_for(lambda: client.get("/v1/policy").json()["last_error"] is None, "the fix to load")
    assert client.get("/v1/policy").json()["version"] == before["version"]


def test_reload_under_concurrent_load(served: Server) -> None:
    """4 client threads fire /v1/eval while the served policy is edited 5 times: every
    response is a 200, and every decision names a version that was live."""
    path = served.policy_dir / "default.policy"
    original = path.read_text(encoding="utf-8")
    with served.client() as control:
        live = {control.get("/v1/policy").json()["version"]}
    stop = threading.Event()
    failures: list[str] = []
    versions: list[str] = []
    counts: list[int] = []

    def fire(n: int) -> None:
        sent = 0
        with served.client() as c:
            try:
                while not stop.is_set():
                    sent += 1
                    body = {"id": f"load-{n}-{sent}", "user": f"load-{n}-{sent % 50}"}
                    response = c.post("/v1/eval", json=body)
                    if response.status_code != 200:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                    else:
                        versions.append(response.json()["policy_version"])
            except Exception as err:  # a transport error is a failure too
                failures.append(repr(err))
        counts.append(sent)

    threads = [threading.Thread(target=fire, args=(n,), daemon=True) for n in range(4)]
    for t in threads:
        t.start()
    try:
        with served.client() as control:
            for edit in range(5):
                text = original.replace("burst 1000", f"burst {1000 + edit + 1}")
                assert text != original
                if edit % 2:
                    tmp = path.with_name(".default.policy.tmp")
                    tmp.write_text(text, encoding="utf-8")
                    os.replace(tmp, path)
                else:
                    path.write_text(text, encoding="utf-8")
                expected = load_policy(served.policy_dir).program.version
                live.add(expected)
                wait_for(
                    lambda v=expected: control.get("/v1/policy").json()["version"] == v,
                    f"edit {edit} to be served",
                )
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=DEADLINE_S)
        path.write_text(original, encoding="utf-8")
    assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert sum(counts) > 0 and len(versions) == sum(counts)
    assert set(versions) <= live
    with served.client() as control:
        version = load_policy(served.policy_dir).program.version
        wait_for(lambda: control.get("/v1/policy").json()["version"] == version, "the restore")


# --------------------------------------------------------------------------- /metrics etc


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    client.post("/v1/eval", json={"id": "m1", "user": unique("u"), "prompt": "hi"})
    client.post("/v1/eval", json={"id": "m2", "user": unique("u"), "max_cost": 0})
    client.post("/v1/eval", content=b"{bad")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    decisions = families["policyctl_decisions"]  # the parser drops a counter's `_total`
    assert decisions.type == "counter"
    assert "# TYPE policyctl_decisions_total counter" in text
    labels = {(s.labels["route"], s.labels["provider"], s.labels["outcome"]): s.value
              for s in decisions.samples if s.name == "policyctl_decisions_total"}  # fmt: skip
    assert {outcome for *_, outcome in labels} <= {"allowed", "denied"}
    assert ("default", "gemini", "allowed") in labels
    assert ("budget", "", "denied") in labels
    seconds = families["policyctl_decision_seconds"]
    assert seconds.type == "histogram"
    buckets = [(s.labels["le"], s.value) for s in seconds.samples if s.name.endswith("_bucket")]
    assert buckets[-1][0] == "+Inf"
    counts = [n for _, n in buckets]
    assert counts == sorted(counts), "histogram buckets are cumulative"
    (count,) = (s.value for s in seconds.samples if s.name == "policyctl_decision_seconds_count")
    assert count == counts[-1]
    assert counts[-1] >= sum(labels.values()) > 0
    (total,) = (s.value for s in seconds.samples if s.name == "policyctl_decision_seconds_sum")
    assert total > 0
    (reloads,) = families["policyctl_policy_reloads"].samples
    assert reloads.value >= 0
    bad = {s.labels["status"]: s.value for s in families["policyctl_bad_requests"].samples}
    assert bad["400"] >= 1
    assert families["policyctl_denials"].samples[0].labels.keys() == {"scope"}
    for line in text.splitlines():  # every sample line is `name{labels} value`
        if line and not line.startswith("#"):
            assert re.fullmatch(r'[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? \S+', line)


def test_openapi_document(client: httpx.Client) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/eval", "/v1/outcomes", "/v1/policy", "/healthz", "/metrics"} <= set(
        document["paths"]
    )
    schemas = document["components"]["schemas"]
    assert "max_tokens" in schemas["Request"]["properties"]
    assert "policy_version" in schemas["Decision"]["properties"]
    outcome_body = document["paths"]["/v1/outcomes"]["post"]["requestBody"]["content"]
    assert {"$ref": "#/components/schemas/Outcome"} in outcome_body["application/json"]["schema"][
        "oneOf"
    ]
    fields = schemas["Outcome"]["properties"]
    assert fields["cached_tokens"]["type"] == "integer"
    assert {"provider", "latency_ms", "input_tokens", "cost", "timestamp"} <= set(fields)
    assert schemas["Outcome"]["required"] == ["provider", "model", "latency_ms", "success"]
    assert set(document["paths"]["/v1/eval"]["post"]["responses"]) >= {"200", "400", "413", "422"}


def test_unknown_paths_and_methods(client: httpx.Client) -> None:
    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"] == "no such path `/nope`"
    assert "/v1/eval" in missing.json()["detail"]["paths"]
    wrong = client.get("/v1/eval")
    assert wrong.status_code == 405
    assert wrong.json()["error"] == "`GET` is not allowed on `/v1/eval`"
    assert wrong.headers["allow"] == "POST"
    assert client.post("/v1/policy").status_code == 405


# --------------------------------------------------------------------------- property test


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    return schemas[ref.rsplit("/", 1)[-1]] if ref else schema


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _typed(
    schema: dict[str, Any], schemas: dict[str, Any], depth: int = 0
) -> st.SearchStrategy[Any]:
    """Values shaped like `schema` (so many requests pass validation), or anything at all."""
    schema = _resolve(schema, schemas)
    if depth > 3:
        return JSON_VALUES
    if "anyOf" in schema:
        return st.one_of([_typed(s, schemas, depth + 1) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "string":
        return st.text(max_size=30) | st.sampled_from(["10.0.0.1", "::1", "alice", "us", "gpt-4"])
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -10))
        return st.integers(min_value=int(low), max_value=10**7) | st.integers()
    if kind == "number":
        return st.floats(min_value=0, max_value=1e6) | st.floats()
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind == "array":
        return st.lists(_typed(schema.get("items", {}), schemas, depth + 1), max_size=3)
    if kind == "object":
        properties = schema.get("properties", {})
        if properties:
            return st.fixed_dictionaries(
                {},
                optional={k: _typed(v, schemas, depth + 1) for k, v in properties.items()},
            )
        extra = schema.get("additionalProperties")
        values = _typed(extra, schemas, depth + 1) if isinstance(extra, dict) else JSON_VALUES
        return st.dictionaries(st.text(max_size=8), values, max_size=3)
    return JSON_VALUES


@pytest.fixture(scope="module")
def shared_client(served: Server) -> Iterator[httpx.Client]:
    with served.client() as c:
        yield c


@pytest.fixture(scope="module")
def request_bodies(served: Server) -> st.SearchStrategy[Any]:
    """Request bodies built from the served OpenAPI document's Request schema."""
    with served.client() as c:
        schemas = c.get("/openapi.json").json()["components"]["schemas"]
    properties = schemas["Request"]["properties"]
    names = sorted(properties)
    well_typed = st.fixed_dictionaries(
        {}, optional={k: _typed(v, schemas) for k, v in properties.items()}
    )
    any_values = st.dictionaries(
        st.sampled_from(names) | st.text(max_size=10), JSON_VALUES, max_size=len(names)
    )
    return well_typed | any_values | JSON_VALUES


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_property_eval_never_500(
    shared_client: httpx.Client, request_bodies: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    body = data.draw(request_bodies, label="body")
    params = data.draw(
        st.fixed_dictionaries(
            {}, optional={"explain": st.just("true"), "dry_run": st.just("true")}
        ),
        label="params",
    )
    response = shared_client.post("/v1/eval", params=params, content=json.dumps(body).encode())
    event(f"status {response.status_code}")  # see: pytest --hypothesis-show-statistics
    assert response.status_code in (200, 400, 413, 422), (response.status_code, response.text)
    payload = response.json()
    if response.status_code == 200:
        assert isinstance(payload["allowed"], bool)
        assert payload["policy_version"]
        assert ("trace" in payload) == ("explain" in params)
        for number in (payload["estimated_cost"], payload["estimated_latency_ms"]):
            assert number is None or math.isfinite(number)
    else:
        assert isinstance(payload["error"], str)


# --------------------------------------------------------------------------- shutdown


def outcome_rows(state: Path) -> dict[str, tuple[Any, ...]]:
    with duckdb.connect(str(state), read_only=True) as con:
        rows = con.execute(
            "SELECT request_id, provider, model, latency_ms, success FROM outcomes"
        ).fetchall()
    return {row[0]: row[1:] for row in rows}


def decision_count(state: Path) -> int:
    with duckdb.connect(str(state), read_only=True) as con:
        return con.execute("SELECT count(*) FROM decisions").fetchone()[0]  # type: ignore[index]


def test_sigterm_finishes_and_flushes(tmp_path: Path) -> None:
    with serving(tmp_path, "--no-watch") as server, server.client() as c:
        for i in range(3):
            assert c.post("/v1/eval", json={"id": f"t{i}", "user": "bob"}).status_code == 200
        batch = [outcome(request_id=f"term-{i}", latency_ms=100 + i) for i in range(5)]
        assert c.post("/v1/outcomes", json=batch).json() == {"recorded": 5}
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=DEADLINE_S)
        assert code == 0, server.output()
    rows = outcome_rows(server.state)
    for i in range(5):
        assert rows.get(f"term-{i}") == ("gemini", "gemini-1.5-flash-latest", 100.0 + i, True)
    assert decision_count(server.state) == 3


def test_sighup_stops_as_sigterm_does(tmp_path: Path) -> None:
    """A closed terminal or a `kill -HUP`: exit 0 with everything written. (SIGHUP's
    default ended the process on the spot, exit 129: acknowledged outcomes not yet written
    were lost; `--flush-interval 60` keeps the writer from saving them before the stop.)"""
    with serving(tmp_path, "--no-watch", "--flush-interval", "60") as server, server.client() as c:
        assert c.post("/v1/eval", json={"id": "h", "user": "bob"}).status_code == 200
        batch = [outcome(request_id=f"hup-{i}", latency_ms=100 + i) for i in range(3)]
        assert c.post("/v1/outcomes", json=batch).json() == {"recorded": 3}
        server.proc.send_signal(signal.SIGHUP)
        code = server.proc.wait(timeout=DEADLINE_S)
        assert code == 0, server.output()
    assert sorted(outcome_rows(server.state)) == ["hup-0", "hup-1", "hup-2"]
    assert decision_count(server.state) == 1


def test_sigterm_answers_the_requests_waiting_for_a_limit_at_once(tmp_path: Path) -> None:
    """Requests held by `wait up to 10m` do not hold the stop for minutes (under Kubernetes,
    past the grace period, a SIGKILL): SIGTERM answers each with the denial its wait running
    out would give (a 429 with Retry-After from /v1/enforce, a denial from /v1/eval), the
    process exits 0, and their rows (`rate_limit_waits`, outcome `shutdown`; the decisions)
    are in the state file."""
    held = 3
    # 10 a user per 10 minutes, one token a minute: drained, waiters' turns are 1, 2, 3 min
    limit = "limit user 10 per 10m wait up to 10m"
    with serving(tmp_path, "--no-watch", user_limit=limit) as server, server.client() as c:
        for i in range(10):
            assert c.post("/v1/eval", json={"id": f"d{i}", "user": "w"}).json()["allowed"]
        answers: dict[str, httpx.Response] = {}

        def ask(path: str, request_id: str) -> None:
            with httpx.Client(base_url=server.url, timeout=120) as own:
                answers[request_id] = own.post(path, json={"id": request_id, "user": "w"})

        paths = {"held-0": "/v1/enforce", "held-1": "/v1/enforce", "held-2": "/v1/eval"}
        threads = [threading.Thread(target=ask, args=(p, i), daemon=True) for i, p in paths.items()]
        for thread in threads:
            thread.start()

        def waiting() -> bool:
            return f"policyctl_waiting_requests {held}.0" in c.get("/metrics").text

        wait_for(waiting, f"{held} requests to wait")
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=60)  # not minutes: the waits are not waited out
        assert code == 0, server.output()
        for thread in threads:
            thread.join(60)
    assert sorted(answers) == sorted(paths), server.output()
    for request_id in ("held-0", "held-1"):
        answer = answers[request_id]
        assert answer.status_code == 429, answer.text
        assert 0 < int(answer.headers["retry-after"]) <= 60
    evaluated = answers["held-2"]
    assert evaluated.status_code == 200 and evaluated.json()["allowed"] is False
    assert evaluated.json()["reason"].startswith("Rate limited by user `w` (requests)")
    with duckdb.connect(str(server.state), read_only=True) as con:
        waits = con.execute(
            "SELECT request_id, bucket_key, outcome FROM rate_limit_waits ORDER BY 1"
        ).fetchall()
        decided = con.execute(
            "SELECT request_id, allowed FROM decisions WHERE request_id LIKE 'held-%' ORDER BY 1"
        ).fetchall()
    assert waits == [(i, "user/requests/w", "shutdown") for i in sorted(paths)]
    assert decided == [(i, False) for i in sorted(paths)]
    assert "answered 3 request(s) waiting for a limit's tokens" in server.output()


def test_a_rejected_batch_records_nothing(tmp_path: Path) -> None:
    """All or nothing: a batch with one bad item changes nothing — neither the live health
    the router uses nor the outcome log — while the same batch without it does both.

    Stopped with SIGINT (which runs the same `engine.close()` path), so that this test
    does not depend on the SIGTERM one."""
    dry = {"params": {"dry_run": "true"}, "json": {"id": "h", "prompt": "hi"}}
    failures = [outcome(success=False, request_id=f"rejected-{i}") for i in range(150)]
    with serving(tmp_path, "--no-watch") as server, server.client() as c:
        assert c.post("/v1/eval", **dry).json()["model"] == "gemini-1.5-flash-latest"

        refused = c.post("/v1/outcomes", json=[*failures, {"provider": "gemini"}])
        assert refused.status_code == 422
        assert {p["index"] for p in refused.json()["detail"]} == {150}
        # 150 failures (>= min_samples 100) would take flash below min_success_rate 80%
        assert c.post("/v1/eval", **dry).json()["model"] == "gemini-1.5-flash-latest"

        accepted = [outcome(success=False, request_id=f"accepted-{i}") for i in range(150)]
        assert c.post("/v1/outcomes", json=accepted).json() == {"recorded": 150}
        assert c.post("/v1/eval", **dry).json()["model"] != "gemini-1.5-flash-latest"

        server.proc.send_signal(signal.SIGINT)
        server.proc.wait(timeout=DEADLINE_S)
    rows = outcome_rows(server.state)
    assert sorted(rows) == sorted(f"accepted-{i}" for i in range(150))


# --------------------------------------------------------------------------- live metrics


def _outcomes(decision: dict[str, Any], n: int, latency_ms: int) -> list[dict[str, Any]]:
    return [
        {"provider": decision["provider"], "model": decision["model"],
         "latency_ms": latency_ms, "success": True}
        for _ in range(n)
    ]  # fmt: skip


@pytest.mark.parametrize("refresh", ["0", None])
def test_metrics_refresh_sets_how_old_a_decisions_measurements_may_be(
    tmp_path: Path, refresh: str | None
) -> None:
    """On a frozen clock a snapshot never ages. The chosen model is measured first (150
    outcomes at 800 ms: past the design policy's `min_samples 100`; a model new to the
    snapshot enters it whole at once), then 300 more at 9 s: with `--metrics-refresh 0`
    the next decision sees them; with the default (250 ms) it keeps routing on the
    snapshot taken before them."""
    env = {"POLICYCTL_NOW": "2026-11-28T17:46:05Z"}
    extra = ("--metrics-refresh", refresh) if refresh is not None else ()
    body = {"user": "lm", "max_latency_ms": 1500, "prompt": "hi"}
    with (
        serving(tmp_path, *extra, state="memory://", env=env) as server,
        server.client() as client,
    ):
        first = client.post("/v1/eval", json={**body, "id": "a"}).json()
        assert first["route"] == "fast" and first["allowed"] is True
        assert client.post("/v1/outcomes", json=_outcomes(first, 150, 800)).status_code == 202
        second = client.post("/v1/eval", json={**body, "id": "b"}).json()
        assert client.post("/v1/outcomes", json=_outcomes(first, 300, 9000)).status_code == 202
        third = client.post("/v1/eval", json={**body, "id": "c"}).json()
    assert (second["provider"], second["model"]) == (first["provider"], first["model"])
    assert 700 < second["estimated_latency_ms"] < 900  # measured, not the prior
    moved = (third["provider"], third["model"]) != (second["provider"], second["model"])
    moved = moved or third["estimated_latency_ms"] != second["estimated_latency_ms"]
    assert moved is (refresh == "0"), (second, third)


def test_metrics_refresh_must_be_zero_or_more(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine", "serve", "--metrics-refresh", "-1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE_S,
    )  # fmt: skip
    assert done.returncode == 2
    assert "`--metrics-refresh` must be 0 or more, got `-1.0`" in done.stderr
