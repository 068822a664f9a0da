"""`POST /v1/enforce` (429, Retry-After and the RateLimit fields) and `POST /v1/eval/batch`,
against a real `policyctl serve` on 127.0.0.1 with a frozen clock (`POLICYCTL_NOW`), so
every `t` and `Retry-After` is exact.

The RateLimit fields are read with the small RFC 9651 (structured fields) list parser
below, checked first against draft-ietf-httpapi-ratelimit-headers-10's own examples.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_service import DEADLINE_S, free_port, wait_until_serving

from engine.service.enforce import MAX_BATCH_ITEMS, QuotaPolicy, ratelimit_fields

NOW = "2026-11-28T17:46:05Z"
POLICY = """\
limit user   2 per 1m
limit global 100 per 1m
limit team = request.metadata.team 10 per 1m
limit team = request.metadata.team 500 per 1h
limit team = request.metadata.team tokens 100000 per 1h
limit team = request.metadata.team spend $5 per 1d
deny "blocked" when request.user == "mallory"
"""

# ----------------------------------------------------------------- an RFC 9651 list parser

Params = dict[str, Any]
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?\d+(\.\d+)?")


class _Reader:
    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def peek(self) -> str:
        return self.text[self.at : self.at + 1]

    def take(self, pattern: re.Pattern[str]) -> str:
        found = pattern.match(self.text, self.at)
        if found is None:
            raise ValueError(f"unexpected {self.text[self.at :]!r}")
        self.at = found.end()
        return found.group()

    def spaces(self, chars: str = " ") -> None:
        while self.peek() and self.peek() in chars:
            self.at += 1


def _bare_item(r: _Reader) -> Any:
    char = r.peek()
    if char == '"':  # §4.2.5: a string
        r.at += 1
        out = []
        while True:
            char = r.peek()
            if not char:
                raise ValueError("unterminated string")
            r.at += 1
            if char == "\\":
                escaped = r.peek()
                if escaped not in ('"', "\\"):
                    raise ValueError("bad escape")
                out.append(escaped)
                r.at += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise ValueError("a string holds printable ASCII only")
            else:
                out.append(char)
    if char == ":":  # §4.2.7: a byte sequence
        end = r.text.index(":", r.at + 1)
        data = r.text[r.at + 1 : end]
        r.at = end + 1
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=False)
    if char == "?":  # §4.2.8: a boolean
        value = r.text[r.at + 1 : r.at + 2]
        r.at += 2
        if value not in ("0", "1"):
            raise ValueError("bad boolean")
        return value == "1"
    if char == "-" or char.isdigit():  # §4.2.4: an integer (15 digits) or a decimal
        text = r.take(_NUMBER)
        if "." in text:
            return float(text)
        if len(text.lstrip("-")) > 15:
            raise ValueError("integer out of range")
        return int(text)
    return ("token", r.take(_TOKEN))  # §4.2.6


def _parameters(r: _Reader) -> Params:
    params: Params = {}
    while r.peek() == ";":
        r.at += 1
        r.spaces()
        key = r.take(_KEY)
        if r.peek() == "=":
            r.at += 1
            params[key] = _bare_item(r)
        else:
            params[key] = True
    return params


def parse_list(text: str) -> list[tuple[Any, Params]]:
    """RFC 9651 §4.2.1: a List of Items with Parameters (inner lists are not needed here)."""
    r = _Reader(text)
    r.spaces()
    members = []
    while r.peek():
        members.append((_bare_item(r), _parameters(r)))
        r.spaces(" \t")
        if not r.peek():
            break
        if r.peek() != ",":
            raise ValueError(f"expected `,` at {r.text[r.at :]!r}")
        r.at += 1
        r.spaces(" \t")
        if not r.peek():
            raise ValueError("trailing comma")
    return members


def by_name(field: str) -> dict[str, Params]:
    items = parse_list(field)
    assert all(isinstance(name, str) for name, _ in items), field  # §3, §4: sf-strings
    named = {name: params for name, params in items}
    assert len(named) == len(items), f"a policy named twice: {field}"
    return named


# Examples quoted from draft-ietf-httpapi-ratelimit-headers-10 (27 September 2025).
DRAFT_POLICY_EXAMPLES = [
    (  # §3
        '"burst";q=100;w=60,"daily";q=1000;w=86400',
        [("burst", {"q": 100, "w": 60}), ("daily", {"q": 1000, "w": 86400})],
    ),
    ('"default";q=100;w=10', [("default", {"q": 100, "w": 10})]),  # §3.2
    (  # §3.2
        '"permin";q=50;w=60,"perhr";q=1000;w=3600',
        [("permin", {"q": 50, "w": 60}), ("perhr", {"q": 1000, "w": 3600})],
    ),
    (  # §3.2
        '"peruser";q=100;w=60;pk=:cHsdsRa894==:',
        [("peruser", {"q": 100, "w": 60, "pk": base64.b64decode("cHsdsRa894==")})],
    ),
    (  # §3.2
        '"peruser";q=65535;qu="content-bytes";w=10;pk=:sdfjLJUOUH==:',
        [
            (
                "peruser",
                {
                    "q": 65535,
                    "qu": "content-bytes",
                    "w": 10,
                    "pk": base64.b64decode("sdfjLJUOUH=="),
                },
            )
        ],
    ),
    (  # Appendix B.3.2
        '"hour";q=1000;w=3600, "day";q=5000;w=86400',
        [("hour", {"q": 1000, "w": 3600}), ("day", {"q": 5000, "w": 86400})],
    ),
]
DRAFT_LIMIT_EXAMPLES = [
    ('"default";r=50;t=30', [("default", {"r": 50, "t": 30})]),  # §4, §4.2
    (  # §4.2
        '"default";r=999;pk=:dHJpYWwxMjEzMjM=:',
        [("default", {"r": 999, "pk": b"trial121323"})],
    ),
    (  # §4.2
        '"default";r=300000000;t=60;pk=:QXBwLTk5OQ==:',
        [("default", {"r": 300000000, "t": 60, "pk": b"App-999"})],
    ),
    ('"day";r=100;t=36000', [("day", {"r": 100, "t": 36000})]),  # Appendix B.3.2
]


@pytest.mark.parametrize(("field", "parsed"), DRAFT_POLICY_EXAMPLES + DRAFT_LIMIT_EXAMPLES)
def test_the_parser_reads_the_drafts_examples(field: str, parsed: list[Any]) -> None:
    assert parse_list(field) == parsed


@pytest.mark.parametrize("field", ['"a";q=1,', '"a";q=1 "b"', '"a\\x"', '"a";q=1234567890123456'])
def test_the_parser_refuses_what_is_not_a_list(field: str) -> None:
    with pytest.raises(ValueError):
        parse_list(field)


def test_the_fields_serialise_as_the_draft_writes_them() -> None:
    """Appendix B.3.2's fields, made from the same figures, are the draft's text."""
    hour = QuotaPolicy("hour", 1000, None, 3600, 1000, None)
    day = QuotaPolicy("day", 5000, None, 86400, 100, 36000)
    policy, _ = ratelimit_fields([hour, day])
    assert policy == '"hour";q=1000;w=3600, "day";q=5000;w=86400'
    assert ratelimit_fields([day])[1] == '"day";r=100;t=36000'
    # §3.2's quota unit, and a name that must be escaped
    odd = QuotaPolicy('pe"r\\user', 65535, "content-bytes", 10, 7, 3)
    policy, limits = ratelimit_fields([odd])
    assert parse_list(policy) == [('pe"r\\user', {"q": 65535, "qu": "content-bytes", "w": 10})]
    assert parse_list(limits) == [('pe"r\\user', {"r": 7, "t": 3})]


# --------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("enforce")
    (work / "policies").mkdir()
    (work / "policies" / "default.policy").write_text(POLICY, encoding="utf-8")
    log = work / "serve.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port"]
    command += [str(port), "--policy", str(work / "policies"), "--state", "memory://"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command,
            cwd=work,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "POLICYCTL_NOW": NOW},
        )
    try:
        wait_until_serving(proc, url, lambda: log.read_text(encoding="utf-8", errors="replace"))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=DEADLINE_S) as client:
        yield client


def test_a_users_third_request_is_a_429(client: httpx.Client) -> None:
    """`limit user 2 per 1m` with `limit global 100 per 1m`, on a frozen clock: the first
    two requests are 200s with `r` 1 then 0; the third a 429 with Retry-After 30 (a request
    comes back every 30 s), and the fields name both limits."""
    answers = [
        client.post("/v1/enforce", json={"id": f"a{i}", "user": "alice", "prompt": "hi"})
        for i in range(3)
    ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    for answer in answers:
        policy = by_name(answer.headers["ratelimit-policy"])
        assert policy == {"user": {"q": 2, "w": 60}, "global": {"q": 100, "w": 60}}
        assert answer.headers["content-type"] == "application/json"
    limits = [by_name(a.headers["ratelimit"]) for a in answers]
    assert [lim["user"] for lim in limits] == [
        {"r": 1, "t": 30},  # one request taken: full again in 30 s
        {"r": 0, "t": 60},
        {"r": 0, "t": 30},  # refused: it fits in 30 s
    ]
    # the refused request took nothing: the global limit says what it would have left
    assert [lim["global"]["r"] for lim in limits] == [99, 98, 97]
    assert [lim["global"]["t"] for lim in limits] == [1, 2, 2]  # 0.6 s a request, rounded up
    assert "retry-after" not in answers[0].headers
    assert "retry-after" not in answers[1].headers
    assert answers[2].headers["retry-after"] == "30"
    assert int(answers[2].headers["retry-after"]) >= limits[2]["user"]["t"]  # draft §6
    decision = answers[2].json()
    assert decision["allowed"] is False
    assert decision["denied_by"] == {
        "scope": "user", "key": "alice", "unit": "requests", "retry_after_ms": 30000,
    }  # fmt: skip
    assert [a.json()["allowed"] for a in answers[:2]] == [True, True]


def test_eval_keeps_answering_200(client: httpx.Client) -> None:
    for i in range(3):
        answer = client.post("/v1/eval", json={"id": f"e{i}", "user": "eve"})
        assert answer.status_code == 200
        assert "ratelimit" not in answer.headers
    assert answer.json()["allowed"] is False


def test_a_dry_run_takes_nothing(client: httpx.Client) -> None:
    """`r` is what the request would leave; the bucket, untouched, is full now (`t=0`)."""
    for _ in range(3):
        answer = client.post("/v1/enforce", params={"dry_run": "true"}, json={"user": "dora"})
        assert answer.status_code == 200
        assert by_name(answer.headers["ratelimit"])["user"] == {"r": 1, "t": 0}
    assert by_name(client.post("/v1/enforce", json={"user": "dora"}).headers["ratelimit"])[
        "user"
    ] == {"r": 1, "t": 30}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"user": "mallory"}, "deny_rule"),
        ({"user": "nobody", "max_cost": 0}, "no_eligible_model"),
    ],
)
def test_a_denial_by_the_policy_is_a_403_without_ratelimit_fields(
    client: httpx.Client, body: dict[str, Any], reason: str
) -> None:
    answer = client.post("/v1/enforce", json=body)
    assert answer.status_code == 403
    assert answer.json()["denied_by"]["reason"] == reason
    assert not {"ratelimit", "ratelimit-policy", "retry-after"} & set(answer.headers)


def test_tokens_and_spend_limits_and_two_windows(client: httpx.Client) -> None:
    """Two limits of one scope and unit are told apart by their windows; a tokens limit
    has `qu="tokens"`, a spend limit `qu="usd-micros"` (q and r in millionths of $)."""
    body = {"user": "tina", "prompt": "hi", "max_tokens": 100, "metadata": {"team": "red"}}
    answer = client.post("/v1/enforce", json=body)
    assert answer.status_code == 200
    policy = by_name(answer.headers["ratelimit-policy"])
    assert policy == {
        "user": {"q": 2, "w": 60},
        "global": {"q": 100, "w": 60},
        "team-1m": {"q": 10, "w": 60},
        "team-1h": {"q": 500, "w": 3600},
        "team-tokens": {"q": 100000, "qu": "tokens", "w": 3600},
        "team-spend": {"q": 5_000_000, "qu": "usd-micros", "w": 86400},
    }
    limits = by_name(answer.headers["ratelimit"])
    assert set(limits) == set(policy)
    decision = answer.json()
    status = {(s["scope"], s["unit"]): s for s in decision["rate_limits"]}
    tokens = status["team", "tokens"]
    assert limits["team-tokens"]["r"] == int(tokens["remaining"]) < 100000
    spend = status["team", "spend"]
    assert limits["team-spend"]["r"] == int(spend["remaining"] * 1_000_000 + 1e-6)
    assert (
        0
        < 5_000_000 - limits["team-spend"]["r"]
        == pytest.approx(decision["estimated_cost"] * 1_000_000, abs=1)
    )
    assert limits["team-1m"] == {"r": 9, "t": 6}


# --------------------------------------------------------------------------- batches


def test_a_json_array_is_answered_in_order_with_a_bad_item_in_place(
    client: httpx.Client,
) -> None:
    items = [
        {"id": "b0", "user": "bob"},
        {"id": "b1", "user": "bob", "max_tokens": "lots"},
        5,
        {"id": "b3", "user": "bob"},
        {"id": "b4", "user": "bob"},  # the user's third: limits are taken in order
    ]
    answer = client.post("/v1/eval/batch", json=items)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    out = answer.json()
    assert len(out) == 5
    assert [out[i]["request_id"] for i in (0, 3, 4)] == ["b0", "b3", "b4"]
    assert [out[i]["allowed"] for i in (0, 3, 4)] == [True, True, False]
    assert out[4]["denied_by"]["scope"] == "user"
    assert out[1]["index"] == 1 and out[1]["error"] == "invalid request"
    assert [p["field"] for p in out[1]["detail"]] == ["max_tokens"]
    assert out[2]["index"] == 2 and out[2]["error"] == "invalid request"


@pytest.mark.parametrize("media_type", ["application/x-ndjson", "application/jsonl"])
def test_json_lines_are_answered_line_for_line(client: httpx.Client, media_type: str) -> None:
    user = f"jl-{media_type}"
    lines = [
        json.dumps({"id": "j0", "user": user}),
        "",  # blank lines are skipped
        '{"id": "j1", "user":',
        json.dumps({"id": "j2", "user": user}),
    ]
    answer = client.post(
        "/v1/eval/batch",
        content="\r\n".join(lines).encode() + b"\n",
        headers={"content-type": f"{media_type}; charset=utf-8"},
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"] == media_type
    assert answer.text.endswith("\n")
    out = [json.loads(line) for line in answer.text.splitlines()]
    assert len(out) == 3
    assert [out[0]["request_id"], out[2]["request_id"]] == ["j0", "j2"]
    assert out[0]["allowed"] and out[2]["allowed"]
    assert out[1]["index"] == 1 and out[1]["line"] == 3
    assert out[1]["error"].startswith("malformed JSON")


def test_a_batch_too_large_is_a_413_that_takes_nothing(client: httpx.Client) -> None:
    items = [{"user": "big"}] * (MAX_BATCH_ITEMS + 1)
    answer = client.post("/v1/eval/batch", json=items)
    assert answer.status_code == 413
    assert answer.json() == {
        "error": f"the batch has {MAX_BATCH_ITEMS + 1} items; at most {MAX_BATCH_ITEMS} are"
        " taken in one call",
        "detail": {"items": MAX_BATCH_ITEMS + 1, "max_items": MAX_BATCH_ITEMS},
    }
    lines = b"\n".join(b'{"user": "big"}' for _ in range(MAX_BATCH_ITEMS + 1))
    answer = client.post(
        "/v1/eval/batch", content=lines, headers={"content-type": "application/x-ndjson"}
    )
    assert answer.status_code == 413
    # nothing was evaluated: the user still has both requests
    first = client.post("/v1/enforce", json={"user": "big"})
    assert by_name(first.headers["ratelimit"])["user"]["r"] == 1


def test_the_most_a_batch_takes_is_taken(client: httpx.Client) -> None:
    items = [{"id": f"m{i}"} for i in range(MAX_BATCH_ITEMS)]
    answer = client.post("/v1/eval/batch", params={"dry_run": "true"}, json=items)
    assert answer.status_code == 200
    assert [d["request_id"] for d in answer.json()] == [f"m{i}" for i in range(MAX_BATCH_ITEMS)]


@pytest.mark.parametrize(
    ("content", "status", "error"),
    [
        (b'{"user": "x"}', 422, "a batch is a JSON array of requests"),
        (b"[{bad", 400, "malformed JSON"),
        (b"\xff[]", 400, "request body is not UTF-8"),
    ],
)
def test_a_body_that_is_no_batch_is_refused_whole(
    client: httpx.Client, content: bytes, status: int, error: str
) -> None:
    answer = client.post(
        "/v1/eval/batch", content=content, headers={"content-type": "application/json"}
    )
    assert answer.status_code == status
    assert answer.json()["error"].startswith(error)


def test_a_batch_over_1mib_is_a_413(client: httpx.Client) -> None:
    answer = client.post("/v1/eval/batch", content=b"[" + b" " * (1 << 20) + b"]")
    assert answer.status_code == 413
    assert answer.json() == {"error": "request body is larger than 1 MiB"}


def test_openapi_lists_both_paths_with_their_headers(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    enforce = document["paths"]["/v1/enforce"]["post"]
    assert {"200", "429", "403", "503", "400", "413", "422"} <= set(enforce["responses"])
    assert {"RateLimit-Policy", "RateLimit", "Retry-After"} <= set(
        enforce["responses"]["429"]["headers"]
    )
    assert {"RateLimit-Policy", "RateLimit"} <= set(enforce["responses"]["200"]["headers"])
    assert "headers" not in enforce["responses"]["403"]
    assert enforce["parameters"] == document["paths"]["/v1/eval"]["post"]["parameters"]
    batch = document["paths"]["/v1/eval/batch"]["post"]
    assert {"application/json", "application/x-ndjson", "application/jsonl"} <= set(
        batch["requestBody"]["content"]
    )
    assert batch["requestBody"]["content"]["application/json"]["schema"]["maxItems"] == (
        MAX_BATCH_ITEMS
    )
    assert "413" in batch["responses"]


def test_batch_and_enforce_decisions_reach_the_dashboard(client: httpx.Client) -> None:
    def total() -> int:
        snapshot = client.get("/dashboard/snapshot.json")
        assert snapshot.status_code == 200, snapshot.text
        return int(snapshot.json()["decisions"]["total"])

    before = total()
    batch = [{"user": f"dash-{i}", "prompt": "hi"} for i in range(3)]
    assert client.post("/v1/eval/batch", json=batch).status_code == 200
    assert client.post("/v1/enforce", json={"user": "dash-9", "prompt": "hi"}).status_code == 200
    assert total() == before + 4
