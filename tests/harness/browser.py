"""A headless Chromium driven by Selenium, for the pages a node serves.

Debian's ``chromium`` and ``chromium-driver`` (``/usr/bin/chromium``,
``/usr/bin/chromedriver``); selenium from PyPI (the "test" extra). Both paths
are given, so Selenium Manager never looks for (or downloads) a browser.
Without them the browser tests are skipped, unless LOGPLEX_REQUIRE_BROWSER=1
(as CI sets) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness.procs import REPO_ROOT
from tests.tools import skip_missing

HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = os.path.join(REPO_ROOT, "tests", "artifacts")


def _find(name: str, fallback: str) -> str | None:
    path = shutil.which(name) or fallback
    return path if os.access(path, os.X_OK) else None


def chromium_paths() -> tuple[str, str]:
    """(browser, driver), or skip (fail where a browser is required) saying what is missing."""
    browser = _find("chromium", "/usr/bin/chromium")
    driver = _find("chromedriver", "/usr/bin/chromedriver")
    missing = []
    if browser is None:
        missing.append("chromium")
    if driver is None:
        missing.append("chromium-driver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        if os.environ.get("LOGPLEX_REQUIRE_BROWSER") == "1":
            pytest.fail("browser tests need " + ", ".join(missing))
        skip_missing(", ".join(missing), "apt-get install chromium chromium-driver")
    return browser, driver


def start_chromium(width: int = 1280, height: int = 860, extra_flags: tuple[str, ...] = ()):
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = chromium_paths()
    options = Options()
    options.binary_location = browser
    for flag in HEADLESS_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.add_argument("--lang=en-US")
    # /dev/shm is small in containers; Chromium then writes to /tmp instead.
    options.add_argument("--disable-dev-shm-usage")
    for flag in extra_flags:
        options.add_argument(flag)
    os.makedirs(ARTIFACTS, exist_ok=True)
    service = Service(executable_path=driver, log_output=os.path.join(ARTIFACTS, "chromedriver.log"))
    return webdriver.Chrome(service=service, options=options)


@pytest.fixture(scope="module")
def browser():
    driver = start_chromium()
    driver.set_page_load_timeout(15)
    yield driver
    driver.quit()


def eventually(fetch: Callable[[], Any], done: Callable[[Any], bool] = bool, timeout: float = 5.0,
               poll: float = 0.02) -> Any:
    """fetch() until done(value) or timeout; the last value either way, for the caller's assert."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(poll)


def screenshot(driver, name: str) -> str:
    """Save a PNG of the window under tests/artifacts/; its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    driver.save_screenshot(path)
    return path
