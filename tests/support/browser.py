"""A headless Chromium for browser tests: Debian's `chromium` package driven by Playwright.

Nothing is downloaded at run time (never `playwright install`): the browser is the system's.
One browser per test module, not per session: Playwright's sync API keeps an event loop running
on the main thread while it is open, which the async tests of other modules could not start
beside. Each test gets a fresh context (its own cookies) and page.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator

    from playwright.sync_api import Browser, Page

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
# Pages answer from loopback in milliseconds; a wait this long means something is wrong.
DEFAULT_TIMEOUT_MS = 10_000
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str | None:
    """The system Chromium, from DOWNLINK_TEST_CHROMIUM or Debian's package."""
    configured = os.environ.get("DOWNLINK_TEST_CHROMIUM")
    candidates = (configured,) if configured else CHROMIUM_PATHS
    return next((path for path in candidates if path and shutil.which(path)), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Chromium for the module's tests (`apt-get install chromium` provides it)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("playwright is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        _unavailable(f"no Chromium at {', '.join(CHROMIUM_PATHS)} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # Containers often give /dev/shm 64 MB, which Chromium's renderers outgrow.
            args=["--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A page in a context of its own: no cookie of another test comes along."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
