"""A real browser for the tests: headless Debian chromium driven through Selenium.

`browser` (exported by conftest.py) is one session-wide driver; the helpers load a page
(a file, or a server on 127.0.0.1 only), read what the console logged at SEVERE level,
and read the `data-field` values a page marks. Nothing is downloaded: the driver and the
browser are the system's (`apt-get install chromium chromium-driver`, which `.ci/run`
does), given by path, and Selenium Manager is told to stay offline. Without them the
fixture fails saying so: a browser test never skips.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")


@dataclass(frozen=True, slots=True)
class Field:
    """One element a page marks with `data-field`: its name, key (`data-key`, for one entry
    of a mapping), machine value (`data-value`, parsed as JSON) and the text it shows."""

    name: str
    key: str | None
    value: Any
    text: str


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless chromium for the whole session (console logs kept at every level)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"the browser tests need {' and '.join(missing)}: `.ci/run` installs them"
            " (apt-get install chromium chromium-driver)",
            pytrace=False,
        )
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.fail(f"the browser tests need selenium (pip install -e '.[test]'): {e}")
    offline = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a driver or browser
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ARGS:
        options.add_argument(arg)
    options.add_argument("--window-size=1280,900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # an alert a page raises stays open, so a test can see it (not dismissed behind its back)
    options.unhandled_prompt_behavior = "ignore"
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        if offline is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = offline


def load(driver: WebDriver, target: str | Path) -> None:
    """Open a file (a path or a file:// URL) or a page served on 127.0.0.1, after
    dropping what the console logged before, so `console_errors` reports this page only."""
    url = target.resolve().as_uri() if isinstance(target, Path) else target
    parts = urlsplit(url)
    local = parts.scheme == "file" or (
        parts.scheme in ("http", "https") and parts.hostname == "127.0.0.1"
    )
    assert local, f"`{url}`: the tests load files and 127.0.0.1 only"
    driver.get_log("browser")
    driver.get(url)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The console entries of level SEVERE since the last `load` (or call)."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def fields(driver: WebDriver) -> list[Field]:
    """Every element of the page with a `data-field`, in document order."""
    from selenium.webdriver.common.by import By

    found = []
    for element in driver.find_elements(By.CSS_SELECTOR, "[data-field]"):
        raw = element.get_attribute("data-value")
        found.append(
            Field(
                name=element.get_attribute("data-field") or "",
                key=element.get_attribute("data-key"),
                value=None if raw is None else json.loads(raw),
                text=element.get_attribute("textContent") or "",
            )
        )
    return found
