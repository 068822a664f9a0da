"""The hostile-input corpus (tests/hostile/, described by its manifest.json) run through the
real command line (one subprocess per case) and one real `policyctl serve` on 127.0.0.1;
and bounded property tests that the policy parser, the request reader and the HTTP body
reader raise only the project's own errors (PolicyctlError subclasses).

Every case has its expected exit code or HTTP status and a stable part of the error text; a
traceback, an OverflowError, a 500 or a hang is never right. After the HTTP cases the server
still decides, stops cleanly on SIGTERM (exit 0) and its DuckDB file holds the decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest
from _design import DESIGN_CATALOG, from_design
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request as HttpRequest
from test_service import DEADLINE_S, REPO, Server, serving, wait_for

from engine.cli.eval_cmd import _BadItem, _items
from engine.diagnostics import PolicyError
from engine.errors import PolicyctlError
from engine.language.parser import parse
from engine.routing.request import env_of
from engine.service.body import json_body
from engine.wire.features import DEFAULT_WEIGHTS, DERIVE, Conversation

HOSTILE = Path(__file__).resolve().parent / "hostile"
MANIFEST: dict[str, Any] = json.loads((HOSTILE / "manifest.json").read_text(encoding="utf-8"))
CASES: dict[str, dict[str, Any]] = MANIFEST["cases"]
CLI_CASES = sorted(name for name in CASES if not name.startswith("http/"))
HTTP_CASES = sorted(name for name in CASES if name.startswith("http/"))
ADMIN_TOKEN = "hostile-token"
CLI_TIMEOUT_S = 60.0  # a hang (a FIFO opened for reading) fails the case instead of the run
EXAMPLES = 150  # per property test


def test_every_file_is_a_case_and_every_case_a_file() -> None:
    files = {
        p.relative_to(HOSTILE).as_posix()
        for p in HOSTILE.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert files == set(CASES)


def _expanded(name: str) -> bytes:
    data = (HOSTILE / name).read_bytes()
    for key, (text, times) in CASES[name].get("expand", {}).items():
        data = data.replace(b"{{" + key.encode() + b"}}", text.encode("utf-8") * times)
    return data


@dataclass
class Ran:
    exit: int | None
    stdout: str
    stderr: str
    case_dir: Path
    file: str


def _fill(arg: str, case_dir: Path, policies: Path, request: Path) -> str:
    return (
        arg.replace("{case}", str(case_dir))
        .replace("{policies}", str(policies))
        .replace("{request}", str(request))
    )


def _run_cli_case(name: str, root: Path) -> Ran:
    case = CASES[name]
    kind, base = name.split("/", 1)
    case_dir = root / base.replace(".", "_")
    case_dir.mkdir(parents=True)
    policies = root / "policies"
    request = root / "request.json"
    stdin: bytes | None = None
    file = base
    if kind == "catalogs":
        (case_dir / "models.yaml").write_bytes(_expanded(name))
        (case_dir / "p.policy").write_text('catalog "models.yaml"\n', encoding="utf-8")
        args = ["check", "p.policy"]
    elif kind == "flags":
        args = [_fill(a, case_dir, policies, request) for a in json.loads(_expanded(name))]
    else:
        if kind == "stdin":
            stdin = _expanded(name)
            file = "-"
        else:
            (case_dir / base).write_bytes(_expanded(name))
        if kind == "policies":
            args = ["check", base]
        else:
            args = ["eval", file, "--policy", str(policies), "--state", "memory://"]
    for fifo in case.get("fifo", []):
        (case_dir / fifo).unlink(missing_ok=True)
        os.mkfifo(case_dir / fifo)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "engine", *args, *case.get("args", [])],
            cwd=case_dir,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            timeout=CLI_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:  # a hang is a failure with what it printed
        out = (err.stdout or b"").decode("utf-8", "replace")
        return Ran(None, out, (err.stderr or b"").decode("utf-8", "replace"), case_dir, file)
    return Ran(
        proc.returncode,
        proc.stdout.decode("utf-8", "backslashreplace"),
        proc.stderr.decode("utf-8", "backslashreplace"),
        case_dir,
        file,
    )


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Ran]:
    """Every CLI case run once, four at a time (each is a Python start-up)."""
    root = tmp_path_factory.mktemp("hostile-cli")
    shutil.copytree(REPO / "policies", root / "policies")
    (root / "request.json").write_text('{"id": "r1"}\n', encoding="utf-8")
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = {name: pool.submit(_run_cli_case, name, root) for name in CLI_CASES}
        return {name: run.result() for name, run in runs.items()}


@pytest.mark.parametrize("name", CLI_CASES)
def test_cli_case(name: str, cli_results: dict[str, Ran]) -> None:
    case, ran = CASES[name], cli_results[name]
    shown = f"exit {ran.exit}\n--- stdout\n{ran.stdout[:2000]}\n--- stderr\n{ran.stderr[:2000]}"
    assert ran.exit == case["exit"], shown
    for part in case.get("stderr", []):
        assert part.replace("{case}", str(ran.case_dir)).replace("{file}", ran.file) in ran.stderr
    for part in case.get("stdout", []):
        assert part in ran.stdout, shown
    if "stdout_lines" in case:
        assert len(ran.stdout.split("\n")) - 1 == case["stdout_lines"], shown
    for part in [*case.get("absent", []), "Traceback", "Error:"]:
        assert part not in ran.stdout + ran.stderr, shown
    for path in case.get("missing", []):
        assert not (ran.case_dir / path).exists()


# ---------------------------------------------------------------- one real server


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with serving(
        tmp_path_factory.mktemp("hostile-http"), "--admin-token", ADMIN_TOKEN, "--no-watch"
    ) as server:
        yield server


def _post(server: Server, path: str, body: bytes) -> tuple[int, str]:
    headers = {"content-type": "application/json", "authorization": f"Bearer {ADMIN_TOKEN}"}
    with server.client() as client:
        response = client.post(path, content=body, headers=headers)
    return response.status_code, response.text


@pytest.mark.parametrize("name", HTTP_CASES)
def test_http_case(name: str, hostile_server: Server) -> None:
    case = CASES[name]
    status, text = _post(hostile_server, case.get("path", "/v1/eval"), _expanded(name))
    assert status == case["status"], text[:2000]
    body = json.loads(text)
    if "error" in case:
        assert body["error"] == case["error"]
    if "detail" in case:
        assert case["detail"] in text


def test_client_disconnect_mid_body_is_one_log_line(hostile_server: Server) -> None:
    port = int(hostile_server.url.rsplit(":", 1)[1])
    before = hostile_server.output().count("disconnected before sending the whole body")
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(
            b"POST /v1/eval HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"id": "half'
        )
    wait_for(
        lambda: (
            hostile_server.output().count("disconnected before sending the whole body") > before
        ),
        "the server to log the disconnect",
    )
    assert "Traceback" not in hostile_server.output()


def test_after_the_corpus_the_server_decides_and_keeps_its_state(
    hostile_server: Server,
) -> None:
    """Item 1's loss: after every hostile body, a plain request is decided, SIGTERM exits 0
    with no traceback, and the DuckDB file holds the decisions (none was poisoned)."""
    for name in HTTP_CASES:  # whatever order pytest ran them in, all of them came first
        _post(hostile_server, CASES[name].get("path", "/v1/eval"), _expanded(name))
    status, text = _post(hostile_server, "/v1/eval", b'{"id": "after-the-corpus", "user": "u"}')
    assert status == 200, text
    hostile_server.proc.send_signal(signal.SIGTERM)
    assert hostile_server.proc.wait(timeout=DEADLINE_S) == 0, hostile_server.output()
    assert "Traceback" not in hostile_server.output()
    with duckdb.connect(str(hostile_server.state), read_only=True) as con:
        ids = {row[0] for row in con.execute("SELECT request_id FROM decisions").fetchall()}
    assert "after-the-corpus" in ids


# ---------------------------------------------------------------- property tests

_PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# what a hostile client favours: lone surrogates, separators, ESC, NUL, numbers past a float
_odd = st.sampled_from(["\ud800", "\udc80", "\udfff", "\u2028", "\x85", "\x1b", "\x00", "\r"])
_text = st.text(st.characters(exclude_categories=()) | _odd, max_size=200)
_huge = st.sampled_from([10**400, -(10**400), 2**1024, 10**15 + 1, 10**16, 1e308, -1e308])
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _huge | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)
_scalar = _text | st.integers() | _huge | st.floats() | st.booleans()
_requests = st.fixed_dictionaries(  # mostly well-typed, so the check after pydantic runs too
    {"id": _text},
    optional={
        "user": _text,
        "model": _text,
        "prompt": _text,
        "region": _text,
        "ip": _text,
        "input_tokens": st.integers(min_value=0) | _huge,
        "max_tokens": st.integers(min_value=1) | _huge,
        "max_cost": st.floats(),
        "tags": st.lists(_text, max_size=3),
        "metadata": st.dictionaries(_text, _scalar, max_size=3),
        "messages": st.lists(
            st.fixed_dictionaries({"role": _text | _json, "content": _text | _json}), max_size=2
        ),
        "stream": _scalar,
    },
)


_chat = st.fixed_dictionaries(  # an OpenAI chat body: its reader, not pydantic, checks it
    {
        "model": _text,
        "messages": st.lists(
            st.fixed_dictionaries({"role": _text | _json, "content": _text | _json}),
            min_size=1,
            max_size=3,
        ),
    }
)


@_PROPERTY
@given(
    st.text(
        alphabet=st.sampled_from(list('route when request.user == "a" {}#\n\ud800\x00 $1d%'))
        | st.characters(codec=None),
        max_size=120,
    )
)
def test_parser_raises_only_policyctl_errors(text: str) -> None:
    with contextlib.suppress(PolicyctlError):
        parse(text, "<hostile>")


@_PROPERTY
@given(_requests | _chat | _json)
def test_request_reader_raises_only_policyctl_errors(data: Any) -> None:
    try:
        env = env_of(data)
    except PolicyctlError:
        return
    # what it accepts can be stored; the conversation is a reference to the body (as
    # received or validated), read for prompt features on demand, not a copy of its text
    assert isinstance(env["conversation"], Conversation)
    for name in sorted(DERIVE):  # every prompt feature derives from what was accepted
        env["conversation"].feature(name)
    assert 0.0 <= env["conversation"].complexity(DEFAULT_WEIGHTS) <= 1.0
    stored = {k: v for k, v in env.items() if k not in ("conversation", "wire")}
    json.dumps(stored, ensure_ascii=False).encode("utf-8")
    if "wire" in env:  # a wire body's derivation record, shown by --explain
        derivations = [d.to_dict() for d in env["wire"].derivations()]
        json.dumps(derivations, ensure_ascii=False).encode("utf-8")


_hostile_lines = st.sampled_from(["[" * 100_000, "9" * 4_400, '{"a": ' * 5_000, "\ufeff{}"])


@_PROPERTY
@given(st.lists(_requests | _json | _hostile_lines | _text, max_size=5))
def test_request_file_reader_never_raises(parts: list[Any]) -> None:
    """JSONL with hostile lines: every line is decided or a bad line, never an exception;
    and a line that is one JSON document (U+2028 and U+0085 left raw) stays one line."""
    lines = [p if isinstance(p, str) else json.dumps(p, ensure_ascii=False) for p in parts]
    lines = [line for line in lines if line.strip() and "\n" not in line and "\r" not in line]
    items = list(_items("h.jsonl", "\n".join(lines)))
    assert len(items) == len(lines)
    for _line, item in items:
        if not isinstance(item, _BadItem):
            with contextlib.suppress(PolicyctlError):
                env_of(item)


def _body_request(chunks: list[bytes]) -> HttpRequest:
    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "path": "/v1/eval", "headers": [],
             "query_string": b"", "client": ("127.0.0.1", 1)}  # fmt: skip
    return HttpRequest(scope, receive)


def _halves(data: bytes) -> list[bytes]:
    return [data[: len(data) // 2], data[len(data) // 2 :]]  # a body in two chunks


_documents = _requests | _json
_bodies = (
    st.lists(st.binary(max_size=64), max_size=4)
    | _documents.map(lambda v: _halves(json.dumps(v).encode()))
    | _documents.map(lambda v: _halves(json.dumps(v, ensure_ascii=False).encode("utf-16")))
)


@_PROPERTY
@given(_bodies)
@example([b'{"id": "\\ud800"}'])  # legal JSON, no UTF-8 form
@example(_halves('{"id": "r1"}'.encode("utf-16")))
def test_http_body_reader_raises_only_policyctl_errors(chunks: list[bytes]) -> None:
    try:
        body = asyncio.run(json_body(_body_request(chunks)))
    except PolicyctlError:
        return
    b"".join(chunks).decode("utf-8-sig")  # what it accepts was UTF-8 (not UTF-16, not -32)
    json.dumps(body, ensure_ascii=False).encode("utf-8")  # and can be stored


def test_from_text_with_a_lone_surrogate_is_a_policy_error() -> None:
    text = (REPO / "examples" / "policies" / "design.policy").read_text(encoding="utf-8")
    text = text.replace('catalog "models.yaml"', f'catalog "{DESIGN_CATALOG}"')
    with pytest.raises(PolicyError) as caught:
        from_design("# caf\udce9\n" + text)  # a comment: the parser keeps it
    assert str(caught.value) == (
        "<policy>: error[E0005]: not UTF-8 text: a lone surrogate `\\udce9` at line 1, column 6"
    )


def test_ratelimit_tables_escape_what_a_client_chose(tmp_path: Path) -> None:
    """Item 6: a user and an id with ESC and a newline, denied by a user limit, are printed
    escaped by `ratelimit violations`, `status` and `buckets` (render_table's cells)."""
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    text = (policies / "default.policy").read_text(encoding="utf-8")
    limit = "limit user      100 per 1m burst 10"
    assert limit in text
    (policies / "default.policy").write_text(
        text.replace(limit, "limit user 1 per 1d"), encoding="utf-8"
    )
    user = "eve\x1b[31m\n"
    lines = [json.dumps({"id": f"v{i}\x1b[2J", "user": user}) for i in (1, 2)]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    common = ["--policy", str(policies), "--state", str(tmp_path / "s.duckdb")]

    def policyctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engine", *args, *common],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT_S,
        )

    assert policyctl("eval", "r.jsonl").returncode == 3
    for args in (("ratelimit", "violations"), ("ratelimit", "status", "--user", user),
                 ("ratelimit", "buckets")):  # fmt: skip
        ran = policyctl(*args)
        assert ran.returncode == 0, ran.stderr
        assert "\x1b" not in ran.stdout
        assert "user   eve\\x1b[31m\\n  requests  " in ran.stdout
    assert "  v2\\x1b[2J\n" in policyctl("ratelimit", "violations").stdout
