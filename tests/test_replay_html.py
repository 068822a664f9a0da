"""`policyctl replay --format html`: a real log with hostile request ids, replayed through the
CLI in a subprocess, the page loaded in headless chromium (tests/browser.py): nothing runs,
nothing is injected, the hostile ids show as text, and every number the page marks is the
JSON report's. Plus `render()` alone: escaping, and reports with parts missing."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from browser import Field, console_errors, fields, load
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from test_replay import NEW, OLD, _Clock

from engine import PolicyEngine
from engine.replay.html import render
from engine.units import format_timestamp

HOSTILE_IDS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "</td><b>id"]
HOSTILE_USER = "</td><b>"
# a file name is the baseline the report names: no `/`, but quotes and markup
HOSTILE_BASELINE = '"><svg onload=alert(2)>old.policy'
# the new set moves the tools route (changes with example ids) and tightens the user
# limit (denials added)
TIGHTER = NEW.replace("limit user 5 per 1m", "limit user 3 per 1m")
# the tags the page is made of; anything else would be injected
TAGS = {
    "html", "head", "meta", "title", "style", "body", "main", "h1", "h2", "h3", "p", "section",
    "div", "span", "ul", "li", "code", "table", "thead", "tbody", "tr", "th", "td", "figure",
    "figcaption", "svg", "line", "text", "polyline", "circle", "rect", "details", "summary",
}  # fmt: skip


def _write_log(tmp_path: Path, n: int = 300) -> Path:
    """`n` requests over about four hours (seeded): mostly one a minute from 20 users, and
    every 50 requests a burst of 10 a second apart from HOSTILE_USER, which the user limit
    trims. The first three are tools requests (the route the new set moves) with the
    hostile ids, so they are the examples of the change."""
    (tmp_path / HOSTILE_BASELINE).write_text(OLD)
    (tmp_path / "new.policy").write_text(TIGHTER)
    state = tmp_path / "log.duckdb"
    clock, rng = _Clock(), random.Random(5)
    with PolicyEngine(tmp_path / HOSTILE_BASELINE, state=str(state), clock=clock) as engine:
        for i in range(n):
            burst = i % 50 < 10
            clock.now += 1 if burst else 60
            request: dict[str, Any] = {
                "id": HOSTILE_IDS[i] if i < len(HOSTILE_IDS) else f"r{i}",
                "user": HOSTILE_USER if burst else f"u{rng.randrange(20)}",
                "prompt": "word " * rng.randrange(1, 80),
            }
            if i < len(HOSTILE_IDS) or rng.random() < 0.3:
                request["requires_tools"] = True
            if i >= len(HOSTILE_IDS) and rng.random() < 0.3:
                request["region"] = "eu"
            decision = engine.evaluate(request)
            if decision.allowed:
                engine.record(
                    decision,
                    latency_ms=rng.uniform(200, 2500),
                    success=rng.random() > 0.03,
                    output_tokens=rng.randrange(5, 400),
                )
    return state


def _replay(tmp_path: Path, fmt: str, *args: str) -> bytes:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYCTL_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "xdg")
    done = subprocess.run(
        [sys.executable, "-m", "engine", "replay", "--format", fmt, *args], cwd=tmp_path,
        env=env, capture_output=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _by_name(found: list[Field]) -> dict[str, dict[str | None, Any]]:
    out: dict[str, dict[str | None, Any]] = {}
    for f in found:
        assert f.key not in out.setdefault(f.name, {}), f"{f.name}[{f.key}] twice"
        out[f.name][f.key] = f.value
    return out


def _no_script_ran(driver: WebDriver) -> None:
    assert console_errors(driver) == []
    try:
        alert = driver.switch_to.alert
    except NoAlertPresentException:
        pass
    else:
        raise AssertionError(f"the page raised an alert: {alert.text!r}")
    for tag in ("script", "img", "iframe", "object", "b"):
        assert driver.find_elements(By.TAG_NAME, tag) == [], f"a <{tag}> in the page"
    handlers = driver.execute_script(
        "return [...document.querySelectorAll('*')].flatMap("
        "e => [...e.attributes].map(a => a.name).filter(n => n.startsWith('on')))"
    )
    assert handlers == []
    assert "NaN" not in driver.page_source and "undefined" not in driver.page_source


def test_the_html_report_shows_the_json_reports_numbers_and_runs_nothing(
    tmp_path: Path, browser: WebDriver
) -> None:
    state = _write_log(tmp_path)
    args = ("--policy", "new.policy", "--baseline", HOSTILE_BASELINE, "--from", str(state))
    report = json.loads(_replay(tmp_path, "json", *args))
    page = tmp_path / "report.html"
    page.write_bytes(_replay(tmp_path, "html", *args))
    page.read_bytes().decode("utf-8")  # UTF-8, whatever the locale
    # the log is what this test needs: changes with the hostile ids as examples, denials
    # added, several hours, a baseline named by a hostile file name
    assert report["changed"] > 0 and report["denials_added"].get("user", 0) > 0
    (tools,) = [p for p in report["by_model"] if p["after"].startswith("anthropic/")]
    assert tools["examples"] == HOSTILE_IDS
    assert len(report["hours"]) >= 4 and report["baseline"] == HOSTILE_BASELINE

    load(browser, page)
    _no_script_ran(browser)
    assert len(browser.find_elements(By.TAG_NAME, "svg")) == 3  # the three charts
    shown = browser.find_element(By.TAG_NAME, "body").text
    for hostile in [*HOSTILE_IDS, HOSTILE_BASELINE]:
        assert hostile in shown

    got = _by_name(fields(browser))
    checked: set[str] = set()

    def same(name: str, expected: dict[str | None, Any]) -> None:
        assert got.get(name, {}) == expected, name
        checked.add(name)

    for name in ("requests", "replayed", "changed", "changed_share"):
        same(name, {None: report[name]})
    for name in ("not_replayable", "invalid", "hashed_keys", "newly_no_eligible_model"):
        same(name, {None: report[name]} if report[name] else {})  # shown when not zero
    same("baseline", {None: None})  # text, no number
    for side in ("before", "after"):
        for key in ("served", "denied", "cost", "mean_latency_ms", "from_priors"):
            same(f"{side}.{key}", {None: report[side][key]})
    for key in ("served", "denied", "cost", "mean_latency_ms", "from_priors"):
        same(f"change.{key}", {None: report["after"][key] - report["before"][key]})
    for name in ("by_route", "denials_added", "denials_removed"):
        same(name, dict(report[name]))
    same("by_model", {f"{p['before']} → {p['after']}": p["count"] for p in report["by_model"]})
    models = report["models"]
    for side in ("before", "after"):  # a bar for each model either side serves (0: none)
        same(
            f"models.{side}",
            {m: models[side].get(m, 0) for m in {**models["before"], **models["after"]}},
        )
    # one row per hour, and each hour's numbers
    same("hour", {h["hour"]: None for h in report["hours"]})
    for side in ("before", "after"):
        for key in ("served", "cost", "mean_latency_ms"):
            same(f"hours.{side}.{key}", {h["hour"]: h[side][key] for h in report["hours"]})
    assert set(got) - checked == set()  # nothing marked on the page goes unchecked
    # the share chart shows every model's count, the totals the human form
    assert got["before.cost"][None] > 0
    shown_cost = browser.find_element(By.CSS_SELECTOR, '[data-field="after.cost"]').text
    assert shown_cost.startswith("$")
    browser.save_screenshot(str(tmp_path / "report.png"))
    assert (tmp_path / "report.png").read_bytes().startswith(b"\x89PNG")


def test_an_empty_report_renders_without_errors(tmp_path: Path, browser: WebDriver) -> None:
    (tmp_path / "p.policy").write_text(OLD)
    (tmp_path / "none.jsonl").write_text("")
    args = ("--policy", "p.policy", "--baseline", "p.policy", "--from", "none.jsonl")
    report = json.loads(_replay(tmp_path, "json", *args))
    assert report["requests"] == 0 and report["hours"] == []
    page = tmp_path / "empty.html"
    page.write_bytes(_replay(tmp_path, "html", *args))
    load(browser, page)
    _no_script_ran(browser)
    got = _by_name(fields(browser))
    assert got["requests"] == got["replayed"] == got["changed"] == {None: 0}
    assert got["changed_share"] == {None: None}
    assert got["after.mean_latency_ms"] == {None: None} and got["after.cost"] == {None: 0.0}
    assert "hour" not in got and "by_model" not in got
    shown = browser.find_element(By.TAG_NAME, "body").text
    assert "No decision changes." in shown and "No hour with replayed traffic." in shown


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attributes |= {name for name, _ in attrs}


def _hostile_report() -> dict[str, Any]:
    x = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    totals = {"served": 2, "denied": 1, "cost": 0.5, "mean_latency_ms": 10.0}
    return {
        "requests": 3, "replayed": 3, "changed": 1, "changed_share": 1 / 3, "baseline": x,
        "by_route": {x: 1}, "by_model": [{"before": x, "after": x, "count": 1, "examples": [x]}],
        "denials_added": {x: 1}, "denials_removed": {x: 1},
        "before": totals, "after": totals,
        "hours": [{"hour": x, "before": totals, "after": totals}],
        "models": {"before": {x: 2}, "after": {x: 2}},
        "shard": "1/2", "approximate": True,  # keys the renderer does not know
    }  # fmt: skip


def test_render_escapes_every_value_in_text_and_attributes() -> None:
    page = render(_hostile_report())
    assert "<img" not in page and "<script" not in page
    parsed = _Tags()
    parsed.feed(page)
    assert set(parsed.tags) <= TAGS, set(parsed.tags) - TAGS
    assert not [a for a in parsed.attributes if a.startswith("on")]
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # a tooltip carries it escaped too
    assert "<title>&quot;&gt;&lt;img" in page


def test_render_tolerates_missing_and_odd_values() -> None:
    for report in (
        {},
        {"requests": 0, "hours": [], "models": {}},
        {"before": {"cost": float("nan"), "mean_latency_ms": None}, "hours": [{}]},
        {"by_model": [{"before": "a"}], "models": {"after": {"m": 1}}, "hours": [{"hour": "x"}]},
    ):
        page = render(report)
        assert page.startswith("<!DOCTYPE html>") and page.endswith("</html>\n")
        assert not re.search(r"\bnan\b", page, re.IGNORECASE)


def test_hourly_lines_break_at_missing_hours_and_values() -> None:
    """99 hours (the 50th missing), the before side's latency unknown at hours 10 and 12:
    lines break there, and an hour standing alone gets a dot (beyond 72 hours no other)."""
    start = 1_800_000_000 - 1_800_000_000 % 3600
    hours = []
    for i in [*range(50), *range(51, 100)]:
        before = {"cost": 0.01, "mean_latency_ms": None if i in (10, 12) else 900.0}
        after = {"cost": 0.02, "mean_latency_ms": 800.0}
        stamp = format_timestamp(start + 3600 * i, "seconds")
        hours.append({"hour": stamp, "before": before, "after": after})
    page = render({"hours": hours})
    parsed = _Tags()
    parsed.feed(page)
    # cost: 2 lines a side; latency: before 3 (and the dot at hour 11), after 2
    assert parsed.tags["polyline"] == 2 + 2 + 3 + 2
    assert parsed.tags["circle"] == 1
    assert page.count('<tr data-field="hour"') == 99  # the hours table: an hour a row
