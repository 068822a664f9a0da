"""`/dashboard` end to end: a real `policyctl serve` subprocess on 127.0.0.1, real traffic
(hostile user names included), the page in headless chromium (tests/browser.py).

The page's figures (`data-field`/`data-value`) equal the JSON snapshot's; new traffic reaches
the page through the event stream; nothing a request carried runs or becomes markup; the
screenshot is a PNG of the window's size; a phone-sized window does not scroll sideways.
With an admin token the page asks for it once, refuses a wrong one and keeps an HTTP-only,
same-site cookie. Without a browser: the event stream's framing, and a server stopped with a
stream open exits at once. Waits poll a condition up to a deadline; nothing sleeps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser import Field, console_errors, load
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_service import DEADLINE_S, DESIGN, free_port, wait_for, wait_until_serving

from engine import PolicyEngine
from engine.service.dashboard import HISTORY_S, Dashboard

HOSTILE = "<img src=x onerror=alert(1)>"
OTHER_HOSTILE = '"><script>alert(2)</script>'
TOKEN = "s3cret-token"
POLICY = 'catalog "models.yaml"\n\ndefaults {\n    strategy cost\n}\n\nlimit user 7 per 1m\n'
WAIT_S = 60.0  # generous: two cores shared with other work
PAGE_TAGS = {"script", "img", "iframe", "object", "embed"}


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self, **options: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=DEADLINE_S, **options)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@contextmanager
def serving(workdir: Path, *extra: str) -> Iterator[Served]:
    """`policyctl serve` over a one-limit policy (`limit user 7 per 1m`), state in a DuckDB
    file (the violations are read back from it once flushed); stopped on the way out."""
    policies = workdir / "policies"
    policies.mkdir(parents=True)
    shutil.copy(DESIGN / "models.yaml", policies / "models.yaml")
    (policies / "default.policy").write_text(POLICY, encoding="utf-8")
    port = free_port()
    command = [sys.executable, "-m", "engine", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--policy", str(policies), "--state", str(workdir / "state.duckdb"), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(workdir / "xdg-state")
    log = workdir / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Served(proc, f"http://127.0.0.1:{port}", log)
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


def send(client: httpx.Client, user: str, n: int, prefix: str) -> list[bool]:
    """`n` requests from `user`; whether each was allowed."""
    allowed = []
    for i in range(n):
        answer = client.post("/v1/eval", json={"id": f"{prefix}{i}", "user": user, "prompt": "hi"})
        assert answer.status_code == 200, answer.text
        allowed.append(answer.json()["allowed"])
    return allowed


def report_outcomes(client: httpx.Client) -> None:
    batch = [
        {"provider": "gemini", "model": "gemini-1.5-flash", "latency_ms": ms, "success": ok}
        for ms, ok in ((120, True), (340, True), (900, False), (410, True))
    ]
    assert client.post("/v1/outcomes", json=batch).json() == {"recorded": 4}


# every marked element in one script call: the page redraws its tables on each event, so
# reading element by element (`browser.fields`) could meet a row the next event replaced
READ_FIELDS = """return [...document.querySelectorAll('[data-field]')].map(
    e => [e.getAttribute('data-field'), e.getAttribute('data-key'),
          e.getAttribute('data-value'), e.textContent])"""


def marked(driver: WebDriver) -> list[Field]:
    return [
        Field(name, key, None if raw is None else json.loads(raw), text)
        for name, key, raw, text in driver.execute_script(READ_FIELDS)
    ]


def figures(driver: WebDriver) -> dict[tuple[str, str | None], Any]:
    return {(f.name, f.key): f.value for f in marked(driver)}


def expected(snap: dict[str, Any]) -> dict[tuple[str, str | None], Any]:
    """What the page must show for the snapshot `snap`, field by field."""
    d, policy = snap["decisions"], snap["policy"]
    out: dict[tuple[str, str | None], Any] = {
        ("allowed", None): d["allowed"],
        ("denied", None): d["denied"],
        ("total", None): d["total"],
        ("decisions_per_s", None): d["per_second"],
        ("spend_per_minute", None): snap["spend"]["per_minute"],
        ("policy_version", None): policy["version"],
        ("reloads", None): policy["reloads"],
        ("reload_errors", None): policy["reload_errors"],
        ("last_error", None): policy["last_error"],
        ("alerts_count", None): len(snap["alerts"]),
    }
    for m in snap["models"]:
        for name in ("samples", "p50_ms", "p95_ms", "success_rate"):
            out[(f"model_{name}", m["model"])] = m[name]
    for t in snap["top_limited"]:
        key = json.dumps([t["scope"], t["key"]], separators=(",", ":"), ensure_ascii=False)
        out[("top_scope", key)] = t["scope"]
        out[("top_key", key)] = t["key"]
        out[("top_violations", key)] = t["violations"]
    for i, v in enumerate(snap["violations"]):
        out[("violation", str(i))] = v
        out[("violation_key", str(i))] = v["key"]
    return out


def matches_snapshot(driver: WebDriver, client: httpx.Client) -> bool:
    """The page shows what the JSON snapshot says now (and no more rows)."""
    snap = client.get("/dashboard/snapshot.json").json()
    shown, wanted = figures(driver), expected(snap)
    rows = {name: sum(1 for n, _ in shown if n == name) for name in ("violation", "model_p50_ms")}
    return (
        all(shown.get(k, ...) == v for k, v in wanted.items())
        and rows["violation"] == len(snap["violations"])
        and rows["model_p50_ms"] == len(snap["models"])
    )


def nothing_injected(driver: WebDriver) -> None:
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        pass
    else:
        raise AssertionError(f"the page raised an alert: {alert.text!r}")
    for tag in PAGE_TAGS - {"script"}:
        assert driver.find_elements(By.TAG_NAME, tag) == [], f"a <{tag}> in the page"
    scripts = driver.find_elements(By.TAG_NAME, "script")
    assert [s.get_attribute("src") for s in scripts] == [f"{base(driver)}/dashboard/dashboard.js"]
    handlers = driver.execute_script(
        "return [...document.querySelectorAll('*')].flatMap("
        "e => [...e.attributes].map(a => a.name).filter(n => n.startsWith('on')))"
    )
    assert handlers == []


def base(driver: WebDriver) -> str:
    return str(driver.execute_script("return location.origin"))


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", png[16:24])
    return width, height


# --------------------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving(tmp_path_factory.mktemp("dashboard")) as server:
        yield server


def test_the_page_shows_the_snapshot_and_new_traffic_through_the_stream(
    browser: WebDriver, open_server: Served
) -> None:
    with open_server.client() as client:
        assert send(client, HOSTILE, 10, "r") == [True] * 7 + [False] * 3
        report_outcomes(client)
        load(browser, f"{open_server.url}/dashboard")
        wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1)
        wait.until(lambda d: figures(d).get(("total", None)) == 10)
        assert console_errors(browser) == []
        # every figure the page marks is the JSON snapshot's (once both saw the same tick)
        wait.until(lambda d: matches_snapshot(d, client))
        shown = figures(browser)
        assert (shown[("allowed", None)], shown[("denied", None)]) == (7, 3)
        assert [shown[("violation_key", str(i))] for i in range(3)] == [HOSTILE] * 3
        top = json.dumps(["user", HOSTILE], separators=(",", ":"))
        assert shown[("top_violations", top)] == 3
        assert shown[("model_samples", "gemini/gemini-1.5-flash-latest")] == 4
        assert shown[("model_success_rate", "gemini/gemini-1.5-flash-latest")] == 0.75
        # the hostile names are text, nowhere markup
        cells = [f.text for f in marked(browser) if f.name == "violation_key"]
        assert cells == [HOSTILE] * 3
        nothing_injected(browser)

        # new traffic reaches the page through the event stream (the page fetched the
        # snapshot once, at load)
        assert send(client, OTHER_HOSTILE, 8, "s") == [True] * 7 + [False]
        wait.until(lambda d: figures(d).get(("total", None)) == 18)
        wait.until(lambda d: figures(d).get(("connection", None)) == "live")
        wait.until(lambda d: matches_snapshot(d, client))
        shown = figures(browser)
        assert (shown[("allowed", None)], shown[("denied", None)]) == (14, 4)
        assert shown[("violation_key", "0")] == OTHER_HOSTILE
        nothing_injected(browser)
        assert console_errors(browser) == []

    # the charts are drawn: a line per series with samples
    assert browser.find_elements(By.CSS_SELECTOR, "#chart-decisions polyline")
    png = browser.get_screenshot_as_png()
    ratio = browser.execute_script("return window.devicePixelRatio")
    inner = browser.execute_script("return [window.innerWidth, window.innerHeight]")
    assert len(png) > 10_000
    assert png_size(png) == (round(inner[0] * ratio), round(inner[1] * ratio))


def test_a_phone_sized_window_does_not_scroll_sideways(
    browser: WebDriver, open_server: Served
) -> None:
    before = browser.get_window_size()
    try:
        browser.set_window_size(390, 844)
        load(browser, f"{open_server.url}/dashboard")
        WebDriverWait(browser, WAIT_S).until(lambda d: figures(d).get(("total", None)) is not None)
        width = browser.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert width[0] <= width[1], f"the page is {width[0]}px wide in a {width[1]}px window"
        assert console_errors(browser) == []
    finally:
        browser.set_window_size(before["width"], before["height"])


def test_the_page_is_static_under_a_strict_policy(open_server: Served) -> None:
    with open_server.client() as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert page.headers["x-content-type-options"] == "nosniff"

        class Tags(HTMLParser):
            def __init__(self) -> None:
                super().__init__()
                self.found: list[tuple[str, dict[str, str | None]]] = []

            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                self.found.append((tag, dict(attrs)))

        parser = Tags()
        parser.feed(page.text)
        scripts = [attrs for tag, attrs in parser.found if tag == "script"]
        assert scripts == [{"src": "/dashboard/dashboard.js", "defer": None}]
        assert not [a for _, attrs in parser.found for a in attrs if a.startswith("on")]
        assert "style" not in {tag for tag, _ in parser.found}
        for path, media in (
            ("/dashboard/dashboard.js", "text/javascript"),
            ("/dashboard/dashboard.css", "text/css"),
            ("/dashboard/favicon.svg", "image/svg+xml"),
        ):
            answer = client.get(path)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith(media)
            text = answer.text.replace("http://www.w3.org/2000/svg", "")  # a name, not fetched
            assert "http://" not in text and "https://" not in text and "//" + "cdn" not in text
        assert "innerHTML" not in client.get("/dashboard/dashboard.js").text


# --------------------------------------------------------------------------- the token


def test_with_a_token_the_page_asks_once_and_keeps_an_http_only_cookie(
    browser: WebDriver, tmp_path: Path
) -> None:
    with serving(tmp_path, "--admin-token", TOKEN) as server, server.client() as client:
        assert send(client, "alice", 9, "t") == [True] * 7 + [False] * 2
        # over HTTP: the data needs the cookie or the bearer token
        assert client.get("/dashboard/snapshot.json").status_code == 401
        assert client.get("/dashboard/events").status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/dashboard/snapshot.json", headers=bearer).status_code == 200
        refused = client.post("/dashboard/login", json={"token": "wrong"})
        assert refused.status_code == 401 and "set-cookie" not in refused.headers

        browser.delete_all_cookies()
        load(browser, f"{server.url}/dashboard")
        wait = WebDriverWait(browser, WAIT_S, poll_frequency=0.1)
        form = browser.find_element(By.ID, "login")
        wait.until(lambda d: form.is_displayed())
        assert not browser.find_element(By.ID, "board").is_displayed()

        token = browser.find_element(By.ID, "token")
        token.send_keys("not-the-token")
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        error = browser.find_element(By.ID, "login-error")
        wait.until(lambda d: error.is_displayed() and "wrong token" in error.text)
        assert not browser.find_element(By.ID, "board").is_displayed()
        assert browser.get_cookies() == []

        token.clear()
        token.send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
        wait.until(lambda d: figures(d).get(("total", None)) == 9)
        assert not form.is_displayed()
        cookies = {c["name"]: c for c in browser.get_cookies()}
        cookie = cookies["policyctl_dashboard"]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["path"] == "/dashboard" and TOKEN not in cookie["value"]
        assert "policyctl_dashboard" not in browser.execute_script("return document.cookie")
        # the event stream takes the cookie: new traffic arrives
        assert send(client, "bob", 3, "u") == [True] * 3
        wait.until(lambda d: figures(d).get(("total", None)) == 12)
        wait.until(lambda d: figures(d).get(("connection", None)) == "live")
        # the only console errors are the refused login's 401
        for entry in console_errors(browser):
            assert "/dashboard/login" in entry["message"] and "401" in entry["message"], entry

        # once logged in, a reload opens the dashboard without asking again
        load(browser, f"{server.url}/dashboard")
        wait.until(lambda d: figures(d).get(("total", None)) == 12)
        assert not browser.find_element(By.ID, "login").is_displayed()
        assert console_errors(browser) == []
        browser.delete_all_cookies()


# --------------------------------------------------------------------------- the stream


def read_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    """The next event (name, JSON data) from an SSE line iterator, comments skipped."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                return name, json.loads("\n".join(data))
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    raise AssertionError("the stream ended before an event")


def test_the_stream_sends_snapshots_and_the_server_stops_with_it_open(tmp_path: Path) -> None:
    with serving(tmp_path) as server, server.client() as client:
        bad = client.get("/dashboard/events", params={"interval": "0"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "interval"
        assert send(client, HOSTILE, 8, "e") == [True] * 7 + [False]
        with client.stream("GET", "/dashboard/events", params={"interval": "0.2"}) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            name, first = read_event(lines)
            assert name == "snapshot"
            assert (first["decisions"]["allowed"], first["decisions"]["denied"]) == (7, 1)
            assert first["alerts"] == [] and first["policy"]["last_error"] is None
            assert [s["seq"] for s in first["series"]] == list(range(first["seq"] + 1))
            # later events carry only the samples the stream has not sent yet
            name, second = read_event(lines)
            assert name == "snapshot"
            assert all(s["seq"] > first["seq"] for s in second["series"])
            # new decisions: an event without waiting for the interval's next tick
            send(client, "carol", 2, "f")
            while read_event(lines)[1]["decisions"]["total"] != 10:
                pass
            # SIGTERM with the stream open: the stream ends and the server exits
            server.proc.send_signal(signal.SIGTERM)
            assert server.proc.wait(timeout=15) == 0, server.output()
            for _ in lines:  # the rest of the stream, up to its end
                pass
        assert "Traceback" not in server.output()


# --------------------------------------------------------------------------- the series


def test_the_series_is_bounded_and_the_windows_add_up() -> None:
    engine = PolicyEngine.from_text(POLICY.replace('catalog "models.yaml"', ""))
    board = Dashboard(engine, interval_s=60.0)  # the timer stays out of the way: ticks by hand
    try:
        for i in range(10):
            board.count(engine.evaluate({"id": f"q{i}", "user": "dave", "prompt": "hi"}))
        snap = board.snapshot()
        assert (snap["decisions"]["allowed"], snap["decisions"]["denied"]) == (7, 3)
        assert snap["spend"]["per_minute"] == snap["spend"]["total"] > 0
        capacity = round(HISTORY_S / 60.0) + 2
        for _ in range(capacity * 3):
            board._tick()
        series = board.snapshot()["series"]
        assert len(series) == capacity
        assert [s["seq"] for s in series] == list(range(capacity * 2 + 1, capacity * 3 + 1))
        assert board.snapshot(since_seq=capacity * 3 - 1)["series"][0]["seq"] == capacity * 3
        assert snap["top_limited"] == []  # nobody watched yet: the violations were not read
        board.read_violations()
        top = board.snapshot()["top_limited"]
        assert top == [{"scope": "user", "key": "dave", "violations": 3}]
    finally:
        board.stop()
        engine.close()
    wait_for(lambda: not board._timer.is_alive(), "the timer to stop")
