"""The rate-limit admin calls of `policyctl serve` (`/v1/ratelimit/…`), end to end: a real
server process on 127.0.0.1, a real HTTP client, a real DuckDB state file.

Three servers: one with an admin token (given by environment variable), one with none
(mutations refused), one opened with `--open-admin`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest
from test_service import DESIGN, Server, serving, unique

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1 << 20


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("admin-guarded")
    with serving(workdir, env={"POLICYCTL_ADMIN_TOKEN": TOKEN}) as server:
        yield server


@pytest.fixture
def client(guarded: Server) -> Iterator[httpx.Client]:
    with guarded.client() as client:
        yield client


def ask(client: httpx.Client, user: str) -> dict[str, Any]:
    response = client.post("/v1/eval", json={"id": unique("r"), "user": user, "prompt": "hi"})
    assert response.status_code == 200
    decision: dict[str, Any] = response.json()
    return decision


def user_rows(client: httpx.Client, user: str) -> list[dict[str, Any]]:
    response = client.get("/v1/ratelimit/status", params={"user": user})
    assert response.status_code == 200
    rows: list[dict[str, Any]] = response.json()
    return rows


# --------------------------------------------------------------------------- the token


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
    ids=["none", "wrong", "basic", "empty", "longer"],
)
def test_mutations_without_the_right_token_are_401_and_change_nothing(
    client: httpx.Client, headers: dict[str, str]
) -> None:
    user = unique("mallory")
    response = client.post(
        "/v1/ratelimit/set", json={"user": user, "limit": 5, "window": "1m"}, headers=headers
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in response.json()["error"] or "token" in response.json()["error"]
    quotas = client.get("/v1/ratelimit/config").json()["quotas"]
    assert user not in {q["key"] for q in quotas}
    for path in ("/v1/ratelimit/reset", "/v1/ratelimit/remove", "/v1/ratelimit/cleanup"):
        assert client.post(path, json={"user": user}, headers=headers).status_code == 401


def test_the_token_is_checked_before_the_body(client: httpx.Client) -> None:
    """An unauthenticated caller learns nothing from validation (no 400/413/422)."""
    assert client.post("/v1/ratelimit/set", content=b"{nope").status_code == 401
    assert client.post("/v1/ratelimit/set", content=b"x" * (2 * MIB)).status_code == 401


def test_reads_need_no_token(client: httpx.Client) -> None:
    for path in ("status", "config", "stats", "violations", "buckets"):
        response = client.get(f"/v1/ratelimit/{path}")
        assert response.status_code == 200, path
        assert response.headers["content-type"].startswith("application/json")


def test_a_quota_through_its_whole_life(client: httpx.Client, guarded: Server) -> None:
    """set -> the quota binds decisions -> violations, buckets, status and stats show it ->
    reset refills -> remove restores the policy's limit."""
    user = unique("vip")
    before = user_rows(client, user)
    assert [(r["source"], r["capacity"]) for r in before] == [(before[0]["source"], 110)]
    lines = (DESIGN / "design.policy").read_text(encoding="utf-8").splitlines()
    (user_line,) = [i for i, text in enumerate(lines, 1) if text.startswith("limit user ")]
    assert before[0]["source"].endswith(f"default.policy:{user_line}:1")

    set_ = client.post(
        "/v1/ratelimit/set",
        json={"user": user, "limit": 2, "window": "1h", "expires": "2999-01-01"},
        headers={"authorization": f"bearer {TOKEN}"},  # scheme and header name any case
    )
    assert set_.status_code == 200, set_.text
    quota = set_.json()
    assert (quota["key"], quota["limit"], quota["window"], quota["source"]) == (
        user, 2, "1h", "quota",
    )  # fmt: skip
    assert quota["expires_at"] == dt.datetime(2999, 1, 1, tzinfo=dt.UTC).timestamp()
    assert user in {q["key"] for q in client.get("/v1/ratelimit/config").json()["quotas"]}

    decisions = [ask(client, user) for _ in range(3)]
    assert [d["allowed"] for d in decisions] == [True, True, False]
    assert decisions[2]["denied_by"]["scope"] == "user"

    (row,) = user_rows(client, user)
    assert (row["source"], row["capacity"], row["tokens"]) == ("quota", 2, 0)
    assert row["reset_at"] is not None

    violations = client.get("/v1/ratelimit/violations", params={"key": user}).json()
    assert len(violations) == 1
    assert (violations[0]["scope"], violations[0]["key"]) == ("user", user)
    assert violations[0]["request_id"] == decisions[2]["request_id"]

    buckets = client.get("/v1/ratelimit/buckets", params={"type": "user"}).json()
    mine = [b for b in buckets if b["key"] == user]
    assert len(mine) == 1 and mine[0]["tokens"] == 0 and mine[0]["fill_percent"] == 0

    stats = client.get("/v1/ratelimit/stats", params={"type": "user"}).json()
    assert stats and all(r["scope"] == "user" for r in stats)
    assert sum(r["denied"] for r in stats) >= 1

    reset = client.post("/v1/ratelimit/reset", json={"user": user}, headers=AUTH)
    assert reset.status_code == 200
    assert reset.json() == {"scope": "user", "key": user, "reset": 1}
    assert user_rows(client, user)[0]["tokens"] == 2
    assert ask(client, user)["allowed"] is True

    removed = client.post("/v1/ratelimit/remove", json={"user": user}, headers=AUTH)
    assert removed.json() == {"scope": "user", "key": user, "removed": True}
    again = client.post("/v1/ratelimit/remove", json={"user": user}, headers=AUTH)
    assert again.json()["removed"] is False
    assert user_rows(client, user)[0]["capacity"] == 110
    assert user not in {q["key"] for q in client.get("/v1/ratelimit/config").json()["quotas"]}


def test_reset_global_and_cleanup(tmp_path: Path) -> None:
    """On a frozen clock (`POLICYCTL_NOW`): under the real clock the global bucket refills
    a token every 6 ms, so whether one request shows in it depended on the machine's load."""
    env = {"POLICYCTL_ADMIN_TOKEN": TOKEN, "POLICYCTL_NOW": "2026-11-28T17:46:05Z"}
    with serving(tmp_path, env=env) as server, server.client() as client:
        ask(client, unique("g"))
        (global_row,) = client.get("/v1/ratelimit/status", params={"global": "true"}).json()
        assert global_row["scope"] == "global"
        assert global_row["tokens"] == global_row["capacity"] - 1
        reset = client.post("/v1/ratelimit/reset", json={"global": True}, headers=AUTH)
        assert reset.json()["scope"] == "global" and reset.json()["reset"] >= 1
        (global_row,) = client.get("/v1/ratelimit/status", params={"global": "1"}).json()
        assert global_row["tokens"] == global_row["capacity"]

        cleanup = client.post("/v1/ratelimit/cleanup", headers=AUTH)  # no body: the default
        assert cleanup.status_code == 200
        assert cleanup.json()["idle_ms"] == 86_400_000
        cleanup = client.post("/v1/ratelimit/cleanup", json={"idle": "1h"}, headers=AUTH)
        assert cleanup.json()["idle_ms"] == 3_600_000


def test_verbose_status_and_config(client: httpx.Client) -> None:
    user = unique("v")
    ask(client, user)
    response = client.get("/v1/ratelimit/status", params={"user": user, "verbose": "true"})
    (row,) = response.json()
    assert row["bucket"].endswith(user) and row["fill_percent"] < 100
    limits = client.get("/v1/ratelimit/config", params={"verbose": "yes"}).json()["limits"]
    assert all("statement" in r and "rate_per_s" in r for r in limits)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("method", "path", "payload", "field", "words"),
    [
        ("post", "set", {"user": "u", "limit": 5}, "window", "required"),
        ("post", "set", {"user": "u", "limit": "lots", "window": "1m"}, "limit", "number"),
        ("post", "set", {"user": "u", "limit": 0, "window": "1m"}, "limit", "greater than zero"),
        ("post", "set", {"user": "u", "limit": 5, "window": "soon"}, "window", "duration"),
        ("post", "set", {"user": "u", "limit": True, "window": "1m"}, "limit", "number"),
        ("post", "set", {"user": 7, "limit": 5, "window": "1m"}, "user", "string"),
        ("post", "set", {"user": " ", "limit": 5, "window": "1m"}, "user", "empty"),
        (
            "post",
            "set",
            {"user": "u", "limit": 5, "window": "1m", "expires": "2001-01-01"},
            "expires",
            "future",
        ),
        ("post", "set", {"user": "u", "limt": 5, "window": "1m"}, "limt", "unknown field"),
        ("post", "set", ["user", "u"], "", "JSON object"),
        ("post", "reset", {}, "", "give one of"),
        ("post", "reset", {"user": "a", "ip": "10.0.0.1"}, "ip", "give one of"),
        ("post", "reset", {"ip": "300.1.2.3"}, "ip", "IPv4 or IPv6"),
        ("post", "reset", {"global": False}, "global", "true"),
        ("post", "remove", {}, "user", "required"),
        ("post", "cleanup", {"idle": "-1h"}, "idle", "zero or more"),
        ("get", "status", {"user": "a", "provider": "b"}, "provider", "give one of"),
        ("get", "status", {"usr": "a"}, "usr", "unknown parameter"),
        ("get", "status", {"user": "a", "verbose": "maybe"}, "verbose", "true or false"),
        ("get", "stats", {"start": "yesterday"}, "start", "date"),
        ("get", "stats", {"start": "2026-02-01", "end": "2026-01-01"}, "start", "after"),
        ("get", "stats", {"type": "planet"}, "type", "unknown scope"),
        ("get", "violations", {"limit": "ten"}, "limit", "number"),
        ("get", "buckets", {"type": "planet"}, "type", "unknown scope"),
    ],
)
def test_bad_parameters_are_422_naming_the_field(
    client: httpx.Client, method: str, path: str, payload: Any, field: str, words: str
) -> None:
    url = f"/v1/ratelimit/{path}"
    if method == "post":
        response = client.post(url, json=payload, headers=AUTH)
    else:
        response = client.get(url, params=payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid admin call"
    (problem,) = body["detail"]
    assert problem["field"] == field
    assert words.lower() in problem["message"].lower()
    assert "--" not in problem["message"]  # fields, not CLI flags


def test_bad_bodies_with_the_token(client: httpx.Client) -> None:
    malformed = client.post("/v1/ratelimit/set", content=b'{"user": ', headers=AUTH)
    assert malformed.status_code == 400
    assert malformed.json()["error"].startswith("malformed JSON")
    assert client.post("/v1/ratelimit/set", content=b"", headers=AUTH).status_code == 400
    big = client.post("/v1/ratelimit/set", content=b" " * (2 * MIB), headers=AUTH)
    assert big.status_code == 413
    deep = client.post("/v1/ratelimit/set", content=b"[" * 100_000, headers=AUTH)
    assert deep.status_code == 400
    assert client.get("/v1/ratelimit/set").status_code == 405
    assert client.post("/v1/ratelimit/status").status_code == 405


def test_refusals_are_counted_in_metrics(client: httpx.Client) -> None:
    def count(status: int) -> int:
        text = client.get("/metrics").text
        prefix = f'policyctl_bad_requests_total{{status="{status}"}} '
        lines = [ln for ln in text.splitlines() if ln.startswith(prefix)]
        return int(float(lines[0].removeprefix(prefix))) if lines else 0

    before = count(401)
    client.post("/v1/ratelimit/reset", json={"global": True})
    assert count(401) == before + 1


def test_openapi_lists_the_admin_calls(client: httpx.Client) -> None:
    document = client.get("/openapi.json").json()
    for action in ("status", "config", "stats", "violations", "buckets"):
        assert "get" in document["paths"][f"/v1/ratelimit/{action}"]
    for action in ("set", "reset", "remove", "cleanup"):
        post = document["paths"][f"/v1/ratelimit/{action}"]["post"]
        assert post["security"] == [{"adminToken": []}]
        assert {"401", "403", "422"} <= set(post["responses"])
    scheme = document["components"]["securitySchemes"]["adminToken"]
    assert scheme == {"type": "http", "scheme": "bearer"}


def test_a_quota_set_over_http_is_in_the_state_file(tmp_path: Path) -> None:
    """Written through to DuckDB: the quota is there after the server stops."""
    with serving(tmp_path, "--admin-token", TOKEN, "--no-watch") as server:
        with server.client() as client:
            response = client.post(
                "/v1/ratelimit/set", json={"user": "kept", "limit": "1.5k", "window": 60000},
                headers=AUTH,
            )  # fmt: skip
            assert response.status_code == 200
        server.proc.terminate()
        assert server.proc.wait(timeout=20) == 0
    with duckdb.connect(str(server.state), read_only=True) as con:
        rows = con.execute("SELECT key, max_requests FROM user_quotas").fetchall()
    assert rows == [("kept", 1500)]


# --------------------------------------------------------------------------- no token


def test_without_a_token_mutations_are_refused(tmp_path: Path) -> None:
    with serving(tmp_path, "--no-watch", state="memory://") as server, server.client() as c:
        refused = c.post("/v1/ratelimit/set", json={"user": "u", "limit": 5, "window": "1m"})
        assert refused.status_code == 403
        assert "--open-admin" in refused.json()["error"]
        # even with a bearer header: there is no token to match
        assert c.post("/v1/ratelimit/reset", json={"global": True}, headers=AUTH).status_code == 403
        assert c.get("/v1/ratelimit/config").json()["quotas"] == []
        assert c.get("/v1/ratelimit/status").status_code == 200


def test_open_admin_allows_mutations_without_a_token(tmp_path: Path) -> None:
    extra = ("--no-watch", "--open-admin")
    with serving(tmp_path, *extra, state="memory://") as server, server.client() as c:
        done = c.post("/v1/ratelimit/set", json={"user": "u", "limit": 5, "window": "1m"})
        assert done.status_code == 200
        assert [q["key"] for q in c.get("/v1/ratelimit/config").json()["quotas"]] == ["u"]


def test_a_token_wins_over_open_admin(tmp_path: Path) -> None:
    extra = ("--no-watch", "--open-admin", "--admin-token", TOKEN)
    with serving(tmp_path, *extra, state="memory://") as server, server.client() as c:
        assert c.post("/v1/ratelimit/cleanup").status_code == 401
        assert c.post("/v1/ratelimit/cleanup", headers=AUTH).status_code == 200
