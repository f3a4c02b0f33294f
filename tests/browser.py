"""A real browser for the tests: Debian's Chromium, headless, driven by Playwright (no browser of
Playwright's own is downloaded). Screenshots go to test-artifacts/ (gitignored), one per page a
test looked at, so that a person can look at them too."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from tests.conftest import REPO

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = REPO / "test-artifacts"


@contextlib.contextmanager
def chromium_page(width: int = 1200, height: int = 900):
    """A new page of a headless Chromium, and the URLs of every request it made (`page.requests`)."""
    import pytest

    if not Path(CHROMIUM).is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: run `bash .ci/debian-packages` as root", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.requests = []
            page.on("request", lambda request: page.requests.append(request.url))
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> Path:
    """The whole page as test-artifacts/<name>.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
