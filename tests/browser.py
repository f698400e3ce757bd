"""A real browser for the tests: Playwright (PyPI) driving Debian's Chromium, headless.

Playwright's own browser download needs the internet; Debian's ``chromium`` package does not
(scripts/test installs it). The flags keep Chromium off the network it would call by itself.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, sync_playwright

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "Chromium is not installed: apt-get install -y chromium (scripts/test does it)"
    )


@contextmanager
def chromium() -> Iterator[Browser]:
    """Headless Chromium (an empty profile of its own, Playwright's), closed at the end."""
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()
